/*
 * agent/apiclient.c: kube-apiserver client on the libuv loop, and the kubeconfig subset.
 *
 * The libcurl-on-libuv glue is the agent's own (a socket callback that keeps one uv_poll per
 * socket and a timer callback on one uv_timer), not shared with coord/etcd/etcd.c: the etcd
 * client's glue is woven into its transfer pool and close path, and the agent must not include
 * coord/etcd internals. It is small and follows libcurl's multi-socket documentation.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <sodium.h>
#include <yaml.h>

#include "agent/apiclient.h"
#include "agent/effective.h"

#define KUBECONFIG_MAX (1u << 20)

/* --- kubeconfig ---------------------------------------------------------------------------- */

struct kc {
    yaml_document_t doc;
    const char *name;
    const char *dir;
    char *err;
    size_t errlen;
};

static int kc_fail(struct kc *k, const yaml_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int kc_fail(struct kc *k, const yaml_node_t *n, const char *fmt, ...)
{
    char msg[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n)
        snprintf(k->err, k->errlen, "%s:%zu: %s", k->name, n->start_mark.line + 1, msg);
    else
        snprintf(k->err, k->errlen, "%s: %s", k->name, msg);
    return -EINVAL;
}

static bool is_scalar(const yaml_node_t *n, const char *s)
{
    return n && n->type == YAML_SCALAR_NODE && n->data.scalar.length == strlen(s) &&
           !memcmp(n->data.scalar.value, s, n->data.scalar.length);
}

static yaml_node_t *map_get(struct kc *k, yaml_node_t *m, const char *key)
{
    if (!m || m->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        if (is_scalar(yaml_document_get_node(&k->doc, p->key), key))
            return yaml_document_get_node(&k->doc, p->value);
    }
    return NULL;
}

/* The scalar text of n (NUL-terminated by libyaml), or NULL. */
static const char *scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* The entry of list (clusters/contexts/users) whose name is `name`; its `field` mapping. */
static int find_named(struct kc *k, yaml_node_t *root, const char *list, const char *name,
                      const char *field, yaml_node_t **out)
{
    yaml_node_t *l = map_get(k, root, list);
    char what[300];

    if (!l || l->type != YAML_SEQUENCE_NODE) {
        snprintf(what, sizeof(what), "%s", list);
        return kc_fail(k, l ? l : yaml_document_get_root_node(&k->doc), "no list \"%s\"", what);
    }
    for (yaml_node_item_t *i = l->data.sequence.items.start; i < l->data.sequence.items.top; i++) {
        yaml_node_t *e = yaml_document_get_node(&k->doc, *i);

        if (is_scalar(map_get(k, e, "name"), name)) {
            *out = map_get(k, e, field);
            if (!*out || (*out)->type != YAML_MAPPING_NODE) {
                snprintf(what, sizeof(what), "%s entry \"%s\" has no %s mapping", list, name,
                         field);
                return kc_fail(k, e, "%s", what);
            }
            return 0;
        }
    }
    snprintf(what, sizeof(what), "%s has no entry named \"%s\"", list, name);
    return kc_fail(k, l, "%s", what);
}

static int kc_path(struct kc *k, yaml_node_t *n, char **out)
{
    const char *v = scalar(n);

    if (!v || !*v)
        return kc_fail(k, n, "expected a file name");
    if (v[0] == '/' || !k->dir) {
        *out = strdup(v);
    } else {
        size_t len = strlen(k->dir) + strlen(v) + 2;

        *out = malloc(len);
        if (*out)
            snprintf(*out, len, "%s/%s", k->dir, v);
    }
    return *out ? 0 : -ENOMEM;
}

/* base64 data of scalar n into memory (locked when secret); the scalar is wiped afterwards. */
static int kc_data(struct kc *k, yaml_node_t *n, const char *field, bool secret, uint8_t **out,
                   size_t *outlen)
{
    const char *v = scalar(n);
    size_t vlen, cap, len = 0;
    uint8_t *buf;

    if (!v)
        return kc_fail(k, n, "%s: expected base64 data", field);
    vlen = n->data.scalar.length;
    cap = vlen / 4 * 3 + 4;
    buf = secret ? sodium_malloc(cap + 1) : malloc(cap + 1);
    if (!buf)
        return -ENOMEM;
    if (sodium_base642bin(buf, cap, v, vlen, " \t\r\n", &len, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        len == 0) {
        if (secret)
            sodium_free(buf);
        else
            free(buf);
        return kc_fail(k, n, "%s: not valid base64", field);
    }
    buf[len] = 0;
    if (secret)
        sodium_memzero(n->data.scalar.value, vlen);
    *out = buf;
    *outlen = len;
    return 0;
}

static int kc_refuse_unknown(struct kc *k, yaml_node_t *m, const char *const *known,
                             const char *what)
{
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        yaml_node_t *key = yaml_document_get_node(&k->doc, p->key);
        const char *s = scalar(key);
        bool ok = false;
        char msg[200];

        for (size_t i = 0; s && known[i]; i++)
            ok |= !strcmp(s, known[i]);
        if (!ok) {
            snprintf(msg, sizeof(msg), "%s field \"%s\" is not supported by atrest", what,
                     s ? s : "?");
            return kc_fail(k, key, "%s", msg);
        }
    }
    return 0;
}

static int kc_build(struct kc *k, struct ar_kubeconfig *o)
{
    static const char *const cluster_known[] = {"server",
                                                "certificate-authority",
                                                "certificate-authority-data",
                                                "tls-server-name",
                                                "extensions",
                                                NULL};
    static const char *const user_known[] = {
        "token",      "tokenFile",       "client-certificate", "client-certificate-data",
        "client-key", "client-key-data", "extensions",         NULL};
    yaml_node_t *root = yaml_document_get_root_node(&k->doc), *ctx, *cl, *us, *n;
    const char *cur, *cname, *uname;
    int r;

    if (!root || root->type != YAML_MAPPING_NODE)
        return kc_fail(k, root, "not a kubeconfig (expected a mapping)");
    cur = scalar(map_get(k, root, "current-context"));
    if (!cur || !*cur)
        return kc_fail(k, root, "no current-context");
    if ((r = find_named(k, root, "contexts", cur, "context", &ctx)) < 0)
        return r;
    cname = scalar(map_get(k, ctx, "cluster"));
    uname = scalar(map_get(k, ctx, "user"));
    if (!cname)
        return kc_fail(k, ctx, "context \"%s\" names no cluster", cur);
    if ((r = find_named(k, root, "clusters", cname, "cluster", &cl)) < 0)
        return r;
    if ((r = kc_refuse_unknown(k, cl, cluster_known, "cluster")) < 0)
        return r;
    n = map_get(k, cl, "server");
    if (!scalar(n) || (strncmp(scalar(n), "https://", 8) && strncmp(scalar(n), "http://", 7)))
        return kc_fail(k, n ? n : cl, "cluster \"%s\": server must be an http(s) URL", cname);
    if (!(o->server = strdup(scalar(n))))
        return -ENOMEM;
    if ((n = map_get(k, cl, "certificate-authority-data")))
        r = kc_data(k, n, "certificate-authority-data", false, &o->ca_data, &o->ca_len);
    else if ((n = map_get(k, cl, "certificate-authority")))
        r = kc_path(k, n, &o->ca_file);
    if (r < 0)
        return r;
    if (!uname)
        return 0; /* no user: anonymous (or TLS only) */
    if ((r = find_named(k, root, "users", uname, "user", &us)) < 0)
        return r;
    if ((r = kc_refuse_unknown(k, us, user_known, "user")) < 0)
        return r;
    if ((n = map_get(k, us, "client-certificate-data")))
        r = kc_data(k, n, "client-certificate-data", false, &o->cert_data, &o->cert_len);
    else if ((n = map_get(k, us, "client-certificate")))
        r = kc_path(k, n, &o->cert_file);
    if (r < 0)
        return r;
    if ((n = map_get(k, us, "client-key-data")))
        r = kc_data(k, n, "client-key-data", true, &o->key_data, &o->key_len);
    else if ((n = map_get(k, us, "client-key")))
        r = kc_path(k, n, &o->key_file);
    if (r < 0)
        return r;
    if (!(o->cert_file || o->cert_data) != !(o->key_file || o->key_data))
        return kc_fail(k, us, "user \"%s\": a client certificate needs its key and vice versa",
                       uname);
    if ((n = map_get(k, us, "token"))) {
        const char *t = scalar(n);
        size_t len = t ? n->data.scalar.length : 0;

        if (!len)
            return kc_fail(k, n, "user \"%s\": empty token", uname);
        if (!(o->token = sodium_malloc(len + 1)))
            return -ENOMEM;
        memcpy(o->token, t, len);
        o->token[len] = 0;
        sodium_memzero(n->data.scalar.value, len);
    } else if ((n = map_get(k, us, "tokenFile"))) {
        if ((r = kc_path(k, n, &o->token_file)) < 0)
            return r;
    }
    return 0;
}

void ar_kubeconfig_free(struct ar_kubeconfig *k)
{
    if (!k)
        return;
    free(k->server);
    free(k->ca_file);
    free(k->ca_data);
    free(k->cert_file);
    free(k->cert_data);
    free(k->key_file);
    sodium_free(k->key_data);
    sodium_free(k->token);
    free(k->token_file);
    free(k);
}

int ar_kubeconfig_parse(const char *name, const char *dir, const char *buf, size_t len,
                        struct ar_kubeconfig **out, char *err, size_t errlen)
{
    yaml_parser_t p;
    struct kc k = {.name = name, .dir = dir, .err = err, .errlen = errlen};
    struct ar_kubeconfig *o;
    int r;

    *out = NULL;
    if (errlen)
        err[0] = 0;
    if (sodium_init() < 0)
        return -ENOMEM;
    if (!(o = calloc(1, sizeof(*o))))
        return -ENOMEM;
    if (!yaml_parser_initialize(&p)) {
        free(o);
        return -ENOMEM;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);
    if (!yaml_parser_load(&p, &k.doc)) {
        snprintf(err, errlen, "%s:%zu: %s", name, p.problem_mark.line + 1,
                 p.problem ? p.problem : "invalid YAML");
        yaml_parser_delete(&p);
        ar_kubeconfig_free(o);
        return -EINVAL;
    }
    r = kc_build(&k, o);
    /* wipe every scalar: a token or key may sit in any of them */
    for (yaml_node_t *n = k.doc.nodes.start; n < k.doc.nodes.top; n++) {
        if (n->type == YAML_SCALAR_NODE)
            sodium_memzero(n->data.scalar.value, n->data.scalar.length);
    }
    yaml_document_delete(&k.doc);
    yaml_parser_delete(&p);
    if (r < 0) {
        ar_kubeconfig_free(o);
        if (r == -ENOMEM)
            snprintf(err, errlen, "%s: out of memory", name);
        return r;
    }
    *out = o;
    return 0;
}

int ar_kubeconfig_load(const char *path, struct ar_kubeconfig **out, char *err, size_t errlen)
{
    char *buf = NULL, *dir, *slash;
    size_t len;
    int r;

    *out = NULL;
    r = ar_file_read_locked(path, KUBECONFIG_MAX, &buf, &len);
    if (r < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(-r));
        return r;
    }
    dir = strdup(path);
    if (!dir) {
        sodium_free(buf);
        return -ENOMEM;
    }
    slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    r = ar_kubeconfig_parse(path, slash ? (dir[0] ? dir : "/") : NULL, buf, len, out, err, errlen);
    free(dir);
    sodium_free(buf);
    return r;
}

/* --- the client ---------------------------------------------------------------------------- */

struct ar_api {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t *timer;
    char *url;
    struct ar_kubeconfig *kc; /* everything else: credentials and TLS */
    char *auth_header;        /* "Authorization: Bearer ..." (sodium_malloc'd) */
    struct ar_api_req *reqs;  /* pending */
    bool closing;
};

struct ar_api_req {
    struct ar_api *a;
    struct ar_api_req *next, **pprev;
    CURL *h;
    struct curl_slist *hdrs;
    char *body; /* request body copy (sodium_malloc'd) */
    size_t body_len;
    char *resp; /* response (malloc'd, wiped on free) */
    size_t resp_len, resp_cap;
    bool too_big;
    char curl_err[CURL_ERROR_SIZE];
    ar_api_cb cb;
    void *arg;
};

struct sock {
    uv_poll_t poll;
    curl_socket_t fd;
    struct ar_api *a;
};

static void req_free(struct ar_api_req *r)
{
    if (!r)
        return;
    if (r->pprev) {
        *r->pprev = r->next;
        if (r->next)
            r->next->pprev = r->pprev;
    }
    if (r->h) {
        curl_multi_remove_handle(r->a->multi, r->h);
        curl_easy_cleanup(r->h);
    }
    curl_slist_free_all(r->hdrs);
    sodium_free(r->body);
    if (r->resp) {
        sodium_memzero(r->resp, r->resp_cap);
        free(r->resp);
    }
    free(r);
}

static int curl_status(CURLcode rc, bool too_big)
{
    if (too_big)
        return -EMSGSIZE;
    switch (rc) {
    case CURLE_OK:
        return 0;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
        return -ECONNREFUSED;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
        return -EACCES;
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    default:
        return -EIO;
    }
}

static void check_multi(struct ar_api *a)
{
    CURLMsg *m;
    int pending;

    while ((m = curl_multi_info_read(a->multi, &pending))) {
        struct ar_api_req *r = NULL;
        long http = 0;
        int st;
        char err[CURL_ERROR_SIZE + 64];

        if (m->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &http);
        st = curl_status(m->data.result, r->too_big);
        if (st == -EMSGSIZE)
            snprintf(err, sizeof(err), "response larger than %u bytes", AR_API_MAX_BODY);
        else if (st < 0)
            snprintf(err, sizeof(err), "%s",
                     r->curl_err[0] ? r->curl_err : curl_easy_strerror(m->data.result));
        else
            err[0] = 0;
        if (st < 0)
            http = 0;
        r->cb(r->arg, st, http, r->resp ? r->resp : "", r->resp_len, st < 0 ? err : NULL);
        req_free(r); /* m is invalid from here; the loop reads the next message */
    }
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct sock *s = p->data;
    int flags = 0, running;

    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(s->a->multi, s->fd, flags, &running);
    check_multi(s->a);
}

static void on_timer(uv_timer_t *t)
{
    struct ar_api *a = t->data;
    int running;

    curl_multi_socket_action(a->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi(a);
}

static void close_free(uv_handle_t *h)
{
    free(h->data);
}

static int socket_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct ar_api *a = userp;
    struct sock *s = socketp;
    int events = 0;

    (void)e;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, close_free);
            curl_multi_assign(a->multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        if (a->closing || !(s = calloc(1, sizeof(*s))))
            return -1;
        if (uv_poll_init_socket(a->loop, &s->poll, fd) < 0) {
            free(s);
            return -1;
        }
        s->fd = fd;
        s->a = a;
        s->poll.data = s;
        curl_multi_assign(a->multi, fd, s);
    }
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    uv_poll_start(&s->poll, events, on_poll);
    return 0;
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp)
{
    struct ar_api *a = userp;

    (void)m;
    if (timeout_ms < 0 || a->closing)
        uv_timer_stop(a->timer);
    else
        uv_timer_start(a->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *arg)
{
    struct ar_api_req *r = arg;
    size_t n = size * nmemb;

    if (r->resp_len + n + 1 > AR_API_MAX_BODY) {
        r->too_big = true;
        return 0;
    }
    if (r->resp_len + n + 1 > r->resp_cap) {
        size_t cap = r->resp_cap ? r->resp_cap : 4096;
        char *nb;

        while (cap < r->resp_len + n + 1)
            cap *= 2;
        if (!(nb = malloc(cap)))
            return 0;
        if (r->resp) {
            memcpy(nb, r->resp, r->resp_len);
            sodium_memzero(r->resp, r->resp_cap);
            free(r->resp);
        }
        r->resp = nb;
        r->resp_cap = cap;
    }
    memcpy(r->resp + r->resp_len, data, n);
    r->resp_len += n;
    r->resp[r->resp_len] = 0;
    return n;
}

static int read_token_file(const char *path, char **out, char *err, size_t errlen)
{
    size_t n;
    int r = ar_file_read_locked(path, 64 * 1024, out, &n);

    if (r < 0) {
        snprintf(err, errlen, "cannot read the token file %s: %s", path, strerror(-r));
        return -EINVAL;
    }
    while (n && ((*out)[n - 1] == '\n' || (*out)[n - 1] == '\r' || (*out)[n - 1] == ' '))
        (*out)[--n] = 0;
    if (!n) {
        snprintf(err, errlen, "the token file %s is empty", path);
        sodium_free(*out);
        *out = NULL;
        return -EINVAL;
    }
    return 0;
}

static int dup_opt(char **dst, const char *src)
{
    if (!src)
        return 0;
    *dst = strdup(src);
    return *dst ? 0 : -ENOMEM;
}

void ar_api_free(struct ar_api *a)
{
    if (!a)
        return;
    a->closing = true;
    while (a->reqs)
        req_free(a->reqs);
    if (a->multi)
        curl_multi_cleanup(a->multi);
    if (a->timer) {
        uv_timer_stop(a->timer);
        a->timer->data = a->timer;
        uv_close((uv_handle_t *)a->timer, close_free);
    }
    free(a->url);
    ar_kubeconfig_free(a->kc);
    sodium_free(a->auth_header);
    free(a);
}

int ar_api_new(uv_loop_t *loop, const struct ar_settings *s, struct ar_api **out, char *err,
               size_t errlen)
{
    struct ar_api *a;
    char *token = NULL;
    const char *url;
    int r = -ENOMEM;

    *out = NULL;
    err[0] = 0;
    if (sodium_init() < 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return -ENOMEM;
    if (!(a = calloc(1, sizeof(*a))))
        return -ENOMEM;
    a->loop = loop;
    if (s->kubeconfig) {
        r = ar_kubeconfig_load(s->kubeconfig, &a->kc, err, errlen);
        if (r < 0)
            goto fail;
        r = -ENOMEM;
    } else if (!(a->kc = calloc(1, sizeof(*a->kc)))) {
        goto fail;
    }
    url = s->api_url ? s->api_url : a->kc->server;
    if (!url) {
        snprintf(err, errlen, "no API server: set apiserver.url or apiserver.kubeconfig");
        r = -EINVAL;
        goto fail;
    }
    if (dup_opt(&a->url, url) < 0)
        goto fail;
    while (a->url[0] && a->url[strlen(a->url) - 1] == '/')
        a->url[strlen(a->url) - 1] = 0;
    if (s->api_cafile) {
        free(a->kc->ca_file);
        free(a->kc->ca_data);
        a->kc->ca_data = NULL;
        if (dup_opt(&a->kc->ca_file, s->api_cafile) < 0)
            goto fail;
    }
    if (!s->kubeconfig && (dup_opt(&a->kc->cert_file, s->api_certfile) < 0 ||
                           dup_opt(&a->kc->key_file, s->api_keyfile) < 0))
        goto fail;
    if (a->kc->token) {
        token = a->kc->token;
        a->kc->token = NULL;
    } else if (s->api_token_file || a->kc->token_file) {
        r = read_token_file(s->api_token_file ? s->api_token_file : a->kc->token_file, &token, err,
                            errlen);
        if (r < 0)
            goto fail;
        r = -ENOMEM;
    }
    if (token) {
        size_t n = strlen(token) + sizeof("Authorization: Bearer ");

        if (!(a->auth_header = sodium_malloc(n))) {
            sodium_free(token);
            goto fail;
        }
        snprintf(a->auth_header, n, "Authorization: Bearer %s", token);
        sodium_free(token);
    }
    if (!(a->multi = curl_multi_init()) || !(a->timer = calloc(1, sizeof(*a->timer))))
        goto fail;
    uv_timer_init(loop, a->timer);
    a->timer->data = a;
    curl_multi_setopt(a->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(a->multi, CURLMOPT_SOCKETDATA, a);
    curl_multi_setopt(a->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(a->multi, CURLMOPT_TIMERDATA, a);
    *out = a;
    return 0;
fail:
    if (r == -ENOMEM && !err[0])
        snprintf(err, errlen, "out of memory");
    ar_api_free(a);
    return r;
}

const char *ar_api_url(const struct ar_api *a)
{
    return a->url;
}

static int set_blob(CURL *h, CURLoption opt, const uint8_t *data, size_t len)
{
    struct curl_blob b = {.data = (void *)data, .len = len, .flags = CURL_BLOB_COPY};

    return curl_easy_setopt(h, opt, &b) == CURLE_OK ? 0 : -EINVAL;
}

int ar_api_request(struct ar_api *a, const char *method, const char *path, const char *body,
                   size_t body_len, unsigned timeout_ms, ar_api_cb cb, void *arg,
                   struct ar_api_req **out)
{
    struct ar_api_req *r;
    const struct ar_kubeconfig *k = a->kc;
    char *url;
    size_t ulen;
    int rc = -ENOMEM;

    if (out)
        *out = NULL;
    if (a->closing || !method || !path || path[0] != '/' || !cb)
        return -EINVAL;
    if (!(r = calloc(1, sizeof(*r))))
        return -ENOMEM;
    r->a = a;
    r->cb = cb;
    r->arg = arg;
    ulen = strlen(a->url) + strlen(path) + 1;
    if (!(url = malloc(ulen)) || !(r->h = curl_easy_init()))
        goto fail;
    snprintf(url, ulen, "%s%s", a->url, path);
    curl_easy_setopt(r->h, CURLOPT_URL, url);
    free(url);
    url = NULL;
    curl_easy_setopt(r->h, CURLOPT_PRIVATE, r);
    curl_easy_setopt(r->h, CURLOPT_ERRORBUFFER, r->curl_err);
    curl_easy_setopt(r->h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(r->h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(r->h, CURLOPT_TIMEOUT_MS, (long)(timeout_ms ? timeout_ms : 10000));
    curl_easy_setopt(r->h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(r->h, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(r->h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(r->h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(r->h, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(r->h, CURLOPT_CUSTOMREQUEST, method);
    if (k->ca_file)
        curl_easy_setopt(r->h, CURLOPT_CAINFO, k->ca_file);
    else if (k->ca_data && set_blob(r->h, CURLOPT_CAINFO_BLOB, k->ca_data, k->ca_len) < 0)
        goto fail;
    if (k->cert_file)
        curl_easy_setopt(r->h, CURLOPT_SSLCERT, k->cert_file);
    else if (k->cert_data && set_blob(r->h, CURLOPT_SSLCERT_BLOB, k->cert_data, k->cert_len) < 0)
        goto fail;
    if (k->key_file)
        curl_easy_setopt(r->h, CURLOPT_SSLKEY, k->key_file);
    else if (k->key_data && set_blob(r->h, CURLOPT_SSLKEY_BLOB, k->key_data, k->key_len) < 0)
        goto fail;
    if (!(r->hdrs = curl_slist_append(NULL, "Accept: application/json, */*")))
        goto fail;
    if (a->auth_header && !(r->hdrs = curl_slist_append(r->hdrs, a->auth_header)))
        goto fail;
    if (body) {
        if (!(r->hdrs = curl_slist_append(r->hdrs, "Content-Type: application/json")))
            goto fail;
        if (!(r->body = sodium_malloc(body_len + 1)))
            goto fail;
        memcpy(r->body, body, body_len);
        r->body[body_len] = 0;
        r->body_len = body_len;
        curl_easy_setopt(r->h, CURLOPT_POSTFIELDS, r->body);
        curl_easy_setopt(r->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    curl_easy_setopt(r->h, CURLOPT_HTTPHEADER, r->hdrs);
    if (curl_multi_add_handle(a->multi, r->h) != CURLM_OK) {
        rc = -EIO;
        goto fail;
    }
    r->next = a->reqs;
    if (a->reqs)
        a->reqs->pprev = &r->next;
    r->pprev = &a->reqs;
    a->reqs = r;
    if (out)
        *out = r;
    return 0;
fail:
    free(url);
    if (r->h) {
        curl_easy_cleanup(r->h);
        r->h = NULL;
    }
    req_free(r);
    return rc;
}

void ar_api_cancel(struct ar_api_req *r)
{
    req_free(r);
}
