/*
 * tests/unit/test_kmsv2.c: the KMS v2 EncryptedObject parser and its validation texts
 * (shared spec 1.7), on the recorded kube-apiserver values and on hand-built messages.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <stdbool.h>

#include "crypto/buf.h"
#include "crypto/kmsv2.h"
#include "crypto/providers.h"
#include "kat.h"

#define V2_PREFIX "k8s:enc:kms:v2:kms-provider:"

/* ---- a tiny protobuf writer for the tests -------------------------------------------- */

struct pb {
    uint8_t b[80000];
    size_t n;
};

static void pb_varint(struct pb *m, uint64_t v)
{
    while (v >= 0x80) {
        m->b[m->n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    m->b[m->n++] = (uint8_t)v;
}

static void pb_bytes(struct pb *m, unsigned f, const void *p, size_t n)
{
    pb_varint(m, (uint64_t)f << 3 | 2);
    pb_varint(m, n);
    memcpy(m->b + m->n, p, n);
    m->n += n;
}

static void pb_str(struct pb *m, unsigned f, const char *s)
{
    pb_bytes(m, f, s, strlen(s));
}

static void pb_vfield(struct pb *m, unsigned f, uint64_t v)
{
    pb_varint(m, (uint64_t)f << 3);
    pb_varint(m, v);
}

static void pb_entry(struct pb *m, const char *k, const void *v, size_t vn)
{
    struct pb e;

    e.n = 0;
    pb_str(&e, 1, k);
    pb_bytes(&e, 2, v, vn);
    pb_bytes(m, 4, e.b, e.n);
}

/* a valid message: data "D", keyID "k1", DEK source "S", one annotation, type t */
static void pb_valid(struct pb *m, int t)
{
    m->n = 0;
    pb_str(m, 1, "DATA");
    pb_str(m, 2, "k1");
    pb_str(m, 3, "SRC");
    pb_entry(m, "a.example.com", "v", 1);
    if (t)
        pb_vfield(m, 5, (uint64_t)t);
}

static bool span_eq(struct ar_kmsv2_span s, const char *str)
{
    return s.n == strlen(str) && memcmp(s.p, str, s.n) == 0;
}

static int parse(const struct pb *m, struct ar_kmsv2_info *info, char *err)
{
    return ar_kmsv2_parse(m->b, m->n, info, err, 512);
}

static void expect_err(const struct pb *m, const char *want)
{
    struct ar_kmsv2_info info;
    char err[512];

    assert_int_equal(parse(m, &info, err), -EBADMSG);
    assert_string_equal(err, want);
}

/* ---- recorded values --------------------------------------------------------------- */

static void hkdf_expand(const uint8_t *seed, const uint8_t *info, uint8_t out[32])
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *kctx = EVP_KDF_CTX_new(kdf);
    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)seed, 32),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, 32),
        OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
        OSSL_PARAM_construct_end(),
    };

    assert_non_null(kctx);
    assert_int_equal(EVP_KDF_derive(kctx, out, 32, params), 1);
    EVP_KDF_CTX_free(kctx);
    EVP_KDF_free(kdf);
}

/* Parse the recorded value, check its fields, then decrypt it the way the base64 test plugin
 * and kube-apiserver would: this checks the whole layout end to end. */
static void check_recorded(const char *name, int type, const char *dek_hex, const char *derived_hex)
{
    json_t *root = kat_load(), *c = kat_find(root, name);
    struct kat_bytes v = kat_b64(c, "value_b64"), pt = kat_b64(c, "plaintext_b64");
    const char *aad = kat_str(c, "aad");
    struct ar_kmsv2_info info;
    uint8_t dek[64], want[32], key[32];
    size_t dekn = 0;
    struct ar_buf out = AR_BUF_INIT;
    char err[512];
    const uint8_t *data;
    size_t datan;

    assert_true(v.n > strlen(V2_PREFIX));
    assert_memory_equal(v.p, V2_PREFIX, strlen(V2_PREFIX));
    assert_int_equal(
        ar_kmsv2_parse(v.p + strlen(V2_PREFIX), v.n - strlen(V2_PREFIX), &info, err, sizeof(err)),
        0);
    assert_int_equal(info.dek_source_type, type);
    assert_true(span_eq(info.key_id, "1"));
    assert_int_equal(info.nannotations, 1);
    assert_true(span_eq(info.ann_key[0], "local-kek.kms.kubernetes.io"));
    assert_true(span_eq(info.ann_value[0], "encrypted-local-kek"));
    /* the base64 plugin: Decrypt(x) = base64-decode(x) */
    assert_int_equal(sodium_base642bin(dek, sizeof(dek), (const char *)info.encrypted_dek_source.p,
                                       info.encrypted_dek_source.n, NULL, &dekn, NULL,
                                       sodium_base64_VARIANT_ORIGINAL),
                     0);
    assert_int_equal(dekn, 32);
    hex2bin_or_die(dek_hex, want, 32);
    assert_memory_equal(dek, want, 32);
    data = info.encrypted_data.p;
    datan = info.encrypted_data.n;
    if (type == 1) {
        hkdf_expand(dek, data, key);
        hex2bin_or_die(derived_hex, want, 32);
        assert_memory_equal(key, want, 32);
        data += 32;
        datan -= 32;
    } else {
        memcpy(key, dek, 32);
    }
    assert_int_equal(ar_aesgcm_decrypt(key, 32, (const uint8_t *)aad, strlen(aad), data, datan,
                                       &out, err, sizeof(err)),
                     0);
    assert_int_equal(out.len, pt.n);
    assert_memory_equal(out.p, pt.p, pt.n);
    /* the AAD binds the etcd key */
    assert_int_equal(ar_aesgcm_decrypt(key, 32, (const uint8_t *)aad, strlen(aad) - 1, data, datan,
                                       &out, err, sizeof(err)),
                     -EBADMSG);
    ar_buf_free(&out);
    free(v.p);
    free(pt.p);
    json_decref(root);
}

static void test_recorded_type0(void **state)
{
    check_recorded("go-kmsv2-dek-source-aes-gcm-key", 0,
                   "81a7c8bf04f4012a0a759fc3d4bd92947ef72d4323e6a6b786ba258df4b9d707", NULL);
}

static void test_recorded_type1(void **state)
{
    check_recorded("go-kmsv2-dek-source-hkdf-sha256-xnonce-aes-gcm-seed", 1,
                   "ffe5a729740433f0215c809844d05e1a4f964ae07eece06e4982536cfeba6727",
                   "5cad1e7c7388618e86009092cac3eef592e41b9af5df436a59c0ab9570ac0d7f");
}

/* ---- tolerance -------------------------------------------------------------------- */

static void test_reordered_unknown_repeated(void **state)
{
    struct pb m;
    struct ar_kmsv2_info info;
    char err[512];
    struct pb g;

    m.n = 0;
    pb_vfield(&m, 5, 1);
    pb_entry(&m, "b.example.com", "2", 1);
    pb_str(&m, 3, "SRC-old");
    pb_vfield(&m, 9, 12345); /* unknown varint */
    pb_str(&m, 2, "old-key");
    pb_str(&m, 10, "unknown bytes"); /* unknown length-delimited */
    pb_varint(&m, 11u << 3 | 5);     /* unknown fixed32 */
    memcpy(m.b + m.n, "abcd", 4);
    m.n += 4;
    pb_varint(&m, 12u << 3 | 1); /* unknown fixed64 */
    memcpy(m.b + m.n, "abcdefgh", 8);
    m.n += 8;
    pb_varint(&m, 13u << 3 | 3); /* unknown group with a field inside */
    pb_vfield(&m, 1, 7);
    pb_varint(&m, 13u << 3 | 4);
    pb_str(&m, 1, "DATA");
    pb_str(&m, 2, "new-key"); /* repeated singular field: the last wins */
    pb_str(&m, 3, "SRC");
    pb_entry(&m, "a.example.com", "1", 1);
    pb_entry(&m, "b.example.com", "22", 2); /* the same map key again: the last wins */
    /* an entry with the value first and an unknown field inside */
    g.n = 0;
    pb_bytes(&g, 2, "3", 1);
    pb_vfield(&g, 7, 1);
    pb_str(&g, 1, "c.example.com");
    pb_bytes(&m, 4, g.b, g.n);
    pb_vfield(&m, 5, 0); /* and the type back to 0 */

    assert_int_equal(parse(&m, &info, err), 0);
    assert_true(span_eq(info.encrypted_data, "DATA"));
    assert_true(span_eq(info.key_id, "new-key"));
    assert_true(span_eq(info.encrypted_dek_source, "SRC"));
    assert_int_equal(info.dek_source_type, 0);
    assert_int_equal(info.nannotations, 3);
    assert_true(span_eq(info.ann_key[0], "b.example.com"));
    assert_true(span_eq(info.ann_value[0], "22"));
    assert_true(span_eq(info.ann_key[1], "a.example.com"));
    assert_true(span_eq(info.ann_value[1], "1"));
    assert_true(span_eq(info.ann_key[2], "c.example.com"));
    assert_true(span_eq(info.ann_value[2], "3"));

    /* no annotations at all, a trailing-dot FQDN, an empty value */
    m.n = 0;
    pb_str(&m, 1, "D");
    pb_str(&m, 2, "k");
    pb_str(&m, 3, "S");
    assert_int_equal(parse(&m, &info, err), 0);
    assert_int_equal(info.nannotations, 0);
    pb_entry(&m, "x.example.com.", "", 0);
    assert_int_equal(parse(&m, &info, err), 0);
    assert_int_equal(info.nannotations, 1);
    assert_int_equal(info.ann_value[0].n, 0);
}

/* ---- validation texts ------------------------------------------------------------- */

static const char fqdn_subdomain[] =
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

static void test_validation(void **state)
{
    struct pb m;
    char want[2048], big[2000];

    pb_valid(&m, 2);
    expect_err(&m, "unknown encryptedDEKSourceType: 2");
    pb_valid(&m, 0);
    pb_vfield(&m, 5, UINT64_MAX); /* int32 -1 on the wire */
    expect_err(&m, "unknown encryptedDEKSourceType: -1");

    m.n = 0;
    pb_str(&m, 2, "k1");
    pb_str(&m, 3, "SRC");
    expect_err(&m, "encrypted data is empty");
    pb_str(&m, 1, "");
    expect_err(&m, "encrypted data is empty");

    m.n = 0;
    pb_str(&m, 1, "D");
    pb_str(&m, 2, "k1");
    expect_err(&m, "failed to validate encrypted DEK source: encrypted DEK source is empty");
    memset(big, 'x', sizeof(big));
    pb_bytes(&m, 3, big, 1025);
    expect_err(&m, "failed to validate encrypted DEK source: encrypted DEK source is 1025 bytes, "
                   "which exceeds the max size of 1024");
    pb_bytes(&m, 3, big, 1024);
    assert_int_equal(ar_kmsv2_parse(m.b, m.n, &(struct ar_kmsv2_info){0}, NULL, 0), 0);

    m.n = 0;
    pb_str(&m, 1, "D");
    pb_str(&m, 3, "S");
    expect_err(&m, "failed to validate key id: keyID is empty");
    pb_bytes(&m, 2, big, 1025);
    expect_err(&m, "failed to validate key id: keyID is 1025 bytes, which exceeds the max size "
                   "of 1024");

    /* annotations */
    m.n = 0;
    pb_str(&m, 1, "D");
    pb_str(&m, 2, "k");
    pb_str(&m, 3, "S");
    {
        struct pb a = m;

        pb_entry(&a, "Bad_Key", "v", 1);
        snprintf(want, sizeof(want),
                 "failed to validate annotations: annotations: Invalid value: \"Bad_Key\": %s",
                 fqdn_subdomain);
        expect_err(&a, want);
    }
    {
        struct pb a = m;

        pb_entry(&a, "nodots", "v", 1);
        expect_err(&a, "failed to validate annotations: annotations: Invalid value: \"nodots\": "
                       "should be a domain with at least two segments separated by dots");
    }
    {
        struct pb a = m;

        pb_entry(&a, "", "v", 1);
        expect_err(&a, "failed to validate annotations: annotations: Required value");
    }
    {
        struct pb a = m;
        char label[80];

        memset(label, 'a', 64);
        memcpy(label + 64, ".example.com", 13);
        pb_entry(&a, label, "v", 1);
        snprintf(want, sizeof(want),
                 "failed to validate annotations: annotations: Invalid value: \"%.64s\": must be "
                 "no more than 63 characters",
                 label);
        expect_err(&a, want);
    }
    {
        struct pb a = m;
        static uint8_t v[32768];

        pb_entry(&a, "a.example.com", v, 32768 - 13); /* exactly the max: fine */
        assert_int_equal(ar_kmsv2_parse(a.b, a.n, &(struct ar_kmsv2_info){0}, NULL, 0), 0);
        pb_entry(&a, "b.example.com", "x", 1);
        expect_err(&a, "failed to validate annotations: total size of annotations is 32782, which "
                       "exceeds the max size of 32768");
        pb_entry(&a, "nodots", "v", 1);
        expect_err(&a, "failed to validate annotations: [annotations: Invalid value: \"nodots\": "
                       "should be a domain with at least two segments separated by dots, total "
                       "size of annotations is 32789, which exceeds the max size of 32768]");
    }
}

static void test_wire_errors(void **state)
{
    struct pb m;

    pb_valid(&m, 1);
    for (size_t cut = 1; cut < m.n; cut++) {
        struct ar_kmsv2_info info;
        char err[512];
        int r = ar_kmsv2_parse(m.b, cut, &info, err, sizeof(err));

        /* a cut at a field boundary can leave a valid message (here only the one that drops
         * the type field or the annotation and the type); every other cut is a wire or validation
         * error, never a crash */
        if (cut == m.n - 2 || cut == 15) {
            assert_int_equal(r, 0);
            assert_int_equal(info.dek_source_type, 0);
            assert_int_equal(info.nannotations, cut == 15 ? 0 : 1);
        } else {
            assert_int_equal(r, -EBADMSG);
            assert_true(err[0] != '\0');
        }
    }
    m.n = 0;
    pb_str(&m, 1, "DATA");
    m.n -= 2;
    expect_err(&m, "unexpected EOF");
    m.n = 0;
    pb_vfield(&m, 1, 5);
    expect_err(&m, "proto: wrong wireType = 0 for field EncryptedData");
    m.n = 0;
    pb_str(&m, 5, "x");
    expect_err(&m, "proto: wrong wireType = 2 for field EncryptedDEKSourceType");
    m.n = 0;
    pb_varint(&m, 1u << 3 | 4);
    expect_err(&m, "proto: EncryptedObject: wiretype end group for non-group");
    m.n = 0;
    pb_varint(&m, 0u << 3 | 2);
    expect_err(&m, "proto: EncryptedObject: illegal tag 0 (wire type 2)");
    m.n = 0;
    for (int i = 0; i < 11; i++)
        m.b[m.n++] = 0xff;
    expect_err(&m, "proto: integer overflow");
    m.n = 0;
    expect_err(&m, "encrypted data is empty"); /* the empty message */
}

/*
 * The gogo-generated EncryptedObject.Unmarshal of Kubernetes 1.28-1.33, byte for byte:
 * - "illegal tag %d (wire type %d)" prints int32(wire>>3) and the whole tag varint `wire`;
 *   field numbers are int32(wire>>3), so 2^32+1 is field 1;
 * - skipApi: "proto: illegal wireType %d";
 * - iNdEx+byteLen overflowing int is ErrInvalidLengthApi, not io.ErrUnexpectedEOF;
 * - map entries: key and value are read whatever their wire type, and their bounds are the
 *   whole buffer, not the entry (iNdEx is then reset to the entry's end).
 */
static void test_gogo_quirks(void **state)
{
    struct pb m;
    struct ar_kmsv2_info info;
    char err[512];

    m.n = 0;
    pb_varint(&m, (1ULL << 32) << 3 | 2); /* int32(field) == 0 */
    expect_err(&m, "proto: EncryptedObject: illegal tag 0 (wire type 34359738370)");
    m.n = 0;
    pb_varint(&m, (1ULL << 31) << 3 | 0); /* int32(field) < 0 */
    expect_err(&m, "proto: EncryptedObject: illegal tag -2147483648 (wire type 17179869184)");
    m.n = 0;
    pb_varint(&m, 0); /* field 0, wire type 0 */
    expect_err(&m, "proto: EncryptedObject: illegal tag 0 (wire type 0)");

    /* field 2^32 + 1 is EncryptedData */
    m.n = 0;
    pb_varint(&m, ((1ULL << 32) + 1) << 3 | 2);
    pb_varint(&m, 4);
    memcpy(m.b + m.n, "DATA", 4);
    m.n += 4;
    pb_str(&m, 2, "k1");
    pb_str(&m, 3, "SRC");
    assert_int_equal(parse(&m, &info, err), 0);
    assert_true(span_eq(info.encrypted_data, "DATA"));

    m.n = 0;
    pb_varint(&m, 9u << 3 | 6);
    expect_err(&m, "proto: illegal wireType 6");
    m.n = 0;
    pb_varint(&m, 9u << 3 | 7);
    expect_err(&m, "proto: illegal wireType 7");

    /* a length that makes iNdEx+byteLen overflow */
    m.n = 0;
    pb_varint(&m, 1u << 3 | 2);
    pb_varint(&m, (uint64_t)INT64_MAX - 1);
    expect_err(&m, "proto: negative length found during unmarshaling");
    m.n = 0;
    pb_varint(&m, 2u << 3 | 2);
    pb_varint(&m, (uint64_t)INT64_MAX);
    expect_err(&m, "proto: negative length found during unmarshaling");
    m.n = 0;
    pb_varint(&m, 3u << 3 | 2);
    pb_varint(&m, 1000); /* plain too long: EOF */
    expect_err(&m, "unexpected EOF");

    /* map entry fields with other wire types are still read as length-delimited */
    {
        static const uint8_t entry[] = {0x08, 13,  'a', '.', 'e', 'x',  'a', 'm', 'p', 'l',
                                        'e',  '.', 'c', 'o', 'm', 0x15, 2,   'v', 'w'};
        m.n = 0;
        pb_str(&m, 1, "D");
        pb_str(&m, 2, "k");
        pb_str(&m, 3, "S");
        pb_bytes(&m, 4, entry, sizeof(entry));
        assert_int_equal(parse(&m, &info, err), 0);
        assert_int_equal(info.nannotations, 1);
        assert_true(span_eq(info.ann_key[0], "a.example.com"));
        assert_true(span_eq(info.ann_value[0], "vw"));
    }
    /* an entry whose key runs past the entry's end (but not past the buffer): gogo reads it,
     * then continues after the entry */
    {
        m.n = 0;
        pb_str(&m, 1, "D");
        pb_str(&m, 2, "k");
        pb_str(&m, 3, "S");
        pb_varint(&m, 4u << 3 | 2);
        pb_varint(&m, 2);  /* entry of 2 bytes: */
        m.b[m.n++] = 0x0a; /* key, */
        m.b[m.n++] = 4;    /* 4 bytes long: runs 4 bytes past the entry */
        /* "h.h0" = 68 2e 68 30: also two unknown varint fields 13 = 0x2e and 13 = 0x30 */
        memcpy(m.b + m.n, "h.h0", 4);
        m.n += 4;
        assert_int_equal(parse(&m, &info, err), 0);
        assert_int_equal(info.nannotations, 1);
        assert_true(span_eq(info.ann_key[0], "h.h0"));
        assert_int_equal(info.ann_value[0].n, 0);
    }
    /* inside an entry an unknown field may not run past the entry */
    {
        m.n = 0;
        pb_str(&m, 1, "D");
        pb_str(&m, 2, "k");
        pb_str(&m, 3, "S");
        pb_varint(&m, 4u << 3 | 2);
        pb_varint(&m, 2);
        m.b[m.n++] = 0x1a; /* field 3, bytes */
        m.b[m.n++] = 2;    /* 2 bytes: past the entry */
        m.b[m.n++] = 'x';
        m.b[m.n++] = 'y';
        expect_err(&m, "unexpected EOF");
    }
    /* an end-group inside an entry */
    {
        m.n = 0;
        pb_varint(&m, 4u << 3 | 2);
        pb_varint(&m, 1);
        m.b[m.n++] = 0x1c; /* field 3, end group */
        expect_err(&m, "proto: unexpected end of group");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recorded_type0),
        cmocka_unit_test(test_recorded_type1),
        cmocka_unit_test(test_reordered_unknown_repeated),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_wire_errors),
        cmocka_unit_test(test_gogo_quirks),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
