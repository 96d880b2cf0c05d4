/*
 * agent/cli_proof.c: `atrest proof`, a troubleshooting tool (not listed in `atrest --help`):
 * prove that the local API server runs a given config, with the agent's settings and one proof
 * of load (agent/proof.h), and print the result.
 *
 *   atrest proof --settings agent.yaml --config PHASE.yaml --goal read|write|loaded
 *                [--type aescbc --key key2] [--phase P] [--rotation ID] [--timeout S]
 *                [--retry-ms MS] [any agent settings flag, e.g. --proof metrics]
 *
 * The config file's bytes give the hash (sha256:<hex>) and its modification time the "written
 * at" of the request. Exit 0 proven, 1 not proven (the reason on stderr; after --timeout the
 * last progress sentence), 2 usage or setup error. Unlike the agent, which waits as long as it
 * takes (S9), the CLI stops after --timeout seconds (default 600).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sodium.h>
#include <uv.h>

#include "agent/cli_common.h"
#include "agent/cmd.h"
#include "agent/effective.h"
#include "agent/proof.h"
#include "agent/settings.h"
#include "coord/etcd/etcd.h"
#include "crypto/config.h"

#define MAX_FLAGS 64

static const char proof_help[] =
    "usage: atrest proof --settings agent.yaml --config PHASE.yaml --goal read|write|loaded\n"
    "                    [--type identity|aescbc|aesgcm|secretbox --key NAME] [--phase P]\n"
    "                    [--rotation ID] [--timeout S] [--retry-ms MS] [settings flags...]\n"
    "Prove that the local API server runs this config (one proof of load, as the agent runs\n"
    "it during a rotation) and print the result. Exit 0 proven, 1 not, 2 usage/setup.\n";

struct run {
    uv_loop_t *loop;
    struct ar_proof *proof;
    bool done;
    int status;
    enum ar_node_proof kind;
    char err[512];
    unsigned timeout_s;
    bool timed_out;
    bool closing; /* cleanup: a cancelled proof's done must not stop the loop again */
    uv_timer_t timer;
};

static const char *kind_name(enum ar_node_proof k)
{
    switch ((int)k) {
    case 1:
        return "file";
    case 2:
        return "canary";
    case 3:
        return "metrics";
    case 4:
        return "restart";
    default:
        return "none";
    }
}

static void on_done(void *arg, int status, enum ar_node_proof kind, const struct ar_err *err)
{
    struct run *r = arg;

    if (r->done || r->closing)
        return;
    r->done = true;
    r->status = status;
    r->kind = kind;
    if (err)
        ar_err_line(err, r->err, sizeof(r->err));
    uv_stop(r->loop);
}

static void on_timeout(uv_timer_t *t)
{
    struct run *r = t->data;

    r->timed_out = true;
    uv_stop(r->loop);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static int parse_type(const char *s, enum ar_ptype *t)
{
    for (int i = AR_P_IDENTITY; i <= AR_P_KMS; i++) {
        if (!strcmp(s, ar_ptype_name((enum ar_ptype)i))) {
            *t = (enum ar_ptype)i;
            return 0;
        }
    }
    return -EINVAL;
}

static int parse_uint(const char *s, unsigned min, unsigned max, unsigned *out)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || *end || end == s || v < min || v > max)
        return -EINVAL;
    *out = (unsigned)v;
    return 0;
}

int ar_cmd_proof(int argc, char **argv)
{
    const char *settings = NULL, *cfgpath = NULL, *goal = NULL, *type = NULL, *key = NULL;
    const char *phase = "manual", *rotation = "manual";
    char *flags[MAX_FLAGS + 1], hash[80], err[512], *password = NULL;
    int nflags = 1, rc = 2, r;
    unsigned retry_ms = 1000;
    struct ar_settings set;
    bool have_set = false;
    struct ar_config *cfg = NULL;
    struct ar_load_opts lo = {.kmsv1_allowed = true};
    struct ar_prove_req req;
    struct ar_etcd_settings es;
    struct ar_etcd *etcd = NULL;
    struct run run = {.timeout_s = 600};
    uv_loop_t loop;
    uint8_t sha[AR_SHA256_LEN];
    struct stat st;
    uint64_t t0;

    flags[0] = (char *)"proof";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **dst = NULL;
        unsigned *udst = NULL, umin = 1, umax = 86400;

        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(proof_help, stdout);
            return 0;
        }
        if (!strcmp(a, "--settings"))
            dst = &settings;
        else if (!strcmp(a, "--config"))
            dst = &cfgpath;
        else if (!strcmp(a, "--goal"))
            dst = &goal;
        else if (!strcmp(a, "--type"))
            dst = &type;
        else if (!strcmp(a, "--key"))
            dst = &key;
        else if (!strcmp(a, "--phase"))
            dst = &phase;
        else if (!strcmp(a, "--rotation"))
            dst = &rotation;
        else if (!strcmp(a, "--timeout"))
            udst = &run.timeout_s;
        else if (!strcmp(a, "--retry-ms"))
            udst = &retry_ms, umin = 10, umax = 600000;
        if (dst || udst) {
            if (!v) {
                fprintf(stderr, "atrest proof: %s needs a value\n", a);
                goto usage;
            }
            if (dst)
                *dst = v;
            else if (parse_uint(v, umin, umax, udst) < 0) {
                fprintf(stderr, "atrest proof: %s must be %u..%u\n", a, umin, umax);
                goto usage;
            }
            i++;
            continue;
        }
        if (nflags == MAX_FLAGS) {
            fprintf(stderr, "atrest proof: too many arguments\n");
            goto usage;
        }
        flags[nflags++] = argv[i];
    }
    flags[nflags] = NULL;
    if (!cfgpath || !goal) {
        fprintf(stderr, "atrest proof: --config and --goal are required\n");
        goto usage;
    }
    memset(&req, 0, sizeof(req));
    if (!strcmp(goal, "read"))
        req.goal = AR_PROVE_READ;
    else if (!strcmp(goal, "write"))
        req.goal = AR_PROVE_WRITE;
    else if (!strcmp(goal, "loaded"))
        req.goal = AR_PROVE_LOADED;
    else {
        fprintf(stderr, "atrest proof: --goal must be read, write or loaded\n");
        goto usage;
    }
    if (req.goal != AR_PROVE_LOADED) {
        if (!type || parse_type(type, &req.type) < 0) {
            fprintf(stderr,
                    "atrest proof: --goal %s needs --type "
                    "identity|aescbc|aesgcm|secretbox\n",
                    goal);
            goto usage;
        }
        if (req.type != AR_P_IDENTITY && !key) {
            fprintf(stderr, "atrest proof: --type %s needs --key\n", type);
            goto usage;
        }
    }

    /* settings */
    if (ar_cli_settings("proof", settings, nflags, flags, &set) < 0)
        goto out;
    have_set = true;
    ar_log_set_level(set.log_level);

    /* the config, its hash and when it was written */
    if (ar_cli_config("proof", cfgpath, &lo, &cfg) < 0)
        goto out;
    if ((r = ar_file_sha256(cfgpath, 0, sha)) < 0 || stat(cfgpath, &st) < 0) {
        fprintf(stderr, "atrest proof: %s: %s\n", cfgpath, strerror(r < 0 ? -r : errno));
        goto out;
    }
    memcpy(hash, "sha256:", 7);
    sodium_bin2hex(hash + 7, sizeof(hash) - 7, sha, sizeof(sha));
    req.cfg = cfg;
    req.file_hash = hash;
    req.key_name = req.type == AR_P_IDENTITY ? NULL : key;
    req.rotation_id = rotation;
    req.phase = phase;
    req.written_ms = (uint64_t)st.st_mtim.tv_sec * 1000u + (uint64_t)st.st_mtim.tv_nsec / 1000000u;

    if (uv_loop_init(&loop) < 0) {
        fprintf(stderr, "atrest proof: cannot create the event loop\n");
        goto out;
    }
    run.loop = &loop;
    if (set.n_etcd_endpoints) {
        if (ar_cli_etcd("proof", &set, 5, &es, &password) < 0)
            goto out_loop;
        if ((r = ar_etcd_new(&loop, &es, &etcd)) < 0) {
            fprintf(stderr, "atrest proof: cannot create the etcd client: %s\n", strerror(-r));
            goto out_loop;
        }
    }
    r = ar_proof_new_err(&loop, &set, etcd, set.api_etcd_prefix, &run.proof, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "atrest proof: %s\n", err[0] ? err : strerror(-r));
        goto out_loop;
    }
    ar_proof_set_retry_ms(run.proof, retry_ms);
    uv_timer_init(&loop, &run.timer);
    run.timer.data = &run;
    uv_timer_start(&run.timer, on_timeout, (uint64_t)run.timeout_s * 1000u, 0);
    t0 = uv_hrtime();
    r = ar_proof_start(run.proof, &req, on_done, &run);
    if (r < 0) {
        fprintf(stderr, "atrest proof: cannot start: %s\n",
                r == -ENOENT ? "the key is not in secrets' providers of the config" : strerror(-r));
        goto out_loop;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    if (run.done && run.status == 0) {
        printf("proved: kind=%s goal=%s seconds=%.1f\n", kind_name(run.kind), goal,
               (double)(uv_hrtime() - t0) / 1e9);
        rc = 0;
    } else if (run.done) {
        fprintf(stderr, "atrest proof: not proven: %s\n", run.err[0] ? run.err : "failed");
        rc = 1;
    } else {
        struct ar_proof_progress pg;

        ar_proof_status(run.proof, &pg);
        fprintf(stderr, "atrest proof: timed out after %u s (--timeout): %s%s%s\n", run.timeout_s,
                pg.waiting_for, pg.last_error[0] ? "; last attempt: " : "", pg.last_error);
        rc = 1;
    }
out_loop:
    run.closing = true;
    ar_proof_free(run.proof);
    run.proof = NULL;
    if (etcd)
        ar_etcd_close(etcd);
    uv_walk(&loop, close_walk, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    goto out;
usage:
    fputs(proof_help, stderr);
out:
    sodium_free(password);
    ar_config_unref(cfg);
    if (have_set)
        ar_settings_free(&set);
    return rc;
}
