/* coord/cas.c: compare-and-swap of a JSON record (see cas.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord/cas.h"
#include "coord/err.h"

struct cas {
    struct ar_etcd *c;
    char *key;
    struct ar_etcd_compare guard[AR_CAS_MAX_GUARD]; /* keys and values owned */
    size_t n_guard;
    ar_cas_change_fn change;
    ar_cas_done_fn done;
    void *arg;
    unsigned max_retries, retries;
};

static void cas_free(struct cas *s)
{
    for (size_t i = 0; i < s->n_guard; i++) {
        free((void *)s->guard[i].key);
        free((void *)s->guard[i].value);
    }
    free(s->key);
    free(s);
}

static void cas_finish(struct cas *s, int status, int64_t rev, const struct ar_err *err)
{
    s->done(s->arg, status, rev, s->retries, err);
    cas_free(s);
}

bool ar_cas_compare_holds(const struct ar_etcd_compare *g, const struct ar_etcd_kv *kv)
{
    int c;

    if (g->target == AR_ETCD_CMP_VALUE) {
        size_t n;

        if (!kv)
            return false;
        n = kv->value_len < g->value_len ? kv->value_len : g->value_len;
        c = n ? memcmp(kv->value, g->value, n) : 0;
        if (!c)
            c = (kv->value_len > g->value_len) - (kv->value_len < g->value_len);
    } else {
        int64_t have = 0;

        if (kv)
            have = g->target == AR_ETCD_CMP_VERSION  ? kv->version
                   : g->target == AR_ETCD_CMP_CREATE ? kv->create_revision
                                                     : kv->mod_revision;
        c = (have > g->number) - (have < g->number);
    }
    switch (g->result) {
    case AR_ETCD_EQUAL:
        return c == 0;
    case AR_ETCD_GREATER:
        return c > 0;
    case AR_ETCD_LESS:
        return c < 0;
    case AR_ETCD_NOT_EQUAL:
        return c != 0;
    }
    return false;
}

static void on_txn(void *arg, int status, const struct ar_etcd_result *res,
                   const struct ar_etcd_error *err);

/* Apply change() to the current kv (NULL: absent) read at revision rev, and write. */
static void cas_step(struct cas *s, const struct ar_etcd_kv *kv, int64_t rev)
{
    struct ar_err e;
    json_t *cur = NULL, *next = NULL;
    json_error_t jerr;
    char *text = NULL;
    int rc;

    if (kv) {
        cur = json_loadb((const char *)kv->value, kv->value_len, JSON_REJECT_DUPLICATES, &jerr);
        if (!cur) {
            ar_err_set(&e, -EBADMSG, s->key, "cas %s: stored record is not JSON: %s", s->key,
                       jerr.text);
            cas_finish(s, -EBADMSG, rev, &e);
            return;
        }
    }
    rc = s->change(s->arg, cur, &next);
    json_decref(cur);
    if (rc != 0 || !next) {
        json_decref(next);
        if (rc > 0 || (rc == 0 && !next)) {
            cas_finish(s, 0, rev, NULL);
        } else {
            ar_err_set(&e, rc, s->key, "cas %s: change refused (%s)", s->key, strerror(-rc));
            cas_finish(s, rc, rev, &e);
        }
        return;
    }
    text = json_dumps(next, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(next);
    if (!text) {
        ar_err_set(&e, -ENOMEM, s->key, "cas %s: no memory", s->key);
        cas_finish(s, -ENOMEM, rev, &e);
        return;
    }
    {
        const uint8_t *k = (const uint8_t *)s->key;
        size_t kl = strlen(s->key);
        /* compares: the record, then the guard; failure: read the record, then each guard key */
        struct ar_etcd_compare cmp[1 + AR_CAS_MAX_GUARD];
        struct ar_etcd_op get[1 + AR_CAS_MAX_GUARD];
        struct ar_etcd_op put = {.type = AR_ETCD_PUT,
                                 .key = k,
                                 .key_len = kl,
                                 .value = (const uint8_t *)text,
                                 .value_len = strlen(text)};
        struct ar_etcd_txn t = {.compare = cmp,
                                .n_compare = 1 + s->n_guard,
                                .success = &put,
                                .n_success = 1,
                                .failure = get,
                                .n_failure = 1 + s->n_guard};

        memset(cmp, 0, sizeof(cmp));
        memset(get, 0, sizeof(get));
        cmp[0] = (struct ar_etcd_compare){.key = k, .key_len = kl, .result = AR_ETCD_EQUAL};
        if (kv) {
            cmp[0].target = AR_ETCD_CMP_MOD;
            cmp[0].number = kv->mod_revision;
        } else {
            cmp[0].target = AR_ETCD_CMP_CREATE;
            cmp[0].number = 0;
        }
        get[0] = (struct ar_etcd_op){.type = AR_ETCD_RANGE, .key = k, .key_len = kl};
        for (size_t i = 0; i < s->n_guard; i++) {
            cmp[1 + i] = s->guard[i];
            get[1 + i] = (struct ar_etcd_op){
                .type = AR_ETCD_RANGE, .key = s->guard[i].key, .key_len = s->guard[i].key_len};
        }
        rc = ar_etcd_txn(s->c, &t, on_txn, s);
    }
    free(text);
    if (rc < 0) {
        ar_err_set(&e, rc, s->key, "cas %s: txn not sent (%s)", s->key, strerror(-rc));
        cas_finish(s, rc, rev, &e);
    }
}

static void on_txn(void *arg, int status, const struct ar_etcd_result *res,
                   const struct ar_etcd_error *err)
{
    struct cas *s = arg;
    struct ar_err e;
    const struct ar_etcd_kv *kv = NULL;

    if (status < 0) {
        ar_err_from_etcd(&e, "cas", status, err);
        cas_finish(s, status, 0, &e);
        return;
    }
    if (res->succeeded) {
        cas_finish(s, 0, res->revision, NULL);
        return;
    }
    if (res->n_ops != 1 + s->n_guard) {
        ar_err_set(&e, -EPROTO, s->key, "cas %s: failed txn returned %zu reads, not %zu", s->key,
                   res->n_ops, 1 + s->n_guard);
        cas_finish(s, -EPROTO, res->revision, &e);
        return;
    }
    for (size_t i = 0; i < s->n_guard; i++) {
        const struct ar_etcd_result *g = &res->ops[1 + i];

        if (!ar_cas_compare_holds(&s->guard[i], g->n_kvs ? &g->kvs[0] : NULL)) {
            ar_err_set(&e, -EPERM, s->key, "cas %s: guard %zu (%.*s) failed at revision %" PRId64,
                       s->key, i, (int)s->guard[i].key_len, (const char *)s->guard[i].key,
                       res->revision);
            cas_finish(s, -EPERM, res->revision, &e);
            return;
        }
    }
    if (++s->retries > s->max_retries) {
        s->retries--;
        ar_err_set(&e, -EAGAIN, s->key, "cas %s: still conflicting after %u retries", s->key,
                   s->max_retries);
        cas_finish(s, -EAGAIN, res->revision, &e);
        return;
    }
    if (res->ops[0].n_kvs == 1)
        kv = &res->ops[0].kvs[0];
    cas_step(s, kv, res->revision);
}

static void on_read(void *arg, int status, const struct ar_etcd_result *res,
                    const struct ar_etcd_error *err)
{
    struct cas *s = arg;
    struct ar_err e;

    if (status < 0) {
        ar_err_from_etcd(&e, "cas", status, err);
        cas_finish(s, status, 0, &e);
        return;
    }
    cas_step(s, res->n_kvs ? &res->kvs[0] : NULL, res->revision);
}

static void *dup_bytes(const uint8_t *p, size_t n, bool *bad)
{
    uint8_t *d;

    if (!p)
        return NULL;
    d = malloc(n ? n : 1);
    if (!d)
        *bad = true;
    else if (n)
        memcpy(d, p, n);
    return d;
}

int ar_cas_json_guarded(struct ar_etcd *c, const char *key, const struct ar_etcd_compare *guard,
                        size_t n_guard, ar_cas_change_fn change, ar_cas_done_fn done, void *arg,
                        unsigned max_retries)
{
    struct cas *s;
    struct ar_etcd_op op = {0};
    bool bad = false;
    int rc;

    if (!c || !key || !*key || !change || !done || n_guard > AR_CAS_MAX_GUARD ||
        (n_guard && !guard))
        return -EINVAL;
    for (size_t i = 0; i < n_guard; i++)
        if (!guard[i].key || !guard[i].key_len ||
            (guard[i].target == AR_ETCD_CMP_VALUE && !guard[i].value && guard[i].value_len))
            return -EINVAL;
    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->c = c;
    s->key = strdup(key);
    s->change = change;
    s->done = done;
    s->arg = arg;
    s->max_retries = max_retries;
    for (size_t i = 0; i < n_guard; i++) {
        s->guard[i] = guard[i];
        s->guard[i].key = dup_bytes(guard[i].key, guard[i].key_len, &bad);
        s->guard[i].value = dup_bytes(guard[i].value, guard[i].value_len, &bad);
        s->n_guard++;
    }
    if (!s->key || bad) {
        rc = -ENOMEM;
        goto fail;
    }
    op.key = (const uint8_t *)s->key;
    op.key_len = strlen(s->key);
    rc = ar_etcd_range(c, &op, on_read, s);
    if (rc < 0)
        goto fail;
    return 0;
fail:
    cas_free(s);
    return rc;
}

int ar_cas_json(struct ar_etcd *c, const char *key, ar_cas_change_fn change, ar_cas_done_fn done,
                void *arg, unsigned max_retries)
{
    return ar_cas_json_guarded(c, key, NULL, 0, change, done, arg, max_retries);
}
