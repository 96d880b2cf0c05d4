/* agent/notify.c: sd_notify wrappers. */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include <systemd/sd-daemon.h>

#include "agent/notify.h"

static int notify_send(const char *msg)
{
    int r = sd_notify(0, msg);
    return r < 0 ? r : 0;
}

int ar_notify_ready(const char *status)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "READY=1\nSTATUS=%s", status ? status : "running");
    return notify_send(buf);
}

int ar_notify_reloading(void)
{
    struct timespec ts;
    char buf[128];
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(buf, sizeof(buf), "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    return notify_send(buf);
}

int ar_notify_stopping(const char *status)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "STOPPING=1\nSTATUS=%s", status ? status : "stopping");
    return notify_send(buf);
}

int ar_notify_status(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    int n = snprintf(buf, sizeof(buf), "STATUS=");
    va_start(ap, fmt);
    vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
    va_end(ap);
    return notify_send(buf);
}

int ar_notify_watchdog(void)
{
    return notify_send("WATCHDOG=1");
}

uint64_t ar_notify_watchdog_usec(void)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0)
        return usec;
    return 0;
}
