/*
 * coord/session.h: one etcd lease per agent, shared by everything bound to it (the liveness
 * key, the election's leader key and, later, the rotation's keys).
 *
 * Contract
 * - ar_session_new grants a lease of ttl_s seconds at once and keeps it alive with one keeper
 *   (ar_etcd_keepalive_start). Listeners hear every change (ar_session_listen).
 * - Deadline (the election's safety rests on it): the lease expires at the latest at
 *   ar_session_deadline(): the time the grant or keepalive REQUEST was sent plus the TTL granted.
 *   The session trusts the lease only while now + margin_ms < that deadline
 *   (ar_session_alive). When that stops being true without a renewal, or etcd says the lease is
 *   gone (keepalive -ENOENT, or a user reports it with ar_session_lost), the session drops the
 *   lease (revokes it, best effort, so keys bound to it go at once), tells the listeners LOST,
 *   and grants a new one (GRANTED again). Grants that fail are retried every 300 ms.
 * - Every call happens on the client's loop thread. Listener callbacks must not free the
 *   session; they may listen/unlisten. Close or free the session (after its users: election,
 *   liveness key) before ar_etcd_close.
 */
#ifndef ATREST_COORD_SESSION_H
#define ATREST_COORD_SESSION_H

#include <stdbool.h>
#include <stdint.h>

#include "coord/etcd/etcd.h"

#define AR_SESSION_MAX_LISTENERS 8

struct ar_session;

struct ar_session_settings {
    int64_t ttl_s;      /* lease TTL; 0: 10. etcd's minimum is 2 */
    unsigned margin_ms; /* trust the lease until deadline - margin; 0: ttl/6 (at least 300 ms) */
};

enum ar_session_event {
    AR_SESSION_GRANTED,      /* a new lease (u->lease, u->deadline_ms): bind keys to it now */
    AR_SESSION_RENEWED,      /* the deadline moved (u->deadline_ms) */
    AR_SESSION_LOST,         /* the lease is gone or untrusted (status -ENOENT / -ETIMEDOUT or
                                the user's); keys bound to it are gone; a new grant follows */
    AR_SESSION_GRANT_FAILED, /* a grant failed (status, err); retried */
    AR_SESSION_RENEW_FAILED, /* a keepalive failed on the transport (status, err); the keeper
                                retries and the deadline still stands */
};

struct ar_session_update {
    enum ar_session_event kind;
    int64_t lease;        /* the lease concerned (0 for GRANT_FAILED) */
    uint64_t deadline_ms; /* ar_session_deadline() after the event */
    int status;
    const struct ar_etcd_error *err; /* status < 0; may be NULL */
};

typedef void (*ar_session_cb)(void *arg, const struct ar_session_update *u);

/* 0 and *out set (the first grant is on its way), or -EINVAL / -ENOMEM with *out NULL. */
int ar_session_new(struct ar_etcd *c, const struct ar_session_settings *st,
                   struct ar_session **out);
/* Add a listener (-ENOSPC past AR_SESSION_MAX_LISTENERS, -EINVAL without cb). A listener added
 * while a lease is held hears of it only through ar_session_lease (no GRANTED replay). */
int ar_session_listen(struct ar_session *s, ar_session_cb cb, void *arg);
void ar_session_unlisten(struct ar_session *s, ar_session_cb cb, void *arg);

struct ar_etcd *ar_session_client(const struct ar_session *s);
/* The lease held (0: none yet / being re-granted). */
int64_t ar_session_lease(const struct ar_session *s);
/* The lease's expiry at the latest (monotonic ms, ar_etcd_now_ms), 0 without a lease. */
uint64_t ar_session_deadline(const struct ar_session *s);
unsigned ar_session_margin(const struct ar_session *s);
/* A lease is held and now_ms + margin < deadline. */
bool ar_session_alive(const struct ar_session *s, uint64_t now_ms);
/* A user learnt that lease is gone (e.g. a put answered "requested lease not found"): as a
 * keepalive -ENOENT. Ignored when lease is not the current one (already replaced). */
void ar_session_lost(struct ar_session *s, int64_t lease, int status,
                     const struct ar_etcd_error *err);
/* Revoke the lease (its keys go at once) and free; done(arg) runs when etcd answered or the
 * request failed (bounded by the request timeout). No listener is called after this. */
void ar_session_close(struct ar_session *s, void (*done)(void *arg), void *arg);
/* Free without talking to etcd (the lease then expires on its own). */
void ar_session_free(struct ar_session *s);

#endif
