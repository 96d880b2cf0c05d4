/* coord/etcd/etcd_sync.c: blocking facade on a private loop (see etcd_sync.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord/etcd/etcd_sync.h"

struct ar_etcd_sync {
    uv_loop_t loop;
    struct ar_etcd *c;
};

struct waiter {
    bool done;
    int status;
    struct ar_etcd_result *res;
    struct ar_etcd_error *err;
    ar_etcd_page_cb page_cb;
    void *page_arg;
};

int ar_etcd_sync_new(const struct ar_etcd_settings *st, struct ar_etcd_sync **out)
{
    struct ar_etcd_sync *s;
    int rc;

    if (!out)
        return -EINVAL;
    *out = NULL;
    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    rc = uv_loop_init(&s->loop); /* libuv errors are negative errnos */
    if (rc < 0)
        goto fail;
    rc = ar_etcd_new(&s->loop, st, &s->c);
    if (rc < 0) {
        uv_loop_close(&s->loop);
        goto fail;
    }
    *out = s;
    return 0;
fail:
    free(s);
    return rc;
}

void ar_etcd_sync_free(struct ar_etcd_sync *s)
{
    if (!s)
        return;
    ar_etcd_close(s->c);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
    free(s);
}

struct ar_etcd *ar_etcd_sync_client(struct ar_etcd_sync *s)
{
    return s->c;
}

static void on_done(void *arg, int status, const struct ar_etcd_result *res,
                    const struct ar_etcd_error *err)
{
    struct waiter *w = arg;

    w->done = true;
    w->status = status;
    if (status == 0)
        w->res = ar_etcd_result_keep(res);
    else if (w->err && err)
        *w->err = *err;
}

static int wait_for(struct ar_etcd_sync *s, struct waiter *w, int rc, struct ar_etcd_result **out)
{
    if (out)
        *out = NULL;
    if (rc < 0) {
        if (w->err) {
            memset(w->err, 0, sizeof(*w->err));
            w->err->code = rc;
            snprintf(w->err->msg, sizeof(w->err->msg), "%s", strerror(-rc));
        }
        return rc;
    }
    while (!w->done)
        uv_run(&s->loop, UV_RUN_ONCE);
    if (out)
        *out = w->res;
    else
        ar_etcd_result_free(w->res);
    return w->status;
}

#define SYNC_OP(name, call)                                                                        \
    int ar_etcd_sync_##name(struct ar_etcd_sync *s, const struct ar_etcd_op *op,                   \
                            struct ar_etcd_result **out, struct ar_etcd_error *err)                \
    {                                                                                              \
        struct waiter w = {.err = err};                                                            \
        return wait_for(s, &w, call(s->c, op, on_done, &w), out);                                  \
    }

SYNC_OP(range, ar_etcd_range)
SYNC_OP(put, ar_etcd_put)
SYNC_OP(delete, ar_etcd_delete)

int ar_etcd_sync_txn(struct ar_etcd_sync *s, const struct ar_etcd_txn *t,
                     struct ar_etcd_result **out, struct ar_etcd_error *err)
{
    struct waiter w = {.err = err};

    return wait_for(s, &w, ar_etcd_txn(s->c, t, on_done, &w), out);
}

int ar_etcd_sync_lease_grant(struct ar_etcd_sync *s, int64_t ttl_s, struct ar_etcd_result **out,
                             struct ar_etcd_error *err)
{
    struct waiter w = {.err = err};

    return wait_for(s, &w, ar_etcd_lease_grant(s->c, ttl_s, 0, on_done, &w), out);
}

int ar_etcd_sync_lease_revoke(struct ar_etcd_sync *s, int64_t id, struct ar_etcd_error *err)
{
    struct waiter w = {.err = err};

    return wait_for(s, &w, ar_etcd_lease_revoke(s->c, id, on_done, &w), NULL);
}

static int on_page(void *arg, int status, const struct ar_etcd_result *res,
                   const struct ar_etcd_error *err)
{
    struct waiter *w = arg;
    int stop = 0;

    if (status < 0) {
        w->done = true;
        w->status = status;
        if (w->err && err)
            *w->err = *err;
        return 1;
    }
    stop = w->page_cb(w->page_arg, 0, res, NULL);
    if (stop || !res->more || !res->n_kvs)
        w->done = true;
    return stop;
}

int ar_etcd_sync_iterate(struct ar_etcd_sync *s, const struct ar_etcd_op *op, ar_etcd_page_cb cb,
                         void *arg, struct ar_etcd_error *err)
{
    struct waiter w = {.err = err, .page_cb = cb, .page_arg = arg};

    return wait_for(s, &w, ar_etcd_iterate(s->c, op, on_page, &w), NULL);
}

static void on_run_timer(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

void ar_etcd_sync_run_for(struct ar_etcd_sync *s, unsigned ms)
{
    uv_timer_t t;
    bool fired = false;

    uv_timer_init(&s->loop, &t);
    t.data = &fired;
    uv_timer_start(&t, on_run_timer, ms, 0);
    while (!fired)
        uv_run(&s->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&s->loop, UV_RUN_NOWAIT);
}
