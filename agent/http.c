/* agent/http.c: libmicrohttpd in external-epoll mode on a libuv loop (see http.h). */
#include "agent/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <microhttpd.h>

#define DEFAULT_CONN_LIMIT 64u
#define DEFAULT_TIMEOUT_S  5u
#define DEFAULT_MEM_LIMIT  (16u * 1024u)
#define LISTEN_BACKLOG     64
#define MAX_GET_BODY       (64u * 1024u)
#define BACKSTOP_MS        1000u

struct listener {
    struct ar_http *h;
    struct MHD_Daemon *d;
    uv_poll_t poll;
    uv_timer_t timer;
    bool handles; /* poll and timer initialised */
};

struct ar_http {
    uv_loop_t *loop;
    const struct ar_http_route *routes;
    size_t nroutes;
    struct listener l[2];
    int nl;
    int closing; /* uv handles still to be closed */
    uint16_t port;
    char *unix_path; /* set when we created a socket file */
    dev_t unix_dev;
    ino_t unix_ino;
    void (*log)(void *log_arg, const char *msg);
    void *log_arg;
};

/* ---- response bodies ------------------------------------------------------------------- */

int ar_http_resp_append(struct ar_http_resp *r, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (r->len + n > AR_HTTP_MAX_BODY)
        return -EMSGSIZE;
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 1024;
        while (cap < r->len + n + 1)
            cap *= 2;
        char *nb = realloc(r->body, cap);
        if (!nb)
            return -ENOMEM;
        r->body = nb;
        r->cap = cap;
    }
    memcpy(r->body + r->len, p, n);
    r->len += n;
    r->body[r->len] = '\0';
    return 0;
}

int ar_http_resp_printf(struct ar_http_resp *r, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    if ((size_t)n < sizeof(small))
        return ar_http_resp_append(r, small, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big)
        return -ENOMEM;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = ar_http_resp_append(r, big, (size_t)n);
    free(big);
    return rc;
}

/* ---- MHD callbacks ---------------------------------------------------------------------- */

static enum MHD_Result send_resp(struct MHD_Connection *c, unsigned status, const char *ctype,
                                 const char *body, size_t len, bool allow)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return MHD_NO;
    enum MHD_Result rc = MHD_YES;
    if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype) != MHD_YES ||
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store") != MHD_YES ||
        MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff") != MHD_YES ||
        (allow && MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD") != MHD_YES))
        rc = MHD_NO;
    if (rc == MHD_YES)
        rc = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct ar_http *h = cls;
    static const char text[] = "text/plain; charset=utf-8";

    if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD)) {
        static const char msg[] = "method not allowed\n";
        return send_resp(c, MHD_HTTP_METHOD_NOT_ALLOWED, text, msg, sizeof(msg) - 1, true);
    }
    /* GET/HEAD: answer on the second call, once the head is complete. (A response queued on
     * the first call counts as "early" and makes libmicrohttpd close the connection, which
     * would defeat keep-alive.) A body on a GET is read and dropped, up to a cap. */
    uintptr_t seen = (uintptr_t)*con_cls;
    if (seen == 0) {
        *con_cls = (void *)(uintptr_t)1;
        return MHD_YES;
    }
    if (*upload_data_size) {
        seen += *upload_data_size;
        if (seen > MAX_GET_BODY)
            return MHD_NO; /* drop the connection */
        *con_cls = (void *)seen;
        *upload_data_size = 0;
        return MHD_YES;
    }
    const struct ar_http_route *rt = NULL;
    for (size_t i = 0; i < h->nroutes; i++) {
        if (!strcmp(url, h->routes[i].path)) {
            rt = &h->routes[i];
            break;
        }
    }
    if (!rt) {
        static const char msg[] = "not found\n";
        return send_resp(c, MHD_HTTP_NOT_FOUND, text, msg, sizeof(msg) - 1, false);
    }
    struct ar_http_resp r = {.status = 200, .content_type = text};
    rt->fn(rt->arg, &r);
    enum MHD_Result rc;
    if (r.status < 100 || r.status >= 600) {
        static const char msg[] = "internal error\n";
        rc = send_resp(c, MHD_HTTP_INTERNAL_SERVER_ERROR, text, msg, sizeof(msg) - 1, false);
    } else {
        rc = send_resp(c, (unsigned)r.status, r.content_type ? r.content_type : text, r.body, r.len,
                       false);
    }
    free(r.body);
    return rc;
}

__attribute__((format(printf, 2, 0))) static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct ar_http *h = cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    if (h->log)
        h->log(h->log_arg, msg);
}

/* ---- the loop glue ---------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t);

/* MHD_run twice: when connections close while the server is at its connection limit,
 * libmicrohttpd (0.9.75, external epoll) frees them at the end of one run but puts the listen
 * socket back into its epoll set only at the start of the next, and MHD_get_timeout() does not
 * ask for that run: without it, clients queued in the backlog would wait forever. For the same
 * reason the timer never sleeps longer than BACKSTOP_MS. */
static void run_and_rearm(struct listener *l)
{
    MHD_run(l->d);
    MHD_run(l->d);
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (MHD_get_timeout(l->d, &ms) != MHD_YES || ms > BACKSTOP_MS)
        ms = BACKSTOP_MS;
    uv_timer_start(&l->timer, on_timer, (uint64_t)ms, 0);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    run_and_rearm(p->data);
}

static void on_timer(uv_timer_t *t)
{
    run_and_rearm(t->data);
}

static void on_closed(uv_handle_t *hd)
{
    struct listener *l = hd->data;
    struct ar_http *h = l->h;
    if (--h->closing == 0)
        free(h);
}

/* ---- sockets ---------------------------------------------------------------------------- */

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int tcp_listen(const char *host, uint16_t port, uint16_t *bound, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof(ss));
    char h6[64];
    const char *hp = host;
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']' && hl - 2 < sizeof(h6)) {
        memcpy(h6, host + 1, hl - 2);
        h6[hl - 2] = '\0';
        hp = h6;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, hp, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        sl = sizeof(*s4);
    } else if (inet_pton(AF_INET6, hp, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        sl = sizeof(*s6);
    } else {
        seterr(err, errlen, "status listen address '%s' is not a numeric IP address", host);
        return -EINVAL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        seterr(err, errlen, "socket: %s", strerror(e));
        return -e;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
        int e = errno;
        seterr(err, errlen, "cannot listen on %s port %u: %s", host, port, strerror(e));
        close(fd);
        return -e;
    }
    sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        *bound = ntohs(ss.ss_family == AF_INET ? s4->sin_port : s6->sin6_port);
    return fd;
}

/* Remove a stale socket file at path; refuse a live socket or any other file. */
static int unix_clear(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode)) {
        seterr(err, errlen, "%s exists and is not a socket; not removing it", path);
        return -EEXIST;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    int e = errno;
    close(fd);
    if (rc == 0 || e == EAGAIN || e == EINPROGRESS) {
        seterr(err, errlen, "%s: another process is serving on this socket", path);
        return -EADDRINUSE;
    }
    if (e == ECONNREFUSED) {
        if (unlink(path) < 0 && errno != ENOENT) {
            e = errno;
            seterr(err, errlen, "cannot remove stale socket %s: %s", path, strerror(e));
            return -e;
        }
    }
    return 0;
}

static int unix_listen(struct ar_http *h, const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t pl = strlen(path);
    if (pl == 0 || pl >= sizeof(sa.sun_path)) {
        seterr(err, errlen, "status socket path is empty or longer than %zu bytes",
               sizeof(sa.sun_path) - 1);
        return -ENAMETOOLONG;
    }
    memcpy(sa.sun_path, path, pl + 1);
    int rc = unix_clear(path, err, errlen);
    if (rc < 0) {
        if (err && !err[0])
            seterr(err, errlen, "%s: %s", path, strerror(-rc));
        return rc;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        seterr(err, errlen, "socket: %s", strerror(e));
        return -e;
    }
    mode_t old = umask(0117);
    rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    int e = errno;
    umask(old);
    if (rc < 0) {
        seterr(err, errlen, "cannot bind %s: %s", path, strerror(e));
        close(fd);
        return -e;
    }
    struct stat st;
    if (chmod(path, 0660) < 0 || stat(path, &st) < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
        e = errno;
        seterr(err, errlen, "cannot listen on %s: %s", path, strerror(e));
        close(fd);
        unlink(path);
        return -e;
    }
    h->unix_path = strdup(path);
    if (!h->unix_path) {
        close(fd);
        unlink(path);
        return -ENOMEM;
    }
    h->unix_dev = st.st_dev;
    h->unix_ino = st.st_ino;
    return fd;
}

static void unix_remove(struct ar_http *h)
{
    struct stat st;
    if (h->unix_path && lstat(h->unix_path, &st) == 0 && st.st_dev == h->unix_dev &&
        st.st_ino == h->unix_ino)
        unlink(h->unix_path);
    free(h->unix_path);
    h->unix_path = NULL;
}

/* ---- start / stop ------------------------------------------------------------------------ */

static int start_mhd(struct ar_http *h, struct listener *l, int fd, const struct ar_http_opts *o,
                     char *err, size_t errlen)
{
    unsigned flags = MHD_USE_EPOLL | (h->log ? MHD_USE_ERROR_LOG : 0);
    l->h = h;
    l->d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, h,
        /* the logger first, or MHD warns that earlier options may log to stderr */
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)(o->conn_limit ? o->conn_limit : DEFAULT_CONN_LIMIT),
        MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)(o->mem_limit ? o->mem_limit : DEFAULT_MEM_LIMIT), MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)(o->timeout_s ? o->timeout_s : DEFAULT_TIMEOUT_S), MHD_OPTION_END);
    if (!l->d) {
        seterr(err, errlen, "cannot start the status server (libmicrohttpd)");
        /* MHD may or may not have closed the socket it was given. */
        if (fcntl(fd, F_GETFD) >= 0)
            close(fd);
        return -EIO;
    }
    return 0;
}

int ar_http_start(uv_loop_t *loop, const struct ar_http_opts *o, const struct ar_http_route *routes,
                  size_t nroutes, struct ar_http **out, char *err, size_t errlen)
{
    int rc = 0;
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (!loop || !o || (!o->host && !o->unix_path)) {
        seterr(err, errlen, "status server: nothing to listen on");
        return -EINVAL;
    }
    struct ar_http *h = calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    h->loop = loop;
    h->routes = routes;
    h->nroutes = nroutes;
    h->log = o->log;
    h->log_arg = o->log_arg;

    if (o->host) {
        int fd = tcp_listen(o->host, o->port, &h->port, err, errlen);
        if (fd < 0) {
            rc = fd;
            goto fail;
        }
        rc = start_mhd(h, &h->l[h->nl], fd, o, err, errlen);
        if (rc < 0)
            goto fail;
        h->nl++;
    }
    if (o->unix_path) {
        int fd = unix_listen(h, o->unix_path, err, errlen);
        if (fd < 0) {
            rc = fd;
            goto fail;
        }
        rc = start_mhd(h, &h->l[h->nl], fd, o, err, errlen);
        if (rc < 0)
            goto fail;
        h->nl++;
    }
    /* Every fallible step that needs no loop is done; now hook into the loop. */
    for (int i = 0; i < h->nl; i++) {
        struct listener *l = &h->l[i];
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(l->d, MHD_DAEMON_INFO_EPOLL_FD);
        if (!di) {
            seterr(err, errlen, "status server: no epoll fd");
            rc = -EIO;
            goto fail_handles;
        }
        rc = uv_poll_init(loop, &l->poll, di->epoll_fd);
        if (rc < 0) {
            seterr(err, errlen, "status server: uv_poll_init: %s", uv_strerror(rc));
            goto fail_handles;
        }
        uv_timer_init(loop, &l->timer);
        l->poll.data = l;
        l->timer.data = l;
        l->handles = true;
        rc = uv_poll_start(&l->poll, UV_READABLE, on_poll);
        if (rc < 0) {
            seterr(err, errlen, "status server: uv_poll_start: %s", uv_strerror(rc));
            goto fail_handles;
        }
        run_and_rearm(l);
    }
    *out = h;
    return 0;

fail_handles:
    ar_http_close(h); /* frees h from the close callbacks */
    return rc;
fail:
    for (int i = 0; i < h->nl; i++)
        MHD_stop_daemon(h->l[i].d);
    unix_remove(h);
    free(h);
    return rc;
}

uint16_t ar_http_port(const struct ar_http *h)
{
    return h ? h->port : 0;
}

void ar_http_close(struct ar_http *h)
{
    if (!h)
        return;
    int nh = 0;
    for (int i = 0; i < h->nl; i++)
        if (h->l[i].handles)
            nh++;
    h->closing = 2 * nh;
    for (int i = 0; i < h->nl; i++) {
        struct listener *l = &h->l[i];
        if (l->handles) {
            uv_poll_stop(&l->poll);
            uv_timer_stop(&l->timer);
            uv_close((uv_handle_t *)&l->poll, on_closed);
            uv_close((uv_handle_t *)&l->timer, on_closed);
        }
        MHD_stop_daemon(l->d);
        l->d = NULL;
    }
    unix_remove(h);
    if (nh == 0)
        free(h);
}
