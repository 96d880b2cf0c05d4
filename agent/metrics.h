/*
 * agent/metrics.h: a tiny Prometheus registry and its text exposition (format 0.0.4).
 *
 * Contract
 * - A registry holds metrics (counter or gauge) in the order they were first declared; each
 *   metric holds series (one per label set) in the order they were first touched. Rendering
 *   is deterministic: "# HELP" and "# TYPE" once per metric, then its samples; every line ends
 *   in "\n". Help text escapes '\' and newline; label values escape '\', '"' and newline.
 * - Names are checked: metric [a-zA-Z_:][a-zA-Z0-9_:]*, label [a-zA-Z_][a-zA-Z0-9_]* and not
 *   starting with "__". Using a name with another type, another help text or another set of
 *   label names than at its first use is -EINVAL. Counters only go up (-EINVAL otherwise).
 * - Labels are passed as (name, value) string pairs ending with NULL:
 *       ar_metric_counter_add(m, "atrest_etcd_requests_total", "etcd requests.", 1,
 *                             "op", "range", "result", "ok", NULL);
 * - Not thread-safe: the agent uses it on its loop thread only.
 * - Values: integers print as integers, others with the shortest round-trip form; NaN and
 *   infinities as Prometheus spells them.
 * - Bounded: at most AR_METRICS_MAX_SERIES series per metric (-ENOSPC beyond).
 * - Errors: 0 or negative errno.
 */
#ifndef ATREST_AGENT_METRICS_H
#define ATREST_AGENT_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AR_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define AR_METRICS_MAX_SERIES   256
#define AR_METRICS_MAX_LABELS   8

enum ar_metric_type { AR_METRIC_COUNTER = 0, AR_METRIC_GAUGE };

struct ar_metrics;

struct ar_metrics *ar_metrics_new(void);
void ar_metrics_free(struct ar_metrics *m);

/* Declare a metric with no series yet (it renders its HELP and TYPE lines only). */
int ar_metric_declare(struct ar_metrics *m, const char *name, enum ar_metric_type type,
                      const char *help);

int ar_metric_counter_add(struct ar_metrics *m, const char *name, const char *help, double delta,
                          ...) __attribute__((sentinel));
int ar_metric_gauge_set(struct ar_metrics *m, const char *name, const char *help, double value, ...)
    __attribute__((sentinel));
/* An "info" gauge: drop every series of the metric, then set this label set to 1. With no
 * labels at all (only the NULL) the metric is left with no series. */
int ar_metric_info_set(struct ar_metrics *m, const char *name, const char *help, ...)
    __attribute__((sentinel));
/* Current value of a series (tests, health logic); false when it does not exist. */
bool ar_metric_get(const struct ar_metrics *m, const char *name, double *value, ...)
    __attribute__((sentinel));

/* Render the text exposition. *out is malloc'd and NUL terminated (caller free()s). */
int ar_metrics_render(const struct ar_metrics *m, char **out, size_t *outlen);

/* ---- atrest's own metrics ------------------------------------------------------------------
 * The names the agent exports, mirroring kube-apiserver's encryption-config controller
 * (apiserver_encryption_config_controller_*). ar_metrics_atrest_init declares all of them in
 * this order and sets the zero-valued series so dashboards see them from the start. */
#define AR_M_RELOADS          "atrest_config_reloads_total"
#define AR_M_RELOAD_TS        "atrest_config_reload_last_timestamp_seconds"
#define AR_M_LAST_CONFIG      "atrest_config_last_config_info"
#define AR_M_DESIRED_CONFIG   "atrest_desired_config_info"
#define AR_M_DESIRED_INVALID  "atrest_desired_config_invalid"
#define AR_M_EFFECTIVE_WRITES "atrest_effective_writes_total"
#define AR_M_CHAIN_SWAPS      "atrest_chain_swaps_total"
#define AR_M_ETCD_REQUESTS    "atrest_etcd_requests_total"
#define AR_M_BUILD_INFO       "atrest_build_info"

int ar_metrics_atrest_init(struct ar_metrics *m, const char *version);

/* The rotation (coord/rotation.h): atrest_rotation_phase{phase} is 1 for the phase this agent
 * sees ("idle", "stage".."prune", "aborting") and 0 for the others; transitions recorded by
 * this agent as leader, acks this member put, proof results by kind, re-encrypt counts of the
 * current pass (as the leader reports them). */
#define AR_M_ROT_PHASE       "atrest_rotation_phase"
#define AR_M_ROT_TRANSITIONS "atrest_rotation_transitions_total"
#define AR_M_ROT_ACKS        "atrest_rotation_acks_total"
#define AR_M_PROOF_RESULTS   "atrest_proof_results_total"
#define AR_M_REENCRYPT       "atrest_reencrypt_objects"
int ar_metrics_rotation_phase(struct ar_metrics *m, const char *phase);
int ar_metrics_rotation_transition(struct ar_metrics *m, const char *phase);
int ar_metrics_rotation_ack(struct ar_metrics *m, const char *phase);
int ar_metrics_proof_result(struct ar_metrics *m, const char *kind, bool ok);
int ar_metrics_reencrypt(struct ar_metrics *m, uint64_t done, uint64_t total, uint64_t skipped,
                         uint64_t conflicts);
/* A reload finished: ok = a new config was applied (success), !ok = rejected or failed
 * (failure). now_s: Unix time in seconds. Unchanged re-reads are recorded as neither, as
 * kube-apiserver does. */
int ar_metrics_reload(struct ar_metrics *m, bool ok, double now_s);
/* The config in force in the effective file: hash = "sha256:<hex>" of the file's bytes. */
int ar_metrics_last_config(struct ar_metrics *m, const char *hash);
/* The desired file as last read: hash of its bytes (NULL when unreadable), and whether it
 * failed validation. */
int ar_metrics_desired(struct ar_metrics *m, const char *hash, bool invalid);
int ar_metrics_effective_write(struct ar_metrics *m);
int ar_metrics_chain_swap(struct ar_metrics *m);
/* op: "range", "put", "txn", "lease_grant", ...; result: "ok", "error", "timeout", ... */
int ar_metrics_etcd_request(struct ar_metrics *m, const char *op, const char *result);

#endif
