/*
 * tests/unit/test_daemon_reload.c: the daemon's reload of the desired file (agent/daemon.c,
 * included for its static functions) when the read fails for want of memory: the status says
 * why (the first diagnostic of the failure), the last valid config stays in force, and a later
 * read applies the file.
 */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "agent/daemon.c"

struct fx {
    char dir[64];
    char desired[PATH_MAX];
    char effective[PATH_MAX];
    struct agent a;
};

static void write_text(const char *p, const char *s)
{
    FILE *f = fopen(p, "w");

    assert_non_null(f);
    assert_int_equal(fputs(s, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* A valid desired config with a key generated now (never a fixed test key). */
static void write_desired(const char *p)
{
    uint8_t key[32];
    char b64[64], y[1024];

    randombytes_buf(key, sizeof(key));
    ar_b64_encode(key, sizeof(key), b64);
    sodium_memzero(key, sizeof(key));
    snprintf(y, sizeof(y),
             "apiVersion: apiserver.config.k8s.io/v1\n"
             "kind: EncryptionConfiguration\n"
             "resources:\n"
             "  - resources: [secrets]\n"
             "    providers:\n"
             "      - aescbc:\n"
             "          keys:\n"
             "            - name: k1\n"
             "              secret: %s\n"
             "      - identity: {}\n",
             b64);
    write_text(p, y);
    sodium_memzero(y, sizeof(y));
    sodium_memzero(b64, sizeof(b64));
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    assert_int_equal(sodium_init() < 0, 0);
    snprintf(f->dir, sizeof(f->dir), "/tmp/atrest-reload-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->desired, sizeof(f->desired), "%s/desired.yaml", f->dir);
    snprintf(f->effective, sizeof(f->effective), "%s/effective.yaml", f->dir);
    ar_log_set_stream(stderr);
    assert_int_equal(uv_loop_init(&f->a.loop), 0);
    assert_int_equal(uv_timer_init(&f->a.loop, &f->a.retry), 0);
    assert_int_equal(ar_state_init(&f->a.st), 0);
    f->a.metrics = ar_metrics_new();
    assert_non_null(f->a.metrics);
    f->a.set.desired_path = f->desired;
    f->a.set.effective_path = f->effective;
    assert_int_equal(node_start(&f->a), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    char cmd[128];

    ar_node_free(f->a.node);
    uv_close((uv_handle_t *)&f->a.retry, NULL);
    uv_run(&f->a.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->a.loop), 0);
    ar_state_free(&f->a.st);
    ar_metrics_free(f->a.metrics);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static void test_reload_enomem(void **state)
{
    struct fx *f = *state;
    struct agent *a = &f->a;
    char want[PATH_MAX + 128];
    long size;
    FILE *fp;

    write_desired(f->desired);
    fp = fopen(f->desired, "r");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    size = ftell(fp);
    fclose(fp);

    ar_effective_fail_allocs(1);
    reload_desired(a, true, "test"); /* read the empty diagnostic list before the fix */
    snprintf(want, sizeof(want), "%s:0:0: out of memory: cannot hold %ld bytes in locked memory",
             f->desired, size + 2);
    assert_false(a->st.desired_valid);
    assert_int_equal(a->st.desired_nerrors, 1);
    assert_string_equal(a->st.desired_error, want);
    assert_int_equal(a->st.last_reload_result, AR_RELOAD_INVALID);
    assert_string_equal(a->st.last_reload_error, want);
    assert_null(a->st.effective);

    /* memory is back: the same file is read, written to the effective file and adopted */
    reload_desired(a, true, "test");
    assert_true(a->st.desired_valid);
    assert_null(a->st.desired_error);
    assert_int_equal(a->st.last_reload_result, AR_RELOAD_APPLIED);
    assert_non_null(a->st.effective);

    /* the effective file cannot be read back for want of memory: a failure that says why */
    struct ar_err e;
    ar_effective_fail_allocs(1);
    assert_int_equal(adopt_effective(a, &e), -ENOMEM);
    assert_int_equal(e.code, -ENOMEM);
    fp = fopen(f->effective, "r");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    size = ftell(fp);
    fclose(fp);
    snprintf(want, sizeof(want), "%s:0:0: out of memory: cannot hold %ld bytes in locked memory",
             f->effective, size + 2);
    assert_string_equal(e.msg, want);
    assert_non_null(a->st.effective); /* the config in force stays */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reload_enomem, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
