/*
 * fuzz/fuzz_config.c: the EncryptionConfiguration loader on arbitrary bytes. Valid inputs are
 * rendered (plain and redacted); the plain rendering must load again with the same fingerprint.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ar_load_opts o = {.reload = size & 1, .kmsv1_allowed = (size & 2) != 0};
    struct ar_config *c = NULL, *c2 = NULL;
    struct ar_diags d;
    char line[512];
    char *out = NULL;
    size_t n = 0, i;

    ar_diags_init(&d);
    if (ar_config_load_mem("fuzz", data, size, &o, &c, &d) == 0) {
        if (d.nerrors != 0)
            abort();
        if (ar_config_render(c, false, &out, &n) == 0) {
            if (ar_config_load_mem("rendered", out, n, &o, &c2, NULL) != 0)
                abort();
            if (memcmp(c->fingerprint, c2->fingerprint, AR_SHA256_LEN) != 0)
                abort();
            c2 = ar_config_unref(c2);
            ar_config_render_free(out, n);
        }
        if (ar_config_render(c, true, &out, &n) == 0)
            ar_config_render_free(out, n);
        c = ar_config_unref(c);
    } else if (c != NULL || d.nerrors == 0) {
        abort();
    }
    for (i = 0; i < d.n; i++)
        ar_diag_format(&d.v[i], line, sizeof(line));
    ar_diags_free(&d);
    return 0;
}
