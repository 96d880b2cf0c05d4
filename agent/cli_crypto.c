/*
 * agent/cli_crypto.c: the offline subcommands that scripts rely on.
 *
 *   atrest lint FILE...            exit 0 when every file is valid, 1 otherwise
 *   atrest encrypt|decrypt ...     one stored value, stdin to stdout
 *   atrest genkey                  a fresh random key, base64
 *
 * Contract for encrypt/decrypt: on failure nothing is written to stdout, one line goes to
 * stderr and the exit code is 1. Usage errors exit 2.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/cmd.h"
#include "crypto/buf.h"
#include "crypto/chain.h"
#include "crypto/config.h"
#include "crypto/resource.h"

#define MAX_VALUE_BYTES (64u << 20)

/* ---- lint ------------------------------------------------------------------------------- */

static const char lint_help[] =
    "usage: atrest lint [--reload] [--kmsv1] FILE...\n"
    "\n"
    "Validate EncryptionConfiguration files exactly as kube-apiserver 1.31+ does (strict\n"
    "decoding, defaults, every validation rule). Prints one line per error on stdout:\n"
    "  FILE:LINE:COL: PATH: DETAIL\n"
    "and warnings on stderr. Exit 0 when every file is valid, 1 otherwise.\n"
    "\n"
    "  --reload   as kube-apiserver with --encryption-provider-config-automatic-reload\n"
    "             (duplicate KMS v1 names become errors)\n"
    "  --kmsv1    as kube-apiserver with --feature-gates=KMSv1=true (no KMS v1 warning)\n"
    "  -q         print nothing for valid files\n";

int ar_cmd_lint(int argc, char **argv)
{
    static const struct option lopts[] = {
        {"reload", no_argument, NULL, 'r'},
        {"kmsv1", no_argument, NULL, 'k'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct ar_load_opts opts = {0};
    int quiet = 0, c, bad = 0;

    while ((c = getopt_long(argc, argv, "rkqh", lopts, NULL)) != -1) {
        switch (c) {
        case 'r':
            opts.reload = true;
            break;
        case 'k':
            opts.kmsv1_allowed = true;
            break;
        case 'q':
            quiet = 1;
            break;
        case 'h':
            fputs(lint_help, stdout);
            return 0;
        default:
            fputs(lint_help, stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        fputs(lint_help, stderr);
        return 2;
    }
    for (int i = optind; i < argc; i++) {
        struct ar_diags diags;
        struct ar_config *cfg = NULL;
        char line[4096];
        int r;

        ar_diags_init(&diags);
        r = ar_config_load_file(argv[i], &opts, &cfg, &diags);
        for (size_t k = 0; k < diags.n; k++) {
            ar_diag_format(&diags.v[k], line, sizeof(line));
            if (diags.v[k].severity == AR_SEV_ERROR)
                printf("%s\n", line);
            else
                fprintf(stderr, "%s\n", line);
        }
        if (r < 0 || diags.nerrors > 0) {
            bad = 1;
            if (diags.n == 0)
                printf("%s:0:0: : %s\n", argv[i], strerror(-r));
        } else if (!quiet) {
            char fp[AR_HASH_STRLEN], fh[AR_HASH_STRLEN];

            /* the file hash is what kube-apiserver 1.34+ exports in last_config_info{hash} */
            ar_config_fingerprint_str(cfg, fp);
            ar_config_file_hash_str(cfg, fh);
            fprintf(stderr, "%s: valid (%zu rule%s, file %s, fingerprint %.*s)\n", argv[i],
                    cfg->nrules, cfg->nrules == 1 ? "" : "s", fh, 19, fp);
        }
        ar_config_unref(cfg);
        ar_diags_free(&diags);
        fflush(stdout);
    }
    return bad ? 1 : 0;
}

/* ---- encrypt / decrypt ------------------------------------------------------------------ */

static const char crypt_help[] =
    "usage: atrest %s --config FILE --etcd-key KEY [--resource R] [--etcd-prefix P] [--explain]\n"
    "\n"
    "%s\n"
    "\n"
    "  --config FILE      the EncryptionConfiguration (as given to kube-apiserver)\n"
    "  --etcd-key KEY     the full etcd key, e.g. /registry/secrets/default/db-password;\n"
    "                     aesgcm and KMS authenticate it\n"
    "  --resource R       the resource (secrets, deployments.apps, foos.example.com);\n"
    "                     default: derived from the key\n"
    "  --etcd-prefix P    kube-apiserver's --etcd-prefix (default /registry)\n"
    "  --explain          say on stderr which provider and key %s\n"
    "\n"
    "On failure nothing is written to stdout, one line goes to stderr, and the exit code is 1.\n";

static void crypt_usage(FILE *f, int decrypt)
{
    fprintf(f, crypt_help, decrypt ? "decrypt" : "encrypt",
            decrypt ? "Read one stored etcd value on stdin and write its plaintext on stdout."
                    : "Read plaintext on stdin and write the value kube-apiserver would store in\n"
                      "etcd on stdout, with the write provider and key of the resource.",
            decrypt ? "matched and whether the read is stale" : "wrote");
}

static int read_all(FILE *f, struct ar_buf *b)
{
    int r;

    b->max = MAX_VALUE_BYTES;
    for (;;) {
        size_t n;

        r = ar_buf_reserve(b, 65536);
        if (r < 0)
            return r;
        n = fread(b->p + b->len, 1, b->cap - b->len, f);
        b->len += n;
        if (n == 0) {
            if (ferror(f))
                return -EIO;
            return 0;
        }
    }
}

static void explain(const struct ar_result *res, const struct ar_plist *pl, int decrypt)
{
    char fp[17] = "";

    if (res->key_fp)
        ar_hex(res->key_fp, 8, fp);
    if (res->provider_index < 0) {
        fprintf(stderr, "explain: no rule matches this resource: plain identity (not encrypted)\n");
        return;
    }
    fprintf(stderr, "explain: rule %s, provider %d of %zu (%s)", pl->rule ? pl->rule : "-",
            res->provider_index + 1, pl->n, ar_ptype_name(res->type));
    if (res->key_name)
        fprintf(stderr, ", %s %d \"%s\"", res->type == AR_P_KMS ? "kms" : "key", res->key_index + 1,
                res->key_name);
    if (fp[0])
        fprintf(stderr, " (fp %s)", fp);
    if (decrypt)
        fprintf(stderr, ", stale=%s", res->stale ? "true" : "false");
    fputc('\n', stderr);
}

static int cmd_crypt(int argc, char **argv, int decrypt)
{
    static const struct option lopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"etcd-key", required_argument, NULL, 'k'},
        {"resource", required_argument, NULL, 'r'},
        {"etcd-prefix", required_argument, NULL, 'p'},
        {"explain", no_argument, NULL, 'x'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cfgpath = NULL, *key = NULL, *resarg = NULL, *prefix = AR_DEFAULT_ETCD_PREFIX;
    struct ar_load_opts lo = {.kmsv1_allowed = true};
    struct ar_diags diags;
    struct ar_config *cfg = NULL;
    struct ar_chain *chain = NULL;
    struct ar_buf in = AR_BUF_INIT, out = AR_BUF_INIT;
    struct ar_resource rs;
    struct ar_result res;
    struct ar_plist pl;
    int c, want_explain = 0, rc = 1, r;

    ar_diags_init(&diags);
    while ((c = getopt_long(argc, argv, "c:k:r:p:xh", lopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            cfgpath = optarg;
            break;
        case 'k':
            key = optarg;
            break;
        case 'r':
            resarg = optarg;
            break;
        case 'p':
            prefix = optarg;
            break;
        case 'x':
            want_explain = 1;
            break;
        case 'h':
            crypt_usage(stdout, decrypt);
            return 0;
        default:
            crypt_usage(stderr, decrypt);
            return 2;
        }
    }
    if (!cfgpath || !key || optind != argc) {
        fprintf(stderr, "atrest %s: --config and --etcd-key are required\n",
                decrypt ? "decrypt" : "encrypt");
        crypt_usage(stderr, decrypt);
        return 2;
    }

    memset(&rs, 0, sizeof(rs));
    if (resarg) {
        if (ar_parse_group_resource(resarg, rs.group, sizeof(rs.group), rs.resource,
                                    sizeof(rs.resource)) < 0 ||
            !rs.resource[0]) {
            fprintf(stderr, "atrest: --resource %s: not a resource name\n", resarg);
            goto out;
        }
    } else if (ar_resource_of_key(prefix, key, strlen(key), &rs) < 0) {
        fprintf(stderr,
                "atrest: cannot tell the resource of etcd key %s under prefix %s; give --resource "
                "(or --etcd-prefix)\n",
                key, prefix);
        goto out;
    }

    r = ar_config_load_file(cfgpath, &lo, &cfg, &diags);
    if (r < 0 || diags.nerrors > 0) {
        char line[4096] = "";

        for (size_t i = 0; i < diags.n; i++) {
            if (diags.v[i].severity == AR_SEV_ERROR) {
                ar_diag_format(&diags.v[i], line, sizeof(line));
                break;
            }
        }
        if (!line[0])
            snprintf(line, sizeof(line), "%s: %s", cfgpath, strerror(r < 0 ? -r : EINVAL));
        fprintf(stderr, "atrest: invalid config: %s%s\n", line,
                diags.nerrors > 1 ? " (and more: run atrest lint)" : "");
        goto out;
    }
    r = ar_chain_new(cfg, &chain);
    if (r < 0) {
        fprintf(stderr, "atrest: cannot build the provider chain: %s\n", strerror(-r));
        goto out;
    }
    r = read_all(stdin, &in);
    if (r < 0) {
        fprintf(stderr, "atrest: reading stdin: %s\n",
                r == -EMSGSIZE ? "more than 64 MiB" : strerror(-r));
        goto out;
    }

    memset(&res, 0, sizeof(res));
    if (decrypt)
        r = ar_chain_read(chain, rs.group, rs.resource, (const uint8_t *)key, strlen(key), in.p,
                          in.len, &out, &res);
    else
        r = ar_chain_write(chain, rs.group, rs.resource, (const uint8_t *)key, strlen(key), in.p,
                           in.len, &out, &res);
    if (r < 0) {
        fprintf(stderr, "atrest: %s: %s\n", decrypt ? "decrypt" : "encrypt",
                res.err[0] ? res.err : strerror(-r));
        goto out;
    }
    if (want_explain) {
        ar_chain_lookup(chain, rs.group, rs.resource, &pl);
        explain(&res, &pl, decrypt);
    }
    if (out.len && fwrite(out.p, 1, out.len, stdout) != out.len) {
        fprintf(stderr, "atrest: writing stdout: %s\n", strerror(errno));
        goto out;
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "atrest: writing stdout: %s\n", strerror(errno));
        goto out;
    }
    rc = 0;
out:
    ar_buf_free(&in);
    ar_buf_free(&out);
    ar_chain_unref(chain);
    ar_config_unref(cfg);
    ar_diags_free(&diags);
    return rc;
}

int ar_cmd_encrypt(int argc, char **argv)
{
    return cmd_crypt(argc, argv, 0);
}

int ar_cmd_decrypt(int argc, char **argv)
{
    return cmd_crypt(argc, argv, 1);
}

/* ---- genkey ----------------------------------------------------------------------------- */

static const char genkey_help[] =
    "usage: atrest genkey [--provider aescbc|aesgcm|secretbox] [--bytes 16|24|32]\n"
    "\n"
    "Print a fresh random key, base64, for the secret: field of an EncryptionConfiguration.\n"
    "Default: 32 bytes (AES-256; secretbox accepts only 32).\n";

int ar_cmd_genkey(int argc, char **argv)
{
    static const struct option lopts[] = {
        {"provider", required_argument, NULL, 'p'},
        {"bytes", required_argument, NULL, 'b'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *provider = "aescbc";
    long bytes = 32;
    char key[64], *end;
    int c, r;

    while ((c = getopt_long(argc, argv, "p:b:h", lopts, NULL)) != -1) {
        switch (c) {
        case 'p':
            provider = optarg;
            break;
        case 'b':
            errno = 0;
            bytes = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg)
                bytes = -1;
            break;
        case 'h':
            fputs(genkey_help, stdout);
            return 0;
        default:
            fputs(genkey_help, stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fputs(genkey_help, stderr);
        return 2;
    }
    if (strcmp(provider, "aescbc") && strcmp(provider, "aesgcm") && strcmp(provider, "secretbox")) {
        fprintf(stderr, "atrest genkey: unknown provider '%s' (aescbc, aesgcm or secretbox)\n",
                provider);
        return 2;
    }
    if (bytes != 16 && bytes != 24 && bytes != 32) {
        fprintf(stderr, "atrest genkey: --bytes must be 16, 24 or 32\n");
        return 2;
    }
    if (!strcmp(provider, "secretbox") && bytes != 32) {
        fprintf(stderr, "atrest genkey: secretbox keys are exactly 32 bytes\n");
        return 2;
    }
    r = ar_genkey((size_t)bytes, key, sizeof(key));
    if (r < 0) {
        fprintf(stderr, "atrest genkey: %s\n", strerror(-r));
        return 1;
    }
    printf("%s\n", key);
    explicit_bzero(key, sizeof(key));
    return fflush(stdout) == 0 ? 0 : 1;
}
