/*
 * fuzz/fuzz_phase.c: phase derivation (coord/phase.h) on two arbitrary configs: the bytes up to
 * the first NUL are `from`, the rest `to`. When both load, the plan must derive or refuse with a
 * diagnostic; every phase config must render and load back with its fingerprint, and the last
 * one must be `to`.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "coord/phase.h"
#include "crypto/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct ar_config *load(const uint8_t *p, size_t n)
{
    struct ar_config *c = NULL;
    struct ar_diags d;

    ar_diags_init(&d);
    if (ar_config_load_mem("fuzz", p, n, NULL, &c, &d) != 0)
        c = NULL;
    ar_diags_free(&d);
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    struct ar_config *from, *to, *back;
    struct ar_plan *plan = NULL;
    struct ar_diags d;
    char *out = NULL;
    size_t n = 0, i;
    int rc;

    if (!nul)
        return 0;
    from = load(data, (size_t)(nul - data));
    to = load(nul + 1, size - (size_t)(nul - data) - 1);
    if (!from || !to)
        goto out;
    ar_diags_init(&d);
    rc = ar_plan_derive(from, to, "to", NULL, &plan, &d);
    if (rc != 0 && (plan || d.nerrors == 0))
        abort();
    for (i = 0; plan && i < plan->nphases; i++) {
        const struct ar_config *c = plan->phases[i].config;
        if (ar_config_render(c, false, &out, &n) != 0)
            abort();
        back = load((const uint8_t *)out, n);
        if (!back || memcmp(back->fingerprint, c->fingerprint, AR_SHA256_LEN) != 0)
            abort();
        ar_config_unref(back);
        ar_config_render_free(out, n);
    }
    if (plan && plan->nphases &&
        memcmp(plan->phases[plan->nphases - 1].config->fingerprint, to->fingerprint,
               AR_SHA256_LEN) != 0)
        abort();
    if (plan && !plan->nphases && memcmp(from->fingerprint, to->fingerprint, AR_SHA256_LEN) != 0)
        abort();
    ar_plan_free(plan);
    ar_diags_free(&d);
out:
    ar_config_unref(from);
    ar_config_unref(to);
    return 0;
}
