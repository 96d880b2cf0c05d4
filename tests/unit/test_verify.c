/*
 * tests/unit/test_verify.c: the verify scan (coord/verify.h) against a real single-member etcd
 * (tests/support/etcd_harness). Values are written with ar_chain_write of single-provider
 * "writer" configs (keys generated at test time) in txn batches of up to 128 puts; KMS values
 * are built byte by byte (spec 1.6/1.7). Asserts exact counts per resource and provider:key,
 * stale and undecryptable counts with exact reasons, rows of keys that name no resource, one
 * resource's range, stop, unreachable etcd, a compaction met mid-scan, and 20,000 objects
 * (ATREST_TEST_BIG) with the client's kvs peak and the scan's own buffer bounded by one page.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <sodium.h>

#include "coord/etcd/etcd_sync.h"
#include "coord/verify.h"
#include "crypto/chain.h"
#include "crypto/config.h"
#include "tests/support/etcd_harness.h"

static struct etcd_harness H;
static struct ar_etcd_sync *S;

#define HDR "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"

static char K1[64], K2[64], K9[64], S1[64]; /* fresh keys, base64 */

static struct ar_chain *chain_of(const char *yaml)
{
    struct ar_load_opts lo = {.kmsv1_allowed = true};
    struct ar_config *cfg = NULL;
    struct ar_chain *ch = NULL;
    struct ar_diags d;
    char line[1024];

    ar_diags_init(&d);
    if (ar_config_load_mem("test.yaml", yaml, strlen(yaml), &lo, &cfg, &d) < 0 || d.nerrors) {
        for (size_t i = 0; i < d.n; i++) {
            ar_diag_format(&d.v[i], line, sizeof(line));
            fprintf(stderr, "%s\n", line);
        }
        fail_msg("config does not load");
    }
    ar_diags_free(&d);
    assert_int_equal(ar_chain_new(cfg, &ch), 0);
    ar_config_unref(cfg);
    return ch;
}

/* A chain that writes every resource with one provider (YAML flow item). */
static struct ar_chain *writer(const char *provider)
{
    char y[1024];

    snprintf(y, sizeof(y), HDR "- resources: ['*.*']\n  providers: [%s]\n", provider);
    return chain_of(y);
}

/* ---- batched puts ------------------------------------------------------------------------- */

struct batch {
    struct ar_etcd_op ops[128];
    uint8_t *mem[128];
    size_t n;
};

static void batch_flush(struct batch *b)
{
    struct ar_etcd_txn t = {.success = b->ops, .n_success = b->n};
    struct ar_etcd_error err;

    if (!b->n)
        return;
    assert_int_equal(ar_etcd_sync_txn(S, &t, NULL, &err), 0);
    for (size_t i = 0; i < b->n; i++)
        free(b->mem[i]);
    b->n = 0;
}

static void batch_put(struct batch *b, const char *key, const uint8_t *v, size_t vlen)
{
    size_t kl = strlen(key);
    uint8_t *m = malloc(kl + vlen + 1);

    assert_non_null(m);
    memcpy(m, key, kl);
    memcpy(m + kl, v, vlen);
    b->mem[b->n] = m;
    b->ops[b->n] = (struct ar_etcd_op){
        .type = AR_ETCD_PUT, .key = m, .key_len = kl, .value = m + kl, .value_len = vlen};
    if (++b->n == 128)
        batch_flush(b);
}

/* Encrypt "k8s\0<key>" as kube-apiserver would for key with chain w; corrupt: flip last byte. */
static void put_enc(struct batch *b, struct ar_chain *w, const char *key, bool corrupt)
{
    struct ar_buf out = AR_BUF_INIT;
    struct ar_result res;
    char pt[512];
    int n = snprintf(pt, sizeof(pt), "k8s%c%s", 0, key);

    memset(&res, 0, sizeof(res));
    assert_int_equal(ar_chain_write(w, "", "secrets", (const uint8_t *)key, strlen(key),
                                    (const uint8_t *)pt, (size_t)n, &out, &res),
                     0);
    if (corrupt)
        out.p[out.len - 1] ^= 1;
    batch_put(b, key, out.p, out.len);
    ar_buf_free(&out);
}

static void put_plain(struct batch *b, const char *key)
{
    char pt[512];
    int n = snprintf(pt, sizeof(pt), "k8s%c%s", 0, key);

    batch_put(b, key, (const uint8_t *)pt, (size_t)n);
}

/* "k8s:enc:kms:v2:<name>:" + EncryptedObject{encryptedData, keyID, encryptedDEKSource} */
static void put_kmsv2(struct batch *b, const char *key, const char *name, const char *keyid)
{
    uint8_t v[256];
    size_t n = (size_t)snprintf((char *)v, sizeof(v), "k8s:enc:kms:v2:%s:", name);
    uint8_t data[40], dek[32];

    randombytes_buf(data, sizeof(data));
    randombytes_buf(dek, sizeof(dek));
    v[n++] = 0x0a;
    v[n++] = sizeof(data);
    memcpy(v + n, data, sizeof(data));
    n += sizeof(data);
    v[n++] = 0x12;
    v[n++] = (uint8_t)strlen(keyid);
    memcpy(v + n, keyid, strlen(keyid));
    n += strlen(keyid);
    v[n++] = 0x1a;
    v[n++] = sizeof(dek);
    memcpy(v + n, dek, sizeof(dek));
    n += sizeof(dek);
    batch_put(b, key, v, n);
}

/* "k8s:enc:kms:v1:<name>:" + u16BE(len encDEK) + encDEK + nonce + ct + tag */
static void put_kmsv1(struct batch *b, const char *key, const char *name)
{
    uint8_t v[256];
    size_t n = (size_t)snprintf((char *)v, sizeof(v), "k8s:enc:kms:v1:%s:", name);

    v[n++] = 0;
    v[n++] = 44;
    randombytes_buf(v + n, 44 + 12 + 20 + 16);
    n += 44 + 12 + 20 + 16;
    batch_put(b, key, v, n);
}

/* ---- setup -------------------------------------------------------------------------------- */

/* The config under test: secrets with every provider type, configmaps identity first, a CR. */
static struct ar_chain *verify_chain(void)
{
    char y[4096];

    snprintf(y, sizeof(y),
             HDR "- resources: [secrets]\n"
                 "  providers:\n"
                 "  - aesgcm: {keys: [{name: k2, secret: '%s'}]}\n"
                 "  - aescbc: {keys: [{name: key1, secret: '%s'}]}\n"
                 "  - secretbox: {keys: [{name: s1, secret: '%s'}]}\n"
                 "  - kms: {apiVersion: v2, name: kv2, endpoint: 'unix:///run/kv2.sock'}\n"
                 "  - kms: {name: kv1, endpoint: 'unix:///run/kv1.sock'}\n"
                 "  - identity: {}\n"
                 "- resources: [configmaps]\n"
                 "  providers: [identity: {}, aescbc: {keys: [{name: key1, secret: '%s'}]}]\n"
                 "- resources: [widgets.example.com]\n"
                 "  providers: [secretbox: {keys: [{name: s1, secret: '%s'}]}]\n",
             K2, K1, S1, K1, S1);
    return chain_of(y);
}

static int group_setup(void **state)
{
    struct etcd_harness_opts o = {.members = 1, .fast = true};
    struct ar_etcd_settings st;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (sodium_init() < 0 || ar_genkey(32, K1, sizeof(K1)) || ar_genkey(32, K2, sizeof(K2)) ||
        ar_genkey(32, K9, sizeof(K9)) || ar_genkey(32, S1, sizeof(S1)))
        return -1;
    if (etcd_harness_start(&H, &o) < 0)
        return -1;
    etcd_harness_settings(&H, &st);
    st.request_timeout_ms = 10000;
    return ar_etcd_sync_new(&st, &S) < 0 ? -1 : 0;
}

static int group_teardown(void **state)
{
    ar_etcd_sync_free(S);
    etcd_harness_destroy(&H);
    curl_global_cleanup();
    return 0;
}

/* ---- the mixed data set ------------------------------------------------------------------- */

static void seed_mixed(void)
{
    static bool seeded;
    struct batch b = {.n = 0};
    struct ar_chain *gcm2, *cbc1, *cbc9, *sb1;
    char k[128];

    if (seeded)
        return;
    seeded = true;
    snprintf(k, sizeof(k), "{aesgcm: {keys: [{name: k2, secret: '%s'}]}}", K2);
    gcm2 = writer(k);
    snprintf(k, sizeof(k), "{aescbc: {keys: [{name: key1, secret: '%s'}]}}", K1);
    cbc1 = writer(k);
    snprintf(k, sizeof(k), "{aescbc: {keys: [{name: key9, secret: '%s'}]}}", K9);
    cbc9 = writer(k);
    snprintf(k, sizeof(k), "{secretbox: {keys: [{name: s1, secret: '%s'}]}}", S1);
    sb1 = writer(k);

    for (int i = 0; i < 7; i++) {
        snprintf(k, sizeof(k), "/registry/secrets/ns/gcm-%d", i);
        put_enc(&b, gcm2, k, false);
    }
    for (int i = 0; i < 5; i++) {
        snprintf(k, sizeof(k), "/registry/secrets/ns/cbc-%d", i);
        put_enc(&b, cbc1, k, false);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(k, sizeof(k), "/registry/secrets/ns/sb-%d", i);
        put_enc(&b, sb1, k, false);
    }
    put_plain(&b, "/registry/secrets/ns/plain-0");
    put_plain(&b, "/registry/secrets/ns/plain-1");
    for (int i = 0; i < 4; i++) {
        snprintf(k, sizeof(k), "/registry/secrets/ns/kms2a-%d", i);
        put_kmsv2(&b, k, "kv2", "key-A");
    }
    put_kmsv2(&b, "/registry/secrets/ns/kms2b-0", "kv2", "key-B");
    put_kmsv1(&b, "/registry/secrets/ns/kms1-0", "kv1");
    put_kmsv1(&b, "/registry/secrets/ns/kms1-1", "kv1");
    /* undecryptable: a key the config lacks, a corrupted value, a bad EncryptedObject, an
     * unknown KMS provider */
    put_enc(&b, cbc9, "/registry/secrets/ns/x-lacking", false);
    put_enc(&b, gcm2, "/registry/secrets/ns/x-corrupt", true);
    put_kmsv2(&b, "/registry/secrets/ns/x-kms-nokeyid", "kv2", "");
    put_kmsv2(&b, "/registry/secrets/ns/x-kms-unknown", "nope", "key-A");

    for (int i = 0; i < 3; i++) {
        snprintf(k, sizeof(k), "/registry/configmaps/ns/cm-%d", i);
        put_plain(&b, k);
    }
    put_enc(&b, cbc1, "/registry/configmaps/ns/cm-enc-0", false);
    put_enc(&b, cbc1, "/registry/configmaps/ns/cm-enc-1", false);
    put_enc(&b, sb1, "/registry/example.com/widgets/ns/w1", false);
    put_enc(&b, sb1, "/registry/example.com/widgets/ns/w2", false);
    /* events: a resource no rule names (identity); masterleases: not a resource (spec 4) */
    for (int i = 0; i < 3; i++) {
        snprintf(k, sizeof(k), "/registry/events/ns/ev-%d", i);
        put_plain(&b, k);
    }
    put_plain(&b, "/registry/masterleases/10.0.0.1");
    put_plain(&b, "/registry/masterleases/10.0.0.2");
    put_enc(&b, cbc1, "/registry/masterleases/10.0.0.3", false);
    /* outside the prefix: never counted */
    put_plain(&b, "compact_rev_key");
    put_plain(&b, "/registry2/secrets/ns/s");
    put_plain(&b, "/registr");
    batch_flush(&b);
    ar_chain_unref(gcm2);
    ar_chain_unref(cbc1);
    ar_chain_unref(cbc9);
    ar_chain_unref(sb1);
}

static struct ar_verify_report *scan(const struct ar_verify_opts *o, int want)
{
    struct ar_chain *ch = verify_chain();
    struct ar_verify_report *rep = NULL;
    struct ar_etcd_error err;
    int r = ar_verify_run(S, ch, o, NULL, NULL, &rep, &err);

    ar_chain_unref(ch);
    if (r != want)
        fprintf(stderr, "verify: %d %s\n", r, err.msg);
    assert_int_equal(r, want);
    return rep;
}

static void check_secrets_row(const struct ar_verify_report *rep)
{
    const struct ar_verify_row *sec = ar_verify_find_row(rep, "", "secrets");

    assert_non_null(sec);
    assert_true(sec->known);
    assert_string_equal(sec->write, "aesgcm:k2");
    assert_int_equal(sec->total, 28);
    assert_int_equal(sec->stale, 10);
    assert_int_equal(sec->undecryptable, 4);
    assert_int_equal(sec->n, 7);
    assert_string_equal(sec->v[0].name, "aescbc:key1");
    assert_int_equal(sec->v[0].n, 5);
    assert_string_equal(sec->v[1].name, "aesgcm:k2");
    assert_int_equal(sec->v[1].n, 7);
    assert_string_equal(sec->v[2].name, "identity");
    assert_int_equal(sec->v[2].n, 2);
    assert_string_equal(sec->v[3].name, "kms:kv1");
    assert_int_equal(sec->v[3].n, 2);
    assert_string_equal(sec->v[4].name, "kms:kv2:key-A");
    assert_int_equal(sec->v[4].n, 4);
    assert_string_equal(sec->v[5].name, "kms:kv2:key-B");
    assert_int_equal(sec->v[5].n, 1);
    assert_string_equal(sec->v[6].name, "secretbox:s1");
    assert_int_equal(sec->v[6].n, 3);
    /* not under the write key: everything but the 7 aesgcm:k2 */
    assert_int_equal(ar_verify_not_write(sec), 21);
}

static void test_mixed(void **state)
{
    struct ar_verify_opts o = {0};
    struct ar_verify_report *rep;
    const struct ar_verify_row *row;

    seed_mixed();
    ar_etcd_kvs_peak_reset(ar_etcd_sync_client(S));
    rep = scan(&o, 0);
    assert_int_equal(rep->objects, 28 + 5 + 2 + 3 + 3);
    assert_int_equal(rep->undecryptable, 4);
    assert_int_equal(rep->stale, 10 + 2);
    assert_int_equal(rep->pages, 1);
    assert_int_equal(rep->revision_restarts, 0);
    assert_true(rep->revision > 0);
    assert_int_equal(rep->n_rows, 5);
    /* known rows first, by group then resource */
    assert_string_equal(rep->rows[0].resource, "configmaps");
    assert_string_equal(rep->rows[1].resource, "events");
    assert_string_equal(rep->rows[2].resource, "secrets");
    assert_string_equal(rep->rows[3].group, "example.com");
    assert_string_equal(rep->rows[3].resource, "widgets");
    assert_false(rep->rows[4].known);
    assert_string_equal(rep->rows[4].resource, "masterleases");
    check_secrets_row(rep);

    row = ar_verify_find_row(rep, "", "configmaps");
    assert_string_equal(row->write, "identity");
    assert_int_equal(row->total, 5);
    assert_int_equal(row->stale, 2);
    assert_int_equal(row->n, 2);
    assert_int_equal(ar_verify_count(row, "identity"), 3);
    assert_int_equal(ar_verify_count(row, "aescbc:key1"), 2);
    assert_int_equal(ar_verify_not_write(row), 2);

    row = ar_verify_find_row(rep, "", "events");
    assert_string_equal(row->write, "identity");
    assert_int_equal(row->total, 3);
    assert_int_equal(ar_verify_count(row, "identity"), 3);
    assert_int_equal(row->stale, 0);

    row = ar_verify_find_row(rep, "example.com", "widgets");
    assert_string_equal(row->write, "secretbox:s1");
    assert_int_equal(ar_verify_count(row, "secretbox:s1"), 2);
    assert_int_equal(ar_verify_not_write(row), 0);

    row = &rep->rows[4];
    assert_int_equal(row->total, 3);
    assert_int_equal(ar_verify_count(row, "identity"), 2);
    assert_int_equal(ar_verify_count(row, "aescbc:key1"), 1);
    assert_int_equal(ar_verify_not_write(row), 0); /* no write key: not a resource */
    assert_null(ar_verify_find_row(rep, "", "masterleases"));

    /* the undecryptable values, in key order, with kube-apiserver's reasons */
    assert_int_equal(rep->n_bad, 4);
    assert_string_equal(rep->bad[0].key, "/registry/secrets/ns/x-corrupt");
    assert_string_equal(rep->bad[0].resource, "secrets");
    assert_string_equal(rep->bad[0].reason, "cipher: message authentication failed");
    assert_string_equal(rep->bad[1].key, "/registry/secrets/ns/x-kms-nokeyid");
    assert_string_equal(rep->bad[1].reason, "failed to validate key id: keyID is empty");
    assert_string_equal(rep->bad[2].key, "/registry/secrets/ns/x-kms-unknown");
    assert_string_equal(rep->bad[2].reason, "no matching prefix found");
    assert_string_equal(rep->bad[3].key, "/registry/secrets/ns/x-lacking");
    assert_string_equal(rep->bad[3].reason,
                        "no matching key was found for the provided AES transformer");
    /* one page of 41 keys was the most the client held */
    assert_int_equal(rep->peak_page_kvs, 41);
    assert_int_equal(ar_etcd_kvs_peak(ar_etcd_sync_client(S)), 41);
    ar_verify_report_free(rep);
}

static void test_small_pages_and_resource(void **state)
{
    struct ar_verify_opts o = {.page_size = 3};
    struct ar_verify_report *rep;

    seed_mixed();
    ar_etcd_kvs_peak_reset(ar_etcd_sync_client(S));
    rep = scan(&o, 0);
    assert_int_equal(rep->objects, 41);
    assert_int_equal(rep->pages, 14); /* 41 keys, 3 a page */
    assert_int_equal(rep->peak_page_kvs, 3);
    assert_true(ar_etcd_kvs_peak(ar_etcd_sync_client(S)) <= 3);
    check_secrets_row(rep);
    ar_verify_report_free(rep);

    /* one resource's range only */
    o = (struct ar_verify_opts){.group = "", .resource = "secrets"};
    rep = scan(&o, 0);
    assert_int_equal(rep->n_rows, 1);
    assert_int_equal(rep->objects, 28);
    check_secrets_row(rep);
    ar_verify_report_free(rep);

    /* the same data under another --etcd-prefix is invisible */
    o = (struct ar_verify_opts){.etcd_prefix = "/other/"};
    rep = scan(&o, 0);
    assert_int_equal(rep->objects, 0);
    assert_int_equal(rep->n_rows, 0);
    ar_verify_report_free(rep);

    /* bad options */
    o = (struct ar_verify_opts){.group = "", .resource = NULL};
    {
        struct ar_chain *ch = verify_chain();
        struct ar_verify_report *r2 = (void *)1;

        assert_int_equal(ar_verify_run(S, ch, &o, NULL, NULL, &r2, NULL), -EINVAL);
        assert_null(r2);
        o = (struct ar_verify_opts){.group = "", .resource = "nosuchthings"};
        assert_int_equal(ar_verify_run(S, ch, &o, NULL, NULL, &r2, NULL), -ENOENT);
        ar_chain_unref(ch);
    }
}

/* ---- asynchronous: stop, compaction --------------------------------------------------------- */

struct async {
    struct ar_verify *v;
    unsigned progress;
    bool done, stop_in_progress, compact_in_progress;
    int status;
    struct ar_verify_report *rep;
};

static void on_compacted(void *arg, int status, const struct ar_etcd_result *res,
                         const struct ar_etcd_error *err)
{
    *(int *)arg = status == 0 ? 1 : -1;
}

static void a_progress(void *arg, const struct ar_verify_progress *p)
{
    struct async *a = arg;

    a->progress++;
    if (a->stop_in_progress)
        ar_verify_stop(a->v);
    if (a->compact_in_progress && a->progress == 1) {
        struct ar_etcd_op op = {.key = (const uint8_t *)"/cmp/secrets/ns/zz",
                                .key_len = 18,
                                .value = (const uint8_t *)"k8s\0zz",
                                .value_len = 6};
        struct ar_etcd_result *r;
        int flag = 0;

        /* a newer revision, and everything before it compacted: the scan's revision is gone */
        assert_int_equal(ar_etcd_sync_put(S, &op, &r, NULL), 0);
        assert_int_equal(ar_etcd_compact(ar_etcd_sync_client(S), r->revision, on_compacted, &flag),
                         0);
        ar_etcd_result_free(r);
        while (!flag)
            uv_run(ar_etcd_loop(ar_etcd_sync_client(S)), UV_RUN_ONCE);
        assert_int_equal(flag, 1);
    }
}

static void a_done(void *arg, int status, struct ar_verify_report *rep,
                   const struct ar_etcd_error *err)
{
    struct async *a = arg;

    a->done = true;
    a->status = status;
    a->rep = rep;
}

static void test_stop_and_compaction(void **state)
{
    struct ar_etcd_settings st;
    struct ar_chain *ch = verify_chain();
    struct batch b = {.n = 0};
    struct async a = {0};
    struct ar_etcd *c;
    uv_loop_t loop;
    char k[64];

    for (int i = 0; i < 10; i++) {
        snprintf(k, sizeof(k), "/cmp/secrets/ns/s%02d", i);
        put_plain(&b, k);
    }
    batch_flush(&b);
    uv_loop_init(&loop);
    etcd_harness_settings(&H, &st);
    assert_int_equal(ar_etcd_new(&loop, &st, &c), 0);

    /* stop from the progress callback: no done callback, nothing leaks (ASan) */
    a.stop_in_progress = true;
    assert_int_equal(
        ar_verify_start(c, ch, &(struct ar_verify_opts){.etcd_prefix = "/cmp", .page_size = 4},
                        a_progress, a_done, &a, &a.v),
        0);
    etcd_harness_run_for(&loop, 300);
    assert_int_equal(a.progress, 1);
    assert_false(a.done);

    /* stop with a request in flight */
    memset(&a, 0, sizeof(a));
    assert_int_equal(ar_verify_start(c, ch, &(struct ar_verify_opts){.etcd_prefix = "/cmp"},
                                     a_progress, a_done, &a, &a.v),
                     0);
    ar_verify_stop(a.v);
    etcd_harness_run_for(&loop, 300);
    assert_false(a.done);

    /* a compaction between two pages: the scan goes on at the newest revision (page after
     * page, then in two pieces at once) */
    for (unsigned par = 1; par <= 2; par++) {
        struct ar_etcd_op del = {.key = (const uint8_t *)"/cmp/secrets/ns/zz", .key_len = 18};
        struct ar_etcd_result *dr;

        memset(&a, 0, sizeof(a));
        a.compact_in_progress = true;
        assert_int_equal(
            ar_verify_start(
                c, ch,
                &(struct ar_verify_opts){.etcd_prefix = "/cmp", .page_size = 4, .parallel = par},
                a_progress, a_done, &a, &a.v),
            0);
        assert_true(etcd_harness_run_until(&loop, &a.done, 10000));
        assert_int_equal(a.status, 0);
        assert_int_equal(a.rep->revision_restarts, 1);
        assert_int_equal(a.rep->objects, 11); /* the 10 and zz, written after the first page */
        assert_int_equal(ar_verify_count(ar_verify_find_row(a.rep, "", "secrets"), "identity"), 11);
        ar_verify_report_free(a.rep);
        assert_int_equal(ar_etcd_sync_delete(S, &del, &dr, NULL), 0); /* the next one puts it */
        ar_etcd_result_free(dr);
    }

    /* parallel: stop from the progress callback, and with requests in flight */
    memset(&a, 0, sizeof(a));
    a.stop_in_progress = true;
    assert_int_equal(
        ar_verify_start(
            c, ch, &(struct ar_verify_opts){.etcd_prefix = "/cmp", .page_size = 2, .parallel = 3},
            a_progress, a_done, &a, &a.v),
        0);
    etcd_harness_run_for(&loop, 300);
    assert_int_equal(a.progress, 1);
    assert_false(a.done);
    memset(&a, 0, sizeof(a));
    assert_int_equal(
        ar_verify_start(
            c, ch, &(struct ar_verify_opts){.etcd_prefix = "/cmp", .page_size = 2, .parallel = 3},
            a_progress, a_done, &a, &a.v),
        0);
    ar_verify_stop(a.v);
    etcd_harness_run_for(&loop, 300);
    assert_false(a.done);

    ar_etcd_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    ar_chain_unref(ch);
}

/* Two reports count the same: objects, rows, entries, the undecryptable keys and reasons. */
static void same_report(const struct ar_verify_report *x0, const struct ar_verify_report *one)
{
    assert_int_equal(x0->objects, one->objects);
    assert_int_equal(x0->stale, one->stale);
    assert_int_equal(x0->undecryptable, one->undecryptable);
    assert_int_equal(x0->n_bad, one->n_bad);
    for (size_t i = 0; i < one->n_bad; i++) {
        assert_string_equal(x0->bad[i].key, one->bad[i].key);
        assert_string_equal(x0->bad[i].reason, one->bad[i].reason);
    }
    assert_int_equal(x0->n_rows, one->n_rows);
    for (size_t i = 0; i < one->n_rows; i++) {
        const struct ar_verify_row *x = &x0->rows[i], *y = &one->rows[i];

        assert_string_equal(x->group, y->group);
        assert_string_equal(x->resource, y->resource);
        assert_string_equal(x->write, y->write);
        assert_int_equal(x->total, y->total);
        assert_int_equal(x->stale, y->stale);
        assert_int_equal(x->n, y->n);
        for (size_t j = 0; j < y->n; j++) {
            assert_string_equal(x->v[j].name, y->v[j].name);
            assert_int_equal(x->v[j].n, y->v[j].n);
        }
    }
}

/* Pieces read at once (parallel 4, pages of 3: rounds of 12 keys): the sequential scan's
 * report, page for page, with one page per piece held at a time. */
static void test_parallel_pieces(void **state)
{
    struct ar_verify_report *one, *par;

    seed_mixed();
    one = scan(&(struct ar_verify_opts){.page_size = 3}, 0);
    ar_etcd_kvs_peak_reset(ar_etcd_sync_client(S));
    par = scan(&(struct ar_verify_opts){.page_size = 3, .parallel = 4}, 0);
    same_report(par, one);
    check_secrets_row(par);
    assert_int_equal(par->pages, 14); /* 41 keys: rounds of 12, 12, 12, 5 in pieces of 3 */
    assert_int_equal(par->peak_page_kvs, 3);
    /* the client held at most one keys-only page (12 keys) at a time */
    assert_true(ar_etcd_kvs_peak(ar_etcd_sync_client(S)) <= 12);
    ar_verify_report_free(par);
    /* more pieces than keys, and a parallel count over the cap */
    par = scan(&(struct ar_verify_opts){.page_size = 1000, .parallel = 99}, 0);
    same_report(par, one);
    assert_int_equal(par->pages, 1);
    ar_verify_report_free(par);
    par = scan(&(struct ar_verify_opts){.page_size = 1, .parallel = 16}, 0);
    same_report(par, one);
    assert_int_equal(par->pages, 41);
    ar_verify_report_free(par);
    ar_verify_report_free(one);
}

/* Rounds whose next range ends at a guess (ar_etcd_guess_end): pages of 2, 3 pieces (rounds of
 * 6 keys). A run of 6 keys then a gap past the guess (the round finds nothing: on to the end),
 * rounds that read everything up to their guess, a guess that carries through 0xff bytes: the
 * pieces' report is the page-after-page scan's, every key counted once. */
static void test_parallel_guess(void **state)
{
    struct batch b = {.n = 0};
    char k[64];

    for (int i = 0; i < 40; i++) {
        if (i < 6)
            snprintf(k, sizeof(k), "/guess/secrets/a-%03d", i);
        else if (i < 20)
            snprintf(k, sizeof(k), "/guess/secrets/z-%03d", i);
        else /* fe ff 01, 04, ... then ff 01 xx */
            snprintf(k, sizeof(k), "/guess/secrets/%s%c", i < 30 ? "\xfe\xff" : "\xff\x01",
                     (char)(i < 30 ? 3 * (i - 20) + 0xd0 : i - 29));
        put_plain(&b, k);
    }
    batch_flush(&b);
    for (unsigned page = 1; page <= 3; page++) {
        struct ar_verify_report *one, *par;

        one = scan(&(struct ar_verify_opts){.etcd_prefix = "/guess", .page_size = page}, 0);
        par = scan(
            &(struct ar_verify_opts){.etcd_prefix = "/guess", .page_size = page, .parallel = 3}, 0);
        assert_int_equal(one->objects, 40);
        same_report(par, one);
        ar_verify_report_free(one);
        ar_verify_report_free(par);
    }
}

/* Two scans of disjoint ranges at once on one client, merged: the same report as one scan. */
static void test_parallel_merge(void **state)
{
    static const char mid[] = "/registry/f";
    static const char end[] = "/registry0";
    struct ar_etcd_settings st;
    struct ar_chain *ch = verify_chain();
    struct async a = {0}, b = {0};
    struct ar_verify_report *one;
    struct ar_etcd *c;
    uv_loop_t loop;

    seed_mixed();
    one = scan(&(struct ar_verify_opts){0}, 0);
    uv_loop_init(&loop);
    etcd_harness_settings(&H, &st);
    assert_int_equal(ar_etcd_new(&loop, &st, &c), 0);
    assert_int_equal(
        ar_verify_start(c, ch,
                        &(struct ar_verify_opts){.start = (const uint8_t *)"/registry/",
                                                 .start_len = 10,
                                                 .end = (const uint8_t *)mid,
                                                 .end_len = sizeof(mid) - 1,
                                                 .page_size = 2},
                        a_progress, a_done, &a, &a.v),
        0);
    assert_int_equal(ar_verify_start(c, ch,
                                     &(struct ar_verify_opts){.start = (const uint8_t *)mid,
                                                              .start_len = sizeof(mid) - 1,
                                                              .end = (const uint8_t *)end,
                                                              .end_len = sizeof(end) - 1,
                                                              .page_size = 3},
                                     a_progress, a_done, &b, &b.v),
                     0);
    assert_true(etcd_harness_run_until(&loop, &a.done, 10000));
    assert_true(etcd_harness_run_until(&loop, &b.done, 10000));
    assert_int_equal(a.status, 0);
    assert_int_equal(b.status, 0);
    assert_int_equal(a.rep->objects, 5 + 3 + 2); /* configmaps, events, widgets */
    assert_int_equal(b.rep->objects, 3 + 28);    /* masterleases, secrets */
    assert_int_equal(ar_verify_report_merge(a.rep, b.rep), 0);
    same_report(a.rep, one);
    check_secrets_row(a.rep);
    ar_verify_report_free(a.rep);
    ar_verify_report_free(b.rep);
    ar_verify_report_free(one);
    ar_etcd_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    ar_chain_unref(ch);
}

static void test_unreachable(void **state)
{
    struct ar_etcd_settings st = {
        .endpoints = {"http://127.0.0.1:1"}, .n_endpoints = 1, .request_timeout_ms = 2000};
    struct ar_etcd_sync *s = NULL;
    struct ar_chain *ch = verify_chain();
    struct ar_verify_report *rep = (void *)1;
    struct ar_etcd_error err;

    assert_int_equal(ar_etcd_sync_new(&st, &s), 0);
    assert_int_equal(ar_verify_run(s, ch, &(struct ar_verify_opts){0}, NULL, NULL, &rep, &err),
                     -ECONNREFUSED);
    assert_null(rep);
    assert_int_equal(err.code, -ECONNREFUSED);
    assert_string_equal(err.endpoint, "http://127.0.0.1:1");
    ar_etcd_sync_free(s);
    ar_chain_unref(ch);
}

/* ---- many objects, bounded memory ------------------------------------------------------------
 */

static void count_progress(void *arg, const struct ar_verify_progress *p)
{
    (*(unsigned *)arg)++;
}

/* N objects (ATREST_TEST_BIG, default 20,000: forty times the window, so the bound is shown;
 * `make bench-reencrypt` runs 100,000 and 1,000,000) */
static int big_n(void)
{
    const char *e = getenv("ATREST_TEST_BIG");
    int n = e ? atoi(e) : 20000;

    return n >= 5000 ? n - n % 500 : 5000;
}

static void test_big(void **state)
{
    const int N = big_n();
    struct batch b = {.n = 0};
    struct ar_chain *w, *ch;
    struct ar_verify_report *rep = NULL;
    struct ar_etcd_error err;
    char k[128];
    unsigned progress = 0;
    uint64_t t0, t1;

    snprintf(k, sizeof(k), "{aescbc: {keys: [{name: key1, secret: '%s'}]}}", K1);
    w = writer(k);
    for (int i = 0; i < N; i++) {
        snprintf(k, sizeof(k), "/big/secrets/ns-%d/s-%06d", i % 7, i);
        put_enc(&b, w, k, false);
    }
    batch_flush(&b);
    ar_chain_unref(w);

    ch = verify_chain();
    ar_etcd_kvs_peak_reset(ar_etcd_sync_client(S));
    t0 = ar_etcd_now_ms();
    assert_int_equal(ar_verify_run(S, ch, &(struct ar_verify_opts){.etcd_prefix = "/big"},
                                   count_progress, &progress, &rep, &err),
                     0);
    t1 = ar_etcd_now_ms();
    fprintf(stderr, "verify: %d objects in %llu ms (%.0f/s)\n", N, (unsigned long long)(t1 - t0),
            N * 1000.0 / (double)(t1 - t0 ? t1 - t0 : 1));
    assert_int_equal(rep->objects, N);
    assert_int_equal(rep->n_rows, 1);
    assert_int_equal(ar_verify_count(&rep->rows[0], "aescbc:key1"), N);
    assert_int_equal(rep->rows[0].stale, N);
    assert_int_equal(rep->pages, N / 500);
    assert_int_equal(progress, N / 500 - 1); /* after every page but the last */
    /* bounded: the client never held more than one page, and the scan one small buffer */
    assert_int_equal(rep->peak_page_kvs, 500);
    assert_int_equal(ar_etcd_kvs_peak(ar_etcd_sync_client(S)), 500);
    assert_true(rep->peak_buf > 0 && rep->peak_buf <= 4096);
    ar_verify_report_free(rep);
    ar_chain_unref(ch);
}

/* ---- the tally without etcd: escaping and the bounded tables -----------------------------------
 */

static uint8_t *kmsv2_value(const char *name, const char *keyid, size_t *n)
{
    struct batch b = {.n = 0};
    uint8_t *v;

    put_kmsv2(&b, "k", name, keyid); /* built in the batch, never sent */
    *n = b.ops[0].value_len;
    v = malloc(*n);
    assert_non_null(v);
    memcpy(v, b.ops[0].value, *n);
    free(b.mem[0]);
    return v;
}

static void test_tally_bounds(void **state)
{
    struct ar_chain *ch = verify_chain();
    struct ar_verify_tally *t;
    struct ar_verify_report *rep;
    const struct ar_verify_row *row;
    static const char odd[] = "/registry/a\x1f\\b.example.com/th\xffings/ns/x";
    char k[128], id[32];

    assert_int_equal(ar_verify_tally_new(ch, "registry//", &t), 0);
    /* names from the key's bytes are escaped; the chain still sees the raw ones */
    assert_int_equal(
        ar_verify_tally_add(t, (const uint8_t *)odd, sizeof(odd) - 1, (const uint8_t *)"{}", 2), 0);
    /* 300 keyIDs: 255 entries, then "(other)" */
    for (int i = 0; i < 300; i++) {
        size_t n;
        uint8_t *v;

        snprintf(k, sizeof(k), "/registry/secrets/ns/s%03d", i);
        snprintf(id, sizeof(id), "key-%03d", i);
        v = kmsv2_value("kv2", id, &n);
        assert_int_equal(ar_verify_tally_add(t, (const uint8_t *)k, strlen(k), v, n), 0);
        free(v);
    }
    /* 1100 resources: 1021 more rows, then the row "(other)" */
    for (int i = 0; i < 1100; i++) {
        snprintf(k, sizeof(k), "/registry/g%04d.example.com/things/x", i);
        assert_int_equal(
            ar_verify_tally_add(t, (const uint8_t *)k, strlen(k), (const uint8_t *)"{}", 2), 0);
    }
    assert_int_equal(ar_verify_tally_add(t, NULL, 1, NULL, 0), -EINVAL);
    rep = ar_verify_tally_finish(t);
    assert_int_equal(rep->objects, 1 + 300 + 1100);
    assert_int_equal(rep->n_rows, AR_VERIFY_MAX_RESOURCES);
    row = ar_verify_find_row(rep, "a\\x1f\\x5cb.example.com", "th\\xffings");
    assert_non_null(row);
    assert_string_equal(row->write, "identity");
    assert_int_equal(ar_verify_count(row, "identity"), 1);
    row = ar_verify_find_row(rep, "", "secrets");
    assert_int_equal(row->n, AR_VERIFY_MAX_ENTRIES);
    assert_int_equal(ar_verify_count(row, "kms:kv2:key-000"), 1);
    assert_int_equal(ar_verify_count(row, "kms:kv2:key-254"), 1);
    assert_int_equal(ar_verify_count(row, "kms:kv2:key-255"), 0);
    assert_int_equal(ar_verify_count(row, "(other)"), 45);
    assert_int_equal(row->total, 300);
    /* rows: secrets, the odd one, g0000..g1020 (1023), then "(other)" with the other 79 */
    assert_non_null(ar_verify_find_row(rep, "g1020.example.com", "things"));
    assert_null(ar_verify_find_row(rep, "g1021.example.com", "things"));
    row = &rep->rows[rep->n_rows - 1];
    assert_false(row->known);
    assert_string_equal(row->resource, "(other)");
    assert_int_equal(row->total, 1100 - 1021);
    ar_verify_report_free(rep);

    /* 20 rows of 250 names each: 4096 entries in all, then "(other)" in each row */
    assert_int_equal(ar_verify_tally_new(ch, NULL, &t), 0);
    for (int r = 0; r < 20; r++) {
        for (int i = 0; i < 250; i++) {
            size_t n;
            uint8_t *v;

            snprintf(k, sizeof(k), "/registry/zz%02d/x%d", r, i);
            snprintf(id, sizeof(id), "key-%03d", i);
            v = kmsv2_value("kv2", id, &n);
            assert_int_equal(ar_verify_tally_add(t, (const uint8_t *)k, strlen(k), v, n), 0);
            free(v);
        }
    }
    rep = ar_verify_tally_finish(t);
    assert_int_equal(rep->n_rows, 20);
    assert_int_equal(rep->n_entries, AR_VERIFY_MAX_ALL_ENTRIES + 4);
    assert_string_equal(rep->rows[15].resource, "zz15");
    assert_int_equal(rep->rows[15].n, 250);
    assert_int_equal(ar_verify_count(&rep->rows[16], "(other)"), 250 - 96);
    assert_int_equal(rep->rows[16].n, 97);
    assert_int_equal(ar_verify_count(&rep->rows[19], "(other)"), 250);
    assert_int_equal(rep->rows[19].n, 1);
    ar_verify_report_free(rep);
    ar_chain_unref(ch);
}

/* ---- values and plaintext do not stay behind on the heap --------------------------------------
 */

/* Occurrences in [heap] of s without its first 16 bytes (malloc writes its free-list
 * pointers over the first 16 bytes of a freed block: a freed copy of s is still found by its
 * tail). *in_json counts those inside raw gateway JSON text (the whole s after "value":"):
 * libcurl's receive buffer, which atrest cannot wipe; every other copy (jansson's strings and
 * lexer buffer, the client's decoded values, the scan's plaintext) must be gone. */
static int heap_count(const char *s, int *in_json)
{
    static const char pre[] = "\"value\":\"";
    const size_t skip = 16, n = strlen(s), pl = sizeof(pre) - 1;
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int found = 0;

    *in_json = 0;
    if (!f || n <= skip + 16)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;

        if (!strstr(line, "[heap]") || sscanf(line, "%lx-%lx", &lo, &hi) != 2)
            continue;
        for (const char *p = (const char *)lo, *end = (const char *)hi;
             p < end && (p = memmem(p, (size_t)(end - p), s + skip, n - skip)); p += n - skip) {
            found++;
            if (p - (const char *)lo >= (ptrdiff_t)(skip + pl) && !memcmp(p - skip, s, skip) &&
                !memcmp(p - skip - pl, pre, pl))
                (*in_json)++;
        }
    }
    fclose(f);
    return found;
}

/* Child: scan /heap with a fresh client (the values were put by etcdctl, another process), free
 * everything, then look for the plaintexts and the base64 of the identity value. */
static int heap_child(const char *m1, const char *m2)
{
    struct ar_etcd_settings st;
    struct ar_etcd_sync *s;
    struct ar_chain *ch = verify_chain();
    struct ar_verify_report *rep = NULL;
    char b64[256];
    int n1, n2, nb, j1, j2, jb, r;

    etcd_harness_settings(&H, &st);
    if (ar_etcd_sync_new(&st, &s) < 0)
        return 10;
    r = ar_verify_run(s, ch, &(struct ar_verify_opts){.etcd_prefix = "/heap"}, NULL, NULL, &rep,
                      NULL);
    if (r < 0 || rep->objects != 2 || ar_verify_count(&rep->rows[0], "identity") != 1 ||
        ar_verify_count(&rep->rows[0], "aescbc:key1") != 1)
        return 11;
    ar_verify_report_free(rep);
    ar_etcd_sync_free(s);
    ar_chain_unref(ch);
    sodium_bin2base64(b64, sizeof(b64), (const uint8_t *)m1, strlen(m1),
                      sodium_base64_VARIANT_ORIGINAL);
    n1 = heap_count(m1, &j1);
    n2 = heap_count(m2, &j2);
    nb = heap_count(b64, &jb);
    fprintf(stderr, "heap: identity plaintext %d, aescbc plaintext %d, base64 %d (%d in JSON)\n",
            n1, n2, nb, jb);
    return n1 == 0 && n2 == 0 && nb >= 0 && nb == jb ? 0 : 1;
}

static void test_plaintext_not_on_heap(void **state)
{
    struct ar_chain *w;
    struct ar_buf out = AR_BUF_INIT;
    struct ar_result res;
    uint8_t rnd[16];
    char m1[64], m2[64], hex[33], cmd[512], path[300], y[256];
    const char *aad = "/heap/secrets/ns/b";
    FILE *f;
    pid_t pid;
    int st = 0;

#ifdef ATREST_SANITIZE
    skip(); /* ASan's allocator does not use [heap]: the scan would prove nothing */
#endif
    /* markers on the stack only; the values reach etcd through etcdctl (another process) */
    randombytes_buf(rnd, sizeof(rnd));
    sodium_bin2hex(hex, sizeof(hex), rnd, sizeof(rnd));
    snprintf(m1, sizeof(m1), "k8s-plain-%s", hex);
    randombytes_buf(rnd, sizeof(rnd));
    sodium_bin2hex(hex, sizeof(hex), rnd, sizeof(rnd));
    snprintf(m2, sizeof(m2), "k8s-secret-%s", hex);
    snprintf(y, sizeof(y), "{aescbc: {keys: [{name: key1, secret: '%s'}]}}", K1);
    w = writer(y);
    memset(&res, 0, sizeof(res));
    assert_int_equal(ar_chain_write(w, "", "secrets", (const uint8_t *)aad, strlen(aad),
                                    (const uint8_t *)m2, strlen(m2), &out, &res),
                     0);
    ar_chain_unref(w);
    snprintf(path, sizeof(path), "%s/heap-b.value", H.dir);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(out.p, 1, out.len, f), out.len);
    fclose(f);
    ar_buf_free(&out);
    snprintf(cmd, sizeof(cmd), "put /heap/secrets/ns/a '%s'", m1);
    assert_int_equal(etcd_harness_ctl(&H, cmd), 0);
    snprintf(cmd, sizeof(cmd), "put %s < '%s'", aad, path);
    assert_int_equal(etcd_harness_ctl(&H, cmd), 0);

    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(heap_child(m1, m2));
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixed),
        cmocka_unit_test(test_small_pages_and_resource),
        cmocka_unit_test(test_stop_and_compaction),
        cmocka_unit_test(test_parallel_merge),
        cmocka_unit_test(test_parallel_pieces),
        cmocka_unit_test(test_unreachable),
        cmocka_unit_test(test_tally_bounds),
        cmocka_unit_test(test_plaintext_not_on_heap),
        cmocka_unit_test(test_big),
        cmocka_unit_test(test_parallel_guess),
    };

    /* as the atrest binary does: libcurl's buffers (gRPC answers) are wiped when freed */
    if (ar_etcd_global_init() < 0)
        return 1;
    return cmocka_run_group_tests_name("verify", tests, group_setup, group_teardown);
}
