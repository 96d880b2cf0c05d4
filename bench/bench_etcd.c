/*
 * bench/bench_etcd.c: atrest's etcd client against wrk, same requests, same etcd, same run.
 *
 * Starts a single-member etcd (tests/support/etcd_harness), then for put and txn (1 KiB values,
 * fresh keys) runs the client with 32 requests in flight for BENCH_SECONDS (default 5), and wrk
 * -t2 -c32 with bench/etcd_{put,txn}.lua sending the same JSON bodies (the client's KV calls go
 * through the JSON gateway here, kv_json, as wrk's do; bench_reencrypt compares the transports).
 * Output: BENCH name=etcd-put value=<req/s> unit=req/s baseline=<wrk req/s> ratio=<atrest/wrk>
 * Run from the source tree (make bench), or set ATREST_BENCH_DIR to the bench/ directory.
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
#include "tests/support/etcd_harness.h"

#define INFLIGHT  32
#define VALUE_LEN 1024

struct run {
    struct ar_etcd *c;
    bool txn;
    uint64_t end;
    unsigned long ok, failed;
    int inflight;
    bool done;
    uint8_t value[VALUE_LEN];
    char last_err[512];
};

static void issue(struct run *r);
static unsigned long key_seq; /* keys stay fresh across runs */

static void on_done(void *arg, int status, const struct ar_etcd_result *res,
                    const struct ar_etcd_error *err)
{
    struct run *r = arg;

    r->inflight--;
    if (status == 0 && (!r->txn || res->succeeded)) {
        r->ok++;
    } else {
        r->failed++;
        if (err)
            snprintf(r->last_err, sizeof(r->last_err), "%s: %s", err->endpoint, err->msg);
        else
            snprintf(r->last_err, sizeof(r->last_err), "txn compare failed");
    }
    if (ar_etcd_now_ms() < r->end)
        issue(r);
    else if (!r->inflight)
        r->done = true;
}

static void issue(struct run *r)
{
    char key[64];
    int n = snprintf(key, sizeof(key), "atrest/%s/%lu", r->txn ? "txn" : "put", key_seq++);
    struct ar_etcd_op put = {.type = AR_ETCD_PUT,
                             .key = (const uint8_t *)key,
                             .key_len = (size_t)n,
                             .value = r->value,
                             .value_len = VALUE_LEN};
    int rc;

    if (r->txn) {
        struct ar_etcd_compare cmp = {.key = put.key,
                                      .key_len = put.key_len,
                                      .target = AR_ETCD_CMP_CREATE,
                                      .result = AR_ETCD_EQUAL};
        struct ar_etcd_op get = {.type = AR_ETCD_RANGE, .key = put.key, .key_len = put.key_len};
        struct ar_etcd_txn t = {.compare = &cmp,
                                .n_compare = 1,
                                .success = &put,
                                .n_success = 1,
                                .failure = &get,
                                .n_failure = 1};

        rc = ar_etcd_txn(r->c, &t, on_done, r);
    } else {
        rc = ar_etcd_put(r->c, &put, on_done, r);
    }
    if (rc == 0)
        r->inflight++;
    else
        r->failed++;
}

static double tv_us(const struct timeval *tv)
{
    return (double)tv->tv_sec * 1e6 + (double)tv->tv_usec;
}

static double run_atrest(struct etcd_harness *h, bool txn, unsigned secs, unsigned long *failed,
                         char *last_err, size_t le)
{
    uv_loop_t loop;
    struct ar_etcd_settings st;
    struct run *r = calloc(1, sizeof(*r));
    uint64_t t0, t1;
    double rate;
    struct rusage ru0, ru1;

    uv_loop_init(&loop);
    etcd_harness_settings(h, &st);
    st.request_timeout_ms = 10000;
    st.kv_json = true; /* the same JSON requests as wrk: the client's own cost is measured */
    if (ar_etcd_new(&loop, &st, &r->c) < 0) {
        fprintf(stderr, "bench_etcd: cannot create the client\n");
        exit(1);
    }
    r->txn = txn;
    randombytes_buf(r->value, sizeof(r->value));
    getrusage(RUSAGE_SELF, &ru0);
    t0 = ar_etcd_now_ms();
    r->end = t0 + secs * 1000u;
    for (int i = 0; i < INFLIGHT; i++)
        issue(r);
    while (!r->done)
        uv_run(&loop, UV_RUN_ONCE);
    t1 = ar_etcd_now_ms();
    getrusage(RUSAGE_SELF, &ru1);
    rate = (double)r->ok * 1000.0 / (double)(t1 - t0);
    if (r->ok) /* the client's own CPU per request (user + system), steadier than req/s */
        fprintf(stderr, "bench_etcd: %s: %lu requests, client CPU %.1f us/request\n",
                txn ? "txn" : "put", r->ok,
                (tv_us(&ru1.ru_utime) + tv_us(&ru1.ru_stime) - tv_us(&ru0.ru_utime) -
                 tv_us(&ru0.ru_stime)) /
                    (double)r->ok);
    *failed = r->failed;
    snprintf(last_err, le, "%s", r->last_err);
    ar_etcd_close(r->c);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    free(r);
    return rate;
}

static double run_wrk(struct etcd_harness *h, const char *dir, const char *script, unsigned secs,
                      const char *b64value)
{
    char cmd[4096];
    FILE *p;
    char line[512];
    double rate = -1;
    long non2xx = 0;

    snprintf(cmd, sizeof(cmd),
             "ATREST_BENCH_DIR='%s' ATREST_BENCH_VALUE='%s' wrk -t2 -c%d -d%us -s '%s/%s' "
             "'%s' 2>&1",
             dir, b64value, INFLIGHT, secs, dir, script, h->endpoint[0]);
    p = popen(cmd, "r");
    if (!p)
        return -1;
    while (fgets(line, sizeof(line), p)) {
        fputs(line, stderr);
        sscanf(line, "Requests/sec: %lf", &rate);
        sscanf(line, "  Non-2xx or 3xx responses: %ld", &non2xx);
    }
    if (pclose(p) != 0)
        return -1;
    if (non2xx)
        fprintf(stderr, "bench_etcd: wrk saw %ld non-2xx responses\n", non2xx);
    return rate;
}

int main(void)
{
    struct etcd_harness h;
    struct etcd_harness_opts o = {.members = 1};
    const char *dir = getenv("ATREST_BENCH_DIR");
    const char *s = getenv("BENCH_SECONDS");
    unsigned secs = s && atoi(s) > 0 ? (unsigned)atoi(s) : 5;
    uint8_t v[VALUE_LEN];
    char b64[VALUE_LEN * 2], path[512], err[600];
    int rc = 0;

    if (!dir)
        dir = "bench";
    snprintf(path, sizeof(path), "%s/etcd_put.lua", dir);
    if (access(path, R_OK) != 0) {
        fprintf(stderr,
                "bench_etcd: %s not found (run from the source tree or set "
                "ATREST_BENCH_DIR)\n",
                path);
        return 1;
    }
    if (sodium_init() < 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
        return 1;
    randombytes_buf(v, sizeof(v));
    sodium_bin2base64(b64, sizeof(b64), v, sizeof(v), sodium_base64_VARIANT_ORIGINAL);
    if (etcd_harness_start(&h, &o) < 0) {
        fprintf(stderr, "bench_etcd: cannot start etcd\n");
        return 1;
    }
    for (int t = 0; t < 2; t++) {
        bool txn = t == 1;
        unsigned long failed = 0;
        double mine, base;

        (void)run_atrest(&h, txn, 1, &failed, err, sizeof(err)); /* warm-up */
        mine = run_atrest(&h, txn, secs, &failed, err, sizeof(err));
        if (failed)
            fprintf(stderr, "bench_etcd: %lu atrest requests failed (last: %s)\n", failed, err);
        base = run_wrk(&h, dir, txn ? "etcd_txn.lua" : "etcd_put.lua", secs, b64);
        if (base <= 0 || failed) {
            fprintf(stderr, "bench_etcd: %s run failed\n", txn ? "txn" : "put");
            rc = 1;
            continue;
        }
        printf("BENCH name=etcd-%s value=%.0f unit=req/s baseline=%.0f ratio=%.2f\n",
               txn ? "txn" : "put", mine, base, mine / base);
        fflush(stdout);
    }
    etcd_harness_destroy(&h);
    curl_global_cleanup();
    return rc;
}
