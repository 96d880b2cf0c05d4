/*
 * crypto/providers.h: the value transformers of kube-apiserver below the prefix level
 * (shared spec 1.3-1.5). Private to crypto/ (chain.c, tests, bench).
 *
 * Contract
 * - Encrypt functions append "IV/nonce || ciphertext [|| tag]" to out; decrypt functions append
 *   the plaintext. On failure out->len is restored and whatever was appended is wiped.
 * - Errors: -EBADMSG with kube-apiserver's text in err (errlen bytes), -ENOMEM/-EMSGSIZE from
 *   the buffer, -EINVAL for a bad key length, -EIO when OpenSSL fails unexpectedly.
 * - Thread safe: each thread keeps its own reusable EVP_CIPHER_CTX per cipher, released when
 *   the thread exits; ciphers are fetched once per process.
 * - Random IVs and nonces come from OpenSSL's RAND_bytes (a per-thread DRBG, fork safe).
 */
#ifndef ATREST_CRYPTO_PROVIDERS_H
#define ATREST_CRYPTO_PROVIDERS_H

#include <stddef.h>
#include <stdint.h>

#include "crypto/buf.h"

#define AR_AES_BLOCK       16
#define AR_GCM_NONCE       12
#define AR_GCM_TAG         16
#define AR_SECRETBOX_NONCE 24
#define AR_SECRETBOX_TAG   16
#define AR_SECRETBOX_KEY   32

extern const char ar_err_short[];    /* "the stored data was shorter than the required size" */
extern const char ar_err_gcm_auth[]; /* "cipher: message authentication failed" */

int ar_aescbc_encrypt(const uint8_t *key, size_t klen, const uint8_t *in, size_t n,
                      struct ar_buf *out, char *err, size_t errlen);
int ar_aescbc_decrypt(const uint8_t *key, size_t klen, const uint8_t *in, size_t n,
                      struct ar_buf *out, char *err, size_t errlen);
/* aad: the etcd key. */
int ar_aesgcm_encrypt(const uint8_t *key, size_t klen, const uint8_t *aad, size_t aadlen,
                      const uint8_t *in, size_t n, struct ar_buf *out, char *err, size_t errlen);
int ar_aesgcm_decrypt(const uint8_t *key, size_t klen, const uint8_t *aad, size_t aadlen,
                      const uint8_t *in, size_t n, struct ar_buf *out, char *err, size_t errlen);
int ar_secretbox_encrypt(const uint8_t *key, size_t klen, const uint8_t *in, size_t n,
                         struct ar_buf *out, char *err, size_t errlen);
int ar_secretbox_decrypt(const uint8_t *key, size_t klen, const uint8_t *in, size_t n,
                         struct ar_buf *out, char *err, size_t errlen);

/* The same operations with a caller-chosen IV/nonce, for known-answer tests only. */
int ar_aescbc_encrypt_iv(const uint8_t *key, size_t klen, const uint8_t iv[AR_AES_BLOCK],
                         const uint8_t *in, size_t n, struct ar_buf *out);
int ar_aesgcm_encrypt_iv(const uint8_t *key, size_t klen, const uint8_t nonce[AR_GCM_NONCE],
                         const uint8_t *aad, size_t aadlen, const uint8_t *in, size_t n,
                         struct ar_buf *out);

/* Fill p with n random bytes (RAND_bytes). 0 or -EIO. */
int ar_random(uint8_t *p, size_t n);

#endif
