/*
 * coord/reencrypt.h: the re-encrypt pass in direct-etcd mode (DESIGN 4.6, issue 8 and the
 * engine of issue 9): rewrite every stored object of the selected resources that is not under
 * its write provider/key, straight in etcd, with a compare on the object's mod_revision (S6).
 *
 * Contract
 * - Selectors are canonical ("secrets", "deployments.apps", "*.", "*.apps", "*.*"), processed
 *   in the given order. A concrete selector covers its resource's key range
 *   (ar_resource_key_prefix). A wildcard covers the keys under the registry prefix whose
 *   resource the chain serves by that very rule (ar_chain_lookup's rule, parsed, equals the
 *   selector): a resource with a more specific rule of its own is not the wildcard's.
 * - Per value: read with the chain. A value whose read is not stale and was made by the write
 *   provider's first key (or identity writing identity) is skipped without a write. Anything
 *   else is encrypted with the write provider and written back in a txn comparing
 *   mod_revision == the one read: many compare+put pairs per txn (at most 128 ops and about
 *   1 MiB of request body, under etcd's default 1.5 MiB limit). A txn whose compares fail is
 *   retried object by object; a failed single compare means an API server rewrote the object
 *   (with the current write key): counted as a conflict, never retried with a newer value.
 *   A value that cannot be read (corrupt, unknown key, needs a KMS plugin) or written (a KMS
 *   write provider: -ENOPKG) is counted in failed and left as it is; the first one's reason is
 *   kept in first_failed (key and reason, never a value).
 * - Pages are read at the newest revision, page_size keys each. With readers > 1 (and no rate
 *   limit) a keys-only range cuts the next 4 * readers * page_size keys (at most 65,536, halved
 *   while etcd's answer is too big) into pieces of a page,
 *   which the readers take in key order, one page request per reader in flight; the queue of
 *   batches stays in key order. The next cut is asked for while a round of pieces is left.
 *   Keys of any length: one longer than AR_REENCRYPT_KEY_MAX stands in as its first 1,399
 *   bytes where a cursor or bound keeps it (below).
 *   (Few big cuts, early, each ending at a guessed key, ar_etcd_guess_end: etcd 3.4 walks its
 *   index to the end of the range for every range with a limit.)
 *   At most max_inflight txns are in flight; pages are read only when every batch read before
 *   has been sent, so at most readers * page_size + max_inflight * 128 objects are held
 *   (peak_window reports the largest number held). The queue (finished batches behind the
 *   first piece still being read included) has a bound; when it is full only that piece's
 *   reader reads on (a piece that grew after its cut needs more than a page). New values live in
 * wiped buffers (crypto/buf.h); plaintext is wiped after every value; the etcd client wipes the
 * request bodies (the new values, protobuf) and the answers. Not wiped: libcurl's copy of a request
 *   body under 64 KiB (coord/etcd/etcd.c says why); the new values are ciphertext unless the
 *   write provider is identity (a rotation that turns encryption off).
 * - Checkpoint (checkpoint_key != NULL): the record
 *     {"selector":i,"cursor":"<base64 key>","done":n,"rewritten":n,"skipped":n,"conflicts":n,
 *      "failed":n,"total":n,"time_ms":T}
 *   where every key of selectors < i, and of selector i up to and including cursor ("" = none
 *   yet), is handled. It is written every checkpoint_every objects (0: 10000) or checkpoint_ms
 *   (0: 5000), at every selector's end and at the end (selector = nselectors), in a txn with
 *   the guard compares; when the guard fails, the pass stops at once with -EPERM. On start the
 *   record is read (strictly parsed; a bad one fails with -EBADMSG) and the pass resumes after
 *   the cursor with the recorded counts.
 * - rate_limit > 0 caps objects handled per second (pages shrink to at most rate_limit keys).
 * - Progress after every page and every checkpoint; done exactly once (unless stopped) with 0
 *   or a negative errno (the etcd client's, -EPERM for a lost guard) and struct ar_err.
 * - The chain is referenced for the pass's life; the options are copied.
 */
#ifndef ATREST_COORD_REENCRYPT_H
#define ATREST_COORD_REENCRYPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord/err.h"
#include "coord/etcd/etcd.h"
#include "coord/etcd/etcd_sync.h"
#include "crypto/chain.h"

#define AR_REENCRYPT_MAX_OPS       128
#define AR_REENCRYPT_MAX_BODY      (1u << 20) /* request body budget of one txn */
#define AR_REENCRYPT_MAX_SELECTORS 64
/* Keys are kept exactly up to this length as cursors and bounds. A longer key (Kubernetes does
 * not limit the length of every name: RBAC names are path segments) is cut to its first
 * AR_REENCRYPT_KEY_MAX - 1 bytes there, which sorts before it: a cursor that says a little
 * less than was done (a resumed pass reads that key again), a bound a little earlier. */
#define AR_REENCRYPT_KEY_MAX 1400

struct ar_reencrypt_opts {
    const char *etcd_prefix;      /* "/registry" (NULL: the same) */
    const char *const *selectors; /* canonical selectors (ar_plan rewrite[]) */
    size_t nselectors;
    const char *checkpoint_key;          /* "<prefix>reencrypt/<id>", NULL: none */
    unsigned page_size;                  /* 0: 500 */
    unsigned max_inflight;               /* txns in flight; 0: 8 */
    unsigned readers;                    /* range requests in flight, on pieces of the range; 0: 8
                                            (the most: 4 and 2 were slower in bench_reencrypt) */
    unsigned checkpoint_every;           /* objects; 0: 10000 */
    unsigned checkpoint_ms;              /* 0: 5000 */
    double rate_limit;                   /* objects/s, 0: none */
    const struct ar_etcd_compare *guard; /* S7 guard added to every checkpoint txn; NULL: none */
    size_t n_guard;                      /* compares at guard; 0 with guard set: 1 */
};

struct ar_reencrypt_progress {
    uint64_t done;      /* objects handled: rewritten + skipped + conflicts + failed */
    uint64_t total;     /* estimate: count_only ranges of the selectors at start */
    uint64_t rewritten; /* written with the write key */
    uint64_t skipped;   /* already under the write key, not written */
    uint64_t conflicts; /* rewritten meanwhile by someone else */
    uint64_t failed;    /* could not be read or written: left as they are */
    double rate;        /* objects/s of this run */
    double eta_s;       /* seconds left at that rate (-1: unknown) */
    size_t selector;    /* the selector being handled */
    uint64_t resumed;   /* objects the checkpoint already counted when this run started */
    size_t peak_window; /* most objects held at once (page + batches) */
    unsigned checkpoints;
    /* where the time went (ms; for benchmarks): range requests in flight, values handled on
     * the loop (read, encrypt, batch), txns in flight (summed over txns) and their number */
    uint64_t range_ms, handle_ms, txn_ms, txns;
    char first_failed[600]; /* "<key>: <reason>" of the first failed object, "" */
};

/* total raised to done when the estimate was low; rate = counted (objects of this run) /
 * elapsed_s; eta_s from that rate (-1: unknown). For every pass that reports this progress. */
void ar_reencrypt_progress_rate(struct ar_reencrypt_progress *p, uint64_t counted,
                                double elapsed_s);

struct ar_reencrypt;
typedef void (*ar_reencrypt_progress_cb)(void *arg, const struct ar_reencrypt_progress *p);
typedef void (*ar_reencrypt_done_cb)(void *arg, int status, const struct ar_reencrypt_progress *p,
                                     const struct ar_err *err);

/* 0 (done will be called) or -EINVAL (bad options, a selector without a key range: -ENOENT),
 * -ENOMEM; then no callback. The pass frees itself after done returns. */
int ar_reencrypt_start(struct ar_etcd *c, struct ar_chain *chain, const struct ar_reencrypt_opts *o,
                       ar_reencrypt_progress_cb progress, ar_reencrypt_done_cb done, void *arg,
                       struct ar_reencrypt **out);
/* Stop a pass that has not finished (also from progress): no callback after it, nothing more
 * is sent; memory is released once the requests in flight complete. Not after done. */
void ar_reencrypt_stop(struct ar_reencrypt *r);

/* Blocking, on the sync client's loop. 0 or a negative errno; out and err filled either way.
 * stop_after > 0: stop (as ar_reencrypt_stop) once that many objects were handled in this run
 * and return -EINTR (for tests and benchmarks of resume). */
int ar_reencrypt_run(struct ar_etcd_sync *s, struct ar_chain *chain,
                     const struct ar_reencrypt_opts *o, ar_reencrypt_progress_cb progress,
                     void *arg, uint64_t stop_after, struct ar_reencrypt_progress *out,
                     struct ar_err *err);

/* The checkpoint record (untrusted bytes: fuzz/fuzz_reencrypt.c). */
struct ar_reencrypt_ckpt {
    size_t selector;
    uint8_t cursor[AR_REENCRYPT_KEY_MAX - 1];
    size_t cursor_len;
    uint64_t done, rewritten, skipped, conflicts, failed, total, time_ms;
};
/* 0, or -EBADMSG (not exactly the record above) / -ENOMEM. */
int ar_reencrypt_ckpt_parse(const uint8_t *p, size_t n, struct ar_reencrypt_ckpt *out);
/* Compact JSON (malloc'd, NUL-terminated) or NULL. */
char *ar_reencrypt_ckpt_build(const struct ar_reencrypt_ckpt *c, size_t *len);

#endif
