/*
 * coord/etcd/etcd.c: the etcd client core: libcurl multi on the libuv loop, unary requests with
 * timeouts, failover and auth, and the KV / lease operations. See coord/etcd/etcd.h.
 */
#include <errno.h>
#include <ctype.h>
#include <inttypes.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "coord/etcd/etcd_int.h"

#define MAX_ATTEMPTS 64
/* A retry is not started with less than this left of its budget (capped at a tenth of the
 * budget): a 7 ms attempt can only time out, and its "timed out after 7 milliseconds" would
 * hide the error that made the request retry. The request fails with that error instead. */
#define MIN_RETRY_MS 250u

/* --- lists ------------------------------------------------------------------------------- */

void ar_link_init(struct ar_link *l)
{
    l->prev = l->next = l;
}

void ar_link_add(struct ar_link *head, struct ar_link *l)
{
    l->prev = head->prev;
    l->next = head;
    head->prev->next = l;
    head->prev = l;
}

void ar_link_del(struct ar_link *l)
{
    if (!l->next || l->next == l)
        return;
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = l;
}

bool ar_link_linked(const struct ar_link *l)
{
    return l->next && l->next != l;
}

/* --- time, prefixes ------------------------------------------------------------------------ */

uint64_t ar_etcd_now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

size_t ar_etcd_prefix_end(const uint8_t *prefix, size_t prefix_len, uint8_t *out)
{
    for (size_t i = prefix_len; i > 0; i--) {
        if (prefix[i - 1] != 0xff) {
            memcpy(out, prefix, i - 1);
            out[i - 1] = prefix[i - 1] + 1;
            return i;
        }
    }
    out[0] = 0;
    return 1;
}

bool ar_etcd_key_before(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);

    return c < 0 || (c == 0 && al < bl);
}

/* a < b for keys; an end of "\0" is the end of the key space */
static bool before_end(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    return (bl == 1 && !b[0]) || ar_etcd_key_before(a, al, b, bl);
}

size_t ar_etcd_guess_end(const uint8_t *first, size_t first_len, const uint8_t *last,
                         size_t last_len, const uint8_t *end, size_t end_len, uint8_t *out,
                         size_t cap)
{
    size_t w = first_len > last_len ? first_len : last_len;
    unsigned borrow = 0, carry = 0;
    bool grew = false;

    if (w > cap)
        return 0;
    for (size_t i = w; i-- > 0;) { /* out = last - first */
        unsigned lb = i < last_len ? last[i] : 0, fb = i < first_len ? first[i] : 0;
        unsigned v = lb + 256u - fb - borrow;

        out[i] = (uint8_t)v;
        borrow = v < 256u;
        grew |= out[i] != 0;
    }
    for (size_t i = w; i-- > 0;) { /* out = last + 2 * out */
        unsigned lb = i < last_len ? last[i] : 0;
        unsigned v = lb + 2u * out[i] + carry;

        out[i] = (uint8_t)v;
        carry = v >> 8;
    }
    if (borrow || carry || !grew || !before_end(out, w, end, end_len))
        return 0;
    return w;
}

uv_loop_t *ar_etcd_loop(struct ar_etcd *c)
{
    return c->loop;
}

size_t ar_etcd_kvs_peak(const struct ar_etcd *c)
{
    return c->kvs_peak;
}

void ar_etcd_kvs_peak_reset(struct ar_etcd *c)
{
    c->kvs_peak = c->kvs_live;
}

void ar_etcd_io_counts(const struct ar_etcd *c, uint64_t *events, uint64_t *parks)
{
    *events = c->sock_events;
    *parks = c->sock_parks;
}

/* --- errors ------------------------------------------------------------------------------- */

void ar_etcd_set_error(struct ar_etcd_error *e, int code, const char *endpoint, const char *fmt,
                       ...)
{
    va_list ap;

    if (!e)
        return;
    memset(e, 0, sizeof(*e));
    e->code = code;
    snprintf(e->endpoint, sizeof(e->endpoint), "%s", endpoint ? endpoint : "");
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
}

int ar_etcd_grpc_errno(int grpc_code, const char *msg)
{
    switch (grpc_code) {
    case 1:
        return -ECANCELED;
    case 2:
        return strstr(msg, "deadline exceeded") ? -ETIMEDOUT : -EPROTO;
    case 3:
        return -EINVAL;
    case 4:
        return -ETIMEDOUT;
    case 5:
        return -ENOENT;
    case 7:
    case 16:
        return -EACCES;
    case 8:
        return -ENOSPC;
    case 11:
        return -ERANGE;
    case 14:
        return strstr(msg, "timed out") ? -ETIMEDOUT : -EHOSTUNREACH;
    default:
        return -EPROTO;
    }
}

static int curl_errno(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
        return -ECONNREFUSED;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
        return -EACCES;
    case CURLE_FILESIZE_EXCEEDED:
        return -EMSGSIZE;
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
        return -ECONNRESET;
    default:
        return -EPROTO;
    }
}

/* Was the request certainly not processed by etcd? (safe to send elsewhere) */
static bool not_applied(CURLcode rc, const struct ar_etcd_error *e)
{
    if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
        rc == CURLE_SSL_CONNECT_ERROR)
        return true;
    return e->grpc_code == 14 && !strcmp(e->msg, "etcdserver: no leader");
}

/* A gRPC call answered in HTTP/1.1, or not at all: say what may be wrong. */
#define GRPC_HINT " (a gRPC call: behind an HTTP/1.1-only proxy set etcd.jsonGateway)"

int ar_etcd_xfer_error(struct ar_xfer *x, CURLcode rc, long http, struct ar_etcd_error *e)
{
    const char *ep = x->c->endpoints[x->ep];
    json_t *root;
    json_error_t jerr;

    if (x->resp_too_big || rc == CURLE_FILESIZE_EXCEEDED) {
        ar_etcd_set_error(e, -EMSGSIZE, ep, "response larger than %u bytes", AR_ETCD_MAX_BODY);
        return e->code;
    }
    if (rc != CURLE_OK) {
        ar_etcd_set_error(
            e, curl_errno(rc), ep, "%s%s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc),
            x->grpc && (rc == CURLE_GOT_NOTHING || rc == CURLE_HTTP2 || rc == CURLE_HTTP2_STREAM)
                ? GRPC_HINT
                : "");
        return e->code;
    }
    if (http == 200) {
        memset(e, 0, sizeof(*e));
        return 0;
    }
    ar_etcd_set_error(e, -EPROTO, ep, "HTTP %ld", http);
    e->http_status = http;
    root = x->resp_len ? json_loadb(x->resp, x->resp_len, 0, &jerr) : NULL;
    if (root && ar_etcd_parse_error_json(root, e, http)) {
        json_decref(root);
        return e->code;
    }
    json_decref(root);
    if (x->resp_len) { /* plain text: 404 page not found, 405, CommonName ... */
        size_t n = x->resp_len;

        while (n && (x->resp[n - 1] == '\n' || x->resp[n - 1] == '\r'))
            n--;
        snprintf(e->msg, sizeof(e->msg), "HTTP %ld: %.*s", http, (int)(n > 200 ? 200 : n), x->resp);
    }
    if (http == 401 || http == 403 || strstr(e->msg, "CommonName"))
        e->code = -EACCES;
    else if (http == 503)
        e->code = -EHOSTUNREACH;
    return e->code;
}

/* --- libcurl multi on libuv ---------------------------------------------------------------- */

struct sockctx {
    uv_poll_t poll;
    curl_socket_t fd;
    struct ar_etcd *c;
    CURL *e;     /* the transfer that last told what it waits for on this socket */
    int want;    /* UV_READABLE | UV_WRITABLE, as libcurl asked */
    bool parked; /* writable not watched until something comes in (on_poll says why) */
    bool removed;
    struct ar_link plink; /* in c->parked while parked */
};

static void on_poll(uv_poll_t *p, int status, int events);
static void on_timeout(uv_timer_t *t);

/* A parked socket is watched for writable again after this at the latest (on_poll). */
#define PARK_MAX_MS 20

static void unpark(struct sockctx *ctx)
{
    if (!ctx->parked)
        return;
    ctx->parked = false;
    ar_link_del(&ctx->plink);
    if (!ctx->removed)
        uv_poll_start(&ctx->poll, ctx->want, on_poll);
}

static void process_dirty(struct ar_etcd *c)
{
    while (ar_link_linked(&c->dirty)) {
        struct ar_link *l = c->dirty.next;
        struct ar_xfer *x = AR_CONTAINER(l, struct ar_xfer, dirty);

        ar_link_del(l);
        x->on_process(x);
    }
}

/*
 * libcurl 7.88 (Debian 12) hands an HTTP/2 stream at most its buffer (16 KiB) per run, and
 * runs the stream again only on new activity on its socket or on one of its timers. When the
 * rest of the answer (or its trailers: the gRPC status) was already read off the socket, no
 * new activity comes: the call then waits for its next timer (the 200 ms happy-eyeballs one),
 * and a range answer over 16 KiB took 200 ms instead of 1-70 (seen with strace on a keys-only
 * range of 500 keys; bench_reencrypt's verify-rate went from about 17,000 to 37,000
 * objects/s). So a gRPC transfer that took data or headers in a run is run again: resuming a
 * paused side makes curl_easy_pause set a run-now timer and a receive check on the
 * transfer. Pausing only the send side (done by then) leaves the HTTP/2 receive window alone.
 * A run that takes nothing ends it. HTTP/1.1 transfers leave what they did not read in the
 * socket, which wakes them. Fuzzers and tests call the callbacks on inactive transfers: no
 * kick.
 */
static void kick_later(struct ar_xfer *x)
{
    if (x->grpc && x->active && !ar_link_linked(&x->kick))
        ar_link_add(&x->c->kick, &x->kick);
}

static void kick_grpc(struct ar_etcd *c)
{
    while (ar_link_linked(&c->kick)) {
        struct ar_xfer *x = AR_CONTAINER(c->kick.next, struct ar_xfer, kick);

        ar_link_del(&x->kick);
        if (x->active) {
            curl_easy_pause(x->h, CURLPAUSE_SEND);
            curl_easy_pause(x->h, CURLPAUSE_CONT);
        }
    }
}

static void check_multi(struct ar_etcd *c)
{
    CURLMsg *m;
    int pending;

    while ((m = curl_multi_info_read(c->multi, &pending))) {
        struct ar_xfer *x = NULL;
        CURLcode rc;
        long http = 0;

        if (m->msg != CURLMSG_DONE)
            continue;
        rc = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &http);
        ar_xfer_stop(x);
        x->on_done(x, rc, http);
    }
    kick_grpc(c);
    process_dirty(c);
}

/* Bytes of its request body a gRPC transfer under way handed to libcurl, -1: not such a
 * transfer, or nothing (the connection is new: what comes first is libcurl's) or all of it
 * sent. e is the handle libcurl last named for the socket: libcurl tells the socket's removal
 * (socket_cb) when a handle leaves the multi, before ar_xfer_stop pools it. */
static curl_off_t grpc_body_sent(CURL *e)
{
    struct ar_xfer *x = NULL;
    curl_off_t n = -1;

    if (!e || curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&x) != CURLE_OK || !x || !x->grpc ||
        !x->active || x->h != e || curl_easy_getinfo(e, CURLINFO_SIZE_UPLOAD_T, &n) != CURLE_OK)
        return -1;
    return n > 0 && (size_t)n < x->body_len ? n : -1;
}

/* Whether fd's send buffer has room now. */
static bool fd_writable(curl_socket_t fd)
{
    struct pollfd pf = {.fd = fd, .events = POLLOUT};

    return poll(&pf, 1, 0) == 1 && (pf.revents & POLLOUT);
}

/*
 * libcurl 7.88 (Debian 12) asks for writable while an HTTP/2 request body waits for the
 * server's flow-control window (64 KiB a stream on etcd's gRPC port: every txn of 128 values
 * stops twice), and sends nothing on it: the loop woke for a writable socket about 1,000 times a
 * txn, which cost the re-encrypt pass half its CPU (bench_reencrypt: 800,000 wakeups a pass,
 * client CPU 3.2 s, 1.6 s with this). So a writable event on which a gRPC transfer that has
 * sent part of its body sends no more of it, while the socket still has room to send, parks the
 * socket: it is watched for reading only. What moves the window (a WINDOW_UPDATE) arrives as
 * something to read; the next event on the socket unparks it and lets libcurl send as well.
 * libcurl telling what it waits for unparks it too. A socket whose send buffer is full is not
 * parked (libcurl holds part of a frame: writable is what it needs). And as libcurl also reads
 * and sends in runs driven by its timers, which this does not see, every parked socket is
 * unparked after each such run and after PARK_MAX_MS at the latest (timer_cb, on_timeout): at
 * worst a transfer waits that long, never for ever.
 */
static void on_poll(uv_poll_t *p, int status, int events)
{
    struct sockctx *ctx = p->data;
    struct ar_etcd *c = ctx->c;
    CURL *e = ctx->e;
    curl_off_t sent0 = -1;
    int flags = 0, running;

    c->sock_events++;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    if (ctx->parked) {
        unpark(ctx);
        if (!(flags & CURL_CSELECT_ERR))
            flags |= CURL_CSELECT_OUT;
    }
    if (flags == CURL_CSELECT_OUT)
        sent0 = grpc_body_sent(e);
    curl_multi_socket_action(c->multi, ctx->fd, flags, &running);
    if (sent0 > 0 && !ctx->removed && !c->closing && ctx->e == e && (ctx->want & UV_WRITABLE) &&
        grpc_body_sent(e) == sent0 && fd_writable(ctx->fd)) {
        ctx->parked = true;
        ar_link_add(&c->parked, &ctx->plink);
        c->sock_parks++;
        uv_poll_start(&ctx->poll, ctx->want & ~UV_WRITABLE, on_poll);
        if (!uv_is_active((uv_handle_t *)&c->timer) || uv_timer_get_due_in(&c->timer) > PARK_MAX_MS)
            uv_timer_start(&c->timer, on_timeout, PARK_MAX_MS, 0);
    }
    check_multi(c);
}

/* libcurl's timer (or PARK_MAX_MS with a socket parked): libcurl's timers run (early is
 * harmless: it runs what is due), and then every parked socket is watched for writable again. */
static void on_timeout(uv_timer_t *t)
{
    struct ar_etcd *c = t->data;
    int running;

    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    while (ar_link_linked(&c->parked))
        unpark(AR_CONTAINER(c->parked.next, struct sockctx, plink));
    check_multi(c);
}

static void free_ctx(uv_handle_t *h)
{
    free(h->data);
}

static int socket_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct ar_etcd *c = userp;
    struct sockctx *ctx = socketp;
    int events = 0;

    if (what == CURL_POLL_REMOVE) {
        if (ctx) {
            ctx->removed = true;
            unpark(ctx);
            uv_poll_stop(&ctx->poll);
            uv_close((uv_handle_t *)&ctx->poll, free_ctx);
            curl_multi_assign(c->multi, s, NULL);
        }
        return 0;
    }
    if (!ctx) {
        if (c->closing)
            return 0;
        ctx = calloc(1, sizeof(*ctx));
        if (!ctx)
            return -1;
        if (uv_poll_init_socket(c->loop, &ctx->poll, s) < 0) {
            free(ctx);
            return -1;
        }
        ctx->fd = s;
        ctx->c = c;
        ctx->poll.data = ctx;
        ar_link_init(&ctx->plink);
        curl_multi_assign(c->multi, s, ctx);
    }
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    ctx->e = e;
    ctx->want = events;
    if (ctx->parked) {
        ctx->parked = false;
        ar_link_del(&ctx->plink);
    }
    uv_poll_start(&ctx->poll, events, on_poll);
    return 0;
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp)
{
    struct ar_etcd *c = userp;

    (void)m;
    if (ar_link_linked(&c->parked) && (timeout_ms < 0 || timeout_ms > PARK_MAX_MS))
        timeout_ms = PARK_MAX_MS; /* on_poll */
    if (timeout_ms < 0)
        uv_timer_stop(&c->timer);
    else if (!c->closing)
        uv_timer_start(&c->timer, on_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

/* --- transfers ---------------------------------------------------------------------------- */

static size_t write_cb(char *p, size_t size, size_t nmemb, void *ud)
{
    struct ar_xfer *x = ud;
    size_t n = size * nmemb;

    if (x->on_data)
        return x->on_data(x, p, n) < 0 ? CURL_WRITEFUNC_ERROR : n;
    if (x->resp_len + n + 1 > x->resp_cap) {
        size_t cap = x->resp_cap ? x->resp_cap : 1024;
        char *np;

        if (x->grpc && x->resp_len < 5 && x->resp_len + n >= 5) {
            /* a gRPC answer says its length first: one buffer of the right size, not a
             * doubling series of copies (each wiped) */
            uint8_t h[5];
            size_t want;

            if (x->resp_len)
                memcpy(h, x->resp, x->resp_len);
            memcpy(h + x->resp_len, p, 5 - x->resp_len);
            want = 5 + ((size_t)h[1] << 24 | (size_t)h[2] << 16 | (size_t)h[3] << 8 | h[4]) + 1;
            if (want > cap && want <= (size_t)AR_ETCD_MAX_BODY + 1)
                cap = want;
        }
        while (cap < x->resp_len + n + 1)
            cap *= 2;
        if (cap > (size_t)AR_ETCD_MAX_BODY + 1) {
            x->resp_too_big = true;
            return CURL_WRITEFUNC_ERROR;
        }
        np = malloc(cap);
        if (!np)
            return CURL_WRITEFUNC_ERROR;
        if (x->resp) {
            memcpy(np, x->resp, x->resp_len);
            sodium_memzero(x->resp, x->resp_hw);
            free(x->resp);
        }
        x->resp = np;
        x->resp_cap = cap;
        x->resp_hw = x->resp_len;
    }
    memcpy(x->resp + x->resp_len, p, n);
    x->resp_len += n;
    x->resp[x->resp_len] = 0;
    if (x->resp_len + 1 > x->resp_hw)
        x->resp_hw = x->resp_len + 1;
    kick_later(x);
    return n;
}

static struct ar_token *token_get(struct ar_token *t)
{
    if (t)
        t->refs++;
    return t;
}

static void token_put(struct ar_token *t)
{
    if (t && !--t->refs)
        sodium_free(t); /* wipes */
}

#define GRPC_TOKEN_HDR     "token: "
#define GRPC_TOKEN_HDR_LEN (sizeof(GRPC_TOKEN_HDR) - 1)

static struct ar_token *token_new(const char *s)
{
    size_t n = strlen(s);
    /* sodium_malloc ends the block at a page end: a size in 16s keeps the struct aligned */
    size_t size =
        (sizeof(struct ar_token) + AR_TOKEN_HDR_LEN + GRPC_TOKEN_HDR_LEN + 2 * (n + 1) + 15) &
        ~(size_t)15;
    struct ar_token *t = sodium_malloc(size);

    if (!t)
        return NULL;
    t->refs = 1;
    t->len = AR_TOKEN_HDR_LEN + n;
    memcpy(t->line, AR_TOKEN_HDR, AR_TOKEN_HDR_LEN);
    memcpy(t->line + AR_TOKEN_HDR_LEN, s, n + 1);
    t->grpc_line = t->line + t->len + 1;
    memcpy(t->grpc_line, GRPC_TOKEN_HDR, GRPC_TOKEN_HDR_LEN);
    memcpy(t->grpc_line + GRPC_TOKEN_HDR_LEN, s, n + 1);
    return t;
}

static CURL *pool_get(struct ar_etcd *c)
{
    if (c->n_pool) {
        CURL *h = c->pool[--c->n_pool];

        curl_easy_reset(h);
        return h;
    }
    return curl_easy_init();
}

static void pool_put(struct ar_etcd *c, CURL *h)
{
    if (!c->closing && c->n_pool < sizeof(c->pool) / sizeof(c->pool[0]))
        c->pool[c->n_pool++] = h;
    else
        curl_easy_cleanup(h);
}

int ar_xfer_start(struct ar_etcd *c, struct ar_xfer *x, const char *path, bool has_leader,
                  long timeout_ms)
{
    char url[600];
    struct curl_slist *hn = x->hnode;
    size_t nh = 0;
    CURL *h;
    long conn_ms = (long)c->dial_timeout_ms;

    x->c = c;
    x->resp_len = 0;
    x->resp_too_big = false;
    x->errbuf[0] = 0;
    if (x->resp) {
        x->resp[0] = 0;
        if (!x->resp_hw)
            x->resp_hw = 1;
    }
    snprintf(url, sizeof(url), "%s%s", c->endpoints[x->ep], path);
    h = pool_get(c);
    if (!h)
        return -ENOMEM;
    /* the header list: nodes of our own (libcurl only reads them), the token's line in locked
     * memory; the transfer keeps its token referenced while libcurl may read it */
    token_put(x->tok);
    x->tok = token_get(c->token);
    x->grpc_status = -1;
    x->grpc_msg[0] = 0;
    if (x->grpc) {
        hn[nh++].data = (char *)"Content-Type: application/grpc";
        hn[nh++].data = (char *)"TE: trailers";
        if (has_leader)
            hn[nh++].data = (char *)"hasleader: true";
        if (x->tok)
            hn[nh++].data = x->tok->grpc_line;
    } else {
        hn[nh++].data = (char *)"Content-Type: application/json";
        hn[nh++].data = (char *)"Expect:";
        if (has_leader)
            hn[nh++].data = (char *)"Grpc-Metadata-Hasleader: true";
        if (x->tok)
            hn[nh++].data = x->tok->line;
    }
    for (size_t i = 0; i < nh; i++)
        hn[i].next = i + 1 < nh ? &hn[i + 1] : NULL;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PRIVATE, (char *)x);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hn);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, x->body ? x->body : "{}");
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(x->body ? x->body_len : 2));
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, x->errbuf);
    if (timeout_ms > 0 && timeout_ms < conn_ms)
        conn_ms = timeout_ms;
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, conn_ms);
    if (timeout_ms > 0)
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    if (x->stream) {
        curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    } else if (x->grpc) {
        /* h2c with prior knowledge on http:// (etcd's port tells gRPC from the gateway by the
         * HTTP/2 content type), ALPN on https://. libcurl 7.88 (Debian 12) cannot send a
         * second request on a prior-knowledge connection (curl #10634, fixed in 8.0): on
         * http:// each call has a connection of its own (about 0.1 ms on loopback) */
        if (strncmp(url, "https:", 6)) {
            curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
            curl_easy_setopt(h, CURLOPT_FORBID_REUSE, 1L);
            curl_easy_setopt(h, CURLOPT_FRESH_CONNECT, 1L);
        } else {
            curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
        }
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, ar_xfer_grpc_header);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, x);
        curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)AR_ETCD_MAX_BODY);
    } else {
        curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)AR_ETCD_MAX_BODY);
    }
    if (c->verbose) /* debugging aid: libcurl's trace on stderr */
        curl_easy_setopt(h, CURLOPT_VERBOSE, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 10L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 5L);
    curl_easy_setopt(h, CURLOPT_CA_CACHE_TIMEOUT, 60L);
    if (c->cacert)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->cacert);
    if (c->cert)
        curl_easy_setopt(h, CURLOPT_SSLCERT, c->cert);
    if (c->key)
        curl_easy_setopt(h, CURLOPT_SSLKEY, c->key);
    if (curl_multi_add_handle(c->multi, h) != CURLM_OK) {
        pool_put(c, h);
        return -ENOMEM;
    }
    x->h = h;
    x->active = true;
    return 0;
}

void ar_xfer_stop(struct ar_xfer *x)
{
    if (!x->active)
        return;
    x->active = false;
    ar_link_del(&x->kick);
    curl_multi_remove_handle(x->c->multi, x->h);
    curl_easy_setopt(x->h, CURLOPT_PRIVATE, NULL); /* no way back to x from the pool */
    pool_put(x->c, x->h);
    x->h = NULL;
}

void ar_xfer_release(struct ar_xfer *x)
{
    ar_xfer_stop(x);
    ar_link_del(&x->dirty);
    token_put(x->tok);
    x->tok = NULL;
    if (x->body && x->body_locked) {
        sodium_free(x->body); /* wipes */
    } else if (x->body) {
        sodium_memzero(x->body, x->body_len);
        free(x->body);
    }
    x->body = NULL;
    x->body_locked = false;
    if (x->resp) {
        sodium_memzero(x->resp, x->resp_hw);
        free(x->resp);
        x->resp = NULL;
    }
    x->resp_cap = x->resp_len = x->resp_hw = 0;
}

void ar_xfer_mark_dirty(struct ar_xfer *x)
{
    if (!ar_link_linked(&x->dirty))
        ar_link_add(&x->c->dirty, &x->dirty);
}

/* --- unary requests ----------------------------------------------------------------------- */

struct req {
    struct ar_xfer x;
    struct ar_auth_wait aw;
    struct ar_link link;
    struct ar_etcd *c;
    const char *path;
    enum ar_etcd_op_type type;
    bool idempotent, has_leader, is_auth, auth_retried, grant, txn;
    bool submitting; /* in the call that made it: a failure is reported from the loop */
    ar_etcd_cb cb;
    void *arg;
    uint64_t deadline;
    unsigned attempts;
    uv_timer_t *backoff;
    struct ar_etcd_error last_err, etcd_err;
    bool have_etcd_err;
};

static void req_attempt(struct req *r);

static void close_free(uv_handle_t *h)
{
    free(h);
}

static void req_free(struct req *r)
{
    ar_link_del(&r->link);
    ar_link_del(&r->aw.link);
    ar_xfer_release(&r->x);
    if (r->backoff)
        uv_close((uv_handle_t *)r->backoff, close_free);
    free(r);
}

static void req_finish(struct req *r, int status, struct ar_etcd_result *res,
                       const struct ar_etcd_error *err)
{
    ar_link_del(&r->link);
    ar_xfer_stop(&r->x);
    if (r->cb)
        r->cb(r->arg, status, status < 0 ? NULL : res, status < 0 ? err : NULL);
    if (res && !ar_result_box_of(res)->kept)
        ar_etcd_result_free(res);
    req_free(r);
}

static void on_deferred_fail(uv_timer_t *t)
{
    struct req *r = t->data;

    req_finish(r, r->last_err.code, NULL, &r->last_err);
}

static void req_fail(struct req *r, int status, const struct ar_etcd_error *err)
{
    struct ar_etcd_error e;

    if (!err || !err->code) {
        ar_etcd_set_error(&e, status, r->c->endpoints[r->x.ep], "%s", strerror(-status));
        err = &e;
    }
    if (r->submitting) { /* inside the call that made it: the callback comes later (etcd.h) */
        r->last_err = *err;
        r->last_err.code = status;
        if (!r->backoff && (r->backoff = malloc(sizeof(*r->backoff)))) {
            uv_timer_init(r->c->loop, r->backoff);
            r->backoff->data = r;
        }
        if (r->backoff) {
            uv_timer_start(r->backoff, on_deferred_fail, 0, 0);
            return;
        }
    }
    req_finish(r, status, NULL, err);
}

static void on_backoff(uv_timer_t *t)
{
    req_attempt(t->data);
}

static uint64_t min_retry_ms(const struct ar_etcd *c)
{
    return c->req_timeout_ms / 10 < MIN_RETRY_MS ? c->req_timeout_ms / 10 : MIN_RETRY_MS;
}

static void req_retry_or_fail(struct req *r, CURLcode rc, const struct ar_etcd_error *err)
{
    struct ar_etcd *c = r->c;
    uint64_t now = ar_etcd_now_ms(), delay;
    bool retry;

    r->last_err = *err;
    if (err->http_status) {
        r->etcd_err = *err;
        r->have_etcd_err = true;
    }
    retry = not_applied(rc, err);
    if (!retry && r->idempotent)
        retry = rc != CURLE_OK || err->http_status == 503 || err->grpc_code == 14 ||
                (err->grpc_code == 2 && err->code == -ETIMEDOUT);
    if (err->code == -EMSGSIZE || err->code == -ENOMEM)
        retry = false;
    if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CERTPROBLEM ||
        rc == CURLE_SSL_CACERT_BADFILE)
        retry = false; /* configuration error: report it now, not a timeout later */
    if (!retry || c->closing || r->attempts >= MAX_ATTEMPTS ||
        now + min_retry_ms(c) >= r->deadline) {
        req_fail(r, r->have_etcd_err ? r->etcd_err.code : err->code,
                 r->have_etcd_err ? &r->etcd_err : err);
        return;
    }
    /* next endpoint; back off once every endpoint was tried, and leave the retry its minimum */
    if (c->n_ep > 1) {
        r->x.ep = (r->x.ep + 1) % c->n_ep;
        c->cur_ep = r->x.ep;
    }
    delay = (c->n_ep > 1 && r->attempts % c->n_ep)
                ? 0
                : 50u << (r->attempts / c->n_ep > 3 ? 3 : r->attempts / c->n_ep);
    if (delay > r->deadline - now - min_retry_ms(c))
        delay = r->deadline - now - min_retry_ms(c);
    if (!r->backoff) {
        r->backoff = malloc(sizeof(*r->backoff));
        if (!r->backoff) {
            req_fail(r, -ENOMEM, NULL);
            return;
        }
        uv_timer_init(c->loop, r->backoff);
        r->backoff->data = r;
    }
    uv_timer_start(r->backoff, on_backoff, delay, 0);
}

static void req_done(struct ar_xfer *x, CURLcode rc, long http)
{
    struct req *r = AR_CONTAINER(x, struct req, x);
    struct ar_etcd *c = r->c;
    struct ar_etcd_error err;
    struct ar_etcd_result *res = NULL;
    int st;

    st = ar_etcd_xfer_error(x, rc, http, &err);
    if (st == 0 && x->grpc) {
        st = ar_etcd_decode_grpc(x, r->type, r->txn, &res, &err);
        if (st < 0 && !err.grpc_code) { /* malformed, or no memory */
            req_fail(r, st, &err);
            return;
        }
    }
    if (st < 0) {
        if (err.grpc_code == 16 && c->username && !r->is_auth && !r->auth_retried) {
            r->auth_retried = true;
            ar_etcd_auth_invalidate(c, x->tok);
            ar_etcd_auth_wait(c, &r->aw);
            return;
        }
        req_retry_or_fail(r, rc, &err);
        return;
    }
    c->cur_ep = x->ep;
    if (!x->grpc)
        st = ar_etcd_decode_result(x, r->type, &res, &err);
    if (st < 0) {
        req_fail(r, st, &err);
        return;
    }
    if (r->grant && (res->lease_id == 0 || res->ttl <= 0)) {
        /* a deadline computed from it would be wrong (or wrap): callers must never use it */
        ar_etcd_set_error(&err, -EPROTO, c->endpoints[x->ep],
                          "malformed response: lease grant with ID %" PRId64 " and TTL %" PRId64,
                          res->lease_id, res->ttl);
        ar_etcd_result_free(res);
        req_fail(r, -EPROTO, &err);
        return;
    }
    req_finish(r, 0, res, NULL);
}

int ar_etcd_decode_result(const struct ar_xfer *x, enum ar_etcd_op_type type,
                          struct ar_etcd_result **out, struct ar_etcd_error *err)
{
    struct ar_etcd *c = x->c;
    struct ar_result_box *box;
    json_t *root, *tok;
    json_error_t jerr;
    int st;

    *out = NULL;
    root = json_loadb(x->resp ? x->resp : "", x->resp_len, 0, &jerr);
    box = calloc(1, sizeof(*box));
    if (!root || !box) {
        ar_etcd_set_error(err, -EPROTO, c->endpoints[x->ep], "malformed response: %s",
                          root ? "no memory" : jerr.text);
        json_decref(root);
        free(box);
        return err->code;
    }
    box->owner = c;
    st = ar_parse_result(c, root, type, &box->pub);
    tok = json_object_get(root, "token");
    if (json_is_string(tok)) /* jansson's copy of an auth token (the lexer's is out of reach) */
        sodium_memzero((char *)json_string_value(tok), json_string_length(tok));
    json_decref(root);
    if (st < 0) {
        ar_etcd_result_free(&box->pub);
        ar_etcd_set_error(err, st, c->endpoints[x->ep], "malformed response (%s)", strerror(-st));
        return st;
    }
    *out = &box->pub;
    return 0;
}

static unsigned hex_val(char c)
{
    return c <= '9' ? (unsigned)(c - '0') : (unsigned)(tolower((unsigned char)c) - 'a' + 10);
}

/* s need not be NUL-terminated: nothing past s[n - 1] is read (sscanf would scan on) */
void ar_grpc_msg_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;

    for (size_t i = 0; i < n && o + 1 < cap; i++) {
        if (s[i] == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) &&
            isxdigit((unsigned char)s[i + 2])) {
            unsigned v = hex_val(s[i + 1]) << 4 | hex_val(s[i + 2]);

            out[o++] = v >= 0x20 && v != 0x7f ? (char)v : '?';
            i += 2;
        } else {
            out[o++] = (unsigned char)s[i] >= 0x20 && s[i] != 0x7f ? s[i] : '?';
        }
    }
    if (cap)
        out[o] = 0;
}

/* Header lines and trailers alike: "grpc-status: 0", "grpc-message: ..." (any case). */
size_t ar_xfer_grpc_header(char *p, size_t size, size_t n, void *ud)
{
    struct ar_xfer *x = ud;
    size_t len = size * n;
    static const char st[] = "grpc-status:", msg[] = "grpc-message:";

    while (len && (p[len - 1] == '\n' || p[len - 1] == '\r'))
        len--;
    if (len > sizeof(st) - 1 && !strncasecmp(p, st, sizeof(st) - 1)) {
        const char *v = p + sizeof(st) - 1;
        const char *e = p + len;
        int code = 0;

        while (v < e && *v == ' ')
            v++;
        if (v == e || e - v > 2)
            code = 1000; /* not a status: malformed */
        for (; v < e && code < 1000; v++)
            code = *v >= '0' && *v <= '9' ? code * 10 + (*v - '0') : 1000;
        x->grpc_status = code;
    } else if (len >= sizeof(msg) - 1 && !strncasecmp(p, msg, sizeof(msg) - 1)) {
        const char *v = p + sizeof(msg) - 1;

        while (v < p + len && *v == ' ')
            v++;
        ar_grpc_msg_decode(v, (size_t)(p + len - v), x->grpc_msg, sizeof(x->grpc_msg));
    }
    kick_later(x);
    return size * n;
}

int ar_etcd_decode_grpc(const struct ar_xfer *x, enum ar_etcd_op_type type, bool txn,
                        struct ar_etcd_result **out, struct ar_etcd_error *err)
{
    struct ar_etcd *c = x->c;
    const char *ep = c->endpoints[x->ep];
    struct ar_result_box *box;
    const uint8_t *msg = NULL;
    size_t len = 0;
    int st;

    *out = NULL;
    if (x->grpc_status < 0 || x->grpc_status > 16) {
        ar_etcd_set_error(err, -EPROTO, ep, "malformed response: %s",
                          x->grpc_status < 0 ? "no grpc-status" : "bad grpc-status");
        return err->code;
    }
    if (x->grpc_status) {
        ar_etcd_set_error(err, ar_etcd_grpc_errno(x->grpc_status, x->grpc_msg), ep, "%s",
                          x->grpc_msg[0] ? x->grpc_msg : "gRPC error");
        err->grpc_code = x->grpc_status;
        err->http_status = 200;
        return err->code;
    }
    if (ar_pb_unframe((const uint8_t *)(x->resp ? x->resp : ""), x->resp_len, &msg, &len) < 0) {
        ar_etcd_set_error(err, -EPROTO, ep, "malformed response: not one gRPC message");
        return err->code;
    }
    box = calloc(1, sizeof(*box));
    if (!box) {
        ar_etcd_set_error(err, -ENOMEM, ep, "no memory");
        return err->code;
    }
    box->owner = c;
    st = ar_pb_parse_result(c, msg, len, type, txn, &box->pub);
    if (st < 0) {
        ar_etcd_result_free(&box->pub);
        ar_etcd_set_error(err, st, ep, "malformed response (%s)", strerror(-st));
        return st;
    }
    *out = &box->pub;
    return 0;
}

/*
 * How long one attempt may take. A write gets the whole budget (it is never sent twice after a
 * timeout). A read with other endpoints to try gets a share, at least 1 s, so that a member
 * that accepts connections but never answers (stopped, overloaded, cut off) does not eat the
 * whole budget: the read moves on to the next endpoint in time.
 */
static uint64_t attempt_ms(const struct req *r, uint64_t now)
{
    uint64_t left = r->deadline - now, share = r->c->req_timeout_ms / r->c->n_ep;

    if (!r->idempotent || r->c->n_ep < 2)
        return left;
    if (share < 1000)
        share = 1000;
    return share < left ? share : left;
}

static void req_attempt(struct req *r)
{
    struct ar_etcd *c = r->c;
    uint64_t now = ar_etcd_now_ms();
    int rc;

    if (now >= r->deadline) {
        if (r->attempts) {
            req_fail(r, r->have_etcd_err ? r->etcd_err.code : r->last_err.code,
                     r->have_etcd_err ? &r->etcd_err : &r->last_err);
        } else {
            struct ar_etcd_error e;

            ar_etcd_set_error(&e, -ETIMEDOUT, c->endpoints[r->x.ep], "request timed out");
            req_fail(r, -ETIMEDOUT, &e);
        }
        return;
    }
    r->attempts++;
    rc = ar_xfer_start(c, &r->x, r->path, r->has_leader, (long)attempt_ms(r, now));
    if (rc < 0)
        req_fail(r, rc, NULL);
}

static void req_auth_resume(struct ar_auth_wait *w, int status, const struct ar_etcd_error *err)
{
    struct req *r = AR_CONTAINER(w, struct req, aw);

    if (status < 0)
        req_fail(r, status, err);
    else
        req_attempt(r);
}

/* body (len bytes, NUL-terminated) becomes the request's, also on failure (locked: it was
 * sodium_malloc'd) */
static struct req *req_new(struct ar_etcd *c, const char *path, enum ar_etcd_op_type type,
                           char *body, size_t len, bool locked, ar_etcd_cb cb, void *arg)
{
    struct req *r = calloc(1, sizeof(*r));

    if (!r) {
        if (locked) {
            sodium_free(body);
        } else if (body) {
            sodium_memzero(body, len);
            free(body);
        }
        return NULL;
    }
    r->c = c;
    r->path = path;
    r->type = type;
    r->cb = cb;
    r->arg = arg;
    r->has_leader = true;
    r->x.c = c;
    r->x.ep = c->cur_ep;
    r->x.on_done = req_done;
    ar_link_init(&r->link);
    ar_link_init(&r->aw.link);
    ar_link_init(&r->x.dirty);
    r->aw.resume = req_auth_resume;
    r->x.body = body;
    r->x.body_len = len;
    r->x.body_locked = locked;
    return r;
}

static void req_submit(struct req *r)
{
    struct ar_etcd *c = r->c;

    ar_link_add(&c->reqs, &r->link);
    r->deadline = ar_etcd_now_ms() + c->req_timeout_ms;
    if (r->is_auth)
        req_attempt(r);
    else
        ar_etcd_auth_wait(c, &r->aw);
}

#define IDEMPOTENT 1u  /* may be sent again after a timeout or a broken connection */
#define HAS_LEADER 2u  /* Grpc-Metadata-Hasleader: fail at once on a member without quorum */
#define GRANT      4u  /* a lease grant: the answer must carry an ID and a TTL > 0 */
#define GRPC       8u  /* body is a gRPC message for path (etcdserverpb.KV) */
#define TXN        16u /* the answer is a TxnResponse */

/* A request with its body (malloc'd, NUL-terminated, taken in every case). */
static int submit_body(struct ar_etcd *c, const char *path, enum ar_etcd_op_type type, char *body,
                       size_t len, unsigned flags, ar_etcd_cb cb, void *arg)
{
    struct req *r;

    if (c->closing) {
        sodium_memzero(body, len);
        free(body);
        return -ESHUTDOWN;
    }
    r = req_new(c, path, type, body, len, false, cb, arg);
    if (!r)
        return -ENOMEM;
    r->idempotent = flags & IDEMPOTENT;
    r->has_leader = flags & HAS_LEADER;
    r->grant = flags & GRANT;
    r->txn = flags & TXN;
    r->x.grpc = flags & GRPC;
    r->submitting = true;
    req_submit(r); /* r lives on: a failure in here is reported from the loop */
    r->submitting = false;
    return 0;
}

/* The body in b is consumed in every case. */
static int submit(struct ar_etcd *c, const char *path, enum ar_etcd_op_type type, struct ar_jbuf *b,
                  unsigned flags, ar_etcd_cb cb, void *arg)
{
    char *body;
    size_t len;
    int rc;

    if (b->err || c->closing) {
        rc = b->err ? b->err : -ESHUTDOWN;
        ar_jbuf_free(b);
        return rc;
    }
    if (!(body = ar_jbuf_take(b, &len, &rc)))
        return rc;
    return submit_body(c, path, type, body, len, flags, cb, arg);
}

/* --- auth --------------------------------------------------------------------------------- */

/*
 * Credentials in memory (S5). Ours: the password (c->password), the authenticate body (built
 * here, see auth_body), each token (struct ar_token, also the "Authorization:" header line the
 * transfers point libcurl at) and the result's token copy are sodium_malloc'd: locked, wiped by
 * sodium_free. The answer's body buffer (x->resp) is wiped when the request is released, and
 * jansson's string holding the token is wiped before the tree is freed.
 * Out of reach here (tests/unit/test_etcd_secrets.c checks the first on the heap):
 *   - libcurl copies a small POSTFIELDS body into its request buffer (after the headers) and
 *     frees it unwiped: the escaped password stays in freed heap until the memory is reused;
 *   - libcurl copies the Authorization header into every request buffer, likewise;
 *   - with TLS, OpenSSL's record buffers hold both on the way out and in.
 * The atrest binary covers the first two with a wiping libcurl allocator (curl_global_init_mem
 * in agent/main.c) and the third, when freed, with glibc's M_PERTURB (agent/daemon.c); a
 * program linking this module alone does not (docs/DESIGN.md 6). jansson's copies
 * (the lexer's buffer, every string of a parsed answer: tokens, base64 values) are wiped by the
 * allocator hook below.
 */

/* jansson's free: wipe the whole block (malloc_usable_size covers what jansson wrote), then free.
 * Installed once per process by ar_etcd_new (see etcd.h). */
static void wiping_free(void *p)
{
    if (p) {
        sodium_memzero(p, malloc_usable_size(p));
        free(p);
    }
}

static void *wiping_realloc(void *p, size_t n)
{
    size_t old;
    void *q;

    if (!p)
        return malloc(n);
    old = malloc_usable_size(p);
    if (!(q = malloc(n ? n : 1)))
        return NULL;
    memcpy(q, p, old < n ? old : n);
    wiping_free(p);
    return q;
}

int ar_etcd_global_init(void)
{
    return curl_global_init_mem(CURL_GLOBAL_DEFAULT, malloc, wiping_free, wiping_realloc, strdup,
                                calloc) == CURLE_OK
               ? 0
               : -ENOMEM;
}

static pthread_once_t json_alloc_once = PTHREAD_ONCE_INIT;

static void install_json_alloc(void)
{
    json_set_alloc_funcs(malloc, wiping_free);
}

static void auth_done(void *arg, int status, const struct ar_etcd_result *res,
                      const struct ar_etcd_error *err)
{
    struct ar_etcd *c = arg;
    struct ar_etcd_error e;

    c->authing = false;
    if (status < 0 && err && err->grpc_code == 3) { /* wrong user/password, auth disabled */
        e = *err;
        e.code = -EACCES;
        err = &e;
        status = -EACCES;
    }
    if (status == 0 && (!res->token || !*res->token)) {
        ar_etcd_set_error(&e, -EACCES, c->endpoints[c->cur_ep], "authenticate: no token");
        err = &e;
        status = -EACCES;
    }
    if (status == 0) {
        ar_etcd_auth_invalidate(c, c->token);
        c->token = token_new(res->token);
        if (!c->token) {
            status = -ENOMEM;
            ar_etcd_set_error(&e, -ENOMEM, "", "no memory");
            err = &e;
        }
    }
    while (ar_link_linked(&c->auth_waiters)) {
        struct ar_link *l = c->auth_waiters.next;
        struct ar_auth_wait *w = AR_CONTAINER(l, struct ar_auth_wait, link);

        ar_link_del(l);
        w->resume(w, status, err);
    }
}

/*
 * {"name":"<user>","password":"<password>"} built by hand in locked memory: the password never
 * passes through jansson or an ordinary heap buffer of ours. libcurl is handed this buffer as
 * CURLOPT_POSTFIELDS; it is wiped and freed (sodium_free) when the request is released.
 * NULL with *rc: -ENOMEM, or -EINVAL for a user or password that is not valid UTF-8.
 */
static char *auth_body(const struct ar_etcd *c, size_t *len, int *rc)
{
    static const char pre[] = "{\"name\":\"", mid[] = "\",\"password\":\"", post[] = "\"}";
    const char *pw = c->password ? c->password : "";
    size_t un = strlen(c->username), pn = strlen(pw);
    char *b = sodium_malloc(sizeof(pre) + sizeof(mid) + sizeof(post) + 6 * (un + pn));
    ssize_t n;
    size_t o = 0;

    *rc = -ENOMEM;
    if (!b)
        return NULL;
    memcpy(b, pre, sizeof(pre) - 1);
    o += sizeof(pre) - 1;
    if ((n = ar_json_escape(b + o, c->username, un)) < 0)
        goto fail;
    o += (size_t)n;
    memcpy(b + o, mid, sizeof(mid) - 1);
    o += sizeof(mid) - 1;
    if ((n = ar_json_escape(b + o, pw, pn)) < 0)
        goto fail;
    o += (size_t)n;
    memcpy(b + o, post, sizeof(post)); /* with the NUL */
    *len = o + sizeof(post) - 1;
    *rc = 0;
    return b;
fail:
    *rc = (int)n;
    sodium_free(b);
    return NULL;
}

void ar_etcd_auth_wait(struct ar_etcd *c, struct ar_auth_wait *w)
{
    struct req *r = NULL;
    char *body;
    size_t len = 0;
    int rc;

    if (!c->username || c->token) {
        w->resume(w, 0, NULL);
        return;
    }
    ar_link_add(&c->auth_waiters, &w->link);
    if (c->authing)
        return;
    body = auth_body(c, &len, &rc);
    if (body &&
        !(r = req_new(c, "/v3/auth/authenticate", AR_ETCD_RANGE, body, len, true, auth_done, c)))
        rc = -ENOMEM;
    if (!r) {
        struct ar_etcd_error e;

        if (rc == -EINVAL)
            ar_etcd_set_error(&e, -EINVAL, "",
                              "authenticate: user or password is not UTF-8 "
                              "text");
        else
            ar_etcd_set_error(&e, -ENOMEM, "", "no memory");
        auth_done(c, rc, NULL, &e);
        return;
    }
    c->authing = true;
    r->is_auth = true;
    r->idempotent = true;
    r->has_leader = false;
    req_submit(r);
}

void ar_etcd_auth_invalidate(struct ar_etcd *c, const struct ar_token *used)
{
    if (!c->token || c->token != used)
        return;
    token_put(c->token);
    c->token = NULL;
}

const char *ar_etcd_token(const struct ar_etcd *c)
{
    return c->token ? ar_token_str(c->token) : NULL;
}

/* --- client ------------------------------------------------------------------------------- */

static char *dup_opt(const char *s, bool *bad)
{
    char *d;

    if (!s || !*s)
        return NULL;
    d = strdup(s);
    if (!d)
        *bad = true;
    return d;
}

/* The copies ar_etcd_new made (the password wiped). */
static void free_settings(struct ar_etcd *c)
{
    for (size_t i = 0; i < c->n_ep; i++)
        free(c->endpoints[i]);
    free(c->cacert);
    free(c->cert);
    free(c->key);
    free(c->username);
    sodium_free(c->password); /* wipes; NULL is fine */
}

int ar_etcd_new(uv_loop_t *loop, const struct ar_etcd_settings *s, struct ar_etcd **out)
{
    struct ar_etcd *c;
    bool bad = false;

    if (out)
        *out = NULL;
    if (!out || !loop || !s || !s->n_endpoints || s->n_endpoints > AR_ETCD_MAX_ENDPOINTS)
        return -EINVAL;
    for (size_t i = 0; i < s->n_endpoints; i++) {
        const char *e = s->endpoints[i];

        if (!e || (strncmp(e, "http://", 7) && strncmp(e, "https://", 8)) || strlen(e) > 400)
            return -EINVAL;
    }
    if (sodium_init() < 0) /* the password and tokens live in sodium_malloc'd memory */
        return -EIO;
    pthread_once(&json_alloc_once, install_json_alloc);
    c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->loop = loop;
    ar_link_init(&c->auth_waiters);
    ar_link_init(&c->reqs);
    ar_link_init(&c->streams);
    ar_link_init(&c->dirty);
    ar_link_init(&c->kick);
    ar_link_init(&c->parked);
    for (size_t i = 0; i < s->n_endpoints; i++) {
        size_t n = strlen(s->endpoints[i]);

        c->endpoints[i] = strdup(s->endpoints[i]);
        if (!c->endpoints[i]) {
            bad = true;
            break;
        }
        c->n_ep++;
        if (n && c->endpoints[i][n - 1] == '/')
            c->endpoints[i][n - 1] = 0;
    }
    c->cacert = dup_opt(s->cacert, &bad);
    c->cert = dup_opt(s->cert, &bad);
    c->key = dup_opt(s->key, &bad);
    c->username = dup_opt(s->username, &bad);
    if (s->password && *s->password) { /* locked, never an ordinary heap copy */
        size_t n = strlen(s->password);

        if ((c->password = sodium_malloc(n + 1)))
            memcpy(c->password, s->password, n + 1);
        else
            bad = true;
    }
    c->verbose = getenv("ATREST_CURL_VERBOSE") != NULL;
    c->req_timeout_ms = s->request_timeout_ms ? s->request_timeout_ms : 5000;
    c->dial_timeout_ms = s->dial_timeout_ms ? s->dial_timeout_ms : 2000;
    c->watch_idle_ms = s->watch_idle_ms ? s->watch_idle_ms : 30000;
    c->kv_grpc = !s->kv_json;
    c->multi = curl_multi_init();
    if (bad || !c->multi)
        goto fail;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, 256L);
    /* no HTTP/2 multiplexing: each gRPC call in flight has a connection of its own (libcurl
     * 7.88 (Debian 12) fails requests put on an open HTTP/2 connection: "Error in the HTTP2
     * framing layer", curl #10634) */
    curl_multi_setopt(c->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING);
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    *out = c;
    return 0;
fail:
    if (c->multi)
        curl_multi_cleanup(c->multi);
    free_settings(c);
    free(c);
    return -ENOMEM;
}

static void free_client(uv_handle_t *h)
{
    free(h->data);
}

void ar_etcd_close(struct ar_etcd *c)
{
    struct ar_etcd_error e;

    if (!c)
        return;
    c->closing = true;
    ar_etcd_set_error(&e, -ECANCELED, "", "etcd client closed");
    /* streams first (their owners must not use them afterwards) */
    while (ar_link_linked(&c->streams)) {
        struct ar_link *l = c->streams.next;
        struct ar_stream *s = AR_CONTAINER(l, struct ar_stream, link);

        ar_link_del(l);
        s->destroy(s);
    }
    while (ar_link_linked(&c->reqs)) {
        struct req *r = AR_CONTAINER(c->reqs.next, struct req, link);

        req_fail(r, -ECANCELED, &e);
    }
    while (c->n_pool)
        curl_easy_cleanup(c->pool[--c->n_pool]);
    curl_multi_cleanup(c->multi);
    uv_timer_stop(&c->timer);
    free_settings(c);
    ar_etcd_auth_invalidate(c, c->token);
    uv_close((uv_handle_t *)&c->timer, free_client);
}

/* --- results ------------------------------------------------------------------------------ */

struct ar_etcd_result *ar_etcd_result_keep(const struct ar_etcd_result *res)
{
    struct ar_result_box *b;

    if (!res)
        return NULL;
    b = ar_result_box_of(res);
    b->kept = true;
    return &b->pub;
}

void ar_etcd_result_free(struct ar_etcd_result *res)
{
    struct ar_result_box *b;

    if (!res)
        return;
    b = ar_result_box_of(res);
    ar_result_clear(b->owner, &b->pub);
    free(b);
}

/* --- KV ----------------------------------------------------------------------------------- */

/* Room for an op's JSON: base64 of key, range_end, value and a little more. */
static size_t op_hint(const struct ar_etcd_op *op)
{
    return 160 + (op->key_len + op->range_end_len + op->value_len) / 3 * 4 + 12;
}

/* One KV operation as its own request. */
static int kv_submit(struct ar_etcd *c, const struct ar_etcd_op *op, enum ar_etcd_op_type type,
                     ar_etcd_cb cb, void *arg)
{
    static const char *const paths[] = {"/v3/kv/range", "/v3/kv/put", "/v3/kv/deleterange"};
    static const char *const gpaths[] = {"/etcdserverpb.KV/Range", "/etcdserverpb.KV/Put",
                                         "/etcdserverpb.KV/DeleteRange"};
    struct ar_etcd_op o = *op;
    unsigned flags = HAS_LEADER;
    struct ar_jbuf b;

    o.type = type;
    if (type == AR_ETCD_RANGE) /* reads are idempotent; a serializable one needs no leader */
        flags = IDEMPOTENT | (o.serializable ? 0 : HAS_LEADER);
    if (c->kv_grpc) {
        size_t len = 0;
        int rc;
        char *body = ar_pb_op(&o, &len, &rc);

        return body ? submit_body(c, gpaths[type], type, body, len, flags | GRPC, cb, arg) : rc;
    }
    ar_jbuf_init(&b, op_hint(&o));
    ar_jbuf_op(&b, &o);
    return submit(c, paths[type], type, &b, flags, cb, arg);
}

int ar_etcd_range(struct ar_etcd *c, const struct ar_etcd_op *op, ar_etcd_cb cb, void *arg)
{
    return kv_submit(c, op, AR_ETCD_RANGE, cb, arg);
}

int ar_etcd_put(struct ar_etcd *c, const struct ar_etcd_op *op, ar_etcd_cb cb, void *arg)
{
    return kv_submit(c, op, AR_ETCD_PUT, cb, arg);
}

int ar_etcd_delete(struct ar_etcd *c, const struct ar_etcd_op *op, ar_etcd_cb cb, void *arg)
{
    return kv_submit(c, op, AR_ETCD_DELETE, cb, arg);
}

static const char *const cmp_target[] = {"VERSION", "CREATE", "MOD", "VALUE"};
static const char *const cmp_result[] = {"EQUAL", "GREATER", "LESS", "NOT_EQUAL"};
static const char *const cmp_field[] = {"version", "create_revision", "mod_revision", "value"};

/* ,"name":[{"request_put":{...}},...] */
static void json_ops(struct ar_jbuf *b, const char *name, const struct ar_etcd_op *ops, size_t n)
{
    static const char *const names[] = {
        "{\"request_range\":", "{\"request_put\":", "{\"request_delete_range\":"};

    ar_jbuf_raw(b, ",\"", 2);
    ar_jbuf_lit(b, name);
    ar_jbuf_raw(b, "\":[", 3);
    for (size_t i = 0; i < n && !b->err; i++) {
        if ((unsigned)ops[i].type > AR_ETCD_DELETE) {
            b->err = -EINVAL;
            return;
        }
        if (i)
            ar_jbuf_raw(b, ",", 1);
        ar_jbuf_lit(b, names[ops[i].type]);
        ar_jbuf_op(b, &ops[i]);
        ar_jbuf_raw(b, "}", 1);
    }
    ar_jbuf_raw(b, "]", 1);
}

int ar_etcd_txn(struct ar_etcd *c, const struct ar_etcd_txn *t, ar_etcd_cb cb, void *arg)
{
    struct ar_jbuf b;
    size_t hint = 64;

    if (c->kv_grpc) {
        size_t len = 0;
        int rc;
        char *body = ar_pb_txn(t, &len, &rc);

        return body ? submit_body(c, "/etcdserverpb.KV/Txn", AR_ETCD_RANGE, body, len,
                                  HAS_LEADER | GRPC | TXN, cb, arg)
                    : rc;
    }

    for (size_t i = 0; i < t->n_compare; i++)
        hint += 96 + (t->compare[i].key_len + t->compare[i].value_len) / 3 * 4;
    for (size_t i = 0; i < t->n_success; i++)
        hint += 24 + op_hint(&t->success[i]);
    for (size_t i = 0; i < t->n_failure; i++)
        hint += 24 + op_hint(&t->failure[i]);
    ar_jbuf_init(&b, hint);
    ar_jbuf_lit(&b, "{\"compare\":[");
    for (size_t i = 0; i < t->n_compare && !b.err; i++) {
        const struct ar_etcd_compare *cp = &t->compare[i];

        if ((unsigned)cp->target > AR_ETCD_CMP_VALUE || (unsigned)cp->result > AR_ETCD_NOT_EQUAL ||
            !cp->key || !cp->key_len) {
            b.err = -EINVAL;
            break;
        }
        ar_jbuf_lit(&b, i ? ",{\"target\":\"" : "{\"target\":\"");
        ar_jbuf_lit(&b, cmp_target[cp->target]);
        ar_jbuf_lit(&b, "\",\"result\":\"");
        ar_jbuf_lit(&b, cmp_result[cp->result]);
        ar_jbuf_raw(&b, "\"", 1);
        ar_jbuf_b64(&b, "key", cp->key, cp->key_len);
        if (cp->target == AR_ETCD_CMP_VALUE)
            ar_jbuf_b64(&b, "value", cp->value, cp->value_len);
        else
            ar_jbuf_i64str(&b, cmp_field[cp->target], cp->number);
        ar_jbuf_raw(&b, "}", 1);
    }
    ar_jbuf_raw(&b, "]", 1);
    json_ops(&b, "success", t->success, t->n_success);
    json_ops(&b, "failure", t->failure, t->n_failure);
    ar_jbuf_raw(&b, "}", 1);
    return submit(c, "/v3/kv/txn", AR_ETCD_RANGE, &b, HAS_LEADER, cb, arg);
}

int ar_etcd_compact(struct ar_etcd *c, int64_t revision, ar_etcd_cb cb, void *arg)
{
    struct ar_jbuf b;

    ar_jbuf_init(&b, 64);
    ar_jbuf_raw(&b, "{", 1);
    ar_jbuf_i64str(&b, "revision", revision);
    ar_jbuf_true(&b, "physical");
    ar_jbuf_raw(&b, "}", 1);
    return submit(c, "/v3/kv/compaction", AR_ETCD_RANGE, &b, HAS_LEADER, cb, arg);
}

/* --- leases ------------------------------------------------------------------------------- */

/* {"<idname>":"<id>"} plus, when name2, ,"<name2>":"<v2>" */
static void id_body(struct ar_jbuf *b, const char *idname, int64_t id, const char *name2,
                    int64_t v2)
{
    ar_jbuf_init(b, 64);
    ar_jbuf_raw(b, "{", 1);
    ar_jbuf_i64str(b, idname, id);
    if (name2)
        ar_jbuf_i64str(b, name2, v2);
    ar_jbuf_raw(b, "}", 1);
}

int ar_etcd_lease_grant(struct ar_etcd *c, int64_t ttl_s, int64_t id, ar_etcd_cb cb, void *arg)
{
    struct ar_jbuf b;

    id_body(&b, "TTL", ttl_s, id ? "ID" : NULL, id);
    return submit(c, "/v3/lease/grant", AR_ETCD_RANGE, &b, IDEMPOTENT | HAS_LEADER | GRANT, cb,
                  arg);
}

int ar_etcd_lease_revoke(struct ar_etcd *c, int64_t id, ar_etcd_cb cb, void *arg)
{
    struct ar_jbuf b;

    id_body(&b, "ID", id, NULL, 0);
    return submit(c, "/v3/lease/revoke", AR_ETCD_RANGE, &b, IDEMPOTENT | HAS_LEADER, cb, arg);
}

int ar_etcd_lease_ttl(struct ar_etcd *c, int64_t id, ar_etcd_cb cb, void *arg)
{
    struct ar_jbuf b;

    id_body(&b, "ID", id, NULL, 0);
    return submit(c, "/v3/lease/timetolive", AR_ETCD_RANGE, &b, IDEMPOTENT | HAS_LEADER, cb, arg);
}

/* --- iteration ---------------------------------------------------------------------------- */

struct iter {
    struct ar_etcd *c;
    struct ar_etcd_op op;
    uint8_t *key, *end;
    ar_etcd_page_cb cb;
    void *arg;
};

static void iter_free(struct iter *it)
{
    free(it->key);
    free(it->end);
    free(it);
}

static void iter_page(void *arg, int status, const struct ar_etcd_result *res,
                      const struct ar_etcd_error *err)
{
    struct iter *it = arg;
    struct ar_etcd_error e;
    const struct ar_etcd_kv *last;
    uint8_t *nk;
    int rc;

    if (status < 0) {
        it->cb(it->arg, status, NULL, err);
        iter_free(it);
        return;
    }
    if (!it->op.revision)
        it->op.revision = res->revision;
    if (it->cb(it->arg, 0, res, NULL) || !res->more || !res->n_kvs) {
        iter_free(it);
        return;
    }
    last = &res->kvs[res->n_kvs - 1];
    nk = malloc(last->key_len + 1);
    if (!nk) {
        rc = -ENOMEM;
        goto fail;
    }
    memcpy(nk, last->key, last->key_len);
    nk[last->key_len] = 0; /* the next key after last */
    free(it->key);
    it->key = nk;
    it->op.key = nk;
    it->op.key_len = last->key_len + 1;
    if ((rc = ar_etcd_range(it->c, &it->op, iter_page, it)) == 0)
        return;
fail:
    ar_etcd_set_error(&e, rc, "", "iterate: %s", strerror(-rc));
    it->cb(it->arg, rc, NULL, &e);
    iter_free(it);
}

int ar_etcd_iterate(struct ar_etcd *c, const struct ar_etcd_op *op, ar_etcd_page_cb cb, void *arg)
{
    struct iter *it = calloc(1, sizeof(*it));
    int rc = -ENOMEM;

    if (!it)
        return -ENOMEM;
    it->c = c;
    it->op = *op;
    it->cb = cb;
    it->arg = arg;
    if (!op->key || !op->key_len) {
        rc = -EINVAL;
        goto fail;
    }
    it->key = malloc(op->key_len);
    if (!it->key)
        goto fail;
    memcpy(it->key, op->key, op->key_len);
    it->op.key = it->key;
    if (op->range_end) {
        it->end = malloc(op->range_end_len ? op->range_end_len : 1);
        if (!it->end)
            goto fail;
        memcpy(it->end, op->range_end, op->range_end_len);
        it->op.range_end = it->end;
    }
    if (!it->op.limit)
        it->op.limit = 500;
    it->op.count_only = false;
    if ((rc = ar_etcd_range(c, &it->op, iter_page, it)) < 0)
        goto fail;
    return 0;
fail:
    iter_free(it);
    return rc;
}
