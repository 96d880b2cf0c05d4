/*
 * crypto/chain.c: the provider chain (crypto/chain.h; shared spec 1.8, 2.3).
 *
 * Built once from a validated config: every provider gets its prefix ("k8s:enc:aescbc:v1:",
 * "k8s:enc:kms:v2:<name>:", "" for identity) and every key its "<name>:" prefix; every
 * {group,resource} named in the config gets the concatenation of the provider lists of the
 * rules that name it. After that the chain is read only, so it can be shared between threads.
 */
#include "crypto/chain.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "crypto/providers.h"

#define ENC_MARK     "k8s:enc:"
#define ENC_MARK_LEN 8

static const char err_identity[] = "identity transformer tried to read encrypted data";
static const char err_no_prefix[] = "no matching prefix found";
static const char err_no_aes_key[] = "no matching key was found for the provided AES transformer";
static const char err_no_sb_key[] =
    "no matching key was found for the provided Secretbox transformer";
static const char err_kmsv1_len[] = "invalid data encountered by envelope transformer: failed to "
                                    "read uint16 length prefixed data";

struct ckey {
    const struct ar_key *k;
    char *prefix; /* "<name>:" */
    size_t plen;
};

struct cprov {
    const struct ar_provider *p;
    char *prefix; /* provider level; "" for identity */
    size_t plen;
    struct ckey *keys;
    size_t nkeys;
};

struct centry {
    const char *group; /* points into the config */
    const char *resource;
    const char *rule; /* the first resources[] string that named it */
    const struct ar_provider **pv;
    struct cprov **cv;
    size_t n;
};

struct ar_chain {
    atomic_int refs;
    struct ar_config *cfg;
    struct cprov *provs;
    size_t nprovs;
    struct centry *ents;
    size_t nents;
};

static const char *const prov_prefix[] = {
    [AR_P_IDENTITY] = "",
    [AR_P_AESCBC] = "k8s:enc:aescbc:v1:",
    [AR_P_AESGCM] = "k8s:enc:aesgcm:v1:",
    [AR_P_SECRETBOX] = "k8s:enc:secretbox:v1:",
};

/* ---- build / release ---------------------------------------------------------------- */

static void chain_free(struct ar_chain *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nprovs; i++) {
        struct cprov *cp = &c->provs[i];

        for (size_t j = 0; j < cp->nkeys; j++)
            free(cp->keys[j].prefix);
        free(cp->keys);
        free(cp->prefix);
    }
    free(c->provs);
    for (size_t i = 0; i < c->nents; i++) {
        free(c->ents[i].pv);
        free(c->ents[i].cv);
    }
    free(c->ents);
    ar_config_unref(c->cfg);
    free(c);
}

static char *dup_concat(const char *a, const char *b, const char *d, size_t *len)
{
    size_t la = strlen(a), lb = strlen(b), ld = strlen(d);
    char *s = malloc(la + lb + ld + 1);

    if (!s)
        return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb);
    memcpy(s + la + lb, d, ld);
    s[la + lb + ld] = '\0';
    *len = la + lb + ld;
    return s;
}

static int build_prov(struct cprov *cp, const struct ar_provider *p)
{
    cp->p = p;
    switch (p->type) {
    case AR_P_IDENTITY:
    case AR_P_AESCBC:
    case AR_P_AESGCM:
    case AR_P_SECRETBOX:
        cp->prefix = dup_concat(prov_prefix[p->type], "", "", &cp->plen);
        break;
    case AR_P_KMS:
        cp->prefix = dup_concat(p->kms.api_version == 2 ? "k8s:enc:kms:v2:" : "k8s:enc:kms:v1:",
                                p->kms.name ? p->kms.name : "", ":", &cp->plen);
        break;
    default:
        return -EINVAL;
    }
    if (!cp->prefix)
        return -ENOMEM;
    if (p->type == AR_P_AESCBC || p->type == AR_P_AESGCM || p->type == AR_P_SECRETBOX) {
        if (p->nkeys == 0)
            return -EINVAL;
        cp->keys = calloc(p->nkeys, sizeof(*cp->keys));
        if (!cp->keys)
            return -ENOMEM;
        cp->nkeys = p->nkeys;
        for (size_t j = 0; j < p->nkeys; j++) {
            const struct ar_key *k = &p->keys[j];
            size_t sl = k->secret_len;

            if (p->type == AR_P_SECRETBOX ? sl != 32 : (sl != 16 && sl != 24 && sl != 32))
                return -EINVAL;
            cp->keys[j].k = k;
            cp->keys[j].prefix = dup_concat(k->name ? k->name : "", ":", "", &cp->keys[j].plen);
            if (!cp->keys[j].prefix)
                return -ENOMEM;
        }
    }
    return 0;
}

static struct centry *find_entry(const struct ar_chain *c, const char *group, const char *resource)
{
    for (size_t i = 0; i < c->nents; i++)
        if (strcmp(c->ents[i].resource, resource) == 0 && strcmp(c->ents[i].group, group) == 0)
            return &c->ents[i];
    return NULL;
}

int ar_chain_new(struct ar_config *cfg, struct ar_chain **out)
{
    struct ar_chain *c;
    size_t np = 0, nr = 0, pi = 0;
    int r = -ENOMEM;

    *out = NULL;
    if (!cfg)
        return -EINVAL;
    for (size_t i = 0; i < cfg->nrules; i++) {
        np += cfg->rules[i].nproviders;
        nr += cfg->rules[i].nresources;
    }
    c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    atomic_init(&c->refs, 1);
    c->cfg = ar_config_ref(cfg);
    c->provs = calloc(np ? np : 1, sizeof(*c->provs));
    c->ents = calloc(nr ? nr : 1, sizeof(*c->ents));
    if (!c->provs || !c->ents)
        goto fail;
    for (size_t i = 0; i < cfg->nrules; i++) {
        const struct ar_rule *rule = &cfg->rules[i];
        size_t first = pi;

        for (size_t j = 0; j < rule->nproviders; j++) {
            c->nprovs = pi + 1;
            r = build_prov(&c->provs[pi++], &rule->providers[j]);
            if (r < 0)
                goto fail;
        }
        for (size_t k = 0; k < rule->nresources; k++) {
            const struct ar_gr *gr = &rule->parsed[k];
            struct centry *e = find_entry(c, gr->group, gr->resource);
            size_t n0, add = rule->nproviders;

            if (!e) {
                e = &c->ents[c->nents++];
                e->group = gr->group;
                e->resource = gr->resource;
                e->rule = rule->resources[k];
            }
            /* the same resource in several rules: lists concatenated in rule order */
            n0 = e->n;
            r = -ENOMEM;
            {
                const struct ar_provider **pv = realloc(e->pv, (n0 + add) * sizeof(*pv));

                if (!pv)
                    goto fail;
                e->pv = pv;
            }
            {
                struct cprov **cv = realloc(e->cv, (n0 + add) * sizeof(*cv));

                if (!cv)
                    goto fail;
                e->cv = cv;
            }
            for (size_t j = 0; j < add; j++) {
                e->pv[n0 + j] = &rule->providers[j];
                e->cv[n0 + j] = &c->provs[first + j];
            }
            e->n = n0 + add;
        }
    }
    *out = c;
    return 0;
fail:
    chain_free(c);
    return r;
}

struct ar_chain *ar_chain_ref(struct ar_chain *c)
{
    if (c)
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

struct ar_chain *ar_chain_unref(struct ar_chain *c)
{
    if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        chain_free(c);
    return NULL;
}

const struct ar_config *ar_chain_config(const struct ar_chain *c)
{
    return c->cfg;
}

/* transformerFromOverrides: exact, {group,*}, {*,*}, else NULL (plain identity). */
static const struct centry *lookup(const struct ar_chain *c, const char *group,
                                   const char *resource)
{
    const struct centry *e = find_entry(c, group, resource);

    if (!e)
        e = find_entry(c, group, "*");
    if (!e)
        e = find_entry(c, "*", "*");
    return e;
}

void ar_chain_lookup(const struct ar_chain *c, const char *group, const char *resource,
                     struct ar_plist *out)
{
    const struct centry *e = lookup(c, group, resource);

    out->v = e ? e->pv : NULL;
    out->n = e ? e->n : 0;
    out->rule = e ? e->rule : NULL;
}

/* ---- results and errors ------------------------------------------------------------- */

static void res_init(struct ar_result *res)
{
    res->type = AR_P_IDENTITY;
    res->provider_index = -1;
    res->key_index = -1;
    res->key_name = NULL;
    res->key_fp = NULL;
    res->stale = false;
    res->kms_version = 0;
    res->err[0] = '\0';
}

static void res_err(struct ar_result *res, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void res_err(struct ar_result *res, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(res->err, sizeof(res->err), fmt, ap);
    va_end(ap);
}

/*
 * The errors collected by a read, as k8s.io/apimachinery's errors.NewAggregate prints them:
 * nested aggregates flattened, duplicate messages dropped, one message as itself, several as
 * "[e1, e2]".
 */
#define AGG_MAX 16
struct agg {
    int n;
    int code; /* -ENOPKG wins over -EBADMSG */
    bool truncated;
    char msg[AGG_MAX][256];
};

static void agg_add(struct agg *a, int code, const char *msg)
{
    if (code == -ENOPKG || a->code == 0)
        a->code = code;
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->msg[i], msg) == 0)
            return;
    if (a->n == AGG_MAX) {
        a->truncated = true;
        return;
    }
    snprintf(a->msg[a->n++], sizeof(a->msg[0]), "%s", msg);
}

static void agg_format(const struct agg *a, char *out, size_t len)
{
    size_t o = 0;

    if (a->n == 1) {
        snprintf(out, len, "%s", a->msg[0]);
        return;
    }
    o += (size_t)snprintf(out, len, "[");
    for (int i = 0; i < a->n && o < len; i++)
        o += (size_t)snprintf(out + o, len - o, "%s%s", i ? ", " : "", a->msg[i]);
    if (o < len)
        o += (size_t)snprintf(out + o, len - o, "%s]", a->truncated ? ", ..." : "");
}

static inline bool has_prefix(const uint8_t *p, size_t n, const char *pre, size_t plen)
{
    return plen == 0 || (n >= plen && memcmp(p, pre, plen) == 0);
}

/* ---- read --------------------------------------------------------------------------- */

/* One keyed provider (aescbc, aesgcm, secretbox): the inner prefixTransformers. */
static int read_keyed(const struct cprov *cp, const uint8_t *aad, size_t aadlen, const uint8_t *in,
                      size_t n, struct ar_buf *out, struct ar_result *res, struct agg *errs)
{
    struct agg kerrs;
    char e[256];

    kerrs.n = 0;
    kerrs.code = 0;
    kerrs.truncated = false;
    for (size_t j = 0; j < cp->nkeys; j++) {
        const struct ckey *ck = &cp->keys[j];
        const uint8_t *d;
        size_t dn;
        int r;

        if (!has_prefix(in, n, ck->prefix, ck->plen))
            continue;
        d = in + ck->plen;
        dn = n - ck->plen;
        e[0] = '\0';
        switch (cp->p->type) {
        case AR_P_AESCBC:
            r = ar_aescbc_decrypt(ck->k->secret, ck->k->secret_len, d, dn, out, e, sizeof(e));
            break;
        case AR_P_AESGCM:
            r = ar_aesgcm_decrypt(ck->k->secret, ck->k->secret_len, aad, aadlen, d, dn, out, e,
                                  sizeof(e));
            break;
        default:
            r = ar_secretbox_decrypt(ck->k->secret, ck->k->secret_len, d, dn, out, e, sizeof(e));
            break;
        }
        if (r == 0) {
            res->key_index = (int)j;
            res->key_name = ck->k->name;
            res->key_fp = ck->k->fp;
            res->stale = j != 0;
            return 0;
        }
        if (r != -EBADMSG)
            return r; /* a system error (ENOMEM, EIO): stop */
        agg_add(&kerrs, r, e);
    }
    if (kerrs.n == 0)
        agg_add(errs, -EBADMSG, cp->p->type == AR_P_SECRETBOX ? err_no_sb_key : err_no_aes_key);
    for (int i = 0; i < kerrs.n; i++)
        agg_add(errs, kerrs.code, kerrs.msg[i]);
    if (kerrs.truncated)
        errs->truncated = true;
    return -EBADMSG;
}

/* A KMS value: recognise and validate what can be checked without the plugin. */
static int read_kms(const struct cprov *cp, const uint8_t *in, size_t n, struct ar_result *res,
                    struct agg *errs)
{
    const struct ar_kms *k = &cp->p->kms;
    char e[512];

    if (k->api_version == 2) {
        struct ar_kmsv2_info info;

        if (ar_kmsv2_parse(in, n, &info, e, sizeof(e)) < 0) {
            agg_add(errs, -EBADMSG, e);
            return -EBADMSG;
        }
        if (res->kms_version == 0) {
            res->kms = info;
            res->kms_version = 2;
        }
    } else {
        if (n < 2 || (size_t)((in[0] << 8) | in[1]) > n - 2) {
            agg_add(errs, -EBADMSG, err_kmsv1_len);
            return -EBADMSG;
        }
        if (res->kms_version == 0)
            res->kms_version = 1;
    }
    snprintf(e, sizeof(e), "needs KMS plugin %s", k->name ? k->name : "");
    agg_add(errs, -ENOPKG, e);
    return -ENOPKG;
}

static int chain_read(const struct ar_chain *c, const char *group, const char *resource,
                      const uint8_t *aad, size_t aadlen, const uint8_t *in, size_t inlen,
                      struct ar_buf *out, struct ar_result *res)
{
    const struct centry *e;
    struct agg errs;
    int kms_i = -1;

    if (!c || !group || !resource || (!in && inlen) || (!aad && aadlen))
        return -EINVAL;
    e = lookup(c, group, resource);
    if (!e) {
        /* identity.NewEncryptCheckTransformer */
        if (has_prefix(in, inlen, ENC_MARK, ENC_MARK_LEN)) {
            res_err(res, "%s", err_identity);
            return -ENOKEY;
        }
        return ar_buf_append(out, in, inlen);
    }
    errs.n = 0;
    errs.code = 0;
    errs.truncated = false;
    for (size_t i = 0; i < e->n; i++) {
        const struct cprov *cp = e->cv[i];
        int r;

        if (!has_prefix(in, inlen, cp->prefix, cp->plen))
            continue;
        switch (cp->p->type) {
        case AR_P_IDENTITY:
            /* empty prefix: an error is skipped silently */
            if (has_prefix(in, inlen, ENC_MARK, ENC_MARK_LEN))
                continue;
            r = ar_buf_append(out, in, inlen);
            if (r < 0)
                return r;
            break;
        case AR_P_KMS:
            if (read_kms(cp, in + cp->plen, inlen - cp->plen, res, &errs) == -ENOPKG && kms_i < 0)
                kms_i = (int)i;
            continue;
        default:
            r = read_keyed(cp, aad, aadlen, in + cp->plen, inlen - cp->plen, out, res, &errs);
            if (r == -EBADMSG)
                continue;
            if (r < 0) {
                res_err(res, "%s", strerror(-r));
                return r;
            }
            break;
        }
        res->type = cp->p->type;
        res->provider_index = (int)i;
        res->stale = res->stale || i != 0;
        return 0;
    }
    if (kms_i >= 0) {
        const struct cprov *cp = e->cv[kms_i];

        res->type = AR_P_KMS;
        res->provider_index = kms_i;
        res->key_name = cp->p->kms.name;
    } else {
        res->key_index = -1;
        res->key_name = NULL;
        res->key_fp = NULL;
        res->stale = false;
    }
    if (errs.n) {
        agg_format(&errs, res->err, sizeof(res->err));
        return errs.code;
    }
    res_err(res, "%s", err_no_prefix);
    return -ENOKEY;
}

/* ---- write -------------------------------------------------------------------------- */

/* Write with provider pi of the resource's list and key ki inside it (0, 0: the write key). */
static int chain_write(const struct ar_chain *c, const char *group, const char *resource, size_t pi,
                       size_t ki, const uint8_t *aad, size_t aadlen, const uint8_t *in,
                       size_t inlen, struct ar_buf *out, struct ar_result *res)
{
    const struct centry *e;
    const struct cprov *cp;
    const struct ckey *ck;
    int r;

    if (!c || !group || !resource || (!in && inlen) || (!aad && aadlen))
        return -EINVAL;
    e = lookup(c, group, resource);
    if (!e) {
        if (pi || ki) {
            res_err(res, "no provider %zu for %s (plain identity)", pi, resource);
            return -ENOENT;
        }
        return ar_buf_append(out, in, inlen);
    }
    if (pi >= e->n) {
        res_err(res, "no provider %zu for %s", pi, resource);
        return -ENOENT;
    }
    cp = e->cv[pi];
    if (ki && ki >= cp->nkeys) {
        res_err(res, "no key %zu in provider %zu for %s", ki, pi, resource);
        return -ENOENT;
    }
    res->type = cp->p->type;
    res->provider_index = (int)pi;
    switch (cp->p->type) {
    case AR_P_IDENTITY:
        return ar_buf_append(out, in, inlen);
    case AR_P_KMS:
        res->key_name = cp->p->kms.name;
        res->kms_version = cp->p->kms.api_version;
        res_err(res, "needs KMS plugin %s", cp->p->kms.name ? cp->p->kms.name : "");
        return -ENOPKG;
    default:
        break;
    }
    if (ki >= cp->nkeys) {
        res_err(res, "no key %zu in provider %zu for %s", ki, pi, resource);
        return -ENOENT;
    }
    ck = &cp->keys[ki];
    res->key_index = (int)ki;
    res->key_name = ck->k->name;
    res->key_fp = ck->k->fp;
    r = ar_buf_reserve(out, cp->plen + ck->plen + inlen + 64);
    if (r < 0)
        goto fail;
    memcpy(out->p, cp->prefix, cp->plen);
    memcpy(out->p + cp->plen, ck->prefix, ck->plen);
    out->len = cp->plen + ck->plen;
    switch (cp->p->type) {
    case AR_P_AESCBC:
        r = ar_aescbc_encrypt(ck->k->secret, ck->k->secret_len, in, inlen, out, res->err,
                              sizeof(res->err));
        break;
    case AR_P_AESGCM:
        r = ar_aesgcm_encrypt(ck->k->secret, ck->k->secret_len, aad, aadlen, in, inlen, out,
                              res->err, sizeof(res->err));
        break;
    default:
        r = ar_secretbox_encrypt(ck->k->secret, ck->k->secret_len, in, inlen, out, res->err,
                                 sizeof(res->err));
        break;
    }
    if (r < 0)
        goto fail;
    return 0;
fail:
    if (!res->err[0])
        res_err(res, "%s", strerror(-r));
    return r;
}

/*
 * out is "reset, then filled" (chain.h). Instead of wiping the old contents first, the new
 * value overwrites them and only the old bytes past the new length are wiped afterwards (on
 * failure: all of them): the same end state as ar_buf_reset without a second pass over the
 * buffer on every call.
 */
static void finish_out(struct ar_buf *out, size_t old, int r)
{
    if (r < 0 && out->len) {
        sodium_memzero(out->p, out->len);
        out->len = 0;
    }
    if (old > out->len)
        sodium_memzero(out->p + out->len, old - out->len);
}

int ar_chain_read(const struct ar_chain *c, const char *group, const char *resource,
                  const uint8_t *aad, size_t aadlen, const uint8_t *in, size_t inlen,
                  struct ar_buf *out, struct ar_result *res)
{
    size_t old = out->len;
    int r;

    res_init(res);
    out->len = 0;
    r = chain_read(c, group, resource, aad, aadlen, in, inlen, out, res);
    finish_out(out, old, r);
    return r;
}

int ar_chain_write(const struct ar_chain *c, const char *group, const char *resource,
                   const uint8_t *aad, size_t aadlen, const uint8_t *in, size_t inlen,
                   struct ar_buf *out, struct ar_result *res)
{
    size_t old = out->len;
    int r;

    res_init(res);
    out->len = 0;
    r = chain_write(c, group, resource, 0, 0, aad, aadlen, in, inlen, out, res);
    finish_out(out, old, r);
    return r;
}

int ar_chain_write_with(const struct ar_chain *c, const char *group, const char *resource,
                        size_t provider_index, size_t key_index, const uint8_t *aad, size_t aadlen,
                        const uint8_t *in, size_t inlen, struct ar_buf *out, struct ar_result *res)
{
    size_t old = out->len;
    int r;

    res_init(res);
    out->len = 0;
    r = chain_write(c, group, resource, provider_index, key_index, aad, aadlen, in, inlen, out,
                    res);
    finish_out(out, old, r);
    return r;
}

int ar_genkey(size_t n, char *dst, size_t dstlen)
{
    uint8_t k[64];
    int r;

    if (n == 0 || n > sizeof(k) ||
        dstlen < sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL))
        return -EINVAL;
    r = ar_random(k, n);
    if (r == 0)
        sodium_bin2base64(dst, dstlen, k, n, sodium_base64_VARIANT_ORIGINAL);
    sodium_memzero(k, sizeof(k));
    return r;
}
