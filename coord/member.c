/* coord/member.c: registration and liveness keys (see member.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord/member.h"

#define RETRY_MS 500

int ar_member_key(char *out, size_t outsz, const char *prefix, const char *kind, const char *node)
{
    int n;

    if (!prefix)
        prefix = AR_DEFAULT_PREFIX;
    if (!node || !*node || strchr(node, '/') || !kind)
        return -EINVAL;
    n = snprintf(out, outsz, "%s%s%s%s", prefix, kind, *kind ? "/" : "", node);
    if (n < 0 || (size_t)n >= outsz)
        return -ENAMETOOLONG;
    return 0;
}

int ar_member_register(struct ar_etcd *c, const char *prefix, const char *node, const char *json,
                       ar_etcd_cb cb, void *arg)
{
    char key[512];
    struct ar_etcd_op op = {0};
    int rc = ar_member_key(key, sizeof(key), prefix, "members", node);

    if (rc < 0)
        return rc;
    op.key = (const uint8_t *)key;
    op.key_len = strlen(key);
    op.value = (const uint8_t *)json;
    op.value_len = json ? strlen(json) : 0;
    return ar_etcd_put(c, &op, cb, arg);
}

/* --- liveness ----------------------------------------------------------------------------- */

struct ar_member_alive {
    struct ar_etcd *c;
    struct ar_session *session;
    bool own_session;
    char key[512];
    char *report;
    int64_t put_lease;  /* the lease of the put in flight */
    int64_t lost_lease; /* a put already reported this lease gone (no second callback) */
    uv_timer_t *retry;
    ar_etcd_cb cb;
    void *arg;
    int refs;
    bool dead, putting, dirty, ok;
    void (*done)(void *);
    void *done_arg;
};

static void alive_put(struct ar_member_alive *a);

static void close_free(uv_handle_t *h)
{
    free(h);
}

static void alive_unref(struct ar_member_alive *a)
{
    if (--a->refs > 0)
        return;
    free(a->report);
    free(a);
}

static void on_retry(uv_timer_t *t)
{
    struct ar_member_alive *a = t->data;

    if (!a->dead)
        alive_put(a);
}

static void retry_later(struct ar_member_alive *a)
{
    if (!a->dead)
        uv_timer_start(a->retry, on_retry, RETRY_MS, 0);
}

static void on_put(void *arg, int status, const struct ar_etcd_result *res,
                   const struct ar_etcd_error *err)
{
    struct ar_member_alive *a = arg;

    a->putting = false;
    if (!a->dead) {
        a->ok = status == 0;
        if (a->cb)
            a->cb(a->arg, status, res, err);
        if (status == -ENOENT) { /* "requested lease not found": re-putting on it never works */
            a->lost_lease = a->put_lease;
            ar_session_lost(a->session, a->put_lease, status, err);
        } else if (status < 0) {
            retry_later(a);
        } else if (a->dirty) {
            alive_put(a);
        }
    }
    alive_unref(a);
}

static void alive_put(struct ar_member_alive *a)
{
    struct ar_etcd_op op = {.key = (const uint8_t *)a->key,
                            .key_len = strlen(a->key),
                            .value = (const uint8_t *)a->report,
                            .value_len = strlen(a->report),
                            .lease = ar_session_lease(a->session)};

    if (a->dead || !op.lease) /* no lease: the session's GRANTED puts it */
        return;
    if (a->putting) {
        a->dirty = true;
        return;
    }
    a->dirty = false;
    a->putting = true;
    a->put_lease = op.lease;
    a->refs++;
    if (ar_etcd_put(a->c, &op, on_put, a) < 0) {
        a->putting = false;
        a->refs--;
        retry_later(a);
    }
}

/* A new lease: the key goes on it. The lease lost: the key went with it (told once). */
static void on_session(void *arg, const struct ar_session_update *u)
{
    struct ar_member_alive *a = arg;

    if (a->dead)
        return;
    switch (u->kind) {
    case AR_SESSION_GRANTED:
        a->ok = false;
        alive_put(a);
        break;
    case AR_SESSION_LOST:
        a->ok = false;
        if (a->cb && u->lease != a->lost_lease)
            a->cb(a->arg, u->status, NULL, u->err);
        break;
    case AR_SESSION_GRANT_FAILED:
        if (a->cb)
            a->cb(a->arg, u->status, NULL, u->err);
        break;
    case AR_SESSION_RENEWED:
    case AR_SESSION_RENEW_FAILED:
        break;
    }
}

static int alive_new(struct ar_etcd *c, struct ar_session *shared, const char *prefix,
                     const char *node, int64_t ttl_s, const char *report_json, ar_etcd_cb cb,
                     void *arg, struct ar_member_alive **out)
{
    struct ar_member_alive *a;
    int rc;

    if (out)
        *out = NULL;
    if (!out || !c)
        return -EINVAL;
    a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    a->refs = 1;
    a->c = c;
    a->cb = cb;
    a->arg = arg;
    rc = ar_member_key(a->key, sizeof(a->key), prefix, "alive", node);
    if (rc < 0) {
        free(a);
        return -EINVAL;
    }
    a->report = strdup(report_json ? report_json : "{}");
    a->retry = malloc(sizeof(*a->retry));
    if (!a->report || !a->retry) {
        rc = -ENOMEM;
        goto fail;
    }
    if (shared) {
        a->session = shared;
    } else {
        struct ar_session_settings ss = {.ttl_s = ttl_s > 0 ? ttl_s : 10};

        rc = ar_session_new(c, &ss, &a->session);
        if (rc < 0)
            goto fail;
        a->own_session = true;
    }
    rc = ar_session_listen(a->session, on_session, a);
    if (rc < 0)
        goto fail;
    uv_timer_init(ar_etcd_loop(c), a->retry);
    a->retry->data = a;
    alive_put(a); /* at once when the session already holds a lease, else on GRANTED */
    *out = a;
    return 0;
fail:
    if (a->own_session)
        ar_session_free(a->session);
    free(a->retry);
    alive_unref(a);
    return rc;
}

int ar_member_alive_start(struct ar_etcd *c, const char *prefix, const char *node, int64_t ttl_s,
                          const char *report_json, ar_etcd_cb cb, void *arg,
                          struct ar_member_alive **out)
{
    return alive_new(c, NULL, prefix, node, ttl_s, report_json, cb, arg, out);
}

int ar_member_alive_start_on(struct ar_session *s, const char *prefix, const char *node,
                             const char *report_json, ar_etcd_cb cb, void *arg,
                             struct ar_member_alive **out)
{
    if (!s) {
        if (out)
            *out = NULL;
        return -EINVAL;
    }
    return alive_new(ar_session_client(s), s, prefix, node, 0, report_json, cb, arg, out);
}

int ar_member_alive_update(struct ar_member_alive *a, const char *report_json)
{
    char *r = strdup(report_json ? report_json : "{}");

    if (!r)
        return -ENOMEM;
    free(a->report);
    a->report = r;
    alive_put(a);
    return 0;
}

bool ar_member_alive_ok(const struct ar_member_alive *a)
{
    return a->ok;
}

static void on_stop_done(void *arg)
{
    struct ar_member_alive *a = arg;

    if (a->done)
        a->done(a->done_arg);
    alive_unref(a);
}

static void on_stop_delete(void *arg, int status, const struct ar_etcd_result *res,
                           const struct ar_etcd_error *err)
{
    on_stop_done(arg);
}

void ar_member_alive_stop(struct ar_member_alive *a, void (*done)(void *arg), void *arg)
{
    struct ar_etcd_op del = {.type = AR_ETCD_DELETE};

    if (!a)
        return;
    a->dead = true;
    a->ok = false;
    a->done = done;
    a->done_arg = arg;
    ar_session_unlisten(a->session, on_session, a);
    uv_close((uv_handle_t *)a->retry, close_free);
    a->retry = NULL;
    if (a->own_session) { /* revoking the lease deletes the key */
        ar_session_close(a->session, on_stop_done, a);
        return; /* the reference passes to on_stop_done */
    }
    del.key = (const uint8_t *)a->key;
    del.key_len = strlen(a->key);
    if (ar_session_lease(a->session) && ar_etcd_delete(a->c, &del, on_stop_delete, a) == 0)
        return; /* the reference passes to on_stop_delete */
    on_stop_done(a);
}

/* --- listing ------------------------------------------------------------------------------ */

struct lister {
    struct ar_etcd *c;
    char prefix[256];
    ar_member_list_cb cb;
    void *arg;
    struct ar_etcd_result *members;
};

static int cmp_info(const void *a, const void *b)
{
    return strcmp(((const struct ar_member_info *)a)->node,
                  ((const struct ar_member_info *)b)->node);
}

void ar_member_list_free(struct ar_member_list *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->m[i].node);
        free(l->m[i].registration);
        free(l->m[i].report);
    }
    free(l->m);
    free(l);
}

static struct ar_member_info *find_or_add(struct ar_member_list *l, const char *node)
{
    struct ar_member_info *m;

    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->m[i].node, node))
            return &l->m[i];
    m = realloc(l->m, (l->n + 1) * sizeof(*m));
    if (!m)
        return NULL;
    l->m = m;
    m = &l->m[l->n];
    memset(m, 0, sizeof(*m));
    m->node = strdup(node);
    if (!m->node)
        return NULL;
    l->n++;
    return m;
}

static int add_kvs(struct ar_member_list *l, const struct ar_etcd_result *r, size_t plen,
                   bool alive)
{
    for (size_t i = 0; i < r->n_kvs; i++) {
        const struct ar_etcd_kv *kv = &r->kvs[i];
        struct ar_member_info *m;
        char **slot;

        if (kv->key_len <= plen)
            continue;
        m = find_or_add(l, (const char *)kv->key + plen);
        if (!m)
            return -ENOMEM;
        slot = alive ? &m->report : &m->registration;
        free(*slot);
        *slot = strndup((const char *)kv->value, kv->value_len);
        if (!*slot)
            return -ENOMEM;
    }
    return 0;
}

static void on_alive_list(void *arg, int status, const struct ar_etcd_result *res,
                          const struct ar_etcd_error *err)
{
    struct lister *ls = arg;
    struct ar_member_list *l = NULL;
    struct ar_etcd_error e;
    int rc = status;

    if (status == 0) {
        l = calloc(1, sizeof(*l));
        rc = l ? 0 : -ENOMEM;
        if (!rc)
            rc = add_kvs(l, ls->members, strlen(ls->prefix) + strlen("members/"), false);
        if (!rc)
            rc = add_kvs(l, res, strlen(ls->prefix) + strlen("alive/"), true);
        if (!rc) {
            l->revision = res->revision;
            if (l->n)
                qsort(l->m, l->n, sizeof(l->m[0]), cmp_info);
        } else {
            ar_member_list_free(l);
            l = NULL;
            ar_etcd_set_error(&e, rc, "", "member list: %s", strerror(-rc));
            err = &e;
        }
    }
    ls->cb(ls->arg, rc, l, rc < 0 ? err : NULL);
    ar_etcd_result_free(ls->members);
    free(ls);
}

static int range_prefix(struct lister *ls, const char *kind, int64_t rev, ar_etcd_cb cb)
{
    char key[512];
    uint8_t end[512];
    struct ar_etcd_op op = {0};
    int n = snprintf(key, sizeof(key), "%s%s/", ls->prefix, kind);

    if (n < 0 || (size_t)n >= sizeof(key))
        return -ENAMETOOLONG;
    op.key = (const uint8_t *)key;
    op.key_len = (size_t)n;
    op.range_end = end;
    op.range_end_len = ar_etcd_prefix_end(op.key, op.key_len, end);
    op.revision = rev;
    return ar_etcd_range(ls->c, &op, cb, ls);
}

static void on_members_list(void *arg, int status, const struct ar_etcd_result *res,
                            const struct ar_etcd_error *err)
{
    struct lister *ls = arg;
    int rc;

    if (status < 0) {
        ls->cb(ls->arg, status, NULL, err);
        free(ls);
        return;
    }
    ls->members = ar_etcd_result_keep(res);
    rc = range_prefix(ls, "alive", res->revision, on_alive_list);
    if (rc < 0) {
        struct ar_etcd_error e;

        ar_etcd_set_error(&e, rc, "", "member list: %s", strerror(-rc));
        ls->cb(ls->arg, rc, NULL, &e);
        ar_etcd_result_free(ls->members);
        free(ls);
    }
}

int ar_member_list(struct ar_etcd *c, const char *prefix, ar_member_list_cb cb, void *arg)
{
    struct lister *ls = calloc(1, sizeof(*ls));
    int rc;

    if (!ls)
        return -ENOMEM;
    ls->c = c;
    ls->cb = cb;
    ls->arg = arg;
    snprintf(ls->prefix, sizeof(ls->prefix), "%s", prefix ? prefix : AR_DEFAULT_PREFIX);
    rc = range_prefix(ls, "members", 0, on_members_list);
    if (rc < 0)
        free(ls);
    return rc;
}
