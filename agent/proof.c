/*
 * agent/proof.c: proof of load (canary, metrics, restart) and the Prometheus text parser.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <jansson.h>
#include <sodium.h>

#include "agent/apiclient.h"
#include "agent/log.h"
#include "agent/proof.h"
#include "crypto/buf.h"
#include "crypto/chain.h"

#define PROBE_BYTES 16
#define MAX_ARGS    64

/* --- Prometheus text format ---------------------------------------------------------------- */

static bool name_start(int c)
{
    return isalpha(c) || c == '_' || c == ':';
}

static bool name_char(int c)
{
    return isalnum(c) || c == '_' || c == ':';
}

static const char *skip_blank(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

/* One sample line [p, end) into buf (names and unescaped values, NUL-separated). */
static int parse_line(const char *p, const char *end, char *buf, size_t cap, const char **name,
                      struct ar_prom_label *labels, size_t *n_labels, double *value)
{
    size_t o = 0;
    char num[64], *nend;
    const char *q;

    *n_labels = 0;
    if (p >= end || !name_start((unsigned char)*p))
        return -1;
    *name = buf;
    while (p < end && name_char((unsigned char)*p) && o + 1 < cap)
        buf[o++] = *p++;
    buf[o++] = 0;
    p = skip_blank(p, end);
    if (p < end && *p == '{') {
        p = skip_blank(p + 1, end);
        while (p < end && *p != '}') {
            struct ar_prom_label *l;

            if (*n_labels == AR_PROM_MAX_LABELS || !name_start((unsigned char)*p))
                return -1;
            l = &labels[(*n_labels)++];
            l->name = buf + o;
            while (p < end && name_char((unsigned char)*p) && o + 1 < cap)
                buf[o++] = *p++;
            if (o + 1 >= cap)
                return -1;
            buf[o++] = 0;
            p = skip_blank(p, end);
            if (p >= end || *p != '=')
                return -1;
            p = skip_blank(p + 1, end);
            if (p >= end || *p != '"')
                return -1;
            p++;
            l->value = buf + o;
            while (p < end && *p != '"') {
                char c = *p++;

                if (c == '\\') {
                    if (p >= end)
                        return -1;
                    c = *p++;
                    if (c == 'n')
                        c = '\n';
                    else if (c != '\\' && c != '"')
                        return -1;
                }
                if (o + 1 >= cap)
                    return -1;
                buf[o++] = c;
            }
            if (p >= end)
                return -1;
            p++; /* closing quote */
            buf[o++] = 0;
            p = skip_blank(p, end);
            if (p < end && *p == ',')
                p = skip_blank(p + 1, end);
            else if (p < end && *p != '}')
                return -1;
        }
        if (p >= end)
            return -1;
        p = skip_blank(p + 1, end);
    }
    if (p >= end)
        return -1;
    q = p;
    while (q < end && *q != ' ' && *q != '\t')
        q++;
    if ((size_t)(q - p) >= sizeof(num))
        return -1;
    memcpy(num, p, (size_t)(q - p));
    num[q - p] = 0;
    errno = 0;
    *value = strtod(num, &nend);
    if (nend == num || *nend)
        return -1;
    p = skip_blank(q, end);
    if (p < end) { /* optional timestamp (integer milliseconds) */
        q = p;
        if (*q == '-')
            q++;
        if (q >= end)
            return -1;
        while (q < end && isdigit((unsigned char)*q))
            q++;
        if (skip_blank(q, end) != end)
            return -1;
    }
    return 0;
}

int ar_promtext_parse(const char *text, size_t len, ar_prom_sample_cb cb, void *arg, size_t *bad)
{
    const char *p = text, *end = text + len;
    size_t nbad = 0, cap = 4096;
    char *buf = malloc(cap);

    if (!buf)
        return -ENOMEM;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p)), *le;
        struct ar_prom_label labels[AR_PROM_MAX_LABELS];
        const char *name;
        size_t n;
        double v;

        le = eol ? eol : end;
        if (le > p && le[-1] == '\r')
            le--;
        p = skip_blank(p, le);
        if (p < le && *p != '#') {
            if ((size_t)(le - p) * 2 + 2 > cap) {
                char *nb;

                cap = (size_t)(le - p) * 2 + 2;
                if (!(nb = realloc(buf, cap))) {
                    free(buf);
                    return -ENOMEM;
                }
                buf = nb;
            }
            if (parse_line(p, le, buf, cap, &name, labels, &n, &v) < 0)
                nbad++;
            else if (cb(arg, name, labels, n, v))
                break;
        }
        p = eol ? eol + 1 : end;
    }
    free(buf);
    if (bad)
        *bad = nbad;
    return 0;
}

/* --- metrics verdict ----------------------------------------------------------------------- */

#define M_PREFIX "apiserver_encryption_config_controller_"

struct meval {
    const char *file_hash;
    struct ar_metrics_verdict *v;
    bool hash_seen, reload_seen;
};

static const char *label(const struct ar_prom_label *l, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(l[i].name, name))
            return l[i].value;
    }
    return NULL;
}

static int on_sample(void *arg, const char *name, const struct ar_prom_label *l, size_t n,
                     double value)
{
    struct meval *m = arg;
    const char *st;

    if (strncmp(name, M_PREFIX, strlen(M_PREFIX)))
        return 0;
    name += strlen(M_PREFIX);
    if (!strcmp(name, "last_config_info")) {
        const char *h = label(l, n, "hash");

        m->hash_seen = true;
        if (h && value == 1) {
            snprintf(m->v->hash, sizeof(m->v->hash), "%s", h);
            if (m->file_hash && !strcmp(h, m->file_hash))
                m->v->loaded = true;
        }
    } else if (!strcmp(name, "automatic_reloads_total")) {
        st = label(l, n, "status");
        m->reload_seen = true;
        if (st && !strcmp(st, "success") && !isnan(value))
            m->v->success_total = (m->v->success_total < 0 ? 0 : m->v->success_total) + value;
    } else if (!strcmp(name, "automatic_reload_success_total")) {
        m->reload_seen = true; /* 1.28/1.29 name: counted by on_old_counter when alone */
    } else if (!strcmp(name, "automatic_reload_last_timestamp_seconds")) {
        st = label(l, n, "status");
        m->reload_seen = true;
        if (st && !strcmp(st, "success") && value > m->v->last_success_s)
            m->v->last_success_s = value;
    } else if (!strcmp(name, "automatic_reload_failures_total")) {
        m->reload_seen = true;
    }
    return 0;
}

/* The old success counter, summed (used when automatic_reloads_total is absent). */
static int on_old_counter(void *arg, const char *name, const struct ar_prom_label *l, size_t n,
                          double value)
{
    double *sum = arg;

    (void)l;
    (void)n;
    if (!strcmp(name, M_PREFIX "automatic_reload_success_total") && !isnan(value))
        *sum = (*sum < 0 ? 0 : *sum) + value;
    return 0;
}

int ar_metrics_eval(const char *text, size_t len, const char *file_hash, uint64_t written_ms,
                    double success_before, struct ar_metrics_verdict *out)
{
    struct meval m = {.file_hash = file_hash, .v = out};
    int r;

    memset(out, 0, sizeof(*out));
    out->success_total = -1;
    out->last_success_s = -1;
    r = ar_promtext_parse(text, len, on_sample, &m, NULL);
    if (r < 0)
        return r;
    if (out->success_total < 0) {
        r = ar_promtext_parse(text, len, on_old_counter, &out->success_total, NULL);
        if (r < 0)
            return r;
    }
    if (m.hash_seen) {
        out->style = AR_METRICS_HASH;
        return 0;
    }
    out->loaded = false;
    if (!m.reload_seen)
        return 0;
    out->style = AR_METRICS_RELOAD;
    if (out->last_success_s >= 0 && out->last_success_s * 1000.0 >= (double)written_ms)
        out->loaded = true;
    if (success_before >= 0 && out->success_total > success_before)
        out->loaded = true;
    return 0;
}

/* --- the proof ----------------------------------------------------------------------------- */

enum step {
    S_IDLE = 0,
    S_METRICS,   /* GET /metrics until loaded */
    S_PROBE,     /* canary LOADED: one GET /metrics to choose metrics or READ */
    S_READ_PUT,  /* etcd txn writing the canary */
    S_READ_GET,  /* GET the canary through the API server */
    S_WRITE_PUT, /* PUT/POST the canary through the API server */
    S_WRITE_RAW, /* etcd range of the canary's raw value */
    S_WRITE_MET, /* metrics after a write with another key: loaded or not yet? */
    S_SPAWN,     /* the reload command runs */
    S_READYZ,    /* GET /readyz until 200 */
};

/* An etcd request cannot be cancelled: its callback finds the proof through a ticket. */
struct ticket {
    struct ar_proof *p;
};

struct ar_proof {
    uv_loop_t *loop;
    struct ar_api *api;
    struct ar_etcd *etcd;
    char *prefix, *ns, *name, *node, *reload_command;
    enum ar_proof_mode mode;
    unsigned warn_after_s, retry_ms;
    char api_err[256];

    uv_timer_t *timer;
    uv_process_t *proc;
    struct ar_api_req *req_api;
    struct ticket *ticket;

    /* the request */
    bool running;
    enum step step;
    enum ar_prove_goal goal;
    struct ar_config *cfg;
    struct ar_chain *chain;
    char *file_hash, *key_name, *rotation_id, *phase;
    enum ar_ptype type;
    size_t pi, ki; /* the provider/key in secrets' list */
    uint64_t written_ms, start_ms, start_mono;
    ar_node_prove_done done;
    void *done_arg;
    bool create;           /* WRITE: POST instead of PUT (the canary does not exist) */
    bool weaker;           /* LOADED proved by READ of the write key */
    double success_before; /* reload success counter at the start (-1: unknown) */
    char *probe_b64;       /* sodium_malloc'd: what the canary's data.probe must read */
    char used_key[128];    /* WRITE: the key the server wrote with */
    int64_t write_rv;      /* WRITE: resourceVersion (etcd mod_revision) of our write, 0: ? */
    int64_t canary_rev;    /* READ: mod_revision of the canary we put into etcd (0: none) */
    bool known_loaded;     /* WRITE: the metrics said "loaded" before the last PUT started */
    char loaded_what[96];  /* ... which hash or "reload recorded" */
    char last_error[256];  /* last failed attempt */
    char last_for[192];    /* the rotation/phase that last_error is about */
    char detail[256];      /* what this step waits for */
    unsigned attempts;
};

static uint64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void etcd_key(struct ar_proof *p, char *dst, size_t n);

static void on_canary_deleted(void *arg, int status, const struct ar_etcd_result *res,
                              const struct ar_etcd_error *ee)
{
    (void)arg;
    if (status < 0)
        ar_log(AR_LOG_DEBUG, "proof: removing the canary from etcd: %s",
               ee && ee->msg[0] ? ee->msg : strerror(-status));
    else
        ar_log(AR_LOG_DEBUG, "proof: canary %s", res && res->succeeded ? "removed" : "kept");
}

/* A READ proof writes the canary straight into etcd under a key the other API servers may not
 * read yet (a staged key). Once the proof ends, however it ends, that value is removed (only if
 * it is still ours: compare on its mod_revision), so no stored object is left under a key that
 * an abort withdraws (S2). Fire and forget: a failure leaves one canary, counted by verify. */
static void remove_canary(struct ar_proof *p)
{
    char key[600];
    struct ar_etcd_op del;
    struct ar_etcd_compare cmp;
    struct ar_etcd_txn txn;

    if (!p->canary_rev || !p->etcd)
        return;
    etcd_key(p, key, sizeof(key));
    memset(&del, 0, sizeof(del));
    del.type = AR_ETCD_DELETE;
    del.key = (const uint8_t *)key;
    del.key_len = strlen(key);
    memset(&cmp, 0, sizeof(cmp));
    cmp.key = del.key;
    cmp.key_len = del.key_len;
    cmp.target = AR_ETCD_CMP_MOD;
    cmp.result = AR_ETCD_EQUAL;
    cmp.number = p->canary_rev;
    txn = (struct ar_etcd_txn){.compare = &cmp, .n_compare = 1, .success = &del, .n_success = 1};
    p->canary_rev = 0;
    (void)ar_etcd_txn(p->etcd, &txn, on_canary_deleted, NULL);
}

static void clear_request(struct ar_proof *p)
{
    remove_canary(p);
    ar_api_cancel(p->req_api);
    p->req_api = NULL;
    if (p->ticket) {
        p->ticket->p = NULL; /* the callback frees it */
        p->ticket = NULL;
    }
    if (p->timer)
        uv_timer_stop(p->timer);
    p->cfg = ar_config_unref(p->cfg);
    p->chain = ar_chain_unref(p->chain);
    free(p->file_hash);
    free(p->key_name);
    free(p->rotation_id);
    free(p->phase);
    p->file_hash = p->key_name = p->rotation_id = p->phase = NULL;
    sodium_free(p->probe_b64);
    p->probe_b64 = NULL;
    p->running = false;
    p->step = S_IDLE;
}

static void finish(struct ar_proof *p, int status, enum ar_node_proof kind, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void finish(struct ar_proof *p, int status, enum ar_node_proof kind, const char *fmt, ...)
{
    ar_node_prove_done done = p->done;
    void *arg = p->done_arg;
    struct ar_err e;
    char msg[256] = "";
    va_list ap;

    if (fmt) {
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
    }
    ar_err_clear(&e);
    if (status < 0)
        ar_err_set(&e, status, ar_api_url(p->api), "%s", msg);
    if (status < 0)
        ar_log(AR_LOG_WARN, "proof of load (phase %s): %s", p->phase ? p->phase : "?", msg);
    else
        ar_log(AR_LOG_INFO, "proof of load (phase %s): %s", p->phase ? p->phase : "?", msg);
    snprintf(p->last_error, sizeof(p->last_error), "%s", status < 0 ? msg : "");
    snprintf(p->last_for, sizeof(p->last_for), "%s/%s", p->rotation_id ? p->rotation_id : "",
             p->phase ? p->phase : "");
    clear_request(p);
    p->done = NULL;
    if (done)
        done(arg, status, kind, status < 0 ? &e : NULL);
}

static void step_now(struct ar_proof *p);

static void on_retry(uv_timer_t *t)
{
    step_now(t->data);
}

/* Not yet: try again after retry_ms (S9: never a timeout here). */
static void retry(struct ar_proof *p, enum step s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void retry(struct ar_proof *p, enum step s, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(p->last_error, sizeof(p->last_error), fmt, ap);
    va_end(ap);
    p->step = s;
    p->attempts++;
    uv_timer_start(p->timer, on_retry, p->retry_ms, 0);
}

/* --- helpers: canary JSON ------------------------------------------------------------------ */

static int new_probe(struct ar_proof *p)
{
    uint8_t raw[PROBE_BYTES];
    size_t n = sodium_base64_ENCODED_LEN(PROBE_BYTES, sodium_base64_VARIANT_ORIGINAL);

    sodium_free(p->probe_b64);
    if (!(p->probe_b64 = sodium_malloc(n)))
        return -ENOMEM;
    randombytes_buf(raw, sizeof(raw));
    sodium_bin2base64(p->probe_b64, n, raw, sizeof(raw), sodium_base64_VARIANT_ORIGINAL);
    sodium_memzero(raw, sizeof(raw));
    return 0;
}

/* The Secret as JSON into locked memory (*out, sodium_free). etcd: the stored form (uid and
 * creationTimestamp, as kube-apiserver stores them), else the API request body. */
static int canary_json(struct ar_proof *p, bool etcd, char **out, size_t *len)
{
    json_t *o = NULL, *md, *ann;
    char uid[40], ts[32];
    uint8_t u[16];
    time_t now = time(NULL);
    struct tm tm;
    size_t n;
    int r = -ENOMEM;

    *out = NULL;
    randombytes_buf(u, sizeof(u));
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40);
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
    snprintf(uid, sizeof(uid),
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
             u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
             u[15]);
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    ann = json_pack("{s:s, s:s, s:s}", "atrest.io/rotation", p->rotation_id ? p->rotation_id : "",
                    "atrest.io/phase", p->phase ? p->phase : "", "atrest.io/proof",
                    p->goal == AR_PROVE_WRITE ? "write" : "read");
    if (!ann)
        goto out;
    md = json_pack("{s:s, s:s, s:o}", "name", p->name, "namespace", p->ns, "annotations", ann);
    if (!md)
        goto out;
    if (etcd && (json_object_set_new(md, "uid", json_string(uid)) < 0 ||
                 json_object_set_new(md, "creationTimestamp", json_string(ts)) < 0)) {
        json_decref(md);
        goto out;
    }
    o = json_pack("{s:s, s:s, s:o, s:{s:s}, s:s}", "kind", "Secret", "apiVersion", "v1", "metadata",
                  md, "data", "probe", p->probe_b64, "type", "Opaque");
    if (!o)
        goto out;
    n = json_dumpb(o, NULL, 0, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!n || !(*out = sodium_malloc(n + 2)))
        goto out;
    json_dumpb(o, *out, n, JSON_COMPACT | JSON_PRESERVE_ORDER);
    (*out)[n] = etcd ? '\n' : 0; /* kube-apiserver's JSON serializer ends with a newline */
    (*out)[n + 1] = 0;
    *len = etcd ? n + 1 : n;
    r = 0;
out:
    json_decref(o);
    return r;
}

/* data.probe of a Secret in JSON equals ours. */
/* A peer's bytes in a status (JSON) or log line: printable ASCII only, one line. */
static void printable(char *s)
{
    for (; *s; s++) {
        if (*s < 0x20 || *s > 0x7e)
            *s = *s == '\n' || *s == '\r' || *s == '\t' ? ' ' : '?';
    }
}

int ar_proof_canary_matches(const char *probe_b64, const char *body, size_t len, char *why,
                            size_t n)
{
    json_error_t je;
    json_t *o = json_loadb(body, len, 0, &je);
    const char *v = json_string_value(json_object_get(json_object_get(o, "data"), "probe"));
    int ok = v && probe_b64 && !strcmp(v, probe_b64);

    why[0] = '\0';
    if (!json_is_object(o)) {
        snprintf(why, n, "%s", o ? "a JSON value that is not an object" : je.text);
        printable(why); /* jansson's text quotes the token it stopped at */
        ok = -1;
    }
    json_decref(o);
    return ok;
}

const char *ar_proof_peer_message(const char *body, size_t len, char *dst, size_t n)
{
    json_t *o = json_loadb(body, len, 0, NULL);
    const char *m = json_string_value(json_object_get(o, "message"));

    snprintf(dst, n, "%.*s", m ? (int)strlen(m) : (int)(len < 200 ? len : 200), m ? m : body);
    json_decref(o);
    printable(dst);
    return dst;
}

static void etcd_key(struct ar_proof *p, char *dst, size_t n)
{
    snprintf(dst, n, "%s/secrets/%s/%s", p->prefix, p->ns, p->name);
}

static const char *want_key(struct ar_proof *p, char *dst, size_t n)
{
    if (p->type == AR_P_IDENTITY)
        snprintf(dst, n, "identity");
    else
        snprintf(dst, n, "%s:%s", ar_ptype_name(p->type), p->key_name ? p->key_name : "?");
    return dst;
}

/* type and key_name := secrets' write provider/key in the chain (what pi = ki = 0 writes) */
static void name_write_key(struct ar_proof *p)
{
    struct ar_plist pl;
    const struct ar_provider *pv;
    const char *name = NULL;

    ar_chain_lookup(p->chain, "", "secrets", &pl);
    pv = pl.n ? pl.v[0] : NULL;
    p->type = pv ? pv->type : AR_P_IDENTITY;
    if (pv && pv->type == AR_P_KMS)
        name = pv->kms.name;
    else if (pv && pv->type != AR_P_IDENTITY && pv->nkeys)
        name = pv->keys[0].name;
    free(p->key_name);
    p->key_name = name ? strdup(name) : NULL;
}

/* --- metrics ------------------------------------------------------------------------------- */

static void on_metrics(void *arg, int status, long http, const char *body, size_t len,
                       const char *err)
{
    struct ar_proof *p = arg;
    struct ar_metrics_verdict v;
    enum step s = p->step;
    char want[160];

    p->req_api = NULL;
    if (status < 0 || http != 200) {
        if (status == -EACCES) {
            finish(p, -EACCES, AR_NODE_PROOF_NONE, "GET /metrics: %s", err);
            return;
        }
        if (http == 401 || http == 403) {
            finish(p, -EACCES, AR_NODE_PROOF_NONE,
                   "GET /metrics: HTTP %ld (the credentials need get on /metrics)", http);
            return;
        }
        if (s == S_WRITE_MET) {
            retry(p, S_WRITE_PUT, "the API server wrote secrets with %s, not %s; /metrics: %s",
                  p->used_key, want_key(p, want, sizeof(want)),
                  status < 0 ? err : "unexpected HTTP status");
            return;
        }
        if (status < 0)
            retry(p, s, "GET /metrics: %s", err);
        else
            retry(p, s, "GET /metrics: HTTP %ld", http);
        return;
    }
    if (ar_metrics_eval(body, len, p->file_hash, p->written_ms, p->success_before, &v) < 0) {
        retry(p, s, "GET /metrics: out of memory");
        return;
    }
    if (p->success_before < 0 && v.success_total >= 0 && !v.loaded)
        p->success_before = v.success_total;
    switch (s) {
    case S_PROBE:
        if (v.style != AR_METRICS_NONE) {
            p->step = S_METRICS;
            if (v.loaded)
                finish(p, 0, AR_NODE_PROOF_METRICS, "loaded %s (metrics)", p->file_hash);
            else
                retry(p, S_METRICS, "%s",
                      v.style == AR_METRICS_HASH ? "the loaded hash differs" : "no reload yet");
            return;
        }
        /* no reload metrics: READ of the config's write key (weaker), named as such */
        p->weaker = true;
        p->pi = p->ki = 0;
        name_write_key(p);
        p->goal = AR_PROVE_READ;
        p->step = S_READ_PUT;
        step_now(p);
        return;
    case S_WRITE_MET:
        if (v.loaded) {
            /* the reload may have landed after our write: write once more, now that it is
             * known loaded; a wrong key then is the server's fault (on_write_raw) */
            p->known_loaded = true;
            snprintf(p->loaded_what, sizeof(p->loaded_what), "%s",
                     v.style == AR_METRICS_HASH ? v.hash : "reload recorded");
            p->step = S_WRITE_PUT;
            step_now(p);
            return;
        }
        retry(p, S_WRITE_PUT, "the API server still writes secrets with %s, not %s (not loaded)",
              p->used_key, want_key(p, want, sizeof(want)));
        return;
    default:
        if (v.loaded) {
            finish(p, 0, AR_NODE_PROOF_METRICS, "loaded %s (%s)", p->file_hash,
                   v.style == AR_METRICS_HASH ? "last_config_info" : "reload after the write");
            return;
        }
        if (v.style == AR_METRICS_HASH)
            retry(p, S_METRICS, "the API server reports config hash %s",
                  v.hash[0] ? v.hash : "(none)");
        else if (v.style == AR_METRICS_RELOAD)
            retry(p, S_METRICS, "no successful reload since the file was written");
        else
            retry(p, S_METRICS,
                  "no encryption-config reload metrics in /metrics (is "
                  "--encryption-provider-config-automatic-reload on?)");
        return;
    }
}

/* --- canary READ --------------------------------------------------------------------------- */

static void on_read_get(void *arg, int status, long http, const char *body, size_t len,
                        const char *err)
{
    struct ar_proof *p = arg;
    char msg[200];
    int m = 0;

    p->req_api = NULL;
    if (status == -EACCES) {
        finish(p, -EACCES, AR_NODE_PROOF_NONE, "GET the canary: %s", err);
        return;
    }
    if (status < 0) {
        retry(p, S_READ_GET, "GET the canary: %s", err);
        return;
    }
    if (http == 200 &&
        (m = ar_proof_canary_matches(p->probe_b64, body, len, msg, sizeof(msg))) == 1) {
        char want[160];

        if (p->weaker)
            finish(p, 0, AR_NODE_PROOF_CANARY,
                   "the canary reads with %s (the write key; weaker than a metrics proof: the "
                   "API server exposes no reload metrics)",
                   want_key(p, want, sizeof(want)));
        else
            finish(p, 0, AR_NODE_PROOF_CANARY, "the canary written with %s reads",
                   want_key(p, want, sizeof(want)));
        return;
    }
    if (http == 200 && m < 0)
        retry(p, S_READ_GET, "GET the canary: HTTP 200 but the body is not a Secret (%s)", msg);
    else if (http == 200)
        retry(p, S_READ_GET, "the canary reads but its data differ (rewritten meanwhile?)");
    else if (http == 401 || http == 403)
        finish(p, -EACCES, AR_NODE_PROOF_NONE, "GET the canary: HTTP %ld (credentials)", http);
    else
        retry(p, S_READ_GET, "GET the canary: HTTP %ld: %s", http,
              ar_proof_peer_message(body, len, msg, sizeof(msg)));
}

static void on_read_put(void *arg, int status, const struct ar_etcd_result *res,
                        const struct ar_etcd_error *ee)
{
    struct ticket *t = arg;
    struct ar_proof *p = t->p;

    free(t);
    if (!p)
        return;
    p->ticket = NULL;
    if (status < 0) {
        retry(p, S_READ_PUT, "writing the canary into etcd: %s",
              ee && ee->msg[0] ? ee->msg : strerror(-status));
        return;
    }
    ar_log(AR_LOG_DEBUG, "proof: canary %s in etcd at revision %" PRId64,
           res && res->succeeded ? "created" : "replaced", res ? res->revision : 0);
    p->canary_rev = res ? res->revision : 0;
    p->step = S_READ_GET;
    step_now(p);
}

static void do_read_put(struct ar_proof *p)
{
    char key[600], *js = NULL;
    size_t jlen;
    struct ar_buf val = AR_BUF_INIT;
    struct ar_result res;
    struct ar_etcd_op put;
    struct ar_etcd_compare cmp;
    struct ar_etcd_txn txn;
    int r;

    if (!p->etcd) {
        finish(p, -ENOTCONN, AR_NODE_PROOF_NONE,
               "the canary proof needs etcd access (etcd.endpoints) to write the canary");
        return;
    }
    etcd_key(p, key, sizeof(key));
    if ((r = new_probe(p)) < 0 || (r = canary_json(p, true, &js, &jlen)) < 0) {
        finish(p, r, AR_NODE_PROOF_NONE, "building the canary: %s", strerror(-r));
        return;
    }
    r = ar_chain_write_with(p->chain, "", "secrets", p->pi, p->ki, (const uint8_t *)key,
                            strlen(key), (const uint8_t *)js, jlen, &val, &res);
    sodium_free(js);
    if (r < 0) {
        ar_buf_free(&val);
        finish(p, r, AR_NODE_PROOF_NONE, "encrypting the canary: %s", res.err);
        return;
    }
    memset(&put, 0, sizeof(put));
    put.type = AR_ETCD_PUT;
    put.key = (const uint8_t *)key;
    put.key_len = strlen(key);
    put.value = val.p;
    put.value_len = val.len;
    memset(&cmp, 0, sizeof(cmp));
    cmp.key = put.key;
    cmp.key_len = put.key_len;
    cmp.target = AR_ETCD_CMP_CREATE;
    cmp.result = AR_ETCD_EQUAL;
    cmp.number = 0;
    txn = (struct ar_etcd_txn){.compare = &cmp,
                               .n_compare = 1,
                               .success = &put,
                               .n_success = 1,
                               .failure = &put,
                               .n_failure = 1};
    if (!(p->ticket = calloc(1, sizeof(*p->ticket)))) {
        ar_buf_free(&val);
        finish(p, -ENOMEM, AR_NODE_PROOF_NONE, "out of memory");
        return;
    }
    p->ticket->p = p;
    r = ar_etcd_txn(p->etcd, &txn, on_read_put, p->ticket);
    ar_buf_free(&val);
    if (r < 0) {
        free(p->ticket);
        p->ticket = NULL;
        retry(p, S_READ_PUT, "writing the canary into etcd: %s", strerror(-r));
    }
}

/* --- canary WRITE -------------------------------------------------------------------------- */

/* "aescbc:key1", "identity", "kms:name" of a stored value (k8s:enc:<type>:v1:<key>:...). */
static void stored_key(const uint8_t *v, size_t n, char *dst, size_t dn)
{
    static const char pre[] = "k8s:enc:";
    const char *s = (const char *)v, *t, *tend, *k, *kend;
    size_t start = sizeof(pre) - 1;

    if (n < start || memcmp(v, pre, start)) {
        snprintf(dst, dn, "identity");
        return;
    }
    t = s + start;
    tend = memchr(t, ':', n - start);                                    /* after <type> */
    k = tend ? memchr(tend + 1, ':', n - (size_t)(tend + 1 - s)) : NULL; /* after v1 */
    kend = k ? memchr(k + 1, ':', n - (size_t)(k + 1 - s)) : NULL;       /* after <key> */
    if (!tend || !k || !kend || kend - k > 100 || tend - t > 20)
        snprintf(dst, dn, "unknown");
    else
        snprintf(dst, dn, "%.*s:%.*s", (int)(tend - t), t, (int)(kend - k - 1), k + 1);
}

static void on_write_raw(void *arg, int status, const struct ar_etcd_result *res,
                         const struct ar_etcd_error *ee)
{
    struct ticket *t = arg;
    struct ar_proof *p = t->p;
    char want[160];
    bool ours;

    free(t);
    if (!p)
        return;
    p->ticket = NULL;
    if (status < 0) {
        retry(p, S_WRITE_RAW, "reading the canary from etcd: %s",
              ee && ee->msg[0] ? ee->msg : strerror(-status));
        return;
    }
    if (!res || res->n_kvs != 1) {
        retry(p, S_WRITE_PUT, "the canary is not in etcd after the write (wrong etcdPrefix?)");
        return;
    }
    stored_key(res->kvs[0].value, res->kvs[0].value_len, p->used_key, sizeof(p->used_key));
    want_key(p, want, sizeof(want));
    /* our write? (the stored form may be protobuf: compare revisions, not bytes) */
    ours = !p->write_rv || res->kvs[0].mod_revision == p->write_rv;
    ar_log(AR_LOG_DEBUG,
           "proof: canary stored with %s at mod_revision %" PRId64 " (our write: %" PRId64
           ", known loaded: %s)",
           p->used_key, res->kvs[0].mod_revision, p->write_rv, p->known_loaded ? "yes" : "no");
    if (!strcmp(p->used_key, want) && ours) {
        finish(p, 0, AR_NODE_PROOF_CANARY, "the API server writes secrets with %s", want);
        return;
    }
    if (!strcmp(p->used_key, want)) {
        retry(p, S_WRITE_PUT, "the canary in etcd is not the one written (concurrent writer?)");
        return;
    }
    if (p->known_loaded) {
        finish(p, -EBADMSG, AR_NODE_PROOF_NONE,
               "the API server loaded phase %s (%s) but writes secrets with %s, not %s", p->phase,
               p->loaded_what, p->used_key, want);
        return;
    }
    /* another key: loaded-but-wrong or not loaded yet? Ask the metrics. */
    p->step = S_WRITE_MET;
    step_now(p);
}

static void on_write_put(void *arg, int status, long http, const char *body, size_t len,
                         const char *err)
{
    struct ar_proof *p = arg;
    struct ar_etcd_op op;
    char key[600], msg[200];
    int r;

    p->req_api = NULL;
    if (status == -EACCES) {
        finish(p, -EACCES, AR_NODE_PROOF_NONE, "writing the canary: %s", err);
        return;
    }
    if (status < 0) {
        retry(p, S_WRITE_PUT, "writing the canary through the API server: %s", err);
        return;
    }
    if (http == 404 && !p->create) {
        p->create = true;
        p->step = S_WRITE_PUT;
        step_now(p);
        return;
    }
    if (http == 409 && p->create) {
        p->create = false;
        retry(p, S_WRITE_PUT, "the canary was created meanwhile");
        return;
    }
    if (http == 401 || http == 403) {
        finish(p, -EACCES, AR_NODE_PROOF_NONE,
               "writing the canary: HTTP %ld (the credentials need update/create on secrets "
               "%s/%s)",
               http, p->ns, p->name);
        return;
    }
    if (http != 200 && http != 201) {
        retry(p, S_WRITE_PUT, "writing the canary: HTTP %ld: %s", http,
              ar_proof_peer_message(body, len, msg, sizeof(msg)));
        return;
    }
    p->write_rv = 0;
    ar_log(AR_LOG_DEBUG, "proof: %s of the canary: HTTP %ld", p->create ? "POST" : "PUT", http);
    {
        json_t *o = json_loadb(body, len, 0, NULL);
        const char *rv =
            json_string_value(json_object_get(json_object_get(o, "metadata"), "resourceVersion"));

        if (rv)
            p->write_rv = strtoll(rv, NULL, 10);
        json_decref(o);
    }
    if (!p->etcd) {
        finish(p, -ENOTCONN, AR_NODE_PROOF_NONE,
               "the canary proof needs etcd access (etcd.endpoints) to read the stored value");
        return;
    }
    etcd_key(p, key, sizeof(key));
    memset(&op, 0, sizeof(op));
    op.type = AR_ETCD_RANGE;
    op.key = (const uint8_t *)key;
    op.key_len = strlen(key);
    if (!(p->ticket = calloc(1, sizeof(*p->ticket)))) {
        finish(p, -ENOMEM, AR_NODE_PROOF_NONE, "out of memory");
        return;
    }
    p->ticket->p = p;
    p->step = S_WRITE_RAW;
    r = ar_etcd_range(p->etcd, &op, on_write_raw, p->ticket);
    if (r < 0) {
        free(p->ticket);
        p->ticket = NULL;
        retry(p, S_WRITE_PUT, "reading the canary from etcd: %s", strerror(-r));
    }
}

static void do_write_put(struct ar_proof *p)
{
    char path[700], *js = NULL;
    size_t jlen;
    int r;

    if ((r = new_probe(p)) < 0 || (r = canary_json(p, false, &js, &jlen)) < 0) {
        finish(p, r, AR_NODE_PROOF_NONE, "building the canary: %s", strerror(-r));
        return;
    }
    if (p->create)
        snprintf(path, sizeof(path), "/api/v1/namespaces/%s/secrets", p->ns);
    else
        snprintf(path, sizeof(path), "/api/v1/namespaces/%s/secrets/%s", p->ns, p->name);
    r = ar_api_request(p->api, p->create ? "POST" : "PUT", path, js, jlen, 10000, on_write_put, p,
                       &p->req_api);
    sodium_free(js);
    if (r < 0)
        retry(p, S_WRITE_PUT, "writing the canary: %s", strerror(-r));
}

/* --- restart ------------------------------------------------------------------------------- */

static void on_readyz(void *arg, int status, long http, const char *body, size_t len,
                      const char *err)
{
    struct ar_proof *p = arg;

    (void)body;
    (void)len;
    p->req_api = NULL;
    if (status == -EACCES) {
        finish(p, -EACCES, AR_NODE_PROOF_NONE, "GET /readyz: %s", err);
        return;
    }
    if (status == 0 && http == 200) {
        finish(p, 0, AR_NODE_PROOF_RESTART, "restarted and ready");
        return;
    }
    if (status < 0)
        retry(p, S_READYZ, "GET /readyz: %s", err);
    else
        retry(p, S_READYZ, "GET /readyz: HTTP %ld", http);
}

static void proc_closed(uv_handle_t *h)
{
    free(h);
}

static void on_exit_cb(uv_process_t *proc, int64_t exit_status, int term_signal)
{
    struct ar_proof *p = proc->data;

    uv_close((uv_handle_t *)proc, proc_closed);
    if (!p)
        return;
    p->proc = NULL;
    if (term_signal) {
        finish(p, -EIO, AR_NODE_PROOF_NONE, "the reload command was killed by signal %d",
               term_signal);
        return;
    }
    if (exit_status != 0) {
        finish(p, -EIO, AR_NODE_PROOF_NONE, "the reload command exited with status %" PRId64,
               exit_status);
        return;
    }
    p->step = S_READYZ;
    step_now(p);
}

/* argv of the reload command: blank-separated words, or /bin/sh -c when it uses shell syntax. */
static int command_argv(const char *cmd, char *buf, size_t cap, char **argv, size_t max)
{
    size_t n = 0, o = 0;

    if (strpbrk(cmd, "'\"$|;&<>`\\*?(){}~")) {
        argv[0] = (char *)"/bin/sh";
        argv[1] = (char *)"-c";
        argv[2] = (char *)cmd;
        argv[3] = NULL;
        return 0;
    }
    for (const char *c = cmd; *c;) {
        while (*c == ' ' || *c == '\t')
            c++;
        if (!*c)
            break;
        if (n + 1 >= max)
            return -E2BIG;
        argv[n++] = buf + o;
        while (*c && *c != ' ' && *c != '\t' && o + 1 < cap)
            buf[o++] = *c++;
        if (o + 1 >= cap)
            return -E2BIG;
        buf[o++] = 0;
    }
    argv[n] = NULL;
    return n ? 0 : -EINVAL;
}

static void do_spawn(struct ar_proof *p)
{
    char buf[4096], *argv[MAX_ARGS];
    uv_process_options_t o;
    uv_stdio_container_t stdio[3];
    int r;

    if (!p->reload_command || !*p->reload_command) {
        finish(p, -EINVAL, AR_NODE_PROOF_NONE, "proof mode restart needs proof.reloadCommand");
        return;
    }
    if ((r = command_argv(p->reload_command, buf, sizeof(buf), argv, MAX_ARGS)) < 0) {
        finish(p, r, AR_NODE_PROOF_NONE, "proof.reloadCommand: %s", strerror(-r));
        return;
    }
    memset(&o, 0, sizeof(o));
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_INHERIT_FD;
    stdio[1].data.fd = 2; /* the command's output goes to our log (stderr) */
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = 2;
    o.file = argv[0];
    o.args = argv;
    o.exit_cb = on_exit_cb;
    o.stdio = stdio;
    o.stdio_count = 3;
    if (!(p->proc = calloc(1, sizeof(*p->proc)))) {
        finish(p, -ENOMEM, AR_NODE_PROOF_NONE, "out of memory");
        return;
    }
    p->proc->data = p;
    r = uv_spawn(p->loop, p->proc, &o);
    if (r < 0) {
        uv_close((uv_handle_t *)p->proc, proc_closed);
        p->proc = NULL;
        finish(p, r, AR_NODE_PROOF_NONE, "cannot run the reload command %s: %s", argv[0],
               uv_strerror(r));
        return;
    }
    ar_log(AR_LOG_INFO, "proof: running the reload command for phase %s", p->phase);
    snprintf(p->detail, sizeof(p->detail), "the reload command");
}

/* --- driver -------------------------------------------------------------------------------- */

static void step_now(struct ar_proof *p)
{
    char path[700];
    int r = 0;

    if (!p->running)
        return;
    switch (p->step) {
    case S_METRICS:
    case S_PROBE:
    case S_WRITE_MET:
        r = ar_api_request(p->api, "GET", "/metrics", NULL, 0, 10000, on_metrics, p, &p->req_api);
        break;
    case S_READ_PUT:
        do_read_put(p);
        return;
    case S_READ_GET:
        snprintf(path, sizeof(path), "/api/v1/namespaces/%s/secrets/%s", p->ns, p->name);
        r = ar_api_request(p->api, "GET", path, NULL, 0, 10000, on_read_get, p, &p->req_api);
        break;
    case S_WRITE_PUT:
        do_write_put(p);
        return;
    case S_WRITE_RAW:
        /* only reached by retry after an etcd error: the write is redone */
        p->step = S_WRITE_PUT;
        do_write_put(p);
        return;
    case S_SPAWN:
        do_spawn(p);
        return;
    case S_READYZ:
        r = ar_api_request(p->api, "GET", "/readyz", NULL, 0, 10000, on_readyz, p, &p->req_api);
        break;
    case S_IDLE:
        return;
    }
    if (r < 0)
        retry(p, p->step, "request: %s", strerror(-r));
}

static void on_start(uv_timer_t *t)
{
    step_now(t->data);
}

/* The index of (type, key_name) in secrets' provider list of the chain. */
static int find_key(struct ar_proof *p)
{
    struct ar_plist pl;

    ar_chain_lookup(p->chain, "", "secrets", &pl);
    if (!pl.n && p->type == AR_P_IDENTITY) {
        p->pi = p->ki = 0;
        return 0;
    }
    for (size_t i = 0; i < pl.n; i++) {
        const struct ar_provider *pv = pl.v[i];

        if (pv->type != p->type)
            continue;
        if (pv->type == AR_P_IDENTITY) {
            p->pi = i;
            p->ki = 0;
            return 0;
        }
        if (pv->type == AR_P_KMS)
            return -ENOPKG;
        for (size_t k = 0; k < pv->nkeys; k++) {
            if (p->key_name && !strcmp(pv->keys[k].name, p->key_name)) {
                p->pi = i;
                p->ki = k;
                return 0;
            }
        }
    }
    return -ENOENT;
}

static int dup_str(char **dst, const char *s)
{
    *dst = NULL;
    if (!s)
        return 0;
    return (*dst = strdup(s)) ? 0 : -ENOMEM;
}

int ar_proof_start(struct ar_proof *p, const struct ar_prove_req *req, ar_node_prove_done done,
                   void *done_arg)
{
    char want[160];
    int r;

    if (!p || !req || !done || !req->cfg)
        return -EINVAL;
    if (p->running)
        finish(p, -ECANCELED, AR_NODE_PROOF_NONE, "cancelled by a new proof request");
    p->done = done;
    p->done_arg = done_arg;
    p->goal = req->goal;
    p->type = req->type;
    p->written_ms = req->written_ms;
    p->start_ms = wall_ms();
    p->start_mono = mono_ms();
    p->success_before = -1;
    p->create = false;
    p->weaker = false;
    p->known_loaded = false;
    p->loaded_what[0] = 0;
    p->attempts = 0;
    p->used_key[0] = p->detail[0] = 0;
    /* a failed proof of the same phase stays reported while it is tried again */
    snprintf(want, sizeof(want), "%s/%s", req->rotation_id ? req->rotation_id : "",
             req->phase ? req->phase : "?");
    if (strcmp(want, p->last_for))
        p->last_error[0] = 0;
    p->cfg = ar_config_ref(req->cfg);
    if (dup_str(&p->file_hash, req->file_hash) < 0 || dup_str(&p->key_name, req->key_name) < 0 ||
        dup_str(&p->rotation_id, req->rotation_id) < 0 ||
        dup_str(&p->phase, req->phase ? req->phase : "?") < 0) {
        r = -ENOMEM;
        goto fail;
    }
    if ((r = ar_chain_new(p->cfg, &p->chain)) < 0)
        goto fail;
    p->running = true;
    switch (p->mode) {
    case AR_PROOF_RESTART:
        p->step = S_SPAWN;
        break;
    case AR_PROOF_METRICS:
        p->step = S_METRICS; /* every goal: the file's hash, or a reload after the write */
        break;
    default:
        if (req->goal == AR_PROVE_LOADED) {
            p->step = S_PROBE;
            break;
        }
        if ((r = find_key(p)) < 0) {
            p->running = false;
            ar_log(AR_LOG_WARN, "proof: phase %s: %s is not in secrets' providers", p->phase,
                   want_key(p, want, sizeof(want)));
            goto fail;
        }
        p->step = req->goal == AR_PROVE_READ ? S_READ_PUT : S_WRITE_PUT;
        break;
    }
    /* start from the loop, never inside this call */
    uv_timer_start(p->timer, on_start, 0, 0);
    return 0;
fail:
    clear_request(p);
    p->done = NULL;
    return r;
}

void ar_proof_status(const struct ar_proof *p, struct ar_proof_progress *out)
{
    const char *what = "load";
    char stuck[96] = "";

    memset(out, 0, sizeof(*out));
    if (!p)
        return;
    snprintf(out->last_error, sizeof(out->last_error), "%s", p->last_error);
    if (!p->running)
        return;
    out->running = true;
    out->since_ms = p->start_ms;
    out->waited_s = (unsigned)((mono_ms() - p->start_mono) / 1000u);
    out->stuck = out->waited_s >= p->warn_after_s;
    if (p->step == S_SPAWN)
        what = "be restarted by the reload command for";
    else if (p->step == S_READYZ)
        what = "become ready after the restart for";
    if (out->stuck)
        snprintf(stuck, sizeof(stuck), "; it looks stuck (no proof after %u s), still waiting",
                 p->warn_after_s);
    snprintf(out->waiting_for, sizeof(out->waiting_for),
             "waiting for %s's API server to %s phase %s: %u s%s%s", p->node, what, p->phase,
             out->waited_s, p->mode == AR_PROOF_RESTART ? "" : ", it polls every 60 s", stuck);
}

void ar_proof_set_retry_ms(struct ar_proof *p, unsigned ms)
{
    p->retry_ms = ms ? ms : 1;
}

static void timer_closed(uv_handle_t *h)
{
    free(h);
}

void ar_proof_free(struct ar_proof *p)
{
    if (!p)
        return;
    if (p->running)
        finish(p, -ECANCELED, AR_NODE_PROOF_NONE, "cancelled (proof of load stopped)");
    if (p->proc) {
        p->proc->data = NULL; /* its exit callback closes it */
        uv_process_kill(p->proc, SIGTERM);
        p->proc = NULL;
    }
    if (p->timer) {
        uv_timer_stop(p->timer);
        uv_close((uv_handle_t *)p->timer, timer_closed);
    }
    ar_api_free(p->api);
    free(p->prefix);
    free(p->ns);
    free(p->name);
    free(p->node);
    free(p->reload_command);
    free(p);
}

/* One canary per member: "<name>-<node>" (the node lowercased, other characters than letters,
 * digits, '-' and '.' as '-', at most 253 bytes), so members proving at once never rewrite each
 * other's canary. */
static char *canary_name(const char *base, const char *node)
{
    size_t bl = strlen(base), nl = node ? strlen(node) : 0;
    char *n;

    if (bl + 1 + nl > 253)
        nl = bl + 1 < 253 ? 253 - bl - 1 : 0;
    n = malloc(bl + 1 + nl + 1);
    if (!n)
        return NULL;
    memcpy(n, base, bl);
    n[bl] = '\0';
    if (nl) {
        n[bl] = '-';
        for (size_t i = 0; i < nl; i++) {
            char c = node[i];
            if (c >= 'A' && c <= 'Z')
                c = (char)(c - 'A' + 'a');
            n[bl + 1 + i] =
                ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.') ? c : '-';
        }
        n[bl + 1 + nl] = '\0';
    }
    return n;
}

int ar_proof_new_err(uv_loop_t *loop, const struct ar_settings *s, struct ar_etcd *etcd,
                     const char *etcd_registry_prefix, struct ar_proof **out, char *err,
                     size_t errlen)
{
    struct ar_proof *p;
    const char *pre = etcd_registry_prefix ? etcd_registry_prefix : "/registry";
    int r;

    *out = NULL;
    err[0] = 0;
    if (!loop || !s)
        return -EINVAL;
    if (!(p = calloc(1, sizeof(*p))))
        return -ENOMEM;
    p->loop = loop;
    p->etcd = etcd;
    p->mode = s->proof;
    p->warn_after_s = s->warn_after_s ? s->warn_after_s : 180;
    p->retry_ms = 2000;
    p->prefix = strndup(pre, strlen(pre) - (pre[0] && pre[strlen(pre) - 1] == '/'));
    p->ns = strdup(s->canary_namespace ? s->canary_namespace : "kube-system");
    p->name = canary_name(s->canary_name ? s->canary_name : "atrest-canary", s->node);
    p->node = strdup(s->node ? s->node : "this node");
    if (s->reload_command)
        p->reload_command = strdup(s->reload_command);
    p->timer = calloc(1, sizeof(*p->timer));
    if (!p->prefix || !p->ns || !p->name || !p->node || !p->timer ||
        (s->reload_command && !p->reload_command)) {
        free(p->timer);
        p->timer = NULL;
        ar_proof_free(p);
        return -ENOMEM;
    }
    uv_timer_init(loop, p->timer);
    p->timer->data = p;
    r = ar_api_new(loop, s, &p->api, err, errlen);
    if (r < 0) {
        ar_proof_free(p);
        return r;
    }
    *out = p;
    return 0;
}

int ar_proof_new(uv_loop_t *loop, const struct ar_settings *s, struct ar_etcd *etcd,
                 const char *etcd_registry_prefix, struct ar_proof **out)
{
    char err[512];
    int r = ar_proof_new_err(loop, s, etcd, etcd_registry_prefix, out, err, sizeof(err));

    if (r < 0)
        ar_log(AR_LOG_ERR, "proof of load: %s", err[0] ? err : strerror(-r));
    return r;
}
