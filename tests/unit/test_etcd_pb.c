/* tests/unit/test_etcd_pb.c: the KV calls in etcd's gRPC wire format (coord/etcd/etcd_pb.c).
 * Requests: exact bytes by field number (etcd 3.4 rpc.proto). Answers: hand-built protobuf,
 * including what the reader must refuse. The gRPC status lines. Then, against a real etcd,
 * every KV call over gRPC and through the JSON gateway (kv_json) must give the same result,
 * field by field, on binary keys and values. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sys/mman.h>
#include <unistd.h>
#include <curl/curl.h>

#include "coord/etcd/etcd_int.h"
#include "coord/etcd/etcd_sync.h"
#include "tests/support/etcd_harness.h"

#define K(s) (const uint8_t *)(s), (sizeof(s) - 1)

static void expect_body(const char *body, size_t len, const char *want, size_t wlen)
{
    assert_non_null(body);
    assert_int_equal(len, 5 + wlen);
    assert_int_equal((uint8_t)body[0], 0);
    assert_int_equal(((uint8_t)body[1] << 24 | (uint8_t)body[2] << 16 | (uint8_t)body[3] << 8 |
                      (uint8_t)body[4]),
                     wlen);
    assert_memory_equal(body + 5, want, wlen);
}

static void test_requests(void **state)
{
    size_t len = 0;
    int rc = 1;
    char *b;

    (void)state;
    /* RangeRequest: key 1, range_end 2, limit 3, revision 4, serializable 7, keys_only 8,
     * count_only 9 */
    struct ar_etcd_op r = {.type = AR_ETCD_RANGE,
                           K("a"),
                           .range_end = K("b"),
                           .limit = 300,
                           .revision = 5,
                           .serializable = true,
                           .keys_only = true,
                           .count_only = true};
    b = ar_pb_op(&r, &len, &rc);
    assert_int_equal(rc, 0);
    expect_body(b, len,
                "\x0a\x01"
                "a"
                "\x12\x01"
                "b"
                "\x18\xac\x02"
                "\x20\x05"
                "\x38\x01"
                "\x40\x01"
                "\x48\x01",
                17);
    free(b);
    /* PutRequest: key 1, value 2, lease 3, prev_kv 4; an empty value is left out */
    struct ar_etcd_op p = {
        .type = AR_ETCD_PUT, K("k"), .value = K("v\0w"), .lease = -1, .prev_kv = true};
    b = ar_pb_op(&p, &len, &rc);
    expect_body(b, len,
                "\x0a\x01"
                "k"
                "\x12\x03"
                "v\0w"
                "\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"
                "\x20\x01",
                21);
    free(b);
    struct ar_etcd_op p0 = {.type = AR_ETCD_PUT, K("k")};
    b = ar_pb_op(&p0, &len, &rc);
    expect_body(b, len,
                "\x0a\x01"
                "k",
                3);
    free(b);
    /* DeleteRangeRequest: key 1, range_end 2, prev_kv 3 */
    struct ar_etcd_op d = {.type = AR_ETCD_DELETE, K("k"), .range_end = K("\0"), .prev_kv = true};
    b = ar_pb_op(&d, &len, &rc);
    expect_body(b, len,
                "\x0a\x01"
                "k"
                "\x12\x01"
                "\0"
                "\x18\x01",
                8);
    free(b);
    /* the same refusals as the JSON path */
    struct ar_etcd_op bad = {.type = AR_ETCD_PUT};
    assert_null(ar_pb_op(&bad, &len, &rc));
    assert_int_equal(rc, -EINVAL);
}

static void test_txn_request(void **state)
{
    size_t len = 0;
    int rc = 1;
    char *b;

    (void)state;
    /* Compare: result 1, target 2, key 3, then the oneof (version 4, create_revision 5,
     * mod_revision 6, value 7), written even when 0: "absent" is create_revision == 0 */
    struct ar_etcd_compare cmp[3] = {
        {K("a"), .target = AR_ETCD_CMP_CREATE, .result = AR_ETCD_EQUAL, .number = 0},
        {K("b"), .target = AR_ETCD_CMP_MOD, .result = AR_ETCD_LESS, .number = 7},
        {K("c"), .target = AR_ETCD_CMP_VALUE, .result = AR_ETCD_NOT_EQUAL, .value = K("x")}};
    struct ar_etcd_op succ = {.type = AR_ETCD_PUT, K("a"), .value = K("1")};
    struct ar_etcd_op fail = {.type = AR_ETCD_RANGE, K("a")};
    struct ar_etcd_txn t = {cmp, 3, &succ, 1, &fail, 1};
    static const char want[] = "\x0a\x07"
                               "\x10\x01"
                               "\x1a\x01"
                               "a"
                               "\x28\x00" /* CREATE, EQUAL */
                               "\x0a\x09"
                               "\x08\x02"
                               "\x10\x02"
                               "\x1a\x01"
                               "b"
                               "\x30\x07" /* LESS, MOD */
                               "\x0a\x0a"
                               "\x08\x03"
                               "\x10\x03"
                               "\x1a\x01"
                               "c"
                               "\x3a\x01"
                               "x" /* NOT_EQUAL, VALUE */
                               "\x12\x08"
                               "\x12\x06"
                               "\x0a\x01"
                               "a"
                               "\x12\x01"
                               "1" /* success: put */
                               "\x1a\x05"
                               "\x0a\x03"
                               "\x0a\x01"
                               "a"; /* failure: range */

    b = ar_pb_txn(&t, &len, &rc);
    assert_int_equal(rc, 0);
    expect_body(b, len, want, sizeof(want) - 1);
    free(b);
    cmp[1].target = (enum ar_etcd_cmp_target)9;
    assert_null(ar_pb_txn(&t, &len, &rc));
    assert_int_equal(rc, -EINVAL);
}

/* ---- answers -------------------------------------------------------------------------------- */

static int parse(const char *m, size_t n, enum ar_etcd_op_type type, bool txn,
                 struct ar_etcd_result *res)
{
    int rc = ar_pb_parse_result(NULL, (const uint8_t *)m, n, type, txn, res);

    if (rc < 0)
        ar_result_clear(NULL, res);
    return rc;
}

static void test_answers(void **state)
{
    struct ar_etcd_result r;

    (void)state;
    /* RangeResponse: header{revision 9}, two kvs (the second with a binary value and unknown
     * fields 99 (varint) and 100 (bytes), skipped), more, count */
    static const char range[] = "\x0a\x02"
                                "\x18\x09"
                                "\x12\x0c"
                                "\x0a\x02"
                                "k1"
                                "\x10\x02"
                                "\x18\x03"
                                "\x20\x01"
                                "\x2a\x00"
                                "\x12\x13"
                                "\x0a\x02"
                                "k2"
                                "\x18\x08"
                                "\x2a\x03"
                                "\0\xff\x01"
                                "\x30\x05"
                                "\x98\x06\x07"
                                "\xa2\x06\x00"
                                "\x18\x01"
                                "\x20\x02";
    assert_int_equal(parse(range, sizeof(range) - 1, AR_ETCD_RANGE, false, &r), 0);
    assert_int_equal(r.revision, 9);
    assert_int_equal(r.n_kvs, 2);
    assert_true(r.more);
    assert_int_equal(r.count, 2);
    assert_int_equal(r.kvs[0].key_len, 2);
    assert_string_equal((char *)r.kvs[0].key, "k1");
    assert_int_equal(r.kvs[0].create_revision, 2);
    assert_int_equal(r.kvs[0].mod_revision, 3);
    assert_int_equal(r.kvs[0].version, 1);
    assert_int_equal(r.kvs[0].value_len, 0);
    assert_int_equal(r.kvs[0].value[0], 0);
    assert_int_equal(r.kvs[1].mod_revision, 8);
    assert_int_equal(r.kvs[1].lease, 5);
    assert_int_equal(r.kvs[1].value_len, 3);
    assert_memory_equal(r.kvs[1].value, "\0\xff\x01\0", 4); /* NUL-terminated */
    ar_result_clear(NULL, &r);

    /* TxnResponse: succeeded, responses: put (prev_kv), delete (deleted 1, prev_kvs) */
    static const char txn[] = "\x0a\x02"
                              "\x18\x0c"
                              "\x10\x01"
                              "\x1a\x0a"
                              "\x12\x08"
                              "\x12\x06"
                              "\x0a\x01"
                              "a"
                              "\x2a\x01"
                              "0"
                              "\x1a\x0c"
                              "\x1a\x0a"
                              "\x10\x01"
                              "\x1a\x06"
                              "\x0a\x01"
                              "b"
                              "\x2a\x01"
                              "1";
    assert_int_equal(parse(txn, sizeof(txn) - 1, AR_ETCD_RANGE, true, &r), 0);
    assert_int_equal(r.revision, 12);
    assert_true(r.succeeded);
    assert_int_equal(r.n_ops, 2);
    assert_int_equal(r.ops[0].type, AR_ETCD_PUT);
    assert_int_equal(r.ops[0].n_kvs, 1);
    assert_string_equal((char *)r.ops[0].kvs[0].value, "0");
    assert_int_equal(r.ops[1].type, AR_ETCD_DELETE);
    assert_int_equal(r.ops[1].deleted, 1);
    assert_string_equal((char *)r.ops[1].kvs[0].key, "b");
    ar_result_clear(NULL, &r);

    /* refused: a known field with the wrong wire type, a truncated length, a truncated varint,
     * a group, an 11-byte varint, a nested txn, an op without a response, a oneof given twice,
     * a negative revision, two prev_kv in a PutResponse */
    static const struct {
        const char *m;
        size_t n;
        bool txn;
        enum ar_etcd_op_type type;
    } bad[] = {
        {"\x10\x01", 2, false, AR_ETCD_RANGE}, /* kvs as a varint */
        {"\x12\x05"
         "\x0a\x01",
         4, false, AR_ETCD_RANGE},
        {"\x18\x80", 2, false, AR_ETCD_RANGE},
        {"\x1b", 1, false, AR_ETCD_RANGE},
        {"\x20\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12, false, AR_ETCD_RANGE},
        {"\x1a\x02"
         "\x22\x00",
         4, true, AR_ETCD_RANGE},
        {"\x1a\x00", 2, true, AR_ETCD_RANGE},
        {"\x1a\x04"
         "\x0a\x00"
         "\x12\x00",
         6, true, AR_ETCD_RANGE},
        {"\x0a\x0b"
         "\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
         13, false, AR_ETCD_RANGE},
        {"\x12\x00"
         "\x12\x00",
         4, false, AR_ETCD_PUT},
        {"\x12\x03"
         "\x0a\x01",
         4, false, AR_ETCD_RANGE}, /* kv with a short key */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&r, 0, sizeof(r));
        if (parse(bad[i].m, bad[i].n, bad[i].type, bad[i].txn, &r) != -EPROTO)
            fail_msg("bad answer %zu accepted", i);
    }

    /* the frame: exactly one uncompressed message */
    const uint8_t *m;
    size_t ml;
    assert_int_equal(ar_pb_unframe((const uint8_t *)"\0\0\0\0\x02"
                                                    "ab",
                                   7, &m, &ml),
                     0);
    assert_int_equal(ml, 2);
    assert_int_equal(ar_pb_unframe((const uint8_t *)"\1\0\0\0\x02"
                                                    "ab",
                                   7, &m, &ml),
                     -EPROTO);
    assert_int_equal(ar_pb_unframe((const uint8_t *)"\0\0\0\0\x03"
                                                    "ab",
                                   7, &m, &ml),
                     -EPROTO);
    assert_int_equal(ar_pb_unframe((const uint8_t *)"\0\0\0\0", 4, &m, &ml), -EPROTO);
}

static void test_status_lines(void **state)
{
    struct ar_xfer x = {.grpc = true, .grpc_status = -1};
    char line[128], out[64];

    (void)state;
    snprintf(line, sizeof(line), "Grpc-Status: 14\r\n");
    assert_int_equal(ar_xfer_grpc_header(line, 1, strlen(line), &x), strlen(line));
    assert_int_equal(x.grpc_status, 14);
    snprintf(line, sizeof(line), "grpc-message: etcdserver%%3A no leader%%0A%%zz\r\n");
    ar_xfer_grpc_header(line, 1, strlen(line), &x);
    assert_string_equal(x.grpc_msg, "etcdserver: no leader?%zz");
    snprintf(line, sizeof(line), "grpc-status: 1x\r\n");
    ar_xfer_grpc_header(line, 1, strlen(line), &x);
    assert_int_equal(x.grpc_status, 1000);
    snprintf(line, sizeof(line), "grpc-status: 123\r\n");
    ar_xfer_grpc_header(line, 1, strlen(line), &x);
    assert_int_equal(x.grpc_status, 1000);
    ar_grpc_msg_decode("abc%41", 6, out, 4);
    assert_string_equal(out, "abc");
    ar_grpc_msg_decode("%4a%4A%4", 8, out, sizeof(out));
    assert_string_equal(out, "JJ%4");
    {
        /* the message right before a page nobody may read, no NUL after it: decoding reads
         * nothing past its n bytes (sscanf("%2x") scanned on to a NUL: SIGSEGV here) */
        long pg = sysconf(_SC_PAGESIZE);
        char *m =
            mmap(NULL, (size_t)pg * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

        assert_true(m != MAP_FAILED);
        assert_int_equal(mprotect(m + pg, (size_t)pg, PROT_NONE), 0);
        memcpy(m + pg - 4, "x%41", 4);
        ar_grpc_msg_decode(m + pg - 4, 4, out, sizeof(out));
        assert_string_equal(out, "xA");
        munmap(m, (size_t)pg * 2);
    }
}

/* ---- gRPC and the gateway agree, on a real etcd --------------------------------------------- */

static struct etcd_harness H;

static void same_kv(const struct ar_etcd_kv *a, const struct ar_etcd_kv *b)
{
    assert_int_equal(a->key_len, b->key_len);
    assert_memory_equal(a->key, b->key, a->key_len + 1);
    assert_int_equal(a->value_len, b->value_len);
    assert_memory_equal(a->value, b->value, a->value_len + 1);
    assert_int_equal(a->create_revision, b->create_revision);
    assert_int_equal(a->mod_revision, b->mod_revision);
    assert_int_equal(a->version, b->version);
    assert_int_equal(a->lease, b->lease);
}

static void same_result(const struct ar_etcd_result *a, const struct ar_etcd_result *b)
{
    assert_int_equal(a->revision, b->revision);
    assert_int_equal(a->n_kvs, b->n_kvs);
    for (size_t i = 0; i < a->n_kvs; i++)
        same_kv(&a->kvs[i], &b->kvs[i]);
    assert_int_equal(a->count, b->count);
    assert_int_equal(a->more, b->more);
    assert_int_equal(a->deleted, b->deleted);
    assert_int_equal(a->succeeded, b->succeeded);
    assert_int_equal(a->n_ops, b->n_ops);
    for (size_t i = 0; i < a->n_ops; i++) {
        assert_int_equal(a->ops[i].type, b->ops[i].type);
        same_result(&a->ops[i], &b->ops[i]);
    }
}

static void test_grpc_equals_gateway(void **state)
{
    struct ar_etcd_settings st;
    struct ar_etcd_sync *g = NULL, *j = NULL;
    struct ar_etcd_result *rg = NULL, *rj = NULL, *lease = NULL;
    uint8_t val[256], key[] = "/pb/bin-\x01\xff";

    (void)state;
    etcd_harness_settings(&H, &st);
    assert_int_equal(ar_etcd_sync_new(&st, &g), 0);
    st.kv_json = true;
    assert_int_equal(ar_etcd_sync_new(&st, &j), 0);
    for (size_t i = 0; i < sizeof(val); i++)
        val[i] = (uint8_t)i;
    assert_int_equal(ar_etcd_sync_lease_grant(g, 60, &lease, NULL), 0);
    /* writes through gRPC, with every field etcd keeps: binary key and value, a lease */
    struct ar_etcd_op p1 = {.type = AR_ETCD_PUT,
                            key,
                            sizeof(key) - 1,
                            .value = val,
                            .value_len = sizeof(val),
                            .lease = lease->lease_id};
    struct ar_etcd_op p2 = {.type = AR_ETCD_PUT, K("/pb/empty")};
    struct ar_etcd_op p3 = {.type = AR_ETCD_PUT, K("/pb/text"), .value = K("hello")};
    assert_int_equal(ar_etcd_sync_put(g, &p1, NULL, NULL), 0);
    assert_int_equal(ar_etcd_sync_put(g, &p2, NULL, NULL), 0);
    assert_int_equal(ar_etcd_sync_put(j, &p3, NULL, NULL), 0);
    ar_etcd_result_free(lease);

    /* ranges: all, a page (more, count), keys only, count only, serializable */
    uint8_t end[8];
    struct ar_etcd_op r = {.type = AR_ETCD_RANGE, K("/pb/")};
    r.range_end = end;
    r.range_end_len = ar_etcd_prefix_end(r.key, r.key_len, end);
    for (int v = 0; v < 5; v++) {
        struct ar_etcd_op o = r;

        o.limit = v == 1 ? 2 : 0;
        o.keys_only = v == 2;
        o.count_only = v == 3;
        o.serializable = v == 4;
        assert_int_equal(ar_etcd_sync_range(g, &o, &rg, NULL), 0);
        assert_int_equal(ar_etcd_sync_range(j, &o, &rj, NULL), 0);
        same_result(rg, rj);
        assert_int_equal(rg->count, 3);
        assert_int_equal(rg->n_kvs, v == 1 ? 2 : v == 3 ? 0 : 3);
        ar_etcd_result_free(rg);
        ar_etcd_result_free(rj);
    }

    /* txns: a failing compare runs the failure branch (a range), then the same txn with the
     * compare true; puts with prev_kv, deletes with prev_kvs, each answered alike */
    for (int round = 0; round < 2; round++) {
        struct ar_etcd_compare c = {K("/pb/text"), .target = AR_ETCD_CMP_VALUE,
                                    .result = AR_ETCD_EQUAL, .value = K("nope")};
        struct ar_etcd_op rr = {.type = AR_ETCD_RANGE, K("/pb/text")};
        struct ar_etcd_txn t = {&c, 1, NULL, 0, &rr, 1};
        struct ar_etcd_result *a = NULL, *b = NULL;
        struct ar_etcd_sync *first = round ? j : g, *second = round ? g : j;

        assert_int_equal(ar_etcd_sync_txn(first, &t, &a, NULL), 0);
        assert_int_equal(ar_etcd_sync_txn(second, &t, &b, NULL), 0);
        same_result(a, b);
        assert_false(a->succeeded);
        assert_int_equal(a->n_ops, 1);
        assert_string_equal((char *)a->ops[0].kvs[0].value, "hello");
        ar_etcd_result_free(a);
        ar_etcd_result_free(b);

        /* a put with prev_kv: each client writes, then both answers are compared on the
         * fields that do not depend on which write came first */
        struct ar_etcd_op up = {
            .type = AR_ETCD_PUT, K("/pb/text"), .value = K("hello"), .prev_kv = true};
        c.value = (const uint8_t *)"hello";
        c.value_len = 5;
        t = (struct ar_etcd_txn){&c, 1, &up, 1, NULL, 0};
        assert_int_equal(ar_etcd_sync_txn(first, &t, &a, NULL), 0);
        assert_true(a->succeeded);
        assert_int_equal(a->n_ops, 1);
        assert_int_equal(a->ops[0].type, AR_ETCD_PUT);
        assert_int_equal(a->ops[0].n_kvs, 1);
        assert_string_equal((char *)a->ops[0].kvs[0].value, "hello");
        assert_int_equal(a->ops[0].kvs[0].mod_revision + 1, a->revision);
        ar_etcd_result_free(a);
    }
    struct ar_etcd_op del = {.type = AR_ETCD_DELETE, key, sizeof(key) - 1, .prev_kv = true};
    struct ar_etcd_result *dg = NULL;
    assert_int_equal(ar_etcd_sync_delete(g, &del, &dg, NULL), 0);
    assert_int_equal(dg->deleted, 1);
    assert_int_equal(dg->n_kvs, 1);
    assert_int_equal(dg->kvs[0].value_len, sizeof(val));
    assert_memory_equal(dg->kvs[0].value, val, sizeof(val));
    ar_etcd_result_free(dg);
    assert_int_equal(ar_etcd_sync_delete(j, &del, &dg, NULL), 0);
    assert_int_equal(dg->deleted, 0);
    ar_etcd_result_free(dg);
    ar_etcd_sync_free(g);
    ar_etcd_sync_free(j);
}

static int group_setup(void **state)
{
    struct etcd_harness_opts o = {.members = 1, .fast = true};

    (void)state;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return etcd_harness_start(&H, &o) < 0 ? -1 : 0;
}

static int group_teardown(void **state)
{
    (void)state;
    etcd_harness_destroy(&H);
    curl_global_cleanup();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_requests),
        cmocka_unit_test(test_txn_request),
        cmocka_unit_test(test_answers),
        cmocka_unit_test(test_status_lines),
        cmocka_unit_test(test_grpc_equals_gateway),
    };

    return cmocka_run_group_tests_name("etcd_pb", tests, group_setup, group_teardown);
}
