/*
 * agent/proof.h: proof of load (DESIGN 4.5): evidence that the local kube-apiserver really runs
 * a phase config, by one of three kinds (settings.proof).
 *
 * Contract
 * - One request at a time per struct ar_proof. ar_proof_start() with a request running cancels
 *   it: the old request's done gets -ECANCELED, from inside that ar_proof_start() call. done is
 *   called EXACTLY ONCE per started request, from the loop (never inside the ar_proof_start()
 *   that started it); ar_proof_free() completes a running request with -ECANCELED. Never free
 *   the proof from inside done (do it afterwards, e.g. after uv_stop).
 * - S9: a proof never succeeds by timeout and never gives up on its own: while the API server
 *   has not loaded the config (unreachable, old key, old hash) it retries every few seconds and
 *   ar_proof_status() says what it waits for and since when; after proof.warnAfterSeconds the
 *   sentence says it looks stuck. It completes with an error only for what waiting cannot fix
 *   (the request cannot be proved by this kind, the canary cannot be written, the reload
 *   command failed, TLS verification failed) and, for WRITE, when the server demonstrably
 *   writes with another key (err names the key it used).
 * - canary (needs etcd): READ writes a JSON v1 Secret <ns>/<name> (settings proof.canary*)
 *   straight into etcd under <registry prefix>/secrets/<ns>/<name>, encrypted with exactly the
 *   requested provider/key of the phase config, then GETs it through the API server until its
 *   data equal what was written. WRITE PUTs new random data through the API server and reads
 *   the raw value from etcd: its prefix must name the requested provider and key (identity: no
 *   "k8s:enc:" prefix). LOADED uses the metrics proof when the server exposes the 1.34+ hash,
 *   else READ of the config's write key for secrets (weaker: said in the status). The random
 *   data and every plaintext are wiped.
 * - metrics: GET /metrics until last_config_info{hash=req->file_hash} is 1 (1.34+), or (1.28 to
 *   1.33) a successful reload is recorded at or after written_ms, or the success counter grew
 *   since the request started.
 * - restart: runs settings.reload_command (split on blanks and run directly with uv_spawn; a
 *   command with shell syntax (quotes, $, |, ;, &, <, >, `) runs under /bin/sh -c), waits for
 *   it (exit 0 required), then polls /readyz until 200.
 */
#ifndef ATREST_AGENT_PROOF_H
#define ATREST_AGENT_PROOF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "agent/settings.h"
#include "coord/err.h"
#include "coord/etcd/etcd.h"
#include "coord/node.h"
#include "crypto/config.h"

/* struct ar_prove_req, enum ar_prove_goal and the proof kinds are coord/node.h's. */

struct ar_proof;

struct ar_proof_progress {
    bool running;
    uint64_t since_ms;     /* wall clock when the request started */
    unsigned waited_s;     /* seconds waited so far */
    bool stuck;            /* waited longer than proof.warnAfterSeconds */
    char waiting_for[512]; /* one sentence, e.g. "waiting for cp-2's API server to load phase
                              promote: 42 s, it polls every 60 s" */
    char last_error[256];  /* the last failed attempt ("" none) */
};

/* etcd may be NULL (canary READ/WRITE then fail with -ENOTCONN). etcd_registry_prefix: the
 * API server's --etcd-prefix (NULL: "/registry"). What it needs of the settings is copied; the
 * API credentials are read now. 0 and *out, or -EINVAL (the reason is logged), -ENOMEM.
 * ar_proof_new_err: the same with the reason in err instead of the log. */
int ar_proof_new(uv_loop_t *loop, const struct ar_settings *s, struct ar_etcd *etcd,
                 const char *etcd_registry_prefix, struct ar_proof **out);
int ar_proof_new_err(uv_loop_t *loop, const struct ar_settings *s, struct ar_etcd *etcd,
                     const char *etcd_registry_prefix, struct ar_proof **out, char *err,
                     size_t errlen);
int ar_proof_start(struct ar_proof *p, const struct ar_prove_req *req, ar_node_prove_done done,
                   void *done_arg);
void ar_proof_status(const struct ar_proof *p, struct ar_proof_progress *out);
/* Cancels a running request (done gets -ECANCELED) and frees; run the loop afterwards until
 * the handles closed. Accepts NULL. */
void ar_proof_free(struct ar_proof *p);

/* The retry interval between attempts (default 2000 ms; tests and the CLI). */
void ar_proof_set_retry_ms(struct ar_proof *p, unsigned ms);

/* --- Prometheus text format (tolerant) ------------------------------------------------------ */

#define AR_PROM_MAX_LABELS 32

struct ar_prom_label {
    const char *name;  /* NUL-terminated, valid during the callback */
    const char *value; /* unescaped */
};
/* One sample. Return nonzero to stop. */
typedef int (*ar_prom_sample_cb)(void *arg, const char *name, const struct ar_prom_label *labels,
                                 size_t n_labels, double value);

/* Parse exposition text: comments (# HELP/# TYPE/other) and blank lines skipped, label values
 * with \\, \" and \n escapes, +Inf/-Inf/NaN, an optional timestamp; CRLF accepted. A line that
 * does not parse is skipped and counted in *bad (may be NULL). 0, or -ENOMEM. */
int ar_promtext_parse(const char *text, size_t len, ar_prom_sample_cb cb, void *arg, size_t *bad);

enum ar_metrics_style {
    AR_METRICS_NONE = 0, /* no reload-controller metrics (reload off, or not an API server) */
    AR_METRICS_RELOAD,   /* 1.28-1.33: reload counters and timestamps */
    AR_METRICS_HASH,     /* 1.34+: last_config_info{hash} */
};
struct ar_metrics_verdict {
    enum ar_metrics_style style;
    bool loaded;           /* the proof holds */
    double success_total;  /* reload success counter (-1: absent) */
    double last_success_s; /* last success timestamp (-1: absent) */
    char hash[80];         /* HASH: the hash with value 1 ("" none) */
};
/* Evaluate /metrics text for "loaded file_hash, written at written_ms": HASH style when any
 * last_config_info series exists, else RELOAD style: loaded when the success timestamp is
 * >= written_ms/1000 or success_total > success_before (pass -1 when unknown). */
int ar_metrics_eval(const char *text, size_t len, const char *file_hash, uint64_t written_ms,
                    double success_before, struct ar_metrics_verdict *out);

/* --- the API server's answers to the canary (untrusted bytes) ------------------------------- */

/* A GET of the canary answered 200 with body: 1 when it is a JSON object whose data.probe is
 * probe_b64 (NULL: never), 0 another JSON object, -1 not a JSON object (why: one line saying
 * so). why (n > 0) is always NUL-terminated printable ASCII. */
int ar_proof_canary_matches(const char *probe_b64, const char *body, size_t len, char *why,
                            size_t n);
/* The message of a Kubernetes Status body, else the body's first 200 bytes, as one line of
 * printable ASCII (n > 0) for a status or log line. Returns dst. */
const char *ar_proof_peer_message(const char *body, size_t len, char *dst, size_t n);

#endif
