/*
 * agent/reencrypt_svm.c: the re-encrypt pass by StorageVersionMigration objects (contract in
 * agent/reencrypt_svm.h). One request at a time on the agent's loop.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "agent/apiclient.h"
#include "agent/reencrypt_svm.h"

#define SVM_GROUP "storagemigration.k8s.io"

enum step {
    S_GROUP,    /* GET /apis/storagemigration.k8s.io */
    S_DISCOVER, /* GET /apis/<group> of the resource */
    S_COUNT,    /* LIST limit=1 */
    S_CREATE,   /* POST the migration */
    S_POLL,     /* GET it */
    S_DELETE,   /* DELETE a failed one */
};

struct sel {
    char resource[256], group[256];
    char gv[300];     /* "v1" or "<group>/<version>" (after discovery) */
    char version[64]; /* the resource's version */
    char name[320];   /* the migration's name */
    uint64_t count;
};

struct ar_resvm {
    struct ar_api *api;
    uv_timer_t timer;
    ar_reencrypt_progress_cb progress;
    ar_reencrypt_done_cb done;
    void *arg;
    unsigned poll_ms, timeout_ms;
    char svm_version[64];
    struct sel *sels;
    size_t nsels, si;
    enum step step;
    unsigned fails; /* of the current resource's migration */
    struct ar_api_req *req;
    uint64_t t0_ms;
    struct ar_reencrypt_progress prog;
    bool stopped, finished;
};

static void next(struct ar_resvm *p);

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void on_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_free(uv_timer_t *t)
{
    struct ar_resvm *p = t->data;

    ar_api_free(p->api);
    free(p->sels);
    uv_close((uv_handle_t *)&p->timer, on_closed);
}

static void release(struct ar_resvm *p)
{
    uv_timer_start(&p->timer, on_free, 0, 0);
}

static void report(struct ar_resvm *p)
{
    struct ar_reencrypt_progress *g = &p->prog;
    double el = (double)(now_ms() - p->t0_ms) / 1000.0;

    ar_reencrypt_progress_rate(g, g->done, el);
    g->selector = p->si;
    if (p->progress && !p->stopped)
        p->progress(p->arg, g);
}

static void finish(struct ar_resvm *p, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void finish(struct ar_resvm *p, int status, const char *fmt, ...)
{
    struct ar_err e;
    char msg[256] = "";
    va_list ap;

    if (p->finished || p->stopped)
        return;
    p->finished = true;
    if (fmt) {
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
    }
    ar_err_clear(&e);
    if (status < 0)
        ar_err_set(&e, status, ar_api_url(p->api), "%s", msg);
    report(p);
    p->done(p->arg, status, &p->prog, status < 0 ? &e : NULL);
    release(p);
}

static const char *status_msg(const char *body, size_t len, char *buf, size_t n)
{
    json_t *o = body ? json_loadb(body, len, 0, NULL) : NULL;
    const char *m = json_string_value(json_object_get(o, "message"));

    snprintf(buf, n, "%s", m ? m : "no Status message");
    json_decref(o);
    return buf;
}

/* The True condition among Succeeded / Failed ("" none yet); msg: its message. */
static const char *condition(json_t *o, char *msg, size_t n)
{
    json_t *conds = json_object_get(json_object_get(o, "status"), "conditions"), *c;
    size_t i;

    msg[0] = '\0';
    json_array_foreach(conds, i, c)
    {
        const char *t = json_string_value(json_object_get(c, "type"));
        const char *st = json_string_value(json_object_get(c, "status"));
        const char *m = json_string_value(json_object_get(c, "message"));

        if (!t || !st || strcmp(st, "True"))
            continue;
        if (!strcmp(t, "Succeeded") || !strcmp(t, "Failed")) {
            snprintf(msg, n, "%s", m ? m : "");
            return t;
        }
    }
    return "";
}

static void on_timer(uv_timer_t *t)
{
    next(t->data);
}

static void on_answer(void *arg, int status, long http, const char *body, size_t len,
                      const char *err)
{
    struct ar_resvm *p = arg;
    struct sel *s = &p->sels[p->si < p->nsels ? p->si : 0];
    json_t *o = NULL;
    char msg[256];

    p->req = NULL;
    if (status < 0) {
        finish(p, status, "storage version migration: %s", err ? err : strerror(-status));
        return;
    }
    if (http == 200 || http == 201)
        o = json_loadb(body, len, 0, NULL);
    switch (p->step) {
    case S_GROUP: {
        const char *v =
            json_string_value(json_object_get(json_object_get(o, "preferredVersion"), "version"));
        if (http == 404) {
            finish(p, -EOPNOTSUPP,
                   "the API server does not serve %s (StorageVersionMigration): use reencrypt "
                   "mode api or etcd",
                   SVM_GROUP);
            break;
        }
        if (!v || (strcmp(v, "v1beta1") && strcmp(v, "v1alpha1"))) {
            finish(p, -EPROTO, "GET /apis/%s: HTTP %ld, no known preferredVersion", SVM_GROUP,
                   http);
            break;
        }
        snprintf(p->svm_version, sizeof(p->svm_version), "%s", v);
        p->step = s->gv[0] ? S_COUNT : S_DISCOVER;
        next(p);
        break;
    }
    case S_DISCOVER: {
        json_t *pv = json_object_get(o, "preferredVersion");
        const char *gv = json_string_value(json_object_get(pv, "groupVersion"));
        const char *v = json_string_value(json_object_get(pv, "version"));
        if (!gv || !v || strlen(gv) >= sizeof(s->gv) || strlen(v) >= sizeof(s->version)) {
            finish(p, -ENOENT, "GET /apis/%s: HTTP %ld, no preferredVersion", s->group, http);
            break;
        }
        snprintf(s->gv, sizeof(s->gv), "%s", gv);
        snprintf(s->version, sizeof(s->version), "%s", v);
        p->step = S_COUNT;
        next(p);
        break;
    }
    case S_COUNT: {
        json_t *rem = json_object_get(json_object_get(o, "metadata"), "remainingItemCount");
        if (http != 200 || !json_is_array(json_object_get(o, "items"))) {
            finish(p, -EIO, "listing %s: HTTP %ld: %s", s->resource, http,
                   status_msg(body, len, msg, sizeof(msg)));
            break;
        }
        s->count =
            json_array_size(json_object_get(o, "items")) +
            (json_is_integer(rem) && json_integer_value(rem) > 0 ? (uint64_t)json_integer_value(rem)
                                                                 : 0);
        p->prog.total += s->count;
        p->step = S_CREATE;
        next(p);
        break;
    }
    case S_CREATE:
        if (http != 201 && http != 409) {
            finish(p, -EIO, "creating StorageVersionMigration %s: HTTP %ld: %s", s->name, http,
                   status_msg(body, len, msg, sizeof(msg)));
            break;
        }
        p->step = S_POLL;
        uv_timer_start(&p->timer, on_timer, p->poll_ms / 4 + 1, 0);
        break;
    case S_POLL: {
        const char *c;
        if (http == 404) { /* gone: someone deleted it */
            p->step = S_CREATE;
            next(p);
            break;
        }
        if (http != 200) {
            finish(p, -EIO, "reading StorageVersionMigration %s: HTTP %ld: %s", s->name, http,
                   status_msg(body, len, msg, sizeof(msg)));
            break;
        }
        c = condition(o, msg, sizeof(msg));
        if (!strcmp(c, "Succeeded")) {
            p->prog.done += s->count;
            p->prog.rewritten += s->count;
            p->si++;
            p->fails = 0;
            report(p);
            if (p->si == p->nsels) {
                finish(p, 0, NULL);
                break;
            }
            p->step = p->sels[p->si].gv[0] ? S_COUNT : S_DISCOVER;
            next(p);
        } else if (!strcmp(c, "Failed")) {
            p->prog.failed++;
            if (!p->prog.first_failed[0])
                snprintf(p->prog.first_failed, sizeof(p->prog.first_failed),
                         "StorageVersionMigration %.300s failed: %.250s", s->name, msg);
            if (++p->fails > AR_RESVM_MAX_FAILS) {
                finish(p, -EIO, "StorageVersionMigration %s failed %u times; last: %s", s->name,
                       p->fails, msg);
                break;
            }
            p->step = S_DELETE;
            next(p);
        } else {
            report(p);
            uv_timer_start(&p->timer, on_timer, p->poll_ms, 0);
        }
        break;
    }
    case S_DELETE:
        if (http != 200 && http != 404) {
            finish(p, -EIO, "deleting StorageVersionMigration %s: HTTP %ld: %s", s->name, http,
                   status_msg(body, len, msg, sizeof(msg)));
            break;
        }
        p->step = S_CREATE;
        next(p);
        break;
    }
    json_decref(o);
}

/* Start the request of the current step. */
static void next(struct ar_resvm *p)
{
    struct sel *s = &p->sels[p->si];
    char path[1200], *js = NULL;
    const char *method = "GET";
    json_t *body = NULL;
    int r;

    if (p->stopped || p->finished)
        return;
    switch (p->step) {
    case S_GROUP:
        snprintf(path, sizeof(path), "/apis/%s", SVM_GROUP);
        break;
    case S_DISCOVER:
        snprintf(path, sizeof(path), "/apis/%s", s->group);
        break;
    case S_COUNT:
        snprintf(path, sizeof(path), "%s%s/%s?limit=1", s->group[0] ? "/apis/" : "/api/", s->gv,
                 s->resource);
        break;
    case S_CREATE:
        method = "POST";
        snprintf(path, sizeof(path), "/apis/%s/%s/storageversionmigrations", SVM_GROUP,
                 p->svm_version);
        body = json_pack("{s:s, s:s, s:{s:s}, s:{s:{s:s, s:s}}}", "apiVersion",
                         !strcmp(p->svm_version, "v1alpha1") ? SVM_GROUP "/v1alpha1"
                                                             : SVM_GROUP "/v1beta1",
                         "kind", "StorageVersionMigration", "metadata", "name", s->name, "spec",
                         "resource", "group", s->group, "resource", s->resource);
        if (body && !strcmp(p->svm_version, "v1alpha1"))
            json_object_set_new(json_object_get(json_object_get(body, "spec"), "resource"),
                                "version", json_string(s->version));
        js = body ? json_dumps(body, JSON_COMPACT) : NULL;
        json_decref(body);
        if (!js) {
            finish(p, -ENOMEM, "out of memory");
            return;
        }
        break;
    case S_POLL:
    case S_DELETE:
        method = p->step == S_DELETE ? "DELETE" : "GET";
        snprintf(path, sizeof(path), "/apis/%s/%s/storageversionmigrations/%s", SVM_GROUP,
                 p->svm_version, s->name);
        break;
    }
    r = ar_api_request(p->api, method, path, js, js ? strlen(js) : 0, p->timeout_ms, on_answer, p,
                       &p->req);
    free(js);
    if (r < 0)
        finish(p, r, "%s %s: %s", method, path, strerror(-r));
}

static int parse_selectors(struct ar_resvm *p, const struct ar_node_reenc_req *req, char *err,
                           size_t errlen)
{
    char id[128];
    size_t k = 0;

    for (const char *c = req->rotation_id; *c && k + 1 < sizeof(id); c++)
        if (isalnum((unsigned char)*c) || *c == '-')
            id[k++] = (char)tolower((unsigned char)*c);
    id[k] = '\0';
    p->sels = calloc(req->nselectors, sizeof(*p->sels));
    if (!p->sels)
        return -ENOMEM;
    for (size_t i = 0; i < req->nselectors; i++) {
        const char *sel = req->selectors[i], *dot = strchr(sel, '.');
        struct sel *s = &p->sels[i];
        size_t rl = dot ? (size_t)(dot - sel) : strlen(sel);

        if (sel[0] == '*') {
            snprintf(err, errlen,
                     "reencrypt mode svm cannot migrate the wildcard selector %s: use mode etcd",
                     sel);
            return -EOPNOTSUPP;
        }
        if (!rl || rl >= sizeof(s->resource) || (dot && strlen(dot + 1) >= sizeof(s->group)) ||
            strlen(sel) > 200 ||
            strspn(sel, "abcdefghijklmnopqrstuvwxyz0123456789-.") != strlen(sel)) {
            snprintf(err, errlen, "reencrypt mode svm: bad selector %s", sel);
            return -EINVAL;
        }
        memcpy(s->resource, sel, rl);
        snprintf(s->group, sizeof(s->group), "%s", dot ? dot + 1 : "");
        if (!dot) {
            snprintf(s->gv, sizeof(s->gv), "v1");
            snprintf(s->version, sizeof(s->version), "v1");
        }
        snprintf(s->name, sizeof(s->name), "atrest-%.100s-%s", id[0] ? id : "pass", sel);
    }
    p->nsels = req->nselectors;
    return 0;
}

int ar_resvm_start(uv_loop_t *loop, const struct ar_settings *s,
                   const struct ar_node_reenc_req *req, unsigned poll_ms, unsigned timeout_ms,
                   ar_reencrypt_progress_cb progress, ar_reencrypt_done_cb done, void *arg,
                   struct ar_resvm **out, char *err, size_t errlen)
{
    struct ar_resvm *p;
    int r;

    if (!err || !errlen)
        return -EINVAL;
    err[0] = '\0';
    if (!loop || !s || !req || !req->rotation_id || !req->nselectors || !req->selectors || !done ||
        !out)
        return -EINVAL;
    p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->progress = progress;
    p->done = done;
    p->arg = arg;
    p->poll_ms = poll_ms ? poll_ms : 1000;
    p->timeout_ms = timeout_ms ? timeout_ms : 30000;
    p->prog.eta_s = -1;
    r = parse_selectors(p, req, err, errlen);
    if (r == 0)
        r = ar_api_new(loop, s, &p->api, err, errlen);
    if (r == 0)
        r = uv_timer_init(loop, &p->timer);
    if (r < 0) {
        ar_api_free(p->api);
        free(p->sels);
        free(p);
        return r;
    }
    p->timer.data = p;
    p->t0_ms = now_ms();
    p->step = S_GROUP;
    uv_timer_start(&p->timer, on_timer, 0, 0); /* done never inside start */
    *out = p;
    return 0;
}

void ar_resvm_stop(struct ar_resvm *p)
{
    if (!p || p->stopped || p->finished)
        return;
    p->stopped = true;
    uv_timer_stop(&p->timer);
    release(p);
}
