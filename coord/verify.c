/* coord/verify.c: the verify scan (see verify.h). */
#include "coord/verify.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/buf.h"
#include "crypto/kmsv2.h"
#include "crypto/resource.h"

#define DEFAULT_PAGE 500u
#define ENC_MARK     "k8s:enc:"
#define OTHER        "(other)"

struct ar_verify_tally {
    struct ar_chain *chain;
    char pp[1024];     /* the etcd prefix as kube-apiserver joins it: "/registry/" */
    struct ar_buf buf; /* plaintext, wiped after every value */
    struct ar_verify_report *rep;
    size_t last_row; /* keys come sorted: the row of the previous key is the likely one */
};

struct ar_verify;

/* Parallel mode: a piece of the round, [cursor, end), read page by page. */
struct piece {
    struct ar_verify *v;
    uint8_t *cursor, *end;
    size_t cursor_len, end_len;
    unsigned page;
};

struct ar_verify {
    struct ar_etcd *c;
    struct ar_verify_tally *t;
    uint8_t *cursor, *end;
    size_t cursor_len, end_len;
    unsigned page;
    int64_t rev;
    bool inflight, in_cb, stopped;
    ar_verify_progress_cb progress_cb;
    ar_verify_done_cb done_cb;
    void *arg;
    /* parallel mode (parallel > 1) */
    unsigned parallel;
    struct piece pieces[AR_VERIFY_MAX_PARALLEL];
    unsigned pieces_left; /* of this round, still reading */
    unsigned requests;    /* in flight */
    bool round_more;      /* keys after this round's */
    /* where the next round's keys-only range (and the one in flight) ends: ar_etcd_guess_end;
     * NULL/0: the scan's end. Only on_keys changes it while a round is out. */
    uint8_t *guess;
    size_t guess_len;
    bool failed;
    int status;
    struct ar_etcd_error err;
};

/* snprintf that truncates on purpose (names are bounded; a cut name is still a name). */
static void fmt(char *dst, size_t dlen, const char *f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char *dst, size_t dlen, const char *f, ...)
{
    va_list ap;

    va_start(ap, f);
    vsnprintf(dst, dlen, f, ap);
    va_end(ap);
}

/* ---- report --------------------------------------------------------------------------------- */

void ar_verify_report_free(struct ar_verify_report *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_rows; i++)
        free(r->rows[i].v);
    free(r->rows);
    for (size_t i = 0; i < r->n_bad; i++)
        free(r->bad[i].key);
    free(r);
}

/* Printable ASCII as is, anything else (and '\') as \xNN; truncated to fit dst. */
static void escape(char *dst, size_t dlen, const uint8_t *p, size_t n)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\') {
            if (o + 2 > dlen)
                break;
            dst[o++] = (char)p[i];
        } else {
            if (o + 5 > dlen)
                break;
            snprintf(dst + o, 5, "\\x%02x", p[i]);
            o += 4;
        }
    }
    dst[o] = '\0';
}

static void escape_str(char *dst, size_t dlen, const char *s)
{
    escape(dst, dlen, (const uint8_t *)(s ? s : ""), s ? strlen(s) : 0);
}

const struct ar_verify_row *ar_verify_find_row(const struct ar_verify_report *r, const char *group,
                                               const char *resource)
{
    for (size_t i = 0; r && i < r->n_rows; i++)
        if (r->rows[i].known && !strcmp(r->rows[i].group, group) &&
            !strcmp(r->rows[i].resource, resource))
            return &r->rows[i];
    return NULL;
}

uint64_t ar_verify_count(const struct ar_verify_row *row, const char *name)
{
    for (size_t i = 0; row && i < row->n; i++)
        if (!strcmp(row->v[i].name, name))
            return row->v[i].n;
    return 0;
}

uint64_t ar_verify_not_write(const struct ar_verify_row *row)
{
    uint64_t under = 0;
    size_t wl;

    if (!row || !row->known)
        return 0;
    wl = strlen(row->write);
    for (size_t i = 0; i < row->n; i++) {
        const char *n = row->v[i].name;

        /* a KMS v2 write provider writes under whatever keyID its plugin reports */
        if (!strcmp(n, row->write) ||
            (!strncmp(row->write, "kms:", 4) && !strncmp(n, row->write, wl) && n[wl] == ':'))
            under += row->v[i].n;
    }
    return row->total - under;
}

static struct ar_verify_row *row_add(struct ar_verify_report *r, bool known, const char *group,
                                     const char *resource)
{
    struct ar_verify_row *row;

    if (r->n_rows == r->cap_rows) {
        size_t cap = r->cap_rows ? r->cap_rows * 2 : 16;
        struct ar_verify_row *nv = realloc(r->rows, cap * sizeof(*nv));

        if (!nv)
            return NULL;
        r->rows = nv;
        r->cap_rows = cap;
    }
    row = &r->rows[r->n_rows++];
    memset(row, 0, sizeof(*row));
    row->known = known;
    fmt(row->group, sizeof(row->group), "%s", group);
    fmt(row->resource, sizeof(row->resource), "%s", resource);
    return row;
}

static int entry_add_n(struct ar_verify_report *rep, struct ar_verify_row *row, const char *name,
                       uint64_t n)
{
    for (size_t i = 0; i < row->n; i++) {
        if (!strcmp(row->v[i].name, name)) {
            row->v[i].n += n;
            return 0;
        }
    }
    /* the last slot of a row is "(other)"; so is any new name once the report is full */
    if ((row->n >= AR_VERIFY_MAX_ENTRIES - 1 || rep->n_entries >= AR_VERIFY_MAX_ALL_ENTRIES) &&
        strcmp(name, OTHER))
        return entry_add_n(rep, row, OTHER, n);
    if (row->n == row->cap) {
        size_t cap = row->cap ? row->cap * 2 : 4;
        struct ar_verify_entry *nv = realloc(row->v, cap * sizeof(*nv));

        if (!nv)
            return -ENOMEM;
        row->v = nv;
        row->cap = cap;
    }
    fmt(row->v[row->n].name, sizeof(row->v[0].name), "%s", name);
    row->v[row->n++].n = n;
    rep->n_entries++;
    return 0;
}

static int entry_add(struct ar_verify_report *rep, struct ar_verify_row *row, const char *name)
{
    return entry_add_n(rep, row, name, 1);
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const struct ar_verify_entry *)a)->name,
                  ((const struct ar_verify_entry *)b)->name);
}

static int cmp_row(const void *a, const void *b)
{
    const struct ar_verify_row *x = a, *y = b;
    int r;

    if (x->known != y->known)
        return x->known ? -1 : 1;
    if ((r = strcmp(x->group, y->group)))
        return r;
    return strcmp(x->resource, y->resource);
}

static void report_sort(struct ar_verify_report *r)
{
    for (size_t i = 0; i < r->n_rows; i++)
        if (r->rows[i].n > 1)
            qsort(r->rows[i].v, r->rows[i].n, sizeof(r->rows[i].v[0]), cmp_entry);
    if (r->n_rows > 1)
        qsort(r->rows, r->n_rows, sizeof(r->rows[0]), cmp_row);
}

int ar_verify_report_merge(struct ar_verify_report *dst, const struct ar_verify_report *src)
{
    for (size_t i = 0; i < src->n_rows; i++) {
        const struct ar_verify_row *sr = &src->rows[i];
        struct ar_verify_row *dr = NULL;
        int r;

        for (size_t j = 0; j < dst->n_rows && !dr; j++)
            if (dst->rows[j].known == sr->known && !strcmp(dst->rows[j].group, sr->group) &&
                !strcmp(dst->rows[j].resource, sr->resource))
                dr = &dst->rows[j];
        if (!dr && dst->n_rows >= AR_VERIFY_MAX_RESOURCES - 1) {
            for (size_t j = 0; j < dst->n_rows && !dr; j++)
                if (!dst->rows[j].known && !strcmp(dst->rows[j].resource, OTHER))
                    dr = &dst->rows[j];
            if (!dr && !(dr = row_add(dst, false, "", OTHER)))
                return -ENOMEM;
        }
        if (!dr) {
            if (!(dr = row_add(dst, sr->known, sr->group, sr->resource)))
                return -ENOMEM;
            memcpy(dr->write, sr->write, sizeof(dr->write));
        }
        dr->total += sr->total;
        dr->stale += sr->stale;
        dr->undecryptable += sr->undecryptable;
        for (size_t j = 0; j < sr->n; j++)
            if ((r = entry_add_n(dst, dr, sr->v[j].name, sr->v[j].n)) < 0)
                return r;
    }
    for (size_t i = 0; i < src->n_bad && dst->n_bad < AR_VERIFY_MAX_BAD; i++) {
        struct ar_verify_bad *b = &dst->bad[dst->n_bad];

        *b = src->bad[i];
        if (!(b->key = strdup(src->bad[i].key)))
            return -ENOMEM;
        dst->n_bad++;
    }
    dst->objects += src->objects;
    dst->undecryptable += src->undecryptable;
    dst->stale += src->stale;
    dst->pages += src->pages;
    dst->revision_restarts += src->revision_restarts;
    if (src->revision > dst->revision)
        dst->revision = src->revision;
    if (src->peak_buf > dst->peak_buf)
        dst->peak_buf = src->peak_buf;
    if (src->peak_page_kvs > dst->peak_page_kvs)
        dst->peak_page_kvs = src->peak_page_kvs;
    report_sort(dst);
    return 0;
}

/* ---- one value --------------------------------------------------------------------------------
 */

/* The entry name of a provider/key: "identity", "aescbc:key1", "kms:p1". */
static void provider_name(char *dst, size_t dlen, enum ar_ptype t, const char *name)
{
    char esc[AR_VERIFY_NAME_MAX];

    if (t == AR_P_IDENTITY) {
        fmt(dst, dlen, "identity");
        return;
    }
    escape_str(esc, sizeof(esc), name);
    fmt(dst, dlen, "%s:%s", ar_ptype_name(t), esc);
}

/* Does a provider of pl read what entry names? */
static bool entry_readable(const struct ar_plist *pl, const char *entry)
{
    char name[AR_VERIFY_NAME_MAX];

    if (!pl->n) /* no rule: kube-apiserver stores and reads such a resource as it is */
        return !strcmp(entry, "identity");
    for (size_t i = 0; i < pl->n; i++) {
        const struct ar_provider *p = pl->v[i];

        if (p->type == AR_P_IDENTITY) {
            if (!strcmp(entry, "identity"))
                return true;
        } else if (p->type == AR_P_KMS) {
            size_t l;

            provider_name(name, sizeof(name), p->type, p->kms.name);
            l = strlen(name); /* v2 entries carry ":<keyID>": the plugin's business */
            if (!strncmp(entry, name, l) && (entry[l] == '\0' || entry[l] == ':'))
                return true;
        } else {
            for (size_t k = 0; k < p->nkeys; k++) {
                provider_name(name, sizeof(name), p->type, p->keys[k].name);
                if (!strcmp(entry, name))
                    return true;
            }
        }
    }
    return false;
}

uint64_t ar_verify_unreadable(const struct ar_verify_row *row, const struct ar_chain *to)
{
    struct ar_plist pl;
    uint64_t n = 0;

    ar_chain_lookup(to, row->group, row->resource, &pl);
    for (size_t e = 0; e < row->n; e++)
        if (!entry_readable(&pl, row->v[e].name))
            n += row->v[e].n;
    return n;
}

static void kmsv2_name(char *dst, size_t dlen, const char *provider, const struct ar_kmsv2_span *id)
{
    char p[AR_VERIFY_NAME_MAX / 2], k[AR_VERIFY_NAME_MAX / 2];

    escape_str(p, sizeof(p), provider);
    escape(k, sizeof(k), id->p, id->n);
    fmt(dst, dlen, "kms:%s:%s", p, k);
}

static void write_name(const struct ar_chain *chain, struct ar_verify_row *row, const char *group,
                       const char *resource)
{
    struct ar_plist pl;
    const struct ar_provider *p;

    ar_chain_lookup(chain, group, resource, &pl);
    if (!pl.n) {
        fmt(row->write, sizeof(row->write), "identity");
        return;
    }
    p = pl.v[0];
    if (p->type == AR_P_KMS)
        provider_name(row->write, sizeof(row->write), p->type, p->kms.name);
    else if (p->type == AR_P_IDENTITY || !p->nkeys)
        fmt(row->write, sizeof(row->write), "identity");
    else
        provider_name(row->write, sizeof(row->write), p->type, p->keys[0].name);
}

/* The row of {graw, rraw} (names as in the key: any bytes but NUL; the row keeps them escaped). */
static struct ar_verify_row *row_for(struct ar_verify_tally *v, bool known, const char *graw,
                                     const char *rraw)
{
    struct ar_verify_report *r = v->rep;
    struct ar_verify_row *row;
    char group[sizeof(row->group)], resource[sizeof(row->resource)];

    escape_str(group, sizeof(group), graw);
    escape_str(resource, sizeof(resource), rraw);

    if (v->last_row < r->n_rows) {
        row = &r->rows[v->last_row];
        if (row->known == known && !strcmp(row->group, group) && !strcmp(row->resource, resource))
            return row;
    }
    for (size_t i = 0; i < r->n_rows; i++) {
        row = &r->rows[i];
        if (row->known == known && !strcmp(row->group, group) && !strcmp(row->resource, resource)) {
            v->last_row = i;
            return row;
        }
    }
    if (r->n_rows >= AR_VERIFY_MAX_RESOURCES - 1 && strcmp(resource, OTHER))
        return row_for(v, false, "", OTHER);
    row = row_add(r, known, group, resource);
    if (!row)
        return NULL;
    if (known)
        write_name(v->chain, row, graw, rraw);
    v->last_row = r->n_rows - 1;
    return row;
}

/* A value nobody reads with a chain: named by its prefix ("k8s:enc:<type>:v<n>:<name>:"). */
static void name_by_prefix(const uint8_t *p, size_t n, char *dst, size_t dlen)
{
    const size_t ml = sizeof(ENC_MARK) - 1;
    const uint8_t *t, *ver, *name, *rest, *end = p + n;

    if (n < ml || memcmp(p, ENC_MARK, ml)) {
        fmt(dst, dlen, "identity");
        return;
    }
    t = p + ml;
    ver = memchr(t, ':', (size_t)(end - t));
    name = ver ? memchr(ver + 1, ':', (size_t)(end - ver - 1)) : NULL;
    rest = name ? memchr(name + 1, ':', (size_t)(end - name - 1)) : NULL;
    if (!rest) {
        fmt(dst, dlen, "encrypted:(unrecognised prefix)");
        return;
    }
    {
        char ty[64], nm[AR_VERIFY_NAME_MAX / 2];

        escape(ty, sizeof(ty), t, (size_t)(ver - t));
        escape(nm, sizeof(nm), name + 1, (size_t)(rest - name - 1));
        if (!strcmp(ty, "kms") && (size_t)(name - ver - 1) == 2 && !memcmp(ver + 1, "v2", 2)) {
            struct ar_kmsv2_info info;
            char err[256];

            if (ar_kmsv2_parse(rest + 1, (size_t)(end - rest - 1), &info, err, sizeof(err)) == 0) {
                char k[AR_VERIFY_NAME_MAX / 2];

                escape(k, sizeof(k), info.key_id.p, info.key_id.n);
                fmt(dst, dlen, "kms:%s:%s", nm, k);
                return;
            }
        }
        fmt(dst, dlen, "%s:%s", ty, nm);
    }
}

static void keep_bad(struct ar_verify_report *r, const uint8_t *key, size_t key_len,
                     const struct ar_resource *rs, const char *reason)
{
    struct ar_verify_bad *b;
    size_t cap = key_len * 4 + 1;

    if (r->n_bad >= AR_VERIFY_MAX_BAD)
        return;
    b = &r->bad[r->n_bad];
    b->key = malloc(cap);
    if (!b->key)
        return; /* counted all the same */
    escape(b->key, cap, key, key_len);
    {
        char g[sizeof(rs->group)], res[sizeof(rs->resource)];

        escape_str(g, sizeof(g), rs->group);
        escape_str(res, sizeof(res), rs->resource);
        fmt(b->resource, sizeof(b->resource), "%s%s%s", res, g[0] ? "." : "", g);
    }
    fmt(b->reason, sizeof(b->reason), "%s", reason);
    for (char *c = b->reason; *c; c++) /* kube-apiserver's text; quoted bytes come escaped */
        if (*c < 0x20 || *c > 0x7e)
            *c = '?';
    r->n_bad++;
}

int ar_verify_tally_add(struct ar_verify_tally *v, const uint8_t *key, size_t key_len,
                        const uint8_t *value, size_t value_len)
{
    struct ar_verify_report *rep = v->rep;
    struct ar_verify_row *row;
    struct ar_resource rs;
    struct ar_result res;
    char name[AR_VERIFY_NAME_MAX];
    int r;

    if (!v || (!key && key_len) || (!value && value_len))
        return -EINVAL;

    if (ar_resource_of_key(v->pp, (const char *)key, key_len, &rs) < 0) {
        size_t pl = strlen(v->pp), n;
        const uint8_t *seg, *slash;
        char segname[256];

        if (key_len >= pl && !memcmp(key, v->pp, pl)) {
            seg = key + pl;
            n = key_len - pl;
            slash = memchr(seg, '/', n);
            n = slash ? (size_t)(slash - seg) : n;
            if (n >= sizeof(segname))
                n = sizeof(segname) - 1;
            memcpy(segname, seg, n); /* row_for escapes it */
            segname[n] = '\0';
        } else {
            fmt(segname, sizeof(segname), "(outside %s)", v->pp);
        }
        row = row_for(v, false, "", segname);
        if (!row)
            return -ENOMEM;
        name_by_prefix(value, value_len, name, sizeof(name));
        row->total++;
        rep->objects++;
        return entry_add(rep, row, name);
    }
    row = row_for(v, true, rs.group, rs.resource);
    if (!row)
        return -ENOMEM;
    row->total++;
    rep->objects++;
    memset(&res, 0, sizeof(res));
    r = ar_chain_read(v->chain, rs.group, rs.resource, key, key_len, value, value_len, &v->buf,
                      &res);
    if (v->buf.cap > rep->peak_buf)
        rep->peak_buf = v->buf.cap;
    ar_buf_reset(&v->buf); /* the plaintext is not needed: wipe it now */
    if (r == 0) {
        provider_name(name, sizeof(name), res.type, res.key_name);
        if (res.stale) {
            row->stale++;
            rep->stale++;
        }
        return entry_add(rep, row, name);
    }
    if (r == -ENOPKG && res.kms_version == 2) {
        kmsv2_name(name, sizeof(name), res.key_name, &res.kms.key_id);
        return entry_add(rep, row, name);
    }
    if (r == -ENOPKG && res.kms_version == 1) {
        provider_name(name, sizeof(name), AR_P_KMS, res.key_name);
        return entry_add(rep, row, name);
    }
    if (r == -ENOMEM)
        return r;
    row->undecryptable++;
    rep->undecryptable++;
    keep_bad(rep, key, key_len, &rs, res.err[0] ? res.err : strerror(-r));
    return 0;
}

/* path.Join("/", prefix) + "/" for prefixes made of plain segments ("." and ".." are not
 * resolved: kube-apiserver's --etcd-prefix does not use them in practice). */
int ar_verify_join_prefix(const char *prefix, char *out, size_t outlen)
{
    size_t n = 0;
    const char *s = prefix ? prefix : AR_DEFAULT_ETCD_PREFIX;

    out[n++] = '/';
    while (*s) {
        size_t l;

        while (*s == '/')
            s++;
        l = strcspn(s, "/");
        if (!l)
            break;
        if (n + l + 2 > outlen)
            return -ENAMETOOLONG;
        memcpy(out + n, s, l);
        n += l;
        out[n++] = '/';
        s += l;
    }
    out[n] = '\0';
    return 0;
}

int ar_verify_tally_new(struct ar_chain *chain, const char *etcd_prefix,
                        struct ar_verify_tally **out)
{
    struct ar_verify_tally *t;
    int r;

    *out = NULL;
    if (!chain)
        return -EINVAL;
    t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->rep = calloc(1, sizeof(*t->rep));
    if (!t->rep) {
        free(t);
        return -ENOMEM;
    }
    if ((r = ar_verify_join_prefix(etcd_prefix, t->pp, sizeof(t->pp))) < 0) {
        free(t->rep);
        free(t);
        return r;
    }
    t->chain = ar_chain_ref(chain);
    t->buf.max = AR_ETCD_MAX_BODY;
    *out = t;
    return 0;
}

const struct ar_verify_report *ar_verify_tally_report(const struct ar_verify_tally *t)
{
    return t->rep;
}

struct ar_verify_report *ar_verify_tally_finish(struct ar_verify_tally *t)
{
    struct ar_verify_report *rep = t->rep;

    t->rep = NULL;
    report_sort(rep);
    ar_verify_tally_free(t);
    return rep;
}

void ar_verify_tally_free(struct ar_verify_tally *t)
{
    if (!t)
        return;
    ar_buf_free(&t->buf);
    ar_chain_unref(t->chain);
    ar_verify_report_free(t->rep);
    free(t);
}

/* ---- paging -----------------------------------------------------------------------------------
 */

static void scan_free(struct ar_verify *v)
{
    ar_verify_tally_free(v->t);
    free(v->cursor);
    free(v->end);
    free(v->guess);
    for (unsigned i = 0; i < AR_VERIFY_MAX_PARALLEL; i++) {
        free(v->pieces[i].cursor);
        free(v->pieces[i].end);
    }
    free(v);
}

static int cmp_bad(const void *a, const void *b)
{
    return strcmp(((const struct ar_verify_bad *)a)->key, ((const struct ar_verify_bad *)b)->key);
}

static void finish(struct ar_verify *v, int status, const struct ar_etcd_error *err)
{
    struct ar_verify_report *rep = ar_verify_tally_finish(v->t);

    v->t = NULL;
    if (!rep) { /* cannot happen: the tally always has a report */
        scan_free(v);
        return;
    }
    if (v->parallel > 1) /* met in no particular order: listed in key order */
        qsort(rep->bad, rep->n_bad, sizeof(rep->bad[0]), cmp_bad);
    v->in_cb = true; /* a stop from done (not allowed) frees nothing twice: freed here */
    v->done_cb(v->arg, status, rep, err);
    scan_free(v);
}

static void on_page(void *arg, int status, const struct ar_etcd_result *res,
                    const struct ar_etcd_error *err);

/* Count a page's values. */
static int tally_page(struct ar_verify *v, const struct ar_etcd_result *res)
{
    struct ar_verify_report *rep = v->t->rep;
    int r;

    rep->pages++;
    if (res->n_kvs > rep->peak_page_kvs)
        rep->peak_page_kvs = res->n_kvs;
    for (size_t i = 0; i < res->n_kvs; i++) {
        const struct ar_etcd_kv *kv = &res->kvs[i];

        if ((r = ar_verify_tally_add(v->t, kv->key, kv->key_len, kv->value, kv->value_len)) < 0)
            return r;
    }
    return 0;
}

/* dst = a copy of k[0..n) followed by "\0" when after (the first key after k). */
static int set_key(uint8_t **dst, size_t *dst_len, const uint8_t *k, size_t n, bool after)
{
    uint8_t *nk = malloc(n + 1);

    if (!nk)
        return -ENOMEM;
    memcpy(nk, k, n);
    nk[n] = 0;
    free(*dst);
    *dst = nk;
    *dst_len = n + after;
    return 0;
}

static int next_page(struct ar_verify *v)
{
    struct ar_etcd_op op = {
        .type = AR_ETCD_RANGE,
        .key = v->cursor,
        .key_len = v->cursor_len,
        .range_end = v->end,
        .range_end_len = v->end_len,
        .limit = v->page,
        .revision = v->rev,
    };
    int r = ar_etcd_range(v->c, &op, on_page, v);

    v->inflight = r == 0;
    return r;
}

static void fail_now(struct ar_verify *v, int rc, const char *what)
{
    struct ar_etcd_error e;

    ar_etcd_set_error(&e, rc, "", "verify: %s: %s", what, strerror(-rc));
    finish(v, rc, &e);
}

static void on_page(void *arg, int status, const struct ar_etcd_result *res,
                    const struct ar_etcd_error *err)
{
    struct ar_verify *v = arg;
    struct ar_verify_report *rep = v->t->rep;
    struct ar_verify_progress pr;
    const struct ar_etcd_kv *last;
    uint8_t *nk;
    int r;

    v->inflight = false;
    if (v->stopped) {
        scan_free(v);
        return;
    }
    if (status == -ERANGE && v->rev) { /* compacted under us: go on at the newest revision */
        v->rev = 0;
        rep->revision_restarts++;
        if ((r = next_page(v)) < 0)
            fail_now(v, r, "range");
        return;
    }
    if (status == -EMSGSIZE && v->page > 1) { /* a page of big values: ask for fewer */
        v->page /= 2;
        if ((r = next_page(v)) < 0)
            fail_now(v, r, "range");
        return;
    }
    if (status < 0) {
        finish(v, status, err);
        return;
    }
    if (!v->rev) {
        v->rev = res->revision;
        rep->revision = res->revision;
    }
    if ((r = tally_page(v, res)) < 0) {
        fail_now(v, r, "counting");
        return;
    }
    if (!res->more || !res->n_kvs) {
        finish(v, 0, NULL);
        return;
    }
    last = &res->kvs[res->n_kvs - 1];
    nk = malloc(last->key_len + 1);
    if (!nk) {
        fail_now(v, -ENOMEM, "cursor");
        return;
    }
    memcpy(nk, last->key, last->key_len);
    nk[last->key_len] = 0; /* the first key after last */
    free(v->cursor);
    v->cursor = nk;
    v->cursor_len = last->key_len + 1;
    if (v->progress_cb) {
        pr.objects = rep->objects;
        pr.undecryptable = rep->undecryptable;
        pr.pages = rep->pages;
        pr.last_key = last->key;
        pr.last_key_len = last->key_len;
        v->in_cb = true;
        v->progress_cb(v->arg, &pr);
        v->in_cb = false;
        if (v->stopped) {
            scan_free(v);
            return;
        }
    }
    if ((r = next_page(v)) < 0)
        fail_now(v, r, "range");
}

/* ---- parallel mode ----------------------------------------------------------------------------
 * Rounds: a keys-only range takes the next parallel * page keys at the scan's revision and cuts
 * them into pieces of page keys; the pieces are read at once (each page by page: a compaction
 * or a newer revision can add keys to a piece) and the next round starts when all are read.
 * Held: one keys-only page and one page per piece. */

static void on_keys(void *arg, int status, const struct ar_etcd_result *res,
                    const struct ar_etcd_error *err);
static void on_piece(void *arg, int status, const struct ar_etcd_result *res,
                     const struct ar_etcd_error *err);

static int par_round(struct ar_verify *v)
{
    struct ar_etcd_op op = {
        .type = AR_ETCD_RANGE,
        .key = v->cursor,
        .key_len = v->cursor_len,
        .range_end = v->end,
        .range_end_len = v->end_len,
        .limit = (int64_t)v->parallel * v->page,
        .revision = v->rev,
        .keys_only = true,
    };
    int r;

    if (v->guess_len) {
        op.range_end = v->guess;
        op.range_end_len = v->guess_len;
    }
    r = ar_etcd_range(v->c, &op, on_keys, v);

    v->requests += r == 0;
    return r;
}

static int piece_next(struct piece *p)
{
    struct ar_verify *v = p->v;
    struct ar_etcd_op op = {
        .type = AR_ETCD_RANGE,
        .key = p->cursor,
        .key_len = p->cursor_len,
        .range_end = p->end,
        .range_end_len = p->end_len,
        .limit = p->page,
        .revision = v->rev,
    };
    int r = ar_etcd_range(v->c, &op, on_piece, p);

    v->requests += r == 0;
    return r;
}

/* A request came back: false when the callback must stop (stopped: freed with the last one). */
static bool par_back(struct ar_verify *v)
{
    v->requests--;
    if (!v->stopped)
        return true;
    if (!v->requests && !v->in_cb)
        scan_free(v);
    return false;
}

/* The first failure ends the scan once the requests in flight are back. */
static void par_fail(struct ar_verify *v, int rc, const struct ar_etcd_error *err, const char *what)
{
    if (!v->failed) {
        v->failed = true;
        v->status = rc;
        if (err)
            v->err = *err;
        else
            ar_etcd_set_error(&v->err, rc, "", "verify: %s: %s", what, strerror(-rc));
    }
    if (!v->requests)
        finish(v, v->status, &v->err);
}

/* The next round's range ends at a guess when this one was full (ar_etcd_guess_end: etcd 3.4
 * walks its index to the end of every limited range). A round that reads everything up to its
 * guess ends its last piece there and the scan goes on from it; one that finds nothing goes on
 * to the scan's end (on_keys). 0 or -ENOMEM. */
static int next_guess(struct ar_verify *v, const struct ar_etcd_result *res)
{
    const struct ar_etcd_kv *f = &res->kvs[0], *l = &res->kvs[res->n_kvs - 1];
    size_t w = f->key_len > l->key_len ? f->key_len : l->key_len;
    uint8_t *g;

    if (!res->more || res->n_kvs < (size_t)v->parallel * v->page) {
        v->guess_len = 0;
        return 0;
    }
    if (!(g = malloc(w ? w : 1)))
        return -ENOMEM;
    free(v->guess);
    v->guess = g;
    v->guess_len =
        ar_etcd_guess_end(f->key, f->key_len, l->key, l->key_len, v->end, v->end_len, g, w);
    return 0;
}

static void on_keys(void *arg, int status, const struct ar_etcd_result *res,
                    const struct ar_etcd_error *err)
{
    struct ar_verify *v = arg;
    struct ar_verify_report *rep;
    size_t n, np;
    bool bounded;
    int r = 0;

    if (!par_back(v))
        return;
    rep = v->t->rep;
    if (status == -ERANGE && v->rev) { /* compacted under us: go on at the newest revision */
        v->rev = 0;
        rep->revision_restarts++;
        if ((r = par_round(v)) < 0)
            par_fail(v, r, NULL, "range");
        return;
    }
    if (status == -EMSGSIZE && v->page > 1) {
        v->page /= 2;
        if ((r = par_round(v)) < 0)
            par_fail(v, r, NULL, "range");
        return;
    }
    if (status < 0) {
        par_fail(v, status, err, "range");
        return;
    }
    if (!v->rev) {
        v->rev = res->revision;
        rep->revision = res->revision;
    }
    n = res->n_kvs;
    bounded = v->guess_len > 0; /* next_guess replaces it below */
    if (!n && bounded) {        /* nothing before the guess: on to the scan's end */
        v->guess_len = 0;
        if ((r = par_round(v)) < 0)
            par_fail(v, r, NULL, "range");
        return;
    }
    if (!n) {
        finish(v, 0, NULL);
        return;
    }
    np = (n + v->page - 1) / v->page;
    for (size_t j = 0; j < np && r == 0; j++) {
        struct piece *p = &v->pieces[j];
        const struct ar_etcd_kv *a = &res->kvs[j * v->page];

        p->v = v;
        p->page = v->page;
        r = set_key(&p->cursor, &p->cursor_len, a->key, a->key_len, false);
        if (r == 0 && (j + 1) * v->page < n) {
            const struct ar_etcd_kv *b = &res->kvs[(j + 1) * v->page];

            r = set_key(&p->end, &p->end_len, b->key, b->key_len, false);
        } else if (r == 0 && res->more) {
            const struct ar_etcd_kv *b = &res->kvs[n - 1];

            r = set_key(&p->end, &p->end_len, b->key, b->key_len, true);
        } else if (r == 0 && bounded) { /* the round read everything up to the guess */
            r = set_key(&p->end, &p->end_len, v->guess, v->guess_len, false);
        } else if (r == 0) {
            r = set_key(&p->end, &p->end_len, v->end, v->end_len, false);
        }
    }
    if (r == 0 && res->more)
        r = set_key(&v->cursor, &v->cursor_len, res->kvs[n - 1].key, res->kvs[n - 1].key_len, true);
    else if (r == 0 && bounded)
        r = set_key(&v->cursor, &v->cursor_len, v->guess, v->guess_len, false);
    if (r == 0)
        r = next_guess(v, res);
    if (r < 0) {
        par_fail(v, r, NULL, "cursor");
        return;
    }
    v->round_more = res->more || bounded;
    v->pieces_left = (unsigned)np;
    for (size_t j = 0; j < np; j++)
        if ((r = piece_next(&v->pieces[j])) < 0) {
            v->pieces_left -= (unsigned)(np - j); /* never started */
            par_fail(v, r, NULL, "range");
            return;
        }
}

static void on_piece(void *arg, int status, const struct ar_etcd_result *res,
                     const struct ar_etcd_error *err)
{
    struct piece *p = arg;
    struct ar_verify *v = p->v;
    struct ar_verify_progress pr;
    int r;

    if (!par_back(v))
        return;
    if (v->failed) {
        par_fail(v, v->status, NULL, NULL);
        return;
    }
    if (status == -ERANGE) { /* compacted: this piece's rest (and every later read) newest */
        if (v->rev) {
            v->rev = 0;
            v->t->rep->revision_restarts++;
        }
        if ((r = piece_next(p)) < 0)
            par_fail(v, r, NULL, "range");
        return;
    }
    if (status == -EMSGSIZE && p->page > 1) {
        p->page /= 2;
        if ((r = piece_next(p)) < 0)
            par_fail(v, r, NULL, "range");
        return;
    }
    if (status < 0) {
        par_fail(v, status, err, "range");
        return;
    }
    if ((r = tally_page(v, res)) < 0) {
        par_fail(v, r, NULL, "counting");
        return;
    }
    if (res->more && res->n_kvs) {
        const struct ar_etcd_kv *last = &res->kvs[res->n_kvs - 1];

        if ((r = set_key(&p->cursor, &p->cursor_len, last->key, last->key_len, true)) < 0 ||
            (r = piece_next(p)) < 0) {
            par_fail(v, r, NULL, "range");
            return;
        }
    } else {
        v->pieces_left--;
    }
    if (v->progress_cb && res->n_kvs) {
        pr.objects = v->t->rep->objects;
        pr.undecryptable = v->t->rep->undecryptable;
        pr.pages = v->t->rep->pages;
        pr.last_key = res->kvs[res->n_kvs - 1].key;
        pr.last_key_len = res->kvs[res->n_kvs - 1].key_len;
        v->in_cb = true;
        v->progress_cb(v->arg, &pr);
        v->in_cb = false;
        if (v->stopped) {
            if (!v->requests)
                scan_free(v);
            return;
        }
    }
    if (v->pieces_left)
        return;
    if (!v->round_more) {
        finish(v, 0, NULL);
        return;
    }
    if ((r = par_round(v)) < 0)
        par_fail(v, r, NULL, "range");
}

static int dup_bytes(const uint8_t *p, size_t n, uint8_t **out)
{
    *out = malloc(n ? n : 1);
    if (!*out)
        return -ENOMEM;
    memcpy(*out, p, n);
    return 0;
}

int ar_verify_start(struct ar_etcd *c, struct ar_chain *chain, const struct ar_verify_opts *o,
                    ar_verify_progress_cb progress_cb, ar_verify_done_cb done_cb, void *arg,
                    struct ar_verify **out)
{
    struct ar_verify *v;
    char start[1400];
    int r;

    *out = NULL;
    if (!c || !chain || !o || !done_cb || (o->start && !o->start_len) ||
        (!o->group != !o->resource))
        return -EINVAL;
    v = calloc(1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    if ((r = ar_verify_tally_new(chain, o->etcd_prefix, &v->t)) < 0) {
        free(v);
        return r;
    }
    v->c = c;
    v->page = o->page_size ? o->page_size : DEFAULT_PAGE;
    v->progress_cb = progress_cb;
    v->done_cb = done_cb;
    v->arg = arg;
    if (o->start) {
        r = dup_bytes(o->start, o->start_len, &v->cursor);
        v->cursor_len = o->start_len;
        if (r == 0 && o->end) {
            r = dup_bytes(o->end, o->end_len, &v->end);
            v->end_len = o->end_len;
        }
    } else {
        if (o->resource)
            r = ar_resource_key_prefix(v->t->pp, o->group, o->resource, start, sizeof(start));
        else
            r = snprintf(start, sizeof(start), "%s", v->t->pp) < (int)sizeof(start) ? 0
                                                                                    : -ENAMETOOLONG;
        if (r < 0)
            goto fail;
        v->cursor_len = strlen(start);
        r = dup_bytes((const uint8_t *)start, v->cursor_len, &v->cursor);
        if (r == 0)
            r = dup_bytes((const uint8_t *)start, v->cursor_len, &v->end);
        if (r == 0)
            v->end_len = ar_etcd_prefix_end(v->cursor, v->cursor_len, v->end);
    }
    if (r < 0)
        goto fail;
    v->parallel = o->parallel > AR_VERIFY_MAX_PARALLEL ? AR_VERIFY_MAX_PARALLEL : o->parallel;
    if ((r = v->parallel > 1 ? par_round(v) : next_page(v)) < 0)
        goto fail;
    *out = v;
    return 0;
fail:
    scan_free(v);
    return r;
}

void ar_verify_stop(struct ar_verify *v)
{
    if (!v)
        return;
    v->stopped = true;
    if (!v->inflight && !v->requests && !v->in_cb)
        scan_free(v);
}

/* ---- blocking -----------------------------------------------------------------------------------
 */

struct waiter {
    bool done;
    int status;
    struct ar_verify_report *rep;
    struct ar_etcd_error *err;
};

struct run_arg {
    struct waiter w;
    ar_verify_progress_cb progress_cb;
    void *arg;
};

static void run_done(void *arg, int status, struct ar_verify_report *rep,
                     const struct ar_etcd_error *err)
{
    struct waiter *w = &((struct run_arg *)arg)->w;

    w->done = true;
    w->status = status;
    if (status == 0) {
        w->rep = rep;
        return;
    }
    ar_verify_report_free(rep);
    if (w->err && err)
        *w->err = *err;
}

static void run_progress(void *arg, const struct ar_verify_progress *p)
{
    struct run_arg *ra = arg;

    if (ra->progress_cb)
        ra->progress_cb(ra->arg, p);
}

int ar_verify_run(struct ar_etcd_sync *s, struct ar_chain *chain, const struct ar_verify_opts *o,
                  ar_verify_progress_cb progress_cb, void *arg, struct ar_verify_report **out,
                  struct ar_etcd_error *err)
{
    struct run_arg ra = {.w = {.err = err}, .progress_cb = progress_cb, .arg = arg};
    struct ar_etcd *c = ar_etcd_sync_client(s);
    struct ar_verify *v;
    int r;

    *out = NULL;
    r = ar_verify_start(c, chain, o, run_progress, run_done, &ra, &v);
    if (r < 0) {
        if (err)
            ar_etcd_set_error(err, r, "", "verify: %s", strerror(-r));
        return r;
    }
    while (!ra.w.done) /* bounded: the client's request timeout ends every page */
        uv_run(ar_etcd_loop(c), UV_RUN_ONCE);
    *out = ra.w.rep;
    return ra.w.status;
}
