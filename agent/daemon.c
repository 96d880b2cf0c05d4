/*
 * agent/daemon.c: `atrest agent`, the daemon beside kube-apiserver.
 *
 * One libuv loop, one thread: the desired-file watch, the status server, signals, timers and
 * (when configured) etcd. The settings and the desired file are read at start and on SIGHUP;
 * the desired file also whenever it changes. A valid desired config reaches the effective file
 * through apply_desired() (the one place the rotation protocol will replace); the in-process
 * provider chain is rebuilt beside the old one and swapped in (struct ar_chain_slot).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>
#include <uv.h>

#include "agent/cmd.h"
#include "agent/effective.h"
#include "agent/http.h"
#include "agent/log.h"
#include "agent/metrics.h"
#include "agent/notify.h"
#include "agent/settings.h"
#include "agent/state.h"
#include "agent/watch.h"
#include "coord/election.h"
#include "coord/etcd.h"
#include "coord/member.h"
#include "crypto/chain.h"
#include "crypto/config.h"

#define HEARTBEAT_MS        1000
#define HEALTH_MAX_LAG_MS   5000
#define ETCD_GRACE_MS       (5 * 60 * 1000) /* watchdog: etcd may be unreachable this long */
#define MAX_LOGGED_DIAGS    10
#define COORD_TICK_MS       5000
#define RETRY_MIN_MS        1000  /* a valid desired config that could not be applied ... */
#define RETRY_MAX_MS        60000 /* ... is tried again after 1, 2, 4 ... 60 s */

struct agent;

/* The etcd side (see "etcd" below). */
struct coord {
    struct agent *a;
    struct ar_etcd *etcd;
    uv_timer_t tick;          /* registration retry / member list */
    uv_timer_t stop_timer;    /* bounds the clean shutdown, then finishes it */
    int handles;              /* open timers; freed when both closed */
    struct ar_member_alive *alive;
    struct ar_election *election;
    struct ar_etcd_watch *watch; /* <prefix>alive/ */
    char *report_key;         /* the last report sent, without its time */
    char *leader;             /* last observed leader (to log changes) */
    bool was_leader;
    bool registering, registered, listing, list_again;
    bool closing, finished;
    int stop_pending;         /* resign and alive revoke still running */
};

struct agent {
    uv_loop_t loop;
    struct ar_settings set;
    int argc;
    char **argv;
    const char *config_file;    /* NULL: flags only */
    bool config_explicit;

    struct ar_state st;
    struct ar_metrics *metrics;
    struct ar_watch *watch;
    struct ar_http *http;
    struct ar_http_route routes[4];

    uv_signal_t sig_hup, sig_term, sig_int;
    uv_timer_t heartbeat;
    uv_timer_t watchdog;
    uint64_t watchdog_usec;
    uv_timer_t retry;           /* re-applies the desired config after AR_RELOAD_FAILED */
    unsigned retry_ms;          /* the current backoff (0: no retry pending) */

    bool have_desired_sha;
    uint8_t desired_sha[AR_SHA256_LEN];
    int desired_status;         /* result of the last read (0 or negative errno) */
    bool stopping;
    struct coord *coord;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void coord_publish(struct agent *a);
static bool str_eq(const char *x, const char *y);

static void publish_status(struct agent *a)
{
    char fp[AR_HASH_STRLEN] = "none";
    if (a->st.effective)
        ar_config_fingerprint_str(a->st.effective, fp);
    ar_notify_status("effective %.23s; desired %s; last reload %s", fp,
                     a->st.desired_valid ? "valid" : "INVALID",
                     ar_reload_result_name(a->st.last_reload_result));
    coord_publish(a);
}

static void set_reload(struct agent *a, enum ar_reload_result r, const char *err)
{
    a->st.last_reload_ms = now_ms();
    a->st.last_reload_result = r;
    ar_state_set_str(&a->st.last_reload_error, err);
    if (r == AR_RELOAD_APPLIED) {
        a->st.reloads_ok++;
        ar_metrics_reload(a->metrics, true, (double)a->st.last_reload_ms / 1000.0);
    } else if (r == AR_RELOAD_INVALID || r == AR_RELOAD_FAILED) {
        a->st.reloads_failed++;
        ar_metrics_reload(a->metrics, false, (double)a->st.last_reload_ms / 1000.0);
    }
}

/* Read the effective file back (what kube-apiserver will load) and make it the config in force:
 * state, metrics and a new chain swapped in. 0 or negative errno. */
static int adopt_effective(struct agent *a, char *err, size_t errlen)
{
    struct ar_config *cfg = NULL;
    struct ar_chain *ch = NULL;
    struct ar_diags d;
    char hash[AR_HASH_STRLEN];
    int r;

    ar_diags_init(&d);
    r = ar_config_read_checked(a->set.effective_path, 0, &cfg, NULL, NULL, &d);
    if (r < 0) {
        char line[512] = "";
        if (d.n)
            ar_diag_format(&d.v[0], line, sizeof(line));
        snprintf(err, errlen, "%s", line);
        goto out;
    }
    if (a->st.effective && !memcmp(a->st.effective->fingerprint, cfg->fingerprint,
                                   AR_SHA256_LEN) &&
        !memcmp(a->st.effective->file_sha256, cfg->file_sha256, AR_SHA256_LEN))
        goto out; /* the same config is already in force */
    r = ar_chain_new(cfg, &ch);
    if (r < 0) {
        snprintf(err, errlen, "cannot build the provider chain: %s", strerror(-r));
        goto out;
    }
    ar_chain_slot_swap(&a->st.chain, ch);
    ar_metrics_chain_swap(a->metrics);
    ar_config_unref(a->st.effective);
    a->st.effective = ar_config_ref(cfg);
    ar_config_file_hash_str(cfg, hash);
    ar_metrics_last_config(a->metrics, hash);
out:
    ar_chain_unref(ch);
    ar_config_unref(cfg);
    ar_diags_free(&d);
    return r;
}

/*
 * ============================================================================================
 * apply_desired: THE ROTATION HOOK.
 * For now (before the rotation protocol exists) a validated desired config is written to the
 * effective file directly. The rotation issue replaces this function with: publish the desired
 * fingerprint, wait for agreement, then write the phase configs one by one.
 * Returns the reload result and fills err on failure.
 * ============================================================================================
 */
static enum ar_reload_result apply_desired(struct agent *a, struct ar_config *desired, char *err,
                                           size_t errlen)
{
    struct ar_effective_opts o = {
        .path = a->set.effective_path,
        .state_dir = a->set.state_dir,
        .history = a->set.history,
        .owner_set = a->set.owner_set,
        .owner = a->set.owner_uid,
        .group_set = a->set.group_set,
        .group = a->set.group_gid,
    };
    char fp[AR_HASH_STRLEN];
    int w, r;

    w = ar_effective_write(&o, desired, err, errlen);
    if (w < 0) {
        log_err("effective: cannot write %s: %s (the previous file stays in force)", o.path, err);
        return AR_RELOAD_FAILED;
    }
    ar_config_fingerprint_str(desired, fp);
    if (w == 1) {
        a->st.effective_writes++;
        a->st.effective_written_ms = now_ms();
        ar_metrics_effective_write(a->metrics);
        log_info("effective: wrote %s (fingerprint %s)", o.path, fp);
    }
    r = adopt_effective(a, err, errlen);
    if (r < 0) {
        log_err("effective: %s was written but cannot be read back: %s", o.path, err);
        return AR_RELOAD_FAILED;
    }
    return w == 1 ? AR_RELOAD_APPLIED : AR_RELOAD_UNCHANGED;
}

static void reload_desired(struct agent *a, bool force, const char *why);

static void on_retry(uv_timer_t *t)
{
    reload_desired(t->data, true, "retry");
}

/* The watch calls back only when the desired file changes, so a valid config that could not be
 * applied (ENOSPC, the effective file's directory missing, ...) is tried again with backoff
 * until it is applied or replaced. */
static void retry_after(struct agent *a, enum ar_reload_result res)
{
    if (res != AR_RELOAD_FAILED || a->stopping) {
        a->retry_ms = 0;
        uv_timer_stop(&a->retry);
        return;
    }
    a->retry_ms = a->retry_ms ? a->retry_ms * 2 : RETRY_MIN_MS;
    if (a->retry_ms > RETRY_MAX_MS)
        a->retry_ms = RETRY_MAX_MS;
    log_info("effective: trying again in %u s", a->retry_ms / 1000);
    uv_timer_start(&a->retry, on_retry, a->retry_ms, 0);
}

/* Read the desired file; when it is new and valid, apply it. force: re-apply even when the
 * bytes did not change (SIGHUP, startup, retry). */
static void reload_desired(struct agent *a, bool force, const char *why)
{
    struct ar_config *cfg = NULL;
    struct ar_diags d;
    uint8_t sha[AR_SHA256_LEN];
    bool have = false;
    char err[1024] = "", hash[AR_HASH_STRLEN];
    enum ar_reload_result res;
    int r;

    ar_diags_init(&d);
    r = ar_config_read_checked(a->set.desired_path, 0, &cfg, sha, &have, &d);
    a->st.desired_read_ms = now_ms();
    if (!force && have && a->have_desired_sha && r == a->desired_status &&
        !memcmp(sha, a->desired_sha, sizeof(sha)))
        goto out; /* nothing new */
    if (have && (!a->have_desired_sha || memcmp(sha, a->desired_sha, sizeof(sha))))
        a->st.desired_changed_ms = a->st.desired_read_ms;
    a->have_desired_sha = have;
    if (have)
        memcpy(a->desired_sha, sha, sizeof(sha));
    a->desired_status = r;

    if (r < 0) {
        /* report, keep the last valid config in force */
        char line[1024] = "";
        if (d.n)
            ar_diag_format(&d.v[0], line, sizeof(line));
        a->st.desired_valid = false;
        a->st.desired_nerrors = d.nerrors ? d.nerrors : 1;
        ar_state_set_str(&a->st.desired_error, line);
        log_err("desired: %s is not usable (%zu error%s, %s); the last valid config stays in "
                "force",
                a->set.desired_path, a->st.desired_nerrors, a->st.desired_nerrors == 1 ? "" : "s",
                why);
        for (size_t i = 0, shown = 0; i < d.n && shown < MAX_LOGGED_DIAGS; i++, shown++) {
            ar_diag_format(&d.v[i], line, sizeof(line));
            if (d.v[i].severity == AR_SEV_ERROR)
                log_err("desired: %s", line);
            else
                log_warn("desired: %s", line);
        }
        if (have) {
            char hx[2 * AR_SHA256_LEN + 1];
            ar_hex(sha, sizeof(sha), hx);
            snprintf(hash, sizeof(hash), "sha256:%s", hx);
        }
        ar_metrics_desired(a->metrics, have ? hash : NULL, true);
        ar_diag_format(&d.v[0], err, sizeof(err));
        set_reload(a, AR_RELOAD_INVALID, err);
        retry_after(a, AR_RELOAD_INVALID);
        goto out;
    }
    for (size_t i = 0; i < d.n; i++) {
        char line[1024];
        ar_diag_format(&d.v[i], line, sizeof(line));
        log_warn("desired: %s", line);
    }
    a->st.desired_valid = true;
    a->st.desired_nerrors = 0;
    ar_state_set_str(&a->st.desired_error, NULL);
    ar_config_unref(a->st.desired);
    a->st.desired = ar_config_ref(cfg);
    ar_config_file_hash_str(cfg, hash);
    ar_metrics_desired(a->metrics, hash, false);
    {
        char fp[AR_HASH_STRLEN];
        ar_config_fingerprint_str(cfg, fp);
        log_info("desired: %s is valid (fingerprint %s, %s)", a->set.desired_path, fp, why);
    }
    res = apply_desired(a, cfg, err, sizeof(err));
    set_reload(a, res, res == AR_RELOAD_FAILED ? err : NULL);
    retry_after(a, res);
out:
    ar_config_unref(cfg);
    ar_diags_free(&d);
    publish_status(a);
}


/* ---- etcd ------------------------------------------------------------------------------- */

/*
 * The etcd side (DESIGN 4.3, 4.4), behind coord_start / coord_publish / coord_stop:
 * - members/<node>: registration (persistent), read then written so first_seen_ms survives
 *   restarts; the rest starts once it is in place, and is retried every COORD_TICK_MS.
 * - alive/<node>: lease-bound report of this node's fingerprints (never key material),
 *   rewritten whenever they change (coord_publish).
 * - leader: the election (value = node name); whether this node leads is read live from the
 *   lease deadline (ar_state_is_leader -> coord_leading).
 * - the member list for /status: every COORD_TICK_MS, and COORD_SOON_MS after a change under
 *   alive/ (watch).
 * - shutdown: resign and revoke the alive lease, bounded by COORD_STOP_MS, then close.
 * Every answer counts in atrest_etcd_requests_total{op=register|alive|list|election|watch}.
 */
#define COORD_SOON_MS 100
#define COORD_STOP_MS 3000

#define M_LEADER       "atrest_leader"
#define M_LEADER_HELP  "1 while this agent holds the leader lease (read when scraped), else 0."
#define M_MEMBERS      "atrest_members"
#define M_MEMBERS_HELP "Members in etcd: registered (members/<node>) and alive (alive/<node>)."

static void coord_tick(uv_timer_t *t);

static void count_op(struct agent *a, const char *op, int status)
{
    ar_metrics_etcd_request(a->metrics, op,
                            status == 0             ? "ok"
                            : status == -ETIMEDOUT  ? "timeout"
                                                    : "error");
}

static void etcd_ok(struct agent *a)
{
    if (a->st.etcd != AR_ETCD_CONNECTED)
        log_info("etcd: connected");
    a->st.etcd = AR_ETCD_CONNECTED;
    a->st.etcd_last_ok_ms = now_ms();
    ar_state_set_str(&a->st.etcd_error, NULL);
}

static void etcd_failed(struct agent *a, const char *what, int status,
                        const struct ar_etcd_error *err)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "%s: %s%s%s", what, err && err->msg[0] ? err->msg : strerror(-status),
             err && err->endpoint[0] ? " at " : "", err && err->endpoint[0] ? err->endpoint : "");
    if (a->st.etcd != AR_ETCD_UNREACHABLE)
        log_warn("etcd: unreachable (%s); retrying", msg);
    else
        log_debug("etcd: still unreachable (%s)", msg);
    a->st.etcd = AR_ETCD_UNREACHABLE;
    ar_state_set_str(&a->st.etcd_error, msg);
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
    char dfp[AR_HASH_STRLEN], efp[AR_HASH_STRLEN], eh[AR_HASH_STRLEN];
    json_t *j;
    char *s;

    if (a->st.desired)
        ar_config_fingerprint_str(a->st.desired, dfp);
    if (a->st.effective) {
        ar_config_fingerprint_str(a->st.effective, efp);
        ar_config_file_hash_str(a->st.effective, eh);
    }
    j = json_pack("{s:s, s:s, s:{s:s?, s:b}, s:{s:s?, s:s?}}", "node", a->set.node, "version",
                  ATREST_VERSION, "desired", "fingerprint", a->st.desired ? dfp : NULL, "valid",
                  (int)a->st.desired_valid, "effective", "fingerprint",
                  a->st.effective ? efp : NULL, "file_hash", a->st.effective ? eh : NULL);
    if (j && with_time)
        json_object_set_new(j, "time_ms", json_integer((json_int_t)now_ms()));
    s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    return s;
}

/* The fingerprints may have changed: rewrite alive/<node> when they did. */
static void coord_publish(struct agent *a)
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
        etcd_failed(a, "election", st->status, st->err);
    else if (st->status == 0)
        etcd_ok(a);
    if (!str_eq(st->leader, co->leader)) {
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
        log_warn("etcd: cannot watch %s: %s (the member list is read every %d s)", p,
                 strerror(-r), COORD_TICK_MS / 1000);
    }
}

static char *json_strdup(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? strdup(v) : NULL;
}

/* One member of the list -> state (the report is another agent's JSON: trust nothing). */
static void member_from_info(struct ar_state_member *e, const struct ar_member_info *in)
{
    json_t *j = NULL, *d, *f, *t;

    e->node = strdup(in->node);
    e->registered = in->registration != NULL;
    e->alive = in->report != NULL;
    if (in->report)
        j = json_loads(in->report, 0, NULL);
    if (json_is_object(j)) {
        d = json_object_get(j, "desired");
        f = json_object_get(j, "effective");
        e->desired_fp = json_strdup(d, "fingerprint");
        e->desired_valid = json_is_true(json_object_get(d, "valid"));
        e->effective_fp = json_strdup(f, "fingerprint");
        e->effective_hash = json_strdup(f, "file_hash");
        e->version = json_strdup(j, "version");
        t = json_object_get(j, "time_ms");
        e->reported_ms = json_is_integer(t) ? (int64_t)json_integer_value(t) : 0;
    }
    json_decref(j);
    if (!e->version && in->registration) {
        j = json_loads(in->registration, 0, NULL);
        e->version = json_strdup(j, "version");
        json_decref(j);
    }
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
    struct ar_election_settings es = {.key = key, .value = a->set.node,
                                      .ttl_s = a->set.lease_ttl_s};

    co->registered = true;
    free(co->report_key);
    co->report_key = coord_report(a, false);
    co->alive = rep ? ar_member_alive_start(co->etcd, a->set.coord_prefix, a->set.node,
                                            a->set.lease_ttl_s, rep, on_alive_write, co)
                    : NULL;
    free(rep);
    if (!co->alive)
        log_err("etcd: cannot start the liveness key: %s", strerror(errno ? errno : ENOMEM));
    snprintf(key, sizeof(key), "%sleader", a->set.coord_prefix);
    co->election = ar_election_start(co->etcd, &es, on_election, co);
    if (!co->election)
        log_err("etcd: cannot start the election: %s", strerror(errno ? errno : ENOMEM));
    coord_watch(co);
    coord_list_soon(co);
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
    json_int_t first = (json_int_t)now_ms();
    json_t *j;
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
    if (res->n_kvs) {
        j = json_loadb((const char *)res->kvs[0].value, res->kvs[0].value_len, 0, NULL);
        json_t *f = json_object_get(j, "first_seen_ms");
        if (json_is_integer(f) && json_integer_value(f) > 0)
            first = json_integer_value(f);
        json_decref(j);
    }
    j = json_pack("{s:s, s:s, s:I, s:I}", "node", a->set.node, "version", ATREST_VERSION,
                  "first_seen_ms", first, "registered_ms", (json_int_t)now_ms());
    v = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    r = v ? ar_member_register(co->etcd, a->set.coord_prefix, a->set.node, v, on_register_put,
                               co)
          : -ENOMEM;
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

static int coord_start(struct agent *a)
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
    errno = 0;
    co->etcd = ar_etcd_new(&a->loop, &es);
    if (!co->etcd) {
        r = errno ? -errno : -EINVAL;
        log_err("etcd: cannot create the client: %s", strerror(-r));
        free(co);
        goto out;
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

static void coord_stop(struct agent *a)
{
    struct coord *co = a->coord;
    struct ar_member_alive *alive;

    if (!co)
        return;
    a->coord = NULL;
    a->st.leading = NULL;
    co->closing = true;
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
    if (--co->stop_pending == 0)
        uv_timer_start(&co->stop_timer, coord_finish, 0, 0);
    else
        uv_timer_start(&co->stop_timer, coord_finish, COORD_STOP_MS, 0);
}

/* ---- status server ---------------------------------------------------------------------- */

static void h_status(void *arg, struct ar_http_resp *out)
{
    struct agent *a = arg;
    char *s = NULL;
    size_t n = 0;

    if (ar_status_json(&a->st, &s, &n) < 0) {
        out->status = 500;
        return;
    }
    out->status = 200;
    out->content_type = "application/json";
    ar_http_resp_append(out, s, n);
    free(s);
}

static void h_metrics(void *arg, struct ar_http_resp *out)
{
    struct agent *a = arg;
    char *s = NULL;
    size_t n = 0;

    /* leadership ends at a lease deadline without any event: read it now */
    ar_metric_gauge_set(a->metrics, M_LEADER, M_LEADER_HELP, ar_state_is_leader(&a->st) ? 1 : 0,
                        NULL);
    if (ar_metrics_render(a->metrics, &s, &n) < 0) {
        out->status = 500;
        return;
    }
    out->status = 200;
    out->content_type = AR_METRICS_CONTENT_TYPE;
    ar_http_resp_append(out, s, n);
    free(s);
}

static void h_healthz(void *arg, struct ar_http_resp *out)
{
    struct agent *a = arg;

    uv_update_time(&a->loop);
    if (ar_state_healthy(&a->st, uv_now(&a->loop), HEALTH_MAX_LAG_MS)) {
        out->status = 200;
        ar_http_resp_printf(out, "ok\n");
    } else {
        out->status = 503;
        ar_http_resp_printf(out, a->st.stopping ? "stopping\n" : "loop not responsive\n");
    }
}

static void h_readyz(void *arg, struct ar_http_resp *out)
{
    struct agent *a = arg;

    if (ar_state_ready(&a->st)) {
        out->status = 200;
        ar_http_resp_printf(out, "ok\n");
        return;
    }
    out->status = 503;
    if (a->st.stopping)
        ar_http_resp_printf(out, "stopping\n");
    else if (!a->st.effective)
        ar_http_resp_printf(out, "no valid effective config in force yet\n");
    else
        ar_http_resp_printf(out, "status server not up\n");
}

static void http_log(void *arg, const char *msg)
{
    log_warn("status: %s", msg);
}

static int status_start(struct agent *a)
{
    struct ar_http_opts o = {0};
    char err[256] = "";
    int r;

    if (!a->set.status_host[0] && !a->set.status_socket) {
        log_warn("status: no listener configured");
        return 0;
    }
    o.host = a->set.status_host[0] ? a->set.status_host : NULL;
    o.port = a->set.status_port;
    o.unix_path = a->set.status_socket;
    o.log = http_log;
    o.log_arg = a;
    a->routes[0] = (struct ar_http_route){"/status", h_status, a};
    a->routes[1] = (struct ar_http_route){"/metrics", h_metrics, a};
    a->routes[2] = (struct ar_http_route){"/healthz", h_healthz, a};
    a->routes[3] = (struct ar_http_route){"/readyz", h_readyz, a};
    r = ar_http_start(&a->loop, &o, a->routes, 4, &a->http, err, sizeof(err));
    if (r < 0) {
        log_err("status: cannot listen: %s", err[0] ? err : strerror(-r));
        return r;
    }
    a->st.status_up = true;
    if (o.host) {
        if (strchr(o.host, ':'))
            log_info("status: listening on http://[%s]:%u", o.host, ar_http_port(a->http));
        else
            log_info("status: listening on http://%s:%u", o.host, ar_http_port(a->http));
    }
    if (o.unix_path)
        log_info("status: listening on unix:%s", o.unix_path);
    return 0;
}

static void status_stop(struct agent *a)
{
    ar_http_close(a->http);
    a->http = NULL;
    a->st.status_up = false;
}

/* ---- watch ------------------------------------------------------------------------------ */

static void on_desired_change(void *arg, int status)
{
    struct agent *a = arg;
    reload_desired(a, false, status == 0 ? "changed" : "no longer readable");
}

static int watch_start(struct agent *a)
{
    int r = ar_watch_start(&a->loop, a->set.desired_path, a->set.debounce_ms,
                           a->set.poll_interval_s * 1000u, on_desired_change, a, &a->watch);
    if (r < 0)
        log_err("watch: cannot watch %s: %s", a->set.desired_path, strerror(-r));
    return r;
}

/* ---- settings --------------------------------------------------------------------------- */

static void print_diags(const struct ar_diags *d, bool to_log)
{
    char line[1024];
    for (size_t i = 0; i < d->n; i++) {
        ar_diag_format(&d->v[i], line, sizeof(line));
        if (to_log) {
            if (d->v[i].severity == AR_SEV_ERROR)
                log_err("settings: %s", line);
            else
                log_warn("settings: %s", line);
        } else {
            fprintf(stderr, "%s%s\n", line, "");
        }
    }
}

/* Build settings from the file (if any) and flags, then check them. 0 or -EINVAL. */
static int settings_build(struct agent *a, struct ar_settings *s, struct ar_diags *d,
                          unsigned check_flags)
{
    struct stat st;
    int r = ar_settings_init(s);

    if (r < 0)
        return r;
    if (a->config_file && (a->config_explicit || stat(a->config_file, &st) == 0)) {
        r = ar_settings_load_file(s, a->config_file, d);
        if (r < 0)
            return r;
    }
    r = ar_settings_apply_flags(s, a->argc, a->argv, d);
    if (r < 0)
        return r;
    return ar_settings_check(s, d, check_flags);
}

static bool str_eq(const char *x, const char *y)
{
    return (!x && !y) || (x && y && !strcmp(x, y));
}

static void point_state_at_settings(struct agent *a)
{
    a->st.node = a->set.node;
    a->st.desired_path = a->set.desired_path;
    a->st.effective_path = a->set.effective_path;
}

static void swap_str(char **x, char **y)
{
    char *t = *x;
    *x = *y;
    *y = t;
}

/* The etcd client, its registration and keys are set up once at start: a SIGHUP that changes
 * the etcd settings keeps the running ones (swapped back into ns) until the next restart.
 * Applying half of them (a new prefix read by the member list while the liveness key and the
 * election stay under the old one) would mix two coordination trees. */
static void keep_etcd_settings(struct ar_settings *ns, struct ar_settings *cur)
{
    bool same = ns->n_etcd_endpoints == cur->n_etcd_endpoints &&
                str_eq(ns->etcd_cafile, cur->etcd_cafile) &&
                str_eq(ns->etcd_certfile, cur->etcd_certfile) &&
                str_eq(ns->etcd_keyfile, cur->etcd_keyfile) &&
                str_eq(ns->etcd_user, cur->etcd_user) &&
                str_eq(ns->etcd_password_file, cur->etcd_password_file) &&
                str_eq(ns->coord_prefix, cur->coord_prefix) && ns->lease_ttl_s == cur->lease_ttl_s;

    for (size_t i = 0; same && i < cur->n_etcd_endpoints; i++)
        same = str_eq(ns->etcd_endpoints[i], cur->etcd_endpoints[i]);
    if (same)
        return;
    log_warn("reload: etcd settings changes take effect at the next restart");
    size_t n = ns->n_etcd_endpoints;
    unsigned ttl = ns->lease_ttl_s;

    for (size_t i = 0; i < AR_SETTINGS_MAX_ENDPOINTS; i++)
        swap_str(&ns->etcd_endpoints[i], &cur->etcd_endpoints[i]);
    ns->n_etcd_endpoints = cur->n_etcd_endpoints;
    cur->n_etcd_endpoints = n;
    ns->lease_ttl_s = cur->lease_ttl_s;
    cur->lease_ttl_s = ttl;
    swap_str(&ns->etcd_cafile, &cur->etcd_cafile);
    swap_str(&ns->etcd_certfile, &cur->etcd_certfile);
    swap_str(&ns->etcd_keyfile, &cur->etcd_keyfile);
    swap_str(&ns->etcd_user, &cur->etcd_user);
    swap_str(&ns->etcd_password_file, &cur->etcd_password_file);
    swap_str(&ns->coord_prefix, &cur->coord_prefix);
}

/* SIGHUP: re-read settings (applied when valid) and the desired file. */
static void reload_all(struct agent *a)
{
    struct ar_settings ns;
    struct ar_diags d;
    int r;

    ar_notify_reloading();
    a->st.sighup_reloads++;
    log_info("reload: SIGHUP: re-reading settings and the desired file");
    ar_diags_init(&d);
    r = settings_build(a, &ns, &d, 0);
    print_diags(&d, true);
    if (r < 0) {
        char line[1024] = "invalid settings";
        for (size_t i = 0; i < d.n; i++)
            if (d.v[i].severity == AR_SEV_ERROR) {
                ar_diag_format(&d.v[i], line, sizeof(line));
                break;
            }
        log_err("reload: the settings are invalid; keeping the running ones");
        ar_settings_free(&ns);
        ar_diags_free(&d);
        reload_desired(a, true, "SIGHUP");
        /* after the desired file: its result must not hide the rejected settings */
        set_reload(a, AR_RELOAD_INVALID, line);
        ar_notify_ready(NULL);
        publish_status(a);
        return;
    }
    ar_diags_free(&d);
    if (!str_eq(ns.node, a->set.node)) {
        log_warn("reload: node name changes (%s -> %s) take effect at the next restart",
                 a->set.node, ns.node);
        swap_str(&ns.node, &a->set.node);
    }
    keep_etcd_settings(&ns, &a->set);
    bool watch_changed = !str_eq(ns.desired_path, a->set.desired_path) ||
                         ns.debounce_ms != a->set.debounce_ms ||
                         ns.poll_interval_s != a->set.poll_interval_s;
    bool status_changed = !str_eq(ns.status_listen, a->set.status_listen) ||
                          !str_eq(ns.status_socket, a->set.status_socket);
    if (status_changed)
        status_stop(a);
    if (watch_changed) {
        ar_watch_close(a->watch);
        a->watch = NULL;
    }
    ar_settings_free(&a->set);
    a->set = ns;
    /* field_src_ points into the old settings' file name: the positions are only used by
     * ar_settings_check, which ran already */
    point_state_at_settings(a);
    ar_log_set_level(a->set.log_level);
    if (status_changed && status_start(a) < 0)
        log_err("reload: the status server could not be restarted");
    if (watch_changed) {
        a->have_desired_sha = false;
        watch_start(a);
    }
    reload_desired(a, true, "SIGHUP");
    ar_notify_ready(NULL);
    publish_status(a);
}

/* ---- signals, heartbeat, watchdog, shutdown --------------------------------------------- */

static void close_all(struct agent *a);

static void on_signal(uv_signal_t *h, int signum)
{
    struct agent *a = h->data;

    if (signum == SIGHUP) {
        if (!a->stopping)
            reload_all(a);
        return;
    }
    if (a->stopping)
        return;
    log_info("agent: %s received, stopping", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    close_all(a);
}

static void on_heartbeat(uv_timer_t *t)
{
    struct agent *a = t->data;
    a->st.loop_tick_mono_ms = uv_now(&a->loop);
}

static bool daemon_healthy(struct agent *a)
{
    uint64_t now = uv_now(&a->loop);
    if (!ar_state_healthy(&a->st, now, HEALTH_MAX_LAG_MS))
        return false;
    if (a->st.etcd == AR_ETCD_UNREACHABLE || a->st.etcd == AR_ETCD_CONNECTING) {
        int64_t since = a->st.etcd_last_ok_ms ? a->st.etcd_last_ok_ms : a->st.started_ms;
        if (now_ms() - since > ETCD_GRACE_MS)
            return false;
    }
    return true;
}

static void on_watchdog(uv_timer_t *t)
{
    struct agent *a = t->data;
    if (daemon_healthy(a))
        ar_notify_watchdog();
    else
        log_warn("agent: not healthy; withholding the watchdog ping");
}

static void close_all(struct agent *a)
{
    a->stopping = true;
    a->st.stopping = true;
    ar_notify_stopping("stopping");
    ar_watch_close(a->watch);
    a->watch = NULL;
    status_stop(a);
    coord_stop(a);
    if (!uv_is_closing((uv_handle_t *)&a->sig_hup)) {
        uv_close((uv_handle_t *)&a->sig_hup, NULL);
        uv_close((uv_handle_t *)&a->sig_term, NULL);
        uv_close((uv_handle_t *)&a->sig_int, NULL);
        uv_close((uv_handle_t *)&a->heartbeat, NULL);
        uv_close((uv_handle_t *)&a->watchdog, NULL);
        uv_close((uv_handle_t *)&a->retry, NULL);
    }
}

/* ---- main ------------------------------------------------------------------------------- */

static int parse_cli(struct agent *a, int argc, char **argv, bool *check, bool *help)
{
    a->argc = argc;
    a->argv = argv;
    a->config_file = AR_SETTINGS_DEFAULT_PATH;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--check")) {
            *check = true;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            *help = true;
        } else if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "atrest agent: --config needs a file\n");
                return -EINVAL;
            }
            a->config_file = argv[++i];
            a->config_explicit = true;
        } else if (!strncmp(argv[i], "--config=", 9)) {
            a->config_file = argv[i] + 9;
            a->config_explicit = true;
        }
    }
    return 0;
}

static int agent_init_loop(struct agent *a)
{
    int r = uv_loop_init(&a->loop);
    if (r < 0)
        return r;
    uv_signal_init(&a->loop, &a->sig_hup);
    uv_signal_init(&a->loop, &a->sig_term);
    uv_signal_init(&a->loop, &a->sig_int);
    uv_timer_init(&a->loop, &a->heartbeat);
    uv_timer_init(&a->loop, &a->watchdog);
    uv_timer_init(&a->loop, &a->retry);
    a->sig_hup.data = a->sig_term.data = a->sig_int.data = a;
    a->heartbeat.data = a->watchdog.data = a->retry.data = a;
    uv_signal_start(&a->sig_hup, on_signal, SIGHUP);
    uv_signal_start(&a->sig_term, on_signal, SIGTERM);
    uv_signal_start(&a->sig_int, on_signal, SIGINT);
    uv_timer_start(&a->heartbeat, on_heartbeat, 0, HEARTBEAT_MS);
    a->watchdog_usec = ar_notify_watchdog_usec();
    if (a->watchdog_usec) {
        uint64_t ms = a->watchdog_usec / 2000;
        uv_timer_start(&a->watchdog, on_watchdog, ms ? ms : 1, ms ? ms : 1);
    }
    return 0;
}

static int agent_start(struct agent *a)
{
    char err[512];
    int r, n;

    if (mkdir(a->set.state_dir, 0700) < 0 && errno != EEXIST) {
        log_err("agent: cannot create the state directory %s: %s", a->set.state_dir,
                strerror(errno));
        return -errno;
    }
    n = ar_effective_cleanup_temps(a->set.effective_path);
    if (n > 0)
        log_info("effective: removed %d temp file%s left by an earlier run", n, n == 1 ? "" : "s");
    /* what kube-apiserver runs now, before anything is written */
    if (access(a->set.effective_path, F_OK) == 0) {
        if (adopt_effective(a, err, sizeof(err)) < 0)
            log_warn("effective: the current %s is not valid (%s); it will be replaced by the "
                     "desired config",
                     a->set.effective_path, err);
        else
            log_info("effective: %s is in force", a->set.effective_path);
    }
    reload_desired(a, true, "startup");
    r = status_start(a);
    if (r < 0)
        return r;
    r = watch_start(a);
    if (r < 0)
        return r;
    return coord_start(a);
}

int ar_cmd_agent(int argc, char **argv)
{
    struct agent *a;
    struct ar_diags d;
    bool check = false, help = false;
    int r, rc = 1;

    a = calloc(1, sizeof(*a));
    if (!a)
        return 1;
    if (parse_cli(a, argc, argv, &check, &help) < 0) {
        free(a);
        return 2;
    }
    if (help) {
        ar_settings_usage(stdout);
        free(a);
        return 0;
    }
    ar_diags_init(&d);
    r = settings_build(a, &a->set, &d, check ? AR_CHECK_DESIRED : 0);
    if (check) {
        print_diags(&d, false);
        if (r < 0)
            fprintf(stderr, "atrest agent: the settings are invalid (%zu error%s)\n", d.nerrors,
                    d.nerrors == 1 ? "" : "s");
        else
            printf("atrest agent: settings OK (%s)\n",
                   a->config_file && a->set.file ? a->set.file : "flags only");
        ar_diags_free(&d);
        ar_settings_free(&a->set);
        free(a);
        return r < 0 ? 1 : 0;
    }
    ar_log_set_level(a->set.log_level);
    print_diags(&d, true);
    ar_diags_free(&d);
    if (r < 0) {
        log_err("agent: the settings are invalid; run 'atrest agent --check' for details");
        ar_settings_free(&a->set);
        free(a);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    if (ar_state_init(&a->st) < 0 || !(a->metrics = ar_metrics_new()) ||
        ar_metrics_atrest_init(a->metrics, ATREST_VERSION) < 0) {
        log_err("agent: out of memory");
        goto out_free;
    }
    a->st.version = ATREST_VERSION;
    point_state_at_settings(a);
    if (agent_init_loop(a) < 0) {
        log_err("agent: cannot initialise the event loop");
        goto out_free;
    }
    log_info("agent: atrest %s starting as node %s (desired %s, effective %s)", ATREST_VERSION,
             a->set.node, a->set.desired_path, a->set.effective_path);
    if (agent_start(a) < 0) {
        close_all(a);
        uv_run(&a->loop, UV_RUN_DEFAULT);
        goto out_loop;
    }
    ar_notify_ready(NULL);
    publish_status(a);
    log_info("agent: ready");
    uv_run(&a->loop, UV_RUN_DEFAULT);
    rc = 0;
out_loop:
    r = uv_loop_close(&a->loop);
    if (r < 0) {
        log_err("agent: the event loop did not close cleanly: %s", uv_strerror(r));
        rc = 1;
    }
    log_info("agent: stopped");
out_free:
    ar_state_free(&a->st);
    ar_metrics_free(a->metrics);
    ar_settings_free(&a->set);
    free(a);
    return rc;
}
