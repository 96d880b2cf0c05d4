/*
 * tests/unit/test_chain.c: the provider chain (shared spec 1.3-1.5, 1.8, 2.3): round trips,
 * nonce uniqueness, kube-apiserver's stale matrix and error texts, lookup, threads, buffers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <pthread.h>

#define KAT_WITH_CONFIG 1
#include "crypto/buf.h"
#include "crypto/providers.h"
#include "kat.h"

static const uint8_t AAD[] = "/registry/secrets/default/s1";
#define AADN (sizeof(AAD) - 1)

#define HDR "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"

/* fresh keys generated at test time */
static char k16[64], k24[64], k32[64], k32b[64], k32c[64];

static int setup(void **state)
{
    if (sodium_init() < 0 || ar_genkey(16, k16, sizeof(k16)) || ar_genkey(24, k24, sizeof(k24)) ||
        ar_genkey(32, k32, sizeof(k32)) || ar_genkey(32, k32b, sizeof(k32b)) ||
        ar_genkey(32, k32c, sizeof(k32c)))
        return -1;
    return 0;
}

/* a chain for secrets with the given provider list (YAML flow items, comma separated) */
static struct ar_chain *chain_for(const char *providers)
{
    char y[4096];

    snprintf(y, sizeof(y), HDR "- resources: [secrets]\n  providers: [%s]\n", providers);
    return kat_chain(y);
}

static char *keyed(char *dst, size_t n, const char *p, const char *k1, const char *s1,
                   const char *k2, const char *s2)
{
    if (k2)
        snprintf(dst, n, "{%s: {keys: [{name: '%s', secret: '%s'}, {name: '%s', secret: '%s'}]}}",
                 p, k1, s1, k2, s2);
    else
        snprintf(dst, n, "{%s: {keys: [{name: '%s', secret: '%s'}]}}", p, k1, s1);
    return dst;
}

static int rd(struct ar_chain *c, const struct ar_buf *in, struct ar_buf *out,
              struct ar_result *res)
{
    return ar_chain_read(c, "", "secrets", AAD, AADN, in->p, in->len, out, res);
}

static int wr(struct ar_chain *c, const void *p, size_t n, struct ar_buf *out,
              struct ar_result *res)
{
    return ar_chain_write(c, "", "secrets", AAD, AADN, p, n, out, res);
}

/* ---- round trips ------------------------------------------------------------------- */

static void test_roundtrip(void **state)
{
    static const size_t big[] = {4096, 65536, 1 << 20};
    const struct {
        const char *p, *key;
        size_t overhead;
    } cases[] = {
        {"aescbc", k16, 16}, {"aescbc", k24, 16}, {"aescbc", k32, 16},    {"aesgcm", k16, 28},
        {"aesgcm", k24, 28}, {"aesgcm", k32, 28}, {"secretbox", k32, 40},
    };
    uint8_t *pt = malloc(1 << 20);
    struct ar_buf enc = AR_BUF_INIT, dec = AR_BUF_INIT;
    struct ar_result res;
    char prov[512];

    assert_non_null(pt);
    randombytes_buf(pt, 1 << 20);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ar_chain *c =
            chain_for(keyed(prov, sizeof(prov), cases[i].p, "k1", cases[i].key, NULL, NULL));
        char pre[64];

        snprintf(pre, sizeof(pre), "k8s:enc:%s:v1:k1:", cases[i].p);
        for (size_t j = 0; j < 18 + 3; j++) {
            size_t n = j < 18 ? j : big[j - 18];
            size_t want = strlen(pre) + cases[i].overhead +
                          (strcmp(cases[i].p, "aescbc") ? n : (n / 16 + 1) * 16);

            assert_int_equal(wr(c, pt, n, &enc, &res), 0);
            assert_int_equal(enc.len, want);
            assert_memory_equal(enc.p, pre, strlen(pre));
            assert_int_equal(res.provider_index, 0);
            assert_int_equal(res.key_index, 0);
            assert_string_equal(res.key_name, "k1");
            assert_int_equal(rd(c, &enc, &dec, &res), 0);
            assert_int_equal(dec.len, n);
            if (n)
                assert_memory_equal(dec.p, pt, n);
            assert_false(res.stale);
        }
        ar_chain_unref(c);
    }
    ar_buf_free(&enc);
    ar_buf_free(&dec);
    free(pt);
}

static int cmp_nonce(const void *a, const void *b)
{
    return memcmp(a, b, 24);
}

/* 100,000 writes, no repeated nonce (aesgcm: 12 bytes; secretbox: 24) */
static void test_nonce_unique(void **state)
{
    enum { N = 100000 };
    const char *ps[] = {"aesgcm", "secretbox"};
    uint8_t(*nonces)[24] = calloc(N, 24);
    struct ar_buf enc = AR_BUF_INIT;
    struct ar_result res;
    char prov[512];

    assert_non_null(nonces);
    for (int p = 0; p < 2; p++) {
        struct ar_chain *c = chain_for(keyed(prov, sizeof(prov), ps[p], "k", k32, NULL, NULL));
        size_t pre = strlen("k8s:enc::v1:k:") + strlen(ps[p]), nl = p ? 24 : 12;

        memset(nonces, 0, (size_t)N * 24);
        for (int i = 0; i < N; i++) {
            assert_int_equal(wr(c, "x", 1, &enc, &res), 0);
            memcpy(nonces[i], enc.p + pre, nl);
        }
        qsort(nonces, N, 24, cmp_nonce);
        for (int i = 1; i < N; i++)
            assert_true(memcmp(nonces[i - 1], nonces[i], 24) != 0);
        ar_chain_unref(c);
    }
    ar_buf_free(&enc);
    free(nonces);
}

/* ---- the stale matrix (TestPrefixFrom, Test{GCM,CBC,Secretbox}KeyRotation) ---------- */

static void key_rotation(const char *p, bool uses_aad)
{
    char a[512], b[512];
    struct ar_chain *fs, *sf;
    struct ar_buf enc = AR_BUF_INIT, dec = AR_BUF_INIT;
    struct ar_result res;
    static const char msg[] = "k8s\0secret payload";

    fs = chain_for(keyed(a, sizeof(a), p, "first", k32, "second", k32b));
    sf = chain_for(keyed(b, sizeof(b), p, "second", k32b, "first", k32));
    assert_int_equal(wr(fs, msg, sizeof(msg), &enc, &res), 0);
    assert_string_equal(res.key_name, "first");
    /* the first key: not stale */
    assert_int_equal(rd(fs, &enc, &dec, &res), 0);
    assert_false(res.stale);
    assert_int_equal(res.key_index, 0);
    assert_memory_equal(dec.p, msg, sizeof(msg));
    /* another context */
    {
        int r = ar_chain_read(fs, "", "secrets", (const uint8_t *)"other", 5, enc.p, enc.len, &dec,
                              &res);

        if (uses_aad) {
            assert_int_equal(r, -EBADMSG);
            assert_string_equal(res.err, "cipher: message authentication failed");
        } else {
            assert_int_equal(r, 0); /* TestSecretboxKeyRotation: another context decrypts */
        }
    }
    /* reversed order: the same value is read by the second key, stale */
    assert_int_equal(rd(sf, &enc, &dec, &res), 0);
    assert_true(res.stale);
    assert_int_equal(res.provider_index, 0);
    assert_int_equal(res.key_index, 1);
    assert_string_equal(res.key_name, "first");
    assert_memory_equal(dec.p, msg, sizeof(msg));
    /* and what sf writes is read by fs with the second key, stale */
    assert_int_equal(wr(sf, msg, sizeof(msg), &enc, &res), 0);
    assert_int_equal(rd(fs, &enc, &dec, &res), 0);
    assert_true(res.stale);
    assert_int_equal(res.key_index, 1);
    ar_buf_free(&enc);
    ar_buf_free(&dec);
    ar_chain_unref(fs);
    ar_chain_unref(sf);
}

static void test_gcm_key_rotation(void **state)
{
    key_rotation("aesgcm", true);
}

static void test_cbc_key_rotation(void **state)
{
    key_rotation("aescbc", false);
}

static void test_secretbox_key_rotation(void **state)
{
    key_rotation("secretbox", false);
}

#define SETS(b, lit) set(b, lit, sizeof(lit) - 1)

static void set(struct ar_buf *b, const char *s, size_t n)
{
    ar_buf_reset(b);
    assert_int_equal(ar_buf_append(b, s, n), 0);
}

static void test_provider_positions(void **state)
{
    char a[512], b[512], l[1200];
    struct ar_chain *c;
    struct ar_buf enc = AR_BUF_INIT, dec = AR_BUF_INIT, tmp = AR_BUF_INIT;
    struct ar_result res;

    /* identity first: plaintext is fresh; encrypted data is skipped by identity, then read by
     * the second provider: stale */
    snprintf(l, sizeof(l), "{identity: {}}, %s",
             keyed(a, sizeof(a), "aescbc", "k1", k32, NULL, NULL));
    c = chain_for(l);
    SETS(&tmp, "{\"plain\":1}");
    assert_int_equal(rd(c, &tmp, &dec, &res), 0);
    assert_false(res.stale);
    assert_int_equal(res.type, AR_P_IDENTITY);
    assert_int_equal(res.provider_index, 0);
    assert_int_equal(res.key_index, -1);
    assert_null(res.key_name);
    assert_int_equal(dec.len, 11);
    assert_int_equal(wr(c, "{}", 2, &enc, &res), 0); /* identity writes */
    assert_int_equal(enc.len, 2);
    assert_memory_equal(enc.p, "{}", 2);
    ar_chain_unref(c);

    c = chain_for(keyed(a, sizeof(a), "aescbc", "k1", k32, NULL, NULL));
    assert_int_equal(wr(c, "k8s\0x", 5, &enc, &res), 0);
    ar_chain_unref(c);
    c = chain_for(l);
    assert_int_equal(rd(c, &enc, &dec, &res), 0);
    assert_true(res.stale);
    assert_int_equal(res.type, AR_P_AESCBC);
    assert_int_equal(res.provider_index, 1);
    assert_int_equal(res.key_index, 0);
    ar_chain_unref(c);

    /* identity not first: plaintext is stale */
    snprintf(l, sizeof(l), "%s, {identity: {}}",
             keyed(a, sizeof(a), "aescbc", "k1", k32, NULL, NULL));
    c = chain_for(l);
    assert_int_equal(rd(c, &tmp, &dec, &res), 0);
    assert_true(res.stale);
    assert_int_equal(res.type, AR_P_IDENTITY);
    assert_int_equal(res.provider_index, 1);
    assert_int_equal(rd(c, &enc, &dec, &res), 0);
    assert_false(res.stale);
    ar_chain_unref(c);

    /* two providers: data of the second provider is stale; data of neither: no prefix */
    snprintf(l, sizeof(l), "%s, %s", keyed(a, sizeof(a), "aesgcm", "g", k32, NULL, NULL),
             keyed(b, sizeof(b), "aescbc", "k1", k32, NULL, NULL));
    c = chain_for(l);
    assert_int_equal(rd(c, &enc, &dec, &res), 0);
    assert_true(res.stale);
    assert_int_equal(res.provider_index, 1);
    assert_int_equal(rd(c, &tmp, &dec, &res), -ENOKEY);
    assert_string_equal(res.err, "no matching prefix found");
    assert_int_equal(dec.len, 0);
    ar_chain_unref(c);

    /* only identity, encrypted data: identity's error is skipped, the list's error remains */
    c = chain_for("{identity: {}}");
    assert_int_equal(rd(c, &enc, &dec, &res), -ENOKEY);
    assert_string_equal(res.err, "no matching prefix found");
    /* a resource no rule names: the encrypt-check identity, with its own error */
    assert_int_equal(ar_chain_read(c, "", "configmaps", AAD, AADN, enc.p, enc.len, &dec, &res),
                     -ENOKEY);
    assert_string_equal(res.err, "identity transformer tried to read encrypted data");
    assert_int_equal(ar_chain_read(c, "", "configmaps", AAD, AADN, tmp.p, tmp.len, &dec, &res), 0);
    assert_int_equal(res.provider_index, -1);
    assert_false(res.stale);
    assert_int_equal(ar_chain_write(c, "", "configmaps", AAD, AADN, tmp.p, tmp.len, &enc, &res), 0);
    assert_int_equal(res.provider_index, -1);
    assert_int_equal(enc.len, tmp.len);
    ar_chain_unref(c);

    ar_buf_free(&enc);
    ar_buf_free(&dec);
    ar_buf_free(&tmp);
}

static void test_key_errors(void **state)
{
    char a[512], b[512], l[1200];
    struct ar_chain *c;
    struct ar_buf v = AR_BUF_INIT, dec = AR_BUF_INIT;
    struct ar_result res;
    uint8_t zero[16] = {0};

    /* an unknown key name: the list's error */
    c = chain_for(keyed(a, sizeof(a), "aesgcm", "first", k32, "second", k32b));
    SETS(&v, "k8s:enc:aesgcm:v1:third:0123456789abcdefghijklmnop");
    assert_int_equal(rd(c, &v, &dec, &res), -EBADMSG);
    assert_string_equal(res.err, "no matching key was found for the provided AES transformer");
    /* a key that fails: its error */
    SETS(&v, "k8s:enc:aesgcm:v1:first:0123");
    assert_int_equal(rd(c, &v, &dec, &res), -EBADMSG);
    assert_string_equal(res.err, "the stored data was shorter than the required size");
    SETS(&v, "k8s:enc:aesgcm:v1:first:0123456789abcdefghijklmnop");
    assert_int_equal(rd(c, &v, &dec, &res), -EBADMSG);
    assert_string_equal(res.err, "cipher: message authentication failed");
    SETS(&v, "k8s:enc:aesgcm:v1:first:0123456789ab"); /* 12..27 bytes: Open fails */
    assert_int_equal(rd(c, &v, &dec, &res), -EBADMSG);
    assert_string_equal(res.err, "cipher: message authentication failed");
    ar_chain_unref(c);

    c = chain_for(keyed(a, sizeof(a), "secretbox", "first", k32, NULL, NULL));
    SETS(&v, "k8s:enc:secretbox:v1:third:x");
    assert_int_equal(rd(c, &v, &dec, &res), -EBADMSG);
    assert_string_equal(res.err,
                        "no matching key was found for the provided Secretbox transformer");
    SETS(&v, "k8s:enc:secretbox:v1:first:0123456789abcdefghijklmnopqrstuvwxyz0123");
    assert_int_equal(rd(c, &v, &dec, &res), -EBADMSG);
    assert_string_equal(res.err, "output array was not large enough for encryption");
    SETS(&v, "k8s:enc:secretbox:v1:first:0123456789abcdefghijklmnopqrstuvwxyz");
    assert_int_equal(rd(c, &v, &dec, &res), -EBADMSG);
    assert_string_equal(res.err, "the stored data was shorter than the required size");
    ar_chain_unref(c);

    /* overlapping key prefixes "a:" and "a:b:": both tried, both fail: [e1, e2] */
    c = chain_for(keyed(a, sizeof(a), "aescbc", "a", k32, "a:b", k32b));
    SETS(&v, "k8s:enc:aescbc:v1:a:b:");
    assert_int_equal(ar_buf_append(&v, zero, 16), 0);
    assert_int_equal(rd(c, &v, &dec, &res), -EBADMSG);
    assert_string_equal(res.err, "[the stored data is not a multiple of the block size, "
                                 "invalid PKCS7 data (empty or not padded)]");
    SETS(&v, "k8s:enc:aescbc:v1:a:0123456789");
    assert_int_equal(rd(c, &v, &dec, &res), -EBADMSG);
    assert_string_equal(res.err, "the stored data was shorter than the required size");
    ar_chain_unref(c);

    /* the same failure from two providers is reported once (errors.NewAggregate dedups) */
    snprintf(l, sizeof(l), "%s, %s", keyed(a, sizeof(a), "aesgcm", "k", k32, NULL, NULL),
             keyed(b, sizeof(b), "aesgcm", "k", k32b, NULL, NULL));
    c = chain_for(l);
    SETS(&v, "k8s:enc:aesgcm:v1:k:0123456789abcdefghijklmnop");
    assert_int_equal(rd(c, &v, &dec, &res), -EBADMSG);
    assert_string_equal(res.err, "cipher: message authentication failed");
    ar_chain_unref(c);
    /* provider errors of different kinds are aggregated across providers */
    snprintf(l, sizeof(l), "%s, %s", keyed(a, sizeof(a), "aesgcm", "k", k32, NULL, NULL),
             keyed(b, sizeof(b), "aesgcm", "j", k32b, NULL, NULL));
    c = chain_for(l);
    assert_int_equal(rd(c, &v, &dec, &res), -EBADMSG);
    assert_string_equal(res.err, "[cipher: message authentication failed, no matching key was "
                                 "found for the provided AES transformer]");
    ar_chain_unref(c);

    ar_buf_free(&v);
    ar_buf_free(&dec);
}

/* aescbc read errors of spec 1.3, in order, incl. the 16-byte input Go panics on */
static void test_cbc_errors(void **state)
{
    uint8_t key[32], iv[16] = {0}, p[16];
    struct ar_buf enc = AR_BUF_INIT, dec = AR_BUF_INIT;
    char err[256];
    struct {
        uint8_t last, prev;
        const char *want;
    } pads[] = {
        {0x00, 'A', "invalid PKCS7 data (empty or not padded)"},
        {0x11, 'A', "invalid PKCS7 data (empty or not padded)"},
        {0x02, 'A', "invalid padding on input"},
        {0x10, 'A', "invalid padding on input"},
        {0x02, 0x02, NULL},
    };

    randombytes_buf(key, sizeof(key));
    assert_int_equal(ar_aescbc_decrypt(key, 32, iv, 15, &dec, err, sizeof(err)), -EBADMSG);
    assert_string_equal(err, "the stored data was shorter than the required size");
    assert_int_equal(ar_aescbc_decrypt(key, 32, iv, 16, &dec, err, sizeof(err)), -EBADMSG);
    assert_string_equal(err, "invalid PKCS7 data (empty or not padded)");
    {
        uint8_t x[40] = {0};

        assert_int_equal(ar_aescbc_decrypt(key, 32, x, 40, &dec, err, sizeof(err)), -EBADMSG);
        assert_string_equal(err, "the stored data is not a multiple of the block size");
    }
    for (size_t i = 0; i < sizeof(pads) / sizeof(pads[0]); i++) {
        /* encrypt one block of our choice, then drop the padding block */
        memset(p, 'A', sizeof(p));
        p[14] = pads[i].prev;
        p[15] = pads[i].last;
        ar_buf_reset(&enc);
        assert_int_equal(ar_aescbc_encrypt_iv(key, 32, iv, p, 16, &enc), 0);
        assert_int_equal(enc.len, 48);
        enc.len = 32;
        ar_buf_reset(&dec);
        if (pads[i].want) {
            assert_int_equal(ar_aescbc_decrypt(key, 32, enc.p, enc.len, &dec, err, sizeof(err)),
                             -EBADMSG);
            assert_string_equal(err, pads[i].want);
            assert_int_equal(dec.len, 0);
        } else {
            assert_int_equal(ar_aescbc_decrypt(key, 32, enc.p, enc.len, &dec, err, sizeof(err)), 0);
            assert_int_equal(dec.len, 14);
        }
    }
    ar_buf_free(&enc);
    ar_buf_free(&dec);
}

/* ---- lookup (2.3) ----------------------------------------------------------------- */

static void test_lookup(void **state)
{
    char y[8192], g1[512], c1[512], b1[512], c2[512], b2[512];
    struct ar_chain *c;
    struct ar_plist pl;
    struct ar_buf enc = AR_BUF_INIT, dec = AR_BUF_INIT;
    struct ar_result res;

    snprintf(y, sizeof(y),
             HDR "- resources: [secrets]\n  providers: [%s]\n"
                 "- resources: [deployments.apps]\n  providers: [%s]\n"
                 "- resources: [secrets, '*.apps']\n  providers: [%s]\n"
                 "- resources: ['*.']\n  providers: [%s]\n"
                 "- resources: ['*.*']\n  providers: [%s]\n",
             keyed(g1, sizeof(g1), "aesgcm", "g1", k32, NULL, NULL),
             keyed(c1, sizeof(c1), "aescbc", "c1", k16, NULL, NULL),
             keyed(b1, sizeof(b1), "secretbox", "b1", k32, NULL, NULL),
             keyed(c2, sizeof(c2), "aescbc", "c2", k24, NULL, NULL),
             keyed(b2, sizeof(b2), "secretbox", "b2", k32b, NULL, NULL));
    c = kat_chain(y);
    const struct ar_config *cfg = ar_chain_config(c);

    /* exact, concatenated across rules 0 and 2 */
    ar_chain_lookup(c, "", "secrets", &pl);
    assert_int_equal(pl.n, 2);
    assert_string_equal(pl.rule, "secrets");
    assert_ptr_equal(pl.v[0], &cfg->rules[0].providers[0]);
    assert_ptr_equal(pl.v[1], &cfg->rules[2].providers[0]);
    ar_chain_lookup(c, "apps", "deployments", &pl);
    assert_int_equal(pl.n, 1);
    assert_ptr_equal(pl.v[0], &cfg->rules[1].providers[0]);
    ar_chain_lookup(c, "apps", "statefulsets", &pl); /* {apps,*} */
    assert_int_equal(pl.n, 1);
    assert_string_equal(pl.rule, "*.apps");
    assert_ptr_equal(pl.v[0], &cfg->rules[2].providers[0]);
    ar_chain_lookup(c, "", "configmaps", &pl); /* {"",*} */
    assert_string_equal(pl.rule, "*.");
    assert_ptr_equal(pl.v[0], &cfg->rules[3].providers[0]);
    ar_chain_lookup(c, "batch", "jobs", &pl); /* {*,*} */
    assert_string_equal(pl.rule, "*.*");
    assert_ptr_equal(pl.v[0], &cfg->rules[4].providers[0]);
    ar_chain_lookup(c, "cr.example.com", "foos", &pl);
    assert_ptr_equal(pl.v[0], &cfg->rules[4].providers[0]);

    /* writes follow the lookup */
    assert_int_equal(
        ar_chain_write(c, "", "secrets", AAD, AADN, (const uint8_t *)"x", 1, &enc, &res), 0);
    assert_memory_equal(enc.p, "k8s:enc:aesgcm:v1:g1:", 21);
    assert_int_equal(
        ar_chain_write(c, "apps", "daemonsets", AAD, AADN, (const uint8_t *)"x", 1, &enc, &res), 0);
    assert_memory_equal(enc.p, "k8s:enc:secretbox:v1:b1:", 24);
    /* secrets reads b1 data with its second list entry: stale */
    assert_int_equal(ar_chain_read(c, "", "secrets", AAD, AADN, enc.p, enc.len, &dec, &res), 0);
    assert_true(res.stale);
    assert_int_equal(res.provider_index, 1);
    assert_string_equal(res.key_name, "b1");
    /* configmaps ({"",*} -> aescbc c2) cannot */
    assert_int_equal(ar_chain_read(c, "", "configmaps", AAD, AADN, enc.p, enc.len, &dec, &res),
                     -ENOKEY);
    assert_string_equal(res.err, "no matching prefix found");
    assert_int_equal(
        ar_chain_write(c, "", "configmaps", AAD, AADN, (const uint8_t *)"x", 1, &enc, &res), 0);
    assert_memory_equal(enc.p, "k8s:enc:aescbc:v1:c2:", 21);
    assert_int_equal(
        ar_chain_write(c, "example.com", "widgets", AAD, AADN, (const uint8_t *)"x", 1, &enc, &res),
        0);
    assert_memory_equal(enc.p, "k8s:enc:secretbox:v1:b2:", 24);

    /* the chain keeps its config alive */
    {
        struct ar_chain *c2r = ar_chain_ref(c);

        ar_chain_unref(c);
        assert_int_equal(ar_chain_read(c2r, "batch", "jobs", AAD, AADN, enc.p, enc.len, &dec, &res),
                         0);
        ar_chain_unref(c2r);
    }
    assert_null(ar_chain_unref(NULL));
    ar_buf_free(&enc);
    ar_buf_free(&dec);
}

static void test_kms_in_list(void **state)
{
    char a[512], l[1200];
    struct ar_chain *c;
    struct ar_buf v = AR_BUF_INIT, dec = AR_BUF_INIT;
    struct ar_result res;

    /* kms v2 first: writes need the plugin; static-key data still reads, stale */
    snprintf(l, sizeof(l), "{kms: {apiVersion: v2, name: p2, endpoint: 'unix:///tmp/p2.sock'}}, %s",
             keyed(a, sizeof(a), "aesgcm", "g", k32, NULL, NULL));
    c = chain_for(l);
    assert_int_equal(wr(c, "x", 1, &v, &res), -ENOPKG);
    assert_string_equal(res.err, "needs KMS plugin p2");
    assert_int_equal(res.type, AR_P_KMS);
    assert_int_equal(v.len, 0);
    ar_chain_unref(c);
    c = chain_for(a);
    assert_int_equal(wr(c, "x", 1, &v, &res), 0);
    ar_chain_unref(c);
    c = chain_for(l);
    assert_int_equal(rd(c, &v, &dec, &res), 0);
    assert_true(res.stale);
    assert_int_equal(res.provider_index, 1);
    /* an invalid v2 object: the parser's text */
    SETS(&v, "k8s:enc:kms:v2:p2:\x0a\x01X");
    assert_int_equal(rd(c, &v, &dec, &res), -EBADMSG);
    assert_string_equal(res.err, "failed to validate encrypted DEK source: encrypted DEK source "
                                 "is empty");
    /* a v2 value of another plugin name: no prefix */
    SETS(&v, "k8s:enc:kms:v2:p3:\x0a\x01X");
    assert_int_equal(rd(c, &v, &dec, &res), -ENOKEY);
    ar_chain_unref(c);
    ar_buf_free(&v);
    ar_buf_free(&dec);
}

/* ---- threads ---------------------------------------------------------------------- */

struct thr {
    struct ar_chain *c;
    int fails;
};

static void *worker(void *arg)
{
    struct thr *t = arg;
    struct ar_chain *c = t->c; /* a reference of its own, taken by the creator */
    struct ar_buf enc = AR_BUF_INIT, dec = AR_BUF_INIT;
    struct ar_result res;
    uint8_t pt[300];

    for (int i = 0; i < 2000; i++) {
        size_t n = (size_t)i % sizeof(pt);

        memset(pt, i & 0xff, n);
        if (ar_chain_write(c, "", "secrets", AAD, AADN, pt, n, &enc, &res) != 0 ||
            ar_chain_read(c, "", "secrets", AAD, AADN, enc.p, enc.len, &dec, &res) != 0 ||
            dec.len != n || (n && memcmp(dec.p, pt, n)))
            t->fails++;
        if (ar_chain_read(c, "apps", "x", AAD, AADN, enc.p, enc.len, &dec, &res) != 0 || !res.stale)
            t->fails++;
    }
    ar_buf_free(&enc);
    ar_buf_free(&dec);
    ar_chain_unref(c);
    return NULL;
}

static void test_threads(void **state)
{
    char a[512], b[512], y[2048];
    pthread_t th[4];
    struct thr t[4];

    snprintf(y, sizeof(y),
             HDR "- resources: [secrets]\n  providers: [%s]\n"
                 "- resources: ['*.apps']\n  providers: [{identity: {}}, %s]\n",
             keyed(a, sizeof(a), "aesgcm", "g", k32, NULL, NULL), a);
    (void)b;
    struct ar_chain *c = kat_chain(y);

    for (int i = 0; i < 4; i++) {
        t[i].c = ar_chain_ref(c);
        t[i].fails = 0;
        assert_int_equal(pthread_create(&th[i], NULL, worker, &t[i]), 0);
    }
    ar_chain_unref(c); /* the workers hold their own references */
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(t[i].fails, 0);
    }
}

/* what out held before a call is gone afterwards, also past the new length and on failure */
static void test_out_wiped(void **state)
{
    char a[512];
    struct ar_chain *c = chain_for(keyed(a, sizeof(a), "aesgcm", "g", k32, NULL, NULL));
    struct ar_buf enc = AR_BUF_INIT, out = AR_BUF_INIT;
    struct ar_result res;
    uint8_t big[1000];
    size_t cap;

    memset(big, 0xa5, sizeof(big));
    assert_int_equal(wr(c, big, sizeof(big), &enc, &res), 0);
    assert_int_equal(rd(c, &enc, &out, &res), 0);
    assert_int_equal(out.len, sizeof(big));
    cap = out.cap;
    assert_int_equal(wr(c, "xy", 2, &enc, &res), 0);
    assert_int_equal(rd(c, &enc, &out, &res), 0);
    assert_int_equal(out.len, 2);
    assert_int_equal(out.cap, cap);
    for (size_t i = 2; i < sizeof(big); i++)
        assert_int_equal(out.p[i], 0);
    /* failure: empty and wiped */
    enc.p[enc.len - 1] ^= 1;
    assert_int_equal(rd(c, &enc, &out, &res), -EBADMSG);
    assert_int_equal(out.len, 0);
    assert_int_equal(out.p[0], 0);
    assert_int_equal(out.p[1], 0);
    /* an empty input, NULL allowed */
    assert_int_equal(ar_chain_read(c, "", "pods", AAD, AADN, NULL, 0, &out, &res), 0);
    assert_int_equal(out.len, 0);
    assert_int_equal(ar_chain_read(c, "", "secrets", AAD, AADN, NULL, 0, &out, &res), -ENOKEY);
    assert_int_equal(ar_chain_read(c, "", "secrets", NULL, 1, enc.p, enc.len, &out, &res), -EINVAL);
    ar_buf_free(&enc);
    ar_buf_free(&out);
    ar_chain_unref(c);
}

/* ---- buffers, genkey -------------------------------------------------------------- */

static void test_buf(void **state)
{
    struct ar_buf b = AR_BUF_INIT;
    uint8_t x[100];

    memset(x, 7, sizeof(x));
    assert_int_equal(ar_buf_append(&b, x, 0), 0);
    assert_null(b.p);
    for (int i = 0; i < 100; i++)
        assert_int_equal(ar_buf_append(&b, x, sizeof(x)), 0);
    assert_int_equal(b.len, 10000);
    assert_true(b.cap >= 10000);
    ar_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_true(b.cap >= 10000);
    assert_int_equal(b.p[0], 0); /* wiped */
    ar_buf_free(&b);
    assert_null(b.p);
    assert_int_equal(b.cap, 0);
    b.max = 150;
    assert_int_equal(ar_buf_append(&b, x, 100), 0);
    assert_int_equal(ar_buf_append(&b, x, 50), 0);
    assert_int_equal(ar_buf_append(&b, x, 1), -EMSGSIZE);
    assert_int_equal(ar_buf_reserve(&b, SIZE_MAX), -EMSGSIZE);
    assert_int_equal(b.len, 150);
    ar_buf_free(&b);
}

static void test_genkey(void **state)
{
    char a[64], b[64];
    uint8_t raw[64];
    size_t n;

    for (size_t len = 16; len <= 32; len += 8) {
        assert_int_equal(ar_genkey(len, a, sizeof(a)), 0);
        assert_int_equal(ar_genkey(len, b, sizeof(b)), 0);
        assert_string_not_equal(a, b);
        assert_int_equal(strlen(a), 4 * ((len + 2) / 3));
        assert_int_equal(sodium_base642bin(raw, sizeof(raw), a, strlen(a), NULL, &n, NULL,
                                           sodium_base64_VARIANT_ORIGINAL),
                         0);
        assert_int_equal(n, len);
    }
    assert_int_equal(ar_genkey(32, a, 10), -EINVAL);
    assert_int_equal(ar_genkey(0, a, sizeof(a)), -EINVAL);
}

/* ar_chain_write_with: any provider/key of the list writes exactly what a chain with that
 * provider/key first writes (the other chain reads it as not stale), and this chain reads it
 * back as stale; indexes out of range are -ENOENT. */
static void test_write_with(void **state)
{
    static const char pt[] = "{\"kind\":\"Secret\"}";
    char p1[512], p2[512], p3[512], y[2048];
    struct ar_buf enc = AR_BUF_INIT, dec = AR_BUF_INIT;
    struct ar_result res;
    struct ar_chain *c, *k2first, *sbfirst, *gcm;

    (void)state;
    keyed(p1, sizeof(p1), "aescbc", "k1", k32, "k2", k32b);
    keyed(p2, sizeof(p2), "secretbox", "s1", k32c, NULL, NULL);
    snprintf(y, sizeof(y), "%s, %s, identity: {}", p1, p2);
    c = chain_for(y);
    keyed(p3, sizeof(p3), "aescbc", "k2", k32b, "k1", k32);
    k2first = chain_for(p3);
    sbfirst = chain_for(p2);

    /* aescbc key 1 (k2) */
    assert_int_equal(ar_chain_write_with(c, "", "secrets", 0, 1, AAD, AADN, (const uint8_t *)pt,
                                         strlen(pt), &enc, &res),
                     0);
    assert_int_equal(res.type, AR_P_AESCBC);
    assert_int_equal(res.provider_index, 0);
    assert_int_equal(res.key_index, 1);
    assert_string_equal(res.key_name, "k2");
    assert_memory_equal(enc.p, "k8s:enc:aescbc:v1:k2:", 21);
    assert_int_equal(rd(c, &enc, &dec, &res), 0);
    assert_true(res.stale);
    assert_int_equal(res.key_index, 1);
    assert_int_equal(dec.len, strlen(pt));
    assert_memory_equal(dec.p, pt, dec.len);
    assert_int_equal(rd(k2first, &enc, &dec, &res), 0);
    assert_false(res.stale);
    assert_memory_equal(dec.p, pt, dec.len);

    /* provider 1: secretbox s1 */
    assert_int_equal(ar_chain_write_with(c, "", "secrets", 1, 0, AAD, AADN, (const uint8_t *)pt,
                                         strlen(pt), &enc, &res),
                     0);
    assert_memory_equal(enc.p, "k8s:enc:secretbox:v1:s1:", 24);
    assert_int_equal(rd(sbfirst, &enc, &dec, &res), 0);
    assert_false(res.stale);
    assert_memory_equal(dec.p, pt, dec.len);

    /* provider 2: identity writes the plaintext itself */
    assert_int_equal(ar_chain_write_with(c, "", "secrets", 2, 0, AAD, AADN, (const uint8_t *)pt,
                                         strlen(pt), &enc, &res),
                     0);
    assert_int_equal(res.type, AR_P_IDENTITY);
    assert_int_equal(enc.len, strlen(pt));
    assert_memory_equal(enc.p, pt, enc.len);

    /* (0, 0) is ar_chain_write */
    assert_int_equal(ar_chain_write_with(c, "", "secrets", 0, 0, AAD, AADN, (const uint8_t *)pt,
                                         strlen(pt), &enc, &res),
                     0);
    assert_memory_equal(enc.p, "k8s:enc:aescbc:v1:k1:", 21);
    assert_int_equal(rd(c, &enc, &dec, &res), 0);
    assert_false(res.stale);

    /* out of range */
    assert_int_equal(ar_chain_write_with(c, "", "secrets", 0, 2, AAD, AADN, (const uint8_t *)pt,
                                         strlen(pt), &enc, &res),
                     -ENOENT);
    assert_int_equal(enc.len, 0);
    assert_string_equal(res.err, "no key 2 in provider 0 for secrets");
    assert_int_equal(ar_chain_write_with(c, "", "secrets", 3, 0, AAD, AADN, (const uint8_t *)pt,
                                         strlen(pt), &enc, &res),
                     -ENOENT);
    assert_string_equal(res.err, "no provider 3 for secrets");
    assert_int_equal(ar_chain_write_with(c, "", "configmaps", 1, 0, AAD, AADN, (const uint8_t *)pt,
                                         strlen(pt), &enc, &res),
                     -ENOENT);

    /* aesgcm: the AAD is authenticated */
    keyed(p1, sizeof(p1), "aesgcm", "g1", k16, "g2", k24);
    gcm = chain_for(p1);
    assert_int_equal(ar_chain_write_with(gcm, "", "secrets", 0, 1, AAD, AADN, (const uint8_t *)pt,
                                         strlen(pt), &enc, &res),
                     0);
    assert_memory_equal(enc.p, "k8s:enc:aesgcm:v1:g2:", 21);
    assert_int_equal(rd(gcm, &enc, &dec, &res), 0);
    assert_true(res.stale);
    assert_memory_equal(dec.p, pt, dec.len);
    assert_int_not_equal(ar_chain_read(gcm, "", "secrets", (const uint8_t *)"/registry/x", 11,
                                       enc.p, enc.len, &dec, &res),
                         0);

    ar_buf_free(&enc);
    ar_buf_free(&dec);
    ar_chain_unref(c);
    ar_chain_unref(k2first);
    ar_chain_unref(sbfirst);
    ar_chain_unref(gcm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_nonce_unique),
        cmocka_unit_test(test_gcm_key_rotation),
        cmocka_unit_test(test_cbc_key_rotation),
        cmocka_unit_test(test_secretbox_key_rotation),
        cmocka_unit_test(test_provider_positions),
        cmocka_unit_test(test_key_errors),
        cmocka_unit_test(test_cbc_errors),
        cmocka_unit_test(test_lookup),
        cmocka_unit_test(test_kms_in_list),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_out_wiped),
        cmocka_unit_test(test_buf),
        cmocka_unit_test(test_genkey),
        cmocka_unit_test(test_write_with),
    };

    return cmocka_run_group_tests(tests, setup, NULL);
}
