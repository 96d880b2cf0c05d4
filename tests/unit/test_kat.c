/*
 * tests/unit/test_kat.c: the known-answer values of tests/data/kat.json through the providers
 * and through a chain built from YAML, plus tampering (shared spec section 6).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>

#define KAT_WITH_CONFIG 1
#include "crypto/buf.h"
#include "crypto/providers.h"
#include "kat.h"

/* shared spec 6.2: KMS v1, name myplugin, DEK 0x11 x 32, encDEK = base64(DEK), nonce 00..0b */
static const char kmsv1_hex[] =
    "6b38733a656e633a6b6d733a76313a6d79706c7567696e3a002c455245524552455245524552455245524552"
    "455245524552455245524552455245524552455245524552453d000102030405060708090a0b78dbc51313c6"
    "59987b95a0faa7dd92525c692cc11cd20fa6de26cfc75e7e7c58";
static const char kat_aad[] = "/registry/secrets/default/mysecret";
static const char kat_pt[] = "k8s\0hello-secret"; /* 16 bytes */

static const char *prov_prefix(const char *p)
{
    if (!strcmp(p, "aescbc"))
        return "k8s:enc:aescbc:v1:";
    if (!strcmp(p, "aesgcm"))
        return "k8s:enc:aesgcm:v1:";
    if (!strcmp(p, "secretbox"))
        return "k8s:enc:secretbox:v1:";
    return NULL;
}

static int prov_decrypt(const char *p, const struct kat_bytes *key, const char *aad,
                        const uint8_t *in, size_t n, struct ar_buf *out, char *err)
{
    if (!strcmp(p, "aescbc"))
        return ar_aescbc_decrypt(key->p, key->n, in, n, out, err, 256);
    if (!strcmp(p, "aesgcm"))
        return ar_aesgcm_decrypt(key->p, key->n, (const uint8_t *)aad, strlen(aad), in, n, out, err,
                                 256);
    return ar_secretbox_decrypt(key->p, key->n, in, n, out, err, 256);
}

/* Every static-key case decrypts at the provider level, below the prefixes. */
static void test_provider_level(void **state)
{
    json_t *root = kat_load(), *c;
    size_t i, done = 0;

    json_array_foreach(kat_cases(root), i, c)
    {
        const char *p = kat_str(c, "provider"), *pre = prov_prefix(p), *kn;
        struct kat_bytes v, key, pt;
        struct ar_buf out = AR_BUF_INIT;
        char err[256], full[128];

        if (!pre)
            continue;
        kn = kat_str(c, "key_name");
        v = kat_b64(c, "value_b64");
        key = kat_b64(c, "key_b64");
        pt = kat_b64(c, "plaintext_b64");
        snprintf(full, sizeof(full), "%s%s:", pre, kn);
        assert_true(v.n > strlen(full));
        assert_memory_equal(v.p, full, strlen(full));
        assert_int_equal(prov_decrypt(p, &key, kat_str(c, "aad"), v.p + strlen(full),
                                      v.n - strlen(full), &out, err),
                         0);
        assert_int_equal(out.len, pt.n);
        assert_memory_equal(out.p, pt.p, pt.n);
        ar_buf_free(&out);
        free(v.p);
        free(key.p);
        free(pt.p);
        done++;
    }
    assert_int_equal(done, 5);
    json_decref(root);
}

/* Writes are byte compatible: with the recorded IV/nonce we produce the recorded bytes. */
static void test_write_bytes(void **state)
{
    json_t *root = kat_load();
    struct ar_buf out = AR_BUF_INIT;
    uint8_t iv[24];
    const char *names[] = {"constructed-aescbc", "constructed-aesgcm", "constructed-secretbox",
                           "go-aesgcm-unit", "go-secretbox-nacl"};

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        json_t *c = kat_find(root, names[i]);
        const char *p = kat_str(c, "provider"), *aad = kat_str(c, "aad");
        struct kat_bytes v = kat_b64(c, "value_b64"), key = kat_b64(c, "key_b64"),
                         pt = kat_b64(c, "plaintext_b64");
        size_t pre = strlen(prov_prefix(p)) + strlen(kat_str(c, "key_name")) + 1;

        ar_buf_reset(&out);
        memcpy(iv, v.p + pre, !strcmp(p, "secretbox") ? 24 : !strcmp(p, "aesgcm") ? 12 : 16);
        if (!strcmp(p, "aescbc")) {
            assert_int_equal(ar_aescbc_encrypt_iv(key.p, key.n, iv, pt.p, pt.n, &out), 0);
        } else if (!strcmp(p, "aesgcm")) {
            assert_int_equal(ar_aesgcm_encrypt_iv(key.p, key.n, iv, (const uint8_t *)aad,
                                                  strlen(aad), pt.p, pt.n, &out),
                             0);
        } else {
            assert_int_equal(ar_buf_reserve(&out, 24 + 16 + pt.n), 0);
            memcpy(out.p, iv, 24);
            assert_int_equal(crypto_secretbox_easy(out.p + 24, pt.p, pt.n, iv, key.p), 0);
            out.len = 24 + 16 + pt.n;
        }
        assert_int_equal(out.len, v.n - pre);
        assert_memory_equal(out.p, v.p + pre, out.len);
        free(v.p);
        free(key.p);
        free(pt.p);
    }
    ar_buf_free(&out);
    json_decref(root);
}

static char *yaml_for(json_t *c)
{
    const char *p = kat_str(c, "provider");
    char *y = malloc(1024);

    if (!strcmp(p, "kms-v2"))
        snprintf(y, 1024,
                 "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
                 "resources:\n- resources: [secrets]\n  providers:\n  - kms:\n"
                 "      apiVersion: v2\n      name: %s\n      endpoint: unix:///tmp/kms.sock\n",
                 kat_str(c, "kms_name"));
    else
        snprintf(y, 1024,
                 "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
                 "resources:\n- resources: [secrets]\n  providers:\n  - %s:\n      keys:\n"
                 "      - name: %s\n        secret: %s\n",
                 p, kat_str(c, "key_name"), kat_str(c, "key_b64"));
    return y;
}

static bool span_eq(struct ar_kmsv2_span s, const char *str)
{
    return s.n == strlen(str) && memcmp(s.p, str, s.n) == 0;
}

/* Every case through a chain; tampering with the value or the AAD. */
static void test_chain_level(void **state)
{
    json_t *root = kat_load(), *c;
    size_t i, ncases = 0;

    json_array_foreach(kat_cases(root), i, c)
    {
        const char *p = kat_str(c, "provider"), *aad = kat_str(c, "aad");
        char *y = yaml_for(c);
        struct ar_chain *ch = kat_chain(y);
        struct kat_bytes v = kat_b64(c, "value_b64"), pt = kat_b64(c, "plaintext_b64");
        struct ar_buf out = AR_BUF_INIT;
        struct ar_result res;
        size_t aadn = strlen(aad);
        bool kms = !strcmp(p, "kms-v2");
        size_t nerr = 0, nsame = 0;

        ncases++;
        if (kms) {
            char want[128];

            assert_int_equal(
                ar_chain_read(ch, "", "secrets", (const uint8_t *)aad, aadn, v.p, v.n, &out, &res),
                -ENOPKG);
            snprintf(want, sizeof(want), "needs KMS plugin %s", kat_str(c, "kms_name"));
            assert_string_equal(res.err, want);
            assert_int_equal(res.type, AR_P_KMS);
            assert_int_equal(res.provider_index, 0);
            assert_string_equal(res.key_name, kat_str(c, "kms_name"));
            assert_int_equal(res.kms_version, 2);
            assert_true(span_eq(res.kms.key_id, "1"));
            assert_int_equal(res.kms.nannotations, 1);
            assert_true(span_eq(res.kms.ann_key[0], "local-kek.kms.kubernetes.io"));
            assert_true(span_eq(res.kms.ann_value[0], "encrypted-local-kek"));
            assert_int_equal(res.kms.dek_source_type, strstr(kat_str(c, "name"), "hkdf") ? 1 : 0);
            assert_int_equal(out.len, 0);
        } else {
            assert_int_equal(
                ar_chain_read(ch, "", "secrets", (const uint8_t *)aad, aadn, v.p, v.n, &out, &res),
                0);
            assert_int_equal(out.len, pt.n);
            assert_memory_equal(out.p, pt.p, pt.n);
            assert_false(res.stale);
            assert_int_equal(res.provider_index, 0);
            assert_int_equal(res.key_index, 0);
            assert_string_equal(res.key_name, kat_str(c, "key_name"));
            assert_non_null(res.key_fp);
        }

        /* one flipped byte anywhere */
        for (size_t b = 0; b < v.n; b++) {
            int r;

            v.p[b] ^= 0x01;
            r = ar_chain_read(ch, "", "secrets", (const uint8_t *)aad, aadn, v.p, v.n, &out, &res);
            v.p[b] ^= 0x01;
            if (r < 0) {
                assert_int_equal(out.len, 0); /* nothing unauthenticated is left behind */
                assert_true(res.err[0] != '\0');
                nerr++;
            } else {
                /* only aescbc (no MAC) and KMS (needs the plugin) can miss a flip */
                assert_true(!strcmp(p, "aescbc"));
                assert_false(out.len == pt.n && !memcmp(out.p, pt.p, pt.n));
            }
            if (kms && r == -ENOPKG)
                nsame++;
        }
        if (!strcmp(p, "aesgcm") || !strcmp(p, "secretbox"))
            assert_int_equal(nerr, v.n);
        if (!strcmp(p, "aescbc"))
            assert_true(nerr > 0 && nerr < v.n); /* prefix and padding flips only */
        if (kms) /* structure flips only; the rest needs the plugin */
            assert_true(nerr - nsame > 0 && nsame > 0);

        /* another etcd key: only AAD users notice */
        if (aadn) {
            int r;

            aad = strcmp(aad, "bamboo") ? "/registry/secrets/default/other" : "bambo0";
            r = ar_chain_read(ch, "", "secrets", (const uint8_t *)aad, strlen(aad), v.p, v.n, &out,
                              &res);
            if (!strcmp(p, "aesgcm")) {
                assert_int_equal(r, -EBADMSG);
                assert_string_equal(res.err, "cipher: message authentication failed");
            } else if (kms) {
                assert_int_equal(r, -ENOPKG); /* the AAD is checked by the data cipher only */
            } else {
                assert_int_equal(r, 0); /* aescbc, secretbox: no AAD */
                assert_memory_equal(out.p, pt.p, pt.n);
            }
        }
        ar_buf_free(&out);
        free(v.p);
        free(pt.p);
        free(y);
        ar_chain_unref(ch);
    }
    assert_int_equal(ncases, 7);
    json_decref(root);
}

/* KMS v1 (constructed, spec 6.2): recognised by prefix and the u16 BE length of encDEK. */
static void test_kmsv1(void **state)
{
    static const char yaml[] =
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
        "resources:\n- resources: [secrets]\n  providers:\n  - kms:\n"
        "      name: myplugin\n      endpoint: unix:///tmp/kms.sock\n";
    struct ar_chain *ch = kat_chain(yaml);
    uint8_t v[256], dek[32];
    size_t n = strlen(kmsv1_hex) / 2, pre = strlen("k8s:enc:kms:v1:myplugin:"), dekn = 0;
    struct ar_buf out = AR_BUF_INIT;
    struct ar_result res;
    char err[256];

    hex2bin_or_die(kmsv1_hex, v, n);
    assert_int_equal(ar_chain_read(ch, "", "secrets", (const uint8_t *)kat_aad, strlen(kat_aad), v,
                                   n, &out, &res),
                     -ENOPKG);
    assert_string_equal(res.err, "needs KMS plugin myplugin");
    assert_int_equal(res.kms_version, 1);
    assert_int_equal(res.type, AR_P_KMS);
    /* the layout, checked by doing the plugin's part here: encDEK = base64(DEK) */
    assert_int_equal((v[pre] << 8) | v[pre + 1], 44);
    assert_int_equal(sodium_base642bin(dek, sizeof(dek), (const char *)v + pre + 2, 44, NULL, &dekn,
                                       NULL, sodium_base64_VARIANT_ORIGINAL),
                     0);
    assert_int_equal(dekn, 32);
    assert_int_equal(ar_aesgcm_decrypt(dek, 32, (const uint8_t *)kat_aad, strlen(kat_aad),
                                       v + pre + 2 + 44, n - pre - 2 - 44, &out, err, sizeof(err)),
                     0);
    assert_int_equal(out.len, 16);
    assert_memory_equal(out.p, kat_pt, 16);
    /* a length prefix past the end, or no room for one */
    v[pre] = 0x01;
    assert_int_equal(ar_chain_read(ch, "", "secrets", (const uint8_t *)kat_aad, strlen(kat_aad), v,
                                   n, &out, &res),
                     -EBADMSG);
    assert_string_equal(res.err, "invalid data encountered by envelope transformer: failed to "
                                 "read uint16 length prefixed data");
    assert_int_equal(ar_chain_read(ch, "", "secrets", (const uint8_t *)kat_aad, strlen(kat_aad), v,
                                   pre + 1, &out, &res),
                     -EBADMSG);
    /* writing needs the plugin */
    assert_int_equal(ar_chain_write(ch, "", "secrets", (const uint8_t *)kat_aad, strlen(kat_aad),
                                    (const uint8_t *)kat_pt, 16, &out, &res),
                     -ENOPKG);
    assert_string_equal(res.err, "needs KMS plugin myplugin");
    assert_int_equal(out.len, 0);
    ar_buf_free(&out);
    ar_chain_unref(ch);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_provider_level),
        cmocka_unit_test(test_write_bytes),
        cmocka_unit_test(test_chain_level),
        cmocka_unit_test(test_kmsv1),
    };

    if (sodium_init() < 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
