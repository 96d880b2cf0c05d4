/*
 * coord/phase.c: phase derivation (the algorithm is written down in coord/phase.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "coord/phase.h"

/* One provider of a working list: keys point into from or to. */
struct ent {
    enum ar_ptype type;
    const struct ar_kms *kms;
    const struct ar_key **keys;
    size_t nkeys, cap;
};

struct plist {
    struct ent *v;
    size_t n, cap;
};

enum { CLS_EXACT = 0, CLS_GROUP = 1, CLS_ALL = 2 };

struct sel {
    char *name; /* canonical */
    char *group, *resource;
    int cls;
    struct plist from, to, stage, promote;
};

struct work {
    struct sel *v;
    size_t n, cap;
};

const char *ar_phase_name(enum ar_phase_kind k)
{
    static const char *const names[] = {"stage", "promote", "reencrypt", "verify", "prune"};

    return (unsigned)k < 5 ? names[k] : "?";
}

/* ---- lists ---------------------------------------------------------------------------------- */

static void plist_free(struct plist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].keys);
    free(l->v);
    memset(l, 0, sizeof(*l));
}

static struct ent *plist_add(struct plist *l, enum ar_ptype type, const struct ar_kms *kms)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? 2 * l->cap : 4;
        struct ent *nv = realloc(l->v, nc * sizeof(*nv));
        if (!nv)
            return NULL;
        l->v = nv;
        l->cap = nc;
    }
    memset(&l->v[l->n], 0, sizeof(l->v[0]));
    l->v[l->n].type = type;
    l->v[l->n].kms = kms;
    return &l->v[l->n++];
}

static int ent_add_key(struct ent *e, const struct ar_key *k)
{
    if (e->nkeys == e->cap) {
        size_t nc = e->cap ? 2 * e->cap : 4;
        const struct ar_key **nv = realloc(e->keys, nc * sizeof(*nv));
        if (!nv)
            return -ENOMEM;
        e->keys = nv;
        e->cap = nc;
    }
    e->keys[e->nkeys++] = k;
    return 0;
}

static bool is_keyed(enum ar_ptype t)
{
    return t == AR_P_AESCBC || t == AR_P_AESGCM || t == AR_P_SECRETBOX;
}

static bool key_eq(const struct ar_key *a, const struct ar_key *b)
{
    return a == b || (strcmp(a->name, b->name) == 0 && a->secret_len == b->secret_len &&
                      sodium_memcmp(a->secret, b->secret, a->secret_len) == 0);
}

static bool kms_eq(const struct ar_kms *a, const struct ar_kms *b)
{
    return a == b || (strcmp(a->name, b->name) == 0 && strcmp(a->endpoint, b->endpoint) == 0 &&
                      a->api_version == b->api_version && a->timeout_ns == b->timeout_ns &&
                      a->cachesize == b->cachesize);
}

static bool has_key(const struct plist *l, enum ar_ptype t, const struct ar_key *k)
{
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].type == t)
            for (size_t j = 0; j < l->v[i].nkeys; j++)
                if (key_eq(l->v[i].keys[j], k))
                    return true;
    return false;
}

static bool has_plain(const struct plist *l, const struct ent *e)
{
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].type == e->type && (e->type == AR_P_IDENTITY || kms_eq(l->v[i].kms, e->kms)))
            return true;
    return false;
}

static int ent_copy(struct plist *l, const struct ent *e)
{
    struct ent *n = plist_add(l, e->type, e->kms);

    if (!n)
        return -ENOMEM;
    for (size_t j = 0; j < e->nkeys; j++)
        if (ent_add_key(n, e->keys[j]) < 0)
            return -ENOMEM;
    return 0;
}

/* Append provider p of a config (its keys) to l as it is. */
static int add_provider(struct plist *l, const struct ar_provider *p)
{
    struct ent *e = plist_add(l, p->type, p->type == AR_P_KMS ? &p->kms : NULL);

    if (!e)
        return -ENOMEM;
    for (size_t k = 0; k < p->nkeys; k++)
        if (ent_add_key(e, &p->keys[k]) < 0)
            return -ENOMEM;
    return 0;
}

/* merge(A, B) into out (empty on entry). */
static int merge(const struct plist *a, const struct plist *b, struct plist *out)
{
    size_t i, j, t;

    for (i = 0; i < a->n; i++)
        if (ent_copy(out, &a->v[i]) < 0)
            return -ENOMEM;
    for (i = 0; i < b->n; i++) {
        const struct ent *e = &b->v[i];

        if (!is_keyed(e->type)) {
            if (!has_plain(out, e) && !plist_add(out, e->type, e->kms))
                return -ENOMEM;
            continue;
        }
        for (j = 0; j < e->nkeys; j++) {
            struct ent *dst = NULL;

            if (has_key(out, e->type, e->keys[j]))
                continue;
            for (t = 0; t < out->n && !dst; t++)
                if (out->v[t].type == e->type)
                    dst = &out->v[t];
            if (!dst && !(dst = plist_add(out, e->type, NULL)))
                return -ENOMEM;
            if (ent_add_key(dst, e->keys[j]) < 0)
                return -ENOMEM;
        }
    }
    return 0;
}

static bool ent_eq(const struct ent *a, const struct ent *b)
{
    if (a->type != b->type || a->nkeys != b->nkeys)
        return false;
    if (a->type == AR_P_KMS && !kms_eq(a->kms, b->kms))
        return false;
    for (size_t j = 0; j < a->nkeys; j++)
        if (!key_eq(a->keys[j], b->keys[j]))
            return false;
    return true;
}

static bool plist_eq(const struct plist *a, const struct plist *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (!ent_eq(&a->v[i], &b->v[i]))
            return false;
    return true;
}

/* The write provider/key of two lists is the same. */
static bool write_eq(const struct plist *a, const struct plist *b)
{
    const struct ent *x = &a->v[0], *y = &b->v[0];

    if (x->type != y->type)
        return false;
    if (x->type == AR_P_KMS)
        return kms_eq(x->kms, y->kms);
    if (is_keyed(x->type))
        return key_eq(x->keys[0], y->keys[0]);
    return true;
}

/* ---- selectors ------------------------------------------------------------------------------ */

static int sel_add(struct work *w, const struct ar_gr *gr)
{
    struct sel *s;
    int n;

    for (size_t i = 0; i < w->n; i++)
        if (!strcmp(w->v[i].group, gr->group) && !strcmp(w->v[i].resource, gr->resource))
            return 0;
    if (w->n == w->cap) {
        size_t nc = w->cap ? 2 * w->cap : 8;
        struct sel *nv = realloc(w->v, nc * sizeof(*nv));
        if (!nv)
            return -ENOMEM;
        w->v = nv;
        w->cap = nc;
    }
    s = &w->v[w->n];
    memset(s, 0, sizeof(*s));
    s->group = strdup(gr->group);
    s->resource = strdup(gr->resource);
    if (!strcmp(gr->group, "*"))
        s->cls = CLS_ALL;
    else if (!strcmp(gr->resource, "*"))
        s->cls = CLS_GROUP;
    else
        s->cls = CLS_EXACT;
    if (s->cls == CLS_EXACT && gr->group[0] == '\0')
        n = asprintf(&s->name, "%s", gr->resource);
    else
        n = asprintf(&s->name, "%s.%s", gr->resource, gr->group);
    w->n++; /* counted first: the cleanup frees what was allocated */
    if (n < 0) {
        s->name = NULL;
        return -ENOMEM;
    }
    return s->group && s->resource ? 0 : -ENOMEM;
}

static int sel_cmp(const void *pa, const void *pb)
{
    const struct sel *a = pa, *b = pb;

    if (a->cls != b->cls)
        return a->cls < b->cls ? -1 : 1;
    return strcmp(a->name, b->name);
}

static bool gr_is(const struct ar_gr *g, const char *group, const char *resource)
{
    return !strcmp(g->group, group) && !strcmp(g->resource, resource);
}

/* The first rule naming {group, resource} (its index), or -1. */
static long rule_naming(const struct ar_config *c, const char *group, const char *resource)
{
    for (size_t i = 0; i < c->nrules; i++)
        for (size_t j = 0; j < c->rules[i].nresources; j++)
            if (gr_is(&c->rules[i].parsed[j], group, resource))
                return (long)i;
    return -1;
}

/* eff(C, S) into out (empty on entry); plain identity becomes [identity]. */
static int effective(const struct ar_config *c, const struct sel *s, struct plist *out)
{
    size_t i, j, k;
    long r = -1;

    if (s->cls == CLS_EXACT) {
        for (i = 0; i < c->nrules; i++)
            for (j = 0; j < c->rules[i].nresources; j++)
                if (gr_is(&c->rules[i].parsed[j], s->group, s->resource))
                    for (k = 0; k < c->rules[i].nproviders; k++)
                        if (add_provider(out, &c->rules[i].providers[k]) < 0)
                            return -ENOMEM;
        if (out->n)
            return 0;
    }
    if (s->cls != CLS_ALL)
        r = rule_naming(c, s->group, "*");
    if (r < 0)
        r = rule_naming(c, "*", "*");
    if (r >= 0) {
        for (k = 0; k < c->rules[r].nproviders; k++)
            if (add_provider(out, &c->rules[r].providers[k]) < 0)
                return -ENOMEM;
        return 0;
    }
    return plist_add(out, AR_P_IDENTITY, NULL) ? 0 : -ENOMEM;
}

/* ---- refusals ------------------------------------------------------------------------------- */

static int check_collisions(const struct ar_config *from, const struct ar_config *to,
                            const char *name, struct ar_diags *diags)
{
    size_t i, j, k, a, b, c;
    char path[160];
    int bad = 0;

    for (i = 0; i < to->nrules; i++)
        for (j = 0; j < to->rules[i].nproviders; j++) {
            const struct ar_provider *p = &to->rules[i].providers[j];
            bool reported = false;

            for (a = 0; a < from->nrules && !reported; a++)
                for (b = 0; b < from->rules[a].nproviders && !reported; b++) {
                    const struct ar_provider *q = &from->rules[a].providers[b];
                    if (q->type != p->type)
                        continue;
                    if (p->type == AR_P_KMS && !strcmp(p->kms.name, q->kms.name) &&
                        !kms_eq(&p->kms, &q->kms)) {
                        snprintf(path, sizeof(path), "resources[%zu].providers[%zu].kms.name", i,
                                 j);
                        if (ar_diags_add(diags, AR_SEV_ERROR, name, p->pos, path,
                                         "Invalid value: \"%s\": KMS provider %s has other "
                                         "settings in the from config; give the new provider a "
                                         "new name",
                                         p->kms.name, p->kms.name) < 0)
                            return -ENOMEM;
                        bad = 1;
                        reported = true;
                    }
                    for (k = 0; k < p->nkeys; k++)
                        for (c = 0; c < q->nkeys; c++)
                            if (!strcmp(p->keys[k].name, q->keys[c].name) &&
                                !key_eq(&p->keys[k], &q->keys[c])) {
                                snprintf(path, sizeof(path),
                                         "resources[%zu].providers[%zu].%s.keys[%zu].name", i, j,
                                         ar_ptype_name(p->type), k);
                                if (ar_diags_add(diags, AR_SEV_ERROR, name, p->keys[k].pos, path,
                                                 "Invalid value: \"%s\": key %s has another "
                                                 "secret in the from config; give the new key a "
                                                 "new name",
                                                 p->keys[k].name, p->keys[k].name) < 0)
                                    return -ENOMEM;
                                bad = 1;
                                reported = true;
                            }
                }
        }
    return bad ? -EINVAL : 0;
}

/* ---- phase configs -------------------------------------------------------------------------- */

static const struct plist *pick(const struct sel *s, int which)
{
    return which == AR_PHASE_STAGE ? &s->stage : &s->promote;
}

/* Compose the phase config for stage or promote from the selectors' lists. */
static int emit(const struct work *w, int which, const char *name, const struct ar_load_opts *opts,
                struct ar_config **out, struct ar_diags *diags)
{
    struct ar_compose_rule *rules = calloc(w->n ? w->n : 1, sizeof(*rules));
    const char **res = calloc(w->n ? w->n : 1, sizeof(*res));
    struct ar_compose_provider **provs = calloc(w->n ? w->n : 1, sizeof(*provs));
    bool *done = calloc(w->n ? w->n : 1, sizeof(*done));
    size_t i, j, nrules = 0, nres = 0;
    int rc = -ENOMEM;

    if (!rules || !res || !provs || !done)
        goto out;
    for (i = 0; i < w->n; i++) {
        const struct plist *l = pick(&w->v[i], which);
        struct ar_compose_rule *r = &rules[nrules];

        if (done[i])
            continue;
        /* this selector and every later one of its class with the same list */
        r->resources = &res[nres];
        for (j = i; j < w->n && w->v[j].cls == w->v[i].cls; j++)
            if (!done[j] && plist_eq(pick(&w->v[j], which), l)) {
                done[j] = true;
                res[nres++] = w->v[j].name;
                r->nresources++;
            }
        provs[nrules] = calloc(l->n ? l->n : 1, sizeof(**provs));
        if (!provs[nrules])
            goto out;
        for (size_t k = 0; k < l->n; k++) {
            provs[nrules][k].type = l->v[k].type;
            provs[nrules][k].kms = l->v[k].kms;
            provs[nrules][k].keys = l->v[k].keys;
            provs[nrules][k].nkeys = l->v[k].nkeys;
        }
        r->providers = provs[nrules];
        r->nproviders = l->n;
        nrules++;
    }
    rc = ar_config_compose(name, rules, nrules, opts, out, diags);
out:
    for (i = 0; provs && i < w->n; i++)
        free(provs[i]);
    free(provs);
    free(done);
    free(res);
    free(rules);
    return rc;
}

/* `to` composed anew from its own rules. */
static int copy_to(const struct ar_config *to, const char *name, const struct ar_load_opts *opts,
                   struct ar_config **out, struct ar_diags *diags)
{
    struct ar_compose_rule *rules = calloc(to->nrules ? to->nrules : 1, sizeof(*rules));
    struct ar_compose_provider **provs = calloc(to->nrules ? to->nrules : 1, sizeof(*provs));
    const struct ar_key ***keys = NULL;
    size_t i, j, k, nkp = 0, kp = 0;
    int rc = -ENOMEM;

    for (i = 0; i < to->nrules; i++)
        nkp += to->rules[i].nproviders;
    keys = calloc(nkp ? nkp : 1, sizeof(*keys));
    if (!rules || !provs || !keys)
        goto out;
    for (i = 0; i < to->nrules; i++) {
        const struct ar_rule *r = &to->rules[i];

        provs[i] = calloc(r->nproviders ? r->nproviders : 1, sizeof(**provs));
        if (!provs[i])
            goto out;
        for (j = 0; j < r->nproviders; j++) {
            const struct ar_provider *p = &r->providers[j];
            struct ar_compose_provider *cp = &provs[i][j];

            keys[kp] = calloc(p->nkeys ? p->nkeys : 1, sizeof(**keys));
            if (!keys[kp])
                goto out;
            for (k = 0; k < p->nkeys; k++)
                keys[kp][k] = &p->keys[k];
            cp->type = p->type;
            cp->keys = keys[kp++];
            cp->nkeys = p->nkeys;
            cp->kms = p->type == AR_P_KMS ? &p->kms : NULL;
        }
        rules[i].resources = (const char *const *)r->resources;
        rules[i].nresources = r->nresources;
        rules[i].providers = provs[i];
        rules[i].nproviders = r->nproviders;
    }
    rc = ar_config_compose(name, rules, to->nrules, opts, out, diags);
out:
    for (i = 0; keys && i < nkp; i++)
        free(keys[i]);
    for (i = 0; provs && i < to->nrules; i++)
        free(provs[i]);
    free(keys);
    free(provs);
    free(rules);
    return rc;
}

/* ---- rewrite and drop lists ----------------------------------------------------------------- */

static int add_drop(struct ar_plan *p, enum ar_ptype t, const char *name, const uint8_t *fp)
{
    struct ar_phase_key *nv;

    for (size_t i = 0; i < p->ndrops; i++) {
        const struct ar_phase_key *d = &p->drops[i];
        if (d->type == t && (!name || !strcmp(d->name, name)) &&
            (!fp || !memcmp(d->fp, fp, sizeof(d->fp))))
            return 0;
    }
    nv = realloc(p->drops, (p->ndrops + 1) * sizeof(*nv));
    if (!nv)
        return -ENOMEM;
    p->drops = nv;
    nv = &p->drops[p->ndrops++];
    memset(nv, 0, sizeof(*nv));
    nv->type = t;
    nv->name = name;
    if (fp) {
        memcpy(nv->fp, fp, sizeof(nv->fp));
        nv->has_fp = true;
    }
    return 0;
}

/* What from(S) has that to(S) has not: into the plan's drops. Returns how many. */
static int drops_of(struct ar_plan *p, const struct sel *s)
{
    int n = 0;

    for (size_t i = 0; i < s->from.n; i++) {
        const struct ent *e = &s->from.v[i];
        if (!is_keyed(e->type)) {
            if (has_plain(&s->to, e))
                continue;
            if (add_drop(p, e->type, e->kms ? e->kms->name : NULL, NULL) < 0)
                return -ENOMEM;
            n++;
            continue;
        }
        for (size_t j = 0; j < e->nkeys; j++) {
            if (has_key(&s->to, e->type, e->keys[j]))
                continue;
            if (add_drop(p, e->type, e->keys[j]->name, e->keys[j]->fp) < 0)
                return -ENOMEM;
            n++;
        }
    }
    return n;
}

static void work_free(struct work *w)
{
    for (size_t i = 0; i < w->n; i++) {
        free(w->v[i].name);
        free(w->v[i].group);
        free(w->v[i].resource);
        plist_free(&w->v[i].from);
        plist_free(&w->v[i].to);
        plist_free(&w->v[i].stage);
        plist_free(&w->v[i].promote);
    }
    free(w->v);
    memset(w, 0, sizeof(*w));
}

void ar_plan_free(struct ar_plan *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->nphases; i++)
        if (i == 0 || p->phases[i].config != p->phases[i - 1].config)
            ar_config_unref(p->phases[i].config);
    for (size_t i = 0; i < p->nrewrite; i++)
        free(p->rewrite[i]);
    free(p->rewrite);
    free(p->drops);
    ar_config_unref(p->from);
    ar_config_unref(p->to);
    free(p);
}

static void push(struct ar_plan *p, enum ar_phase_kind k, struct ar_config *c)
{
    struct ar_phase *ph = &p->phases[p->nphases++];

    memset(ph, 0, sizeof(*ph));
    ph->kind = k;
    ph->config = c;
}

int ar_plan_derive(struct ar_config *from, struct ar_config *to, const char *name,
                   const struct ar_load_opts *opts, struct ar_plan **out, struct ar_diags *diags)
{
    struct work w = {NULL, 0, 0};
    struct ar_plan *p = NULL;
    struct ar_config *stage = NULL, *promote = NULL, *last = NULL;
    bool need_stage = false, need_promote = false, need_prune = false;
    size_t i, j;
    int rc;

    *out = NULL;
    p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->from = ar_config_ref(from);
    p->to = ar_config_ref(to);
    if (!memcmp(from->fingerprint, to->fingerprint, AR_SHA256_LEN)) {
        *out = p;
        return 0;
    }
    rc = check_collisions(from, to, name, diags);
    if (rc < 0)
        goto fail;
    for (int pass = 0; pass < 2; pass++) {
        const struct ar_config *c = pass ? to : from;
        for (i = 0; i < c->nrules; i++)
            for (j = 0; j < c->rules[i].nresources; j++)
                if ((rc = sel_add(&w, &c->rules[i].parsed[j])) < 0)
                    goto fail;
    }
    qsort(w.v, w.n, sizeof(*w.v), sel_cmp);
    for (i = 0; i < w.n; i++) {
        struct sel *s = &w.v[i];
        int nd;

        rc = -ENOMEM;
        if (effective(from, s, &s->from) < 0 || effective(to, s, &s->to) < 0 ||
            merge(&s->from, &s->to, &s->stage) < 0 || merge(&s->to, &s->from, &s->promote) < 0)
            goto fail;
        if (!plist_eq(&s->stage, &s->from))
            need_stage = true;
        nd = drops_of(p, s);
        if (nd < 0)
            goto fail;
        if (nd > 0)
            need_prune = true;
        if (!write_eq(&s->from, &s->to))
            need_promote = true;
        if (nd > 0 || !write_eq(&s->from, &s->to)) {
            char **nv = realloc(p->rewrite, (p->nrewrite + 1) * sizeof(*nv));
            if (!nv)
                goto fail;
            p->rewrite = nv;
            if (!(nv[p->nrewrite] = strdup(s->name)))
                goto fail;
            p->nrewrite++;
        }
    }
    rc = copy_to(to, name, opts, &last, diags);
    if (rc < 0)
        goto fail;
    if (need_stage) {
        if (!need_promote && !need_prune) {
            stage = ar_config_ref(last);
        } else if ((rc = emit(&w, AR_PHASE_STAGE, name, opts, &stage, diags)) < 0) {
            goto fail;
        }
        push(p, AR_PHASE_STAGE, stage);
        stage = NULL;
    }
    if (need_promote || need_prune) {
        if (!need_prune)
            promote = ar_config_ref(last);
        else if ((rc = emit(&w, AR_PHASE_PROMOTE, name, opts, &promote, diags)) < 0)
            goto fail;
        if (need_promote)
            push(p, AR_PHASE_PROMOTE, promote);
        push(p, AR_PHASE_REENCRYPT, promote);
        p->phases[p->nphases - 1].rewrite = (const char *const *)p->rewrite;
        p->phases[p->nphases - 1].nrewrite = p->nrewrite;
        push(p, AR_PHASE_VERIFY, promote);
        p->phases[p->nphases - 1].drops = p->drops;
        p->phases[p->nphases - 1].ndrops = p->ndrops;
        promote = NULL;
    }
    if (need_prune || p->nphases == 0) {
        push(p, AR_PHASE_PRUNE, ar_config_ref(last));
        p->phases[p->nphases - 1].drops = p->drops;
        p->phases[p->nphases - 1].ndrops = p->ndrops;
    }
    ar_config_unref(last);
    work_free(&w);
    *out = p;
    return 0;
fail:
    ar_config_unref(last);
    ar_config_unref(stage);
    ar_config_unref(promote);
    work_free(&w);
    ar_plan_free(p);
    return rc;
}
