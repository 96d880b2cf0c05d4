/*
 * agent/reencrypt_api.c: the re-encrypt pass through the local API server (contract in
 * agent/reencrypt_api.h). One state machine on the agent's loop: count, then per resource
 * discover (groups only), list pages and send the no-op updates, a few at a time.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#include "agent/apiclient.h"
#include "agent/reencrypt_api.h"

#define PATH_MAX_LEN 1024

enum step {
    S_DISCOVER, /* GET /apis/<group> for the selector's version */
    S_COUNT,    /* LIST limit=1 for the total */
    S_LIST,     /* the pass */
};

struct sel {
    char resource[256];
    char group[256];
    char base[512]; /* "/api/v1" or "/apis/<group>/<version>" ("" until discovered) */
};

struct put {
    struct ar_reapi *p;
    struct ar_api_req *req;
    json_t *obj; /* the object as listed (its own reference) */
    char rv[64];
    unsigned tries;
    struct put *next; /* retry queue */
};

struct ar_reapi {
    uv_loop_t *loop;
    struct ar_api *api;
    uv_timer_t timer; /* waits (rate limit, Retry-After) and the deferred free */
    bool timer_on, waiting;
    ar_reencrypt_progress_cb progress;
    ar_reencrypt_done_cb done;
    void *arg;
    unsigned page_size, max_inflight, timeout_ms;
    double rate_limit;

    struct sel *sels;
    size_t nsels, si; /* the selector being handled (count, then pass) */
    enum step step;

    struct ar_api_req *list_req;
    json_t *page;        /* items of the current page */
    size_t next_item;    /* first item not yet sent */
    char *cont;          /* continue token of the next page ("" none yet, NULL: no more) */
    bool listed_any;     /* the current selector's first page was asked for */
    struct put *retry_q; /* updates to send again first */
    struct put *retry_tail;
    unsigned inflight;
    uint64_t started; /* updates started (for the rate limit) */
    uint64_t t0_ms, resume_ms;

    struct ar_reencrypt_progress prog;
    int fail_status; /* != 0: the pass ends once nothing is in flight */
    struct ar_err err;
    bool stopped, finished;
};

static void pump(struct ar_reapi *p);

static uint64_t now_ms(const struct ar_reapi *p)
{
    (void)p;
    return uv_hrtime() / 1000000u;
}

static void on_closed(uv_handle_t *h)
{
    struct ar_reapi *p = h->data;
    free(p);
}

static void on_free(uv_timer_t *t)
{
    struct ar_reapi *p = t->data;

    ar_api_free(p->api); /* cancels what is still pending: no callback after this */
    p->api = NULL;
    json_decref(p->page);
    while (p->retry_q) {
        struct put *q = p->retry_q;
        p->retry_q = q->next;
        json_decref(q->obj);
        free(q);
    }
    free(p->cont);
    free(p->sels);
    uv_close((uv_handle_t *)&p->timer, on_closed);
}

/* Free from a later loop turn (never inside the API client's callback). */
static void release(struct ar_reapi *p)
{
    uv_timer_start(&p->timer, on_free, 0, 0);
}

static void report(struct ar_reapi *p)
{
    struct ar_reencrypt_progress *g = &p->prog;
    double el = (double)(now_ms(p) - p->t0_ms) / 1000.0;

    g->done = g->rewritten + g->skipped + g->conflicts + g->failed;
    ar_reencrypt_progress_rate(g, g->done, el);
    g->selector = p->si;
    if (p->progress && !p->stopped)
        p->progress(p->arg, g);
}

static void fail(struct ar_reapi *p, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(struct ar_reapi *p, int status, const char *fmt, ...)
{
    char msg[256];
    va_list ap;

    if (p->fail_status)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    p->fail_status = status < 0 ? status : -EIO;
    ar_err_set(&p->err, p->fail_status, ar_api_url(p->api), "%s", msg);
}

/* Done once nothing is in flight (after a failure or at the end). */
static void maybe_finish(struct ar_reapi *p)
{
    int status;

    if (p->finished || p->stopped || p->inflight || p->list_req)
        return;
    if (!p->fail_status && (p->si < p->nsels || p->retry_q))
        return;
    p->finished = true;
    status = p->fail_status;
    if (status == 0)
        p->si = p->nsels;
    report(p);
    p->done(p->arg, status, &p->prog, status ? &p->err : NULL);
    release(p);
}

/* A Status body's message and details.retryAfterSeconds. */
static void status_of(const char *body, size_t len, char *msg, size_t msglen, unsigned *retry_s)
{
    json_t *o = body ? json_loadb(body, len, 0, NULL) : NULL;
    json_t *ra = json_object_get(json_object_get(o, "details"), "retryAfterSeconds");
    const char *m = json_string_value(json_object_get(o, "message"));

    snprintf(msg, msglen, "%s", m ? m : "no Status message");
    if (retry_s)
        *retry_s =
            json_is_integer(ra) && json_integer_value(ra) > 0 && json_integer_value(ra) <= 600
                ? (unsigned)json_integer_value(ra)
                : 1;
    json_decref(o);
}

static void on_timer(uv_timer_t *t)
{
    struct ar_reapi *p = t->data;

    p->waiting = false;
    pump(p);
}

static void wait_until(struct ar_reapi *p, uint64_t at_ms)
{
    uint64_t now = now_ms(p);

    if (p->waiting)
        return;
    p->waiting = true;
    uv_timer_start(&p->timer, on_timer, at_ms > now ? at_ms - now : 0, 0);
}

static void back_off(struct ar_reapi *p, unsigned seconds)
{
    uint64_t at = now_ms(p) + (uint64_t)seconds * 1000u;
    if (at > p->resume_ms)
        p->resume_ms = at;
}

/* ---- updates ---------------------------------------------------------------------------- */

static void queue_retry(struct ar_reapi *p, struct put *q)
{
    q->next = NULL;
    if (p->retry_tail)
        p->retry_tail->next = q;
    else
        p->retry_q = q;
    p->retry_tail = q;
}

static void put_free(struct put *q)
{
    json_decref(q->obj);
    free(q);
}

static void count_failed(struct ar_reapi *p, const struct put *q, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void count_failed(struct ar_reapi *p, const struct put *q, const char *fmt, ...)
{
    json_t *md = json_object_get(q->obj, "metadata");
    const char *ns = json_string_value(json_object_get(md, "namespace"));
    const char *name = json_string_value(json_object_get(md, "name"));
    char why[400];
    va_list ap;

    p->prog.failed++;
    if (p->prog.first_failed[0])
        return;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    snprintf(p->prog.first_failed, sizeof(p->prog.first_failed), "%.60s %.63s%s%.253s: %.200s",
             p->sels[p->si < p->nsels ? p->si : p->nsels - 1].resource, ns ? ns : "", ns ? "/" : "",
             name ? name : "?", why);
}

static void on_put(void *arg, int status, long http, const char *body, size_t len, const char *err)
{
    struct put *q = arg;
    struct ar_reapi *p = q->p;
    char msg[256];
    unsigned retry_s = 1;

    q->req = NULL;
    p->inflight--;
    if (status < 0) {
        fail(p, status, "PUT: %s", err ? err : strerror(-status));
        put_free(q);
    } else if (http == 200) {
        json_t *o = json_loadb(body, len, 0, NULL);
        const char *rv =
            json_string_value(json_object_get(json_object_get(o, "metadata"), "resourceVersion"));
        if (rv && !strcmp(rv, q->rv))
            p->prog.skipped++; /* already under the write key: not written */
        else
            p->prog.rewritten++;
        json_decref(o);
        put_free(q);
    } else if (http == 409) {
        p->prog.conflicts++;
        put_free(q);
    } else if (http == 404) {
        p->prog.skipped++; /* gone */
        put_free(q);
    } else if ((http == 429 || http == 503) && q->tries < AR_REAPI_MAX_RETRIES) {
        status_of(body, len, msg, sizeof(msg), &retry_s);
        back_off(p, retry_s);
        queue_retry(p, q);
    } else {
        status_of(body, len, msg, sizeof(msg), NULL);
        count_failed(p, q, "HTTP %ld: %s", http, msg);
        put_free(q);
    }
    pump(p);
}

/* ns/name usable in a path as they are (Kubernetes names: DNS subdomains, path segments). */
static bool name_ok(const char *s)
{
    if (!s || !*s || strlen(s) > 253 || !strcmp(s, ".") || !strcmp(s, ".."))
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '.' || *s == '_' || *s == ':'))
            return false;
    return true;
}

static int send_put(struct ar_reapi *p, struct put *q)
{
    const struct sel *s = &p->sels[p->si];
    json_t *md = json_object_get(q->obj, "metadata");
    const char *ns = json_string_value(json_object_get(md, "namespace"));
    const char *name = json_string_value(json_object_get(md, "name"));
    char path[PATH_MAX_LEN], *js;
    int r;

    if (!name_ok(name) || (ns && !name_ok(ns))) {
        count_failed(p, q, "listed without a usable metadata.name/namespace");
        put_free(q);
        return 0;
    }
    if (ns)
        snprintf(path, sizeof(path), "%s/namespaces/%s/%s/%s", s->base, ns, s->resource, name);
    else
        snprintf(path, sizeof(path), "%s/%s/%s", s->base, s->resource, name);
    js = json_dumps(q->obj, JSON_COMPACT);
    if (!js) {
        put_free(q);
        return -ENOMEM;
    }
    q->tries++;
    r = ar_api_request(p->api, "PUT", path, js, strlen(js), p->timeout_ms, on_put, q, &q->req);
    free(js);
    if (r < 0) {
        put_free(q);
        return r;
    }
    p->inflight++;
    p->started++;
    return 0;
}

/* The next object to update: a retry first, else the page's next item (NULL: none). */
static struct put *next_put(struct ar_reapi *p, int *rc)
{
    struct put *q;
    json_t *it, *md;
    const char *rv;

    *rc = 0;
    if (p->retry_q) {
        q = p->retry_q;
        p->retry_q = q->next;
        if (!p->retry_q)
            p->retry_tail = NULL;
        return q;
    }
    while (p->page && p->next_item < json_array_size(p->page)) {
        it = json_array_get(p->page, p->next_item++);
        md = json_object_get(it, "metadata");
        rv = json_string_value(json_object_get(md, "resourceVersion"));
        q = calloc(1, sizeof(*q));
        if (!q) {
            *rc = -ENOMEM;
            return NULL;
        }
        q->p = p;
        q->obj = json_incref(it);
        snprintf(q->rv, sizeof(q->rv), "%s", rv ? rv : "");
        if (!rv || !*rv) {
            count_failed(p, q, "listed without metadata.resourceVersion");
            put_free(q);
            continue;
        }
        return q;
    }
    return NULL;
}

/* ---- lists ------------------------------------------------------------------------------ */

static void on_list(void *arg, int status, long http, const char *body, size_t len,
                    const char *err);

static int start_get(struct ar_reapi *p, const char *path)
{
    return ar_api_request(p->api, "GET", path, NULL, 0, p->timeout_ms, on_list, p, &p->list_req);
}

static int start_list(struct ar_reapi *p)
{
    const struct sel *s = &p->sels[p->si];
    char path[PATH_MAX_LEN + 2048];
    char *esc = NULL;

    if (p->step == S_DISCOVER) {
        snprintf(path, sizeof(path), "/apis/%s", s->group);
        return start_get(p, path);
    }
    if (p->step == S_COUNT) {
        snprintf(path, sizeof(path), "%s/%s?limit=1", s->base, s->resource);
        return start_get(p, path);
    }
    if (p->cont && *p->cont) {
        esc = curl_easy_escape(NULL, p->cont, 0);
        if (!esc || strlen(esc) > 2000) {
            curl_free(esc);
            return -ENOMEM;
        }
    }
    snprintf(path, sizeof(path), "%s/%s?limit=%u%s%s", s->base, s->resource, p->page_size,
             esc ? "&continue=" : "", esc ? esc : "");
    curl_free(esc);
    return start_get(p, path);
}

/* The selector at si needs discovery first (a group not yet resolved). */
static void begin_selector(struct ar_reapi *p, enum step counting_or_list)
{
    p->step = p->sels[p->si].base[0] ? counting_or_list : S_DISCOVER;
}

static void on_list(void *arg, int status, long http, const char *body, size_t len, const char *err)
{
    struct ar_reapi *p = arg;
    struct sel *s = &p->sels[p->si];
    json_t *o = NULL, *items, *md;
    const char *c;
    char msg[256];
    unsigned retry_s = 1;

    p->list_req = NULL;
    if (status < 0) {
        fail(p, status, "GET %s: %s", s->resource, err ? err : strerror(-status));
        goto out;
    }
    if (http == 429 || http == 503) {
        status_of(body, len, msg, sizeof(msg), &retry_s);
        back_off(p, retry_s);
        goto out; /* the same request again after the wait (pump) */
    }
    if (http != 200) {
        status_of(body, len, msg, sizeof(msg), NULL);
        fail(p,
             http == 410   ? -ESTALE
             : http == 404 ? -ENOENT
                           : -EIO,
             "listing %s%s%s: HTTP %ld: %s", s->resource, s->group[0] ? "." : "", s->group, http,
             msg);
        goto out;
    }
    o = json_loadb(body, len, 0, NULL);
    if (!json_is_object(o)) {
        fail(p, -EBADMSG, "listing %s: the answer is not a JSON object", s->resource);
        goto out;
    }
    if (p->step == S_DISCOVER) {
        const char *gv = json_string_value(
            json_object_get(json_object_get(o, "preferredVersion"), "groupVersion"));
        if (!gv || !*gv || strchr(gv, '?') || strlen(gv) > 400) {
            fail(p, -ENOENT, "GET /apis/%s: no preferredVersion.groupVersion", s->group);
            goto out;
        }
        snprintf(s->base, sizeof(s->base), "/apis/%s", gv);
        p->step = S_COUNT; /* discovery happens while counting, before the pass */
        goto out;
    }
    items = json_object_get(o, "items");
    md = json_object_get(o, "metadata");
    if (!json_is_array(items)) {
        fail(p, -EBADMSG, "listing %s: no items", s->resource);
        goto out;
    }
    if (p->step == S_COUNT) {
        json_t *rem = json_object_get(md, "remainingItemCount");
        p->prog.total +=
            json_array_size(items) + (json_is_integer(rem) && json_integer_value(rem) > 0
                                          ? (uint64_t)json_integer_value(rem)
                                          : 0);
        if (++p->si == p->nsels) { /* counted: the pass itself from the first selector */
            p->si = 0;
            p->step = S_LIST;
            report(p);
        } else
            begin_selector(p, S_COUNT);
        goto out;
    }
    json_decref(p->page);
    p->page = json_incref(items);
    p->next_item = 0;
    p->listed_any = true;
    c = json_string_value(json_object_get(md, "continue"));
    free(p->cont);
    p->cont = c && *c ? strdup(c) : NULL;
    if (c && *c && !p->cont)
        fail(p, -ENOMEM, "out of memory");
    report(p);
out:
    json_decref(o);
    pump(p);
}

/* ---- the pump: start what may start now ------------------------------------------------- */

static void pump(struct ar_reapi *p)
{
    uint64_t now;
    struct put *q;
    int rc;

    if (p->stopped || p->finished)
        return;
    if (p->fail_status) {
        maybe_finish(p);
        return;
    }
    now = now_ms(p);
    if (now < p->resume_ms) { /* Retry-After */
        wait_until(p, p->resume_ms);
        return;
    }
    if (p->step != S_LIST) {
        if (!p->list_req && (rc = start_list(p)) < 0)
            fail(p, rc, "GET: %s", strerror(-rc));
        maybe_finish(p);
        return;
    }
    while (p->inflight < p->max_inflight) {
        if (p->rate_limit > 0) {
            double allowed = p->rate_limit * (double)(now - p->t0_ms) / 1000.0 + 1.0;
            if ((double)p->started >= allowed) {
                wait_until(p,
                           p->t0_ms + (uint64_t)((double)p->started / p->rate_limit * 1000.0) + 1);
                break;
            }
        }
        q = next_put(p, &rc);
        if (!q) {
            if (rc < 0)
                fail(p, rc, "out of memory");
            break;
        }
        if ((rc = send_put(p, q)) < 0) {
            fail(p, rc, "PUT: %s", strerror(-rc));
            break;
        }
    }
    if (!p->fail_status && !p->list_req && !p->retry_q && p->page &&
        p->next_item >= json_array_size(p->page)) {
        /* every object of the page was sent: the next page, or the next selector */
        if (p->cont) {
            if ((rc = start_list(p)) < 0)
                fail(p, rc, "GET: %s", strerror(-rc));
        } else if (!p->inflight) {
            json_decref(p->page);
            p->page = NULL;
            p->si++;
            p->listed_any = false;
            report(p);
        }
    }
    if (!p->fail_status && !p->list_req && !p->page && p->si < p->nsels && !p->listed_any) {
        if ((rc = start_list(p)) < 0)
            fail(p, rc, "GET: %s", strerror(-rc));
    }
    maybe_finish(p);
}

/* ---- start / stop ----------------------------------------------------------------------- */

static int parse_selectors(struct ar_reapi *p, const struct ar_node_reenc_req *req, char *err,
                           size_t errlen)
{
    p->sels = calloc(req->nselectors, sizeof(*p->sels));
    if (!p->sels)
        return -ENOMEM;
    for (size_t i = 0; i < req->nselectors; i++) {
        const char *sel = req->selectors[i], *dot = strchr(sel, '.');
        struct sel *s = &p->sels[i];
        size_t rl = dot ? (size_t)(dot - sel) : strlen(sel);

        if (sel[0] == '*') {
            snprintf(err, errlen,
                     "reencrypt mode api cannot list the wildcard selector %s: use mode etcd", sel);
            return -EOPNOTSUPP;
        }
        if (!rl || rl >= sizeof(s->resource) || (dot && strlen(dot + 1) >= sizeof(s->group)) ||
            !name_ok(sel)) {
            snprintf(err, errlen, "reencrypt mode api: bad selector %s", sel);
            return -EINVAL;
        }
        memcpy(s->resource, sel, rl);
        snprintf(s->group, sizeof(s->group), "%s", dot ? dot + 1 : "");
        if (!dot)
            snprintf(s->base, sizeof(s->base), "/api/v1");
    }
    p->nsels = req->nselectors;
    return 0;
}

int ar_reapi_start(uv_loop_t *loop, const struct ar_settings *s,
                   const struct ar_node_reenc_req *req, const struct ar_reapi_opts *o,
                   ar_reencrypt_progress_cb progress, ar_reencrypt_done_cb done, void *arg,
                   struct ar_reapi **out, char *err, size_t errlen)
{
    struct ar_reapi *p;
    int r;

    if (err && errlen)
        err[0] = '\0';
    if (!loop || !s || !req || !done || !out || !req->nselectors || !req->selectors || !err)
        return -EINVAL;
    p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->loop = loop;
    p->progress = progress;
    p->done = done;
    p->arg = arg;
    p->page_size = o && o->page_size ? o->page_size : 1000;
    p->max_inflight = o && o->max_inflight ? o->max_inflight : 8;
    p->timeout_ms = o && o->timeout_ms ? o->timeout_ms : 30000;
    p->rate_limit = req->rate_limit > 0 ? req->rate_limit : 0;
    if (p->rate_limit > 0 && p->page_size > p->rate_limit)
        p->page_size = p->rate_limit >= 1 ? (unsigned)p->rate_limit : 1;
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
    p->t0_ms = now_ms(p);
    begin_selector(p, S_COUNT);
    /* the first request from the loop, so done never runs inside start */
    p->waiting = true;
    uv_timer_start(&p->timer, on_timer, 0, 0);
    *out = p;
    return 0;
}

void ar_reapi_stop(struct ar_reapi *p)
{
    if (!p || p->stopped || p->finished)
        return;
    p->stopped = true;
    uv_timer_stop(&p->timer);
    release(p);
}
