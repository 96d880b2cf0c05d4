/* tests/unit/test_record.c: the rotation, ack, abort and history records (coord/record.h):
 * their exact bytes, round trips, and parsing of hostile input. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coord/record.h"

#define HEX_A "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define HEX_B "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
#define FP_A  "sha256:" HEX_A
#define FP_B  "sha256:" HEX_B
#define FP_H  "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define FP_I  "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define ID    "20261130T090347Z-01234567-fedcba98"

static struct ar_rotation_rec rot(void)
{
    struct ar_rotation_rec r = {.id = ID,
                                .from = FP_A,
                                .to = FP_B,
                                .phases = {{"stage", FP_H}, {"promote", FP_I}},
                                .nphases = 2,
                                .index = 1,
                                .members = {"cp-1", "cp-2", "cp-3"},
                                .nmembers = 3,
                                .started_ms = 1764491234567,
                                .phase_since_ms = 1764491239999};
    return r;
}

#define ROT_JSON                                                                                   \
    "{\"id\":\"" ID "\",\"from\":\"" FP_A "\",\"to\":\"" FP_B                                      \
    "\",\"phases\":[{\"name\":\"stage\","                                                          \
    "\"hash\":\"" FP_H "\"},{\"name\":\"promote\",\"hash\":\"" FP_I "\"}],\"index\":1,\"state\":"  \
    "\"running\",\"members\":[\"cp-1\",\"cp-2\",\"cp-3\"],\"started_ms\":1764491234567,"           \
    "\"phase_since_ms\":1764491239999}"

static void test_id(void **state)
{
    char id[AR_RECORD_ID_LEN];

    assert_int_equal(ar_record_id(1764493427123, FP_A, FP_B, id), 0);
    assert_string_equal(id, "20251130T090347Z-01234567-fedcba98");
    assert_true(ar_record_id_valid(id));
    assert_int_equal(ar_record_id(0, FP_A, "sha256:x", id), -EINVAL);
    assert_false(ar_record_id_valid("20251130T090347Z-01234567-fedcba9"));
    assert_false(ar_record_id_valid("20251130T090347Z-01234567-fedcba9A"));
    assert_false(ar_record_id_valid("20251130X090347Z-01234567-fedcba98"));
    assert_false(ar_record_id_valid("2025113aT090347Z-01234567-fedcba98"));
    assert_false(ar_record_id_valid("20251130T090347Z_01234567-fedcba98"));
    assert_false(ar_record_id_valid(NULL));
}

static void test_rotation_exact(void **state)
{
    struct ar_rotation_rec r = rot(), back;
    char *s;

    assert_int_equal(ar_rotation_rec_build(&r, &s), 0);
    assert_string_equal(s, ROT_JSON);
    assert_int_equal(ar_rotation_rec_parse(s, strlen(s), &back), 0);
    assert_memory_equal(&r, &back, sizeof(r));
    free(s);

    r.state = AR_ROT_ABORTING;
    strcpy(r.abort_refused, "refused");
    assert_int_equal(ar_rotation_rec_build(&r, &s), 0);
    assert_non_null(strstr(s, "\"state\":\"aborting\""));
    assert_non_null(strstr(s, ",\"abort_refused\":\"refused\"}"));
    assert_int_equal(ar_rotation_rec_parse(s, strlen(s), &back), 0);
    assert_memory_equal(&r, &back, sizeof(r));
    free(s);

    /* what would not parse back is not built */
    r = rot();
    r.index = 2;
    assert_int_equal(ar_rotation_rec_build(&r, &s), -EINVAL);
    assert_null(s);
    r = rot();
    strcpy(r.members[2], "cp-1");
    assert_int_equal(ar_rotation_rec_build(&r, &s), -EINVAL);
    r = rot();
    strcpy(r.phases[0].name, "prune"); /* out of order */
    assert_int_equal(ar_rotation_rec_build(&r, &s), -EINVAL);
    r = rot();
    r.nmembers = 0;
    assert_int_equal(ar_rotation_rec_build(&r, &s), -EINVAL);
}

/* Replace the first occurrence of what in ROT_JSON by with, then parse. */
static int parse_edit(const char *what, const char *with)
{
    char buf[4096];
    const char *p = strstr(ROT_JSON, what);
    struct ar_rotation_rec r;
    int rc;

    assert_non_null(p);
    snprintf(buf, sizeof(buf), "%.*s%s%s", (int)(p - ROT_JSON), ROT_JSON, with, p + strlen(what));
    rc = ar_rotation_rec_parse(buf, strlen(buf), &r);
    if (rc < 0) { /* refused: nothing left behind */
        struct ar_rotation_rec zero;
        memset(&zero, 0, sizeof(zero));
        assert_memory_equal(&r, &zero, sizeof(r));
    }
    return rc;
}

static void test_rotation_hostile(void **state)
{
    struct ar_rotation_rec r;
    char *big;

    assert_int_equal(parse_edit("\"index\":1", "\"index\":1"), 0); /* the base parses */
    assert_int_equal(parse_edit("\"index\":1", "\"index\":2"), -EBADMSG);
    assert_int_equal(parse_edit("\"index\":1", "\"index\":-1"), -EBADMSG);
    assert_int_equal(parse_edit("\"index\":1", "\"index\":1.0"), -EBADMSG);
    assert_int_equal(parse_edit("\"index\":1", "\"index\":\"1\""), -EBADMSG);
    assert_int_equal(parse_edit("\"index\":1,", ""), -EBADMSG); /* missing */
    assert_int_equal(parse_edit("\"running\"", "\"paused\""), -EBADMSG);
    assert_int_equal(parse_edit("\"cp-3\"", "\"cp-1\""), -EBADMSG);       /* duplicate member */
    assert_int_equal(parse_edit("\"cp-3\"", "\"a/b\""), -EBADMSG);        /* not a name */
    assert_int_equal(parse_edit("\"cp-3\"", "\"\""), -EBADMSG);           /* empty */
    assert_int_equal(parse_edit("\"cp-3\"", "3"), -EBADMSG);              /* not a string */
    assert_int_equal(parse_edit("\"cp-3\"", "\"cp\\u00003\""), -EBADMSG); /* embedded NUL */
    assert_int_equal(parse_edit("\"promote\"", "\"stage\""), -EBADMSG);   /* twice */
    assert_int_equal(parse_edit("\"promote\"", "\"rotate\""), -EBADMSG);  /* unknown */
    assert_int_equal(parse_edit("\"stage\"", "\"prune\""), -EBADMSG);     /* out of order */
    assert_int_equal(
        parse_edit(HEX_A, "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"),
        -EBADMSG);
    assert_int_equal(parse_edit(FP_H, "sha256:aa"), -EBADMSG);
    assert_int_equal(parse_edit(ID, "20261130T090347Z-01234567"), -EBADMSG);
    assert_int_equal(parse_edit("\"started_ms\":1764491234567", "\"started_ms\":-5"), -EBADMSG);
    assert_int_equal(parse_edit("\"started_ms\":1764491234567", "\"started_ms\":null"), -EBADMSG);
    assert_int_equal(parse_edit("\"id\"", "\"index\":0,\"id\""), -EBADMSG); /* duplicate key */
    assert_int_equal(parse_edit("\"members\":[\"cp-1\",\"cp-2\",\"cp-3\"]", "\"members\":[]"),
                     -EBADMSG);
    assert_int_equal(parse_edit("\"id\"", "\"newer\":{\"x\":1},\"id\""), 0); /* unknown: ignored */
    assert_int_equal(parse_edit("}]", "}],\"phases\":[]"), -EBADMSG);

    assert_int_equal(ar_rotation_rec_parse("[]", 2, &r), -EBADMSG);
    assert_int_equal(ar_rotation_rec_parse("{", 1, &r), -EBADMSG);
    assert_int_equal(ar_rotation_rec_parse("", 0, &r), -EBADMSG);
    assert_int_equal(ar_rotation_rec_parse(NULL, 0, &r), -EINVAL);
    big = malloc(AR_RECORD_MAX_BYTES + 2);
    assert_non_null(big);
    memset(big, ' ', AR_RECORD_MAX_BYTES + 1);
    big[0] = '{';
    big[AR_RECORD_MAX_BYTES] = '}';
    assert_int_equal(ar_rotation_rec_parse(big, AR_RECORD_MAX_BYTES + 1, &r), -EMSGSIZE);
    free(big);
}

static void test_ack(void **state)
{
    struct ar_ack_rec a = {.node = "cp-2",
                           .phase = "promote",
                           .hash = FP_H,
                           .proof = "canary",
                           .ok = true,
                           .time_ms = 42},
                      back;
    char *s;
    const char *bad[] = {
        "{\"node\":\"cp-2\",\"phase\":\"promote\",\"hash\":\"" FP_H "\",\"proof\":\"guess\","
        "\"ok\":true,\"time_ms\":42}",
        "{\"node\":\"cp-2\",\"phase\":\"rollback\",\"hash\":\"" FP_H "\",\"proof\":\"none\","
        "\"ok\":true,\"time_ms\":42}",
        "{\"node\":\"cp-2\",\"phase\":\"promote\",\"hash\":\"" FP_H "\",\"proof\":\"none\","
        "\"ok\":1,\"time_ms\":42}",
        "{\"node\":\"cp-2\",\"phase\":\"promote\",\"hash\":\"" FP_H "\",\"proof\":\"none\","
        "\"ok\":true}",
        "{\"node\":\"../x\",\"phase\":\"promote\",\"hash\":\"" FP_H "\",\"proof\":\"none\","
        "\"ok\":true,\"time_ms\":42}",
    };

    assert_int_equal(ar_ack_rec_build(&a, &s), 0);
    assert_string_equal(s, "{\"node\":\"cp-2\",\"phase\":\"promote\",\"hash\":\"" FP_H
                           "\",\"proof\":\"canary\",\"ok\":true,\"time_ms\":42}");
    assert_int_equal(ar_ack_rec_parse(s, strlen(s), &back), 0);
    assert_memory_equal(&a, &back, sizeof(a));
    free(s);
    strcpy(a.phase, "abort");
    a.ok = false;
    assert_int_equal(ar_ack_rec_build(&a, &s), 0);
    assert_int_equal(ar_ack_rec_parse(s, strlen(s), &back), 0);
    assert_string_equal(back.phase, "abort");
    assert_false(back.ok);
    free(s);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(ar_ack_rec_parse(bad[i], strlen(bad[i]), &back), -EBADMSG);
    strcpy(a.proof, "guess");
    assert_int_equal(ar_ack_rec_build(&a, &s), -EINVAL);
}

static void test_abort_history(void **state)
{
    struct ar_abort_rec ab = {.id = ID, .by = "operator", .time_ms = 7}, abb;
    struct ar_history_rec h = {.id = ID,
                               .from = FP_A,
                               .to = FP_B,
                               .aborted = true,
                               .started_ms = 1,
                               .finished_ms = 2,
                               .phases = {"stage", "promote", "prune"},
                               .nphases = 3},
                          hb;
    char *s;

    assert_int_equal(ar_abort_rec_build(&ab, &s), 0);
    assert_string_equal(s, "{\"id\":\"" ID "\",\"by\":\"operator\",\"time_ms\":7}");
    assert_int_equal(ar_abort_rec_parse(s, strlen(s), &abb), 0);
    assert_memory_equal(&ab, &abb, sizeof(ab));
    free(s);
    assert_int_equal(ar_abort_rec_parse("{\"id\":\"x\",\"by\":\"o\",\"time_ms\":7}", 33, &abb),
                     -EBADMSG);

    assert_int_equal(ar_history_rec_build(&h, &s), 0);
    assert_string_equal(s, "{\"id\":\"" ID "\",\"from\":\"" FP_A "\",\"to\":\"" FP_B
                           "\",\"result\":\"aborted\",\"started_ms\":1,\"finished_ms\":2,"
                           "\"phases\":[\"stage\",\"promote\",\"prune\"]}");
    assert_int_equal(ar_history_rec_parse(s, strlen(s), &hb), 0);
    assert_memory_equal(&h, &hb, sizeof(h));
    free(s);
    h.aborted = false;
    assert_int_equal(ar_history_rec_build(&h, &s), 0);
    assert_non_null(strstr(s, "\"result\":\"done\""));
    free(s);
    {
        const char *bad = "{\"id\":\"" ID "\",\"from\":\"" FP_A "\",\"to\":\"" FP_B
                          "\",\"result\":\"maybe\",\"started_ms\":1,\"finished_ms\":2,"
                          "\"phases\":[]}";
        const char *dup = "{\"id\":\"" ID "\",\"from\":\"" FP_A "\",\"to\":\"" FP_B
                          "\",\"result\":\"done\",\"started_ms\":1,\"finished_ms\":2,"
                          "\"phases\":[\"prune\",\"prune\"]}";
        assert_int_equal(ar_history_rec_parse(bad, strlen(bad), &hb), -EBADMSG);
        assert_int_equal(ar_history_rec_parse(dup, strlen(dup), &hb), -EBADMSG);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_id),
        cmocka_unit_test(test_rotation_exact),
        cmocka_unit_test(test_rotation_hostile),
        cmocka_unit_test(test_ack),
        cmocka_unit_test(test_abort_history),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
