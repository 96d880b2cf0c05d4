/* coord/node.c: today's driver behind the node interface (see node.h): apply, then prove. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "coord/node.h"

struct ar_node {
    struct ar_node_ops ops;
    void *agent;
    enum ar_node_step step;
    struct ar_config *current; /* being applied or proved */
    struct ar_config *next;    /* the newest desired config not yet started */
    bool dead, running;        /* running: inside the driver loop (completions may nest) */
    int pending;               /* ops started, not completed */
    bool step_done;            /* the op of this step completed */
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
    struct ar_node_report r = {.mode = "direct", .step = n->step, .result = res, .err = err};

    if (n->current) {
        ar_config_fingerprint_str(n->current, fp);
        r.fingerprint = fp;
    }
    if (res == AR_NODE_APPLIED || res == AR_NODE_UNCHANGED)
        r.proof = n->proof;
    n->ops.report(n->agent, &r);
}

static void maybe_free(struct ar_node *n)
{
    if (n->dead && !n->pending && !n->running) {
        ar_config_unref(n->current);
        ar_config_unref(n->next);
        free(n);
    }
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
            if (!n->next)
                break;
            ar_config_unref(n->current);
            n->current = n->next;
            n->next = NULL;
            n->step = AR_NODE_APPLYING;
            n->step_done = false;
            n->pending++;
            n->ops.apply(n->agent, n->current, on_applied, n);
            if (!n->step_done)
                break; /* on_applied continues */
        } else if (n->step == AR_NODE_APPLYING) {
            if (n->status < 0) {
                n->step = AR_NODE_IDLE;
                report(n, AR_NODE_FAILED, &n->err);
                continue;
            }
            n->step = AR_NODE_PROVING;
            n->step_done = false;
            n->pending++;
            ar_config_file_hash_str(n->current, n->hash);
            n->req = (struct ar_prove_req){.goal = AR_PROVE_LOADED,
                                           .cfg = n->current,
                                           .file_hash = n->hash,
                                           .phase = "direct"};
            n->ops.prove(n->agent, &n->req, on_proved, n);
            if (!n->step_done)
                break; /* on_proved continues */
        } else {       /* PROVING done */
            n->step = AR_NODE_IDLE;
            report(n, n->changed ? AR_NODE_APPLIED : AR_NODE_UNCHANGED, NULL);
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
