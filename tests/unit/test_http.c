/* tests/unit/test_http.c: the status server on a real libuv loop, driven by real libcurl
 * requests from a client thread (blocking easy interface), over TCP and a unix socket. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <uv.h>

#include "agent/http.h"

/* ---- server side ------------------------------------------------------------------------ */

static int status_calls;

static void h_status(void *arg, struct ar_http_resp *out)
{
    status_calls++;
    out->content_type = "application/json";
    ar_http_resp_printf(out, "{\"node\":\"%s\"}\n", (const char *)arg);
}

static void h_big(void *arg, struct ar_http_resp *out)
{
    for (int i = 0; i < 10000; i++)
        ar_http_resp_printf(out, "line %05d abcdefghijklmnopqrstuvwxyz\n", i);
}

static void h_fail(void *arg, struct ar_http_resp *out)
{
    out->status = 0;
}

static void h_teapot(void *arg, struct ar_http_resp *out)
{
    out->status = 503;
    ar_http_resp_append(out, "not ready\n", 10);
}

static const struct ar_http_route routes[] = {
    {"/status", h_status, (void *)"node-a"},
    {"/big", h_big, NULL},
    {"/fail", h_fail, NULL},
    {"/readyz", h_teapot, NULL},
};

/* ---- client side ------------------------------------------------------------------------ */

struct reply {
    long code;
    char body[512 * 1024];
    size_t len;
    char ctype[128];
    char allow[64];
    long connects;
    double clen;
    int curl_rc;
};

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    struct reply *r = ud;
    size_t len = sz * n;
    if (r->len + len >= sizeof(r->body))
        return 0;
    memcpy(r->body + r->len, p, len);
    r->len += len;
    r->body[r->len] = '\0';
    return len;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    struct reply *r = ud;
    size_t len = sz * n;
    if (len > 7 && !strncasecmp(p, "Allow: ", 7)) {
        size_t k = len - 7;
        while (k && (p[7 + k - 1] == '\r' || p[7 + k - 1] == '\n'))
            k--;
        if (k < sizeof(r->allow)) {
            memcpy(r->allow, p + 7, k);
            r->allow[k] = '\0';
        }
    }
    return len;
}

static void req(CURL *e, const char *url, const char *method, const char *sock, struct reply *r)
{
    memset(r, 0, sizeof(*r));
    curl_easy_reset(e);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (sock)
        curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, sock);
    if (!strcmp(method, "HEAD"))
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (!strcmp(method, "POST"))
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, "x=1");
    else if (strcmp(method, "GET"))
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    r->curl_rc = curl_easy_perform(e);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->code);
    curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &r->connects);
    curl_off_t cl = -1;
    curl_easy_getinfo(e, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
    r->clen = (double)cl;
    char *ct = NULL;
    curl_easy_getinfo(e, CURLINFO_CONTENT_TYPE, &ct);
    if (ct)
        snprintf(r->ctype, sizeof(r->ctype), "%s", ct);
}

/* A client runs in a thread while the loop runs in the test's thread; when it is done it
 * wakes the loop, which closes the server; the loop then runs dry. */
struct harness {
    uv_loop_t loop;
    uv_async_t done;
    struct ar_http *h;
    pthread_t th;
    void (*client)(struct harness *);
    char base[128];
    char sock[108];
    struct reply r[8];
    int extra[8];
};

static void on_done(uv_async_t *a)
{
    struct harness *hs = a->data;
    ar_http_close(hs->h);
    hs->h = NULL;
    uv_close((uv_handle_t *)a, NULL);
}

static void *client_main(void *arg)
{
    struct harness *hs = arg;
    hs->client(hs);
    uv_async_send(&hs->done);
    return NULL;
}

static void run_harness(struct harness *hs, const struct ar_http_opts *o,
                        void (*client)(struct harness *))
{
    char err[256];
    assert_int_equal(uv_loop_init(&hs->loop), 0);
    assert_int_equal(ar_http_start(&hs->loop, o, routes, sizeof(routes) / sizeof(routes[0]), &hs->h,
                                   err, sizeof(err)),
                     0);
    if (o->host) {
        assert_true(ar_http_port(hs->h) > 0);
        snprintf(hs->base, sizeof(hs->base), "http://127.0.0.1:%u", ar_http_port(hs->h));
    } else {
        assert_int_equal(ar_http_port(hs->h), 0);
        snprintf(hs->base, sizeof(hs->base), "http://localhost");
    }
    hs->client = client;
    assert_int_equal(uv_async_init(&hs->loop, &hs->done, on_done), 0);
    hs->done.data = hs;
    assert_int_equal(pthread_create(&hs->th, NULL, client_main, hs), 0);
    uv_run(&hs->loop, UV_RUN_DEFAULT);
    pthread_join(hs->th, NULL);
    assert_int_equal(uv_loop_close(&hs->loop), 0);
}

static void url(struct harness *hs, const char *path, char *buf, size_t len)
{
    snprintf(buf, len, "%s%s", hs->base, path);
}

/* ---- TCP --------------------------------------------------------------------------------- */

static void client_tcp(struct harness *hs)
{
    CURL *e = curl_easy_init();
    char u[256];
    url(hs, "/status", u, sizeof(u));
    req(e, u, "GET", NULL, &hs->r[0]);
    req(e, u, "GET", NULL, &hs->r[1]); /* same handle: keep-alive reuse */
    url(hs, "/nope", u, sizeof(u));
    req(e, u, "GET", NULL, &hs->r[2]);
    url(hs, "/status", u, sizeof(u));
    req(e, u, "POST", NULL, &hs->r[3]);
    req(e, u, "HEAD", NULL, &hs->r[4]);
    url(hs, "/big", u, sizeof(u));
    req(e, u, "GET", NULL, &hs->r[5]);
    url(hs, "/fail", u, sizeof(u));
    req(e, u, "GET", NULL, &hs->r[6]);
    url(hs, "/readyz", u, sizeof(u));
    req(e, u, "DELETE", NULL, &hs->r[7]);
    curl_easy_cleanup(e);
}

static void test_tcp_routes(void **state)
{
    static struct harness hs;
    memset(&hs, 0, sizeof(hs));
    struct ar_http_opts o = {.host = "127.0.0.1", .port = 0};
    status_calls = 0;
    run_harness(&hs, &o, client_tcp);
    struct reply *r = hs.r;
    for (int i = 0; i < 8; i++)
        assert_int_equal(r[i].curl_rc, CURLE_OK);
    assert_int_equal(r[0].code, 200);
    assert_string_equal(r[0].body, "{\"node\":\"node-a\"}\n");
    assert_string_equal(r[0].ctype, "application/json");
    assert_int_equal(r[0].connects, 1);
    assert_int_equal(r[1].code, 200);
    assert_int_equal(r[1].connects, 0); /* the connection was reused */
    assert_int_equal(r[2].code, 404);
    assert_string_equal(r[2].body, "not found\n");
    assert_int_equal(r[3].code, 405);
    assert_string_equal(r[3].allow, "GET, HEAD");
    assert_int_equal(r[4].code, 200);
    assert_int_equal(r[4].len, 0);                       /* HEAD: no body */
    assert_true(r[4].clen == (double)strlen(r[0].body)); /* but the GET's length */
    assert_int_equal(r[5].code, 200);
    assert_int_equal(r[5].len, 10000 * 38);
    assert_memory_equal(r[5].body + 9999 * 38, "line 09999 abcdefghijklmnopqrstuvwxyz\n", 38);
    assert_int_equal(r[6].code, 500);
    assert_int_equal(r[7].code, 405);
    assert_int_equal(status_calls, 3); /* GET, GET, HEAD; never for POST */
}

/* ---- unix socket ------------------------------------------------------------------------- */

static void client_unix(struct harness *hs)
{
    CURL *e = curl_easy_init();
    char u[256];
    url(hs, "/status", u, sizeof(u));
    req(e, u, "GET", hs->sock, &hs->r[0]);
    req(e, u, "GET", hs->sock, &hs->r[1]);
    struct stat st;
    hs->extra[0] =
        stat(hs->sock, &st) == 0 && S_ISSOCK(st.st_mode) ? (int)(st.st_mode & 07777) : -1;
    curl_easy_cleanup(e);
}

static void make_tmpdir(char *dir, size_t len)
{
    snprintf(dir, len, "/tmp/test_http.XXXXXX");
    assert_non_null(mkdtemp(dir));
}

static void test_unix_socket(void **state)
{
    static struct harness hs;
    memset(&hs, 0, sizeof(hs));
    char dir[64];
    make_tmpdir(dir, sizeof(dir));
    snprintf(hs.sock, sizeof(hs.sock), "%s/status.sock", dir);

    /* A stale socket file (bound, then its owner went away) is replaced. */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", hs.sock);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);

    struct ar_http_opts o = {.unix_path = hs.sock};
    run_harness(&hs, &o, client_unix);
    assert_int_equal(hs.r[0].curl_rc, CURLE_OK);
    assert_int_equal(hs.r[0].code, 200);
    assert_string_equal(hs.r[0].body, "{\"node\":\"node-a\"}\n");
    assert_int_equal(hs.r[1].code, 200);
    assert_int_equal(hs.r[1].connects, 0);
    assert_int_equal(hs.extra[0], 0660);
    /* The socket file is gone after close. */
    assert_int_equal(access(hs.sock, F_OK), -1);
    assert_int_equal(rmdir(dir), 0);
}

static void test_unix_refuses(void **state)
{
    char dir[64], path[128], err[256];
    make_tmpdir(dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/not-a-socket", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("precious\n", f);
    fclose(f);

    uv_loop_t loop;
    uv_loop_init(&loop);
    struct ar_http *h = NULL;
    struct ar_http_opts o = {.unix_path = path};
    assert_int_equal(ar_http_start(&loop, &o, routes, 1, &h, err, sizeof(err)), -EEXIST);
    assert_null(h);
    char want[256];
    snprintf(want, sizeof(want), "%s exists and is not a socket; not removing it", path);
    assert_string_equal(err, want);
    assert_int_equal(access(path, F_OK), 0); /* untouched */
    unlink(path);

    /* A live socket (another server) is not stolen. */
    snprintf(path, sizeof(path), "%s/live.sock", dir);
    struct ar_http *first = NULL;
    assert_int_equal(ar_http_start(&loop, &o, routes, 1, &first, err, sizeof(err)), 0);
    assert_int_equal(ar_http_start(&loop, &o, routes, 1, &h, err, sizeof(err)), -EADDRINUSE);
    assert_null(h);
    ar_http_close(first);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(access(path, F_OK), -1);

    /* Bad TCP host, nothing to listen on, path too long. */
    struct ar_http_opts bad = {.host = "localhost"};
    assert_int_equal(ar_http_start(&loop, &bad, routes, 1, &h, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "status listen address 'localhost' is not a numeric IP address");
    struct ar_http_opts none = {0};
    assert_int_equal(ar_http_start(&loop, &none, routes, 1, &h, err, sizeof(err)), -EINVAL);
    char longp[200];
    memset(longp, 'a', sizeof(longp) - 1);
    longp[sizeof(longp) - 1] = '\0';
    struct ar_http_opts lp = {.unix_path = longp};
    assert_int_equal(ar_http_start(&loop, &lp, routes, 1, &h, err, sizeof(err)), -ENAMETOOLONG);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(rmdir(dir), 0);
}

/* ---- limits ------------------------------------------------------------------------------ */

static void client_limits(struct harness *hs)
{
    /* 1. A request head larger than the 16 KiB connection memory limit is refused. */
    CURL *e = curl_easy_init();
    char u[256];
    url(hs, "/status", u, sizeof(u));
    curl_easy_reset(e);
    static char hdr[20000];
    memcpy(hdr, "X-Big: ", 7);
    memset(hdr + 7, 'b', sizeof(hdr) - 8);
    hdr[sizeof(hdr) - 1] = '\0';
    struct curl_slist *sl = curl_slist_append(NULL, hdr);
    struct reply *r = &hs->r[0];
    memset(r, 0, sizeof(*r));
    curl_easy_setopt(e, CURLOPT_URL, u);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, sl);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
    r->curl_rc = curl_easy_perform(e);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->code);
    curl_slist_free_all(sl);
    /* The server still answers afterwards. */
    req(e, u, "GET", NULL, &hs->r[1]);
    curl_easy_cleanup(e);

    /* 2. An idle connection is closed by the server after the timeout (1 s here). */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(ar_http_port(hs->h))};
    sa.sin_addr.s_addr = htonl(0x7f000001);
    struct timeval tv = {.tv_sec = 8};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    hs->extra[0] = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char b[16];
    hs->extra[1] = (int)recv(fd, b, sizeof(b), 0); /* 0: closed by the server */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    hs->extra[2] = (int)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
    close(fd);
}

static void test_limits(void **state)
{
    static struct harness hs;
    memset(&hs, 0, sizeof(hs));
    struct ar_http_opts o = {.host = "127.0.0.1", .timeout_s = 1};
    run_harness(&hs, &o, client_limits);
    /* libmicrohttpd answers 431 when the head does not fit the connection's memory. */
    assert_int_equal(hs.r[0].curl_rc, CURLE_OK);
    assert_int_equal(hs.r[0].code, 431);
    assert_int_equal(hs.r[1].code, 200);
    assert_int_equal(hs.extra[0], 0);
    assert_int_equal(hs.extra[1], 0);
    assert_in_range(hs.extra[2], 500, 4000);
}

/* More clients than the connection limit, all gone: the next request is served at once. */
static void client_flood(struct harness *hs)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(ar_http_port(hs->h))};
    sa.sin_addr.s_addr = htonl(0x7f000001);
    CURL *e = curl_easy_init();
    char u[256];
    url(hs, "/status", u, sizeof(u));
    for (int round = 0; round < 8; round++) {
        int fds[12];
        for (int i = 0; i < 12; i++) {
            fds[i] = socket(AF_INET, SOCK_STREAM, 0);
            connect(fds[i], (struct sockaddr *)&sa, sizeof(sa));
        }
        usleep(100 * 1000);
        for (int i = 0; i < 12; i++)
            close(fds[i]);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        req(e, u, "GET", NULL, &hs->r[round]);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        hs->extra[round] =
            (int)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
    }
    curl_easy_cleanup(e);
}

static void test_conn_limit_recovers(void **state)
{
    static struct harness hs;
    memset(&hs, 0, sizeof(hs));
    struct ar_http_opts o = {.host = "127.0.0.1", .conn_limit = 4};
    run_harness(&hs, &o, client_flood);
    for (int round = 0; round < 8; round++) {
        assert_int_equal(hs.r[round].curl_rc, CURLE_OK);
        assert_int_equal(hs.r[round].code, 200);
        /* well under the 1 s backstop tick: the double MHD_run resumed accepting */
        assert_in_range(hs.extra[round], 0, 500);
    }
}

/* ---- response buffer ------------------------------------------------------------------- */

static void test_resp_buffer(void **state)
{
    struct ar_http_resp r = {0};
    assert_int_equal(ar_http_resp_printf(&r, "%s=%d", "a", 1), 0);
    char big[2000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(ar_http_resp_printf(&r, "[%s]", big), 0);
    assert_int_equal(r.len, 3 + 2 + 1999);
    assert_int_equal(r.body[r.len], '\0');
    assert_memory_equal(r.body, "a=1[xx", 6);
    assert_int_equal(ar_http_resp_append(&r, big, AR_HTTP_MAX_BODY), -EMSGSIZE);
    free(r.body);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resp_buffer), cmocka_unit_test(test_tcp_routes),
        cmocka_unit_test(test_unix_socket), cmocka_unit_test(test_unix_refuses),
        cmocka_unit_test(test_limits),      cmocka_unit_test(test_conn_limit_recovers),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
