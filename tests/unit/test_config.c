/*
 * tests/unit/test_config.c: the EncryptionConfiguration loader, validator, fingerprints and
 * renderer (crypto/config.h) against kube-apiserver's test files and its exact error texts
 * (shared spec section 2).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <stdbool.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "crypto/config.h"
#include "crypto/config_int.h"

#define TD  "tests/data/k8s-encryptionconfig-testdata/"
#define HDR "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
#define K16 "c2VjcmV0IGlzIHNlY3VyZQ=="                     /* "secret is secure" */
#define K32 "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=" /* "abc...3456" */

static const char *const valid_files[] = {
    TD "ec_config.yaml",
    TD "valid-configs/aes-cbc-first.yaml",
    TD "valid-configs/aes-gcm-first.yaml",
    TD "valid-configs/identity-first.yaml",
    TD "valid-configs/kms-first.yaml",
    TD "valid-configs/kmsv2-first.yaml",
    TD "valid-configs/legacy.yaml",
    TD "valid-configs/secret-box-first.yaml",
    TD "valid-configs/aes/aes-cbc-multiple-keys.json",
    TD "valid-configs/aes/aes-cbc-multiple-keys-reversed.json",
    TD "valid-configs/aes/aes-cbc-multiple-providers.json",
    TD "valid-configs/aes/aes-cbc-multiple-providers-reversed.json",
    TD "valid-configs/aes/aes-gcm.yaml",
    TD "valid-configs/kms/default-timeout.yaml",
    TD "valid-configs/kms/multiple-providers.yaml",
    TD "valid-configs/kms/multiple-providers-mixed.yaml",
    TD "valid-configs/kms/multiple-providers-kmsv2.yaml",
    "tests/data/configs/special-names.yaml",
    "tests/data/configs/all-providers.json",
    "tests/data/configs/anchors.yaml",
    "tests/data/configs/anchors-expanded.yaml",
    NULL,
};

/* ---- helpers ------------------------------------------------------------------------------ */

static int load(const char *text, bool reload, bool v1ok, struct ar_config **c, struct ar_diags *d)
{
    struct ar_load_opts o = {.reload = reload, .kmsv1_allowed = v1ok};

    ar_diags_init(d);
    return ar_config_load_mem("t.yaml", text, strlen(text), &o, c, d);
}

static void dump(const struct ar_diags *d)
{
    char buf[1024];
    size_t i;

    for (i = 0; i < d->n; i++) {
        ar_diag_format(&d->v[i], buf, sizeof(buf));
        print_message("  diag: %s\n", buf);
    }
}

static const struct ar_diag *find(const struct ar_diags *d, enum ar_severity sev, const char *path,
                                  const char *detail)
{
    size_t i;

    for (i = 0; i < d->n; i++)
        if (d->v[i].severity == sev && strcmp(d->v[i].path, path) == 0 &&
            strcmp(d->v[i].detail, detail) == 0)
            return &d->v[i];
    dump(d);
    print_message("  wanted: %s: %s\n", path, detail);
    return NULL;
}

/* No diagnostic may contain key text: neither the base64 nor the decoded bytes. */
static void assert_no_secret(const struct ar_diags *d, const char *const *secrets)
{
    size_t i;

    for (i = 0; i < d->n; i++) {
        const char *const *s;
        for (s = secrets; *s; s++) {
            assert_null(strstr(d->v[i].detail, *s));
            assert_null(strstr(d->v[i].path, *s));
        }
    }
}

struct rcase {
    const char *name;
    const char *yaml;
    bool reload;
    const char *path;
    const char *detail;
    int line, col;  /* 0: not checked */
    size_t nerrors; /* 0: not checked */
};

static const struct rcase rule_cases[] = {
    {"no resources", HDR "resources: []\n", false, "resources",
     "Required value: at least one resources is required", 3, 12, 1},
    {"resources absent", HDR, false, "resources",
     "Required value: at least one resources is required", 0, 0, 1},
    {"empty resource list", HDR "resources:\n- resources: []\n  providers: [{identity: {}}]\n",
     false, "resources[0].resources",
     "Required value: at least one resources[0].resources is required", 4, 14, 1},
    {"empty providers", HDR "resources:\n- resources: [secrets]\n  providers: []\n", false,
     "resources[0].providers", "Required value: at least one resources[0].providers is required", 5,
     14, 1},
    {"provider with no type", HDR "resources:\n- resources: [secrets]\n  providers: [{}]\n", false,
     "resources[0].providers[0]",
     "Invalid value: apiserver.ProviderConfiguration{AESGCM:(*apiserver.AESConfiguration)(nil), "
     "AESCBC:(*apiserver.AESConfiguration)(nil), "
     "Secretbox:(*apiserver.SecretboxConfiguration)(nil), "
     "Identity:(*apiserver.IdentityConfiguration)(nil), KMS:(*apiserver.KMSConfiguration)(nil)}: "
     "provider does not contain any of the expected providers: KMS, AESGCM, AESCBC, Secretbox, "
     "Identity",
     5, 15, 1},
    {"null identity is no provider",
     HDR "resources:\n- resources: [secrets]\n  providers:\n  - identity:\n", false,
     "resources[0].providers[0]",
     "Invalid value: apiserver.ProviderConfiguration{AESGCM:(*apiserver.AESConfiguration)(nil), "
     "AESCBC:(*apiserver.AESConfiguration)(nil), "
     "Secretbox:(*apiserver.SecretboxConfiguration)(nil), "
     "Identity:(*apiserver.IdentityConfiguration)(nil), KMS:(*apiserver.KMSConfiguration)(nil)}: "
     "provider does not contain any of the expected providers: KMS, AESGCM, AESCBC, Secretbox, "
     "Identity",
     6, 5, 1},
    {"two types in one provider",
     HDR "resources:\n- resources: [secrets]\n  providers:\n  - identity: {}\n    aesgcm: {keys: "
         "[{name: k, secret: " K16 "}]}\n",
     false, "resources[0].providers[0]",
     "Invalid value: "
     "apiserver.ProviderConfiguration{AESGCM:(*apiserver.AESConfiguration)(non-nil), "
     "AESCBC:(*apiserver.AESConfiguration)(nil), "
     "Secretbox:(*apiserver.SecretboxConfiguration)(nil), "
     "Identity:(*apiserver.IdentityConfiguration)(non-nil), "
     "KMS:(*apiserver.KMSConfiguration)(nil)}: "
     "more than one provider specified in a single element, should split into different list "
     "elements",
     6, 5, 1},
    {"no keys", HDR "resources:\n- resources: [secrets]\n  providers: [{aescbc: {keys: []}}]\n",
     false, "resources[0].providers[0].aescbc.keys",
     "Required value: at least one keys is required", 5, 31, 1},
    {"key name empty",
     HDR "resources:\n- resources: [secrets]\n  providers: [{secretbox: {keys: [{secret: " K32
         "}]}}]\n",
     false, "resources[0].providers[0].secretbox.keys[0].name",
     "Required value: name is a mandatory field for a key", 5, 35, 1},
    {"key secret empty",
     HDR "resources:\n- resources: [secrets]\n  providers: [{aesgcm: {keys: [{name: a, secret: "
         "\"\"}]}}]\n",
     false, "resources[0].providers[0].aesgcm.keys[0].secret",
     "Required value: secret is a mandatory field for a key", 5, 50, 1},
    {"secret not base64 (no padding)",
     HDR "resources:\n- resources: [secrets]\n  providers: [{aesgcm: {keys: [{name: a, secret: "
         "c2VjcmV0IGlzIHNlY3VyZQ}]}}]\n",
     false, "resources[0].providers[0].aesgcm.keys[0].secret",
     "Invalid value: \"REDACTED\": secrets must be base64 encoded", 5, 50, 1},
    {"aes key length",
     HDR "resources:\n- resources: [secrets]\n  providers: [{aescbc: {keys: [{name: a, secret: "
         "aGVsbG8=}]}}]\n",
     false, "resources[0].providers[0].aescbc.keys[0].secret",
     "Invalid value: \"REDACTED\": secret is not of the expected length, got 5, expected one of "
     "[16 24 32]",
     5, 50, 1},
    {"secretbox key length",
     HDR
     "resources:\n- resources: [secrets]\n  providers: [{secretbox: {keys: [{name: a, secret: " K16
     "}]}}]\n",
     false, "resources[0].providers[0].secretbox.keys[0].secret",
     "Invalid value: \"REDACTED\": secret is not of the expected length, got 16, expected one of "
     "[32]",
     5, 53, 1},
    {"kms name empty",
     HDR "resources:\n- resources: [secrets]\n  providers: [{kms: {apiVersion: v2, endpoint: "
         "\"unix:///k.sock\"}}]\n",
     false, "resources[0].providers[0].kms.name",
     "Required value: name is a mandatory field for a provider", 5, 21, 1},
    {"kms v2 name with colon",
     HDR "resources:\n- resources: [secrets]\n  providers: [{kms: {apiVersion: v2, name: \"a:b\", "
         "endpoint: \"unix:///k.sock\"}}]\n",
     false, "resources[0].providers[0].kms.name",
     "Invalid value: \"a:b\": invalid KMS provider name a:b, must not contain ':'", 5, 44, 1},
    {"kms v2 duplicate name",
     HDR "resources:\n- resources: [secrets]\n  providers:\n  - kms: {apiVersion: v2, name: k, "
         "endpoint: "
         "\"unix:///k.sock\"}\n  - kms: {apiVersion: v2, name: k, endpoint: \"unix:///k.sock\"}\n",
     false, "resources[0].providers[1].kms.name",
     "Invalid value: \"k\": duplicate KMS provider name k, names must be unique", 7, 33, 1},
    {"kms v1 then v2 duplicate name across items",
     HDR "resources:\n- resources: [secrets]\n  providers:\n  - kms: {name: k, endpoint: "
         "\"unix:///k.sock\"}\n- resources: [configmaps]\n  providers:\n  - kms: {apiVersion: v2, "
         "name: k, endpoint: \"unix:///k.sock\"}\n",
     false, "resources[1].providers[0].kms.name",
     "Invalid value: \"k\": duplicate KMS provider name k, names must be unique", 9, 33, 1},
    {"kms v1 duplicate name with reload",
     HDR "resources:\n- resources: [secrets]\n  providers:\n  - kms: {name: k, endpoint: "
         "\"unix:///k.sock\"}\n  - kms: {name: k, endpoint: \"unix:///k.sock\"}\n",
     true, "resources[0].providers[1].kms.name",
     "Invalid value: \"k\": duplicate KMS provider name k, names must be unique", 7, 17, 1},
    {"timeout zero",
     HDR
     "resources:\n- resources: [secrets]\n  providers: [{kms: {apiVersion: v2, name: k, endpoint: "
     "\"unix:///k.sock\", timeout: 0s}}]\n",
     false, "resources[0].providers[0].kms.timeout",
     "Invalid value: 0s: timeout should be a positive value", 5, 84, 1},
    {"timeout negative",
     HDR
     "resources:\n- resources: [secrets]\n  providers: [{kms: {apiVersion: v2, name: k, endpoint: "
     "\"unix:///k.sock\", timeout: -1m30s}}]\n",
     false, "resources[0].providers[0].kms.timeout",
     "Invalid value: -1m30s: timeout should be a positive value", 0, 0, 1},
    {"endpoint empty",
     HDR "resources:\n- resources: [secrets]\n  providers: [{kms: {apiVersion: v2, name: k}}]\n",
     false, "resources[0].providers[0].kms.endpoint",
     "Invalid value: \"\": endpoint is a mandatory field for a kms", 5, 21, 1},
    {"endpoint unparsable",
     HDR
     "resources:\n- resources: [secrets]\n  providers: [{kms: {apiVersion: v2, name: k, endpoint: "
     "\"::\"}}]\n",
     false, "resources[0].providers[0].kms.endpoint",
     "Invalid value: \"::\": invalid endpoint for kms provider, error: parse \"::\": missing "
     "protocol scheme",
     5, 57, 1},
    {"endpoint bad port",
     HDR
     "resources:\n- resources: [secrets]\n  providers: [{kms: {apiVersion: v2, name: k, endpoint: "
     "\"unix://host:port/x\"}}]\n",
     false, "resources[0].providers[0].kms.endpoint",
     "Invalid value: \"unix://host:port/x\": invalid endpoint for kms provider, error: parse "
     "\"unix://host:port/x\": invalid port \":port\" after host",
     0, 0, 1},
    {"endpoint scheme",
     HDR
     "resources:\n- resources: [secrets]\n  providers: [{kms: {apiVersion: v2, name: k, endpoint: "
     "\"tcp://127.0.0.1:9000\"}}]\n",
     false, "resources[0].providers[0].kms.endpoint",
     "Invalid value: \"tcp://127.0.0.1:9000\": unsupported scheme \"tcp\" for KMS provider, only "
     "unix is supported",
     5, 57, 1},
    {"endpoint without scheme",
     HDR
     "resources:\n- resources: [secrets]\n  providers: [{kms: {apiVersion: v2, name: k, endpoint: "
     "/tmp/k.sock}}]\n",
     false, "resources[0].providers[0].kms.endpoint",
     "Invalid value: \"/tmp/k.sock\": unsupported scheme \"\" for KMS provider, only unix is "
     "supported",
     0, 0, 1},
    {"v2 with cachesize",
     HDR
     "resources:\n- resources: [secrets]\n  providers: [{kms: {apiVersion: v2, name: k, endpoint: "
     "\"unix:///k.sock\", cachesize: 10}}]\n",
     false, "resources[0].providers[0].kms.cachesize",
     "Invalid value: 10: cachesize is not supported in v2", 5, 86, 1},
    {"v1 with cachesize 0",
     HDR "resources:\n- resources: [secrets]\n  providers: [{kms: {name: k, endpoint: "
         "\"unix:///k.sock\", cachesize: 0}}]\n",
     false, "resources[0].providers[0].kms.cachesize",
     "Invalid value: 0: cachesize should be a positive value, or negative to disable", 5, 70, 1},
    {"apiVersion v3",
     HDR
     "resources:\n- resources: [secrets]\n  providers: [{kms: {apiVersion: v3, name: k, endpoint: "
     "\"unix:///k.sock\"}}]\n",
     false, "resources[0].providers[0].kms.apiVersion",
     "Invalid value: \"v3\": unsupported apiVersion apiVersion for KMS provider, only v1 and v2 "
     "are "
     "supported",
     5, 34, 1},
    {"capital letters", HDR "resources:\n- resources: [Secrets]\n  providers: [{identity: {}}]\n",
     false, "resources[0].resources[0]",
     "Invalid value: \"Secrets\": resource name should not contain capital letters", 4, 15, 1},
    {"non-ASCII capital letters",
     HDR "resources:\n- resources: [\"\xc3\x89v\xc3\xa9nements.example.com\"]\n  providers: "
         "[{identity: {}}]\n",
     false, "resources[0].resources[0]",
     "Invalid value: \"\xc3\x89v\xc3\xa9nements.example.com\": resource name should not contain "
     "capital letters",
     4, 15, 1},
    {"titlecase letter",
     HDR "resources:\n- resources: [\"\xc7\x85.example.com\"]\n  providers: [{identity: {}}]\n",
     false, "resources[0].resources[0]",
     "Invalid value: \"\xc7\x85.example.com\": resource name should not contain capital letters", 4,
     15, 1},
    {"star", HDR "resources:\n- resources: [\"*\"]\n  providers: [{identity: {}}]\n", false,
     "resources[0].resources[0]",
     "Invalid value: \"*\": use '*.' to encrypt all the resources from core API group or *.* to "
     "encrypt all resources",
     4, 15, 1},
    {"apiserveripinfo",
     HDR "resources:\n- resources: [apiserveripinfo]\n  providers: [{identity: {}}]\n", false,
     "resources[0].resources[0]",
     "Invalid value: \"apiserveripinfo\": resources which do not have REST API/s cannot be "
     "encrypted",
     4, 15, 1},
    {"serviceipallocations",
     HDR
     "resources:\n- resources: [secrets, serviceipallocations]\n  providers: [{identity: {}}]\n",
     false, "resources[0].resources[1]",
     "Invalid value: \"serviceipallocations\": resources which do not have REST API/s cannot be "
     "encrypted",
     4, 24, 1},
    {"servicenodeportallocations",
     HDR "resources:\n- resources: [servicenodeportallocations]\n  providers: [{identity: {}}]\n",
     false, "resources[0].resources[0]",
     "Invalid value: \"servicenodeportallocations\": resources which do not have REST API/s cannot "
     "be encrypted",
     0, 0, 1},
    {"events.k8s.io",
     HDR "resources:\n- resources: [events.events.k8s.io]\n  providers: [{identity: {}}]\n", false,
     "resources[0].resources[0]",
     "Invalid value: \"events.events.k8s.io\": '*.events.k8s.io' objects are stored using the "
     "'events' API group in etcd. Use 'events' instead in the config file",
     0, 0, 1},
    {"extensions",
     HDR "resources:\n- resources: [\"*.extensions\"]\n  providers: [{identity: {}}]\n", false,
     "resources[0].resources[0]",
     "Invalid value: \"*.extensions\": 'extensions' group has been removed and cannot be used for "
     "encryption",
     0, 0, 1},
    {"across groups",
     HDR "resources:\n- resources: [\"secrets.*\"]\n  providers: [{identity: {}}]\n", false,
     "resources[0].resources[0]",
     "Invalid value: \"secrets.*\": encrypting the same resource across groups is not supported", 4,
     15, 1},
    {"duplicate resource",
     HDR "resources:\n- resources: [secrets, configmaps, secrets, secrets]\n  providers: "
         "[{identity: {}}]\n",
     false, "resources[0].resources",
     "Invalid value: []string{\"secrets\", \"configmaps\", \"secrets\", \"secrets\"}: the same "
     "resource cannot be specified multiple times",
     4, 14, 1},
    {"star-star overlap",
     HDR "resources:\n- resources: [\"*.*\", secrets, configmaps]\n  providers: [{identity: {}}]\n",
     false, "resources[0].resources",
     "Invalid value: []string{\"*.*\", \"secrets\", \"configmaps\"}: using overlapping resources "
     "such as 'secrets' and '*.' in the same resource list is not allowed as they will be masked",
     4, 14, 1},
    {"group overlap",
     HDR "resources:\n- resources: [deployments.apps, \"*.apps\"]\n  providers: [{identity: {}}]\n",
     false, "resources[0].resources",
     "Invalid value: []string{\"deployments.apps\", \"*.apps\"}: using overlapping resources such "
     "as 'secrets' and '*.' in the same resource list is not allowed as they will be masked",
     0, 0, 1},
    {"core overlap",
     HDR "resources:\n- resources: [secrets, \"*.\"]\n  providers: [{identity: {}}]\n", false,
     "resources[0].resources",
     "Invalid value: []string{\"secrets\", \"*.\"}: using overlapping resources such as 'secrets' "
     "and '*.' in the same resource list is not allowed as they will be masked",
     0, 0, 1},
    {"masked by core wildcard",
     HDR
     "resources:\n- resources: [\"*.\"]\n  providers: [{identity: {}}]\n- resources: [secrets]\n  "
     "providers: [{identity: {}}]\n",
     false, "resources[1].resources[0]", "resource \"secrets\" is masked by earlier rule \"*.\"", 6,
     15, 1},
    {"masked by star-star",
     HDR
     "resources:\n- resources: [\"*.*\"]\n  providers: [{identity: {}}]\n- resources: [\"*.*\"]\n  "
     "providers: [{identity: {}}]\n",
     false, "resources[1].resources[0]", "resource \"*.*\" is masked by earlier rule \"*.*\"", 6,
     15, 1},
    {"masked by group wildcard",
     HDR "resources:\n- resources: [\"*.apps\"]\n  providers: [{identity: {}}]\n- resources: "
         "[configmaps, deployments.apps]\n  providers: [{identity: {}}]\n",
     false, "resources[1].resources[1]",
     "resource \"deployments.apps\" is masked by earlier rule \"*.apps\"", 6, 27, 1},
    {NULL, NULL, false, NULL, NULL, 0, 0, 0},
};

static void test_rules(void **state)
{
    const struct rcase *rc;
    int bad = 0;

    for (rc = rule_cases; rc->name; rc++) {
        struct ar_config *c = (struct ar_config *)1;
        struct ar_diags d;
        const struct ar_diag *g;
        int r;

        print_message("case: %s\n", rc->name);
        r = load(rc->yaml, rc->reload, true, &c, &d);
        if (r != -EINVAL)
            dump(&d);
        assert_int_equal(r, -EINVAL);
        assert_null(c);
        g = find(&d, AR_SEV_ERROR, rc->path, rc->detail);
        assert_non_null(g);
        assert_string_equal(g->file, "t.yaml");
        if (rc->line && (g->pos.line != rc->line || g->pos.col != rc->col)) {
            print_message("  MISMATCH %s: pos %d:%d\n", rc->name, g->pos.line, g->pos.col);
            bad++;
        }
        if (rc->nerrors) {
            if (d.nerrors != rc->nerrors)
                dump(&d);
            assert_int_equal(d.nerrors, rc->nerrors);
        }
        ar_diags_free(&d);
    }
    assert_int_equal(bad, 0);
}

/* Things kube-apiserver accepts. */
static void test_accepted(void **state)
{
    static const char *const ok[] = {
        /* reverse order of masking is fine; the same exact resource in two items too */
        HDR "resources:\n- resources: [secrets]\n  providers: [{identity: {}}]\n- resources: "
            "[secrets]\n  providers: [{identity: {}}]\n- resources: [\"*.\"]\n  providers: "
            "[{identity: {}}]\n",
        /* duplicate v1 names without reload */
        HDR "resources:\n- resources: [secrets]\n  providers:\n  - kms: {name: k, endpoint: "
            "\"unix:///k.sock\"}\n  - kms: {name: k, endpoint: \"unix:///k.sock\"}\n",
        /* v1 names may hold ':'; AES key names may hold ':' and repeat */
        HDR "resources:\n- resources: [secrets]\n  providers:\n  - kms: {name: \"a:b\", endpoint: "
            "\"unix:///k.sock\", cachesize: -1}\n  - aescbc: {keys: [{name: \"a:b\", secret: " K16
            "}, {name: \"a:b\", secret: " K16 "}]}\n",
        /* lowercase non-ASCII letters are not capitals */
        HDR "resources:\n- resources: [\"\xc3\xa9v\xc3\xa9nements.example.com\"]\n  providers: "
            "[{identity: {}}]\n",
        /* an empty resource string passes validation in Go too */
        HDR "resources:\n- resources: [\"\"]\n  providers: [{identity: {}}]\n",
        /* YAML floats with an integral value are ints once converted to JSON */
        HDR "resources:\n- resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: "
            "\"unix:///k.sock\", cachesize: 1.0}\n  - kms: {name: b, endpoint: "
            "\"unix:///k.sock\", cachesize: 1e3}\n  - kms: {name: c, endpoint: "
            "\"unix:///k.sock\", cachesize: -0x10}\n",
        /* CRs, 24-byte keys, newlines inside a secret, UNIX scheme in capitals */
        HDR "resources:\n- resources: [pandas.awesome.bears.example, \"*.apps\"]\n  providers:\n"
            "  - aesgcm: {keys: [{name: k, secret: \"YWJjZGVmZ2hp\\namtsbW5vcHFyc3R1dnd4\"}]}\n"
            "  - kms: {apiVersion: v2, name: k2, endpoint: \"UNIX:///x\"}\n",
        NULL,
    };
    size_t i;

    for (i = 0; ok[i]; i++) {
        struct ar_config *c = NULL;
        struct ar_diags d;
        int r = load(ok[i], false, true, &c, &d);
        if (r != 0)
            dump(&d);
        assert_int_equal(r, 0);
        assert_int_equal(d.nerrors, 0);
        ar_config_unref(c);
        ar_diags_free(&d);
    }
}

static void test_multiple_errors(void **state)
{
    static const char *y = HDR "resources:\n"
                               "- resources: [Secrets, secrets.*]\n"
                               "  providers:\n"
                               "  - aesgcm: {keys: [{name: \"\", secret: \"not base64!\"}]}\n"
                               "  - kms: {apiVersion: v2, name: \"x:y\", endpoint: \"tcp://a\", "
                               "timeout: 0s, cachesize: 5}\n"
                               "- resources: []\n"
                               "  providers: []\n";
    struct ar_config *c = NULL;
    struct ar_diags d;
    size_t i;

    assert_int_equal(load(y, false, true, &c, &d), -EINVAL);
    assert_int_equal(d.nerrors, 10);
    /* Go's order: per item, resources then providers; per provider name, timeout, endpoint,
     * cachesize, apiVersion */
    static const char *const paths[] = {
        "resources[0].resources[0]",
        "resources[0].resources[1]",
        "resources[0].providers[0].aesgcm.keys[0].name",
        "resources[0].providers[0].aesgcm.keys[0].secret",
        "resources[0].providers[1].kms.name",
        "resources[0].providers[1].kms.timeout",
        "resources[0].providers[1].kms.endpoint",
        "resources[0].providers[1].kms.cachesize",
        "resources[1].resources",
        "resources[1].providers",
    };
    for (i = 0; i < 10; i++)
        assert_string_equal(d.v[i].path, paths[i]);
    assert_int_equal(d.v[3].pos.line, 6);
    assert_int_equal(d.v[3].pos.col, 40);
    ar_diags_free(&d);
}

/* ---- kube-apiserver's test files --------------------------------------------------------- */

static void test_valid_files(void **state)
{
    const char *const *f;

    for (f = valid_files; *f; f++) {
        struct ar_config *c = NULL, *c2 = NULL;
        struct ar_diags d, d2;
        struct ar_load_opts o = {0};
        char *out = NULL;
        size_t n = 0;
        int r;

        print_message("file: %s\n", *f);
        ar_diags_init(&d);
        r = ar_config_load_file(*f, &o, &c, &d);
        if (r)
            dump(&d);
        assert_int_equal(r, 0);
        assert_non_null(c);
        assert_int_equal(d.nerrors, 0);
        /* render round trip: same fingerprint */
        assert_int_equal(ar_config_render(c, false, &out, &n), 0);
        assert_int_equal(strlen(out), n);
        ar_diags_init(&d2);
        r = ar_config_load_mem("rendered", out, n, &o, &c2, &d2);
        if (r) {
            dump(&d2);
            print_message("%s", out);
        }
        assert_int_equal(r, 0);
        assert_memory_equal(c->fingerprint, c2->fingerprint, AR_SHA256_LEN);
        /* rendering is deterministic: render(load(render(x))) == render(x) */
        {
            char *out2 = NULL;
            size_t n2 = 0;
            assert_int_equal(ar_config_render(c2, false, &out2, &n2), 0);
            assert_int_equal(n, n2);
            assert_memory_equal(out, out2, n);
            ar_config_render_free(out2, n2);
        }
        ar_config_render_free(out, n);
        ar_config_unref(c2);
        ar_diags_free(&d2);
        ar_config_unref(c);
        ar_diags_free(&d);
    }
}

static void test_invalid_files(void **state)
{
    static const struct {
        const char *file, *path, *detail;
        int line, col;
    } cases[] = {
        {TD "invalid-configs/invalid-typo.yaml", "resources[0].providers[3].kms.pandas",
         "strict decoding error: unknown field \"resources[0].providers[3].kms.pandas\"", 26, 11},
        {TD "invalid-configs/invalid-aes-gcm.yaml", "resources[0].providers[0].aesgcm.keys",
         "Required value: at least one keys is required", 8, 16},
        {TD "invalid-configs/kms/invalid-apiversion.yaml",
         "resources[0].providers[0].kms.apiVersion",
         "Invalid value: \"v3\": unsupported apiVersion apiVersion for KMS provider, only v1 and "
         "v2 "
         "are supported",
         8, 23},
        {TD "invalid-configs/kms/invalid-config-type.yaml", "",
         "no kind \"EncryptionConfigurations\" is registered for version "
         "\"apiserver.config.k8s.io/v1\"",
         1, 7},
        {TD "invalid-configs/kms/invalid-gvk.yaml", "",
         "Object 'Kind' is missing in '<the file content is not repeated>'", 1, 1},
        {"tests/data/configs/billion-laughs.yaml", "",
         "error converting YAML to JSON: yaml: document contains excessive aliasing", 12, 36},
        {TD "invalid-configs/kms/invalid-content.yaml", "",
         "encryption provider configuration file \"" TD
         "invalid-configs/kms/invalid-content.yaml\" is empty",
         0, 0},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ar_config *c = NULL;
        struct ar_diags d;
        const struct ar_diag *g;

        ar_diags_init(&d);
        assert_int_equal(ar_config_load_file(cases[i].file, NULL, &c, &d), -EINVAL);
        assert_null(c);
        assert_int_equal(d.nerrors, 1);
        g = find(&d, AR_SEV_ERROR, cases[i].path, cases[i].detail);
        assert_non_null(g);
        assert_int_equal(g->pos.line, cases[i].line);
        assert_int_equal(g->pos.col, cases[i].col);
        ar_diags_free(&d);
    }
}

static void test_file_hash(void **state)
{
    struct ar_config *c = NULL;
    char h[AR_HASH_STRLEN];

    assert_int_equal(ar_config_load_file(TD "ec_config.yaml", NULL, &c, NULL), 0);
    ar_config_file_hash_str(c, h);
    assert_string_equal(h,
                        "sha256:6bc9f4aa2e5587afbb96074e1809550cbc4de3cc3a35717dac8ff2800a147fd3");
    /* defaults of ec_config.yaml: KMS v1, 3s, cachesize 1000 */
    assert_int_equal(c->nrules, 1);
    assert_int_equal(c->rules[0].nproviders, 1);
    assert_int_equal(c->rules[0].providers[0].type, AR_P_KMS);
    assert_int_equal(c->rules[0].providers[0].kms.api_version, 1);
    assert_int_equal(c->rules[0].providers[0].kms.timeout_ms, 3000);
    assert_int_equal(c->rules[0].providers[0].kms.timeout_ns, 3000000000LL);
    assert_int_equal(c->rules[0].providers[0].kms.cachesize, 1000);
    assert_false(c->rules[0].providers[0].kms.cachesize_set);
    assert_string_equal(c->rules[0].providers[0].kms.name, "foo");
    assert_string_equal(c->rules[0].providers[0].kms.endpoint, "unix:///tmp/testprovider.sock");
    /* references */
    assert_ptr_equal(ar_config_ref(c), c);
    assert_null(ar_config_unref(c));
    /* one reference left: still usable (ASan would catch a use after free) */
    assert_string_equal(c->rules[0].providers[0].kms.name, "foo");
    assert_null(ar_config_unref(c));
    assert_null(ar_config_unref(NULL));
}

static void test_model(void **state)
{
    struct ar_config *c = NULL;
    const struct ar_provider *p;
    struct ar_diags d;

    ar_diags_init(&d);
    assert_int_equal(ar_config_load_file(TD "valid-configs/aes-cbc-first.yaml", NULL, &c, &d), 0);
    /* the KMS v1 provider warns (kube-apiserver 1.29+ refuses it without the gate) */
    assert_int_equal(d.nerrors, 0);
    assert_int_equal(d.n, 1);
    assert_non_null(find(&d, AR_SEV_WARNING, "resources[0].providers[1].kms",
                         "KMSv1 is deprecated and will only receive security updates going "
                         "forward. Use KMSv2 instead.  Set --feature-gates=KMSv1=true to use the "
                         "deprecated KMSv1 feature."));
    assert_int_equal(d.v[0].pos.line, 14);
    assert_int_equal(d.v[0].pos.col, 11);
    assert_false(c->legacy_kind);
    assert_int_equal(c->rules[0].nresources, 1);
    assert_string_equal(c->rules[0].resources[0], "secrets");
    assert_string_equal(c->rules[0].parsed[0].group, "");
    assert_string_equal(c->rules[0].parsed[0].resource, "secrets");
    assert_int_equal(c->rules[0].nproviders, 6);
    p = &c->rules[0].providers[0];
    assert_int_equal(p->type, AR_P_AESCBC);
    assert_int_equal(p->nkeys, 2);
    assert_string_equal(p->keys[0].name, "key1");
    assert_int_equal(p->keys[0].secret_len, 16);
    assert_memory_equal(p->keys[0].secret, "secret is secure", 16);
    assert_memory_equal(p->keys[1].secret, "this is password", 16);
    /* fp = first 8 bytes of sha256("secret is secure") */
    {
        char hex[17];
        ar_hex(p->keys[0].fp, 8, hex);
        assert_string_equal(hex, "66337256703eecc9");
    }
    p = &c->rules[0].providers[1];
    assert_int_equal(p->type, AR_P_KMS);
    assert_int_equal(p->kms.cachesize, 10);
    assert_true(p->kms.cachesize_set);
    assert_int_equal(p->kms.timeout_ms, 5000);
    p = &c->rules[0].providers[2];
    assert_int_equal(p->kms.api_version, 2);
    assert_int_equal(p->kms.cachesize, 0);
    assert_int_equal(p->kms.timeout_ms, 3000);
    assert_int_equal(c->rules[0].providers[3].type, AR_P_IDENTITY);
    assert_int_equal(c->rules[0].providers[4].type, AR_P_SECRETBOX);
    assert_int_equal(c->rules[0].providers[4].keys[0].secret_len, 32);
    assert_int_equal(c->rules[0].providers[5].type, AR_P_AESGCM);
    ar_config_unref(c);
    ar_diags_free(&d);

    /* with the gate, no warning */
    {
        struct ar_load_opts o = {.kmsv1_allowed = true};
        ar_diags_init(&d);
        assert_int_equal(ar_config_load_file(TD "valid-configs/aes-cbc-first.yaml", &o, &c, &d), 0);
        assert_int_equal(d.n, 0);
        ar_config_unref(c);
        ar_diags_free(&d);
    }
    /* legacy kind */
    assert_int_equal(ar_config_load_file(TD "valid-configs/legacy.yaml", NULL, &c, NULL), 0);
    assert_true(c->legacy_kind);
    assert_string_equal(c->rules[0].resources[1], "namespaces");
    ar_config_unref(c);
}

/* ---- decoding ------------------------------------------------------------------------------ */

struct dcase {
    const char *name, *text, *path, *detail;
    int line, col;
};

static const struct dcase decode_cases[] = {
    /* NUL bytes ("\0" in a double-quoted YAML scalar): Go keeps them in the string; C strings
     * cannot, so atrest refuses them instead of silently cutting the string short (which
     * would make "v2\0x" read as "v2", "a\0b" a key named "a", and so on). */
    {"NUL in a key name",
     HDR
     "resources:\n- resources: [s]\n  providers: [{aescbc: {keys: [{name: \"a\\0b\", secret: " K16
     "}]}}]\n",
     "resources[0].providers[0].aescbc.keys[0].name",
     "atrest: a NUL byte in a string is not supported", 5, 39},
    {"NUL in a resource",
     HDR "resources:\n- resources: [\"secrets\\0x\"]\n  providers: [{identity: {}}]\n",
     "resources[0].resources[0]", "atrest: a NUL byte in a string is not supported", 4, 15},
    {"NUL in a KMS apiVersion",
     HDR "resources:\n- resources: [s]\n  providers: [{kms: {apiVersion: \"v2\\0x\", name: k, "
         "endpoint: \"unix:///k\"}}]\n",
     "resources[0].providers[0].kms.apiVersion", "atrest: a NUL byte in a string is not supported",
     5, 34},
    {"NUL in a field name", HDR "resources: []\n\"resources\\0\": []\n", "resources\\x00",
     "strict decoding error: unknown field \"resources\\x00\"", 4, 1},
    {"NUL in kind",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: \"EncryptionConfiguration\\0\"\nresources: "
     "[]\n",
     "",
     "no kind \"EncryptionConfiguration\\x00\" is registered for version "
     "\"apiserver.config.k8s.io/v1\"",
     2, 7},
    {"quote in a field name", HDR "resources: []\n\"a\\\"b\": 1\n", "a\"b",
     "strict decoding error: unknown field \"a\\\"b\"", 4, 1},
    {"unknown root field", HDR "resources: []\nextra: 1\n", "extra",
     "strict decoding error: unknown field \"extra\"", 4, 1},
    {"field names are case-sensitive", HDR "Resources: []\n", "Resources",
     "strict decoding error: unknown field \"Resources\"", 3, 1},
    {"unknown key field",
     HDR "resources:\n- resources: [s]\n  providers: [{aescbc: {keys: [{name: a, secret: " K16
         ", Secret: x}]}}]\n",
     "resources[0].providers[0].aescbc.keys[0].Secret",
     "strict decoding error: unknown field \"resources[0].providers[0].aescbc.keys[0].Secret\"", 5,
     76},
    {"unknown identity field",
     HDR "resources:\n- resources: [s]\n  providers: [{identity: {a: 1}}]\n",
     "resources[0].providers[0].identity.a",
     "strict decoding error: unknown field \"resources[0].providers[0].identity.a\"", 5, 27},
    {"duplicate field yaml",
     HDR "resources:\n- resources: [s]\n  providers:\n  - kms:\n      name: a\n      name: b\n",
     "resources[0].providers[0].kms.name",
     "strict decoding error: yaml: unmarshal errors: line 8: key \"name\" already set in map", 8,
     7},
    {"duplicate field json",
     "{\"kind\": \"EncryptionConfiguration\", \"apiVersion\": \"apiserver.config.k8s.io/v1\",\n"
     " \"resources\": [{\"resources\": [\"s\"], \"resources\": [\"t\"]}]}",
     "resources[0].resources", "strict decoding error: duplicate field \"resources[0].resources\"",
     2, 37},
    {"wrong kind",
     "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfig\nresources: []\n", "",
     "no kind \"EncryptionConfig\" is registered for version \"apiserver.config.k8s.io/v1\"", 2, 7},
    {"legacy kind needs v1", "apiVersion: v1\nkind: EncryptionConfiguration\nresources: []\n", "",
     "no kind \"EncryptionConfiguration\" is registered for version \"v1\"", 2, 7},
    {"missing apiVersion", "kind: EncryptionConfiguration\nresources: []\n", "",
     "Object 'apiVersion' is missing in '<the file content is not repeated>'", 1, 1},
    {"whitespace only", "  \n\n", "",
     "Object 'Kind' is missing in '<the file content is not repeated>'", 0, 0},
    {"top-level list", "- a\n- b\n", "",
     "couldn't get version/kind; json parse error: json: cannot unmarshal array into Go value of "
     "type struct { APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind string "
     "\"json:\\\"kind,omitempty\\\"\" }",
     1, 1},
    {"kind not a string", "kind: 5\napiVersion: v1\n", "kind",
     "couldn't get version/kind; json parse error: json: cannot unmarshal number into Go struct "
     "field .kind of type string",
     1, 7},
    {"resources not a list", HDR "resources: secrets\n", "resources",
     "json: cannot unmarshal string into Go struct field EncryptionConfiguration.resources of type "
     "[]v1.ResourceConfiguration",
     3, 12},
    {"number as key name",
     HDR "resources:\n- resources: [s]\n  providers: [{aescbc: {keys: [{name: 1, secret: " K16
         "}]}}]\n",
     "resources[0].providers[0].aescbc.keys[0].name",
     "json: cannot unmarshal number into Go struct field Key.resources.providers.aescbc.keys.name "
     "of type string",
     5, 39},
    {"bool as resource", HDR "resources:\n- resources: [yes]\n  providers: [{identity: {}}]\n",
     "resources[0].resources[0]",
     "json: cannot unmarshal bool into Go struct field ResourceConfiguration.resources.resources "
     "of type string",
     4, 15},
    {"provider is a string", HDR "resources:\n- resources: [s]\n  providers: [identity]\n",
     "resources[0].providers[0]",
     "json: cannot unmarshal string into Go struct field ResourceConfiguration.resources.providers "
     "of type v1.ProviderConfiguration",
     5, 15},
    {"kms is a list", HDR "resources:\n- resources: [s]\n  providers: [{kms: []}]\n",
     "resources[0].providers[0].kms",
     "json: cannot unmarshal array into Go struct field "
     "ProviderConfiguration.resources.providers.kms "
     "of type v1.KMSConfiguration",
     5, 21},
    {"cachesize a string",
     HDR "resources:\n- resources: [s]\n  providers: [{kms: {name: k, endpoint: \"unix:///a\", "
         "cachesize: \"10\"}}]\n",
     "resources[0].providers[0].kms.cachesize",
     "json: cannot unmarshal string into Go struct field "
     "KMSConfiguration.resources.providers.kms.cachesize of type int32",
     0, 0},
    {"cachesize overflow",
     HDR "resources:\n- resources: [s]\n  providers: [{kms: {name: k, endpoint: \"unix:///a\", "
         "cachesize: 4294967296}}]\n",
     "resources[0].providers[0].kms.cachesize",
     "json: cannot unmarshal number 4294967296 into Go struct field "
     "KMSConfiguration.resources.providers.kms.cachesize of type int32",
     0, 0},
    /* YAML numbers reach Go's JSON decoder as json.Marshal writes them (sigs.k8s.io/yaml) */
    {"cachesize yaml hex overflow",
     HDR "resources:\n- resources: [s]\n  providers: [{kms: {name: k, endpoint: \"unix:///a\", "
         "cachesize: 0x100000000}}]\n",
     "resources[0].providers[0].kms.cachesize",
     "json: cannot unmarshal number 4294967296 into Go struct field "
     "KMSConfiguration.resources.providers.kms.cachesize of type int32",
     0, 0},
    {"cachesize yaml float overflow",
     HDR "resources:\n- resources: [s]\n  providers: [{kms: {name: k, endpoint: \"unix:///a\", "
         "cachesize: 1e10}}]\n",
     "resources[0].providers[0].kms.cachesize",
     "json: cannot unmarshal number 10000000000 into Go struct field "
     "KMSConfiguration.resources.providers.kms.cachesize of type int32",
     0, 0},
    {"cachesize yaml fraction",
     HDR "resources:\n- resources: [s]\n  providers: [{kms: {name: k, endpoint: \"unix:///a\", "
         "cachesize: 1.5}}]\n",
     "resources[0].providers[0].kms.cachesize",
     "json: cannot unmarshal number 1.5 into Go struct field "
     "KMSConfiguration.resources.providers.kms.cachesize of type int32",
     0, 0},
    {"cachesize json 1.0",
     "{\"kind\": \"EncryptionConfiguration\", \"apiVersion\": \"apiserver.config.k8s.io/v1\", "
     "\"resources\": [{\"resources\": [\"s\"], \"providers\": [{\"kms\": {\"name\": \"k\", "
     "\"endpoint\": \"unix:///a\", \"cachesize\": 1.0}}]}]}",
     "resources[0].providers[0].kms.cachesize",
     "json: cannot unmarshal number 1.0 into Go struct field "
     "KMSConfiguration.resources.providers.kms.cachesize of type int32",
     0, 0},
    {"timeout bad",
     HDR "resources:\n- resources: [s]\n  providers: [{kms: {name: k, timeout: 3x}}]\n",
     "resources[0].providers[0].kms.timeout", "time: unknown unit \"x\" in duration \"3x\"", 5, 40},
    {"timeout number",
     HDR "resources:\n- resources: [s]\n  providers: [{kms: {name: k, timeout: 3}}]\n",
     "resources[0].providers[0].kms.timeout",
     "json: cannot unmarshal number into Go value of type string", 5, 40},
    {"yaml syntax", HDR "resources:\n- resources: [s\n", "",
     "error converting YAML to JSON: yaml: line 4: did not find expected ',' or ']'", 5, 1},
    {"tabs", HDR "resources:\n\t- a\n", "",
     "error converting YAML to JSON: yaml: line 4: found character that cannot start any token", 4,
     1},
    /* anchors, aliases and merge keys as goyaml.v2 reads them (shared spec 2.1) */
    {"alias of a string list where providers go",
     HDR "resources:\n- resources: &r [s]\n  providers: *r\n", "resources[0].providers[0]",
     "json: cannot unmarshal string into Go struct field ResourceConfiguration.resources.providers "
     "of type v1.ProviderConfiguration",
     4, 18},
    {"unknown anchor", HDR "resources: *nope\n", "",
     "error converting YAML to JSON: yaml: unknown anchor 'nope' referenced", 3, 12},
    {"anchor defined after its alias", HDR "resources: *x\nx: &x []\n", "",
     "error converting YAML to JSON: yaml: unknown anchor 'x' referenced", 3, 12},
    {"anchor contains itself", HDR "resources:\n- &r\n  resources: [s]\n  providers: [*r]\n", "",
     "error converting YAML to JSON: yaml: anchor 'r' value contains itself", 6, 15},
    {"merge of a scalar", HDR "x: &x 1\nresources:\n- <<: *x\n", "",
     "error converting YAML to JSON: yaml: map merge requires map or sequence of maps as the "
     "value",
     5, 7},
    {"merge of a list holding a scalar",
     HDR "resources:\n- resources: &r [s]\n  providers: [{identity: {}}]\n- <<: [{a: 1}, b]\n", "",
     "error converting YAML to JSON: yaml: map merge requires map or sequence of maps as the value",
     6, 16},
    {"merge key override is a duplicate under strict decoding",
     HDR
     "resources:\n- resources: [s]\n  providers:\n  - kms: &k {name: a, endpoint: \"unix:///a\"}\n"
     "  - kms:\n      <<: *k\n      name: b\n",
     "resources[0].providers[1].kms.name",
     "strict decoding error: yaml: unmarshal errors: line 9: key \"name\" already set in map", 9,
     7},
    {"merge after the key it repeats",
     HDR
     "resources:\n- resources: [s]\n  providers:\n  - kms: &k {name: a, endpoint: \"unix:///a\"}\n"
     "  - kms:\n      name: b\n      <<: *k\n",
     "resources[0].providers[1].kms.name",
     "strict decoding error: yaml: unmarshal errors: line 6: key \"name\" already set in map", 6,
     14},
    {"two merged mappings with one key",
     HDR
     "resources:\n- resources: [s]\n  providers:\n  - kms: &k {name: a, endpoint: \"unix:///a\"}\n"
     "  - kms: &l {name: b}\n  - kms: {<<: [*k, *l]}\n",
     "resources[0].providers[2].kms.name",
     "strict decoding error: yaml: unmarshal errors: line 6: key \"name\" already set in map", 6,
     14},
    {"a quoted << is a field name", HDR "resources:\n- \"<<\": {resources: [s]}\n",
     "resources[0].<<", "strict decoding error: unknown field \"resources[0].<<\"", 4, 3},
    {"unknown field brought by a merge",
     HDR "resources:\n- resources: [s]\n  providers:\n  - kms: &k {name: a}\n  - <<: *k\n",
     "resources[0].providers[1].name",
     "strict decoding error: unknown field \"resources[0].providers[1].name\"", 6, 14},
    {NULL, NULL, NULL, NULL, 0, 0},
};

static void test_decode(void **state)
{
    const struct dcase *dc;
    int bad = 0;

    for (dc = decode_cases; dc->name; dc++) {
        struct ar_config *c = NULL;
        struct ar_diags d;
        const struct ar_diag *g;

        print_message("case: %s\n", dc->name);
        assert_int_equal(load(dc->text, false, true, &c, &d), -EINVAL);
        assert_null(c);
        g = find(&d, AR_SEV_ERROR, dc->path, dc->detail);
        assert_non_null(g);
        if (dc->line && (g->pos.line != dc->line || g->pos.col != dc->col)) {
            print_message("  MISMATCH %s: pos %d:%d\n", dc->name, g->pos.line, g->pos.col);
            bad++;
        }
        assert_int_equal(d.nerrors, 1);
        ar_diags_free(&d);
    }
    assert_int_equal(bad, 0);
}

static void test_limits(void **state)
{
    struct ar_load_opts o = {.max_bytes = 64};
    struct ar_config *c = NULL;
    struct ar_diags d;
    char *deep;
    size_t i, n = 200;

    ar_diags_init(&d);
    assert_int_equal(ar_config_load_mem("big", HDR "resources: []\n#..........", 90, &o, &c, &d),
                     -EFBIG);
    assert_non_null(find(&d, AR_SEV_ERROR, "",
                         "encryption provider configuration file \"big\" is larger than 64 bytes"));
    ar_diags_free(&d);

    ar_diags_init(&d);
    assert_int_equal(ar_config_load_mem("empty", "", 0, NULL, &c, &d), -EINVAL);
    assert_non_null(
        find(&d, AR_SEV_ERROR, "", "encryption provider configuration file \"empty\" is empty"));
    ar_diags_free(&d);

    deep = malloc(2 * n + 1);
    assert_non_null(deep);
    for (i = 0; i < n; i++) {
        deep[i] = '[';
        deep[2 * n - 1 - i] = ']';
    }
    deep[2 * n] = '\0';
    assert_int_equal(load(deep, false, true, &c, &d), -EINVAL);
    assert_non_null(
        find(&d, AR_SEV_ERROR, "", "error converting YAML to JSON: nesting deeper than 32 levels"));
    ar_diags_free(&d);
    free(deep);

    ar_diags_init(&d);
    assert_int_equal(ar_config_load_file("tests/data/configs/does-not-exist.yaml", NULL, &c, &d),
                     -ENOENT);
    assert_non_null(find(&d, AR_SEV_ERROR, "",
                         "error reading encryption provider configuration file "
                         "\"tests/data/configs/does-not-exist.yaml\": open "
                         "tests/data/configs/does-not-exist.yaml: no such file or directory"));
    ar_diags_free(&d);
}

/* ---- anchors, aliases and merge keys ------------------------------------------------------ */

/* A fresh key of n bytes in base64 (keys are generated at test time). */
static void gen_key(char *out, size_t outlen, size_t n)
{
    uint8_t k[32];

    assert_true(sodium_init() >= 0);
    assert_true(n <= sizeof(k));
    randombytes_buf(k, n);
    sodium_bin2base64(out, outlen, k, n, sodium_base64_VARIANT_ORIGINAL);
    sodium_memzero(k, sizeof(k));
}

static struct ar_config *load_ok(const char *text)
{
    struct ar_config *c = NULL;
    struct ar_diags d;
    int r = load(text, false, true, &c, &d);

    if (r)
        dump(&d);
    assert_int_equal(r, 0);
    assert_int_equal(d.nerrors, 0);
    ar_diags_free(&d);
    return c;
}

/* The anchored text and its written-out twin load to the same config: same rules, same key
 * bytes (each use in its own arena slot), same fingerprint, same rendering without any anchor;
 * the file hash stays the hash of each file's own bytes. */
static void assert_twins(const char *anchored, const char *expanded)
{
    struct ar_config *a = load_ok(anchored), *b = load_ok(expanded);
    uint8_t h[AR_SHA256_LEN];
    char *ra = NULL, *rb = NULL;
    size_t na = 0, nb = 0, i, j, k;

    assert_int_equal(a->nrules, b->nrules);
    for (i = 0; i < a->nrules; i++) {
        assert_int_equal(a->rules[i].nresources, b->rules[i].nresources);
        for (j = 0; j < a->rules[i].nresources; j++)
            assert_string_equal(a->rules[i].resources[j], b->rules[i].resources[j]);
        assert_int_equal(a->rules[i].nproviders, b->rules[i].nproviders);
        for (j = 0; j < a->rules[i].nproviders; j++) {
            const struct ar_provider *pa = &a->rules[i].providers[j],
                                     *pb = &b->rules[i].providers[j];
            assert_int_equal(pa->type, pb->type);
            assert_int_equal(pa->nkeys, pb->nkeys);
            for (k = 0; k < pa->nkeys; k++) {
                assert_string_equal(pa->keys[k].name, pb->keys[k].name);
                assert_int_equal(pa->keys[k].secret_len, pb->keys[k].secret_len);
                assert_memory_equal(pa->keys[k].secret, pb->keys[k].secret, pa->keys[k].secret_len);
            }
        }
    }
    assert_memory_equal(a->fingerprint, b->fingerprint, AR_SHA256_LEN);
    crypto_hash_sha256(h, (const uint8_t *)anchored, strlen(anchored));
    assert_memory_equal(a->file_sha256, h, AR_SHA256_LEN);
    assert_memory_not_equal(a->file_sha256, b->file_sha256, AR_SHA256_LEN);
    assert_int_equal(ar_config_render(a, false, &ra, &na), 0);
    assert_int_equal(ar_config_render(b, false, &rb, &nb), 0);
    assert_int_equal(na, nb);
    assert_string_equal(ra, rb);
    assert_null(strchr(ra, '&'));
    assert_null(strstr(ra, "<<"));
    ar_config_render_free(ra, na);
    ar_config_render_free(rb, nb);
    ar_config_unref(a);
    ar_config_unref(b);
}

static void test_anchors(void **state)
{
    char k1[64], k2[64], anchored[2048], expanded[2048];
    struct ar_config *c;

    gen_key(k1, sizeof(k1), 32);
    gen_key(k2, sizeof(k2), 16);

    /* a provider list used by two rules */
    snprintf(anchored, sizeof(anchored),
             HDR "resources:\n"
                 "  - resources: [secrets]\n"
                 "    providers: &p\n"
                 "      - aescbc:\n"
                 "          keys:\n"
                 "            - name: k1\n"
                 "              secret: %s\n"
                 "      - identity: {}\n"
                 "  - resources: [configmaps]\n"
                 "    providers: *p\n",
             k1);
    snprintf(expanded, sizeof(expanded),
             HDR "resources:\n"
                 "  - resources: [secrets]\n"
                 "    providers:\n"
                 "      - aescbc:\n"
                 "          keys:\n"
                 "            - name: k1\n"
                 "              secret: %s\n"
                 "      - identity: {}\n"
                 "  - resources: [configmaps]\n"
                 "    providers:\n"
                 "      - aescbc:\n"
                 "          keys:\n"
                 "            - name: k1\n"
                 "              secret: %s\n"
                 "      - identity: {}\n",
             k1, k1);
    assert_twins(anchored, expanded);
    /* each use of the aliased key has its own slot in the arena, as a written-out key has */
    c = load_ok(anchored);
    assert_ptr_not_equal(c->rules[0].providers[0].keys[0].secret,
                         c->rules[1].providers[0].keys[0].secret);
    assert_int_equal(c->rules[1].providers[0].keys[0].secret_len, 32);
    ar_config_unref(c);

    /* a key, a secret scalar, a resource list; a merge key that overrides nothing */
    snprintf(anchored, sizeof(anchored),
             HDR "resources:\n"
                 "  - resources: &r [secrets, configmaps]\n"
                 "    providers:\n"
                 "      - aescbc: &cbc\n"
                 "          keys:\n"
                 "            - &key1 {name: k1, secret: &s1 %s}\n"
                 "            - {name: k2, secret: %s}\n"
                 "            - {name: k3, secret: *s1}\n"
                 "      - aesgcm: {<<: *cbc}\n"
                 "      - secretbox:\n"
                 "          keys: [*key1]\n"
                 "  - resources: *r\n"
                 "    providers:\n"
                 "      - kms: &kms {apiVersion: v2, endpoint: \"unix:///a.sock\", name: a}\n"
                 "      - !!merge <<: {identity: {}}\n",
             k1, k2);
    snprintf(expanded, sizeof(expanded),
             HDR "resources:\n"
                 "  - resources: [secrets, configmaps]\n"
                 "    providers:\n"
                 "      - aescbc:\n"
                 "          keys:\n"
                 "            - {name: k1, secret: %s}\n"
                 "            - {name: k2, secret: %s}\n"
                 "            - {name: k3, secret: %s}\n"
                 "      - aesgcm:\n"
                 "          keys:\n"
                 "            - {name: k1, secret: %s}\n"
                 "            - {name: k2, secret: %s}\n"
                 "            - {name: k3, secret: %s}\n"
                 "      - secretbox:\n"
                 "          keys: [{name: k1, secret: %s}]\n"
                 "  - resources: [secrets, configmaps]\n"
                 "    providers:\n"
                 "      - kms: {apiVersion: v2, endpoint: \"unix:///a.sock\", name: a}\n"
                 "      - identity: {}\n",
             k1, k2, k1, k1, k2, k1, k1);
    assert_twins(anchored, expanded);
}

/* The anchored fixture and its written-out twin: one fingerprint, one rendering. */
static void test_anchor_files(void **state)
{
    struct ar_config *a = NULL, *b = NULL;
    char *ra = NULL, *rb = NULL;
    size_t na = 0, nb = 0;

    assert_int_equal(ar_config_load_file("tests/data/configs/anchors.yaml", NULL, &a, NULL), 0);
    assert_int_equal(
        ar_config_load_file("tests/data/configs/anchors-expanded.yaml", NULL, &b, NULL), 0);
    assert_int_equal(a->nrules, 4);
    assert_memory_equal(a->fingerprint, b->fingerprint, AR_SHA256_LEN);
    assert_memory_not_equal(a->file_sha256, b->file_sha256, AR_SHA256_LEN);
    assert_int_equal(ar_config_render(a, false, &ra, &na), 0);
    assert_int_equal(ar_config_render(b, false, &rb, &nb), 0);
    assert_string_equal(ra, rb);
    ar_config_render_free(ra, na);
    ar_config_render_free(rb, nb);
    ar_config_unref(a);
    ar_config_unref(b);
}

/* A value reached through an alias is reported at each place of use (kube-apiserver's path),
 * at the line and column where it is written; no key text in any of it. */
static void test_alias_error_paths(void **state)
{
    static const char *const secrets[] = {"c2hvcnQ=", "short", NULL};
    struct ar_config *c = NULL;
    struct ar_diags d;
    const struct ar_diag *g;

    assert_int_equal(load(HDR "resources:\n"
                              "  - resources: [secrets]\n"
                              "    providers:\n"
                              "      - aescbc:\n"
                              "          keys:\n"
                              "            - &k {name: a, secret: c2hvcnQ=}\n"
                              "  - resources: [configmaps]\n"
                              "    providers:\n"
                              "      - aesgcm:\n"
                              "          keys: [*k]\n",
                          false, true, &c, &d),
                     -EINVAL);
    assert_null(c);
    assert_int_equal(d.nerrors, 2);
    g = find(&d, AR_SEV_ERROR, "resources[0].providers[0].aescbc.keys[0].secret",
             "Invalid value: \"REDACTED\": secret is not of the expected length, got 5, expected "
             "one of [16 24 32]");
    assert_non_null(g);
    assert_int_equal(g->pos.line, 8);
    assert_int_equal(g->pos.col, 36);
    g = find(&d, AR_SEV_ERROR, "resources[1].providers[0].aesgcm.keys[0].secret",
             "Invalid value: \"REDACTED\": secret is not of the expected length, got 5, expected "
             "one of [16 24 32]");
    assert_non_null(g);
    assert_int_equal(g->pos.line, 8);
    assert_int_equal(g->pos.col, 36);
    assert_no_secret(&d, secrets);
    ar_diags_free(&d);
}

static long maxrss_kb(void)
{
    struct rusage ru;

    assert_int_equal(getrusage(RUSAGE_SELF, &ru), 0);
    return ru.ru_maxrss;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* "a: &a [s, ...m]" then "b: [*a, ...n]": goyaml.v2 counts 6 + m + n * (m + 2) decode operations
 * of which n * (m + 1) come from aliases. */
static char *alias_doc(size_t m, size_t n)
{
    size_t cap = 64 + 3 * m + 4 * n, i;
    char *s = malloc(cap), *p = s;

    assert_non_null(s);
    p += sprintf(p, "a: &a [");
    for (i = 0; i < m; i++)
        p += sprintf(p, "%ss", i ? "," : "");
    p += sprintf(p, "]\nb: [");
    for (i = 0; i < n; i++)
        p += sprintf(p, "%s*a", i ? "," : "");
    sprintf(p, "]\n");
    return s;
}

static void test_alias_bounds(void **state)
{
    struct ar_load_opts o = {.max_bytes = 4096};
    struct ar_config *c = NULL;
    struct ar_diags d;
    char doc[4096], *p, *s;
    long rss0;
    double t0, dt;
    size_t i;

    /* billion laughs (CVE-2019-11253): 9^9 strings from 9 lines, under a known field */
    p = doc + sprintf(doc, HDR "resources:\n- resources: &a [s,s,s,s,s,s,s,s,s]\n"
                               "  providers: [{identity: {}}]\n");
    for (i = 1; i < 9; i++)
        p += sprintf(p,
                     "- resources: &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]\n"
                     "  providers: [{identity: {}}]\n",
                     (char)('a' + i), (char)('a' + i - 1), (char)('a' + i - 1), (char)('a' + i - 1),
                     (char)('a' + i - 1), (char)('a' + i - 1), (char)('a' + i - 1),
                     (char)('a' + i - 1), (char)('a' + i - 1), (char)('a' + i - 1));
    rss0 = maxrss_kb();
    t0 = now_s();
    assert_int_equal(load(doc, false, true, &c, &d), -EINVAL);
    dt = now_s() - t0;
    assert_null(c);
    assert_int_equal(d.nerrors, 1);
    assert_non_null(find(&d, AR_SEV_ERROR, "",
                         "error converting YAML to JSON: yaml: document contains excessive "
                         "aliasing"));
    ar_diags_free(&d);
    print_message("billion laughs refused in %.3f ms, max RSS grew by %ld KiB\n", dt * 1e3,
                  maxrss_kb() - rss0);
    assert_true(dt < 1.0);
    assert_true(maxrss_kb() - rss0 < 16 * 1024);

    /* goyaml.v2's bound to the operation: 199 aliases of a 200-string list pass the ratio
     * (39999/40404 = 0.98998), 200 of them do not (40200/40606 = 0.990001) */
    s = alias_doc(200, 199);
    assert_int_equal(load(s, false, true, &c, &d), -EINVAL);
    assert_non_null(find(&d, AR_SEV_ERROR, "",
                         "Object 'Kind' is missing in '<the file content is not repeated>'"));
    ar_diags_free(&d);
    free(s);
    s = alias_doc(200, 200);
    assert_int_equal(load(s, false, true, &c, &d), -EINVAL);
    assert_non_null(find(&d, AR_SEV_ERROR, "",
                         "error converting YAML to JSON: yaml: document contains excessive "
                         "aliasing"));
    ar_diags_free(&d);
    free(s);
    /* no more than 100 aliased operations is never excessive */
    s = alias_doc(99, 1);
    assert_int_equal(load(s, false, true, &c, &d), -EINVAL);
    assert_non_null(find(&d, AR_SEV_ERROR, "",
                         "Object 'Kind' is missing in '<the file content is not repeated>'"));
    ar_diags_free(&d);
    free(s);

    /* within goyaml's ratio but larger than a file may be once expanded: 90 * 3001 nodes */
    s = alias_doc(3000, 90);
    assert_int_equal(load(s, false, true, &c, &d), -EINVAL);
    assert_non_null(find(&d, AR_SEV_ERROR, "",
                         "error converting YAML to JSON: more than 262144 YAML nodes once aliases "
                         "are expanded"));
    ar_diags_free(&d);
    free(s);
    /* scalar bytes once expanded are bounded as the file is (max_bytes) */
    p = doc + sprintf(doc, "a: &a \"");
    memset(p, 'x', 300);
    p += 300;
    p += sprintf(p, "\"\nb: [");
    for (i = 0; i < 14; i++)
        p += sprintf(p, "*a,");
    sprintf(p, "*a]\n");
    ar_diags_init(&d);
    assert_int_equal(ar_config_load_mem("t.yaml", doc, strlen(doc), &o, &c, &d), -EINVAL);
    assert_non_null(find(&d, AR_SEV_ERROR, "",
                         "error converting YAML to JSON: more than 4096 bytes of scalars once "
                         "aliases are expanded"));
    ar_diags_free(&d);

    /* merge keys nested deeper than the nesting bound */
    p = doc + sprintf(doc, "m0: &m0 {x: 1}\n");
    for (i = 1; i <= 40; i++)
        p += sprintf(p, "m%zu: &m%zu {<<: *m%zu}\n", i, i, i - 1);
    assert_int_equal(load(doc, false, true, &c, &d), -EINVAL);
    assert_non_null(find(&d, AR_SEV_ERROR, "",
                         "error converting YAML to JSON: merge keys nested deeper than 32 levels"));
    ar_diags_free(&d);
}

/* ---- fingerprints -------------------------------------------------------------------------- */

static void fp_of(const char *text, uint8_t fp[AR_SHA256_LEN])
{
    struct ar_config *c = NULL;
    struct ar_diags d;
    int r = load(text, false, true, &c, &d);

    if (r)
        dump(&d);
    assert_int_equal(r, 0);
    memcpy(fp, c->fingerprint, AR_SHA256_LEN);
    ar_config_unref(c);
    ar_diags_free(&d);
}

static void test_fingerprint(void **state)
{
    uint8_t a[32], b[32];
    static const char *const same[] = {
        HDR
        "resources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: "
        "k1\n        secret: " K16 "\n  - kms:\n      name: p\n      endpoint: unix:///p.sock\n"
        "  - identity: {}\n",
        /* JSON */
        "{\"apiVersion\": \"apiserver.config.k8s.io/v1\", \"kind\": \"EncryptionConfiguration\", "
        "\"resources\": [{\"resources\": [\"secrets\"], \"providers\": [{\"aescbc\": {\"keys\": "
        "[{\"name\": \"k1\", \"secret\": \"" K16
        "\"}]}}, {\"kms\": {\"name\": \"p\", \"endpoint\": "
        "\"unix:///p.sock\"}}, {\"identity\": {}}]}]}",
        /* reordered keys, comments, legacy kind, explicit defaults, other duration spelling */
        "# a comment\nkind: EncryptionConfig\nresources:\n- providers:\n  - aescbc:\n      keys:\n"
        "      - secret: \"" K16 "\"   # the key\n        name: 'k1'\n  - kms:\n      timeout: "
        "3000ms\n      cachesize: 1000\n      apiVersion: v1\n      endpoint: \"unix:///p.sock\"\n"
        "      name: p\n  - identity: {}\n  resources:\n  - secrets\napiVersion: v1\n",
        NULL,
    };
    static const char *const differ[] = {
        /* another key secret (last byte) */
        HDR
        "resources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: "
        "k1\n        secret: c2VjcmV0IGlzIHNlY3VyZg==\n  - kms:\n      name: p\n      endpoint: "
        "unix:///p.sock\n  - identity: {}\n",
        /* another key name */
        HDR
        "resources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: "
        "k2\n        secret: " K16 "\n  - kms:\n      name: p\n      endpoint: unix:///p.sock\n"
        "  - identity: {}\n",
        /* aesgcm instead of aescbc */
        HDR
        "resources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - name: "
        "k1\n        secret: " K16 "\n  - kms:\n      name: p\n      endpoint: unix:///p.sock\n"
        "  - identity: {}\n",
        /* provider order */
        HDR "resources:\n- resources: [secrets]\n  providers:\n  - kms:\n      name: p\n      "
            "endpoint: "
            "unix:///p.sock\n  - aescbc:\n      keys:\n      - name: k1\n        secret: " K16
            "\n  - identity: {}\n",
        /* timeout */
        HDR
        "resources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: "
        "k1\n        secret: " K16 "\n  - kms:\n      name: p\n      endpoint: unix:///p.sock\n"
        "      timeout: 4s\n  - identity: {}\n",
        /* resource */
        HDR "resources:\n- resources: [configmaps]\n  providers:\n  - aescbc:\n      keys:\n      "
            "- name: "
            "k1\n        secret: " K16 "\n  - kms:\n      name: p\n      endpoint: unix:///p.sock\n"
            "  - identity: {}\n",
        NULL,
    };
    size_t i;

    fp_of(same[0], a);
    for (i = 1; same[i]; i++) {
        fp_of(same[i], b);
        assert_memory_equal(a, b, 32);
    }
    for (i = 0; differ[i]; i++) {
        fp_of(differ[i], b);
        assert_memory_not_equal(a, b, 32);
    }
}

static void test_render(void **state)
{
    struct ar_config *c = NULL;
    char *out = NULL, hex[17];
    size_t n = 0;

    assert_int_equal(ar_config_load_file("tests/data/configs/special-names.yaml", NULL, &c, NULL),
                     0);
    assert_int_equal(ar_config_render(c, false, &out, &n), 0);
    assert_string_equal(out, "apiVersion: apiserver.config.k8s.io/v1\n"
                             "kind: EncryptionConfiguration\n"
                             "resources:\n"
                             "  - resources:\n"
                             "      - \"secrets\"\n"
                             "      - \"*.apps\"\n"
                             "    providers:\n"
                             "      - aescbc:\n"
                             "          keys:\n"
                             "            - name: \"a:b # c\"\n"
                             "              secret: \"" K16 "\"\n"
                             "            - name: \"yes\"\n"
                             "              secret: \"" K16 "\"\n"
                             "            - name: \"q\\\"\\\\\\x01\\x09\xc3\xa9\"\n"
                             "              secret: \"" K16 "\"\n"
                             "      - kms:\n"
                             "          apiVersion: v1\n"
                             "          name: \"v1:name\"\n"
                             "          endpoint: \"unix:///tmp/a b.sock\"\n"
                             "          cachesize: -1\n"
                             "          timeout: \"1m30.5s\"\n"
                             "      - kms:\n"
                             "          apiVersion: v2\n"
                             "          name: \"v2\"\n"
                             "          endpoint: \"unix:///tmp/x.sock\"\n"
                             "          timeout: \"1\xc2\xb5s\"\n"
                             "      - identity: {}\n"
                             "  - resources:\n"
                             "      - \"*.*\"\n"
                             "    providers:\n"
                             "      - identity: {}\n");
    ar_config_render_free(out, n);
    assert_int_equal(ar_config_render(c, true, &out, &n), 0);
    assert_null(strstr(out, K16));
    ar_hex(c->rules[0].providers[0].keys[0].fp, 8, hex);
    assert_non_null(strstr(out, hex));
    assert_non_null(strstr(out, "secret: \"REDACTED:66337256703eecc9\"\n"));
    ar_config_render_free(out, n);
    ar_config_unref(c);
}

/* ---- no key text in any diagnostic -------------------------------------------------------- */

static void test_no_secret_in_diags(void **state)
{
    static const char *const secrets[] = {"c2VjcmV0IGlz", "secret is secure", "aGVsbG8",
                                          "hello",        "bm90IGEga2V5IQ",   NULL};
    static const char *const texts[] = {
        /* wrong lengths, bad base64, unknown fields next to keys, type errors on secrets */
        HDR "resources:\n- resources: [s]\n  providers:\n  - aescbc: {keys: [{name: a, secret: "
            "aGVsbG8=}, {name: b, secret: \"bm90IGEga2V5IQ==x\"}]}\n"
            "  - secretbox: {keys: [{name: c, secret: " K16 "}]}\n",
        HDR "resources:\n- resources: [s]\n  providers:\n  - aescbc: {keys: [{name: a, secret: " K16
            ", sekret: " K16 "}]}\n",
        HDR
        "resources:\n- resources: [s]\n  providers:\n  - aescbc: {keys: [{name: a, secret: [" K16
        "]}]}\n",
        HDR "resources:\n- resources: [s]\n  providers:\n  - aescbc: {keys: [{name: a, secret: " K16
            ", secret: " K16 "}]}\n",
        /* a syntax error right after a key */
        HDR "resources:\n- resources: [s]\n  providers:\n  - aescbc: {keys: [{name: a, secret: " K16
            "]]\n",
        /* "secret:KEY" (no space) and "secret KEY" in flow style are field names: the
         * unknown-field error must not quote them */
        HDR "resources:\n- resources: [s]\n  providers:\n  - aescbc: {keys: [{name: a, secret:" K16
            "}]}\n",
        HDR "resources:\n- resources: [s]\n  providers:\n  - aescbc: {keys: [{name: a, secret " K16
            "}]}\n",
        HDR "resources:\n- resources: [s]\n  providers:\n  - aescbc: {keys: [{name: a}], " K16
            ": 1}\n",
        /* no kind: Go would print the whole file here */
        "apiVersion: v1\nresources:\n- resources: [s]\n  providers:\n  - aescbc: {keys: [{name: a, "
        "secret: " K16 "}]}\n",
        NULL,
    };
    size_t i;

    for (i = 0; texts[i]; i++) {
        struct ar_config *c = NULL;
        struct ar_diags d;

        assert_int_equal(load(texts[i], false, true, &c, &d), -EINVAL);
        assert_true(d.nerrors >= 1);
        assert_no_secret(&d, secrets);
        ar_diags_free(&d);
    }
}

/* ---- KMS endpoints: Go's url.Parse (Go 1.22/1.23, as in Kubernetes 1.31/1.32) ------------ */

static void test_endpoints(void **state)
{
    static const struct {
        const char *yaml; /* the endpoint as a YAML double-quoted scalar body */
        const char *err;  /* NULL: accepted; else the error after "Invalid value: <q>: " */
    } cases[] = {
        {"unix://", NULL},
        {"unix:///", NULL},
        {"unix:@abstract", NULL},
        {"unix://@abstract", NULL},
        {"unix:/tmp/k.sock", NULL},
        {"unix:?x", NULL},
        {"UnIx:///x", NULL},
        {"unix://h%c3%a9/x", NULL},  /* escapes of non-ASCII bytes are fine in a host */
        {"unix://\xc3\xbc/x", NULL}, /* so are raw non-ASCII bytes */
        {"unix://[::1]:80/x", NULL},
        {"unix://[fe80::1%25en0]/x", NULL}, /* IPv6 zone */
        {"unix://[fe80::1%25%41]/x", NULL},
        {"unix:///x#\\t", NULL}, /* control bytes after '#' are not checked */
        {"unix:///my socket", NULL},
        {"unix://u:p@h/x", NULL},
        {"://x", "invalid endpoint for kms provider, error: parse \"://x\": missing protocol "
                 "scheme"},
        {"1unix:///x", "invalid endpoint for kms provider, error: parse \"1unix:///x\": first "
                       "path segment in URL cannot contain colon"},
        {"unix:///x\\t", "invalid endpoint for kms provider, error: parse \"unix:///x\\t\": "
                         "net/url: invalid control character in URL"},
        {"unix://a b/x", "invalid endpoint for kms provider, error: parse \"unix://a b/x\": "
                         "invalid character \" \" in host name"},
        {"unix://h{/x", "invalid endpoint for kms provider, error: parse \"unix://h{/x\": invalid "
                        "character \"{\" in host name"},
        {"unix://us er@h/x", "invalid endpoint for kms provider, error: parse \"unix://us "
                             "er@h/x\": net/url: invalid userinfo"},
        {"unix://u:p%zz@h/x", "invalid endpoint for kms provider, error: parse "
                              "\"unix://u:p%zz@h/x\": invalid URL escape \"%zz\""},
        {"unix://us er@h b/x", "invalid endpoint for kms provider, error: parse \"unix://us "
                               "er@h b/x\": invalid character \" \" in host name"},
        {"unix://h%41/x", "invalid endpoint for kms provider, error: parse \"unix://h%41/x\": "
                          "invalid URL escape \"%41\""},
        {"unix://[fe80::1%25%2f]/x", "invalid endpoint for kms provider, error: parse "
                                     "\"unix://[fe80::1%25%2f]/x\": invalid URL escape \"%2f\""},
        {"unix://[::1/x", "invalid endpoint for kms provider, error: parse \"unix://[::1/x\": "
                          "missing ']' in host"},
        {"unix://[::1]x/", "invalid endpoint for kms provider, error: parse \"unix://[::1]x/\": "
                           "invalid port \"x\" after host"},
        {"unix://a:b#frag", "invalid endpoint for kms provider, error: parse \"unix://a:b\": "
                            "invalid port \":b\" after host"}, /* the URL without '#...' */
        {"unix:foo#%zz", "invalid endpoint for kms provider, error: parse \"unix:foo#%zz\": "
                         "invalid URL escape \"%zz\""}, /* opaque, then the fragment */
        {"unix:///x#%zz", "invalid endpoint for kms provider, error: parse \"unix:///x#%zz\": "
                          "invalid URL escape \"%zz\""},
        {"unix:///x/%z", "invalid endpoint for kms provider, error: parse \"unix:///x/%z\": "
                         "invalid URL escape \"%z\""},
        {"unix:///x/%\\\"a", "invalid endpoint for kms provider, error: parse "
                             "\"unix:///x/%\\\"a\": invalid URL escape \"%\\\"a\""},
        {"tcp://127.0.0.1:9000", "unsupported scheme \"tcp\" for KMS provider, only unix is "
                                 "supported"},
        {"*", "unsupported scheme \"\" for KMS provider, only unix is supported"},
    };
    size_t i;
    int bad = 0;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char y[512];
        struct ar_config *c = NULL;
        struct ar_diags d;
        int r;

        snprintf(y, sizeof(y),
                 HDR "resources:\n- resources: [secrets]\n  providers:\n  - kms: {apiVersion: v2, "
                     "name: k, endpoint: \"%s\"}\n",
                 cases[i].yaml);
        r = load(y, false, true, &c, &d);
        if (!cases[i].err) {
            if (r != 0) {
                print_message("endpoint %s: refused\n", cases[i].yaml);
                dump(&d);
                bad++;
            }
        } else if (r != -EINVAL || d.nerrors != 1 ||
                   strcmp(d.v[0].path, "resources[0].providers[0].kms.endpoint") != 0 ||
                   !strstr(d.v[0].detail, cases[i].err) ||
                   strlen(strstr(d.v[0].detail, cases[i].err)) != strlen(cases[i].err)) {
            print_message("endpoint %s: wanted %s\n", cases[i].yaml, cases[i].err);
            dump(&d);
            bad++;
        }
        ar_config_unref(c);
        ar_diags_free(&d);
    }
    assert_int_equal(bad, 0);
}

/* Long names and endpoints are printed whole, not cut at some buffer size. */
static void test_long_texts(void **state)
{
    size_t n = 3000, i;
    char *name = malloc(n + 1), *y = malloc(2 * n + 512), *want = malloc(2 * n + 512);
    struct ar_config *c = NULL;
    struct ar_diags d;

    assert_non_null(name);
    assert_non_null(y);
    assert_non_null(want);
    for (i = 0; i < n; i++)
        name[i] = (char)('a' + i % 26);
    name[n] = '\0';
    sprintf(y,
            HDR "resources:\n- resources: [\"*.example.com\"]\n  providers: [{identity: {}}]\n"
                "- resources: [%s.example.com]\n  providers: [{identity: {}}]\n",
            name);
    assert_int_equal(load(y, false, true, &c, &d), -EINVAL);
    sprintf(want, "resource \"%s.example.com\" is masked by earlier rule \"*.example.com\"", name);
    assert_non_null(find(&d, AR_SEV_ERROR, "resources[1].resources[0]", want));
    ar_diags_free(&d);

    sprintf(y,
            HDR "resources:\n- resources: [secrets]\n  providers:\n  - kms: {apiVersion: v2, "
                "name: k, endpoint: \"unix://h:p/%s\"}\n",
            name);
    assert_int_equal(load(y, false, true, &c, &d), -EINVAL);
    sprintf(want,
            "Invalid value: \"unix://h:p/%s\": invalid endpoint for kms provider, error: parse "
            "\"unix://h:p/%s\": invalid port \":p\" after host",
            name, name);
    assert_non_null(find(&d, AR_SEV_ERROR, "resources[0].providers[0].kms.endpoint", want));
    ar_diags_free(&d);
    free(name);
    free(y);
    free(want);
}

/* ---- base64, durations, diag format --------------------------------------------------------- */

static void test_b64(void **state)
{
    static const struct {
        const char *in;
        int rc;
        const char *out;
    } cases[] = {
        {"aGVsbG8=", 0, "hello"},
        {"aGVsbA==", 0, "hell"},
        {"aGVs", 0, "hel"},
        {"", 0, ""},
        {"aGVsbG9=", 0, "hello"},        /* non-canonical trailing bits: Go accepts */
        {"aGVsbB==", 0, "hell"},         /* same with two pads */
        {"aGVs\nbG8=", 0, "hello"},      /* \n skipped */
        {"aGVsbG8=\r\n", 0, "hello"},    /* trailing CRLF skipped */
        {"\naG\rVsb\nA=\n=", 0, "hell"}, /* even between the pads */
        {"aGVsbG8", -EINVAL, NULL},      /* padding required */
        {"aGVs bG8=", -EINVAL, NULL},    /* space */
        {" aGVsbG8=", -EINVAL, NULL},
        {"aGVsbG8=\t", -EINVAL, NULL},
        {"aGVsbG8==", -EINVAL, NULL},    /* extra pad */
        {"aGVsbA==aGVs", -EINVAL, NULL}, /* data after pad */
        {"aGVs*G8=", -EINVAL, NULL},
        {"ab-_", -EINVAL, NULL}, /* URL alphabet */
        {"a===", -EINVAL, NULL},
        {"====", -EINVAL, NULL},
        {"aGV=bG8=", -EINVAL, NULL}, /* pad inside */
        {"a", -EINVAL, NULL},
        {"\n", 0, ""},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t buf[64];
        size_t n = 99;
        int rc = ar_b64_decode(cases[i].in, strlen(cases[i].in), buf, &n);

        print_message("b64 case %zu\n", i);
        assert_true(ar_b64_decoded_max(strlen(cases[i].in)) <= sizeof(buf));
        assert_int_equal(rc, cases[i].rc);
        if (rc == 0) {
            assert_int_equal(n, strlen(cases[i].out));
            assert_memory_equal(buf, cases[i].out, n);
        }
    }
    {
        char enc[16];
        ar_b64_encode((const uint8_t *)"hello", 5, enc);
        assert_string_equal(enc, "aGVsbG8=");
        ar_b64_encode((const uint8_t *)"", 0, enc);
        assert_string_equal(enc, "");
    }
}

static void test_duration(void **state)
{
    static const struct {
        const char *in;
        int64_t ns;
        const char *err;
        const char *str; /* Duration.String() of ns */
    } cases[] = {
        {"3s", 3000000000LL, NULL, "3s"},
        {"1m30s", 90000000000LL, NULL, "1m30s"},
        {"500ms", 500000000LL, NULL, "500ms"},
        {"1.5h", 5400000000000LL, NULL, "1h30m0s"},
        {"0", 0, NULL, "0s"},
        {"-0", 0, NULL, "0s"},
        {"+5m", 300000000000LL, NULL, "5m0s"},
        {"-1.5s", -1500000000LL, NULL, "-1.5s"},
        {"1h2m3s4ms5us6ns", 3723004005006LL, NULL, "1h2m3.004005006s"},
        {"1\xc2\xb5s", 1000LL, NULL, "1\xc2\xb5s"},
        {"1\xce\xbcs", 1000LL, NULL, "1\xc2\xb5s"},
        {".5s", 500000000LL, NULL, "500ms"},
        {"1.s", 1000000000LL, NULL, "1s"},
        {"7ns", 7, NULL, "7ns"},
        {"2562047h47m16.854775807s", INT64_MAX, NULL, "2562047h47m16.854775807s"},
        {"", 0, "time: invalid duration \"\"", NULL},
        {"1", 0, "time: missing unit in duration \"1\"", NULL},
        {"3x", 0, "time: unknown unit \"x\" in duration \"3x\"", NULL},
        {"3 s", 0, "time: unknown unit \" s\" in duration \"3 s\"", NULL},
        {"s", 0, "time: invalid duration \"s\"", NULL},
        {".s", 0, "time: invalid duration \".s\"", NULL},
        {"-", 0, "time: invalid duration \"-\"", NULL},
        {"9223372036854775808ns", 0, "time: invalid duration \"9223372036854775808ns\"", NULL},
        {"3000000h", 0, "time: invalid duration \"3000000h\"", NULL},
        {"1\xe2s", 0, "time: unknown unit \"\\xe2s\" in duration \"1\\xe2s\"", NULL},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[256] = "", s[64];
        int64_t ns = 42;
        int rc = ar_parse_go_duration(cases[i].in, &ns, err, sizeof(err));

        print_message("duration case %s\n", cases[i].in);
        if (cases[i].err) {
            assert_int_equal(rc, -EINVAL);
            assert_string_equal(err, cases[i].err);
            continue;
        }
        assert_int_equal(rc, 0);
        assert_int_equal(ns, cases[i].ns);
        ar_format_go_duration(ns, s, sizeof(s));
        assert_string_equal(s, cases[i].str);
    }
}

static void test_diag_format(void **state)
{
    struct ar_diags d;
    struct ar_pos p = {3, 7}, p0 = {0, 0};
    char buf[256];
    int n;

    ar_diags_init(&d);
    assert_int_equal(
        ar_diags_add(&d, AR_SEV_ERROR, "f.yaml", p, "resources", "Required value: %s", "x"), 0);
    assert_int_equal(ar_diags_add(&d, AR_SEV_WARNING, "f.yaml", p0, "", "w"), 0);
    assert_int_equal(d.n, 2);
    assert_int_equal(d.nerrors, 1);
    n = ar_diag_format(&d.v[0], buf, sizeof(buf));
    assert_string_equal(buf, "f.yaml:3:7: resources: Required value: x");
    assert_int_equal(n, (int)strlen(buf));
    ar_diag_format(&d.v[1], buf, sizeof(buf));
    assert_string_equal(buf, "f.yaml:0:0: warning: w");
    n = ar_diag_format(&d.v[0], buf, 4);
    assert_string_equal(buf, "f.y");
    assert_int_equal(n, 40);
    ar_diags_free(&d);
    assert_int_equal(d.n, 0);
    assert_string_equal(ar_ptype_name(AR_P_SECRETBOX), "secretbox");
    assert_string_equal(ar_ptype_name(AR_P_AESGCM), "aesgcm");
    assert_string_equal(ar_ptype_name(AR_P_IDENTITY), "identity");
}

/* In a child: ar_crypto_init must leave the process non-dumpable with no core files. (Not in
 * this process: LeakSanitizer needs to ptrace it.) */
static void test_crypto_init(void **state)
{
    int st = 0;
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit rl;
        int ok = ar_crypto_init() == 0 && prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0 &&
                 getrlimit(RLIMIT_CORE, &rl) == 0 && rl.rlim_cur == 0 && rl.rlim_max == 0;
        _exit(ok ? 0 : 1);
    }
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

static void test_load_errors(void **state)
{
    struct ar_config *c = (struct ar_config *)1;
    struct ar_diags d;
    struct rlimit rl;

    /* without a diagnostics list the result is the same */
    assert_int_equal(ar_config_load_file(TD "invalid-configs/invalid-typo.yaml", NULL, &c, NULL),
                     -EINVAL);
    assert_null(c);
    assert_int_equal(
        ar_config_load_mem("x", HDR "resources: []\n", strlen(HDR) + 14, NULL, &c, NULL), -EINVAL);
    ar_diags_init(&d);
    assert_int_equal(ar_config_load_file("tests/data/configs", NULL, &c, &d), -EISDIR);
    assert_non_null(find(&d, AR_SEV_ERROR, "",
                         "error reading encryption provider configuration file "
                         "\"tests/data/configs\": read tests/data/configs: is a directory"));
    ar_diags_free(&d);
    /* the key arena is locked when RLIMIT_MEMLOCK allows it */
    assert_int_equal(ar_config_load_file(TD "valid-configs/aes-gcm-first.yaml", NULL, &c, NULL), 0);
    assert_int_equal(getrlimit(RLIMIT_MEMLOCK, &rl), 0);
    if (rl.rlim_cur >= 1024 * 1024)
        assert_true(c->keys_locked);
    ar_config_unref(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_files),
        cmocka_unit_test(test_invalid_files),
        cmocka_unit_test(test_file_hash),
        cmocka_unit_test(test_model),
        cmocka_unit_test(test_rules),
        cmocka_unit_test(test_accepted),
        cmocka_unit_test(test_multiple_errors),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_fingerprint),
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_no_secret_in_diags),
        cmocka_unit_test(test_endpoints),
        cmocka_unit_test(test_long_texts),
        cmocka_unit_test(test_b64),
        cmocka_unit_test(test_duration),
        cmocka_unit_test(test_diag_format),
        cmocka_unit_test(test_crypto_init),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_anchors),
        cmocka_unit_test(test_anchor_files),
        cmocka_unit_test(test_alias_error_paths),
        cmocka_unit_test(test_alias_bounds),
    };

    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
