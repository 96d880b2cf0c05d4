/*
 * crypto/b64.c: base64 with Go's base64.StdEncoding.DecodeString rules.
 *
 * Go: padding required, '\r' and '\n' skipped anywhere (even between '=' characters), any other
 * character outside the standard alphabet is an error, data after the padding is an error,
 * non-canonical trailing bits are accepted (the encoding is not Strict()).
 * We check those rules here and let OpenSSL's EVP_DecodeBlock do the decoding of the (then
 * clean) input; EVP_DecodeBlock counts the padding bytes, which we subtract.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <sodium.h>

#include "crypto/config.h"

static int is_b64_alpha(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

size_t ar_b64_decoded_max(size_t srclen)
{
    return (srclen / 4 + 1) * 3;
}

int ar_b64_decode(const char *src, size_t srclen, uint8_t *dst, size_t *dstlen)
{
    const unsigned char *in = (const unsigned char *)src;
    unsigned char *clean = NULL;
    size_t n = 0, npad = 0, i;
    bool has_nl = false;
    int rc = -EINVAL, got;

    *dstlen = 0;
    /* Pass 1: check the rules on the input without \r\n. */
    for (i = 0; i < srclen; i++) {
        unsigned char c = in[i];
        if (c == '\r' || c == '\n') {
            has_nl = true;
            continue;
        }
        if (c == '=') {
            /* '=' may only be at position 2 or 3 of a quantum; "x===" and "=..." are errors. */
            if (npad == 0 && n % 4 < 2)
                goto out;
            npad++;
        } else if (!is_b64_alpha(c) || npad > 0) {
            goto out; /* bad character, or data after padding */
        }
        n++;
    }
    if (n % 4 != 0 || npad > 2)
        goto out;
    /* "xx=" at the end is caught by n % 4, "xxx==" too (5 characters). */
    if (n == 0) {
        rc = 0;
        goto out;
    }
    if (n > INT_MAX) {
        rc = -EOVERFLOW;
        goto out;
    }
    if (has_nl) {
        size_t k = 0;
        clean = malloc(n);
        if (!clean) {
            rc = -ENOMEM;
            goto out;
        }
        for (i = 0; i < srclen; i++)
            if (in[i] != '\r' && in[i] != '\n')
                clean[k++] = in[i];
        in = clean;
    }
    got = EVP_DecodeBlock(dst, in, (int)n);
    if (got < 0 || (size_t)got < npad)
        goto out;
    *dstlen = (size_t)got - npad;
    /* EVP_DecodeBlock wrote zero bytes for the padding: wipe them. */
    if (npad)
        sodium_memzero(dst + *dstlen, npad);
    rc = 0;
out:
    if (clean) {
        sodium_memzero(clean, n);
        free(clean);
    }
    return rc;
}

void ar_b64_encode(const uint8_t *src, size_t n, char *dst)
{
    if (n == 0) {
        dst[0] = '\0';
        return;
    }
    EVP_EncodeBlock((unsigned char *)dst, src, (int)n);
}
