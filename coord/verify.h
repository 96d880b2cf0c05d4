/*
 * coord/verify.h: the verify scan (DESIGN 4.6): read every stored object of a key range of
 * etcd with a config's provider chain and count, per resource, the objects under each
 * provider:key, the stale reads and the undecryptable values. Nothing is written.
 *
 * Contract
 * - A scan covers one key range, [prefix + "/", its end) by default, or one resource's range
 *   (ar_resource_key_prefix), or any [start, end) given in the options. It pages through the
 *   range with ranges of at most page_size keys, all at the revision of the first page. When
 *   etcd compacted that revision mid-scan (-ERANGE), the scan goes on from where it was at the
 *   newest revision and counts it in revision_restarts (a key is never counted twice: the
 *   cursor only moves forward). A page that etcd cannot send within the client's response cap
 *   (-EMSGSIZE) is asked again with half the page size (down to 1).
 * - Per value: the resource comes from the etcd key (crypto/resource.h, shared spec 4); the
 *   value is read with ar_chain_read as kube-apiserver would read it. It counts as:
 *     "identity"                    plaintext, read by identity (or no rule names the resource)
 *     "<aescbc|aesgcm|secretbox>:<key name>"
 *     "kms:<name>"                  a KMS v1 value of provider <name> (no plugin is called)
 *     "kms:<name>:<keyID>"          a KMS v2 EncryptedObject that parses and validates
 *   plus "stale" (kube-apiserver's stale flag: would be rewritten on a no-op update; unknown,
 *   so not counted, for KMS values) and "undecryptable" (any read error; KMS values only when
 *   their provider is not in the config or the bytes do not parse). Key names and keyIDs are
 *   printed as they are when they are printable ASCII, otherwise with \xNN escapes.
 * - Keys under the prefix that name no resource (spec 4: e.g. /registry/masterleases/<ip>,
 *   /registry/ranges/... of unknown allocators, anything unknown) are counted in a row of their
 *   own, named by their first path segment with known = false. No chain governs them: they are
 *   counted by the value's prefix alone ("identity" for anything without "k8s:enc:", else
 *   "<type>:<name>" as above), never decrypted, never stale or undecryptable.
 * - The first AR_VERIFY_MAX_BAD undecryptable values are kept (etcd key, resource, reason);
 *   the rest are only counted.
 * - Memory is bounded whatever the number of objects: one page of the etcd client at a time
 *   (ar_etcd_kvs_peak <= page_size), one plaintext buffer reused and wiped after every value
 *   (peak_buf reports its largest capacity), at most AR_VERIFY_MAX_RESOURCES rows,
 *   AR_VERIFY_MAX_ENTRIES provider:key entries per row and AR_VERIFY_MAX_ALL_ENTRIES in all
 *   (plus one "(other)" per row): more names go to "(other)" of the row, more resources to
 *   the row "(other)". So a report stays under about 3.5 MiB whatever etcd holds. Values and
 * plaintext never leave the page and the wiped buffer; the report holds names, counts and etcd keys
 * only (no key material, no values).
 * - Asynchronous, on the etcd client's loop: progress_cb after every page, done_cb exactly
 *   once (unless stopped) with 0 and the report, or a negative errno from the etcd client (see
 *   coord/etcd/etcd.h) with its error and the partial report. Several scans over disjoint
 *   ranges may run at once on one client; ar_verify_report_merge adds their reports up.
 * - The chain is referenced for the scan's life; the caller's options are copied.
 */
#ifndef ATREST_COORD_VERIFY_H
#define ATREST_COORD_VERIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord/etcd/etcd.h"
#include "coord/etcd/etcd_sync.h"
#include "crypto/chain.h"

#define AR_VERIFY_MAX_BAD         100
#define AR_VERIFY_MAX_PARALLEL    16
#define AR_VERIFY_MAX_RESOURCES   1024
#define AR_VERIFY_MAX_ENTRIES     256
#define AR_VERIFY_MAX_ALL_ENTRIES 4096 /* entries in all rows ("(other)" rows aside) */
#define AR_VERIFY_NAME_MAX        600  /* an entry name: "kms:<name>:<keyID, escaped>", truncated */

struct ar_verify_opts {
    const char *etcd_prefix; /* kube-apiserver's --etcd-prefix; NULL: "/registry" */
    /* Only this resource's range (e.g. group "apps", resource "deployments"); NULL: all. */
    const char *group;
    const char *resource;
    /* An explicit range instead (for parallel scans); start NULL: derived as above. */
    const uint8_t *start;
    size_t start_len;
    const uint8_t *end;
    size_t end_len;
    unsigned page_size; /* 0: 500 */
    /* Pieces of the range read at once (at most AR_VERIFY_MAX_PARALLEL; 0 or 1: page after
     * page): rounds of a keys-only range of parallel * page_size keys cut into pieces of
     * page_size keys, each read page by page, all at the scan's revision. Counts are the same
     * as a sequential scan's; the undecryptable keys kept are the first met (listed in key
     * order); held in memory: one keys-only page and one page per piece. */
    unsigned parallel;
};

struct ar_verify_entry {
    char name[AR_VERIFY_NAME_MAX]; /* "aescbc:key1", "identity", "kms:p1:key-2", "(other)" */
    uint64_t n;
};

struct ar_verify_row {
    char group[256];
    char resource[256];             /* the resource, or the first path segment when !known */
    bool known;                     /* a resource of spec 4 (read with the chain) */
    char write[AR_VERIFY_NAME_MAX]; /* the entry name its write provider/key gives, "kms:<name>"
                                       for KMS (any keyID); "" when !known */
    uint64_t total, stale, undecryptable;
    struct ar_verify_entry *v; /* sorted by name in the final report */
    size_t n, cap;
};

struct ar_verify_bad {
    char *key; /* the etcd key (printable: \xNN escapes) */
    char resource[520];
    char reason[512];
};

struct ar_verify_report {
    struct ar_verify_row *rows; /* sorted by (known first, group, resource) when done */
    size_t n_rows, cap_rows;
    size_t n_entries; /* in all rows */
    struct ar_verify_bad bad[AR_VERIFY_MAX_BAD];
    size_t n_bad;
    uint64_t objects, undecryptable, stale, pages;
    int64_t revision;           /* of the first page (of the last restart) */
    unsigned revision_restarts; /* compactions met mid-scan */
    size_t peak_buf;            /* largest plaintext buffer capacity the scan held */
    size_t peak_page_kvs;       /* largest page it received */
};

struct ar_verify_progress {
    uint64_t objects, undecryptable, pages;
    const uint8_t *last_key; /* the last key read (valid during the callback) */
    size_t last_key_len;
};

struct ar_verify;
typedef void (*ar_verify_progress_cb)(void *arg, const struct ar_verify_progress *p);
/* rep (never NULL) becomes the callee's: free it with ar_verify_report_free. On failure it is
 * the partial count up to the error. The scan frees itself after done_cb returns. */
typedef void (*ar_verify_done_cb)(void *arg, int status, struct ar_verify_report *rep,
                                  const struct ar_etcd_error *err);

/* Start a scan. 0 (done_cb will be called) or -EINVAL (bad options, unknown --resource range:
 * -ENOENT), -ENOMEM, or the client's error; then no callback. */
int ar_verify_start(struct ar_etcd *c, struct ar_chain *chain, const struct ar_verify_opts *o,
                    ar_verify_progress_cb progress_cb, ar_verify_done_cb done_cb, void *arg,
                    struct ar_verify **out);
/* Stop a scan that has not finished (also from progress_cb): no callback after it; its
 * memory is released at once or when the request in flight completes. Not after done_cb. */
void ar_verify_stop(struct ar_verify *v);

/*
 * The counting core, without etcd: feed (key, value) pairs in any order, then take the report.
 * Any bytes are accepted (this parses untrusted values; fuzz/fuzz_verify.c). The scan above is
 * this plus paging; the daemon can also feed it from a watch.
 */
struct ar_verify_tally;
int ar_verify_tally_new(struct ar_chain *chain, const char *etcd_prefix,
                        struct ar_verify_tally **out);
/* 0, or -ENOMEM (the pair may be counted in part), -EINVAL. */
int ar_verify_tally_add(struct ar_verify_tally *t, const uint8_t *key, size_t key_len,
                        const uint8_t *value, size_t value_len);
/* The counts so far (rows in first-seen order). */
const struct ar_verify_report *ar_verify_tally_report(const struct ar_verify_tally *t);
/* Sort and return the report (the caller's), and free the tally. */
struct ar_verify_report *ar_verify_tally_finish(struct ar_verify_tally *t);
void ar_verify_tally_free(struct ar_verify_tally *t);

/* Blocking: run a scan on the sync client's private loop. 0 with *out (the caller's) or a
 * negative errno with err filled and *out NULL. progress_cb may be NULL. */
int ar_verify_run(struct ar_etcd_sync *s, struct ar_chain *chain, const struct ar_verify_opts *o,
                  ar_verify_progress_cb progress_cb, void *arg, struct ar_verify_report **out,
                  struct ar_etcd_error *err);

void ar_verify_report_free(struct ar_verify_report *r);
/* Add src's counts into dst (scans of disjoint ranges, run in parallel): rows by resource,
 * entries by name, the caps as above; the first undecryptable keys up to 100 (dst's first);
 * revision and peaks are the larger. dst is sorted again. 0 or -ENOMEM (dst counted in part). */
int ar_verify_report_merge(struct ar_verify_report *dst, const struct ar_verify_report *src);
/* The key prefix kube-apiserver's --etcd-prefix gives (path.Join("/", prefix) + "/"; NULL:
 * "/registry/"), shared with the re-encrypt pass. 0 or -ENAMETOOLONG. */
int ar_verify_join_prefix(const char *prefix, char *out, size_t outlen);
/* The row of a resource or NULL; the count of entry name in a row (0 when absent). */
const struct ar_verify_row *ar_verify_find_row(const struct ar_verify_report *r, const char *group,
                                               const char *resource);
uint64_t ar_verify_count(const struct ar_verify_row *row, const char *name);
/* Objects of a known row not under its write entry (what prune needs to be 0). */
uint64_t ar_verify_not_write(const struct ar_verify_row *row);
/* Objects of a known row that chain `to` cannot read (S2 once `to` is the config): those of
 * the entries whose provider/key is not in to's provider list for the row's resource ("identity"
 * needs identity there; "kms:<name>[:<keyID>]" the KMS provider <name>; an "(other)" entry
 * always counts, its names are not known). */
uint64_t ar_verify_unreadable(const struct ar_verify_row *row, const struct ar_chain *to);

#endif
