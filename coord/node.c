/* coord/node.c: the driver without etcd behind the node interface (see node.h): the phases
 * of the plan on this node, each applied then proved, stopping before any prune. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord/node.h"
#include "coord/phase.h"

#define SEQ_MAX 6 /* stage, promote, to (bounded by the five phases + to) */

struct ar_node {
    struct ar_node_ops ops;
    void *agent;
    enum ar_node_step step;
    struct ar_config *current; /* being applied or proved */
    struct ar_config *next;    /* the newest desired config not yet started */
    /* the configs to apply in order for the desired config taken (references) */
    struct ar_config *seq[SEQ_MAX];
    const char *seqname[SEQ_MAX];
    size_t nseq, iseq;
    const char *mode;   /* "direct" (first install) or "local" (phases on this node) */
    bool any_changed;   /* some step of the sequence changed the file */
    char waiting[1024]; /* why the sequence stopped before prune; "" when it did not */
    bool dead, running; /* running: inside the driver loop (completions may nest) */
    int pending;        /* ops started, not completed */
    bool step_done;     /* the op of this step completed */
    int status;
    bool changed;
    enum ar_node_proof proof;
    struct ar_err err;
    struct ar_prove_req req; /* of the prove in flight */
    char hash[AR_HASH_STRLEN];
};

static void report(struct ar_node *n, enum ar_node_result res, const struct ar_err *err)
{
    char fp[AR_HASH_STRLEN];
    struct ar_node_report r = {
        .mode = n->mode ? n->mode : "direct", .step = n->step, .result = res, .err = err};

    if (n->current) {
        ar_config_fingerprint_str(n->current, fp);
        r.fingerprint = fp;
    }
    if (res == AR_NODE_APPLIED || res == AR_NODE_UNCHANGED) {
        r.proof = n->proof;
        r.waiting_for = n->waiting[0] ? n->waiting : NULL;
    }
    n->ops.report(n->agent, &r);
}

static void seq_clear(struct ar_node *n)
{
    for (size_t i = 0; i < n->nseq; i++)
        n->seq[i] = ar_config_unref(n->seq[i]);
    n->nseq = n->iseq = 0;
}

static void seq_push(struct ar_node *n, struct ar_config *cfg, const char *name)
{
    if (n->nseq < SEQ_MAX) {
        n->seq[n->nseq] = ar_config_ref(cfg);
        n->seqname[n->nseq++] = name;
    }
}

static void maybe_free(struct ar_node *n)
{
    if (n->dead && !n->pending && !n->running) {
        seq_clear(n);
        ar_config_unref(n->current);
        ar_config_unref(n->next);
        free(n);
    }
}

/* "aescbc key k1", "identity", "kms p1" */
static void key_words(const struct ar_phase_key *k, char *buf, size_t len)
{
    if (k->type == AR_P_IDENTITY)
        snprintf(buf, len, "identity");
    else if (k->type == AR_P_KMS)
        snprintf(buf, len, "kms %s", k->name ? k->name : "?");
    else
        snprintf(buf, len, "%s key %s", ar_ptype_name(k->type), k->name ? k->name : "?");
}

static void waiting_reason(struct ar_node *n, const struct ar_plan *p)
{
    size_t off = 0, len = sizeof(n->waiting);
    char kw[160];
    int w;

    w = snprintf(n->waiting, len,
                 "waiting before prune: without etcd atrest cannot verify that nothing stored is "
                 "still under ");
    off = w > 0 && (size_t)w < len ? (size_t)w : len - 1;
    for (size_t i = 0; i < p->ndrops && off < len - 1; i++) {
        key_words(&p->drops[i], kw, sizeof(kw));
        w = snprintf(n->waiting + off, len - off, "%s%s", i ? ", " : "", kw);
        off = w > 0 && (size_t)w < len - off ? off + (size_t)w : len - 1;
    }
    if (off < len - 1)
        snprintf(n->waiting + off, len - off,
                 "; re-encrypt and verify with `atrest reencrypt` / `atrest verify`, then push a "
                 "desired config that keeps those keys, or configure etcd");
}

/* Fill seq for the desired config `to`: a first install (no effective config) writes it
 * directly; otherwise the plan from the effective config runs on this node, every phase when
 * nothing is dropped (ending at `to` itself), else only the phases before reencrypt, and the
 * driver then waits before prune (no key is ever dropped without etcd). 0 or -errno with err
 * set. */
static int seq_build(struct ar_node *n, struct ar_config *to, struct ar_err *err)
{
    struct ar_config *from = n->ops.config ? n->ops.config(n->agent, false) : NULL;
    struct ar_plan *p = NULL;
    struct ar_diags d;
    int r = 0;

    seq_clear(n);
    n->waiting[0] = 0;
    n->any_changed = false;
    n->mode = "direct";
    if (!from) {
        seq_push(n, to, "direct");
        return 0;
    }
    n->mode = "local";
    ar_diags_init(&d);
    r = ar_plan_derive(from, to, "desired", NULL, &p, &d);
    if (r < 0) {
        char line[200] = "";
        if (d.n)
            ar_diag_format(&d.v[0], line, sizeof(line));
        ar_err_set(err, r, NULL, "cannot derive the phases from the effective config: %s",
                   line[0] ? line : strerror(-r));
        goto out;
    }
    for (size_t i = 0; i < p->nphases; i++)
        if (p->phases[i].kind == AR_PHASE_STAGE || p->phases[i].kind == AR_PHASE_PROMOTE)
            seq_push(n, p->phases[i].config, ar_phase_name(p->phases[i].kind));
    if (p->ndrops)
        waiting_reason(n, p);
    else
        seq_push(n, to, p->nphases ? ar_phase_name(p->phases[p->nphases - 1].kind) : "direct");
out:
    ar_plan_free(p);
    ar_diags_free(&d);
    return r;
}

static void on_applied(void *arg, int status, bool changed, const struct ar_err *err);
static void on_proved(void *arg, int status, enum ar_node_proof kind, const struct ar_err *err);

/* Start the step that follows; completions that arrive before the op returns come back here
 * through step_done instead of recursing. Bounded: at most one apply and one prove per config,
 * and a config is taken once. */
static void drive(struct ar_node *n)
{
    if (n->running)
        return;
    n->running = true;
    while (!n->dead) {
        if (n->step != AR_NODE_IDLE && !n->step_done)
            break; /* its completion drives on */
        if (n->step == AR_NODE_IDLE) {
            if (n->next) { /* a newer desired config restarts from the effective config */
                struct ar_config *to = n->next;
                n->next = NULL;
                ar_err_clear(&n->err);
                if (seq_build(n, to, &n->err) < 0) {
                    ar_config_unref(to);
                    seq_clear(n);
                    report(n, AR_NODE_FAILED, &n->err);
                    continue;
                }
                ar_config_unref(to);
                if (!n->nseq) { /* nothing to apply before prune: waiting at once */
                    n->proof = AR_NODE_PROOF_NONE;
                    report(n, AR_NODE_UNCHANGED, NULL);
                    continue;
                }
            }
            if (n->iseq >= n->nseq)
                break;
            ar_config_unref(n->current);
            n->current = ar_config_ref(n->seq[n->iseq++]);
            n->step = AR_NODE_APPLYING;
            n->step_done = false;
            n->pending++;
            n->ops.apply(n->agent, n->current, on_applied, n);
            if (!n->step_done)
                break; /* on_applied continues */
        } else if (n->step == AR_NODE_APPLYING) {
            if (n->status < 0) {
                n->step = AR_NODE_IDLE;
                seq_clear(n); /* the rest of the sequence is not applied */
                n->waiting[0] = 0;
                report(n, AR_NODE_FAILED, &n->err);
                continue;
            }
            n->any_changed = n->any_changed || n->changed;
            n->step = AR_NODE_PROVING;
            n->step_done = false;
            n->pending++;
            ar_config_file_hash_str(n->current, n->hash);
            n->req = (struct ar_prove_req){.goal = AR_PROVE_LOADED,
                                           .cfg = n->current,
                                           .file_hash = n->hash,
                                           .phase = n->seqname[n->iseq - 1]};
            n->ops.prove(n->agent, &n->req, on_proved, n);
            if (!n->step_done)
                break; /* on_proved continues */
        } else {       /* PROVING done */
            n->step = AR_NODE_IDLE;
            if (n->iseq < n->nseq && !n->next) {
                report(n, AR_NODE_NONE, NULL); /* between phases */
                continue;
            }
            seq_clear(n);
            report(n, n->any_changed ? AR_NODE_APPLIED : AR_NODE_UNCHANGED, NULL);
        }
    }
    n->running = false;
    maybe_free(n); /* freed from a callback meanwhile */
}

static void on_applied(void *arg, int status, bool changed, const struct ar_err *err)
{
    struct ar_node *n = arg;

    n->pending--;
    n->step_done = true;
    n->status = status;
    n->changed = changed;
    n->proof = AR_NODE_PROOF_NONE;
    ar_err_clear(&n->err);
    if (status < 0) {
        if (err)
            n->err = *err;
        else
            ar_err_set(&n->err, status, NULL, "apply failed");
        n->err.code = status;
    }
    if (n->dead) {
        maybe_free(n);
        return;
    }
    drive(n);
}

static void on_proved(void *arg, int status, enum ar_node_proof kind, const struct ar_err *err)
{
    struct ar_node *n = arg;

    n->pending--;
    n->step_done = true;
    /* a failed proof does not undo the apply: it proves nothing */
    n->proof = status < 0 ? AR_NODE_PROOF_NONE : kind;
    if (n->dead) {
        maybe_free(n);
        return;
    }
    drive(n);
}

int ar_node_new(const struct ar_node_ops *ops, void *agent, struct ar_node **out)
{
    struct ar_node *n;

    if (out)
        *out = NULL;
    if (!out || !ops || !ops->apply || !ops->prove || !ops->report)
        return -EINVAL;
    n = calloc(1, sizeof(*n));
    if (!n)
        return -ENOMEM;
    n->ops = *ops;
    n->agent = agent;
    *out = n;
    return 0;
}

int ar_node_desired(struct ar_node *n, struct ar_config *cfg)
{
    if (!n || !cfg || n->dead)
        return -EINVAL;
    ar_config_unref(n->next);
    n->next = ar_config_ref(cfg);
    drive(n);
    return 0;
}

enum ar_node_step ar_node_step(const struct ar_node *n)
{
    return n->step;
}

void ar_node_free(struct ar_node *n)
{
    if (!n)
        return;
    n->dead = true;
    maybe_free(n);
}
