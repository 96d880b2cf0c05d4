/* tests/unit/test_report.c: the member report and registration records (coord/report.h): their
 * exact bytes, and parsing of hostile input. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coord/report.h"

#define FP_A "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define FP_B "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
#define FP_H "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

static struct ar_report full(void)
{
    struct ar_report r = {.node = "cp-1",
                          .version = "0.1.0",
                          .desired_fp = FP_A,
                          .desired_valid = true,
                          .effective_fp = FP_B,
                          .effective_hash = FP_H,
                          .time_ms = 1764491234567};
    return r;
}

static void test_build_exact(void **state)
{
    struct ar_report r = full(), empty = {.node = "cp-2", .version = "0.1.0"};
    char *s;

    assert_int_equal(ar_report_build(&r, true, &s), 0);
    assert_string_equal(s, "{\"node\":\"cp-1\",\"version\":\"0.1.0\",\"desired\":{\"fingerprint\":"
                           "\"" FP_A "\",\"valid\":true},\"effective\":{\"fingerprint\":\"" FP_B
                           "\",\"file_hash\":\"" FP_H "\"},\"time_ms\":1764491234567}");
    free(s);
    assert_int_equal(ar_report_build(&r, false, &s), 0);
    assert_string_equal(s, "{\"node\":\"cp-1\",\"version\":\"0.1.0\",\"desired\":{\"fingerprint\":"
                           "\"" FP_A "\",\"valid\":true},\"effective\":{\"fingerprint\":\"" FP_B
                           "\",\"file_hash\":\"" FP_H "\"}}");
    free(s);
    assert_int_equal(ar_report_build(&empty, false, &s), 0);
    assert_string_equal(s, "{\"node\":\"cp-2\",\"version\":\"0.1.0\",\"desired\":{\"fingerprint\":"
                           "null,\"valid\":false},\"effective\":{\"fingerprint\":null,"
                           "\"file_hash\":null}}");
    free(s);

    /* what would not parse back is not built */
    r = full();
    strcpy(r.node, "a/b");
    assert_int_equal(ar_report_build(&r, true, &s), -EINVAL);
    assert_null(s);
    r = full();
    r.desired_fp[10] = 'X';
    assert_int_equal(ar_report_build(&r, true, &s), -EINVAL);
    r = full();
    r.time_ms = -1;
    assert_int_equal(ar_report_build(&r, true, &s), -EINVAL);
}

static void test_round_trip(void **state)
{
    struct ar_report r = full(), back;
    struct ar_registration g = {.node = "cp-1",
                                .version = "0.1.0",
                                .first_seen_ms = 1000,
                                .registered_ms = 2000},
                           gb;
    char *s;

    assert_int_equal(ar_report_build(&r, true, &s), 0);
    assert_int_equal(ar_report_parse(s, strlen(s), &back), 0);
    assert_memory_equal(&r, &back, sizeof(r));
    free(s);
    assert_int_equal(ar_registration_build(&g, &s), 0);
    assert_string_equal(
        s,
        "{\"node\":\"cp-1\",\"version\":\"0.1.0\",\"first_seen_ms\":1000,\"registered_ms\":2000}");
    assert_int_equal(ar_registration_parse(s, strlen(s), &gb), 0);
    assert_memory_equal(&g, &gb, sizeof(g));
    free(s);
}

/* Older agents may leave members out: absent is fine, and reads as "" / false / 0. */
static void test_parse_absent(void **state)
{
    struct ar_report r;
    const char *j = "{\"node\":\"cp-3\",\"effective\":{\"fingerprint\":\"" FP_B "\"}}";

    assert_int_equal(ar_report_parse(j, strlen(j), &r), 0);
    assert_string_equal(r.node, "cp-3");
    assert_string_equal(r.version, "");
    assert_string_equal(r.desired_fp, "");
    assert_false(r.desired_valid);
    assert_string_equal(r.effective_fp, FP_B);
    assert_string_equal(r.effective_hash, "");
    assert_int_equal(r.time_ms, 0);
    assert_true(ar_report_effective_is(&r, FP_B));
    assert_false(ar_report_effective_is(&r, FP_A));
    assert_int_equal(ar_report_parse("{}", 2, &r), 0);
}

static void test_parse_hostile(void **state)
{
    static const char *bad[] = {
        "",
        "null",
        "[]",
        "\"x\"",
        "{",
        "{\"node\":\"a\",\"node\":\"b\"}",               /* duplicate key */
        "{\"node\":1}",                                  /* wrong type */
        "{\"node\":\"\"}",                               /* empty name */
        "{\"node\":\"a/b\"}",                            /* a path, not a name */
        "{\"version\":[1]}",                             /* wrong type */
        "{\"desired\":\"" FP_A "\"}",                    /* not an object */
        "{\"desired\":{\"fingerprint\":7}}",             /* wrong type */
        "{\"desired\":{\"fingerprint\":\"sha256:00\"}}", /* too short */
        "{\"desired\":{\"valid\":\"yes\"}}",             /* not a boolean */
        "{\"effective\":{\"fingerprint\":\"md5:0123456789abcdef0123456789abcdef\"}}",
        "{\"effective\":{\"fingerprint\":\"sha256:0123456789ABCDEF0123456789abcdef0123456789abc"
        "def0123456789abcdef\"}}", /* upper-case hex is not what agents write */
        "{\"effective\":{\"file_hash\":\"" FP_A "x\"}}", /* too long */
        "{\"time_ms\":-5}",
        "{\"time_ms\":1.5}",
        "{\"time_ms\":\"5\"}",
        "{\"node\":\"a\\u0000b\"}", /* NUL inside */
    };
    struct ar_report r;
    char big[AR_REPORT_MAX_BYTES + 2];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&r, 0x5a, sizeof(r));
        if (ar_report_parse(bad[i], strlen(bad[i]), &r) != -EBADMSG)
            fail_msg("accepted or wrong error: %s", bad[i]);
        for (size_t k = 0; k < sizeof(r); k++) /* nothing half-filled */
            assert_int_equal(((unsigned char *)&r)[k], 0);
    }
    /* a node name at the limit passes, one byte more does not */
    char name[AR_REPORT_MAX_BYTES + 32];
    memset(big, 'a', AR_REPORT_NODE_MAX - 1);
    big[AR_REPORT_NODE_MAX - 1] = '\0';
    snprintf(name, sizeof(name), "{\"node\":\"%s\"}", big);
    assert_int_equal(ar_report_parse(name, strlen(name), &r), 0);
    assert_int_equal(strlen(r.node), AR_REPORT_NODE_MAX - 1);
    big[AR_REPORT_NODE_MAX - 1] = 'a';
    big[AR_REPORT_NODE_MAX] = '\0';
    snprintf(name, sizeof(name), "{\"node\":\"%s\"}", big);
    assert_int_equal(ar_report_parse(name, strlen(name), &r), -EBADMSG);
    /* size cap, before any parsing */
    memset(big, ' ', sizeof(big));
    big[0] = '{';
    big[AR_REPORT_MAX_BYTES] = '}';
    assert_int_equal(ar_report_parse(big, AR_REPORT_MAX_BYTES + 1, &r), -EMSGSIZE);
    assert_int_equal(ar_report_parse(big + 1, AR_REPORT_MAX_BYTES, &r), -EBADMSG);
    /* bytes, not a C string: the length counts, and trailing garbage is refused */
    assert_int_equal(ar_report_parse("{}{}", 4, &r), -EBADMSG);
    assert_int_equal(ar_report_parse("{}{}", 2, &r), 0);
    assert_int_equal(ar_report_parse(NULL, 0, &r), -EINVAL);

    struct ar_registration g;
    assert_int_equal(ar_registration_parse("{\"first_seen_ms\":-1}", 20, &g), -EBADMSG);
    assert_int_equal(ar_registration_parse("{\"registered_ms\":true}", 22, &g), -EBADMSG);
}

/* desired since_ms (agreement, DESIGN 4.1): written only when known, read back, typed. */
static void test_desired_since(void **state)
{
    struct ar_report r = full(), back;
    const char *neg = "{\"desired\":{\"since_ms\":-1}}",
               *str = "{\"desired\":{\"since_ms\":\"1\"}}";
    char *s;

    r.desired_since_ms = 1764491200000;
    assert_int_equal(ar_report_build(&r, false, &s), 0);
    assert_string_equal(s, "{\"node\":\"cp-1\",\"version\":\"0.1.0\",\"desired\":{\"fingerprint\":"
                           "\"" FP_A "\",\"valid\":true,\"since_ms\":1764491200000},\"effective\":"
                           "{\"fingerprint\":\"" FP_B "\",\"file_hash\":\"" FP_H "\"}}");
    assert_int_equal(ar_report_parse(s, strlen(s), &back), 0);
    assert_int_equal(back.desired_since_ms, 1764491200000);
    free(s);
    assert_int_equal(ar_report_parse(neg, strlen(neg), &back), -EBADMSG);
    assert_int_equal(ar_report_parse(str, strlen(str), &back), -EBADMSG);
    r.desired_since_ms = -1;
    assert_int_equal(ar_report_build(&r, false, &s), -EINVAL);
}

/* A member's rotation error (why it does not ack): written only when set, read back, typed and
 * bounded. */
static void test_error(void **state)
{
    struct ar_report r = full(), back;
    const char *num = "{\"error\":1}", *nul = "{\"error\":\"a\\u0000b\"}";
    char *s, big[AR_REPORT_ERROR_MAX + 40];

    snprintf(r.error, sizeof(r.error), "proof of load for phase promote failed: writes key1");
    assert_int_equal(ar_report_build(&r, false, &s), 0);
    assert_string_equal(s, "{\"node\":\"cp-1\",\"version\":\"0.1.0\",\"desired\":{\"fingerprint\":"
                           "\"" FP_A "\",\"valid\":true},\"effective\":{\"fingerprint\":\"" FP_B
                           "\",\"file_hash\":\"" FP_H "\"},\"error\":\"proof of load for phase "
                           "promote failed: writes key1\"}");
    assert_int_equal(ar_report_parse(s, strlen(s), &back), 0);
    assert_string_equal(back.error, r.error);
    free(s);
    assert_int_equal(ar_report_parse(num, strlen(num), &back), -EBADMSG);
    assert_int_equal(ar_report_parse(nul, strlen(nul), &back), -EBADMSG);
    memset(big, 'x', sizeof(big));
    memcpy(big, "{\"error\":\"", 10);
    memcpy(big + sizeof(big) - 3, "\"}", 3);
    assert_int_equal(ar_report_parse(big, strlen(big), &back), -EBADMSG);
}

static void test_fp(void **state)
{
    assert_true(ar_report_fp_valid(FP_A));
    assert_false(ar_report_fp_valid(NULL));
    assert_false(ar_report_fp_valid(""));
    assert_false(ar_report_fp_valid(FP_A "0"));
    assert_true(ar_report_fp_equal(FP_A, FP_A));
    assert_false(ar_report_fp_equal(FP_A, FP_B));
    assert_false(ar_report_fp_equal("", ""));     /* absent never matches */
    assert_false(ar_report_fp_equal(NULL, NULL)); /* nor does nothing */
    assert_false(ar_report_fp_equal("x", "x"));   /* nor a malformed one */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_exact),  cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_parse_absent), cmocka_unit_test(test_parse_hostile),
        cmocka_unit_test(test_fp),           cmocka_unit_test(test_desired_since),
        cmocka_unit_test(test_error),
    };
    return cmocka_run_group_tests_name("report", tests, NULL, NULL);
}
