/*
 * tests/unit/test_etcd_gw.c: the coord layer against a scripted gateway on loopback
 * (tests/support/etcd_harness.h: fake_gw), for answers a real etcd cannot be made to give on
 * demand: a lease grant without TTL, a put refused with "requested lease not found", a watch
 * stream that goes silent, a member that accepts connections and never answers. Its KV calls
 * use the JSON gateway (kv_json): the scripted server does not speak HTTP/2.
 */
#include <errno.h>
#include <inttypes.h>
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

#include "coord/election.h"
#include "coord/member.h"
#include "coord/session.h"
#include "tests/support/etcd_harness.h"

struct script {
    int grant_ttl;       /* TTL answered by /v3/lease/grant (0: omitted, as etcd omits 0) */
    int64_t next_id;     /* lease ID answered (0: omitted) */
    int id_step;         /* added to next_id after each grant */
    int put_lease_gone;  /* answer this many puts with "requested lease not found" */
    char last_put[2048]; /* body of the last /v3/kv/put */
    char last_watch[2048];
    bool watch_silent;     /* /v3/watch: accept and never answer */
    bool keepalive_silent; /* /v3/lease/keepalive: accept and never answer */
};

static void gw(void *arg, const char *path, const char *body, struct fake_gw_reply *r)
{
    struct script *s = arg;

    snprintf(r->body, sizeof(r->body), "{\"header\":{\"revision\":\"5\"}}");
    if (!strcmp(path, "/v3/lease/grant")) {
        int n = snprintf(r->body, sizeof(r->body), "{\"header\":{\"revision\":\"5\"}");

        if (s->next_id)
            n += snprintf(r->body + n, sizeof(r->body) - n, ",\"ID\":\"%" PRId64 "\"", s->next_id);
        s->next_id += s->id_step;
        if (s->grant_ttl)
            n += snprintf(r->body + n, sizeof(r->body) - n, ",\"TTL\":\"%d\"", s->grant_ttl);
        snprintf(r->body + n, sizeof(r->body) - n, "}");
    } else if (!strcmp(path, "/v3/kv/put")) {
        snprintf(s->last_put, sizeof(s->last_put), "%s", body);
        if (s->put_lease_gone > 0) {
            s->put_lease_gone--;
            r->status = 404;
            snprintf(r->body, sizeof(r->body),
                     "{\"error\":\"etcdserver: requested lease not found\",\"message\":"
                     "\"etcdserver: requested lease not found\",\"code\":5}");
        }
    } else if (!strcmp(path, "/v3/lease/keepalive")) {
        const char *id = strstr(body, "\"ID\":\"");

        if (s->keepalive_silent) {
            r->status = 0;
            return;
        }
        snprintf(r->body, sizeof(r->body),
                 "{\"result\":{\"header\":{\"revision\":\"5\"},\"ID\":\"%lld\",\"TTL\":\"%d\"}}\n",
                 id ? strtoll(id + 6, NULL, 10) : 0LL, s->grant_ttl);
    } else if (!strcmp(path, "/v3/kv/txn")) {
        snprintf(r->body, sizeof(r->body), "{\"header\":{\"revision\":\"6\"},\"succeeded\":true}");
    } else if (!strcmp(path, "/v3/watch")) {
        snprintf(s->last_watch, sizeof(s->last_watch), "%s", body);
        if (s->watch_silent) {
            r->status = 0;
            return;
        }
        r->stream = true;
        snprintf(r->body, sizeof(r->body),
                 "{\"result\":{\"header\":{\"revision\":\"6\"},\"created\":true}}\n");
    }
}

struct fx {
    uv_loop_t loop;
    struct fake_gw *g;
    struct ar_etcd *c;
    struct script s;
    /* freed by teardown if a failed assertion left them running */
    struct ar_member_alive *alive;
    struct ar_election *election;
    struct ar_session *session;
    struct ar_etcd_watch *watch;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    /* the scripted gateway speaks HTTP/1.1 JSON only: the KV calls go there too */
    struct ar_etcd_settings st = {
        .n_endpoints = 1, .request_timeout_ms = 1000, .watch_idle_ms = 150, .kv_json = true};

    if (!f || uv_loop_init(&f->loop) < 0)
        return -1;
    f->g = fake_gw_start(&f->loop, gw, &f->s);
    if (!f->g)
        return -1;
    st.endpoints[0] = fake_gw_endpoint(f->g);
    assert_int_equal(ar_etcd_new(&f->loop, &st, &f->c), 0);
    *state = f;
    return f->c ? 0 : -1;
}

static int teardown(void **state)
{
    struct fx *f = *state;

    ar_member_alive_stop(f->alive, NULL, NULL);
    ar_election_free(f->election);
    ar_session_free(f->session); /* after its users */
    ar_etcd_watch_stop(f->watch);
    ar_etcd_close(f->c);
    fake_gw_stop(f->g);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

/* --- membership ---------------------------------------------------------------------------- */

struct writes {
    int ok, failed, last_status;
    char msg[256], endpoint[128];
};

static void on_write(void *arg, int status, const struct ar_etcd_result *res,
                     const struct ar_etcd_error *err)
{
    struct writes *w = arg;

    if (status == 0) {
        w->ok++;
        return;
    }
    w->failed++;
    w->last_status = status;
    snprintf(w->msg, sizeof(w->msg), "%s", err->msg);
    snprintf(w->endpoint, sizeof(w->endpoint), "%s", err->endpoint);
}

/* A grant answered without TTL (or without ID) is no lease: nothing may be bound to it. */
static void test_member_grant_without_ttl(void **state)
{
    struct fx *f = *state;
    struct writes w = {0};
    struct ar_member_alive *a;

    f->s.next_id = 7; /* ID 7, TTL omitted (0) */
    assert_int_equal(ar_member_alive_start(f->c, "/m/", "n1", 5, "{}", on_write, &w, &a), 0);
    f->alive = a;
    assert_non_null(a);
    etcd_harness_run_for(&f->loop, 600);
    assert_true(fake_gw_count(f->g, "/v3/lease/grant") >= 2); /* retried */
    assert_int_equal(fake_gw_count(f->g, "/v3/kv/put"), 0);
    assert_int_equal(fake_gw_count(f->g, "/v3/lease/keepalive"), 0);
    assert_false(ar_member_alive_ok(a));
    assert_int_equal(w.last_status, -EPROTO);
    assert_string_equal(w.msg, "malformed response: lease grant with ID 7 and TTL 0");
    assert_string_equal(w.endpoint, fake_gw_endpoint(f->g));

    /* and without ID */
    f->s.next_id = 0;
    f->s.grant_ttl = 5;
    etcd_harness_run_for(&f->loop, 600);
    assert_int_equal(fake_gw_count(f->g, "/v3/kv/put"), 0);
    assert_string_equal(w.msg, "malformed response: lease grant with ID 0 and TTL 5");

    /* a proper answer: the key goes on that lease, which is kept alive */
    f->s.next_id = 42;
    etcd_harness_run_for(&f->loop, 600);
    assert_true(ar_member_alive_ok(a));
    assert_non_null(strstr(f->s.last_put, "\"lease\":\"42\""));
    f->alive = NULL;
    ar_member_alive_stop(a, NULL, NULL);
    etcd_harness_run_for(&f->loop, 50);
    assert_int_equal(fake_gw_count(f->g, "/v3/lease/revoke"), 1);
}

/* A put refused with "requested lease not found" means a new lease, not the same put again. */
static void test_member_put_lease_gone(void **state)
{
    struct fx *f = *state;
    struct writes w = {0};
    struct ar_member_alive *a;

    f->s.next_id = 10;
    f->s.id_step = 1;
    f->s.grant_ttl = 30; /* keepalives keep saying the lease lives: only the put knows */
    f->s.put_lease_gone = 1;
    assert_int_equal(ar_member_alive_start(f->c, "/m/", "n1", 30, "{}", on_write, &w, &a), 0);
    f->alive = a;
    etcd_harness_run_for(&f->loop, 400);
    assert_int_equal(w.failed, 1);
    assert_int_equal(w.last_status, -ENOENT);
    assert_string_equal(w.msg, "etcdserver: requested lease not found");
    assert_int_equal(fake_gw_count(f->g, "/v3/lease/grant"), 2);
    assert_non_null(strstr(f->s.last_put, "\"lease\":\"11\""));
    assert_true(ar_member_alive_ok(a));
    f->alive = NULL;
    ar_member_alive_stop(a, NULL, NULL);
    etcd_harness_run_for(&f->loop, 50);
}

/* Stopped while the grant is in flight: the lease granted then is revoked, not left behind. */
static void test_member_stop_during_grant(void **state)
{
    struct fx *f = *state;
    struct ar_member_alive *a;

    f->s.next_id = 20;
    f->s.grant_ttl = 30;
    assert_int_equal(ar_member_alive_start(f->c, "/m/", "n1", 30, "{}", NULL, NULL, &a), 0);
    ar_member_alive_stop(a, NULL, NULL);
    etcd_harness_run_for(&f->loop, 300);
    assert_int_equal(fake_gw_count(f->g, "/v3/lease/grant"), 1);
    assert_int_equal(fake_gw_count(f->g, "/v3/lease/revoke"), 1);
    assert_int_equal(fake_gw_count(f->g, "/v3/kv/put"), 0);
}

/* --- election ------------------------------------------------------------------------------- */

struct obs {
    int calls, status;
    bool leader;
    char msg[256];
    int downs; /* leader -> not leader, with when and why */
    uint64_t down_at;
    int down_status;
    char down_msg[256];
};

static void on_state(void *arg, const struct ar_election_state *st)
{
    struct obs *o = arg;

    o->calls++;
    if (o->leader && !st->is_leader && !o->downs++) {
        o->down_at = ar_etcd_now_ms();
        o->down_status = st->status;
        snprintf(o->down_msg, sizeof(o->down_msg), "%s", st->err ? st->err->msg : "");
    }
    o->leader = st->is_leader;
    o->status = st->status;
    snprintf(o->msg, sizeof(o->msg), "%s", st->err ? st->err->msg : "");
}

static void test_election_grant_without_ttl(void **state)
{
    struct fx *f = *state;
    struct obs o = {0};
    struct ar_election_settings es = {.key = "/e/leader", .value = "A", .ttl_s = 5};
    struct ar_election *e;

    f->s.next_id = 7;
    assert_int_equal(ar_election_start(f->c, &es, on_state, &o, &e), 0);
    f->election = e;
    assert_non_null(e);
    etcd_harness_run_for(&f->loop, 700);
    assert_false(o.leader);
    assert_false(ar_election_is_leader(e, ar_etcd_now_ms()));
    assert_int_equal(fake_gw_count(f->g, "/v3/kv/txn"), 0); /* never campaigned */
    assert_int_equal(o.status, -EPROTO);
    assert_string_equal(o.msg, "malformed response: lease grant with ID 7 and TTL 0");
    f->election = NULL;
    ar_election_free(e);
}

/* --- watch ---------------------------------------------------------------------------------- */

struct wseen {
    int created, errors, status;
    char msg[256];
};

static void on_watch(void *arg, const struct ar_etcd_watch_update *u)
{
    struct wseen *w = arg;

    if (u->kind == AR_ETCD_WATCH_CREATED)
        w->created++;
    if (u->kind == AR_ETCD_WATCH_ERROR) {
        w->errors++;
        w->status = u->status;
        snprintf(w->msg, sizeof(w->msg), "%s", u->err->msg);
    }
}

/* A stream that goes silent is noticed within watch_idle_ms: an established one is replaced
 * from the same revision without a report, one that never answers is an error. */
static void test_watch_silent_stream(void **state)
{
    struct fx *f = *state;
    struct wseen w = {0};
    struct ar_etcd_watch_opts o = {.key = (const uint8_t *)"/w", .key_len = 2};
    unsigned n;

    assert_int_equal(ar_etcd_watch_start(f->c, &o, on_watch, &w, &f->watch), 0);
    etcd_harness_run_for(&f->loop, 500); /* created at revision 6, then silence */
    n = fake_gw_count(f->g, "/v3/watch");
    assert_true(n >= 3 && n <= 5); /* replaced every 150 ms */
    assert_non_null(strstr(f->s.last_watch, "\"start_revision\":\"7\""));
    assert_int_equal(w.created, 1);
    assert_int_equal(w.errors, 0);

    f->s.watch_silent = true; /* now connections are accepted and never answered */
    etcd_harness_run_for(&f->loop, 350);
    assert_true(w.errors >= 1);
    assert_int_equal(w.status, -ETIMEDOUT);
    assert_string_equal(w.msg, "watch: no answer within 150 ms");

    f->s.watch_silent = false; /* it recovers, from the same revision, and says so */
    etcd_harness_run_for(&f->loop, 800);
    assert_int_equal(w.created, 2);
    assert_non_null(strstr(f->s.last_watch, "\"start_revision\":\"7\""));
    ar_etcd_watch_stop(f->watch);
    f->watch = NULL;
}

/* The election's safety through the shared session: keepalives go unanswered, so the lease
 * is trusted only until (grant request sent + TTL - margin); then the leader steps down at once
 * with -ETIMEDOUT, the session revokes the untrusted lease and grants a new one, and a second
 * user of the session (the liveness key) hears LOST too. */
struct lost_obs {
    int lost, granted, status;
    int64_t lease;
};

static void on_sess(void *arg, const struct ar_session_update *u)
{
    struct lost_obs *o = arg;

    if (u->kind == AR_SESSION_LOST) {
        o->lost++;
        o->status = u->status;
        o->lease = u->lease;
    } else if (u->kind == AR_SESSION_GRANTED) {
        o->granted++;
    }
}

static void test_session_deadline(void **state)
{
    struct fx *f = *state;
    struct obs o = {0};
    struct lost_obs lo = {0};
    struct ar_session_settings ss = {.ttl_s = 2, .margin_ms = 500};
    struct ar_election_settings es = {.key = "/e/leader", .value = "A"};
    struct ar_session *s;
    struct ar_election *e;
    uint64_t t0, t1, d;

    f->s.next_id = 30;
    f->s.id_step = 1;
    f->s.grant_ttl = 2;
    f->s.keepalive_silent = true;
    t0 = ar_etcd_now_ms();
    assert_int_equal(ar_session_new(f->c, &ss, &s), 0);
    f->session = s;
    assert_int_equal(ar_session_listen(s, on_sess, &lo), 0);
    es.session = s;
    assert_int_equal(ar_election_start(f->c, &es, on_state, &o, &e), 0);
    f->election = e;
    etcd_harness_run_for(&f->loop, 300);
    t1 = ar_etcd_now_ms();
    assert_true(o.leader); /* the fake's txn says succeeded */
    assert_int_equal(ar_session_lease(s), 30);
    d = ar_session_deadline(s);
    /* from the grant REQUEST's send time (between t0 and t1) plus the TTL granted; a loaded
     * machine (ASan) may send it some ms after t0, so the bound is the window, not t0 */
    assert_true(d >= t0 + 2000 && d <= t1 + 2000);
    assert_int_equal(ar_election_deadline(e), d - 500);
    assert_true(ar_election_is_leader(e, d - 501));
    assert_false(ar_election_is_leader(e, d - 500));

    /* no renewal answers: down at d - 500 at the latest, never later */
    while (!o.downs && ar_etcd_now_ms() < d + 1000)
        etcd_harness_run_for(&f->loop, 10);
    assert_int_equal(o.downs, 1);
    assert_true(o.down_at >= d - 500 && o.down_at < d);
    assert_int_equal(o.down_status, -ETIMEDOUT);
    assert_string_equal(o.down_msg, "lease not renewed before its deadline");
    assert_int_equal(lo.lost, 1);
    assert_int_equal(lo.status, -ETIMEDOUT);
    assert_int_equal(lo.lease, 30);
    etcd_harness_run_for(&f->loop, 100);
    assert_int_equal(fake_gw_count(f->g, "/v3/lease/revoke"), 1); /* the untrusted lease */
    assert_int_equal(lo.granted, 2);
    assert_int_equal(ar_session_lease(s), 31);
    assert_true(o.leader); /* campaigned again on the new lease (the fake's txn succeeds) */
    f->election = NULL;
    ar_election_free(e);
    f->session = NULL;
    ar_session_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_member_grant_without_ttl, setup, teardown),
        cmocka_unit_test_setup_teardown(test_member_put_lease_gone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_member_stop_during_grant, setup, teardown),
        cmocka_unit_test_setup_teardown(test_election_grant_without_ttl, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_silent_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_session_deadline, setup, teardown),
    };

    curl_global_init(CURL_GLOBAL_DEFAULT);
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("etcd_gw", tests, NULL, NULL);
}
