/*
 * tests/unit/test_etcd_coord.c: election, membership and compare-and-swap against a real etcd.
 * Election contenders are forked processes, each with its own loop and client, reporting
 * "am I leader now" (ar_election_is_leader) over a pipe every 50 ms.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/wait.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "coord/cas.h"
#include "coord/election.h"
#include "coord/etcd/etcd_sync.h"
#include "coord/member.h"
#include "coord/session.h"
#include "tests/support/etcd_harness.h"

static struct etcd_harness H;
static struct ar_etcd_sync *S;

#define TTL 2

static int group_setup(void **state)
{
    struct etcd_harness_opts o = {.members = 1, .fast = true};
    struct ar_etcd_settings st;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    signal(SIGPIPE, SIG_IGN);
    if (etcd_harness_start(&H, &o) < 0)
        return -1;
    etcd_harness_settings(&H, &st);
    return ar_etcd_sync_new(&st, &S) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    ar_etcd_sync_free(S);
    etcd_harness_destroy(&H);
    curl_global_cleanup();
    return 0;
}

/* --- contender process -------------------------------------------------------------------- */

struct child {
    int fd;
    struct ar_election *e;
    uv_signal_t term;
    uv_timer_t tick;
    struct ar_etcd *c;
    bool resigned;
};

static void child_tick(uv_timer_t *t)
{
    struct child *ch = t->data;
    char b = ar_election_is_leader(ch->e, ar_etcd_now_ms()) ? 'L' : 'F';

    if (write(ch->fd, &b, 1) < 0)
        _exit(3);
}

static void child_resigned(void *arg)
{
    struct child *ch = arg;

    ch->resigned = true;
    ar_election_free(ch->e);
    ch->e = NULL;
    uv_close((uv_handle_t *)&ch->tick, NULL);
    uv_close((uv_handle_t *)&ch->term, NULL);
    ar_etcd_close(ch->c);
}

static void child_term(uv_signal_t *s, int sig)
{
    struct child *ch = s->data;

    uv_timer_stop(&ch->tick);
    uv_signal_stop(s);
    ar_election_resign(ch->e, child_resigned, ch);
}

static void run_contender(int fd, const char *name)
{
    uv_loop_t loop;
    struct ar_etcd_settings st;
    struct child ch = {.fd = fd};
    struct ar_election_settings es = {.key = "/atrest/leader", .value = name, .ttl_s = TTL};

    uv_loop_init(&loop);
    etcd_harness_settings(&H, &st);
    st.request_timeout_ms = 1000;
    if (ar_etcd_new(&loop, &st, &ch.c) < 0 || ar_election_start(ch.c, &es, NULL, NULL, &ch.e) < 0)
        _exit(2);
    uv_timer_init(&loop, &ch.tick);
    ch.tick.data = &ch;
    uv_timer_start(&ch.tick, child_tick, 50, 50);
    uv_signal_init(&loop, &ch.term);
    ch.term.data = &ch;
    uv_signal_start(&ch.term, child_term, SIGTERM);
    uv_run(&loop, UV_RUN_DEFAULT);
    _exit(uv_loop_close(&loop) == 0 && ch.resigned ? 0 : 4);
}

#define NC 3

struct contenders {
    pid_t pid[NC];
    int fd[NC];
    char last[NC];
    bool alive[NC];
};

static void spawn(struct contenders *cs)
{
    for (int i = 0; i < NC; i++) {
        int p[2];
        char name[32];

        assert_int_equal(pipe(p), 0);
        snprintf(name, sizeof(name), "node-%d", i);
        fflush(NULL);
        cs->pid[i] = fork();
        assert_true(cs->pid[i] >= 0);
        if (cs->pid[i] == 0) {
            close(p[0]);
            for (int j = 0; j < i; j++)
                close(cs->fd[j]);
            run_contender(p[1], name);
        }
        close(p[1]);
        fcntl(p[0], F_SETFL, O_NONBLOCK);
        cs->fd[i] = p[0];
        cs->last[i] = '?';
        cs->alive[i] = true;
    }
}

/* Read every pipe for ms; record the last report; count L reports of child `watch`. */
static void pump(struct contenders *cs, unsigned ms, int watch, int *watch_l, int *watch_n)
{
    uint64_t end = ar_etcd_now_ms() + ms;

    while (ar_etcd_now_ms() < end) {
        struct pollfd pf[NC];

        for (int i = 0; i < NC; i++)
            pf[i] = (struct pollfd){.fd = cs->alive[i] ? cs->fd[i] : -1, .events = POLLIN};
        poll(pf, NC, 20);
        for (int i = 0; i < NC; i++) {
            char buf[256];
            ssize_t n;

            if (!cs->alive[i])
                continue;
            while ((n = read(cs->fd[i], buf, sizeof(buf))) > 0) {
                cs->last[i] = buf[n - 1];
                if (i == watch) {
                    for (ssize_t j = 0; j < n; j++) {
                        (*watch_n)++;
                        if (buf[j] == 'L')
                            (*watch_l)++;
                    }
                }
            }
        }
    }
}

static int leaders(const struct contenders *cs, int *who)
{
    int n = 0;

    for (int i = 0; i < NC; i++) {
        if (cs->alive[i] && cs->last[i] == 'L') {
            n++;
            *who = i;
        }
    }
    return n;
}

/* Wait until exactly one live contender (other than `not`) leads; returns ms waited or -1. */
static int wait_one_leader(struct contenders *cs, unsigned ms, int not, int *who)
{
    uint64_t t0 = ar_etcd_now_ms();
    int dummy_l = 0, dummy_n = 0;

    while (ar_etcd_now_ms() - t0 < ms) {
        pump(cs, 60, -1, &dummy_l, &dummy_n);
        if (leaders(cs, who) == 1 && *who != not )
            return (int)(ar_etcd_now_ms() - t0);
    }
    return -1;
}

static void reap(struct contenders *cs, int i, int expect_status)
{
    int st;

    assert_int_equal(waitpid(cs->pid[i], &st, 0), cs->pid[i]);
    if (expect_status >= 0) {
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), expect_status);
    }
    close(cs->fd[i]);
    cs->alive[i] = false;
}

static void test_election_three_contenders(void **state)
{
    struct contenders cs = {0};
    int who = -1, second = -1, third = -1, ms, l = 0, n = 0;
    struct ar_etcd_op op = {.key = (const uint8_t *)"/atrest/leader", .key_len = 14};
    struct ar_etcd_result *r;

    spawn(&cs);
    /* exactly one leader, stable for a while (several renewals) */
    assert_true(wait_one_leader(&cs, 5000, -1, &who) >= 0);
    pump(&cs, 1500, -1, &l, &n);
    assert_int_equal(leaders(&cs, &who), 1);
    assert_int_equal(ar_etcd_sync_range(S, &op, &r, NULL), 0);
    assert_int_equal(r->n_kvs, 1);
    assert_int_equal(r->kvs[0].value[5] - '0', who);
    assert_true(r->kvs[0].lease != 0);
    ar_etcd_result_free(r);

    /* SIGKILL the leader: another leads within TTL + 1 s */
    kill(cs.pid[who], SIGKILL);
    reap(&cs, who, -1);
    ms = wait_one_leader(&cs, (TTL + 1) * 1000, who, &second);
    assert_true(ms >= 0);
    assert_true(second != who);

    /* SIGSTOP the new leader past its TTL: the third takes over; after SIGCONT the stopped one
     * knows it lost and never reports itself leader again */
    pump(&cs, 200, -1, &l, &n);
    kill(cs.pid[second], SIGSTOP);
    /* the stopped one's last report was L, so count the others only */
    {
        char saved = cs.last[second];

        cs.last[second] = 'F';
        ms = wait_one_leader(&cs, (TTL + 1) * 1000, second, &third);
        cs.last[second] = saved;
    }
    assert_true(ms >= 0);
    assert_true(third != second && third != who);
    pump(&cs, TTL * 1000, -1, &l, &n); /* well past its TTL */
    {
        char buf[256];

        while (read(cs.fd[second], buf, sizeof(buf)) > 0) /* drop reports from before STOP */
            ;
    }
    l = n = 0;
    kill(cs.pid[second], SIGCONT);
    pump(&cs, 1500, second, &l, &n);
    assert_true(n >= 10);   /* it runs again */
    assert_int_equal(l, 0); /* and never claims leadership */
    assert_int_equal(cs.last[third], 'L');
    assert_int_equal(leaders(&cs, &who), 1);
    assert_int_equal(who, third);

    /* clean shutdown: resign, key deleted, processes exit 0 */
    kill(cs.pid[third], SIGTERM);
    reap(&cs, third, 0);
    ms = wait_one_leader(&cs, 2000, third, &who);
    assert_true(ms >= 0 && ms < 1000); /* resign hands over at once, not after a TTL */
    assert_int_equal(who, second);
    kill(cs.pid[second], SIGTERM);
    reap(&cs, second, 0);
    assert_int_equal(ar_etcd_sync_range(S, &op, &r, NULL), 0);
    assert_int_equal(r->n_kvs, 0);
    ar_etcd_result_free(r);
}

/* --- in-process election: observe, resign, deadline ---------------------------------------- */

struct obs {
    int changes, downs; /* downs: leader -> not leader */
    bool leader;
    char seen[32];
};

static void on_state(void *arg, const struct ar_election_state *st)
{
    struct obs *o = arg;

    o->changes++;
    if (o->leader && !st->is_leader)
        o->downs++;
    o->leader = st->is_leader;
    snprintf(o->seen, sizeof(o->seen), "%s", st->leader ? st->leader : "");
}

static void resign_done(void *arg)
{
    *(bool *)arg = true;
}

static void test_election_observe_and_deadline(void **state)
{
    uv_loop_t loop;
    struct ar_etcd_settings st;
    struct ar_etcd *c;
    struct obs a = {0}, b = {0};
    struct ar_election_settings sa = {.key = "/t/leader", .value = "A", .ttl_s = TTL};
    struct ar_election_settings sb = {.key = "/t/leader", .value = "B", .ttl_s = TTL};
    struct ar_election *ea, *eb;
    bool done = false;
    uint64_t now;

    uv_loop_init(&loop);
    etcd_harness_settings(&H, &st);
    assert_int_equal(ar_etcd_new(&loop, &st, &c), 0);
    assert_int_equal(ar_election_start(c, &sa, on_state, &a, &ea), 0);
    etcd_harness_run_until(&loop, &a.leader, 3000);
    assert_true(a.leader);
    assert_int_equal(ar_election_start(c, &sb, on_state, &b, &eb), 0);
    etcd_harness_run_for(&loop, 500);
    assert_false(b.leader);
    assert_string_equal(b.seen, "A"); /* B observes who leads */

    /* the leader's deadline is the last renewal request + TTL - margin, in the future */
    now = ar_etcd_now_ms();
    assert_true(ar_election_is_leader(ea, now));
    assert_true(ar_election_deadline(ea) > now);
    assert_true(ar_election_deadline(ea) <= now + TTL * 1000);
    assert_false(ar_election_is_leader(ea, ar_election_deadline(ea)));

    /* resign: B takes over at once */
    ar_election_resign(ea, resign_done, &done);
    assert_false(ar_election_is_leader(ea, ar_etcd_now_ms()));
    assert_true(etcd_harness_run_until(&loop, &done, 3000));
    ar_election_free(ea);
    assert_true(etcd_harness_run_until(&loop, &b.leader, 1500));
    assert_string_equal(b.seen, "B");
    ar_election_free(eb);
    ar_etcd_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Put /g/rot = v in a txn guarded by g; returns succeeded (1/0) or the error. */
static int guarded_put(const struct ar_etcd_compare *g, const char *v)
{
    struct ar_etcd_op put = {.type = AR_ETCD_PUT,
                             .key = (const uint8_t *)"/g/rot",
                             .key_len = 6,
                             .value = (const uint8_t *)v,
                             .value_len = strlen(v)};
    struct ar_etcd_txn t = {.compare = g, .n_compare = 1, .success = &put, .n_success = 1};
    struct ar_etcd_result *r;
    int rc = ar_etcd_sync_txn(S, &t, &r, NULL);

    if (rc < 0)
        return rc;
    rc = r->succeeded;
    ar_etcd_result_free(r);
    return rc;
}

static bool run_until_stepped_down(uv_loop_t *loop, const struct obs *o, unsigned ms)
{
    int downs = o->downs;

    for (unsigned t = 0; t < ms && o->downs == downs; t += 10)
        etcd_harness_run_for(loop, 10);
    return o->downs > downs;
}

/* S7: leader-only writes are txns conditioned on the leadership term (ar_election_guard); a
 * leader whose key an operator deletes notices (watch), steps down, and its old guard fails
 * even after it leads again. */
static void test_election_guard_and_operator_delete(void **state)
{
    uv_loop_t loop;
    struct ar_etcd_settings st;
    struct ar_etcd *c;
    struct obs a = {0}, b = {0};
    struct ar_election_settings sa = {.key = "/g/leader", .value = "A", .ttl_s = 5};
    struct ar_election_settings sb = {.key = "/g/leader", .value = "B", .ttl_s = 5};
    struct ar_election *ea, *eb;
    struct ar_etcd_compare g1, g2, gb;
    struct ar_etcd_op del = {.key = (const uint8_t *)"/g/leader", .key_len = 9};
    bool done = false;

    uv_loop_init(&loop);
    etcd_harness_settings(&H, &st);
    assert_int_equal(ar_etcd_new(&loop, &st, &c), 0);
    assert_int_equal(ar_election_start(c, &sa, on_state, &a, &ea), 0);
    assert_true(etcd_harness_run_until(&loop, &a.leader, 3000));
    assert_int_equal(ar_election_guard(ea, &g1), 0);
    assert_int_equal(guarded_put(&g1, "1"), 1);
    assert_int_equal(ar_election_start(c, &sb, on_state, &b, &eb), 0);
    etcd_harness_run_for(&loop, 300);
    assert_int_equal(ar_election_guard(eb, &gb), -EPERM); /* a follower gets no guard */

    /* an operator deletes the leader key: A steps down at once (not at its lease deadline) */
    assert_int_equal(ar_etcd_sync_delete(S, &del, NULL, NULL), 0);
    assert_true(run_until_stepped_down(&loop, &a, 1000));
    assert_int_equal(guarded_put(&g1, "2"), 0); /* the old term's guard fails */
    /* someone leads again (A's or B's campaign), with a new term: g1 keeps failing */
    for (int i = 0; i < 100 && !a.leader && !b.leader; i++)
        etcd_harness_run_for(&loop, 20);
    etcd_harness_run_for(&loop, 100); /* both have seen the new key */
    assert_true(a.leader != b.leader);
    assert_int_equal(ar_election_guard(a.leader ? ea : eb, &g2), 0);
    assert_true(g2.number > g1.number);
    assert_int_equal(guarded_put(&g1, "3"), 0);
    assert_int_equal(guarded_put(&g2, "4"), 1);

    /* resign: the guard goes at once and the term's txns fail */
    ar_election_resign(a.leader ? ea : eb, resign_done, &done);
    assert_true(etcd_harness_run_until(&loop, &done, 3000));
    assert_int_equal(guarded_put(&g2, "5"), 0);
    ar_election_free(ea);
    ar_election_free(eb);
    ar_etcd_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* --- membership --------------------------------------------------------------------------- */

struct lst {
    bool done;
    int status;
    struct ar_member_list *l;
};

static void on_list(void *arg, int status, struct ar_member_list *l,
                    const struct ar_etcd_error *err)
{
    struct lst *s = arg;

    s->done = true;
    s->status = status;
    s->l = l;
}

static void on_reg(void *arg, int status, const struct ar_etcd_result *res,
                   const struct ar_etcd_error *err)
{
    *(int *)arg = status == 0 ? 1 : -1;
}

static void test_membership(void **state)
{
    uv_loop_t loop;
    struct ar_etcd_settings st;
    struct ar_etcd *c;
    struct ar_member_alive *a1, *a2;
    int reg = 0;
    struct lst ls = {0};
    char key[64];
    bool stopped = false;

    assert_int_equal(ar_member_key(key, sizeof(key), NULL, "alive", "cp-1"), 0);
    assert_string_equal(key, "/atrest/alive/cp-1");
    assert_int_equal(ar_member_key(key, sizeof(key), "/x/", "members", "a/b"), -EINVAL);
    assert_int_equal(ar_member_key(key, 8, NULL, "members", "cp-1"), -ENAMETOOLONG);

    uv_loop_init(&loop);
    etcd_harness_settings(&H, &st);
    assert_int_equal(ar_etcd_new(&loop, &st, &c), 0);
    assert_int_equal(ar_member_register(c, "/m/", "cp-1", "{\"since\":1}", on_reg, &reg), 0);
    etcd_harness_run_for(&loop, 300);
    assert_int_equal(reg, 1);
    assert_int_equal(ar_member_register(c, "/m/", "cp-2", "{\"since\":2}", on_reg, &reg), 0);
    assert_int_equal(
        ar_member_alive_start(c, "/m/", "cp-1", TTL, "{\"fp\":\"aa\"}", NULL, NULL, &a1), 0);
    assert_int_equal(
        ar_member_alive_start(c, "/m/", "cp-3", TTL, "{\"fp\":\"cc\"}", NULL, NULL, &a2), 0);
    etcd_harness_run_for(&loop, 400);
    assert_true(ar_member_alive_ok(a1));
    assert_int_equal(ar_member_alive_update(a1, "{\"fp\":\"bb\"}"), 0);
    etcd_harness_run_for(&loop, TTL * 1000 + 500); /* the liveness keys outlive their TTL */

    assert_int_equal(ar_member_list(c, "/m/", on_list, &ls), 0);
    assert_true(etcd_harness_run_until(&loop, &ls.done, 3000));
    assert_int_equal(ls.status, 0);
    assert_int_equal(ls.l->n, 3);
    assert_string_equal(ls.l->m[0].node, "cp-1");
    assert_string_equal(ls.l->m[0].registration, "{\"since\":1}");
    assert_string_equal(ls.l->m[0].report, "{\"fp\":\"bb\"}");
    assert_string_equal(ls.l->m[1].node, "cp-2");
    assert_null(ls.l->m[1].report); /* registered, not alive */
    assert_string_equal(ls.l->m[2].node, "cp-3");
    assert_null(ls.l->m[2].registration); /* alive, not registered */
    ar_member_list_free(ls.l);

    /* stopping revokes the lease: the alive key goes, the registration stays */
    ar_member_alive_stop(a1, resign_done, &stopped);
    assert_true(etcd_harness_run_until(&loop, &stopped, 3000));
    ar_member_alive_stop(a2, NULL, NULL);
    etcd_harness_run_for(&loop, 200);
    memset(&ls, 0, sizeof(ls));
    assert_int_equal(ar_member_list(c, "/m/", on_list, &ls), 0);
    assert_true(etcd_harness_run_until(&loop, &ls.done, 3000));
    assert_int_equal(ls.l->n, 2);
    assert_null(ls.l->m[0].report);
    assert_string_equal(ls.l->m[0].registration, "{\"since\":1}");
    ar_member_list_free(ls.l);
    ar_etcd_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* --- session ----------------------------------------------------------------------------- */

struct sess_obs {
    int granted, lost, lost_status;
    int64_t lease, lost_lease;
};

static void on_sess(void *arg, const struct ar_session_update *u)
{
    struct sess_obs *o = arg;

    if (u->kind == AR_SESSION_GRANTED) {
        o->granted++;
        o->lease = u->lease;
    } else if (u->kind == AR_SESSION_LOST) {
        o->lost++;
        o->lost_status = u->status;
        o->lost_lease = u->lease;
    }
}

static int64_t key_lease(const char *key)
{
    struct ar_etcd_op op = {.key = (const uint8_t *)key, .key_len = strlen(key)};
    struct ar_etcd_result *r;
    int64_t l = -1;

    assert_int_equal(ar_etcd_sync_range(S, &op, &r, NULL), 0);
    if (r->n_kvs == 1)
        l = r->kvs[0].lease;
    ar_etcd_result_free(r);
    return l;
}

static bool both_on(int64_t lease)
{
    return key_lease("/s/alive/n1") == lease && key_lease("/s/leader") == lease;
}

/* One lease for the liveness key and the leader key; a lease revoked behind the agent's back is
 * noticed (keepalive: lease gone), the leader steps down, both keys come back on ONE new lease
 * and the node leads again; closing the session revokes it and both keys go. */
static void test_session_shared(void **state)
{
    uv_loop_t loop;
    struct ar_etcd_settings st;
    struct ar_etcd *c;
    struct ar_session *s;
    struct ar_session_settings ss = {.ttl_s = 3};
    struct sess_obs so = {0};
    struct obs o = {0};
    struct ar_election_settings es = {.key = "/s/leader", .value = "n1"};
    struct ar_election *e;
    struct ar_member_alive *al;
    struct ar_etcd_error err;
    bool closed = false;
    int64_t first;

    uv_loop_init(&loop);
    etcd_harness_settings(&H, &st);
    assert_int_equal(ar_etcd_new(&loop, &st, &c), 0);
    assert_int_equal(ar_session_new(c, &ss, &s), 0);
    assert_int_equal(ar_session_listen(s, on_sess, &so), 0);
    es.session = s;
    assert_int_equal(ar_election_start(c, &es, on_state, &o, &e), 0);
    assert_int_equal(ar_member_alive_start_on(s, "/s/", "n1", "{}", NULL, NULL, &al), 0);
    assert_true(etcd_harness_run_until(&loop, &o.leader, 3000));
    etcd_harness_run_for(&loop, 200);
    assert_int_equal(so.granted, 1);
    first = ar_session_lease(s);
    assert_true(first != 0);
    assert_int_equal(so.lease, first);
    assert_true(both_on(first));
    assert_true(ar_session_alive(s, ar_etcd_now_ms()));
    assert_true(ar_election_deadline(e) > ar_etcd_now_ms());

    /* an operator revokes the lease: both keys go; the session learns it at the next
     * keepalive (every ttl/3 = 1 s), tells LOST, and grants once more */
    assert_int_equal(ar_etcd_sync_lease_revoke(S, first, &err), 0);
    assert_true(run_until_stepped_down(&loop, &o, 3000)); /* the watch sees the key go */
    for (int i = 0; i < 300 && !so.lost; i++)
        etcd_harness_run_for(&loop, 10);
    assert_int_equal(so.lost, 1);
    assert_int_equal(so.lost_status, -ENOENT);
    assert_int_equal(so.lost_lease, first);
    assert_true(etcd_harness_run_until(&loop, &o.leader, 3000));
    etcd_harness_run_for(&loop, 200);
    assert_int_equal(so.granted, 2);
    assert_true(ar_session_lease(s) != first);
    assert_true(both_on(ar_session_lease(s)));

    /* shut down as the agent does: resign (the leader key goes), stop the liveness key, revoke */
    ar_election_resign(e, resign_done, &closed);
    assert_true(etcd_harness_run_until(&loop, &closed, 3000));
    assert_int_equal(key_lease("/s/leader"), -1);
    ar_member_alive_stop(al, NULL, NULL);
    etcd_harness_run_for(&loop, 200);
    assert_int_equal(key_lease("/s/alive/n1"), -1);
    closed = false;
    ar_session_close(s, resign_done, &closed);
    assert_true(etcd_harness_run_until(&loop, &closed, 3000));
    ar_election_free(e);
    ar_etcd_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* --- CAS ---------------------------------------------------------------------------------- */

struct casctx {
    int done, status;
    unsigned retries;
    char msg[256];
    int interfere; /* writes to do behind the CAS's back, from inside change() */
};

static int incr(void *arg, const json_t *cur, json_t **out)
{
    struct casctx *x = arg;
    json_int_t n = cur ? json_integer_value(json_object_get(cur, "n")) : 0;

    if (x->interfere > 0) {
        struct ar_etcd_op op = {.key = (const uint8_t *)"/cas/rec",
                                .key_len = 8,
                                .value = (const uint8_t *)"{\"n\":100}",
                                .value_len = 9};

        x->interfere--;
        assert_int_equal(ar_etcd_sync_put(S, &op, NULL, NULL), 0);
    }
    *out = json_pack("{s:I}", "n", n + 1);
    return 0;
}

static void cas_done(void *arg, int status, int64_t rev, unsigned retries, const struct ar_err *err)
{
    struct casctx *x = arg;

    x->done++;
    x->status = status;
    x->retries = retries;
    snprintf(x->msg, sizeof(x->msg), "%s", err ? err->msg : "");
}

static void test_cas(void **state)
{
    uv_loop_t loop;
    struct ar_etcd_settings st;
    struct ar_etcd *c;
    struct casctx x = {0};
    struct ar_etcd_op op = {.key = (const uint8_t *)"/cas/rec", .key_len = 8};
    struct ar_etcd_result *r;

    uv_loop_init(&loop);
    etcd_harness_settings(&H, &st);
    assert_int_equal(ar_etcd_new(&loop, &st, &c), 0);

    /* absent -> created */
    assert_int_equal(ar_cas_json(c, "/cas/rec", incr, cas_done, &x, 3), 0);
    etcd_harness_run_for(&loop, 300);
    assert_int_equal(x.done, 1);
    assert_int_equal(x.status, 0);
    assert_int_equal(x.retries, 0);

    /* one conflicting write: retried on the fresh value */
    x = (struct casctx){.interfere = 1};
    assert_int_equal(ar_cas_json(c, "/cas/rec", incr, cas_done, &x, 3), 0);
    etcd_harness_run_for(&loop, 300);
    assert_int_equal(x.status, 0);
    assert_int_equal(x.retries, 1);
    assert_int_equal(ar_etcd_sync_range(S, &op, &r, NULL), 0);
    assert_string_equal((char *)r->kvs[0].value, "{\"n\":101}");
    ar_etcd_result_free(r);

    /* always conflicting: bounded */
    x = (struct casctx){.interfere = 100};
    assert_int_equal(ar_cas_json(c, "/cas/rec", incr, cas_done, &x, 2), 0);
    etcd_harness_run_for(&loop, 500);
    assert_int_equal(x.done, 1);
    assert_int_equal(x.status, -EAGAIN);
    assert_int_equal(x.retries, 2);
    ar_etcd_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void read_rec(const char *key, char *out, size_t outsz)
{
    struct ar_etcd_op op = {.key = (const uint8_t *)key, .key_len = strlen(key)};
    struct ar_etcd_result *r;

    assert_int_equal(ar_etcd_sync_range(S, &op, &r, NULL), 0);
    assert_int_equal(r->n_kvs, 1);
    snprintf(out, outsz, "%s", (const char *)r->kvs[0].value);
    ar_etcd_result_free(r);
}

/* S7 through the CAS: the leader guard rides along as an extra compare; a record that moved is
 * retried (then -EAGAIN), a guard that no longer holds is -EPERM at once, even when the record
 * moved too. The record key is /cas/rec (incr's interference writes there). */
static void test_cas_guard(void **state)
{
    uv_loop_t loop;
    struct ar_etcd_settings st;
    struct ar_etcd *c;
    struct obs o = {0};
    struct ar_election_settings es = {.key = "/cg/leader", .value = "A", .ttl_s = 5};
    struct ar_election *e;
    struct ar_etcd_compare g;
    struct ar_etcd_op del = {.key = (const uint8_t *)"/cg/leader", .key_len = 10};
    struct ar_etcd_op clr = {.key = (const uint8_t *)"/cas/rec", .key_len = 8};
    struct casctx x = {0};
    char v[64], want[256];

    uv_loop_init(&loop);
    etcd_harness_settings(&H, &st);
    assert_int_equal(ar_etcd_new(&loop, &st, &c), 0);
    assert_int_equal(ar_etcd_sync_delete(S, &clr, NULL, NULL), 0);
    assert_int_equal(ar_election_start(c, &es, on_state, &o, &e), 0);
    assert_true(etcd_harness_run_until(&loop, &o.leader, 3000));
    assert_int_equal(ar_election_guard(e, &g), 0);

    /* the guard holds: written */
    assert_int_equal(ar_cas_json_guarded(c, "/cas/rec", &g, 1, incr, cas_done, &x, 3), 0);
    etcd_harness_run_for(&loop, 300);
    assert_int_equal(x.done, 1);
    assert_int_equal(x.status, 0);
    assert_int_equal(x.retries, 0);
    read_rec("/cas/rec", v, sizeof(v));
    assert_string_equal(v, "{\"n\":1}");

    /* the record moves once, the guard holds: a conflict, retried */
    x = (struct casctx){.interfere = 1};
    assert_int_equal(ar_cas_json_guarded(c, "/cas/rec", &g, 1, incr, cas_done, &x, 3), 0);
    etcd_harness_run_for(&loop, 300);
    assert_int_equal(x.status, 0);
    assert_int_equal(x.retries, 1);
    read_rec("/cas/rec", v, sizeof(v));
    assert_string_equal(v, "{\"n\":101}");

    /* the record always moves: -EAGAIN after max_retries */
    x = (struct casctx){.interfere = 100};
    assert_int_equal(ar_cas_json_guarded(c, "/cas/rec", &g, 1, incr, cas_done, &x, 2), 0);
    etcd_harness_run_for(&loop, 500);
    assert_int_equal(x.done, 1);
    assert_int_equal(x.status, -EAGAIN);
    assert_int_equal(x.retries, 2);
    assert_string_equal(x.msg, "cas /cas/rec: still conflicting after 2 retries");

    /* an operator deletes the leader key: the old term's guard fails: -EPERM, nothing written,
     * never retried; also when the record moved in the same round */
    assert_int_equal(ar_etcd_sync_delete(S, &del, NULL, NULL), 0);
    for (int interfere = 0; interfere <= 1; interfere++) {
        read_rec("/cas/rec", want, sizeof(want));
        x = (struct casctx){.interfere = interfere};
        assert_int_equal(ar_cas_json_guarded(c, "/cas/rec", &g, 1, incr, cas_done, &x, 3), 0);
        etcd_harness_run_for(&loop, 300);
        assert_int_equal(x.done, 1);
        assert_int_equal(x.status, -EPERM);
        assert_int_equal(x.retries, 0);
        assert_non_null(strstr(x.msg, "cas /cas/rec: guard 0 (/cg/leader) failed at revision "));
        read_rec("/cas/rec", v, sizeof(v));
        if (interfere)
            assert_string_equal(v, "{\"n\":100}"); /* only the interfering write landed */
        else
            assert_string_equal(v, want);
    }
    assert_int_equal(
        ar_cas_json_guarded(c, "/cas/rec", &g, AR_CAS_MAX_GUARD + 1, incr, cas_done, &x, 3),
        -EINVAL);
    ar_election_free(e);
    ar_etcd_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* etcd's compare semantics, as the CAS evaluates them on what a failed txn read. */
static void test_cas_compare_holds(void **state)
{
    struct ar_etcd_kv kv = {.value = (uint8_t *)"abc",
                            .value_len = 3,
                            .create_revision = 5,
                            .mod_revision = 9,
                            .version = 2};
    struct ar_etcd_compare g = {.key = (const uint8_t *)"k", .key_len = 1};

    g.target = AR_ETCD_CMP_CREATE;
    g.result = AR_ETCD_EQUAL;
    g.number = 5;
    assert_true(ar_cas_compare_holds(&g, &kv));
    assert_false(ar_cas_compare_holds(&g, NULL)); /* absent: create_revision 0 */
    g.number = 0;
    assert_true(ar_cas_compare_holds(&g, NULL));
    g.target = AR_ETCD_CMP_MOD;
    g.result = AR_ETCD_LESS;
    g.number = 10;
    assert_true(ar_cas_compare_holds(&g, &kv));
    g.number = 9;
    assert_false(ar_cas_compare_holds(&g, &kv));
    g.target = AR_ETCD_CMP_VERSION;
    g.result = AR_ETCD_GREATER;
    g.number = 1;
    assert_true(ar_cas_compare_holds(&g, &kv));
    g.result = AR_ETCD_NOT_EQUAL;
    g.number = 2;
    assert_false(ar_cas_compare_holds(&g, &kv));
    g.target = AR_ETCD_CMP_VALUE;
    g.result = AR_ETCD_EQUAL;
    g.value = (const uint8_t *)"abc";
    g.value_len = 3;
    assert_true(ar_cas_compare_holds(&g, &kv));
    assert_false(ar_cas_compare_holds(&g, NULL)); /* absent: every VALUE compare fails */
    g.result = AR_ETCD_NOT_EQUAL;
    assert_false(ar_cas_compare_holds(&g, NULL));
    g.value_len = 2; /* "ab" < "abc" */
    g.result = AR_ETCD_GREATER;
    assert_true(ar_cas_compare_holds(&g, &kv));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_election_observe_and_deadline),
        cmocka_unit_test(test_election_guard_and_operator_delete),
        cmocka_unit_test(test_membership),
        cmocka_unit_test(test_session_shared),
        cmocka_unit_test(test_cas),
        cmocka_unit_test(test_cas_guard),
        cmocka_unit_test(test_cas_compare_holds),
        cmocka_unit_test(test_election_three_contenders),
    };

    return cmocka_run_group_tests_name("etcd_coord", tests, group_setup, group_teardown);
}
