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
};

static void f_apply(void *agent, struct ar_config *cfg, ar_node_apply_done done, void *done_arg)
{
    struct fake *f = agent;
    struct ar_err e;

    f->applied[f->applies++ % 8] = cfg;
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
    f->last.fingerprint = NULL;
    f->last.err = NULL;
}

static const struct ar_node_ops OPS = {.apply = f_apply, .prove = f_prove, .report = f_report};

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
    };

    if (sodium_init() < 0)
        return 1;
    return cmocka_run_group_tests_name("node", tests, NULL, NULL);
}
