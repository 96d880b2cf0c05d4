/* coord/err.c: the error carrier (see err.h). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "coord/err.h"

static void one_line(char *s)
{
    for (; *s; s++)
        if (*s == '\n' || *s == '\r')
            *s = ' ';
}

void ar_err_set(struct ar_err *e, int code, const char *where, const char *fmt, ...)
{
    va_list ap;

    if (!e)
        return;
    e->code = code;
    snprintf(e->where, sizeof(e->where), "%s", where ? where : "");
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    one_line(e->where);
    one_line(e->msg);
}

void ar_err_from_etcd(struct ar_err *e, const char *what, int status,
                      const struct ar_etcd_error *ee)
{
    const char *m = ee && ee->msg[0] ? ee->msg : strerror(status < 0 ? -status : EIO);

    if (what && *what)
        ar_err_set(e, status, ee ? ee->endpoint : NULL, "%s: %s", what, m);
    else
        ar_err_set(e, status, ee ? ee->endpoint : NULL, "%s", m);
}

void ar_err_clear(struct ar_err *e)
{
    if (e)
        memset(e, 0, sizeof(*e));
}

const char *ar_err_line(const struct ar_err *e, char *buf, size_t len)
{
    if (!len)
        return buf;
    buf[0] = '\0';
    if (!e || !e->code)
        return buf;
    if (e->where[0])
        snprintf(buf, len, "%s (%s)", e->msg, e->where);
    else
        snprintf(buf, len, "%s", e->msg);
    return buf;
}
