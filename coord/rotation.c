/* coord/rotation.c: the rotation state machine, member and leader sides (see rotation.h). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include "coord/phase.h"
#include "coord/record.h"
#include "coord/reencrypt.h"
#include "coord/report.h"
#include "coord/rotation.h"
#include "coord/verify.h"

#define KEY_MAX        640
#define WHY_MAX        1024
#define SOON_MS        20
#define MAX_SNAP_ACKS  (4 * AR_RECORD_MAX_MEMBERS * (AR_RECORD_MAX_PHASES + 1))
#define MAX_SNAP_NODES 64
#define FIRST_BAD      3
#define RETRY_MIN_MS   1000
#define RETRY_MAX_MS   16000
#define VERIFY_PIECES  4 /* pieces of the range the verify scan reads at once */
#define SWEEPS_MAX     3 /* sweeps a leader runs for one rotation (leader_sweep) */

struct node_view {
    char node[AR_REPORT_NODE_MAX];
    bool registered, alive, report_ok;
    struct ar_report rep;
};

struct ack_view {
    int index;
    struct ar_ack_rec ack;
};

/* Everything under the prefix at one revision. */
struct snap {
    bool valid;
    int64_t revision;
    bool has_rot, rot_ok;
    struct ar_rotation_rec rot;
    int64_t rot_mod, rot_create;
    struct node_view nodes[MAX_SNAP_NODES];
    size_t nnodes;
    struct ack_view acks[MAX_SNAP_ACKS]; /* of the current rotation */
    size_t nacks;
    bool abort_req; /* abort/<current id> */
    struct ar_history_rec hist[AR_RECORD_HISTORY + 8];
    size_t nhist; /* oldest first (ids sort by time) */
    size_t nhist_keys;
    char hist_ids[AR_RECORD_HISTORY + 8][AR_RECORD_ID_LEN]; /* every history key, oldest first */
};

enum action {
    A_NONE,
    A_CREATE,
    A_DROP,
    A_ABORTING,
    A_REFUSE,
    A_ADVANCE,
    A_FINISH,
    A_REENCRYPT,
    A_VERIFY,
};

struct ar_rotation {
    struct ar_etcd *etcd;
    struct ar_election *election;
    struct ar_node_ops ops;
    void *agent;
    ar_rotation_event_cb event;
    ar_rotation_status_cb status;
    char prefix[256], node[AR_REPORT_NODE_MAX], etcd_prefix[256];
    unsigned settle_ms, tick_ms, verify_retry_ms;
    const struct ar_load_opts *load_opts;

    uv_timer_t tick;
    struct ar_etcd_watch *watch;
    bool reading, read_again, dead;
    int pending; /* requests, ops and the timer handle still to come back */

    struct snap *snap;
    char why[WHY_MAX]; /* waiting_for */

    /* member */
    char id[AR_RECORD_ID_LEN]; /* the rotation the plan is for ("" none) */
    struct ar_config *from, *to;
    struct ar_plan *plan;
    bool plan_ok;
    char merr[AR_RECORD_MSG_MAX];    /* why this member does not ack */
    char lasterr[AR_RECORD_MSG_MAX]; /* merr kept across retries until an ack (reported) */
    bool busy, forgot;
    int busy_index;
    int64_t busy_create;
    struct ar_prove_req req;
    char req_hash[AR_HASH_STRLEN], req_id[AR_RECORD_ID_LEN], req_phase[AR_RECORD_NAME_MAX];
    char proof[AR_RECORD_NAME_MAX];
    /* a failed apply or proof is tried again after a backoff that doubles to RETRY_MAX_MS
       (a restart-mode proof reruns the reload command: not once a tick) */
    unsigned retry_ms;
    uint64_t retry_mono;

    /* leader */
    bool txn_busy;
    char txn_phase[AR_RECORD_NAME_MAX];
    char txn_id[AR_RECORD_ID_LEN];
    struct ar_verify *verify;
    char verify_for[AR_RECORD_ID_LEN]; /* the rotation whose verify passed / ran last */
    bool verify_passed, verify_ran;
    uint64_t verify_next_mono;
    uint64_t verify_under_drops, verify_undecryptable;
    json_t *verify_counts; /* {"<resource>": {"<provider:key>": n}} */
    char verify_first[FIRST_BAD][300];
    size_t nfirst;
    struct ar_reencrypt *reenc;
    void *reenc_op;          /* a pass through ops.reencrypt (mode api/svm) */
    uint64_t reenc_retry_ms; /* a pass through the API that failed: not again before (mono) */
    char reenc_for[AR_RECORD_ID_LEN];
    bool reenc_done;
    int reenc_status;
    unsigned reenc_fails; /* failed passes in a row: the next waits 1 s << fails, up to 30 s */
    char reenc_err[256];  /* the last failure's message */
    int verify_status;    /* the last scan's, 0: none failed */
    char verify_err[256];
    struct ar_reencrypt_progress reenc_prog;
    /* sweeps: passes again in phase verify when it found objects under keys prune drops */
    unsigned sweeps;
    bool sweep_wanted, sweeping;             /* sweeping: r->reenc is a sweep */
    struct ar_reencrypt_progress sweep_prog; /* the last sweep's */
    int sweep_status;                        /* the last sweep's (0: none failed) */
    char sweep_err[256];                     /* its message */
    /* a new write key that is a KMS provider: no direct re-encrypt (why; "" none) */
    char kms_for[AR_RECORD_ID_LEN];
    char kms_why[WHY_MAX];
};

static void read_all(struct ar_rotation *r);
static void evaluate(struct ar_rotation *r);

static void maybe_free(struct ar_rotation *r)
{
    if (!r->dead || r->pending)
        return;
    ar_plan_free(r->plan);
    ar_config_unref(r->from);
    ar_config_unref(r->to);
    json_decref(r->verify_counts);
    free(r->snap);
    free(r);
}

static int64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void whyf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void whyf(char *buf, size_t n, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, n, fmt, ap);
    va_end(ap);
}

/* Append ", x" style text. */
static void appendf(char *buf, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void appendf(char *buf, size_t n, const char *fmt, ...)
{
    size_t l = strlen(buf);
    va_list ap;

    if (l + 1 >= n)
        return;
    va_start(ap, fmt);
    vsnprintf(buf + l, n - l, fmt, ap);
    va_end(ap);
}

static void emit(struct ar_rotation *r, enum ar_rotation_event_kind kind, const char *id,
                 const char *phase, const char *proof, bool ok)
{
    struct ar_rotation_event ev = {
        .kind = kind, .id = id, .phase = phase, .proof = proof, .ok = ok};

    if (r->event && !r->dead)
        r->event(r->agent, &ev);
}

static int key_of(const struct ar_rotation *r, char *out, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int key_of(const struct ar_rotation *r, char *out, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(out, KEY_MAX, "%s", r->prefix);

    va_start(ap, fmt);
    n += vsnprintf(out + n, KEY_MAX - (size_t)n, fmt, ap);
    va_end(ap);
    return n < KEY_MAX ? 0 : -ENAMETOOLONG;
}

static const char *proof_name(enum ar_node_proof k)
{
    switch (k) {
    case AR_NODE_PROOF_FILE:
        return "file";
    case AR_NODE_PROOF_CANARY:
        return "canary";
    case AR_NODE_PROOF_METRICS:
        return "metrics";
    case AR_NODE_PROOF_RESTART:
        return "restart";
    case AR_NODE_PROOF_NONE:
        break;
    }
    return "none";
}

/* ---- the snapshot --------------------------------------------------------------------------- */

static struct node_view *node_at(struct snap *s, const char *name, size_t len)
{
    for (size_t i = 0; i < s->nnodes; i++)
        if (strlen(s->nodes[i].node) == len && !memcmp(s->nodes[i].node, name, len))
            return &s->nodes[i];
    if (s->nnodes == MAX_SNAP_NODES || len == 0 || len >= AR_REPORT_NODE_MAX ||
        memchr(name, '/', len) || memchr(name, '\0', len))
        return NULL;
    memcpy(s->nodes[s->nnodes].node, name, len);
    s->nodes[s->nnodes].node[len] = '\0';
    return &s->nodes[s->nnodes++];
}

static const struct node_view *node_find(const struct snap *s, const char *name)
{
    for (size_t i = 0; i < s->nnodes; i++)
        if (!strcmp(s->nodes[i].node, name))
            return &s->nodes[i];
    return NULL;
}

static const struct ar_ack_rec *ack_find(const struct snap *s, const char *node, int index)
{
    for (size_t i = 0; i < s->nacks; i++)
        if (s->acks[i].index == index && !strcmp(s->acks[i].ack.node, node))
            return &s->acks[i].ack;
    return NULL;
}

static bool starts(const uint8_t *k, size_t len, const char *p, size_t *plen)
{
    *plen = strlen(p);
    return len >= *plen && !memcmp(k, p, *plen);
}

/* acks/<id>/<index>/<node>: only those of the current rotation are kept. */
static void snap_ack(struct snap *s, const char *rest, size_t len, const struct ar_etcd_kv *kv)
{
    char buf[KEY_MAX], *slash, *end;
    long idx;
    struct ack_view *a;

    if (len >= sizeof(buf) || s->nacks == MAX_SNAP_ACKS)
        return;
    memcpy(buf, rest, len);
    buf[len] = '\0';
    slash = strchr(buf, '/');
    if (!slash)
        return;
    *slash++ = '\0';
    if (!s->has_rot || strcmp(buf, s->rot.id))
        return;
    idx = strtol(slash, &end, 10);
    if (end == slash || *end != '/' || idx < -1 || idx >= AR_RECORD_MAX_PHASES)
        return;
    a = &s->acks[s->nacks];
    if (ar_ack_rec_parse((const char *)kv->value, kv->value_len, &a->ack) < 0 ||
        strcmp(a->ack.node, end + 1))
        return; /* refused, or filed under another node's name */
    if (idx >= 0 ? (size_t)idx >= s->rot.nphases || strcmp(a->ack.phase, s->rot.phases[idx].name)
                 : strcmp(a->ack.phase, "abort"))
        return; /* names another phase than the one its key files it under */
    a->index = (int)idx;
    s->nacks++;
}

/* Fill s from one range over the prefix (sorted by key: "abort/" < "acks/" < "alive/" <
 * "history/" < "members/" < "rotation": the rotation comes last, so acks are matched after). */
static void snap_fill(struct ar_rotation *r, struct snap *s, const struct ar_etcd_result *res)
{
    size_t pl = strlen(r->prefix), n;
    const struct ar_etcd_kv *rot = NULL;

    memset(s, 0, sizeof(*s));
    s->valid = true;
    s->revision = res->revision;
    for (size_t i = 0; i < res->n_kvs; i++) {
        const struct ar_etcd_kv *kv = &res->kvs[i];
        if (kv->key_len == pl + 8 && !memcmp(kv->key + pl, "rotation", 8))
            rot = kv;
    }
    if (rot) {
        s->has_rot = true;
        s->rot_mod = rot->mod_revision;
        s->rot_create = rot->create_revision;
        s->rot_ok = ar_rotation_rec_parse((const char *)rot->value, rot->value_len, &s->rot) == 0;
    }
    for (size_t i = 0; i < res->n_kvs; i++) {
        const struct ar_etcd_kv *kv = &res->kvs[i];
        const uint8_t *k = kv->key + pl;
        size_t len = kv->key_len - pl;
        struct node_view *v;

        if (kv->key_len < pl)
            continue;
        if (starts(k, len, "members/", &n)) {
            if ((v = node_at(s, (const char *)k + n, len - n)))
                v->registered = true;
        } else if (starts(k, len, "alive/", &n)) {
            if ((v = node_at(s, (const char *)k + n, len - n))) {
                v->alive = true;
                v->report_ok =
                    ar_report_parse((const char *)kv->value, kv->value_len, &v->rep) == 0;
            }
        } else if (starts(k, len, "acks/", &n)) {
            snap_ack(s, (const char *)k + n, len - n, kv);
        } else if (starts(k, len, "abort/", &n)) {
            if (s->rot_ok && len - n == strlen(s->rot.id) && !memcmp(k + n, s->rot.id, len - n))
                s->abort_req = true;
        } else if (starts(k, len, "history/", &n)) {
            if (len - n == AR_RECORD_ID_LEN - 1 && s->nhist_keys < AR_RECORD_HISTORY + 8) {
                memcpy(s->hist_ids[s->nhist_keys], k + n, len - n);
                s->hist_ids[s->nhist_keys++][len - n] = '\0';
            }
            if (s->nhist < AR_RECORD_HISTORY + 8 &&
                ar_history_rec_parse((const char *)kv->value, kv->value_len, &s->hist[s->nhist]) ==
                    0)
                s->nhist++;
        }
    }
}

static void on_read(void *arg, int status, const struct ar_etcd_result *res,
                    const struct ar_etcd_error *err)
{
    struct ar_rotation *r = arg;

    r->pending--;
    r->reading = false;
    if (r->dead || status == -ECANCELED) {
        maybe_free(r);
        return;
    }
    if (status < 0) {
        /* etcd unreachable: do nothing new until it answers (DESIGN 4.4); the tick retries */
        whyf(r->why, sizeof(r->why), "etcd does not answer (%s): nothing new happens until it does",
             err && err->msg[0] ? err->msg : strerror(-status));
        if (r->status)
            r->status(r->agent);
        return;
    }
    snap_fill(r, r->snap, res);
    evaluate(r);
    if (r->read_again && !r->dead) {
        r->read_again = false;
        read_all(r);
    }
}

static void read_all(struct ar_rotation *r)
{
    uint8_t end[300];
    struct ar_etcd_op op = {.type = AR_ETCD_RANGE};

    if (r->dead)
        return;
    if (r->reading) {
        r->read_again = true;
        return;
    }
    op.key = (const uint8_t *)r->prefix;
    op.key_len = strlen(r->prefix);
    op.range_end = end;
    op.range_end_len = ar_etcd_prefix_end(op.key, op.key_len, end);
    if (ar_etcd_range(r->etcd, &op, on_read, r) == 0) {
        r->reading = true;
        r->pending++;
    }
}

/* ---- member --------------------------------------------------------------------------------- */

static void member_reset(struct ar_rotation *r)
{
    ar_plan_free(r->plan);
    ar_config_unref(r->from);
    ar_config_unref(r->to);
    r->plan = NULL;
    r->from = r->to = NULL;
    r->id[0] = '\0';
    r->plan_ok = false;
    r->merr[0] = '\0';
    r->lasterr[0] = '\0';
    r->retry_ms = 0;
    r->retry_mono = 0;
}

/* A member's apply or proof failed: not again before the backoff has passed. */
static void member_backoff(struct ar_rotation *r)
{
    r->retry_ms = r->retry_ms ? r->retry_ms * 2 : RETRY_MIN_MS;
    if (r->retry_ms > RETRY_MAX_MS)
        r->retry_ms = RETRY_MAX_MS;
    r->retry_mono = ar_etcd_now_ms() + r->retry_ms;
}

/* The secrets provider list of cfg: the first rule naming secrets, else "*.", else "*.*". */
static const struct ar_provider *secrets_list(const struct ar_config *c, size_t *n)
{
    static const char *const want[][2] = {{"", "secrets"}, {"", "*"}, {"*", "*"}};

    for (size_t w = 0; c && w < 3; w++)
        for (size_t i = 0; i < c->nrules; i++)
            for (size_t j = 0; j < c->rules[i].nresources; j++)
                if (!strcmp(c->rules[i].parsed[j].group, want[w][0]) &&
                    !strcmp(c->rules[i].parsed[j].resource, want[w][1])) {
                    *n = c->rules[i].nproviders;
                    return c->rules[i].providers;
                }
    *n = 0;
    return NULL;
}

static bool list_has(const struct ar_provider *l, size_t n, enum ar_ptype t, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (l[i].type != t)
            continue;
        if (t == AR_P_IDENTITY)
            return true;
        if (t == AR_P_KMS && !strcmp(l[i].kms.name, name))
            return true;
        for (size_t k = 0; k < l[i].nkeys; k++)
            if (!strcmp(l[i].keys[k].name, name))
                return true;
    }
    return false;
}

static const char *prov_name(const struct ar_provider *p)
{
    return p->type == AR_P_KMS ? p->kms.name : p->nkeys ? p->keys[0].name : NULL;
}

/* The goal of phase index (see rotation.h). prev is the config before it (from for index 0). */
static void prove_goal(struct ar_rotation *r, int index, struct ar_prove_req *q)
{
    size_t np = 0, nb = 0;
    const struct ar_provider *p, *b;
    struct ar_config *prev = index > 0 ? r->plan->phases[index - 1].config : r->from;
    enum ar_phase_kind kind = r->plan->phases[index].kind;

    q->goal = AR_PROVE_LOADED;
    p = secrets_list(q->cfg, &np);
    b = secrets_list(prev, &nb);
    if (!p || !np)
        return;
    if (kind == AR_PHASE_STAGE) {
        for (size_t i = 0; i < np; i++) {
            if (p[i].type == AR_P_IDENTITY || p[i].type == AR_P_KMS) {
                if (!list_has(b, nb, p[i].type, prov_name(&p[i]))) {
                    q->goal = AR_PROVE_READ;
                    q->type = p[i].type;
                    q->key_name = prov_name(&p[i]);
                    return;
                }
                continue;
            }
            for (size_t k = 0; k < p[i].nkeys; k++)
                if (!list_has(b, nb, p[i].type, p[i].keys[k].name)) {
                    q->goal = AR_PROVE_READ;
                    q->type = p[i].type;
                    q->key_name = p[i].keys[k].name;
                    return;
                }
        }
    } else if (kind == AR_PHASE_PROMOTE) {
        bool same =
            b && nb && b[0].type == p[0].type &&
            ((!prov_name(&p[0]) && !prov_name(&b[0])) ||
             (prov_name(&p[0]) && prov_name(&b[0]) && !strcmp(prov_name(&p[0]), prov_name(&b[0]))));
        if (!same) {
            q->goal = AR_PROVE_WRITE;
            q->type = p[0].type;
            q->key_name = prov_name(&p[0]);
        }
    }
}

/* The plan of the record's rotation: saved copies, or this node's files when they are the
 * record's from and to (saved first). 0, or -EAGAIN with merr saying why. */
static int member_plan(struct ar_rotation *r, const struct ar_rotation_rec *rec)
{
    struct ar_config *from = NULL, *to = NULL;
    struct ar_diags d;
    char ffp[AR_HASH_STRLEN], tfp[AR_HASH_STRLEN], h[AR_HASH_STRLEN];
    int rc;

    if (!strcmp(r->id, rec->id))
        return r->plan_ok ? 0 : -EAGAIN;
    member_reset(r);
    snprintf(r->id, sizeof(r->id), "%s", rec->id);
    rc = r->ops.load(r->agent, rec->id, &from, &to);
    if (rc < 0) {
        struct ar_config *eff = r->ops.config(r->agent, false);
        struct ar_config *des = r->ops.config(r->agent, true);
        char efp[AR_HASH_STRLEN] = "(none)", dfp[AR_HASH_STRLEN] = "(none)";

        if (eff)
            ar_config_fingerprint_str(eff, efp);
        if (des)
            ar_config_fingerprint_str(des, dfp);
        if (!eff || !des || strcmp(efp, rec->from) || strcmp(dfp, rec->to)) {
            whyf(r->merr, sizeof(r->merr),
                 "cannot take part: effective %.19s and desired %.19s are not the rotation's "
                 "from %.19s and to %.19s, and no copy was saved",
                 efp, dfp, rec->from, rec->to);
            r->id[0] = '\0'; /* look again when the files change */
            return -EAGAIN;
        }
        rc = r->ops.save(r->agent, rec->id, eff, des);
        if (rc < 0) {
            whyf(r->merr, sizeof(r->merr), "cannot save the rotation's from and to: %s",
                 strerror(-rc));
            r->id[0] = '\0';
            return -EAGAIN;
        }
        from = ar_config_ref(eff);
        to = ar_config_ref(des);
    }
    r->from = from;
    r->to = to;
    ar_config_fingerprint_str(from, ffp);
    ar_config_fingerprint_str(to, tfp);
    if (strcmp(ffp, rec->from) || strcmp(tfp, rec->to)) {
        whyf(r->merr, sizeof(r->merr), "the saved copies of %s are not the record's from and to",
             rec->id);
        return -EAGAIN;
    }
    ar_diags_init(&d);
    rc = ar_plan_derive(from, to, "to", r->load_opts, &r->plan, &d);
    ar_diags_free(&d);
    if (rc < 0) {
        whyf(r->merr, sizeof(r->merr), "cannot derive the phases: %s", strerror(-rc));
        return -EAGAIN;
    }
    if (r->plan->nphases != rec->nphases) {
        whyf(r->merr, sizeof(r->merr),
             "derived %zu phases, the record has %zu: not acking (S8: the record decides)",
             r->plan->nphases, rec->nphases);
        return -EAGAIN;
    }
    for (size_t i = 0; i < rec->nphases; i++) {
        ar_config_file_hash_str(r->plan->phases[i].config, h);
        if (strcmp(ar_phase_name(r->plan->phases[i].kind), rec->phases[i].name) ||
            strcmp(h, rec->phases[i].hash)) {
            whyf(r->merr, sizeof(r->merr),
                 "derived phase %zu (%s %.23s) differs from the record's (%s %.23s): not acking", i,
                 ar_phase_name(r->plan->phases[i].kind), h, rec->phases[i].name,
                 rec->phases[i].hash);
            return -EAGAIN;
        }
    }
    r->plan_ok = true;
    return 0;
}

static void on_ack_put(void *arg, int status, const struct ar_etcd_result *res,
                       const struct ar_etcd_error *err)
{
    struct ar_rotation *r = arg;

    r->pending--;
    r->busy = false;
    if (r->dead) {
        maybe_free(r);
        return;
    }
    if (status < 0) {
        whyf(r->merr, sizeof(r->merr), "cannot put the ack: %s",
             err && err->msg[0] ? err->msg : strerror(-status));
        member_backoff(r); /* the next try applies and proves again: not in a loop */
    } else if (res->succeeded) {
        r->lasterr[0] = '\0';
        r->retry_ms = 0;
        r->retry_mono = 0;
        emit(r, AR_ROT_EV_ACK, r->req_id, r->req_phase, r->proof, true);
    }
    read_all(r);
}

static void member_ack(struct ar_rotation *r)
{
    char key[KEY_MAX], rkey[KEY_MAX], *json = NULL;
    struct ar_ack_rec a = {.ok = true, .time_ms = wall_ms()};
    struct ar_etcd_compare cmp = {.target = AR_ETCD_CMP_CREATE, .result = AR_ETCD_EQUAL};
    struct ar_etcd_op put = {.type = AR_ETCD_PUT};
    struct ar_etcd_txn t = {.compare = &cmp, .n_compare = 1, .success = &put, .n_success = 1};
    int rc;

    snprintf(a.node, sizeof(a.node), "%s", r->node);
    snprintf(a.phase, sizeof(a.phase), "%s", r->req_phase);
    snprintf(a.hash, sizeof(a.hash), "%s", r->req_hash);
    snprintf(a.proof, sizeof(a.proof), "%s", r->proof);
    rc = key_of(r, key, "acks/%s/%d/%s", r->req_id, r->busy_index, r->node);
    if (rc == 0)
        rc = key_of(r, rkey, "rotation");
    if (rc == 0)
        rc = ar_ack_rec_build(&a, &json);
    if (rc == 0) {
        cmp.key = (const uint8_t *)rkey;
        cmp.key_len = strlen(rkey);
        cmp.number = r->busy_create; /* the same rotation record, not a later one */
        put.key = (const uint8_t *)key;
        put.key_len = strlen(key);
        put.value = (const uint8_t *)json;
        put.value_len = strlen(json);
        rc = ar_etcd_txn(r->etcd, &t, on_ack_put, r);
    }
    free(json);
    if (rc < 0) {
        whyf(r->merr, sizeof(r->merr), "cannot put the ack: %s", strerror(-rc));
        r->busy = false;
        return;
    }
    r->pending++;
}

static void on_proved(void *arg, int status, enum ar_node_proof kind, const struct ar_err *err)
{
    struct ar_rotation *r = arg;

    r->pending--;
    if (r->dead) {
        maybe_free(r);
        return;
    }
    snprintf(r->proof, sizeof(r->proof), "%s", proof_name(kind));
    if (status < 0) {
        whyf(r->merr, sizeof(r->merr), "proof of load for phase %s failed: %s", r->req_phase,
             err && err->msg[0] ? err->msg : strerror(-status));
        emit(r, AR_ROT_EV_PROOF, r->req_id, r->req_phase, r->proof, false);
        member_backoff(r);
        r->busy = false;
        return; /* a tick after the backoff tries again */
    }
    emit(r, AR_ROT_EV_PROOF, r->req_id, r->req_phase, r->proof, true);
    member_ack(r);
}

static void on_applied(void *arg, int status, bool changed, const struct ar_err *err)
{
    struct ar_rotation *r = arg;
    struct ar_config *eff;
    char h[AR_HASH_STRLEN] = "";
    int kind;

    r->pending--;
    if (r->dead) {
        maybe_free(r);
        return;
    }
    if (status < 0) {
        whyf(r->merr, sizeof(r->merr), "cannot write phase %s: %s", r->req_phase,
             err && err->msg[0] ? err->msg : strerror(-status));
        member_backoff(r);
        r->busy = false;
        return;
    }
    eff = r->ops.config(r->agent, false);
    if (eff)
        ar_config_file_hash_str(eff, h);
    if (r->busy_index >= 0 && strcmp(h, r->req_hash)) {
        whyf(r->merr, sizeof(r->merr),
             "the effective file's hash %.23s is not phase %s's %.23s: not acking", h, r->req_phase,
             r->req_hash);
        r->busy = false;
        return;
    }
    snprintf(r->req_hash, sizeof(r->req_hash), "%s", h);
    if (r->merr[0]) /* tried again: the failure stays reported until an ack */
        snprintf(r->lasterr, sizeof(r->lasterr), "%s", r->merr);
    r->merr[0] = '\0';
    kind = ar_record_phase_kind(r->req_phase);
    if (kind == AR_PHASE_REENCRYPT || kind == AR_PHASE_VERIFY) {
        /* the promote config again: already proven (ack "none") */
        snprintf(r->proof, sizeof(r->proof), "none");
        member_ack(r);
        return;
    }
    r->req.written_ms = (uint64_t)wall_ms();
    r->pending++;
    r->ops.prove(r->agent, &r->req, on_proved, r);
}

/*
 * An abort asks every member to write the from config again and ack. A member that has no plan
 * for the rotation (it could not save its copies, or its files changed before it did) never
 * wrote anything of it: when its effective config is the record's from, it writes that again
 * and acks like the others (without this the abort waited for it for ever). Otherwise it
 * cannot tell what from is, and the abort waits, named in the status (S9).
 */
static bool abort_without_plan(struct ar_rotation *r, const struct ar_rotation_rec *rec)
{
    struct ar_config *eff;
    char efp[AR_HASH_STRLEN];

    if (rec->state != AR_ROT_ABORTING || !(eff = r->ops.config(r->agent, false)))
        return false;
    ar_config_fingerprint_str(eff, efp);
    if (strcmp(efp, rec->from))
        return false;
    ar_config_unref(r->from);
    r->from = ar_config_ref(eff);
    return true;
}

static void member_step(struct ar_rotation *r)
{
    const struct snap *s = r->snap;
    const struct ar_rotation_rec *rec = &s->rot;
    const struct ar_ack_rec *mine;
    struct ar_config *cfg;
    int index;

    if (!s->has_rot) {
        if (r->id[0] || r->plan || !r->forgot) { /* also copies a crash left behind */
            member_reset(r);
            r->ops.forget(r->agent, NULL);
            r->forgot = true;
        }
        return;
    }
    if (!s->rot_ok || r->busy)
        return;
    if (member_plan(r, rec) < 0 && !abort_without_plan(r, rec))
        return;
    index = rec->state == AR_ROT_ABORTING ? -1 : rec->index;
    mine = ack_find(s, r->node, index);
    if (mine && mine->ok && (index < 0 || !strcmp(mine->hash, rec->phases[index].hash)))
        return; /* acked */
    if (ar_etcd_now_ms() < r->retry_mono)
        return; /* the last try failed: wait out the backoff */
    cfg = index < 0 ? r->from : r->plan->phases[index].config;
    r->busy = true;
    r->busy_index = index;
    r->busy_create = s->rot_create;
    snprintf(r->req_id, sizeof(r->req_id), "%s", rec->id);
    snprintf(r->req_phase, sizeof(r->req_phase), "%s",
             index < 0 ? "abort" : rec->phases[index].name);
    if (index >= 0)
        snprintf(r->req_hash, sizeof(r->req_hash), "%s", rec->phases[index].hash);
    else
        r->req_hash[0] = '\0';
    r->req = (struct ar_prove_req){.goal = AR_PROVE_LOADED,
                                   .cfg = cfg,
                                   .file_hash = r->req_hash,
                                   .rotation_id = r->req_id,
                                   .phase = r->req_phase};
    if (index >= 0)
        prove_goal(r, index, &r->req);
    r->pending++;
    r->ops.apply(r->agent, cfg, on_applied, r);
}

/* ---- leader: what to do --------------------------------------------------------------------- */

static bool leading(const struct ar_rotation *r)
{
    return r->election && ar_election_is_leader(r->election, ar_etcd_now_ms());
}

static const char *short_fp(const char *fp)
{
    return fp && strlen(fp) > 15 ? fp + 7 : fp ? fp : "";
}

static enum action agreement(struct ar_rotation *r, char *why, size_t n)
{
    const struct snap *s = r->snap;
    const struct node_view *first = NULL;
    size_t nreg = 0;
    int64_t since = 0, now = wall_ms();
    bool diff_d = false, diff_e = false;

    why[0] = '\0';
    for (size_t i = 0; i < s->nnodes; i++) {
        const struct node_view *v = &s->nodes[i];
        if (!v->registered)
            continue;
        nreg++;
        if (!v->alive)
            appendf(why, n, "%s%s is not alive", why[0] ? "; " : "", v->node);
        else if (!v->report_ok)
            appendf(why, n, "%s%s's report is refused", why[0] ? "; " : "", v->node);
        else if (!v->rep.desired_valid || !v->rep.desired_fp[0])
            appendf(why, n, "%s%s has no valid desired config", why[0] ? "; " : "", v->node);
        else if (!v->rep.effective_fp[0])
            appendf(why, n, "%s%s has no effective config", why[0] ? "; " : "", v->node);
        else if (!first)
            first = v;
        else {
            diff_d |= strcmp(first->rep.desired_fp, v->rep.desired_fp) != 0;
            diff_e |= strcmp(first->rep.effective_fp, v->rep.effective_fp) != 0;
        }
        if (v->alive && v->report_ok && v->rep.desired_since_ms > since)
            since = v->rep.desired_since_ms;
    }
    if (!nreg) {
        whyf(why, n, "no member is registered");
        return A_NONE;
    }
    if (why[0])
        return A_NONE;
    if (diff_d || diff_e) {
        whyf(why, n, "the members disagree on their %s configs:", diff_d ? "desired" : "effective");
        for (size_t i = 0; i < s->nnodes; i++) {
            const struct node_view *v = &s->nodes[i];
            if (v->registered)
                appendf(why, n, " %s has %.12s (since %lld s)", v->node,
                        short_fp(diff_d ? v->rep.desired_fp : v->rep.effective_fp),
                        (long long)(v->rep.desired_since_ms ? (now - v->rep.desired_since_ms) / 1000
                                                            : 0));
        }
        return A_NONE;
    }
    if (!strcmp(first->rep.desired_fp, first->rep.effective_fp))
        return A_NONE; /* nothing to do: why "" */
    for (size_t i = 0; i < s->nnodes; i++)
        if (s->nodes[i].registered && !s->nodes[i].rep.desired_since_ms) {
            whyf(why, n, "%s does not say since when it has its desired config (an older agent)",
                 s->nodes[i].node);
            return A_NONE;
        }
    if (now - since < (int64_t)r->settle_ms) {
        whyf(why, n,
             "waiting for the desired config %.12s to stay unchanged everywhere for %u s (%lld s "
             "so far)",
             short_fp(first->rep.desired_fp), r->settle_ms / 1000,
             (long long)((now - since) / 1000));
        return A_NONE;
    }
    if (s->nhist && s->hist[s->nhist - 1].aborted &&
        !strcmp(s->hist[s->nhist - 1].from, first->rep.effective_fp) &&
        !strcmp(s->hist[s->nhist - 1].to, first->rep.desired_fp)) {
        whyf(why, n,
             "the rotation %s to this desired config was aborted: change the desired config to "
             "start another",
             s->hist[s->nhist - 1].id);
        return A_NONE;
    }
    whyf(why, n, "starting a rotation from %.12s to %.12s", short_fp(first->rep.effective_fp),
         short_fp(first->rep.desired_fp));
    return A_CREATE;
}

static bool registered(const struct snap *s, const char *node)
{
    const struct node_view *v = node_find(s, node);
    return v && v->registered;
}

static const char *reenc_mode_name(enum ar_node_reenc_mode m)
{
    return m == AR_NODE_REENC_API ? "api" : m == AR_NODE_REENC_SVM ? "svm" : "etcd";
}

/* How this node wants the re-encrypt pass done (ops.reencrypt_mode; etcd without it). */
static enum ar_node_reenc_mode reenc_mode(const struct ar_rotation *r, double *rate_limit)
{
    double rate = 0;
    enum ar_node_reenc_mode m = AR_NODE_REENC_ETCD;

    if (r->ops.reencrypt_mode && r->ops.reencrypt && r->ops.reencrypt_stop)
        m = r->ops.reencrypt_mode(r->agent, &rate);
    if (rate_limit)
        *rate_limit = rate > 0 ? rate : 0;
    return m;
}

/* Whether the re-encrypt pass of the member's plan would write through a KMS provider (the
 * write provider of its config for some selector of rewrite[]): atrest cannot re-encrypt
 * through a KMS plugin, so the leader does not start the pass and verify decides (computed once
 * per rotation id; kms_why "" when not). */
static void kms_check(struct ar_rotation *r)
{
    const struct ar_config *cfg = NULL;
    struct ar_chain *chain = NULL;
    char group[256], resource[256];

    if (!r->plan_ok || !strcmp(r->kms_for, r->id))
        return;
    snprintf(r->kms_for, sizeof(r->kms_for), "%s", r->id);
    r->kms_why[0] = '\0';
    for (size_t i = 0; i < r->plan->nphases; i++)
        if (r->plan->phases[i].kind == AR_PHASE_REENCRYPT)
            cfg = r->plan->phases[i].config;
    if (!cfg || ar_chain_new((struct ar_config *)cfg, &chain) < 0)
        return; /* no pass, or the pass itself reports why it cannot start */
    for (size_t i = 0; i < r->plan->nrewrite && !r->kms_why[0]; i++) {
        const char *sel = r->plan->rewrite[i], *dot = strchr(sel, '.');
        struct ar_plist l;

        snprintf(resource, sizeof(resource), "%.*s", dot ? (int)(dot - sel) : (int)strlen(sel),
                 sel);
        snprintf(group, sizeof(group), "%s", dot ? dot + 1 : "");
        ar_chain_lookup(chain, group, resource, &l);
        if (l.n && l.v[0]->type == AR_P_KMS)
            whyf(r->kms_why, sizeof(r->kms_why),
                 "the new write key of %s is KMS provider %s: atrest cannot re-encrypt through a "
                 "KMS plugin yet; rewrite those objects through the API server (e.g. kubectl get "
                 "%s -A -o json | kubectl replace -f -) and the rotation goes on at verify",
                 sel, l.v[0]->kms.name ? l.v[0]->kms.name : "?", sel);
    }
    ar_chain_unref(chain);
}

static enum action decide(struct ar_rotation *r, char *why, size_t n)
{
    const struct snap *s = r->snap;
    const struct ar_rotation_rec *rec = &s->rot;
    char missing[WHY_MAX] = "", bad[WHY_MAX] = "";
    int index;
    enum ar_phase_kind kind;

    why[0] = '\0';
    if (!s->valid) {
        whyf(why, n, "reading etcd");
        return A_NONE;
    }
    if (!s->has_rot)
        return agreement(r, why, n);
    if (!s->rot_ok) {
        whyf(why, n,
             "the rotation record in etcd is refused (not a valid record): nothing acts "
             "on it");
        return A_NONE;
    }
    for (size_t i = 0; i < rec->nmembers; i++)
        if (!registered(s, rec->members[i])) {
            whyf(why, n, "%s was removed: dropping it from the rotation", rec->members[i]);
            return A_DROP;
        }
    if (s->abort_req && rec->state == AR_ROT_RUNNING) {
        if (ar_record_phase_kind(rec->phases[rec->index].name) == AR_PHASE_STAGE) {
            whyf(why, n, "abort requested before promote: withdrawing the staged keys");
            return A_ABORTING;
        }
        whyf(why, n, "abort refused: the rotation has promoted");
        return A_REFUSE;
    }
    index = rec->state == AR_ROT_ABORTING ? -1 : rec->index;
    for (size_t i = 0; i < rec->nmembers; i++) {
        const struct ar_ack_rec *a = ack_find(s, rec->members[i], index);
        const struct node_view *v = node_find(s, rec->members[i]);

        if (!a)
            appendf(missing, sizeof(missing), "%s%s%s", missing[0] ? ", " : "", rec->members[i],
                    v && v->alive ? "" : " (down)");
        else if (!a->ok || (index >= 0 && strcmp(a->hash, rec->phases[index].hash)))
            appendf(bad, sizeof(bad), "%s%s", bad[0] ? ", " : "", rec->members[i]);
    }
    if (missing[0] || bad[0]) {
        whyf(why, n, "waiting for %s to %s", missing[0] ? missing : bad,
             index < 0 ? "write the from config again and ack the abort" : "prove and ack phase ");
        if (index >= 0)
            appendf(why, n, "%s", rec->phases[index].name);
        if (missing[0] && bad[0])
            appendf(why, n, "; %s acked a different phase config", bad);
        return A_NONE;
    }
    if (index < 0) {
        whyf(why, n, "every member acked the abort: finishing as aborted");
        return A_FINISH;
    }
    kind = (enum ar_phase_kind)ar_record_phase_kind(rec->phases[index].name);
    if (kind == AR_PHASE_REENCRYPT || kind == AR_PHASE_VERIFY)
        kms_check(r);
    /* only the direct-etcd engine cannot write with KMS; the API server can */
    if (kind == AR_PHASE_REENCRYPT && reenc_mode(r, NULL) == AR_NODE_REENC_ETCD && r->kms_why[0] &&
        !strcmp(r->kms_for, rec->id) && (size_t)index + 1 < rec->nphases) {
        /* no pass through a KMS plugin: the operator rewrites through the API server and verify
         * decides whether prune may run */
        whyf(why, n, "%s", r->kms_why);
        return A_ADVANCE;
    }
    if (kind == AR_PHASE_REENCRYPT && !(r->reenc_done && !strcmp(r->reenc_for, rec->id))) {
        if (r->reenc_status == -ENOSYS && !strcmp(r->reenc_for, rec->id))
            whyf(why, n, "re-encrypt engine not built: the rotation waits in phase reencrypt");
        else if (r->reenc_status == -EOPNOTSUPP && !strcmp(r->reenc_for, rec->id))
            whyf(why, n,
                 "re-encrypt mode %s cannot do this rotation's rewrite list (the leader's log "
                 "says why): the rotation waits in phase reencrypt (set reencrypt.mode to etcd "
                 "on the leader)",
                 reenc_mode_name(reenc_mode(r, NULL)));
        else if (r->reenc_status < 0 && !strcmp(r->reenc_for, rec->id))
            whyf(why, n, "re-encrypt failed (%s): trying again",
                 r->reenc_err[0] ? r->reenc_err : strerror(-r->reenc_status));
        else
            whyf(why, n, "re-encrypting: %llu of %llu done", (unsigned long long)r->reenc_prog.done,
                 (unsigned long long)r->reenc_prog.total);
        return A_REENCRYPT;
    }
    if (kind == AR_PHASE_VERIFY && !(r->verify_passed && !strcmp(r->verify_for, rec->id))) {
        if (r->verify_ran && !strcmp(r->verify_for, rec->id)) {
            whyf(why, n,
                 "verify found %llu objects under keys prune would drop and %llu undecryptable",
                 (unsigned long long)r->verify_under_drops,
                 (unsigned long long)r->verify_undecryptable);
            for (size_t i = 0; i < r->nfirst; i++)
                appendf(why, n, "%s%s", i ? ", " : " (first: ", r->verify_first[i]);
            if (r->nfirst)
                appendf(why, n, ")");
            if (r->sweeping)
                appendf(why, n,
                        "; re-encrypting them again (sweep %u of at most %u): %llu of %llu done",
                        r->sweeps, SWEEPS_MAX, (unsigned long long)r->sweep_prog.done,
                        (unsigned long long)r->sweep_prog.total);
            else if (r->sweep_wanted)
                appendf(why, n, "; re-encrypting them again (sweep %u of at most %u)",
                        r->sweeps + 1, SWEEPS_MAX);
            else if (r->sweeps && r->sweep_status == 0 && r->sweep_prog.rewritten &&
                     (r->verify || r->sweeps < SWEEPS_MAX))
                appendf(why, n, "; verifying again after sweep %u", r->sweeps);
            else if (r->sweeps && r->sweep_status == 0)
                appendf(why, n,
                        "; %u sweep%s ran, the last rewrote %llu: the rest needs the operator "
                        "(rewrite it through the API server or keep its keys); scanning again",
                        r->sweeps, r->sweeps == 1 ? "" : "s",
                        (unsigned long long)r->sweep_prog.rewritten);
            else
                appendf(why, n, "; scanning again");
            if (r->sweep_status < 0)
                appendf(why, n, " (the last sweep failed: %s; again after the next scan)",
                        r->sweep_err[0] ? r->sweep_err : strerror(-r->sweep_status));
            if (r->kms_why[0] && !strcmp(r->kms_for, rec->id) &&
                reenc_mode(r, NULL) == AR_NODE_REENC_ETCD)
                appendf(why, n, " (%s)", r->kms_why);
        } else if (r->verify_status < 0 && !strcmp(r->verify_for, rec->id))
            whyf(why, n, "verify failed (%s): scanning again", r->verify_err);
        else
            whyf(why, n, "verifying that nothing is stored under the keys prune drops");
        return A_VERIFY;
    }
    if ((size_t)index + 1 < rec->nphases) {
        whyf(why, n, "every member acked phase %s: moving to %s", rec->phases[index].name,
             rec->phases[index + 1].name);
        return A_ADVANCE;
    }
    whyf(why, n, "every member acked the last phase (%s): finishing", rec->phases[index].name);
    return A_FINISH;
}

/* ---- leader: doing it ----------------------------------------------------------------------- */

static void on_leader_txn(void *arg, int status, const struct ar_etcd_result *res,
                          const struct ar_etcd_error *err)
{
    struct ar_rotation *r = arg;

    r->pending--;
    r->txn_busy = false;
    if (r->dead) {
        maybe_free(r);
        return;
    }
    if (status == 0 && res->succeeded)
        emit(r, AR_ROT_EV_TRANSITION, r->txn_id, r->txn_phase, NULL, true);
    /* a failed compare: the record moved or this agent no longer leads; the next read decides */
    read_all(r);
}

/* One guarded transition: compares the leader term and the record (create_revision == 0 for a
 * new one, else its mod_revision as read), then ops. */
static int leader_txn(struct ar_rotation *r, const struct ar_etcd_op *ops, size_t nops, bool create,
                      const char *id, const char *phase)
{
    struct ar_etcd_compare cmp[2];
    char rkey[KEY_MAX];
    struct ar_etcd_txn t = {.compare = cmp, .n_compare = 2, .success = ops, .n_success = nops};
    int rc;

    if (ar_election_guard(r->election, &cmp[0]) < 0)
        return -EPERM;
    rc = key_of(r, rkey, "rotation");
    if (rc < 0)
        return rc;
    cmp[1] = (struct ar_etcd_compare){.key = (const uint8_t *)rkey,
                                      .key_len = strlen(rkey),
                                      .target = create ? AR_ETCD_CMP_CREATE : AR_ETCD_CMP_MOD,
                                      .result = AR_ETCD_EQUAL,
                                      .number = create ? 0 : r->snap->rot_mod};
    rc = ar_etcd_txn(r->etcd, &t, on_leader_txn, r);
    if (rc < 0)
        return rc;
    snprintf(r->txn_id, sizeof(r->txn_id), "%s", id);
    snprintf(r->txn_phase, sizeof(r->txn_phase), "%s", phase);
    r->txn_busy = true;
    r->pending++;
    return 0;
}

/* Put the record rec (a changed copy of the one read). */
static int put_record(struct ar_rotation *r, const struct ar_rotation_rec *rec, bool create,
                      const char *phase, const char *abort_key)
{
    char rkey[KEY_MAX], akey[KEY_MAX], *json = NULL;
    struct ar_etcd_op ops[2] = {{.type = AR_ETCD_PUT}, {.type = AR_ETCD_DELETE}};
    int rc = key_of(r, rkey, "rotation");

    if (rc == 0 && abort_key)
        rc = key_of(r, akey, "abort/%s", abort_key);
    if (rc == 0)
        rc = ar_rotation_rec_build(rec, &json);
    if (rc < 0)
        return rc;
    ops[0].key = (const uint8_t *)rkey;
    ops[0].key_len = strlen(rkey);
    ops[0].value = (const uint8_t *)json;
    ops[0].value_len = strlen(json);
    if (abort_key) {
        ops[1].key = (const uint8_t *)akey;
        ops[1].key_len = strlen(akey);
    }
    rc = leader_txn(r, ops, abort_key ? 2 : 1, create, rec->id, phase);
    free(json);
    return rc;
}

static int leader_create(struct ar_rotation *r)
{
    struct ar_config *eff = r->ops.config(r->agent, false), *des = r->ops.config(r->agent, true);
    struct ar_rotation_rec rec = {.state = AR_ROT_RUNNING};
    struct ar_plan *plan = NULL;
    struct ar_diags d;
    int64_t now = wall_ms();
    int rc;

    if (!eff || !des)
        return -EAGAIN;
    ar_config_fingerprint_str(eff, rec.from);
    ar_config_fingerprint_str(des, rec.to);
    for (size_t i = 0; i < r->snap->nnodes; i++) {
        const struct node_view *v = &r->snap->nodes[i];
        if (!v->registered)
            continue;
        /* this leader's own files must be what everyone agreed on */
        if (!strcmp(v->node, r->node) &&
            (strcmp(v->rep.effective_fp, rec.from) || strcmp(v->rep.desired_fp, rec.to)))
            return -EAGAIN;
        if (rec.nmembers == AR_RECORD_MAX_MEMBERS)
            return -E2BIG;
        snprintf(rec.members[rec.nmembers++], AR_REPORT_NODE_MAX, "%s", v->node);
    }
    ar_diags_init(&d);
    rc = ar_plan_derive(eff, des, "to", r->load_opts, &plan, &d);
    ar_diags_free(&d);
    if (rc < 0)
        return rc;
    if (!plan->nphases || plan->nphases > AR_RECORD_MAX_PHASES) {
        ar_plan_free(plan);
        return -EAGAIN;
    }
    for (size_t i = 0; i < plan->nphases; i++) {
        snprintf(rec.phases[i].name, AR_RECORD_NAME_MAX, "%s", ar_phase_name(plan->phases[i].kind));
        ar_config_file_hash_str(plan->phases[i].config, rec.phases[i].hash);
    }
    rec.nphases = plan->nphases;
    ar_plan_free(plan);
    rc = ar_record_id(now, rec.from, rec.to, rec.id);
    rec.started_ms = rec.phase_since_ms = now;
    if (rc == 0)
        rc = put_record(r, &rec, true, rec.phases[0].name, NULL);
    return rc;
}

/* The last step: history/<id>, and the record, acks, checkpoint and abort request gone, the
 * oldest history records beyond the bound too; one guarded txn. */
static int leader_finish(struct ar_rotation *r, bool aborted)
{
    const struct ar_rotation_rec *rec = &r->snap->rot;
    struct ar_history_rec h = {.aborted = aborted, .finished_ms = wall_ms()};
    char keys[6][KEY_MAX], old[AR_RECORD_HISTORY + 8][KEY_MAX];
    uint8_t aend[KEY_MAX + 1], rend[KEY_MAX + 1];
    struct ar_etcd_op ops[5 + AR_RECORD_HISTORY + 8];
    size_t nops = 0, drop;
    char *json = NULL;
    int rc;

    memcpy(h.id, rec->id, sizeof(h.id));
    memcpy(h.from, rec->from, sizeof(h.from));
    memcpy(h.to, rec->to, sizeof(h.to));
    h.started_ms = rec->started_ms;
    for (size_t i = 0; i < rec->nphases && (aborted ? (int)i <= rec->index : true); i++)
        memcpy(h.phases[h.nphases++], rec->phases[i].name, AR_RECORD_NAME_MAX);
    rc = ar_history_rec_build(&h, &json);
    if (rc == 0)
        rc = key_of(r, keys[0], "history/%s", rec->id);
    if (rc == 0)
        rc = key_of(r, keys[1], "rotation");
    if (rc == 0)
        rc = key_of(r, keys[2], "acks/%s/", rec->id);
    if (rc == 0)
        rc = key_of(r, keys[3], "reencrypt/%s", rec->id);
    if (rc == 0)
        rc = key_of(r, keys[4], "abort/%s", rec->id);
    if (rc < 0) {
        free(json);
        return rc;
    }
    memset(ops, 0, sizeof(ops));
    ops[nops++] = (struct ar_etcd_op){.type = AR_ETCD_PUT,
                                      .key = (const uint8_t *)keys[0],
                                      .key_len = strlen(keys[0]),
                                      .value = (const uint8_t *)json,
                                      .value_len = strlen(json)};
    for (int k = 1; k <= 4; k++)
        ops[nops++] = (struct ar_etcd_op){
            .type = AR_ETCD_DELETE, .key = (const uint8_t *)keys[k], .key_len = strlen(keys[k])};
    ops[2].range_end = aend;
    ops[2].range_end_len = ar_etcd_prefix_end(ops[2].key, ops[2].key_len, aend);
    /* the pass's checkpoint and its sweeps' (".../sweep-<ms>"); ids have one length, so the
     * prefix is this rotation's alone */
    ops[3].range_end = rend;
    ops[3].range_end_len = ar_etcd_prefix_end(ops[3].key, ops[3].key_len, rend);
    /* keep the newest AR_RECORD_HISTORY, counting the one written now */
    drop = r->snap->nhist_keys + 1 > AR_RECORD_HISTORY ? r->snap->nhist_keys + 1 - AR_RECORD_HISTORY
                                                       : 0;
    for (size_t i = 0; i < drop && i < r->snap->nhist_keys; i++) {
        if (key_of(r, old[i], "history/%s", r->snap->hist_ids[i]) < 0)
            continue;
        ops[nops++] = (struct ar_etcd_op){
            .type = AR_ETCD_DELETE, .key = (const uint8_t *)old[i], .key_len = strlen(old[i])};
    }
    rc = leader_txn(r, ops, nops, false, rec->id, aborted ? "aborted" : "done");
    free(json);
    return rc;
}

static void verify_clear(struct ar_rotation *r, const char *id)
{
    snprintf(r->verify_for, sizeof(r->verify_for), "%s", id);
    r->verify_passed = r->verify_ran = false;
    r->verify_under_drops = r->verify_undecryptable = 0;
    r->sweeps = 0;
    r->sweep_wanted = false;
    r->sweep_status = 0;
    r->sweep_err[0] = '\0';
    memset(&r->sweep_prog, 0, sizeof(r->sweep_prog));
    r->verify_status = 0;
    r->verify_err[0] = '\0';
    r->nfirst = 0;
    json_decref(r->verify_counts);
    r->verify_counts = NULL;
}

/* The entry name verify counts a dropped provider/key under. */
static void drop_entry(const struct ar_phase_key *k, char *out, size_t n)
{
    if (k->type == AR_P_IDENTITY)
        snprintf(out, n, "identity");
    else
        snprintf(out, n, "%s:%s", ar_ptype_name(k->type), k->name ? k->name : "");
}

static void on_verify(void *arg, int status, struct ar_verify_report *rep,
                      const struct ar_etcd_error *err)
{
    struct ar_rotation *r = arg;
    char name[AR_VERIFY_NAME_MAX];
    struct ar_chain *to = NULL;

    r->pending--;
    r->verify = NULL;
    if (r->dead) {
        ar_verify_report_free(rep);
        maybe_free(r);
        return;
    }
    r->verify_next_mono = ar_etcd_now_ms() + r->verify_retry_ms;
    if (status < 0) { /* said in the status; again after verify_retry_ms like any scan */
        r->verify_status = status;
        snprintf(r->verify_err, sizeof(r->verify_err), "%s",
                 err && err->msg[0] ? err->msg : strerror(-status));
    }
    if (status < 0 || !r->plan || strcmp(r->verify_for, r->id)) {
        ar_verify_report_free(rep);
        return;
    }
    r->verify_status = 0;
    if (ar_chain_new(r->plan->to, &to) < 0)
        to = NULL; /* every known object counts: verify does not pass */
    r->verify_ran = true;
    r->verify_under_drops = 0;
    r->verify_undecryptable = rep->undecryptable;
    json_decref(r->verify_counts);
    r->verify_counts = json_object();
    for (size_t i = 0; i < rep->n_rows; i++) {
        const struct ar_verify_row *row = &rep->rows[i];
        json_t *o = json_object();
        char res[600];

        for (size_t e = 0; o && e < row->n; e++)
            json_object_set_new(o, row->v[e].name, json_integer((json_int_t)row->v[e].n));
        snprintf(res, sizeof(res), "%s%s%s", row->resource, row->group[0] ? "." : "", row->group);
        if (r->verify_counts && o)
            json_object_set_new(r->verify_counts, res, o);
        else
            json_decref(o);
        if (row->known) {
            /* S2 once `to` is the config: what its providers for this resource cannot read
             * (a key dropped for one resource may stay for another) */
            r->verify_under_drops += to ? ar_verify_unreadable(row, to) : row->total;
            continue;
        }
        /* a resource atrest cannot name (the re-encrypt pass does not rewrite it either):
         * anything under a key `to` drops anywhere, or in an "(other)" entry, counts; plaintext
         * does not (which rule kube-apiserver gives it is not known here) */
        r->verify_under_drops += ar_verify_count(row, "(other)");
        for (size_t k = 0; k < r->plan->ndrops; k++) {
            if (r->plan->drops[k].type == AR_P_IDENTITY)
                continue;
            drop_entry(&r->plan->drops[k], name, sizeof(name));
            if (r->plan->drops[k].type == AR_P_KMS) {
                size_t l = strlen(name); /* v2 entries carry ":<keyID>" */
                for (size_t e = 0; e < row->n; e++)
                    if (!strncmp(row->v[e].name, name, l) &&
                        (row->v[e].name[l] == '\0' || row->v[e].name[l] == ':'))
                        r->verify_under_drops += row->v[e].n;
            } else
                r->verify_under_drops += ar_verify_count(row, name);
        }
    }
    r->nfirst = 0;
    for (size_t i = 0; i < rep->n_bad && r->nfirst < FIRST_BAD; i++)
        snprintf(r->verify_first[r->nfirst++], sizeof(r->verify_first[0]), "%s: %s",
                 rep->bad[i].key, rep->bad[i].reason);
    r->verify_passed = !r->verify_under_drops && !r->verify_undecryptable;
    /* a sweep can help when objects under dropped keys are left and the pass can write the new
     * key: not through KMS, and not again after a sweep that rewrote nothing */
    r->sweep_wanted = r->verify_under_drops && reenc_mode(r, NULL) == AR_NODE_REENC_ETCD &&
                      !(r->kms_why[0] && !strcmp(r->kms_for, r->id)) && r->sweeps < SWEEPS_MAX &&
                      (!r->sweeps || r->sweep_prog.rewritten || r->sweep_status < 0);
    ar_verify_report_free(rep);
    ar_chain_unref(to);
    read_all(r);
}

/* The direct-etcd pass over the plan's rewrite list with the current phase config, its
 * checkpoint at ckey and every checkpoint txn guarded by the lease (S7): 0 (done will be
 * called, perhaps already) or a negative errno, -EPERM when not leading (no callback). */
static int start_pass(struct ar_rotation *r, const char *ckey, double rate,
                      ar_reencrypt_progress_cb progress, ar_reencrypt_done_cb done)
{
    const struct ar_rotation_rec *rec = &r->snap->rot;
    struct ar_reencrypt_opts o = {.etcd_prefix = r->etcd_prefix,
                                  .selectors = (const char *const *)r->plan->rewrite,
                                  .nselectors = r->plan->nrewrite,
                                  .checkpoint_key = ckey,
                                  .rate_limit = rate};
    struct ar_etcd_compare guard;
    struct ar_chain *chain = NULL;
    int rc;

    if (ar_election_guard(r->election, &guard) < 0)
        return -EPERM;
    o.guard = &guard;
    rc = ar_chain_new(r->plan->phases[rec->index].config, &chain);
    r->pending++; /* before the start: a pass that fails at once calls done inside it */
    if (rc == 0)
        rc = ar_reencrypt_start(r->etcd, chain, &o, progress, done, r, &r->reenc);
    ar_chain_unref(chain);
    if (rc < 0)
        r->pending--;
    return rc;
}

static void on_sweep_progress(void *arg, const struct ar_reencrypt_progress *p)
{
    struct ar_rotation *r = arg;
    r->sweep_prog = *p;
}

/* A sweep that failed (etcd, a lost guard) does not count: verify scans again after
 * verify_retry_ms and decides whether to sweep again, as a failed pass is tried again. */
static void sweep_failed(struct ar_rotation *r, int status, const char *msg)
{
    if (r->sweeps)
        r->sweeps--;
    r->sweep_status = status;
    snprintf(r->sweep_err, sizeof(r->sweep_err), "%s", msg);
    r->sweep_wanted = false;
    r->verify_next_mono = ar_etcd_now_ms() + r->verify_retry_ms;
}

static void on_sweep_done(void *arg, int status, const struct ar_reencrypt_progress *p,
                          const struct ar_err *err)
{
    struct ar_rotation *r = arg;

    r->pending--;
    r->reenc = NULL;
    r->sweeping = false;
    if (r->dead) {
        maybe_free(r);
        return;
    }
    if (p)
        r->sweep_prog = *p;
    if (status < 0) {
        sweep_failed(r, status, err && err->msg[0] ? err->msg : strerror(-status));
    } else {
        r->sweep_status = 0;
        r->sweep_err[0] = '\0';
        r->sweep_wanted = false;
        r->verify_next_mono = 0; /* verify again at once: it decides whether to sweep again */
    }
    read_all(r);
}

/*
 * A sweep: the re-encrypt pass again, in phase verify, after a scan found objects under keys
 * prune would drop that the write key can replace: written after the pass read them, by an API
 * server that encrypted with the old key just before it loaded the promote config and
 * committed after (kube-apiserver swaps its transformers while requests run), or left by a
 * pass whose write failed (counted in failed). Its checkpoint key
 * is its own (a new one for each sweep: a finished checkpoint would end a new sweep at once);
 * leader_finish deletes them with the pass's. At most SWEEPS_MAX a leader, and none after a
 * sweep that rewrote nothing: then the status says what verify found and the operator
 * decides (S9). A sweep stops when its leader stops leading or the rotation changes
 * (evaluate).
 */
static void leader_sweep(struct ar_rotation *r)
{
    struct ar_reencrypt_progress last;
    char ckey[KEY_MAX];
    double rate;
    int rc;

    if (key_of(r, ckey, "reencrypt/%s/sweep-%lld", r->snap->rot.id, (long long)wall_ms()) < 0)
        return;
    reenc_mode(r, &rate);
    last = r->sweep_prog;
    r->sweeps++;
    memset(&r->sweep_prog, 0, sizeof(r->sweep_prog));
    r->sweeping = true;
    rc = start_pass(r, ckey, rate, on_sweep_progress, on_sweep_done);
    if (rc < 0) {
        r->sweeping = false;
        r->sweeps--;
        if (rc != -EPERM) /* -EPERM: not leading now (evaluate says so); nothing changed */
            sweep_failed(r, rc, strerror(-rc));
        else
            r->sweep_prog = last;
    }
}

static void leader_verify(struct ar_rotation *r)
{
    struct ar_chain *chain = NULL;
    struct ar_verify_opts o = {.etcd_prefix = r->etcd_prefix, .parallel = VERIFY_PIECES};
    const struct ar_rotation_rec *rec = &r->snap->rot;
    int rc;

    if (r->verify || r->reenc || !r->plan_ok || strcmp(r->id, rec->id))
        return;
    if (strcmp(r->verify_for, rec->id))
        verify_clear(r, rec->id);
    if (r->sweep_wanted) {
        leader_sweep(r);
        return;
    }
    if ((r->verify_ran || r->verify_status < 0) && ar_etcd_now_ms() < r->verify_next_mono)
        return;
    rc = ar_chain_new(r->plan->phases[rec->index].config, &chain);
    if (rc == 0)
        rc = ar_verify_start(r->etcd, chain, &o, NULL, on_verify, r, &r->verify);
    ar_chain_unref(chain);
    if (rc == 0) {
        r->pending++;
    } else { /* said in the status, tried again after verify_retry_ms */
        r->verify_status = rc;
        snprintf(r->verify_err, sizeof(r->verify_err), "%s", strerror(-rc));
        r->verify_next_mono = ar_etcd_now_ms() + r->verify_retry_ms;
    }
}

static void on_reenc_progress(void *arg, const struct ar_reencrypt_progress *p)
{
    struct ar_rotation *r = arg;
    r->reenc_prog = *p;
}

static void on_reenc_done(void *arg, int status, const struct ar_reencrypt_progress *p,
                          const struct ar_err *err)
{
    struct ar_rotation *r = arg;

    r->pending--;
    r->reenc = NULL;
    r->reenc_op = NULL;
    if (r->dead) {
        maybe_free(r);
        return;
    }
    if (p)
        r->reenc_prog = *p;
    r->reenc_status = status;
    r->reenc_done = status == 0;
    /* a pass that failed (etcd or the API server down, a checkpoint that is not valid, no
     * permission): again after 1, 2, 4 .. 30 s, never in a loop */
    if (status < 0) {
        unsigned f = r->reenc_fails < 5 ? r->reenc_fails : 5;

        r->reenc_fails++;
        r->reenc_retry_ms = ar_etcd_now_ms() + ((1000u << f) < 30000u ? (1000u << f) : 30000u);
        snprintf(r->reenc_err, sizeof(r->reenc_err), "%s",
                 err && err->msg[0] ? err->msg : strerror(-status));
    } else {
        r->reenc_fails = 0;
        r->reenc_retry_ms = 0;
        r->reenc_err[0] = '\0';
    }
    read_all(r);
}

/* The re-encrypt pass (start_pass, or ops.reencrypt when this node's mode is not etcd). */
static void leader_reencrypt(struct ar_rotation *r)
{
    const struct ar_rotation_rec *rec = &r->snap->rot;
    char ckey[KEY_MAX];
    enum ar_node_reenc_mode mode;
    double rate;
    int rc;

    if (r->reenc || r->reenc_op || !r->plan_ok || strcmp(r->id, rec->id))
        return;
    if (strcmp(r->reenc_for, rec->id)) {
        snprintf(r->reenc_for, sizeof(r->reenc_for), "%s", rec->id);
        r->reenc_done = false;
        r->reenc_status = 0;
        memset(&r->reenc_prog, 0, sizeof(r->reenc_prog));
        r->reenc_retry_ms = 0;
        r->reenc_fails = 0;
        r->reenc_err[0] = '\0';
    }
    mode = reenc_mode(r, &rate);
    if (ar_etcd_now_ms() < r->reenc_retry_ms)
        return;
    if (mode != AR_NODE_REENC_ETCD) {
        struct ar_node_reenc_req req = {.rotation_id = rec->id,
                                        .cfg = r->plan->phases[rec->index].config,
                                        .selectors = (const char *const *)r->plan->rewrite,
                                        .nselectors = r->plan->nrewrite,
                                        .rate_limit = rate};

        rc = r->ops.reencrypt(r->agent, &req, on_reenc_progress, on_reenc_done, r, &r->reenc_op);
        if (rc == 0)
            r->pending++;
        else
            r->reenc_status = rc;
        return;
    }
    if (key_of(r, ckey, "reencrypt/%s", rec->id) < 0)
        return;
    rc = start_pass(r, ckey, rate, on_reenc_progress, on_reenc_done);
    if (rc < 0 && rc != -EPERM)
        r->reenc_status = rc;
}

static void leader_act(struct ar_rotation *r, enum action act)
{
    const struct ar_rotation_rec *cur = &r->snap->rot;
    struct ar_rotation_rec rec;
    int rc = 0;

    if (r->txn_busy || act == A_NONE)
        return;
    rec = *cur;
    switch (act) {
    case A_NONE:
        break;
    case A_CREATE:
        rc = leader_create(r);
        break;
    case A_DROP:
        rec.nmembers = 0;
        for (size_t i = 0; i < cur->nmembers; i++)
            if (registered(r->snap, cur->members[i]))
                memcpy(rec.members[rec.nmembers++], cur->members[i], AR_REPORT_NODE_MAX);
        if (!rec.nmembers) /* nobody left: leave it to the operator (S9) */
            break;
        rc = put_record(r, &rec, false, cur->phases[cur->index].name, NULL);
        break;
    case A_ABORTING:
        rec.state = AR_ROT_ABORTING;
        rec.phase_since_ms = wall_ms();
        rc = put_record(r, &rec, false, "aborting", cur->id);
        break;
    case A_REFUSE:
        whyf(rec.abort_refused, sizeof(rec.abort_refused),
             "abort refused in phase %s: every API server already writes with the new key; going "
             "back is a new rotation to the old config",
             cur->phases[cur->index].name);
        rc = put_record(r, &rec, false, cur->phases[cur->index].name, cur->id);
        break;
    case A_ADVANCE:
        rec.index++;
        rec.phase_since_ms = wall_ms();
        rc = put_record(r, &rec, false, rec.phases[rec.index].name, NULL);
        break;
    case A_FINISH:
        rc = leader_finish(r, cur->state == AR_ROT_ABORTING);
        break;
    case A_REENCRYPT:
        leader_reencrypt(r);
        break;
    case A_VERIFY:
        leader_verify(r);
        break;
    }
    if (rc < 0 && rc != -EAGAIN && rc != -EPERM)
        appendf(r->why, sizeof(r->why), " (the leader cannot act: %s)", strerror(-rc));
}

static void evaluate(struct ar_rotation *r)
{
    enum action act;

    member_step(r);
    if (r->dead)
        return;
    act = decide(r, r->why, sizeof(r->why));
    if (r->sweeping &&
        (!leading(r) || !r->snap->has_rot || strcmp(r->snap->rot.id, r->verify_for))) {
        ar_reencrypt_stop(r->reenc); /* no done callback after it */
        r->reenc = NULL;
        r->sweeping = false;
        r->pending--;
    }
    if (!leading(r) && r->reenc_op) { /* a pass through the API has no guard of its own */
        r->ops.reencrypt_stop(r->agent, r->reenc_op);
        r->reenc_op = NULL;
        r->pending--;
    }
    if (leading(r))
        leader_act(r, act);
    else if (act == A_REENCRYPT || act == A_VERIFY)
        whyf(r->why, sizeof(r->why), "waiting for the leader to %s",
             act == A_VERIFY ? "verify" : "re-encrypt");
    if (r->status)
        r->status(r->agent);
}

/* ---- loop plumbing -------------------------------------------------------------------------- */

static void on_tick(uv_timer_t *t)
{
    read_all(t->data);
}

static void on_watch(void *arg, const struct ar_etcd_watch_update *u)
{
    struct ar_rotation *r = arg;

    if (u->kind == AR_ETCD_WATCH_COMPACTED) {
        ar_etcd_watch_stop(r->watch);
        r->watch = NULL; /* the tick reads; a new watch starts with the next poke */
    }
    if (u->kind != AR_ETCD_WATCH_ERROR)
        uv_timer_start(&r->tick, on_tick, SOON_MS, r->tick_ms);
}

static int watch_start(struct ar_rotation *r)
{
    uint8_t end[300];
    struct ar_etcd_watch_opts o = {
        .key = (const uint8_t *)r->prefix, .key_len = strlen(r->prefix), .range_end = end};

    o.range_end_len = ar_etcd_prefix_end(o.key, o.key_len, end);
    return ar_etcd_watch_start(r->etcd, &o, on_watch, r, &r->watch);
}

void ar_rotation_poke(struct ar_rotation *r)
{
    if (!r || r->dead)
        return;
    if (!r->watch)
        watch_start(r);
    uv_timer_start(&r->tick, on_tick, SOON_MS, r->tick_ms);
}

int ar_rotation_new(struct ar_etcd *c, const struct ar_rotation_settings *s,
                    const struct ar_node_ops *ops, void *agent, ar_rotation_event_cb event,
                    ar_rotation_status_cb status, struct ar_rotation **out)
{
    struct ar_rotation *r;
    int rc;

    if (out)
        *out = NULL;
    if (!c || !s || !ops || !out || !s->prefix || !s->node || !ops->apply || !ops->prove ||
        !ops->save || !ops->load || !ops->forget || !ops->config || strlen(s->prefix) >= 256 ||
        !s->node[0] || strlen(s->node) >= AR_REPORT_NODE_MAX || strchr(s->node, '/'))
        return -EINVAL;
    r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->snap = calloc(1, sizeof(*r->snap));
    if (!r->snap) {
        free(r);
        return -ENOMEM;
    }
    r->etcd = c;
    r->ops = *ops;
    r->agent = agent;
    r->event = event;
    r->status = status;
    snprintf(r->prefix, sizeof(r->prefix), "%s", s->prefix);
    snprintf(r->node, sizeof(r->node), "%s", s->node);
    snprintf(r->etcd_prefix, sizeof(r->etcd_prefix), "%s",
             s->etcd_prefix ? s->etcd_prefix : "/registry");
    r->settle_ms = s->settle_ms;
    r->tick_ms = s->tick_ms ? s->tick_ms : 1000;
    r->verify_retry_ms = s->verify_retry_ms ? s->verify_retry_ms : 10000;
    r->load_opts = s->load_opts;
    rc = watch_start(r);
    if (rc < 0) {
        free(r->snap);
        free(r);
        return rc;
    }
    uv_timer_init(ar_etcd_loop(c), &r->tick);
    r->tick.data = r;
    r->pending = 1; /* the timer handle */
    uv_timer_start(&r->tick, on_tick, 0, r->tick_ms);
    *out = r;
    return 0;
}

void ar_rotation_set_election(struct ar_rotation *r, struct ar_election *e)
{
    if (r)
        r->election = e;
}

bool ar_rotation_active(const struct ar_rotation *r)
{
    return r && r->snap->valid && r->snap->has_rot;
}

bool ar_rotation_known(const struct ar_rotation *r)
{
    return r && r->snap->valid;
}

const char *ar_rotation_member_error(const struct ar_rotation *r)
{
    if (!r || !r->snap || !r->snap->has_rot)
        return "";
    return r->merr[0] ? r->merr : r->lasterr;
}

const char *ar_rotation_phase(const struct ar_rotation *r)
{
    const struct snap *s = r ? r->snap : NULL;

    if (!s || !s->has_rot || !s->rot_ok)
        return "idle";
    if (s->rot.state == AR_ROT_ABORTING)
        return "aborting";
    return s->rot.phases[s->rot.index].name;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct ar_rotation *r = h->data;

    r->pending--;
    maybe_free(r);
}

void ar_rotation_free(struct ar_rotation *r)
{
    if (!r)
        return;
    r->dead = true;
    r->election = NULL;
    ar_etcd_watch_stop(r->watch);
    r->watch = NULL;
    if (r->verify) {
        ar_verify_stop(r->verify);
        r->verify = NULL;
        r->pending--;
    }
    if (r->reenc) {
        ar_reencrypt_stop(r->reenc);
        r->reenc = NULL;
        r->pending--;
    }
    if (r->reenc_op) {
        r->ops.reencrypt_stop(r->agent, r->reenc_op);
        r->reenc_op = NULL;
        r->pending--;
    }
    uv_close((uv_handle_t *)&r->tick, on_timer_closed);
}

/* ---- status --------------------------------------------------------------------------------- */

static json_t *iso_or_null(int64_t ms)
{
    char buf[32];
    time_t t = (time_t)(ms / 1000);
    struct tm tm;

    if (ms <= 0 || !gmtime_r(&t, &tm) || !strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm))
        return json_null();
    return json_string(buf);
}

static void member_json(const struct ar_rotation *r, json_t *m, const char *name)
{
    const struct snap *s = r->snap;
    const struct ar_rotation_rec *rec = &s->rot;
    bool cur = s->has_rot && s->rot_ok;
    int index = cur ? (rec->state == AR_ROT_ABORTING ? -1 : rec->index) : 0;
    const struct node_view *v = node_find(s, name);
    const struct ar_ack_rec *a = cur ? ack_find(s, name, index) : NULL;
    bool in_set = false, alive = v && v->alive;
    const char *err = NULL;
    char buf[AR_RECORD_MSG_MAX];

    if (json_object_get(m, name))
        return;
    for (size_t k = 0; cur && k < rec->nmembers; k++)
        in_set |= !strcmp(rec->members[k], name);
    if (!strcmp(name, r->node) && ar_rotation_member_error(r)[0])
        err = ar_rotation_member_error(r);
    else if (!alive)
        err = "not alive (no lease: down or never started)";
    else if (strcmp(name, r->node) && v && v->report_ok && v->rep.error[0] && !(a && a->ok))
        err = v->rep.error; /* what that member says of itself in its report */
    else if (a && index >= 0 && (!a->ok || strcmp(a->hash, rec->phases[index].hash))) {
        whyf(buf, sizeof(buf), "acked phase %s with another config hash (%.19s)",
             rec->phases[index].name, a->hash);
        err = buf;
    }
    json_object_set_new(
        m, name,
        json_pack("{s:b, s:s?, s:b, s:s?, s:s?, s:b, s:b}", "alive", alive, "effective",
                  v && v->report_ok && v->rep.effective_fp[0] ? v->rep.effective_fp : NULL, "acked",
                  a && a->ok, "proof", a ? a->proof : NULL, "last_error", err, "registered",
                  v && v->registered, "in_rotation", in_set));
}

/* Every node seen (registered or alive), every member of the rotation's set, and this one. */
static json_t *members_json(const struct ar_rotation *r)
{
    const struct snap *s = r->snap;
    json_t *m = json_object();

    for (size_t i = 0; m && i < s->nnodes; i++)
        member_json(r, m, s->nodes[i].node);
    for (size_t i = 0; m && s->has_rot && s->rot_ok && i < s->rot.nmembers; i++)
        member_json(r, m, s->rot.members[i]);
    if (m)
        member_json(r, m, r->node);
    return m;
}

static json_t *history_json(const struct snap *s)
{
    json_t *h = json_array();

    for (size_t i = s->nhist; h && i-- > 0;) { /* newest first */
        const struct ar_history_rec *e = &s->hist[i];
        json_t *ph = json_array();
        for (size_t k = 0; ph && k < e->nphases; k++)
            json_array_append_new(ph, json_string(e->phases[k]));
        json_array_append_new(
            h, json_pack("{s:s, s:s, s:s, s:s, s:o, s:o, s:I, s:o}", "id", e->id, "from", e->from,
                         "to", e->to, "result", e->aborted ? "aborted" : "done", "started",
                         iso_or_null(e->started_ms), "finished", iso_or_null(e->finished_ms),
                         "duration_seconds", (json_int_t)((e->finished_ms - e->started_ms) / 1000),
                         "phases", ph ? ph : json_array()));
    }
    return h;
}

json_t *ar_rotation_status_json(const struct ar_rotation *r)
{
    const struct snap *s = r->snap;
    const struct ar_rotation_rec *rec = &s->rot;
    bool cur = s->has_rot && s->rot_ok;
    bool reenc_cur = cur && !strcmp(r->reenc_for, rec->id);
    bool ver_cur = cur && !strcmp(r->verify_for, rec->id);
    const struct ar_history_rec *last = s->nhist ? &s->hist[s->nhist - 1] : NULL;
    const char *phase = cur    ? ar_rotation_phase(r)
                        : last ? (last->aborted ? "aborted" : "done")
                               : "idle";
    json_t *o, *first = json_array();

    for (size_t i = 0; ver_cur && first && i < r->nfirst; i++)
        json_array_append_new(first, json_string(r->verify_first[i]));
    o = json_pack(
        "{s:s?, s:s?, s:s?, s:s, s:o, s:s, s:b, s:s?, s:o, "
        "s:{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:o}, "
        "s:{s:o, s:I, s:I, s:b, s:o, s:I, s:I}, s:o}",
        "id",
        cur    ? rec->id
        : last ? last->id
               : NULL,
        "from",
        cur    ? rec->from
        : last ? last->from
               : NULL,
        "to",
        cur    ? rec->to
        : last ? last->to
               : NULL,
        "phase", phase, "phase_since", cur ? iso_or_null(rec->phase_since_ms) : json_null(),
        "waiting_for", r->why, "leader", leading(r), "abort_refused",
        cur && rec->abort_refused[0] ? rec->abort_refused : NULL, "members", members_json(r),
        "reencrypt", "mode", reenc_mode_name(reenc_mode(r, NULL)), "done",
        (json_int_t)(reenc_cur ? r->reenc_prog.done : 0), "total",
        (json_int_t)(reenc_cur ? r->reenc_prog.total : 0), "rewritten",
        (json_int_t)(reenc_cur ? r->reenc_prog.rewritten : 0), "failed",
        (json_int_t)(reenc_cur ? r->reenc_prog.failed : 0), "skipped",
        (json_int_t)(reenc_cur ? r->reenc_prog.skipped : 0), "conflicts",
        (json_int_t)(reenc_cur ? r->reenc_prog.conflicts : 0), "rate",
        reenc_cur ? r->reenc_prog.rate : 0.0, "eta_seconds",
        reenc_cur && r->reenc_prog.eta_s >= 0 ? json_real(r->reenc_prog.eta_s) : json_null(),
        "verify", "counts",
        ver_cur && r->verify_counts ? json_incref(r->verify_counts) : json_object(),
        "under_dropped_keys", (json_int_t)(ver_cur ? r->verify_under_drops : 0), "undecryptable",
        (json_int_t)(ver_cur ? r->verify_undecryptable : 0), "passed", ver_cur && r->verify_passed,
        "first", first ? first : json_array(), "sweeps", (json_int_t)(ver_cur ? r->sweeps : 0),
        "sweep_rewritten", (json_int_t)(ver_cur ? r->sweep_prog.rewritten : 0), "history",
        history_json(s));
    return o;
}
