/*
 * fuzz/fuzz_verify.c: the verify tally (coord/verify.h) over arbitrary etcd keys and values:
 * the resource mapper, the chain's readers, the KMS v2 parser, the value-prefix parser of keys
 * that name no resource, the name escaping and the bounded tables.
 *
 * Input: records, each u8 key length, key, u16 little-endian value length, value (a short last
 * record takes what is left). One chain, built once, has every provider type with keys
 * generated at start-up. Oracle: every record is counted once; per row the entries plus the
 * undecryptable values add up to the total; names are printable ASCII; the kept undecryptable
 * keys are at most 100 and at most the count.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "coord/verify.h"
#include "crypto/chain.h"
#include "crypto/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static struct ar_chain *chain;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char g1[64], g2[64], g3[64], y[4096];
    struct ar_load_opts lo = {.kmsv1_allowed = true};
    struct ar_diags d;
    struct ar_config *cfg = NULL;

    if (sodium_init() < 0 || ar_genkey(32, g1, sizeof(g1)) || ar_genkey(16, g2, sizeof(g2)) ||
        ar_genkey(32, g3, sizeof(g3)))
        abort();
    snprintf(y, sizeof(y),
             "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
             "resources:\n"
             "- resources: [secrets]\n"
             "  providers:\n"
             "  - aesgcm: {keys: [{name: k2, secret: '%s'}]}\n"
             "  - aescbc: {keys: [{name: key1, secret: '%s'}]}\n"
             "  - secretbox: {keys: [{name: s1, secret: '%s'}]}\n"
             "  - kms: {apiVersion: v2, name: kv2, endpoint: 'unix:///tmp/x.sock'}\n"
             "  - kms: {name: kv1, endpoint: 'unix:///tmp/y.sock'}\n"
             "  - identity: {}\n"
             "- resources: [configmaps]\n"
             "  providers: [{identity: {}}, {aescbc: {keys: [{name: key1, secret: '%s'}]}}]\n"
             "- resources: ['*.example.com']\n"
             "  providers: [{kms: {apiVersion: v2, name: kv3, endpoint: 'unix:///tmp/z.sock'}}]\n",
             g1, g2, g3, g2);
    ar_diags_init(&d);
    if (ar_config_load_mem("fuzz.yaml", y, strlen(y), &lo, &cfg, &d) < 0 || d.nerrors ||
        ar_chain_new(cfg, &chain) < 0) {
        char line[1024];

        for (size_t i = 0; i < d.n; i++) {
            ar_diag_format(&d.v[i], line, sizeof(line));
            fprintf(stderr, "fuzz_verify: %s\n", line);
        }
        fprintf(stderr, "fuzz_verify: cannot build the chain\n");
        abort();
    }
    ar_config_unref(cfg);
    ar_diags_free(&d);
    return 0;
}

static void check_name(const char *s)
{
    for (; *s; s++)
        if (*s < 0x20 || *s > 0x7e)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ar_verify_tally *t;
    struct ar_verify_report *rep;
    uint64_t records = 0, sum = 0;
    size_t o = 0;

    if (ar_verify_tally_new(chain, "/registry", &t) < 0)
        abort();
    while (o < size) {
        size_t kl = data[o++], vl;
        const uint8_t *k, *v;

        if (kl > size - o)
            kl = size - o;
        k = data + o;
        o += kl;
        vl = size - o >= 2 ? (size_t)(data[o] | data[o + 1] << 8) : 0;
        o += size - o >= 2 ? 2 : size - o;
        if (vl > size - o)
            vl = size - o;
        v = data + o;
        o += vl;
        if (ar_verify_tally_add(t, k, kl, v, vl) < 0)
            abort();
        records++;
    }
    rep = ar_verify_tally_finish(t);
    if (rep->objects != records || rep->n_bad > AR_VERIFY_MAX_BAD ||
        rep->n_bad > rep->undecryptable || rep->n_rows > AR_VERIFY_MAX_RESOURCES)
        abort();
    for (size_t i = 0; i < rep->n_rows; i++) {
        const struct ar_verify_row *row = &rep->rows[i];
        uint64_t n = row->undecryptable;

        check_name(row->resource);
        check_name(row->group);
        if (row->n > AR_VERIFY_MAX_ENTRIES || row->stale > row->total)
            abort();
        for (size_t j = 0; j < row->n; j++) {
            check_name(row->v[j].name);
            if (!row->v[j].n)
                abort();
            n += row->v[j].n;
        }
        if (n != row->total || (!row->known && (row->stale || row->undecryptable)))
            abort();
        sum += row->total;
    }
    for (size_t i = 0; i < rep->n_bad; i++) {
        check_name(rep->bad[i].key);
        check_name(rep->bad[i].resource);
        check_name(rep->bad[i].reason);
    }
    if (sum != records)
        abort();
    ar_verify_report_free(rep);
    return 0;
}
