/*
 * agent/coordglue.c: the daemon's etcd side (DESIGN 4.3, 4.4), behind ar_coord_start,
 * ar_coord_publish and ar_coord_stop (agent/daemon_int.h):
 * - members/<node>: registration (persistent), read then written so first_seen_ms survives
 *   restarts; the rest starts once it is in place, and is retried every COORD_TICK_MS.
 * - alive/<node>: lease-bound report of this node's fingerprints (never key material),
 *   rewritten whenever they change (ar_coord_publish).
 * - leader: the election (value = node name); whether this node leads is read live from the
 *   lease deadline (ar_state_is_leader -> coord_leading).
 * - the member list for /status: every COORD_TICK_MS, and COORD_SOON_MS after a change under
 *   alive/ (watch).
 * - one lease session (coord/session.h) carries alive/<node> and the leader key.
 * - the rotation (coord/rotation.h) once registered: it drives this node's effective file through
 *   the node ops (agent/daemon.c); its status is /status "rotation", its events one log line
 *   each and the atrest_rotation_* / atrest_proof_* metrics.
 * - shutdown: resign, delete alive/<node> and revoke the session's lease, bounded by
 *   COORD_STOP_MS, then close.
 * Every answer counts in atrest_etcd_requests_total{op=register|alive|list|election|watch}.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>
#include <uv.h>

#include "agent/daemon_int.h"
#include "agent/effective.h"
#include "agent/log.h"
#include "agent/proof.h"
#include "agent/reencrypt_api.h"
#include "agent/reencrypt_svm.h"
#include "coord/election.h"
#include "coord/err.h"
#include "coord/etcd/etcd.h"
#include "coord/member.h"
#include "coord/report.h"
#include "coord/rotation.h"
#include "coord/session.h"

struct coord {
    struct agent *a;
    struct ar_etcd *etcd;
    uv_timer_t tick;            /* registration retry / member list */
    uv_timer_t stop_timer;      /* bounds the clean shutdown, then finishes it */
    int handles;                /* open timers; freed when both closed */
    struct ar_session *session; /* the one lease: alive/<node> and the leader key */
    struct ar_member_alive *alive;
    struct ar_election *election;
    struct ar_etcd_watch *watch; /* <prefix>alive/ */
    struct ar_rotation *rotation;
    char rot_phase[16]; /* last phase logged */
    char *report_key;   /* the last report sent, without its time */
    char *leader;       /* last observed leader (to log changes) */
    bool was_leader;
    bool registering, registered, listing, list_again;
    bool closing, finished;
    int stop_pending; /* resign, alive delete and lease revoke still running */
};

#define COORD_SOON_MS 100
#define COORD_STOP_MS 3000

static void coord_tick(uv_timer_t *t);

static void count_op(struct agent *a, const char *op, int status)
{
    ar_metrics_etcd_request(a->metrics, op,
                            status == 0            ? "ok"
                            : status == -ETIMEDOUT ? "timeout"
                                                   : "error");
}

static void etcd_ok(struct agent *a)
{
    if (a->st.etcd != AR_ETCD_CONNECTED)
        log_info("etcd: connected");
    a->st.etcd = AR_ETCD_CONNECTED;
    a->st.etcd_last_ok_ms = ar_agent_now_ms();
    ar_state_set_str(&a->st.etcd_error, NULL);
}

/* etcd failed: the status shows "<what>: <why> (<endpoint>)". */
static void etcd_failed_err(struct agent *a, const char *what, const struct ar_err *e)
{
    char line[400], msg[512];

    snprintf(msg, sizeof(msg), "%s: %s", what, ar_err_line(e, line, sizeof(line)));
    if (a->st.etcd != AR_ETCD_UNREACHABLE)
        log_warn("etcd: unreachable (%s); retrying", msg);
    else
        log_debug("etcd: still unreachable (%s)", msg);
    a->st.etcd = AR_ETCD_UNREACHABLE;
    ar_state_set_str(&a->st.etcd_error, msg);
}

static void etcd_failed(struct agent *a, const char *what, int status,
                        const struct ar_etcd_error *err)
{
    struct ar_err e;

    ar_err_from_etcd(&e, NULL, status, err);
    etcd_failed_err(a, what, &e);
}

static bool coord_leading(void *arg)
{
    struct agent *a = arg;
    struct coord *co = a->coord;
    return co && !co->closing && co->election &&
           ar_election_is_leader(co->election, ar_etcd_now_ms());
}

/* This node's report: fingerprints only (S5). with_time: add time_ms (the copy sent). */
static char *coord_report(struct agent *a, bool with_time)
{
    struct ar_report r = {.desired_valid = a->st.desired_valid, .time_ms = ar_agent_now_ms()};
    char *s;

    _Static_assert(AR_HASH_STRLEN == AR_REPORT_FP_LEN, "fingerprint text lengths");
    snprintf(r.node, sizeof(r.node), "%s", a->set.node);
    snprintf(r.version, sizeof(r.version), "%s", ATREST_VERSION);
    if (a->st.desired) {
        ar_config_fingerprint_str(a->st.desired, r.desired_fp);
        r.desired_since_ms = a->st.desired_changed_ms > 0 ? a->st.desired_changed_ms : 0;
    }
    if (a->st.effective) {
        ar_config_fingerprint_str(a->st.effective, r.effective_fp);
        ar_config_file_hash_str(a->st.effective, r.effective_hash);
    }
    if (a->coord && a->coord->rotation)
        snprintf(r.error, sizeof(r.error), "%s", ar_rotation_member_error(a->coord->rotation));
    if (ar_report_build(&r, with_time, &s) < 0)
        return NULL;
    return s;
}

/* The fingerprints may have changed: rewrite alive/<node> when they did. */
void ar_coord_publish(struct agent *a)
{
    struct coord *co = a->coord;
    char *key, *rep;

    if (!co || co->closing || !co->alive)
        return;
    key = coord_report(a, false);
    if (!key || (co->report_key && !strcmp(key, co->report_key))) {
        free(key);
        return;
    }
    rep = coord_report(a, true);
    if (rep && ar_member_alive_update(co->alive, rep) == 0) {
        free(co->report_key);
        co->report_key = key;
        key = NULL;
        log_debug("etcd: alive/%s report updated", a->set.node);
    }
    free(rep);
    free(key);
    ar_rotation_poke(co->rotation);
}

const char *ar_coord_first_install_wait(struct agent *a, char *buf, size_t n)
{
    struct coord *co = a->coord;
    bool known = co && co->rotation && ar_rotation_known(co->rotation);

    if (known && ar_rotation_active(co->rotation)) {
        snprintf(buf, n,
                 "the first install waits for the running rotation to end (phase %s): the "
                 "other API servers do not use the desired config yet",
                 ar_rotation_phase(co->rotation));
        return buf;
    }
    if (!known && !a->first_look_over) {
        snprintf(buf, n, "the first install waits for etcd (is a rotation running?), at most %u s",
                 AR_FIRST_LOOK_MS / 1000);
        return buf;
    }
    return NULL;
}

void ar_coord_desired_changed(struct agent *a)
{
    ar_coord_publish(a);
    if (a->coord)
        ar_rotation_poke(a->coord->rotation);
}

/* ---- the rotation ---------------------------------------------------------------------------- */

static void on_rotation_event(void *arg, const struct ar_rotation_event *ev)
{
    struct agent *a = arg;

    switch (ev->kind) {
    case AR_ROT_EV_TRANSITION:
        log_info("rotation %s: %s (recorded by this leader)", ev->id, ev->phase);
        ar_metrics_rotation_transition(a->metrics, ev->phase);
        break;
    case AR_ROT_EV_ACK:
        log_info("rotation %s: acked phase %s (proof %s)", ev->id, ev->phase, ev->proof);
        ar_metrics_rotation_ack(a->metrics, ev->phase);
        break;
    case AR_ROT_EV_PROOF:
        if (!ev->ok)
            log_warn("rotation %s: proof of phase %s failed; trying again", ev->id, ev->phase);
        ar_metrics_proof_result(a->metrics, ev->proof, ev->ok);
        break;
    }
}

static void on_rotation_status(void *arg)
{
    struct agent *a = arg;
    struct coord *co = a->coord;
    const char *phase;
    json_t *st, *re;

    if (!co || !co->rotation)
        return;
    if (a->first_install_waits) { /* look again only when the reason to wait changed */
        char why[256];
        const char *w = ar_coord_first_install_wait(a, why, sizeof(why));

        if (!w || strcmp(w, a->first_wait_why))
            ar_agent_first_install(a);
    }
    ar_coord_publish(a); /* this member's error travels in its report (sent only on change) */
    phase = ar_rotation_phase(co->rotation);
    if (strcmp(phase, co->rot_phase)) {
        st = ar_rotation_status_json(co->rotation);
        log_info("rotation: phase %s%s%s", phase,
                 st && json_string_length(json_object_get(st, "waiting_for")) ? "; " : "",
                 st ? json_string_value(json_object_get(st, "waiting_for")) : "");
        json_decref(st);
        snprintf(co->rot_phase, sizeof(co->rot_phase), "%s", phase);
        ar_metrics_rotation_phase(a->metrics, phase);
    }
    if (!strcmp(phase, "reencrypt") && ar_state_is_leader(&a->st) &&
        (st = ar_rotation_status_json(co->rotation))) {
        re = json_object_get(st, "reencrypt");
        ar_metrics_reencrypt(a->metrics, json_integer_value(json_object_get(re, "done")),
                             json_integer_value(json_object_get(re, "total")),
                             json_integer_value(json_object_get(re, "skipped")),
                             json_integer_value(json_object_get(re, "conflicts")));
        json_decref(st);
    }
}

/* The rotation's status plus this node's proof of load ("proof": what it waits for). */
static struct json_t *rotation_status(void *arg)
{
    struct agent *a = arg;
    struct ar_proof_progress pg;
    json_t *st;

    if (!a->coord || !a->coord->rotation)
        return NULL;
    st = ar_rotation_status_json(a->coord->rotation);
    if (!st)
        return NULL;
    if (!a->proof) {
        json_object_set_new(st, "proof",
                            json_pack("{s:b,s:s}", "running", 0, "unavailable", a->proof_err));
        return st;
    }
    ar_proof_status(a->proof, &pg);
    json_object_set_new(st, "proof",
                        json_pack("{s:b,s:s,s:i,s:b,s:s}", "running", pg.running, "waiting_for",
                                  pg.waiting_for, "waited_seconds", (json_int_t)pg.waited_s,
                                  "stuck", pg.stuck, "last_error", pg.last_error));
    return st;
}

/* The rotation's re-encrypt op (coord/node.h): reencrypt.mode from the settings in force. */
static enum ar_node_reenc_mode reenc_mode(void *agent, double *rate_limit)
{
    struct agent *a = agent;

    *rate_limit = a->set.reencrypt_rate;
    return a->set.reencrypt_mode == AR_REENCRYPT_API   ? AR_NODE_REENC_API
           : a->set.reencrypt_mode == AR_REENCRYPT_SVM ? AR_NODE_REENC_SVM
                                                       : AR_NODE_REENC_ETCD;
}

/* One pass through the API server: logs its result, then hands it to the rotation. */
struct reenc_ctx {
    struct ar_reapi *pass; /* mode api */
    struct ar_resvm *svm;  /* mode svm */
    ar_reencrypt_progress_cb progress;
    ar_reencrypt_done_cb done;
    void *arg;
    char id[64];
};

static void reenc_progress(void *arg, const struct ar_reencrypt_progress *p)
{
    struct reenc_ctx *x = arg;

    if (x->progress)
        x->progress(x->arg, p);
}

static void reenc_done(void *arg, int status, const struct ar_reencrypt_progress *p,
                       const struct ar_err *err)
{
    struct reenc_ctx *x = arg;
    char line[512];

    if (status == 0)
        log_info("rotation %s: re-encrypt through the API server done: total %llu, rewritten "
                 "%llu, skipped %llu, conflicts %llu, failed %llu%s%s",
                 x->id, (unsigned long long)p->done, (unsigned long long)p->rewritten,
                 (unsigned long long)p->skipped, (unsigned long long)p->conflicts,
                 (unsigned long long)p->failed, p->failed ? "; first: " : "",
                 p->failed ? p->first_failed : "");
    else
        log_warn("rotation %s: re-encrypt through the API server failed after %llu objects: %s",
                 x->id, (unsigned long long)p->done, ar_err_line(err, line, sizeof(line)));
    x->done(x->arg, status, p, err);
    free(x);
}

static int reenc_start(void *agent, const struct ar_node_reenc_req *req,
                       ar_reencrypt_progress_cb progress, ar_reencrypt_done_cb done, void *arg,
                       void **handle)
{
    struct agent *a = agent;
    struct reenc_ctx *x;
    char err[256];
    int r;

    if (a->set.reencrypt_mode == AR_REENCRYPT_ETCD)
        return -EOPNOTSUPP;
    x = calloc(1, sizeof(*x));
    if (!x)
        return -ENOMEM;
    x->progress = progress;
    x->done = done;
    x->arg = arg;
    snprintf(x->id, sizeof(x->id), "%s", req->rotation_id);
    if (a->set.reencrypt_mode == AR_REENCRYPT_SVM)
        r = ar_resvm_start(&a->loop, &a->set, req, 0, 0, reenc_progress, reenc_done, x, &x->svm,
                           err, sizeof(err));
    else
        r = ar_reapi_start(&a->loop, &a->set, req, NULL, reenc_progress, reenc_done, x, &x->pass,
                           err, sizeof(err));
    if (r < 0) {
        log_err("rotation %s: re-encrypt (mode %s) cannot start: %s", req->rotation_id,
                ar_reencrypt_mode_name(a->set.reencrypt_mode), err[0] ? err : strerror(-r));
        free(x);
        return r;
    }
    log_info("rotation %s: re-encrypting %zu resource%s through the local API server (mode %s)%s",
             req->rotation_id, req->nselectors, req->nselectors == 1 ? "" : "s",
             ar_reencrypt_mode_name(a->set.reencrypt_mode),
             req->rate_limit > 0 && a->set.reencrypt_mode == AR_REENCRYPT_API ? ", rate limited"
                                                                              : "");
    *handle = x;
    return 0;
}

static void reenc_stop(void *agent, void *handle)
{
    struct reenc_ctx *x = handle;

    (void)agent;
    if (x->svm)
        ar_resvm_stop(x->svm);
    else
        ar_reapi_stop(x->pass);
    free(x);
}

static void coord_rotation_start(struct coord *co)
{
    struct agent *a = co->a;
    struct ar_node_ops ops = *ar_agent_node_ops();
    struct ar_rotation_settings rs = {.prefix = a->set.coord_prefix,
                                      .node = a->set.node,
                                      .etcd_prefix = a->set.api_etcd_prefix,
                                      .settle_ms = a->set.settle_s * 1000u,
                                      .tick_ms = 1000};
    int r;

    ops.reencrypt_mode = reenc_mode;
    ops.reencrypt = reenc_start;
    ops.reencrypt_stop = reenc_stop;
    r = ar_rotation_new(co->etcd, &rs, &ops, a, on_rotation_event, on_rotation_status,
                        &co->rotation);

    if (r < 0) {
        log_err("rotation: cannot start: %s (nothing is rotated)", strerror(-r));
        return;
    }
    ar_rotation_set_election(co->rotation, co->election);
    a->st.rotation_status = rotation_status;
    a->st.rotation_arg = a;
    ar_metrics_rotation_phase(a->metrics, "idle");
    snprintf(co->rot_phase, sizeof(co->rot_phase), "idle");
}

static void on_alive_write(void *arg, int status, const struct ar_etcd_result *res,
                           const struct ar_etcd_error *err)
{
    struct coord *co = arg;
    struct agent *a = co->a;

    if (co->closing || status == -ECANCELED)
        return;
    count_op(a, "alive", status);
    if (status == -ENOENT) {
        log_warn("etcd: the lease of alive/%s expired; re-creating it on a new lease", a->set.node);
        return;
    }
    if (status < 0) {
        etcd_failed(a, "writing alive/", status, err);
        return;
    }
    etcd_ok(a);
}

static void on_election(void *arg, const struct ar_election_state *st)
{
    struct coord *co = arg;
    struct agent *a = co->a;

    if (co->closing)
        return;
    count_op(a, "election", st->status);
    if (st->status < 0 && st->status != -ECANCELED)
        etcd_failed_err(a, "election", st->err);
    else if (st->status == 0)
        etcd_ok(a);
    if (!ar_agent_str_eq(st->leader, co->leader)) {
        if (st->leader)
            log_info("election: %s leads", st->leader);
        else
            log_info("election: nobody leads");
        ar_state_set_str(&co->leader, st->leader);
        ar_state_set_str(&a->st.leader, st->leader);
    }
    if (st->is_leader != co->was_leader) {
        co->was_leader = st->is_leader;
        if (st->is_leader)
            log_info("election: this node (%s) leads", a->set.node);
        else
            log_warn("election: this node (%s) no longer leads%s%s", a->set.node,
                     st->err && st->err->msg[0] ? ": " : "",
                     st->err && st->err->msg[0] ? st->err->msg : "");
    }
    ar_metric_gauge_set(a->metrics, M_LEADER, M_LEADER_HELP, ar_state_is_leader(&a->st) ? 1 : 0,
                        NULL);
}

/* The member list: soon (after a change), then every COORD_TICK_MS again. */
static void coord_list_soon(struct coord *co)
{
    if (co->listing)
        co->list_again = true;
    else if (!co->closing)
        uv_timer_start(&co->tick, coord_tick, COORD_SOON_MS, COORD_TICK_MS);
}

static void on_alive_watch(void *arg, const struct ar_etcd_watch_update *u)
{
    struct coord *co = arg;

    if (co->closing)
        return;
    switch (u->kind) {
    case AR_ETCD_WATCH_CREATED: /* (re)established: catch up */
    case AR_ETCD_WATCH_EVENTS:
        coord_list_soon(co);
        break;
    case AR_ETCD_WATCH_COMPACTED: /* finished: the tick starts a new one */
        ar_etcd_watch_stop(co->watch);
        co->watch = NULL;
        coord_list_soon(co);
        break;
    case AR_ETCD_WATCH_ERROR: /* it reconnects on its own */
        count_op(co->a, "watch", u->status);
        break;
    }
}

static void coord_watch(struct coord *co)
{
    char p[512];
    uint8_t end[512];
    struct ar_etcd_watch_opts o = {0};
    int r;

    snprintf(p, sizeof(p), "%salive/", co->a->set.coord_prefix);
    o.key = (const uint8_t *)p;
    o.key_len = strlen(p);
    o.range_end = end;
    o.range_end_len = ar_etcd_prefix_end(o.key, o.key_len, end);
    r = ar_etcd_watch_start(co->etcd, &o, on_alive_watch, co, &co->watch);
    if (r < 0) {
        co->watch = NULL;
        log_warn("etcd: cannot watch %s: %s (the member list is read every %d s)", p, strerror(-r),
                 COORD_TICK_MS / 1000);
    }
}

static char *opt_strdup(const char *s)
{
    return s[0] ? strdup(s) : NULL;
}

/* One member of the list -> state (the report is another agent's JSON: coord/report.c trusts
 * nothing; a record it refuses counts as alive without fingerprints). */
static void member_from_info(struct ar_state_member *e, const struct ar_member_info *in)
{
    struct ar_report r;
    struct ar_registration g;

    e->node = strdup(in->node);
    e->registered = in->registration != NULL;
    e->alive = in->report != NULL;
    if (in->report && ar_report_parse(in->report, strlen(in->report), &r) == 0) {
        e->desired_fp = opt_strdup(r.desired_fp);
        e->desired_valid = r.desired_valid;
        e->effective_fp = opt_strdup(r.effective_fp);
        e->effective_hash = opt_strdup(r.effective_hash);
        e->version = opt_strdup(r.version);
        e->reported_ms = r.time_ms;
    }
    if (!e->version && in->registration &&
        ar_registration_parse(in->registration, strlen(in->registration), &g) == 0)
        e->version = opt_strdup(g.version);
}

static void on_list(void *arg, int status, struct ar_member_list *l,
                    const struct ar_etcd_error *err)
{
    struct coord *co = arg;
    struct agent *a = co->a;
    struct ar_state_member *m = NULL;
    size_t n = 0, alive = 0, registered = 0;

    co->listing = false;
    if (co->closing || status == -ECANCELED)
        goto out;
    count_op(a, "list", status);
    if (status < 0 || !l) {
        etcd_failed(a, "listing members", status < 0 ? status : -EPROTO, err);
        goto out;
    }
    etcd_ok(a);
    m = l->n ? calloc(l->n, sizeof(*m)) : NULL;
    for (size_t i = 0; m && i < l->n; i++) {
        member_from_info(&m[i], &l->m[i]);
        n = i + 1;
        if (!m[i].node) {
            ar_state_members_free(m, n);
            m = NULL;
            break;
        }
        alive += m[i].alive;
        registered += m[i].registered;
    }
    if (l->n && !m)
        goto out; /* out of memory: keep the previous list */
    ar_state_set_members(&a->st, m, n);
    ar_metric_gauge_set(a->metrics, M_MEMBERS, M_MEMBERS_HELP, (double)alive, "state", "alive",
                        NULL);
    ar_metric_gauge_set(a->metrics, M_MEMBERS, M_MEMBERS_HELP, (double)registered, "state",
                        "registered", NULL);
    if (co->list_again) {
        co->list_again = false;
        coord_list_soon(co);
    }
out:
    ar_member_list_free(l);
}

/* Registration is in place: liveness, election, watch, list. */
static void coord_join(struct coord *co)
{
    struct agent *a = co->a;
    char key[512];
    char *rep = coord_report(a, true);
    struct ar_session_settings ss = {.ttl_s = a->set.lease_ttl_s};
    struct ar_election_settings es = {.key = key, .value = a->set.node};
    int r;

    co->registered = true;
    free(co->report_key);
    co->report_key = coord_report(a, false);
    r = ar_session_new(co->etcd, &ss, &co->session);
    if (r < 0) {
        log_err("etcd: cannot start the lease session: %s", strerror(-r));
        free(rep);
        return;
    }
    es.session = co->session;
    r = rep ? ar_member_alive_start_on(co->session, a->set.coord_prefix, a->set.node, rep,
                                       on_alive_write, co, &co->alive)
            : -ENOMEM;
    free(rep);
    if (r < 0)
        log_err("etcd: cannot start the liveness key: %s", strerror(-r));
    snprintf(key, sizeof(key), "%sleader", a->set.coord_prefix);
    r = ar_election_start(co->etcd, &es, on_election, co, &co->election);
    if (r < 0)
        log_err("etcd: cannot start the election: %s", strerror(-r));
    coord_watch(co);
    coord_list_soon(co);
    coord_rotation_start(co);
}

static void on_register_put(void *arg, int status, const struct ar_etcd_result *res,
                            const struct ar_etcd_error *err)
{
    struct coord *co = arg;

    co->registering = false;
    if (co->closing || status == -ECANCELED)
        return;
    count_op(co->a, "register", status);
    if (status < 0) {
        etcd_failed(co->a, "registering", status, err);
        return;
    }
    etcd_ok(co->a);
    log_info("etcd: registered member %s under %smembers/ (lease TTL %u s)", co->a->set.node,
             co->a->set.coord_prefix, co->a->set.lease_ttl_s);
    coord_join(co);
}

/* members/<node> as read: keep its first_seen_ms, then write the registration. */
static void on_register_read(void *arg, int status, const struct ar_etcd_result *res,
                             const struct ar_etcd_error *err)
{
    struct coord *co = arg;
    struct agent *a = co->a;
    struct ar_registration g = {.first_seen_ms = ar_agent_now_ms()}, old;
    char *v;
    int r;

    co->registering = false;
    if (co->closing || status == -ECANCELED)
        return;
    count_op(a, "register", status);
    if (status < 0) {
        etcd_failed(a, "registering", status, err);
        return;
    }
    if (res->n_kvs &&
        ar_registration_parse((const char *)res->kvs[0].value, res->kvs[0].value_len, &old) == 0 &&
        old.first_seen_ms > 0)
        g.first_seen_ms = old.first_seen_ms;
    snprintf(g.node, sizeof(g.node), "%s", a->set.node);
    snprintf(g.version, sizeof(g.version), "%s", ATREST_VERSION);
    g.registered_ms = ar_agent_now_ms();
    r = ar_registration_build(&g, &v);
    if (r == 0)
        r = ar_member_register(co->etcd, a->set.coord_prefix, a->set.node, v, on_register_put, co);
    free(v);
    if (r == 0)
        co->registering = true;
    else
        etcd_failed(a, "registering", r, NULL);
}

static void coord_register(struct coord *co)
{
    char key[512];
    struct ar_etcd_op op = {.type = AR_ETCD_RANGE};
    int r = ar_member_key(key, sizeof(key), co->a->set.coord_prefix, "members", co->a->set.node);

    if (r == 0) {
        op.key = (const uint8_t *)key;
        op.key_len = strlen(key);
        r = ar_etcd_range(co->etcd, &op, on_register_read, co);
    }
    if (r == 0)
        co->registering = true;
    else
        etcd_failed(co->a, "registering", r, NULL);
}

static void coord_tick(uv_timer_t *t)
{
    struct coord *co = t->data;
    int r;

    if (co->closing)
        return;
    if (!co->registered) {
        if (!co->registering)
            coord_register(co);
        return;
    }
    if (!co->watch)
        coord_watch(co);
    if (co->listing)
        return;
    r = ar_member_list(co->etcd, co->a->set.coord_prefix, on_list, co);
    if (r == 0)
        co->listing = true;
    else
        etcd_failed(co->a, "listing members", r, NULL);
}

/* A password file, read straight into locked memory (no stdio buffer), trailing newlines cut.
 * The caller sodium_free()s *out. */
static int read_secret_file(const char *path, char **out)
{
    size_t n;
    int r = ar_file_read_locked(path, 4096, out, &n);

    if (r < 0)
        return r;
    while (n && ((*out)[n - 1] == '\n' || (*out)[n - 1] == '\r'))
        (*out)[--n] = '\0';
    return 0;
}

int ar_coord_start(struct agent *a)
{
    struct ar_etcd_settings es = {0};
    struct coord *co;
    char *password = NULL;
    int r;

    if (!a->set.n_etcd_endpoints) {
        a->st.etcd = AR_ETCD_NOT_CONFIGURED;
        log_info("etcd: not configured; running standalone");
        return 0;
    }
    for (size_t i = 0; i < a->set.n_etcd_endpoints && i < AR_ETCD_MAX_ENDPOINTS; i++)
        es.endpoints[es.n_endpoints++] = a->set.etcd_endpoints[i];
    es.cacert = a->set.etcd_cafile;
    es.kv_json = a->set.etcd_json_gateway;
    es.cert = a->set.etcd_certfile;
    es.key = a->set.etcd_keyfile;
    if (a->set.etcd_user) {
        r = read_secret_file(a->set.etcd_password_file, &password);
        if (r < 0) {
            log_err("etcd: cannot read the password file %s: %s", a->set.etcd_password_file,
                    strerror(-r));
            return r;
        }
        es.username = a->set.etcd_user;
        es.password = password;
    }
    co = calloc(1, sizeof(*co));
    if (!co) {
        r = -ENOMEM;
        goto out;
    }
    co->a = a;
    r = ar_etcd_new(&a->loop, &es, &co->etcd);
    if (r < 0) {
        log_err("etcd: cannot create the client: %s", strerror(-r));
        free(co);
        goto out;
    }
    r = ar_proof_new_err(&a->loop, &a->set, co->etcd, a->set.api_etcd_prefix, &a->proof,
                         a->proof_err, sizeof(a->proof_err));
    if (r < 0) {
        a->proof = NULL;
        log_warn("proof of load: %s: a rotation will wait at its first proof until the API "
                 "server settings are fixed",
                 a->proof_err);
    }
    uv_timer_init(&a->loop, &co->tick);
    uv_timer_init(&a->loop, &co->stop_timer);
    co->tick.data = co->stop_timer.data = co;
    co->handles = 2;
    uv_timer_start(&co->tick, coord_tick, 0, COORD_TICK_MS);
    a->coord = co;
    a->st.etcd = AR_ETCD_CONNECTING;
    a->st.leading = coord_leading;
    a->st.leading_arg = a;
    ar_metric_gauge_set(a->metrics, M_LEADER, M_LEADER_HELP, 0, NULL);
    ar_metric_gauge_set(a->metrics, M_MEMBERS, M_MEMBERS_HELP, 0, "state", "alive", NULL);
    ar_metric_gauge_set(a->metrics, M_MEMBERS, M_MEMBERS_HELP, 0, "state", "registered", NULL);
    log_info("etcd: %zu endpoint%s, prefix %s", es.n_endpoints, es.n_endpoints == 1 ? "" : "s",
             a->set.coord_prefix);
    r = 0;
out:
    sodium_free(password); /* wipes */
    return r;
}

static void coord_closed(uv_handle_t *h)
{
    struct coord *co = h->data;
    if (--co->handles == 0) {
        free(co->report_key);
        free(co->leader);
        free(co);
    }
}

/* Resign/revoke finished or timed out: free the election, close the client and the timers.
 * Runs from a timer (never from an etcd callback: ar_etcd_close forbids it). */
static void coord_finish(uv_timer_t *t)
{
    struct coord *co = t->data;

    co->finished = true;
    if (co->stop_pending)
        log_warn("etcd: resign/revoke did not finish within %d ms; the leases expire on their "
                 "own",
                 COORD_STOP_MS);
    else
        log_info("etcd: resigned and revoked the liveness lease");
    ar_election_free(co->election);
    co->election = NULL;
    ar_etcd_close(co->etcd); /* pending callbacks run now with -ECANCELED */
    co->etcd = NULL;
    uv_close((uv_handle_t *)&co->tick, coord_closed);
    uv_close((uv_handle_t *)&co->stop_timer, coord_closed);
}

static void on_stop_part(void *arg)
{
    struct coord *co = arg;

    if (co->finished)
        return;
    if (--co->stop_pending == 0)
        uv_timer_start(&co->stop_timer, coord_finish, 0, 0);
}

void ar_coord_stop(struct agent *a)
{
    struct coord *co = a->coord;
    struct ar_member_alive *alive;
    struct ar_session *session;

    if (!co)
        return;
    a->coord = NULL;
    a->st.leading = NULL;
    a->st.rotation_status = NULL;
    co->closing = true;
    ar_rotation_free(co->rotation); /* its requests in flight end with the client */
    co->rotation = NULL;
    ar_proof_free(a->proof); /* after the rotation: a cancelled proof completes into nothing */
    a->proof = NULL;
    uv_timer_stop(&co->tick);
    ar_etcd_watch_stop(co->watch);
    co->watch = NULL;
    /* both at once: the others see the leader key go (and campaign) without waiting */
    co->stop_pending = 1; /* held until both are started */
    if (co->election) {
        co->stop_pending++;
        ar_election_resign(co->election, on_stop_part, co);
    }
    if ((alive = co->alive)) {
        co->alive = NULL;
        co->stop_pending++;
        ar_member_alive_stop(alive, on_stop_part, co);
    }
    if ((session = co->session)) { /* the revoke takes both keys at once */
        co->session = NULL;
        co->stop_pending++;
        ar_session_close(session, on_stop_part, co);
    }
    if (--co->stop_pending == 0)
        uv_timer_start(&co->stop_timer, coord_finish, 0, 0);
    else
        uv_timer_start(&co->stop_timer, coord_finish, COORD_STOP_MS, 0);
}
