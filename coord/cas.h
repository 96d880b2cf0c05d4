/*
 * coord/cas.h: compare-and-swap of a JSON record in etcd.
 *
 * Read the key, hand the parsed record (NULL when absent) to change(), write the new record with
 * a txn conditioned on the mod_revision read (create_revision == 0 when absent), and on conflict
 * retry with the value the failed txn returned, at most max_retries times (-EAGAIN after that).
 */
#ifndef ATREST_COORD_CAS_H
#define ATREST_COORD_CAS_H

#include <jansson.h>

#include "coord/etcd/etcd.h"

/*
 * change: gets the current record (NULL: key absent; borrowed) and sets *out to the new record
 * (a new reference). Return 0 to write *out, 1 to leave the key unchanged (done with status 0,
 * nothing written), or a negative errno to abort with it.
 */
typedef int (*ar_cas_change_fn)(void *arg, const json_t *cur, json_t **out);
/* done: status, revision of the write (or of the read when unchanged), retries used. */
typedef void (*ar_cas_done_fn)(void *arg, int status, int64_t revision, unsigned retries,
                               const struct ar_etcd_error *err);

int ar_cas_json(struct ar_etcd *c, const char *key, ar_cas_change_fn change, ar_cas_done_fn done,
                void *arg, unsigned max_retries);

#endif
