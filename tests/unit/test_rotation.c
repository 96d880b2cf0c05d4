/*
 * tests/unit/test_rotation.c: the rotation state machine (coord/rotation.h) against a real etcd
 * (tests/support/etcd_harness.h), with three fake agents (the node ops: apply keeps the config
 * in memory, prove completes with "file" or is held, save/load keep copies in memory) on one
 * loop, each with its own election. The tests write members/ and alive/ as the agents' etcd
 * side would, then read what the rotation writes: the record, the acks, the history.
 *
 * Covered: a full rotation (new key, old dropped) through verify, which waits while an object
 * is still under the dropped key and passes once it is rewritten; S1 order (nobody writes
 * promote before every member acked stage); a re-encrypt engine that is not built makes the
 * leader wait with the reason; disagreeing desired configs never start a rotation; the settle
 * time; a member that is down blocks and is named, and converges when it comes back
 * (restart: saved copies); member remove; abort before promote (back to from, history
 * "aborted", not started again); abort after promote refused; a new leader finishes a
 * rotation; a phase hash that differs is never acked; a new write key that is a KMS provider
 * gets no re-encrypt pass and goes on to verify, which gates prune.
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
#include <time.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <sodium.h>
#include <uv.h>

#include "coord/election.h"
#include "coord/etcd/etcd_sync.h"
#include "coord/record.h"
#include "coord/reencrypt.h"
#include "coord/report.h"
#include "coord/rotation.h"
#include "crypto/buf.h"
#include "crypto/chain.h"
#include "crypto/config.h"
#include "tests/support/etcd_harness.h"

static struct etcd_harness H;
static struct ar_etcd_sync *S;
static uv_loop_t LOOP;

/* ---- the re-encrypt engine, faked here (the linker takes these before the library's) ------ */

static int g_reenc_mode; /* 0: not built (-ENOSYS), 1: completes at once with 7 objects, 2: fails */
static int g_reenc_runs;
/* sweeps (the pass again in phase verify, checkpoint ".../sweep-<ms>"): counted; one rewrites
 * g_sweep_key with g_sweep_cfg when set (and says so), else rewrites nothing. after_test
 * resets these. */
static int g_sweeps;
static const char *g_sweep_key;
static struct ar_config *g_sweep_cfg;
static bool g_reenc_sweep;
static bool g_sweep_claims; /* says it rewrote 1 and rewrites nothing */
static int g_sweep_fails;   /* sweeps that fail before one goes through */
static uv_timer_t g_reenc_timer;
static ar_reencrypt_done_cb g_reenc_done;
static void *g_reenc_arg;

static void seed_secret(const char *key, struct ar_config *c);

static void reenc_fire(uv_timer_t *t)
{
    struct ar_reencrypt_progress p = {.done = 7, .total = 7, .eta_s = 0};
    struct ar_err e;

    if (g_reenc_sweep && g_sweep_fails > 0) {
        g_sweep_fails--;
        ar_err_set(&e, -EIO, "/reg", "etcd: connection reset");
        g_reenc_done(g_reenc_arg, -EIO, &p, &e);
        return;
    }
    if (g_reenc_sweep && g_sweep_key) {
        seed_secret(g_sweep_key, g_sweep_cfg);
        p.rewritten = 1;
    }
    if (g_reenc_sweep && g_sweep_claims)
        p.rewritten = 1;

    if (g_reenc_mode == 2) { /* fails every time, as a pass without etcd permissions would */
        ar_err_set(&e, -EACCES, "/reg", "etcdserver: permission denied");
        g_reenc_done(g_reenc_arg, -EACCES, &p, &e);
        return;
    }
    g_reenc_done(g_reenc_arg, 0, &p, NULL);
}

int ar_reencrypt_start(struct ar_etcd *c, struct ar_chain *chain, const struct ar_reencrypt_opts *o,
                       ar_reencrypt_progress_cb progress, ar_reencrypt_done_cb done, void *arg,
                       struct ar_reencrypt **out)
{
    *out = NULL;
    if (g_reenc_mode == 0)
        return -ENOSYS;
    assert_non_null(o->guard); /* S7 in every checkpoint txn */
    assert_non_null(o->checkpoint_key);
    assert_true(o->nselectors >= 1);
    g_reenc_sweep = strstr(o->checkpoint_key, "/sweep-") != NULL;
    if (g_reenc_sweep)
        g_sweeps++;
    else
        g_reenc_runs++;
    { /* a checkpoint, as the pass writes one: the finish must delete it */
        struct ar_etcd_op ck = {.type = AR_ETCD_PUT,
                                .key = (const uint8_t *)o->checkpoint_key,
                                .key_len = strlen(o->checkpoint_key),
                                .value = (const uint8_t *)"{}",
                                .value_len = 2};
        assert_int_equal(ar_etcd_sync_put(S, &ck, NULL, NULL), 0);
    }
    g_reenc_done = done;
    g_reenc_arg = arg;
    uv_timer_start(&g_reenc_timer, reenc_fire, 10, 0);
    *out = (struct ar_reencrypt *)&g_reenc_timer;
    return 0;
}

void ar_reencrypt_stop(struct ar_reencrypt *r)
{
    uv_timer_stop(&g_reenc_timer);
}

/* ---- configs ------------------------------------------------------------------------------ */

struct keys {
    char k1[64], k2[64];
};

static void gen_keys(struct keys *k)
{
    uint8_t b[32];

    randombytes_buf(b, sizeof(b));
    ar_b64_encode(b, sizeof(b), k->k1);
    randombytes_buf(b, sizeof(b));
    ar_b64_encode(b, sizeof(b), k->k2);
    sodium_memzero(b, sizeof(b));
}

static struct ar_config *cfg_id(const struct keys *k, const char *names, bool identity);

/* names: "k1", "k2", "k2,k1", "k1,k2"; identity last */
static struct ar_config *cfg(const struct keys *k, const char *names)
{
    return cfg_id(k, names, true);
}

/* the same, with identity last or not */
static struct ar_config *cfg_id(const struct keys *k, const char *names, bool identity)
{
    struct ar_load_opts lo = {.reload = true};
    struct ar_config *c = NULL;
    struct ar_diags d;
    char y[2048], list[1024] = "";
    char tmp[64];
    const char *p = names;
    int n;

    while (*p) {
        int which = p[1] - '0';
        n = snprintf(list + strlen(list), sizeof(list) - strlen(list),
                     "            - name: key%d\n              secret: %s\n", which,
                     which == 1 ? k->k1 : k->k2);
        (void)n;
        p += 2;
        if (*p == ',')
            p++;
    }
    n = snprintf(y, sizeof(y),
                 "apiVersion: apiserver.config.k8s.io/v1\n"
                 "kind: EncryptionConfiguration\n"
                 "resources:\n"
                 "  - resources: [secrets]\n"
                 "    providers:\n"
                 "      - aescbc:\n"
                 "          keys:\n"
                 "%s"
                 "%s",
                 list, identity ? "      - identity: {}\n" : "");
    snprintf(tmp, sizeof(tmp), "%s%s.yaml", names, identity ? "" : "-noid");
    ar_diags_init(&d);
    assert_int_equal(ar_config_load_mem(tmp, y, (size_t)n, &lo, &c, &d), 0);
    ar_diags_free(&d);
    sodium_memzero(y, sizeof(y));
    sodium_memzero(list, sizeof(list));
    return c;
}

static void fp_of(const struct ar_config *c, char out[AR_HASH_STRLEN])
{
    ar_config_fingerprint_str(c, out);
}

/* ---- the fake agents ---------------------------------------------------------------------- */

#define LOGN 64
struct applied {
    char node[16];
    char hash[AR_HASH_STRLEN];
};
static struct applied g_log[LOGN];
static int g_nlog;

struct fa {
    char name[16];
    char prefix[32];
    struct ar_etcd *c;
    struct ar_config *desired, *effective;
    char saved_id[AR_RECORD_ID_LEN];
    struct ar_config *sfrom, *sto;
    int proves, transitions, acks;
    bool hold_prove;
    bool save_fails; /* its state directory cannot be written */
    ar_node_prove_done held;
    void *held_arg;
    enum ar_prove_goal goals[8];
    struct ar_rotation *rot;
    struct ar_election *el;
};

static void f_apply(void *agent, struct ar_config *c, ar_node_apply_done done, void *arg)
{
    struct fa *f = agent;

    ar_config_unref(f->effective);
    f->effective = ar_config_ref(c);
    if (g_nlog < LOGN) {
        snprintf(g_log[g_nlog].node, sizeof(g_log[0].node), "%s", f->name);
        ar_config_file_hash_str(c, g_log[g_nlog++].hash);
    }
    done(arg, 0, true, NULL);
}

static void f_prove(void *agent, const struct ar_prove_req *req, ar_node_prove_done done, void *arg)
{
    struct fa *f = agent;
    char h[AR_HASH_STRLEN];

    ar_config_file_hash_str(req->cfg, h);
    assert_ptr_equal(req->cfg, f->effective); /* the config just written */
    assert_non_null(req->rotation_id);
    assert_true(req->written_ms > 0);
    f->goals[f->proves++ % 8] = req->goal;
    if (f->hold_prove) {
        f->held = done;
        f->held_arg = arg;
        return;
    }
    done(arg, 0, AR_NODE_PROOF_FILE, NULL);
}

static void f_report(void *agent, const struct ar_node_report *r)
{
}

static int f_save(void *agent, const char *id, struct ar_config *from, struct ar_config *to)
{
    struct fa *f = agent;

    if (f->save_fails)
        return -ENOSPC;
    snprintf(f->saved_id, sizeof(f->saved_id), "%s", id);
    ar_config_unref(f->sfrom);
    ar_config_unref(f->sto);
    f->sfrom = ar_config_ref(from);
    f->sto = ar_config_ref(to);
    return 0;
}

static int f_load(void *agent, const char *id, struct ar_config **from, struct ar_config **to)
{
    struct fa *f = agent;

    if (strcmp(f->saved_id, id))
        return -ENOENT;
    *from = ar_config_ref(f->sfrom);
    *to = ar_config_ref(f->sto);
    return 0;
}

static void f_forget(void *agent, const char *keep)
{
    struct fa *f = agent;

    if (keep && !strcmp(keep, f->saved_id))
        return;
    f->saved_id[0] = '\0';
    f->sfrom = ar_config_unref(f->sfrom);
    f->sto = ar_config_unref(f->sto);
}

static struct ar_config *f_config(void *agent, bool desired)
{
    struct fa *f = agent;
    return desired ? f->desired : f->effective;
}

static void f_event(void *agent, const struct ar_rotation_event *ev)
{
    struct fa *f = agent;

    if (ev->kind == AR_ROT_EV_TRANSITION)
        f->transitions++;
    else if (ev->kind == AR_ROT_EV_ACK)
        f->acks++;
}

/* The optional re-encrypt ops (coord/node.h): mode etcd unless g_api_mode; the API-mode pass
 * is faked: it deletes g_api_rewrites (as the API server's rewrite moves it off the old key)
 * and completes with one rewritten object. */
static int g_api_mode, g_api_runs;
static const char *g_api_rewrites;
static char g_api_sel[64];
static uv_timer_t g_api_timer;
static ar_reencrypt_done_cb g_api_done;
static void *g_api_arg;

static void del_key(const char *key);

static enum ar_node_reenc_mode f_reenc_mode(void *agent, double *rate)
{
    *rate = 0;
    return g_api_mode ? AR_NODE_REENC_API : AR_NODE_REENC_ETCD;
}

static void api_fire(uv_timer_t *t)
{
    struct ar_reencrypt_progress p = {.done = 1, .total = 1, .rewritten = 1, .eta_s = 0};

    if (g_api_rewrites)
        del_key(g_api_rewrites);
    g_api_done(g_api_arg, 0, &p, NULL);
}

static int f_reencrypt(void *agent, const struct ar_node_reenc_req *req,
                       ar_reencrypt_progress_cb progress, ar_reencrypt_done_cb done, void *arg,
                       void **handle)
{
    assert_true(g_api_mode);
    assert_non_null(req->cfg);
    assert_true(req->nselectors >= 1);
    snprintf(g_api_sel, sizeof(g_api_sel), "%s", req->selectors[0]);
    g_api_runs++;
    g_api_done = done;
    g_api_arg = arg;
    uv_timer_start(&g_api_timer, api_fire, 10, 0);
    *handle = &g_api_timer;
    return 0;
}

static void f_reencrypt_stop(void *agent, void *handle)
{
    uv_timer_stop(&g_api_timer);
}

static const struct ar_node_ops OPS = {.apply = f_apply,
                                       .prove = f_prove,
                                       .report = f_report,
                                       .save = f_save,
                                       .load = f_load,
                                       .forget = f_forget,
                                       .config = f_config,
                                       .reencrypt_mode = f_reenc_mode,
                                       .reencrypt = f_reencrypt,
                                       .reencrypt_stop = f_reencrypt_stop};

static void put_kv(const char *key, const char *val)
{
    struct ar_etcd_op op = {.type = AR_ETCD_PUT,
                            .key = (const uint8_t *)key,
                            .key_len = strlen(key),
                            .value = (const uint8_t *)val,
                            .value_len = strlen(val)};
    assert_int_equal(ar_etcd_sync_put(S, &op, NULL, NULL), 0);
}

static void del_key(const char *key)
{
    struct ar_etcd_op op = {
        .type = AR_ETCD_DELETE, .key = (const uint8_t *)key, .key_len = strlen(key)};
    assert_int_equal(ar_etcd_sync_delete(S, &op, NULL, NULL), 0);
}

/* The value of key into buf ("" when absent); returns whether present. */
static bool get_kv(const char *key, char *buf, size_t n)
{
    struct ar_etcd_op op = {
        .type = AR_ETCD_RANGE, .key = (const uint8_t *)key, .key_len = strlen(key)};
    struct ar_etcd_result *res = NULL;
    bool have;

    assert_int_equal(ar_etcd_sync_range(S, &op, &res, NULL), 0);
    have = res->n_kvs > 0;
    buf[0] = '\0';
    if (have)
        snprintf(buf, n, "%.*s", (int)res->kvs[0].value_len, (const char *)res->kvs[0].value);
    ar_etcd_result_free(res);
    return have;
}

static int count_prefix(const char *prefix)
{
    uint8_t end[256];
    struct ar_etcd_op op = {.type = AR_ETCD_RANGE,
                            .key = (const uint8_t *)prefix,
                            .key_len = strlen(prefix),
                            .range_end = end,
                            .count_only = true};
    struct ar_etcd_result *res = NULL;
    int n;

    op.range_end_len = ar_etcd_prefix_end(op.key, op.key_len, end);
    assert_int_equal(ar_etcd_sync_range(S, &op, &res, NULL), 0);
    n = (int)res->count;
    ar_etcd_result_free(res);
    return n;
}

/* What the agent's etcd side writes: members/<node> and alive/<node>. */
static void publish(struct fa *f, int64_t since_ms)
{
    struct ar_report r = {.desired_valid = f->desired != NULL, .desired_since_ms = since_ms};
    struct ar_registration g = {.first_seen_ms = 1, .registered_ms = 1};
    char key[128], *s;

    snprintf(r.node, sizeof(r.node), "%s", f->name);
    snprintf(g.node, sizeof(g.node), "%s", f->name);
    if (f->desired)
        fp_of(f->desired, r.desired_fp);
    if (f->effective) {
        fp_of(f->effective, r.effective_fp);
        ar_config_file_hash_str(f->effective, r.effective_hash);
    }
    assert_int_equal(ar_registration_build(&g, &s), 0);
    snprintf(key, sizeof(key), "%smembers/%s", f->prefix, f->name);
    put_kv(key, s);
    free(s);
    assert_int_equal(ar_report_build(&r, true, &s), 0);
    snprintf(key, sizeof(key), "%salive/%s", f->prefix, f->name);
    put_kv(key, s);
    free(s);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *g_regprefix;

static void start_agent(struct fa *f)
{
    struct ar_rotation_settings rs = {.prefix = f->prefix,
                                      .node = f->name,
                                      .etcd_prefix = g_regprefix,
                                      .settle_ms = 1000,
                                      .tick_ms = 100,
                                      .verify_retry_ms = 200};
    struct ar_election_settings es = {.value = f->name, .ttl_s = 2};
    char key[64];
    struct ar_etcd_settings st;

    etcd_harness_settings(&H, &st);
    assert_int_equal(ar_etcd_new(&LOOP, &st, &f->c), 0);
    snprintf(key, sizeof(key), "%sleader", f->prefix);
    es.key = key;
    assert_int_equal(ar_election_start(f->c, &es, NULL, NULL, &f->el), 0);
    assert_int_equal(ar_rotation_new(f->c, &rs, &OPS, f, f_event, NULL, &f->rot), 0);
    ar_rotation_set_election(f->rot, f->el);
}

/* As a SIGKILL would: nothing said to etcd (its lease expires on its own). */
static void stop_agent(struct fa *f)
{
    ar_rotation_free(f->rot);
    f->rot = NULL;
    if (f->held) { /* the agent's proof is cancelled with it: completes exactly once */
        ar_node_prove_done d = f->held;
        f->held = NULL;
        d(f->held_arg, -ECANCELED, AR_NODE_PROOF_NONE, NULL);
    }
    ar_election_free(f->el);
    f->el = NULL;
    ar_etcd_close(f->c);
    f->c = NULL;
    etcd_harness_run_for(&LOOP, 20);
}

static void free_agent(struct fa *f)
{
    if (f->rot)
        stop_agent(f);
    ar_config_unref(f->desired);
    ar_config_unref(f->effective);
    ar_config_unref(f->sfrom);
    ar_config_unref(f->sto);
    memset(f, 0, sizeof(*f));
}

static struct fa A[3];

static void setup_agents(const char *prefix, struct ar_config *from, struct ar_config *to,
                         int64_t since)
{
    g_nlog = 0;
    for (int i = 0; i < 3; i++) {
        snprintf(A[i].name, sizeof(A[i].name), "cp-%d", i + 1);
        snprintf(A[i].prefix, sizeof(A[i].prefix), "%s", prefix);
        A[i].effective = ar_config_ref(from);
        A[i].desired = ar_config_ref(to);
        publish(&A[i], since);
    }
    /* cp-1 first, so that it leads */
    start_agent(&A[0]);
    for (int t = 0; t < 100 && !ar_election_is_leader(A[0].el, ar_etcd_now_ms()); t++)
        etcd_harness_run_for(&LOOP, 20);
    assert_true(ar_election_is_leader(A[0].el, ar_etcd_now_ms()));
    start_agent(&A[1]);
    start_agent(&A[2]);
}

static void teardown_agents(void)
{
    for (int i = 0; i < 3; i++)
        free_agent(&A[i]);
    etcd_harness_run_for(&LOOP, 50);
}

/* The rotation record (false when absent). */
static bool record(const char *prefix, struct ar_rotation_rec *rec)
{
    char key[64], buf[AR_RECORD_MAX_BYTES];

    snprintf(key, sizeof(key), "%srotation", prefix);
    if (!get_kv(key, buf, sizeof(buf)))
        return false;
    assert_int_equal(ar_rotation_rec_parse(buf, strlen(buf), rec), 0);
    return true;
}

typedef bool (*pred_fn)(const char *prefix, void *arg);

static bool run_until(pred_fn p, const char *prefix, void *arg, unsigned ms)
{
    for (unsigned t = 0; t < ms; t += 50) {
        if (p(prefix, arg))
            return true;
        etcd_harness_run_for(&LOOP, 50);
    }
    return p(prefix, arg);
}

static bool at_phase(const char *prefix, void *arg)
{
    struct ar_rotation_rec rec;
    return record(prefix, &rec) && rec.state == AR_ROT_RUNNING &&
           !strcmp(rec.phases[rec.index].name, (const char *)arg);
}

static bool no_record(const char *prefix, void *arg)
{
    struct ar_rotation_rec rec;
    char key[64];

    snprintf(key, sizeof(key), "%shistory/", prefix);
    return !record(prefix, &rec) && count_prefix(key) > 0;
}

static bool why_has(const char *prefix, void *arg)
{
    json_t *st = ar_rotation_status_json(A[0].rot);
    const char *w = json_string_value(json_object_get(st, "waiting_for"));
    bool yes = w && strstr(w, (const char *)arg);

    json_decref(st);
    return yes;
}

static void status_dump(struct fa *f)
{
    json_t *st = ar_rotation_status_json(f->rot);
    char *txt = json_dumps(st, JSON_COMPACT);

    fprintf(stderr, "status of %s (leads: %d): %s\n", f->name,
            ar_election_is_leader(f->el, ar_etcd_now_ms()), txt);
    free(txt);
    json_decref(st);
}

/* The first index in the apply log of hash h by node (or any node: NULL); -1 when none. */
static int first_apply(const char *node, const char *h)
{
    for (int i = 0; i < g_nlog; i++)
        if (!strcmp(g_log[i].hash, h) && (!node || !strcmp(g_log[i].node, node)))
            return i;
    return -1;
}

/* A Secret stored under key1 by the from config's chain, as kube-apiserver would store it. */
static void seed_secret(const char *key, struct ar_config *c)
{
    struct ar_chain *ch;
    struct ar_buf out = AR_BUF_INIT;
    struct ar_result res;
    static const char plain[] = "k8s\x00secret-bytes";
    struct ar_etcd_op op = {
        .type = AR_ETCD_PUT, .key = (const uint8_t *)key, .key_len = strlen(key)};

    assert_int_equal(ar_chain_new(c, &ch), 0);
    assert_int_equal(ar_chain_write(ch, "", "secrets", (const uint8_t *)key, strlen(key),
                                    (const uint8_t *)plain, sizeof(plain) - 1, &out, &res),
                     0);
    op.value = out.p;
    op.value_len = out.len;
    assert_int_equal(ar_etcd_sync_put(S, &op, NULL, NULL), 0);
    ar_buf_free(&out);
    ar_chain_unref(ch);
}

static void seed_plain(const char *key)
{
    static const char plain[] = "k8s\x00plain-bytes";
    struct ar_etcd_op op = {.type = AR_ETCD_PUT,
                            .key = (const uint8_t *)key,
                            .key_len = strlen(key),
                            .value = (const uint8_t *)plain,
                            .value_len = sizeof(plain) - 1};

    assert_int_equal(ar_etcd_sync_put(S, &op, NULL, NULL), 0);
}

/* ---- tests -------------------------------------------------------------------------------- */

/* New key, old dropped: stage, promote, reencrypt, verify (waits while an object is under
 * key1), prune, history; S1 order; proof goals by phase. */
static void test_full_rotation(void **state)
{
    struct keys k;
    struct ar_config *from, *to;
    struct ar_rotation_rec rec;
    char hstage[AR_HASH_STRLEN], hprom[AR_HASH_STRLEN], key[128], buf[1024];
    int64_t t0 = now_ms();

    gen_keys(&k);
    from = cfg(&k, "k1");
    to = cfg(&k, "k2");
    g_reenc_mode = 1;
    g_reenc_runs = 0;
    g_regprefix = "/reg1";
    seed_secret("/reg1/secrets/default/s1", from);
    setup_agents("/t1/", from, to, now_ms() - 5000);

    assert_true(run_until(at_phase, "/t1/", "verify", 15000));
    assert_true(record("/t1/", &rec));
    assert_int_equal(rec.nphases, 5);
    assert_string_equal(rec.phases[0].name, "stage");
    assert_string_equal(rec.phases[4].name, "prune");
    assert_int_equal(rec.nmembers, 3);
    assert_int_equal(g_reenc_runs, 1);
    assert_true(rec.started_ms >= t0); /* desired since t0 - 5 s: settled at once */
    memcpy(hstage, rec.phases[0].hash, sizeof(hstage));
    memcpy(hprom, rec.phases[1].hash, sizeof(hprom));

    /* verify waits: one object is still under key1 (prune would drop it) */
    assert_true(run_until(why_has, "/t1/", "1 objects under keys prune would drop", 5000));
    etcd_harness_run_for(&LOOP, 600);
    assert_true(at_phase("/t1/", "verify"));
    {
        json_t *st = ar_rotation_status_json(A[0].rot);
        json_t *v = json_object_get(st, "verify");
        assert_int_equal(json_integer_value(json_object_get(v, "under_dropped_keys")), 1);
        assert_int_equal(
            json_integer_value(json_object_get(
                json_object_get(json_object_get(v, "counts"), "secrets"), "aescbc:key1")),
            1);
        assert_string_equal(json_string_value(json_object_get(st, "phase")), "verify");
        /* the sweep that verify started rewrote nothing: not run again */
        assert_int_equal(json_integer_value(json_object_get(v, "sweeps")), 1);
        assert_int_equal(g_sweeps, 1);
        json_decref(st);
    }
    /* the object rewritten under key2 (as re-encrypt would): verify passes, prune, done */
    seed_secret("/reg1/secrets/default/s1", to);
    assert_true(run_until(no_record, "/t1/", NULL, 10000));
    snprintf(key, sizeof(key), "/t1/history/%s", rec.id);
    assert_true(get_kv(key, buf, sizeof(buf)));
    assert_non_null(strstr(buf, "\"result\":\"done\""));
    assert_non_null(strstr(buf, "\"phases\":[\"stage\",\"promote\",\"reencrypt\",\"verify\","
                                "\"prune\"]"));
    snprintf(key, sizeof(key), "/t1/acks/%s/", rec.id);
    assert_int_equal(count_prefix(key), 0); /* deleted with the record */

    /* S1: every member wrote stage before anyone wrote promote */
    for (int i = 0; i < 3; i++) {
        assert_true(first_apply(A[i].name, hstage) >= 0);
        assert_true(first_apply(A[i].name, hstage) < first_apply(NULL, hprom));
    }
    /* every member ends on `to`, and forgets its saved copies once it sees the record gone */
    for (int t = 0; t < 40 && (A[0].sfrom || A[1].sfrom || A[2].sfrom); t++)
        etcd_harness_run_for(&LOOP, 50);
    for (int i = 0; i < 3; i++) {
        char a[AR_HASH_STRLEN], b[AR_HASH_STRLEN];
        fp_of(A[i].effective, a);
        fp_of(to, b);
        assert_string_equal(a, b);
        assert_int_equal(A[i].goals[0], AR_PROVE_READ);   /* stage: reads key2 */
        assert_int_equal(A[i].goals[1], AR_PROVE_WRITE);  /* promote: writes key2 */
        assert_int_equal(A[i].goals[2], AR_PROVE_LOADED); /* prune */
        assert_int_equal(A[i].proves, 3);                 /* reencrypt, verify: "none" */
        assert_null(A[i].sfrom);                          /* saved copies forgotten */
    }
    assert_true(A[0].transitions >= 6); /* created, 4 advances, done */
    teardown_agents();
    ar_config_unref(from);
    ar_config_unref(to);
}

/* An object verify finds under a key prune drops (written with the old key after the pass read
 * its range) is rewritten by a sweep, and the rotation finishes without the operator; the
 * checkpoints of the pass and of the sweep go with the record. */
static void test_verify_sweeps(void **state)
{
    struct keys k;
    struct ar_config *from, *to;
    struct ar_rotation_rec rec;
    char key[128], buf[1024];

    gen_keys(&k);
    from = cfg(&k, "k1");
    to = cfg(&k, "k2");
    g_reenc_mode = 1;
    g_reenc_runs = 0;
    g_sweep_key = "/reg21/secrets/default/s1";
    g_sweep_cfg = to;
    g_regprefix = "/reg21";
    seed_secret("/reg21/secrets/default/s1", from);
    setup_agents("/t21/", from, to, now_ms() - 5000);
    assert_true(run_until(at_phase, "/t21/", "verify", 15000));
    assert_true(record("/t21/", &rec));
    assert_true(run_until(no_record, "/t21/", NULL, 10000));
    assert_int_equal(g_reenc_runs, 1);
    assert_int_equal(g_sweeps, 1);
    snprintf(key, sizeof(key), "/t21/history/%s", rec.id);
    assert_true(get_kv(key, buf, sizeof(buf)));
    assert_non_null(strstr(buf, "\"result\":\"done\""));
    assert_int_equal(count_prefix("/t21/reencrypt/"), 0);
    teardown_agents();
    ar_config_unref(from);
    ar_config_unref(to);
}

/* Sweeps that fail are not counted and run again after the next scan; at most 3 count, then
 * the status says the rest needs the operator and nothing more runs. */
static void test_sweeps_bounded(void **state)
{
    struct keys k;
    struct ar_config *from, *to;

    gen_keys(&k);
    from = cfg(&k, "k1");
    to = cfg(&k, "k2");
    g_reenc_mode = 1;
    g_reenc_runs = 0;
    g_sweep_claims = true;
    g_sweep_fails = 2;
    g_regprefix = "/reg23";
    seed_secret("/reg23/secrets/default/s1", from);
    setup_agents("/t23/", from, to, now_ms() - 5000);
    assert_true(run_until(at_phase, "/t23/", "verify", 15000));
    assert_true(run_until(why_has, "/t23/", "the last sweep failed: etcd: connection reset", 5000));
    assert_true(run_until(why_has, "/t23/",
                          "3 sweeps ran, the last rewrote 1: the rest needs the operator", 10000));
    assert_int_equal(g_sweeps, 5); /* 2 failed, 3 counted */
    etcd_harness_run_for(&LOOP, 1000);
    assert_int_equal(g_sweeps, 5);
    assert_true(at_phase("/t23/", "verify"));
    seed_secret("/reg23/secrets/default/s1", to); /* the operator rewrites it */
    assert_true(run_until(no_record, "/t23/", NULL, 10000));
    teardown_agents();
    ar_config_unref(from);
    ar_config_unref(to);
}

/* identity dropped for secrets only (from [aescbc key1, identity] to [aescbc key1]): verify
 * holds prune for what `to` cannot read, per resource. A plaintext secret holds it until it is
 * rewritten; plaintext configmaps (no rule: read as they are) never do. (Verify summed every
 * dropped name over every resource, so the configmap held the rotation for ever.) */
static void test_verify_per_resource(void **state)
{
    struct keys k;
    struct ar_config *from, *to;
    struct ar_rotation_rec rec;
    char key[128], buf[1024];

    gen_keys(&k);
    from = cfg(&k, "k1");
    to = cfg_id(&k, "k1", false);
    g_reenc_mode = 1;
    g_reenc_runs = 0;
    g_regprefix = "/reg19";
    seed_secret("/reg19/secrets/default/s1", from); /* under key1: `to` reads it */
    seed_plain("/reg19/configmaps/default/c1");
    seed_plain("/reg19/configmaps/default/c2");
    seed_plain("/reg19/secrets/default/p1"); /* `to` cannot read it */
    setup_agents("/t19/", from, to, now_ms() - 5000);

    assert_true(run_until(why_has, "/t19/", "1 objects under keys prune would drop", 15000));
    assert_true(record("/t19/", &rec));
    etcd_harness_run_for(&LOOP, 600);
    assert_true(at_phase("/t19/", "verify"));
    seed_secret("/reg19/secrets/default/p1", from); /* rewritten, as re-encrypt would */
    assert_true(run_until(no_record, "/t19/", NULL, 10000));
    snprintf(key, sizeof(key), "/t19/history/%s", rec.id);
    assert_true(get_kv(key, buf, sizeof(buf)));
    assert_non_null(strstr(buf, "\"result\":\"done\""));
    teardown_agents();
    ar_config_unref(from);
    ar_config_unref(to);
}

/* A pass that fails every time is started again after 1, 2, 4 .. s, never in a loop, and the
 * status says why (it was started again at once, as fast as etcd answered). */
static void test_reencrypt_failing_backs_off(void **state)
{
    struct keys k;
    struct ar_config *from, *to;

    gen_keys(&k);
    from = cfg(&k, "k1");
    to = cfg(&k, "k2,k1");
    g_reenc_mode = 2;
    g_reenc_runs = 0;
    g_regprefix = "/reg20";
    setup_agents("/t20/", from, to, now_ms() - 5000);
    assert_true(run_until(at_phase, "/t20/", "reencrypt", 10000));
    assert_true(
        run_until(why_has, "/t20/", "re-encrypt failed (etcdserver: permission denied)", 5000));
    etcd_harness_run_for(&LOOP, 3500);
    /* started at t, t + 1 s, t + 3 s (and perhaps t + 7 s): not hundreds of times */
    assert_true(g_reenc_runs >= 2 && g_reenc_runs <= 4);
    assert_true(at_phase("/t20/", "reencrypt"));
    g_reenc_mode = 1; /* the cause is fixed: the next try goes through */
    assert_true(run_until(at_phase, "/t20/", "verify", 10000));
    teardown_agents();
    ar_config_unref(from);
    ar_config_unref(to);
}

/* Without the re-encrypt engine the leader waits in reencrypt, saying why; an abort there is
 * refused (after promote) with the explanation. */
static void test_reencrypt_missing_and_abort_refused(void **state)
{
    struct keys k;
    struct ar_config *from, *to;
    struct ar_rotation_rec rec;
    struct ar_abort_rec ab = {.by = "operator", .time_ms = 1};
    char key[128], *s;

    gen_keys(&k);
    from = cfg(&k, "k1");
    to = cfg(&k, "k2,k1"); /* new key kept: stage, promote, reencrypt, verify */
    g_reenc_mode = 0;
    g_regprefix = "/reg2";
    setup_agents("/t2/", from, to, now_ms() - 5000);
    assert_true(run_until(at_phase, "/t2/", "reencrypt", 15000));
    assert_true(run_until(why_has, "/t2/", "re-encrypt engine not built", 3000));
    etcd_harness_run_for(&LOOP, 500);
    assert_true(at_phase("/t2/", "reencrypt")); /* nothing advances on a timeout */
    assert_true(record("/t2/", &rec));
    assert_int_equal(rec.nphases, 4);

    memcpy(ab.id, rec.id, sizeof(ab.id));
    assert_int_equal(ar_abort_rec_build(&ab, &s), 0);
    snprintf(key, sizeof(key), "/t2/abort/%s", rec.id);
    put_kv(key, s);
    free(s);
    for (int t = 0; t < 60 && count_prefix(key); t++)
        etcd_harness_run_for(&LOOP, 50);
    assert_int_equal(count_prefix(key), 0); /* the request was taken */
    assert_true(record("/t2/", &rec));
    assert_int_equal(rec.state, AR_ROT_RUNNING);
    assert_non_null(strstr(rec.abort_refused, "going back is a new rotation to the old config"));
    teardown_agents();
    ar_config_unref(from);
    ar_config_unref(to);
}

/* [kms p1 (v2), identity] for secrets: a KMS provider as the new write key */
static struct ar_config *cfg_kms(void)
{
    static const char y[] = "apiVersion: apiserver.config.k8s.io/v1\n"
                            "kind: EncryptionConfiguration\n"
                            "resources:\n"
                            "  - resources: [secrets]\n"
                            "    providers:\n"
                            "      - kms:\n"
                            "          apiVersion: v2\n"
                            "          name: p1\n"
                            "          endpoint: unix:///run/atrest-test-kms.sock\n"
                            "      - identity: {}\n";
    struct ar_load_opts lo = {.reload = true};
    struct ar_config *c = NULL;
    struct ar_diags d;

    ar_diags_init(&d);
    assert_int_equal(ar_config_load_mem("kms.yaml", y, sizeof(y) - 1, &lo, &c, &d), 0);
    ar_diags_free(&d);
    return c;
}

/* A new write key that is a KMS provider: the leader never starts a re-encrypt pass, says why,
 * and moves on to verify, which gates prune as usual (waits while an object is under key1, the
 * KMS note still shown; passes once the operator's rewrite left none). */
static void test_reencrypt_kms_goes_to_verify(void **state)
{
    struct keys k;
    struct ar_config *from, *to;
    struct ar_rotation_rec rec;

    gen_keys(&k);
    from = cfg(&k, "k1");
    to = cfg_kms();
    g_reenc_mode = 1;
    g_reenc_runs = 0;
    g_regprefix = "/reg12";
    seed_secret("/reg12/secrets/default/s1", from);
    setup_agents("/t12/", from, to, now_ms() - 5000);
    assert_true(run_until(at_phase, "/t12/", "verify", 15000));
    assert_true(record("/t12/", &rec));
    assert_string_equal(rec.phases[2].name, "reencrypt");
    assert_true(run_until(why_has, "/t12/", "1 objects under keys prune would drop", 5000));
    assert_true(why_has("/t12/", "the new write key of secrets is KMS provider p1: atrest cannot "
                                 "re-encrypt through a KMS plugin yet; rewrite those objects "
                                 "through the API server (e.g. kubectl get secrets -A -o json | "
                                 "kubectl replace -f -) and the rotation goes on at verify"));
    etcd_harness_run_for(&LOOP, 300);
    assert_true(at_phase("/t12/", "verify")); /* nothing under key1 may be dropped */
    assert_int_equal(g_reenc_runs, 0);        /* no pass through a KMS plugin */
    /* the operator rewrote it through the API server (here: gone from key1) */
    del_key("/reg12/secrets/default/s1");
    assert_true(run_until(no_record, "/t12/", NULL, 10000));
    assert_int_equal(g_reenc_runs, 0);
    teardown_agents();
    ar_config_unref(from);
    ar_config_unref(to);
}

/* reencrypt.mode api: a KMS write key no longer blocks the pass: the leader runs the node's
 * reencrypt op (not the etcd engine), the status says mode api, and the rotation finishes. */
static void test_reencrypt_api_mode_with_kms(void **state)
{
    struct keys k;
    struct ar_config *from, *to;
    json_t *st;
    bool saw_api = false;

    gen_keys(&k);
    from = cfg(&k, "k1");
    to = cfg_kms();
    g_reenc_mode = 1;
    g_reenc_runs = 0;
    g_api_mode = 1;
    g_api_runs = 0;
    g_api_rewrites = "/reg13/secrets/default/s1";
    g_regprefix = "/reg13";
    seed_secret("/reg13/secrets/default/s1", from);
    setup_agents("/t13/", from, to, now_ms() - 5000);
    for (int i = 0; i < 300 && !no_record("/t13/", NULL); i++) {
        etcd_harness_run_for(&LOOP, 50);
        st = ar_rotation_status_json(A[0].rot);
        saw_api |= !strcmp(
            json_string_value(json_object_get(json_object_get(st, "reencrypt"), "mode")), "api");
        assert_null(strstr(json_string_value(json_object_get(st, "waiting_for")), "KMS"));
        json_decref(st);
    }
    assert_true(no_record("/t13/", NULL));
    assert_true(saw_api);
    assert_int_equal(g_api_runs, 1);   /* the node's pass, once */
    assert_int_equal(g_reenc_runs, 0); /* never the etcd engine */
    assert_string_equal(g_api_sel, "secrets");
    g_api_mode = 0;
    g_api_rewrites = NULL;
    teardown_agents();
    ar_config_unref(from);
    ar_config_unref(to);
}

/* Disagreeing desired configs never start a rotation, and the status names who has what. */
static void test_disagreement(void **state)
{
    struct keys k;
    struct ar_config *from, *to, *other;
    struct ar_rotation_rec rec;

    gen_keys(&k);
    from = cfg(&k, "k1");
    to = cfg(&k, "k2");
    other = cfg(&k, "k1,k2");
    g_regprefix = "/reg3";
    for (int i = 0; i < 3; i++) {
        snprintf(A[i].name, sizeof(A[i].name), "cp-%d", i + 1);
        snprintf(A[i].prefix, sizeof(A[i].prefix), "/t3/");
        A[i].effective = ar_config_ref(from);
        A[i].desired = ar_config_ref(i == 2 ? other : to);
        publish(&A[i], now_ms() - 10000);
    }
    start_agent(&A[0]);
    start_agent(&A[1]);
    start_agent(&A[2]);
    assert_true(run_until(why_has, "/t3/", "disagree on their desired configs", 5000));
    etcd_harness_run_for(&LOOP, 1500);
    assert_false(record("/t3/", &rec));
    assert_true(why_has("/t3/", "cp-3 has"));
    teardown_agents();
    ar_config_unref(from);
    ar_config_unref(to);
    ar_config_unref(other);
}

/* The desired config must stay unchanged settle_ms everywhere first. */
static void test_settle(void **state)
{
    struct keys k;
    struct ar_config *from, *to;
    struct ar_rotation_rec rec;
    int64_t t0 = now_ms();

    gen_keys(&k);
    from = cfg(&k, "k1");
    to = cfg(&k, "k2");
    g_regprefix = "/reg4";
    g_reenc_mode = 0;
    setup_agents("/t4/", from, to, t0);
    assert_true(run_until(why_has, "/t4/", "to stay unchanged everywhere for 1 s", 3000) ||
                record("/t4/", &rec));
    assert_true(run_until(at_phase, "/t4/", "stage", 5000) ||
                run_until(at_phase, "/t4/", "promote", 100) ||
                run_until(at_phase, "/t4/", "reencrypt", 5000));
    assert_true(record("/t4/", &rec));
    assert_true(rec.started_ms >= t0 + 1000);
    teardown_agents();
    ar_config_unref(from);
    ar_config_unref(to);
}

/* A member that is down blocks the phase and is named; removing its registration lets the
 * rotation go on without it. */
static void test_member_down_and_remove(void **state)
{
    struct keys k;
    struct ar_config *from, *to;
    struct ar_rotation_rec rec;

    gen_keys(&k);
    from = cfg(&k, "k1");
    to = cfg(&k, "k2");
    g_reenc_mode = 0;
    g_regprefix = "/reg5";
    A[2].hold_prove = true; /* cp-3 stays in stage until it goes */
    setup_agents("/t5/", from, to, now_ms() - 5000);
    assert_true(run_until(at_phase, "/t5/", "stage", 8000));
    etcd_harness_run_for(&LOOP, 300);
    stop_agent(&A[2]);         /* SIGKILL */
    del_key("/t5/alive/cp-3"); /* its lease expired */
    assert_true(
        run_until(why_has, "/t5/", "waiting for cp-3 (down) to prove and ack phase stage", 5000));
    etcd_harness_run_for(&LOOP, 1000);
    assert_true(at_phase("/t5/", "stage")); /* S9: never on a timeout */
    {
        json_t *st = ar_rotation_status_json(A[0].rot);
        json_t *m = json_object_get(json_object_get(st, "members"), "cp-3");
        assert_false(json_is_true(json_object_get(m, "alive")));
        assert_false(json_is_true(json_object_get(m, "acked")));
        assert_true(json_is_true(
            json_object_get(json_object_get(json_object_get(st, "members"), "cp-1"), "acked")));
        json_decref(st);
    }
    del_key("/t5/members/cp-3"); /* atrest member remove cp-3 */
    assert_true(run_until(at_phase, "/t5/", "reencrypt", 8000));
    assert_true(record("/t5/", &rec));
    assert_int_equal(rec.nmembers, 2);
    assert_string_equal(rec.members[0], "cp-1");
    assert_string_equal(rec.members[1], "cp-2");
    teardown_agents();
    ar_config_unref(from);
    ar_config_unref(to);
}

/* A member that restarts mid-rotation (its files moved on: effective is the stage config)
 * converges from its saved copies; the leader dies mid-rotation and the next one finishes. */
static void test_restart_and_leader_death(void **state)
{
    struct keys k;
    struct ar_config *from, *to;
    struct ar_rotation_rec rec;

    gen_keys(&k);
    from = cfg(&k, "k1");
    to = cfg(&k, "k2,k1");
    g_reenc_mode = 1;
    g_regprefix = "/reg6";
    A[1].hold_prove = true;
    setup_agents("/t6/", from, to, now_ms() - 5000);
    assert_true(run_until(at_phase, "/t6/", "stage", 8000));
    etcd_harness_run_for(&LOOP, 300);
    /* cp-2 restarts: its effective file already holds the stage config, the copies remain */
    stop_agent(&A[1]);
    A[1].hold_prove = false;
    assert_non_null(A[1].sfrom);
    start_agent(&A[1]);
    assert_true(run_until(at_phase, "/t6/", "promote", 8000) ||
                run_until(at_phase, "/t6/", "reencrypt", 100) ||
                run_until(at_phase, "/t6/", "verify", 100));
    /* the leader dies (SIGKILL): its lease expires, cp-2 or cp-3 leads and finishes */
    stop_agent(&A[0]);
    del_key("/t6/members/cp-1"); /* and is removed by the operator */
    assert_true(run_until(no_record, "/t6/", NULL, 15000));
    assert_true(record("/t6/", &rec) == false);
    for (int i = 1; i < 3; i++) {
        char a[AR_HASH_STRLEN], b[AR_HASH_STRLEN];
        fp_of(A[i].effective, a);
        fp_of(to, b);
        assert_string_equal(a, b);
    }
    teardown_agents();
    ar_config_unref(from);
    ar_config_unref(to);
}

/* A desired config that changes mid-rotation waits for the running rotation to finish; then,
 * once settled, the next rotation starts from where the first one ended. */
static void test_desired_change_mid_rotation(void **state)
{
    struct keys k;
    struct ar_config *from, *to, *next;
    struct ar_rotation_rec rec, rec2;
    char fp_to[AR_HASH_STRLEN], fp_next[AR_HASH_STRLEN];

    gen_keys(&k);
    from = cfg(&k, "k1");
    to = cfg(&k, "k2,k1"); /* stage, promote, reencrypt, verify */
    next = cfg(&k, "k2");  /* then drop key1 */
    fp_of(to, fp_to);
    fp_of(next, fp_next);
    g_reenc_mode = 0; /* hold the first rotation in reencrypt */
    g_regprefix = "/reg9";
    setup_agents("/t9/", from, to, now_ms() - 5000);
    assert_true(run_until(at_phase, "/t9/", "reencrypt", 10000));
    assert_true(record("/t9/", &rec));
    for (int i = 0; i < 3; i++) { /* configuration management moves on */
        ar_config_unref(A[i].desired);
        A[i].desired = ar_config_ref(next);
        publish(&A[i], now_ms() - 5000);
    }
    etcd_harness_run_for(&LOOP, 800);
    assert_true(record("/t9/", &rec2));
    assert_string_equal(rec2.id, rec.id); /* the same rotation, same to */
    assert_string_equal(rec2.to, fp_to);
    g_reenc_mode = 1; /* the engine lands: the first rotation finishes */
    assert_true(run_until(no_record, "/t9/", NULL, 10000));
    /* the members report where they are now; the next rotation starts from to */
    for (int i = 0; i < 3; i++)
        publish(&A[i], now_ms() - 5000);
    /* (it may run to its end before this looks: the fake engine and verify are quick) */
    for (int t = 0; t < 200 && !(record("/t9/", &rec2) && strcmp(rec2.id, rec.id)) &&
                    count_prefix("/t9/history/") < 2;
         t++)
        etcd_harness_run_for(&LOOP, 50);
    if (!record("/t9/", &rec2)) {
        json_t *st = ar_rotation_status_json(A[0].rot), *hs, *h;

        /* etcd has both history records; A[0]'s view may still lag by one read */
        for (int t = 0; t < 100 && json_array_size(json_object_get(st, "history")) < 2; t++) {
            json_decref(st);
            etcd_harness_run_for(&LOOP, 50);
            st = ar_rotation_status_json(A[0].rot);
        }
        hs = json_object_get(st, "history");
        h = json_array_get(hs, 0);

        /* the other one (two ids of the same second sort by their from part) */
        if (!strcmp(json_string_value(json_object_get(h, "id")), rec.id))
            h = json_array_get(hs, 1);

        if (count_prefix("/t9/history/") < 2)
            for (int i = 0; i < 3; i++)
                status_dump(&A[i]);
        assert_int_equal(count_prefix("/t9/history/"), 2);
        snprintf(rec2.id, sizeof(rec2.id), "%s", json_string_value(json_object_get(h, "id")));
        snprintf(rec2.from, sizeof(rec2.from), "%s", json_string_value(json_object_get(h, "from")));
        snprintf(rec2.to, sizeof(rec2.to), "%s", json_string_value(json_object_get(h, "to")));
        json_decref(st);
    }
    assert_string_not_equal(rec2.id, rec.id);
    assert_string_equal(rec2.from, fp_to);
    assert_string_equal(rec2.to, fp_next);
    teardown_agents();
    ar_config_unref(from);
    ar_config_unref(to);
    ar_config_unref(next);
}

/* Abort before promote: back to from everywhere, history "aborted", and the same rotation is
 * not started again. */
static void test_abort_before_promote(void **state)
{
    struct keys k;
    struct ar_config *from, *to;
    struct ar_rotation_rec rec;
    struct ar_abort_rec ab = {.by = "operator", .time_ms = 1};
    char key[128], buf[1024], *s;

    gen_keys(&k);
    from = cfg(&k, "k1");
    to = cfg(&k, "k2");
    g_reenc_mode = 0;
    g_regprefix = "/reg7";
    A[2].hold_prove = true;
    setup_agents("/t7/", from, to, now_ms() - 5000);
    assert_true(run_until(at_phase, "/t7/", "stage", 8000));
    etcd_harness_run_for(&LOOP, 300);
    assert_true(record("/t7/", &rec));
    memcpy(ab.id, rec.id, sizeof(ab.id));
    assert_int_equal(ar_abort_rec_build(&ab, &s), 0);
    snprintf(key, sizeof(key), "/t7/abort/%s", rec.id);
    put_kv(key, s);
    free(s);
    for (int t = 0; t < 60; t++) {
        if (record("/t7/", &rec) && rec.state == AR_ROT_ABORTING)
            break;
        etcd_harness_run_for(&LOOP, 50);
    }
    assert_int_equal(rec.state, AR_ROT_ABORTING);
    /* cp-3's held proof of stage fails; it then writes from again */
    A[2].hold_prove = false;
    {
        struct ar_err e;
        ar_node_prove_done d = A[2].held;
        A[2].held = NULL;
        ar_err_set(&e, -ECANCELED, NULL, "cancelled");
        d(A[2].held_arg, -ECANCELED, AR_NODE_PROOF_NONE, &e);
    }
    assert_true(run_until(no_record, "/t7/", NULL, 8000));
    snprintf(key, sizeof(key), "/t7/history/%s", rec.id);
    assert_true(get_kv(key, buf, sizeof(buf)));
    assert_non_null(strstr(buf, "\"result\":\"aborted\""));
    for (int i = 0; i < 3; i++) {
        char a[AR_HASH_STRLEN], b[AR_HASH_STRLEN];
        fp_of(A[i].effective, a);
        fp_of(from, b);
        assert_string_equal(a, b);
    }
    assert_true(run_until(why_has, "/t7/", "was aborted", 3000));
    etcd_harness_run_for(&LOOP, 500);
    assert_false(record("/t7/", &rec));
    teardown_agents();
    ar_config_unref(from);
    ar_config_unref(to);
}

/* A member that cannot take part (it cannot save its copies of from and to) holds the rotation
 * in stage; an abort then goes through: its effective config is still from, so it acks the
 * abort like the others (it was waited for for ever). */
static void test_abort_member_without_plan(void **state)
{
    struct keys k;
    struct ar_config *from, *to;
    struct ar_rotation_rec rec;
    struct ar_abort_rec ab = {.by = "operator", .time_ms = 1};
    char key[128], buf[1024], *s;

    gen_keys(&k);
    from = cfg(&k, "k1");
    to = cfg(&k, "k2");
    g_reenc_mode = 0;
    g_regprefix = "/reg22";
    A[2].save_fails = true;
    setup_agents("/t22/", from, to, now_ms() - 5000);
    assert_true(run_until(at_phase, "/t22/", "stage", 8000));
    assert_true(run_until(why_has, "/t22/", "waiting for cp-3", 5000));
    etcd_harness_run_for(&LOOP, 500);
    assert_true(at_phase("/t22/", "stage")); /* cp-3 never acks stage */
    assert_true(record("/t22/", &rec));
    memcpy(ab.id, rec.id, sizeof(ab.id));
    assert_int_equal(ar_abort_rec_build(&ab, &s), 0);
    snprintf(key, sizeof(key), "/t22/abort/%s", rec.id);
    put_kv(key, s);
    free(s);
    assert_true(run_until(no_record, "/t22/", NULL, 8000));
    snprintf(key, sizeof(key), "/t22/history/%s", rec.id);
    assert_true(get_kv(key, buf, sizeof(buf)));
    assert_non_null(strstr(buf, "\"result\":\"aborted\""));
    for (int i = 0; i < 3; i++) {
        char a[AR_HASH_STRLEN], b[AR_HASH_STRLEN];
        fp_of(A[i].effective, a);
        fp_of(from, b);
        assert_string_equal(a, b);
    }
    teardown_agents();
    ar_config_unref(from);
    ar_config_unref(to);
}

/* A record whose phase hash differs from what a member derives is never acked by it. */
static void test_hash_mismatch_not_acked(void **state)
{
    struct keys k;
    struct ar_config *from, *to;
    struct ar_rotation_rec rec = {.state = AR_ROT_RUNNING, .nphases = 1, .nmembers = 1};
    char *s, fpf[AR_HASH_STRLEN], fpt[AR_HASH_STRLEN];
    struct ar_etcd_settings st;
    struct ar_rotation_settings rs = {.prefix = "/t8/", .node = "cp-1", .tick_ms = 100};

    g_nlog = 0;
    gen_keys(&k);
    from = cfg(&k, "k1");
    to = cfg(&k, "k2");
    fp_of(from, fpf);
    fp_of(to, fpt);
    memcpy(rec.from, fpf, sizeof(fpf));
    memcpy(rec.to, fpt, sizeof(fpt));
    assert_int_equal(ar_record_id(now_ms(), fpf, fpt, rec.id), 0);
    strcpy(rec.phases[0].name, "stage");
    strcpy(rec.phases[0].hash,
           "sha256:0000000000000000000000000000000000000000000000000000000000000000");
    strcpy(rec.members[0], "cp-1");
    assert_int_equal(ar_rotation_rec_build(&rec, &s), 0);
    put_kv("/t8/rotation", s);
    free(s);
    snprintf(A[0].name, sizeof(A[0].name), "cp-1");
    A[0].effective = ar_config_ref(from);
    A[0].desired = ar_config_ref(to);
    etcd_harness_settings(&H, &st);
    assert_int_equal(ar_etcd_new(&LOOP, &st, &A[0].c), 0);
    assert_int_equal(ar_rotation_new(A[0].c, &rs, &OPS, &A[0], f_event, NULL, &A[0].rot), 0);
    etcd_harness_run_for(&LOOP, 800);
    assert_int_equal(count_prefix("/t8/acks/"), 0);
    assert_int_equal(g_nlog, 0); /* nothing written either */
    {
        json_t *j = ar_rotation_status_json(A[0].rot);
        const char *e = json_string_value(
            json_object_get(json_object_get(json_object_get(j, "members"), "cp-1"), "last_error"));
        assert_non_null(e);
        assert_non_null(strstr(e, "not acking"));
        json_decref(j);
    }
    ar_rotation_free(A[0].rot);
    A[0].rot = NULL;
    ar_etcd_close(A[0].c);
    etcd_harness_run_for(&LOOP, 20);
    free_agent(&A[0]);
    ar_config_unref(from);
    ar_config_unref(to);
}

static int group_setup(void **state)
{
    struct etcd_harness_opts o = {.members = 1, .fast = true};
    struct ar_etcd_settings st;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0 || ar_crypto_init() < 0)
        return -1;
    if (etcd_harness_start(&H, &o) < 0)
        return -1;
    etcd_harness_settings(&H, &st);
    uv_loop_init(&LOOP);
    uv_timer_init(&LOOP, &g_reenc_timer);
    uv_timer_init(&LOOP, &g_api_timer);
    return ar_etcd_sync_new(&st, &S) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    uv_close((uv_handle_t *)&g_reenc_timer, NULL);
    uv_close((uv_handle_t *)&g_api_timer, NULL);
    uv_run(&LOOP, UV_RUN_DEFAULT);
    uv_loop_close(&LOOP);
    ar_etcd_sync_free(S);
    etcd_harness_destroy(&H);
    curl_global_cleanup();
    return 0;
}

/* After every test, also one that failed half way (cmocka runs this after a failed assert):
 * its agents are stopped and the fake engine's knobs reset, so that the next test starts clean
 * (the tests after a failed one used to fail or hang on its running agents). */
static int after_test(void **state)
{
    (void)state;
    teardown_agents();
    g_sweeps = 0;
    g_sweep_key = NULL;
    g_sweep_claims = false;
    g_sweep_fails = 0;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_full_rotation, after_test),
        cmocka_unit_test_teardown(test_verify_per_resource, after_test),
        cmocka_unit_test_teardown(test_verify_sweeps, after_test),
        cmocka_unit_test_teardown(test_sweeps_bounded, after_test),
        cmocka_unit_test_teardown(test_reencrypt_failing_backs_off, after_test),
        cmocka_unit_test_teardown(test_reencrypt_missing_and_abort_refused, after_test),
        cmocka_unit_test_teardown(test_reencrypt_kms_goes_to_verify, after_test),
        cmocka_unit_test_teardown(test_reencrypt_api_mode_with_kms, after_test),
        cmocka_unit_test_teardown(test_disagreement, after_test),
        cmocka_unit_test_teardown(test_settle, after_test),
        cmocka_unit_test_teardown(test_member_down_and_remove, after_test),
        cmocka_unit_test_teardown(test_restart_and_leader_death, after_test),
        cmocka_unit_test_teardown(test_abort_before_promote, after_test),
        cmocka_unit_test_teardown(test_abort_member_without_plan, after_test),
        cmocka_unit_test_teardown(test_desired_change_mid_rotation, after_test),
        cmocka_unit_test_teardown(test_hash_mismatch_not_acked, after_test),
    };
    return cmocka_run_group_tests_name("rotation", tests, group_setup, group_teardown);
}
