/*
 * agent/cli_common.h: what the one-shot subcommands (verify, reencrypt, rotation, member,
 * proof) share: the agent's settings file plus flags, the etcd client settings made from them,
 * and an EncryptionConfiguration file loaded with its first error named. Every message goes
 * to stderr as "atrest <cmd>: <what>" (file:line:col where there is one).
 *
 * Contract
 * - ar_cli_settings: ar_settings_init, then the file (NULL: none), then argv[1..argc-1] as
 *   flags (argv[0] is the subcommand). 0, or a negative errno with every error printed and s
 *   freed (the caller frees s only after 0).
 * - ar_cli_etcd: the etcd client settings of s (pointers into s: valid while s is) with
 *   request_timeout_ms = timeout_s * 1000; for etcd.user the password is read from
 *   etcd.passwordFile into locked memory (*password, to sodium_free; NULL without a user).
 *   0; -ENOENT no endpoint; -EINVAL an endpoint that is not http(s):// or a user without a
 *   password file (usage errors); else the password file's read error. Printed.
 * - ar_cli_config: the config file as kube-apiserver would load it (opts as given); 0, or a
 *   negative errno after printing "invalid config: <first error>".
 */
#ifndef ATREST_AGENT_CLI_COMMON_H
#define ATREST_AGENT_CLI_COMMON_H

#include "agent/settings.h"
#include "coord/etcd/etcd.h"
#include "crypto/config.h"

int ar_cli_settings(const char *cmd, const char *file, int argc, char **argv,
                    struct ar_settings *s);
int ar_cli_etcd(const char *cmd, const struct ar_settings *s, unsigned timeout_s,
                struct ar_etcd_settings *es, char **password);
int ar_cli_config(const char *cmd, const char *path, const struct ar_load_opts *lo,
                  struct ar_config **cfg);

#endif
