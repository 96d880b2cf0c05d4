/* agent/log.c: stderr logging with sd-daemon prefixes, levels and a repeat limiter. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/log.h"

#define RL_SLOTS 64

struct rl_slot {
    uint64_t hash;
    int64_t window_start; /* monotonic seconds */
    unsigned count;
    unsigned suppressed;
    bool used;
};

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static enum ar_log_level log_level = AR_LOG_INFO;
static int log_journal = -1; /* -1: decide from JOURNAL_STREAM */
static FILE *log_stream;
static struct rl_slot rl[RL_SLOTS];

int ar_log_level_parse(const char *s, enum ar_log_level *out)
{
    if (!s)
        return -EINVAL;
    if (!strcmp(s, "error") || !strcmp(s, "err"))
        *out = AR_LOG_ERR;
    else if (!strcmp(s, "warn") || !strcmp(s, "warning"))
        *out = AR_LOG_WARN;
    else if (!strcmp(s, "info"))
        *out = AR_LOG_INFO;
    else if (!strcmp(s, "debug"))
        *out = AR_LOG_DEBUG;
    else
        return -EINVAL;
    return 0;
}

const char *ar_log_level_name(enum ar_log_level l)
{
    switch (l) {
    case AR_LOG_ERR:
        return "error";
    case AR_LOG_WARN:
        return "warn";
    case AR_LOG_INFO:
        return "info";
    case AR_LOG_DEBUG:
        return "debug";
    }
    return "info";
}

void ar_log_set_level(enum ar_log_level l)
{
    pthread_mutex_lock(&log_mu);
    log_level = l;
    pthread_mutex_unlock(&log_mu);
}

enum ar_log_level ar_log_get_level(void)
{
    return log_level;
}

void ar_log_set_journal(bool journal)
{
    pthread_mutex_lock(&log_mu);
    log_journal = journal;
    pthread_mutex_unlock(&log_mu);
}

void ar_log_set_stream(FILE *f)
{
    pthread_mutex_lock(&log_mu);
    log_stream = f;
    memset(rl, 0, sizeof(rl));
    pthread_mutex_unlock(&log_mu);
}

static uint64_t fnv1a(int level, const char *s)
{
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)level;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static int64_t mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

/* Under log_mu. Returns how many were suppressed before this line (to be mentioned), or -1 to
 * drop this line. */
static long rl_admit(int level, const char *text)
{
    uint64_t h = fnv1a(level, text);
    int64_t now = mono_s();
    struct rl_slot *s = NULL, *oldest = &rl[0];
    long prev = 0;

    for (size_t i = 0; i < RL_SLOTS; i++) {
        if (rl[i].used && rl[i].hash == h) {
            s = &rl[i];
            break;
        }
        if (!rl[i].used || (oldest->used && rl[i].window_start < oldest->window_start))
            oldest = &rl[i];
    }
    if (!s) {
        s = oldest;
        memset(s, 0, sizeof(*s));
        s->used = true;
        s->hash = h;
        s->window_start = now;
    }
    if (now - s->window_start >= AR_LOG_INTERVAL_S) {
        prev = s->suppressed;
        s->window_start = now;
        s->count = 0;
        s->suppressed = 0;
    }
    if (++s->count > AR_LOG_BURST) {
        s->suppressed++;
        return -1;
    }
    return prev;
}

void ar_logv(enum ar_log_level l, const char *fmt, va_list ap)
{
    char text[2048];
    FILE *f;
    long prev;
    int n;

    if (l > log_level)
        return;
    n = vsnprintf(text, sizeof(text), fmt, ap);
    if (n < 0)
        return;
    /* one line per message: fold any newline a caller's argument brought in */
    for (char *p = text; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';

    pthread_mutex_lock(&log_mu);
    if (log_journal < 0) {
        const char *js = getenv("JOURNAL_STREAM");
        log_journal = js && *js;
    }
    prev = rl_admit(l, text);
    if (prev < 0)
        goto out;
    f = log_stream ? log_stream : stderr;
    if (log_journal) {
        fprintf(f, "<%d>%s", (int)l, text);
    } else {
        struct timespec ts;
        struct tm tm;
        char tbuf[32];
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        strftime(tbuf, sizeof(tbuf), "%Y-%m-%dT%H:%M:%S", &tm);
        fprintf(f, "%s.%03ldZ %s: %s", tbuf, ts.tv_nsec / 1000000L, ar_log_level_name(l), text);
    }
    if (prev > 0)
        fprintf(f, " (%ld identical lines suppressed)", prev);
    fputc('\n', f);
    fflush(f);
out:
    pthread_mutex_unlock(&log_mu);
}

void ar_log(enum ar_log_level l, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ar_logv(l, fmt, ap);
    va_end(ap);
}
