/*
 * tests/unit/kat.h: read tests/data/kat.json (jansson) for the crypto tests. Header-only so
 * each test binary stays self-contained.
 */
#ifndef ATREST_TESTS_KAT_H
#define ATREST_TESTS_KAT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sodium.h>

#define KAT_PATH "tests/data/kat.json"

struct kat_bytes {
    uint8_t *p;
    size_t n;
};

static inline json_t *kat_load(void)
{
    json_error_t je;
    json_t *root = json_load_file(KAT_PATH, JSON_REJECT_DUPLICATES, &je);

    if (!root) {
        fprintf(stderr, "cannot load %s (run from the repository root): %s\n", KAT_PATH, je.text);
        abort();
    }
    return root;
}

static inline json_t *kat_cases(json_t *root)
{
    json_t *c = json_object_get(root, "cases");

    if (!json_is_array(c) || json_array_size(c) == 0)
        abort();
    return c;
}

static inline const char *kat_str(json_t *c, const char *field)
{
    const char *s = json_string_value(json_object_get(c, field));

    return s ? s : "";
}

/* base64 field -> malloc'd bytes (always at least 1 byte allocated) */
static inline struct kat_bytes kat_b64(json_t *c, const char *field)
{
    const char *s = kat_str(c, field);
    size_t sl = strlen(s), n = 0;
    struct kat_bytes b;

    b.p = malloc(sl + 1);
    if (!b.p ||
        sodium_base642bin(b.p, sl + 1, s, sl, NULL, &n, NULL, sodium_base64_VARIANT_ORIGINAL) != 0)
        abort();
    b.n = n;
    return b;
}

static inline json_t *kat_find(json_t *root, const char *name)
{
    json_t *cases = kat_cases(root), *c;
    size_t i;

    json_array_foreach(cases, i, c) if (strcmp(kat_str(c, "name"), name) == 0) return c;
    abort();
}

static inline void hex2bin_or_die(const char *hex, uint8_t *out, size_t n)
{
    size_t got = 0;

    if (sodium_hex2bin(out, n, hex, strlen(hex), NULL, &got, NULL) != 0 || got != n)
        abort();
}

#ifdef KAT_WITH_CONFIG
#include "crypto/chain.h"
#include "crypto/config.h"

/* Load a config from YAML text; any diagnostic error fails the test (printed, no key text). */
static inline struct ar_config *kat_config(const char *yaml)
{
    struct ar_load_opts lo = {.kmsv1_allowed = true};
    struct ar_diags d;
    struct ar_config *c = NULL;
    int r;

    ar_diags_init(&d);
    r = ar_config_load_mem("test.yaml", yaml, strlen(yaml), &lo, &c, &d);
    if (r < 0 || d.nerrors) {
        for (size_t i = 0; i < d.n; i++) {
            char line[1024];

            ar_diag_format(&d.v[i], line, sizeof(line));
            fprintf(stderr, "config: %s\n", line);
        }
        abort();
    }
    ar_diags_free(&d);
    return c;
}

static inline struct ar_chain *kat_chain(const char *yaml)
{
    struct ar_config *c = kat_config(yaml);
    struct ar_chain *ch = NULL;

    if (ar_chain_new(c, &ch) != 0)
        abort();
    ar_config_unref(c);
    return ch;
}
#endif

#endif
