/* tests/unit/test_etcd_json.c: the etcd answer parsers on exact gateway shapes, and the limits
 * found by fuzz/fuzz_etcd_json (revisions that would overflow "last + 1", TTLs beyond etcd's
 * maximum that would wrap a deadline). No network: answers are fed through the same entry
 * points a request or stream uses (coord/etcd/etcd_int.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coord/etcd/etcd_int.h"

struct fx {
    uv_loop_t loop;
    struct ar_etcd *c;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    struct ar_etcd_settings s = {.endpoints = {"http://127.0.0.1:9"}, .n_endpoints = 1};

    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(ar_etcd_new(&f->loop, &s, &f->c), 0);
    assert_non_null(f->c);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;

    ar_etcd_close(f->c);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

static int decode(struct fx *f, const char *body, struct ar_etcd_result **res,
                  struct ar_etcd_error *e)
{
    struct ar_xfer x = {.c = f->c};

    x.resp = (char *)body;
    x.resp_len = strlen(body);
    return ar_etcd_decode_result(&x, AR_ETCD_RANGE, res, e);
}

static void test_unary_shapes(void **state)
{
    struct fx *f = *state;
    struct ar_etcd_result *r = NULL;
    struct ar_etcd_error e;

    assert_int_equal(decode(f,
                            "{\"header\":{\"revision\":\"3\"},\"kvs\":[{\"key\":\"Zm9v\","
                            "\"create_revision\":\"2\",\"mod_revision\":\"3\",\"version\":\"2\","
                            "\"value\":\"YmF6\"}],\"count\":\"1\"}",
                            &r, &e),
                     0);
    assert_int_equal(r->revision, 3);
    assert_int_equal(r->n_kvs, 1);
    assert_string_equal((const char *)r->kvs[0].key, "foo");
    assert_string_equal((const char *)r->kvs[0].value, "baz");
    assert_int_equal(r->kvs[0].mod_revision, 3);
    ar_etcd_result_free(r);

    assert_int_equal(decode(f,
                            "{\"header\":{\"revision\":\"16\"},\"ID\":\"2324035668375936302\","
                            "\"TTL\":\"-1\",\"grantedTTL\":\"30\"}",
                            &r, &e),
                     0);
    assert_int_equal(r->lease_id, 2324035668375936302LL);
    assert_int_equal(r->ttl, -1);
    assert_int_equal(r->granted_ttl, 30);
    ar_etcd_result_free(r);

    assert_int_equal(decode(f, "{\"header\":{\"revision\":\"3\"},\"kvs\":[{\"key\":\"Zm9", &r, &e),
                     -EPROTO);
    assert_null(r);
    assert_non_null(strstr(e.msg, "malformed response: "));
}

static void test_unary_limits(void **state)
{
    struct fx *f = *state;
    struct ar_etcd_result *r = NULL;
    struct ar_etcd_error e;
    static const char *const bad[] = {
        "{\"header\":{\"revision\":\"9223372036854775807\"}}", /* revision + 1 overflows */
        "{\"header\":{\"revision\":\"-5\"}}",
        "{\"header\":{\"revision\":\"2\"},\"ID\":\"1\",\"TTL\":\"9000000001\"}", /* > MaxLeaseTTL */
        "{\"header\":{\"revision\":\"2\"},\"ID\":\"1\",\"TTL\":\"-2\"}",
        "{\"header\":{\"revision\":\"2\"},\"ID\":\"1\",\"grantedTTL\":\"9223372036854775807\"}",
        "{\"header\":{\"revision\":\"2\"},\"succeeded\":true,\"responses\":[{\"response_put\":"
        "{\"header\":{\"revision\":\"9223372036854775807\"}}}]}",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(decode(f, bad[i], &r, &e), -EPROTO);
        assert_null(r);
        assert_string_equal(e.msg, "malformed response (Protocol error)");
    }
    assert_int_equal(
        decode(f, "{\"header\":{\"revision\":\"2\"},\"ID\":\"1\",\"TTL\":\"9000000000\"}", &r, &e),
        0);
    assert_int_equal(r->ttl, 9000000000LL);
    ar_etcd_result_free(r);
}

struct seen {
    int created, events, errors, ok;
    int64_t last_rev;
    int status;
    char msg[256];
};

static void on_watch(void *arg, const struct ar_etcd_watch_update *u)
{
    struct seen *s = arg;

    if (u->kind == AR_ETCD_WATCH_CREATED)
        s->created++;
    if (u->kind == AR_ETCD_WATCH_EVENTS) {
        s->events += (int)u->n_events;
        s->last_rev = u->events[u->n_events - 1].kv.mod_revision;
    }
    if (u->kind == AR_ETCD_WATCH_ERROR && !s->errors++) {
        s->status = u->status;
        snprintf(s->msg, sizeof(s->msg), "%s", u->err->msg);
    }
}

static void feed_watch(struct fx *f, const char *text, size_t step, struct seen *s)
{
    const char *chunks[64];
    size_t lens[64], n = 0, len = strlen(text);

    for (size_t off = 0; off < len && n < 64; off += step, n++) {
        chunks[n] = text + off;
        lens[n] = len - off < step ? len - off : step;
    }
    memset(s, 0, sizeof(*s));
    assert_int_equal(ar_etcd_watch_feed(f->c, chunks, lens, n, CURLE_OK, 200, on_watch, s), 0);
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

static void test_watch_stream(void **state)
{
    struct fx *f = *state;
    struct seen s;
    const char *ok =
        "{\"result\":{\"header\":{\"revision\":\"20\"},\"created\":true}}\n"
        "{\"result\":{\"header\":{\"revision\":\"21\"},\"events\":[{\"kv\":{\"key\":"
        "\"dy9h\",\"create_revision\":\"21\",\"mod_revision\":\"21\",\"version\":\"1\","
        "\"value\":\"MQ==\"}}]}}\n"
        "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"etcdserver: no "
        "leader\",\"http_status\":\"Service Unavailable\"}}\n";

    /* the same bytes in one piece and split every 7 bytes */
    for (size_t step = 1000; step >= 7; step = step == 1000 ? 7 : 0) {
        feed_watch(f, ok, step, &s);
        assert_int_equal(s.created, 1);
        assert_int_equal(s.events, 1);
        assert_int_equal(s.last_rev, 21);
        assert_int_equal(s.errors, 1);
        assert_int_equal(s.status, -EHOSTUNREACH);
        assert_string_equal(s.msg, "etcdserver: no leader");
    }
    /* found by the fuzzer: INT64_MAX as an event's or header's revision */
    feed_watch(f,
               "{\"result\":{\"header\":{\"revision\":\"1\"},\"events\":[{\"kv\":{\"key\":\"YQ==\","
               "\"mod_revision\":\"9223372036854775807\"}}]}}\n",
               1000, &s);
    assert_int_equal(s.events, 0);
    assert_int_equal(s.status, -EPROTO);
    assert_string_equal(s.msg, "watch: bad event (Protocol error)");
    feed_watch(
        f, "{\"result\":{\"header\":{\"revision\":\"9223372036854775807\"},\"created\":true}}\n",
        1000, &s);
    assert_int_equal(s.created, 0);
    assert_string_equal(s.msg, "watch: bad revision 9223372036854775807");
}

static void on_keepalive(void *arg, int status, int64_t ttl, uint64_t deadline,
                         const struct ar_etcd_error *e)
{
    struct seen *s = arg;

    if (status == 0) {
        s->ok++;
        s->last_rev = ttl;
    } else if (!s->errors++) {
        s->status = status;
        snprintf(s->msg, sizeof(s->msg), "%s", e->msg);
    }
}

static void feed_keeper(struct fx *f, const char *text, struct seen *s)
{
    const char *chunks[1] = {text};
    size_t lens[1] = {strlen(text)};

    memset(s, 0, sizeof(*s));
    assert_int_equal(ar_etcd_keeper_feed(f->c, chunks, lens, 1, CURLE_OK, 200, on_keepalive, s), 0);
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

static void test_keepalive_stream(void **state)
{
    struct fx *f = *state;
    struct seen s;

    feed_keeper(f, "{\"result\":{\"header\":{\"revision\":\"17\"},\"ID\":\"1\",\"TTL\":\"30\"}}\n",
                &s);
    assert_int_equal(s.ok, 1);
    assert_int_equal(s.last_rev, 30);
    assert_int_equal(s.errors, 0);
    feed_keeper(f, "{\"result\":{\"header\":{\"revision\":\"17\"},\"ID\":\"999\"}}\n", &s);
    assert_int_equal(s.ok, 0);
    assert_int_equal(s.status, -ENOENT);
    assert_string_equal(s.msg, "lease 1 not found or expired");
    /* a TTL whose deadline (TTL * 1000 ms) would wrap */
    feed_keeper(f,
                "{\"result\":{\"header\":{\"revision\":\"1\"},\"ID\":\"1\","
                "\"TTL\":\"9223372036854775807\"}}\n",
                &s);
    assert_int_equal(s.ok, 0);
    assert_int_equal(s.status, -EPROTO);
    assert_string_equal(s.msg, "keepalive: bad TTL 9223372036854775807");
}

/* A stream's line buffer gives back the memory of one big event once it is consumed. */
static void test_linebuf_shrinks(void **state)
{
    struct ar_linebuf b = {0};
    size_t big = 1u << 20, consumed = 0;
    char *chunk = malloc(big);
    char *line;

    assert_non_null(chunk);
    memset(chunk, 'x', big);
    assert_int_equal(ar_linebuf_add(&b, chunk, big), 0);
    assert_int_equal(ar_linebuf_add(&b, "\n{\"a\"", 6), 0);
    assert_true(b.cap > big);
    line = ar_linebuf_next(&b, &consumed);
    assert_non_null(line);
    assert_int_equal(strlen(line), big);
    ar_linebuf_shift(&b, consumed);
    assert_int_equal(b.len, 5);
    assert_string_equal(b.p, "{\"a\"");
    assert_int_equal(b.cap, 4096);
    ar_linebuf_free(&b);
    free(chunk);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_unary_shapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unary_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_stream, setup, teardown),
        cmocka_unit_test(test_linebuf_shrinks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
