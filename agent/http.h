/*
 * agent/http.h: the agent's small status server (/status, /metrics, /healthz, /readyz).
 *
 * Contract
 * - libmicrohttpd in external-epoll mode on the caller's libuv loop: no threads. MHD's epoll
 *   fd is watched with a uv_poll_t, MHD_get_timeout() drives a uv_timer_t, and MHD_run() runs
 *   after every event. Handlers therefore run on the loop thread and may read daemon state
 *   directly, without locks.
 * - Listens on a TCP address (numeric host, port 0 = pick a free port, see ar_http_port)
 *   and/or a unix socket path. The unix socket is created here with mode 0660; a stale socket
 *   file (nobody accepting on it) is removed first; a live one gives -EADDRINUSE and any other
 *   kind of file at that path gives -EEXIST (never deleted). The socket file is removed again
 *   by ar_http_close when it is still ours.
 * - HTTP/1.1 with keep-alive. Limits per server: connections (default 64), memory per
 *   connection 16 KiB (so a request head larger than that is refused), idle timeout 5 s.
 * - Only GET and HEAD; any other method gets 405 with "Allow: GET, HEAD". A path with no
 *   route gets 404. Routes match the path exactly (the query string is ignored).
 * - Every response carries Cache-Control: no-store and X-Content-Type-Options: nosniff. The
 *   body is copied into MHD (MHD_RESPMEM_MUST_COPY), so handlers may reuse their buffers.
 * - Shutdown: ar_http_close() stops and closes the uv handles and stops MHD; the struct is
 *   freed from the last close callback, so run the loop afterwards (uv_loop_close() then
 *   returns 0).
 * - Errors: 0 or negative errno; failures to start are also described in the err buffer.
 */
#ifndef ATREST_AGENT_HTTP_H
#define ATREST_AGENT_HTTP_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#define AR_HTTP_MAX_BODY (8u * 1024 * 1024)

struct ar_http_resp {
    int status;               /* default 200 */
    const char *content_type; /* a static string; default "text/plain; charset=utf-8" */
    char *body;               /* owned by the server; fill with the functions below */
    size_t len;
    size_t cap;
};

/* Append to the body. 0, -ENOMEM, or -EMSGSIZE past AR_HTTP_MAX_BODY. */
int ar_http_resp_append(struct ar_http_resp *r, const void *p, size_t n);
int ar_http_resp_printf(struct ar_http_resp *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A handler fills out (status, content type, body). It runs on the loop thread. When it
 * leaves status at 0 or >= 600 the client gets 500. */
typedef void (*ar_http_handler_fn)(void *arg, struct ar_http_resp *out);

struct ar_http_route {
    const char *path; /* e.g. "/status" */
    ar_http_handler_fn fn;
    void *arg;
};

struct ar_http_opts {
    const char *host;      /* numeric IPv4/IPv6 address, e.g. "127.0.0.1"; NULL: no TCP */
    uint16_t port;         /* 0: pick a free port */
    const char *unix_path; /* NULL: no unix socket */
    unsigned conn_limit;   /* per listener; 0: 64 */
    unsigned timeout_s;    /* idle connection timeout; 0: 5 */
    size_t mem_limit;      /* per connection; 0: 16 KiB */
    /* Optional: where libmicrohttpd's own error messages go (one line, no newline). */
    void (*log)(void *log_arg, const char *msg);
    void *log_arg;
};

struct ar_http;

/* Start serving routes[0..nroutes-1] (the array and its strings must outlive the server).
 * At least one of host and unix_path must be set. err (may be NULL) gets a one-line reason
 * on failure. */
int ar_http_start(uv_loop_t *loop, const struct ar_http_opts *opts,
                  const struct ar_http_route *routes, size_t nroutes, struct ar_http **out,
                  char *err, size_t errlen);

/* The TCP port actually bound (useful with port 0); 0 when not listening on TCP. */
uint16_t ar_http_port(const struct ar_http *h);

/* Stop accepting, drop connections, close the handles. Accepts NULL. The memory is freed once
 * the loop has run the close callbacks. */
void ar_http_close(struct ar_http *h);

#endif
