/* tests/unit/test_watch.c: following the desired file on a real libuv loop in a temp dir. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>
#include <uv.h>

#include "agent/log.h"
#include "agent/watch.h"

#define DEBOUNCE_MS 100

struct fx {
    uv_loop_t loop;
    char dir[256];
    char file[300];
    struct ar_watch *w;
    int calls;
    int last_status;
    /* burst writer */
    uv_timer_t burst;
    int burst_left;
};

static void on_change(void *arg, int status)
{
    struct fx *f = arg;
    f->calls++;
    f->last_status = status;
}

static void write_file(const char *p, const char *s)
{
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, s, strlen(s)), (ssize_t)strlen(s));
    close(fd);
}

static void on_stop(uv_timer_t *t)
{
    uv_stop(t->loop);
}

/* Run the loop for ms milliseconds (bounded). */
static void run_for(struct fx *f, unsigned ms)
{
    uv_timer_t t;
    uv_timer_init(&f->loop, &t);
    uv_timer_start(&t, on_stop, ms, 0);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    snprintf(f->dir, sizeof(f->dir), "/tmp/atrest-watch-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->file, sizeof(f->file), "%s/desired.yaml", f->dir);
    ar_log_set_level(AR_LOG_ERR);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    char cmd[700];
    ar_watch_close(f->w);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s.old'", f->dir, f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static void start(struct fx *f, unsigned poll_ms)
{
    assert_int_equal(ar_watch_start(&f->loop, f->file, DEBOUNCE_MS, poll_ms, on_change, f, &f->w),
                     0);
}

static void test_in_place_write(void **state)
{
    struct fx *f = *state;
    write_file(f->file, "one\n");
    start(f, 60000);
    run_for(f, 50);
    assert_int_equal(f->calls, 0); /* the first look does not call back */
    write_file(f->file, "two\n");
    run_for(f, DEBOUNCE_MS / 2);
    assert_int_equal(f->calls, 0); /* still debouncing */
    run_for(f, DEBOUNCE_MS + 150);
    assert_int_equal(f->calls, 1);
    assert_int_equal(f->last_status, 0);
    /* same bytes again: an event, but no change */
    write_file(f->file, "two\n");
    run_for(f, DEBOUNCE_MS + 150);
    assert_int_equal(f->calls, 1);
    struct ar_watch_stats st;
    ar_watch_get_stats(f->w, &st);
    assert_true(st.fs_events >= 2);
    assert_true(st.armed);
}

static void test_rename_over(void **state)
{
    struct fx *f = *state;
    char tmp[320];
    write_file(f->file, "one\n");
    start(f, 60000);
    snprintf(tmp, sizeof(tmp), "%s/.desired.yaml.swp", f->dir);
    write_file(tmp, "renamed\n");
    assert_int_equal(rename(tmp, f->file), 0);
    run_for(f, DEBOUNCE_MS + 200);
    assert_int_equal(f->calls, 1);
    /* a second editor save: the watch survives the first rename */
    write_file(tmp, "renamed again\n");
    assert_int_equal(rename(tmp, f->file), 0);
    run_for(f, DEBOUNCE_MS + 200);
    assert_int_equal(f->calls, 2);
    /* other files in the directory are ignored */
    snprintf(tmp, sizeof(tmp), "%s/unrelated", f->dir);
    write_file(tmp, "x\n");
    run_for(f, DEBOUNCE_MS + 100);
    assert_int_equal(f->calls, 2);
    struct ar_watch_stats st;
    ar_watch_get_stats(f->w, &st);
    assert_int_equal(st.changes, 2);
}

/* Kubernetes ConfigMap volume: desired.yaml -> ..data/desired.yaml, ..data -> ..TS dir;
 * an update writes a new ..TS dir and renames a new symlink over ..data. */
static void test_configmap_data_swap(void **state)
{
    struct fx *f = *state;
    char p[300], q[600];
    snprintf(p, sizeof(p), "%s/..2025_01_01_a", f->dir);
    assert_int_equal(mkdir(p, 0700), 0);
    snprintf(q, sizeof(q), "%s/desired.yaml", p);
    write_file(q, "version a\n");
    snprintf(p, sizeof(p), "%s/..data", f->dir);
    assert_int_equal(symlink("..2025_01_01_a", p), 0);
    assert_int_equal(symlink("..data/desired.yaml", f->file), 0);
    start(f, 60000);
    run_for(f, 50);
    assert_int_equal(f->calls, 0);

    snprintf(p, sizeof(p), "%s/..2025_01_01_b", f->dir);
    assert_int_equal(mkdir(p, 0700), 0);
    snprintf(q, sizeof(q), "%s/desired.yaml", p);
    write_file(q, "version b\n");
    snprintf(p, sizeof(p), "%s/..data_tmp", f->dir);
    assert_int_equal(symlink("..2025_01_01_b", p), 0);
    snprintf(q, sizeof(q), "%s/..data", f->dir);
    assert_int_equal(rename(p, q), 0);
    run_for(f, DEBOUNCE_MS + 200);
    assert_int_equal(f->calls, 1);
    assert_int_equal(f->last_status, 0);
}

static void on_burst(uv_timer_t *t)
{
    struct fx *f = t->data;
    char s[32];
    snprintf(s, sizeof(s), "burst %d\n", f->burst_left);
    write_file(f->file, s);
    if (--f->burst_left == 0)
        uv_timer_stop(t);
}

static void test_debounce_collapses_burst(void **state)
{
    struct fx *f = *state;
    write_file(f->file, "start\n");
    start(f, 60000);
    /* 15 writes 10 ms apart: one quiet period at the end, one callback */
    f->burst_left = 15;
    uv_timer_init(&f->loop, &f->burst);
    f->burst.data = f;
    uv_timer_start(&f->burst, on_burst, 10, 10);
    run_for(f, 15 * 10 + DEBOUNCE_MS + 250);
    uv_close((uv_handle_t *)&f->burst, NULL);
    assert_int_equal(f->calls, 1);
    struct ar_watch_stats st;
    ar_watch_get_stats(f->w, &st);
    assert_true(st.fs_events >= 15);
    assert_int_equal(st.looks, 2); /* the first look + one after the burst */
}

static void test_errors_reported_once(void **state)
{
    struct fx *f = *state;
    write_file(f->file, "x\n");
    start(f, 60000);
    assert_int_equal(unlink(f->file), 0);
    run_for(f, DEBOUNCE_MS + 150);
    assert_int_equal(f->calls, 1);
    assert_int_equal(f->last_status, -ENOENT);
    /* the same error on a later look: no new callback */
    ar_watch_poke(f->w);
    assert_int_equal(f->calls, 1);
    write_file(f->file, "");
    run_for(f, DEBOUNCE_MS + 150);
    assert_int_equal(f->calls, 2);
    assert_int_equal(f->last_status, -ENODATA);
    write_file(f->file, "back\n");
    run_for(f, DEBOUNCE_MS + 150);
    assert_int_equal(f->calls, 3);
    assert_int_equal(f->last_status, 0);
}

static void test_poll_looks_without_events(void **state)
{
    struct fx *f = *state;
    write_file(f->file, "x\n");
    start(f, 200);
    /* change the content without an event reaching us: stop the directory watch by hand is not
     * possible from outside, so check that a poll finds a change made while events are
     * debounced away: write, then run only the poll interval */
    struct ar_watch_stats st0, st1;
    ar_watch_get_stats(f->w, &st0);
    run_for(f, 450);
    ar_watch_get_stats(f->w, &st1);
    assert_true(st1.looks >= st0.looks + 2); /* polls looked twice */
    assert_int_equal(f->calls, 0);           /* and found nothing new */
}

static void test_directory_replaced(void **state)
{
    struct fx *f = *state;
    char old[300];
    write_file(f->file, "first\n");
    start(f, 60000);
    snprintf(old, sizeof(old), "%s.old", f->dir);
    assert_int_equal(rename(f->dir, old), 0);
    run_for(f, 100);
    struct ar_watch_stats st;
    ar_watch_get_stats(f->w, &st);
    assert_false(st.armed);
    assert_int_equal(mkdir(f->dir, 0700), 0);
    write_file(f->file, "second\n");
    /* re-armed within a second (the re-arm timer), then it looks */
    run_for(f, 1400);
    ar_watch_get_stats(f->w, &st);
    assert_true(st.armed);
    assert_int_equal(st.rearms, 1);
    assert_int_equal(f->calls, 1);
    /* and events in the new directory are seen */
    write_file(f->file, "third\n");
    run_for(f, DEBOUNCE_MS + 150);
    assert_int_equal(f->calls, 2);
}

/* The directory removed and made again at once, before the loop sees the events: ext4 and
 * tmpfs hand out the same inode number, so comparing inodes does not notice that the inotify
 * watch died with the old directory. Later writes must still be seen at once (not at the next
 * poll, a minute away here). */
static void test_directory_recreated_same_inode(void **state)
{
    struct fx *f = *state;
    struct stat st0, st1;
    write_file(f->file, "first\n");
    start(f, 60000);
    assert_int_equal(stat(f->dir, &st0), 0);
    assert_int_equal(unlink(f->file), 0);
    assert_int_equal(rmdir(f->dir), 0);
    assert_int_equal(mkdir(f->dir, 0700), 0);
    assert_int_equal(stat(f->dir, &st1), 0);
    if (st0.st_ino != st1.st_ino)
        print_message("note: the inode was not reused here (%lu -> %lu)\n",
                      (unsigned long)st0.st_ino, (unsigned long)st1.st_ino);
    write_file(f->file, "second\n");
    run_for(f, DEBOUNCE_MS + 300);
    assert_int_equal(f->calls, 1);
    write_file(f->file, "third\n");
    run_for(f, DEBOUNCE_MS + 300);
    assert_int_equal(f->calls, 2);
    struct ar_watch_stats st;
    ar_watch_get_stats(f->w, &st);
    assert_true(st.armed);
    assert_int_equal(st.rearms, 1);
}

/* The directory moved away and another made in its place before the loop runs: the file
 * written into the new directory is seen when the watch moves over (no event names it). */
static void test_directory_swapped_before_loop(void **state)
{
    struct fx *f = *state;
    char old[300];
    write_file(f->file, "first\n");
    start(f, 60000);
    snprintf(old, sizeof(old), "%s.old", f->dir);
    assert_int_equal(rename(f->dir, old), 0);
    assert_int_equal(mkdir(f->dir, 0700), 0);
    write_file(f->file, "second\n");
    run_for(f, DEBOUNCE_MS + 300);
    assert_int_equal(f->calls, 1);
    write_file(f->file, "third\n");
    run_for(f, DEBOUNCE_MS + 300);
    assert_int_equal(f->calls, 2);
}

static void test_missing_directory_at_start(void **state)
{
    struct fx *f = *state;
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rmdir '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    start(f, 60000);
    struct ar_watch_stats st;
    ar_watch_get_stats(f->w, &st);
    assert_false(st.armed);
    assert_int_equal(mkdir(f->dir, 0700), 0);
    write_file(f->file, "hello\n");
    run_for(f, 1300);
    ar_watch_get_stats(f->w, &st);
    assert_true(st.armed);
    assert_int_equal(f->calls, 1);
    assert_int_equal(f->last_status, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_in_place_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rename_over, setup, teardown),
        cmocka_unit_test_setup_teardown(test_configmap_data_swap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_debounce_collapses_burst, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors_reported_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_poll_looks_without_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_directory_replaced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_directory_recreated_same_inode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_directory_swapped_before_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_directory_at_start, setup, teardown),
    };
    if (sodium_init() < 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
