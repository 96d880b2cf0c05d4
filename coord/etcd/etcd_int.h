/*
 * coord/etcd/etcd_int.h: private to coord/etcd*.c. The client structure, the libcurl transfer
 * wrapper shared by unary requests and streams, and the JSON helpers.
 */
#ifndef ATREST_COORD_ETCD_INT_H
#define ATREST_COORD_ETCD_INT_H

#include <curl/curl.h>
#include <stddef.h>
#include <jansson.h>
#include <sys/types.h>

#include "coord/etcd/etcd.h"

/* etcd's largest lease TTL (lease.MaxLeaseTTL); answers beyond it are malformed. */
#define AR_ETCD_MAX_TTL_S 9000000000LL

struct ar_link {
    struct ar_link *prev, *next;
};

void ar_link_init(struct ar_link *l);
void ar_link_add(struct ar_link *head, struct ar_link *l); /* append */
void ar_link_del(struct ar_link *l);                       /* safe when not linked */
bool ar_link_linked(const struct ar_link *l);

#define AR_CONTAINER(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

struct ar_xfer;
/* Streams: data arrived (inside a curl callback: only buffer it). <0 aborts the transfer. */
typedef int (*ar_xfer_data_fn)(struct ar_xfer *x, const char *p, size_t n);
/* The transfer finished (outside curl callbacks). */
typedef void (*ar_xfer_done_fn)(struct ar_xfer *x, CURLcode rc, long http_status);
/* Deferred processing of buffered stream data (outside curl callbacks). */
typedef void (*ar_xfer_process_fn)(struct ar_xfer *x);

/*
 * An auth token, refcounted: the client holds one reference while it is current, every transfer
 * that sent it holds one until its next start or release (libcurl may read the header list again
 * while the transfer is active). In sodium_malloc'd memory: line is "Authorization: <token>".
 */
struct ar_token {
    unsigned refs;
    size_t len;      /* strlen(line) */
    char *grpc_line; /* "token: <token>" (gRPC metadata), in the same block after line */
    char line[];     /* the token itself starts at line + AR_TOKEN_HDR_LEN */
};
#define AR_TOKEN_HDR     "Authorization: "
#define AR_TOKEN_HDR_LEN (sizeof(AR_TOKEN_HDR) - 1)
static inline const char *ar_token_str(const struct ar_token *t)
{
    return t->line + AR_TOKEN_HDR_LEN;
}

struct ar_xfer {
    struct ar_etcd *c;
    CURL *h;
    struct curl_slist hnode[4]; /* request headers: our own nodes, no allocation per request */
    struct ar_token *tok;       /* the token sent (a reference) or NULL */
    char *body;                 /* request body, owned */
    size_t body_len;
    bool body_locked; /* body is sodium_malloc'd (holds the password): sodium_free */
    char *resp;       /* unary response, NUL-terminated, owned */
    size_t resp_len, resp_cap;
    size_t resp_hw; /* bytes of resp ever written (what is wiped): a capacity sized from an
                       untrusted length prefix is never touched beyond what came */
    bool resp_too_big;
    size_t ep; /* endpoint index */
    bool active;
    bool stream;
    ar_xfer_data_fn on_data;
    ar_xfer_done_fn on_done;
    ar_xfer_process_fn on_process;
    struct ar_link dirty; /* in c->dirty while it has unprocessed data */
    struct ar_link kick;  /* in c->kick: gRPC data came in this run; run it again (etcd.c) */
    char errbuf[CURL_ERROR_SIZE];
    /* gRPC (KV calls): HTTP/2, application/grpc; the status comes in the trailers */
    bool grpc;
    int grpc_status; /* -1: none seen */
    char grpc_msg[256];
};

/* Something that waits for an auth token before it can start. */
struct ar_auth_wait {
    struct ar_link link;
    void (*resume)(struct ar_auth_wait *w, int status, const struct ar_etcd_error *err);
};

/* A watch or keeper registered with the client, so ar_etcd_close can destroy leftovers. */
struct ar_stream {
    struct ar_link link;
    void (*destroy)(struct ar_stream *s);
};

struct ar_etcd {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    char *endpoints[AR_ETCD_MAX_ENDPOINTS];
    size_t n_ep;
    size_t cur_ep;
    char *cacert, *cert, *key, *username;
    char *password; /* sodium_malloc'd (locked, wiped by sodium_free) or NULL */
    unsigned req_timeout_ms, dial_timeout_ms, watch_idle_ms;
    struct ar_token *token; /* current token (one reference) or NULL */
    bool verbose;           /* ATREST_CURL_VERBOSE was set when the client was made */
    bool authing;
    struct ar_link auth_waiters;
    struct ar_link reqs;    /* unary requests in flight or waiting */
    struct ar_link streams; /* watches and keepers (owned by their users) */
    struct ar_link dirty;
    struct ar_link kick;
    struct ar_link parked; /* sockets whose writable watch is parked (etcd.c, on_poll) */
    CURL *pool[64];
    size_t n_pool;
    bool closing;
    size_t kvs_live, kvs_peak;
    uint64_t sock_events, sock_parks; /* socket events handled; writable parked (etcd.c) */
    bool kv_grpc; /* range/put/delete/txn over gRPC (default), else the JSON gateway */
};

/* Transfers. ar_xfer_start sets up the easy handle for POST <endpoint><path>. */
int ar_xfer_start(struct ar_etcd *c, struct ar_xfer *x, const char *path, bool has_leader,
                  long timeout_ms);
/* Remove from the multi (no on_done); keeps buffers. Safe when not active. */
void ar_xfer_stop(struct ar_xfer *x);
/* Stop and free buffers. */
void ar_xfer_release(struct ar_xfer *x);
void ar_xfer_mark_dirty(struct ar_xfer *x);

/* Errors. */
int ar_etcd_grpc_errno(int grpc_code, const char *msg);
/* Fill e from a finished transfer; returns the status (0 for HTTP 200). */
int ar_etcd_xfer_error(struct ar_xfer *x, CURLcode rc, long http, struct ar_etcd_error *e);
/* The body of a successful (HTTP 200) unary answer in x->resp -> *out (ar_etcd_result_free),
 * or a negative errno with e filled ("malformed response ..."). */
int ar_etcd_decode_result(const struct ar_xfer *x, enum ar_etcd_op_type type,
                          struct ar_etcd_result **out, struct ar_etcd_error *e);
/* The same for a gRPC answer (x->grpc): the status from the trailers (an error fills e with
 * etcd's code and message, http_status 200), then the one message (txn: a TxnResponse). */
int ar_etcd_decode_grpc(const struct ar_xfer *x, enum ar_etcd_op_type type, bool txn,
                        struct ar_etcd_result **out, struct ar_etcd_error *e);
/* The libcurl header callback of gRPC transfers (grpc-status, grpc-message); exposed for fuzzing.
 */
size_t ar_xfer_grpc_header(char *p, size_t size, size_t n, void *ud);
/* Parse {"error":"..","message":"..","code":N} or {"error":{"grpc_code":..,"message":..}}. */
bool ar_etcd_parse_error_json(json_t *root, struct ar_etcd_error *e, long http);

/* Auth: call w->resume once a token is there (or at once without auth). */
void ar_etcd_auth_wait(struct ar_etcd *c, struct ar_auth_wait *w);
/* Forget the current token if it is the one a failed transfer sent (used may be NULL). */
void ar_etcd_auth_invalidate(struct ar_etcd *c, const struct ar_token *used);
/* Tests: the client's current token text (in locked memory) or NULL. */
const char *ar_etcd_token(const struct ar_etcd *c);

/* JSON. */
int ar_json_b64(json_t *obj, const char *name, const uint8_t *p, size_t n);
int ar_json_i64str(json_t *obj, const char *name, int64_t v);
int ar_etcd_b64_decode(const char *s, size_t slen, uint8_t **out, size_t *outlen);
int64_t ar_json_get_i64(const json_t *obj, const char *name);
int ar_parse_kv(struct ar_etcd *c, const json_t *o, struct ar_etcd_kv *kv);
void ar_kv_clear(struct ar_etcd_kv *kv);
/* Count n kvs handed out (add) or freed on c's kvs_live / kvs_peak; c NULL: none. */
void ar_kvs_account(struct ar_etcd *c, size_t n, bool add);
int ar_parse_result(struct ar_etcd *c, const json_t *root, enum ar_etcd_op_type type,
                    struct ar_etcd_result *res);
/* Free what res holds (not res); owner: the client its kvs were counted on (NULL: none). */
void ar_result_clear(struct ar_etcd *owner, struct ar_etcd_result *res);

/* Every result handed out is allocated as this box: callers see pub only; the client it was
 * counted on and whether a callback kept it stay here (ar_etcd_result_keep/free). */
struct ar_result_box {
    struct ar_etcd_result pub;
    struct ar_etcd *owner;
    bool kept;
};
static inline struct ar_result_box *ar_result_box_of(const struct ar_etcd_result *res)
{
    return (struct ar_result_box *)((const char *)res - offsetof(struct ar_result_box, pub));
}
char *ar_json_dump(json_t *o, size_t *len); /* compact; steals nothing */

/*
 * Request bodies built by hand (the hot paths: no jansson tree, no escaping pass over base64).
 * Appends never fail individually: the first failure sets err and later appends do nothing;
 * ar_jbuf_take reports it. The buffer grows by moving to a new one and wiping the old (values).
 */
struct ar_jbuf {
    char *p;
    size_t len, cap;
    int err;
};
void ar_jbuf_init(struct ar_jbuf *b, size_t hint);
void ar_jbuf_raw(struct ar_jbuf *b, const char *s, size_t n);
void ar_jbuf_lit(struct ar_jbuf *b, const char *s); /* a literal, no escaping */
/* ,"name":"<base64>" (without the comma when the object is still empty: after '{') */
void ar_jbuf_b64(struct ar_jbuf *b, const char *name, const uint8_t *p, size_t n);
void ar_jbuf_i64str(struct ar_jbuf *b, const char *name, int64_t v);
void ar_jbuf_true(struct ar_jbuf *b, const char *name);
/* The op as a JSON object (same members and order as before: key, range_end, ...). */
void ar_jbuf_op(struct ar_jbuf *b, const struct ar_etcd_op *op);
/* The NUL-terminated body (*len without the NUL) or NULL with the error in *rc; b is emptied. */
char *ar_jbuf_take(struct ar_jbuf *b, size_t *len, int *rc);
void ar_jbuf_free(struct ar_jbuf *b);

/*
 * gRPC (coord/etcd/etcd_pb.c): the KV calls in protobuf. ar_pb_op / ar_pb_txn return the framed
 * request body (5-byte gRPC prefix, then the message; NUL after it, not counted) or NULL with *rc
 * (-EINVAL as the JSON path, -ENOMEM). ar_pb_unframe finds the one message of a unary answer;
 * ar_pb_parse_result reads it into res (txn: a TxnResponse, else the answer of type), counting
 * kvs on c (NULL: none); on failure res holds what was read so far (ar_result_clear).
 */
char *ar_pb_op(const struct ar_etcd_op *op, size_t *len, int *rc);
char *ar_pb_txn(const struct ar_etcd_txn *t, size_t *len, int *rc);
int ar_pb_unframe(const uint8_t *p, size_t n, const uint8_t **msg, size_t *len);
int ar_pb_parse_result(struct ar_etcd *c, const uint8_t *p, size_t n, enum ar_etcd_op_type type,
                       bool txn, struct ar_etcd_result *res);
/* grpc-message is percent-encoded (gRPC over HTTP/2): decoded into out (at most cap - 1). */
void ar_grpc_msg_decode(const char *s, size_t n, char *out, size_t cap);

/*
 * JSON string escaping for text that must not pass through jansson (the password): writes the
 * escaped form of s[0..n) (without quotes) to out, which must hold 6 * n bytes; returns the
 * length written, or -EINVAL if s is not valid UTF-8 or holds a NUL.
 */
ssize_t ar_json_escape(char *out, const char *s, size_t n);

/* Fuzzing and tests: run chunks through a watch's (keeper's) buffering, line splitter and message
 * parser exactly as data from the network, then end the stream (rc, http) as libcurl would, on a
 * stream object that never connects and is freed before the call returns (its timer closes on
 * the next loop run). The callback runs as for a real stream. 0 or -ENOMEM. */
int ar_etcd_watch_feed(struct ar_etcd *c, const char *const *chunks, const size_t *lens, size_t n,
                       CURLcode rc, long http, ar_etcd_watch_cb cb, void *arg);
int ar_etcd_keeper_feed(struct ar_etcd *c, const char *const *chunks, const size_t *lens, size_t n,
                        CURLcode rc, long http, ar_etcd_keepalive_cb cb, void *arg);

/* Line buffer for newline-delimited streams. */
struct ar_linebuf {
    char *p;
    size_t len, cap;
};
int ar_linebuf_add(struct ar_linebuf *b, const char *p, size_t n);
/* Next complete line (without '\n', NUL-terminated in place) or NULL; *consumed is advanced. */
char *ar_linebuf_next(struct ar_linebuf *b, size_t *consumed);
void ar_linebuf_shift(struct ar_linebuf *b, size_t consumed);
void ar_linebuf_free(struct ar_linebuf *b);

#endif
