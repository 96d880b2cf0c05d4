/*
 * crypto/compose.c: a config built from parts of other configs (contract in crypto/config.h).
 *
 * The parts become the same Go-shaped model a file decodes to (struct dconf), and that model
 * goes through the loader's own steps 3 and 4: defaults, validation, the masking check, the
 * struct build. The validator reads each key secret as base64 text and checks its length; the
 * model therefore carries a stand-in text of the right length made of zero bytes (no key
 * material), decoded into a scratch buffer of zeros. Only after validation do the key slots
 * point into the new locked arena, filled by copying each secret arena to arena.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "crypto/config.h"
#include "crypto/config_int.h"

static char *xstrdup(const char *s, int *nomem)
{
    char *r = strdup(s ? s : "");

    if (!r)
        *nomem = 1;
    return r;
}

/* base64 of n zero bytes (a stand-in for a secret of n bytes). */
static char *zero_b64(size_t n, int *nomem)
{
    uint8_t *z = calloc(n ? n : 1, 1);
    char *t = malloc(4 * ((n + 2) / 3) + 1);

    if (!z || !t) {
        free(z);
        free(t);
        *nomem = 1;
        return NULL;
    }
    ar_b64_encode(z, n, t);
    free(z);
    return t;
}

static struct dkeys *keyset(struct dprov *dp, enum ar_ptype t)
{
    switch (t) {
    case AR_P_AESCBC:
        return &dp->aescbc;
    case AR_P_AESGCM:
        return &dp->aesgcm;
    case AR_P_SECRETBOX:
        return &dp->secretbox;
    default:
        return NULL;
    }
}

/* The parts as a model. Stand-in secret texts are collected in texts[] (freed by the caller). */
static int to_model(const struct ar_compose_rule *rules, size_t nrules, struct dconf *d,
                    char **texts, size_t *ntexts, size_t *nkeys)
{
    int nomem = 0;
    size_t i, j, k;

    d->rules = calloc(nrules ? nrules : 1, sizeof(*d->rules));
    if (!d->rules)
        return -ENOMEM;
    d->nrules = nrules;
    for (i = 0; i < nrules && !nomem; i++) {
        const struct ar_compose_rule *cr = &rules[i];
        struct drule *r = &d->rules[i];

        r->res = calloc(cr->nresources ? cr->nresources : 1, sizeof(*r->res));
        r->res_pos = calloc(cr->nresources ? cr->nresources : 1, sizeof(*r->res_pos));
        r->prov = calloc(cr->nproviders ? cr->nproviders : 1, sizeof(*r->prov));
        if (!r->res || !r->res_pos || !r->prov)
            return -ENOMEM;
        r->nres = cr->nresources;
        for (j = 0; j < cr->nresources; j++)
            r->res[j] = xstrdup(cr->resources[j], &nomem);
        r->nprov = cr->nproviders;
        for (j = 0; j < cr->nproviders && !nomem; j++) {
            const struct ar_compose_provider *cp = &cr->providers[j];
            struct dprov *dp = &r->prov[j];
            struct dkeys *ks = keyset(dp, cp->type);

            if (cp->type == AR_P_IDENTITY) {
                dp->identity = true;
            } else if (cp->type == AR_P_KMS) {
                if (!cp->kms)
                    return -EINVAL;
                dp->kms.set = true;
                dp->kms.api_version = xstrdup(cp->kms->api_version == 2 ? "v2" : "v1", &nomem);
                dp->kms.name = xstrdup(cp->kms->name, &nomem);
                dp->kms.endpoint = xstrdup(cp->kms->endpoint, &nomem);
                dp->kms.cachesize_set = cp->kms->cachesize_set;
                dp->kms.cachesize = cp->kms->cachesize;
                dp->kms.timeout_set = true;
                dp->kms.timeout_ns = cp->kms->timeout_ns;
            } else if (ks) {
                ks->set = true;
                ks->v = calloc(cp->nkeys ? cp->nkeys : 1, sizeof(*ks->v));
                if (!ks->v)
                    return -ENOMEM;
                ks->n = cp->nkeys;
                for (k = 0; k < cp->nkeys && !nomem; k++) {
                    struct dkey *dk = &ks->v[k];
                    char *t = zero_b64(cp->keys[k]->secret_len, &nomem);

                    dk->name = xstrdup(cp->keys[k]->name, &nomem);
                    if (!t)
                        break;
                    texts[(*ntexts)++] = t;
                    dk->secret = t;
                    dk->secret_len = strlen(t);
                    (*nkeys)++;
                }
            } else {
                return -EINVAL;
            }
        }
    }
    return nomem ? -ENOMEM : 0;
}

static size_t count_keys(const struct ar_compose_rule *rules, size_t nrules, size_t *bytes)
{
    size_t i, j, k, n = 0;

    *bytes = 0;
    for (i = 0; i < nrules; i++)
        for (j = 0; j < rules[i].nproviders; j++) {
            const struct ar_compose_provider *cp = &rules[i].providers[j];
            if (cp->type == AR_P_IDENTITY || cp->type == AR_P_KMS)
                continue;
            for (k = 0; k < cp->nkeys; k++) {
                n++;
                *bytes += cp->keys[k]->secret_len;
            }
        }
    return n;
}

/* Point every key slot of the model at its place in area (stride: each slot's size). */
static void assign(struct dconf *d, uint8_t *area, bool decoded_max)
{
    size_t i, j, k, off = 0;

    for (i = 0; i < d->nrules; i++)
        for (j = 0; j < d->rules[i].nprov; j++) {
            struct dprov *p = &d->rules[i].prov[j];
            struct dkeys *sets[3] = {&p->aesgcm, &p->aescbc, &p->secretbox};
            for (int s = 0; s < 3; s++)
                for (k = 0; k < sets[s]->n; k++) {
                    sets[s]->v[k].dst = area + off;
                    off += decoded_max ? ar_b64_decoded_max(sets[s]->v[k].secret_len)
                                       : sets[s]->v[k].dec_len;
                }
        }
}

/* Copy each source secret into its arena slot (same walk order as to_model). */
static void fill(const struct ar_compose_rule *rules, size_t nrules, struct dconf *d)
{
    size_t i, j, k;

    for (i = 0; i < nrules; i++)
        for (j = 0; j < rules[i].nproviders; j++) {
            const struct ar_compose_provider *cp = &rules[i].providers[j];
            struct dkeys *ks = keyset(&d->rules[i].prov[j], cp->type);
            if (!ks)
                continue;
            for (k = 0; k < cp->nkeys; k++) {
                memcpy(ks->v[k].dst, cp->keys[k]->secret, cp->keys[k]->secret_len);
                ks->v[k].dec_len = cp->keys[k]->secret_len;
            }
        }
}

int ar_config_compose(const char *name, const struct ar_compose_rule *rules, size_t nrules,
                      const struct ar_load_opts *opts, struct ar_config **out,
                      struct ar_diags *diags)
{
    static const struct ar_load_opts defopts;
    struct ar_pos p0 = {0, 0};
    struct dconf d;
    struct ar_vctx vc;
    struct ar_config *c = NULL;
    char **texts = NULL;
    uint8_t *scratch = NULL, *arena;
    size_t ntexts = 0, nkeys, nvalid = 0, bytes, scratch_len = 0, i;
    int rc;

    *out = NULL;
    memset(&d, 0, sizeof(d));
    if (sodium_init() < 0)
        return -EIO;
    if (!name)
        name = "<composed>";
    vc.diags = diags;
    vc.file = name;
    vc.opts = opts ? opts : &defopts;
    nkeys = count_keys(rules, nrules, &bytes);
    texts = calloc(nkeys ? nkeys : 1, sizeof(*texts));
    if (!texts) {
        rc = -ENOMEM;
        goto fail;
    }
    rc = to_model(rules, nrules, &d, texts, &ntexts, &nvalid);
    if (rc < 0)
        goto fail;
    ar_cfg_defaults(&d);
    for (i = 0; i < ntexts; i++)
        scratch_len += ar_b64_decoded_max(strlen(texts[i]));
    scratch = calloc(scratch_len ? scratch_len : 1, 1);
    if (!scratch) {
        rc = -ENOMEM;
        goto fail;
    }
    assign(&d, scratch, true);
    rc = ar_cfg_validate(&d, &vc);
    if (rc == 0)
        rc = ar_cfg_check_masking(&d, &vc);
    if (rc != 0) {
        rc = rc < 0 ? rc : -EINVAL;
        goto fail;
    }
    c = ar_cfg_alloc();
    if (!c) {
        rc = -ENOMEM;
        goto fail;
    }
    if (bytes) {
        arena = ar_cfg_arena(c, bytes);
        if (!arena) {
            rc = -ENOMEM;
            goto fail;
        }
        assign(&d, arena, false); /* dec_len was set by the validator: the secret lengths */
        fill(rules, nrules, &d);
    }
    rc = ar_cfg_build(&d, c);
    if (rc < 0)
        goto fail;
    ar_cfg_seal(c);
    ar_cfg_render_sha256(c, c->file_sha256);
    *out = c;
    c = NULL;
    rc = 0;
    goto out;
fail:
    if (rc == -ENOMEM)
        ar_diags_add(diags, AR_SEV_ERROR, name, p0, "", "out of memory");
    else if (rc == -EINVAL && diags->nerrors == 0)
        ar_diags_add(diags, AR_SEV_ERROR, name, p0, "", "invalid composition request");
out:
    ar_cfg_destroy(c);
    ar_cfg_dconf_free(&d);
    for (i = 0; i < ntexts; i++)
        free(texts[i]);
    free(texts);
    free(scratch);
    return rc;
}
