/* tests/unit/test_effective.c: safe reads of the desired file, atomic effective-file writes. */
#include <dirent.h>
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
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "agent/effective.h"
#include "crypto/config.h"

struct fx {
    char dir[256];
    char eff[PATH_MAX];
    char state[PATH_MAX];
};

static void rm_rf(const char *p)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", p);
    assert_int_equal(system(cmd), 0);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/atrest-eff-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->eff, sizeof(f->eff), "%s/enc", f->dir);
    assert_int_equal(mkdir(f->eff, 0700), 0);
    strcat(f->eff, "/config.yaml");
    snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    rm_rf(f->dir);
    free(f);
    return 0;
}

static void write_file(const char *p, const char *s, size_t n)
{
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, s, n), (ssize_t)n);
    close(fd);
}

/* A valid config with one fresh random aescbc key named name, written to path. */
static void write_desired(const char *path, const char *name)
{
    uint8_t key[32];
    char b64[64], y[1024];
    randombytes_buf(key, sizeof(key));
    ar_b64_encode(key, sizeof(key), b64);
    sodium_memzero(key, sizeof(key));
    int n = snprintf(y, sizeof(y),
                     "apiVersion: apiserver.config.k8s.io/v1\n"
                     "kind: EncryptionConfiguration\n"
                     "resources:\n"
                     "  - resources: [secrets]\n"
                     "    providers:\n"
                     "      - aescbc:\n"
                     "          keys:\n"
                     "            - name: %s\n"
                     "              secret: %s\n"
                     "      - identity: {}\n",
                     name, b64);
    write_file(path, y, (size_t)n);
    sodium_memzero(y, sizeof(y));
}

static struct ar_config *load(const char *path)
{
    struct ar_config *c = NULL;
    struct ar_diags d;
    ar_diags_init(&d);
    int r = ar_config_read_checked(path, 0, &c, NULL, NULL, &d);
    if (r) {
        char line[512];
        for (size_t i = 0; i < d.n; i++) {
            ar_diag_format(&d.v[i], line, sizeof(line));
            fprintf(stderr, "%s\n", line);
        }
    }
    assert_int_equal(r, 0);
    ar_diags_free(&d);
    return c;
}

static size_t count_entries(const char *dir, const char *prefix)
{
    DIR *dp = opendir(dir);
    struct dirent *de;
    size_t n = 0;
    if (!dp)
        return 0;
    while ((de = readdir(dp)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") &&
            !strncmp(de->d_name, prefix, strlen(prefix)))
            n++;
    closedir(dp);
    return n;
}

static char *slurp(const char *p, size_t *len)
{
    FILE *fp = fopen(p, "rb");
    assert_non_null(fp);
    char *b = malloc(1 << 20);
    *len = fread(b, 1, 1 << 20, fp);
    fclose(fp);
    b[*len] = 0;
    return b;
}

static void test_write_content_mode_and_skip(void **state)
{
    struct fx *f = *state;
    char desired[PATH_MAX], err[512];
    snprintf(desired, sizeof(desired), "%s/desired.yaml", f->dir);
    write_desired(desired, "k1");
    struct ar_config *c = load(desired);
    struct ar_effective_opts o = {.path = f->eff, .state_dir = f->state, .history = 3};

    assert_int_equal(ar_effective_write(&o, c, err, sizeof(err)), 1);
    struct stat st;
    assert_int_equal(stat(f->eff, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    /* exactly the deterministic rendering */
    char *want;
    size_t wlen, glen;
    assert_int_equal(ar_config_render(c, false, &want, &wlen), 0);
    char *got = slurp(f->eff, &glen);
    assert_int_equal(glen, wlen);
    assert_memory_equal(got, want, wlen);
    sodium_memzero(got, glen);
    free(got);
    ar_config_render_free(want, wlen);
    /* and it loads back to the same fingerprint */
    struct ar_config *back = load(f->eff);
    assert_memory_equal(back->fingerprint, c->fingerprint, AR_SHA256_LEN);
    ar_config_unref(back);

    /* same content again: nothing written, nothing in history */
    struct stat st2;
    assert_int_equal(ar_effective_write(&o, c, err, sizeof(err)), 0);
    assert_int_equal(stat(f->eff, &st2), 0);
    assert_int_equal(st2.st_ino, st.st_ino);
    char hdir[PATH_MAX];
    assert_int_equal(ar_effective_history_dir(f->state, hdir, sizeof(hdir)), 0);
    assert_int_equal(count_entries(hdir, "effective-"), 0);
    /* no temp file left */
    char edir[PATH_MAX];
    snprintf(edir, sizeof(edir), "%s/enc", f->dir);
    assert_int_equal(count_entries(edir, ""), 1);
    ar_config_unref(c);
}

static void test_history_pruned(void **state)
{
    struct fx *f = *state;
    char desired[PATH_MAX], err[512], hdir[PATH_MAX], edir[PATH_MAX];
    struct ar_effective_opts o = {.path = f->eff, .state_dir = f->state, .history = 2};
    char *prev = NULL;
    size_t prevlen = 0;

    snprintf(desired, sizeof(desired), "%s/desired.yaml", f->dir);
    snprintf(edir, sizeof(edir), "%s/enc", f->dir);
    assert_int_equal(ar_effective_history_dir(f->state, hdir, sizeof(hdir)), 0);
    for (int i = 0; i < 5; i++) {
        char name[16];
        snprintf(name, sizeof(name), "key%d", i);
        write_desired(desired, name);
        struct ar_config *c = load(desired);
        if (i > 0)
            prev = slurp(f->eff, &prevlen);
        assert_int_equal(ar_effective_write(&o, c, err, sizeof(err)), 1);
        ar_config_unref(c);
        size_t want = i < 2 ? (size_t)i : 2;
        assert_int_equal(count_entries(hdir, "effective-"), want);
        if (prev) {
            /* the newest history file holds exactly the replaced bytes, mode 0600 */
            DIR *dp = opendir(hdir);
            struct dirent *de;
            char newest[NAME_MAX + 1] = "";
            while ((de = readdir(dp)))
                if (!strncmp(de->d_name, "effective-", 10) && strcmp(de->d_name, newest) > 0)
                    snprintf(newest, sizeof(newest), "%s", de->d_name);
            closedir(dp);
            char p[PATH_MAX + NAME_MAX + 2];
            snprintf(p, sizeof(p), "%s/%s", hdir, newest);
            size_t hl;
            char *h = slurp(p, &hl);
            assert_int_equal(hl, prevlen);
            assert_memory_equal(h, prev, hl);
            struct stat st;
            assert_int_equal(stat(p, &st), 0);
            assert_int_equal(st.st_mode & 07777, 0600);
            /* named effective-<time>-<16 hex of the old config's fingerprint>.yaml */
            assert_int_equal(strlen(newest), strlen("effective-20250101T000000.000000Z-") + 16 + 5);
            sodium_memzero(h, hl);
            free(h);
            sodium_memzero(prev, prevlen);
            free(prev);
            prev = NULL;
        }
    }
    assert_int_equal(count_entries(edir, ""), 1);
    struct stat st;
    assert_int_equal(stat(hdir, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
}

/* A history file dated in the future (a clock set back since it was written) must not make the
 * prune remove the copy just saved: history 1 keeps the replaced version, not the stray one. */
static void test_history_keeps_saved_copy_when_clock_went_back(void **state)
{
    struct fx *f = *state;
    char desired[PATH_MAX], err[512], hdir[PATH_MAX], future[PATH_MAX + 64];
    struct ar_effective_opts o = {.path = f->eff, .state_dir = f->state, .history = 1};
    struct ar_config *c;
    size_t alen, hl;
    char *a, *h;

    snprintf(desired, sizeof(desired), "%s/desired.yaml", f->dir);
    assert_int_equal(ar_effective_history_dir(f->state, hdir, sizeof(hdir)), 0);
    assert_int_equal(mkdir(f->state, 0700), 0);
    assert_int_equal(mkdir(hdir, 0700), 0);
    snprintf(future, sizeof(future), "%s/effective-29990101T000000.000000Z-0123456789abcdef.yaml",
             hdir);
    write_file(future, "old\n", 4);

    write_desired(desired, "first");
    c = load(desired);
    assert_int_equal(ar_effective_write(&o, c, err, sizeof(err)), 1);
    ar_config_unref(c);
    a = slurp(f->eff, &alen);
    write_desired(desired, "second");
    c = load(desired);
    assert_int_equal(ar_effective_write(&o, c, err, sizeof(err)), 1);
    ar_config_unref(c);

    assert_int_equal(count_entries(hdir, "effective-"), 1);
    assert_int_equal(access(future, F_OK), -1);
    DIR *dp = opendir(hdir);
    struct dirent *de;
    char p[PATH_MAX + NAME_MAX + 2] = "";
    while ((de = readdir(dp)))
        if (!strncmp(de->d_name, "effective-", 10))
            snprintf(p, sizeof(p), "%s/%s", hdir, de->d_name);
    closedir(dp);
    h = slurp(p, &hl);
    assert_int_equal(hl, alen);
    assert_memory_equal(h, a, alen);
    sodium_memzero(a, alen);
    sodium_memzero(h, hl);
    free(a);
    free(h);
}

/* A write that fails half-way (here EFBIG from RLIMIT_FSIZE, standing in for ENOSPC): the error
 * is reported, the old file is intact and no temp file is left. */
static void test_write_error_keeps_old_file(void **state)
{
    struct fx *f = *state;
    char desired[PATH_MAX], err[512], edir[PATH_MAX];
    struct ar_effective_opts o = {.path = f->eff};
    struct rlimit old, lim;
    struct ar_config *c;
    size_t alen, blen;
    char *a, *b;

    snprintf(desired, sizeof(desired), "%s/desired.yaml", f->dir);
    snprintf(edir, sizeof(edir), "%s/enc", f->dir);
    write_desired(desired, "first");
    c = load(desired);
    assert_int_equal(ar_effective_write(&o, c, err, sizeof(err)), 1);
    ar_config_unref(c);
    a = slurp(f->eff, &alen);

    write_desired(desired, "second");
    c = load(desired);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 64;
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int r = ar_effective_write(&o, c, err, sizeof(err));
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);
    ar_config_unref(c);
    assert_int_equal(r, -EFBIG);
    assert_non_null(strstr(err, "cannot write"));
    assert_non_null(strstr(err, "File too large"));
    b = slurp(f->eff, &blen);
    assert_int_equal(blen, alen);
    assert_memory_equal(b, a, alen);
    assert_int_equal(count_entries(edir, ""), 1);
    sodium_memzero(a, alen);
    sodium_memzero(b, blen);
    free(a);
    free(b);
}

static void test_read_locked(void **state)
{
    struct fx *f = *state;
    char p[PATH_MAX];
    char *buf = NULL;
    size_t len = 0;

    snprintf(p, sizeof(p), "%s/password", f->dir);
    write_file(p, "s3cret\n", 7);
    assert_int_equal(ar_file_read_locked(p, 4096, &buf, &len), 0);
    assert_int_equal(len, 7);
    assert_string_equal(buf, "s3cret\n");
    sodium_free(buf);
    assert_int_equal(ar_file_read_locked(p, 6, &buf, &len), -EFBIG);
    assert_null(buf);
    write_file(p, "", 0);
    assert_int_equal(ar_file_read_locked(p, 4096, &buf, &len), -ENODATA);
    assert_int_equal(ar_file_read_locked(f->dir, 4096, &buf, &len), -EISDIR);
}

/* Locked memory runs out: every reader fails with -ENOMEM and, where it reports, says so in one
 * diagnostic (the daemon formats the first diagnostic of a failure: the list is never empty). */
static void test_read_enomem(void **state)
{
    struct fx *f = *state;
    char p[PATH_MAX], want[PATH_MAX + 128], line[PATH_MAX + 256];
    struct ar_config *cfg = (struct ar_config *)f; /* must be cleared */
    struct ar_diags d;
    uint8_t sha[AR_SHA256_LEN];
    bool have = true;
    char *buf = (char *)f;
    size_t len = 99;

    snprintf(p, sizeof(p), "%s/desired.yaml", f->dir);
    write_desired(p, "k1");
    ar_diags_init(&d);
    ar_effective_fail_allocs(1);
    assert_int_equal(ar_config_read_checked(p, 0, &cfg, sha, &have, &d), -ENOMEM);
    assert_null(cfg);
    assert_false(have);
    assert_int_equal(d.n, 1);
    assert_int_equal(d.nerrors, 1);
    ar_diag_format(&d.v[0], line, sizeof(line));
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    snprintf(want, sizeof(want), "%s:0:0: out of memory: cannot hold %lld bytes in locked memory",
             p, (long long)st.st_size + 2);
    assert_string_equal(line, want);
    ar_diags_free(&d);

    ar_effective_fail_allocs(1);
    assert_int_equal(ar_file_read_locked(p, 0, &buf, &len), -ENOMEM);
    assert_null(buf);
    assert_int_equal(len, 0);
    uint8_t h[AR_SHA256_LEN];
    ar_effective_fail_allocs(1);
    assert_int_equal(ar_file_sha256(p, 0, h), -ENOMEM);

    /* the hook is spent: the same reads work again */
    ar_diags_init(&d);
    assert_int_equal(ar_config_read_checked(p, 0, &cfg, sha, &have, &d), 0);
    assert_non_null(cfg);
    assert_true(have);
    ar_config_unref(cfg);
    ar_diags_free(&d);
}

static void test_write_fails_cleanly(void **state)
{
    struct fx *f = *state;
    char desired[PATH_MAX], err[512], bad[PATH_MAX];
    snprintf(desired, sizeof(desired), "%s/desired.yaml", f->dir);
    write_desired(desired, "k1");
    struct ar_config *c = load(desired);
    snprintf(bad, sizeof(bad), "%s/missing-dir/config.yaml", f->dir);
    struct ar_effective_opts o = {.path = bad, .state_dir = f->state, .history = 3};
    assert_int_equal(ar_effective_write(&o, c, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "cannot create"));
    assert_non_null(strstr(err, "No such file or directory"));
    ar_config_unref(c);
}

static void test_cleanup_temps(void **state)
{
    struct fx *f = *state;
    char p[PATH_MAX + 64], edir[PATH_MAX];
    snprintf(edir, sizeof(edir), "%s/enc", f->dir);
    snprintf(p, sizeof(p), "%s/.config.yaml.atrest-tmp-1-2-3", edir);
    write_file(p, "x", 1);
    snprintf(p, sizeof(p), "%s/other.yaml", edir);
    write_file(p, "x", 1);
    assert_int_equal(ar_effective_cleanup_temps(f->eff), 1);
    assert_int_equal(count_entries(edir, ""), 1);
}

static int read_err(const char *path, size_t max, char *line, size_t len)
{
    struct ar_config *c = NULL;
    struct ar_diags d;
    ar_diags_init(&d);
    int r = ar_config_read_checked(path, max, &c, NULL, NULL, &d);
    assert_null(c);
    assert_true(d.nerrors >= 1);
    ar_diag_format(&d.v[0], line, len);
    ar_diags_free(&d);
    return r;
}

static void test_read_errors(void **state)
{
    struct fx *f = *state;
    char p[PATH_MAX], q[PATH_MAX], line[1024], want[PATH_MAX + 128];

    /* a directory */
    snprintf(p, sizeof(p), "%s/enc", f->dir);
    assert_int_equal(read_err(p, 0, line, sizeof(line)), -EISDIR);
    snprintf(want, sizeof(want), "%s:0:0: is a directory, not a file", p);
    assert_string_equal(line, want);
    /* missing */
    snprintf(p, sizeof(p), "%s/nope.yaml", f->dir);
    assert_int_equal(read_err(p, 0, line, sizeof(line)), -ENOENT);
    snprintf(want, sizeof(want), "%s:0:0: no such file", p);
    assert_string_equal(line, want);
    /* symlink loop */
    snprintf(p, sizeof(p), "%s/loop1", f->dir);
    snprintf(q, sizeof(q), "%s/loop2", f->dir);
    assert_int_equal(symlink(q, p), 0);
    assert_int_equal(symlink(p, q), 0);
    assert_int_equal(read_err(p, 0, line, sizeof(line)), -ELOOP);
    assert_non_null(strstr(line, "symlink loop"));
    /* empty */
    snprintf(p, sizeof(p), "%s/empty.yaml", f->dir);
    write_file(p, "", 0);
    assert_int_equal(read_err(p, 0, line, sizeof(line)), -ENODATA);
    assert_non_null(strstr(line, "empty file"));
    /* too large for the cap */
    snprintf(p, sizeof(p), "%s/desired.yaml", f->dir);
    write_desired(p, "k1");
    assert_int_equal(read_err(p, 64, line, sizeof(line)), -EFBIG);
    assert_non_null(strstr(line, "too large"));
    assert_non_null(strstr(line, "(at most 64)"));
    /* truncated mid-write: invalid content, with the position */
    static const char trunc[] =
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
        "resources:\n  - resources: [secrets]\n    providers:\n      - aescbc:\n"
        "          keys:\n            - name: k1\n              secr";
    write_file(p, trunc, strlen(trunc));
    assert_int_equal(read_err(p, 0, line, sizeof(line)), -EINVAL);
    snprintf(want, sizeof(want), "%s:", p);
    assert_int_equal(strncmp(line, want, strlen(want)), 0);
}

static void test_sha_even_when_invalid(void **state)
{
    struct fx *f = *state;
    char p[PATH_MAX];
    uint8_t h[AR_SHA256_LEN], want[AR_SHA256_LEN], h2[AR_SHA256_LEN];
    bool have = false;
    struct ar_config *c = NULL;
    struct ar_diags d;

    snprintf(p, sizeof(p), "%s/bad.yaml", f->dir);
    write_file(p, "kind: Nope\n", 11);
    crypto_hash_sha256(want, (const unsigned char *)"kind: Nope\n", 11);
    ar_diags_init(&d);
    assert_int_equal(ar_config_read_checked(p, 0, &c, h, &have, &d), -EINVAL);
    assert_true(have);
    assert_memory_equal(h, want, sizeof(h));
    ar_diags_free(&d);
    assert_int_equal(ar_file_sha256(p, 0, h2), 0);
    assert_memory_equal(h2, want, sizeof(h2));
}

/* A rotation's saved copies: rendered, 0600 in a 0700 directory, read back with the same
 * fingerprints; -ENOENT for an id never saved; a bad id refused; forget keeps only keep_id. */
static void test_rotation_copies(void **state)
{
    struct fx *f = *state;
    char p1[PATH_MAX], p2[PATH_MAX], path[PATH_MAX + 64], a[AR_HASH_STRLEN], b[AR_HASH_STRLEN];
    struct ar_config *from, *to, *lf = NULL, *lt = NULL;
    struct stat st;
    const char *id1 = "20261130T090347Z-01234567-89abcdef",
               *id2 = "20261130T100000Z-89abcdef-01234567";

    assert_int_equal(mkdir(f->state, 0700), 0);
    snprintf(p1, sizeof(p1), "%s/from.yaml", f->dir);
    snprintf(p2, sizeof(p2), "%s/to.yaml", f->dir);
    write_desired(p1, "key1");
    write_desired(p2, "key2");
    from = load(p1);
    to = load(p2);
    assert_int_equal(ar_effective_copies_load(f->state, id1, &lf, &lt), -ENOENT);
    assert_null(lf);
    assert_int_equal(ar_effective_copies_save(f->state, id1, from, to), 0);
    assert_int_equal(ar_effective_copies_save(f->state, id2, to, from), 0);
    snprintf(path, sizeof(path), "%s/rotation/%s/from.yaml", f->state, id1);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    snprintf(path, sizeof(path), "%s/rotation/%s", f->state, id1);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(ar_effective_copies_load(f->state, id1, &lf, &lt), 0);
    ar_config_fingerprint_str(from, a);
    ar_config_fingerprint_str(lf, b);
    assert_string_equal(a, b);
    ar_config_fingerprint_str(to, a);
    ar_config_fingerprint_str(lt, b);
    assert_string_equal(a, b);
    ar_config_unref(lf);
    ar_config_unref(lt);
    assert_int_equal(ar_effective_copies_save(f->state, "../x", from, to), -EINVAL);
    assert_int_equal(ar_effective_copies_load(f->state, "a/b", &lf, &lt), -EINVAL);
    ar_effective_copies_forget(f->state, id2);
    assert_int_equal(ar_effective_copies_load(f->state, id1, &lf, &lt), -ENOENT);
    assert_int_equal(ar_effective_copies_load(f->state, id2, &lf, &lt), 0);
    ar_config_unref(lf);
    ar_config_unref(lt);
    ar_effective_copies_forget(f->state, NULL);
    snprintf(path, sizeof(path), "%s/rotation", f->state);
    assert_int_equal(count_entries(path, ""), 0);
    ar_config_unref(from);
    ar_config_unref(to);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_write_content_mode_and_skip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_history_pruned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_history_keeps_saved_copy_when_clock_went_back, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_write_error_keeps_old_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_locked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_fails_cleanly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cleanup_temps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_enomem, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sha_even_when_invalid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation_copies, setup, teardown),
    };
    if (ar_crypto_init() < 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
