/*
 * fuzz/fuzz_promtext.c: the tolerant Prometheus text parser and the metrics verdict (agent/proof.h)
 * on arbitrary bytes (an API server's /metrics is untrusted input). Every sample handed out must
 * have a valid metric name and NUL-terminated labels; parsing never fails except on memory.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/proof.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int check(void *arg, const char *name, const struct ar_prom_label *l, size_t n, double v)
{
    size_t *count = arg;

    (void)v;
    if (!name[0] || !(isalpha((unsigned char)name[0]) || name[0] == '_' || name[0] == ':'))
        abort();
    if (n > AR_PROM_MAX_LABELS)
        abort();
    for (size_t i = 0; i < n; i++) {
        if (!l[i].name[0] || strlen(l[i].value) > 1u << 20)
            abort();
    }
    (*count)++;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ar_metrics_verdict v;
    size_t count = 0, bad = 0;

    if (ar_promtext_parse((const char *)data, size, check, &count, &bad) < 0)
        return 0;
    if (ar_metrics_eval((const char *)data, size, "sha256:00", 1000, 0, &v) == 0) {
        if (v.style == AR_METRICS_NONE && v.loaded)
            abort();
        if (!memchr(v.hash, 0, sizeof(v.hash)))
            abort();
    }
    return 0;
}
