/* tests/unit/test_settings.c: agent.yaml + flags, strict errors with FILE:LINE:COL, --check. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "agent/settings.h"

static char dir[64];

static void write_file(const char *p, const char *s)
{
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, s, strlen(s)), (ssize_t)strlen(s));
    close(fd);
}

/* Load YAML text; return the error count; the first diagnostic line in first. */
static int load(struct ar_settings *s, const char *yaml, char *first, size_t len)
{
    struct ar_diags d;
    ar_diags_init(&d);
    assert_int_equal(ar_settings_init(s), 0);
    int r = ar_settings_load_mem(s, "agent.yaml", yaml, strlen(yaml), &d);
    int n = (int)d.nerrors;
    if (first) {
        first[0] = 0;
        if (d.n)
            ar_diag_format(&d.v[0], first, len);
    }
    assert_true((r == 0) == (n == 0));
    ar_diags_free(&d);
    return n;
}

static void test_full_file(void **state)
{
    struct ar_settings s;
    const char *y = "node: cp-1\n"
                    "desiredConfig: /etc/atrest/desired.yaml\n"
                    "effectiveConfig:\n"
                    "  path: /etc/kubernetes/enc/config.yaml\n"
                    "  owner: root\n"
                    "  group: \"0\"\n"
                    "history: 7\n"
                    "stateDir: /var/lib/atrest\n"
                    "etcd:\n"
                    "  endpoints: [https://10.0.0.1:2379, https://10.0.0.2:2379]\n"
                    "  cafile: /pki/ca.crt\n"
                    "  certfile: /pki/c.crt\n"
                    "  keyfile: /pki/c.key\n"
                    "  prefix: /x/\n"
                    "apiserver:\n"
                    "  url: https://127.0.0.1:6443\n"
                    "  tokenFile: /tok\n"
                    "proof:\n"
                    "  mode: restart\n"
                    "  reloadCommand: systemctl restart kube-apiserver\n"
                    "status:\n"
                    "  listen: \"[::1]:9000\"\n"
                    "  socket: /run/atrest/status.sock\n"
                    "  allowNonLoopback: false\n"
                    "debounceMs: 250\n"
                    "pollIntervalSeconds: 5\n"
                    "logLevel: debug\n";
    assert_int_equal(load(&s, y, NULL, 0), 0);
    assert_string_equal(s.node, "cp-1");
    assert_string_equal(s.desired_path, "/etc/atrest/desired.yaml");
    assert_string_equal(s.effective_path, "/etc/kubernetes/enc/config.yaml");
    assert_string_equal(s.effective_owner, "root");
    assert_string_equal(s.effective_group, "0");
    assert_int_equal(s.history, 7);
    assert_int_equal(s.n_etcd_endpoints, 2);
    assert_string_equal(s.etcd_endpoints[1], "https://10.0.0.2:2379");
    assert_string_equal(s.etcd_cafile, "/pki/ca.crt");
    assert_string_equal(s.coord_prefix, "/x/");
    assert_string_equal(s.api_url, "https://127.0.0.1:6443");
    assert_string_equal(s.api_token_file, "/tok");
    assert_int_equal(s.proof, AR_PROOF_RESTART);
    assert_string_equal(s.reload_command, "systemctl restart kube-apiserver");
    assert_string_equal(s.status_listen, "[::1]:9000");
    assert_string_equal(s.status_socket, "/run/atrest/status.sock");
    assert_int_equal(s.debounce_ms, 250);
    assert_int_equal(s.poll_interval_s, 5);
    assert_int_equal(s.log_level, AR_LOG_DEBUG);
    ar_settings_free(&s);
}

static void test_defaults(void **state)
{
    struct ar_settings s;
    char host[256];
    assert_int_equal(load(&s, "desiredConfig: /a\n", NULL, 0), 0);
    gethostname(host, sizeof(host));
    assert_string_equal(s.node, host);
    assert_string_equal(s.coord_prefix, "/atrest/");
    assert_string_equal(s.state_dir, "/var/lib/atrest");
    assert_string_equal(s.status_listen, "127.0.0.1:9798");
    assert_int_equal(s.history, 5);
    assert_int_equal(s.debounce_ms, 300);
    assert_int_equal(s.poll_interval_s, 60);
    assert_int_equal(s.proof, AR_PROOF_CANARY);
    assert_int_equal(s.n_etcd_endpoints, 0);
    assert_string_equal(s.api_etcd_prefix, "/registry");
    assert_string_equal(s.canary_namespace, "kube-system");
    assert_string_equal(s.canary_name, "atrest-canary");
    assert_int_equal(s.warn_after_s, 180);
    assert_int_equal(s.reencrypt_mode, AR_REENCRYPT_ETCD);
    assert_int_equal(s.reencrypt_rate, 0);
    ar_settings_free(&s);

    /* the re-encrypt settings from the file */
    assert_int_equal(
        load(&s, "desiredConfig: /a\nreencrypt:\n  mode: api\n  rateLimit: 500\n", NULL, 0), 0);
    assert_int_equal(s.reencrypt_mode, AR_REENCRYPT_API);
    assert_string_equal(ar_reencrypt_mode_name(s.reencrypt_mode), "api");
    assert_int_equal(s.reencrypt_rate, 500);
    ar_settings_free(&s);
    assert_int_equal(load(&s, "desiredConfig: /a\nreencrypt:\n  mode: svm\n", NULL, 0), 0);
    assert_int_equal(s.reencrypt_mode, AR_REENCRYPT_SVM);
    assert_false(s.etcd_json_gateway); /* gRPC by default */
    ar_settings_free(&s);
    assert_int_equal(load(&s, "desiredConfig: /a\netcd:\n  jsonGateway: true\n", NULL, 0), 0);
    assert_true(s.etcd_json_gateway);
    ar_settings_free(&s);

    /* the proof settings from the file */
    assert_int_equal(load(&s,
                          "desiredConfig: /a\napiserver:\n  etcdPrefix: /k8s\nproof:\n"
                          "  canaryNamespace: ops\n  canaryName: c.1\n  warnAfterSeconds: 30\n",
                          NULL, 0),
                     0);
    assert_string_equal(s.api_etcd_prefix, "/k8s");
    assert_string_equal(s.canary_namespace, "ops");
    assert_string_equal(s.canary_name, "c.1");
    assert_int_equal(s.warn_after_s, 30);
    ar_settings_free(&s);
}

static void test_errors_with_positions(void **state)
{
    struct ar_settings s;
    char line[1024];

    assert_int_equal(
        load(&s, "desiredConfig: /a\nstatus:\n  lisen: 127.0.0.1:1\n", line, sizeof(line)), 1);
    assert_string_equal(line, "agent.yaml:3:3: status.lisen: unknown field \"lisen\" (known "
                              "here: listen, socket, allowNonLoopback)");
    ar_settings_free(&s);

    assert_int_equal(load(&s, "history: 3\nhistory: 4\n", line, sizeof(line)), 1);
    assert_string_equal(line, "agent.yaml:2:1: history: duplicate field \"history\": give it once");
    ar_settings_free(&s);

    assert_int_equal(load(&s, "history: lots\n", line, sizeof(line)), 1);
    assert_string_equal(line, "agent.yaml:1:10: history: invalid value \"lots\": must be a whole "
                              "number from 0 to 1000");
    ar_settings_free(&s);

    assert_int_equal(load(&s, "debounceMs: \"300\"\n", line, sizeof(line)), 1);
    assert_string_equal(line, "agent.yaml:1:13: debounceMs: must be a number, not a quoted string");
    ar_settings_free(&s);

    assert_int_equal(load(&s, "proof:\n  mode: psychic\n", line, sizeof(line)), 1);
    assert_string_equal(line, "agent.yaml:2:9: proof.mode: invalid value \"psychic\": must be one "
                              "of canary, metrics, restart");
    ar_settings_free(&s);

    assert_int_equal(load(&s, "reencrypt:\n  mode: kubectl\n", line, sizeof(line)), 1);
    assert_string_equal(line, "agent.yaml:2:9: reencrypt.mode: invalid value \"kubectl\": must be "
                              "one of etcd, api, svm");
    ar_settings_free(&s);

    assert_int_equal(load(&s, "reencrypt:\n  rateLimit: -1\n", line, sizeof(line)), 1);
    assert_string_equal(line, "agent.yaml:2:14: reencrypt.rateLimit: invalid value \"-1\": must be "
                              "a whole number from 0 to 10000000");
    ar_settings_free(&s);

    assert_int_equal(load(&s, "reencrypt:\n  speed: 1\n", line, sizeof(line)), 1);
    assert_string_equal(line, "agent.yaml:2:3: reencrypt.speed: unknown field \"speed\" (known "
                              "here: mode, rateLimit)");
    ar_settings_free(&s);

    assert_int_equal(load(&s, "etcd: https://x:2379\n", line, sizeof(line)), 1);
    assert_string_equal(line, "agent.yaml:1:7: etcd: must be a mapping (fields indented below "
                              "\"etcd:\")");
    ar_settings_free(&s);

    assert_int_equal(load(&s, "node: [a, b]\n", line, sizeof(line)), 1);
    assert_string_equal(line, "agent.yaml:1:7: node: must be a string, not a list");
    ar_settings_free(&s);

    assert_int_equal(load(&s, "node: a\n  bad: indent\n", line, sizeof(line)), 1);
    assert_non_null(strstr(line, "agent.yaml:2:6: YAML syntax error"));
    ar_settings_free(&s);

    assert_int_equal(load(&s, "", line, sizeof(line)), 1);
    assert_string_equal(line, "agent.yaml:0:0: the file is empty: give at least desiredConfig "
                              "and effectiveConfig.path");
    ar_settings_free(&s);

    /* every error of a file is reported, not just the first */
    assert_int_equal(load(&s, "a: 1\nb: 2\nlogLevel: loud\n", line, sizeof(line)), 3);
    ar_settings_free(&s);
}

static void test_flags(void **state)
{
    struct ar_settings s;
    struct ar_diags d;
    char *argv[] = {"agent",
                    "--config",
                    "x.yaml",
                    "--node=n2",
                    "--history",
                    "2",
                    "--etcd-servers",
                    "http://a:1,http://b:2",
                    "--status-allow-non-loopback",
                    "--check"};
    assert_int_equal(load(&s, "node: n1\nhistory: 9\netcd:\n  endpoints: [http://z:3]\n", NULL, 0),
                     0);
    ar_diags_init(&d);
    assert_int_equal(ar_settings_apply_flags(&s, 10, argv, &d), 0);
    assert_int_equal(d.n, 0);
    assert_string_equal(s.node, "n2");
    assert_int_equal(s.history, 2);
    assert_int_equal(s.n_etcd_endpoints, 2);
    assert_string_equal(s.etcd_endpoints[0], "http://a:1");
    assert_string_equal(s.etcd_endpoints[1], "http://b:2");
    assert_true(s.status_allow_non_loopback);

    char *bad[] = {"agent", "--nope=1", "--history=-1", "stray"};
    char line[512];
    assert_int_equal(ar_settings_apply_flags(&s, 4, bad, &d), -EINVAL);
    assert_int_equal(d.nerrors, 3);
    ar_diag_format(&d.v[0], line, sizeof(line));
    assert_string_equal(line, "command line:0:0: unknown flag \"--nope\" (see --help)");
    ar_diag_format(&d.v[1], line, sizeof(line));
    assert_string_equal(line, "command line:0:0: --history: invalid value \"-1\": must be a "
                              "whole number from 0 to 1000");
    ar_diags_free(&d);
    ar_settings_free(&s);
}

static void test_parse_listen(void **state)
{
    char h[64];
    uint16_t p;
    assert_int_equal(ar_parse_listen("127.0.0.1:8080", h, sizeof(h), &p), 0);
    assert_string_equal(h, "127.0.0.1");
    assert_int_equal(p, 8080);
    assert_int_equal(ar_parse_listen("[::1]:0", h, sizeof(h), &p), 0);
    assert_string_equal(h, "::1");
    assert_int_equal(p, 0);
    assert_int_equal(ar_parse_listen("localhost:1", h, sizeof(h), &p), 0);
    assert_string_equal(h, "127.0.0.1");
    assert_int_equal(ar_parse_listen("::1:80", h, sizeof(h), &p), -EINVAL);
    assert_int_equal(ar_parse_listen("example.com:80", h, sizeof(h), &p), -EINVAL);
    assert_int_equal(ar_parse_listen("127.0.0.1:65536", h, sizeof(h), &p), -EINVAL);
    assert_int_equal(ar_parse_listen("127.0.0.1", h, sizeof(h), &p), -EINVAL);
    assert_true(ar_host_is_loopback("127.1.2.3"));
    assert_true(ar_host_is_loopback("::1"));
    assert_true(ar_host_is_loopback("::ffff:127.0.0.1"));
    assert_false(ar_host_is_loopback("0.0.0.0"));
    assert_false(ar_host_is_loopback("10.0.0.1"));
    assert_false(ar_host_is_loopback("::"));
}

static const char desired_tmpl[] = "apiVersion: apiserver.config.k8s.io/v1\n"
                                   "kind: EncryptionConfiguration\n"
                                   "resources:\n"
                                   "  - resources: [secrets]\n"
                                   "    providers:\n"
                                   "      - aescbc:\n"
                                   "          keys:\n"
                                   "            - name: k1\n"
                                   "              secret: %s\n";

static int check_yaml(const char *yaml, char *lines, size_t len)
{
    struct ar_settings s;
    struct ar_diags d;
    char p[128];
    snprintf(p, sizeof(p), "%s/agent.yaml", dir);
    write_file(p, yaml);
    ar_diags_init(&d);
    assert_int_equal(ar_settings_init(&s), 0);
    int r = ar_settings_load_file(&s, p, &d);
    if (r == 0)
        r = ar_settings_check(&s, &d, AR_CHECK_DESIRED);
    size_t o = 0;
    lines[0] = 0;
    for (size_t i = 0; i < d.n && o < len; i++) {
        o += (size_t)ar_diag_format(&d.v[i], lines + o, len - o);
        if (o < len - 1)
            lines[o++] = '\n', lines[o] = 0;
    }
    int n = (int)d.nerrors;
    assert_true((r == 0) == (n == 0));
    ar_diags_free(&d);
    ar_settings_free(&s);
    return n;
}

static void test_check(void **state)
{
    char y[2048], out[4096], p[128], want[512];
    uint8_t key[32];
    char b64[64];

    randombytes_buf(key, sizeof(key));
    ar_b64_encode(key, sizeof(key), b64);
    snprintf(p, sizeof(p), "%s/desired.yaml", dir);
    snprintf(y, sizeof(y), desired_tmpl, b64);
    write_file(p, y);
    snprintf(p, sizeof(p), "%s/enc", dir);
    mkdir(p, 0700);

    /* valid */
    snprintf(y, sizeof(y),
             "desiredConfig: %s/desired.yaml\neffectiveConfig:\n  path: %s/enc/config.yaml\n"
             "stateDir: %s/state\napiserver:\n  url: https://127.0.0.1:6443\n"
             "status:\n  listen: 127.0.0.1:0\n",
             dir, dir, dir);
    assert_int_equal(check_yaml(y, out, sizeof(out)), 0);
    assert_string_equal(out, "");

    /* non-loopback status refused unless allowed, with the position of the field */
    snprintf(y, sizeof(y),
             "desiredConfig: %s/desired.yaml\neffectiveConfig:\n  path: %s/enc/config.yaml\n"
             "stateDir: %s/state\napiserver:\n  url: https://127.0.0.1:6443\n"
             "status:\n  listen: 0.0.0.0:9798\n",
             dir, dir, dir);
    assert_int_equal(check_yaml(y, out, sizeof(out)), 1);
    snprintf(want, sizeof(want),
             "%s/agent.yaml:8:11: status.listen: 0.0.0.0 is not a loopback address: the status "
             "endpoint stays on this node unless status.allowNonLoopback is true\n",
             dir);
    assert_string_equal(out, want);
    strcat(y, "  allowNonLoopback: true\n");
    assert_int_equal(check_yaml(y, out, sizeof(out)), 0);

    /* proof settings: names Kubernetes accepts, an absolute etcd prefix */
    snprintf(y, sizeof(y),
             "desiredConfig: %s/desired.yaml\neffectiveConfig:\n  path: %s/enc/config.yaml\n"
             "stateDir: %s/state\napiserver:\n  url: https://127.0.0.1:6443\n"
             "  etcdPrefix: registry\nproof:\n  canaryNamespace: Kube_System\n"
             "  canaryName: -x\n",
             dir, dir, dir);
    assert_int_equal(check_yaml(y, out, sizeof(out)), 3);
    assert_non_null(strstr(out, "agent.yaml:7:15: apiserver.etcdPrefix: must start with '/'"));
    assert_non_null(strstr(out, "agent.yaml:9:20: proof.canaryNamespace: must be a namespace "
                                "name"));
    assert_non_null(strstr(out, "agent.yaml:10:15: proof.canaryName: must be a Secret name"));

    /* reencrypt mode api needs the API server */
    snprintf(y, sizeof(y),
             "desiredConfig: %s/desired.yaml\neffectiveConfig:\n  path: %s/enc/config.yaml\n"
             "stateDir: %s/state\nproof:\n  mode: restart\n  reloadCommand: /bin/true\n"
             "reencrypt:\n  mode: api\nstatus:\n  listen: 127.0.0.1:0\n",
             dir, dir, dir);
    assert_int_equal(check_yaml(y, out, sizeof(out)), 1);
    snprintf(want, sizeof(want),
             "%s/agent.yaml:9:9: reencrypt.mode: reencrypt mode api goes through the local API "
             "server: it needs apiserver.url (or apiserver.kubeconfig)\n",
             dir);
    assert_string_equal(out, want);

    /* missing required fields, unpaired TLS files, unreadable files */
    snprintf(y, sizeof(y),
             "etcd:\n  endpoints: [ftp://x]\n  certfile: %s/nope.crt\napiserver:\n"
             "  url: https://127.0.0.1:6443\n",
             dir);
    assert_int_equal(check_yaml(y, out, sizeof(out)), 5);
    assert_non_null(strstr(out, "agent.yaml:0:0: desiredConfig: missing: set desiredConfig (or "
                                "--desired)"));
    assert_non_null(strstr(out, "agent.yaml:0:0: effectiveConfig.path: missing"));
    assert_non_null(strstr(out, "agent.yaml:2:14: etcd.endpoints: endpoint \"ftp://x\" must start "
                                "with https:// or http://"));
    assert_non_null(strstr(out, "agent.yaml:3:13: etcd.certfile: etcd.certfile and etcd.keyfile "
                                "go together: set both or neither"));
    assert_non_null(strstr(out, "nope.crt: No such file or directory: check the path"));

    /* the desired config's own errors, as the config loader reports them */
    snprintf(p, sizeof(p), "%s/desired.yaml", dir);
    snprintf(y, sizeof(y), desired_tmpl, "not-base64!");
    write_file(p, y);
    snprintf(y, sizeof(y),
             "desiredConfig: %s/desired.yaml\neffectiveConfig:\n  path: %s/enc/config.yaml\n"
             "stateDir: %s/state\napiserver:\n  url: https://127.0.0.1:6443\n",
             dir, dir, dir);
    assert_int_equal(check_yaml(y, out, sizeof(out)), 1);
    snprintf(want, sizeof(want),
             "%s/desired.yaml:9:23: resources[0].providers[0].aescbc.keys[0]"
             ".secret: Invalid value: \"REDACTED\": secrets must be base64 "
             "encoded\n",
             dir);
    assert_string_equal(out, want);
    sodium_memzero(y, sizeof(y));
    sodium_memzero(b64, sizeof(b64));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_errors_with_positions),
        cmocka_unit_test(test_flags),
        cmocka_unit_test(test_parse_listen),
        cmocka_unit_test(test_check),
    };
    char cmd[128];
    int rc;

    if (ar_crypto_init() < 0)
        return 1;
    snprintf(dir, sizeof(dir), "/tmp/atrest-settings-XXXXXX");
    if (!mkdtemp(dir))
        return 1;
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        return 1;
    return rc;
}
