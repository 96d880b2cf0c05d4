/* agent/effective.c: safe reads of the desired file; atomic writes of the effective file. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "agent/effective.h"

#define TMP_TAG ".atrest-tmp-"

/* ---- reading ---------------------------------------------------------------------------- */

static unsigned fail_allocs; /* test hook: this many locked allocations fail (ENOMEM) */

void ar_effective_fail_allocs(unsigned n)
{
    fail_allocs = n;
}

static void *locked_alloc(size_t n)
{
    if (fail_allocs) {
        fail_allocs--;
        return NULL;
    }
    return sodium_malloc(n);
}

static int read_diag(struct ar_diags *d, const char *path, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int read_diag(struct ar_diags *d, const char *path, int err, const char *fmt, ...)
{
    char detail[512];
    struct ar_pos nopos = {0, 0};
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    if (d)
        ar_diags_add(d, AR_SEV_ERROR, path, nopos, "", "%s", detail);
    return err;
}

/* Read a whole regular file (size-capped) into sodium_malloc'd memory. *buf is NULL on error. */
static int read_locked(const char *path, size_t max, char **buf, size_t *len, size_t *alloc,
                       struct ar_diags *d)
{
    struct stat st, st2;
    char *b = NULL;
    size_t n = 0, cap;
    int fd, r;

    *buf = NULL;
    *len = *alloc = 0;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        r = -errno;
        if (r == -ELOOP)
            return read_diag(d, path, r, "too many levels of symbolic links (a symlink loop?)");
        if (r == -ENOENT)
            return read_diag(d, path, r, "no such file");
        if (r == -EACCES)
            return read_diag(d, path, r, "permission denied: the agent's user cannot read it");
        return read_diag(d, path, r, "cannot open: %s", strerror(-r));
    }
    if (fstat(fd, &st) < 0) {
        r = read_diag(d, path, -errno, "cannot stat: %s", strerror(errno));
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        r = read_diag(d, path, -EISDIR, "is a directory, not a file");
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        r = read_diag(d, path, -EINVAL, "not a regular file");
        goto out;
    }
    if ((size_t)st.st_size > max) {
        r = read_diag(d, path, -EFBIG, "too large: %lld bytes (at most %zu)", (long long)st.st_size,
                      max);
        goto out;
    }
    if (st.st_size == 0) {
        r = read_diag(d, path, -ENODATA, "empty file");
        goto out;
    }
    cap = (size_t)st.st_size + 1; /* one more to notice growth */
    b = locked_alloc(cap + 1);
    if (!b) {
        r = read_diag(d, path, -ENOMEM, "out of memory: cannot hold %zu bytes in locked memory",
                      cap + 1);
        goto out;
    }
    for (;;) {
        ssize_t k = read(fd, b + n, cap - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            r = read_diag(d, path, -errno, "read error: %s", strerror(errno));
            goto out;
        }
        if (k == 0)
            break;
        n += (size_t)k;
        if (n == cap)
            break;
    }
    if (fstat(fd, &st2) < 0 || n != (size_t)st.st_size || st2.st_size != st.st_size ||
        st2.st_mtim.tv_sec != st.st_mtim.tv_sec || st2.st_mtim.tv_nsec != st.st_mtim.tv_nsec) {
        r = read_diag(d, path, -EAGAIN,
                      "changed while being read (%zu bytes read, %lld expected): still being "
                      "written? it is read again on the next change",
                      n, (long long)st.st_size);
        goto out;
    }
    b[n] = '\0';
    *buf = b;
    *len = n;
    *alloc = cap + 1;
    b = NULL;
    r = 0;
out:
    if (b) {
        sodium_memzero(b, cap + 1);
        sodium_free(b);
    }
    close(fd);
    return r;
}

int ar_config_read_checked(const char *path, size_t max_bytes, struct ar_config **out,
                           uint8_t sha256[AR_SHA256_LEN], bool *have_sha, struct ar_diags *diags)
{
    struct ar_load_opts lo = {.reload = true, .kmsv1_allowed = false, .max_bytes = max_bytes};
    char *buf;
    size_t len, alloc;
    int r;

    *out = NULL;
    if (have_sha)
        *have_sha = false;
    if (!max_bytes)
        max_bytes = AR_DESIRED_MAX_BYTES;
    r = read_locked(path, max_bytes, &buf, &len, &alloc, diags);
    if (r < 0)
        return r;
    if (sha256) {
        crypto_hash_sha256(sha256, (const unsigned char *)buf, len);
        if (have_sha)
            *have_sha = true;
    }
    r = ar_config_load_mem(path, buf, len, &lo, out, diags);
    sodium_memzero(buf, alloc);
    sodium_free(buf);
    if (r < 0) {
        *out = ar_config_unref(*out);
        if (diags && !diags->nerrors) /* the promise: every failure says why */
            read_diag(diags, path, r, "cannot load: %s", strerror(-r));
    }
    return r;
}

int ar_file_read_locked(const char *path, size_t max_bytes, char **buf, size_t *len)
{
    size_t alloc;

    return read_locked(path, max_bytes ? max_bytes : AR_DESIRED_MAX_BYTES, buf, len, &alloc, NULL);
}

int ar_file_sha256(const char *path, size_t max_bytes, uint8_t out[AR_SHA256_LEN])
{
    char *buf;
    size_t len, alloc;
    int r;

    r = read_locked(path, max_bytes ? max_bytes : AR_DESIRED_MAX_BYTES, &buf, &len, &alloc, NULL);
    if (r < 0)
        return r;
    crypto_hash_sha256(out, (const unsigned char *)buf, len);
    sodium_memzero(buf, alloc);
    sodium_free(buf);
    return 0;
}

/* ---- writing ---------------------------------------------------------------------------- */

static int split_path(const char *path, char *dir, size_t dlen, const char **base)
{
    const char *sl = strrchr(path, '/');

    if (!sl) {
        snprintf(dir, dlen, ".");
        *base = path;
        return 0;
    }
    if ((size_t)(sl - path) + 2 > dlen)
        return -ENAMETOOLONG;
    if (sl == path) {
        snprintf(dir, dlen, "/");
    } else {
        memcpy(dir, path, (size_t)(sl - path));
        dir[sl - path] = '\0';
    }
    *base = sl + 1;
    return **base ? 0 : -EINVAL;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -errno;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int r = 0;

    if (fd < 0)
        return -errno;
    if (fsync(fd) < 0)
        r = -errno;
    close(fd);
    return r;
}

int ar_effective_history_dir(const char *state_dir, char *out, size_t len)
{
    int n = snprintf(out, len, "%s/history", state_dir);
    return (n < 0 || (size_t)n >= len) ? -ENAMETOOLONG : 0;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Keep the newest `keep` history files (by name, i.e. by the time in it) and always `saved`,
 * the copy just written, even when a clock set back makes it sort as the oldest. */
static void prune_history(const char *hdir, const char *saved, unsigned keep)
{
    DIR *dp = opendir(hdir);
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;

    if (!dp)
        return;
    while ((de = readdir(dp))) {
        size_t l = strlen(de->d_name);
        if (strncmp(de->d_name, "effective-", 10) || l < 15 || strcmp(de->d_name + l - 5, ".yaml"))
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            char **nn = realloc(names, nc * sizeof(*nn));
            if (!nn)
                break;
            names = nn;
            cap = nc;
        }
        names[n] = strdup(de->d_name);
        if (names[n])
            n++;
    }
    closedir(dp);
    if (n)
        qsort(names, n, sizeof(*names), name_cmp);
    for (size_t i = 0, left = n; i < n && left > keep; i++) {
        char p[PATH_MAX];
        if (!strcmp(names[i], saved))
            continue;
        if (snprintf(p, sizeof(p), "%s/%s", hdir, names[i]) < (int)sizeof(p) && unlink(p) == 0)
            left--;
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* Save the bytes being replaced into the history directory. */
static int save_history(const struct ar_effective_opts *o, const char *old, size_t oldlen,
                        char *err, size_t errlen)
{
    char hdir[PATH_MAX], p[PATH_MAX], tbuf[32], fp[AR_HASH_STRLEN];
    const char *name;
    int n;
    struct ar_load_opts lo = {.reload = true};
    struct ar_config *c = NULL;
    struct ar_diags d;
    struct timespec ts;
    struct tm tm;
    int fd, r;

    if (!o->state_dir || !o->history)
        return 0;
    r = ar_effective_history_dir(o->state_dir, hdir, sizeof(hdir));
    if (r < 0)
        return r;
    if (mkdir(o->state_dir, 0700) < 0 && errno != EEXIST) {
        r = -errno;
        snprintf(err, errlen, "cannot create state directory %s: %s", o->state_dir, strerror(-r));
        return r;
    }
    if (mkdir(hdir, 0700) < 0 && errno != EEXIST) {
        r = -errno;
        snprintf(err, errlen, "cannot create history directory %s: %s", hdir, strerror(-r));
        return r;
    }
    /* name by the config fingerprint when the old file is valid, else by its raw hash */
    ar_diags_init(&d);
    if (ar_config_load_mem(o->path, old, oldlen, &lo, &c, &d) == 0 && c) {
        ar_config_fingerprint_str(c, fp);
    } else {
        uint8_t h[AR_SHA256_LEN];
        crypto_hash_sha256(h, (const unsigned char *)old, oldlen);
        memcpy(fp, "sha256:", 7);
        ar_hex(h, sizeof(h), fp + 7);
    }
    ar_config_unref(c);
    ar_diags_free(&d);
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(tbuf, sizeof(tbuf), "%Y%m%dT%H%M%S", &tm);
    n = snprintf(p, sizeof(p), "%s/", hdir);
    if (n < 0 || (size_t)n >= sizeof(p))
        return -ENAMETOOLONG;
    name = p + n;
    if (snprintf(p + n, sizeof(p) - (size_t)n, "effective-%s.%06ldZ-%.16s.yaml", tbuf,
                 ts.tv_nsec / 1000, fp + 7) >= (int)sizeof(p) - n)
        return -ENAMETOOLONG;
    fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        r = -errno;
        if (r == -EEXIST)
            return 0;
        snprintf(err, errlen, "cannot save history %s: %s", p, strerror(-r));
        return r;
    }
    r = write_all(fd, old, oldlen);
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    close(fd);
    if (r < 0) {
        unlink(p);
        snprintf(err, errlen, "cannot save history %s: %s", p, strerror(-r));
        return r;
    }
    prune_history(hdir, name, o->history);
    return 0;
}

int ar_effective_write(const struct ar_effective_opts *o, const struct ar_config *cfg, char *err,
                       size_t errlen)
{
    static unsigned counter;
    struct ar_load_opts lo = {.reload = true};
    struct ar_config *back = NULL;
    struct ar_diags d;
    char dir[PATH_MAX], tmp[PATH_MAX];
    const char *base;
    char *buf = NULL, *old = NULL;
    size_t len = 0, oldlen = 0, oldalloc = 0;
    bool tmp_made = false;
    int fd = -1, r;

    err[0] = '\0';
    ar_diags_init(&d);
    r = split_path(o->path, dir, sizeof(dir), &base);
    if (r < 0) {
        snprintf(err, errlen, "invalid effective path %s", o->path);
        goto out;
    }
    r = ar_config_render(cfg, false, &buf, &len);
    if (r < 0) {
        snprintf(err, errlen, "cannot render the config: %s", strerror(-r));
        goto out;
    }
    /* validate again: the rendered bytes must load to the same meaning */
    r = ar_config_load_mem("rendered effective config", buf, len, &lo, &back, &d);
    if (r < 0 || !back || memcmp(back->fingerprint, cfg->fingerprint, AR_SHA256_LEN)) {
        char line[400] = "fingerprint differs";
        if (d.n)
            ar_diag_format(&d.v[0], line, sizeof(line));
        snprintf(err, errlen,
                 "the rendered config does not load back to the same config (%s): "
                 "not written",
                 line);
        r = -EINVAL;
        goto out;
    }
    /* same bytes already there? */
    r = read_locked(o->path, AR_DESIRED_MAX_BYTES, &old, &oldlen, &oldalloc, NULL);
    if (r == 0 && oldlen == len && !sodium_memcmp(old, buf, len)) {
        r = 0;
        goto out;
    }
    if (r == 0) {
        r = save_history(o, old, oldlen, err, errlen);
        if (r < 0)
            goto out;
    }
    /* temp file in the same directory */
    if (snprintf(tmp, sizeof(tmp), "%s/.%s" TMP_TAG "%ld-%u-%08x", dir, base, (long)getpid(),
                 __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED),
                 randombytes_random()) >= (int)sizeof(tmp)) {
        r = -ENAMETOOLONG;
        snprintf(err, errlen, "effective path too long");
        goto out;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        r = -errno;
        snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(-r));
        goto out;
    }
    tmp_made = true;
    if ((o->owner_set || o->group_set) &&
        fchown(fd, o->owner_set ? o->owner : (uid_t)-1, o->group_set ? o->group : (gid_t)-1) < 0) {
        r = -errno;
        snprintf(err, errlen, "cannot chown %s: %s", tmp, strerror(-r));
        goto out;
    }
    if (fchmod(fd, 0600) < 0) {
        r = -errno;
        snprintf(err, errlen, "cannot chmod %s: %s", tmp, strerror(-r));
        goto out;
    }
    r = write_all(fd, buf, len);
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    if (r < 0) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(-r));
        goto out;
    }
    if (close(fd) < 0) {
        fd = -1;
        r = -errno;
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(-r));
        goto out;
    }
    fd = -1;
    if (rename(tmp, o->path) < 0) {
        r = -errno;
        snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, o->path, strerror(-r));
        goto out;
    }
    tmp_made = false;
    r = fsync_dir(dir);
    if (r < 0) {
        snprintf(err, errlen, "written, but fsync of %s failed: %s", dir, strerror(-r));
        goto out;
    }
    r = 1;
out:
    if (fd >= 0)
        close(fd);
    if (tmp_made)
        unlink(tmp);
    if (old) {
        sodium_memzero(old, oldalloc);
        sodium_free(old);
    }
    if (buf)
        ar_config_render_free(buf, len);
    ar_config_unref(back);
    ar_diags_free(&d);
    return r;
}

int ar_effective_cleanup_temps(const char *path)
{
    char dir[PATH_MAX], prefix[NAME_MAX + 32], p[PATH_MAX];
    const char *base;
    struct dirent *de;
    DIR *dp;
    int n = 0;

    if (split_path(path, dir, sizeof(dir), &base) < 0)
        return 0;
    snprintf(prefix, sizeof(prefix), ".%s" TMP_TAG, base);
    dp = opendir(dir);
    if (!dp)
        return 0;
    while ((de = readdir(dp))) {
        if (strncmp(de->d_name, prefix, strlen(prefix)))
            continue;
        if (snprintf(p, sizeof(p), "%s/%s", dir, de->d_name) < (int)sizeof(p) && unlink(p) == 0)
            n++;
    }
    closedir(dp);
    return n;
}

/* ---- a rotation's saved from/to copies (DESIGN 4.3) ----------------------------------------- */

static bool copy_id_ok(const char *id)
{
    size_t n = id ? strlen(id) : 0;

    return n > 0 && n < 64 && !strchr(id, '/') && strcmp(id, ".") && strcmp(id, "..");
}

static int copy_dir(const char *state_dir, const char *id, char *out, size_t len)
{
    int n = id ? snprintf(out, len, "%s/rotation/%s", state_dir, id)
               : snprintf(out, len, "%s/rotation", state_dir);
    return (n < 0 || (size_t)n >= len) ? -ENAMETOOLONG : 0;
}

/* Render c into dir/name (0600) through a temp file, fsync, rename. */
static int copy_write(const char *dir, const char *name, const struct ar_config *c)
{
    char path[PATH_MAX], tmp[PATH_MAX], *buf = NULL;
    size_t len = 0, off = 0;
    int fd = -1, r;

    if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path) ||
        snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    r = ar_config_render(c, false, &buf, &len);
    if (r < 0)
        return r;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        r = -errno;
        goto out;
    }
    while (off < len) {
        ssize_t w = write(fd, buf + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            r = w < 0 ? -errno : -EIO;
            goto out;
        }
        off += (size_t)w;
    }
    if (fsync(fd) < 0 || close(fd) < 0) {
        r = -errno;
        fd = -1;
        goto out;
    }
    fd = -1;
    r = rename(tmp, path) < 0 ? -errno : 0;
out:
    if (fd >= 0)
        close(fd);
    if (r < 0)
        unlink(tmp);
    ar_config_render_free(buf, len); /* wipes */
    return r;
}

int ar_effective_copies_save(const char *state_dir, const char *id, const struct ar_config *from,
                             const struct ar_config *to)
{
    char dir[PATH_MAX];
    int r, dfd;

    if (!state_dir || !copy_id_ok(id) || !from || !to)
        return -EINVAL;
    r = copy_dir(state_dir, NULL, dir, sizeof(dir));
    if (r == 0 && mkdir(dir, 0700) < 0 && errno != EEXIST)
        r = -errno;
    if (r == 0)
        r = copy_dir(state_dir, id, dir, sizeof(dir));
    if (r == 0 && mkdir(dir, 0700) < 0 && errno != EEXIST)
        r = -errno;
    if (r == 0)
        r = copy_write(dir, "from.yaml", from);
    if (r == 0)
        r = copy_write(dir, "to.yaml", to);
    if (r == 0 && (dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return r;
}

int ar_effective_copies_load(const char *state_dir, const char *id, struct ar_config **from,
                             struct ar_config **to)
{
    char dir[PATH_MAX], path[PATH_MAX + 16];
    int r;

    *from = *to = NULL;
    if (!state_dir || !copy_id_ok(id))
        return -EINVAL;
    r = copy_dir(state_dir, id, dir, sizeof(dir));
    if (r < 0)
        return r;
    snprintf(path, sizeof(path), "%s/from.yaml", dir);
    r = ar_config_read_checked(path, 0, from, NULL, NULL, NULL);
    if (r == 0) {
        snprintf(path, sizeof(path), "%s/to.yaml", dir);
        r = ar_config_read_checked(path, 0, to, NULL, NULL, NULL);
    }
    if (r < 0) {
        *from = ar_config_unref(*from);
        *to = ar_config_unref(*to);
    }
    return r;
}

void ar_effective_copies_forget(const char *state_dir, const char *keep_id)
{
    char dir[PATH_MAX], sub[PATH_MAX + 300], f[PATH_MAX + 320];
    DIR *dp;
    struct dirent *de;
    unsigned n = 0;

    if (!state_dir || copy_dir(state_dir, NULL, dir, sizeof(dir)) < 0 || !(dp = opendir(dir)))
        return;
    while ((de = readdir(dp)) && n++ < 10000) {
        if (de->d_name[0] == '.' || (keep_id && !strcmp(de->d_name, keep_id)))
            continue;
        snprintf(sub, sizeof(sub), "%s/%s", dir, de->d_name);
        snprintf(f, sizeof(f), "%s/from.yaml", sub);
        unlink(f);
        snprintf(f, sizeof(f), "%s/to.yaml", sub);
        unlink(f);
        rmdir(sub);
    }
    closedir(dp);
}
