/*
 * crypto/providers.c: aescbc, aesgcm and secretbox below the prefix level (crypto/providers.h).
 */
#include "crypto/providers.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sodium.h>

const char ar_err_short[] = "the stored data was shorter than the required size";
const char ar_err_gcm_auth[] = "cipher: message authentication failed";
static const char err_cbc_block[] = "the stored data is not a multiple of the block size";
static const char err_pkcs7_data[] = "invalid PKCS7 data (empty or not padded)";
static const char err_pkcs7_pad[] = "invalid padding on input";
static const char err_secretbox[] = "output array was not large enough for encryption";

enum { M_CBC = 0, M_GCM = 1, NMODES = 2 };
#define NSIZES 3 /* 16, 24, 32 */

static EVP_CIPHER *ciphers[NMODES][NSIZES];
static pthread_once_t ciphers_once = PTHREAD_ONCE_INIT;
static pthread_key_t tls_key;
static bool ciphers_ok;

/* One reusable context per cipher per thread; the cipher is set once, then each operation
 * re-initialises it with the key and IV only (no reallocation). */
static __thread EVP_CIPHER_CTX *tls_ctx[NMODES][NSIZES];

static void tls_release(void *unused)
{
    for (int m = 0; m < NMODES; m++)
        for (int s = 0; s < NSIZES; s++) {
            EVP_CIPHER_CTX_free(tls_ctx[m][s]); /* wipes the key schedule */
            tls_ctx[m][s] = NULL;
        }
}

static void ciphers_init(void)
{
    static const char *const names[NMODES][NSIZES] = {
        {"AES-128-CBC", "AES-192-CBC", "AES-256-CBC"},
        {"AES-128-GCM", "AES-192-GCM", "AES-256-GCM"},
    };

    if (pthread_key_create(&tls_key, tls_release) != 0)
        return;
    for (int m = 0; m < NMODES; m++)
        for (int s = 0; s < NSIZES; s++) {
            ciphers[m][s] = EVP_CIPHER_fetch(NULL, names[m][s], NULL);
            if (!ciphers[m][s])
                return;
        }
    ciphers_ok = true;
}

static int size_index(size_t klen)
{
    switch (klen) {
    case 16:
        return 0;
    case 24:
        return 1;
    case 32:
        return 2;
    default:
        return -1;
    }
}

/* The thread's context for (mode, key size), initialised with key and iv for enc (1/0). */
static EVP_CIPHER_CTX *get_ctx(int mode, const uint8_t *key, size_t klen, const uint8_t *iv,
                               int enc)
{
    int s = size_index(klen);
    EVP_CIPHER_CTX *ctx;

    if (s < 0)
        return NULL;
    ctx = tls_ctx[mode][s];
    if (!ctx) {
        pthread_once(&ciphers_once, ciphers_init);
        if (!ciphers_ok)
            return NULL;
        ctx = EVP_CIPHER_CTX_new();
        if (!ctx)
            return NULL;
        if (!EVP_CipherInit_ex2(ctx, ciphers[mode][s], NULL, NULL, enc, NULL) ||
            (mode == M_CBC && !EVP_CIPHER_CTX_set_padding(ctx, 0))) {
            EVP_CIPHER_CTX_free(ctx);
            return NULL;
        }
        tls_ctx[mode][s] = ctx;
        pthread_setspecific(tls_key, (void *)1);
    }
    if (!EVP_CipherInit_ex2(ctx, NULL, key, iv, enc, NULL))
        return NULL;
    return ctx;
}

int ar_random(uint8_t *p, size_t n)
{
    if (n > INT_MAX || RAND_bytes(p, (int)n) != 1)
        return -EIO;
    return 0;
}

static void seterr(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
}

/* Undo a partial append. */
static void rollback(struct ar_buf *out, size_t len0)
{
    if (out->len > len0)
        sodium_memzero(out->p + len0, out->len - len0);
    out->len = len0;
}

/* EVP lengths are int: process big inputs in chunks. */
#define CHUNK ((size_t)1 << 30)

static int evp_update(EVP_CIPHER_CTX *ctx, uint8_t *dst, const uint8_t *src, size_t n)
{
    while (n) {
        int l = (int)(n > CHUNK ? CHUNK : n), ol = 0;

        if (!EVP_CipherUpdate(ctx, dst, &ol, src, l) || ol != l)
            return -EIO;
        if (dst)
            dst += l;
        src += l;
        n -= (size_t)l;
    }
    return 0;
}

/* ---- aescbc ------------------------------------------------------------------------- */

int ar_aescbc_encrypt_iv(const uint8_t *key, size_t klen, const uint8_t iv[AR_AES_BLOCK],
                         const uint8_t *in, size_t n, struct ar_buf *out)
{
    size_t len0 = out->len, full = n - n % AR_AES_BLOCK, rem = n - full;
    uint8_t last[AR_AES_BLOCK];
    EVP_CIPHER_CTX *ctx;
    uint8_t *d;
    int r;

    if (size_index(klen) < 0)
        return -EINVAL;
    if (n > SIZE_MAX - 2 * AR_AES_BLOCK)
        return -EMSGSIZE;
    r = ar_buf_reserve(out, AR_AES_BLOCK + full + AR_AES_BLOCK);
    if (r < 0)
        return r;
    ctx = get_ctx(M_CBC, key, klen, iv, 1);
    if (!ctx)
        return -EIO;
    d = out->p + out->len;
    memcpy(d, iv, AR_AES_BLOCK);
    /* PKCS#7, always: 1..16 bytes of value 16 - n%16 */
    memcpy(last, in + full, rem);
    memset(last + rem, (int)(AR_AES_BLOCK - rem), AR_AES_BLOCK - rem);
    if (evp_update(ctx, d + AR_AES_BLOCK, in, full) < 0 ||
        evp_update(ctx, d + AR_AES_BLOCK + full, last, AR_AES_BLOCK) < 0) {
        sodium_memzero(last, sizeof(last));
        rollback(out, len0);
        return -EIO;
    }
    sodium_memzero(last, sizeof(last));
    out->len += AR_AES_BLOCK + full + AR_AES_BLOCK;
    return 0;
}

int ar_aescbc_encrypt(const uint8_t *key, size_t klen, const uint8_t *in, size_t n,
                      struct ar_buf *out, char *err, size_t errlen)
{
    uint8_t iv[AR_AES_BLOCK];

    if (ar_random(iv, sizeof(iv)) < 0)
        return -EIO;
    return ar_aescbc_encrypt_iv(key, klen, iv, in, n, out);
}

int ar_aescbc_decrypt(const uint8_t *key, size_t klen, const uint8_t *in, size_t n,
                      struct ar_buf *out, char *err, size_t errlen)
{
    size_t len0 = out->len, ctlen;
    EVP_CIPHER_CTX *ctx;
    uint8_t *d, c;
    int r;

    if (size_index(klen) < 0)
        return -EINVAL;
    if (n < AR_AES_BLOCK) {
        seterr(err, errlen, ar_err_short);
        return -EBADMSG;
    }
    ctlen = n - AR_AES_BLOCK;
    if (ctlen % AR_AES_BLOCK) {
        seterr(err, errlen, err_cbc_block);
        return -EBADMSG;
    }
    if (ctlen == 0) {
        /* Go panics here (result[-1]); we report the padding error. */
        seterr(err, errlen, err_pkcs7_data);
        return -EBADMSG;
    }
    r = ar_buf_reserve(out, ctlen);
    if (r < 0)
        return r;
    ctx = get_ctx(M_CBC, key, klen, in, 0);
    if (!ctx)
        return -EIO;
    d = out->p + out->len;
    if (evp_update(ctx, d, in + AR_AES_BLOCK, ctlen) < 0) {
        sodium_memzero(d, ctlen);
        return -EIO;
    }
    out->len += ctlen;
    c = d[ctlen - 1];
    if (c == 0 || c > ctlen) {
        rollback(out, len0);
        seterr(err, errlen, err_pkcs7_data);
        return -EBADMSG;
    }
    for (size_t i = ctlen - c; i < ctlen; i++) {
        if (d[i] != c) {
            rollback(out, len0);
            seterr(err, errlen, err_pkcs7_pad);
            return -EBADMSG;
        }
    }
    rollback(out, out->len - c);
    return 0;
}

/* ---- aesgcm ------------------------------------------------------------------------- */

int ar_aesgcm_encrypt_iv(const uint8_t *key, size_t klen, const uint8_t nonce[AR_GCM_NONCE],
                         const uint8_t *aad, size_t aadlen, const uint8_t *in, size_t n,
                         struct ar_buf *out)
{
    size_t len0 = out->len;
    EVP_CIPHER_CTX *ctx;
    uint8_t *d;
    int r, ol = 0;

    if (size_index(klen) < 0)
        return -EINVAL;
    if (n > SIZE_MAX - AR_GCM_NONCE - AR_GCM_TAG)
        return -EMSGSIZE;
    r = ar_buf_reserve(out, AR_GCM_NONCE + n + AR_GCM_TAG);
    if (r < 0)
        return r;
    ctx = get_ctx(M_GCM, key, klen, nonce, 1);
    if (!ctx)
        return -EIO;
    d = out->p + out->len;
    memcpy(d, nonce, AR_GCM_NONCE);
    if ((aadlen && evp_update(ctx, NULL, aad, aadlen) < 0) ||
        evp_update(ctx, d + AR_GCM_NONCE, in, n) < 0 ||
        !EVP_EncryptFinal_ex(ctx, d + AR_GCM_NONCE + n, &ol) ||
        !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, AR_GCM_TAG, d + AR_GCM_NONCE + n)) {
        rollback(out, len0);
        return -EIO;
    }
    out->len += AR_GCM_NONCE + n + AR_GCM_TAG;
    return 0;
}

int ar_aesgcm_encrypt(const uint8_t *key, size_t klen, const uint8_t *aad, size_t aadlen,
                      const uint8_t *in, size_t n, struct ar_buf *out, char *err, size_t errlen)
{
    uint8_t nonce[AR_GCM_NONCE];

    if (ar_random(nonce, sizeof(nonce)) < 0)
        return -EIO;
    return ar_aesgcm_encrypt_iv(key, klen, nonce, aad, aadlen, in, n, out);
}

int ar_aesgcm_decrypt(const uint8_t *key, size_t klen, const uint8_t *aad, size_t aadlen,
                      const uint8_t *in, size_t n, struct ar_buf *out, char *err, size_t errlen)
{
    size_t len0 = out->len, ctlen;
    EVP_CIPHER_CTX *ctx;
    uint8_t *d, tag[AR_GCM_TAG];
    int r, ol = 0;

    if (size_index(klen) < 0)
        return -EINVAL;
    if (n < AR_GCM_NONCE) {
        seterr(err, errlen, ar_err_short);
        return -EBADMSG;
    }
    if (n < AR_GCM_NONCE + AR_GCM_TAG) {
        seterr(err, errlen, ar_err_gcm_auth);
        return -EBADMSG;
    }
    ctlen = n - AR_GCM_NONCE - AR_GCM_TAG;
    r = ar_buf_reserve(out, ctlen + 1);
    if (r < 0)
        return r;
    ctx = get_ctx(M_GCM, key, klen, in, 0);
    if (!ctx)
        return -EIO;
    d = out->p + out->len;
    memcpy(tag, in + n - AR_GCM_TAG, AR_GCM_TAG);
    if ((aadlen && evp_update(ctx, NULL, aad, aadlen) < 0) ||
        evp_update(ctx, d, in + AR_GCM_NONCE, ctlen) < 0 ||
        !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, AR_GCM_TAG, tag)) {
        sodium_memzero(d, ctlen);
        return -EIO;
    }
    out->len += ctlen;
    if (EVP_DecryptFinal_ex(ctx, d + ctlen, &ol) != 1) {
        rollback(out, len0);
        seterr(err, errlen, ar_err_gcm_auth);
        return -EBADMSG;
    }
    return 0;
}

/* ---- secretbox ---------------------------------------------------------------------- */

int ar_secretbox_encrypt(const uint8_t *key, size_t klen, const uint8_t *in, size_t n,
                         struct ar_buf *out, char *err, size_t errlen)
{
    uint8_t *d;
    int r;

    if (klen != AR_SECRETBOX_KEY)
        return -EINVAL;
    if (n > SIZE_MAX - AR_SECRETBOX_NONCE - AR_SECRETBOX_TAG)
        return -EMSGSIZE;
    r = ar_buf_reserve(out, AR_SECRETBOX_NONCE + AR_SECRETBOX_TAG + n);
    if (r < 0)
        return r;
    d = out->p + out->len;
    if (ar_random(d, AR_SECRETBOX_NONCE) < 0)
        return -EIO;
    if (crypto_secretbox_easy(d + AR_SECRETBOX_NONCE, in, n, d, key) != 0) {
        sodium_memzero(d, AR_SECRETBOX_NONCE + AR_SECRETBOX_TAG + n);
        return -EIO;
    }
    out->len += AR_SECRETBOX_NONCE + AR_SECRETBOX_TAG + n;
    return 0;
}

int ar_secretbox_decrypt(const uint8_t *key, size_t klen, const uint8_t *in, size_t n,
                         struct ar_buf *out, char *err, size_t errlen)
{
    size_t ptlen;
    int r;

    if (klen != AR_SECRETBOX_KEY)
        return -EINVAL;
    if (n < AR_SECRETBOX_NONCE + AR_SECRETBOX_TAG) {
        seterr(err, errlen, ar_err_short);
        return -EBADMSG;
    }
    ptlen = n - AR_SECRETBOX_NONCE - AR_SECRETBOX_TAG;
    r = ar_buf_reserve(out, ptlen + 1);
    if (r < 0)
        return r;
    /* libsodium verifies before it decrypts: nothing is written on failure */
    if (crypto_secretbox_open_easy(out->p + out->len, in + AR_SECRETBOX_NONCE,
                                   n - AR_SECRETBOX_NONCE, in, key) != 0) {
        seterr(err, errlen, err_secretbox);
        return -EBADMSG;
    }
    out->len += ptlen;
    return 0;
}
