/*
 * coord/node.h: the asynchronous interface between coord/ (the protocol) and agent/ (this node:
 * its effective file, its provider chain, its status). coord/ never reaches into the agent: it
 * asks through a table of operations the agent implements, and the agent hands it each valid
 * desired config. The rotation (next issue) replaces the driver's policy, not this interface.
 *
 * Contract
 * - Every operation is started on the loop thread and completes EXACTLY ONCE through its
 *   callback, possibly before the operation returns (the agent's file write is synchronous
 *   today). The config passed to an operation is referenced by the driver until completion.
 * - apply: write cfg as the effective config (the file kube-apiserver reads) and swap the
 *   in-process provider chain; complete with 0 and whether the file changed, or a negative
 *   errno and err saying why (the previous effective config then stays in force).
 * - prove: prove that the local API server runs req->cfg as req->goal asks (the rotation picks
 *   the goal per phase: see coord/rotation.h). Kinds are in enum ar_node_proof;
 *   AR_NODE_PROOF_NONE means nothing was proved. req and what it points to are valid until
 *   done runs (the caller keeps them).
 * - save/load/forget/config (the rotation's member, coord/rotation.h; the direct driver does
 *   not use them and they may be NULL for it): keep a rotation's from and to configs under the
 *   state dir (<stateDir>/rotation/<id>/{from,to}.yaml, 0600) and read them back (-ENOENT when
 *   none were saved); forget removes every saved rotation but keep_id (NULL: all); config hands
 *   out the node's current desired (desired true) or effective config, borrowed, NULL when
 *   there is none.
 * - report: the driver's state for /status and the log, after every step (never blocks).
 * - reencrypt_mode/reencrypt/reencrypt_stop (optional, the rotation's leader only; all three
 *   NULL: the leader always runs coord/reencrypt.h straight in etcd): reencrypt_mode says how
 *   this node wants the re-encrypt pass done (AR_NODE_REENC_ETCD: the leader runs the engine
 *   itself) and the rate limit (objects/s, 0: none) for either. For any other mode the leader
 *   calls reencrypt instead of the engine: 0 and *handle (done is then called EXACTLY ONCE,
 *   never before reencrypt returned, unless reencrypt_stop ran first: then never), or a
 *   negative errno and no callback (-EOPNOTSUPP: this node cannot do that mode). Progress and
 *   done have the engine's types and meaning (coord/reencrypt.h: done/total/rewritten/skipped/
 *   conflicts/failed, rate, eta_s; first_failed without values). req and its strings are valid
 *   only during the call (the op copies what it keeps; it references req->cfg). A KMS write
 *   provider does not block these modes (the API server encrypts). Verify always scans etcd.
 *
 * The driver (used without etcd; with etcd the rotation of coord/rotation.h decides): a first
 * install (config(agent, false) is NULL, or config is NULL) writes the desired config directly
 * (mode "direct"). Otherwise (mode "local") it derives the plan (coord/phase.h) from the
 * effective config to the desired one and applies then proves each phase config in order on
 * this node: when the plan drops nothing it ends at the desired config itself; when it drops a
 * key it applies only the phases before reencrypt (stage, promote) and then waits, saying why
 * in report.waiting_for (it never drops a key: without etcd nothing can verify that no stored
 * object is still under it). A desired config handed over while one is in flight replaces any
 * not yet started and stops the running sequence after its current step; the next one starts
 * again from the effective config.
 */
#ifndef ATREST_COORD_NODE_H
#define ATREST_COORD_NODE_H

#include <stdbool.h>
#include <stdint.h>

#include "coord/err.h"
#include "coord/reencrypt.h"
#include "crypto/config.h"

enum ar_node_proof {
    AR_NODE_PROOF_NONE = 0, /* nothing proved (reported as such) */
    AR_NODE_PROOF_FILE,     /* the effective file holds the config's bytes (read back) */
    AR_NODE_PROOF_CANARY,   /* a canary Secret read or written through the API server */
    AR_NODE_PROOF_METRICS,  /* the API server's metrics: loaded file hash or a reload after */
    AR_NODE_PROOF_RESTART,  /* the reload command ran and /readyz answered */
};

/* What a proof must show (DESIGN 4.5). */
enum ar_prove_goal {
    AR_PROVE_READ,   /* the API server reads with key (type, key_name) for resource secrets */
    AR_PROVE_WRITE,  /* the API server writes secrets with (type, key_name) (identity: plain) */
    AR_PROVE_LOADED, /* the API server loaded the file whose bytes hash to file_hash */
};

struct ar_prove_req {
    enum ar_prove_goal goal;
    struct ar_config *cfg;   /* the phase config just written (referenced until done) */
    const char *file_hash;   /* "sha256:<hex>" of the written file's bytes */
    enum ar_ptype type;      /* READ/WRITE: the provider ... */
    const char *key_name;    /* ... and key name (NULL for identity / KMS by name) */
    const char *rotation_id; /* for the canary's annotations and logs (NULL: direct driver) */
    const char *phase;       /* "stage", "promote", "prune", "abort" ("direct": no rotation) */
    uint64_t written_ms;     /* wall clock when the file was written */
};

enum ar_node_step {
    AR_NODE_IDLE = 0,
    AR_NODE_APPLYING,
    AR_NODE_PROVING,
};

enum ar_node_result {
    AR_NODE_NONE = 0,  /* nothing applied yet */
    AR_NODE_APPLIED,   /* written and swapped in */
    AR_NODE_UNCHANGED, /* the effective config already was this one */
    AR_NODE_FAILED,    /* apply failed: err says why */
};

typedef void (*ar_node_apply_done)(void *done_arg, int status, bool changed,
                                   const struct ar_err *err);
typedef void (*ar_node_prove_done)(void *done_arg, int status, enum ar_node_proof kind,
                                   const struct ar_err *err);

struct ar_node_report {
    const char *mode;           /* "direct" (first install) or "local" (phases on this node) */
    enum ar_node_step step;     /* what runs now */
    enum ar_node_result result; /* of the last apply */
    enum ar_node_proof proof;   /* of the last successful apply */
    const char *fingerprint;    /* of the config concerned ("sha256:..."), or NULL */
    const struct ar_err *err;   /* FAILED: why; else NULL */
    const char *waiting_for;    /* one line: why the driver stopped before prune; else NULL */
};

enum ar_node_reenc_mode {
    AR_NODE_REENC_ETCD = 0, /* coord/reencrypt.h, by the leader itself */
    AR_NODE_REENC_API,      /* list + no-op update through the local API server */
    AR_NODE_REENC_SVM,      /* StorageVersionMigration objects */
};

struct ar_node_reenc_req {
    const char *rotation_id;
    struct ar_config *cfg;        /* the reencrypt phase's config (the API servers run it) */
    const char *const *selectors; /* the plan's rewrite[] (canonical selectors) */
    size_t nselectors;
    double rate_limit; /* objects/s, 0: none */
};

struct ar_node_ops {
    void (*apply)(void *agent, struct ar_config *cfg, ar_node_apply_done done, void *done_arg);
    void (*prove)(void *agent, const struct ar_prove_req *req, ar_node_prove_done done,
                  void *done_arg);
    void (*report)(void *agent, const struct ar_node_report *r);
    /* the rotation's member only (see above) */
    int (*save)(void *agent, const char *id, struct ar_config *from, struct ar_config *to);
    int (*load)(void *agent, const char *id, struct ar_config **from, struct ar_config **to);
    void (*forget)(void *agent, const char *keep_id);
    struct ar_config *(*config)(void *agent, bool desired);
    /* the rotation's leader, optional (see above) */
    enum ar_node_reenc_mode (*reencrypt_mode)(void *agent, double *rate_limit);
    int (*reencrypt)(void *agent, const struct ar_node_reenc_req *req,
                     ar_reencrypt_progress_cb progress, ar_reencrypt_done_cb done, void *arg,
                     void **handle);
    void (*reencrypt_stop)(void *agent, void *handle);
};

struct ar_node;

/* ops is copied; every op is required. 0 and *out, or -EINVAL / -ENOMEM with *out NULL. */
int ar_node_new(const struct ar_node_ops *ops, void *agent, struct ar_node **out);
/* A valid desired config (referenced by the driver while it needs it). 0 or -EINVAL. */
int ar_node_desired(struct ar_node *n, struct ar_config *cfg);
enum ar_node_step ar_node_step(const struct ar_node *n);
/* No op starts after this; an op in flight completes into nothing (the node is freed when the
 * last completion arrives, or at once when none is pending). */
void ar_node_free(struct ar_node *n);

#endif
