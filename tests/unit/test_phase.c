/*
 * tests/unit/test_phase.c: phase derivation (coord/phase.h).
 *
 * Configs are written in a compact spec, e.g. "secrets,*.apps=aescbc:k1:k2|identity;*.*=kms:v"
 * (rules split by ';', resources by ',', providers by '|', a keyed provider as type:key:key,
 * "kms:NAME" a KMS v1 provider); key names map to secrets generated at test time (k*: 32 bytes,
 * h*: 16, s*: 32 for secretbox, g*: 24 for aesgcm). Specs hold no key text, so a failing case
 * prints its specs.
 *
 * Hand-written cases check every row of DESIGN 4.2 (the exact provider/key order of each phase
 * config, through the real chain's lookup). The property test derives plans for many random
 * (from, to) pairs and checks: every phase config is valid (rendered, loaded back, zero errors,
 * same fingerprint, file hash = sha256 of the rendered bytes); derivation from the same configs
 * written differently gives byte-identical phase configs; the last phase config has to's
 * fingerprint; S1 with the real chains (for every two consecutive configs from -> phases,
 * a value written by either is read by the other, for every resource named and for resources
 * only wildcards or nothing cover); S2 (every key of from stays in the read list of every phase
 * before prune, and a value written with a key that to drops is decrypted by each of them).
 * ATREST_PHASE_SEED=N repeats a run; ATREST_PHASE_COUNT=N changes the number of pairs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <errno.h>
#include <stdbool.h>

#include <sodium.h>

#include "coord/phase.h"
#include "crypto/chain.h"
#include "crypto/config.h"

/* ---- keys ------------------------------------------------------------------------------------ */

#define NPOOL 24
static struct {
    char name[8];
    char b64[64];
} pool[NPOOL];
static size_t npool;

static void pool_add(const char *name, size_t bytes)
{
    assert_true(npool < NPOOL);
    snprintf(pool[npool].name, sizeof(pool[npool].name), "%s", name);
    assert_int_equal(ar_genkey(bytes, pool[npool].b64, sizeof(pool[npool].b64)), 0);
    npool++;
}

static const char *secret_of(const char *name)
{
    for (size_t i = 0; i < npool; i++)
        if (!strcmp(pool[i].name, name))
            return pool[i].b64;
    fail_msg("no key %s in the pool", name);
    return NULL;
}

static int setup(void **state)
{
    char n[16];

    (void)state;
    assert_int_equal(ar_crypto_init(), 0);
    for (int i = 0; i < 6; i++) {
        snprintf(n, sizeof(n), "k%d", i);
        pool_add(n, 32);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(n, sizeof(n), "h%d", i);
        pool_add(n, 16);
        snprintf(n, sizeof(n), "s%d", i);
        pool_add(n, 32);
        snprintf(n, sizeof(n), "g%d", i);
        pool_add(n, 24);
    }
    pool_add("k1x", 32); /* for the collision case: written as name "k1" */
    return 0;
}

/* ---- specs to configs ------------------------------------------------------------------------ */

struct text {
    char *p; /* sodium_malloc'd: it holds key text */
    size_t len, cap;
};

static void tput(struct text *t, const char *s)
{
    size_t n = strlen(s);

    assert_true(t->len + n < t->cap);
    memcpy(t->p + t->len, s, n + 1);
    t->len += n;
}

static void spec_yaml(const char *spec, struct text *t)
{
    char buf[1024], *rs, *rsave = NULL;

    snprintf(buf, sizeof(buf), "%s", spec);
    tput(t, "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n");
    for (rs = strtok_r(buf, ";", &rsave); rs; rs = strtok_r(NULL, ";", &rsave)) {
        char *eq = strchr(rs, '='), *r, *psave = NULL, *p;
        assert_non_null(eq);
        *eq = '\0';
        tput(t, "  - resources:\n");
        for (r = strtok_r(rs, ",", &psave); r; r = strtok_r(NULL, ",", &psave)) {
            tput(t, "      - \"");
            tput(t, r);
            tput(t, "\"\n");
        }
        tput(t, "    providers:\n");
        psave = NULL;
        for (p = strtok_r(eq + 1, "|", &psave); p; p = strtok_r(NULL, "|", &psave)) {
            char *ksave = NULL, *type = strtok_r(p, ":", &ksave), *k;
            if (!strcmp(type, "identity")) {
                tput(t, "      - identity: {}\n");
            } else if (!strcmp(type, "kms") || !strcmp(type, "kms2")) {
                tput(t,
                     type[3] ? "      - kms: {apiVersion: v2, name: \"" : "      - kms: {name: \"");
                tput(t, strtok_r(NULL, ":", &ksave));
                tput(t, "\", endpoint: \"unix:///run/kms.sock\"}\n");
            } else {
                tput(t, "      - ");
                tput(t, type);
                tput(t, ":\n          keys:\n");
                while ((k = strtok_r(NULL, ":", &ksave))) {
                    /* "k1x" is written as "k1" with another secret */
                    char nm[8];
                    snprintf(nm, sizeof(nm), "%s", k);
                    if (!strcmp(nm, "k1x"))
                        nm[2] = '\0';
                    tput(t, "            - {name: \"");
                    tput(t, nm);
                    tput(t, "\", secret: \"");
                    tput(t, secret_of(k));
                    tput(t, "\"}\n");
                }
            }
        }
    }
}

/* Load a spec: 0 or the loader's error. */
static struct text txt; /* one locked buffer for every spec's YAML, wiped after each use */

static int try_spec(const char *spec, struct ar_config **out)
{
    struct ar_diags d;
    int rc;

    if (!txt.p) {
        txt.cap = 16384;
        txt.p = sodium_malloc(txt.cap);
        assert_non_null(txt.p);
    }
    txt.len = 0;
    txt.p[0] = '\0';
    spec_yaml(spec, &txt);
    ar_diags_init(&d);
    rc = ar_config_load_mem(spec, txt.p, txt.len, NULL, out, &d);
    ar_diags_free(&d);
    sodium_memzero(txt.p, txt.len);
    return rc;
}

static struct ar_config *cfg(const char *spec)
{
    struct ar_config *c = NULL;

    if (try_spec(spec, &c) != 0)
        fail_msg("spec does not load: %s", spec);
    return c;
}

/* ---- looking at configs through the real chain ---------------------------------------------- */

struct res {
    const char *group, *resource, *written;
};
static const struct res RES[] = {
    {"", "secrets", "secrets"},
    {"", "configmaps", "configmaps"},
    {"", "events", "events"},
    {"apps", "deployments", "deployments.apps"},
    {"", "pods", "pods"},                              /* only "*." or "*.*" cover it */
    {"apps", "replicasets", "replicasets.apps"},       /* only "*.apps" or "*.*" */
    {"example.com", "widgets", "widgets.example.com"}, /* only "*.*" */
};
#define NRES (sizeof(RES) / sizeof(RES[0]))

/* "aescbc{k1,k2},identity"; "(plain)" when no rule covers it. */
static void describe(const struct ar_config *c, const char *group, const char *resource, char *out,
                     size_t len)
{
    struct ar_chain *ch = NULL;
    struct ar_plist l;
    size_t o = 0;

    assert_int_equal(ar_chain_new((struct ar_config *)c, &ch), 0);
    ar_chain_lookup(ch, group, resource, &l);
    out[0] = '\0';
    if (l.n == 0)
        snprintf(out, len, "(plain)");
    for (size_t i = 0; i < l.n; i++) {
        const struct ar_provider *p = l.v[i];
        o += (size_t)snprintf(out + o, len - o, "%s%s", i ? "," : "", ar_ptype_name(p->type));
        if (p->type == AR_P_KMS)
            o += (size_t)snprintf(out + o, len - o, "{%s}", p->kms.name);
        for (size_t k = 0; k < p->nkeys; k++)
            o += (size_t)snprintf(out + o, len - o, "%s%s%s", k ? "," : "{", p->keys[k].name,
                                  k + 1 == p->nkeys ? "}" : "");
        assert_true(o < len);
    }
    ar_chain_unref(ch);
}

static void assert_fp_equal(const struct ar_config *a, const struct ar_config *b)
{
    assert_memory_equal(a->fingerprint, b->fingerprint, AR_SHA256_LEN);
}

static struct ar_plan *derive(struct ar_config *from, struct ar_config *to)
{
    struct ar_plan *p = NULL;
    struct ar_diags d;
    char line[512];
    int rc;

    ar_diags_init(&d);
    rc = ar_plan_derive(from, to, "to.yaml", NULL, &p, &d);
    for (size_t i = 0; rc != 0 && i < d.n; i++) {
        ar_diag_format(&d.v[i], line, sizeof(line));
        print_error("%s\n", line);
    }
    assert_int_equal(rc, 0);
    ar_diags_free(&d);
    return p;
}

/* One hand-written row: the phase kinds and, for secrets, each phase's list. */
static void row(const char *from_spec, const char *to_spec, const char *kinds,
                const char *const *lists)
{
    struct ar_config *from = cfg(from_spec), *to = cfg(to_spec);
    struct ar_plan *p = derive(from, to);
    char got[256] = "", l[256];

    for (size_t i = 0; i < p->nphases; i++) {
        strcat(got, i ? "," : "");
        strcat(got, ar_phase_name(p->phases[i].kind));
    }
    assert_string_equal(got, kinds);
    for (size_t i = 0; i < p->nphases; i++) {
        describe(p->phases[i].config, "", "secrets", l, sizeof(l));
        assert_string_equal(l, lists[i]);
    }
    assert_true(p->nphases > 0);
    assert_fp_equal(p->phases[p->nphases - 1].config, to);
    ar_plan_free(p);
    ar_config_unref(from);
    ar_config_unref(to);
}

/* ---- DESIGN 4.2, row by row ---------------------------------------------------------------- */

#define P5(a, b, c) ((const char *const[]){a, b, b, b, c})

static void test_row_new_key_old_dropped(void **state)
{
    (void)state;
    row("secrets=aescbc:k1|identity", "secrets=aescbc:k2|identity",
        "stage,promote,reencrypt,verify,prune",
        P5("aescbc{k1,k2},identity", "aescbc{k2,k1},identity", "aescbc{k2},identity"));
}

static void test_row_new_key_old_kept(void **state)
{
    (void)state;
    row("secrets=aescbc:k1", "secrets=aescbc:k2:k1", "stage,promote,reencrypt,verify",
        (const char *const[]){"aescbc{k1,k2}", "aescbc{k2,k1}", "aescbc{k2,k1}", "aescbc{k2,k1}"});
}

static void test_row_turn_on(void **state)
{
    (void)state;
    row("secrets=identity", "secrets=aescbc:k1|identity", "stage,promote,reencrypt,verify",
        (const char *const[]){"identity,aescbc{k1}", "aescbc{k1},identity", "aescbc{k1},identity",
                              "aescbc{k1},identity"});
}

static void test_row_change_type(void **state)
{
    (void)state;
    row("secrets=aescbc:k1", "secrets=secretbox:s1", "stage,promote,reencrypt,verify,prune",
        P5("aescbc{k1},secretbox{s1}", "secretbox{s1},aescbc{k1}", "secretbox{s1}"));
}

static void test_row_turn_off(void **state)
{
    (void)state;
    row("secrets=aescbc:k1", "secrets=identity", "stage,promote,reencrypt,verify,prune",
        P5("aescbc{k1},identity", "identity,aescbc{k1}", "identity"));
}

/* ---- more hand-written cases ---------------------------------------------------------------- */

/* A key dropped with no write change: no stage, no promote, but re-encrypt before prune. */
static void test_drop_only(void **state)
{
    struct ar_config *from = cfg("secrets=aescbc:k1:k2"), *to = cfg("secrets=aescbc:k1");
    struct ar_plan *p = derive(from, to);

    (void)state;
    assert_int_equal(p->nphases, 3);
    assert_int_equal(p->phases[0].kind, AR_PHASE_REENCRYPT);
    assert_int_equal(p->phases[1].kind, AR_PHASE_VERIFY);
    assert_int_equal(p->phases[2].kind, AR_PHASE_PRUNE);
    assert_int_equal(p->phases[0].nrewrite, 1);
    assert_string_equal(p->phases[0].rewrite[0], "secrets");
    assert_int_equal(p->phases[2].ndrops, 1);
    assert_int_equal(p->phases[2].drops[0].type, AR_P_AESCBC);
    assert_string_equal(p->phases[2].drops[0].name, "k2");
    assert_memory_equal(p->phases[2].drops[0].fp, from->rules[0].providers[0].keys[1].fp, 8);
    ar_plan_free(p);
    ar_config_unref(from);
    ar_config_unref(to);
}

/* Wildcards, resources added and removed, several rules for one resource, KMS kept by name. */
static void test_wildcards_and_lists(void **state)
{
    struct ar_config *from = cfg("secrets=aescbc:k1;secrets=secretbox:s1;*.apps=identity;"
                                 "*.*=aescbc:k3|kms:vault"),
                     *to = cfg("configmaps=aesgcm:g1|identity;*.*=aescbc:k4|kms:vault");
    struct ar_plan *p = derive(from, to);
    char l[256];

    (void)state;
    assert_int_equal(p->nphases, 5);
    /* secrets: from's two rules concatenated; to has it only through *.* */
    describe(p->phases[0].config, "", "secrets", l, sizeof(l));
    assert_string_equal(l, "aescbc{k1,k4},secretbox{s1},kms{vault}");
    describe(p->phases[1].config, "", "secrets", l, sizeof(l));
    assert_string_equal(l, "aescbc{k4,k1},kms{vault},secretbox{s1}");
    describe(p->phases[4].config, "", "secrets", l, sizeof(l));
    assert_string_equal(l, "aescbc{k4},kms{vault}");
    /* an unnamed apps resource follows *.apps in from, *.* in to */
    describe(p->phases[0].config, "apps", "replicasets", l, sizeof(l));
    assert_string_equal(l, "identity,aescbc{k4},kms{vault}");
    describe(p->phases[1].config, "apps", "replicasets", l, sizeof(l));
    assert_string_equal(l, "aescbc{k4},kms{vault},identity");
    /* configmaps was added to the lists */
    describe(p->phases[0].config, "", "configmaps", l, sizeof(l));
    assert_string_equal(l, "aescbc{k3},kms{vault},aesgcm{g1},identity");
    describe(p->phases[1].config, "", "configmaps", l, sizeof(l));
    assert_string_equal(l, "aesgcm{g1},identity,aescbc{k3},kms{vault}");
    /* only *.* covers widgets */
    describe(p->phases[1].config, "example.com", "widgets", l, sizeof(l));
    assert_string_equal(l, "aescbc{k4,k3},kms{vault}");
    assert_int_equal(p->phases[2].nrewrite, 4);
    assert_string_equal(p->phases[2].rewrite[0], "configmaps");
    assert_string_equal(p->phases[2].rewrite[1], "secrets");
    assert_string_equal(p->phases[2].rewrite[2], "*.apps");
    assert_string_equal(p->phases[2].rewrite[3], "*.*");
    ar_plan_free(p);
    ar_config_unref(from);
    ar_config_unref(to);
}

/* The exact rendered bytes of a stage config (rule order, merged selectors). */
static void test_render_shape(void **state)
{
    struct ar_config *from = cfg("configmaps,secrets=aescbc:k1;*.*=identity"),
                     *to = cfg("secrets,configmaps=aescbc:k2;*.*=identity");
    struct ar_plan *p = derive(from, to);
    char *r = NULL;
    size_t rlen = 0;

    (void)state;
    assert_int_equal(p->nphases, 5);
    assert_int_equal(ar_config_render(p->phases[0].config, true, &r, &rlen), 0);
    char want[2048];
    char fp1[17], fp2[17];
    ar_hex(from->rules[0].providers[0].keys[0].fp, 8, fp1);
    ar_hex(to->rules[0].providers[0].keys[0].fp, 8, fp2);
    snprintf(want, sizeof(want),
             "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
             "resources:\n"
             "  - resources:\n      - \"configmaps\"\n      - \"secrets\"\n"
             "    providers:\n      - aescbc:\n          keys:\n"
             "            - name: \"k1\"\n              secret: \"REDACTED:%s\"\n"
             "            - name: \"k2\"\n              secret: \"REDACTED:%s\"\n"
             "  - resources:\n      - \"*.*\"\n    providers:\n      - identity: {}\n",
             fp1, fp2);
    assert_string_equal(r, want);
    ar_config_render_free(r, rlen);
    ar_plan_free(p);
    ar_config_unref(from);
    ar_config_unref(to);
}

static void test_nothing_to_do_and_regroup(void **state)
{
    struct ar_config *a = cfg("secrets=aescbc:k1"), *b = cfg("secrets=aescbc:k1"),
                     *c = cfg("secrets,configmaps=aescbc:k1"),
                     *d = cfg("secrets=aescbc:k1;"
                              "configmaps=aescbc:k1");
    struct ar_plan *p = derive(a, b);

    (void)state;
    assert_int_equal(p->nphases, 0);
    ar_plan_free(p);
    /* the same meaning written as two rules: one prune phase that drops nothing */
    p = derive(c, d);
    assert_int_equal(p->nphases, 1);
    assert_int_equal(p->phases[0].kind, AR_PHASE_PRUNE);
    assert_int_equal(p->phases[0].ndrops, 0);
    assert_fp_equal(p->phases[0].config, d);
    ar_plan_free(p);
    ar_config_unref(a);
    ar_config_unref(b);
    ar_config_unref(c);
    ar_config_unref(d);
}

/* KMS providers are kept as they are, by name; a v2 provider (unique name per file) stays in one
 * rule while the resources it serves keep equal lists, and the plan is refused when it could
 * not. */
static void test_kms(void **state)
{
    struct ar_config *from = cfg("secrets,configmaps=kms2:vault|aescbc:k1"),
                     *to = cfg("secrets,configmaps=aescbc:k2|kms2:vault"),
                     *to2 = cfg("secrets=kms2:vault;configmaps=aescbc:k2");
    struct ar_plan *p = derive(from, to);
    struct ar_diags d;
    char l[256];

    (void)state;
    assert_int_equal(p->nphases, 5);
    describe(p->phases[0].config, "", "configmaps", l, sizeof(l));
    assert_string_equal(l, "kms{vault},aescbc{k1,k2}");
    describe(p->phases[1].config, "", "secrets", l, sizeof(l));
    assert_string_equal(l, "aescbc{k2,k1},kms{vault}");
    assert_int_equal(p->phases[1].config->nrules, 1);
    assert_int_equal(p->phases[4].ndrops, 1);
    assert_string_equal(p->phases[4].drops[0].name, "k1");
    ar_plan_free(p);
    /* configmaps leaves vault: the stage config would need vault in two rules */
    ar_diags_init(&d);
    p = NULL;
    assert_int_equal(ar_plan_derive(from, to2, "to.yaml", NULL, &p, &d), -EINVAL);
    assert_null(p);
    assert_int_equal(d.nerrors, 1);
    assert_string_equal(d.v[0].path, "resources[1].providers[0].kms.name");
    assert_string_equal(d.v[0].detail, "Invalid value: \"vault\": duplicate KMS provider name "
                                       "vault, names must be unique");
    ar_diags_free(&d);
    ar_config_unref(from);
    ar_config_unref(to);
    ar_config_unref(to2);
}

static void test_key_name_collision(void **state)
{
    struct ar_config *from = cfg("secrets=aescbc:k1"), *to = cfg("secrets=aescbc:k1x|aescbc:k2");
    struct ar_plan *p = NULL;
    struct ar_diags d;
    char line[512];

    (void)state;
    ar_diags_init(&d);
    assert_int_equal(ar_plan_derive(from, to, "to.yaml", NULL, &p, &d), -EINVAL);
    assert_null(p);
    assert_int_equal(d.nerrors, 1);
    ar_diag_format(&d.v[0], line, sizeof(line));
    assert_string_equal(line, "to.yaml:9:15: resources[0].providers[0].aescbc.keys[0].name: "
                              "Invalid value: \"k1\": key k1 has another secret in the from "
                              "config; give the new key a new name");
    ar_diags_free(&d);
    ar_config_unref(from);
    ar_config_unref(to);
}

/* ---- the property test ----------------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void)
{ /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static unsigned rn(unsigned n)
{
    return (unsigned)(rnd() % n);
}

static const char *const SEL[] = {"secrets", "configmaps", "events", "deployments.apps",
                                  "*.apps",  "*.",         "*.*"};

static void gen_keys(char *o, size_t len, char prefix, unsigned nk)
{
    unsigned n = 1 + rn(3), used = 0;

    for (unsigned i = 0; i < n; i++) {
        unsigned k = rn(nk);
        if (used & (1u << k))
            continue;
        used |= 1u << k;
        snprintf(o + strlen(o), len - strlen(o), ":%c%u", prefix, k);
    }
}

static int sel_class(const char *r)
{
    return !strcmp(r, "*.*") ? 2 : r[0] == '*' ? 1 : 0;
}

/* Rules are ordered by the widest selector they name (exact, *.group, *.*), so most specs pass
 * the masking check; the loader rejects the rest and another is drawn. */
static void gen_spec(char *o, size_t len)
{
    unsigned nrules = 1 + rn(3);
    char rules[3][256];
    int cls[3];

    o[0] = '\0';
    for (unsigned r = 0; r < nrules; r++) {
        unsigned nres = 1 + rn(2), np = 1 + rn(3);
        char *b = rules[r];
        b[0] = '\0';
        cls[r] = 0;
        for (unsigned i = 0; i < nres; i++) {
            const char *sel = SEL[rn(sizeof(SEL) / sizeof(SEL[0]))];
            if (sel_class(sel) > cls[r])
                cls[r] = sel_class(sel);
            strcat(b, i ? "," : "");
            strcat(b, sel);
        }
        strcat(b, "=");
        for (unsigned p = 0; p < np; p++) {
            unsigned t = rn(20);
            if (p)
                strcat(b, "|");
            if (t < 5) {
                strcat(b, "identity");
            } else if (t < 11) {
                strcat(b, "aescbc");
                gen_keys(b, sizeof(rules[r]), t < 9 ? 'k' : 'h', 3);
            } else if (t < 14) {
                strcat(b, "secretbox");
                gen_keys(b, sizeof(rules[r]), 's', 3);
            } else if (t < 17 || p == 0) {
                strcat(b, "aesgcm");
                gen_keys(b, sizeof(rules[r]), 'g', 3);
            } else {
                strcat(b, "kms:vault");
            }
        }
    }
    for (int c = 0; c < 3; c++)
        for (unsigned r = 0; r < nrules; r++)
            if (cls[r] == c) {
                strcat(o, o[0] ? ";" : "");
                strcat(o, rules[r]);
            }
    assert_true(strlen(o) < len - 1);
}

static struct ar_config *gen_config(char *spec, size_t len)
{
    struct ar_config *c = NULL;

    for (int tries = 0; tries < 1000; tries++) {
        gen_spec(spec, len);
        if (try_spec(spec, &c) == 0)
            return c;
    }
    fail_msg("no valid config generated");
    return NULL;
}

struct pcase {
    const char *from_spec, *to_spec;
    uint64_t seed;
    unsigned index;
};
static struct pcase cur;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            print_error("case %u of seed %llu (ATREST_PHASE_SEED=%llu)\n  from: %s\n  to:   %s\n", \
                        cur.index, (unsigned long long)cur.seed, (unsigned long long)cur.seed,     \
                        cur.from_spec, cur.to_spec);                                               \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

static void aad_for(const struct res *r, char *aad, size_t len)
{
    snprintf(aad, len, "/registry/%s/ns/obj", r->written);
}

/* S1 across one transition: a value written by either config is read by the other. */
static void check_s1(struct ar_chain *x, struct ar_chain *y, const char *what)
{
    struct ar_buf enc = AR_BUF_INIT, dec = AR_BUF_INIT;
    struct ar_result rr;
    char aad[128];
    static const uint8_t pt[] = "{\"kind\":\"Secret\"}";

    for (int dir = 0; dir < 2; dir++) {
        struct ar_chain *w = dir ? y : x, *r = dir ? x : y;
        for (size_t i = 0; i < NRES; i++) {
            int rc;
            aad_for(&RES[i], aad, sizeof(aad));
            rc = ar_chain_write(w, RES[i].group, RES[i].resource, (const uint8_t *)aad, strlen(aad),
                                pt, sizeof(pt), &enc, &rr);
            if (rc == -ENOPKG)
                continue; /* KMS writes need the plugin; never the case in these specs */
            CHECK(rc == 0, "%s: write %s failed: %s", what, RES[i].written, rr.err);
            rc = ar_chain_read(r, RES[i].group, RES[i].resource, (const uint8_t *)aad, strlen(aad),
                               enc.p, enc.len, &dec, &rr);
            CHECK(rc == 0 && dec.len == sizeof(pt) && !memcmp(dec.p, pt, sizeof(pt)),
                  "S1: %s: %s written by one side is not read by the other (dir %d): %s", what,
                  RES[i].written, dir, rr.err);
        }
    }
    ar_buf_free(&enc);
    ar_buf_free(&dec);
}

static bool list_has(const struct ar_plist *l, const struct ar_provider *p, const struct ar_key *k)
{
    for (size_t i = 0; i < l->n; i++) {
        if (l->v[i]->type != p->type)
            continue;
        if (p->type == AR_P_IDENTITY)
            return true;
        if (p->type == AR_P_KMS && !strcmp(l->v[i]->kms.name, p->kms.name))
            return true;
        for (size_t j = 0; k && j < l->v[i]->nkeys; j++)
            if (!strcmp(l->v[i]->keys[j].name, k->name) && !memcmp(l->v[i]->keys[j].fp, k->fp, 8))
                return true;
    }
    return false;
}

/* A chain that writes every resource with one key alone (one per key and pair). */
struct single {
    enum ar_ptype type;
    const struct ar_key *key;
    struct ar_chain *chain;
};

static struct ar_chain *single_chain(struct single *v, size_t *n, enum ar_ptype type,
                                     const struct ar_key *key)
{
    const struct ar_key *ks[1] = {key};
    struct ar_compose_provider one = {.type = type, .keys = ks, .nkeys = 1};
    const char *names[1] = {"*.*"};
    struct ar_compose_rule rule = {names, 1, &one, 1};
    struct ar_config *c = NULL;
    struct ar_diags d;

    for (size_t i = 0; i < *n; i++)
        if (v[i].type == type && !strcmp(v[i].key->name, key->name) &&
            !memcmp(v[i].key->fp, key->fp, 8))
            return v[i].chain;
    assert_true(*n < 32);
    ar_diags_init(&d);
    assert_int_equal(ar_config_compose("single", &rule, 1, NULL, &c, &d), 0);
    ar_diags_free(&d);
    v[*n].type = type;
    v[*n].key = key;
    assert_int_equal(ar_chain_new(c, &v[*n].chain), 0);
    ar_config_unref(c); /* the chain holds it */
    return v[(*n)++].chain;
}

/* S2: every read key of from is in the lists of the phases before prune (ph[0..nph)); a value
 * written with a key that to drops is decrypted by each of them. */
static void check_s2(struct ar_chain *cf, struct ar_chain *ct, struct ar_chain *const *ph,
                     size_t nph)
{
    struct ar_buf enc = AR_BUF_INIT, dec = AR_BUF_INIT;
    struct ar_result rr;
    char aad[128];
    static const uint8_t pt[] = "old";
    struct single singles[32];
    size_t nsingles = 0;

    for (size_t i = 0; i < NRES; i++) {
        struct ar_plist lf, lt, lp;
        ar_chain_lookup(cf, RES[i].group, RES[i].resource, &lf);
        ar_chain_lookup(ct, RES[i].group, RES[i].resource, &lt);
        aad_for(&RES[i], aad, sizeof(aad));
        for (size_t pi = 0; pi < nph; pi++) {
            ar_chain_lookup(ph[pi], RES[i].group, RES[i].resource, &lp);
            if (lf.n == 0) { /* plain identity: plaintext must stay readable */
                static const struct ar_provider idp = {.type = AR_P_IDENTITY};
                CHECK(lp.n == 0 || list_has(&lp, &idp, NULL),
                      "S2: phase %zu cannot read plaintext %s", pi, RES[i].written);
            }
            for (size_t j = 0; j < lf.n; j++) {
                const struct ar_provider *p = lf.v[j];
                /* plain identity (no rule) reads plaintext too */
                if (p->type == AR_P_IDENTITY || p->type == AR_P_KMS)
                    CHECK(list_has(&lp, p, NULL) || (p->type == AR_P_IDENTITY && lp.n == 0),
                          "S2: phase %zu dropped %s of %s early", pi, ar_ptype_name(p->type),
                          RES[i].written);
                for (size_t k = 0; k < p->nkeys; k++)
                    CHECK(list_has(&lp, p, &p->keys[k]), "S2: phase %zu dropped %s key %s of %s",
                          pi, ar_ptype_name(p->type), p->keys[k].name, RES[i].written);
            }
        }
        /* each key to drops: encrypt with it alone, decrypt with every phase before prune */
        for (size_t j = 0; j < lf.n; j++) {
            const struct ar_provider *p = lf.v[j];
            for (size_t k = 0; k < p->nkeys; k++) {
                const struct ar_key *ks[1] = {&p->keys[k]};
                struct ar_chain *cs = NULL;

                if (list_has(&lt, p, ks[0]))
                    continue;
                cs = single_chain(singles, &nsingles, p->type, ks[0]);
                assert_int_equal(ar_chain_write(cs, RES[i].group, RES[i].resource,
                                                (const uint8_t *)aad, strlen(aad), pt, sizeof(pt),
                                                &enc, &rr),
                                 0);
                for (size_t pi = 0; pi < nph; pi++)
                    CHECK(ar_chain_read(ph[pi], RES[i].group, RES[i].resource, (const uint8_t *)aad,
                                        strlen(aad), enc.p, enc.len, &dec, &rr) == 0,
                          "S2: phase %zu cannot decrypt %s under dropped key %s: %s", pi,
                          RES[i].written, ks[0]->name, rr.err);
            }
        }
    }
    for (size_t i = 0; i < nsingles; i++)
        ar_chain_unref(singles[i].chain);
    ar_buf_free(&enc);
    ar_buf_free(&dec);
}

/* Valid: renders, loads back with zero errors, same fingerprint, file hash of those bytes. */
static struct ar_config *check_valid(const struct ar_config *c, size_t pi)
{
    struct ar_config *back = NULL;
    struct ar_diags d;
    char *r = NULL;
    size_t rlen = 0;
    uint8_t h[32];

    assert_int_equal(ar_config_render(c, false, &r, &rlen), 0);
    ar_diags_init(&d);
    CHECK(ar_config_load_mem("phase", r, rlen, NULL, &back, &d) == 0 && d.nerrors == 0,
          "S3: phase %zu does not load back", pi);
    ar_diags_free(&d);
    crypto_hash_sha256(h, (const uint8_t *)r, rlen);
    CHECK(!memcmp(h, c->file_sha256, 32), "phase %zu: file hash is not over the rendered bytes",
          pi);
    CHECK(!memcmp(back->fingerprint, c->fingerprint, 32), "phase %zu: fingerprint changes", pi);
    ar_config_render_free(r, rlen);
    return back;
}

/* The same configs written as render() writes them (other text, same meaning). */
static struct ar_config *rewritten(const struct ar_config *c)
{
    struct ar_config *back = NULL;
    struct ar_diags d;
    char *r = NULL;
    size_t rlen = 0;

    assert_int_equal(ar_config_render(c, false, &r, &rlen), 0);
    ar_diags_init(&d);
    assert_int_equal(ar_config_load_mem("again", r, rlen, NULL, &back, &d), 0);
    ar_diags_free(&d);
    ar_config_render_free(r, rlen);
    return back;
}

/* twice: also derive from the same configs written differently and compare the bytes */
static void check_pair(struct ar_config *from, struct ar_config *to, bool twice,
                       size_t *phase_counts)
{
    struct ar_plan *p = NULL, *p2 = NULL;
    struct ar_config *from2 = twice ? rewritten(from) : ar_config_ref(from);
    struct ar_config *to2 = twice ? rewritten(to) : ar_config_ref(to);
    struct ar_chain *chains[6] = {NULL}, *cto = NULL;
    struct ar_diags d;
    size_t n = 0, i, prune_at, nbefore = 0;
    int rc;

    ar_diags_init(&d);
    rc = ar_plan_derive(from, to, "to", NULL, &p, &d);
    if (rc == -EINVAL && d.nerrors && strstr(d.v[0].detail, "has another secret"))
        fail_msg("the generator made a collision");
    CHECK(rc == 0, "derive failed: %d %s", rc, d.n ? d.v[0].detail : "");
    ar_diags_free(&d);
    ar_diags_init(&d);
    assert_int_equal(ar_plan_derive(from2, to2, "to", NULL, &p2, &d), 0);
    ar_diags_free(&d);
    CHECK(p->nphases == p2->nphases, "different phase counts for the same configs");
    phase_counts[p->nphases]++;
    if (!memcmp(from->fingerprint, to->fingerprint, 32))
        CHECK(p->nphases == 0, "from == to has phases");
    else
        CHECK(p->nphases > 0 &&
                  !memcmp(p->phases[p->nphases - 1].config->fingerprint, to->fingerprint, 32),
              "the last phase config is not to");

    assert_int_equal(ar_chain_new(from, &chains[n++]), 0);
    assert_int_equal(ar_chain_new(to, &cto), 0);
    prune_at = p->nphases;
    for (i = 0; i < p->nphases; i++) {
        struct ar_config *back;

        CHECK(i == 0 || p->phases[i].kind > p->phases[i - 1].kind, "phases out of order");
        CHECK(p->phases[i].kind == p2->phases[i].kind, "phase kinds differ");
        /* file_sha256 is the hash of the rendered bytes (check_valid checks it) */
        CHECK(!memcmp(p->phases[i].config->file_sha256, p2->phases[i].config->file_sha256, 32),
              "phase %zu: bytes differ between derivations", i);
        if (p->phases[i].kind == AR_PHASE_PRUNE)
            prune_at = i;
        if (i > 0 && p->phases[i].config == p->phases[i - 1].config)
            continue;
        back = check_valid(p->phases[i].config, i);
        ar_config_unref(back);
        assert_int_equal(ar_chain_new(p->phases[i].config, &chains[n++]), 0);
        check_s1(chains[n - 2], chains[n - 1], ar_phase_name(p->phases[i].kind));
        if (i < prune_at)
            nbefore = n - 1;
    }
    check_s2(chains[0], cto, chains + 1, nbefore);
    for (i = 0; i < n; i++)
        ar_chain_unref(chains[i]);
    ar_chain_unref(cto);
    ar_plan_free(p);
    ar_plan_free(p2);
    ar_config_unref(from2);
    ar_config_unref(to2);
}

static void test_property(void **state)
{
    const char *es = getenv("ATREST_PHASE_SEED"), *ec = getenv("ATREST_PHASE_COUNT");
#ifdef ATREST_SANITIZE
    unsigned count = 2500;
#else
    unsigned count = 10000;
#endif
    size_t phase_counts[6] = {0};
    char fs[1024], ts[1024];

    (void)state;
    cur.seed = es ? strtoull(es, NULL, 10) : (uint64_t)time(NULL) ^ (uint64_t)clock();
    if (ec)
        count = (unsigned)strtoul(ec, NULL, 10);
    print_message("test_phase: seed %llu, %u pairs (ATREST_PHASE_SEED=%llu reproduces)\n",
                  (unsigned long long)cur.seed, count, (unsigned long long)cur.seed);
    rng_state = cur.seed;
    for (unsigned i = 0; i < count; i++) {
        struct ar_config *from = gen_config(fs, sizeof(fs)), *to;
        if (rn(10) == 0)
            snprintf(ts, sizeof(ts), "%s", fs), to = cfg(ts);
        else
            to = gen_config(ts, sizeof(ts));
        cur.index = i;
        cur.from_spec = fs;
        cur.to_spec = ts;
        check_pair(from, to, i % 4 == 0, phase_counts);
        ar_config_unref(from);
        ar_config_unref(to);
    }
    print_message("test_phase: plans by phase count 0..5: %zu %zu %zu %zu %zu %zu\n",
                  phase_counts[0], phase_counts[1], phase_counts[2], phase_counts[3],
                  phase_counts[4], phase_counts[5]);
    /* the generator reaches the interesting shapes */
    if (count >= 1000)
        assert_true(phase_counts[0] > 0 && phase_counts[5] > 0 && phase_counts[3] > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_row_new_key_old_dropped),
        cmocka_unit_test(test_row_new_key_old_kept),
        cmocka_unit_test(test_row_turn_on),
        cmocka_unit_test(test_row_change_type),
        cmocka_unit_test(test_row_turn_off),
        cmocka_unit_test(test_drop_only),
        cmocka_unit_test(test_wildcards_and_lists),
        cmocka_unit_test(test_render_shape),
        cmocka_unit_test(test_nothing_to_do_and_regroup),
        cmocka_unit_test(test_kms),
        cmocka_unit_test(test_key_name_collision),
        cmocka_unit_test(test_property),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
