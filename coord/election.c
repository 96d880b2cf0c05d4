/* coord/election.c: leader election on a lease-bound key (see election.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord/election.h"
#include "coord/session.h"

#define RETRY_MS 300

struct ar_election {
    struct ar_etcd *c;
    struct ar_session *session; /* the lease (and its deadline) */
    bool own_session;           /* made by ar_election_start (no settings->session) */
    char *key, *value;
    size_t key_len;
    ar_election_cb cb;
    void *arg;
    int refs;
    bool dead, resigning;

    struct ar_etcd_watch *watch;
    uv_timer_t *retry_timer;
    bool campaigning;

    bool leader;
    int64_t my_rev; /* create_revision of our key while leading */
    char *leader_value;
    int64_t leader_rev;
    int status;
    struct ar_err err;

    void (*resign_done)(void *);
    void *resign_arg;
};

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
    if (status < 0)
        ar_err_from_etcd(&e->err, NULL, status, err);
    else
        ar_err_clear(&e->err);
}

bool ar_election_is_leader(const struct ar_election *e, uint64_t now_ms)
{
    return e && e->leader && !e->resigning && ar_session_alive(e->session, now_ms);
}

uint64_t ar_election_deadline(const struct ar_election *e)
{
    uint64_t d, m;

    if (!e->leader || !e->session)
        return 0;
    d = ar_session_deadline(e->session);
    m = ar_session_margin(e->session);
    return d > m ? d - m : 0;
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

static void on_retry(uv_timer_t *t)
{
    struct ar_election *e = t->data;

    if (e->dead || e->resigning)
        return;
    campaign(e);
}

static void retry_later(struct ar_election *e)
{
    if (!e->dead && !e->resigning)
        uv_timer_start(e->retry_timer, on_retry, RETRY_MS, 0);
}

/* The session: a new lease -> campaign on it; the lease lost or untrusted (its deadline minus
 * margin passed, or etcd says it is gone) -> step down at once (our key went with it). */
static void on_session(void *arg, const struct ar_session_update *u)
{
    struct ar_election *e = arg;

    if (e->dead || e->resigning)
        return;
    switch (u->kind) {
    case AR_SESSION_GRANTED:
        campaign(e);
        break;
    case AR_SESSION_RENEWED:
        break;
    case AR_SESSION_LOST:
        set_error(e, u->status, u->err);
        e->my_rev = 0;
        if (e->leader)
            step_down(e);
        break;
    case AR_SESSION_GRANT_FAILED:
        set_error(e, u->status, u->err);
        notify(e);
        break;
    case AR_SESSION_RENEW_FAILED: /* the keeper retries; the session's deadline decides */
        set_error(e, u->status, u->err);
        break;
    }
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
    int64_t lease = ar_session_lease(e->session);

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
        e->leader = ar_session_alive(e->session, now);
        notify(e);
    } else if (res->n_ops == 1 && res->ops[0].n_kvs == 1) {
        const struct ar_etcd_kv *kv = &res->ops[0].kvs[0];

        if (kv->lease == lease && lease) { /* ours (a retried campaign that won) */
            e->my_rev = kv->create_revision;
            e->leader = ar_session_alive(e->session, now);
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
                             .lease = ar_session_lease(e->session)};
    struct ar_etcd_op get = {
        .type = AR_ETCD_RANGE, .key = (const uint8_t *)e->key, .key_len = e->key_len};
    struct ar_etcd_txn t = {.compare = &cmp,
                            .n_compare = 1,
                            .success = &put,
                            .n_success = 1,
                            .failure = &get,
                            .n_failure = 1};

    if (e->campaigning || !put.lease || e->dead || e->resigning)
        return;
    e->campaigning = true;
    e->refs++;
    if (ar_etcd_txn(e->c, &t, on_campaign, e) < 0) {
        e->campaigning = false;
        e->refs--;
        retry_later(e);
    }
}

int ar_election_start(struct ar_etcd *c, const struct ar_election_settings *s, ar_election_cb cb,
                      void *arg, struct ar_election **out)
{
    struct ar_election *e;
    int rc;

    if (out)
        *out = NULL;
    if (!out || !c || !s || !s->key || !*s->key || !s->value ||
        (s->session && ar_session_client(s->session) != c))
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
    e->retry_timer = malloc(sizeof(uv_timer_t));
    if (!e->key || !e->value || !e->retry_timer) {
        rc = -ENOMEM;
        goto fail;
    }
    if (s->session) {
        e->session = s->session;
    } else {
        struct ar_session_settings ss = {.ttl_s = s->ttl_s, .margin_ms = s->margin_ms};

        rc = ar_session_new(c, &ss, &e->session);
        if (rc < 0)
            goto fail;
        e->own_session = true;
    }
    rc = ar_session_listen(e->session, on_session, e);
    if (rc < 0)
        goto fail;
    uv_timer_init(ar_etcd_loop(c), e->retry_timer);
    e->retry_timer->data = e;
    campaign(e); /* at once when the session already holds a lease, else on GRANTED */
    *out = e;
    return 0;
fail:
    if (e->own_session)
        ar_session_free(e->session);
    free(e->retry_timer);
    unref(e);
    return rc;
}

static void stop_all(struct ar_election *e)
{
    ar_session_unlisten(e->session, on_session, e);
    ar_etcd_watch_stop(e->watch);
    e->watch = NULL;
    if (e->retry_timer) {
        uv_close((uv_handle_t *)e->retry_timer, close_free);
        e->retry_timer = NULL;
    }
}

static void resign_finish(struct ar_election *e)
{
    void (*done)(void *) = e->resign_done;

    e->resign_done = NULL;
    if (done)
        done(e->resign_arg);
}

static void on_resign_revoke(void *arg)
{
    struct ar_election *e = arg;

    resign_finish(e);
    unref(e);
}

/* The key is deleted (or that failed): an own session is revoked and freed; a shared one is
 * its owner's to close. */
static void on_resign_delete(void *arg, int status, const struct ar_etcd_result *res,
                             const struct ar_etcd_error *err)
{
    struct ar_election *e = arg;
    struct ar_session *own = e->own_session ? e->session : NULL;

    if (own) {
        e->session = NULL;
        e->own_session = false;
        ar_session_close(own, on_resign_revoke, e);
        return;
    }
    on_resign_revoke(e);
}

void ar_election_resign(struct ar_election *e, void (*done)(void *arg), void *arg)
{
    bool was_leader = e->leader;
    int64_t rev = e->my_rev;

    e->resigning = true;
    e->resign_done = done;
    e->resign_arg = arg;
    e->leader = false;
    ar_session_unlisten(e->session, on_session, e);
    if (!e->own_session) /* its owner may close it once this returns */
        e->session = NULL;
    ar_etcd_watch_stop(e->watch);
    e->watch = NULL;
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
    if (e->own_session)
        ar_session_free(e->session);
    e->session = NULL;
    unref(e);
}
