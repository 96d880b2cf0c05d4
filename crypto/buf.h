/*
 * crypto/buf.h: a growable byte buffer for values that may hold plaintext.
 *
 * Contract: every reallocation copies and wipes the old block; ar_buf_free wipes before it
 * frees. A buffer has a hard cap (default 64 MiB) past which growth fails with -EMSGSIZE.
 */
#ifndef ATREST_CRYPTO_BUF_H
#define ATREST_CRYPTO_BUF_H

#include <stddef.h>
#include <stdint.h>

struct ar_buf {
    uint8_t *p;
    size_t len;
    size_t cap;
    size_t max; /* 0: 64 MiB */
};

#define AR_BUF_INIT                                                                                \
    {                                                                                              \
        NULL, 0, 0, 0                                                                              \
    }

/* Make room for n more bytes. 0, -ENOMEM or -EMSGSIZE. */
int ar_buf_reserve(struct ar_buf *b, size_t n);
int ar_buf_append(struct ar_buf *b, const void *p, size_t n);
/* len = 0; contents wiped; capacity kept. */
void ar_buf_reset(struct ar_buf *b);
/* Wipe and free; the buffer is left empty and reusable. */
void ar_buf_free(struct ar_buf *b);

#endif
