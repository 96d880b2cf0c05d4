/* coord/election.c: leader election on a lease-bound key (see election.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord/election.h"

#define RETRY_MS 300

struct ar_election {
    struct ar_etcd *c;
    char *key, *value;
    size_t key_len;
    int64_t ttl;
    unsigned margin;
    ar_election_cb cb;
    void *arg;
    int refs;
    bool dead, resigning;

    int64_t lease;
    uint64_t deadline; /* lease deadline from the last request sent and answered */
    struct ar_etcd_keeper *keeper;
    struct ar_etcd_watch *watch;
    uv_timer_t *deadline_timer, *retry_timer;
    bool granting, campaigning;

    bool leader;
    int64_t my_rev; /* create_revision of our key while leading */
    char *leader_value;
    int64_t leader_rev;
    int status;
    struct ar_etcd_error err;

    void (*resign_done)(void *);
    void *resign_arg;
};

static void grant(struct ar_election *e);
static void campaign(struct ar_election *e);

static void close_free(uv_handle_t *h)
{
    free(h);
}

static void unref(struct ar_election *e)
{
    if (--e->refs > 0)
        return;
    free(e->key);
    free(e->value);
    free(e->leader_value);
    free(e);
}

static void notify(struct ar_election *e)
{
    struct ar_election_state st = {
        .is_leader = ar_election_is_leader(e, ar_etcd_now_ms()),
        .leader = e->leader_value,
        .leader_revision = e->leader_rev,
        .status = e->status,
        .err = e->status ? &e->err : NULL,
    };

    if (e->cb && !e->dead)
        e->cb(e->arg, &st);
}

static void set_leader_value(struct ar_election *e, const uint8_t *v, size_t n, int64_t rev)
{
    free(e->leader_value);
    e->leader_value = NULL;
    if (v) {
        e->leader_value = malloc(n + 1);
        if (e->leader_value) {
            memcpy(e->leader_value, v, n);
            e->leader_value[n] = 0;
        }
    }
    e->leader_rev = rev;
}

static void set_error(struct ar_election *e, int status, const struct ar_etcd_error *err)
{
    e->status = status;
    if (err)
        e->err = *err;
    else
        memset(&e->err, 0, sizeof(e->err));
}

bool ar_election_is_leader(const struct ar_election *e, uint64_t now_ms)
{
    return e && e->leader && !e->resigning && now_ms + e->margin < e->deadline;
}

uint64_t ar_election_deadline(const struct ar_election *e)
{
    return e->leader && e->deadline > e->margin ? e->deadline - e->margin : 0;
}

int ar_election_guard(const struct ar_election *e, struct ar_etcd_compare *out)
{
    if (!e || !ar_election_is_leader(e, ar_etcd_now_ms()) || e->my_rev <= 0)
        return -EPERM;
    *out = (struct ar_etcd_compare){.key = (const uint8_t *)e->key,
                                    .key_len = e->key_len,
                                    .target = AR_ETCD_CMP_CREATE,
                                    .result = AR_ETCD_EQUAL,
                                    .number = e->my_rev};
    return 0;
}

const char *ar_election_leader(const struct ar_election *e)
{
    return e->leader_value;
}

static void step_down(struct ar_election *e)
{
    if (!e->leader)
        return;
    e->leader = false;
    e->my_rev = 0;
    notify(e);
}

static void on_revoke_ignore(void *arg, int status, const struct ar_etcd_result *res,
                             const struct ar_etcd_error *err)
{
}

/* Our lease is gone or can no longer be trusted: step down, drop it, start over. */
static void abandon_lease(struct ar_election *e)
{
    step_down(e);
    ar_etcd_keepalive_stop(e->keeper);
    e->keeper = NULL;
    if (e->lease)
        ar_etcd_lease_revoke(e->c, e->lease, on_revoke_ignore, NULL);
    e->lease = 0;
    e->deadline = 0;
    uv_timer_stop(e->deadline_timer);
    grant(e);
}

static void on_deadline(uv_timer_t *t)
{
    struct ar_election *e = t->data;
    uint64_t now = ar_etcd_now_ms();

    if (e->dead || e->resigning)
        return;
    if (now + e->margin >= e->deadline) {
        set_error(e, -ETIMEDOUT, NULL);
        snprintf(e->err.msg, sizeof(e->err.msg), "lease not renewed before its deadline");
        e->err.code = -ETIMEDOUT;
        abandon_lease(e);
    } else {
        uv_timer_start(t, on_deadline, e->deadline - e->margin - now, 0);
    }
}

static void arm_deadline(struct ar_election *e)
{
    uint64_t now = ar_etcd_now_ms(), at = e->deadline > e->margin ? e->deadline - e->margin : 0;

    uv_timer_start(e->deadline_timer, on_deadline, at > now ? at - now : 0, 0);
}

static void on_retry(uv_timer_t *t)
{
    struct ar_election *e = t->data;

    if (e->dead || e->resigning)
        return;
    if (!e->lease)
        grant(e);
    else
        campaign(e);
}

static void retry_later(struct ar_election *e)
{
    if (!e->dead && !e->resigning)
        uv_timer_start(e->retry_timer, on_retry, RETRY_MS, 0);
}

static void on_keepalive(void *arg, int status, int64_t ttl, uint64_t deadline,
                         const struct ar_etcd_error *err)
{
    struct ar_election *e = arg;

    if (e->dead || e->resigning)
        return;
    if (status == 0) {
        e->deadline = deadline;
        arm_deadline(e);
        return;
    }
    set_error(e, status, err);
    if (status == -ENOENT)
        abandon_lease(e);
    /* other errors: the keeper retries; the deadline timer decides */
}

static void on_watch(void *arg, const struct ar_etcd_watch_update *u)
{
    struct ar_election *e = arg;

    if (e->dead || e->resigning)
        return;
    switch (u->kind) {
    case AR_ETCD_WATCH_EVENTS:
        for (size_t i = 0; i < u->n_events; i++) {
            const struct ar_etcd_event *ev = &u->events[i];

            if (ev->type == AR_ETCD_EV_DELETE) {
                set_leader_value(e, NULL, 0, 0);
                if (e->leader)
                    step_down(e);
                else
                    notify(e);
                campaign(e);
            } else if (ev->kv.create_revision != e->my_rev) {
                set_leader_value(e, ev->kv.value, ev->kv.value_len, ev->kv.create_revision);
                step_down(e);
                notify(e);
            }
        }
        break;
    case AR_ETCD_WATCH_COMPACTED:
        ar_etcd_watch_stop(e->watch);
        e->watch = NULL;
        campaign(e); /* re-reads and re-watches */
        break;
    case AR_ETCD_WATCH_ERROR:
        set_error(e, u->status, u->err);
        break;
    case AR_ETCD_WATCH_CREATED:
        break;
    }
}

static void start_watch(struct ar_election *e, int64_t from)
{
    struct ar_etcd_watch_opts o = {
        .key = (const uint8_t *)e->key, .key_len = e->key_len, .start_revision = from};

    if (e->watch)
        return;
    if (ar_etcd_watch_start(e->c, &o, on_watch, e, &e->watch) < 0)
        retry_later(e);
}

static void on_campaign(void *arg, int status, const struct ar_etcd_result *res,
                        const struct ar_etcd_error *err)
{
    struct ar_election *e = arg;
    uint64_t now = ar_etcd_now_ms();

    e->campaigning = false;
    if (e->dead || e->resigning) {
        unref(e);
        return;
    }
    if (status < 0) {
        set_error(e, status, err);
        notify(e);
        retry_later(e);
        unref(e);
        return;
    }
    set_error(e, 0, NULL);
    if (res->succeeded) {
        e->my_rev = res->revision;
        set_leader_value(e, (const uint8_t *)e->value, strlen(e->value), res->revision);
        /* only lead while the lease is surely alive */
        e->leader = now + e->margin < e->deadline;
        notify(e);
    } else if (res->n_ops == 1 && res->ops[0].n_kvs == 1) {
        const struct ar_etcd_kv *kv = &res->ops[0].kvs[0];

        if (kv->lease == e->lease && e->lease) { /* ours (a retried campaign that won) */
            e->my_rev = kv->create_revision;
            e->leader = now + e->margin < e->deadline;
        }
        set_leader_value(e, kv->value, kv->value_len, kv->create_revision);
        notify(e);
    } else {
        /* deleted between compare and range: try again */
        retry_later(e);
    }
    start_watch(e, res->revision + 1);
    unref(e);
}

static void campaign(struct ar_election *e)
{
    struct ar_etcd_compare cmp = {.key = (const uint8_t *)e->key,
                                  .key_len = e->key_len,
                                  .target = AR_ETCD_CMP_CREATE,
                                  .result = AR_ETCD_EQUAL};
    struct ar_etcd_op put = {.type = AR_ETCD_PUT,
                             .key = (const uint8_t *)e->key,
                             .key_len = e->key_len,
                             .value = (const uint8_t *)e->value,
                             .value_len = strlen(e->value),
                             .lease = e->lease};
    struct ar_etcd_op get = {
        .type = AR_ETCD_RANGE, .key = (const uint8_t *)e->key, .key_len = e->key_len};
    struct ar_etcd_txn t = {.compare = &cmp,
                            .n_compare = 1,
                            .success = &put,
                            .n_success = 1,
                            .failure = &get,
                            .n_failure = 1};

    if (e->campaigning || !e->lease || e->dead || e->resigning)
        return;
    e->campaigning = true;
    e->refs++;
    if (ar_etcd_txn(e->c, &t, on_campaign, e) < 0) {
        e->campaigning = false;
        e->refs--;
        retry_later(e);
    }
}

struct grant_ctx {
    struct ar_election *e;
    uint64_t sent_at;
};

static void on_grant(void *arg, int status, const struct ar_etcd_result *res,
                     const struct ar_etcd_error *err)
{
    struct grant_ctx *g = arg;
    struct ar_election *e = g->e;
    uint64_t sent = g->sent_at;

    free(g);
    e->granting = false;
    if (e->dead || e->resigning) {
        if (status == 0)
            ar_etcd_lease_revoke(e->c, res->lease_id, on_revoke_ignore, NULL);
        unref(e);
        return;
    }
    if (status < 0) {
        set_error(e, status, err);
        notify(e);
        retry_later(e);
        unref(e);
        return;
    }
    /* ar_etcd_lease_grant guarantees lease_id != 0 and ttl > 0 (else -EPROTO above) */
    e->lease = res->lease_id;
    e->ttl = res->ttl;
    e->deadline = sent + (uint64_t)res->ttl * 1000;
    arm_deadline(e);
    if (ar_etcd_keepalive_start(e->c, e->lease, e->ttl, on_keepalive, e, &e->keeper) < 0)
        e->keeper = NULL;
    campaign(e);
    unref(e);
}

static void grant(struct ar_election *e)
{
    struct grant_ctx *g;

    if (e->granting || e->dead || e->resigning)
        return;
    g = malloc(sizeof(*g));
    if (!g) {
        retry_later(e);
        return;
    }
    g->e = e;
    g->sent_at = ar_etcd_now_ms();
    e->granting = true;
    e->refs++;
    if (ar_etcd_lease_grant(e->c, e->ttl, 0, on_grant, g) < 0) {
        free(g);
        e->granting = false;
        e->refs--;
        retry_later(e);
    }
}

int ar_election_start(struct ar_etcd *c, const struct ar_election_settings *s, ar_election_cb cb,
                      void *arg, struct ar_election **out)
{
    struct ar_election *e;

    if (out)
        *out = NULL;
    if (!out || !c || !s || !s->key || !*s->key || !s->value)
        return -EINVAL;
    e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    e->refs = 1;
    e->c = c;
    e->cb = cb;
    e->arg = arg;
    e->key = strdup(s->key);
    e->value = strdup(s->value);
    e->key_len = e->key ? strlen(e->key) : 0;
    e->ttl = s->ttl_s ? s->ttl_s : 10;
    e->margin = s->margin_ms ? s->margin_ms : (unsigned)(e->ttl * 1000 / 6);
    if (e->margin < 300)
        e->margin = 300;
    e->deadline_timer = malloc(sizeof(uv_timer_t));
    e->retry_timer = malloc(sizeof(uv_timer_t));
    if (!e->key || !e->value || !e->deadline_timer || !e->retry_timer) {
        free(e->deadline_timer);
        free(e->retry_timer);
        unref(e);
        return -ENOMEM;
    }
    uv_timer_init(ar_etcd_loop(c), e->deadline_timer);
    uv_timer_init(ar_etcd_loop(c), e->retry_timer);
    e->deadline_timer->data = e;
    e->retry_timer->data = e;
    grant(e);
    *out = e;
    return 0;
}

static void stop_all(struct ar_election *e)
{
    ar_etcd_keepalive_stop(e->keeper);
    e->keeper = NULL;
    ar_etcd_watch_stop(e->watch);
    e->watch = NULL;
    if (e->deadline_timer) {
        uv_close((uv_handle_t *)e->deadline_timer, close_free);
        uv_close((uv_handle_t *)e->retry_timer, close_free);
        e->deadline_timer = e->retry_timer = NULL;
    }
}

static void resign_finish(struct ar_election *e)
{
    void (*done)(void *) = e->resign_done;

    e->resign_done = NULL;
    if (done)
        done(e->resign_arg);
}

static void on_resign_revoke(void *arg, int status, const struct ar_etcd_result *res,
                             const struct ar_etcd_error *err)
{
    struct ar_election *e = arg;

    resign_finish(e);
    unref(e);
}

static void on_resign_delete(void *arg, int status, const struct ar_etcd_result *res,
                             const struct ar_etcd_error *err)
{
    struct ar_election *e = arg;

    if (!e->lease || ar_etcd_lease_revoke(e->c, e->lease, on_resign_revoke, e) < 0) {
        resign_finish(e);
        unref(e);
    }
}

void ar_election_resign(struct ar_election *e, void (*done)(void *arg), void *arg)
{
    bool was_leader = e->leader;
    int64_t rev = e->my_rev;

    e->resigning = true;
    e->resign_done = done;
    e->resign_arg = arg;
    e->leader = false;
    ar_etcd_keepalive_stop(e->keeper);
    e->keeper = NULL;
    ar_etcd_watch_stop(e->watch);
    e->watch = NULL;
    uv_timer_stop(e->deadline_timer);
    uv_timer_stop(e->retry_timer);
    if (was_leader)
        notify(e);
    e->refs++;
    if (was_leader && rev) {
        struct ar_etcd_compare cmp = {.key = (const uint8_t *)e->key,
                                      .key_len = e->key_len,
                                      .target = AR_ETCD_CMP_CREATE,
                                      .number = rev};
        struct ar_etcd_op del = {
            .type = AR_ETCD_DELETE, .key = (const uint8_t *)e->key, .key_len = e->key_len};
        struct ar_etcd_txn t = {.compare = &cmp, .n_compare = 1, .success = &del, .n_success = 1};

        if (ar_etcd_txn(e->c, &t, on_resign_delete, e) == 0)
            return;
    }
    on_resign_delete(e, 0, NULL, NULL);
}

void ar_election_free(struct ar_election *e)
{
    if (!e)
        return;
    e->dead = true;
    e->resign_done = NULL;
    stop_all(e);
    unref(e);
}
