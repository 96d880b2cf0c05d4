/*
 * fuzz/fuzz_read.c: stored values through the provider chain, the KMS v2 parser and the etcd
 * key mapper.
 *
 * Input: byte 0 selects the resource (bits 0-1) and the etcd key used as AAD (bits 2-3); the
 * rest is the stored value. One chain is built once, with every provider type (identity,
 * aescbc, aesgcm, secretbox, KMS v1 and v2): the keys named as in tests/data/kat.json carry
 * the published test-vector secrets, so the seeds decrypt and reach the success path; the
 * others are generated at start-up. Oracle: whatever reads back must re-encrypt and read back
 * to the same bytes; errors must come with a reason.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "crypto/buf.h"
#include "crypto/chain.h"
#include "crypto/config.h"
#include "crypto/kmsv2.h"
#include "crypto/resource.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static struct ar_chain *chain;

static const char *const aads[] = {
    "/registry/secrets/default/mysecret",
    "bamboo",
    "/43da1478-5e9c-4ef3-a92a-2b19d540c8a5/registry/secrets/kms-v2-legacy-data/"
    "dek-source-aes-gcm-key",
    "",
};

static const char *const resources[][2] = {
    {"", "secrets"},
    {"", "configmaps"},
    {"apps", "deployments"},
    {"", "pods"}, /* no rule: the encrypt-check identity */
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char g1[64], g2[64], g3[64], g4[64], y[4096];
    struct ar_load_opts lo = {.kmsv1_allowed = true};
    struct ar_diags d;
    struct ar_config *cfg = NULL;

    if (sodium_init() < 0 || ar_genkey(32, g1, sizeof(g1)) || ar_genkey(24, g2, sizeof(g2)) ||
        ar_genkey(16, g3, sizeof(g3)) || ar_genkey(32, g4, sizeof(g4)))
        abort();
    snprintf(y, sizeof(y),
             "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
             "resources:\n"
             "- resources: [secrets]\n"
             "  providers:\n"
             "  - aesgcm: {keys: [{name: gen, secret: '%s'}, {name: key1, secret: "
             "'c2VjcmV0IGlzIHNlY3VyZQ=='}, {name: k, secret: 'c25vcmxheF9hd2Vzb21lcw=='}]}\n"
             "  - aescbc: {keys: [{name: key1, secret: 'c2VjcmV0IGlzIHNlY3VyZQ=='}, {name: "
             "'key1:x', secret: '%s'}, {name: key1, secret: '%s'}]}\n"
             "  - secretbox: {keys: [{name: key1, secret: "
             "'YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY='}, {name: k, secret: "
             "'AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE='}]}\n"
             "  - kms: {apiVersion: v2, name: kms-provider, endpoint: 'unix:///tmp/x.sock'}\n"
             "  - kms: {name: myplugin, endpoint: 'unix:///tmp/y.sock'}\n"
             "  - identity: {}\n"
             "- resources: [configmaps]\n"
             "  providers: [{identity: {}}, {aescbc: {keys: [{name: key1, secret: '%s'}]}}]\n"
             "- resources: ['*.apps']\n"
             "  providers: [{secretbox: {keys: [{name: s, secret: '%s'}]}}, {aesgcm: {keys: "
             "[{name: key1, secret: 'c2VjcmV0IGlzIHNlY3VyZQ=='}]}}]\n",
             g1, g2, g3, g1, g4);
    ar_diags_init(&d);
    if (ar_config_load_mem("fuzz.yaml", y, strlen(y), &lo, &cfg, &d) < 0 || d.nerrors ||
        ar_chain_new(cfg, &chain) < 0) {
        fprintf(stderr, "fuzz_read: cannot build the chain\n");
        abort();
    }
    sodium_memzero(y, sizeof(y));
    ar_diags_free(&d);
    ar_config_unref(cfg);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct ar_buf out, enc, back;
    struct ar_result res, res2;
    struct ar_kmsv2_info info;
    struct ar_resource rs;
    char err[512];
    const char *g, *r, *aad;
    int rc;

    if (size < 1)
        return 0;
    g = resources[data[0] & 3][0];
    r = resources[data[0] & 3][1];
    aad = aads[(data[0] >> 2) & 3];
    data++;
    size--;

    rc = ar_chain_read(chain, g, r, (const uint8_t *)aad, strlen(aad), data, size, &out, &res);
    if (rc < 0) {
        if (!res.err[0] || out.len != 0)
            abort();
        if (rc != -EBADMSG && rc != -ENOKEY && rc != -ENOPKG)
            abort();
    } else {
        /* write back through the chain and read again: the same plaintext */
        rc = ar_chain_write(chain, g, r, (const uint8_t *)aad, strlen(aad), out.p, out.len, &enc,
                            &res2);
        if (rc == 0 && res2.type == AR_P_IDENTITY && out.len >= 8 &&
            memcmp(out.p, "k8s:enc:", 8) == 0) {
            /* a plaintext that looks encrypted, stored by identity, cannot be read back: the
             * same in kube-apiserver (identity refuses "k8s:enc:" data) */
        } else if (rc == 0) {
            if (ar_chain_read(chain, g, r, (const uint8_t *)aad, strlen(aad), enc.p, enc.len, &back,
                              &res2) != 0 ||
                back.len != out.len || (out.len && memcmp(back.p, out.p, out.len)) || res2.stale)
                abort();
        } else if (rc != -ENOPKG) {
            abort();
        }
    }

    if (ar_kmsv2_parse(data, size, &info, err, sizeof(err)) == 0) {
        if (info.encrypted_data.n == 0 || info.key_id.n == 0 || info.key_id.n > 1024 ||
            info.dek_source_type < 0 || info.dek_source_type > 1)
            abort();
    } else if (!err[0]) {
        abort();
    }
    if (ar_resource_of_key("/registry", (const char *)data, size, &rs) == 0 &&
        (rs.name_off > size || !rs.resource[0]))
        abort();
    return 0;
}
