/*
 * crypto/buf.c: growable byte buffer that wipes what it drops (crypto/buf.h).
 */
#include "crypto/buf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#define AR_BUF_DEFAULT_MAX ((size_t)64 << 20)

static size_t buf_max(const struct ar_buf *b)
{
    return b->max ? b->max : AR_BUF_DEFAULT_MAX;
}

int ar_buf_reserve(struct ar_buf *b, size_t n)
{
    size_t max = buf_max(b), need, ncap;
    uint8_t *np;

    if (n > max || b->len > max - n)
        return -EMSGSIZE;
    need = b->len + n;
    if (need <= b->cap)
        return 0;
    ncap = b->cap ? b->cap : 64;
    while (ncap < need)
        ncap = ncap > max / 2 ? max : ncap * 2;
    if (ncap > max)
        ncap = max;
    np = malloc(ncap);
    if (!np)
        return -ENOMEM;
    if (b->p) {
        memcpy(np, b->p, b->len);
        sodium_memzero(b->p, b->cap);
        free(b->p);
    }
    b->p = np;
    b->cap = ncap;
    return 0;
}

int ar_buf_append(struct ar_buf *b, const void *p, size_t n)
{
    int r;

    if (n == 0)
        return 0;
    r = ar_buf_reserve(b, n);
    if (r < 0)
        return r;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

void ar_buf_reset(struct ar_buf *b)
{
    if (b->p && b->len)
        sodium_memzero(b->p, b->len);
    b->len = 0;
}

void ar_buf_free(struct ar_buf *b)
{
    if (b->p) {
        sodium_memzero(b->p, b->cap);
        free(b->p);
    }
    b->p = NULL;
    b->len = 0;
    b->cap = 0;
}
