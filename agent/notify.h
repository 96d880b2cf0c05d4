/*
 * agent/notify.h: the systemd notification protocol (sd_notify, libsystemd).
 *
 * Contract: every function is a no-op returning 0 when NOTIFY_SOCKET is unset (not under
 * systemd). The environment is left as is (children are spawned with a scrubbed environment by
 * whoever spawns them). Errors are returned as negative errno and are not fatal.
 */
#ifndef ATREST_AGENT_NOTIFY_H
#define ATREST_AGENT_NOTIFY_H

#include <stdint.h>

/* READY=1 and a STATUS= line. */
int ar_notify_ready(const char *status);
/* RELOADING=1 with MONOTONIC_USEC=<CLOCK_MONOTONIC now> (needed by systemd 253+). */
int ar_notify_reloading(void);
/* STOPPING=1 and a STATUS= line. */
int ar_notify_stopping(const char *status);
int ar_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int ar_notify_watchdog(void);
/* The watchdog interval in microseconds when systemd expects pings for this process, else 0. */
uint64_t ar_notify_watchdog_usec(void);

#endif
