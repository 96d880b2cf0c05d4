/* coord/session.c: one lease, one keeper, lease-lost notification, re-grant (see session.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord/session.h"

#define RETRY_MS 300

struct listener {
    ar_session_cb cb;
    void *arg;
};

struct ar_session {
    struct ar_etcd *c;
    int64_t ttl;
    unsigned margin;
    int refs;
    bool dead, granting;

    int64_t lease;
    uint64_t deadline; /* from the last request sent and answered */
    struct ar_etcd_keeper *keeper;
    uv_timer_t *deadline_timer, *retry_timer;

    struct listener l[AR_SESSION_MAX_LISTENERS];

    void (*close_done)(void *);
    void *close_arg;
};

struct grant_ctx {
    struct ar_session *s;
    uint64_t sent_at;
};

static void grant(struct ar_session *s);

static void close_free(uv_handle_t *h)
{
    free(h);
}

static void unref(struct ar_session *s)
{
    if (--s->refs > 0)
        return;
    free(s);
}

static void emit(struct ar_session *s, enum ar_session_event kind, int64_t lease, int status,
                 const struct ar_etcd_error *err)
{
    struct ar_session_update u = {.kind = kind,
                                  .lease = lease,
                                  .deadline_ms = s->deadline,
                                  .status = status,
                                  .err = status < 0 ? err : NULL};
    struct listener snap[AR_SESSION_MAX_LISTENERS];

    memcpy(snap, s->l, sizeof(snap));
    for (size_t i = 0; i < AR_SESSION_MAX_LISTENERS && !s->dead; i++) {
        /* one that unlistened meanwhile is skipped */
        if (!snap[i].cb || s->l[i].cb != snap[i].cb || s->l[i].arg != snap[i].arg)
            continue;
        snap[i].cb(snap[i].arg, &u);
    }
}

static void on_revoke_ignore(void *arg, int status, const struct ar_etcd_result *res,
                             const struct ar_etcd_error *err)
{
}

/* Drop the current lease (revoke it unless etcd already said it is gone), tell, re-grant. */
static void drop_lease(struct ar_session *s, int status, const struct ar_etcd_error *err)
{
    int64_t old = s->lease;

    ar_etcd_keepalive_stop(s->keeper);
    s->keeper = NULL;
    uv_timer_stop(s->deadline_timer);
    if (old && status != -ENOENT)
        ar_etcd_lease_revoke(s->c, old, on_revoke_ignore, NULL);
    s->lease = 0;
    s->deadline = 0;
    emit(s, AR_SESSION_LOST, old, status, err);
    grant(s);
}

static void on_deadline(uv_timer_t *t)
{
    struct ar_session *s = t->data;
    uint64_t now = ar_etcd_now_ms();
    struct ar_etcd_error e;

    if (s->dead || !s->lease)
        return;
    if (now + s->margin >= s->deadline) {
        ar_etcd_set_error(&e, -ETIMEDOUT, "", "lease not renewed before its deadline");
        drop_lease(s, -ETIMEDOUT, &e);
    } else {
        uv_timer_start(t, on_deadline, s->deadline - s->margin - now, 0);
    }
}

static void arm_deadline(struct ar_session *s)
{
    uint64_t now = ar_etcd_now_ms(), at = s->deadline > s->margin ? s->deadline - s->margin : 0;

    uv_timer_start(s->deadline_timer, on_deadline, at > now ? at - now : 0, 0);
}

static void on_retry(uv_timer_t *t)
{
    struct ar_session *s = t->data;

    if (!s->dead && !s->lease)
        grant(s);
}

static void on_keepalive(void *arg, int status, int64_t ttl, uint64_t deadline,
                         const struct ar_etcd_error *err)
{
    struct ar_session *s = arg;

    if (s->dead || !s->lease)
        return;
    if (status == 0) {
        s->deadline = deadline;
        arm_deadline(s);
        emit(s, AR_SESSION_RENEWED, s->lease, 0, NULL);
    } else if (status == -ENOENT) {
        drop_lease(s, status, err);
    } else {
        emit(s, AR_SESSION_RENEW_FAILED, s->lease, status, err);
    }
}

static void on_grant(void *arg, int status, const struct ar_etcd_result *res,
                     const struct ar_etcd_error *err)
{
    struct grant_ctx *g = arg;
    struct ar_session *s = g->s;
    uint64_t sent = g->sent_at;

    free(g);
    s->granting = false;
    if (s->dead) { /* closed meanwhile: do not leave the new lease behind */
        if (status == 0)
            ar_etcd_lease_revoke(s->c, res->lease_id, on_revoke_ignore, NULL);
        unref(s);
        return;
    }
    if (status < 0) {
        emit(s, AR_SESSION_GRANT_FAILED, 0, status, err);
        if (!s->dead)
            uv_timer_start(s->retry_timer, on_retry, RETRY_MS, 0);
        unref(s);
        return;
    }
    /* ar_etcd_lease_grant guarantees lease_id != 0 and ttl > 0 (else -EPROTO above) */
    s->lease = res->lease_id;
    s->ttl = res->ttl;
    s->deadline = sent + (uint64_t)res->ttl * 1000;
    arm_deadline(s);
    if (ar_etcd_keepalive_start(s->c, s->lease, s->ttl, on_keepalive, s, &s->keeper) < 0)
        s->keeper = NULL; /* the deadline timer then drops the lease and grants again */
    emit(s, AR_SESSION_GRANTED, s->lease, 0, NULL);
    unref(s);
}

static void grant(struct ar_session *s)
{
    struct grant_ctx *g;

    if (s->granting || s->dead || s->lease)
        return;
    g = malloc(sizeof(*g));
    if (!g) {
        uv_timer_start(s->retry_timer, on_retry, RETRY_MS, 0);
        return;
    }
    g->s = s;
    g->sent_at = ar_etcd_now_ms();
    s->granting = true;
    s->refs++;
    if (ar_etcd_lease_grant(s->c, s->ttl, 0, on_grant, g) < 0) {
        free(g);
        s->granting = false;
        s->refs--;
        uv_timer_start(s->retry_timer, on_retry, RETRY_MS, 0);
    }
}

int ar_session_new(struct ar_etcd *c, const struct ar_session_settings *st, struct ar_session **out)
{
    struct ar_session *s;

    if (out)
        *out = NULL;
    if (!out || !c || (st && st->ttl_s < 0))
        return -EINVAL;
    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->refs = 1;
    s->c = c;
    s->ttl = st && st->ttl_s ? st->ttl_s : 10;
    s->margin = st && st->margin_ms ? st->margin_ms : (unsigned)(s->ttl * 1000 / 6);
    if (s->margin < 300)
        s->margin = 300;
    s->deadline_timer = malloc(sizeof(uv_timer_t));
    s->retry_timer = malloc(sizeof(uv_timer_t));
    if (!s->deadline_timer || !s->retry_timer) {
        free(s->deadline_timer);
        free(s->retry_timer);
        free(s);
        return -ENOMEM;
    }
    uv_timer_init(ar_etcd_loop(c), s->deadline_timer);
    uv_timer_init(ar_etcd_loop(c), s->retry_timer);
    s->deadline_timer->data = s->retry_timer->data = s;
    grant(s);
    *out = s;
    return 0;
}

int ar_session_listen(struct ar_session *s, ar_session_cb cb, void *arg)
{
    if (!s || !cb)
        return -EINVAL;
    for (size_t i = 0; i < AR_SESSION_MAX_LISTENERS; i++)
        if (!s->l[i].cb) {
            s->l[i] = (struct listener){cb, arg};
            return 0;
        }
    return -ENOSPC;
}

void ar_session_unlisten(struct ar_session *s, ar_session_cb cb, void *arg)
{
    if (!s)
        return;
    for (size_t i = 0; i < AR_SESSION_MAX_LISTENERS; i++)
        if (s->l[i].cb == cb && s->l[i].arg == arg) {
            s->l[i] = (struct listener){NULL, NULL};
            return;
        }
}

struct ar_etcd *ar_session_client(const struct ar_session *s)
{
    return s->c;
}

int64_t ar_session_lease(const struct ar_session *s)
{
    return s && !s->dead ? s->lease : 0;
}

uint64_t ar_session_deadline(const struct ar_session *s)
{
    return s && !s->dead && s->lease ? s->deadline : 0;
}

unsigned ar_session_margin(const struct ar_session *s)
{
    return s ? s->margin : 0;
}

bool ar_session_alive(const struct ar_session *s, uint64_t now_ms)
{
    return s && !s->dead && s->lease && now_ms + s->margin < s->deadline;
}

void ar_session_lost(struct ar_session *s, int64_t lease, int status,
                     const struct ar_etcd_error *err)
{
    if (!s || s->dead || !lease || lease != s->lease)
        return;
    drop_lease(s, status < 0 ? status : -ENOENT, err);
}

static void stop_all(struct ar_session *s)
{
    s->dead = true;
    memset(s->l, 0, sizeof(s->l));
    ar_etcd_keepalive_stop(s->keeper);
    s->keeper = NULL;
    if (s->deadline_timer) {
        uv_close((uv_handle_t *)s->deadline_timer, close_free);
        uv_close((uv_handle_t *)s->retry_timer, close_free);
        s->deadline_timer = s->retry_timer = NULL;
    }
}

static void on_close_revoke(void *arg, int status, const struct ar_etcd_result *res,
                            const struct ar_etcd_error *err)
{
    struct ar_session *s = arg;
    void (*done)(void *) = s->close_done;

    s->close_done = NULL;
    if (done)
        done(s->close_arg);
    unref(s);
}

void ar_session_close(struct ar_session *s, void (*done)(void *arg), void *arg)
{
    int64_t lease;

    if (!s)
        return;
    lease = s->lease;
    stop_all(s);
    s->lease = 0;
    s->close_done = done;
    s->close_arg = arg;
    if (lease && ar_etcd_lease_revoke(s->c, lease, on_close_revoke, s) == 0)
        return; /* the reference passes to on_close_revoke */
    s->close_done = NULL;
    if (done)
        done(arg);
    unref(s);
}

void ar_session_free(struct ar_session *s)
{
    if (!s)
        return;
    stop_all(s);
    s->lease = 0;
    s->close_done = NULL;
    unref(s);
}
