/*
 * agent/daemon.c: `atrest agent`, the daemon beside kube-apiserver.
 *
 * One libuv loop, one thread: the desired-file watch, the status server, signals, timers and
 * (when configured) etcd. The settings and the desired file are read at start and on SIGHUP;
 * the desired file also whenever it changes. A valid desired config goes to coord's node driver
 * (coord/node.h), which reaches the effective file through the node operations implemented
 * here (node_apply, node_prove, node_report); the rotation protocol replaces the driver, not
 * these. The in-process provider chain is rebuilt beside the old one and swapped in (struct
 * ar_chain_slot).
 */
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "agent/cmd.h"
#include "agent/daemon_int.h"
#include "agent/effective.h"
#include "agent/http.h"
#include "agent/log.h"
#include "agent/metrics.h"
#include "agent/notify.h"
#include "agent/proof.h"
#include "agent/settings.h"
#include "agent/state.h"
#include "agent/watch.h"
#include "coord/err.h"
#include "coord/node.h"
#include "crypto/chain.h"
#include "crypto/config.h"

int64_t ar_agent_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void publish_status(struct agent *a)
{
    char fp[AR_HASH_STRLEN] = "none";
    if (a->st.effective)
        ar_config_fingerprint_str(a->st.effective, fp);
    ar_notify_status("effective %.23s; desired %s; last reload %s", fp,
                     a->st.desired_valid ? "valid" : "INVALID",
                     ar_reload_result_name(a->st.last_reload_result));
    ar_coord_publish(a);
}

static void set_reload(struct agent *a, enum ar_reload_result r, const char *err)
{
    a->st.last_reload_ms = ar_agent_now_ms();
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

/* The first diagnostic as one line, or the error's text when there is none (a failure should
 * always leave one, but an empty list must never be read). */
static void first_diag(const struct ar_diags *d, int r, char *line, size_t len)
{
    if (d->n)
        ar_diag_format(&d->v[0], line, len);
    else
        snprintf(line, len, "%s", strerror(r < 0 ? -r : EIO));
}

/* Read the effective file back (what kube-apiserver will load) and make it the config in force:
 * state, metrics and a new chain swapped in. 0 or negative errno. */
static int adopt_effective(struct agent *a, struct ar_err *e)
{
    struct ar_config *cfg = NULL;
    struct ar_chain *ch = NULL;
    struct ar_diags d;
    char hash[AR_HASH_STRLEN];
    int r;

    ar_diags_init(&d);
    r = ar_config_read_checked(a->set.effective_path, 0, &cfg, NULL, NULL, &d);
    if (r < 0) {
        char line[sizeof(e->msg)];

        first_diag(&d, r, line, sizeof(line));
        ar_err_set(e, r, NULL, "%s", line);
        goto out;
    }
    if (a->st.effective && !memcmp(a->st.effective->fingerprint, cfg->fingerprint, AR_SHA256_LEN) &&
        !memcmp(a->st.effective->file_sha256, cfg->file_sha256, AR_SHA256_LEN))
        goto out; /* the same config is already in force */
    r = ar_chain_new(cfg, &ch);
    if (r < 0) {
        ar_err_set(e, r, a->set.effective_path, "cannot build the provider chain: %s",
                   strerror(-r));
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
 * The node operations coord/ drives (coord/node.h). The rotation replaces coord's driver, not
 * these: "write this config as the effective config and swap the chain", "prove the local API
 * server loaded it", "report the driver's state". Without etcd the driver (coord/node.c) runs
 * the plan's phases on this node and waits before prune.
 * ============================================================================================
 */
static void node_apply(void *arg, struct ar_config *cfg, ar_node_apply_done done, void *done_arg)
{
    struct agent *a = arg;
    struct ar_effective_opts o = {
        .path = a->set.effective_path,
        .state_dir = a->set.state_dir,
        .history = a->set.history,
        .owner_set = a->set.owner_set,
        .owner = a->set.owner_uid,
        .group_set = a->set.group_set,
        .group = a->set.group_gid,
    };
    struct ar_err e = {0};
    char fp[AR_HASH_STRLEN];
    int w, r;

    w = ar_effective_write(&o, cfg, e.msg, sizeof(e.msg));
    if (w < 0) {
        e.code = w;
        log_err("effective: cannot write %s: %s (the previous file stays in force)", o.path, e.msg);
        done(done_arg, w, false, &e);
        return;
    }
    ar_config_fingerprint_str(cfg, fp);
    if (w == 1) {
        a->st.effective_writes++;
        a->st.effective_written_ms = ar_agent_now_ms();
        ar_metrics_effective_write(a->metrics);
        log_info("effective: wrote %s (fingerprint %s)", o.path, fp);
    }
    r = adopt_effective(a, &e);
    if (r < 0) {
        log_err("effective: %s was written but cannot be read back: %s", o.path, e.msg);
        done(done_arg, r, w == 1, &e);
        return;
    }
    ar_coord_publish(a); /* alive/<node> carries the new effective fingerprint */
    done(done_arg, 0, w == 1, NULL);
}

/*
 * Proof of load for the rotation (DESIGN 4.5): first the effective file must hold the phase
 * config's bytes (a cheap check that nothing else rewrote it), then agent/proof.c proves that
 * the API server runs it (canary, metrics or restart, as settings.proof says). Without a
 * usable API-server setup the proof fails with the reason and the rotation waits (S9).
 */
static void prove_rotation(struct agent *a, const struct ar_prove_req *req, ar_node_prove_done done,
                           void *done_arg)
{
    uint8_t sha[AR_SHA256_LEN];
    char hx[2 * AR_SHA256_LEN + 1], hash[AR_HASH_STRLEN];
    struct ar_err e = {0};
    int r = ar_file_sha256(a->set.effective_path, 0, sha);

    if (r == 0) {
        ar_hex(sha, sizeof(sha), hx);
        snprintf(hash, sizeof(hash), "sha256:%s", hx);
        if (req->file_hash && req->file_hash[0] && strcmp(hash, req->file_hash))
            r = -ESTALE;
    }
    if (r < 0) {
        ar_err_set(&e, r, a->set.effective_path, "the effective file does not hold phase %s: %s",
                   req->phase ? req->phase : "?", r == -ESTALE ? "other bytes" : strerror(-r));
        done(done_arg, r, AR_NODE_PROOF_NONE, &e);
        return;
    }
    if (!a->proof) {
        ar_err_set(&e, -ENOTCONN, NULL, "no proof of load possible: %s",
                   a->proof_err[0] ? a->proof_err : "no API server configured");
        done(done_arg, -ENOTCONN, AR_NODE_PROOF_NONE, &e);
        return;
    }
    r = ar_proof_start(a->proof, req, done, done_arg);
    if (r < 0) {
        ar_err_set(&e, r, NULL, "cannot start the proof of load for phase %s: %s",
                   req->phase ? req->phase : "?", strerror(-r));
        done(done_arg, r, AR_NODE_PROOF_NONE, &e);
    }
}

/* The direct driver (no etcd) proves nothing yet and says so; the rotation's requests carry
 * their id. */
static void node_prove(void *arg, const struct ar_prove_req *req, ar_node_prove_done done,
                       void *done_arg)
{
    if (req->rotation_id)
        prove_rotation(arg, req, done, done_arg);
    else
        done(done_arg, 0, AR_NODE_PROOF_NONE, NULL);
}

static int node_save(void *arg, const char *id, struct ar_config *from, struct ar_config *to)
{
    struct agent *a = arg;
    int r = ar_effective_copies_save(a->set.state_dir, id, from, to);

    if (r < 0)
        log_err("rotation %s: cannot save from/to under %s/rotation/: %s", id, a->set.state_dir,
                strerror(-r));
    return r;
}

static int node_load(void *arg, const char *id, struct ar_config **from, struct ar_config **to)
{
    struct agent *a = arg;
    return ar_effective_copies_load(a->set.state_dir, id, from, to);
}

static void node_forget(void *arg, const char *keep_id)
{
    struct agent *a = arg;
    ar_effective_copies_forget(a->set.state_dir, keep_id);
}

static struct ar_config *node_config(void *arg, bool desired)
{
    struct agent *a = arg;
    return desired ? a->st.desired : a->st.effective;
}

static void publish_status(struct agent *a);
static void retry_after(struct agent *a, enum ar_reload_result res);
static void set_reload(struct agent *a, enum ar_reload_result r, const char *err);

static void node_report(void *arg, const struct ar_node_report *r)
{
    struct agent *a = arg;
    enum ar_reload_result res;
    char line[512];

    a->st.node_mode = r->mode;
    a->st.node_step = r->step;
    a->st.node_proof = r->proof;
    ar_state_set_str(&a->st.node_waiting, r->waiting_for);
    if (r->result == AR_NODE_NONE)
        return;
    res = r->result == AR_NODE_APPLIED     ? AR_RELOAD_APPLIED
          : r->result == AR_NODE_UNCHANGED ? AR_RELOAD_UNCHANGED
                                           : AR_RELOAD_FAILED;
    if (res != AR_RELOAD_FAILED)
        log_info("apply: %s %s (%s; proof of load: %s)", r->fingerprint ? r->fingerprint : "?",
                 res == AR_RELOAD_APPLIED ? "in force" : "already in force", r->mode,
                 ar_node_proof_name(r->proof));
    if (r->waiting_for)
        log_warn("apply: %s", r->waiting_for);
    set_reload(a, res, res == AR_RELOAD_FAILED ? ar_err_line(r->err, line, sizeof(line)) : NULL);
    retry_after(a, res);
    publish_status(a);
}

static const struct ar_node_ops node_ops = {.apply = node_apply,
                                            .prove = node_prove,
                                            .report = node_report,
                                            .save = node_save,
                                            .load = node_load,
                                            .forget = node_forget,
                                            .config = node_config};

const struct ar_node_ops *ar_agent_node_ops(void)
{
    return &node_ops;
}

static int node_start(struct agent *a)
{
    return ar_node_new(&node_ops, a, &a->node);
}

static void reload_desired(struct agent *a, bool force, const char *why);

static void on_retry(uv_timer_t *t)
{
    reload_desired(t->data, true, "retry");
}

static void on_first_look(uv_timer_t *t)
{
    struct agent *a = t->data;

    a->first_look_over = true; /* etcd did not answer in time: install as without a rotation */
    if (a->first_install_waits)
        reload_desired(a, true, "first install");
}

void ar_agent_first_install(struct agent *a)
{
    if (a->first_install_waits && !a->stopping) /* from the loop, not inside the caller */
        uv_timer_start(&a->retry, on_retry, 0, 0);
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
    int r;

    ar_diags_init(&d);
    r = ar_config_read_checked(a->set.desired_path, 0, &cfg, sha, &have, &d);
    a->st.desired_read_ms = ar_agent_now_ms();
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
        char line[1024];

        first_diag(&d, r, err, sizeof(err));
        a->st.desired_valid = false;
        a->st.desired_nerrors = d.nerrors ? d.nerrors : 1;
        ar_state_set_str(&a->st.desired_error, err);
        log_err("desired: %s is not usable (%zu error%s, %s); the last valid config stays in "
                "force",
                a->set.desired_path, a->st.desired_nerrors, a->st.desired_nerrors == 1 ? "" : "s",
                why);
        if (!d.n)
            log_err("desired: %s", err);
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
    if (a->set.n_etcd_endpoints && a->st.effective) {
        /* etcd configured: the rotation decides (DESIGN 4.4); only a first install, with no
         * effective file at all, is written directly */
        log_info("desired: the rotation decides when to apply it (etcd configured)");
        ar_coord_desired_changed(a);
        goto out;
    }
    if (a->set.n_etcd_endpoints) { /* a first install: not while a rotation runs */
        const char *wait = ar_coord_first_install_wait(a, err, sizeof(err));

        if (wait) {
            if (strcmp(wait, a->first_wait_why))
                log_info("desired: %s", wait);
            snprintf(a->first_wait_why, sizeof(a->first_wait_why), "%s", wait);
            if (!a->first_install_waits && !a->first_look_over)
                uv_timer_start(&a->first_look, on_first_look, AR_FIRST_LOOK_MS, 0);
            a->first_install_waits = true;
            ar_state_set_str(&a->st.node_waiting, wait);
            err[0] = '\0';
            goto out;
        }
        if (a->first_install_waits)
            ar_state_set_str(&a->st.node_waiting, NULL);
        a->first_install_waits = false;
        a->first_wait_why[0] = '\0';
    }
    r = a->node ? ar_node_desired(a->node, cfg) : -ESHUTDOWN; /* node_report tells */
    if (r < 0) {
        snprintf(err, sizeof(err), "cannot apply: %s", strerror(-r));
        set_reload(a, AR_RELOAD_FAILED, err);
    }
out:
    ar_config_unref(cfg);
    ar_diags_free(&d);
    publish_status(a);
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

bool ar_agent_str_eq(const char *x, const char *y)
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
                ar_agent_str_eq(ns->etcd_cafile, cur->etcd_cafile) &&
                ar_agent_str_eq(ns->etcd_certfile, cur->etcd_certfile) &&
                ar_agent_str_eq(ns->etcd_keyfile, cur->etcd_keyfile) &&
                ar_agent_str_eq(ns->etcd_user, cur->etcd_user) &&
                ar_agent_str_eq(ns->etcd_password_file, cur->etcd_password_file) &&
                ar_agent_str_eq(ns->coord_prefix, cur->coord_prefix) &&
                ns->lease_ttl_s == cur->lease_ttl_s;

    for (size_t i = 0; same && i < cur->n_etcd_endpoints; i++)
        same = ar_agent_str_eq(ns->etcd_endpoints[i], cur->etcd_endpoints[i]);
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
    if (!ar_agent_str_eq(ns.node, a->set.node)) {
        log_warn("reload: node name changes (%s -> %s) take effect at the next restart",
                 a->set.node, ns.node);
        swap_str(&ns.node, &a->set.node);
    }
    keep_etcd_settings(&ns, &a->set);
    bool watch_changed = !ar_agent_str_eq(ns.desired_path, a->set.desired_path) ||
                         ns.debounce_ms != a->set.debounce_ms ||
                         ns.poll_interval_s != a->set.poll_interval_s;
    bool status_changed = !ar_agent_str_eq(ns.status_listen, a->set.status_listen) ||
                          !ar_agent_str_eq(ns.status_socket, a->set.status_socket);
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
        if (ar_agent_now_ms() - since > ETCD_GRACE_MS)
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
    ar_coord_stop(a);
    ar_node_free(a->node);
    a->node = NULL;
    if (!uv_is_closing((uv_handle_t *)&a->sig_hup)) {
        uv_close((uv_handle_t *)&a->sig_hup, NULL);
        uv_close((uv_handle_t *)&a->sig_term, NULL);
        uv_close((uv_handle_t *)&a->sig_int, NULL);
        uv_close((uv_handle_t *)&a->heartbeat, NULL);
        uv_close((uv_handle_t *)&a->watchdog, NULL);
        uv_close((uv_handle_t *)&a->retry, NULL);
        uv_close((uv_handle_t *)&a->first_look, NULL);
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
    uv_timer_init(&a->loop, &a->first_look);
    a->sig_hup.data = a->sig_term.data = a->sig_int.data = a;
    a->heartbeat.data = a->watchdog.data = a->retry.data = a->first_look.data = a;
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
    struct ar_err e;
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
        if (adopt_effective(a, &e) < 0)
            log_warn("effective: the current %s is not valid (%s); it will be replaced by the "
                     "desired config",
                     a->set.effective_path, e.msg);
        else
            log_info("effective: %s is in force", a->set.effective_path);
    }
    r = node_start(a);
    if (r < 0) {
        log_err("agent: cannot start the apply driver: %s", strerror(-r));
        return r;
    }
    reload_desired(a, true, "startup");
    r = status_start(a);
    if (r < 0)
        return r;
    r = watch_start(a);
    if (r < 0)
        return r;
    return ar_coord_start(a);
}

/* glibc overwrites every chunk freed outside its per-thread cache (M_PERTURB) with this byte:
 * what libraries free without wiping (OpenSSL's TLS record buffers, libyaml's; libcurl's have
 * their own wiping allocator, agent/main.c) does not stay readable in freed heap. Cost:
 * bench/bench_perturb.c; what stays out of reach: docs/DESIGN.md 6. */
#define FREE_PERTURB_BYTE 0xa5

int ar_cmd_agent(int argc, char **argv)
{
    struct agent *a;
    struct ar_diags d;
    bool check = false, help = false;
    int r, rc = 1;

    mallopt(M_PERTURB, FREE_PERTURB_BYTE); /* 0 under ASan (its allocator): no effect there */
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
