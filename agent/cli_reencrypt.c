/*
 * agent/cli_reencrypt.c: `atrest reencrypt`, the re-encrypt pass (coord/reencrypt.h) from the
 * command line, for operators and for the benchmark.
 *
 * etcd is reached as `atrest verify` reaches it: the agent's etcd flags or the etcd section of
 * the agent's settings file (--settings agent.yaml); flags win. The config is the one the API
 * servers write with (the promote phase's): every object of the selected resources not under
 * its write provider/key is rewritten with it, with a compare on its mod_revision.
 *
 * Exit codes: 0 every object is under its write key (or was rewritten meanwhile by an API
 * server); 1 some objects could not be read or written (counted in "failed", the first named);
 * 2 usage, invalid config or settings, or etcd failed (one line on stderr says why).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "agent/cli_common.h"
#include "agent/cmd.h"
#include "agent/effective.h"
#include "agent/reencrypt_api.h"
#include "agent/settings.h"
#include "coord/reencrypt.h"
#include "crypto/chain.h"
#include "crypto/config.h"
#include "crypto/resource.h"

static const char reencrypt_help[] =
    "usage: atrest reencrypt --config FILE [--resource R ...] [--settings agent.yaml]\n"
    "                        [--etcd-servers URLS] [--etcd-cafile F --etcd-certfile F\n"
    "                        --etcd-keyfile F] [--etcd-user U --etcd-password-file F]\n"
    "                        [--etcd-prefix P] [--rate N] [--page-size N] [--max-inflight N]\n"
    "                        [--checkpoint KEY] [--timeout S] [--json] [--mode etcd|api]\n"
    "\n"
    "Rewrite, straight in etcd, every stored object of the selected resources that is not\n"
    "under its write provider/key in the EncryptionConfiguration FILE (the config the API\n"
    "servers write with). Each write compares the object's mod_revision: an object an API\n"
    "server changed meanwhile is left as the API server wrote it (a conflict). No key\n"
    "material and no value is ever printed.\n"
    "\n"
    "  --config FILE          the EncryptionConfiguration (as given to kube-apiserver)\n"
    "  --resource R           a resource or selector (secrets, deployments.apps, '*.apps',\n"
    "                         '*.*'); repeatable; default: every selector of FILE's rules\n"
    "  --settings FILE        take the etcd settings from the agent's settings file\n"
    "  --etcd-servers URLS    etcd endpoints, comma separated (as kube-apiserver's flag)\n"
    "  --etcd-cafile, --etcd-certfile, --etcd-keyfile, --etcd-user, --etcd-password-file\n"
    "                         as the agent's flags of the same names\n"
    "  --etcd-prefix P        kube-apiserver's --etcd-prefix (default /registry)\n"
    "  --rate N               at most N objects per second (default: no limit)\n"
    "  --page-size N          keys per etcd range request (default 500; API mode: 1000)\n"
    "  --max-inflight N       transactions in flight (default 8)\n"
    "  --checkpoint KEY       keep the cursor in etcd under KEY and resume from it\n"
    "  --timeout S            give up on an etcd request after S seconds (default 30)\n"
    "  --json                 print the counts as JSON\n"
    "  --mode api             instead of etcd, go through the API server of --settings\n"
    "                         (apiserver.url or kubeconfig): list every object and send the\n"
    "                         no-op update that the API server writes only when the object is\n"
    "                         not under its write key (works with a KMS write key; a 409 counts\n"
    "                         as a conflict, a 404 as skipped; no checkpoint). Default: the\n"
    "                         settings' reencrypt.mode, else etcd; --page-size, --max-inflight,\n"
    "                         --rate and --timeout apply to the API requests\n"
    "\n"
    "Exit status: 0 done, 1 some objects could not be read or written, 2 usage, invalid\n"
    "config or etcd failure.\n";

/* ---- etcd settings -------------------------------------------------------------------------- */

/* The agent's etcd flags, as "--flag=value" strings for ar_settings_apply_flags. */
#define MAX_ETCD_FLAGS 16

/* ---- progress -------------------------------------------------------------------------------- */

struct progress {
    bool tty, shown;
    uint64_t last_ms;
};

static void on_progress(void *arg, const struct ar_reencrypt_progress *p)
{
    struct progress *pg = arg;
    uint64_t now = ar_etcd_now_ms();

    if (!pg->tty || now - pg->last_ms < 200)
        return;
    pg->last_ms = now;
    fprintf(stderr,
            "\ratrest reencrypt: %" PRIu64 "/%" PRIu64 " objects, %" PRIu64 " rewritten, %" PRIu64
            " skipped, %" PRIu64 " conflicts, %.0f/s, eta %.0f s ...\033[K",
            p->done, p->total, p->rewritten, p->skipped, p->conflicts, p->rate,
            p->eta_s < 0 ? 0 : p->eta_s);
    pg->shown = true;
}

/* ---- API mode (agent/reencrypt_api.h) -----------------------------------------------------------
 */

struct api_run {
    struct progress *pg;
    int status;
    struct ar_reencrypt_progress p;
    struct ar_err err;
};

static void api_progress(void *arg, const struct ar_reencrypt_progress *p)
{
    struct api_run *x = arg;
    on_progress(x->pg, p);
}

static void api_done(void *arg, int status, const struct ar_reencrypt_progress *p,
                     const struct ar_err *err)
{
    struct api_run *x = arg;

    x->status = status;
    x->p = *p;
    if (err)
        x->err = *err;
}

/* The pass on a loop of its own; 0 or a negative errno, *p and *err filled. */
static int run_api(const struct ar_settings *set, const char **sel, size_t nsel, unsigned page,
                   unsigned inflight, unsigned timeout_s, double rate, struct progress *pg,
                   struct ar_reencrypt_progress *p, struct ar_err *err)
{
    struct ar_node_reenc_req req = {
        .rotation_id = "cli", .selectors = sel, .nselectors = nsel, .rate_limit = rate};
    struct ar_reapi_opts o = {
        .page_size = page, .max_inflight = inflight, .timeout_ms = timeout_s * 1000};
    struct api_run x = {.pg = pg, .status = -EINPROGRESS};
    struct ar_reapi *pass = NULL;
    uv_loop_t loop;
    char msg[256];
    int r;

    memset(p, 0, sizeof(*p));
    ar_err_clear(err);
    r = uv_loop_init(&loop);
    if (r < 0) {
        ar_err_set(err, r, NULL, "cannot start the event loop: %s", uv_strerror(r));
        return r;
    }
    r = ar_reapi_start(&loop, set, &req, &o, api_progress, api_done, &x, &pass, msg, sizeof(msg));
    if (r < 0) {
        ar_err_set(err, r, NULL, "%s", msg[0] ? msg : strerror(-r));
    } else {
        uv_run(&loop, UV_RUN_DEFAULT); /* until the pass freed itself after done */
        r = x.status;
        *p = x.p;
        *err = x.err;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) < 0 && r == 0)
        r = -EBUSY;
    return r;
}

/* ---- selectors ------------------------------------------------------------------------------- */

#define MAX_SEL AR_REENCRYPT_MAX_SELECTORS

static bool sel_known(const char *prefix, const char *s)
{
    char g[256], r[256], p[1400];

    if (ar_parse_group_resource(s, g, sizeof(g), r, sizeof(r)) < 0 || !r[0])
        return false;
    if (!strcmp(r, "*"))
        return true;
    return ar_resource_key_prefix(prefix, g, r, p, sizeof(p)) == 0;
}

/* Every selector of the config's rules once (by group and resource), those with a key range. */
static size_t config_selectors(const struct ar_config *cfg, const char *prefix, const char **out)
{
    size_t n = 0;

    for (size_t i = 0; i < cfg->nrules; i++) {
        for (size_t j = 0; j < cfg->rules[i].nresources && n < MAX_SEL; j++) {
            const struct ar_gr *gr = &cfg->rules[i].parsed[j];
            bool dup = false;

            for (size_t k = 0; k < i && !dup; k++)
                for (size_t m = 0; m < cfg->rules[k].nresources && !dup; m++)
                    dup = !strcmp(cfg->rules[k].parsed[m].group, gr->group) &&
                          !strcmp(cfg->rules[k].parsed[m].resource, gr->resource);
            for (size_t m = 0; m < j && !dup; m++)
                dup = !strcmp(cfg->rules[i].parsed[m].group, gr->group) &&
                      !strcmp(cfg->rules[i].parsed[m].resource, gr->resource);
            if (dup)
                continue;
            if (!sel_known(prefix, cfg->rules[i].resources[j])) {
                fprintf(stderr, "atrest reencrypt: %s: no etcd range known for it, skipped\n",
                        cfg->rules[i].resources[j]);
                continue;
            }
            out[n++] = cfg->rules[i].resources[j];
        }
    }
    return n;
}

/* ---- the command ----------------------------------------------------------------------------- */

int ar_cmd_reencrypt(int argc, char **argv)
{
    enum {
        O_SETTINGS = 256,
        O_PREFIX,
        O_RESOURCE,
        O_PAGE,
        O_INFLIGHT,
        O_RATE,
        O_CKPT,
        O_JSON,
        O_ETCD,
        O_TIMEOUT,
        O_MODE
    };
    static const struct option lopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"settings", required_argument, NULL, O_SETTINGS},
        {"etcd-prefix", required_argument, NULL, O_PREFIX},
        {"resource", required_argument, NULL, O_RESOURCE},
        {"page-size", required_argument, NULL, O_PAGE},
        {"max-inflight", required_argument, NULL, O_INFLIGHT},
        {"rate", required_argument, NULL, O_RATE},
        {"checkpoint", required_argument, NULL, O_CKPT},
        {"json", no_argument, NULL, O_JSON},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"mode", required_argument, NULL, O_MODE},
        {"etcd-servers", required_argument, NULL, O_ETCD},
        {"etcd-cafile", required_argument, NULL, O_ETCD},
        {"etcd-certfile", required_argument, NULL, O_ETCD},
        {"etcd-keyfile", required_argument, NULL, O_ETCD},
        {"etcd-user", required_argument, NULL, O_ETCD},
        {"etcd-password-file", required_argument, NULL, O_ETCD},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cfgpath = NULL, *settings = NULL, *prefix = AR_DEFAULT_ETCD_PREFIX, *mode = NULL;
    const char *sel[MAX_SEL];
    size_t nsel = 0;
    char *etcd_flags[MAX_ETCD_FLAGS + 1] = {(char *)"reencrypt"}; /* [0]: argv[0] of the flags */
    int n_etcd = 1, c, li = 0, rc = 2, r;
    bool json = false, have_settings = false;
    unsigned long page = 0, inflight = 0, timeout_s = 30;
    double rate = 0;
    char *end, *password = NULL;
    struct ar_load_opts lo = {.kmsv1_allowed = true};
    struct ar_config *cfg = NULL;
    struct ar_chain *chain = NULL;
    struct ar_settings set;
    struct ar_etcd_settings es = {0};
    struct ar_etcd_sync *sync = NULL;
    struct ar_reencrypt_opts ro = {0};
    struct ar_reencrypt_progress p;
    struct ar_err err;
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
            if (nsel == MAX_SEL) {
                fprintf(stderr, "atrest reencrypt: at most %d --resource\n", MAX_SEL);
                goto usage;
            }
            sel[nsel++] = optarg;
            break;
        case O_PAGE:
        case O_INFLIGHT:
        case O_TIMEOUT: {
            unsigned long v, max = c == O_PAGE ? 10000 : c == O_INFLIGHT ? 256 : 3600;

            errno = 0;
            v = strtoul(optarg, &end, 10);
            if (errno || *end || end == optarg || v < 1 || v > max) {
                fprintf(stderr, "atrest reencrypt: --%s must be 1..%lu\n", lopts[li].name, max);
                goto usage;
            }
            if (c == O_PAGE)
                page = v;
            else if (c == O_INFLIGHT)
                inflight = v;
            else
                timeout_s = v;
            break;
        }
        case O_RATE:
            errno = 0;
            rate = strtod(optarg, &end);
            if (errno || *end || end == optarg || !isfinite(rate) || rate <= 0) {
                fprintf(stderr, "atrest reencrypt: --rate must be a positive number\n");
                goto usage;
            }
            break;
        case O_CKPT:
            ro.checkpoint_key = optarg;
            break;
        case O_MODE:
            if (strcmp(optarg, "etcd") && strcmp(optarg, "api")) {
                fprintf(stderr, "atrest reencrypt: --mode must be etcd or api\n");
                goto usage_noset;
            }
            mode = optarg;
            break;
        case O_JSON:
            json = true;
            break;
        case O_ETCD: {
            size_t n = strlen(lopts[li].name) + strlen(optarg) + 4;
            char *f;

            if (n_etcd == MAX_ETCD_FLAGS + 1 || !(f = malloc(n))) {
                fprintf(stderr, "atrest reencrypt: too many etcd flags\n");
                goto usage;
            }
            snprintf(f, n, "--%s=%s", lopts[li].name, optarg);
            etcd_flags[n_etcd++] = f;
            break;
        }
        case 'h':
            fputs(reencrypt_help, stdout);
            rc = 0;
            goto out_noset;
        default:
            goto usage_noset;
        }
    }
    if (!cfgpath || optind != argc) {
        fprintf(stderr, "atrest reencrypt: %s\n",
                optind != argc ? "unexpected argument" : "--config is required");
        goto usage_noset;
    }
    for (size_t i = 0; i < nsel; i++) {
        if (!sel_known(prefix, sel[i])) {
            fprintf(stderr, "atrest reencrypt: --resource %s: no etcd range known for it\n",
                    sel[i]);
            goto usage_noset;
        }
    }

    if (ar_cli_settings("reencrypt", settings, n_etcd, etcd_flags, &set) < 0)
        goto out_noset;
    have_settings = true;
    if (!mode)
        mode = set.reencrypt_mode == AR_REENCRYPT_API ? "api" : "etcd";
    if (!strcmp(mode, "api")) {
        if (ro.checkpoint_key) {
            fprintf(stderr, "atrest reencrypt: --checkpoint is for mode etcd only\n");
            goto usage;
        }
        if (!set.api_url && !set.kubeconfig) {
            fprintf(stderr, "atrest reencrypt: --mode api needs --settings with apiserver.url "
                            "or apiserver.kubeconfig\n");
            goto usage;
        }
    }
    if (strcmp(mode, "api") || set.n_etcd_endpoints) { /* api: etcd only when given */
        r = ar_cli_etcd("reencrypt", &set, (unsigned)timeout_s, &es, &password);
        if (r == -ENOENT || r == -EINVAL)
            goto usage;
        if (r < 0)
            goto out;
    }

    if (ar_cli_config("reencrypt", cfgpath, &lo, &cfg) < 0)
        goto out;
    if (!nsel)
        nsel = config_selectors(cfg, prefix, sel);
    if (!nsel) {
        fprintf(stderr, "atrest reencrypt: %s: no resource to re-encrypt\n", cfgpath);
        goto out;
    }
    r = ar_chain_new(cfg, &chain);
    if (r < 0) {
        fprintf(stderr, "atrest reencrypt: cannot build the provider chain: %s\n", strerror(-r));
        goto out;
    }
    if (!strcmp(mode, "api")) {
        r = run_api(&set, sel, nsel, (unsigned)page, (unsigned)inflight, (unsigned)timeout_s, rate,
                    &pg, &p, &err);
        goto ran;
    }
    r = ar_etcd_sync_new(&es, &sync);
    if (r < 0) {
        fprintf(stderr, "atrest reencrypt: cannot create the etcd client: %s\n", strerror(-r));
        goto out;
    }
    ro.etcd_prefix = prefix;
    ro.selectors = sel;
    ro.nselectors = nsel;
    ro.page_size = (unsigned)page;
    ro.max_inflight = (unsigned)inflight;
    ro.rate_limit = rate;
    r = ar_reencrypt_run(sync, chain, &ro, on_progress, &pg, 0, &p, &err);
ran:
    if (pg.shown)
        fputs("\r\033[K", stderr);
    if (r < 0) {
        char line[512];

        fprintf(stderr, "atrest reencrypt: %s\n", ar_err_line(&err, line, sizeof(line)));
        goto out;
    }
    if (json) {
        json_t *j = json_pack("{sI sI sI sI sI sI sf ss}", "done", (json_int_t)p.done, "total",
                              (json_int_t)p.total, "rewritten", (json_int_t)p.rewritten, "skipped",
                              (json_int_t)p.skipped, "conflicts", (json_int_t)p.conflicts, "failed",
                              (json_int_t)p.failed, "rate", p.rate, "first_failed", p.first_failed);

        if (!j || json_dumpf(j, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER) < 0) {
            json_decref(j);
            fprintf(stderr, "atrest reencrypt: cannot write JSON\n");
            goto out;
        }
        json_decref(j);
        fputc('\n', stdout);
    } else {
        printf("objects %" PRIu64 ": rewritten %" PRIu64 ", already under the write key %" PRIu64
               ", rewritten meanwhile by an API server %" PRIu64 ", failed %" PRIu64
               " (%.0f objects/s)\n",
               p.done, p.rewritten, p.skipped, p.conflicts, p.failed, p.rate);
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "atrest reencrypt: writing stdout: %s\n", strerror(errno));
        goto out;
    }
    rc = 0;
    if (p.failed) {
        fprintf(stderr, "atrest reencrypt: %" PRIu64 " object%s left as they are; first: %s\n",
                p.failed, p.failed == 1 ? "" : "s", p.first_failed);
        rc = 1;
    }
    goto out;
usage:
    fputs(reencrypt_help, stderr);
    rc = 2;
    goto out;
usage_noset:
    fputs(reencrypt_help, stderr);
    rc = 2;
    goto out_noset;
out:
    if (have_settings)
        ar_settings_free(&set);
out_noset:
    ar_etcd_sync_free(sync);
    sodium_free(password); /* wipes; NULL is fine */
    ar_chain_unref(chain);
    ar_config_unref(cfg);
    for (int i = 1; i < n_etcd; i++)
        free(etcd_flags[i]);
    return rc;
}
