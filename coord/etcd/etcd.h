/*
 * coord/etcd/etcd.h: asynchronous etcd v3 client, driven by a libuv loop through libcurl's multi
 * interface. Nothing here ever blocks the loop. The KV calls (range, put, delete, txn) speak
 * etcd's own gRPC (protobuf over HTTP/2, h2c prior knowledge on http://, ALPN on https://, many
 * calls multiplexed on one connection per endpoint); everything else (watch, leases, auth,
 * compaction) goes through the JSON gateway (POST /v3/...) on the same port. Why: the gateway
 * turns every answer into JSON with base64 values; a page of 1,000 Secrets costs etcd about six
 * times the CPU of the same page over gRPC (bench_reencrypt prints both). kv_json = true sends
 * the KV calls through the gateway too (an endpoint behind an HTTP/1.1-only proxy).
 *
 * Contract
 * - One struct ar_etcd per loop; every call happens on the loop's thread.
 * - Every asynchronous call returns 0 and later calls its callback EXACTLY ONCE, or returns a
 *   negative errno (-EINVAL, -ENOMEM, -ESHUTDOWN) and never calls it. ar_etcd_close() completes
 *   every pending request with -ECANCELED before it returns.
 * - Statuses are 0 or a negative errno. The errno says what kind of failure it was:
 *     -ETIMEDOUT     the request timeout passed (a write may or may not have been applied)
 *     -ECONNREFUSED  no endpoint could be reached
 *     -EHOSTUNREACH  etcd answered "no leader" / unavailable (gRPC code 14)
 *     -EACCES        authentication or permission error (gRPC 7 / 16, TLS handshake failure)
 *     -ENOENT        lease or key not found (gRPC 5), lease expired (keepalive)
 *     -ERANGE        revision compacted or in the future (gRPC 11)
 *     -ENOSPC        quota exhausted (gRPC 8)
 *     -EMSGSIZE      response larger than the cap
 *     -EINVAL        etcd rejected the request as invalid (gRPC 3), e.g. duplicate txn key
 *     -ECONNRESET    the connection broke mid-request
 *     -EPROTO        malformed response, or any other etcd error
 *     -ECANCELED     the client or the watch/keeper was closed
 *   and the struct ar_etcd_error next to it carries the endpoint and etcd's own message.
 * - Results passed to callbacks are valid only during the callback, unless the callback calls
 *   ar_etcd_result_keep() and later frees them with ar_etcd_result_free().
 * - Keys and values are bytes (pointer + length). Returned keys and values are additionally
 *   NUL-terminated (not counted in the length) so text keys can be printed directly. Returned
 *   values are wiped when freed.
 * - Values may be a Secret's plaintext (identity), so every copy the client makes is wiped when
 *   freed: the response body, the decoded values, and jansson's: the first ar_etcd_new installs,
 *   once per process, jansson allocator functions (json_set_alloc_funcs) whose free wipes the
 *   whole block (malloc_usable_size) before free(). Every jansson user of the process gets them
 *   (a cost on each free, about a memset of the block). libcurl's own buffers are not wiped, nor
 *   are nghttp2's frame buffers (gRPC request bodies pass through them).
 * - Failover: endpoints are tried in order, starting with the last one that worked. A request
 *   moves to the next endpoint when the connection fails or etcd says it has no leader; reads
 *   also move on a timeout of their attempt (see request_timeout_ms), so a member that hangs
 *   does not fail them. A write that timed out is never resent (its outcome is unknown).
 * - Auth: with a username the client authenticates first, sends the token as
 *   "Authorization: <token>" (gateway) or "token: <token>" (gRPC metadata), and re-authenticates
 *   once on "invalid auth token" (gRPC 16).
 * - Streams (watch, keepalive) send "Grpc-Metadata-Hasleader: true" so a member without quorum
 *   fails them at once instead of going silent; linearizable KV calls send it too ("hasleader:
 *   true" over gRPC).
 * - Time: deadlines are CLOCK_MONOTONIC milliseconds (ar_etcd_now_ms()).
 */
#ifndef ATREST_COORD_ETCD_H
#define ATREST_COORD_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#define AR_ETCD_MAX_ENDPOINTS 16
#define AR_ETCD_MAX_BODY      (64u << 20) /* response bodies are capped at 64 MiB */

struct ar_etcd;

struct ar_etcd_settings {
    /* "http://127.0.0.1:2379" or "https://10.0.0.1:2379"; at least one. */
    const char *endpoints[AR_ETCD_MAX_ENDPOINTS];
    size_t n_endpoints;
    /* TLS: the same three files kube-apiserver uses (--etcd-cafile/-certfile/-keyfile). */
    const char *cacert;
    const char *cert;
    const char *key;
    /* RBAC auth (optional). */
    const char *username;
    const char *password;
    unsigned request_timeout_ms; /* whole budget of a unary request, all attempts; 0: 5000.
                                    With several endpoints a read's attempt gets
                                    max(1000, timeout / endpoints) of it */
    unsigned dial_timeout_ms;    /* TCP+TLS connect; 0: 2000 */
    unsigned watch_idle_ms;      /* a watch stream silent this long is replaced; 0: 30000 */
    bool kv_json;                /* KV calls through the JSON gateway instead of gRPC */
};

struct ar_etcd_error {
    int code;         /* same negative errno as the status */
    int grpc_code;    /* etcd's gRPC code, 0 when there was no etcd answer */
    long http_status; /* 0 when there was no HTTP answer */
    char endpoint[128];
    char msg[256]; /* etcd's message, or the transport error text */
};

struct ar_etcd_kv {
    uint8_t *key;
    size_t key_len;
    uint8_t *value;
    size_t value_len;
    int64_t create_revision;
    int64_t mod_revision;
    int64_t version;
    int64_t lease;
};

/* One request operation; used by range/put/delete and inside txn. */
enum ar_etcd_op_type { AR_ETCD_RANGE, AR_ETCD_PUT, AR_ETCD_DELETE };

struct ar_etcd_op {
    enum ar_etcd_op_type type;
    const uint8_t *key;
    size_t key_len;
    const uint8_t *range_end; /* NULL: single key. Use ar_etcd_prefix_end() for prefixes */
    size_t range_end_len;
    const uint8_t *value; /* put */
    size_t value_len;
    int64_t lease; /* put: attach to lease (0: none) */
    bool prev_kv;  /* put/delete: return the previous kv(s) */
    /* range only */
    int64_t limit;    /* 0: no limit */
    int64_t revision; /* 0: latest */
    bool keys_only;
    bool count_only;
    bool serializable;
};

enum ar_etcd_cmp_target {
    AR_ETCD_CMP_VERSION,
    AR_ETCD_CMP_CREATE, /* create_revision; == 0 means "key absent" */
    AR_ETCD_CMP_MOD,
    AR_ETCD_CMP_VALUE,
};
enum ar_etcd_cmp_result { AR_ETCD_EQUAL, AR_ETCD_GREATER, AR_ETCD_LESS, AR_ETCD_NOT_EQUAL };

struct ar_etcd_compare {
    const uint8_t *key;
    size_t key_len;
    enum ar_etcd_cmp_target target;
    enum ar_etcd_cmp_result result;
    int64_t number;       /* VERSION, CREATE, MOD */
    const uint8_t *value; /* VALUE */
    size_t value_len;
};

struct ar_etcd_txn {
    const struct ar_etcd_compare *compare;
    size_t n_compare;
    const struct ar_etcd_op *success;
    size_t n_success;
    const struct ar_etcd_op *failure;
    size_t n_failure;
};

/*
 * The answer to any unary call. Fields that an operation does not produce stay 0/NULL.
 *   range:  kvs (n_kvs), count, more
 *   put:    kvs = prev_kv when asked (n_kvs 0 or 1)
 *   delete: deleted, kvs = prev_kvs when asked
 *   txn:    succeeded, ops[] = one result per executed op of the branch taken
 *   lease:  lease_id, ttl (keepalive/timetolive: 0 or -1 means gone), granted_ttl
 *   auth:   token
 */
struct ar_etcd_result {
    int64_t revision; /* header.revision: store revision when served / revision created */
    enum ar_etcd_op_type type;
    struct ar_etcd_kv *kvs;
    size_t n_kvs;
    int64_t count;
    bool more;
    int64_t deleted;
    bool succeeded;
    struct ar_etcd_result *ops;
    size_t n_ops;
    int64_t lease_id;
    int64_t ttl;
    int64_t granted_ttl;
    char *token;
};

typedef void (*ar_etcd_cb)(void *arg, int status, const struct ar_etcd_result *res,
                           const struct ar_etcd_error *err);

/* Fill an error (for layers above the client that report in the same shape). */
void ar_etcd_set_error(struct ar_etcd_error *e, int code, const char *endpoint, const char *fmt,
                       ...) __attribute__((format(printf, 4, 5)));

/* --- client ------------------------------------------------------------------------------ */

/* Once per process, before any thread exists and before any other libcurl use: libcurl with an
 * allocator that wipes every block before it is freed or moved (malloc_usable_size), so what
 * libcurl frees unwiped (request buffers with the bearer token or the etcd password, receive
 * buffers with gRPC answers: values in the clear under identity) does not stay in freed heap,
 * not even in glibc's per-thread cache, which M_PERTURB does not reach (docs/DESIGN.md 6).
 * Pair it with curl_global_cleanup(). 0 or -ENOMEM. */
int ar_etcd_global_init(void);

/* Copies the settings. 0 and *out set, or -EINVAL (bad settings), -ENOMEM, -EIO (libsodium would
 * not initialise) with *out NULL. */
int ar_etcd_new(uv_loop_t *loop, const struct ar_etcd_settings *s, struct ar_etcd **out);
/* Cancel everything (callbacks get -ECANCELED), close handles, free. Watches and keepers still
 * open are freed too (stop them, and free elections, first). Never call it from one of this
 * client's callbacks. The loop must then be run (uv_run) until its close callbacks have fired;
 * after that uv_loop_close() returns 0. */
void ar_etcd_close(struct ar_etcd *c);
uv_loop_t *ar_etcd_loop(struct ar_etcd *c);
uint64_t ar_etcd_now_ms(void);

/* The prefix end for a range over every key starting with prefix: writes into out (at least
 * prefix_len bytes) and returns its length; "\0" (length 1) when every byte is 0xff. */
size_t ar_etcd_prefix_end(const uint8_t *prefix, size_t prefix_len, uint8_t *out);

/* a < b in etcd's key order (bytes, then the shorter first). */
bool ar_etcd_key_before(const uint8_t *a, size_t al, const uint8_t *b, size_t bl);

/*
 * etcd 3.4 walks its key index from a range's start to the range's end for every range with a
 * limit, however few keys it returns (a count over 100,000 keys: about 80 ms). A scan that reads
 * a big range a page at a time can end each page's range at a guess instead of the range's
 * end: this writes last + 2 * (last - first) into out (first <= last: the first and last keys
 * of the page just read, read as big-endian numbers of the longer one's length) and returns
 * its length, or 0 when there is no guess to make: no distance between them, a carry out of the
 * first byte, a guess at or past end (an end of "\0" is the end of the key space), or more than
 * cap bytes. Only a guess: the caller must treat a short answer as "range read up to the guess"
 * and an empty one as "go on to the real end", never as the end of its scan.
 */
size_t ar_etcd_guess_end(const uint8_t *first, size_t first_len, const uint8_t *last,
                         size_t last_len, const uint8_t *end, size_t end_len, uint8_t *out,
                         size_t cap);

/* --- KV ----------------------------------------------------------------------------------- */

int ar_etcd_range(struct ar_etcd *c, const struct ar_etcd_op *op, ar_etcd_cb cb, void *arg);
int ar_etcd_put(struct ar_etcd *c, const struct ar_etcd_op *op, ar_etcd_cb cb, void *arg);
int ar_etcd_delete(struct ar_etcd *c, const struct ar_etcd_op *op, ar_etcd_cb cb, void *arg);
int ar_etcd_txn(struct ar_etcd *c, const struct ar_etcd_txn *t, ar_etcd_cb cb, void *arg);
/* Compact history up to revision (physical). */
int ar_etcd_compact(struct ar_etcd *c, int64_t revision, ar_etcd_cb cb, void *arg);

/*
 * Iterate over [op->key, op->range_end) page by page (op->limit = page size, 0: 500), all pages
 * at the revision of the first page (op->revision if set). page_cb gets each page (res->kvs);
 * res->more is false on the last one. Return nonzero from page_cb to stop early. On error,
 * page_cb is called once with status < 0 and res NULL, and iteration ends. Only one page is held
 * in memory at a time.
 */
typedef int (*ar_etcd_page_cb)(void *arg, int status, const struct ar_etcd_result *res,
                               const struct ar_etcd_error *err);
int ar_etcd_iterate(struct ar_etcd *c, const struct ar_etcd_op *op, ar_etcd_page_cb cb, void *arg);

/* --- results ------------------------------------------------------------------------------ */

/* Take ownership of a result inside its callback; free it later with ar_etcd_result_free. Only a
 * result handed to a callback (or through *out by etcd_sync.h), never one of its ops[]. */
struct ar_etcd_result *ar_etcd_result_keep(const struct ar_etcd_result *res);
void ar_etcd_result_free(struct ar_etcd_result *res);
/* Peak number of kvs held in live results of this client (for memory-bound tests). */
size_t ar_etcd_kvs_peak(const struct ar_etcd *c);
void ar_etcd_kvs_peak_reset(struct ar_etcd *c);
/* Socket events this client handled (loop wakeups for its sockets) and how many times it
 * stopped watching a socket for writable because libcurl sent nothing on it (for tests and
 * benchmarks). */
void ar_etcd_io_counts(const struct ar_etcd *c, uint64_t *events, uint64_t *parks);

/* --- leases ------------------------------------------------------------------------------- */

/* res->lease_id (never 0), res->ttl (> 0): an answer without them fails with -EPROTO
 * ("malformed response: lease grant ..."). id 0: etcd picks. Sent again after a timeout (a
 * lease granted by the lost attempt just expires). */
int ar_etcd_lease_grant(struct ar_etcd *c, int64_t ttl_s, int64_t id, ar_etcd_cb cb, void *arg);
int ar_etcd_lease_revoke(struct ar_etcd *c, int64_t id, ar_etcd_cb cb, void *arg);
/* res->ttl (-1 or 0: expired/unknown), res->granted_ttl. */
int ar_etcd_lease_ttl(struct ar_etcd *c, int64_t id, ar_etcd_cb cb, void *arg);

/*
 * Keep a lease alive: one POST /v3/lease/keepalive {"ID":..} (a one-message stream) every ttl/3
 * on a kept-alive connection. (A single chunked POST fed line by line does not stream through
 * etcd 3.4's gateway: Go's HTTP/1.1 server holds the answers until the upload ends.)
 * After each answer cb gets status 0, the TTL granted and the deadline: the monotonic time (ms)
 * at which the lease expires at the latest, counted from when that keepalive REQUEST was sent.
 * On transport errors the stream is reopened (next endpoint) and cb gets status < 0 with the
 * deadline still standing. When etcd says the lease is gone, cb gets -ENOENT and the keeper
 * stops renewing. Stop and free with ar_etcd_keepalive_stop (no callback after it).
 */
struct ar_etcd_keeper;
typedef void (*ar_etcd_keepalive_cb)(void *arg, int status, int64_t ttl, uint64_t deadline_ms,
                                     const struct ar_etcd_error *err);
int ar_etcd_keepalive_start(struct ar_etcd *c, int64_t lease_id, int64_t ttl_s,
                            ar_etcd_keepalive_cb cb, void *arg, struct ar_etcd_keeper **out);
void ar_etcd_keepalive_stop(struct ar_etcd_keeper *k);

/* --- watch -------------------------------------------------------------------------------- */

enum ar_etcd_event_type { AR_ETCD_EV_PUT, AR_ETCD_EV_DELETE };

struct ar_etcd_event {
    enum ar_etcd_event_type type;
    struct ar_etcd_kv kv;      /* DELETE: only key and mod_revision */
    struct ar_etcd_kv prev_kv; /* with opts.prev_kv; key NULL when absent */
};

enum ar_etcd_watch_kind {
    AR_ETCD_WATCH_CREATED,   /* the watch is (re)established; revision = header revision */
    AR_ETCD_WATCH_EVENTS,    /* events (n_events >= 1), all with revision <= u->revision */
    AR_ETCD_WATCH_COMPACTED, /* start revision compacted: re-read, then start a new watch.
                                The watch is finished; only ar_etcd_watch_stop remains. */
    AR_ETCD_WATCH_ERROR,     /* the stream failed; it is being reopened from last + 1 */
};

struct ar_etcd_watch_update {
    enum ar_etcd_watch_kind kind;
    int64_t revision;
    const struct ar_etcd_event *events;
    size_t n_events;
    int64_t compact_revision;
    int status;                      /* ERROR */
    const struct ar_etcd_error *err; /* ERROR */
};

struct ar_etcd_watch_opts {
    const uint8_t *key;
    size_t key_len;
    const uint8_t *range_end;
    size_t range_end_len;
    int64_t start_revision; /* 0: from now */
    bool prev_kv;
};

struct ar_etcd_watch;
typedef void (*ar_etcd_watch_cb)(void *arg, const struct ar_etcd_watch_update *u);
/* One long-lived stream. Reconnects (with backoff, rotating endpoints) from the last seen
 * revision + 1, so no event is lost or repeated. A stream silent for watch_idle_ms (a member
 * cut off without a reset, a stuck server) is replaced by a new connection from the same
 * point: quietly (no callback) when the old one had been established, else as an ERROR
 * (-ETIMEDOUT). So a dead stream is noticed within watch_idle_ms + dial_timeout_ms. */
int ar_etcd_watch_start(struct ar_etcd *c, const struct ar_etcd_watch_opts *o, ar_etcd_watch_cb cb,
                        void *arg, struct ar_etcd_watch **out);
/* Cancel and free; no callback after it. */
void ar_etcd_watch_stop(struct ar_etcd_watch *w);
/* Test hook: drop the watch's connection as if the network failed (it reconnects). */
void ar_etcd_watch_drop_connection(struct ar_etcd_watch *w);

#endif
