/*
 * agent/effective.h: reading the desired file safely, and writing the effective file (the one
 * kube-apiserver reads) atomically, with history for rollback.
 *
 * Contract
 * - ar_config_read_checked reads a config file with a size cap into locked memory (wiped after),
 *   refusing with a clear one-line diagnostic: a directory, a symlink loop, an unreadable,
 *   empty or oversized file, a file that changed while it was read (being written). Then it
 *   loads and validates the bytes exactly as kube-apiserver would (ar_config_load_mem). The
 *   SHA-256 of the raw bytes is returned even when the content is invalid, so a caller can
 *   tell "same invalid file again" from "new content".
 * - ar_effective_write renders cfg deterministically (non-redacted), loads the rendered bytes
 *   back and compares the fingerprint (never writes what does not round-trip), skips the write
 *   when the file already holds exactly these bytes, saves the replaced version in
 *   <state_dir>/history (mode 0600, named effective-<UTC time>-<fingerprint prefix>.yaml,
 *   pruned to the newest `history` files but never the copy just saved), then writes a temp
 *   file in the file's directory (O_CREAT|O_EXCL, 0600, fchown to the configured owner),
 *   fsyncs, renames over the file and fsyncs the directory. Every buffer that held key text is
 * wiped. On failure the effective file is untouched and no temp file is left.
 * - Errors: 0 or negative errno; err gets one line for the log and the status (no key material).
 */
#ifndef ATREST_AGENT_EFFECTIVE_H
#define ATREST_AGENT_EFFECTIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "crypto/config.h"

#define AR_DESIRED_MAX_BYTES (4u << 20)

/* 0 (valid: *out holds a reference), -EINVAL (invalid content: diags say why), or a read error
 * (-ENOENT, -EISDIR, -ELOOP, -EACCES, -EFBIG, -ENODATA for empty, -EAGAIN for "changed while
 * reading", -ENOMEM; one diagnostic). Every failure leaves at least one error in diags (when
 * given). sha256 (may be NULL) gets the hash of the raw bytes whenever the bytes could be read
 * (also for -EINVAL); *have_sha says whether it was set. */
int ar_config_read_checked(const char *path, size_t max_bytes, struct ar_config **out,
                           uint8_t sha256[AR_SHA256_LEN], bool *have_sha, struct ar_diags *diags);

/* SHA-256 of a file's bytes with the same checks and errors as ar_config_read_checked (no
 * diagnostics). 0 or negative errno. */
int ar_file_sha256(const char *path, size_t max_bytes, uint8_t out[AR_SHA256_LEN]);

/* A whole regular file (at most max_bytes; 0: AR_DESIRED_MAX_BYTES) read straight into
 * sodium_malloc'd memory, NUL-terminated, for secrets such as a password or token file: no
 * stdio buffer or other heap copy is left behind. The caller releases *buf with sodium_free()
 * (which wipes it). 0 or the errors of ar_file_sha256. */
int ar_file_read_locked(const char *path, size_t max_bytes, char **buf, size_t *len);

/* Test hook (fault injection): the next n locked allocations of the reads above fail as if
 * memory ran out (-ENOMEM). 0 turns it off. */
void ar_effective_fail_allocs(unsigned n);

struct ar_effective_opts {
    const char *path;      /* the effective file */
    const char *state_dir; /* history goes to <state_dir>/history; NULL: no history */
    unsigned history;      /* how many previous versions to keep (0: none) */
    bool owner_set;
    uid_t owner;
    bool group_set;
    gid_t group;
};

/* 1 when the file was written, 0 when it already held the same bytes, <0 on error. */
int ar_effective_write(const struct ar_effective_opts *o, const struct ar_config *cfg, char *err,
                       size_t errlen);

/* Remove temp files a crash may have left beside the effective file. Returns how many. */
int ar_effective_cleanup_temps(const char *path);

/* The history directory of a state dir, e.g. "/var/lib/atrest/history". */
int ar_effective_history_dir(const char *state_dir, char *out, size_t len);

/*
 * A rotation's saved copies of from and to (DESIGN 4.3): <state_dir>/rotation/<id>/{from,to}.yaml,
 * rendered (non-redacted: they hold keys, so mode 0600 in a 0700 directory), each through a temp
 * file, fsync and rename. Load reads both back with ar_config_read_checked (-ENOENT when none
 * were saved). Forget removes every saved rotation but keep_id (NULL: all). id: a rotation id
 * (no '/'). 0 or negative errno.
 */
int ar_effective_copies_save(const char *state_dir, const char *id, const struct ar_config *from,
                             const struct ar_config *to);
int ar_effective_copies_load(const char *state_dir, const char *id, struct ar_config **from,
                             struct ar_config **to);
void ar_effective_copies_forget(const char *state_dir, const char *keep_id);

#endif
