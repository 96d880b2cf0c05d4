/* fuzz/fuzz_http.c: raw bytes sent to the status server (agent/http.c on a libuv loop, behind
 * libmicrohttpd) over its unix socket; the server must answer or close, never crash or leak.
 * One server for the whole run; each input is one client connection that sends the bytes,
 * half-closes, and reads until the server closes or a bounded number of loop turns. */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <uv.h>

#include "agent/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void h_text(void *arg, struct ar_http_resp *out)
{
    ar_http_resp_printf(out, "%s\n", (const char *)arg);
}

static void h_status(void *arg, struct ar_http_resp *out)
{
    out->content_type = "application/json";
    ar_http_resp_append(out, "{\"node\":\"fuzz\"}\n", 16);
}

static const struct ar_http_route routes[] = {
    {"/status", h_status, NULL},
    {"/healthz", h_text, (void *)"ok"},
    {"/readyz", h_text, (void *)"ready"},
};

static uv_loop_t loop;
static struct ar_http *srv;
static char sock_path[108];

static char sock_dir[32];

static void teardown(void)
{
    ar_http_close(srv); /* removes the socket file */
    srv = NULL;
    uv_run(&loop, UV_RUN_NOWAIT);
    rmdir(sock_dir);
}

static int setup(void)
{
    snprintf(sock_dir, sizeof(sock_dir), "/tmp/fuzz_http.XXXXXX");
    if (!mkdtemp(sock_dir))
        return -errno;
    atexit(teardown);
    snprintf(sock_path, sizeof(sock_path), "%s/s", sock_dir);
    uv_loop_init(&loop);
    struct ar_http_opts o = {.unix_path = sock_path, .timeout_s = 1};
    char err[256];
    int rc = ar_http_start(&loop, &o, routes, sizeof(routes) / sizeof(routes[0]), &srv, err,
                           sizeof(err));
    if (rc < 0)
        fprintf(stderr, "fuzz_http: %s\n", err);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        if (setup() < 0)
            abort();
        ready = 1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, sock_path, strlen(sock_path) + 1);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return 0;
    }
    size_t off = 0;
    bool closed = false, shut = false;
    char buf[65536];
    /* Bounded: at most 300 loop turns (~40 ms with the 100 us waits); then the client just
     * closes (libmicrohttpd keeps a kept-alive connection open after a half-close until its
     * timeout, so waiting for the server to close would make every such input slow). */
    for (int turn = 0; turn < 300 && !closed; turn++) {
        if (off < size) {
            ssize_t n = send(fd, data + off, size - off, MSG_NOSIGNAL);
            if (n > 0)
                off += (size_t)n;
            else if (n < 0 && errno != EAGAIN)
                off = size;
        } else if (!shut) {
            shutdown(fd, SHUT_WR);
            shut = true;
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        for (;;) {
            ssize_t n = recv(fd, buf, sizeof(buf), 0);
            if (n > 0)
                continue;
            if (n == 0 || (errno != EAGAIN && errno != EINTR))
                closed = true;
            break;
        }
        if (!closed)
            usleep(100);
    }
    close(fd);
    /* Let the server notice the close. */
    for (int i = 0; i < 4; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    return 0;
}
