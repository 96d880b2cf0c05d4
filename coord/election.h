/*
 * coord/election.h: leader election on one lease-bound key (default <prefix>leader).
 *
 * A contender campaigns on the lease of a session (coord/session.h: the agent's one lease, or
 * one of its own) with a txn "IF create_revision(key) == 0 THEN put(key, value, lease) ELSE
 * range(key)". It watches the key to observe who leads and campaigns again when the key goes
 * away, and on every new lease of the session.
 *
 * Safety: a leader never acts after it could have lost the lease. The lease deadline is counted
 * from the time the keepalive REQUEST was sent (not when the answer came) plus the TTL granted,
 * minus the session's margin. ar_election_is_leader(e, now) is true only while now is before
 * that. When the deadline passes without a renewal, or etcd says the lease is gone, the session
 * drops the lease and the contender steps down at once (callback), then campaigns again on the
 * session's next lease.
 */
#ifndef ATREST_COORD_ELECTION_H
#define ATREST_COORD_ELECTION_H

#include <stdbool.h>
#include <stdint.h>

#include "coord/err.h"
#include "coord/etcd/etcd.h"
#include "coord/session.h"

struct ar_election;

struct ar_election_settings {
    const char *key;            /* full key, e.g. "/atrest/leader" */
    const char *value;          /* this node's name */
    struct ar_session *session; /* the lease to campaign on (same client); it must outlive the
                                   election. NULL: an own session of ttl_s and margin_ms,
                                   revoked on resign, freed with the election */
    int64_t ttl_s;              /* own session only: lease TTL; 0: 10. etcd's minimum is 2 */
    unsigned margin_ms; /* own session only: margin before the deadline; 0: ttl/6 (>= 300 ms) */
};

struct ar_election_state {
    bool is_leader;           /* this contender leads (deadline not yet reached) */
    const char *leader;       /* observed leader's value, NULL when nobody leads */
    int64_t leader_revision;  /* create_revision of the leader key */
    int status;               /* last error (0: none) */
    const struct ar_err *err; /* status < 0: etcd's message and the endpoint */
};

typedef void (*ar_election_cb)(void *arg, const struct ar_election_state *st);

/* Starts campaigning at once. cb runs on every change of leadership or observed leader.
 * 0 and *out set, or -EINVAL / -ENOMEM with *out NULL. */
int ar_election_start(struct ar_etcd *c, const struct ar_election_settings *s, ar_election_cb cb,
                      void *arg, struct ar_election **out);
/* now: ar_etcd_now_ms(). */
bool ar_election_is_leader(const struct ar_election *e, uint64_t now_ms);
/* The lease deadline minus margin (0 when not leader). */
uint64_t ar_election_deadline(const struct ar_election *e);
/*
 * S7: the compare that conditions a leader-only write on this leadership term:
 * "create_revision(key) == the revision at which this contender created it". Put it in the
 * txn's compares: the txn then fails (succeeded false) once the key was deleted (resign, lease
 * expiry, an operator) or created again by anyone, including by this contender in a later
 * term; etcd decides, not the local clock. Fills *out (out->key points into e: valid while e
 * lives) and returns 0 while ar_election_is_leader(e, now); -EPERM otherwise.
 */
int ar_election_guard(const struct ar_election *e, struct ar_etcd_compare *out);
/* Observed leader's value (NULL: none). Valid until the next callback. */
const char *ar_election_leader(const struct ar_election *e);
/*
 * Resign cleanly: stop acting as leader at once, delete the key if we hold it (txn on our
 * create_revision) and revoke an own session's lease (a shared session is left to its owner);
 * done(arg) runs when that finished or failed (bounded
 * by the request timeout). Then free the election with ar_election_free. done may be NULL.
 */
void ar_election_resign(struct ar_election *e, void (*done)(void *arg), void *arg);
/* Frees without talking to etcd (the lease then expires on its own). No callback after it. */
void ar_election_free(struct ar_election *e);

#endif
