/*
 * coord/rotation.h: the rotation state machine (DESIGN 4.1, 4.3, 4.4): one per agent, on the
 * etcd client's loop. Every agent runs the member side; the agent that leads (coord/election.h)
 * also runs the leader side.
 *
 * Contract
 * - Level-triggered: on every change under the prefix (one watch) and on a slow tick, the
 *   rotation reads everything under the prefix at one revision (members/, alive/, rotation,
 *   acks/, abort/, history/) and acts on that snapshot only. Nothing advances on a timeout
 *   (S9): time only makes the leader look again.
 * - Member (every agent): acts only on the record (S8). On a rotation it has not seen it saves
 *   from/to through ops->save, but only when its effective and desired fingerprints are the
 *   record's (else it waits and says why; saved copies serve after a restart); it derives the
 *   plan (coord/phase.h) and refuses to ack when a phase's name or file hash differs from the
 *   record's; it writes the phase config (ops->apply), proves it (ops->prove; goal by phase:
 *   stage READ of the first new key of secrets' list, promote WRITE of secrets' W_to, prune
 *   and abort LOADED, LOADED when secrets' list does not change; reencrypt and verify need
 *   no new proof: ack "none"), then puts acks/<id>/<index>/<node> (index -1 and phase "abort"
 *   while aborting) in a txn that holds only while the same rotation record exists. After the
 *   record is gone it forgets the saved copies.
 * - Leader (ar_election_is_leader at the time of the decision): every write is one txn with
 *   ar_election_guard AND the record's mod_revision as read (create_revision == 0 to create):
 *   agreement (4.1, settle_ms) creates the record; a phase advances when every member of the
 *   record's set acked it with the recorded hash; reencrypt runs coord/reencrypt.h first;
 *   verify scans (coord/verify.h) with the phase config's chain and advances only with zero
 *   objects under every dropped provider:key and zero undecryptable (else shows counts and the
 *   first keys, sweeps (the pass again: at most 3 a leader, none after one that rewrote
 *   nothing; a failed one does not count) and scans again after verify_retry_ms); an abort
 *   before promote sets
 *   state aborting, at or after promote the request is deleted and the refusal recorded in the
 *   record (abort_refused); members whose registration was removed leave the set; the last
 *   step writes history/<id> and deletes the record, acks/<id>/, reencrypt/<id>[/sweep-<ms>]
 *   and abort/<id>
 *   in one txn, keeping the newest AR_RECORD_HISTORY history records. A rotation whose
 *   (from, to) equals the newest history record's and was aborted is not started again until
 *   the desired config changes.
 * - Status: ar_rotation_status_json() is the /status "rotation" object (README names it);
 *   events (transition, ack, proof) go to the event callback for logs and metrics.
 * - ar_rotation_free: no callback after it; memory goes when the last request in flight
 *   completes (ar_etcd_close cancels them).
 */
#ifndef ATREST_COORD_ROTATION_H
#define ATREST_COORD_ROTATION_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "coord/election.h"
#include "coord/etcd/etcd.h"
#include "coord/node.h"
#include "crypto/config.h"

struct ar_rotation;

struct ar_rotation_settings {
    const char *prefix;       /* "/atrest/" */
    const char *node;         /* this member's name */
    const char *etcd_prefix;  /* kube-apiserver's --etcd-prefix ("/registry") for verify */
    unsigned settle_ms;       /* rotation.settleSeconds * 1000 */
    unsigned tick_ms;         /* slow look; 0: 1000 */
    unsigned verify_retry_ms; /* a verify that found objects scans again after; 0: 10000 */
    const struct ar_load_opts *load_opts; /* for ar_plan_derive; NULL: defaults */
};

enum ar_rotation_event_kind {
    AR_ROT_EV_TRANSITION, /* the leader recorded a transition: phase = the new one */
    AR_ROT_EV_ACK,        /* this member acked: phase, proof */
    AR_ROT_EV_PROOF,      /* a proof completed: proof kind, ok */
};

struct ar_rotation_event {
    enum ar_rotation_event_kind kind;
    const char *id;
    const char *phase; /* stage..prune, "abort", "started", "done", "aborted", "aborting" */
    const char *proof; /* kind name */
    bool ok;
};

typedef void (*ar_rotation_event_cb)(void *agent, const struct ar_rotation_event *ev);
/* After every evaluation (status changed or not). */
typedef void (*ar_rotation_status_cb)(void *agent);

/* ops: every op of coord/node.h is required (save, load, forget, config too); copied. The
 * election is borrowed (NULL: never leads; see ar_rotation_set_election). 0 and *out, or
 * -EINVAL / -ENOMEM / the watch's error. */
int ar_rotation_new(struct ar_etcd *c, const struct ar_rotation_settings *s,
                    const struct ar_node_ops *ops, void *agent, ar_rotation_event_cb event,
                    ar_rotation_status_cb status, struct ar_rotation **out);
void ar_rotation_set_election(struct ar_rotation *r, struct ar_election *e);
/* Look again soon (the agent's files changed). */
void ar_rotation_poke(struct ar_rotation *r);
/* The /status "rotation" object (a new reference), NULL on ENOMEM. */
json_t *ar_rotation_status_json(const struct ar_rotation *r);
/* A rotation record exists (as last read): the agent must not apply its desired config. */
bool ar_rotation_active(const struct ar_rotation *r);
/* etcd was read at least once: ar_rotation_active says what etcd holds, not "nothing yet". */
bool ar_rotation_known(const struct ar_rotation *r);
/* The current phase name ("idle" without a rotation, "aborting" while aborting). */
const char *ar_rotation_phase(const struct ar_rotation *r);
/* Why this member has not acked its current phase ("" when nothing failed): the last failure,
 * kept while the member tries again, cleared by an ack or a new rotation. The agent puts it in
 * its alive report, so every member's /status shows it (members.<node>.last_error). */
const char *ar_rotation_member_error(const struct ar_rotation *r);
void ar_rotation_free(struct ar_rotation *r);

#endif
