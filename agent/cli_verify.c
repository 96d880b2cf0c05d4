/*
 * agent/cli_verify.c: `atrest verify`, the verify scan (coord/verify.h) from the command line.
 *
 * etcd is reached with the agent's own flags (--etcd-servers, --etcd-cafile, --etcd-certfile,
 * --etcd-keyfile, --etcd-user, --etcd-password-file) or with the etcd section of the agent's
 * settings file (--settings agent.yaml); flags win.
 *
 * Exit codes: 0 nothing undecryptable; 1 something is undecryptable; 3 (--require-write-key)
 * nothing undecryptable but some object of a resource is not under that resource's write key;
 * 2 no verdict: usage, invalid config or settings, or etcd could not be scanned (one line on
 * stderr says why).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "agent/cli_common.h"
#include "agent/cmd.h"
#include "agent/effective.h"
#include "agent/settings.h"
#include "coord/verify.h"
#include "crypto/chain.h"
#include "crypto/config.h"
#include "crypto/resource.h"

static const char verify_help[] =
    "usage: atrest verify --config FILE [--settings agent.yaml] [--etcd-servers URLS]\n"
    "                     [--etcd-cafile F --etcd-certfile F --etcd-keyfile F]\n"
    "                     [--etcd-user U --etcd-password-file F] [--etcd-prefix P]\n"
    "                     [--resource R] [--page-size N] [--parallel N] [--timeout S]\n"
    "                     [--require-write-key] [--json]\n"
    "\n"
    "Scan the objects kube-apiserver stores in etcd and count, per resource, how many are\n"
    "under each provider:key of the EncryptionConfiguration FILE (identity = plaintext;\n"
    "kms:<name> for KMS v1, kms:<name>:<keyID> for KMS v2, without calling the plugin), how\n"
    "many reads are stale (kube-apiserver would rewrite them on a no-op update) and which\n"
    "values cannot be decrypted (the first 100 are listed). Keys under the prefix that name\n"
    "no resource (e.g. masterleases) are counted by their value's prefix. No key material is\n"
    "ever printed; nothing is written to etcd.\n"
    "\n"
    "  --config FILE          the EncryptionConfiguration (as given to kube-apiserver)\n"
    "  --settings FILE        take the etcd settings from the agent's settings file\n"
    "  --etcd-servers URLS    etcd endpoints, comma separated (as kube-apiserver's flag)\n"
    "  --etcd-cafile, --etcd-certfile, --etcd-keyfile, --etcd-user, --etcd-password-file\n"
    "                         as the agent's flags of the same names\n"
    "  --etcd-prefix P        kube-apiserver's --etcd-prefix (default /registry)\n"
    "  --resource R           only this resource (secrets, deployments.apps, foos.example.com)\n"
    "  --page-size N          keys per etcd range request (default 500)\n"
    "  --parallel N           pieces of the range read at once, 1..16 (default 4)\n"
    "  --timeout S            give up on an etcd request after S seconds, all endpoints\n"
    "                         tried (default 10)\n"
    "  --require-write-key    exit 3 when an object is not under its resource's write key\n"
    "  --json                 print JSON instead of the table\n"
    "\n"
    "Exit status: 0 nothing undecryptable, 1 some value undecryptable, 3 (with\n"
    "--require-write-key) some object not under its write key, 2 usage, invalid config or\n"
    "etcd unreachable (no verdict).\n";

/* ---- etcd settings -------------------------------------------------------------------------- */

/* The agent's etcd flags, as "--flag=value" strings for ar_settings_apply_flags. */
#define MAX_ETCD_FLAGS 16

/* ---- output ------------------------------------------------------------------------------------
 */

static void row_label(const struct ar_verify_row *row, char *dst, size_t n)
{
    if (!row->known)
        snprintf(dst, n, "%.255s (not a resource)", row->resource);
    else if (row->group[0])
        snprintf(dst, n, "%.255s.%.255s", row->resource, row->group);
    else
        snprintf(dst, n, "%.255s", row->resource);
}

static bool under_write(const struct ar_verify_row *row, const char *name)
{
    size_t wl = strlen(row->write);

    if (!row->known)
        return false;
    return !strcmp(name, row->write) ||
           (!strncmp(row->write, "kms:", 4) && !strncmp(name, row->write, wl) && name[wl] == ':');
}

static void print_table(const struct ar_verify_report *rep, FILE *f)
{
    size_t wr = strlen("RESOURCE"), we = strlen("undecryptable");
    char label[600];

    for (size_t i = 0; i < rep->n_rows; i++) {
        const struct ar_verify_row *row = &rep->rows[i];

        row_label(row, label, sizeof(label));
        if (strlen(label) > wr)
            wr = strlen(label);
        for (size_t j = 0; j < row->n; j++)
            if (strlen(row->v[j].name) + 2 > we)
                we = strlen(row->v[j].name) + 2;
    }
    fprintf(f, "%-*s  %-*s  %s\n", (int)wr, "RESOURCE", (int)we, "PROVIDER:KEY", "OBJECTS");
    for (size_t i = 0; i < rep->n_rows; i++) {
        const struct ar_verify_row *row = &rep->rows[i];
        char name[AR_VERIFY_NAME_MAX + 4];

        row_label(row, label, sizeof(label));
        for (size_t j = 0; j < row->n; j++) {
            snprintf(name, sizeof(name), "%s%s", row->v[j].name,
                     under_write(row, row->v[j].name) ? " *" : "");
            fprintf(f, "%-*s  %-*s  %" PRIu64 "\n", (int)wr, label, (int)we, name, row->v[j].n);
        }
        if (row->known) {
            fprintf(f, "%-*s  %-*s  %" PRIu64 "\n", (int)wr, label, (int)we, "stale", row->stale);
            fprintf(f, "%-*s  %-*s  %" PRIu64 "\n", (int)wr, label, (int)we, "undecryptable",
                    row->undecryptable);
        }
        fprintf(f, "%-*s  %-*s  %" PRIu64 "\n", (int)wr, label, (int)we, "total", row->total);
    }
    fprintf(f,
            "\n%" PRIu64 " objects at revision %" PRId64 ": %" PRIu64 " undecryptable, %" PRIu64
            " stale (* = the resource's write key)\n",
            rep->objects, rep->revision, rep->undecryptable, rep->stale);
    if (rep->revision_restarts)
        fprintf(f,
                "note: etcd compacted the scan's revision %u time%s; the scan went on at the "
                "newest revision\n",
                rep->revision_restarts, rep->revision_restarts == 1 ? "" : "s");
    for (size_t i = 0; i < rep->n_bad; i++)
        fprintf(f, "undecryptable: %s (%s): %s\n", rep->bad[i].key, rep->bad[i].resource,
                rep->bad[i].reason);
    if (rep->undecryptable > rep->n_bad)
        fprintf(f, "undecryptable: ... and %" PRIu64 " more\n", rep->undecryptable - rep->n_bad);
}

static int jset(json_t *o, const char *k, json_t *v)
{
    return json_object_set_new(o, k, v);
}

static json_t *report_json(const struct ar_verify_report *rep)
{
    json_t *root = json_object(), *rows = json_array(), *bad = json_array();
    int e = !root || !rows || !bad;

    for (size_t i = 0; !e && i < rep->n_rows; i++) {
        const struct ar_verify_row *row = &rep->rows[i];
        json_t *o = json_object(), *counts = json_object();

        e |= !o || !counts;
        for (size_t j = 0; !e && j < row->n; j++)
            e |= jset(counts, row->v[j].name, json_integer((json_int_t)row->v[j].n));
        if (!e && row->known) {
            e |= jset(counts, "stale", json_integer((json_int_t)row->stale));
            e |= jset(counts, "undecryptable", json_integer((json_int_t)row->undecryptable));
        }
        if (!e)
            e |= jset(counts, "total", json_integer((json_int_t)row->total));
        if (!e) {
            e |= jset(o, "group", json_string(row->group));
            e |= jset(o, "resource", json_string(row->resource));
            e |= jset(o, "known", json_boolean(row->known));
            e |= jset(o, "write", row->known ? json_string(row->write) : json_null());
            e |=
                jset(o, "not_under_write",
                     row->known ? json_integer((json_int_t)ar_verify_not_write(row)) : json_null());
            e |= jset(o, "counts", counts);
            counts = NULL;
            e |= json_array_append_new(rows, o);
            o = NULL;
        }
        json_decref(o);
        json_decref(counts);
    }
    for (size_t i = 0; !e && i < rep->n_bad; i++) {
        json_t *o = json_object();

        e |= !o;
        if (!e) {
            e |= jset(o, "key", json_string(rep->bad[i].key));
            e |= jset(o, "resource", json_string(rep->bad[i].resource));
            e |= jset(o, "reason", json_string(rep->bad[i].reason));
            e |= json_array_append_new(bad, o);
        }
    }
    if (!e) {
        e |= jset(root, "revision", json_integer(rep->revision));
        e |= jset(root, "objects", json_integer((json_int_t)rep->objects));
        e |= jset(root, "undecryptable", json_integer((json_int_t)rep->undecryptable));
        e |= jset(root, "stale", json_integer((json_int_t)rep->stale));
        e |= jset(root, "revision_restarts", json_integer(rep->revision_restarts));
        e |= jset(root, "resources", rows);
        rows = NULL;
        e |= jset(root, "undecryptable_keys", bad);
        bad = NULL;
        e |= jset(root, "undecryptable_keys_truncated",
                  json_boolean(rep->undecryptable > rep->n_bad));
    }
    json_decref(rows);
    json_decref(bad);
    if (e) {
        json_decref(root);
        return NULL;
    }
    return root;
}

struct progress {
    bool tty;
    bool shown;
};

static void on_progress(void *arg, const struct ar_verify_progress *p)
{
    struct progress *pg = arg;

    if (!pg->tty)
        return;
    fprintf(stderr, "\ratrest verify: %" PRIu64 " objects, %" PRIu64 " undecryptable ...",
            p->objects, p->undecryptable);
    pg->shown = true;
}

/* ---- the command
 * --------------------------------------------------------------------------------- */

int ar_cmd_verify(int argc, char **argv)
{
    enum {
        O_SETTINGS = 256,
        O_PREFIX,
        O_RESOURCE,
        O_PAGE,
        O_PARALLEL,
        O_REQUIRE,
        O_JSON,
        O_ETCD,
        O_TIMEOUT
    };
    static const struct option lopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"settings", required_argument, NULL, O_SETTINGS},
        {"etcd-prefix", required_argument, NULL, O_PREFIX},
        {"resource", required_argument, NULL, O_RESOURCE},
        {"page-size", required_argument, NULL, O_PAGE},
        {"parallel", required_argument, NULL, O_PARALLEL},
        {"require-write-key", no_argument, NULL, O_REQUIRE},
        {"json", no_argument, NULL, O_JSON},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"etcd-servers", required_argument, NULL, O_ETCD},
        {"etcd-cafile", required_argument, NULL, O_ETCD},
        {"etcd-certfile", required_argument, NULL, O_ETCD},
        {"etcd-keyfile", required_argument, NULL, O_ETCD},
        {"etcd-user", required_argument, NULL, O_ETCD},
        {"etcd-password-file", required_argument, NULL, O_ETCD},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cfgpath = NULL, *settings = NULL, *resarg = NULL, *prefix = AR_DEFAULT_ETCD_PREFIX;
    char *etcd_flags[MAX_ETCD_FLAGS + 1] = {(char *)"verify"}; /* [0]: argv[0] of the flags */
    int n_etcd = 1, c, li = 0, rc = 2, r;
    bool json = false, require = false, have_settings = false;
    unsigned long page = 0, parallel = 4, timeout_s = 10;
    char group[256], resource[256], *end, *password = NULL;
    struct ar_load_opts lo = {.kmsv1_allowed = true};
    struct ar_config *cfg = NULL;
    struct ar_chain *chain = NULL;
    struct ar_settings set;
    struct ar_etcd_settings es = {0};
    struct ar_etcd_sync *sync = NULL;
    struct ar_verify_report *rep = NULL;
    struct ar_verify_opts vo = {0};
    struct ar_etcd_error err;
    struct progress pg = {.tty = isatty(STDERR_FILENO) == 1};

    while ((c = getopt_long(argc, argv, "c:h", lopts, &li)) != -1) {
        switch (c) {
        case 'c':
            cfgpath = optarg;
            break;
        case O_SETTINGS:
            settings = optarg;
            break;
        case O_PREFIX:
            prefix = optarg;
            break;
        case O_RESOURCE:
            resarg = optarg;
            break;
        case O_PAGE:
            errno = 0;
            page = strtoul(optarg, &end, 10);
            if (errno || *end || end == optarg || page < 1 || page > 10000) {
                fprintf(stderr, "atrest verify: --page-size must be 1..10000\n");
                goto usage;
            }
            break;
        case O_PARALLEL:
            errno = 0;
            parallel = strtoul(optarg, &end, 10);
            if (errno || *end || end == optarg || parallel < 1 ||
                parallel > AR_VERIFY_MAX_PARALLEL) {
                fprintf(stderr, "atrest verify: --parallel must be 1..16\n");
                goto usage;
            }
            break;
        case O_TIMEOUT:
            errno = 0;
            timeout_s = strtoul(optarg, &end, 10);
            if (errno || *end || end == optarg || timeout_s < 1 || timeout_s > 3600) {
                fprintf(stderr, "atrest verify: --timeout must be 1..3600 seconds\n");
                goto usage;
            }
            break;
        case O_REQUIRE:
            require = true;
            break;
        case O_JSON:
            json = true;
            break;
        case O_ETCD: {
            size_t n = strlen(lopts[li].name) + strlen(optarg) + 4;
            char *f;

            if (n_etcd == MAX_ETCD_FLAGS + 1 || !(f = malloc(n))) {
                fprintf(stderr, "atrest verify: too many etcd flags\n");
                goto usage;
            }
            snprintf(f, n, "--%s=%s", lopts[li].name, optarg);
            etcd_flags[n_etcd++] = f;
            break;
        }
        case 'h':
            fputs(verify_help, stdout);
            rc = 0;
            goto out;
        default:
            goto usage;
        }
    }
    if (!cfgpath || optind != argc) {
        fprintf(stderr, "atrest verify: %s\n",
                optind != argc ? "unexpected argument" : "--config is required");
        goto usage;
    }
    if (resarg) {
        if (ar_parse_group_resource(resarg, group, sizeof(group), resource, sizeof(resource)) < 0 ||
            !resource[0]) {
            fprintf(stderr, "atrest verify: --resource %s: not a resource name\n", resarg);
            goto usage;
        }
        vo.group = group;
        vo.resource = resource;
    }

    if (ar_cli_settings("verify", settings, n_etcd, etcd_flags, &set) < 0)
        goto out_noset;
    have_settings = true;
    r = ar_cli_etcd("verify", &set, (unsigned)timeout_s, &es, &password);
    if (r == -ENOENT || r == -EINVAL)
        goto usage;
    if (r < 0)
        goto out;

    if (ar_cli_config("verify", cfgpath, &lo, &cfg) < 0)
        goto out;
    r = ar_chain_new(cfg, &chain);
    if (r < 0) {
        fprintf(stderr, "atrest verify: cannot build the provider chain: %s\n", strerror(-r));
        goto out;
    }
    r = ar_etcd_sync_new(&es, &sync);
    if (r < 0) {
        fprintf(stderr, "atrest verify: cannot create the etcd client: %s\n", strerror(-r));
        goto out;
    }
    vo.etcd_prefix = prefix;
    vo.page_size = (unsigned)page;
    vo.parallel = (unsigned)parallel;
    memset(&err, 0, sizeof(err));
    r = ar_verify_run(sync, chain, &vo, on_progress, &pg, &rep, &err);
    if (pg.shown)
        fputs("\r\033[K", stderr);
    if (r < 0) {
        if (r == -ENOENT && resarg && !err.grpc_code)
            fprintf(stderr, "atrest verify: --resource %s: no etcd range known for it\n", resarg);
        else
            fprintf(stderr, "atrest verify: etcd%s%s: %s\n", err.endpoint[0] ? " " : "",
                    err.endpoint, err.msg[0] ? err.msg : strerror(-r));
        goto out;
    }
    if (json) {
        json_t *j = report_json(rep);

        if (!j || json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) < 0) {
            json_decref(j);
            fprintf(stderr, "atrest verify: cannot write JSON\n");
            goto out;
        }
        json_decref(j);
        fputc('\n', stdout);
    } else {
        print_table(rep, stdout);
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "atrest verify: writing stdout: %s\n", strerror(errno));
        goto out;
    }
    rc = 0;
    if (rep->undecryptable) {
        rc = 1;
    } else if (require) {
        for (size_t i = 0; i < rep->n_rows; i++) {
            uint64_t n = ar_verify_not_write(&rep->rows[i]);
            char label[600];

            if (!n)
                continue;
            row_label(&rep->rows[i], label, sizeof(label));
            fprintf(stderr, "atrest verify: %s: %" PRIu64 " object%s not under the write key %s\n",
                    label, n, n == 1 ? "" : "s", rep->rows[i].write);
            rc = 3;
        }
    }
    goto out;
usage:
    fputs(verify_help, stderr);
    rc = 2;
out:
    if (have_settings)
        ar_settings_free(&set);
out_noset:
    ar_verify_report_free(rep);
    ar_etcd_sync_free(sync);
    sodium_free(password); /* wipes; NULL is fine */
    ar_chain_unref(chain);
    ar_config_unref(cfg);
    for (int i = 1; i < n_etcd; i++)
        free(etcd_flags[i]);
    return rc;
}
