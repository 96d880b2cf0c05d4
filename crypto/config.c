/*
 * crypto/config.c: EncryptionConfiguration loading (YAML/JSON via libyaml), strict decoding as
 * kube-apiserver 1.31+ does it, the key arena, fingerprints and the config's lifetime.
 * Validation rules live in config_validate.c, rendering in render.c.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <search.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>
#include <yaml.h>

#include "crypto/config.h"
#include "crypto/config_int.h"

#define AR_CFG_MAX_NODES 262144

/* ---- small helpers ------------------------------------------------------------------------ */

const char *ar_ptype_name(enum ar_ptype t)
{
    switch (t) {
    case AR_P_IDENTITY:
        return "identity";
    case AR_P_AESCBC:
        return "aescbc";
    case AR_P_AESGCM:
        return "aesgcm";
    case AR_P_SECRETBOX:
        return "secretbox";
    case AR_P_KMS:
        return "kms";
    }
    return "unknown";
}

void ar_hex(const uint8_t *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

static void hash_str(const uint8_t h[AR_SHA256_LEN], char out[AR_HASH_STRLEN])
{
    memcpy(out, "sha256:", 7);
    ar_hex(h, AR_SHA256_LEN, out + 7);
}

void ar_config_file_hash_str(const struct ar_config *c, char out[AR_HASH_STRLEN])
{
    hash_str(c->file_sha256, out);
}

void ar_config_fingerprint_str(const struct ar_config *c, char out[AR_HASH_STRLEN])
{
    hash_str(c->fingerprint, out);
}

/* ---- diagnostics -------------------------------------------------------------------------- */

void ar_diags_init(struct ar_diags *d)
{
    memset(d, 0, sizeof(*d));
}

void ar_diags_free(struct ar_diags *d)
{
    size_t i;

    if (!d)
        return;
    for (i = 0; i < d->n; i++) {
        free(d->v[i].file);
        free(d->v[i].path);
        free(d->v[i].detail);
    }
    free(d->v);
    memset(d, 0, sizeof(*d));
}

int ar_diags_add(struct ar_diags *d, enum ar_severity sev, const char *file, struct ar_pos pos,
                 const char *path, const char *fmt, ...)
{
    struct ar_diag *g;
    va_list ap;
    int n;

    if (!d)
        return 0;
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        struct ar_diag *v = realloc(d->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        d->v = v;
        d->cap = cap;
    }
    g = &d->v[d->n];
    memset(g, 0, sizeof(*g));
    g->severity = sev;
    g->pos = pos;
    g->file = strdup(file ? file : "");
    g->path = strdup(path ? path : "");
    va_start(ap, fmt);
    n = vasprintf(&g->detail, fmt, ap);
    va_end(ap);
    if (n < 0)
        g->detail = NULL;
    if (!g->file || !g->path || !g->detail) {
        free(g->file);
        free(g->path);
        free(g->detail);
        return -ENOMEM;
    }
    d->n++;
    if (sev == AR_SEV_ERROR)
        d->nerrors++;
    return 0;
}

int ar_diag_format(const struct ar_diag *d, char *buf, size_t len)
{
    const char *sev = d->severity == AR_SEV_WARNING ? "warning: " : "";

    if (d->path && d->path[0])
        return snprintf(buf, len, "%s:%d:%d: %s%s: %s", d->file, d->pos.line, d->pos.col, sev,
                        d->path, d->detail);
    return snprintf(buf, len, "%s:%d:%d: %s%s", d->file, d->pos.line, d->pos.col, sev, d->detail);
}

/* ---- the node tree ------------------------------------------------------------------------ */

/*
 * One node per libyaml event, as goyaml.v2's parser builds it. An alias is a node of its own
 * that points at its anchor's node (shared, never copied), so the tree stays as large as the
 * file however often an anchor is used. Every node carries what decoding its expansion would
 * cost (computed once, when the node is complete), so the bounds below are checked without
 * ever expanding anything.
 */
enum yk { YN_SCALAR, YN_SEQ, YN_MAP, YN_ALIAS };

#define YN_SAT (UINT64_C(1) << 62) /* expansion counters saturate here */

struct yn {
    enum yk kind;
    struct ar_pos pos;
    char *s; /* scalar text (NUL terminated), alias: the anchor name; wiped on free */
    size_t len;
    bool plain;        /* plain style and no tag: subject to YAML type resolution */
    bool str_tag;      /* explicit !!str */
    bool merge;        /* a merge key: plain "<<" or tagged !!merge */
    bool open;         /* a collection whose end event has not come yet */
    bool cyclic;       /* alias: its anchor's node was still open (it contains itself) */
    struct yn *target; /* alias: the anchored node (not owned) */
    struct yn **kids;  /* seq: items; map: key, value, key, value, ... */
    size_t n, cap;
    uint64_t esize;  /* goyaml decode operations for this node, aliases expanded */
    uint64_t enodes; /* scalars, sequences and mappings once aliases are expanded */
    uint64_t ebytes; /* scalar bytes once aliases are expanded */
    unsigned mdepth; /* mapping: merge keys nested this deep (1: no merge key) */
};

static void yn_free(struct yn *n)
{
    size_t i;

    if (!n)
        return;
    for (i = 0; i < n->n; i++)
        yn_free(n->kids[i]); /* kids are owned; an alias's target is not */
    free(n->kids);
    if (n->s) {
        sodium_memzero(n->s, n->len);
        free(n->s);
    }
    free(n);
}

static int yn_push(struct yn *parent, struct yn *kid)
{
    if (parent->n == parent->cap) {
        size_t cap = parent->cap ? parent->cap * 2 : 4;
        struct yn **k = realloc(parent->kids, cap * sizeof(*k));
        if (!k)
            return -ENOMEM;
        parent->kids = k;
        parent->cap = cap;
    }
    parent->kids[parent->n++] = kid;
    return 0;
}

/* The node an alias stands for (anchors are never on aliases, so one step is enough). */
static const struct yn *yd(const struct yn *n)
{
    return n && n->kind == YN_ALIAS ? n->target : n;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a >= YN_SAT || b >= YN_SAT || a + b >= YN_SAT ? YN_SAT : a + b;
}

/* Fill in the expansion figures of a complete node (its kids are complete). */
static void yn_measure(struct yn *n)
{
    size_t i, j;

    switch (n->kind) {
    case YN_SCALAR:
        n->esize = n->enodes = 1;
        n->ebytes = n->len;
        return;
    case YN_ALIAS:
        /* the alias node itself is one decode operation, then its anchor's whole value */
        n->esize = sat_add(1, n->cyclic ? 0 : n->target->esize);
        n->enodes = n->cyclic ? 0 : n->target->enodes;
        n->ebytes = n->cyclic ? 0 : n->target->ebytes;
        n->mdepth = n->cyclic ? 0 : n->target->mdepth;
        return;
    case YN_SEQ:
        n->esize = n->enodes = 1;
        n->ebytes = 0;
        for (i = 0; i < n->n; i++) {
            n->esize = sat_add(n->esize, n->kids[i]->esize);
            n->enodes = sat_add(n->enodes, n->kids[i]->enodes);
            n->ebytes = sat_add(n->ebytes, n->kids[i]->ebytes);
        }
        return;
    case YN_MAP:
        n->esize = n->enodes = 1;
        n->ebytes = 0;
        n->mdepth = 1;
        for (i = 0; i + 1 < n->n; i += 2) {
            const struct yn *k = n->kids[i], *v = n->kids[i + 1];

            if (!k->merge) {
                n->esize = sat_add(n->esize, sat_add(k->esize, v->esize));
                n->enodes = sat_add(n->enodes, sat_add(k->enodes, v->enodes));
                n->ebytes = sat_add(n->ebytes, sat_add(k->ebytes, v->ebytes));
                continue;
            }
            /* the merge key is not decoded; a sequence value is not decoded itself */
            if (v->kind == YN_SEQ) {
                for (j = 0; j < v->n; j++)
                    n->esize = sat_add(n->esize, v->kids[j]->esize);
            } else {
                n->esize = sat_add(n->esize, v->esize);
            }
            for (j = 0; j < (v->kind == YN_SEQ ? v->n : 1); j++) {
                const struct yn *m = yd(v->kind == YN_SEQ ? v->kids[j] : v);

                if (m->kind != YN_MAP || m->open)
                    continue;
                /* its entries land in this mapping: all of its nodes but itself */
                n->enodes = sat_add(n->enodes, m->enodes - 1);
                n->ebytes = sat_add(n->ebytes, m->ebytes);
                if (m->mdepth + 1 > n->mdepth)
                    n->mdepth = m->mdepth + 1;
            }
        }
        return;
    }
}

/* Anchors by name; a later anchor of the same name replaces the earlier one (goyaml.v2). */
struct anchor {
    char *name;
    struct yn *node;
};

static int anchor_cmp(const void *a, const void *b)
{
    return strcmp(((const struct anchor *)a)->name, ((const struct anchor *)b)->name);
}

static void anchor_free(void *p)
{
    struct anchor *a = p;

    free(a->name);
    free(a);
}

static int anchor_put(void **anchors, const yaml_char_t *name, struct yn *node)
{
    struct anchor *a = calloc(1, sizeof(*a)), **slot;

    if (!a)
        return -ENOMEM;
    a->name = strdup((const char *)name);
    a->node = node;
    if (!a->name) {
        free(a);
        return -ENOMEM;
    }
    slot = tsearch(a, anchors, anchor_cmp);
    if (!slot) {
        anchor_free(a);
        return -ENOMEM;
    }
    if (*slot != a) {
        (*slot)->node = node;
        anchor_free(a);
    }
    return 0;
}

static struct yn *anchor_get(void *const *anchors, const yaml_char_t *name)
{
    struct anchor key = {(char *)name, NULL}, **slot;

    slot = tfind(&key, anchors, anchor_cmp);
    return slot ? (*slot)->node : NULL;
}

/* Decoding context: diagnostics plus the current field path. */
struct dctx {
    struct ar_diags *diags;
    const char *file;
    bool json; /* the input looked like JSON (first non-blank byte '{') */
    int nomem;
    size_t nerr;
    char path[1024];
    size_t plen;
};

static void derr(struct dctx *dc, struct ar_pos pos, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void derr(struct dctx *dc, struct ar_pos pos, const char *path, const char *fmt, ...)
{
    char *msg = NULL;
    va_list ap;
    int n;

    dc->nerr++;
    va_start(ap, fmt);
    n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (n < 0) {
        dc->nomem = 1;
        return;
    }
    if (ar_diags_add(dc->diags, AR_SEV_ERROR, dc->file, pos, path, "%s", msg) < 0)
        dc->nomem = 1;
    free(msg);
}

static struct ar_pos mark_pos(yaml_mark_t m)
{
    struct ar_pos p = {(int)m.line + 1, (int)m.column + 1};
    return p;
}

static void wipe_parser(yaml_parser_t *p)
{
    yaml_token_t *t;

    if (p->raw_buffer.start && p->raw_buffer.end > p->raw_buffer.start)
        sodium_memzero(p->raw_buffer.start, (size_t)(p->raw_buffer.end - p->raw_buffer.start));
    if (p->buffer.start && p->buffer.end > p->buffer.start)
        sodium_memzero(p->buffer.start, (size_t)(p->buffer.end - p->buffer.start));
    for (t = p->tokens.head; t && t != p->tokens.tail; t++) {
        if (t->type == YAML_SCALAR_TOKEN && t->data.scalar.value)
            sodium_memzero(t->data.scalar.value, t->data.scalar.length);
    }
}

static void wipe_event(yaml_event_t *ev)
{
    if (ev->type == YAML_SCALAR_EVENT && ev->data.scalar.value)
        sodium_memzero(ev->data.scalar.value, ev->data.scalar.length);
}

/* Build the tree of the first document. Returns 0 (root may be NULL for an empty document),
 * -EINVAL after a diagnostic, -ENOMEM. */
static int tree_build(struct dctx *dc, const uint8_t *buf, size_t len, struct yn **rootp)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    struct yn *stack[AR_CFG_MAX_DEPTH];
    size_t depth = 0, nodes = 0;
    struct yn *root = NULL;
    void *anchors = NULL;
    bool done = false;
    int rc = 0;

    *rootp = NULL;
    if (!yaml_parser_initialize(&parser))
        return -ENOMEM;
    yaml_parser_set_input_string(&parser, buf, len);
    while (!done) {
        struct yn *n = NULL;
        const yaml_char_t *anchor = NULL;

        if (!yaml_parser_parse(&parser, &ev)) {
            int line = 0;
            if (parser.error == YAML_MEMORY_ERROR) {
                rc = -ENOMEM;
                goto out;
            }
            /* As goyaml.v2 (sigs.k8s.io/yaml) words it. */
            if (parser.problem_mark.line != 0) {
                line = (int)parser.problem_mark.line;
                if (parser.error == YAML_SCANNER_ERROR)
                    line++;
            } else if (parser.context_mark.line != 0) {
                line = (int)parser.context_mark.line;
            }
            if (line)
                derr(dc, mark_pos(parser.problem_mark), "",
                     "error converting YAML to JSON: yaml: line %d: %s", line,
                     parser.problem ? parser.problem : "unknown problem parsing YAML content");
            else
                derr(dc, mark_pos(parser.problem_mark), "",
                     "error converting YAML to JSON: yaml: %s",
                     parser.problem ? parser.problem : "unknown problem parsing YAML content");
            rc = -EINVAL;
            goto out;
        }
        switch (ev.type) {
        case YAML_DOCUMENT_END_EVENT:
        case YAML_STREAM_END_EVENT:
            done = true; /* only the first document counts, as in sigs.k8s.io/yaml */
            break;
        case YAML_ALIAS_EVENT:
        case YAML_SCALAR_EVENT:
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            if (++nodes > AR_CFG_MAX_NODES) {
                derr(dc, mark_pos(ev.start_mark), "",
                     "error converting YAML to JSON: more than %d YAML nodes", AR_CFG_MAX_NODES);
                rc = -EINVAL;
                break;
            }
            n = calloc(1, sizeof(*n));
            if (!n) {
                rc = -ENOMEM;
                break;
            }
            n->pos = mark_pos(ev.start_mark);
            if (ev.type == YAML_ALIAS_EVENT) {
                const char *name = (const char *)ev.data.alias.anchor;

                n->kind = YN_ALIAS;
                n->target = anchor_get(&anchors, ev.data.alias.anchor);
                n->len = strlen(name);
                n->s = strdup(name);
                if (!n->s) {
                    free(n);
                    rc = -ENOMEM;
                    break;
                }
                if (!n->target) {
                    /* goyaml.v2's parser fails here, before anything is decoded */
                    derr(dc, n->pos, "",
                         "error converting YAML to JSON: yaml: unknown anchor '%s' referenced",
                         name);
                    yn_free(n);
                    rc = -EINVAL;
                    break;
                }
                n->cyclic = n->target->open;
                yn_measure(n);
            } else if (ev.type == YAML_SCALAR_EVENT) {
                const char *tag = (const char *)ev.data.scalar.tag;
                n->kind = YN_SCALAR;
                n->len = ev.data.scalar.length;
                n->s = malloc(n->len + 1);
                if (!n->s) {
                    free(n);
                    rc = -ENOMEM;
                    break;
                }
                memcpy(n->s, ev.data.scalar.value, n->len);
                n->s[n->len] = '\0';
                n->str_tag = tag && strcmp(tag, YAML_STR_TAG) == 0;
                n->plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE && !n->str_tag;
                /* goyaml.v2 isMerge: "<<", implicit or tagged !!merge */
                n->merge = n->len == 2 && memcmp(n->s, "<<", 2) == 0 &&
                           (ev.data.scalar.plain_implicit ||
                            (tag && strcmp(tag, "tag:yaml.org,2002:merge") == 0));
                anchor = ev.data.scalar.anchor;
                yn_measure(n);
            } else {
                n->kind = ev.type == YAML_MAPPING_START_EVENT ? YN_MAP : YN_SEQ;
                n->open = true;
                anchor = ev.type == YAML_MAPPING_START_EVENT ? ev.data.mapping_start.anchor
                                                             : ev.data.sequence_start.anchor;
            }
            if (depth == 0) {
                root = n;
            } else if (yn_push(stack[depth - 1], n) < 0) {
                yn_free(n);
                rc = -ENOMEM;
                break;
            }
            /* registered when the node starts: an alias inside its own node is a cycle */
            if (anchor && anchor_put(&anchors, anchor, n) < 0) {
                rc = -ENOMEM;
                break;
            }
            if (n->kind == YN_SEQ || n->kind == YN_MAP) {
                if (depth == AR_CFG_MAX_DEPTH) {
                    derr(dc, n->pos, "",
                         "error converting YAML to JSON: nesting deeper than %d levels",
                         AR_CFG_MAX_DEPTH);
                    rc = -EINVAL;
                    break;
                }
                stack[depth++] = n;
            }
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            if (depth > 0) {
                n = stack[--depth];
                n->open = false;
                yn_measure(n);
                if (n->mdepth > AR_CFG_MAX_DEPTH) {
                    derr(dc, n->pos, "",
                         "error converting YAML to JSON: merge keys nested deeper than %d levels",
                         AR_CFG_MAX_DEPTH);
                    rc = -EINVAL;
                }
            }
            break;
        default:
            break;
        }
        wipe_event(&ev);
        yaml_event_delete(&ev);
        if (rc < 0 || dc->nomem)
            break;
    }
out:
    tdestroy(anchors, anchor_free);
    wipe_parser(&parser);
    yaml_parser_delete(&parser);
    if (rc == 0 && dc->nomem)
        rc = -ENOMEM;
    if (rc < 0) {
        yn_free(root);
        return rc;
    }
    *rootp = root;
    return 0;
}

/*
 * goyaml.v2 decodes the whole document (sigs.k8s.io/yaml converts it all to JSON) before any
 * field is looked at, and fails on the first of: an alias inside its own anchor, a merge
 * value that is not a mapping or a sequence of mappings, and excessive aliasing (decoder
 * .unmarshal: more than 100 decode operations from alias expansion, more than 1000 in all,
 * and a share of aliased ones above allowedAliasRatio). This walk replays that decode in the
 * same order without expanding anything: inside one expansion every step counts for both
 * figures, so the ratio only rises and the allowed ratio only falls until it ends, and the
 * check at its end stands for every step of it.
 */
struct awalk {
    uint64_t decodes, aliased;
};

static bool excessive_aliasing(const struct awalk *w)
{
    double allowed, d = (double)w->decodes;

    if (w->aliased <= 100 || w->decodes <= 1000)
        return false;
    if (w->decodes <= 400000)
        allowed = 0.99;
    else if (w->decodes >= 4000000)
        allowed = 0.10;
    else
        allowed = 0.99 - 0.89 * ((double)(w->decodes - 400000) / 3600000.0);
    return (double)w->aliased / d > allowed;
}

static int tree_walk(struct dctx *dc, struct awalk *w, const struct yn *n);

static int walk_merge(struct dctx *dc, struct awalk *w, const struct yn *v)
{
    size_t i;
    int rc;

    if (v->kind == YN_MAP || (v->kind == YN_ALIAS && v->target->kind == YN_MAP))
        return tree_walk(dc, w, v);
    if (v->kind == YN_SEQ) {
        for (i = v->n; i-- > 0;) {
            if (yd(v->kids[i])->kind != YN_MAP) {
                v = v->kids[i];
                goto bad;
            }
            rc = tree_walk(dc, w, v->kids[i]);
            if (rc < 0)
                return rc;
        }
        return 0;
    }
bad:
    derr(dc, v->pos, "",
         "error converting YAML to JSON: yaml: map merge requires map or sequence of maps as the "
         "value");
    return -EINVAL;
}

static int tree_walk(struct dctx *dc, struct awalk *w, const struct yn *n)
{
    size_t i;
    int rc;

    w->decodes++;
    if (excessive_aliasing(w))
        goto excessive;
    switch (n->kind) {
    case YN_SCALAR:
        return 0;
    case YN_ALIAS:
        if (n->cyclic) {
            derr(dc, n->pos, "",
                 "error converting YAML to JSON: yaml: anchor '%s' value contains itself", n->s);
            return -EINVAL;
        }
        w->decodes = sat_add(w->decodes, n->target->esize);
        w->aliased = sat_add(w->aliased, n->target->esize);
        if (excessive_aliasing(w))
            goto excessive;
        return 0;
    case YN_SEQ:
        for (i = 0; i < n->n; i++)
            if ((rc = tree_walk(dc, w, n->kids[i])) < 0)
                return rc;
        return 0;
    case YN_MAP:
        for (i = 0; i + 1 < n->n; i += 2) {
            if (n->kids[i]->merge)
                rc = walk_merge(dc, w, n->kids[i + 1]);
            else if ((rc = tree_walk(dc, w, n->kids[i])) == 0)
                rc = tree_walk(dc, w, n->kids[i + 1]);
            if (rc < 0)
                return rc;
        }
        return 0;
    }
    return 0;
excessive:
    derr(dc, n->pos, "",
         "error converting YAML to JSON: yaml: document contains excessive aliasing");
    return -EINVAL;
}

/* What goyaml.v2 refuses in the whole document, then atrest's own bounds on the expansion: the
 * effective file is written expanded and must load again, so the expansion may hold no more
 * nodes and no more scalar bytes than a file may. */
static int tree_check(struct dctx *dc, const struct yn *root, size_t max_bytes)
{
    struct awalk w = {1, 0}; /* the document node is the first decode operation */
    int rc;

    if (!root)
        return 0;
    rc = tree_walk(dc, &w, root);
    if (rc < 0)
        return rc;
    if (root->enodes > AR_CFG_MAX_NODES) {
        derr(dc, root->pos, "",
             "error converting YAML to JSON: more than %d YAML nodes once aliases are expanded",
             AR_CFG_MAX_NODES);
        return -EINVAL;
    }
    if (root->ebytes > max_bytes) {
        derr(dc, root->pos, "",
             "error converting YAML to JSON: more than %zu bytes of scalars once aliases are "
             "expanded",
             max_bytes);
        return -EINVAL;
    }
    return 0;
}

/* ---- strict decoding into the Go-shaped model ---------------------------------------------- */

enum jt { JT_NULL, JT_BOOL, JT_NUMBER, JT_STRING, JT_ARRAY, JT_OBJECT };

static bool str_in(const char *s, const char *const *set)
{
    for (; *set; set++)
        if (strcmp(s, *set) == 0)
            return true;
    return false;
}

/* goyaml.v2 resolve() for a plain scalar, reduced to what JSON type it becomes. */
static bool resolve_number(const char *s, double *dv, bool *is_int, long long *iv)
{
    char buf[128], *end;
    size_t i, k = 0;
    int base = 10;
    const char *p;
    bool neg = false;

    for (i = 0; s[i]; i++) {
        if (s[i] == '_')
            continue;
        if (k + 1 >= sizeof(buf))
            return false;
        buf[k++] = s[i];
    }
    buf[k] = '\0';
    if (k == 0)
        return false;
    p = buf;
    if (*p == '+' || *p == '-') {
        neg = *p == '-';
        p++;
    }
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))
        base = 16, p += 2;
    else if (p[0] == '0' && (p[1] == 'o' || p[1] == 'O'))
        base = 8, p += 2;
    else if (p[0] == '0' && (p[1] == 'b' || p[1] == 'B'))
        base = 2, p += 2;
    else if (p[0] == '0' && p[1])
        base = 8, p += 1;
    if (*p && (isalnum((unsigned char)*p))) {
        unsigned long long u;
        bool ok = true;
        for (i = 0; p[i]; i++) {
            int c = (unsigned char)p[i], d;
            if (c >= '0' && c <= '9')
                d = c - '0';
            else if (c >= 'a' && c <= 'z')
                d = c - 'a' + 10;
            else if (c >= 'A' && c <= 'Z')
                d = c - 'A' + 10;
            else
                d = 99;
            if (d >= base) {
                ok = false;
                break;
            }
        }
        if (ok) {
            errno = 0;
            u = strtoull(p, &end, base);
            if (errno == 0 && *end == '\0') {
                *is_int = true;
                if (neg ? u <= (unsigned long long)LLONG_MAX + 1ULL
                        : u <= (unsigned long long)LLONG_MAX)
                    *iv = neg ? (long long)(0ULL - u) : (long long)u;
                else
                    *is_int = false; /* a huge uint: still a number, never an int32 */
                *dv = neg ? -(double)u : (double)u;
                return true;
            }
        }
    }
    /* yamlStyleFloat: ^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$ */
    p = buf;
    if (*p == '+' || *p == '-')
        p++;
    {
        const char *q = p;
        size_t nd = 0;
        if (*q == '.') {
            q++;
            while (isdigit((unsigned char)*q))
                q++, nd++;
            if (nd == 0)
                goto special;
        } else {
            while (isdigit((unsigned char)*q))
                q++, nd++;
            if (nd == 0)
                goto special;
            if (*q == '.') {
                q++;
                while (isdigit((unsigned char)*q))
                    q++;
            }
        }
        if (*q == 'e' || *q == 'E') {
            size_t ne = 0;
            q++;
            if (*q == '+' || *q == '-')
                q++;
            while (isdigit((unsigned char)*q))
                q++, ne++;
            if (ne == 0)
                return false;
        }
        if (*q)
            return false;
        errno = 0;
        *dv = strtod(buf, &end);
        *is_int = false;
        return *end == '\0';
    }
special : {
    static const char *const inf[] = {".inf",  ".Inf",  ".INF", "+.inf", "+.Inf", "+.INF", "-.inf",
                                      "-.Inf", "-.INF", ".nan", ".NaN",  ".NAN",  NULL};
    if (str_in(s, inf)) {
        *is_int = false;
        *dv = 0;
        return true;
    }
}
    return false;
}

static enum jt node_jt(const struct yn *n)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};
    static const char *const bools[] = {
        "y", "Y",  "yes", "Yes", "YES",   "true",  "True",  "TRUE", "on",  "On",  "ON", "n",
        "N", "no", "No",  "NO",  "false", "False", "FALSE", "off",  "Off", "OFF", NULL};
    double d;
    bool isint;
    long long iv;

    n = yd(n);
    if (!n)
        return JT_NULL;
    if (n->kind == YN_SEQ)
        return JT_ARRAY;
    if (n->kind == YN_MAP)
        return JT_OBJECT;
    if (!n->plain)
        return JT_STRING;
    if (str_in(n->s, nulls))
        return JT_NULL;
    if (str_in(n->s, bools))
        return JT_BOOL;
    if (resolve_number(n->s, &d, &isint, &iv))
        return JT_NUMBER;
    return JT_STRING;
}

static const char *jt_name(enum jt t)
{
    switch (t) {
    case JT_NULL:
        return "null";
    case JT_BOOL:
        return "bool";
    case JT_NUMBER:
        return "number";
    case JT_STRING:
        return "string";
    case JT_ARRAY:
        return "array";
    case JT_OBJECT:
        return "object";
    }
    return "value";
}

/* Path handling: push ".name" or "[i]" (the root segment has no dot). */
static size_t path_push_field(struct dctx *dc, const char *name)
{
    size_t old = dc->plen;
    int n = snprintf(dc->path + dc->plen, sizeof(dc->path) - dc->plen, "%s%s", dc->plen ? "." : "",
                     name);
    if (n > 0)
        dc->plen +=
            (size_t)n < sizeof(dc->path) - dc->plen ? (size_t)n : sizeof(dc->path) - dc->plen - 1;
    return old;
}

static size_t path_push_index(struct dctx *dc, size_t i)
{
    size_t old = dc->plen;
    int n = snprintf(dc->path + dc->plen, sizeof(dc->path) - dc->plen, "[%zu]", i);
    if (n > 0)
        dc->plen +=
            (size_t)n < sizeof(dc->path) - dc->plen ? (size_t)n : sizeof(dc->path) - dc->plen - 1;
    return old;
}

static void path_pop(struct dctx *dc, size_t old)
{
    dc->plen = old;
    dc->path[old] = '\0';
}

/* Go's UnmarshalTypeError.Field: the json names of the path, without indices. */
static void go_field_stack(const struct dctx *dc, char *out, size_t len)
{
    size_t i, k = 0;
    bool skip = false;

    for (i = 0; i < dc->plen && k + 1 < len; i++) {
        char c = dc->path[i];
        if (c == '[') {
            skip = true;
            continue;
        }
        if (c == ']') {
            skip = false;
            continue;
        }
        if (!skip)
            out[k++] = c;
    }
    out[k] = '\0';
}

static void type_error(struct dctx *dc, const struct yn *n, const char *gostruct,
                       const char *gotype)
{
    char fs[1024];
    enum jt t = node_jt(n);

    go_field_stack(dc, fs, sizeof(fs));
    derr(dc, n->pos, dc->path, "json: cannot unmarshal %s into Go struct field %s.%s of type %s",
         jt_name(t), gostruct, fs, gotype);
}

static char *xstrdup(struct dctx *dc, const char *s)
{
    char *r = strdup(s);
    if (!r)
        dc->nomem = 1;
    return r;
}

/* Go strings may hold NUL bytes ("\0" in a double-quoted YAML scalar, "\u0000" in JSON); ours
 * are C strings. Such a string is refused rather than silently cut short. */
static bool nul_error(struct dctx *dc, const struct yn *v)
{
    if (!memchr(v->s, '\0', v->len))
        return false;
    derr(dc, v->pos, dc->path, "atrest: a NUL byte in a string is not supported");
    return true;
}

/* A string field. Null leaves it "", as Go does. */
static void dec_string(struct dctx *dc, const struct yn *v, const char *gostruct, char **out)
{
    enum jt t = node_jt(v);

    if (t == JT_NULL)
        return;
    if (t != JT_STRING) {
        type_error(dc, v, gostruct, "string");
        return;
    }
    if (nul_error(dc, v))
        return;
    free(*out);
    *out = xstrdup(dc, v->s);
}

/* An unknown field name this long is not a misspelt field of the API (the longest is 10
 * bytes): it may be a key written where a field name goes ("secret:KEY" in flow style, "secret
 * KEY", a key on a line of its own), so it is shown as REDACTED, as secrets are. */
#define UNKNOWN_FIELD_MAX_SHOWN 20

/* The strict decoder's unknown-field error: Go prints the path with %q. The diagnostic's path
 * shows a NUL in the field name as \x00. */
static void unknown_field(struct dctx *dc, size_t old, const struct yn *k)
{
    bool hide = k->len > UNKNOWN_FIELD_MAX_SHOWN;
    const char *name = hide ? "REDACTED" : k->s;
    size_t nlen = hide ? strlen(name) : k->len;
    size_t n = old + 1 + nlen;
    char *raw = malloc(n + 1), *q = NULL;

    if (!raw) {
        dc->nomem = 1;
        return;
    }
    memcpy(raw, dc->path, old);
    n = old;
    if (old)
        raw[n++] = '.';
    memcpy(raw + n, name, nlen);
    n += nlen;
    raw[n] = '\0';
    q = ar_go_quote(raw, n);
    if (q) {
        if (hide) {
            path_pop(dc, old);
            path_push_field(dc, name);
        } else if (memchr(k->s, '\0', k->len)) {
            char *qk = ar_go_quote(k->s, k->len);
            if (qk) {
                qk[strlen(qk) - 1] = '\0';
                path_pop(dc, old);
                path_push_field(dc, qk + 1);
            }
            free(qk);
        }
        derr(dc, k->pos, dc->path, "strict decoding error: unknown field %s", q);
    } else {
        dc->nomem = 1;
    }
    free(q);
    free(raw);
}

struct field {
    const char *name;
};

/* Iterate a struct-like mapping: call fn for every known field; unknown and duplicate fields
 * are strict decoding errors. fields[] at most 16 entries. */
typedef void (*field_fn)(struct dctx *dc, void *obj, int idx, const struct yn *key,
                         const struct yn *val);

/*
 * The entries of a mapping in the order goyaml.v2 sets them: its own entries in order, a merge
 * key's mappings where the merge key stands (a sequence of them last to first). A key set
 * again is a duplicate under strict decoding, also when a merge brought the first one (go-yaml
 * v2 issue #410, kubernetes-sigs/yaml issue #46). k is the key's node (an alias resolved), v
 * the value as written (possibly an alias). Merge nesting is bounded by tree_build.
 */
typedef void (*entry_fn)(struct dctx *dc, void *ctx, const struct yn *k, const struct yn *v);

static void map_each(struct dctx *dc, const struct yn *map, entry_fn fn, void *ctx)
{
    size_t i, j;

    map = yd(map);
    if (map->kind != YN_MAP) /* a bad merge value: tree_check refused the document already */
        return;
    for (i = 0; i + 1 < map->n; i += 2) {
        const struct yn *k = map->kids[i], *v = map->kids[i + 1];

        if (!k->merge)
            fn(dc, ctx, yd(k), v);
        else if (v->kind == YN_SEQ) /* last to first: earlier mappings take precedence */
            for (j = v->n; j-- > 0;)
                map_each(dc, v->kids[j], fn, ctx);
        else
            map_each(dc, v, fn, ctx);
    }
}

struct struct_ctx {
    const char *const *fields;
    void *obj;
    field_fn fn;
    unsigned seen;
};

static void struct_entry(struct dctx *dc, void *ctx, const struct yn *k, const struct yn *v)
{
    struct struct_ctx *sc = ctx;
    size_t old;
    int idx;

    if (k->kind != YN_SCALAR) {
        derr(dc, k->pos, dc->path, "error converting YAML to JSON: yaml: invalid map key");
        return;
    }
    for (idx = 0; sc->fields[idx]; idx++)
        if (strlen(sc->fields[idx]) == k->len && memcmp(sc->fields[idx], k->s, k->len) == 0)
            break;
    old = path_push_field(dc, k->s);
    if (!sc->fields[idx]) {
        unknown_field(dc, old, k);
    } else if (sc->seen & (1u << idx)) {
        if (dc->json)
            derr(dc, k->pos, dc->path, "strict decoding error: duplicate field \"%s\"", dc->path);
        else /* goyaml.v2 setMapIndex names the line of the value it was about to set */
            derr(dc, k->pos, dc->path,
                 "strict decoding error: yaml: unmarshal errors: line %d: key \"%s\" already "
                 "set in map",
                 v->pos.line, k->s);
    } else {
        sc->seen |= 1u << idx;
        sc->fn(dc, sc->obj, idx, k, yd(v));
    }
    path_pop(dc, old);
}

static void dec_struct(struct dctx *dc, const struct yn *map, const char *const *fields, void *obj,
                       field_fn fn)
{
    struct struct_ctx sc = {fields, obj, fn, 0};

    map_each(dc, map, struct_entry, &sc);
}

/* Key {name, secret} */
static const char *const key_fields[] = {"name", "secret", NULL};

static void key_field(struct dctx *dc, void *obj, int idx, const struct yn *k, const struct yn *v)
{
    struct dkey *key = obj;
    enum jt t = node_jt(v);

    if (idx == 0) {
        dec_string(dc, v, "Key", &key->name);
        key->name_pos = v->pos;
        return;
    }
    key->secret_pos = v->pos;
    if (t == JT_NULL)
        return;
    if (t != JT_STRING) {
        type_error(dc, v, "Key", "string");
        return;
    }
    key->secret = v->s; /* borrowed from the tree, decoded later into the arena */
    key->secret_len = v->len;
}

/* keys: []Key inside AESConfiguration / SecretboxConfiguration */
static const char *const keys_fields[] = {"keys", NULL};

struct keys_obj {
    struct dkeys *ks;
    const char *gostruct;
};

static void keys_field(struct dctx *dc, void *obj, int idx, const struct yn *k, const struct yn *v)
{
    struct keys_obj *ko = obj;
    struct dkeys *ks = ko->ks;
    enum jt t = node_jt(v);
    size_t i;

    ks->keys_pos = v->pos;
    if (t == JT_NULL)
        return;
    if (t != JT_ARRAY) {
        type_error(dc, v, ko->gostruct, "[]v1.Key");
        return;
    }
    ks->v = calloc(v->n ? v->n : 1, sizeof(*ks->v));
    if (!ks->v) {
        dc->nomem = 1;
        return;
    }
    ks->n = v->n;
    for (i = 0; i < v->n; i++) {
        const struct yn *e = yd(v->kids[i]);
        size_t old = path_push_index(dc, i);
        struct dkey *key = &ks->v[i];

        key->name = xstrdup(dc, "");
        key->pos = key->name_pos = key->secret_pos = e->pos;
        t = node_jt(e);
        if (t == JT_OBJECT)
            dec_struct(dc, e, key_fields, key, key_field);
        else if (t != JT_NULL)
            type_error(dc, e, ko->gostruct, "v1.Key");
        path_pop(dc, old);
    }
}

static void dec_keys(struct dctx *dc, const struct yn *v, struct dkeys *ks, const char *gostruct,
                     const char *gotype)
{
    enum jt t = node_jt(v);
    struct keys_obj ko = {ks, gostruct};

    if (t == JT_NULL)
        return;
    if (t != JT_OBJECT) {
        type_error(dc, v, "ProviderConfiguration", gotype);
        return;
    }
    ks->set = true;
    ks->pos = ks->keys_pos = v->pos;
    dec_struct(dc, v, keys_fields, &ko, keys_field);
}

/*
 * A YAML number as Go's JSON decoder sees it after sigs.k8s.io/yaml converted the document:
 * goyaml resolved it to an int (written in decimal) or a float64 (written by json.Marshal:
 * shortest 'f' form for 1e-6 <= |x| < 1e21). A float with an integral value is then an int
 * like any other ("1.0" and "1e3" decode into an int32). num gets the text Go would print.
 */
static void yaml_json_number(const char *s, double d, bool *isint, long long *iv, char *num,
                             size_t len)
{
    double a = d < 0 ? -d : d;
    int p;

    if (*isint) {
        snprintf(num, len, "%lld", *iv);
        return;
    }
    if (!(a >= 1e-6 && a < 1e21) && d != 0) {
        snprintf(num, len, "%s", s); /* 'e' form, Inf, NaN: not an int32 in any case */
        return;
    }
    if (a < 9.2e18 && (double)(long long)d == d) {
        *iv = (long long)d;
        *isint = true;
        snprintf(num, len, "%lld", *iv);
        return;
    }
    for (p = 0; p < 40; p++) { /* the shortest fixed form that reads back the same */
        snprintf(num, len, "%.*f", p, d);
        if (strtod(num, NULL) == d)
            return;
    }
}

/* KMSConfiguration */
static const char *const kms_fields[] = {"apiVersion", "name",    "cachesize",
                                         "endpoint",   "timeout", NULL};

static void kms_field(struct dctx *dc, void *obj, int idx, const struct yn *k, const struct yn *v)
{
    struct dkms *kms = obj;
    enum jt t = node_jt(v);

    switch (idx) {
    case 0:
        kms->api_pos = v->pos;
        dec_string(dc, v, "KMSConfiguration", &kms->api_version);
        break;
    case 1:
        kms->name_pos = v->pos;
        dec_string(dc, v, "KMSConfiguration", &kms->name);
        break;
    case 2: {
        double d;
        bool isint = false;
        long long iv = 0;
        char num[400];

        kms->cache_pos = v->pos;
        if (t == JT_NULL)
            break;
        if (t != JT_NUMBER) {
            type_error(dc, v, "KMSConfiguration", "int32");
            break;
        }
        if (!resolve_number(v->s, &d, &isint, &iv)) {
            type_error(dc, v, "KMSConfiguration", "int32");
            break;
        }
        if (!dc->json)
            yaml_json_number(v->s, d, &isint, &iv, num, sizeof(num));
        else
            snprintf(num, sizeof(num), "%s", v->s);
        if (!isint || iv < INT32_MIN || iv > INT32_MAX) {
            char fs[1024];
            go_field_stack(dc, fs, sizeof(fs));
            derr(dc, v->pos, dc->path,
                 "json: cannot unmarshal number %s into Go struct field KMSConfiguration.%s of "
                 "type int32",
                 num, fs);
            break;
        }
        kms->cachesize_set = true;
        kms->cachesize = (int32_t)iv;
        break;
    }
    case 3:
        kms->endpoint_pos = v->pos;
        dec_string(dc, v, "KMSConfiguration", &kms->endpoint);
        break;
    case 4: {
        char err[256];

        kms->timeout_pos = v->pos;
        if (t == JT_NULL)
            break;
        if (t != JT_STRING) {
            /* metav1.Duration.UnmarshalJSON unmarshals into a string first */
            derr(dc, v->pos, dc->path, "json: cannot unmarshal %s into Go value of type string",
                 jt_name(t));
            break;
        }
        if (ar_parse_go_duration(v->s, &kms->timeout_ns, err, sizeof(err)) < 0) {
            derr(dc, v->pos, dc->path, "%s", err);
            break;
        }
        kms->timeout_set = true;
        break;
    }
    default:
        break;
    }
}

/* ProviderConfiguration */
static const char *const prov_fields[] = {"aesgcm", "aescbc", "secretbox", "identity", "kms", NULL};
static const char *const no_fields[] = {NULL};

static void no_field(struct dctx *dc, void *obj, int idx, const struct yn *k, const struct yn *v)
{
}

static void prov_field(struct dctx *dc, void *obj, int idx, const struct yn *k, const struct yn *v)
{
    struct dprov *p = obj;
    enum jt t = node_jt(v);

    switch (idx) {
    case 0:
        dec_keys(dc, v, &p->aesgcm, "AESConfiguration", "v1.AESConfiguration");
        break;
    case 1:
        dec_keys(dc, v, &p->aescbc, "AESConfiguration", "v1.AESConfiguration");
        break;
    case 2:
        dec_keys(dc, v, &p->secretbox, "SecretboxConfiguration", "v1.SecretboxConfiguration");
        break;
    case 3:
        if (t == JT_NULL)
            break;
        if (t != JT_OBJECT) {
            type_error(dc, v, "ProviderConfiguration", "v1.IdentityConfiguration");
            break;
        }
        p->identity = true;
        dec_struct(dc, v, no_fields, NULL, no_field);
        break;
    case 4:
        if (t == JT_NULL)
            break;
        if (t != JT_OBJECT) {
            type_error(dc, v, "ProviderConfiguration", "v1.KMSConfiguration");
            break;
        }
        p->kms.set = true;
        p->kms.pos = p->kms.api_pos = p->kms.name_pos = p->kms.endpoint_pos = p->kms.cache_pos =
            p->kms.timeout_pos = v->pos;
        p->kms.api_version = xstrdup(dc, "");
        p->kms.name = xstrdup(dc, "");
        p->kms.endpoint = xstrdup(dc, "");
        dec_struct(dc, v, kms_fields, &p->kms, kms_field);
        break;
    default:
        break;
    }
}

/* ResourceConfiguration */
static const char *const rule_fields[] = {"resources", "providers", NULL};

static void rule_field(struct dctx *dc, void *obj, int idx, const struct yn *k, const struct yn *v)
{
    struct drule *r = obj;
    enum jt t = node_jt(v);
    size_t i;

    if (idx == 0) {
        r->res_list_pos = v->pos;
        if (t == JT_NULL)
            return;
        if (t != JT_ARRAY) {
            type_error(dc, v, "ResourceConfiguration", "[]string");
            return;
        }
        r->res = calloc(v->n ? v->n : 1, sizeof(*r->res));
        r->res_pos = calloc(v->n ? v->n : 1, sizeof(*r->res_pos));
        if (!r->res || !r->res_pos) {
            dc->nomem = 1;
            return;
        }
        r->nres = v->n;
        for (i = 0; i < v->n; i++) {
            const struct yn *e = yd(v->kids[i]);
            size_t old = path_push_index(dc, i);

            r->res_pos[i] = e->pos;
            r->res[i] = xstrdup(dc, "");
            t = node_jt(e);
            if (t == JT_STRING) {
                if (!nul_error(dc, e)) {
                    free(r->res[i]);
                    r->res[i] = xstrdup(dc, e->s);
                }
            } else if (t != JT_NULL) {
                type_error(dc, e, "ResourceConfiguration", "string");
            }
            path_pop(dc, old);
        }
        return;
    }
    r->prov_list_pos = v->pos;
    if (t == JT_NULL)
        return;
    if (t != JT_ARRAY) {
        type_error(dc, v, "ResourceConfiguration", "[]v1.ProviderConfiguration");
        return;
    }
    r->prov = calloc(v->n ? v->n : 1, sizeof(*r->prov));
    if (!r->prov) {
        dc->nomem = 1;
        return;
    }
    r->nprov = v->n;
    for (i = 0; i < v->n; i++) {
        const struct yn *e = yd(v->kids[i]);
        size_t old = path_push_index(dc, i);

        r->prov[i].pos = e->pos;
        t = node_jt(e);
        if (t == JT_OBJECT)
            dec_struct(dc, e, prov_fields, &r->prov[i], prov_field);
        else if (t != JT_NULL)
            type_error(dc, e, "ResourceConfiguration", "v1.ProviderConfiguration");
        path_pop(dc, old);
    }
}

/* EncryptionConfiguration (root) */
static const char *const root_fields[] = {"kind", "apiVersion", "resources", NULL};

static void root_field(struct dctx *dc, void *obj, int idx, const struct yn *k, const struct yn *v)
{
    struct dconf *c = obj;
    enum jt t = node_jt(v);
    size_t i;

    if (idx != 2)
        return; /* kind and apiVersion were checked before */
    c->rules_pos = v->pos;
    if (t == JT_NULL)
        return;
    if (t != JT_ARRAY) {
        type_error(dc, v, "EncryptionConfiguration", "[]v1.ResourceConfiguration");
        return;
    }
    c->rules = calloc(v->n ? v->n : 1, sizeof(*c->rules));
    if (!c->rules) {
        dc->nomem = 1;
        return;
    }
    c->nrules = v->n;
    for (i = 0; i < v->n; i++) {
        const struct yn *e = yd(v->kids[i]);
        size_t old = path_push_index(dc, i);
        struct drule *r = &c->rules[i];

        r->pos = r->res_list_pos = r->prov_list_pos = e->pos;
        t = node_jt(e);
        if (t == JT_OBJECT)
            dec_struct(dc, e, rule_fields, r, rule_field);
        else if (t != JT_NULL)
            type_error(dc, e, "EncryptionConfiguration", "v1.ResourceConfiguration");
        path_pop(dc, old);
    }
}

struct get_ctx {
    const char *name;
    const struct yn *found;
};

static void get_entry(struct dctx *dc, void *ctx, const struct yn *k, const struct yn *v)
{
    struct get_ctx *g = ctx;

    if (k->kind == YN_SCALAR && k->len == strlen(g->name) && memcmp(k->s, g->name, k->len) == 0)
        g->found = yd(v); /* the last one wins, as in the JSON sigs.k8s.io/yaml writes */
}

static const struct yn *map_get(const struct yn *map, const char *name)
{
    struct get_ctx g = {name, NULL};

    map_each(NULL, map, get_entry, &g);
    return g.found;
}

/* A scalar equal to s, NUL bytes included. */
static bool node_is(const struct yn *n, const char *s)
{
    return n->len == strlen(s) && memcmp(n->s, s, n->len) == 0;
}

/* runtime.Decode's type sniffing (SimpleMetaFactory.Interpret, then the scheme lookup). */
static int check_gvk(struct dctx *dc, const struct yn *root, bool *legacy)
{
    static const char anon[] = "struct { APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; "
                               "Kind string \"json:\\\"kind,omitempty\\\"\" }";
    struct ar_pos p0 = {0, 0};
    const struct yn *kind, *ver;
    enum jt t = node_jt(root);

    if (t != JT_OBJECT && t != JT_NULL) {
        derr(dc, root->pos, "",
             "couldn't get version/kind; json parse error: json: cannot unmarshal %s into Go "
             "value of type %s",
             jt_name(t), anon);
        return -EINVAL;
    }
    kind = t == JT_OBJECT ? map_get(root, "kind") : NULL;
    ver = t == JT_OBJECT ? map_get(root, "apiVersion") : NULL;
    if (kind && node_jt(kind) != JT_STRING && node_jt(kind) != JT_NULL) {
        derr(dc, kind->pos, "kind",
             "couldn't get version/kind; json parse error: json: cannot unmarshal %s into Go "
             "struct field .kind of type string",
             jt_name(node_jt(kind)));
        return -EINVAL;
    }
    if (ver && node_jt(ver) != JT_STRING && node_jt(ver) != JT_NULL) {
        derr(dc, ver->pos, "apiVersion",
             "couldn't get version/kind; json parse error: json: cannot unmarshal %s into Go "
             "struct field .apiVersion of type string",
             jt_name(node_jt(ver)));
        return -EINVAL;
    }
    /* The original file text is not repeated here: it may hold keys. */
    if (!kind || node_jt(kind) == JT_NULL || kind->len == 0) {
        derr(dc, root ? root->pos : p0, "",
             "Object 'Kind' is missing in '<the file content is not repeated>'");
        return -EINVAL;
    }
    if (!ver || node_jt(ver) == JT_NULL || ver->len == 0) {
        derr(dc, root->pos, "",
             "Object 'apiVersion' is missing in '<the file content is not repeated>'");
        return -EINVAL;
    }
    if (node_is(ver, "apiserver.config.k8s.io/v1") && node_is(kind, "EncryptionConfiguration")) {
        *legacy = false;
        return 0;
    }
    if (node_is(ver, "v1") && node_is(kind, "EncryptionConfig")) {
        *legacy = true;
        return 0;
    }
    {
        char *qk = ar_go_quote(kind->s, kind->len), *qv = ar_go_quote(ver->s, ver->len);

        if (qk && qv)
            derr(dc, kind->pos, "", "no kind %s is registered for version %s", qk, qv);
        else
            dc->nomem = 1;
        free(qk);
        free(qv);
    }
    return -EINVAL;
}

static void dconf_free(struct dconf *c)
{
    size_t i, j, k;

    for (i = 0; i < c->nrules; i++) {
        struct drule *r = &c->rules[i];
        for (j = 0; j < r->nres; j++)
            free(r->res[j]);
        free(r->res);
        free(r->res_pos);
        for (j = 0; j < r->nprov; j++) {
            struct dprov *p = &r->prov[j];
            struct dkeys *sets[3] = {&p->aesgcm, &p->aescbc, &p->secretbox};
            int s;
            for (s = 0; s < 3; s++) {
                for (k = 0; k < sets[s]->n; k++)
                    free(sets[s]->v[k].name);
                free(sets[s]->v);
            }
            free(p->kms.api_version);
            free(p->kms.name);
            free(p->kms.endpoint);
        }
        free(r->prov);
    }
    free(c->rules);
    memset(c, 0, sizeof(*c));
}

/* ---- fingerprint ---------------------------------------------------------------------------- */

static void fp_u64(crypto_hash_sha256_state *st, uint64_t v)
{
    uint8_t b[8];
    int i;

    for (i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (56 - 8 * i));
    crypto_hash_sha256_update(st, b, 8);
}

static void fp_bytes(crypto_hash_sha256_state *st, const void *p, size_t n)
{
    fp_u64(st, n);
    if (n)
        crypto_hash_sha256_update(st, p, n);
}

static void fp_str(crypto_hash_sha256_state *st, const char *s)
{
    fp_bytes(st, s, strlen(s));
}

/* Canonical serialization, every field length-prefixed (big-endian u64):
 *   "atrest-encryption-config-fingerprint-v1", nrules,
 *   per rule: nresources, each resource as written; nproviders,
 *   per provider: type name; keys: nkeys, (name, secret bytes)...;
 *                 kms: name, endpoint, apiVersion, timeout ns, cachesize (after defaulting). */
static void compute_fingerprint(struct ar_config *c)
{
    crypto_hash_sha256_state st;
    size_t i, j, k;

    crypto_hash_sha256_init(&st);
    fp_str(&st, "atrest-encryption-config-fingerprint-v1");
    fp_u64(&st, c->nrules);
    for (i = 0; i < c->nrules; i++) {
        const struct ar_rule *r = &c->rules[i];
        fp_u64(&st, r->nresources);
        for (j = 0; j < r->nresources; j++)
            fp_str(&st, r->resources[j]);
        fp_u64(&st, r->nproviders);
        for (j = 0; j < r->nproviders; j++) {
            const struct ar_provider *p = &r->providers[j];
            fp_str(&st, ar_ptype_name(p->type));
            if (p->type == AR_P_KMS) {
                fp_str(&st, p->kms.name);
                fp_str(&st, p->kms.endpoint);
                fp_u64(&st, (uint64_t)p->kms.api_version);
                fp_u64(&st, (uint64_t)p->kms.timeout_ns);
                fp_u64(&st, (uint64_t)(int64_t)p->kms.cachesize);
            } else if (p->type != AR_P_IDENTITY) {
                fp_u64(&st, p->nkeys);
                for (k = 0; k < p->nkeys; k++) {
                    fp_str(&st, p->keys[k].name);
                    fp_bytes(&st, p->keys[k].secret, p->keys[k].secret_len);
                }
            }
        }
    }
    crypto_hash_sha256_final(&st, c->fingerprint);
    sodium_memzero(&st, sizeof(st));
}

/* ---- lifetime ------------------------------------------------------------------------------- */

static void config_free(struct ar_config *c)
{
    struct ar_config_priv *pc;
    size_t i, j, k;

    if (!c)
        return;
    pc = ar_cfg_priv(c);
    for (i = 0; i < c->nrules; i++) {
        struct ar_rule *r = &c->rules[i];
        for (j = 0; j < r->nresources; j++) {
            free(r->resources[j]);
            if (r->parsed) {
                free(r->parsed[j].group);
                free(r->parsed[j].resource);
            }
        }
        free(r->resources);
        free(r->parsed);
        for (j = 0; j < r->nproviders; j++) {
            struct ar_provider *p = &r->providers[j];
            for (k = 0; k < p->nkeys; k++)
                free(p->keys[k].name);
            free(p->keys);
            free(p->kms.name);
            free(p->kms.endpoint);
        }
        free(r->providers);
    }
    free(c->rules);
    if (pc->arena)
        sodium_free(pc->arena); /* wipes */
    sodium_memzero(pc, sizeof(*pc));
    free(pc);
}

struct ar_config *ar_cfg_alloc(void)
{
    struct ar_config_priv *pc = calloc(1, sizeof(*pc));

    if (!pc)
        return NULL;
    pc->refs = 1;
    return &pc->pub;
}

uint8_t *ar_cfg_arena(struct ar_config *c, size_t size)
{
    struct ar_config_priv *pc = ar_cfg_priv(c);

    if (pc->arena || !size)
        return NULL;
    pc->arena = sodium_malloc(size);
    if (!pc->arena)
        return NULL;
    /* sodium_malloc ignores an mlock failure; lock again to know (mlock is idempotent). */
    c->keys_locked = sodium_mlock(pc->arena, size) == 0;
    return pc->arena;
}

void ar_cfg_seal(struct ar_config *c)
{
    struct ar_config_priv *pc = ar_cfg_priv(c);

    compute_fingerprint(c);
    if (pc->arena)
        sodium_mprotect_readonly(pc->arena);
}

void ar_cfg_destroy(struct ar_config *c)
{
    config_free(c);
}

void ar_cfg_dconf_free(struct dconf *c)
{
    dconf_free(c);
}

struct ar_config *ar_config_ref(struct ar_config *c)
{
    if (c)
        __atomic_add_fetch(&ar_cfg_priv(c)->refs, 1, __ATOMIC_RELAXED);
    return c;
}

struct ar_config *ar_config_unref(struct ar_config *c)
{
    if (c && __atomic_sub_fetch(&ar_cfg_priv(c)->refs, 1, __ATOMIC_ACQ_REL) == 0)
        config_free(c);
    return NULL;
}

/* Move the validated model into the public struct. */
static int build_config(struct dconf *d, struct ar_config *c)
{
    size_t i, j, k;

    c->rules = calloc(d->nrules ? d->nrules : 1, sizeof(*c->rules));
    if (!c->rules)
        return -ENOMEM;
    c->nrules = d->nrules;
    for (i = 0; i < d->nrules; i++) {
        struct drule *dr = &d->rules[i];
        struct ar_rule *r = &c->rules[i];

        r->pos = dr->pos;
        r->resources = calloc(dr->nres ? dr->nres : 1, sizeof(*r->resources));
        r->parsed = calloc(dr->nres ? dr->nres : 1, sizeof(*r->parsed));
        r->providers = calloc(dr->nprov ? dr->nprov : 1, sizeof(*r->providers));
        if (!r->resources || !r->parsed || !r->providers)
            return -ENOMEM;
        r->nresources = dr->nres;
        for (j = 0; j < dr->nres; j++) {
            r->resources[j] = dr->res[j];
            dr->res[j] = NULL;
            if (ar_split_gr(r->resources[j], &r->parsed[j].group, &r->parsed[j].resource) < 0)
                return -ENOMEM;
        }
        r->nproviders = dr->nprov;
        for (j = 0; j < dr->nprov; j++) {
            struct dprov *dp = &dr->prov[j];
            struct ar_provider *p = &r->providers[j];
            struct dkeys *ks = NULL;

            p->pos = dp->pos;
            if (dp->kms.set) {
                p->type = AR_P_KMS;
                p->kms.name = dp->kms.name;
                p->kms.endpoint = dp->kms.endpoint;
                dp->kms.name = dp->kms.endpoint = NULL;
                p->kms.api_version = strcmp(dp->kms.api_version, "v2") == 0 ? 2 : 1;
                p->kms.timeout_ns = dp->kms.timeout_ns;
                p->kms.timeout_ms = dp->kms.timeout_ns / 1000000;
                p->kms.cachesize = p->kms.api_version == 1 ? dp->kms.cachesize : 0;
                p->kms.cachesize_set = dp->kms.cachesize_set;
            } else if (dp->aesgcm.set) {
                p->type = AR_P_AESGCM;
                ks = &dp->aesgcm;
            } else if (dp->aescbc.set) {
                p->type = AR_P_AESCBC;
                ks = &dp->aescbc;
            } else if (dp->secretbox.set) {
                p->type = AR_P_SECRETBOX;
                ks = &dp->secretbox;
            } else {
                p->type = AR_P_IDENTITY;
            }
            if (!ks)
                continue;
            p->keys = calloc(ks->n ? ks->n : 1, sizeof(*p->keys));
            if (!p->keys)
                return -ENOMEM;
            p->nkeys = ks->n;
            for (k = 0; k < ks->n; k++) {
                struct ar_key *key = &p->keys[k];
                uint8_t h[crypto_hash_sha256_BYTES];

                key->name = ks->v[k].name;
                ks->v[k].name = NULL;
                key->secret = ks->v[k].dst;
                key->secret_len = ks->v[k].dec_len;
                key->pos = ks->v[k].pos;
                crypto_hash_sha256(h, key->secret, key->secret_len);
                memcpy(key->fp, h, sizeof(key->fp));
                sodium_memzero(h, sizeof(h));
            }
        }
    }
    return 0;
}

int ar_cfg_build(struct dconf *d, struct ar_config *c)
{
    return build_config(d, c);
}

static size_t arena_size(const struct dconf *d)
{
    size_t i, j, k, total = 0;

    for (i = 0; i < d->nrules; i++)
        for (j = 0; j < d->rules[i].nprov; j++) {
            const struct dprov *p = &d->rules[i].prov[j];
            const struct dkeys *sets[3] = {&p->aesgcm, &p->aescbc, &p->secretbox};
            int s;
            for (s = 0; s < 3; s++)
                for (k = 0; k < sets[s]->n; k++)
                    total += ar_b64_decoded_max(sets[s]->v[k].secret_len);
        }
    return total;
}

static void arena_assign(struct dconf *d, uint8_t *arena)
{
    size_t i, j, k, off = 0;

    for (i = 0; i < d->nrules; i++)
        for (j = 0; j < d->rules[i].nprov; j++) {
            struct dprov *p = &d->rules[i].prov[j];
            struct dkeys *sets[3] = {&p->aesgcm, &p->aescbc, &p->secretbox};
            int s;
            for (s = 0; s < 3; s++)
                for (k = 0; k < sets[s]->n; k++) {
                    sets[s]->v[k].dst = arena + off;
                    off += ar_b64_decoded_max(sets[s]->v[k].secret_len);
                }
        }
}

static bool looks_like_json(const uint8_t *buf, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\r' || buf[i] == '\n')
            continue;
        return buf[i] == '{';
    }
    return false;
}

int ar_config_load_mem(const char *name, const void *buf, size_t len,
                       const struct ar_load_opts *opts, struct ar_config **out,
                       struct ar_diags *diags)
{
    static const struct ar_load_opts defopts;
    struct dctx dc;
    struct dconf d;
    struct yn *root = NULL;
    struct ar_config *c = NULL;
    struct ar_pos p0 = {0, 0};
    struct ar_vctx vc;
    size_t max, asz;
    bool legacy = false;
    int rc;

    *out = NULL;
    if (sodium_init() < 0)
        return -EIO;
    memset(&d, 0, sizeof(d));
    memset(&dc, 0, sizeof(dc));
    if (!opts)
        opts = &defopts;
    if (!name)
        name = "<memory>";
    dc.diags = diags;
    dc.file = name;
    vc.diags = diags;
    vc.file = name;
    vc.opts = opts;
    max = opts->max_bytes ? opts->max_bytes : AR_CFG_DEFAULT_MAX_BYTES;
    if (len == 0) {
        derr(&dc, p0, "", "encryption provider configuration file \"%s\" is empty", name);
        rc = -EINVAL;
        goto fail;
    }
    if (len > max) {
        derr(&dc, p0, "", "encryption provider configuration file \"%s\" is larger than %zu bytes",
             name, max);
        rc = -EFBIG;
        goto fail;
    }
    dc.json = looks_like_json(buf, len);
    c = ar_cfg_alloc();
    if (!c) {
        rc = -ENOMEM;
        goto fail;
    }
    crypto_hash_sha256(c->file_sha256, buf, len);

    rc = tree_build(&dc, buf, len, &root);
    if (rc == 0)
        rc = tree_check(&dc, root, max);
    if (rc < 0)
        goto fail;
    rc = check_gvk(&dc, root, &legacy);
    if (rc < 0)
        goto fail;
    c->legacy_kind = legacy;
    d.pos = d.rules_pos = root->pos;
    dec_struct(&dc, root, root_fields, &d, root_field);
    if (dc.nomem) {
        rc = -ENOMEM;
        goto fail;
    }
    if (dc.nerr) {
        rc = -EINVAL;
        goto fail;
    }
    ar_cfg_defaults(&d);
    asz = arena_size(&d);
    if (asz) {
        uint8_t *arena = ar_cfg_arena(c, asz);
        if (!arena) {
            rc = -ENOMEM;
            goto fail;
        }
        arena_assign(&d, arena);
    }
    rc = ar_cfg_validate(&d, &vc);
    if (rc != 0) {
        rc = rc < 0 ? rc : -EINVAL;
        goto fail;
    }
    rc = ar_cfg_check_masking(&d, &vc);
    if (rc != 0) {
        rc = rc < 0 ? rc : -EINVAL;
        goto fail;
    }
    rc = build_config(&d, c);
    if (rc < 0)
        goto fail;
    ar_cfg_seal(c);
    dconf_free(&d);
    yn_free(root);
    *out = c;
    return 0;
fail:
    if (dc.nomem || rc == -ENOMEM) {
        rc = -ENOMEM;
        ar_diags_add(diags, AR_SEV_ERROR, name, p0, "", "out of memory");
    }
    dconf_free(&d);
    yn_free(root);
    config_free(c);
    return rc;
}

static void go_errstr(int err, char *out, size_t len)
{
    snprintf(out, len, "%s", strerror(err));
    if (out[0])
        out[0] = (char)tolower((unsigned char)out[0]);
}

int ar_config_load_file(const char *path, const struct ar_load_opts *opts, struct ar_config **out,
                        struct ar_diags *diags)
{
    struct ar_pos p0 = {0, 0};
    size_t max = opts && opts->max_bytes ? opts->max_bytes : AR_CFG_DEFAULT_MAX_BYTES;
    size_t cap, len = 0;
    uint8_t *buf = NULL;
    const char *op = "read";
    char es[128];
    struct stat st;
    int fd = -1, rc;

    *out = NULL;
    if (sodium_init() < 0) /* idempotent; sodium_malloc needs it */
        return -EIO;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        rc = -errno;
        op = "open";
        goto fail;
    }
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        goto fail;
    }
    if (S_ISDIR(st.st_mode)) {
        rc = -EISDIR;
        goto fail;
    }
    /* One guarded, locked (sodium_malloc) buffer: the file holds the keys in base64. It grows
     * to max + 1 bytes at most: enough to see "too large". */
    cap = S_ISREG(st.st_mode) && (size_t)st.st_size < max ? (size_t)st.st_size + 1 : max + 1;
    buf = sodium_malloc(cap);
    if (!buf) {
        rc = -ENOMEM;
        goto fail;
    }
    for (;;) {
        ssize_t n;
        if (len == cap) {
            uint8_t *nb;
            size_t ncap;
            if (cap > max)
                break;
            ncap = cap * 2 > max + 1 ? max + 1 : cap * 2;
            nb = sodium_malloc(ncap);
            if (!nb) {
                rc = -ENOMEM;
                goto fail;
            }
            memcpy(nb, buf, len);
            sodium_free(buf);
            buf = nb;
            cap = ncap;
        }
        n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    fd = -1;
    rc = ar_config_load_mem(path, buf, len, opts, out, diags);
    sodium_free(buf); /* wipes */
    return rc;
fail:
    if (rc == -ENOMEM) {
        ar_diags_add(diags, AR_SEV_ERROR, path, p0, "", "out of memory");
    } else {
        /* Go: error reading encryption provider configuration file %q: %w, with an *os.PathError */
        go_errstr(-rc, es, sizeof(es));
        ar_diags_add(diags, AR_SEV_ERROR, path, p0, "",
                     "error reading encryption provider configuration file \"%s\": %s %s: %s", path,
                     op, path, es);
    }
    if (buf)
        sodium_free(buf);
    if (fd >= 0)
        close(fd);
    return rc;
}

/* ---- process hardening ---------------------------------------------------------------------- */

int ar_crypto_init(void)
{
    struct rlimit rl = {0, 0};

    if (sodium_init() < 0)
        return -EIO;
    if (setrlimit(RLIMIT_CORE, &rl) < 0)
        return -errno;
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        return -errno;
    return 0;
}
