/*
 * tests/unit/test_compose.c: ar_config_compose (crypto/config.h) builds a config from parts of
 * loaded configs; it validates exactly as a loaded file and copies secrets arena to arena.
 * Keys are generated at test time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <stdbool.h>

#include <sodium.h>

#include "crypto/chain.h"
#include "crypto/config.h"

static char k16[64], k32a[64], k32b[64];

static int setup(void **state)
{
    (void)state;
    assert_int_equal(ar_crypto_init(), 0);
    assert_int_equal(ar_genkey(16, k16, sizeof(k16)), 0);
    assert_int_equal(ar_genkey(32, k32a, sizeof(k32a)), 0);
    assert_int_equal(ar_genkey(32, k32b, sizeof(k32b)), 0);
    return 0;
}

static struct ar_config *load(const char *fmt, ...)
{
    char text[4096];
    struct ar_config *c = NULL;
    struct ar_diags d;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof(text));
    ar_diags_init(&d);
    assert_int_equal(ar_config_load_mem("t.yaml", text, (size_t)n, NULL, &c, &d), 0);
    assert_int_equal(d.nerrors, 0);
    ar_diags_free(&d);
    sodium_memzero(text, sizeof(text));
    return c;
}

#define HDR "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"

static const char *A_FMT = HDR "  - resources: [secrets]\n"
                               "    providers:\n"
                               "      - aescbc:\n"
                               "          keys: [{name: k1, secret: \"%s\"}]\n"
                               "      - identity: {}\n";
static const char *B_FMT = HDR "  - resources: [configmaps, \"*.apps\"]\n"
                               "    providers:\n"
                               "      - secretbox:\n"
                               "          keys: [{name: s1, secret: \"%s\"}, {name: s2, secret: "
                               "\"%s\"}]\n"
                               "      - kms: {apiVersion: v2, name: vault, endpoint: "
                               "\"unix:///run/kms.sock\", timeout: 7s}\n";

/* The composed config equals, key bytes and all, the file that says the same thing. */
static void test_compose_equals_file(void **state)
{
    struct ar_config *a = load(A_FMT, k16), *b = load(B_FMT, k32a, k32b), *c = NULL, *want;
    const struct ar_provider *pa = &a->rules[0].providers[0], *pb = &b->rules[0].providers[0];
    const struct ar_key *keys[3] = {&pb->keys[1], &pa->keys[0], &pb->keys[0]};
    struct ar_compose_provider prov[3] = {
        {.type = AR_P_SECRETBOX, .keys = keys, .nkeys = 1},
        {.type = AR_P_AESCBC, .keys = keys + 1, .nkeys = 1},
        {.type = AR_P_KMS, .kms = &b->rules[0].providers[1].kms},
    };
    const struct ar_compose_provider idp = {.type = AR_P_IDENTITY};
    const char *res1[] = {"secrets", "configmaps"}, *res2[] = {"*.*"};
    struct ar_compose_rule rules[2] = {{res1, 2, prov, 3}, {res2, 1, &idp, 1}};
    char fa[AR_HASH_STRLEN], fb[AR_HASH_STRLEN], *r = NULL;
    size_t rlen = 0;
    uint8_t h[32];
    struct ar_diags d;

    (void)state;
    ar_diags_init(&d);
    assert_int_equal(ar_config_compose("phase", rules, 2, NULL, &c, &d), 0);
    assert_int_equal(d.n, 0);
    /* independent of its sources */
    a = ar_config_unref(a);
    want = load(HDR "  - resources: [secrets, configmaps]\n"
                    "    providers:\n"
                    "      - secretbox: {keys: [{name: s2, secret: \"%s\"}]}\n"
                    "      - aescbc: {keys: [{name: k1, secret: \"%s\"}]}\n"
                    "      - kms: {apiVersion: v2, name: vault, endpoint: "
                    "\"unix:///run/kms.sock\", timeout: 7s}\n"
                    "  - resources: [\"*.*\"]\n"
                    "    providers: [{identity: {}}]\n",
                k32b, k16);
    ar_config_fingerprint_str(c, fa);
    ar_config_fingerprint_str(want, fb);
    assert_string_equal(fa, fb);
    assert_ptr_not_equal(c->rules[0].providers[0].keys[0].secret, keys[0]->secret);
    assert_memory_equal(c->rules[0].providers[0].keys[0].secret, keys[0]->secret, 32);
    assert_memory_equal(c->rules[0].providers[0].keys[0].fp, keys[0]->fp, 8);
    assert_int_equal(c->rules[0].providers[2].kms.timeout_ns, 7000000000LL);
    assert_int_equal(c->rules[0].providers[2].kms.api_version, 2);
    /* file_sha256 is over the rendered bytes (what kube-apiserver hashes) */
    assert_int_equal(ar_config_render(c, false, &r, &rlen), 0);
    crypto_hash_sha256(h, (const uint8_t *)r, rlen);
    assert_memory_equal(h, c->file_sha256, 32);
    ar_config_render_free(r, rlen);
    ar_config_unref(want);
    ar_config_unref(b);
    ar_config_unref(c);
    ar_diags_free(&d);
}

/* A value written through the composed config's chain is read by the source's chain. */
static void test_compose_chain_interop(void **state)
{
    struct ar_config *a = load(A_FMT, k16), *c = NULL;
    const struct ar_key *keys[1] = {&a->rules[0].providers[0].keys[0]};
    struct ar_compose_provider prov[1] = {{.type = AR_P_AESCBC, .keys = keys, .nkeys = 1}};
    const char *res[] = {"secrets"};
    struct ar_compose_rule rule = {res, 1, prov, 1};
    struct ar_chain *ca = NULL, *cc = NULL;
    struct ar_buf enc = AR_BUF_INIT, dec = AR_BUF_INIT;
    struct ar_result rr;
    struct ar_diags d;
    static const char aad[] = "/registry/secrets/ns/s";

    (void)state;
    ar_diags_init(&d);
    assert_int_equal(ar_config_compose(NULL, &rule, 1, NULL, &c, &d), 0);
    assert_int_equal(ar_chain_new(c, &cc), 0);
    assert_int_equal(ar_chain_new(a, &ca), 0);
    assert_int_equal(ar_chain_write(cc, "", "secrets", (const uint8_t *)aad, strlen(aad),
                                    (const uint8_t *)"hello", 5, &enc, &rr),
                     0);
    assert_string_equal(rr.key_name, "k1");
    assert_int_equal(ar_chain_read(ca, "", "secrets", (const uint8_t *)aad, strlen(aad), enc.p,
                                   enc.len, &dec, &rr),
                     0);
    assert_int_equal(dec.len, 5);
    assert_memory_equal(dec.p, "hello", 5);
    ar_buf_free(&enc);
    ar_buf_free(&dec);
    ar_chain_unref(ca);
    ar_chain_unref(cc);
    ar_config_unref(c);
    ar_config_unref(a);
    ar_diags_free(&d);
}

static void expect_error(const struct ar_compose_rule *rules, size_t n, const char *line)
{
    struct ar_config *c = NULL;
    struct ar_diags d;
    char buf[512];

    ar_diags_init(&d);
    assert_int_equal(ar_config_compose("p.yaml", rules, n, NULL, &c, &d), -EINVAL);
    assert_null(c);
    assert_int_equal(d.nerrors, 1);
    ar_diag_format(&d.v[0], buf, sizeof(buf));
    assert_string_equal(buf, line);
    ar_diags_free(&d);
}

/* The loader's validation rules and masking check apply, with its texts. */
static void test_compose_errors(void **state)
{
    struct ar_config *b = load(B_FMT, k32a, k32b);
    const struct ar_compose_provider kms = {.type = AR_P_KMS, .kms = &b->rules[0].providers[1].kms};
    const struct ar_compose_provider idp = {.type = AR_P_IDENTITY};
    const struct ar_compose_provider nokeys = {.type = AR_P_AESGCM};
    const char *r1[] = {"secrets"}, *r2[] = {"configmaps"}, *rw[] = {"*."}, *rdup[] = {"a", "a"};
    struct ar_compose_rule two_kms[2] = {{r1, 1, &kms, 1}, {r2, 1, &kms, 1}};
    struct ar_compose_rule masked[2] = {{rw, 1, &idp, 1}, {r1, 1, &idp, 1}};
    struct ar_compose_rule empty = {r1, 1, &nokeys, 1}, noprov = {r1, 1, NULL, 0};
    struct ar_compose_rule dup = {rdup, 2, &idp, 1};

    (void)state;
    expect_error(two_kms, 2,
                 "p.yaml:0:0: resources[1].providers[0].kms.name: Invalid value: \"vault\": "
                 "duplicate KMS provider name vault, names must be unique");
    expect_error(masked, 2,
                 "p.yaml:0:0: resources[1].resources[0]: resource \"secrets\" is masked by earlier "
                 "rule \"*.\"");
    expect_error(&empty, 1,
                 "p.yaml:0:0: resources[0].providers[0].aesgcm.keys: Required value: at least "
                 "one keys is required");
    expect_error(&noprov, 1,
                 "p.yaml:0:0: resources[0].providers: Required value: at least one "
                 "resources[0].providers is required");
    expect_error(&dup, 1,
                 "p.yaml:0:0: resources[0].resources: Invalid value: []string{\"a\", \"a\"}: "
                 "the same resource cannot be specified multiple times");
    expect_error(NULL, 0,
                 "p.yaml:0:0: resources: Required value: at least one resources is "
                 "required");
    ar_config_unref(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compose_equals_file),
        cmocka_unit_test(test_compose_chain_interop),
        cmocka_unit_test(test_compose_errors),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
