/* tests/unit/test_metrics.c: the Prometheus registry and renderer against golden text. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "agent/metrics.h"

static char *render(struct ar_metrics *m)
{
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(ar_metrics_render(m, &out, &len), 0);
    assert_non_null(out);
    assert_int_equal(strlen(out), len);
    return out;
}

static void test_empty(void **state)
{
    struct ar_metrics *m = ar_metrics_new();
    char *s = render(m);
    assert_string_equal(s, "");
    free(s);
    ar_metrics_free(m);
    ar_metrics_free(NULL);
}

static void test_golden_atrest(void **state)
{
    struct ar_metrics *m = ar_metrics_new();
    assert_int_equal(ar_metrics_atrest_init(m, "0.1.0"), 0);
    char *s = render(m);
    static const char golden0[] =
        "# HELP atrest_config_reloads_total Reloads of the desired encryption configuration, by "
        "result.\n"
        "# TYPE atrest_config_reloads_total counter\n"
        "atrest_config_reloads_total{status=\"success\"} 0\n"
        "atrest_config_reloads_total{status=\"failure\"} 0\n"
        "# HELP atrest_config_reload_last_timestamp_seconds Unix time of the last reload of the "
        "desired configuration, by result.\n"
        "# TYPE atrest_config_reload_last_timestamp_seconds gauge\n"
        "# HELP atrest_config_last_config_info The effective encryption configuration in force: "
        "hash of its file's bytes (value 1).\n"
        "# TYPE atrest_config_last_config_info gauge\n"
        "# HELP atrest_desired_config_info The desired configuration file as last read: hash of "
        "its bytes (value 1).\n"
        "# TYPE atrest_desired_config_info gauge\n"
        "# HELP atrest_desired_config_invalid 1 when the desired configuration file as last read "
        "is invalid, else 0.\n"
        "# TYPE atrest_desired_config_invalid gauge\n"
        "atrest_desired_config_invalid 0\n"
        "# HELP atrest_effective_writes_total Times the effective configuration file was written.\n"
        "# TYPE atrest_effective_writes_total counter\n"
        "atrest_effective_writes_total 0\n"
        "# HELP atrest_chain_swaps_total Times a new provider chain was swapped in.\n"
        "# TYPE atrest_chain_swaps_total counter\n"
        "atrest_chain_swaps_total 0\n"
        "# HELP atrest_etcd_requests_total Requests to etcd, by operation and result.\n"
        "# TYPE atrest_etcd_requests_total counter\n"
        "# HELP atrest_build_info Build information of the atrest agent (value 1).\n"
        "# TYPE atrest_build_info gauge\n"
        "atrest_build_info{version=\"0.1.0\"} 1\n";
    assert_string_equal(s, golden0);
    free(s);

    const char *h1 = "sha256:3c607df3b2bf22c9d9f01d5314b4bbf411c48ef43ff44ff29b1d55b41367c795";
    const char *h2 = "sha256:0000000000000000000000000000000000000000000000000000000000000001";
    assert_int_equal(ar_metrics_desired(m, h1, false), 0);
    assert_int_equal(ar_metrics_reload(m, true, 1718000000.25), 0);
    assert_int_equal(ar_metrics_last_config(m, h1), 0);
    assert_int_equal(ar_metrics_effective_write(m), 0);
    assert_int_equal(ar_metrics_chain_swap(m), 0);
    assert_int_equal(ar_metrics_desired(m, h2, true), 0);
    assert_int_equal(ar_metrics_reload(m, false, 1718000060), 0);
    assert_int_equal(ar_metrics_reload(m, false, 1718000061.5), 0);
    assert_int_equal(ar_metrics_etcd_request(m, "range", "ok"), 0);
    assert_int_equal(ar_metrics_etcd_request(m, "range", "ok"), 0);
    assert_int_equal(ar_metrics_etcd_request(m, "txn", "error"), 0);
    s = render(m);
    static const char golden1[] =
        "# HELP atrest_config_reloads_total Reloads of the desired encryption configuration, by "
        "result.\n"
        "# TYPE atrest_config_reloads_total counter\n"
        "atrest_config_reloads_total{status=\"success\"} 1\n"
        "atrest_config_reloads_total{status=\"failure\"} 2\n"
        "# HELP atrest_config_reload_last_timestamp_seconds Unix time of the last reload of the "
        "desired configuration, by result.\n"
        "# TYPE atrest_config_reload_last_timestamp_seconds gauge\n"
        "atrest_config_reload_last_timestamp_seconds{status=\"success\"} 1718000000.25\n"
        "atrest_config_reload_last_timestamp_seconds{status=\"failure\"} 1718000061.5\n"
        "# HELP atrest_config_last_config_info The effective encryption configuration in force: "
        "hash of its file's bytes (value 1).\n"
        "# TYPE atrest_config_last_config_info gauge\n"
        "atrest_config_last_config_info{hash=\"sha256:"
        "3c607df3b2bf22c9d9f01d5314b4bbf411c48ef43ff44ff29b1d55b41367c795\"} 1\n"
        "# HELP atrest_desired_config_info The desired configuration file as last read: hash of "
        "its bytes (value 1).\n"
        "# TYPE atrest_desired_config_info gauge\n"
        "atrest_desired_config_info{hash=\"sha256:"
        "0000000000000000000000000000000000000000000000000000000000000001\"} 1\n"
        "# HELP atrest_desired_config_invalid 1 when the desired configuration file as last read "
        "is invalid, else 0.\n"
        "# TYPE atrest_desired_config_invalid gauge\n"
        "atrest_desired_config_invalid 1\n"
        "# HELP atrest_effective_writes_total Times the effective configuration file was written.\n"
        "# TYPE atrest_effective_writes_total counter\n"
        "atrest_effective_writes_total 1\n"
        "# HELP atrest_chain_swaps_total Times a new provider chain was swapped in.\n"
        "# TYPE atrest_chain_swaps_total counter\n"
        "atrest_chain_swaps_total 1\n"
        "# HELP atrest_etcd_requests_total Requests to etcd, by operation and result.\n"
        "# TYPE atrest_etcd_requests_total counter\n"
        "atrest_etcd_requests_total{op=\"range\",result=\"ok\"} 2\n"
        "atrest_etcd_requests_total{op=\"txn\",result=\"error\"} 1\n"
        "# HELP atrest_build_info Build information of the atrest agent (value 1).\n"
        "# TYPE atrest_build_info gauge\n"
        "atrest_build_info{version=\"0.1.0\"} 1\n";
    assert_string_equal(s, golden1);
    free(s);

    double v = -1;
    assert_true(ar_metric_get(m, AR_M_RELOADS, &v, "status", "failure", NULL));
    assert_true(v == 2);
    assert_false(ar_metric_get(m, AR_M_RELOADS, &v, "status", "other", NULL));
    assert_false(ar_metric_get(m, "atrest_nope", &v, NULL));
    /* Desired file unreadable: no hash series left. */
    assert_int_equal(ar_metrics_desired(m, NULL, true), 0);
    assert_false(ar_metric_get(m, AR_M_DESIRED_CONFIG, &v, "hash", h2, NULL));
    ar_metrics_free(m);
}

static void test_escaping(void **state)
{
    struct ar_metrics *m = ar_metrics_new();
    assert_int_equal(ar_metric_gauge_set(m, "x_info", "help with \\ backslash\nand \"quotes\"", 1,
                                         "path", "C:\\dir\n\"q\"", "b", "", NULL),
                     0);
    assert_int_equal(ar_metric_counter_add(m, "y:total", "plain", 3, NULL), 0);
    char *s = render(m);
    assert_string_equal(s, "# HELP x_info help with \\\\ backslash\\nand \"quotes\"\n"
                           "# TYPE x_info gauge\n"
                           "x_info{path=\"C:\\\\dir\\n\\\"q\\\"\",b=\"\"} 1\n"
                           "# HELP y:total plain\n"
                           "# TYPE y:total counter\n"
                           "y:total 3\n");
    free(s);
    ar_metrics_free(m);
}

static void test_values(void **state)
{
    struct ar_metrics *m = ar_metrics_new();
    const char *h = "v";
    assert_int_equal(ar_metric_gauge_set(m, "g", h, 0.1, "k", "a", NULL), 0);
    assert_int_equal(ar_metric_gauge_set(m, "g", h, -0.0, "k", "b", NULL), 0);
    assert_int_equal(ar_metric_gauge_set(m, "g", h, NAN, "k", "c", NULL), 0);
    assert_int_equal(ar_metric_gauge_set(m, "g", h, INFINITY, "k", "d", NULL), 0);
    assert_int_equal(ar_metric_gauge_set(m, "g", h, -INFINITY, "k", "e", NULL), 0);
    assert_int_equal(ar_metric_gauge_set(m, "g", h, 1e300, "k", "f", NULL), 0);
    assert_int_equal(ar_metric_gauge_set(m, "g", h, -42, "k", "g", NULL), 0);
    assert_int_equal(ar_metric_gauge_set(m, "g", h, 1.0 / 3.0, "k", "h", NULL), 0);
    assert_int_equal(ar_metric_gauge_set(m, "g", h, 18446744073709551616.0, "k", "i", NULL), 0);
    char *s = render(m);
    assert_string_equal(s, "# HELP g v\n# TYPE g gauge\n"
                           "g{k=\"a\"} 0.1\n"
                           "g{k=\"b\"} 0\n"
                           "g{k=\"c\"} NaN\n"
                           "g{k=\"d\"} +Inf\n"
                           "g{k=\"e\"} -Inf\n"
                           "g{k=\"f\"} 1e+300\n"
                           "g{k=\"g\"} -42\n"
                           "g{k=\"h\"} 0.33333333333333331\n"
                           "g{k=\"i\"} 1.8446744073709552e+19\n");
    free(s);
    ar_metrics_free(m);
}

static void test_misuse(void **state)
{
    struct ar_metrics *m = ar_metrics_new();
    /* bad names */
    assert_int_equal(ar_metric_counter_add(m, "1abc", "h", 1, NULL), -EINVAL);
    assert_int_equal(ar_metric_counter_add(m, "a-b", "h", 1, NULL), -EINVAL);
    assert_int_equal(ar_metric_counter_add(m, "", "h", 1, NULL), -EINVAL);
    assert_int_equal(ar_metric_counter_add(m, "c", "h", 1, "__x", "v", NULL), -EINVAL);
    assert_int_equal(ar_metric_counter_add(m, "c", "h", 1, "a:b", "v", NULL), -EINVAL);
    assert_int_equal(ar_metric_counter_add(m, "c", "h", 1, "a", NULL), -EINVAL); /* no value */
    assert_int_equal(ar_metric_counter_add(m, "c", "h", 1, "a", "1", "a", "2", NULL), -EINVAL);
    /* help required the first time */
    assert_int_equal(ar_metric_counter_add(m, "c", NULL, 1, NULL), -EINVAL);
    assert_int_equal(ar_metric_counter_add(m, "c", "h", 1, "a", "x", NULL), 0);
    assert_int_equal(ar_metric_counter_add(m, "c", NULL, 1, "a", "x", NULL), 0); /* known now */
    /* counters only go up */
    assert_int_equal(ar_metric_counter_add(m, "c", "h", -1, "a", "x", NULL), -EINVAL);
    assert_int_equal(ar_metric_counter_add(m, "c", "h", NAN, "a", "x", NULL), -EINVAL);
    /* type, help and label names are fixed at first use */
    assert_int_equal(ar_metric_gauge_set(m, "c", "h", 1, "a", "x", NULL), -EINVAL);
    assert_int_equal(ar_metric_counter_add(m, "c", "other help", 1, "a", "x", NULL), -EINVAL);
    assert_int_equal(ar_metric_counter_add(m, "c", "h", 1, "b", "x", NULL), -EINVAL);
    assert_int_equal(ar_metric_counter_add(m, "c", "h", 1, NULL), -EINVAL);
    assert_int_equal(ar_metric_info_set(m, "i", "h", "v", "1", NULL), 0);
    assert_int_equal(ar_metric_info_set(m, "i", "h", "w", "1", NULL), -EINVAL);
    /* a rejected info_set leaves the old series */
    double v = 0;
    assert_true(ar_metric_get(m, "i", &v, "v", "1", NULL));
    /* the series cap */
    char lv[16];
    int rc = 0, i;
    for (i = 0; i < AR_METRICS_MAX_SERIES + 1 && rc == 0; i++) {
        snprintf(lv, sizeof(lv), "%d", i);
        rc = ar_metric_counter_add(m, "many", "h", 1, "n", lv, NULL);
    }
    assert_int_equal(rc, -ENOSPC);
    assert_int_equal(i, AR_METRICS_MAX_SERIES + 1);
    char *s = render(m);
    assert_non_null(strstr(s, "c{a=\"x\"} 2\n"));
    assert_null(strstr(s, "c 1"));
    free(s);
    ar_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),    cmocka_unit_test(test_golden_atrest),
        cmocka_unit_test(test_escaping), cmocka_unit_test(test_values),
        cmocka_unit_test(test_misuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
