/*
 * fuzz/fuzz_settings.c: the agent settings loader (agent.yaml) on arbitrary bytes. A file that
 * loads must have no error diagnostics, and every diagnostic must format; ar_parse_listen gets
 * the same bytes as a listen address.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/settings.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ar_settings s;
    struct ar_diags d;
    char line[1024], host[256], addr[300];
    uint16_t port;
    int r;

    if (ar_settings_init(&s) < 0)
        return 0;
    ar_diags_init(&d);
    r = ar_settings_load_mem(&s, "fuzz.yaml", (const char *)data, size, &d);
    if (r == 0 && d.nerrors != 0)
        abort();
    if (r < 0 && d.nerrors == 0)
        abort();
    for (size_t i = 0; i < d.n; i++)
        ar_diag_format(&d.v[i], line, sizeof(line));
    ar_diags_free(&d);
    ar_settings_free(&s);

    if (size < sizeof(addr)) {
        memcpy(addr, data, size);
        addr[size] = '\0';
        ar_parse_listen(addr, host, sizeof(host), &port);
    }
    return 0;
}
