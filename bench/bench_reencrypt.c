/*
 * bench/bench_reencrypt.c: the re-encrypt pass and the verify scan at etcd speed (issue 9).
 *
 * Starts a single-member etcd (tests/support/etcd_harness). The loader (the baseline) writes N
 * (env N, default 100,000) Secrets of 1 KiB plaintext, encrypted with an old aescbc key, in
 * txns of BATCH puts with INFLIGHT txns in flight. Then, in a child process (so its peak RSS is
 * its own), the re-encrypt pass (coord/reencrypt.h with its defaults, same batch size and
 * concurrency) rewrites them with the new key. Loader and pass take turns ROUNDS times (env,
 * default 5, odd): this shared machine's speed
 * drifts by 10-20% from one minute to the next, so every round is printed on stderr and the
 * BENCH line gives the round whose pass/loader ratio is the median (each pass against the
 * loader just before it; peak RSS: the highest of all). Each round runs on an etcd of its own,
 * started afresh. Then the verify scan (coord/verify.h, page
 * 500) against a plain paged range read of the same keys at the same page size. Last, the pass
 * again with the KV calls through the JSON gateway (kv_json), rewriting back to the old key. The
 * loader, the pass and the scans use gRPC (coord/etcd/etcd.h). Env: N, INFLIGHT (loader and
 * pass), PAGE, READERS, VERIFY_PARALLEL. Output:
 *   BENCH name=reencrypt-rate value=<objects/s> unit=objects/s baseline=<loader> ratio=<r>
 *   BENCH name=reencrypt-peak-rss value=<MiB> unit=MiB baseline=<idle child MiB> ratio=<r>
 *   BENCH name=verify-rate value=<objects/s> unit=objects/s baseline=<range read> ratio=<r>
 *   BENCH name=reencrypt-gateway-rate value=<objects/s> unit=objects/s baseline=<gRPC pass> ...
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/resource.h>
#include <sys/wait.h>

#include <curl/curl.h>
#include <sodium.h>

#include "coord/etcd/etcd.h"
#include "coord/etcd/etcd_sync.h"
#include "coord/reencrypt.h"
#include "coord/verify.h"
#include "crypto/chain.h"
#include "crypto/config.h"
#include "tests/support/etcd_harness.h"

#define BATCH        128
#define INFLIGHT     8 /* default txns in flight, loader and pass alike (env INFLIGHT) */
#define MAX_INFLIGHT 64
#define MAX_ROUNDS   9
#define VALUE_LEN    1024
#define PREFIX       "/registry/secrets/"

#define HDR "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"

static struct ar_chain *chain_of(const char *yaml)
{
    struct ar_load_opts lo = {0};
    struct ar_config *cfg = NULL;
    struct ar_chain *ch = NULL;
    struct ar_diags d;

    ar_diags_init(&d);
    if (ar_config_load_mem("bench.yaml", yaml, strlen(yaml), &lo, &cfg, &d) < 0 || d.nerrors ||
        ar_chain_new(cfg, &ch) < 0) {
        fprintf(stderr, "bench_reencrypt: config does not load\n");
        exit(1);
    }
    ar_diags_free(&d);
    ar_config_unref(cfg);
    return ch;
}

/* ---- the loader ---------------------------------------------------------------------------- */

struct txbuf {
    struct ar_etcd_op ops[BATCH];
    struct ar_buf mem;
    size_t off[BATCH], klen[BATCH], vlen[BATCH];
    size_t n;
    bool busy;
};

struct loader {
    struct ar_etcd *c;
    struct ar_chain *old;
    unsigned long next, n, ok;
    int inflight;
    int failed;
    struct txbuf tb[MAX_INFLIGHT];
    unsigned ntb;
    uint8_t plain[VALUE_LEN];
};

static void load_issue(struct loader *l, struct txbuf *t);

static struct loader *L; /* one loader at a time */

static void load_cb(void *arg, int status, const struct ar_etcd_result *res,
                    const struct ar_etcd_error *err)
{
    struct txbuf *t = arg;

    L->inflight--;
    if (status < 0) {
        fprintf(stderr, "bench_reencrypt: loader txn: %s\n", err ? err->msg : "?");
        L->failed++;
        return;
    }
    L->ok += t->n;
    load_issue(L, t);
}

static void load_issue(struct loader *l, struct txbuf *t)
{
    struct ar_etcd_txn x = {.success = t->ops};
    struct ar_result r;
    struct ar_buf enc = AR_BUF_INIT;

    ar_buf_reset(&t->mem);
    t->n = 0;
    while (t->n < BATCH && l->next < l->n) {
        char key[96];
        int kl = snprintf(key, sizeof(key), PREFIX "ns-%lu/secret-%08lu", l->next % 10, l->next);

        memcpy(l->plain, key, (size_t)kl); /* distinct plaintexts */
        memset(&r, 0, sizeof(r));
        if (ar_chain_write(l->old, "", "secrets", (const uint8_t *)key, (size_t)kl, l->plain,
                           VALUE_LEN, &enc, &r) < 0)
            exit(1);
        t->off[t->n] = t->mem.len;
        t->klen[t->n] = (size_t)kl;
        t->vlen[t->n] = enc.len;
        if (ar_buf_append(&t->mem, key, (size_t)kl) < 0 ||
            ar_buf_append(&t->mem, enc.p, enc.len) < 0)
            exit(1);
        t->n++;
        l->next++;
    }
    ar_buf_free(&enc);
    if (!t->n)
        return;
    for (size_t i = 0; i < t->n; i++)
        t->ops[i] = (struct ar_etcd_op){.type = AR_ETCD_PUT,
                                        .key = t->mem.p + t->off[i],
                                        .key_len = t->klen[i],
                                        .value = t->mem.p + t->off[i] + t->klen[i],
                                        .value_len = t->vlen[i]};
    x.n_success = t->n;
    if (ar_etcd_txn(l->c, &x, load_cb, t) < 0) {
        l->failed++;
        return;
    }
    l->inflight++;
}

static unsigned env_unsigned(const char *name, unsigned dflt);

/* CPU time (ms, user + system) of a process, from /proc/<pid>/stat; 0 when unknown */
static uint64_t proc_cpu_ms(pid_t pid)
{
    char path[64], buf[1024], *p;
    unsigned long long ut = 0, st = 0;
    FILE *f;
    size_t n;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (!f)
        return 0;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return 0;
    return (ut + st) * 1000 / (uint64_t)sysconf(_SC_CLK_TCK);
}

static double run_loader(struct ar_etcd_sync *s, struct ar_chain *old, unsigned long n)
{
    struct loader *l = calloc(1, sizeof(*l));
    uint64_t t0, t1;
    double rate;

    l->c = ar_etcd_sync_client(s);
    l->old = old;
    l->n = n;
    randombytes_buf(l->plain, sizeof(l->plain));
    l->ntb = env_unsigned("INFLIGHT", INFLIGHT);
    if (l->ntb > MAX_INFLIGHT)
        l->ntb = MAX_INFLIGHT;
    L = l;
    t0 = ar_etcd_now_ms();
    for (unsigned i = 0; i < l->ntb; i++)
        load_issue(l, &l->tb[i]);
    while (l->inflight) /* bounded: every txn ends within the client's timeout */
        uv_run(ar_etcd_loop(l->c), UV_RUN_ONCE);
    t1 = ar_etcd_now_ms();
    rate = l->failed || l->ok != n ? -1 : (double)n * 1000.0 / (double)(t1 - t0 ? t1 - t0 : 1);
    for (unsigned i = 0; i < l->ntb; i++)
        ar_buf_free(&l->tb[i].mem);
    free(l);
    return rate;
}

static unsigned env_unsigned(const char *name, unsigned dflt)
{
    const char *v = getenv(name);

    return v && atoi(v) > 0 ? (unsigned)atoi(v) : dflt;
}

/* the round whose pass/loader ratio is the median (n odd: the middle one) */
static unsigned median_round(const double *load, const double *pass, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        unsigned below = 0, same = 0;

        for (unsigned j = 0; j < n; j++) {
            double a = pass[j] / load[j], b = pass[i] / load[i];

            below += a < b;
            same += a == b;
        }
        if (below <= n / 2 && below + same > n / 2)
            return i;
    }
    return 0;
}

/* ---- the pass, in a child ------------------------------------------------------------------ */

struct child_out {
    double rate;
    uint64_t rewritten, peak_window, ms, range_ms, handle_ms, txn_ms, txns, cpu_ms;
    uint64_t events, parks; /* socket events, writable parked (ar_etcd_io_counts) */
};

static uint64_t tv_ms(const struct timeval *tv)
{
    return (uint64_t)tv->tv_sec * 1000 + (uint64_t)tv->tv_usec / 1000;
}

/* CPU time (ms) of this process so far */
static uint64_t self_cpu_ms(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) < 0)
        return 0;
    return tv_ms(&ru.ru_utime) + tv_ms(&ru.ru_stime);
}

static int run_pass_child(const struct ar_etcd_settings *st, struct ar_chain *promote,
                          const char *ckpt_key, unsigned long n, bool idle, struct child_out *co,
                          double *rss_mib)
{
    int fd[2];
    pid_t pid;
    struct rusage ru;
    int ws;

    if (pipe(fd) < 0)
        return -errno;
    pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        struct ar_etcd_sync *s = NULL;
        const char *sel[] = {"secrets"};
        struct ar_reencrypt_opts o = {.selectors = sel,
                                      .nselectors = 1,
                                      .checkpoint_key = ckpt_key,
                                      .page_size = env_unsigned("PAGE", 0),
                                      .max_inflight = env_unsigned("INFLIGHT", INFLIGHT),
                                      .readers = env_unsigned("READERS", 0)};
        struct ar_reencrypt_progress p;
        struct ar_err err;
        struct child_out out = {0};
        uint64_t t0, t1;
        int rc;

        close(fd[0]);
        if (ar_etcd_sync_new(st, &s) < 0)
            _exit(1);
        if (!idle) {
            t0 = ar_etcd_now_ms();
            rc = ar_reencrypt_run(s, promote, &o, NULL, NULL, 0, &p, &err);
            t1 = ar_etcd_now_ms();
            if (rc < 0 || p.rewritten != n) {
                fprintf(stderr, "bench_reencrypt: pass: %d %s (%llu rewritten)\n", rc, err.msg,
                        (unsigned long long)p.rewritten);
                _exit(1);
            }
            out.rate = (double)n * 1000.0 / (double)(t1 - t0 ? t1 - t0 : 1);
            out.rewritten = p.rewritten;
            out.peak_window = p.peak_window;
            out.ms = t1 - t0;
            out.range_ms = p.range_ms;
            out.handle_ms = p.handle_ms;
            out.txn_ms = p.txn_ms;
            out.txns = p.txns;
            ar_etcd_io_counts(ar_etcd_sync_client(s), &out.events, &out.parks);
        }
        ar_etcd_sync_free(s);
        if (write(fd[1], &out, sizeof(out)) != (ssize_t)sizeof(out))
            _exit(1);
        _exit(0);
    }
    close(fd[1]);
    if (read(fd[0], co, sizeof(*co)) != (ssize_t)sizeof(*co))
        memset(co, 0, sizeof(*co));
    close(fd[0]);
    if (wait4(pid, &ws, 0, &ru) != pid || !WIFEXITED(ws) || WEXITSTATUS(ws))
        return -EIO;
    *rss_mib = (double)ru.ru_maxrss / 1024.0; /* KiB on Linux */
    co->cpu_ms = tv_ms(&ru.ru_utime) + tv_ms(&ru.ru_stime);
    return 0;
}

/* ---- verify and its baseline --------------------------------------------------------------- */

struct counter {
    unsigned long n;
};

static int count_page(void *arg, int status, const struct ar_etcd_result *res,
                      const struct ar_etcd_error *err)
{
    if (status == 0)
        ((struct counter *)arg)->n += res->n_kvs;
    return 0;
}

static double run_range(struct ar_etcd_sync *s, unsigned long n)
{
    uint8_t end[64];
    struct ar_etcd_op op = {.type = AR_ETCD_RANGE,
                            .key = (const uint8_t *)PREFIX,
                            .key_len = strlen(PREFIX),
                            .range_end = end,
                            .limit = 500};
    struct counter c = {0};
    struct ar_etcd_error err;
    uint64_t t0, t1;

    op.range_end_len = ar_etcd_prefix_end(op.key, op.key_len, end);
    t0 = ar_etcd_now_ms();
    if (ar_etcd_sync_iterate(s, &op, count_page, &c, &err) < 0 || c.n != n)
        return -1;
    t1 = ar_etcd_now_ms();
    return (double)n * 1000.0 / (double)(t1 - t0 ? t1 - t0 : 1);
}

static double run_verify(struct ar_etcd_sync *s, struct ar_chain *promote, unsigned long n)
{
    struct ar_verify_opts o = {.group = "",
                               .resource = "secrets",
                               .page_size = 500,
                               .parallel = env_unsigned("VERIFY_PARALLEL", 4)};
    struct ar_verify_report *rep = NULL;
    struct ar_etcd_error err;
    uint64_t t0, t1;
    const struct ar_verify_row *row;
    bool ok;

    t0 = ar_etcd_now_ms();
    if (ar_verify_run(s, promote, &o, NULL, NULL, &rep, &err) < 0)
        return -1;
    t1 = ar_etcd_now_ms();
    row = ar_verify_find_row(rep, "", "secrets");
    ok = row && rep->objects == n && ar_verify_count(row, "aescbc:new") == n;
    if (!ok)
        fprintf(stderr, "bench_reencrypt: verify counted %llu objects, %llu under aescbc:new\n",
                (unsigned long long)rep->objects,
                (unsigned long long)(row ? ar_verify_count(row, "aescbc:new") : 0));
    ar_verify_report_free(rep);
    return ok ? (double)n * 1000.0 / (double)(t1 - t0 ? t1 - t0 : 1) : -1;
}

int main(void)
{
    struct etcd_harness h;
    struct etcd_harness_opts ho = {.members = 1, .extra = "--quota-backend-bytes=8589934592"};
    struct ar_etcd_settings st;
    struct ar_etcd_sync *s = NULL;
    struct ar_chain *old, *promote, *back;
    struct child_out co, idle, gw;
    const char *ns = getenv("N");
    unsigned long n = ns && strtoul(ns, NULL, 10) > 0 ? strtoul(ns, NULL, 10) : 100000;
    char k1[64], k2[64], y[2048];
    double load, pass, loads[MAX_ROUNDS], passes[MAX_ROUNDS], rss = 0, idle_rss = 0, ver, rng;
    unsigned rounds = env_unsigned("ROUNDS", 5), m;
    uint64_t c0, c1, e0, e1;
    bool started = false;
    int rc = 1;

    if (rounds > MAX_ROUNDS)
        rounds = MAX_ROUNDS;
    rounds |= 1; /* odd: one middle round */

    if (sodium_init() < 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != 0 ||
        ar_genkey(32, k1, sizeof(k1)) || ar_genkey(32, k2, sizeof(k2)))
        return 1;
    snprintf(y, sizeof(y),
             HDR "- resources: [secrets]\n  providers: [aescbc: {keys: [{name: old, secret: "
                 "'%s'}]}]\n",
             k1);
    old = chain_of(y);
    snprintf(y, sizeof(y),
             HDR "- resources: [secrets]\n  providers: [aescbc: {keys: [{name: new, secret: "
                 "'%s'}, {name: old, secret: '%s'}]}]\n",
             k2, k1);
    promote = chain_of(y);
    snprintf(y, sizeof(y),
             HDR "- resources: [secrets]\n  providers: [aescbc: {keys: [{name: old, secret: "
                 "'%s'}, {name: new, secret: '%s'}]}]\n",
             k1, k2);
    back = chain_of(y);
    for (unsigned i = 0; i < rounds; i++) {
        double r;

        /* every round on a fresh etcd: the same experiment each time */
        if (started) {
            ar_etcd_sync_free(s);
            s = NULL;
            etcd_harness_destroy(&h);
            started = false;
        }
        if (etcd_harness_start(&h, &ho) < 0) {
            fprintf(stderr, "bench_reencrypt: cannot start etcd\n");
            goto out;
        }
        started = true;
        etcd_harness_settings(&h, &st);
        st.request_timeout_ms = 60000;
        if (ar_etcd_sync_new(&st, &s) < 0)
            goto out;
        if (i == 0 && run_pass_child(&st, promote, "/atrest/reencrypt/bench-idle", n, true, &idle,
                                     &idle_rss) < 0)
            goto out;
        e0 = proc_cpu_ms(h.pid[0]);
        c0 = self_cpu_ms();
        loads[i] = run_loader(s, old, n);
        c1 = self_cpu_ms();
        e1 = proc_cpu_ms(h.pid[0]);
        fprintf(stderr,
                "bench_reencrypt: round %u: loader %lu objects at %.0f/s; CPU: loader %llu ms, "
                "etcd %llu ms\n",
                i + 1, n, loads[i], (unsigned long long)(c1 - c0), (unsigned long long)(e1 - e0));
        if (loads[i] <= 0 ||
            run_pass_child(&st, promote, "/atrest/reencrypt/bench", n, false, &co, &r) < 0)
            goto out;
        e0 = proc_cpu_ms(h.pid[0]);
        passes[i] = co.rate;
        if (r > rss)
            rss = r;
        fprintf(stderr,
                "bench_reencrypt: round %u: pass %llu rewritten at %.0f/s in %llu ms (ratio "
                "%.2f), peak window %llu objects, peak RSS %.1f MiB; range requests in flight "
                "%llu ms, values handled on the loop %llu ms, %llu txns of %.1f ms on average; "
                "CPU: pass %llu ms, etcd %llu ms; socket events %llu (writable parked %llu)\n",
                i + 1, (unsigned long long)co.rewritten, co.rate, (unsigned long long)co.ms,
                co.rate / loads[i], (unsigned long long)co.peak_window, r,
                (unsigned long long)co.range_ms, (unsigned long long)co.handle_ms,
                (unsigned long long)co.txns, co.txns ? (double)co.txn_ms / (double)co.txns : 0.0,
                (unsigned long long)co.cpu_ms, (unsigned long long)(e0 - e1),
                (unsigned long long)co.events, (unsigned long long)co.parks);
    }
    m = median_round(loads, passes, rounds);
    load = loads[m];
    pass = passes[m];
    fprintf(stderr, "bench_reencrypt: the median round is round %u\n", m + 1);
    printf("BENCH name=reencrypt-rate value=%.0f unit=objects/s baseline=%.0f ratio=%.2f\n", pass,
           load, pass / load);
    printf("BENCH name=reencrypt-peak-rss value=%.1f unit=MiB baseline=%.1f ratio=%.2f\n", rss,
           idle_rss, rss / idle_rss);
    fflush(stdout);
    rng = run_range(s, n);
    ver = run_verify(s, promote, n);
    if (rng <= 0 || ver <= 0)
        goto out;
    printf("BENCH name=verify-rate value=%.0f unit=objects/s baseline=%.0f ratio=%.2f\n", ver, rng,
           ver / rng);
    fflush(stdout);
    /* the same pass with the KV calls through the JSON gateway (kv_json), rewriting every
     * object back to the old key: what gRPC gains, measured in the same run */
    st.kv_json = true;
    if (run_pass_child(&st, back, "/atrest/reencrypt/bench-gw", n, false, &gw, &rss) < 0)
        goto out;
    printf("BENCH name=reencrypt-gateway-rate value=%.0f unit=objects/s baseline=%.0f "
           "ratio=%.2f\n",
           gw.rate, pass, gw.rate / pass);
    rc = 0;
out:
    if (rc)
        fprintf(stderr, "bench_reencrypt: failed\n");
    ar_etcd_sync_free(s);
    ar_chain_unref(old);
    ar_chain_unref(promote);
    ar_chain_unref(back);
    if (started)
        etcd_harness_destroy(&h);
    curl_global_cleanup();
    return rc;
}
