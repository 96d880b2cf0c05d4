/*
 * tests/unit/test_proof.c: the parsers of proof of load: Prometheus text (escapes, comments,
 * timestamps, bad lines), the metrics verdict for the 1.28, 1.31 and 1.34 styles (spec 3.4),
 * the kubeconfig subset (inline data, relative files, errors with FILE:LINE), the stored-key
 * prefix of a canary, and the reload command's argv.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <math.h>

#include "agent/proof.c" /* static stored_key, command_argv */

struct got {
    char names[16][128];
    char labels[16][512];
    double values[16];
    size_t n;
};

static int collect(void *arg, const char *name, const struct ar_prom_label *l, size_t n,
                   double value)
{
    struct got *g = arg;
    size_t o = 0;

    if (g->n == 16)
        return 1;
    snprintf(g->names[g->n], sizeof(g->names[0]), "%s", name);
    g->labels[g->n][0] = 0;
    for (size_t i = 0; i < n; i++)
        o += (size_t)snprintf(g->labels[g->n] + o, sizeof(g->labels[0]) - o, "%s%s=%s",
                              i ? "|" : "", l[i].name, l[i].value);
    g->values[g->n++] = value;
    return 0;
}

static void test_promtext(void **state)
{
    static const char text[] = "# HELP a_total A counter.\n"
                               "# TYPE a_total counter\n"
                               "a_total 3\n"
                               "\n"
                               "  b{x=\"1\",y=\"q\\\"uote\\\\back\\nnl\"} 2.5 1700000000000\r\n"
                               "c{ le = \"+Inf\" , } +Inf\n"
                               "d NaN\n"
                               "e{} -1e3\n"
                               "# a comment\n"
                               "bad{x=1} 1\n"
                               "bad2{x=\"1\" 1\n"
                               "bad3 notanumber\n"
                               "9bad 1\n"
                               "bad4{x=\"\\q\"} 1\n"
                               "bad5 1 2 3\n"
                               "f:g_h 7"; /* no final newline */
    struct got g = {0};
    size_t bad = 99;

    (void)state;
    assert_int_equal(ar_promtext_parse(text, strlen(text), collect, &g, &bad), 0);
    assert_int_equal(bad, 6);
    assert_int_equal(g.n, 6);
    assert_string_equal(g.names[0], "a_total");
    assert_string_equal(g.labels[0], "");
    assert_true(g.values[0] == 3);
    assert_string_equal(g.names[1], "b");
    assert_string_equal(g.labels[1], "x=1|y=q\"uote\\back\nnl");
    assert_true(g.values[1] == 2.5);
    assert_string_equal(g.names[2], "c");
    assert_string_equal(g.labels[2], "le=+Inf");
    assert_true(isinf(g.values[2]) && g.values[2] > 0);
    assert_string_equal(g.names[3], "d");
    assert_true(isnan(g.values[3]));
    assert_string_equal(g.names[4], "e");
    assert_true(g.values[4] == -1000);
    assert_string_equal(g.names[5], "f:g_h");
    assert_true(g.values[5] == 7);

    /* empty and comment-only input */
    memset(&g, 0, sizeof(g));
    assert_int_equal(ar_promtext_parse("", 0, collect, &g, &bad), 0);
    assert_int_equal(g.n, 0);
    assert_int_equal(bad, 0);
    assert_int_equal(ar_promtext_parse("# x\n#y", 7, collect, &g, NULL), 0);
    assert_int_equal(g.n, 0);
}

#define P    "apiserver_encryption_config_controller_"
#define IDH  "sha256:3c607df3b2bf22c9d9f01d5314b4bbf411c48ef43ff44ff29b1d55b41367c795"
#define HASH "sha256:6bc9f4aa2e5587afbb96074e1809550cbc4de3cc3a35717dac8ff2800a147fd3"

static void test_metrics_134(void **state)
{
    static const char text[] =
        "# HELP " P "last_config_info [ALPHA] Information about the last applied ...\n"
        "# TYPE " P "last_config_info gauge\n" P "last_config_info{apiserver_id_hash=\"" IDH
        "\",hash=\"" HASH "\"} 1\n" P "automatic_reloads_total{apiserver_id_hash=\"" IDH
        "\",status=\"success\"} 2\n";
    struct ar_metrics_verdict v;

    (void)state;
    assert_int_equal(ar_metrics_eval(text, strlen(text), HASH, 0, -1, &v), 0);
    assert_int_equal(v.style, AR_METRICS_HASH);
    assert_true(v.loaded);
    assert_string_equal(v.hash, HASH);
    assert_true(v.success_total == 2);
    /* another hash: not loaded, even with reloads after the write */
    assert_int_equal(ar_metrics_eval(text, strlen(text), "sha256:00", 0, 0, &v), 0);
    assert_int_equal(v.style, AR_METRICS_HASH);
    assert_false(v.loaded);
    assert_string_equal(v.hash, HASH);
}

static void test_metrics_131(void **state)
{
    static const char text[] =
        "# TYPE " P "automatic_reload_last_timestamp_seconds gauge\n" P
        "automatic_reload_last_timestamp_seconds{apiserver_id_hash=\"" IDH
        "\",status=\"failure\"} 1.7000002e+09\n" P
        "automatic_reload_last_timestamp_seconds{apiserver_id_hash=\"" IDH
        "\",status=\"success\"} 1.700000100e+09\n" P
        "automatic_reloads_total{apiserver_id_hash=\"" IDH "\",status=\"failure\"} 4\n" P
        "automatic_reloads_total{apiserver_id_hash=\"" IDH "\",status=\"success\"} 3\n";
    struct ar_metrics_verdict v;

    (void)state;
    /* success at 1700000100 s: loaded for a file written at or before it */
    assert_int_equal(ar_metrics_eval(text, strlen(text), HASH, 1700000100000ull, -1, &v), 0);
    assert_int_equal(v.style, AR_METRICS_RELOAD);
    assert_true(v.loaded);
    assert_true(v.success_total == 3);
    assert_true(v.last_success_s == 1700000100.0);
    assert_int_equal(ar_metrics_eval(text, strlen(text), HASH, 1700000100001ull, -1, &v), 0);
    assert_false(v.loaded);
    /* ... or when the counter grew since the start */
    assert_int_equal(ar_metrics_eval(text, strlen(text), HASH, 1700000100001ull, 2, &v), 0);
    assert_true(v.loaded);
    assert_int_equal(ar_metrics_eval(text, strlen(text), HASH, 1700000100001ull, 3, &v), 0);
    assert_false(v.loaded);
}

static void test_metrics_128(void **state)
{
    /* 1.28: unlabelled counters, timestamp with {status} only */
    static const char text[] = P "automatic_reload_failures_total 0\n" P
                                 "automatic_reload_last_timestamp_seconds{status=\"success\"} "
                                 "1.7e+09\n" P "automatic_reload_success_total 5\n";
    struct ar_metrics_verdict v;

    (void)state;
    assert_int_equal(ar_metrics_eval(text, strlen(text), HASH, 1700000000000ull, -1, &v), 0);
    assert_int_equal(v.style, AR_METRICS_RELOAD);
    assert_true(v.loaded);
    assert_true(v.success_total == 5);
    assert_int_equal(ar_metrics_eval(text, strlen(text), HASH, 1700000000500ull, 4, &v), 0);
    assert_true(v.loaded);
    assert_int_equal(ar_metrics_eval(text, strlen(text), HASH, 1700000000500ull, 5, &v), 0);
    assert_false(v.loaded);
    /* no reload metrics at all */
    assert_int_equal(ar_metrics_eval("process_start_time_seconds 1\n", 29, HASH, 0, -1, &v), 0);
    assert_int_equal(v.style, AR_METRICS_NONE);
    assert_false(v.loaded);
}

static const char KC_HDR[] = "apiVersion: v1\n"
                             "kind: Config\n"
                             "current-context: admin@k\n"
                             "contexts:\n"
                             "- name: other\n"
                             "  context: {cluster: nope, user: nope}\n"
                             "- name: admin@k\n"
                             "  context:\n"
                             "    cluster: k\n"
                             "    user: admin\n";

static void test_kubeconfig_inline(void **state)
{
    char buf[2048], err[256];
    struct ar_kubeconfig *k;

    (void)state;
    /* "Q0EK" = "CA\n", "Q0VSVAo=" = "CERT\n", "S0VZCg==" = "KEY\n" */
    snprintf(buf, sizeof(buf),
             "%sclusters:\n"
             "- name: k\n"
             "  cluster:\n"
             "    server: https://127.0.0.1:6443\n"
             "    certificate-authority-data: Q0EK\n"
             "users:\n"
             "- name: admin\n"
             "  user:\n"
             "    client-certificate-data: Q0VSVAo=\n"
             "    client-key-data: S0VZCg==\n"
             "    token: abc.def\n",
             KC_HDR);
    assert_int_equal(ar_kubeconfig_parse("kc", "/etc/k", buf, strlen(buf), &k, err, sizeof(err)),
                     0);
    assert_string_equal(k->server, "https://127.0.0.1:6443");
    assert_int_equal(k->ca_len, 3);
    assert_memory_equal(k->ca_data, "CA\n", 3);
    assert_int_equal(k->cert_len, 5);
    assert_memory_equal(k->cert_data, "CERT\n", 5);
    assert_int_equal(k->key_len, 4);
    assert_memory_equal(k->key_data, "KEY\n", 4);
    assert_string_equal(k->token, "abc.def");
    assert_null(k->ca_file);
    ar_kubeconfig_free(k);
}

static void test_kubeconfig_files(void **state)
{
    char buf[2048], err[256];
    struct ar_kubeconfig *k;

    (void)state;
    snprintf(buf, sizeof(buf),
             "%sclusters:\n"
             "- name: k\n"
             "  cluster:\n"
             "    server: https://10.0.0.1:6443\n"
             "    certificate-authority: pki/ca.crt\n"
             "users:\n"
             "- name: admin\n"
             "  user:\n"
             "    client-certificate: /abs/c.crt\n"
             "    client-key: c.key\n"
             "    tokenFile: tok\n",
             KC_HDR);
    assert_int_equal(ar_kubeconfig_parse("kc", "/etc/k", buf, strlen(buf), &k, err, sizeof(err)),
                     0);
    assert_string_equal(k->ca_file, "/etc/k/pki/ca.crt");
    assert_string_equal(k->cert_file, "/abs/c.crt");
    assert_string_equal(k->key_file, "/etc/k/c.key");
    assert_string_equal(k->token_file, "/etc/k/tok");
    assert_null(k->token);
    ar_kubeconfig_free(k);
}

static void expect_kc_error(const char *users, const char *clusters, const char *want)
{
    char buf[2048], err[256];
    struct ar_kubeconfig *k = (void *)1;

    snprintf(buf, sizeof(buf), "%s%s%s", KC_HDR, clusters, users);
    assert_int_equal(ar_kubeconfig_parse("kc.yaml", NULL, buf, strlen(buf), &k, err, sizeof(err)),
                     -EINVAL);
    assert_null(k);
    assert_string_equal(err, want);
}

static void test_kubeconfig_errors(void **state)
{
    static const char cl[] = "clusters:\n"
                             "- name: k\n"
                             "  cluster:\n"
                             "    server: https://127.0.0.1:6443\n";
    char err[256];
    struct ar_kubeconfig *k;

    (void)state;
    /* lines 1-10 KC_HDR, 11-14 clusters, 15 users:, 18 exec */
    expect_kc_error("users:\n- name: admin\n  user:\n    exec: {command: x}\n", cl,
                    "kc.yaml:18: user field \"exec\" is not supported by atrest");
    expect_kc_error("users:\n- name: other\n  user: {token: t}\n", cl,
                    "kc.yaml:16: users has no entry named \"admin\"");
    expect_kc_error("users:\n- name: admin\n  user: {client-key: k}\n", cl,
                    "kc.yaml:17: user \"admin\": a client certificate needs its key and vice "
                    "versa");
    expect_kc_error("users:\n- name: admin\n  user: {token: t}\n",
                    "clusters:\n- name: k\n  cluster:\n    server: ftp://x\n",
                    "kc.yaml:14: cluster \"k\": server must be an http(s) URL");
    expect_kc_error("users:\n- name: admin\n  user: {client-key-data: '!!'}\n", cl,
                    "kc.yaml:17: client-key-data: not valid base64");
    assert_int_equal(ar_kubeconfig_parse("kc.yaml", NULL, "a: [", 4, &k, err, sizeof(err)),
                     -EINVAL);
    assert_string_equal(err, "kc.yaml:2: did not find expected node content");
    assert_int_equal(
        ar_kubeconfig_parse("kc.yaml", NULL, "kind: Config\n", 13, &k, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "kc.yaml:1: no current-context");
}

static void test_stored_key(void **state)
{
    char k[128];

    (void)state;
    stored_key((const uint8_t *)"k8s:enc:aescbc:v1:key2:\x01\x02", 25, k, sizeof(k));
    assert_string_equal(k, "aescbc:key2");
    stored_key((const uint8_t *)"k8s:enc:secretbox:v1:s:1:xx", 27, k, sizeof(k));
    assert_string_equal(k, "secretbox:s");
    stored_key((const uint8_t *)"{\"kind\":\"Secret\"}", 17, k, sizeof(k));
    assert_string_equal(k, "identity");
    stored_key((const uint8_t *)"k8s\x00\x01", 5, k, sizeof(k));
    assert_string_equal(k, "identity");
    stored_key((const uint8_t *)"k8s:enc:aescbc", 14, k, sizeof(k));
    assert_string_equal(k, "unknown");
}

static void test_command_argv(void **state)
{
    char buf[256], *argv[8];

    (void)state;
    assert_int_equal(
        command_argv("  systemctl restart  kube-apiserver ", buf, sizeof(buf), argv, 8), 0);
    assert_string_equal(argv[0], "systemctl");
    assert_string_equal(argv[1], "restart");
    assert_string_equal(argv[2], "kube-apiserver");
    assert_null(argv[3]);
    assert_int_equal(command_argv("kill $(cat /run/x.pid)", buf, sizeof(buf), argv, 8), 0);
    assert_string_equal(argv[0], "/bin/sh");
    assert_string_equal(argv[1], "-c");
    assert_string_equal(argv[2], "kill $(cat /run/x.pid)");
    assert_null(argv[3]);
    assert_int_equal(command_argv("   ", buf, sizeof(buf), argv, 8), -EINVAL);
    assert_int_equal(command_argv("a b c d e f g h i", buf, sizeof(buf), argv, 8), -E2BIG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_promtext),          cmocka_unit_test(test_metrics_134),
        cmocka_unit_test(test_metrics_131),       cmocka_unit_test(test_metrics_128),
        cmocka_unit_test(test_kubeconfig_inline), cmocka_unit_test(test_kubeconfig_files),
        cmocka_unit_test(test_kubeconfig_errors), cmocka_unit_test(test_stored_key),
        cmocka_unit_test(test_command_argv),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
