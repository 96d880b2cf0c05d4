/* agent/metrics.c: a tiny Prometheus registry and text renderer (see metrics.h). */
#include "agent/metrics.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct series {
    char *labels; /* rendered: name="escaped",name2="escaped2" ("" for none) */
    double v;
};

struct metric {
    char *name;
    char *help;
    enum ar_metric_type type;
    char *label_names; /* "a,b"; NULL until the first series fixes them */
    struct series *s;
    size_t n, cap;
};

struct ar_metrics {
    struct metric *v;
    size_t n, cap;
};

struct ar_metrics *ar_metrics_new(void)
{
    return calloc(1, sizeof(struct ar_metrics));
}

static void series_clear(struct metric *mt)
{
    for (size_t i = 0; i < mt->n; i++)
        free(mt->s[i].labels);
    mt->n = 0;
}

void ar_metrics_free(struct ar_metrics *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++) {
        struct metric *mt = &m->v[i];
        series_clear(mt);
        free(mt->s);
        free(mt->name);
        free(mt->help);
        free(mt->label_names);
    }
    free(m->v);
    free(m);
}

/* ---- names and escaping --------------------------------------------------------------------- */

static bool valid_name(const char *s, bool label)
{
    if (!s || !*s)
        return false;
    if (label && s[0] == '_' && s[1] == '_')
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool alpha =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (!label && c == ':');
        bool digit = c >= '0' && c <= '9';
        if (!alpha && !(digit && p != s))
            return false;
    }
    return true;
}

/* A small growable string. */
struct sb {
    char *p;
    size_t len, cap;
    int err;
};

static void sb_add(struct sb *b, const char *s, size_t n)
{
    if (b->err)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->err = -ENOMEM;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(struct sb *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

/* label values: \ " newline; help: \ newline */
static void sb_escaped(struct sb *b, const char *s, bool quote)
{
    for (const char *p = s; *p; p++) {
        if (*p == '\\')
            sb_add(b, "\\\\", 2);
        else if (*p == '\n')
            sb_add(b, "\\n", 2);
        else if (quote && *p == '"')
            sb_add(b, "\\\"", 2);
        else
            sb_add(b, p, 1);
    }
}

static void format_value(double v, char buf[40])
{
    if (isnan(v))
        snprintf(buf, 40, "NaN");
    else if (isinf(v))
        snprintf(buf, 40, v > 0 ? "+Inf" : "-Inf");
    else if (v == 0)
        snprintf(buf, 40, "0");
    else if (v == trunc(v) && fabs(v) < 1e15)
        snprintf(buf, 40, "%.0f", v);
    else {
        snprintf(buf, 40, "%.15g", v);
        if (strtod(buf, NULL) != v)
            snprintf(buf, 40, "%.17g", v);
    }
}

/* ---- lookup --------------------------------------------------------------------------------- */

static struct metric *find(const struct ar_metrics *m, const char *name)
{
    for (size_t i = 0; i < m->n; i++)
        if (!strcmp(m->v[i].name, name))
            return &m->v[i];
    return NULL;
}

static int get_metric(struct ar_metrics *m, const char *name, enum ar_metric_type type,
                      const char *help, struct metric **out)
{
    if (!m || !valid_name(name, false))
        return -EINVAL;
    struct metric *mt = find(m, name);
    if (mt) {
        if (mt->type != type || (help && strcmp(help, mt->help)))
            return -EINVAL;
        *out = mt;
        return 0;
    }
    if (!help)
        return -EINVAL;
    if (m->n == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 16;
        struct metric *nv = realloc(m->v, cap * sizeof(*nv));
        if (!nv)
            return -ENOMEM;
        m->v = nv;
        m->cap = cap;
    }
    mt = &m->v[m->n];
    memset(mt, 0, sizeof(*mt));
    mt->name = strdup(name);
    mt->help = strdup(help);
    mt->type = type;
    if (!mt->name || !mt->help) {
        free(mt->name);
        free(mt->help);
        return -ENOMEM;
    }
    m->n++;
    *out = mt;
    return 0;
}

/* Render the label pairs of ap into *labels and their names into *names (both malloc'd). */
static int collect_labels(va_list ap, char **labels, char **names)
{
    struct sb lb = {0}, nb = {0};
    int rc = 0;
    const char *prev[AR_METRICS_MAX_LABELS];
    size_t n = 0;
    sb_add(&lb, "", 0);
    sb_add(&nb, "", 0);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k)
            break;
        const char *v = va_arg(ap, const char *);
        if (!v || !valid_name(k, true) || n == AR_METRICS_MAX_LABELS) {
            rc = -EINVAL;
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            if (!strcmp(prev[i], k)) {
                rc = -EINVAL;
                goto out;
            }
        }
        prev[n] = k;
        if (n++) {
            sb_add(&lb, ",", 1);
            sb_add(&nb, ",", 1);
        }
        sb_str(&lb, k);
        sb_add(&lb, "=\"", 2);
        sb_escaped(&lb, v, true);
        sb_add(&lb, "\"", 1);
        sb_str(&nb, k);
    }
    rc = lb.err ? lb.err : nb.err;
out:
    if (rc < 0) {
        free(lb.p);
        free(nb.p);
        return rc;
    }
    *labels = lb.p;
    *names = nb.p;
    return 0;
}

/* Find or add the series with these labels; takes ownership of labels and names. */
static int get_series(struct metric *mt, char *labels, char *names, struct series **out)
{
    int rc = 0;
    if (mt->label_names && strcmp(mt->label_names, names)) {
        rc = -EINVAL;
        goto out;
    }
    for (size_t i = 0; i < mt->n; i++) {
        if (!strcmp(mt->s[i].labels, labels)) {
            *out = &mt->s[i];
            goto out;
        }
    }
    if (mt->n == AR_METRICS_MAX_SERIES) {
        rc = -ENOSPC;
        goto out;
    }
    if (mt->n == mt->cap) {
        size_t cap = mt->cap ? 2 * mt->cap : 4;
        struct series *ns = realloc(mt->s, cap * sizeof(*ns));
        if (!ns) {
            rc = -ENOMEM;
            goto out;
        }
        mt->s = ns;
        mt->cap = cap;
    }
    if (!mt->label_names) {
        mt->label_names = names;
        names = NULL;
    }
    mt->s[mt->n].labels = labels;
    mt->s[mt->n].v = 0;
    labels = NULL;
    *out = &mt->s[mt->n++];
out:
    free(labels);
    free(names);
    return rc;
}

/* Labels first (so a bad call declares nothing), then the metric, then the series. */
static int lookup(struct ar_metrics *m, const char *name, enum ar_metric_type type,
                  const char *help, va_list ap, struct series **out)
{
    char *labels = NULL, *names = NULL;
    struct metric *mt;
    int rc = collect_labels(ap, &labels, &names);
    if (rc < 0)
        return rc;
    rc = get_metric(m, name, type, help, &mt);
    if (rc < 0) {
        free(labels);
        free(names);
        return rc;
    }
    return get_series(mt, labels, names, out);
}

/* ---- public API ----------------------------------------------------------------------------- */

int ar_metric_declare(struct ar_metrics *m, const char *name, enum ar_metric_type type,
                      const char *help)
{
    struct metric *mt;
    return get_metric(m, name, type, help ? help : "", &mt);
}

int ar_metric_counter_add(struct ar_metrics *m, const char *name, const char *help, double delta,
                          ...)
{
    if (!(delta >= 0) || isinf(delta))
        return -EINVAL;
    struct series *s;
    va_list ap;
    va_start(ap, delta);
    int rc = lookup(m, name, AR_METRIC_COUNTER, help, ap, &s);
    va_end(ap);
    if (rc == 0)
        s->v += delta;
    return rc;
}

int ar_metric_gauge_set(struct ar_metrics *m, const char *name, const char *help, double value, ...)
{
    struct series *s;
    va_list ap;
    va_start(ap, value);
    int rc = lookup(m, name, AR_METRIC_GAUGE, help, ap, &s);
    va_end(ap);
    if (rc == 0)
        s->v = value;
    return rc;
}

int ar_metric_info_set(struct ar_metrics *m, const char *name, const char *help, ...)
{
    struct metric *mt;
    struct series *s;
    char *labels = NULL, *names = NULL;
    va_list ap;
    va_start(ap, help);
    int rc = collect_labels(ap, &labels, &names);
    va_end(ap);
    if (rc < 0)
        return rc;
    rc = get_metric(m, name, AR_METRIC_GAUGE, help, &mt);
    /* Check the new label set before dropping the old series. */
    if (rc == 0 && labels[0] && mt->label_names && strcmp(mt->label_names, names))
        rc = -EINVAL;
    if (rc < 0 || !labels[0]) {
        if (rc == 0)
            series_clear(mt);
        free(labels);
        free(names);
        return rc;
    }
    series_clear(mt);
    rc = get_series(mt, labels, names, &s);
    if (rc == 0)
        s->v = 1;
    return rc;
}

bool ar_metric_get(const struct ar_metrics *m, const char *name, double *value, ...)
{
    const struct metric *mt = m ? find(m, name) : NULL;
    if (!mt)
        return false;
    char *labels = NULL, *names = NULL;
    va_list ap;
    va_start(ap, value);
    int rc = collect_labels(ap, &labels, &names);
    va_end(ap);
    bool found = false;
    for (size_t i = 0; rc == 0 && i < mt->n; i++) {
        if (!strcmp(mt->s[i].labels, labels)) {
            if (value)
                *value = mt->s[i].v;
            found = true;
            break;
        }
    }
    free(labels);
    free(names);
    return found;
}

int ar_metrics_render(const struct ar_metrics *m, char **out, size_t *outlen)
{
    struct sb b = {0};
    char num[40];
    sb_add(&b, "", 0);
    for (size_t i = 0; m && i < m->n; i++) {
        const struct metric *mt = &m->v[i];
        sb_str(&b, "# HELP ");
        sb_str(&b, mt->name);
        sb_add(&b, " ", 1);
        sb_escaped(&b, mt->help, false);
        sb_str(&b, "\n# TYPE ");
        sb_str(&b, mt->name);
        sb_str(&b, mt->type == AR_METRIC_COUNTER ? " counter\n" : " gauge\n");
        for (size_t j = 0; j < mt->n; j++) {
            sb_str(&b, mt->name);
            if (mt->s[j].labels[0]) {
                sb_add(&b, "{", 1);
                sb_str(&b, mt->s[j].labels);
                sb_add(&b, "}", 1);
            }
            format_value(mt->s[j].v, num);
            sb_add(&b, " ", 1);
            sb_str(&b, num);
            sb_add(&b, "\n", 1);
        }
    }
    if (b.err) {
        free(b.p);
        return b.err;
    }
    *out = b.p;
    if (outlen)
        *outlen = b.len;
    return 0;
}

/* ---- atrest's metrics ----------------------------------------------------------------------- */

#define H_RELOADS   "Reloads of the desired encryption configuration, by result."
#define H_RELOAD_TS "Unix time of the last reload of the desired configuration, by result."
#define H_LAST_CONFIG                                                                              \
    "The effective encryption configuration in force: hash of its file's bytes (value 1)."
#define H_DESIRED_CONFIG   "The desired configuration file as last read: hash of its bytes (value 1)."
#define H_DESIRED_INVALID  "1 when the desired configuration file as last read is invalid, else 0."
#define H_EFFECTIVE_WRITES "Times the effective configuration file was written."
#define H_CHAIN_SWAPS      "Times a new provider chain was swapped in."
#define H_ETCD_REQUESTS    "Requests to etcd, by operation and result."
#define H_BUILD_INFO       "Build information of the atrest agent (value 1)."

int ar_metrics_atrest_init(struct ar_metrics *m, const char *version)
{
    int rc;
    if ((rc = ar_metric_counter_add(m, AR_M_RELOADS, H_RELOADS, 0, "status", "success", NULL)) ||
        (rc = ar_metric_counter_add(m, AR_M_RELOADS, H_RELOADS, 0, "status", "failure", NULL)) ||
        (rc = ar_metric_declare(m, AR_M_RELOAD_TS, AR_METRIC_GAUGE, H_RELOAD_TS)) ||
        (rc = ar_metric_declare(m, AR_M_LAST_CONFIG, AR_METRIC_GAUGE, H_LAST_CONFIG)) ||
        (rc = ar_metric_declare(m, AR_M_DESIRED_CONFIG, AR_METRIC_GAUGE, H_DESIRED_CONFIG)) ||
        (rc = ar_metric_gauge_set(m, AR_M_DESIRED_INVALID, H_DESIRED_INVALID, 0, NULL)) ||
        (rc = ar_metric_counter_add(m, AR_M_EFFECTIVE_WRITES, H_EFFECTIVE_WRITES, 0, NULL)) ||
        (rc = ar_metric_counter_add(m, AR_M_CHAIN_SWAPS, H_CHAIN_SWAPS, 0, NULL)) ||
        (rc = ar_metric_declare(m, AR_M_ETCD_REQUESTS, AR_METRIC_COUNTER, H_ETCD_REQUESTS)) ||
        (rc = ar_metric_info_set(m, AR_M_BUILD_INFO, H_BUILD_INFO, "version",
                                 version ? version : "unknown", NULL)))
        return rc;
    return 0;
}

int ar_metrics_reload(struct ar_metrics *m, bool ok, double now_s)
{
    const char *st = ok ? "success" : "failure";
    int rc = ar_metric_counter_add(m, AR_M_RELOADS, H_RELOADS, 1, "status", st, NULL);
    if (rc == 0)
        rc = ar_metric_gauge_set(m, AR_M_RELOAD_TS, H_RELOAD_TS, now_s, "status", st, NULL);
    return rc;
}

int ar_metrics_last_config(struct ar_metrics *m, const char *hash)
{
    if (!hash)
        return ar_metric_info_set(m, AR_M_LAST_CONFIG, H_LAST_CONFIG, NULL);
    return ar_metric_info_set(m, AR_M_LAST_CONFIG, H_LAST_CONFIG, "hash", hash, NULL);
}

int ar_metrics_desired(struct ar_metrics *m, const char *hash, bool invalid)
{
    int rc = hash ? ar_metric_info_set(m, AR_M_DESIRED_CONFIG, H_DESIRED_CONFIG, "hash", hash, NULL)
                  : ar_metric_info_set(m, AR_M_DESIRED_CONFIG, H_DESIRED_CONFIG, NULL);
    if (rc == 0)
        rc = ar_metric_gauge_set(m, AR_M_DESIRED_INVALID, H_DESIRED_INVALID, invalid ? 1 : 0, NULL);
    return rc;
}

int ar_metrics_effective_write(struct ar_metrics *m)
{
    return ar_metric_counter_add(m, AR_M_EFFECTIVE_WRITES, H_EFFECTIVE_WRITES, 1, NULL);
}

int ar_metrics_chain_swap(struct ar_metrics *m)
{
    return ar_metric_counter_add(m, AR_M_CHAIN_SWAPS, H_CHAIN_SWAPS, 1, NULL);
}

int ar_metrics_etcd_request(struct ar_metrics *m, const char *op, const char *result)
{
    return ar_metric_counter_add(m, AR_M_ETCD_REQUESTS, H_ETCD_REQUESTS, 1, "op", op, "result",
                                 result, NULL);
}

/* ---- the rotation ---------------------------------------------------------------------------- */

int ar_metrics_rotation_phase(struct ar_metrics *m, const char *phase)
{
    static const char *const phases[] = {"idle",   "stage", "promote", "reencrypt",
                                         "verify", "prune", "aborting"};
    int r = 0;

    for (size_t i = 0; i < sizeof(phases) / sizeof(phases[0]) && r == 0; i++)
        r = ar_metric_gauge_set(m, AR_M_ROT_PHASE,
                                "1 for the rotation phase this agent sees (idle: none), else 0.",
                                !strcmp(phase, phases[i]) ? 1.0 : 0.0, "phase", phases[i], NULL);
    return r;
}

int ar_metrics_rotation_transition(struct ar_metrics *m, const char *phase)
{
    return ar_metric_counter_add(m, AR_M_ROT_TRANSITIONS,
                                 "Rotation transitions this agent recorded as leader, by the "
                                 "phase entered (started, stage..prune, aborting, done, aborted).",
                                 1, "phase", phase, NULL);
}

int ar_metrics_rotation_ack(struct ar_metrics *m, const char *phase)
{
    return ar_metric_counter_add(m, AR_M_ROT_ACKS, "Acks this member put, by phase.", 1, "phase",
                                 phase, NULL);
}

int ar_metrics_proof_result(struct ar_metrics *m, const char *kind, bool ok)
{
    return ar_metric_counter_add(m, AR_M_PROOF_RESULTS, "Proofs of load, by kind and result.", 1,
                                 "kind", kind, "result", ok ? "ok" : "failed", NULL);
}

int ar_metrics_reencrypt(struct ar_metrics *m, uint64_t done, uint64_t total, uint64_t skipped,
                         uint64_t conflicts)
{
    static const char *const help =
        "Objects of the current re-encrypt pass (leader): done, total, skipped, conflicts.";
    int r = ar_metric_gauge_set(m, AR_M_REENCRYPT, help, (double)done, "state", "done", NULL);

    if (r == 0)
        r = ar_metric_gauge_set(m, AR_M_REENCRYPT, help, (double)total, "state", "total", NULL);
    if (r == 0)
        r = ar_metric_gauge_set(m, AR_M_REENCRYPT, help, (double)skipped, "state", "skipped", NULL);
    if (r == 0)
        r = ar_metric_gauge_set(m, AR_M_REENCRYPT, help, (double)conflicts, "state", "conflicts",
                                NULL);
    return r;
}
