/*
 * agent/watch.h: follow one file (the desired config) on a libuv loop.
 *
 * Contract
 * - Watches the file's DIRECTORY (uv_fs_event, inotify) and reacts to events naming the file
 *   or "..data" (the symlink Kubernetes swaps in ConfigMap/Secret volumes), so it follows
 *   writes in place, write-to-temp-and-rename (editors, Ansible, Puppet) and the ..data swap.
 * - Events are debounced: the file is looked at debounce_ms after the last event of a burst
 *   (at most AR_WATCH_MAX_WAIT_FACTOR * debounce_ms after the first one).
 * - A periodic poll (poll_ms) looks at the file too: the backstop for missed events.
 * - "Looking" = reading the file (size-capped, wiped) and hashing it (SHA-256). The callback
 *   runs only when the hash, or the read error, differs from the last one seen; the first look
 *   happens in ar_watch_start and does not call back. A file seen changing while read is
 *   looked at again after another debounce interval.
 * - If the directory is removed or replaced, the watch is re-armed (checked on every event and
 *   poll, and every second while the directory is missing; renewed on the directory's own
 *   delete/move events even when a new directory got the same inode number), and the file is
 *   looked at one debounce interval later (a write made before the new watch began sends it
 *   no event).
 * - ar_watch_close closes every handle; the struct is freed in the last close callback, so run
 *   the loop afterwards.
 */
#ifndef ATREST_AGENT_WATCH_H
#define ATREST_AGENT_WATCH_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#define AR_WATCH_MAX_WAIT_FACTOR 10

/* status: 0 = the file's content changed (readable), or the new negative errno of reading it
 * (-ENOENT, -EISDIR, -ELOOP, -EACCES, -EFBIG, -ENODATA). */
typedef void (*ar_watch_cb)(void *arg, int status);

struct ar_watch;

struct ar_watch_stats {
    uint64_t fs_events; /* inotify events about the file (after the name filter) */
    uint64_t looks;     /* reads + hashes */
    uint64_t changes;   /* callbacks */
    uint64_t rearms;    /* directory watches (re)started after the first */
    bool armed;         /* the directory watch is active */
};

int ar_watch_start(uv_loop_t *loop, const char *path, unsigned debounce_ms, unsigned poll_ms,
                   ar_watch_cb cb, void *arg, struct ar_watch **out);
/* Look now (e.g. on SIGHUP), as if an event had been debounced. */
void ar_watch_poke(struct ar_watch *w);
void ar_watch_get_stats(const struct ar_watch *w, struct ar_watch_stats *st);
/* Accepts NULL. No callback after it. */
void ar_watch_close(struct ar_watch *w);

#endif
