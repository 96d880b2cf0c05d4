/*
 * coord/reencrypt.h: the re-encrypt pass (DESIGN 4.6), the interface agreed between the
 * rotation (coord/rotation.c) and the engine.
 *
 * TEMPORARY (rotation branch): the engine is built on its own branch, which owns this header
 * and coord/reencrypt.c. Until it is merged, coord/reencrypt.c here is a stand-in whose start
 * fails with -ENOSYS: the leader then WAITS in phase reencrypt with the reason "re-encrypt
 * engine not built" (never advances). At merge, take the engine branch's two files whole.
 *
 * Contract (as agreed): every value under the selectors not under the promote chain's write
 * key is rewritten with it by a compare on mod_revision (S6); the cursor is checkpointed at
 * checkpoint_key with the guard in every checkpoint txn; progress and one done callback on the
 * client's loop; stop cancels (no callback after it).
 */
#ifndef ATREST_COORD_REENCRYPT_H
#define ATREST_COORD_REENCRYPT_H

#include <stddef.h>
#include <stdint.h>

#include "coord/err.h"
#include "coord/etcd/etcd.h"
#include "crypto/chain.h"

struct ar_reencrypt_opts {
    const char *etcd_prefix;      /* "/registry" */
    const char *const *selectors; /* ar_plan rewrite[]: canonical selectors ... */
    size_t nselectors;            /* ... a wildcard = every resource it serves */
    const char *checkpoint_key;   /* "<prefix>reencrypt/<id>", NULL: none */
    unsigned page_size;
    unsigned max_inflight;
    unsigned checkpoint_every;
    unsigned checkpoint_ms;
    double rate_limit;                   /* objects/s, 0: none */
    const struct ar_etcd_compare *guard; /* S7 leader guard in every checkpoint txn; NULL */
};

struct ar_reencrypt_progress {
    uint64_t done, total, skipped, conflicts;
    double rate;        /* objects/s */
    double eta_seconds; /* < 0: unknown */
};

struct ar_reencrypt;
typedef void (*ar_reencrypt_progress_cb)(void *arg, const struct ar_reencrypt_progress *p);
typedef void (*ar_reencrypt_done_cb)(void *arg, int status, const struct ar_reencrypt_progress *p,
                                     const struct ar_err *err);

/* 0 (done will be called) or a negative errno (no callback). */
int ar_reencrypt_start(struct ar_etcd *c, struct ar_chain *chain, const struct ar_reencrypt_opts *o,
                       ar_reencrypt_progress_cb progress, ar_reencrypt_done_cb done, void *arg,
                       struct ar_reencrypt **out);
void ar_reencrypt_stop(struct ar_reencrypt *r);

#endif
