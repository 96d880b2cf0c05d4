/* coord/cas.c: compare-and-swap of a JSON record (see cas.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord/cas.h"

struct cas {
    struct ar_etcd *c;
    char *key;
    ar_cas_change_fn change;
    ar_cas_done_fn done;
    void *arg;
    unsigned max_retries, retries;
};

static void cas_finish(struct cas *s, int status, int64_t rev, const struct ar_etcd_error *err)
{
    s->done(s->arg, status, rev, s->retries, err);
    free(s->key);
    free(s);
}

static void on_txn(void *arg, int status, const struct ar_etcd_result *res,
                   const struct ar_etcd_error *err);

/* Apply change() to the current kv (NULL: absent) read at revision rev, and write. */
static void cas_step(struct cas *s, const struct ar_etcd_kv *kv, int64_t rev)
{
    struct ar_etcd_error e;
    json_t *cur = NULL, *next = NULL;
    json_error_t jerr;
    char *text = NULL;
    int rc;

    if (kv) {
        cur = json_loadb((const char *)kv->value, kv->value_len, JSON_REJECT_DUPLICATES, &jerr);
        if (!cur) {
            ar_etcd_set_error(&e, -EBADMSG, "", "cas %s: stored record is not JSON: %s", s->key,
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
            ar_etcd_set_error(&e, rc, "", "cas %s: change refused (%s)", s->key, strerror(-rc));
            cas_finish(s, rc, rev, &e);
        }
        return;
    }
    text = json_dumps(next, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(next);
    if (!text) {
        ar_etcd_set_error(&e, -ENOMEM, "", "cas %s: no memory", s->key);
        cas_finish(s, -ENOMEM, rev, &e);
        return;
    }
    {
        const uint8_t *k = (const uint8_t *)s->key;
        size_t kl = strlen(s->key);
        struct ar_etcd_compare cmp = {.key = k, .key_len = kl, .result = AR_ETCD_EQUAL};
        struct ar_etcd_op put = {.type = AR_ETCD_PUT,
                                 .key = k,
                                 .key_len = kl,
                                 .value = (const uint8_t *)text,
                                 .value_len = strlen(text)};
        struct ar_etcd_op get = {.type = AR_ETCD_RANGE, .key = k, .key_len = kl};
        struct ar_etcd_txn t = {.compare = &cmp,
                                .n_compare = 1,
                                .success = &put,
                                .n_success = 1,
                                .failure = &get,
                                .n_failure = 1};

        if (kv) {
            cmp.target = AR_ETCD_CMP_MOD;
            cmp.number = kv->mod_revision;
        } else {
            cmp.target = AR_ETCD_CMP_CREATE;
            cmp.number = 0;
        }
        rc = ar_etcd_txn(s->c, &t, on_txn, s);
    }
    free(text);
    if (rc < 0) {
        ar_etcd_set_error(&e, rc, "", "cas %s: txn not sent (%s)", s->key, strerror(-rc));
        cas_finish(s, rc, rev, &e);
    }
}

static void on_txn(void *arg, int status, const struct ar_etcd_result *res,
                   const struct ar_etcd_error *err)
{
    struct cas *s = arg;
    struct ar_etcd_error e;
    const struct ar_etcd_kv *kv = NULL;

    if (status < 0) {
        cas_finish(s, status, 0, err);
        return;
    }
    if (res->succeeded) {
        cas_finish(s, 0, res->revision, NULL);
        return;
    }
    if (++s->retries > s->max_retries) {
        s->retries--;
        ar_etcd_set_error(&e, -EAGAIN, "", "cas %s: still conflicting after %u retries", s->key,
                          s->max_retries);
        cas_finish(s, -EAGAIN, res->revision, &e);
        return;
    }
    if (res->n_ops == 1 && res->ops[0].n_kvs == 1)
        kv = &res->ops[0].kvs[0];
    cas_step(s, kv, res->revision);
}

static void on_read(void *arg, int status, const struct ar_etcd_result *res,
                    const struct ar_etcd_error *err)
{
    struct cas *s = arg;

    if (status < 0) {
        cas_finish(s, status, 0, err);
        return;
    }
    cas_step(s, res->n_kvs ? &res->kvs[0] : NULL, res->revision);
}

int ar_cas_json(struct ar_etcd *c, const char *key, ar_cas_change_fn change, ar_cas_done_fn done,
                void *arg, unsigned max_retries)
{
    struct cas *s;
    struct ar_etcd_op op = {0};
    int rc;

    if (!c || !key || !*key || !change || !done)
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
    if (!s->key) {
        free(s);
        return -ENOMEM;
    }
    op.key = (const uint8_t *)s->key;
    op.key_len = strlen(s->key);
    rc = ar_etcd_range(c, &op, on_read, s);
    if (rc < 0) {
        free(s->key);
        free(s);
    }
    return rc;
}
