/*
 * tests/unit/test_node.c: the node interface's driver (coord/node.h) against a fake agent:
 * today's behaviour (apply, then prove, then report), completions before and after the op
 * returns, the newest desired config winning while one is in flight, failures with their
 * detail, and freeing with an op in flight.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "coord/node.h"
#include "crypto/config.h"

/* A valid config with a key generated now (never a fixed test key). */
static struct ar_config *make_config(void)
{
    struct ar_load_opts lo = {.reload = true};
    struct ar_config *c = NULL;
    struct ar_diags d;
    uint8_t key[32];
    char b64[64], y[1024];
    int n;

    randombytes_buf(key, sizeof(key));
    ar_b64_encode(key, sizeof(key), b64);
    sodium_memzero(key, sizeof(key));
    n = snprintf(y, sizeof(y),
                 "apiVersion: apiserver.config.k8s.io/v1\n"
                 "kind: EncryptionConfiguration\n"
                 "resources:\n"
                 "  - resources: [secrets]\n"
                 "    providers:\n"
                 "      - secretbox:\n"
                 "          keys:\n"
                 "            - name: k\n"
                 "              secret: %s\n"
                 "      - identity: {}\n",
                 b64);
    ar_diags_init(&d);
    assert_int_equal(ar_config_load_mem("node.yaml", y, (size_t)n, &lo, &c, &d), 0);
    ar_diags_free(&d);
    sodium_memzero(y, sizeof(y));
    sodium_memzero(b64, sizeof(b64));
    return c;
}

struct fake {
    bool async_apply, async_prove;
    int apply_status; /* what apply completes with */
    bool changed;
    int applies, proves, reports;
    struct ar_config *applied[8]; /* borrowed, for comparison */
    ar_node_apply_done apply_done;
    ar_node_prove_done prove_done;
    void *done_arg;
    struct ar_node_report last;
    char last_fp[AR_HASH_STRLEN];
    char last_err[512];
    enum ar_node_step steps[16];
    struct ar_config *effective; /* the config op's answer: the last applied (a reference) */
    bool with_config;
    char phases[8][16]; /* req->phase of each prove */
    char waiting[1024];
};

static void f_apply(void *agent, struct ar_config *cfg, ar_node_apply_done done, void *done_arg)
{
    struct fake *f = agent;
    struct ar_err e;

    f->applied[f->applies++ % 8] = cfg;
    if (f->with_config && f->apply_status >= 0) {
        ar_config_unref(f->effective);
        f->effective = ar_config_ref(cfg);
    }
    if (f->async_apply) {
        f->apply_done = done;
        f->done_arg = done_arg;
        return;
    }
    if (f->apply_status < 0) {
        ar_err_set(&e, f->apply_status, "/etc/kubernetes/enc.yaml", "cannot write: %s",
                   strerror(-f->apply_status));
        done(done_arg, f->apply_status, false, &e);
    } else {
        done(done_arg, 0, f->changed, NULL);
    }
}

static void f_prove(void *agent, const struct ar_prove_req *req, ar_node_prove_done done,
                    void *done_arg)
{
    struct fake *f = agent;
    char hash[AR_HASH_STRLEN];

    f->proves++;
    assert_ptr_equal(req->cfg, f->applied[(f->applies - 1) % 8]); /* the config just applied */
    /* the direct driver asks for proof that the file was loaded, by its bytes' hash */
    assert_int_equal(req->goal, AR_PROVE_LOADED);
    ar_config_file_hash_str(req->cfg, hash);
    assert_string_equal(req->file_hash, hash);
    snprintf(f->phases[(f->proves - 1) % 8], sizeof(f->phases[0]), "%s", req->phase);
    if (!f->with_config)
        assert_string_equal(req->phase, "direct");
    if (f->async_prove) {
        f->prove_done = done;
        f->done_arg = done_arg;
        return;
    }
    done(done_arg, 0, AR_NODE_PROOF_NONE, NULL);
}

static void f_report(void *agent, const struct ar_node_report *r)
{
    struct fake *f = agent;
    char line[512];

    f->steps[f->reports % 16] = r->step;
    f->reports++;
    f->last = *r;
    snprintf(f->last_fp, sizeof(f->last_fp), "%s", r->fingerprint ? r->fingerprint : "");
    snprintf(f->last_err, sizeof(f->last_err), "%s", ar_err_line(r->err, line, sizeof(line)));
    snprintf(f->waiting, sizeof(f->waiting), "%s", r->waiting_for ? r->waiting_for : "");
    f->last.fingerprint = NULL;
    f->last.err = NULL;
    f->last.waiting_for = NULL;
}

static struct ar_config *f_config(void *agent, bool desired)
{
    struct fake *f = agent;
    assert_false(desired);
    return f->effective;
}

static const struct ar_node_ops OPS = {.apply = f_apply, .prove = f_prove, .report = f_report};
static const struct ar_node_ops OPS_LOCAL = {
    .apply = f_apply, .prove = f_prove, .report = f_report, .config = f_config};

/* aescbc with the named keys (first writes) for secrets; secrets given base64 */
static struct ar_config *aescbc_config(const char *const *names, const char *const *b64, size_t n)
{
    struct ar_load_opts lo = {.reload = true};
    struct ar_config *c = NULL;
    struct ar_diags d;
    char y[2048];
    int off;

    off = snprintf(y, sizeof(y),
                   "apiVersion: apiserver.config.k8s.io/v1\n"
                   "kind: EncryptionConfiguration\n"
                   "resources:\n"
                   "  - resources: [secrets]\n"
                   "    providers:\n"
                   "      - aescbc:\n"
                   "          keys:\n");
    for (size_t i = 0; i < n; i++)
        off += snprintf(y + off, sizeof(y) - (size_t)off,
                        "            - name: %s\n"
                        "              secret: %s\n",
                        names[i], b64[i]);
    ar_diags_init(&d);
    assert_int_equal(ar_config_load_mem("node.yaml", y, (size_t)off, &lo, &c, &d), 0);
    ar_diags_free(&d);
    sodium_memzero(y, sizeof(y));
    return c;
}

static void new_b64(char b64[64])
{
    uint8_t key[32];
    randombytes_buf(key, sizeof(key));
    ar_b64_encode(key, sizeof(key), b64);
    sodium_memzero(key, sizeof(key));
}

/* Without etcd, a desired config that drops k1 (aescbc{k1} -> aescbc{k2}) runs stage and
 * promote on this node and stops at promote (k2 writes, k1 still reads), saying why; it never
 * applies `to`. A later desired config keeping k1 restarts from there and ends at it. */
static void test_local_drop_waits(void **state)
{
    struct fake f = {.changed = true, .with_config = true};
    struct ar_node *n;
    char k1[64], k2[64];
    const char *n1[] = {"k1"}, *n2[] = {"k2"}, *n21[] = {"k2", "k1"};
    struct ar_config *c1, *c2, *c21, *first;
    char fp[AR_HASH_STRLEN], efp[AR_HASH_STRLEN];

    new_b64(k1);
    new_b64(k2);
    c1 = aescbc_config(n1, (const char *[]){k1}, 1);
    c2 = aescbc_config(n2, (const char *[]){k2}, 1);
    c21 = aescbc_config(n21, (const char *[]){k2, k1}, 2);
    assert_int_equal(ar_node_new(&OPS_LOCAL, &f, &n), 0);
    /* first install: direct */
    assert_int_equal(ar_node_desired(n, c1), 0);
    assert_int_equal(f.applies, 1);
    assert_string_equal(f.last.mode, "direct");
    assert_string_equal(f.waiting, "");
    first = f.effective;
    assert_ptr_equal(first, c1);

    assert_int_equal(ar_node_desired(n, c2), 0);
    assert_int_equal(f.applies, 3); /* stage, promote; never prune */
    assert_int_equal(f.proves, 3);
    assert_string_equal(f.phases[1], "stage");
    assert_string_equal(f.phases[2], "promote");
    assert_string_equal(f.last.mode, "local");
    assert_int_equal(f.last.result, AR_NODE_APPLIED);
    assert_int_equal(f.last.step, AR_NODE_IDLE);
    ar_config_fingerprint_str(c21, fp);
    ar_config_fingerprint_str(f.effective, efp);
    assert_string_equal(efp, fp); /* the promote config: aescbc{k2, k1} */
    assert_string_equal(f.last_fp, fp);
    ar_config_fingerprint_str(c2, fp);
    assert_string_not_equal(efp, fp);
    assert_string_equal(f.waiting,
                        "waiting before prune: without etcd atrest cannot verify that nothing "
                        "stored is still under aescbc key k1; re-encrypt and verify with `atrest "
                        "reencrypt` / `atrest verify`, then push a desired config that keeps "
                        "those keys, or configure etcd");

    /* the same desired again (SIGHUP, restart): nothing to apply before prune, still waiting */
    assert_int_equal(ar_node_desired(n, c2), 0);
    assert_int_equal(f.applies, 3);
    assert_int_equal(f.last.result, AR_NODE_UNCHANGED);
    assert_non_null(strstr(f.waiting, "under aescbc key k1;"));

    /* a desired config that keeps k1 restarts from the effective config and ends at it */
    assert_int_equal(ar_node_desired(n, c21), 0);
    assert_ptr_equal(f.effective, c21);
    assert_string_equal(f.waiting, "");
    assert_int_equal(f.last.result, AR_NODE_APPLIED);

    ar_node_free(n);
    ar_config_unref(f.effective);
    ar_config_unref(c1);
    ar_config_unref(c2);
    ar_config_unref(c21);
}

/* A read-key-only change (aescbc{k1} -> aescbc{k1, k2}) drops nothing: it ends at `to`. */
static void test_local_add_read_key(void **state)
{
    struct fake f = {.changed = true, .with_config = true};
    struct ar_node *n;
    char k1[64], k2[64];
    const char *n1[] = {"k1"}, *n12[] = {"k1", "k2"};
    struct ar_config *c1, *c12;

    new_b64(k1);
    new_b64(k2);
    c1 = aescbc_config(n1, (const char *[]){k1}, 1);
    c12 = aescbc_config(n12, (const char *[]){k1, k2}, 2);
    assert_int_equal(ar_node_new(&OPS_LOCAL, &f, &n), 0);
    assert_int_equal(ar_node_desired(n, c1), 0);
    assert_int_equal(ar_node_desired(n, c12), 0);
    assert_ptr_equal(f.effective, c12); /* ends at `to` itself */
    assert_int_equal(f.last.result, AR_NODE_APPLIED);
    assert_string_equal(f.last.mode, "local");
    assert_string_equal(f.waiting, "");
    assert_string_equal(f.phases[1], "stage");
    ar_node_free(n);
    ar_config_unref(f.effective);
    ar_config_unref(c1);
    ar_config_unref(c12);
}

static void test_direct_sync(void **state)
{
    struct fake f = {.changed = true};
    struct ar_node *n;
    struct ar_config *c = make_config();
    char fp[AR_HASH_STRLEN];

    assert_int_equal(ar_node_new(&OPS, &f, &n), 0);
    assert_int_equal(ar_node_desired(n, c), 0);
    assert_int_equal(f.applies, 1);
    assert_ptr_equal(f.applied[0], c);
    assert_int_equal(f.proves, 1);
    assert_int_equal(f.reports, 1);
    assert_string_equal(f.last.mode, "direct");
    assert_int_equal(f.last.result, AR_NODE_APPLIED);
    assert_int_equal(f.last.proof, AR_NODE_PROOF_NONE);
    assert_int_equal(f.last.step, AR_NODE_IDLE);
    ar_config_fingerprint_str(c, fp);
    assert_string_equal(f.last_fp, fp);
    assert_string_equal(f.last_err, "");

    f.changed = false; /* the same again: unchanged */
    assert_int_equal(ar_node_desired(n, c), 0);
    assert_int_equal(f.last.result, AR_NODE_UNCHANGED);
    assert_int_equal(f.reports, 2);
    ar_node_free(n);
    ar_config_unref(c);
}

static void test_apply_fails(void **state)
{
    struct fake f = {.apply_status = -ENOSPC};
    struct ar_node *n;
    struct ar_config *c = make_config();

    assert_int_equal(ar_node_new(&OPS, &f, &n), 0);
    assert_int_equal(ar_node_desired(n, c), 0);
    assert_int_equal(f.applies, 1);
    assert_int_equal(f.proves, 0); /* nothing to prove */
    assert_int_equal(f.last.result, AR_NODE_FAILED);
    assert_string_equal(f.last_err, "cannot write: No space left on device "
                                    "(/etc/kubernetes/enc.yaml)");
    ar_node_free(n);
    ar_config_unref(c);
}

/* Completions that come later: one apply at a time, and only the newest waiting config next. */
static void test_async_newest_wins(void **state)
{
    struct fake f = {.async_apply = true, .async_prove = true, .changed = true};
    struct ar_node *n;
    struct ar_config *c1 = make_config(), *c2 = make_config(), *c3 = make_config();

    assert_int_equal(ar_node_new(&OPS, &f, &n), 0);
    assert_int_equal(ar_node_desired(n, c1), 0);
    assert_int_equal(ar_node_step(n), AR_NODE_APPLYING);
    assert_int_equal(ar_node_desired(n, c2), 0);
    assert_int_equal(ar_node_desired(n, c3), 0);
    assert_int_equal(f.applies, 1); /* still c1 only */
    ar_config_unref(c2);            /* the driver holds its own references */
    ar_config_unref(c3);

    f.apply_done(f.done_arg, 0, true, NULL);
    assert_int_equal(ar_node_step(n), AR_NODE_PROVING);
    assert_int_equal(f.proves, 1);
    assert_int_equal(f.reports, 0);
    f.prove_done(f.done_arg, 0, AR_NODE_PROOF_NONE, NULL);
    assert_int_equal(f.reports, 1);
    assert_int_equal(f.last.result, AR_NODE_APPLIED);
    /* c3 next, c2 never */
    assert_int_equal(f.applies, 2);
    assert_ptr_equal(f.applied[1], c3);
    assert_int_equal(ar_node_step(n), AR_NODE_APPLYING);
    f.apply_done(f.done_arg, -EIO, false, NULL); /* no detail given: the driver adds one */
    assert_int_equal(f.reports, 2);
    assert_int_equal(f.last.result, AR_NODE_FAILED);
    assert_string_equal(f.last_err, "apply failed");
    assert_int_equal(f.proves, 1);
    assert_int_equal(ar_node_step(n), AR_NODE_IDLE);
    ar_node_free(n);
    ar_config_unref(c1);
}

/* Freed with an apply in flight: its completion lands in nothing (ASan watches). */
static void test_free_in_flight(void **state)
{
    struct fake f = {.async_apply = true};
    struct ar_node *n;
    struct ar_config *c = make_config();

    assert_int_equal(ar_node_new(&OPS, &f, &n), 0);
    assert_int_equal(ar_node_desired(n, c), 0);
    ar_config_unref(c);
    ar_node_free(n);
    f.apply_done(f.done_arg, 0, true, NULL);
    assert_int_equal(f.proves, 0);
    assert_int_equal(f.reports, 0);
}

static void test_bad_args(void **state)
{
    struct ar_node_ops no_prove = {.apply = f_apply, .report = f_report};
    struct ar_node *n = (struct ar_node *)&no_prove;
    struct fake f = {0};

    assert_int_equal(ar_node_new(&no_prove, &f, &n), -EINVAL);
    assert_null(n);
    assert_int_equal(ar_node_new(&OPS, &f, NULL), -EINVAL);
    assert_int_equal(ar_node_new(&OPS, &f, &n), 0);
    assert_int_equal(ar_node_desired(n, NULL), -EINVAL);
    ar_node_free(n);
}

/* The error carrier: one line, code, where; etcd's detail carried up. */
static void test_err(void **state)
{
    struct ar_err e;
    struct ar_etcd_error ee = {.code = -EHOSTUNREACH, .endpoint = "http://127.0.0.1:2379"};
    char line[64];

    ar_err_set(&e, -EINVAL, "a.yaml", "bad\nvalue %d", 7);
    assert_int_equal(e.code, -EINVAL);
    assert_string_equal(e.msg, "bad value 7");
    assert_string_equal(ar_err_line(&e, line, sizeof(line)), "bad value 7 (a.yaml)");
    snprintf(ee.msg, sizeof(ee.msg), "etcdserver: no leader");
    ar_err_from_etcd(&e, "registering", -EHOSTUNREACH, &ee);
    assert_string_equal(ar_err_line(&e, line, sizeof(line)),
                        "registering: etcdserver: no leader (http://127.0.0.1:2379)");
    ar_err_from_etcd(&e, "listing", -ETIMEDOUT, NULL);
    assert_string_equal(ar_err_line(&e, line, sizeof(line)), "listing: Connection timed out");
    ar_err_clear(&e);
    assert_string_equal(ar_err_line(&e, line, sizeof(line)), "");
    assert_string_equal(ar_err_line(NULL, line, sizeof(line)), "");
    ar_err_set(&e, -E2BIG, NULL, "%0300d", 1); /* cut, still terminated */
    assert_int_equal(strlen(e.msg), sizeof(e.msg) - 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_direct_sync),       cmocka_unit_test(test_apply_fails),
        cmocka_unit_test(test_async_newest_wins), cmocka_unit_test(test_free_in_flight),
        cmocka_unit_test(test_bad_args),          cmocka_unit_test(test_err),
        cmocka_unit_test(test_local_drop_waits),  cmocka_unit_test(test_local_add_read_key),
    };

    if (sodium_init() < 0)
        return 1;
    return cmocka_run_group_tests_name("node", tests, NULL, NULL);
}
