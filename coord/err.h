/*
 * coord/err.h: the one carrier of error detail from coord/ and agent/ towards /status and the
 * log: a code, where it happened, one line saying what.
 *
 * Contract
 * - code is 0 (no error) or a negative errno, the same as the status it goes with.
 * - where: the file, endpoint or key concerned ("" when none); msg: one line, no newline, never
 *   key material or Secret plaintext (callers pass only names, paths, fingerprints and the
 *   libraries' error texts). Both are always NUL-terminated; longer text is cut.
 * - coord/etcd/ keeps its transport detail (struct ar_etcd_error: gRPC code, HTTP status);
 *   ar_err_from_etcd carries it up.
 */
#ifndef ATREST_COORD_ERR_H
#define ATREST_COORD_ERR_H

#include <stddef.h>

#include "coord/etcd/etcd.h"

struct ar_err {
    int code;
    char where[128];
    char msg[256];
};

/* Fill e (code, where may be NULL, printf-style one-line message; newlines become spaces). */
void ar_err_set(struct ar_err *e, int code, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* "<what>: <etcd's message or strerror(status)>" (without "<what>: " when what is NULL or ""),
 * where = the endpoint. */
void ar_err_from_etcd(struct ar_err *e, const char *what, int status,
                      const struct ar_etcd_error *ee);
void ar_err_clear(struct ar_err *e);
/* "msg" or "msg (where)" into buf; returns buf. "" when e is NULL or has no code. */
const char *ar_err_line(const struct ar_err *e, char *buf, size_t len);

#endif
