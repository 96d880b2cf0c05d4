/*
 * bench/bench_chain.c: the provider chain against the raw ciphers it wraps.
 *
 * For aescbc, aesgcm and secretbox (256-bit keys), encrypt and decrypt at 256 B, 4 KiB and
 * 64 KiB: once through ar_chain_write/ar_chain_read (lookup, prefixes, buffer handling), once
 * as a plain loop of the same OpenSSL EVP / libsodium calls (random IV/nonce included for
 * encrypt), in the same run. The machine is shared, so each figure alternates short batches
 * (~100 us) of chain and baseline for FIGURE_SECONDS and keeps the best batch of each: the
 * speed undisturbed by other processes.
 * Output: BENCH name=chain-<p>-<dir>-<size> value=<MB/s> unit=MB/s baseline=<MB/s> ratio=<c/b>,
 * and at 256 B also ...-256-overhead value=<ns per value added by the chain> unit=ns.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sodium.h>

#include "crypto/buf.h"
#include "crypto/chain.h"
#include "crypto/config.h"

#define FIGURE_SECONDS 0.8
#define BATCH_SECONDS  100e-6

static const uint8_t AAD[] = "/registry/secrets/default/bench-secret";
#define AADN (sizeof(AAD) - 1)

enum { P_CBC, P_GCM, P_SB };
static const char *const pnames[] = {"aescbc", "aesgcm", "secretbox"};

struct ctx {
    int p;
    int enc;
    size_t size;
    struct ar_chain *chain;
    const uint8_t *key;
    uint8_t *pt;
    struct ar_buf stored; /* a chain-written value, for decrypt */
    size_t prefix;        /* provider + key prefix length in stored */
    struct ar_buf out;
    uint8_t *raw; /* baseline output */
    EVP_CIPHER_CTX *ectx;
    int fails;
};

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void one_chain(struct ctx *c)
{
    struct ar_result res;
    int r;

    if (c->enc)
        r = ar_chain_write(c->chain, "", "secrets", AAD, AADN, c->pt, c->size, &c->out, &res);
    else
        r = ar_chain_read(c->chain, "", "secrets", AAD, AADN, c->stored.p, c->stored.len, &c->out,
                          &res);
    if (r != 0)
        c->fails++;
}

static void one_raw(struct ctx *c)
{
    const uint8_t *in = c->stored.p + c->prefix;
    size_t inlen = c->stored.len - c->prefix;
    uint8_t *o = c->raw;
    int l = 0, l2 = 0;

    switch (c->p) {
    case P_CBC:
        if (c->enc) {
            RAND_bytes(o, 16);
            if (!EVP_CipherInit_ex2(c->ectx, NULL, c->key, o, 1, NULL) ||
                !EVP_EncryptUpdate(c->ectx, o + 16, &l, c->pt, (int)c->size) ||
                !EVP_EncryptFinal_ex(c->ectx, o + 16 + l, &l2))
                c->fails++;
        } else {
            if (!EVP_CipherInit_ex2(c->ectx, NULL, c->key, in, 0, NULL) ||
                !EVP_DecryptUpdate(c->ectx, o, &l, in + 16, (int)inlen - 16) ||
                !EVP_DecryptFinal_ex(c->ectx, o + l, &l2))
                c->fails++;
        }
        break;
    case P_GCM:
        if (c->enc) {
            RAND_bytes(o, 12);
            if (!EVP_CipherInit_ex2(c->ectx, NULL, c->key, o, 1, NULL) ||
                !EVP_EncryptUpdate(c->ectx, NULL, &l, AAD, (int)AADN) ||
                !EVP_EncryptUpdate(c->ectx, o + 12, &l, c->pt, (int)c->size) ||
                !EVP_EncryptFinal_ex(c->ectx, o + 12 + l, &l2) ||
                !EVP_CIPHER_CTX_ctrl(c->ectx, EVP_CTRL_GCM_GET_TAG, 16, o + 12 + c->size))
                c->fails++;
        } else {
            if (!EVP_CipherInit_ex2(c->ectx, NULL, c->key, in, 0, NULL) ||
                !EVP_DecryptUpdate(c->ectx, NULL, &l, AAD, (int)AADN) ||
                !EVP_DecryptUpdate(c->ectx, o, &l, in + 12, (int)inlen - 28) ||
                !EVP_CIPHER_CTX_ctrl(c->ectx, EVP_CTRL_GCM_SET_TAG, 16,
                                     (void *)(in + inlen - 16)) ||
                EVP_DecryptFinal_ex(c->ectx, o + l, &l2) != 1)
                c->fails++;
        }
        break;
    default:
        if (c->enc) {
            RAND_bytes(o, 24);
            if (crypto_secretbox_easy(o + 24, c->pt, c->size, o, c->key) != 0)
                c->fails++;
        } else {
            if (crypto_secretbox_open_easy(o, in + 24, inlen - 24, in, c->key) != 0)
                c->fails++;
        }
        break;
    }
}

/* seconds per operation of one batch of n */
static double batch(struct ctx *c, void (*fn)(struct ctx *), long n)
{
    double t0 = now();

    for (long i = 0; i < n; i++)
        fn(c);
    return (now() - t0) / (double)n;
}

/* best seconds per operation of chain (bc) and baseline (bb), alternating batches */
static void measure(struct ctx *c, double *bc, double *bb)
{
    double t0 = now(), one = batch(c, one_raw, 100);
    long n = (long)(BATCH_SECONDS / one) + 1;

    *bc = *bb = 1e9;
    while (now() - t0 < FIGURE_SECONDS) {
        double tc = batch(c, one_chain, n), tb = batch(c, one_raw, n);

        if (tc < *bc)
            *bc = tc;
        if (tb < *bb)
            *bb = tb;
    }
}

static struct ar_chain *make_chain(const char *prov, const char *secret)
{
    char y[1024];
    struct ar_diags d;
    struct ar_config *cfg = NULL;
    struct ar_chain *ch = NULL;

    snprintf(y, sizeof(y),
             "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
             "resources:\n- resources: [secrets]\n  providers:\n  - %s:\n      keys:\n"
             "      - name: benchkey\n        secret: %s\n",
             prov, secret);
    ar_diags_init(&d);
    if (ar_config_load_mem("bench.yaml", y, strlen(y), NULL, &cfg, &d) < 0 || d.nerrors ||
        ar_chain_new(cfg, &ch) < 0) {
        fprintf(stderr, "bench_chain: cannot build the %s chain\n", prov);
        exit(1);
    }
    sodium_memzero(y, sizeof(y));
    ar_diags_free(&d);
    ar_config_unref(cfg);
    return ch;
}

int main(void)
{
    static const size_t sizes[] = {256, 4096, 65536};
    int rc = 0;

    if (sodium_init() < 0)
        return 1;
    for (int p = 0; p < 3; p++) {
        char secret[64];
        struct ar_chain *ch;
        const struct ar_config *cfg;
        const EVP_CIPHER *ciph = NULL;

        if (ar_genkey(32, secret, sizeof(secret)) < 0)
            return 1;
        ch = make_chain(pnames[p], secret);
        sodium_memzero(secret, sizeof(secret));
        cfg = ar_chain_config(ch);
        if (p == P_CBC)
            ciph = EVP_aes_256_cbc();
        else if (p == P_GCM)
            ciph = EVP_aes_256_gcm();
        for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
            for (int enc = 1; enc >= 0; enc--) {
                struct ctx c;
                double best_c, best_b;
                struct ar_result res;

                memset(&c, 0, sizeof(c));
                c.p = p;
                c.enc = enc;
                c.size = sizes[s];
                c.chain = ch;
                c.key = cfg->rules[0].providers[0].keys[0].secret;
                c.pt = malloc(c.size);
                c.raw = malloc(c.size + 64);
                c.ectx = EVP_CIPHER_CTX_new();
                if (!c.pt || !c.raw || !c.ectx)
                    return 1;
                randombytes_buf(c.pt, c.size);
                if (ciph && !EVP_CipherInit_ex2(c.ectx, ciph, NULL, NULL, enc, NULL))
                    return 1;
                if (ar_chain_write(ch, "", "secrets", AAD, AADN, c.pt, c.size, &c.stored, &res))
                    return 1;
                c.prefix = strlen("k8s:enc::v1:benchkey:") + strlen(pnames[p]);
                for (int i = 0; i < 5000; i++) { /* warm up both */
                    one_chain(&c);
                    one_raw(&c);
                }
                measure(&c, &best_c, &best_b);
                if (c.fails) {
                    fprintf(stderr, "bench_chain: %d failed operations\n", c.fails);
                    rc = 1;
                }
                printf("BENCH name=chain-%s-%s-%zu value=%.1f unit=MB/s baseline=%.1f "
                       "ratio=%.3f\n",
                       pnames[p], enc ? "encrypt" : "decrypt", c.size,
                       (double)c.size / best_c / 1e6, (double)c.size / best_b / 1e6,
                       best_b / best_c);
                if (c.size == 256)
                    printf("BENCH name=chain-%s-%s-256-overhead value=%.0f unit=ns "
                           "baseline=%.0f ratio=%.3f\n",
                           pnames[p], enc ? "encrypt" : "decrypt", (best_c - best_b) * 1e9,
                           best_b * 1e9, best_c / best_b);
                fflush(stdout);
                EVP_CIPHER_CTX_free(c.ectx);
                ar_buf_free(&c.out);
                ar_buf_free(&c.stored);
                sodium_memzero(c.raw, c.size + 64);
                free(c.raw);
                free(c.pt);
            }
        }
        ar_chain_unref(ch);
    }
    return rc;
}
