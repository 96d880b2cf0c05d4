/*
 * agent/state.h: what the daemon knows, read by the status JSON, the metrics and the health
 * endpoints; and the "current chain" slot that hot reload swaps.
 *
 * Contract
 * - One struct ar_state per daemon, owned by agent/daemon.c, written and read on the loop
 *   thread only (the status server's handlers run on the loop), so it needs no lock.
 * - Strings inside are owned by the state (freed by ar_state_free) unless marked "borrowed".
 * - desired/effective hold config references (ar_config_ref); per-resource keys are derived
 *   from them when the status is rendered. Nothing here holds key material except through
 *   those references; renderers use ar_key.fp (8-byte fingerprint) and names only.
 * - Times are Unix epoch milliseconds (CLOCK_REALTIME) unless named *_mono_ms (uv_now).
 * - The chain slot (struct ar_chain_slot) is the only part that is thread-safe: workers may
 *   take the current chain from any thread while the loop swaps it.
 */
#ifndef ATREST_AGENT_STATE_H
#define ATREST_AGENT_STATE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord/node.h"
#include "crypto/chain.h"
#include "crypto/config.h"

struct json_t; /* jansson */

/* ---- current chain ---------------------------------------------------------------------- */

struct ar_chain_slot {
    pthread_mutex_t mu;   /* held only for a pointer read + atomic ref, or a pointer swap */
    struct ar_chain *cur; /* one reference owned by the slot; NULL before the first config */
    uint64_t generation;  /* number of successful swaps */
};

int ar_chain_slot_init(struct ar_chain_slot *s);
/* The current chain with a new reference (the caller ar_chain_unref's it when its operation is
 * done), or NULL when none is in force. Work keeps the chain it acquired even across swaps. */
struct ar_chain *ar_chain_slot_acquire(struct ar_chain_slot *s);
/* Install c (the slot takes its own reference; c may be NULL). The previous chain loses the
 * slot's reference outside the lock: it is wiped and freed when its last user lets go. */
void ar_chain_slot_swap(struct ar_chain_slot *s, struct ar_chain *c);
uint64_t ar_chain_slot_generation(struct ar_chain_slot *s);
/* Drops the slot's reference and destroys the mutex. */
void ar_chain_slot_destroy(struct ar_chain_slot *s);

/* ---- daemon state ----------------------------------------------------------------------- */

enum ar_reload_result {
    AR_RELOAD_NONE = 0,  /* nothing happened yet */
    AR_RELOAD_APPLIED,   /* a new desired config validated and was written to the effective file */
    AR_RELOAD_UNCHANGED, /* re-read; same content as in force: nothing done */
    AR_RELOAD_INVALID,   /* the desired file could not be read/parsed/validated; last valid kept */
    AR_RELOAD_FAILED,    /* valid, but writing the effective file (or building the chain) failed */
};
/* "none", "applied", "unchanged", "invalid", "failed" */
const char *ar_reload_result_name(enum ar_reload_result r);
/* "idle", "applying", "proving"; "none", "file" */
const char *ar_node_step_name(enum ar_node_step s);
const char *ar_node_proof_name(enum ar_node_proof p);

enum ar_etcd_conn {
    AR_ETCD_NOT_CONFIGURED = 0,
    AR_ETCD_CONNECTING,  /* first contact pending */
    AR_ETCD_CONNECTED,   /* last call succeeded */
    AR_ETCD_UNREACHABLE, /* last call failed; retrying */
};
/* "not configured", "connecting", "connected", "unreachable" */
const char *ar_etcd_conn_name(enum ar_etcd_conn c);

struct ar_state_member {
    char *node;
    bool registered;    /* members/<node> exists */
    bool alive;         /* alive/<node> exists (its lease is live) */
    bool desired_valid; /* its desired file validated (as reported; false when not alive) */
    char *desired_fp;   /* "sha256:..." as reported, or NULL */
    char *effective_fp;
    char *effective_hash; /* "sha256:..." of its effective file's bytes, or NULL */
    char *version;        /* the agent's version, or NULL */
    int64_t reported_ms;  /* time of its report, 0 when unknown */
};

struct ar_state {
    /* identity (borrowed from the settings, which outlive the state) */
    const char *node;
    const char *version;
    const char *desired_path;
    const char *effective_path;
    int64_t started_ms;

    /* configs: last valid desired, and the one the effective file holds (NULL: none yet) */
    struct ar_config *desired;
    struct ar_config *effective;
    struct ar_chain_slot chain; /* built from `effective` */

    /* the desired file as last read */
    bool desired_valid;  /* the last read validated */
    char *desired_error; /* first error of the last read ("FILE:LINE:COL: PATH: DETAIL"), or NULL */
    size_t desired_nerrors;
    int64_t desired_read_ms;    /* last read (changed or not) */
    int64_t desired_changed_ms; /* last time its content changed */

    /* reloads (a reload = a read of the desired file that found a change, or SIGHUP) */
    int64_t last_reload_ms;
    enum ar_reload_result last_reload_result;
    char *last_reload_error;   /* NULL unless INVALID or FAILED */
    uint64_t reloads_ok;       /* APPLIED */
    uint64_t reloads_failed;   /* INVALID + FAILED */
    uint64_t effective_writes; /* times the effective file was (re)written */
    /* the apply driver (coord/node.h), as it last reported */
    const char *node_mode; /* "direct"/"local" (static string), NULL before the first report */
    char *node_waiting;    /* why the driver waits before prune (heap), or NULL */
    enum ar_node_step node_step;
    enum ar_node_proof node_proof; /* of the last successful apply */
    int64_t effective_written_ms;
    uint64_t sighup_reloads; /* SIGHUPs handled */

    /* etcd */
    enum ar_etcd_conn etcd;
    char *etcd_error; /* last failure text, or NULL */
    int64_t etcd_last_ok_ms;
    char *leader; /* node name of the leader, or NULL when none/unknown */
    /* whether this node leads, read live at every call (a lease deadline passes without any
     * event, so it is never cached); NULL: never leads. See ar_state_is_leader. */
    bool (*leading)(void *arg);
    void *leading_arg;
    /* the /status "rotation" object, built live (coord/rotation.h; a new reference), NULL when
     * no rotation runs here (no etcd): the status then shows rotation: null */
    struct json_t *(*rotation_status)(void *arg);
    void *rotation_arg;
    struct ar_state_member *members;
    size_t nmembers;

    /* serving */
    bool status_up;             /* the status server is listening */
    uint64_t loop_tick_mono_ms; /* last time the loop's heartbeat timer ran (uv_now) */
    bool stopping;
};

/* Zeroes st, initialises the chain slot, sets started_ms. 0 or -errno. */
int ar_state_init(struct ar_state *st);
/* Releases configs, chain, strings, members. */
void ar_state_free(struct ar_state *st);

/* Replace a string field: *field = strdup(s) (s may be NULL). 0 or -ENOMEM. */
int ar_state_set_str(char **field, const char *s);
/* Take ownership of members (replacing the old list). */
void ar_state_set_members(struct ar_state *st, struct ar_state_member *m, size_t n);
void ar_state_members_free(struct ar_state_member *m, size_t n);

/* This node holds the leader lease right now (st->leading, evaluated at the call). */
bool ar_state_is_leader(const struct ar_state *st);
/* ready = a valid effective config is in force and the status server is up. */
bool ar_state_ready(const struct ar_state *st);
/* healthy = the loop ran its heartbeat within max_lag_ms of now_mono_ms. */
bool ar_state_healthy(const struct ar_state *st, uint64_t now_mono_ms, uint64_t max_lag_ms);

/* ---- agent/statusjson.c ----------------------------------------------------------------- */

/* The /status document (jansson), compact, newline terminated, malloc'd (caller free()s).
 * Never contains key material: key names, provider types and 8-byte fingerprints only.
 * 0 or -ENOMEM. */
int ar_status_json(const struct ar_state *st, char **out, size_t *outlen);

#endif
