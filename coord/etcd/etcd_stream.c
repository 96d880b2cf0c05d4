/*
 * coord/etcd/etcd_stream.c: the two long-lived streams of the gateway: watch (POST /v3/watch, one
 * JSON object per line) and lease keepalive (one chunked POST fed with {"ID":..} lines).
 *
 * Stream data arrives inside libcurl callbacks, where it is only buffered; it is parsed and
 * handed to the user from ar_xfer's process hook, outside libcurl, so users may call the client
 * (or stop the stream) from their callbacks.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord/etcd/etcd_int.h"

static void close_free(uv_handle_t *h)
{
    free(h);
}

static uv_timer_t *timer_new(uv_loop_t *loop, void *data)
{
    uv_timer_t *t = malloc(sizeof(*t));

    if (t) {
        uv_timer_init(loop, t);
        t->data = data;
    }
    return t;
}

static void timer_free(uv_timer_t **t)
{
    if (*t)
        uv_close((uv_handle_t *)*t, close_free);
    *t = NULL;
}

static int buffer_data(struct ar_xfer *x, struct ar_linebuf *lb, const char *p, size_t n)
{
    if (ar_linebuf_add(lb, p, n) < 0)
        return -1;
    ar_xfer_mark_dirty(x);
    return 0;
}

/* Hand each complete non-empty line to fn (outside libcurl callbacks) until it returns false;
 * then the rest of the buffer is dropped (the stream is being abandoned). */
static void stream_lines(struct ar_linebuf *lb, bool (*fn)(void *obj, const char *line, size_t n),
                         void *obj)
{
    size_t consumed = 0, before;
    char *line;

    for (;;) {
        before = consumed;
        line = ar_linebuf_next(lb, &consumed);
        if (!line)
            break;
        if (consumed - before <= 1)
            continue;
        if (!fn(obj, line, consumed - before - 1)) {
            consumed = lb->len;
            break;
        }
    }
    if (consumed > lb->len) /* fn may have emptied the buffer */
        consumed = lb->len;
    ar_linebuf_shift(lb, consumed);
}

/* A stream ended or sent an error: fill e. Lines of the stream shape were parsed before. */
static void stream_end_error(struct ar_xfer *x, CURLcode rc, long http, struct ar_linebuf *lb,
                             struct ar_etcd_error *e)
{
    json_t *root = NULL;

    if (ar_etcd_xfer_error(x, rc, http, e) < 0 && rc != CURLE_OK)
        return;
    if (lb->len)
        root = json_loadb(lb->p, lb->len, 0, NULL);
    if (root && ar_etcd_parse_error_json(root, e, http)) {
        json_decref(root);
        return;
    }
    json_decref(root);
    if (!e->code)
        ar_etcd_set_error(e, -ECONNRESET, x->c->endpoints[x->ep], "stream closed by server");
}

/* --- watch -------------------------------------------------------------------------------- */

struct ar_etcd_watch {
    struct ar_stream s;
    struct ar_xfer x;
    struct ar_auth_wait aw;
    struct ar_etcd *c;
    uint8_t *key, *end;
    size_t key_len, end_len;
    bool has_end, prev_kv;
    int64_t next_rev;
    ar_etcd_watch_cb cb;
    void *arg;
    struct ar_linebuf lb;
    uv_timer_t *timer;
    uv_timer_t *idle; /* while connected: fires when the stream was silent watch_idle_ms */
    unsigned failures;
    int busy;
    bool dead, finished, conn_failed;
    bool created; /* this connection got its "created" */
    bool quiet;   /* replacing a silent stream: do not report its "created" again */
};

static void watch_connect(struct ar_etcd_watch *w);

static void watch_free(struct ar_etcd_watch *w)
{
    ar_link_del(&w->s.link);
    ar_link_del(&w->aw.link);
    ar_xfer_release(&w->x);
    ar_linebuf_free(&w->lb);
    timer_free(&w->timer);
    timer_free(&w->idle);
    free(w->key);
    free(w->end);
    free(w);
}

static void watch_enter(struct ar_etcd_watch *w)
{
    w->busy++;
}

__attribute__((noinline)) static void watch_leave(struct ar_etcd_watch *w)
{
    if (--w->busy == 0 && w->dead)
        watch_free(w);
}

static void watch_report(struct ar_etcd_watch *w, const struct ar_etcd_watch_update *u)
{
    w->busy++;
    w->cb(w->arg, u);
    w->busy--;
}

static void watch_connect(struct ar_etcd_watch *w);

static void on_watch_timer(uv_timer_t *t)
{
    watch_connect(t->data);
}

static void watch_fail(struct ar_etcd_watch *w, const struct ar_etcd_error *e);

/* The stream said nothing for watch_idle_ms. An established one may just be idle, or its member
 * cut off without a reset: replace it from the same revision without telling the user (a dead
 * member then fails the new connection, which is reported). One that never got "created" is a
 * failure. */
static void on_watch_idle(uv_timer_t *t)
{
    struct ar_etcd_watch *w = t->data;
    struct ar_etcd_error e;

    if (!w->x.active || w->dead || w->finished)
        return;
    watch_enter(w);
    if (w->created) {
        ar_xfer_stop(&w->x);
        ar_link_del(&w->x.dirty);
        w->lb.len = 0;
        w->quiet = true;
        watch_connect(w);
    } else {
        ar_etcd_set_error(&e, -ETIMEDOUT, w->c->endpoints[w->x.ep], "watch: no answer within %u ms",
                          w->c->watch_idle_ms);
        watch_fail(w, &e);
    }
    watch_leave(w);
}

/* Report the error and reconnect after a backoff, on the next endpoint. */
static void watch_fail(struct ar_etcd_watch *w, const struct ar_etcd_error *e)
{
    struct ar_etcd_watch_update u = {.kind = AR_ETCD_WATCH_ERROR};
    struct ar_etcd *c = w->c;
    uint64_t delay;

    w->conn_failed = true;
    w->quiet = false;
    ar_xfer_stop(&w->x);
    ar_link_del(&w->x.dirty);
    uv_timer_stop(w->idle);
    w->lb.len = 0;
    u.status = e->code;
    u.err = e;
    u.revision = w->next_rev ? w->next_rev - 1 : 0;
    watch_report(w, &u);
    if (w->dead || w->finished)
        return;
    delay = 100u << (w->failures > 4 ? 4 : w->failures);
    if (delay > 2000)
        delay = 2000;
    w->failures++;
    if (c->n_ep > 1)
        w->x.ep = (w->x.ep + 1) % c->n_ep;
    uv_timer_start(w->timer, on_watch_timer, delay, 0);
}

static int watch_events(struct ar_etcd_watch *w, const json_t *res, int64_t rev)
{
    const json_t *evs = json_object_get(res, "events");
    size_t n = json_array_size(evs);
    struct ar_etcd_event *ev = calloc(n, sizeof(*ev));
    struct ar_etcd_watch_update u = {.kind = AR_ETCD_WATCH_EVENTS, .revision = rev};
    int rc = 0;
    size_t i;

    if (!ev)
        return -ENOMEM;
    for (i = 0; i < n; i++) {
        const json_t *e = json_array_get(evs, i), *pk;
        const char *type = json_string_value(json_object_get(e, "type"));

        ev[i].type = type && !strcmp(type, "DELETE") ? AR_ETCD_EV_DELETE : AR_ETCD_EV_PUT;
        if ((rc = ar_parse_kv(w->c, json_object_get(e, "kv"), &ev[i].kv)) < 0)
            goto out;
        if ((pk = json_object_get(e, "prev_kv")) &&
            (rc = ar_parse_kv(w->c, pk, &ev[i].prev_kv)) < 0)
            goto out;
    }
    /* revisions are positive; the resume point (last + 1) must not overflow */
    if (ev[n - 1].kv.mod_revision <= 0 || ev[n - 1].kv.mod_revision == INT64_MAX) {
        rc = -EPROTO;
        goto out;
    }
    u.events = ev;
    u.n_events = n;
    w->next_rev = ev[n - 1].kv.mod_revision + 1;
    watch_report(w, &u);
out:
    for (size_t j = 0; j < n; j++) {
        ar_kv_clear(&ev[j].kv);
        ar_kv_clear(&ev[j].prev_kv);
    }
    free(ev);
    return rc;
}

/* One line of the stream. Returns false when the stream must stop being read. */
static bool watch_line(void *obj, const char *line, size_t len)
{
    struct ar_etcd_watch *w = obj;
    struct ar_etcd_error e;
    json_error_t jerr;
    json_t *root = json_loadb(line, len, 0, &jerr), *res;
    const char *ep = w->c->endpoints[w->x.ep];
    int64_t rev;
    bool ok = true;

    if (!root) {
        ar_etcd_set_error(&e, -EPROTO, ep, "watch: malformed line: %s", jerr.text);
        watch_fail(w, &e);
        return false;
    }
    res = json_object_get(root, "result");
    if (!res) {
        if (!ar_etcd_parse_error_json(root, &e, 200))
            ar_etcd_set_error(&e, -EPROTO, ep, "watch: unexpected object");
        snprintf(e.endpoint, sizeof(e.endpoint), "%s", ep);
        watch_fail(w, &e);
        ok = false;
        goto out;
    }
    rev = ar_json_get_i64(json_object_get(res, "header"), "revision");
    if (rev < 0 || rev == INT64_MAX) {
        ar_etcd_set_error(&e, -EPROTO, ep, "watch: bad revision %" PRId64, rev);
        watch_fail(w, &e);
        ok = false;
        goto out;
    }
    if (json_is_true(json_object_get(res, "canceled"))) {
        int64_t crev = ar_json_get_i64(res, "compact_revision");
        const char *why = json_string_value(json_object_get(res, "cancel_reason"));

        if (crev) {
            struct ar_etcd_watch_update u = {
                .kind = AR_ETCD_WATCH_COMPACTED, .revision = rev, .compact_revision = crev};

            w->finished = true;
            ar_xfer_stop(&w->x);
            uv_timer_stop(w->idle);
            watch_report(w, &u);
            ok = false;
            goto out;
        }
        if (why && strstr(why, "invalid auth token"))
            ar_etcd_auth_invalidate(w->c, w->x.tok);
        ar_etcd_set_error(
            &e, why && (strstr(why, "auth") || strstr(why, "ermission")) ? -EACCES : -ECANCELED, ep,
            "watch canceled: %s", why ? why : "(no reason)");
        watch_fail(w, &e);
        ok = false;
        goto out;
    }
    if (json_is_true(json_object_get(res, "created"))) {
        struct ar_etcd_watch_update u = {.kind = AR_ETCD_WATCH_CREATED, .revision = rev};

        if (!w->next_rev)
            w->next_rev = rev + 1;
        w->failures = 0;
        w->created = true;
        if (!w->quiet)
            watch_report(w, &u);
        w->quiet = false;
    }
    if (json_array_size(json_object_get(res, "events")) && !w->dead) {
        int rc = watch_events(w, res, rev);

        if (rc < 0) {
            ar_etcd_set_error(&e, rc, ep, "watch: bad event (%s)", strerror(-rc));
            watch_fail(w, &e);
            ok = false;
        }
    }
out:
    json_decref(root);
    return ok && !w->dead && !w->finished;
}

static void watch_process(struct ar_xfer *x)
{
    struct ar_etcd_watch *w = AR_CONTAINER(x, struct ar_etcd_watch, x);

    watch_enter(w);
    if (w->x.active) /* the stream is alive: restart the silence clock */
        uv_timer_start(w->idle, on_watch_idle, w->c->watch_idle_ms, 0);
    stream_lines(&w->lb, watch_line, w);
    watch_leave(w);
}

static int watch_data(struct ar_xfer *x, const char *p, size_t n)
{
    struct ar_etcd_watch *w = AR_CONTAINER(x, struct ar_etcd_watch, x);

    return buffer_data(x, &w->lb, p, n);
}

static void watch_done(struct ar_xfer *x, CURLcode rc, long http)
{
    struct ar_etcd_watch *w = AR_CONTAINER(x, struct ar_etcd_watch, x);
    struct ar_etcd_error e;

    watch_enter(w);
    if (http == 200 && ar_link_linked(&x->dirty)) {
        ar_link_del(&x->dirty);
        watch_process(x);
    }
    if (!w->dead && !w->finished && !w->conn_failed) {
        stream_end_error(x, rc, http, &w->lb, &e);
        watch_fail(w, &e);
    }
    watch_leave(w);
}

static int watch_body(struct ar_etcd_watch *w)
{
    json_t *cr = json_object(), *body;
    int rc = -ENOMEM;

    if (!cr)
        return -ENOMEM;
    rc = ar_json_b64(cr, "key", w->key, w->key_len);
    if (!rc && w->has_end)
        rc = ar_json_b64(cr, "range_end", w->end, w->end_len);
    if (!rc && w->next_rev)
        rc = ar_json_i64str(cr, "start_revision", w->next_rev);
    if (!rc && w->prev_kv && json_object_set_new(cr, "prev_kv", json_true()))
        rc = -ENOMEM;
    if (rc < 0) {
        json_decref(cr);
        return rc;
    }
    body = json_pack("{s:o}", "create_request", cr);
    free(w->x.body);
    w->x.body = body ? ar_json_dump(body, &w->x.body_len) : NULL;
    json_decref(body);
    return w->x.body ? 0 : -ENOMEM;
}

static void watch_auth_resume(struct ar_auth_wait *aw, int status, const struct ar_etcd_error *e)
{
    struct ar_etcd_watch *w = AR_CONTAINER(aw, struct ar_etcd_watch, aw);
    struct ar_etcd_error err;
    int rc;

    watch_enter(w);
    if (status < 0) {
        watch_fail(w, e);
        goto out;
    }
    w->lb.len = 0;
    w->conn_failed = false;
    w->created = false;
    rc = watch_body(w);
    if (rc == 0)
        rc = ar_xfer_start(w->c, &w->x, "/v3/watch", true, 0);
    if (rc == 0)
        uv_timer_start(w->idle, on_watch_idle, w->c->watch_idle_ms, 0);
    if (rc < 0) {
        ar_etcd_set_error(&err, rc, w->c->endpoints[w->x.ep], "watch: %s", strerror(-rc));
        watch_fail(w, &err);
    }
out:
    watch_leave(w);
}

static void watch_connect(struct ar_etcd_watch *w)
{
    watch_enter(w);
    if (!w->dead && !w->finished)
        ar_etcd_auth_wait(w->c, &w->aw);
    watch_leave(w);
}

static void watch_destroy(struct ar_stream *s)
{
    struct ar_etcd_watch *w = AR_CONTAINER(s, struct ar_etcd_watch, s);

    w->dead = true;
    if (!w->busy)
        watch_free(w);
    else
        ar_xfer_stop(&w->x);
}

int ar_etcd_watch_start(struct ar_etcd *c, const struct ar_etcd_watch_opts *o, ar_etcd_watch_cb cb,
                        void *arg, struct ar_etcd_watch **out)
{
    struct ar_etcd_watch *w;

    *out = NULL;
    if (!o->key || !o->key_len || !cb)
        return -EINVAL;
    if (c->closing)
        return -ESHUTDOWN;
    w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->c = c;
    w->cb = cb;
    w->arg = arg;
    w->prev_kv = o->prev_kv;
    w->next_rev = o->start_revision;
    ar_link_init(&w->s.link);
    ar_link_init(&w->aw.link);
    ar_link_init(&w->x.dirty);
    w->s.destroy = watch_destroy;
    w->aw.resume = watch_auth_resume;
    w->x.c = c;
    w->x.ep = c->cur_ep;
    w->x.stream = true;
    w->x.on_data = watch_data;
    w->x.on_process = watch_process;
    w->x.on_done = watch_done;
    w->key = malloc(o->key_len);
    w->key_len = o->key_len;
    w->timer = timer_new(c->loop, w);
    w->idle = timer_new(c->loop, w);
    if (!w->key || !w->timer || !w->idle)
        goto nomem;
    memcpy(w->key, o->key, o->key_len);
    if (o->range_end) {
        w->has_end = true;
        w->end_len = o->range_end_len;
        w->end = malloc(o->range_end_len ? o->range_end_len : 1);
        if (!w->end)
            goto nomem;
        memcpy(w->end, o->range_end, o->range_end_len);
    }
    ar_link_add(&c->streams, &w->s.link);
    *out = w;
    watch_connect(w);
    return 0;
nomem:
    watch_free(w);
    return -ENOMEM;
}

void ar_etcd_watch_stop(struct ar_etcd_watch *w)
{
    if (!w)
        return;
    ar_link_del(&w->s.link);
    watch_destroy(&w->s);
}

int ar_etcd_watch_feed(struct ar_etcd *c, const char *const *chunks, const size_t *lens, size_t n,
                       CURLcode rc, long http, ar_etcd_watch_cb cb, void *arg)
{
    struct ar_etcd_watch *w = calloc(1, sizeof(*w));

    if (!w)
        return -ENOMEM;
    w->c = c;
    w->cb = cb;
    w->arg = arg;
    ar_link_init(&w->s.link);
    ar_link_init(&w->aw.link);
    ar_link_init(&w->x.dirty);
    w->x.c = c;
    w->x.stream = true;
    w->timer = timer_new(c->loop, w);
    w->idle = timer_new(c->loop, w);
    if (!w->timer || !w->idle) {
        timer_free(&w->timer);
        timer_free(&w->idle);
        free(w);
        return -ENOMEM;
    }
    watch_enter(w);
    for (size_t i = 0; i < n && !w->dead && !w->finished && !w->conn_failed; i++) {
        if (watch_data(&w->x, chunks[i], lens[i]) < 0) {
            rc = CURLE_WRITE_ERROR; /* what libcurl reports when the write callback fails */
            break;
        }
        if (ar_link_linked(&w->x.dirty)) {
            ar_link_del(&w->x.dirty);
            watch_process(&w->x);
        }
    }
    watch_done(&w->x, rc, http);
    w->dead = true;
    watch_leave(w);
    return 0;
}

void ar_etcd_watch_drop_connection(struct ar_etcd_watch *w)
{
    struct ar_etcd_error e;

    if (!w->x.active)
        return;
    ar_etcd_set_error(&e, -ECONNRESET, w->c->endpoints[w->x.ep], "connection dropped (test)");
    watch_enter(w);
    watch_fail(w, &e);
    watch_leave(w);
}

/* --- keepalive ---------------------------------------------------------------------------- */

/*
 * One POST /v3/lease/keepalive per renewal, each with one {"ID":..} body, on kept-alive
 * connections. A single long chunked POST fed line by line does not work through etcd 3.4's
 * gateway (Go 1.19 net/http drains the request body before it sends response headers, so the
 * answers only arrive when the upload ends; measured with curl: without "Expect: 100-continue"
 * no answer came before EOF, with it only the first one did).
 */
struct ar_etcd_keeper {
    struct ar_stream s;
    struct ar_xfer x;
    struct ar_auth_wait aw;
    struct ar_etcd *c;
    int64_t id, ttl;
    ar_etcd_keepalive_cb cb;
    void *arg;
    struct ar_linebuf lb;
    uv_timer_t *timer;
    uint64_t sent_at;
    uint64_t deadline;
    unsigned failures;
    int busy;
    bool dead, lost, got_reply, failed;
};

static void keeper_connect(struct ar_etcd_keeper *k);

static void keeper_free(struct ar_etcd_keeper *k)
{
    ar_link_del(&k->s.link);
    ar_link_del(&k->aw.link);
    ar_xfer_release(&k->x);
    ar_linebuf_free(&k->lb);
    timer_free(&k->timer);
    free(k);
}

static void keeper_enter(struct ar_etcd_keeper *k)
{
    k->busy++;
}

__attribute__((noinline)) static void keeper_leave(struct ar_etcd_keeper *k)
{
    if (--k->busy == 0 && k->dead)
        keeper_free(k);
}

static void keeper_report(struct ar_etcd_keeper *k, int status, const struct ar_etcd_error *e)
{
    k->busy++;
    k->cb(k->arg, status, status == 0 ? k->ttl : 0, k->deadline, e);
    k->busy--;
}

static uint64_t reply_timeout(const struct ar_etcd_keeper *k)
{
    uint64_t t = (uint64_t)k->ttl * 1000 / 3;

    if (t > k->c->req_timeout_ms)
        t = k->c->req_timeout_ms;
    return t < 300 ? 300 : t;
}

static void on_keeper_timer(uv_timer_t *t)
{
    keeper_connect(t->data);
}

static void keeper_fail(struct ar_etcd_keeper *k, const struct ar_etcd_error *e)
{
    struct ar_etcd *c = k->c;
    uint64_t delay;

    k->failed = true;
    ar_xfer_stop(&k->x);
    ar_link_del(&k->x.dirty);
    k->lb.len = 0;
    keeper_report(k, e->code ? e->code : -EPROTO, e);
    if (k->dead || k->lost)
        return;
    delay = k->failures ? 100u << (k->failures > 3 ? 3 : k->failures) : 0;
    k->failures++;
    if (c->n_ep > 1)
        k->x.ep = (k->x.ep + 1) % c->n_ep;
    uv_timer_stop(k->timer);
    uv_timer_start(k->timer, on_keeper_timer, delay, 0);
}

static int keeper_data(struct ar_xfer *x, const char *p, size_t n)
{
    struct ar_etcd_keeper *k = AR_CONTAINER(x, struct ar_etcd_keeper, x);

    return buffer_data(x, &k->lb, p, n);
}

static bool keeper_line(void *obj, const char *line, size_t len)
{
    struct ar_etcd_keeper *k = obj;
    struct ar_etcd_error e;
    const char *ep = k->c->endpoints[k->x.ep];
    json_t *root = json_loadb(line, len, 0, NULL), *res;
    uint64_t now = ar_etcd_now_ms(), next;
    int64_t ttl;

    if (!root || !(res = json_object_get(root, "result"))) {
        if (!root || !ar_etcd_parse_error_json(root, &e, 200))
            ar_etcd_set_error(&e, -EPROTO, ep, "keepalive: malformed answer");
        snprintf(e.endpoint, sizeof(e.endpoint), "%s", ep);
        json_decref(root);
        keeper_fail(k, &e);
        return false;
    }
    ttl = ar_json_get_i64(res, "TTL");
    json_decref(root);
    if (ttl > AR_ETCD_MAX_TTL_S) {
        ar_etcd_set_error(&e, -EPROTO, ep, "keepalive: bad TTL %" PRId64, ttl);
        keeper_fail(k, &e);
        return false;
    }
    k->got_reply = true;
    if (ttl <= 0) {
        k->lost = true;
        ar_xfer_stop(&k->x);
        uv_timer_stop(k->timer);
        ar_etcd_set_error(&e, -ENOENT, ep, "lease %" PRId64 " not found or expired", k->id);
        keeper_report(k, -ENOENT, &e);
        return false;
    }
    k->ttl = ttl;
    k->failures = 0;
    if (k->sent_at + (uint64_t)ttl * 1000 > k->deadline)
        k->deadline = k->sent_at + (uint64_t)ttl * 1000;
    keeper_report(k, 0, NULL);
    if (k->dead)
        return false;
    next = k->sent_at + (uint64_t)ttl * 1000 / 3;
    uv_timer_stop(k->timer);
    uv_timer_start(k->timer, on_keeper_timer, next > now ? next - now : 0, 0);
    return true;
}

static void keeper_process(struct ar_xfer *x)
{
    struct ar_etcd_keeper *k = AR_CONTAINER(x, struct ar_etcd_keeper, x);

    keeper_enter(k);
    stream_lines(&k->lb, keeper_line, k);
    keeper_leave(k);
}

static void keeper_done(struct ar_xfer *x, CURLcode rc, long http)
{
    struct ar_etcd_keeper *k = AR_CONTAINER(x, struct ar_etcd_keeper, x);
    struct ar_etcd_error e;

    keeper_enter(k);
    if (http == 200 && ar_link_linked(&x->dirty)) {
        ar_link_del(&x->dirty);
        keeper_process(x);
    }
    if (!k->dead && !k->lost && !k->failed && (!k->got_reply || rc != CURLE_OK)) {
        stream_end_error(x, rc, http, &k->lb, &e);
        if (rc == CURLE_OPERATION_TIMEDOUT)
            snprintf(e.msg, sizeof(e.msg), "keepalive: no answer within %" PRIu64 " ms",
                     reply_timeout(k));
        keeper_fail(k, &e);
    }
    keeper_leave(k);
}

static void keeper_auth_resume(struct ar_auth_wait *aw, int status, const struct ar_etcd_error *e)
{
    struct ar_etcd_keeper *k = AR_CONTAINER(aw, struct ar_etcd_keeper, aw);
    struct ar_etcd_error err;
    char body[64];
    int rc;

    keeper_enter(k);
    if (status < 0) {
        keeper_fail(k, e);
        goto out;
    }
    k->lb.len = 0;
    k->failed = false;
    k->got_reply = false;
    snprintf(body, sizeof(body), "{\"ID\":\"%" PRId64 "\"}", k->id);
    free(k->x.body);
    k->x.body = strdup(body);
    k->x.body_len = strlen(body);
    k->sent_at = ar_etcd_now_ms();
    rc = k->x.body ? ar_xfer_start(k->c, &k->x, "/v3/lease/keepalive", true, (long)reply_timeout(k))
                   : -ENOMEM;
    if (rc < 0) {
        ar_etcd_set_error(&err, rc, k->c->endpoints[k->x.ep], "keepalive: %s", strerror(-rc));
        keeper_fail(k, &err);
    }
out:
    keeper_leave(k);
}

static void keeper_connect(struct ar_etcd_keeper *k)
{
    keeper_enter(k);
    if (!k->dead && !k->lost && !k->x.active)
        ar_etcd_auth_wait(k->c, &k->aw);
    keeper_leave(k);
}

static void keeper_destroy(struct ar_stream *s)
{
    struct ar_etcd_keeper *k = AR_CONTAINER(s, struct ar_etcd_keeper, s);

    k->dead = true;
    if (!k->busy)
        keeper_free(k);
    else
        ar_xfer_stop(&k->x);
}

int ar_etcd_keepalive_start(struct ar_etcd *c, int64_t lease_id, int64_t ttl_s,
                            ar_etcd_keepalive_cb cb, void *arg, struct ar_etcd_keeper **out)
{
    struct ar_etcd_keeper *k;

    *out = NULL;
    if (!lease_id || ttl_s <= 0 || !cb)
        return -EINVAL;
    if (c->closing)
        return -ESHUTDOWN;
    k = calloc(1, sizeof(*k));
    if (!k)
        return -ENOMEM;
    k->c = c;
    k->id = lease_id;
    k->ttl = ttl_s;
    k->cb = cb;
    k->arg = arg;
    ar_link_init(&k->s.link);
    ar_link_init(&k->aw.link);
    ar_link_init(&k->x.dirty);
    k->s.destroy = keeper_destroy;
    k->aw.resume = keeper_auth_resume;
    k->x.c = c;
    k->x.ep = c->cur_ep;
    k->x.stream = true;
    k->x.on_data = keeper_data;
    k->x.on_process = keeper_process;
    k->x.on_done = keeper_done;
    k->timer = timer_new(c->loop, k);
    if (!k->timer) {
        free(k);
        return -ENOMEM;
    }
    ar_link_add(&c->streams, &k->s.link);
    *out = k;
    keeper_connect(k);
    return 0;
}

void ar_etcd_keepalive_stop(struct ar_etcd_keeper *k)
{
    if (!k)
        return;
    ar_link_del(&k->s.link);
    keeper_destroy(&k->s);
}

int ar_etcd_keeper_feed(struct ar_etcd *c, const char *const *chunks, const size_t *lens, size_t n,
                        CURLcode rc, long http, ar_etcd_keepalive_cb cb, void *arg)
{
    struct ar_etcd_keeper *k = calloc(1, sizeof(*k));

    if (!k)
        return -ENOMEM;
    k->c = c;
    k->id = 1;
    k->ttl = 10;
    k->cb = cb;
    k->arg = arg;
    ar_link_init(&k->s.link);
    ar_link_init(&k->aw.link);
    ar_link_init(&k->x.dirty);
    k->x.c = c;
    k->x.stream = true;
    k->sent_at = ar_etcd_now_ms();
    k->timer = timer_new(c->loop, k);
    if (!k->timer) {
        free(k);
        return -ENOMEM;
    }
    keeper_enter(k);
    for (size_t i = 0; i < n && !k->dead && !k->lost && !k->failed; i++) {
        if (keeper_data(&k->x, chunks[i], lens[i]) < 0) {
            rc = CURLE_WRITE_ERROR;
            break;
        }
        if (ar_link_linked(&k->x.dirty)) {
            ar_link_del(&k->x.dirty);
            keeper_process(&k->x);
        }
    }
    keeper_done(&k->x, rc, http);
    k->dead = true;
    keeper_leave(k);
    return 0;
}
