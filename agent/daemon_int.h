/*
 * agent/daemon_int.h: private to agent/daemon.c and agent/coordglue.c (the daemon and its etcd
 * side). Not a contract for anything outside the daemon.
 */
#ifndef ATREST_AGENT_DAEMON_INT_H
#define ATREST_AGENT_DAEMON_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "agent/http.h"
#include "agent/metrics.h"
#include "agent/settings.h"
#include "agent/state.h"
#include "agent/watch.h"
#include "coord/node.h"
#include "crypto/config.h"

#define HEARTBEAT_MS      1000
#define HEALTH_MAX_LAG_MS 5000
#define ETCD_GRACE_MS     (5 * 60 * 1000) /* watchdog: etcd may be unreachable this long */
#define MAX_LOGGED_DIAGS  10
#define COORD_TICK_MS     5000
#define RETRY_MIN_MS      1000  /* a valid desired config that could not be applied ... */
#define RETRY_MAX_MS      60000 /* ... is tried again after 1, 2, 4 ... 60 s */

/* metrics the etcd side keeps and the /metrics handler refreshes */
#define M_LEADER       "atrest_leader"
#define M_LEADER_HELP  "1 while this agent holds the leader lease (read when scraped), else 0."
#define M_MEMBERS      "atrest_members"
#define M_MEMBERS_HELP "Members in etcd: registered (members/<node>) and alive (alive/<node>)."

struct coord;
struct ar_proof;
struct ar_node;

struct agent {
    uv_loop_t loop;
    struct ar_settings set;
    int argc;
    char **argv;
    const char *config_file; /* NULL: flags only */
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
    uv_timer_t retry; /* re-applies the desired config after AR_RELOAD_FAILED */
    /* a first install (no effective file) with etcd configured waits while etcd shows a
     * rotation, and at most AR_FIRST_LOOK_MS for etcd's first answer */
    uv_timer_t first_look;
    bool first_install_waits, first_look_over;
    char first_wait_why[256];
    unsigned retry_ms; /* the current backoff (0: no retry pending) */

    bool have_desired_sha;
    uint8_t desired_sha[AR_SHA256_LEN];
    int desired_status; /* result of the last read (0 or negative errno) */
    bool stopping;
    struct coord *coord;
    struct ar_proof *proof; /* proof of load (agent/proof.h); NULL: cannot prove (proof_err) */
    char proof_err[256];
    struct ar_node *node; /* coord/node.h: the driver that applies desired configs */
};

/* agent/daemon.c */
int64_t ar_agent_now_ms(void);                      /* wall clock, ms since the epoch */
bool ar_agent_str_eq(const char *x, const char *y); /* both NULL, or equal strings */

/* agent/coordglue.c: the etcd side. ar_coord_start does nothing when no etcd is configured. */
int ar_coord_start(struct agent *a);
/* Publish this node's fingerprints (alive/<node>) when they changed. */
void ar_coord_publish(struct agent *a);
/* Resign, revoke, close: bounded; the loop then runs until its handles are closed. */
void ar_coord_stop(struct agent *a);
/* A new valid desired config while etcd is configured: publish it, let the rotation look. */
void ar_coord_desired_changed(struct agent *a);
/* Why a first install (no effective file yet) must wait, or NULL when it may go: a rotation
 * runs (the other API servers do not use the desired config yet: S1), or etcd has not answered
 * yet and AR_FIRST_LOOK_MS have not passed (an etcd that does not answer keeps nothing from
 * starting, as before). */
const char *ar_coord_first_install_wait(struct agent *a, char *buf, size_t n);
#define AR_FIRST_LOOK_MS 2000

/* agent/daemon.c: look at the first install again (from the loop), if it waits. */
void ar_agent_first_install(struct agent *a);

/* agent/daemon.c: the node operations (coord/node.h) the rotation drives. */
const struct ar_node_ops *ar_agent_node_ops(void);

#endif
