/*
 * tests/unit/test_etcd_cluster.c: the etcd client against a real 3-member cluster (failover,
 * loss of quorum, recovery) and against a TLS member with client certificates and RBAC auth.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "coord/etcd/etcd_sync.h"
#include "tests/support/etcd_harness.h"

static struct etcd_harness H;

#define K(s) (const uint8_t *)(s), strlen(s)

static int setup_cluster(void **state)
{
    struct etcd_harness_opts o = {.members = 3, .fast = true};

    curl_global_init(CURL_GLOBAL_DEFAULT);
    return etcd_harness_start(&H, &o) < 0 ? -1 : 0;
}

static int setup_tls(void **state)
{
    struct etcd_harness_opts o = {
        .members = 1, .tls = true, .fast = true, .extra = "--auth-token-ttl=2"};

    return etcd_harness_start(&H, &o) < 0 ? -1 : 0;
}

static int teardown(void **state)
{
    etcd_harness_destroy(&H);
    return 0;
}

static int put_s(struct ar_etcd_sync *s, const char *k, const char *v, struct ar_etcd_error *err)
{
    struct ar_etcd_op op = {.key = K(k), .value = K(v)};

    return ar_etcd_sync_put(s, &op, NULL, err);
}

static int get_s(struct ar_etcd_sync *s, const char *k, bool serializable, char *out, size_t n,
                 struct ar_etcd_error *err)
{
    struct ar_etcd_op op = {.key = K(k), .serializable = serializable};
    struct ar_etcd_result *r;
    int rc = ar_etcd_sync_range(s, &op, &r, err);

    if (rc == 0) {
        snprintf(out, n, "%s", r->n_kvs ? (char *)r->kvs[0].value : "");
        ar_etcd_result_free(r);
    }
    return rc;
}

/* Every kind of operation once; returns the first failure. */
static int all_ops(struct ar_etcd_sync *s, const char *tag, struct ar_etcd_error *err)
{
    char v[64];
    struct ar_etcd_result *r;
    struct ar_etcd_compare cmp = {
        .key = K(tag), .target = AR_ETCD_CMP_VERSION, .result = AR_ETCD_GREATER, .number = 0};
    struct ar_etcd_op del = {.type = AR_ETCD_DELETE, .key = K(tag)};
    struct ar_etcd_txn t = {.compare = &cmp, .n_compare = 1, .success = &del, .n_success = 1};
    int rc;

    if ((rc = put_s(s, tag, "v", err)) < 0)
        return rc;
    if ((rc = get_s(s, tag, false, v, sizeof(v), err)) < 0)
        return rc;
    if (strcmp(v, "v"))
        return -EIO;
    if ((rc = ar_etcd_sync_txn(s, &t, &r, err)) < 0)
        return rc;
    rc = r->succeeded ? 0 : -EIO;
    ar_etcd_result_free(r);
    if (rc < 0)
        return rc;
    if ((rc = ar_etcd_sync_lease_grant(s, 5, &r, err)) < 0)
        return rc;
    rc = ar_etcd_sync_lease_revoke(s, r->lease_id, err);
    ar_etcd_result_free(r);
    return rc;
}

static void test_cluster_failover(void **state)
{
    struct ar_etcd_settings st;
    struct ar_etcd_sync *s;
    struct ar_etcd_error err;
    char v[64];
    uint64_t t0, dt;
    int rc;

    etcd_harness_settings(&H, &st);
    st.request_timeout_ms = 3000;
    assert_int_equal(ar_etcd_sync_new(&st, &s), 0);
    assert_int_equal(all_ops(s, "c/0", &err), 0);

    /* the member the client uses hangs (SIGSTOP: connections are accepted, nothing answers):
     * a read moves on to another member in time instead of timing out */
    assert_int_equal(etcd_harness_stop_member(&H, 0, SIGSTOP), 0);
    t0 = ar_etcd_now_ms();
    rc = get_s(s, "c/0", false, v, sizeof(v), &err);
    dt = ar_etcd_now_ms() - t0;
    if (rc)
        fprintf(stderr, "hung member: read -> %d after %llu ms: %s: %s\n", rc,
                (unsigned long long)dt, err.endpoint, err.msg);
    assert_int_equal(rc, 0);
    assert_true(dt < 3000);
    assert_int_equal(etcd_harness_stop_member(&H, 0, SIGCONT), 0);
    assert_int_equal(etcd_harness_wait_healthy(&H, 0, 10000), 0);

    /* one member down (the one the client uses first): everything continues. SIGTERM, so a
     * leader hands over first; after a SIGKILLed leader, writes already forwarded to it stall
     * until etcd's own 7 s proposal timeout and their outcome is unknown (not retried) */
    assert_int_equal(etcd_harness_stop_member(&H, 0, SIGTERM), 0);
    for (int i = 0; i < 5; i++) {
        char tag[16];

        snprintf(tag, sizeof(tag), "c/1-%d", i);
        rc = all_ops(s, tag, &err);
        if (rc)
            fprintf(stderr, "op failed: %d %s: %s\n", rc, err.endpoint, err.msg);
        assert_int_equal(rc, 0);
    }

    /* two down: no quorum. Writes and linearizable reads fail with etcd's or the transport's
     * message within the timeout; serializable reads still answer from the survivor */
    assert_int_equal(etcd_harness_stop_member(&H, 1, SIGKILL), 0);
    t0 = ar_etcd_now_ms();
    rc = put_s(s, "c/2", "x", &err);
    dt = ar_etcd_now_ms() - t0;
    fprintf(stderr, "no quorum: put -> %d after %llu ms: %s: %s\n", rc, (unsigned long long)dt,
            err.endpoint, err.msg);
    assert_true(rc == -EHOSTUNREACH || rc == -ETIMEDOUT || rc == -ECONNREFUSED);
    assert_true(dt <= 3000 + 700);
    assert_true(err.msg[0] && err.endpoint[0]);
    if (rc == -EHOSTUNREACH) {
        assert_string_equal(err.msg, "etcdserver: no leader");
        assert_string_equal(err.endpoint, H.endpoint[2]);
    }
    t0 = ar_etcd_now_ms();
    rc = get_s(s, "c/0", false, v, sizeof(v), &err);
    assert_true(rc < 0);
    assert_true(ar_etcd_now_ms() - t0 <= 3000 + 700);
    assert_int_equal(get_s(s, "c/1-0", true, v, sizeof(v), &err), 0);

    /* members return: operations recover */
    assert_int_equal(etcd_harness_start_member(&H, 0), 0);
    assert_int_equal(etcd_harness_start_member(&H, 1), 0);
    assert_int_equal(etcd_harness_wait_healthy(&H, 0, 20000), 0);
    assert_int_equal(etcd_harness_wait_healthy(&H, 2, 20000), 0);
    assert_int_equal(all_ops(s, "c/3", &err), 0);
    ar_etcd_sync_free(s);
}

/* --- TLS and auth ------------------------------------------------------------------------- */

static void test_tls(void **state)
{
    struct ar_etcd_settings st;
    struct ar_etcd_sync *s;
    struct ar_etcd_error err;
    char v[16];

    etcd_harness_settings(&H, &st);
    st.request_timeout_ms = 2000;
    assert_int_equal(ar_etcd_sync_new(&st, &s), 0);
    assert_int_equal(put_s(s, "tls/k", "secret-ish", &err), 0);
    assert_int_equal(get_s(s, "tls/k", false, v, sizeof(v), &err), 0);
    assert_string_equal(v, "secret-ish");
    /* gRPC over TLS (ALPN h2) keeps its connection: many calls in a row, and every kind */
    for (int i = 0; i < 50; i++) {
        char k[32], want[16];

        snprintf(k, sizeof(k), "tls/n%d", i);
        snprintf(want, sizeof(want), "v%d", i);
        assert_int_equal(put_s(s, k, want, &err), 0);
        assert_int_equal(get_s(s, k, i % 2, v, sizeof(v), &err), 0);
        assert_string_equal(v, want);
    }
    assert_int_equal(all_ops(s, "tls/all", &err), 0);
    ar_etcd_sync_free(s);

    /* a CA that did not sign the server: clear error, no retry storm */
    st.cacert = H.other_ca;
    assert_int_equal(ar_etcd_sync_new(&st, &s), 0);
    assert_int_equal(get_s(s, "tls/k", false, v, sizeof(v), &err), -EACCES);
    assert_string_equal(err.endpoint, H.endpoint[0]);
    assert_non_null(strstr(err.msg, "certificate"));
    ar_etcd_sync_free(s);

    /* no client certificate: the server refuses the handshake */
    etcd_harness_settings(&H, &st);
    st.request_timeout_ms = 1500;
    st.cert = st.key = NULL;
    assert_int_equal(ar_etcd_sync_new(&st, &s), 0);
    assert_true(get_s(s, "tls/k", false, v, sizeof(v), &err) < 0);
    assert_true(err.msg[0] != 0);
    ar_etcd_sync_free(s);
}

static void test_auth(void **state)
{
    struct ar_etcd_settings st;
    struct ar_etcd_sync *s;
    struct ar_etcd_error err;
    char v[16];

    assert_int_equal(etcd_harness_ctl(&H, "user add root:rootpw --interactive=false"), 0);
    assert_int_equal(etcd_harness_ctl(&H, "user grant-role root root"), 0);
    assert_int_equal(etcd_harness_ctl(&H, "user add agent:agentpw --interactive=false"), 0);
    assert_int_equal(etcd_harness_ctl(&H, "role add app"), 0);
    assert_int_equal(etcd_harness_ctl(&H, "role grant-permission app readwrite /atrest/ "
                                          "--prefix=true"),
                     0);
    assert_int_equal(etcd_harness_ctl(&H, "user grant-role agent app"), 0);
    assert_int_equal(etcd_harness_ctl(&H, "auth enable"), 0);

    etcd_harness_settings(&H, &st);
    st.request_timeout_ms = 2000;
    st.username = "agent";
    st.password = "agentpw";
    assert_int_equal(ar_etcd_sync_new(&st, &s), 0);
    assert_int_equal(put_s(s, "/atrest/x", "1", &err), 0);
    assert_int_equal(put_s(s, "/other", "1", &err), -EACCES);
    assert_string_equal(err.msg, "etcdserver: permission denied");

    /* simple tokens expire after --auth-token-ttl (2 s) idle: renewed transparently */
    ar_etcd_sync_run_for(s, 3500);
    assert_int_equal(get_s(s, "/atrest/x", false, v, sizeof(v), &err), 0);
    assert_string_equal(v, "1");
    ar_etcd_sync_free(s);

    /* wrong password */
    st.password = "nope";
    assert_int_equal(ar_etcd_sync_new(&st, &s), 0);
    assert_int_equal(put_s(s, "/atrest/x", "2", &err), -EACCES);
    assert_string_equal(err.msg, "etcdserver: authentication failed, invalid user ID or password");
    ar_etcd_sync_free(s);

    /* no credentials at all */
    st.username = st.password = NULL;
    assert_int_equal(ar_etcd_sync_new(&st, &s), 0);
    assert_int_equal(put_s(s, "/atrest/x", "2", &err), -EACCES); /* gRPC: PermissionDenied */
    assert_string_equal(err.msg, "etcdserver: permission denied");
    ar_etcd_sync_free(s);
    /* the JSON gateway says it otherwise (InvalidArgument) */
    st.kv_json = true;
    assert_int_equal(ar_etcd_sync_new(&st, &s), 0);
    assert_int_equal(put_s(s, "/atrest/x", "2", &err), -EINVAL);
    assert_string_equal(err.msg, "etcdserver: user name is empty");
    ar_etcd_sync_free(s);
}

int main(void)
{
    const struct CMUnitTest cluster[] = {
        cmocka_unit_test(test_cluster_failover),
    };
    const struct CMUnitTest tls[] = {
        cmocka_unit_test(test_tls),
        cmocka_unit_test(test_auth),
    };
    int rc = cmocka_run_group_tests_name("etcd_cluster", cluster, setup_cluster, teardown);

    rc |= cmocka_run_group_tests_name("etcd_tls", tls, setup_tls, teardown);
    curl_global_cleanup();
    return rc;
}
