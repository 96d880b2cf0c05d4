/*
 * agent/settings.h: the agent's own settings (agent.yaml and flags).
 *
 * Contract
 * - A YAML file (libyaml) and/or command-line flags; every setting has a flag and a YAML
 *   field, flags win. Strict: an unknown or duplicate field, a wrong type, a value out of
 *   range is an error at FILE:LINE:COL naming the field and what to do (struct ar_diags,
 *   printed with ar_diag_format). All errors of a file are collected.
 * - ar_settings_check() validates the settings as a whole and the files they name (desired
 *   config loads and validates, TLS files, credential files readable, owner/group exist,
 *   status address loopback unless allowed). `atrest agent --check` runs load + check.
 * - Nothing here holds secrets: the etcd password and the API bearer token are read from
 *   their files by the code that uses them, into wiped memory.
 *
 * YAML layout (every field optional except desiredConfig and effectiveConfig.path):
 *
 *   node: cp-1                        # default: the hostname
 *   desiredConfig: /etc/atrest/desired.yaml
 *   effectiveConfig:
 *     path: /etc/kubernetes/enc/config.yaml
 *     owner: root                     # user name or number (optional)
 *     group: root                     # group name or number (optional)
 *   history: 5                        # previous effective versions kept (0..1000)
 *   stateDir: /var/lib/atrest
 *   etcd:
 *     endpoints: [https://10.0.0.1:2379, https://10.0.0.2:2379]
 *     cafile: /etc/kubernetes/pki/etcd/ca.crt       # as --etcd-cafile
 *     certfile: /etc/kubernetes/pki/apiserver-etcd-client.crt
 *     keyfile: /etc/kubernetes/pki/apiserver-etcd-client.key
 *     user: atrest                    # optional
 *     passwordFile: /etc/atrest/etcd-password
 *     prefix: /atrest/                # coordination prefix
 *     jsonGateway: false              # KV calls through the JSON gateway instead of gRPC
 *   apiserver:
 *     url: https://127.0.0.1:6443
 *     cafile: ...  certfile: ...  keyfile: ...  tokenFile: ...  kubeconfig: ...
 *     etcdPrefix: /registry           # the API server's --etcd-prefix
 *   proof:
 *     mode: canary                    # canary | metrics | restart
 *     reloadCommand: systemctl restart kube-apiserver
 *     canaryNamespace: kube-system
 *     canaryName: atrest-canary
 *     warnAfterSeconds: 180
 *   rotation:
 *     settleSeconds: 30               # desired unchanged everywhere this long first
 *   reencrypt:
 *     mode: etcd                      # etcd | api | svm: how the leader's pass rewrites
 *     rateLimit: 0                    # objects/s (0: no limit)
 *   status:
 *     listen: 127.0.0.1:9798          # "" disables TCP
 *     socket: /run/atrest/status.sock # optional
 *     allowNonLoopback: false
 *   debounceMs: 300
 *   pollIntervalSeconds: 60
 *   logLevel: info                    # error | warn | info | debug
 */
#ifndef ATREST_AGENT_SETTINGS_H
#define ATREST_AGENT_SETTINGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "agent/log.h"
#include "crypto/config.h"

#define AR_SETTINGS_DEFAULT_PATH  "/etc/atrest/agent.yaml"
#define AR_SETTINGS_MAX_ENDPOINTS 16

enum ar_proof_mode { AR_PROOF_CANARY = 0, AR_PROOF_METRICS, AR_PROOF_RESTART };
const char *ar_proof_mode_name(enum ar_proof_mode m);

/* The re-encrypt pass of a rotation: straight in etcd (coord/reencrypt.h), through the local
 * API server (agent/reencrypt_api.h), or by StorageVersionMigration objects
 * (agent/reencrypt_svm.h). Verify always scans etcd. api and svm need apiserver.url or
 * apiserver.kubeconfig. */
enum ar_reencrypt_mode { AR_REENCRYPT_ETCD = 0, AR_REENCRYPT_API, AR_REENCRYPT_SVM };
const char *ar_reencrypt_mode_name(enum ar_reencrypt_mode m);

struct ar_settings {
    char *file; /* the settings file read, or NULL */
    char *node;
    char *desired_path;
    char *effective_path;
    char *effective_owner; /* NULL: leave as created (the agent's user) */
    char *effective_group;
    unsigned history;
    char *state_dir;

    char *etcd_endpoints[AR_SETTINGS_MAX_ENDPOINTS];
    size_t n_etcd_endpoints;
    char *etcd_cafile;
    char *etcd_certfile;
    char *etcd_keyfile;
    char *etcd_user;
    char *etcd_password_file;
    bool etcd_json_gateway; /* etcd.jsonGateway: KV calls through the gateway, not gRPC */
    char *coord_prefix;
    unsigned lease_ttl_s; /* liveness and leader leases */

    char *api_url;
    char *api_cafile;
    char *api_certfile;
    char *api_keyfile;
    char *api_token_file;
    char *kubeconfig;
    char *api_etcd_prefix; /* the API server's --etcd-prefix (default "/registry") */

    enum ar_proof_mode proof;
    char *reload_command;
    char *canary_namespace; /* default "kube-system" */
    char *canary_name;      /* default "atrest-canary" */
    unsigned warn_after_s;  /* a proof waiting longer "looks stuck" (default 180) */

    unsigned settle_s; /* rotation.settleSeconds */

    enum ar_reencrypt_mode reencrypt_mode; /* reencrypt.mode (default etcd) */
    unsigned reencrypt_rate;               /* reencrypt.rateLimit, objects/s (0: none) */

    char *status_listen; /* "host:port", "[v6]:port"; NULL or "": no TCP */
    char *status_socket; /* unix socket path or NULL */
    bool status_allow_non_loopback;

    unsigned debounce_ms;
    unsigned poll_interval_s;
    enum ar_log_level log_level;

    /* resolved by ar_settings_check */
    bool owner_set;
    uid_t owner_uid;
    bool group_set;
    gid_t group_gid;
    char status_host[64]; /* numeric host of status_listen */
    uint16_t status_port;

    /* private: where each field was set (for diagnostics of ar_settings_check) */
    struct ar_pos field_pos_[40];
    const char *field_src_[40]; /* file name or flag name (static or borrowed from `file`) */
};

/* Defaults (node = hostname). 0 or -ENOMEM. */
int ar_settings_init(struct ar_settings *s);
void ar_settings_free(struct ar_settings *s);

/* Parse YAML from memory / from a file into s (over the defaults). Errors go to diags.
 * 0, -EINVAL (diags say why), or a system error (-ENOENT, ...; also one diagnostic). */
int ar_settings_load_mem(struct ar_settings *s, const char *name, const char *buf, size_t len,
                         struct ar_diags *diags);
int ar_settings_load_file(struct ar_settings *s, const char *path, struct ar_diags *diags);

/* Apply "--flag=value" / "--flag value" options from argv (argv[0] is skipped). --config,
 * --check and --help are skipped (the caller handles them); any other unknown option or a
 * positional argument is an error. 0 or -EINVAL (diags say which flag). */
int ar_settings_apply_flags(struct ar_settings *s, int argc, char **argv, struct ar_diags *diags);

/* Whole-settings validation and the files they name. Also resolves owner/group and the status
 * address. With AR_CHECK_DESIRED the desired config must also load and validate (`--check`);
 * the running daemon leaves that to its own reload path, which reports an invalid desired file
 * and keeps the last valid config in force. 0 or -EINVAL (diags hold every problem). */
#define AR_CHECK_DESIRED 1u
int ar_settings_check(struct ar_settings *s, struct ar_diags *diags, unsigned flags);

/* Split "host:port" / "[v6]:port" into a numeric host and a port; 0 or -EINVAL. */
int ar_parse_listen(const char *s, char *host, size_t hostlen, uint16_t *port);
/* True for 127.0.0.0/8, ::1 and "localhost". */
bool ar_host_is_loopback(const char *host);

/* The flags, one per line, for --help. */
void ar_settings_usage(FILE *f);

#endif
