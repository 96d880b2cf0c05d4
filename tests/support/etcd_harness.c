/* tests/support/etcd_harness.c: see etcd_harness.h. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <curl/curl.h>

#include "tests/support/etcd_harness.h"

#define ETCD_BIN "/usr/bin/etcd"
#define REG_MAX  32

/* Registry of live process groups and directories, for the atexit/signal backstop. */
static pid_t reg_pgid[REG_MAX];
static char reg_dir[8][256];
static bool hooks_installed;
static pid_t reg_owner;

static void reg_add_pid(pid_t p)
{
    for (int i = 0; i < REG_MAX; i++) {
        if (!reg_pgid[i]) {
            reg_pgid[i] = p;
            return;
        }
    }
}

static void reg_del_pid(pid_t p)
{
    for (int i = 0; i < REG_MAX; i++)
        if (reg_pgid[i] == p)
            reg_pgid[i] = 0;
}

static void kill_all(void)
{
    if (getpid() != reg_owner) /* forked test children must not kill the parent's etcd */
        return;
    for (int i = 0; i < REG_MAX; i++) {
        if (reg_pgid[i] > 0) {
            kill(-reg_pgid[i], SIGKILL);
            kill(-reg_pgid[i], SIGCONT);
        }
    }
}

static int rm_rf(const char *dir)
{
    pid_t p;
    int st;

    if (!dir[0])
        return 0;
    p = fork();
    if (p == 0) {
        execl("/bin/rm", "rm", "-rf", "--", dir, (char *)NULL);
        _exit(127);
    }
    if (p < 0)
        return -errno;
    while (waitpid(p, &st, 0) < 0 && errno == EINTR)
        ;
    return 0;
}

static void at_exit(void)
{
    kill_all();
    if (getpid() != reg_owner)
        return;
    for (int i = 0; i < 8; i++) {
        if (reg_dir[i][0]) {
            rm_rf(reg_dir[i]);
            reg_dir[i][0] = 0;
        }
    }
}

static void on_fatal(int sig)
{
    kill_all();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install_hooks(void)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGABRT, SIGSEGV, SIGBUS};

    if (hooks_installed)
        return;
    hooks_installed = true;
    reg_owner = getpid();
    atexit(at_exit);
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        struct sigaction sa, old;

        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_fatal;
        sa.sa_flags = SA_RESETHAND;
        sigaction(sigs[i], NULL, &old);
        if (old.sa_handler == SIG_DFL)
            sigaction(sigs[i], &sa, NULL);
    }
    signal(SIGPIPE, SIG_IGN);
}

static void reg_dir_set(const char *dir, bool add)
{
    for (int i = 0; i < 8; i++) {
        if (add && !reg_dir[i][0]) {
            snprintf(reg_dir[i], sizeof(reg_dir[i]), "%s", dir);
            return;
        }
        if (!add && !strcmp(reg_dir[i], dir)) {
            reg_dir[i][0] = 0;
            return;
        }
    }
}

static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t al = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &al) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int run_sh(const char *cmd)
{
    int st = system(cmd);

    if (st == -1)
        return -errno;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

static int make_pki(struct etcd_harness *h)
{
    char cmd[4096];
    int rc;

    snprintf(cmd, sizeof(cmd),
             "set -e; d='%s/pki'; mkdir -p \"$d\"; cd \"$d\"; exec 2>openssl.log >&2;"
             "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 "
             "  -subj /CN=atrest-test-ca;"
             "openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.crt "
             "  -days 2 -subj /CN=atrest-other-ca;"
             "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr "
             "  -subj /CN=etcd-server;"
             "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth,"
             "clientAuth\\n' > server.ext;"
             "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
             "  -out server.crt -days 2 -extfile server.ext;"
             "openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr "
             "  -subj /O=atrest-agents;"
             "printf 'extendedKeyUsage=clientAuth\\n' > client.ext;"
             "openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
             "  -out client.crt -days 2 -extfile client.ext",
             h->dir);
    rc = run_sh(cmd);
    if (rc != 0) {
        fprintf(stderr, "etcd_harness: openssl failed (%d), see %s/pki/openssl.log\n", rc, h->dir);
        return -EIO;
    }
    snprintf(h->cacert, sizeof(h->cacert), "%s/pki/ca.crt", h->dir);
    snprintf(h->cert, sizeof(h->cert), "%s/pki/client.crt", h->dir);
    snprintf(h->key, sizeof(h->key), "%s/pki/client.key", h->dir);
    snprintf(h->other_ca, sizeof(h->other_ca), "%s/pki/other-ca.crt", h->dir);
    return 0;
}

int etcd_harness_start_member(struct etcd_harness *h, int i)
{
    char name[16], data[320], curl[64], purl[64], cluster[1024] = "", log[320], *argv[48];
    char a_name[32], a_data[340], a_lc[96], a_ac[96], a_lp[96], a_ip[96], a_ic[1100];
    char a_cert[340], a_key[340], a_ca[340], extra[256];
    const char *scheme = h->tls ? "https" : "http";
    int argc = 0;
    pid_t p, parent;

    if (i < 0 || i >= h->n || h->pid[i] > 0)
        return -EINVAL;
    snprintf(name, sizeof(name), "m%d", i);
    snprintf(data, sizeof(data), "%s/%s", h->dir, name);
    snprintf(curl, sizeof(curl), "%s://127.0.0.1:%d", scheme, h->client_port[i]);
    snprintf(purl, sizeof(purl), "http://127.0.0.1:%d", h->peer_port[i]);
    for (int j = 0; j < h->n; j++) {
        size_t l = strlen(cluster);

        snprintf(cluster + l, sizeof(cluster) - l, "%sm%d=http://127.0.0.1:%d", j ? "," : "", j,
                 h->peer_port[j]);
    }
    snprintf(log, sizeof(log), "%s/%s.log", h->dir, name);
    snprintf(a_name, sizeof(a_name), "--name=%s", name);
    snprintf(a_data, sizeof(a_data), "--data-dir=%s", data);
    snprintf(a_lc, sizeof(a_lc), "--listen-client-urls=%s", curl);
    snprintf(a_ac, sizeof(a_ac), "--advertise-client-urls=%s", curl);
    snprintf(a_lp, sizeof(a_lp), "--listen-peer-urls=%s", purl);
    snprintf(a_ip, sizeof(a_ip), "--initial-advertise-peer-urls=%s", purl);
    snprintf(a_ic, sizeof(a_ic), "--initial-cluster=%s", cluster);
    argv[argc++] = ETCD_BIN;
    argv[argc++] = a_name;
    argv[argc++] = a_data;
    argv[argc++] = a_lc;
    argv[argc++] = a_ac;
    argv[argc++] = a_lp;
    argv[argc++] = a_ip;
    argv[argc++] = a_ic;
    argv[argc++] = "--initial-cluster-state=new";
    argv[argc++] = "--initial-cluster-token=atrest-test";
    if (h->fast) {
        argv[argc++] = "--heartbeat-interval=50";
        argv[argc++] = "--election-timeout=500";
    }
    if (h->tls) {
        snprintf(a_cert, sizeof(a_cert), "--cert-file=%s/pki/server.crt", h->dir);
        snprintf(a_key, sizeof(a_key), "--key-file=%s/pki/server.key", h->dir);
        snprintf(a_ca, sizeof(a_ca), "--trusted-ca-file=%s", h->cacert);
        argv[argc++] = a_cert;
        argv[argc++] = a_key;
        argv[argc++] = a_ca;
        argv[argc++] = "--client-cert-auth";
    }
    snprintf(extra, sizeof(extra), "%s", h->extra);
    for (char *save = NULL, *t = strtok_r(extra, " ", &save); t && argc < 46;
         t = strtok_r(NULL, " ", &save))
        argv[argc++] = t;
    argv[argc] = NULL;

    fflush(NULL);
    parent = getpid();
    p = fork();
    if (p < 0)
        return -errno;
    if (p == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);

        /* a test or bench killed (SIGKILL, a timeout) takes its etcd with it */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
            _exit(127);
        setpgid(0, 0);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(ETCD_BIN, argv);
        _exit(127);
    }
    setpgid(p, p);
    h->pid[i] = p;
    reg_add_pid(p);
    return 0;
}

static int health_once(const struct etcd_harness *h, int i)
{
    char url[128], body[256] = "";
    CURL *c = curl_easy_init();
    FILE *f = fmemopen(body, sizeof(body) - 1, "w");
    long code = 0;
    CURLcode rc;

    if (!c || !f) {
        if (f)
            fclose(f);
        curl_easy_cleanup(c);
        return -ENOMEM;
    }
    snprintf(url, sizeof(url), "%s/health", h->endpoint[i]);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 1000L);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
    if (h->tls) {
        curl_easy_setopt(c, CURLOPT_CAINFO, h->cacert);
        curl_easy_setopt(c, CURLOPT_SSLCERT, h->cert);
        curl_easy_setopt(c, CURLOPT_SSLKEY, h->key);
    }
    rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    fclose(f);
    return rc == CURLE_OK && code == 200 && strstr(body, "\"health\":\"true\"") ? 0 : -EAGAIN;
}

int etcd_harness_wait_healthy(struct etcd_harness *h, int i, unsigned timeout_ms)
{
    struct timespec ts = {0, 50 * 1000 * 1000};
    uint64_t end = ar_etcd_now_ms() + timeout_ms;

    while (ar_etcd_now_ms() < end) {
        int st;

        if (h->pid[i] > 0 && waitpid(h->pid[i], &st, WNOHANG) == h->pid[i]) {
            fprintf(stderr, "etcd_harness: member %d exited (status %d)\n", i, st);
            reg_del_pid(h->pid[i]);
            h->pid[i] = 0;
            etcd_harness_dump_log(h, i);
            return -ECHILD;
        }
        if (health_once(h, i) == 0)
            return 0;
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "etcd_harness: member %d not healthy after %u ms\n", i, timeout_ms);
    etcd_harness_dump_log(h, i);
    return -ETIMEDOUT;
}

int etcd_harness_start(struct etcd_harness *h, const struct etcd_harness_opts *o)
{
    const char *tmp = getenv("TMPDIR");
    int rc;

    memset(h, 0, sizeof(*h));
    install_hooks();
    h->n = o && o->members ? o->members : 1;
    if (h->n > ETCD_HARNESS_MAX)
        return -EINVAL;
    h->tls = o && o->tls;
    h->fast = o && o->fast;
    if (o && o->extra)
        snprintf(h->extra, sizeof(h->extra), "%s", o->extra);
    snprintf(h->dir, sizeof(h->dir), "%s/atrest-etcd-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(h->dir)) {
        h->dir[0] = 0;
        return -errno;
    }
    reg_dir_set(h->dir, true);
    if (h->tls && (rc = make_pki(h)) < 0)
        goto fail;
    for (int i = 0; i < h->n; i++) {
        /* two distinct free ports per member */
        do {
            h->client_port[i] = free_port();
            h->peer_port[i] = free_port();
        } while (h->client_port[i] == h->peer_port[i]);
        if (h->client_port[i] < 0 || h->peer_port[i] < 0) {
            rc = -EADDRNOTAVAIL;
            goto fail;
        }
        snprintf(h->endpoint[i], sizeof(h->endpoint[i]), "%s://127.0.0.1:%d",
                 h->tls ? "https" : "http", h->client_port[i]);
    }
    for (int i = 0; i < h->n; i++)
        if ((rc = etcd_harness_start_member(h, i)) < 0)
            goto fail;
    for (int i = 0; i < h->n; i++)
        if ((rc = etcd_harness_wait_healthy(h, i, 20000)) < 0)
            goto fail;
    return 0;
fail:
    etcd_harness_destroy(h);
    return rc;
}

int etcd_harness_stop_member(struct etcd_harness *h, int i, int sig)
{
    int st;

    if (i < 0 || i >= h->n || h->pid[i] <= 0)
        return -EINVAL;
    if (kill(-h->pid[i], sig) < 0 && kill(h->pid[i], sig) < 0)
        return -errno;
    if (sig == SIGSTOP || sig == SIGCONT)
        return 0;
    if (sig != SIGKILL) { /* a leader whose peers are gone can take ~10 s: bound it */
        uint64_t end = ar_etcd_now_ms() + 3000;
        struct timespec ts = {0, 20 * 1000 * 1000};

        while (ar_etcd_now_ms() < end && waitpid(h->pid[i], &st, WNOHANG) == 0)
            nanosleep(&ts, NULL);
        kill(-h->pid[i], SIGKILL);
    }
    while (waitpid(h->pid[i], &st, 0) < 0 && errno == EINTR)
        ;
    reg_del_pid(h->pid[i]);
    h->pid[i] = 0;
    return 0;
}

void etcd_harness_settings(const struct etcd_harness *h, struct ar_etcd_settings *s)
{
    memset(s, 0, sizeof(*s));
    for (int i = 0; i < h->n; i++)
        s->endpoints[i] = h->endpoint[i];
    s->n_endpoints = (size_t)h->n;
    if (h->tls) {
        s->cacert = h->cacert;
        s->cert = h->cert;
        s->key = h->key;
    }
}

int etcd_harness_ctl(const struct etcd_harness *h, const char *args)
{
    char cmd[2048];

    snprintf(cmd, sizeof(cmd),
             "ETCDCTL_API=3 ETCDCTL_ENDPOINTS='%s' %s%s%s%s%s%s etcdctl --dial-timeout=3s "
             "--command-timeout=5s %s >>'%s/etcdctl.log' 2>&1",
             h->endpoint[0], h->tls ? "ETCDCTL_CACERT=" : "", h->tls ? h->cacert : "",
             h->tls ? " ETCDCTL_CERT=" : "", h->tls ? h->cert : "", h->tls ? " ETCDCTL_KEY=" : "",
             h->tls ? h->key : "", args, h->dir);
    return run_sh(cmd);
}

void etcd_harness_dump_log(const struct etcd_harness *h, int i)
{
    char cmd[512];

    snprintf(cmd, sizeof(cmd), "tail -n 15 '%s/m%d.log' >&2", h->dir, i);
    (void)run_sh(cmd);
}

void etcd_harness_destroy(struct etcd_harness *h)
{
    for (int i = 0; i < h->n; i++) {
        if (h->pid[i] > 0) {
            kill(-h->pid[i], SIGKILL);
            kill(-h->pid[i], SIGCONT);
            etcd_harness_stop_member(h, i, SIGKILL);
        }
    }
    if (h->dir[0]) {
        rm_rf(h->dir);
        reg_dir_set(h->dir, false);
        h->dir[0] = 0;
    }
}

static void on_run_timer(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

bool etcd_harness_run_until(uv_loop_t *loop, const bool *flag, unsigned ms)
{
    uv_timer_t t;
    bool fired = false;

    uv_timer_init(loop, &t);
    t.data = &fired;
    uv_timer_start(&t, on_run_timer, ms, 0);
    while (!*flag && !fired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return *flag;
}

void etcd_harness_run_for(uv_loop_t *loop, unsigned ms)
{
    bool never = false;

    etcd_harness_run_until(loop, &never, ms);
}

/* --- scripted gateway ---------------------------------------------------------------------- */

#define GW_CONNS 32
#define GW_PATHS 16

struct gw_conn {
    uv_tcp_t tcp;
    struct fake_gw *g;
    char *buf;
    size_t len, cap;
    bool held, open;
};

struct fake_gw {
    uv_loop_t *loop;
    uv_tcp_t srv;
    fake_gw_fn fn;
    void *arg;
    char endpoint[64];
    struct gw_conn *conns[GW_CONNS];
    char paths[GW_PATHS][64];
    unsigned counts[GW_PATHS];
    int handles; /* listener + connections not yet closed; g is freed at 0 */
};

struct gw_write {
    uv_write_t req;
    char *data;
};

static void gw_count(struct fake_gw *g, const char *path)
{
    for (int i = 0; i < GW_PATHS; i++) {
        if (!g->paths[i][0])
            snprintf(g->paths[i], sizeof(g->paths[i]), "%s", path);
        if (!strcmp(g->paths[i], path)) {
            g->counts[i]++;
            return;
        }
    }
}

unsigned fake_gw_count(const struct fake_gw *g, const char *path)
{
    for (int i = 0; i < GW_PATHS; i++)
        if (!strcmp(g->paths[i], path))
            return g->counts[i];
    return 0;
}

const char *fake_gw_endpoint(const struct fake_gw *g)
{
    return g->endpoint;
}

static void gw_unref(struct fake_gw *g)
{
    if (--g->handles == 0)
        free(g);
}

static void gw_conn_closed(uv_handle_t *h)
{
    struct gw_conn *cn = h->data;
    struct fake_gw *g = cn->g;

    for (int i = 0; i < GW_CONNS; i++)
        if (g->conns[i] == cn)
            g->conns[i] = NULL;
    free(cn->buf);
    free(cn);
    gw_unref(g);
}

static void gw_conn_close(struct gw_conn *cn)
{
    if (!cn->open)
        return;
    cn->open = false;
    uv_close((uv_handle_t *)&cn->tcp, gw_conn_closed);
}

static void gw_written(uv_write_t *req, int status)
{
    struct gw_write *w = (struct gw_write *)req;

    free(w->data);
    free(w);
}

static void gw_send(struct gw_conn *cn, const struct fake_gw_reply *r)
{
    struct gw_write *w = calloc(1, sizeof(*w));
    size_t n = strlen(r->body), cap = n + 256;
    uv_buf_t b;
    int len;

    if (!w || !(w->data = malloc(cap))) {
        free(w);
        return;
    }
    if (r->stream)
        len = snprintf(w->data, cap,
                       "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n%zx\r\n%s\r\n",
                       n, r->body);
    else
        len = snprintf(w->data, cap,
                       "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                       "Content-Length: %zu\r\n\r\n%s",
                       r->status, n, r->body);
    b = uv_buf_init(w->data, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&cn->tcp, &b, 1, gw_written) < 0) {
        free(w->data);
        free(w);
    }
}

/* Handle every complete request in the buffer. */
static void gw_parse(struct gw_conn *cn)
{
    while (!cn->held) {
        char *hend, *cl, path[64] = "", *body;
        size_t hlen, blen = 0, total;
        struct fake_gw_reply r = {.status = 200};

        cn->buf[cn->len] = 0;
        hend = strstr(cn->buf, "\r\n\r\n");
        if (!hend)
            return;
        hlen = (size_t)(hend - cn->buf) + 4;
        cl = strcasestr(cn->buf, "\r\nContent-Length:");
        if (cl && cl < hend)
            blen = strtoul(cl + 17, NULL, 10);
        total = hlen + blen;
        if (cn->len < total)
            return;
        sscanf(cn->buf, "POST %63s", path);
        body = strndup(cn->buf + hlen, blen);
        if (!body)
            return;
        gw_count(cn->g, path);
        cn->g->fn(cn->g->arg, path, body, &r);
        free(body);
        if (r.status == 0 || r.stream)
            cn->held = true;
        if (r.status)
            gw_send(cn, &r);
        memmove(cn->buf, cn->buf + total, cn->len - total);
        cn->len -= total;
    }
}

static void gw_alloc(uv_handle_t *h, size_t want, uv_buf_t *b)
{
    struct gw_conn *cn = h->data;

    if (cn->cap - cn->len < 4097) {
        char *p = realloc(cn->buf, cn->cap + 65536);

        if (p) {
            cn->buf = p;
            cn->cap += 65536;
        }
    }
    *b = uv_buf_init(cn->buf + cn->len, (unsigned)(cn->cap - cn->len - 1));
}

static void gw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct gw_conn *cn = s->data;

    if (n < 0) {
        gw_conn_close(cn);
        return;
    }
    cn->len += (size_t)n;
    gw_parse(cn);
}

static void gw_accept(uv_stream_t *srv, int status)
{
    struct fake_gw *g = srv->data;
    struct gw_conn *cn;
    int slot = -1;

    for (int i = 0; i < GW_CONNS && slot < 0; i++)
        if (!g->conns[i])
            slot = i;
    cn = calloc(1, sizeof(*cn));
    if (status < 0 || slot < 0 || !cn || !(cn->buf = malloc(65536))) {
        free(cn);
        return;
    }
    cn->cap = 65536;
    cn->g = g;
    uv_tcp_init(g->loop, &cn->tcp);
    cn->tcp.data = cn;
    cn->open = true;
    g->handles++;
    g->conns[slot] = cn;
    if (uv_accept(srv, (uv_stream_t *)&cn->tcp) < 0 ||
        uv_read_start((uv_stream_t *)&cn->tcp, gw_alloc, gw_read) < 0)
        gw_conn_close(cn);
}

struct fake_gw *fake_gw_start(uv_loop_t *loop, fake_gw_fn fn, void *arg)
{
    struct fake_gw *g = calloc(1, sizeof(*g));
    struct sockaddr_in a;
    int alen = sizeof(a);

    if (!g)
        return NULL;
    g->loop = loop;
    g->fn = fn;
    g->arg = arg;
    g->handles = 1;
    uv_tcp_init(loop, &g->srv);
    g->srv.data = g;
    uv_ip4_addr("127.0.0.1", 0, &a);
    if (uv_tcp_bind(&g->srv, (const struct sockaddr *)&a, 0) < 0 ||
        uv_listen((uv_stream_t *)&g->srv, 16, gw_accept) < 0 ||
        uv_tcp_getsockname(&g->srv, (struct sockaddr *)&a, &alen) < 0) {
        fake_gw_stop(g);
        return NULL;
    }
    snprintf(g->endpoint, sizeof(g->endpoint), "http://127.0.0.1:%d", ntohs(a.sin_port));
    return g;
}

static void gw_srv_closed(uv_handle_t *h)
{
    gw_unref(h->data);
}

void fake_gw_stop(struct fake_gw *g)
{
    if (!g)
        return;
    for (int i = 0; i < GW_CONNS; i++)
        if (g->conns[i])
            gw_conn_close(g->conns[i]);
    uv_close((uv_handle_t *)&g->srv, gw_srv_closed);
}
