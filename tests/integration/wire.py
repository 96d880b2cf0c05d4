"""A second implementation of kube-apiserver's stored values, for the CLI tests: the
transformers' wire formats (python3-cryptography for aescbc/aesgcm, python3-nacl for
secretbox, a KMS v2 EncryptedObject encoded by hand) and a small client of etcd's JSON
gateway to put and read them. Independent of the C code under test and of tests/kapisim."""
import base64
import json
import os
import urllib.request

import nacl.secret
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def b64(b):
    return base64.b64encode(b).decode()


def aescbc_enc(name, key, pt):
    iv = os.urandom(16)
    p = padding.PKCS7(128).padder()
    e = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return (b"k8s:enc:aescbc:v1:" + name.encode() + b":" + iv
            + e.update(p.update(pt) + p.finalize()) + e.finalize())


def aescbc_dec(key, ct):
    """ct: what follows "k8s:enc:aescbc:v1:<name>:"."""
    iv, body = ct[:16], ct[16:]
    d = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    u = padding.PKCS7(128).unpadder()
    return u.update(d.update(body) + d.finalize()) + u.finalize()


def aesgcm_enc(name, key, pt, aad):
    nonce = os.urandom(12)
    return (b"k8s:enc:aesgcm:v1:" + name.encode() + b":" + nonce
            + AESGCM(key).encrypt(nonce, pt, aad.encode()))


def secretbox_enc(name, key, pt):
    nonce = os.urandom(24)
    return (b"k8s:enc:secretbox:v1:" + name.encode() + b":" + nonce
            + nacl.secret.SecretBox(key).encrypt(pt, nonce).ciphertext)


def secretbox_dec(key, ct):
    """ct: what follows "k8s:enc:secretbox:v1:<name>:"."""
    return nacl.secret.SecretBox(key).decrypt(ct[24:], ct[:24])


def _pb_bytes(field, data):
    assert len(data) < 128
    return bytes([field << 3 | 2, len(data)]) + data


def kmsv2(name, key_id):
    """EncryptedObject{encryptedData=1, keyID=2, encryptedDEKSource=3}, type 0 (omitted)."""
    o = (_pb_bytes(1, os.urandom(12 + 20 + 16)) + _pb_bytes(2, key_id.encode())
         + _pb_bytes(3, os.urandom(32)))
    return b"k8s:enc:kms:v2:" + name.encode() + b":" + o


def stored_object(key):
    """A serialized object as kube-apiserver stores it (protobuf magic + bytes)."""
    return b"k8s\x00" + key.encode() + b"-" + os.urandom(8).hex().encode()


class Gateway:
    """etcd's JSON gateway: puts in txns of 128 (etcd's --max-txn-ops), prefix reads."""

    def __init__(self, endpoint):
        self.endpoint = endpoint

    def post(self, path, body):
        req = urllib.request.Request(self.endpoint + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def put_many(self, kvs):
        for i in range(0, len(kvs), 128):
            ops = [{"request_put": {"key": b64(k.encode()), "value": b64(v)}}
                   for k, v in kvs[i:i + 128]]
            self.post("/v3/kv/txn", {"success": ops})

    def get_prefix(self, prefix):
        """{key: (value, version)} of every key under prefix."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        r = self.post("/v3/kv/range", {"key": b64(prefix.encode()), "range_end": b64(end.encode())})
        return {base64.b64decode(kv["key"]).decode(): (base64.b64decode(kv.get("value", "")),
                                                       int(kv.get("version", "0")))
                for kv in r.get("kvs", [])}
