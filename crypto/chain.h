/*
 * crypto/chain.h: the provider chain, byte-compatible with kube-apiserver's transformers.
 *
 * Contract
 * - A chain is built from a validated config and is immutable and reference counted. It holds
 *   a reference to its config (and so to the key arena); the last ar_chain_unref releases it.
 *   ar_chain_ref/unref are atomic, so a chain may be used from several threads at once, and a
 *   new chain can be swapped in while work started on the old one finishes (shared spec,
 *   DESIGN 5).
 * - Lookup for a resource (shared spec 2.3): exact {group,resource}, then {group,*}, then {*,*},
 *   then plain identity (an encrypt-check identity, not a list). When the same exact resource
 *   appears in several rules their provider lists are concatenated in rule order.
 * - Write: the first provider and, inside it, its first key. Read: providers in order, keys in
 *   order, with kube-apiserver's rules for prefixes, empty-prefix identity, error aggregation
 *   and the stale flag (shared spec 1.8). Error texts are kube-apiserver's.
 * - Wire formats (shared spec 1.1-1.7): identity, aescbc, aesgcm (AAD = etcd key), secretbox.
 *   KMS v1 and v2 values are recognised: v2 EncryptedObjects are parsed and validated; a read
 *   that needs the plugin fails with -ENOPKG and "needs KMS plugin <name>". A KMS provider can
 *   not write (-ENOPKG).
 * - Errors: 0 or negative errno. -EBADMSG: the value is corrupt or does not authenticate;
 *   -ENOKEY: no provider prefix matched ("no matching prefix found"), or encrypted data for a
 *   resource no rule names ("identity transformer tried to read encrypted data"); -ENOPKG: needs
 *   a KMS plugin (wins over -EBADMSG when several providers failed); -EINVAL: bad arguments;
 *   -ENOMEM/-EMSGSIZE/-EIO: system. res->err holds the one-line reason (never key material),
 *   aggregated as k8s.io/apimachinery's errors.NewAggregate prints it: nested lists flattened,
 *   duplicate messages dropped, one message as itself, several as "[e1, e2]".
 * - On failure out is empty; the bytes it held before the call are wiped either way.
 * - Thread safety: any number of threads may read and write through one chain; each thread
 *   keeps its own cipher contexts (crypto/providers.h).
 */
#ifndef ATREST_CRYPTO_CHAIN_H
#define ATREST_CRYPTO_CHAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto/buf.h"
#include "crypto/config.h"
#include "crypto/kmsv2.h"

struct ar_chain;

/* Build a chain from cfg (takes a reference of its own). Returns 0 or -errno. */
int ar_chain_new(struct ar_config *cfg, struct ar_chain **out);
struct ar_chain *ar_chain_ref(struct ar_chain *c);
/* Accepts NULL; returns NULL. */
struct ar_chain *ar_chain_unref(struct ar_chain *c);
const struct ar_config *ar_chain_config(const struct ar_chain *c);

/* The provider list a resource uses. NULL list (n == 0) means plain identity. */
struct ar_plist {
    const struct ar_provider *const *v;
    size_t n;
    const char
        *rule; /* the rule that matched, as written ("secrets", "*.", "*.*"); NULL for identity */
};
void ar_chain_lookup(const struct ar_chain *c, const char *group, const char *resource,
                     struct ar_plist *out);

struct ar_result {
    enum ar_ptype type; /* the provider that matched (write: that wrote) */
    int provider_index; /* index in the resource's list; -1 for plain identity */
    int key_index;      /* index of the key inside the provider; -1 when not keyed */
    const char
        *key_name; /* key name, KMS provider name, or NULL (identity); points into the config */
    const uint8_t *key_fp;    /* 8-byte key fingerprint or NULL */
    bool stale;               /* kube-apiserver's stale flag */
    struct ar_kmsv2_info kms; /* valid when kms_version == 2: parsed fields, pointing into the
                                 input value (valid as long as the caller's input is) */
    int kms_version;          /* 1 or 2 when a KMS value was recognised, else 0 */
    char err[512];            /* one-line reason on failure */
};

/* Encrypt plaintext for storage under etcd key aad (the full key, e.g.
 * /registry/secrets/default/s1). out is reset, then filled. */
int ar_chain_write(const struct ar_chain *c, const char *group, const char *resource,
                   const uint8_t *aad, size_t aadlen, const uint8_t *in, size_t inlen,
                   struct ar_buf *out, struct ar_result *res);

/* The same with an explicit provider (index in the resource's list, see ar_chain_lookup) and key
 * (index inside that provider; 0 for identity), e.g. to write a canary with a key that only
 * reads. -ENOENT (res->err says which) when the resource has no such provider or key; -ENOPKG
 * for KMS. Byte-compatible with what kube-apiserver writes when that provider/key is first. */
int ar_chain_write_with(const struct ar_chain *c, const char *group, const char *resource,
                        size_t provider_index, size_t key_index, const uint8_t *aad, size_t aadlen,
                        const uint8_t *in, size_t inlen, struct ar_buf *out, struct ar_result *res);

/* Decrypt a stored value. out is reset, then filled with the plaintext on success. */
int ar_chain_read(const struct ar_chain *c, const char *group, const char *resource,
                  const uint8_t *aad, size_t aadlen, const uint8_t *in, size_t inlen,
                  struct ar_buf *out, struct ar_result *res);

/* Fresh random key of n bytes, base64 (for `atrest genkey`). dst: at least 64 bytes. */
int ar_genkey(size_t n, char *dst, size_t dstlen);

#endif
