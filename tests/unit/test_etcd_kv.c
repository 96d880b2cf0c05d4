/*
 * tests/unit/test_etcd_kv.c: the etcd client against a real single-member etcd (Debian's
 * /usr/bin/etcd started by tests/support/etcd_harness): every request shape, errors, leases,
 * keepalive, iteration with bounded memory, watch across reconnects and compaction, shutdown.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "coord/etcd/etcd.h"
#include "coord/etcd/etcd_sync.h"
#include "tests/support/etcd_harness.h"

static struct etcd_harness H;
static struct ar_etcd_sync *S; /* a second, blocking client */

#define K(s) (const uint8_t *)(s), strlen(s)

static int group_setup(void **state)
{
    struct etcd_harness_opts o = {.members = 1, .fast = true};
    struct ar_etcd_settings st;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (etcd_harness_start(&H, &o) < 0)
        return -1;
    etcd_harness_settings(&H, &st);
    st.request_timeout_ms = 5000;
    return ar_etcd_sync_new(&st, &S) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    ar_etcd_sync_free(S);
    etcd_harness_destroy(&H);
    curl_global_cleanup();
    return 0;
}

static void put(const char *k, const uint8_t *v, size_t vlen)
{
    struct ar_etcd_op op = {.key = K(k), .value = v, .value_len = vlen};
    struct ar_etcd_error err;

    assert_int_equal(ar_etcd_sync_put(S, &op, NULL, &err), 0);
}

static void puts_(const char *k, const char *v)
{
    put(k, (const uint8_t *)v, strlen(v));
}

static int64_t current_revision(void)
{
    struct ar_etcd_op op = {.key = K("\x01"), .count_only = true};
    struct ar_etcd_result *r;
    int64_t rev;

    assert_int_equal(ar_etcd_sync_range(S, &op, &r, NULL), 0);
    rev = r->revision;
    ar_etcd_result_free(r);
    return rev;
}

/* --- pure --------------------------------------------------------------------------------- */

static void test_prefix_end(void **state)
{
    uint8_t out[8];

    assert_int_equal(ar_etcd_prefix_end(K("app/"), out), 4);
    assert_memory_equal(out, "app0", 4);
    assert_int_equal(ar_etcd_prefix_end((const uint8_t *)"a\xff", 2, out), 1);
    assert_memory_equal(out, "b", 1);
    assert_int_equal(ar_etcd_prefix_end((const uint8_t *)"\xff\xff", 2, out), 1);
    assert_int_equal(out[0], 0);
}

static void test_guess_end(void **state)
{
    uint8_t out[8];
    const uint8_t *end0 = (const uint8_t *)"\0";

    /* last + 2 * (last - first): "k05" + 2 * 4 (in the last byte) */
    assert_int_equal(ar_etcd_guess_end(K("k01"), K("k05"), K("l"), out, sizeof(out)), 3);
    assert_memory_equal(out, "k0=", 3);
    /* the shorter key is read with zero bytes after it: "a" is a\0, 2 * 00 01 from a\1 */
    assert_int_equal(ar_etcd_guess_end(K("a"), (const uint8_t *)"a\x01", 2, K("b"), out, 8), 2);
    assert_memory_equal(out, "a\x03", 2);
    /* carries through 0xff bytes: fe ff ee + 2 * 00 00 ed = ff 01 c8 */
    assert_int_equal(ar_etcd_guess_end((const uint8_t *)"\xfe\xff\x01", 3,
                                       (const uint8_t *)"\xfe\xff\xee", 3, end0, 1, out, 8),
                     3);
    assert_memory_equal(out, "\xff\x01\xc8", 3);
    /* no guess: a carry out of the first byte, no distance, at or past the end, too long */
    assert_int_equal(
        ar_etcd_guess_end((const uint8_t *)"\x80", 1, (const uint8_t *)"\xf0", 1, end0, 1, out, 8),
        0);
    assert_int_equal(ar_etcd_guess_end(K("k05"), K("k05"), K("l"), out, 8), 0);
    assert_int_equal(ar_etcd_guess_end(K("k01"), K("k05"), K("k0="), out, 8), 0);
    assert_int_equal(ar_etcd_guess_end(K("k01"), K("k05"), K("k0>"), out, 8), 3);
    assert_int_equal(ar_etcd_guess_end(K("k01"), K("k05"), K("l"), out, 2), 0);
}

static void test_bad_settings(void **state)
{
    uv_loop_t loop;
    struct ar_etcd_settings st = {.endpoints = {"127.0.0.1:2379"}, .n_endpoints = 1};

    struct ar_etcd *c = (struct ar_etcd *)&loop; /* not NULL: the constructor must clear it */
    struct ar_etcd_sync *s = (struct ar_etcd_sync *)&loop;

    uv_loop_init(&loop);
    assert_int_equal(ar_etcd_new(&loop, &st, &c), -EINVAL); /* no scheme */
    assert_null(c);
    st.n_endpoints = 0;
    c = (struct ar_etcd *)&loop;
    assert_int_equal(ar_etcd_new(&loop, &st, &c), -EINVAL);
    assert_null(c);
    assert_int_equal(ar_etcd_new(&loop, &st, NULL), -EINVAL);
    assert_int_equal(ar_etcd_sync_new(&st, &s), -EINVAL);
    assert_null(s);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* --- KV ----------------------------------------------------------------------------------- */

static void test_put_range_shapes(void **state)
{
    static const uint8_t bin[] = {0x00, 0xff, 0x10, '\n', '"', 0x80};
    struct ar_etcd_op op = {0};
    struct ar_etcd_result *r;
    struct ar_etcd_error err;
    int64_t rev1;

    put("kv/bin", bin, sizeof(bin));
    puts_("kv/a", "1");
    puts_("kv/b", "2");
    puts_("kv/c", "3");
    rev1 = current_revision();
    puts_("kv/a", "one");

    /* single key, exact bytes, metadata */
    op.key = (const uint8_t *)"kv/bin";
    op.key_len = 6;
    assert_int_equal(ar_etcd_sync_range(S, &op, &r, &err), 0);
    assert_int_equal(r->n_kvs, 1);
    assert_int_equal(r->count, 1);
    assert_false(r->more);
    assert_int_equal(r->kvs[0].value_len, sizeof(bin));
    assert_memory_equal(r->kvs[0].value, bin, sizeof(bin));
    assert_int_equal(r->kvs[0].key_len, 6);
    assert_string_equal((char *)r->kvs[0].key, "kv/bin");
    assert_int_equal(r->kvs[0].version, 1);
    assert_true(r->kvs[0].create_revision > 0);
    assert_int_equal(r->kvs[0].create_revision, r->kvs[0].mod_revision);
    ar_etcd_result_free(r);

    /* missing key: no kvs, count 0 (both omitted by etcd) */
    op.key = (const uint8_t *)"kv/none";
    op.key_len = 7;
    assert_int_equal(ar_etcd_sync_range(S, &op, &r, &err), 0);
    assert_int_equal(r->n_kvs, 0);
    assert_int_equal(r->count, 0);
    assert_true(r->revision >= rev1);
    ar_etcd_result_free(r);

    /* prefix range with limit: more + count is the total */
    uint8_t end[8];
    op.key = (const uint8_t *)"kv/";
    op.key_len = 3;
    op.range_end = end;
    op.range_end_len = ar_etcd_prefix_end(op.key, 3, end);
    op.limit = 2;
    assert_int_equal(ar_etcd_sync_range(S, &op, &r, &err), 0);
    assert_int_equal(r->n_kvs, 2);
    assert_true(r->more);
    assert_int_equal(r->count, 4);
    assert_string_equal((char *)r->kvs[0].key, "kv/a");
    assert_string_equal((char *)r->kvs[1].key, "kv/b");
    assert_string_equal((char *)r->kvs[0].value, "one");
    assert_int_equal(r->kvs[0].version, 2);
    ar_etcd_result_free(r);

    /* keys_only: no values */
    op.limit = 0;
    op.keys_only = true;
    assert_int_equal(ar_etcd_sync_range(S, &op, &r, &err), 0);
    assert_int_equal(r->n_kvs, 4);
    for (size_t i = 0; i < r->n_kvs; i++)
        assert_int_equal(r->kvs[i].value_len, 0);
    ar_etcd_result_free(r);

    /* count_only */
    op.keys_only = false;
    op.count_only = true;
    assert_int_equal(ar_etcd_sync_range(S, &op, &r, &err), 0);
    assert_int_equal(r->n_kvs, 0);
    assert_int_equal(r->count, 4);
    ar_etcd_result_free(r);

    /* historical read at rev1: kv/a was "1"; serializable read works too */
    memset(&op, 0, sizeof(op));
    op.key = (const uint8_t *)"kv/a";
    op.key_len = 4;
    op.revision = rev1;
    op.serializable = true;
    assert_int_equal(ar_etcd_sync_range(S, &op, &r, &err), 0);
    assert_int_equal(r->n_kvs, 1);
    assert_string_equal((char *)r->kvs[0].value, "1");
    ar_etcd_result_free(r);

    /* put with prev_kv returns the previous value */
    memset(&op, 0, sizeof(op));
    op.key = (const uint8_t *)"kv/a";
    op.key_len = 4;
    op.value = (const uint8_t *)"uno";
    op.value_len = 3;
    op.prev_kv = true;
    assert_int_equal(ar_etcd_sync_put(S, &op, &r, &err), 0);
    assert_int_equal(r->n_kvs, 1);
    assert_string_equal((char *)r->kvs[0].value, "one");
    assert_true(r->revision > rev1);
    ar_etcd_result_free(r);

    /* empty value: stored empty, value omitted by etcd */
    puts_("kv/empty", "");
    memset(&op, 0, sizeof(op));
    op.key = (const uint8_t *)"kv/empty";
    op.key_len = 8;
    assert_int_equal(ar_etcd_sync_range(S, &op, &r, &err), 0);
    assert_int_equal(r->n_kvs, 1);
    assert_int_equal(r->kvs[0].value_len, 0);
    assert_non_null(r->kvs[0].value);
    ar_etcd_result_free(r);
}

static void test_big_value(void **state)
{
    size_t n = 1 << 20;
    uint8_t *v = malloc(n);
    struct ar_etcd_op op = {.key = K("kv/big")};
    struct ar_etcd_result *r;

    uint64_t ev0, pk0, ev1, pk1;

    for (size_t i = 0; i < n; i++)
        v[i] = (uint8_t)(i * 7 + (i >> 8));
    ar_etcd_io_counts(ar_etcd_sync_client(S), &ev0, &pk0);
    put("kv/big", v, n);
    ar_etcd_io_counts(ar_etcd_sync_client(S), &ev1, &pk1);
    /* 1 MiB through etcd's 64 KiB HTTP/2 windows: the socket waits for the window 16 times,
     * parked (etcd.c, on_poll). Unparked, it woke 337-1,810 times for this put; parked 22-31. */
    assert_true(pk1 > pk0);
    assert_true(ev1 - ev0 < 150);
    assert_int_equal(ar_etcd_sync_range(S, &op, &r, NULL), 0);
    assert_int_equal(r->kvs[0].value_len, n);
    assert_memory_equal(r->kvs[0].value, v, n);
    ar_etcd_result_free(r);
    free(v);
}

static void test_delete(void **state)
{
    uint8_t end[8];
    struct ar_etcd_op op = {.key = K("del/")};
    struct ar_etcd_result *r;

    puts_("del/1", "a");
    puts_("del/2", "b");
    puts_("del/3", "c");
    op.range_end = end;
    op.range_end_len = ar_etcd_prefix_end(op.key, op.key_len, end);
    op.prev_kv = true;
    assert_int_equal(ar_etcd_sync_delete(S, &op, &r, NULL), 0);
    assert_int_equal(r->deleted, 3);
    assert_int_equal(r->n_kvs, 3);
    assert_string_equal((char *)r->kvs[2].key, "del/3");
    assert_string_equal((char *)r->kvs[2].value, "c");
    ar_etcd_result_free(r);
    /* again: nothing deleted (field omitted) */
    assert_int_equal(ar_etcd_sync_delete(S, &op, &r, NULL), 0);
    assert_int_equal(r->deleted, 0);
    assert_int_equal(r->n_kvs, 0);
    ar_etcd_result_free(r);
}

static void test_txn(void **state)
{
    struct ar_etcd_compare cmp = {
        .key = K("txn/lock"), .target = AR_ETCD_CMP_CREATE, .result = AR_ETCD_EQUAL, .number = 0};
    struct ar_etcd_op put1 = {.type = AR_ETCD_PUT, .key = K("txn/lock"), .value = K("owner1")};
    struct ar_etcd_op get = {.type = AR_ETCD_RANGE, .key = K("txn/lock")};
    struct ar_etcd_txn t = {.compare = &cmp,
                            .n_compare = 1,
                            .success = &put1,
                            .n_success = 1,
                            .failure = &get,
                            .n_failure = 1};
    struct ar_etcd_result *r;
    int64_t created, modrev;

    /* absent -> success branch */
    assert_int_equal(ar_etcd_sync_txn(S, &t, &r, NULL), 0);
    assert_true(r->succeeded);
    assert_int_equal(r->n_ops, 1);
    assert_int_equal(r->ops[0].type, AR_ETCD_PUT);
    created = r->revision;
    assert_int_equal(r->ops[0].revision, created);
    ar_etcd_result_free(r);

    /* present -> failure branch, its range result */
    assert_int_equal(ar_etcd_sync_txn(S, &t, &r, NULL), 0);
    assert_false(r->succeeded);
    assert_int_equal(r->n_ops, 1);
    assert_int_equal(r->ops[0].type, AR_ETCD_RANGE);
    assert_int_equal(r->ops[0].n_kvs, 1);
    assert_string_equal((char *)r->ops[0].kvs[0].value, "owner1");
    assert_int_equal(r->ops[0].kvs[0].create_revision, created);
    assert_int_equal(r->revision, created); /* failed txn does not bump the revision */
    ar_etcd_result_free(r);

    /* CAS on mod_revision: right revision wins, stale one loses */
    struct ar_etcd_compare mod = {.key = K("txn/lock"),
                                  .target = AR_ETCD_CMP_MOD,
                                  .result = AR_ETCD_EQUAL,
                                  .number = created};
    struct ar_etcd_op put2 = {
        .type = AR_ETCD_PUT, .key = K("txn/lock"), .value = K("owner2"), .prev_kv = true};
    struct ar_etcd_txn t2 = {.compare = &mod, .n_compare = 1, .success = &put2, .n_success = 1};
    assert_int_equal(ar_etcd_sync_txn(S, &t2, &r, NULL), 0);
    assert_true(r->succeeded);
    assert_int_equal(r->ops[0].n_kvs, 1);
    assert_string_equal((char *)r->ops[0].kvs[0].value, "owner1");
    modrev = r->revision;
    ar_etcd_result_free(r);
    assert_int_equal(ar_etcd_sync_txn(S, &t2, &r, NULL), 0);
    assert_false(r->succeeded);
    assert_int_equal(r->n_ops, 0);
    ar_etcd_result_free(r);

    /* VALUE == owner2 AND VERSION == 2 -> delete + range in one branch */
    struct ar_etcd_compare two[2] = {
        {.key = K("txn/lock"), .target = AR_ETCD_CMP_VALUE, .value = K("owner2")},
        {.key = K("txn/lock"), .target = AR_ETCD_CMP_VERSION, .number = 2}};
    struct ar_etcd_op ops[2] = {{.type = AR_ETCD_DELETE, .key = K("txn/lock"), .prev_kv = true},
                                {.type = AR_ETCD_RANGE, .key = K("txn/lock")}};
    struct ar_etcd_txn t3 = {.compare = two, .n_compare = 2, .success = ops, .n_success = 2};
    assert_int_equal(ar_etcd_sync_txn(S, &t3, &r, NULL), 0);
    assert_true(r->succeeded);
    assert_int_equal(r->n_ops, 2);
    assert_int_equal(r->ops[0].type, AR_ETCD_DELETE);
    assert_int_equal(r->ops[0].deleted, 1);
    assert_int_equal(r->ops[0].kvs[0].mod_revision, modrev);
    assert_int_equal(r->ops[1].type, AR_ETCD_RANGE);
    assert_int_equal(r->ops[1].n_kvs, 0);
    ar_etcd_result_free(r);

    /* wrong value / GREATER / LESS / NOT_EQUAL */
    puts_("txn/n", "x");
    struct ar_etcd_compare c4 = {
        .key = K("txn/n"), .target = AR_ETCD_CMP_VALUE, .result = AR_ETCD_EQUAL, .value = K("y")};
    struct ar_etcd_txn t4 = {.compare = &c4, .n_compare = 1};
    assert_int_equal(ar_etcd_sync_txn(S, &t4, &r, NULL), 0);
    assert_false(r->succeeded);
    ar_etcd_result_free(r);
    c4.result = AR_ETCD_NOT_EQUAL;
    assert_int_equal(ar_etcd_sync_txn(S, &t4, &r, NULL), 0);
    assert_true(r->succeeded);
    ar_etcd_result_free(r);
    c4.target = AR_ETCD_CMP_VERSION;
    c4.result = AR_ETCD_GREATER;
    c4.number = 0;
    assert_int_equal(ar_etcd_sync_txn(S, &t4, &r, NULL), 0);
    assert_true(r->succeeded);
    ar_etcd_result_free(r);
    c4.target = AR_ETCD_CMP_CREATE;
    c4.result = AR_ETCD_LESS;
    c4.number = 1;
    assert_int_equal(ar_etcd_sync_txn(S, &t4, &r, NULL), 0);
    assert_false(r->succeeded);
    ar_etcd_result_free(r);

    /* unconditional batch */
    struct ar_etcd_txn t5 = {.success = &put1, .n_success = 1};
    assert_int_equal(ar_etcd_sync_txn(S, &t5, &r, NULL), 0);
    assert_true(r->succeeded);
    ar_etcd_result_free(r);
}

/* The same errors over gRPC (S) and through the JSON gateway (kv_json): same codes and
 * messages; the gateway answers HTTP 400, gRPC HTTP 200 with the status in the trailers. */
static void errors_on(struct ar_etcd_sync *s, long http)
{
    struct ar_etcd_op op = {.key = K("kv/a"), .revision = INT64_C(1) << 40};
    struct ar_etcd_error err;
    struct ar_etcd_result *r = (void *)1;

    /* etcd's message, code and the endpoint */
    assert_int_equal(ar_etcd_sync_range(s, &op, &r, &err), -ERANGE);
    assert_null(r);
    assert_int_equal(err.code, -ERANGE);
    assert_int_equal(err.grpc_code, 11);
    assert_int_equal(err.http_status, http);
    assert_string_equal(err.msg, "etcdserver: mvcc: required revision is a future revision");
    assert_string_equal(err.endpoint, H.endpoint[0]);

    /* lease not found */
    struct ar_etcd_op p = {.key = K("kv/l"), .value = K("v"), .lease = 12345};
    assert_int_equal(ar_etcd_sync_put(s, &p, NULL, &err), -ENOENT);
    assert_string_equal(err.msg, "etcdserver: requested lease not found");

    /* duplicate key in a txn */
    struct ar_etcd_op two[2] = {{.type = AR_ETCD_PUT, .key = K("d"), .value = K("1")},
                                {.type = AR_ETCD_PUT, .key = K("d"), .value = K("2")}};
    struct ar_etcd_txn t = {.success = two, .n_success = 2};
    assert_int_equal(ar_etcd_sync_txn(s, &t, NULL, &err), -EINVAL);
    assert_string_equal(err.msg, "etcdserver: duplicate key given in txn request");

    /* empty key refused before sending */
    struct ar_etcd_op e = {0};
    assert_int_equal(ar_etcd_sync_put(s, &e, NULL, &err), -EINVAL);
}

static void test_errors(void **state)
{
    struct ar_etcd_settings st;
    struct ar_etcd_sync *js = NULL;

    errors_on(S, 200);
    etcd_harness_settings(&H, &st);
    st.kv_json = true;
    assert_int_equal(ar_etcd_sync_new(&st, &js), 0);
    errors_on(js, 400);
    ar_etcd_sync_free(js);
}

static void test_connection_refused(void **state)
{
    struct ar_etcd_settings st = {
        .endpoints = {"http://127.0.0.1:1"}, .n_endpoints = 1, .request_timeout_ms = 600};
    struct ar_etcd_sync *s = NULL;
    struct ar_etcd_op op = {.key = K("x")};
    struct ar_etcd_error err;
    uint64_t t0 = ar_etcd_now_ms(), dt;

    assert_int_equal(ar_etcd_sync_new(&st, &s), 0);
    assert_non_null(s);
    assert_int_equal(ar_etcd_sync_range(s, &op, NULL, &err), -ECONNREFUSED);
    dt = ar_etcd_now_ms() - t0;
    assert_true(dt >= 500 && dt < 1500); /* retried with backoff until the timeout */
    assert_string_equal(err.endpoint, "http://127.0.0.1:1");
    assert_non_null(strstr(err.msg, "onnect"));
    ar_etcd_sync_free(s);
}

struct late {
    bool returned, called, called_before_return;
    int status;
    char msg[256];
};

static void late_cb(void *arg, int status, const struct ar_etcd_result *res,
                    const struct ar_etcd_error *err)
{
    struct late *l = arg;

    (void)res;
    l->called = true;
    l->called_before_return = !l->returned;
    l->status = status;
    snprintf(l->msg, sizeof(l->msg), "%s", err ? err->msg : "");
}

/* A request that fails before anything is sent (a password that is not UTF-8: authentication
 * cannot even be asked for) still answers from the loop, after ar_etcd_range returned 0, as
 * etcd.h says (it answered inside the call, before the caller had counted it in flight). */
static void test_fail_at_once_answers_later(void **state)
{
    struct ar_etcd_settings st = {.endpoints = {"http://127.0.0.1:1"},
                                  .n_endpoints = 1,
                                  .request_timeout_ms = 600,
                                  .username = "u",
                                  .password = "p\xff"};
    struct ar_etcd_sync *s = NULL;
    struct ar_etcd_op op = {.key = K("x")};
    struct late l = {0};

    assert_int_equal(ar_etcd_sync_new(&st, &s), 0);
    assert_int_equal(ar_etcd_range(ar_etcd_sync_client(s), &op, late_cb, &l), 0);
    l.returned = true;
    for (int i = 0; i < 100 && !l.called; i++)
        ar_etcd_sync_run_for(s, 10);
    assert_true(l.called);
    assert_false(l.called_before_return);
    assert_int_equal(l.status, -EINVAL);
    assert_non_null(strstr(l.msg, "not UTF-8"));
    ar_etcd_sync_free(s);
}

/* --- leases ------------------------------------------------------------------------------- */

static void test_lease_grant_ttl_revoke(void **state)
{
    struct ar_etcd *c = ar_etcd_sync_client(S);
    struct ar_etcd_result *r;
    struct ar_etcd_error err;
    int64_t id;

    assert_int_equal(ar_etcd_sync_lease_grant(S, 7, &r, &err), 0);
    id = r->lease_id;
    assert_true(id != 0);
    assert_int_equal(r->ttl, 7);
    ar_etcd_result_free(r);

    struct ar_etcd_op p = {.key = K("lease/k"), .value = K("v"), .lease = id};
    assert_int_equal(ar_etcd_sync_put(S, &p, NULL, &err), 0);
    struct ar_etcd_op g = {.key = K("lease/k")};
    assert_int_equal(ar_etcd_sync_range(S, &g, &r, &err), 0);
    assert_int_equal(r->kvs[0].lease, id);
    ar_etcd_result_free(r);

    (void)c;
    assert_int_equal(ar_etcd_sync_lease_revoke(S, id, &err), 0);
    assert_int_equal(ar_etcd_sync_range(S, &g, &r, &err), 0);
    assert_int_equal(r->n_kvs, 0); /* attached key went with the lease */
    ar_etcd_result_free(r);
    assert_int_equal(ar_etcd_sync_lease_revoke(S, id, &err), -ENOENT);
    assert_string_equal(err.msg, "etcdserver: requested lease not found");
}

struct ttlq {
    bool done;
    int status;
    int64_t ttl, granted;
};

static void on_ttl(void *arg, int status, const struct ar_etcd_result *res,
                   const struct ar_etcd_error *err)
{
    struct ttlq *q = arg;

    q->done = true;
    q->status = status;
    if (res) {
        q->ttl = res->ttl;
        q->granted = res->granted_ttl;
    }
}

struct ka {
    int ok, lost, errors;
    uint64_t last_deadline;
    int64_t ttl;
    bool stop;
};

static void on_ka(void *arg, int status, int64_t ttl, uint64_t deadline,
                  const struct ar_etcd_error *err)
{
    struct ka *k = arg;
    uint64_t now = ar_etcd_now_ms();

    if (status == 0) {
        k->ok++;
        k->ttl = ttl;
        assert_true(deadline >= k->last_deadline);
        assert_true(deadline <= now + (uint64_t)ttl * 1000); /* counted from the request */
        assert_true(deadline + 1000 > now + (uint64_t)ttl * 1000);
        k->last_deadline = deadline;
    } else if (status == -ENOENT) {
        k->lost++;
        k->stop = true;
        assert_non_null(strstr(err->msg, "not found or expired"));
    } else {
        k->errors++;
        fprintf(stderr, "keepalive error %d %s: %s\n", status, err->endpoint, err->msg);
    }
}

static void test_keepalive(void **state)
{
    uv_loop_t loop;
    struct ar_etcd_settings st;
    struct ar_etcd *c;
    struct ar_etcd_keeper *k;
    struct ar_etcd_result *r;
    struct ka ka = {0};
    struct ttlq q = {0};
    int64_t id;

    assert_int_equal(ar_etcd_sync_lease_grant(S, 2, &r, NULL), 0);
    id = r->lease_id;
    ar_etcd_result_free(r);
    uv_loop_init(&loop);
    etcd_harness_settings(&H, &st);
    assert_int_equal(ar_etcd_new(&loop, &st, &c), 0);
    assert_non_null(c);
    assert_int_equal(ar_etcd_keepalive_start(c, id, 2, on_ka, &ka, &k), 0);
    /* 4.5 s with a 2 s TTL: alive only if renewed about every 0.67 s on one stream */
    etcd_harness_run_for(&loop, 4500);
    assert_int_equal(ka.errors, 0);
    assert_int_equal(ka.lost, 0);
    assert_true(ka.ok >= 6 && ka.ok <= 9);
    assert_int_equal(ar_etcd_lease_ttl(c, id, on_ttl, &q), 0);
    assert_true(etcd_harness_run_until(&loop, &q.done, 3000));
    assert_int_equal(q.status, 0);
    assert_true(q.ttl >= 1);
    assert_int_equal(q.granted, 2);

    /* revoked behind its back: the keeper reports the lease gone */
    assert_int_equal(ar_etcd_sync_lease_revoke(S, id, NULL), 0);
    assert_true(etcd_harness_run_until(&loop, &ka.stop, 3000));
    assert_int_equal(ka.lost, 1);
    ar_etcd_keepalive_stop(k);
    ar_etcd_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* --- iteration ------------------------------------------------------------------------------ */

struct it {
    size_t pages, keys, max_page;
    char last[32];
    bool bad_order, done;
    int status;
    int64_t revision;
};

static int on_page(void *arg, int status, const struct ar_etcd_result *res,
                   const struct ar_etcd_error *err)
{
    struct it *it = arg;

    if (status < 0) {
        it->status = status;
        it->done = true;
        return 1;
    }
    if (it->pages == 0) {
        /* a write during the iteration is not seen: every page is at the first revision */
        puts_("it/zzzz-late", "x");
        it->revision = res->revision;
    }
    it->pages++;
    if (res->n_kvs > it->max_page)
        it->max_page = res->n_kvs;
    for (size_t i = 0; i < res->n_kvs; i++) {
        if (strcmp((char *)res->kvs[i].key, it->last) <= 0)
            it->bad_order = true;
        snprintf(it->last, sizeof(it->last), "%s", (char *)res->kvs[i].key);
        it->keys++;
    }
    if (!res->more)
        it->done = true;
    return 0;
}

static void test_iterate_10k(void **state)
{
    enum { N = 10000, BATCH = 125, PAGE = 100 };
    static char keys[BATCH][16];
    struct ar_etcd_op ops[BATCH];
    uv_loop_t loop;
    struct ar_etcd_settings st;
    struct ar_etcd *c;
    struct it it = {0};
    uint8_t end[8];

    for (int b = 0; b < N / BATCH; b++) {
        struct ar_etcd_txn t = {.success = ops, .n_success = BATCH};

        for (int i = 0; i < BATCH; i++) {
            snprintf(keys[i], sizeof(keys[i]), "it/%05d", b * BATCH + i);
            ops[i] = (struct ar_etcd_op){
                .type = AR_ETCD_PUT, .key = K(keys[i]), .value = K("value-of-some-length")};
        }
        assert_int_equal(ar_etcd_sync_txn(S, &t, NULL, NULL), 0);
    }
    uv_loop_init(&loop);
    etcd_harness_settings(&H, &st);
    assert_int_equal(ar_etcd_new(&loop, &st, &c), 0);
    struct ar_etcd_op op = {.key = K("it/"), .limit = PAGE};
    op.range_end = end;
    op.range_end_len = ar_etcd_prefix_end(op.key, op.key_len, end);
    ar_etcd_kvs_peak_reset(c);
    assert_int_equal(ar_etcd_iterate(c, &op, on_page, &it), 0);
    assert_true(etcd_harness_run_until(&loop, &it.done, 60000));
    assert_int_equal(it.status, 0);
    assert_int_equal(it.keys, N);
    assert_int_equal(it.pages, N / PAGE);
    assert_int_equal(it.max_page, PAGE);
    assert_false(it.bad_order);
    assert_string_equal(it.last, "it/09999");
    /* constant memory: never more than one page of kvs alive in the client */
    assert_int_equal(ar_etcd_kvs_peak(c), PAGE);
    ar_etcd_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* --- watch -------------------------------------------------------------------------------- */

#define MAXEV 64

struct wst {
    int created, errors, compacted;
    bool created_b;
    int64_t compact_rev;
    size_t n;
    int64_t rev[MAXEV];
    int type[MAXEV];
    char key[MAXEV][24];
    char val[MAXEV][16];
    char prev[MAXEV][16];
    struct ar_etcd_watch *w;
    int mode; /* 1: write while disconnected; 2: write + compact while disconnected */
    size_t want;
    bool done;
};

static void on_watch(void *arg, const struct ar_etcd_watch_update *u)
{
    struct wst *s = arg;

    switch (u->kind) {
    case AR_ETCD_WATCH_CREATED:
        s->created++;
        s->created_b = true;
        break;
    case AR_ETCD_WATCH_EVENTS:
        for (size_t i = 0; i < u->n_events && s->n < MAXEV; i++, s->n++) {
            const struct ar_etcd_event *e = &u->events[i];

            s->rev[s->n] = e->kv.mod_revision;
            s->type[s->n] = e->type;
            snprintf(s->key[s->n], sizeof(s->key[0]), "%s", (char *)e->kv.key);
            snprintf(s->val[s->n], sizeof(s->val[0]), "%s", (char *)e->kv.value);
            snprintf(s->prev[s->n], sizeof(s->prev[0]), "%s",
                     e->prev_kv.key ? (char *)e->prev_kv.value : "-");
        }
        if (s->n >= s->want)
            s->done = true;
        break;
    case AR_ETCD_WATCH_COMPACTED:
        s->compacted++;
        s->compact_rev = u->compact_revision;
        s->done = true;
        break;
    case AR_ETCD_WATCH_ERROR:
        s->errors++;
        assert_non_null(u->err);
        if (s->mode) { /* blocking writes on the other client while this one is down */
            puts_("w/d1", "x");
            puts_("w/d2", "y");
            if (s->mode == 2) {
                int64_t rev = current_revision();
                struct ttlq q = {0};

                /* compact on the sync client's private loop */
                assert_int_equal(ar_etcd_compact(ar_etcd_sync_client(S), rev, on_ttl, &q), 0);
                for (int i = 0; i < 250 && !q.done; i++)
                    ar_etcd_sync_run_for(S, 20);
                assert_int_equal(q.status, 0);
            }
            s->mode = 0;
        }
        break;
    }
}

static void test_watch_reconnect(void **state)
{
    uv_loop_t loop;
    struct ar_etcd_settings st;
    struct ar_etcd *c;
    struct wst s = {0};
    uint8_t end[8];
    struct ar_etcd_watch_opts o = {.key = K("w/"), .prev_kv = true};

    uv_loop_init(&loop);
    etcd_harness_settings(&H, &st);
    assert_int_equal(ar_etcd_new(&loop, &st, &c), 0);
    o.range_end = end;
    o.range_end_len = ar_etcd_prefix_end(o.key, o.key_len, end);
    assert_int_equal(ar_etcd_watch_start(c, &o, on_watch, &s, &s.w), 0);
    assert_true(etcd_harness_run_until(&loop, &s.created_b, 5000));
    assert_int_equal(s.created, 1);

    puts_("w/a", "1");
    puts_("w/a", "2");
    puts_("w/b", "3");
    {
        struct ar_etcd_op d = {.key = K("w/a")};
        assert_int_equal(ar_etcd_sync_delete(S, &d, NULL, NULL), 0);
    }
    s.want = 4;
    assert_true(etcd_harness_run_until(&loop, &s.done, 5000));
    assert_string_equal(s.key[0], "w/a");
    assert_string_equal(s.val[0], "1");
    assert_string_equal(s.prev[0], "-");
    assert_string_equal(s.val[1], "2");
    assert_string_equal(s.prev[1], "1");
    assert_string_equal(s.key[2], "w/b");
    assert_int_equal(s.type[3], AR_ETCD_EV_DELETE);
    assert_string_equal(s.key[3], "w/a");
    assert_string_equal(s.prev[3], "2");

    /* drop the connection; two writes happen while it is down; none lost, none repeated */
    s.mode = 1;
    s.done = false;
    s.want = 6;
    ar_etcd_watch_drop_connection(s.w);
    assert_true(etcd_harness_run_until(&loop, &s.done, 5000));
    assert_int_equal(s.errors, 1);
    assert_int_equal(s.created, 2);
    etcd_harness_run_for(&loop, 100);
    assert_int_equal(s.n, 6);
    assert_string_equal(s.key[4], "w/d1");
    assert_string_equal(s.key[5], "w/d2");
    for (size_t i = 1; i < s.n; i++)
        assert_int_equal(s.rev[i], s.rev[i - 1] + 1);

    /* compaction while disconnected: reported, and the watch is finished */
    s.mode = 2;
    s.done = false;
    s.want = 1000;
    ar_etcd_watch_drop_connection(s.w);
    assert_true(etcd_harness_run_until(&loop, &s.done, 5000));
    assert_int_equal(s.compacted, 1);
    assert_true(s.compact_rev > s.rev[5]);
    assert_int_equal(s.n, 6);
    ar_etcd_watch_stop(s.w);
    ar_etcd_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_watch_across_etcd_restart(void **state)
{
    uv_loop_t loop;
    struct ar_etcd_settings st;
    struct ar_etcd *c;
    struct wst s = {0};
    struct ar_etcd_watch_opts o = {.key = K("wr/k")};

    uv_loop_init(&loop);
    etcd_harness_settings(&H, &st);
    assert_int_equal(ar_etcd_new(&loop, &st, &c), 0);
    assert_int_equal(ar_etcd_watch_start(c, &o, on_watch, &s, &s.w), 0);
    etcd_harness_run_for(&loop, 300);
    assert_int_equal(s.created, 1);
    puts_("wr/k", "before");
    s.want = 1;
    assert_true(etcd_harness_run_until(&loop, &s.done, 5000));

    assert_int_equal(etcd_harness_stop_member(&H, 0, SIGKILL), 0);
    etcd_harness_run_for(&loop, 300);
    assert_true(s.errors >= 1);
    assert_int_equal(etcd_harness_start_member(&H, 0), 0);
    assert_int_equal(etcd_harness_wait_healthy(&H, 0, 15000), 0);
    puts_("wr/k", "after");
    s.done = false;
    s.want = 2;
    assert_true(etcd_harness_run_until(&loop, &s.done, 8000));
    assert_string_equal(s.val[1], "after");
    assert_int_equal(s.created, 2);
    ar_etcd_watch_stop(s.w);
    ar_etcd_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* --- shutdown ----------------------------------------------------------------------------- */

struct cnt {
    int canceled, other;
};

static void on_any(void *arg, int status, const struct ar_etcd_result *res,
                   const struct ar_etcd_error *err)
{
    struct cnt *n = arg;

    if (status == -ECANCELED)
        n->canceled++;
    else
        n->other++;
}

static void on_watch_nop(void *arg, const struct ar_etcd_watch_update *u)
{
}

static void test_close_cancels(void **state)
{
    uv_loop_t loop;
    struct ar_etcd_settings st;
    struct ar_etcd *c;
    struct ar_etcd_watch *w;
    struct ar_etcd_keeper *k;
    struct cnt n = {0};
    struct ar_etcd_op op = {.key = K("kv/a")};
    struct ar_etcd_watch_opts o = {.key = K("x")};

    uv_loop_init(&loop);
    etcd_harness_settings(&H, &st);
    assert_int_equal(ar_etcd_new(&loop, &st, &c), 0);
    for (int i = 0; i < 10; i++)
        assert_int_equal(ar_etcd_range(c, &op, on_any, &n), 0);
    assert_int_equal(ar_etcd_watch_start(c, &o, on_watch_nop, NULL, &w), 0);
    assert_int_equal(ar_etcd_keepalive_start(c, 1, 10, on_ka, &(struct ka){0}, &k), 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    ar_etcd_watch_stop(w);
    ar_etcd_close(c); /* the keeper is destroyed with the client */
    assert_int_equal(n.canceled + n.other, 10);
    assert_true(n.canceled > 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefix_end),
        cmocka_unit_test(test_guess_end),
        cmocka_unit_test(test_bad_settings),
        cmocka_unit_test(test_put_range_shapes),
        cmocka_unit_test(test_big_value),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_txn),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_fail_at_once_answers_later),
        cmocka_unit_test(test_lease_grant_ttl_revoke),
        cmocka_unit_test(test_keepalive),
        cmocka_unit_test(test_iterate_10k),
        cmocka_unit_test(test_watch_reconnect),
        cmocka_unit_test(test_close_cancels),
        cmocka_unit_test(test_watch_across_etcd_restart),
    };

    return cmocka_run_group_tests_name("etcd_kv", tests, group_setup, group_teardown);
}
