/* agent/watch.c: directory inotify + debounce + hash poll for the desired file. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "agent/effective.h"
#include "agent/log.h"
#include "agent/watch.h"

#define REARM_MS 1000

struct ar_watch {
    uv_loop_t *loop;
    char *path;
    char *dir;
    char *base;
    const char *dirbase; /* the directory's own name, as its self events report it */
    unsigned debounce_ms;
    unsigned poll_ms;
    ar_watch_cb cb;
    void *arg;

    uv_fs_event_t ev;
    uv_timer_t debounce;
    uv_timer_t poll;
    uv_timer_t rearm;
    bool ev_active;
    dev_t dir_dev;
    ino_t dir_ino;
    uint64_t burst_start;
    bool burst;

    bool have_last;
    int last_status;
    uint8_t last_hash[AR_SHA256_LEN];

    int closing; /* handles still to close */
    bool closed;
    struct ar_watch_stats st;
};

static void look(struct ar_watch *w, bool notify);
static void rearm_check(struct ar_watch *w, bool force);
static void on_debounce(uv_timer_t *t);

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    struct ar_watch *w = h->data;
    uint64_t now;

    if (w->closed)
        return;
    if (status < 0) {
        log_warn("watch: %s: %s; re-arming", w->dir, uv_strerror(status));
        rearm_check(w, true);
        return;
    }
    if (filename && strcmp(filename, w->base) && strcmp(filename, "..data")) {
        /* The directory itself (deleted, moved: its watch is dead) is reported under its own
         * name. One made again at once may carry the same inode number, so a watch is
         * renewed then even when stat shows no difference. */
        rearm_check(w, (events & UV_RENAME) && !strcmp(filename, w->dirbase));
        return;
    }
    w->st.fs_events++;
    now = uv_now(w->loop);
    if (!w->burst) {
        w->burst = true;
        w->burst_start = now;
    }
    if (now - w->burst_start < (uint64_t)w->debounce_ms * AR_WATCH_MAX_WAIT_FACTOR ||
        !uv_is_active((uv_handle_t *)&w->debounce))
        uv_timer_start(&w->debounce, on_debounce, w->debounce_ms, 0);
    rearm_check(w, false);
}

static void on_debounce(uv_timer_t *t)
{
    struct ar_watch *w = t->data;
    w->burst = false;
    look(w, true);
}

static void on_poll(uv_timer_t *t)
{
    struct ar_watch *w = t->data;
    rearm_check(w, false);
    look(w, true);
}

static void on_rearm(uv_timer_t *t)
{
    struct ar_watch *w = t->data;
    bool was = w->ev_active;
    rearm_check(w, false);
    if (!was && w->ev_active)
        look(w, true); /* the directory came back: the file may have changed */
}

static void stop_ev(struct ar_watch *w)
{
    if (w->ev_active) {
        uv_fs_event_stop(&w->ev);
        w->ev_active = false;
    }
}

/* Make sure the directory watch is on the directory that is there now. force: renew it even
 * when the directory looks the same. */
static void rearm_check(struct ar_watch *w, bool force)
{
    struct stat st;
    int r;

    if (w->closed)
        return;
    if (stat(w->dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        if (w->ev_active)
            log_warn("watch: directory %s is gone; watching for it to come back", w->dir);
        stop_ev(w);
        w->st.armed = false;
        if (!uv_is_active((uv_handle_t *)&w->rearm))
            uv_timer_start(&w->rearm, on_rearm, REARM_MS, REARM_MS);
        return;
    }
    if (w->ev_active && !force && st.st_dev == w->dir_dev && st.st_ino == w->dir_ino)
        return;
    if (w->ev_active)
        log_info("watch: directory %s was replaced; re-arming", w->dir);
    stop_ev(w);
    r = uv_fs_event_start(&w->ev, on_fs_event, w->dir, 0);
    if (r < 0) {
        log_warn("watch: cannot watch %s: %s (polling every %u ms meanwhile)", w->dir,
                 uv_strerror(r), w->poll_ms);
        w->st.armed = false;
        if (!uv_is_active((uv_handle_t *)&w->rearm))
            uv_timer_start(&w->rearm, on_rearm, REARM_MS, REARM_MS);
        return;
    }
    if (w->dir_ino || w->dir_dev) {
        /* what was written before this watch began sent no event to it: look soon */
        w->st.rearms++;
        uv_timer_start(&w->debounce, on_debounce, w->debounce_ms, 0);
    }
    w->ev_active = true;
    w->st.armed = true;
    w->dir_dev = st.st_dev;
    w->dir_ino = st.st_ino;
    uv_timer_stop(&w->rearm);
}

static void look(struct ar_watch *w, bool notify)
{
    uint8_t h[AR_SHA256_LEN];
    int r;

    if (w->closed)
        return;
    w->st.looks++;
    r = ar_file_sha256(w->path, AR_DESIRED_MAX_BYTES, h);
    if (r == -EAGAIN) {
        /* being written: look again once it has been quiet for a while */
        uv_timer_start(&w->debounce, on_debounce, w->debounce_ms ? w->debounce_ms : 50, 0);
        return;
    }
    if (w->have_last && r == w->last_status && (r < 0 || !memcmp(h, w->last_hash, sizeof(h))))
        return;
    w->have_last = true;
    w->last_status = r;
    if (r == 0)
        memcpy(w->last_hash, h, sizeof(h));
    if (notify) {
        w->st.changes++;
        w->cb(w->arg, r);
    }
}

static int split(const char *path, char **dir, char **base)
{
    const char *sl = strrchr(path, '/');

    if (!sl) {
        *dir = strdup(".");
        *base = strdup(path);
    } else {
        *dir = sl == path ? strdup("/") : strndup(path, (size_t)(sl - path));
        *base = strdup(sl + 1);
    }
    if (!*dir || !*base)
        return -ENOMEM;
    return **base ? 0 : -EINVAL;
}

static void free_watch(struct ar_watch *w)
{
    free(w->path);
    free(w->dir);
    free(w->base);
    free(w);
}

int ar_watch_start(uv_loop_t *loop, const char *path, unsigned debounce_ms, unsigned poll_ms,
                   ar_watch_cb cb, void *arg, struct ar_watch **out)
{
    struct ar_watch *w;
    int r;

    *out = NULL;
    if (!path || !cb || !poll_ms)
        return -EINVAL;
    w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->loop = loop;
    w->debounce_ms = debounce_ms;
    w->poll_ms = poll_ms;
    w->cb = cb;
    w->arg = arg;
    w->path = strdup(path);
    r = w->path ? split(path, &w->dir, &w->base) : -ENOMEM;
    if (r < 0) {
        free_watch(w);
        return r;
    }
    uv_fs_event_init(loop, &w->ev);
    uv_timer_init(loop, &w->debounce);
    uv_timer_init(loop, &w->poll);
    uv_timer_init(loop, &w->rearm);
    w->ev.data = w->debounce.data = w->poll.data = w->rearm.data = w;
    w->dirbase = strrchr(w->dir, '/');
    w->dirbase = w->dirbase && w->dirbase[1] ? w->dirbase + 1 : w->dir; /* "/" stays "/" */
    rearm_check(w, false);
    look(w, false);
    uv_timer_start(&w->poll, on_poll, poll_ms, poll_ms);
    *out = w;
    return 0;
}

void ar_watch_poke(struct ar_watch *w)
{
    if (!w || w->closed)
        return;
    rearm_check(w, false);
    look(w, true);
}

void ar_watch_get_stats(const struct ar_watch *w, struct ar_watch_stats *st)
{
    *st = w->st;
}

static void on_close(uv_handle_t *h)
{
    struct ar_watch *w = h->data;
    if (--w->closing == 0)
        free_watch(w);
}

void ar_watch_close(struct ar_watch *w)
{
    if (!w || w->closed)
        return;
    w->closed = true;
    stop_ev(w);
    w->closing = 4;
    uv_close((uv_handle_t *)&w->ev, on_close);
    uv_close((uv_handle_t *)&w->debounce, on_close);
    uv_close((uv_handle_t *)&w->poll, on_close);
    uv_close((uv_handle_t *)&w->rearm, on_close);
}
