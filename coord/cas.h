/*
 * coord/cas.h: compare-and-swap of a JSON record in etcd.
 *
 * Read the key, hand the parsed record (NULL when absent) to change(), write the new record with
 * a txn conditioned on the mod_revision read (create_revision == 0 when absent) AND on every
 * extra compare given (the guard: S7's leader term from ar_election_guard), and on a failed txn
 * tell the two apart from what the txn's failure branch read at the same revision:
 *   - an extra compare does not hold: done with -EPERM at once (never retried: the term is over)
 *   - only the record moved: retry with the record the failed txn returned, at most max_retries
 *     times, then done with -EAGAIN.
 */
#ifndef ATREST_COORD_CAS_H
#define ATREST_COORD_CAS_H

#include <stddef.h>

#include <jansson.h>

#include "coord/err.h"
#include "coord/etcd/etcd.h"

/* At most this many extra compares. */
#define AR_CAS_MAX_GUARD 8

/*
 * change: gets the current record (NULL: key absent; borrowed) and sets *out to the new record
 * (a new reference). Return 0 to write *out, 1 to leave the key unchanged (done with status 0,
 * nothing written), or a negative errno to abort with it.
 */
typedef int (*ar_cas_change_fn)(void *arg, const json_t *cur, json_t **out);
/* done: status (0, -EPERM, -EAGAIN, -EBADMSG for a stored record that is not JSON, the change's
 * own errno, or the client's), revision of the write (or of the read when unchanged), retries
 * used; err (status < 0): where = the key (or the etcd endpoint), msg = why. */
typedef void (*ar_cas_done_fn)(void *arg, int status, int64_t revision, unsigned retries,
                               const struct ar_err *err);

/* No extra compares. */
int ar_cas_json(struct ar_etcd *c, const char *key, ar_cas_change_fn change, ar_cas_done_fn done,
                void *arg, unsigned max_retries);
/* With n_guard (<= AR_CAS_MAX_GUARD) extra compares, copied (keys and values): the caller's may
 * go away once this returns. Returns 0 (done runs exactly once later) or -EINVAL / -ENOMEM /
 * the client's error (done never runs). */
int ar_cas_json_guarded(struct ar_etcd *c, const char *key, const struct ar_etcd_compare *guard,
                        size_t n_guard, ar_cas_change_fn change, ar_cas_done_fn done, void *arg,
                        unsigned max_retries);

/* Whether compare g holds for kv (NULL: the key is absent), as etcd decides it: an absent key
 * has version, create and mod revision 0, and fails every VALUE compare. */
bool ar_cas_compare_holds(const struct ar_etcd_compare *g, const struct ar_etcd_kv *kv);

#endif
