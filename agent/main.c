/* agent/main.c: the atrest binary, a table of subcommands. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <sodium.h>

#include "agent/cmd.h"
#include "coord/etcd/etcd.h"
#include "crypto/config.h"

struct subcmd {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
};

static const struct subcmd cmds[] = {
    {"agent", ar_cmd_agent, "run the daemon beside kube-apiserver"},
    {"lint", ar_cmd_lint, "validate EncryptionConfiguration files exactly as kube-apiserver does"},
    {"encrypt", ar_cmd_encrypt, "encrypt one value (stdin) for storage in etcd (stdout)"},
    {"decrypt", ar_cmd_decrypt, "decrypt one stored etcd value (stdin) to plaintext (stdout)"},
    {"genkey", ar_cmd_genkey, "print a fresh random key, base64"},
    {"status", ar_cmd_status, "show the local agent's view of the cluster"},
    {"plan", ar_cmd_plan, "print the phases of a rotation from one config to another"},
    {"verify", ar_cmd_verify, "count stored objects per resource and provider:key (etcd scan)"},
    {"reencrypt", ar_cmd_reencrypt, "rewrite stored objects not under their write key (etcd)"},
    {"proof", ar_cmd_proof, NULL}, /* hidden: troubleshooting (README "Proof of load") */
    {"member", ar_cmd_member, "list the members, or remove one that is gone for good"},
    {"rotation", ar_cmd_rotation, "abort a rotation that has not promoted yet"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: atrest COMMAND [ARGS]\n\n"
               "atrest keeps Kubernetes data encrypted at rest and rotates its keys across\n"
               "highly-available control planes.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        if (cmds[i].summary)
            fprintf(f, "  %-9s %s\n", cmds[i].name, cmds[i].summary);
    }
    fprintf(f, "\n'atrest COMMAND --help' explains each command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("atrest %s\n", ATREST_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        if (!strcmp(argv[1], cmds[i].name)) {
            int rc;

            if (ar_crypto_init() < 0) {
                fprintf(stderr, "atrest: cannot initialise libsodium\n");
                return 1;
            }
            /* Once, before any thread exists (curl's threaded resolver starts some). */
            if (ar_etcd_global_init() < 0) {
                fprintf(stderr, "atrest: cannot initialise libcurl\n");
                return 1;
            }
            signal(SIGPIPE, SIG_IGN);
            rc = cmds[i].fn(argc - 1, argv + 1);
            curl_global_cleanup();
            return rc;
        }
    }
    fprintf(stderr, "atrest: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
