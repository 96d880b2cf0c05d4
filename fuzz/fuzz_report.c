/*
 * fuzz/fuzz_report.c: the member records other agents write (coord/report.h) on arbitrary
 * bytes. A report or registration that parses must build again, and the built text must parse
 * back to the same struct (what one agent accepts, it could have written itself).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "coord/report.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ar_report r, back;
    struct ar_registration g, gb;
    char *s;

    if (ar_report_parse((const char *)data, size, &r) == 0) {
        if (!r.node[0]) /* a name is required to build (a record without one reads fine) */
            memcpy(r.node, "n", 2);
        if (ar_report_build(&r, true, &s) < 0)
            abort();
        if (ar_report_parse(s, strlen(s), &back) < 0 || memcmp(&r, &back, sizeof(r)))
            abort();
        free(s);
    }
    if (ar_registration_parse((const char *)data, size, &g) == 0) {
        if (!g.node[0])
            memcpy(g.node, "n", 2);
        if (ar_registration_build(&g, &s) < 0)
            abort();
        if (ar_registration_parse(s, strlen(s), &gb) < 0 || memcmp(&g, &gb, sizeof(g)))
            abort();
        free(s);
    }
    return 0;
}
