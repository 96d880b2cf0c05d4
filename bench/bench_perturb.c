/*
 * bench/bench_perturb.c: the cost of glibc's M_PERTURB, which the agent sets at start
 * (agent/daemon.c) so that buffers libraries free unwiped are overwritten.
 *
 * The work is the re-encrypt pass's per-page work on the heap: parse an etcd range answer of
 * 128 Secrets (jansson, ~1.4 KiB base64 values), decode each value, decrypt it and encrypt it
 * again through the provider chain (aescbc), base64 it into a txn request body and serialise
 * that (jansson), then free everything. Pages alternate with M_PERTURB on (the agent's byte)
 * and off in the same run, for FIGURE_SECONDS; each is timed in this thread's CPU time (the
 * machine is shared) and the best of each is kept.
 * Output: BENCH name=perturb-reencrypt-page value=<pages/s with M_PERTURB> unit=pages/s
 *         baseline=<pages/s without> ratio=<value/baseline> (below 1: the cost).
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <sodium.h>

#include "crypto/buf.h"
#include "crypto/chain.h"
#include "crypto/config.h"

#define FIGURE_SECONDS 3.0
#define BATCH_PAGES    1
#define PAGE_KVS       128
#define VALUE_BYTES    1024
#define PERTURB_BYTE   0xa5 /* agent/daemon.c FREE_PERTURB_BYTE */

/* CPU time of this thread: the machine is shared, time spent descheduled is not the work's */
static double cpu(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static struct ar_chain *make_chain(void)
{
    char y[1024], secret[64];
    struct ar_diags d;
    struct ar_config *cfg = NULL;
    struct ar_chain *ch = NULL;

    if (ar_genkey(32, secret, sizeof(secret)) < 0)
        return NULL;
    snprintf(y, sizeof(y),
             "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
             "resources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n"
             "      - name: benchkey\n        secret: %s\n",
             secret);
    ar_diags_init(&d);
    if (ar_config_load_mem("bench.yaml", y, strlen(y), NULL, &cfg, &d) < 0 || d.nerrors ||
        ar_chain_new(cfg, &ch) < 0)
        ch = NULL;
    sodium_memzero(y, sizeof(y));
    sodium_memzero(secret, sizeof(secret));
    ar_diags_free(&d);
    ar_config_unref(cfg);
    return ch;
}

static char *b64(const uint8_t *p, size_t n)
{
    size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
    char *s = malloc(cap);

    if (s)
        sodium_bin2base64(s, cap, p, n, sodium_base64_VARIANT_ORIGINAL);
    return s;
}

/* An etcd range answer of PAGE_KVS Secrets stored with the chain (what a page read returns). */
static char *make_page(struct ar_chain *ch)
{
    json_t *kvs = json_array(), *root;
    uint8_t pt[VALUE_BYTES];
    char key[128], *out;

    for (int i = 0; i < PAGE_KVS; i++) {
        struct ar_buf v = {0};
        struct ar_result res;
        char *bk, *bv;

        snprintf(key, sizeof(key), "/registry/secrets/bench/s-%06d", i);
        randombytes_buf(pt, sizeof(pt));
        if (ar_chain_write(ch, "", "secrets", (const uint8_t *)key, strlen(key), pt, sizeof(pt), &v,
                           &res) < 0)
            return NULL;
        bk = b64((const uint8_t *)key, strlen(key));
        bv = b64(v.p, v.len);
        json_array_append_new(kvs, json_pack("{s:s,s:s,s:s,s:s,s:s}", "key", bk, "value", bv,
                                             "mod_revision", "1234", "create_revision", "1200",
                                             "version", "3"));
        free(bk);
        free(bv);
        ar_buf_free(&v);
    }
    root = json_pack("{s:{s:s},s:o,s:b,s:s}", "header", "revision", "5000", "kvs", kvs, "more", 1,
                     "count", "100000");
    out = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return out;
}

/* One page: parse, decrypt + encrypt each value, build and serialise the txn. 0 or -1. */
static int one_page(struct ar_chain *ch, const char *page, size_t len)
{
    json_t *root = json_loadb(page, len, 0, NULL), *kvs = json_object_get(root, "kvs"), *ops;
    size_t i;
    json_t *kv;
    int rc = 0;
    char *body;

    if (!json_is_array(kvs)) {
        json_decref(root);
        return -1;
    }
    ops = json_array();
    json_array_foreach(kvs, i, kv)
    {
        const char *bk = json_string_value(json_object_get(kv, "key"));
        const char *bv = json_string_value(json_object_get(kv, "value"));
        size_t kl = 0, vl = 0, vcap = strlen(bv);
        uint8_t key[256], *val = malloc(vcap);
        struct ar_buf pt = {0}, ct = {0};
        struct ar_result res;
        char *nv;

        if (!val ||
            sodium_base642bin(key, sizeof(key), bk, strlen(bk), NULL, &kl, NULL,
                              sodium_base64_VARIANT_ORIGINAL) ||
            sodium_base642bin(val, vcap, bv, vcap, NULL, &vl, NULL,
                              sodium_base64_VARIANT_ORIGINAL) ||
            ar_chain_read(ch, "", "secrets", key, kl, val, vl, &pt, &res) ||
            ar_chain_write(ch, "", "secrets", key, kl, pt.p, pt.len, &ct, &res)) {
            rc = -1;
        } else if ((nv = b64(ct.p, ct.len))) {
            json_array_append_new(
                ops, json_pack("{s:{s:s,s:s}}", "request_put", "key", bk, "value", nv));
            free(nv);
        }
        free(val);
        ar_buf_free(&pt);
        ar_buf_free(&ct);
    }
    body = json_dumps(json_pack("{s:[],s:o}", "compare", "success", ops), JSON_COMPACT);
    if (!body)
        rc = -1;
    free(body);
    json_decref(root);
    return rc;
}

static double batch(struct ar_chain *ch, const char *page, size_t len, int *fails)
{
    double t0 = cpu();

    for (int i = 0; i < BATCH_PAGES; i++)
        if (one_page(ch, page, len) < 0)
            (*fails)++;
    return (cpu() - t0) / BATCH_PAGES;
}

int main(void)
{
    struct ar_chain *ch;
    char *page;
    size_t len;
    double best_on = 1e9, best_off = 1e9, t0;
    int fails = 0;

    if (sodium_init() < 0 || !(ch = make_chain()) || !(page = make_page(ch))) {
        fprintf(stderr, "bench_perturb: setup failed\n");
        return 1;
    }
    len = strlen(page);
    batch(ch, page, len, &fails); /* warm up */
    t0 = now();
    while (now() - t0 < FIGURE_SECONDS) {
        double t;

        mallopt(M_PERTURB, PERTURB_BYTE);
        t = batch(ch, page, len, &fails);
        if (t < best_on)
            best_on = t;
        mallopt(M_PERTURB, 0);
        t = batch(ch, page, len, &fails);
        if (t < best_off)
            best_off = t;
    }
    free(page);
    ar_chain_unref(ch);
    if (fails) {
        fprintf(stderr, "bench_perturb: %d failed pages\n", fails);
        return 1;
    }
    printf("BENCH name=perturb-reencrypt-page value=%.1f unit=pages/s baseline=%.1f "
           "ratio=%.3f\n",
           1.0 / best_on, 1.0 / best_off, best_off / best_on);
    return 0;
}
