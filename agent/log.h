/*
 * agent/log.h: the daemon's log, one line per message on stderr.
 *
 * Contract
 * - Under systemd (JOURNAL_STREAM set) every line starts with an sd-daemon priority prefix
 *   ("<3>" err, "<4>" warning, "<6>" info, "<7>" debug) and nothing else: journald adds the
 *   time. Otherwise a line is "2025-01-31T12:00:00.123Z warn: text".
 * - Lines below the configured level are dropped (default info).
 * - Repeating lines are rate-limited: the same text (same level) is written at most
 *   AR_LOG_BURST times per AR_LOG_INTERVAL_S seconds; its first line after the window says how
 *   many were suppressed ("TEXT (41 identical lines suppressed)").
 * - Callers never pass key material or plaintext: log text is not secret.
 * - Thread-safe (a mutex); the daemon logs from its loop thread only.
 * - Only the layer that decides what to do about an error logs it, once.
 */
#ifndef ATREST_AGENT_LOG_H
#define ATREST_AGENT_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

enum ar_log_level {
    AR_LOG_ERR = 3,
    AR_LOG_WARN = 4,
    AR_LOG_INFO = 6,
    AR_LOG_DEBUG = 7,
};

#define AR_LOG_BURST      5
#define AR_LOG_INTERVAL_S 30

/* "error", "warn" (or "warning"), "info", "debug" -> level. 0 or -EINVAL. */
int ar_log_level_parse(const char *s, enum ar_log_level *out);
const char *ar_log_level_name(enum ar_log_level l);

void ar_log_set_level(enum ar_log_level l);
enum ar_log_level ar_log_get_level(void);
/* Force the journal (true) or timestamp (false) format; by default decided from JOURNAL_STREAM
 * at the first line. */
void ar_log_set_journal(bool journal);
/* Redirect (tests); NULL restores stderr. */
void ar_log_set_stream(FILE *f);

void ar_log(enum ar_log_level l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ar_logv(enum ar_log_level l, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

#define log_err(...)   ar_log(AR_LOG_ERR, __VA_ARGS__)
#define log_warn(...)  ar_log(AR_LOG_WARN, __VA_ARGS__)
#define log_info(...)  ar_log(AR_LOG_INFO, __VA_ARGS__)
#define log_debug(...) ar_log(AR_LOG_DEBUG, __VA_ARGS__)

#endif
