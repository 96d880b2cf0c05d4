/*
 * agent/cli_plan.c: atrest plan --from A --to B [--json] [--out DIR]
 *
 * Prints the phases of the rotation from A to B (coord/phase.h) in order, each phase config
 * per resource rule with providers, key names and short key fingerprints (never a secret),
 * what changes from the config before it, which resources the re-encrypt pass rewrites and
 * which keys prune drops. --out DIR writes each phase config, complete and loadable, as a 0600
 * file N-PHASE.yaml. Invalid inputs: lint's lines (FILE:LINE:COL: PATH: DETAIL) on stdout,
 * exit 1. Usage errors exit 2.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "agent/cmd.h"
#include "coord/phase.h"
#include "crypto/chain.h"
#include "crypto/config.h"

static const char plan_help[] =
    "usage: atrest plan --from FILE --to FILE [--json] [--out DIR]\n"
    "\n"
    "Print the phases (stage, promote, reencrypt, verify, prune) that take a control plane from\n"
    "one EncryptionConfiguration to another, each phase config with key names and short key\n"
    "fingerprints (never a secret), what changes between phases, which resources re-encrypt\n"
    "rewrites and which keys prune drops.\n"
    "\n"
    "  --from FILE   the config every API server runs now\n"
    "  --to FILE     the config to end with\n"
    "  --json        one JSON document on stdout\n"
    "  --out DIR     also write each phase config (with its keys) to DIR/N-PHASE.yaml, mode 0600\n"
    "\n"
    "Invalid inputs print lint's lines (FILE:LINE:COL: PATH: DETAIL); exit 1.\n";

static void lookup(const struct ar_chain *ch, const char *sel, struct ar_plist *l)
{
    char grp[256], *dot;
    const char *g = "";

    snprintf(grp, sizeof(grp), "%s", sel);
    dot = strchr(grp, '.');
    if (dot) {
        *dot = '\0';
        g = dot + 1;
    }
    ar_chain_lookup(ch, g, grp, l);
}

/* [{"type": "aescbc", "keys": [{"name": "k1", "fingerprint": "0123..."}]}, {"type": "identity"},
 * {"type": "kms", "name": "vault"}]; no rule: [] (plain identity). */
static json_t *describe_json(const struct ar_chain *ch, const char *sel)
{
    json_t *arr = json_array();
    struct ar_plist l;
    char hex[17];

    lookup(ch, sel, &l);
    for (size_t i = 0; i < l.n; i++) {
        const struct ar_provider *p = l.v[i];
        json_t *e = json_object(), *ks;
        json_object_set_new(e, "type", json_string(ar_ptype_name(p->type)));
        if (p->type == AR_P_KMS)
            json_object_set_new(e, "name", json_string(p->kms.name));
        if (p->nkeys) {
            json_object_set_new(e, "keys", ks = json_array());
            for (size_t k = 0; k < p->nkeys; k++) {
                json_t *jk = json_object();
                ar_hex(p->keys[k].fp, 8, hex);
                json_object_set_new(jk, "name", json_string(p->keys[k].name));
                json_object_set_new(jk, "fingerprint", json_string(hex));
                json_array_append_new(ks, jk);
            }
        }
        json_array_append_new(arr, e);
    }
    return arr;
}

/* "aescbc(k1 0123456789abcdef, k2 ...), identity, kms(vault)"; "(no rule: identity)". */
static void describe(const struct ar_chain *ch, const char *sel, char *out, size_t len)
{
    struct ar_plist l;
    size_t o = 0;

    lookup(ch, sel, &l);
    out[0] = '\0';
    if (l.n == 0)
        snprintf(out, len, "(no rule: identity)");
    for (size_t i = 0; i < l.n && o < len; i++) {
        const struct ar_provider *p = l.v[i];
        o += (size_t)snprintf(out + o, len - o, "%s%s", i ? ", " : "", ar_ptype_name(p->type));
        if (p->type == AR_P_KMS && o < len)
            o += (size_t)snprintf(out + o, len - o, "(%s)", p->kms.name);
        for (size_t k = 0; k < p->nkeys && o < len; k++) {
            char hex[17];
            ar_hex(p->keys[k].fp, 8, hex);
            o += (size_t)snprintf(out + o, len - o, "%s%s %s%s", k ? ", " : "(", p->keys[k].name,
                                  hex, k + 1 == p->nkeys ? ")" : "");
        }
    }
}

static void key_str(const struct ar_phase_key *k, char *out, size_t len)
{
    char hex[17];

    if (k->has_fp) {
        ar_hex(k->fp, 8, hex);
        snprintf(out, len, "%s %s %s", ar_ptype_name(k->type), k->name, hex);
    } else if (k->name) {
        snprintf(out, len, "%s %s", ar_ptype_name(k->type), k->name);
    } else {
        snprintf(out, len, "%s", ar_ptype_name(k->type));
    }
}

/* Every selector of a config, in rule order, once. */
static size_t selectors(const struct ar_config *c, const char **v, size_t cap, size_t n)
{
    for (size_t i = 0; i < c->nrules; i++)
        for (size_t j = 0; j < c->rules[i].nresources; j++) {
            size_t k;
            for (k = 0; k < n && strcmp(v[k], c->rules[i].resources[j]); k++)
                ;
            if (k == n && n < cap)
                v[n++] = c->rules[i].resources[j];
        }
    return n;
}

static int write_phase_file(const char *dir, size_t order, const struct ar_phase *ph, char *path,
                            size_t plen)
{
    char *buf = NULL;
    size_t len = 0, off = 0;
    int fd = -1, rc;

    snprintf(path, plen, "%s/%zu-%s.yaml", dir, order, ar_phase_name(ph->kind));
    rc = ar_config_render(ph->config, false, &buf, &len);
    if (rc < 0)
        goto out;
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 || fchmod(fd, 0600) < 0) {
        rc = -errno;
        goto out;
    }
    while (off < len) {
        ssize_t n = write(fd, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            goto out;
        }
        off += (size_t)n;
    }
    rc = fsync(fd) < 0 ? -errno : 0;
out:
    if (fd >= 0 && close(fd) < 0 && rc == 0)
        rc = -errno;
    ar_config_render_free(buf, len);
    return rc;
}

static int load(const char *path, struct ar_config **c)
{
    struct ar_diags d;
    char line[4096];
    int rc;

    ar_diags_init(&d);
    rc = ar_config_load_file(path, NULL, c, &d);
    for (size_t k = 0; k < d.n; k++) {
        ar_diag_format(&d.v[k], line, sizeof(line));
        fprintf(d.v[k].severity == AR_SEV_ERROR ? stdout : stderr, "%s\n", line);
    }
    if (rc == 0 && d.nerrors)
        rc = -EINVAL;
    if (rc < 0 && d.n == 0)
        printf("%s:0:0: : %s\n", path, strerror(-rc));
    ar_diags_free(&d);
    return rc;
}

#define MAXSEL 512

struct out {
    bool json;
    json_t *root, *phases;
};

static json_t *jkey(const struct ar_phase_key *k)
{
    json_t *o = json_object();
    char hex[17];

    json_object_set_new(o, "type", json_string(ar_ptype_name(k->type)));
    if (k->name)
        json_object_set_new(o, "name", json_string(k->name));
    if (k->has_fp) {
        ar_hex(k->fp, 8, hex);
        json_object_set_new(o, "fingerprint", json_string(hex));
    }
    return o;
}

/* Print (or add to JSON) one phase. prev: the config before it. */
static int show_phase(struct out *o, size_t order, const struct ar_phase *ph,
                      const struct ar_config *prev, size_t same_as, const char *file)
{
    const char *sel[MAXSEL];
    struct ar_chain *cp = NULL, *cc = NULL;
    char fp[AR_HASH_STRLEN], fh[AR_HASH_STRLEN], a[2048], b[2048], ks[256];
    json_t *jp = NULL, *jres = NULL, *jch = NULL, *jarr;
    size_t n, nthis;
    int rc;

    rc = ar_chain_new((struct ar_config *)prev, &cp);
    if (rc == 0)
        rc = ar_chain_new(ph->config, &cc);
    if (rc < 0)
        goto out;
    ar_config_fingerprint_str(ph->config, fp);
    ar_config_file_hash_str(ph->config, fh);
    if (o->json) {
        jp = json_object();
        json_object_set_new(jp, "order", json_integer((json_int_t)order));
        json_object_set_new(jp, "phase", json_string(ar_phase_name(ph->kind)));
        json_object_set_new(jp, "fingerprint", json_string(fp));
        json_object_set_new(jp, "file_sha256", json_string(fh));
        if (file)
            json_object_set_new(jp, "file", json_string(file));
        json_object_set_new(jp, "resources", jres = json_array());
        json_object_set_new(jp, "changes", jch = json_array());
        json_array_append_new(o->phases, jp);
    } else {
        printf("%zu. %s  file %s\n", order, ar_phase_name(ph->kind), fh);
        if (file)
            printf("   written to %s\n", file);
    }
    nthis = selectors(ph->config, sel, MAXSEL, 0);
    if (same_as && !o->json) {
        printf("   config: the same as phase %zu\n", same_as);
    } else {
        for (size_t i = 0; i < nthis; i++) {
            describe(cc, sel[i], a, sizeof(a));
            if (o->json) {
                json_t *e = json_object();
                json_object_set_new(e, "resource", json_string(sel[i]));
                json_object_set_new(e, "providers", describe_json(cc, sel[i]));
                json_array_append_new(jres, e);
            } else {
                printf("   %s: %s\n", sel[i], a);
            }
        }
    }
    n = selectors(prev, sel, MAXSEL, nthis);
    for (size_t i = 0; i < n; i++) {
        describe(cp, sel[i], a, sizeof(a));
        describe(cc, sel[i], b, sizeof(b));
        if (!strcmp(a, b))
            continue;
        if (o->json) {
            json_t *e = json_object();
            json_object_set_new(e, "resource", json_string(sel[i]));
            json_object_set_new(e, "before", describe_json(cp, sel[i]));
            json_object_set_new(e, "after", describe_json(cc, sel[i]));
            json_array_append_new(jch, e);
        } else {
            printf("   change %s:\n     before: %s\n     after:  %s\n", sel[i], a, b);
        }
    }
    if (ph->kind == AR_PHASE_REENCRYPT) {
        if (o->json) {
            json_object_set_new(jp, "rewrite", jarr = json_array());
            for (size_t i = 0; i < ph->nrewrite; i++)
                json_array_append_new(jarr, json_string(ph->rewrite[i]));
        } else {
            printf("   rewrites:");
            for (size_t i = 0; i < ph->nrewrite; i++)
                printf("%s %s", i ? "," : "", ph->rewrite[i]);
            printf("\n");
        }
    }
    if (ph->kind == AR_PHASE_VERIFY || ph->kind == AR_PHASE_PRUNE) {
        if (o->json) {
            json_object_set_new(jp, "drops", jarr = json_array());
            for (size_t i = 0; i < ph->ndrops; i++)
                json_array_append_new(jarr, jkey(&ph->drops[i]));
        } else {
            printf("   %s",
                   ph->kind == AR_PHASE_VERIFY ? "must count zero objects under:" : "drops:");
            for (size_t i = 0; i < ph->ndrops; i++) {
                key_str(&ph->drops[i], ks, sizeof(ks));
                printf("%s %s", i ? "," : "", ks);
            }
            printf("%s\n", ph->ndrops ? "" : " nothing");
        }
    }
out:
    ar_chain_unref(cp);
    ar_chain_unref(cc);
    return rc;
}

int ar_cmd_plan(int argc, char **argv)
{
    static const struct option lopts[] = {
        {"from", required_argument, NULL, 'f'}, {"to", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},       {"out", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0},
    };
    const char *from_path = NULL, *to_path = NULL, *dir = NULL;
    struct ar_config *from = NULL, *to = NULL;
    struct ar_plan *plan = NULL;
    struct ar_diags d;
    struct out o = {false, NULL, NULL};
    char line[4096], fpf[AR_HASH_STRLEN], fpt[AR_HASH_STRLEN], path[4096];
    int c, rc, ret = 1;

    ar_diags_init(&d);
    while ((c = getopt_long(argc, argv, "f:t:jo:h", lopts, NULL)) != -1) {
        switch (c) {
        case 'f':
            from_path = optarg;
            break;
        case 't':
            to_path = optarg;
            break;
        case 'j':
            o.json = true;
            break;
        case 'o':
            dir = optarg;
            break;
        case 'h':
            fputs(plan_help, stdout);
            return 0;
        default:
            fputs(plan_help, stderr);
            return 2;
        }
    }
    if (!from_path || !to_path || optind != argc) {
        fputs(plan_help, stderr);
        return 2;
    }
    rc = load(from_path, &from);
    if (load(to_path, &to) < 0 || rc < 0)
        goto out;
    rc = ar_plan_derive(from, to, to_path, NULL, &plan, &d);
    for (size_t k = 0; k < d.n; k++) {
        ar_diag_format(&d.v[k], line, sizeof(line));
        fprintf(d.v[k].severity == AR_SEV_ERROR ? stdout : stderr, "%s\n", line);
    }
    if (rc < 0) {
        if (d.nerrors == 0)
            printf("%s:0:0: : %s\n", to_path, strerror(-rc));
        goto out;
    }
    if (dir && plan->nphases && mkdir(dir, 0700) < 0 && errno != EEXIST) {
        fprintf(stderr, "atrest plan: %s: %s\n", dir, strerror(errno));
        goto out;
    }
    ar_config_fingerprint_str(from, fpf);
    ar_config_fingerprint_str(to, fpt);
    if (o.json) {
        json_t *jf = json_object(), *jt = json_object();
        o.root = json_object();
        json_object_set_new(jf, "file", json_string(from_path));
        json_object_set_new(jf, "fingerprint", json_string(fpf));
        json_object_set_new(jt, "file", json_string(to_path));
        json_object_set_new(jt, "fingerprint", json_string(fpt));
        json_object_set_new(o.root, "from", jf);
        json_object_set_new(o.root, "to", jt);
        json_object_set_new(o.root, "nothing_to_do", json_boolean(plan->nphases == 0));
        json_object_set_new(o.root, "phases", o.phases = json_array());
    } else {
        printf("from: %s  fingerprint %s\nto:   %s  fingerprint %s\n", from_path, fpf, to_path,
               fpt);
        if (plan->nphases == 0) {
            printf("nothing to do: from and to are the same config\n");
        } else {
            printf("phases:");
            for (size_t i = 0; i < plan->nphases; i++)
                printf(" %s", ar_phase_name(plan->phases[i].kind));
            printf("\n");
        }
    }
    for (size_t i = 0; i < plan->nphases; i++) {
        const struct ar_phase *ph = &plan->phases[i];
        const struct ar_config *prev = i ? plan->phases[i - 1].config : from;
        size_t k = i, same_as;
        int wr;

        while (k > 0 && plan->phases[k - 1].config == ph->config)
            k--;
        same_as = k < i ? k + 1 : 0; /* 1-based order of the first phase with this config */
        if (dir && (wr = write_phase_file(dir, i + 1, ph, path, sizeof(path))) < 0) {
            fprintf(stderr, "atrest plan: cannot write %s: %s\n", path, strerror(-wr));
            goto out;
        }
        if (!o.json)
            printf("\n");
        if (show_phase(&o, i + 1, ph, prev, same_as, dir ? path : NULL) < 0) {
            fprintf(stderr, "atrest plan: out of memory\n");
            goto out;
        }
    }
    if (o.json) {
        char *s = json_dumps(o.root, JSON_INDENT(2));
        if (!s)
            goto out;
        printf("%s\n", s);
        free(s);
    }
    ret = 0;
out:
    json_decref(o.root);
    ar_plan_free(plan);
    ar_config_unref(from);
    ar_config_unref(to);
    ar_diags_free(&d);
    fflush(stdout);
    return ret;
}
