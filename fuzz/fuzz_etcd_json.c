/* fuzz/fuzz_etcd_json.c: arbitrary bytes as etcd JSON-gateway answers, through the same code
 * paths as real answers (coord/etcd/etcd_int.h):
 *   unary   ar_etcd_xfer_error (HTTP status, error bodies: JSON or plain text), then for 200
 *           ar_etcd_decode_result (range/put/delete/txn/lease/auth shapes) as a request does;
 *   watch   the stream's buffering, line splitter and message parser (ar_etcd_watch_feed);
 *   keeper  the same for lease keepalive answers (ar_etcd_keeper_feed).
 * Input: byte 0 = mode, byte 1 = HTTP status / op type / transport result, byte 2 = chunk size
 * for streams (0: one chunk), then the body. Invariants checked beyond "no crash, no leak":
 * an error status equals err.code, returned keys and values are NUL-terminated, a successful
 * keepalive has a positive TTL, events come in non-empty batches, and no kv stays accounted. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "coord/etcd/etcd_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
const char *__ubsan_default_options(void);

/* The fuzz build's -fsanitize=undefined recovers by default: make every report a crash. */
const char *__ubsan_default_options(void)
{
    return "halt_on_error=1:print_stacktrace=1";
}

static uv_loop_t loop;
static struct ar_etcd *client;
static volatile size_t sink;

static const long http_codes[] = {200, 200, 200, 200, 400, 401, 403, 404, 412, 429, 500, 503};

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_etcd_json: invariant violated: %s\n", what);
        abort();
    }
}

static void check_kv(const struct ar_etcd_kv *kv, bool need_key)
{
    if (!kv->key) {
        check(!need_key, "kv without key");
        return;
    }
    check(kv->key[kv->key_len] == 0, "key not NUL-terminated");
    check(kv->value && kv->value[kv->value_len] == 0, "value not NUL-terminated");
    for (size_t i = 0; i < kv->key_len; i++)
        sink += kv->key[i];
    for (size_t i = 0; i < kv->value_len; i++)
        sink += kv->value[i];
}

static void check_result(const struct ar_etcd_result *r, int depth)
{
    check(depth < 3, "nested results deeper than a txn");
    check(r->n_kvs == 0 || r->kvs, "kvs count without kvs");
    for (size_t i = 0; i < r->n_kvs; i++)
        check_kv(&r->kvs[i], true);
    for (size_t i = 0; i < r->n_ops; i++)
        check_result(&r->ops[i], depth + 1);
    if (r->token)
        sink += strlen(r->token);
}

static void check_error(int status, const struct ar_etcd_error *e)
{
    check(status < 0, "error without a negative status");
    check(e->code == status, "err.code differs from the status");
    check(memchr(e->msg, 0, sizeof(e->msg)) != NULL, "message not terminated");
    check(memchr(e->endpoint, 0, sizeof(e->endpoint)) != NULL, "endpoint not terminated");
}

static void on_watch(void *arg, const struct ar_etcd_watch_update *u)
{
    switch (u->kind) {
    case AR_ETCD_WATCH_EVENTS:
        check(u->n_events >= 1 && u->events, "empty event batch");
        for (size_t i = 0; i < u->n_events; i++) {
            check_kv(&u->events[i].kv, true);
            check_kv(&u->events[i].prev_kv, false);
        }
        break;
    case AR_ETCD_WATCH_ERROR:
        check(u->err != NULL, "watch error without err");
        check_error(u->status, u->err);
        break;
    case AR_ETCD_WATCH_COMPACTED:
        check(u->compact_revision != 0, "compaction without a revision");
        break;
    case AR_ETCD_WATCH_CREATED:
        break;
    }
}

static void on_keepalive(void *arg, int status, int64_t ttl, uint64_t deadline_ms,
                         const struct ar_etcd_error *err)
{
    if (status == 0) {
        check(ttl > 0, "keepalive ok with TTL <= 0");
        check(deadline_ms > 0, "keepalive ok without a deadline");
    } else {
        check(err != NULL, "keepalive error without err");
        check_error(status, err);
    }
}

static size_t handles_at_start;

static void count_handle(uv_handle_t *h, void *arg)
{
    (*(size_t *)arg)++;
}

static size_t handles(void)
{
    size_t n = 0;
    uv_walk(&loop, count_handle, &n);
    return n;
}

static void setup(void)
{
    struct ar_etcd_settings s = {.endpoints = {"http://127.0.0.1:9"}, .n_endpoints = 1};

    if (client)
        return;
    if (uv_loop_init(&loop) < 0)
        abort();
    if (ar_etcd_new(&loop, &s, &client) < 0)
        abort();
    handles_at_start = handles();
}

static void fuzz_unary(const char *body, size_t n, uint8_t sel)
{
    struct ar_xfer x = {0};
    struct ar_etcd_error e;
    struct ar_etcd_result *res = NULL;
    long http = http_codes[(sel & 0x0f) % (sizeof(http_codes) / sizeof(http_codes[0]))];
    int st;

    x.c = client;
    x.resp = malloc(n + 1); /* the client's buffer is NUL-terminated too */
    if (!x.resp)
        return;
    memcpy(x.resp, body, n);
    x.resp[n] = 0;
    x.resp_len = n;
    x.resp_cap = n + 1;
    st = ar_etcd_xfer_error(&x, CURLE_OK, http, &e);
    if (st < 0) {
        check_error(st, &e);
    } else {
        check(http == 200, "non-200 answer taken as success");
        st = ar_etcd_decode_result(&x, (enum ar_etcd_op_type)((sel >> 4) % 3), &res, &e);
        if (st < 0) {
            check(res == NULL, "result on failure");
            check_error(st, &e);
        } else {
            check(res != NULL, "no result on success");
            check_result(res, 0);
            ar_etcd_result_free(res);
        }
    }
    free(x.resp);
}

static void fuzz_stream(bool keeper, const char *body, size_t n, uint8_t sel, uint8_t chunk)
{
    const char *chunks[64];
    size_t lens[64], k = 0, step;
    long http = (sel & 0x40)
                    ? http_codes[(sel & 0x0f) % (sizeof(http_codes) / sizeof(http_codes[0]))]
                    : 200;
    CURLcode rc = (sel & 0x80) ? CURLE_RECV_ERROR : CURLE_OK;

    step = chunk ? chunk : (n ? n : 1);
    if (n / step >= 63)
        step = n / 63 + 1;
    for (size_t off = 0; off < n && k < 64; off += step, k++) {
        chunks[k] = body + off;
        lens[k] = n - off < step ? n - off : step;
    }
    if (keeper)
        ar_etcd_keeper_feed(client, chunks, lens, k, rc, http, on_keepalive, NULL);
    else
        ar_etcd_watch_feed(client, chunks, lens, k, rc, http, on_watch, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body;
    size_t n;

    setup();
    if (size < 3)
        return 0;
    body = (const char *)data + 3;
    n = size - 3;
    switch (data[0] % 3) {
    case 0:
        fuzz_unary(body, n, data[1]);
        break;
    case 1:
        fuzz_stream(false, body, n, data[1], data[2]);
        break;
    case 2:
        fuzz_stream(true, body, n, data[1], data[2]);
        break;
    }
    uv_run(&loop, UV_RUN_NOWAIT); /* close the stream objects' timers */
    check(client->kvs_live == 0, "kvs still accounted after the results were freed");
    check(handles() == handles_at_start, "a stream object's handle outlived it");
    check(client->dirty.next == &client->dirty, "a freed stream is still marked dirty");
    return 0;
}
