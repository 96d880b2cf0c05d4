/*
 * fuzz/fuzz_reencrypt.c: the re-encrypt checkpoint record parser (coord/reencrypt.h), which
 * reads what etcd holds under <prefix>reencrypt/<id> as untrusted bytes.
 *
 * Oracle: a record that parses has counts that add up and a cursor that fits; building it again
 * and parsing that gives the same record (a fixed point).
 */
#include <stdlib.h>
#include <string.h>

#include "coord/reencrypt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ar_reencrypt_ckpt a, b;
    size_t len = 0;
    char *s;

    if (ar_reencrypt_ckpt_parse(data, size, &a) < 0)
        return 0;
    if (a.rewritten + a.skipped + a.conflicts + a.failed != a.done ||
        a.cursor_len > sizeof(a.cursor) || a.selector > AR_REENCRYPT_MAX_SELECTORS)
        abort();
    s = ar_reencrypt_ckpt_build(&a, &len);
    if (!s)
        return 0;
    if (ar_reencrypt_ckpt_parse((const uint8_t *)s, len, &b) < 0 || memcmp(&a, &b, sizeof(a)))
        abort();
    free(s);
    return 0;
}
