/*
 * crypto/render.c: deterministic YAML for a loaded config.
 *
 * Every string the user wrote (resources, names, endpoints) is a double-quoted scalar with
 * escapes, so ':' '#' leading '*' or "yes" never change meaning; defaults are explicit. Two
 * passes: the first measures, the second writes into one sodium_malloc'd buffer (it holds key
 * text unless redacted).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "crypto/config.h"
#include "crypto/config_int.h"

struct w {
    char *buf; /* NULL while measuring */
    size_t len;
    crypto_hash_sha256_state *hash; /* hashing instead of writing */
};

static void put(struct w *w, const char *s, size_t n)
{
    if (w->buf)
        memcpy(w->buf + w->len, s, n);
    if (w->hash)
        crypto_hash_sha256_update(w->hash, (const unsigned char *)s, n);
    w->len += n;
}

static void puts_(struct w *w, const char *s)
{
    put(w, s, strlen(s));
}

/* A YAML double-quoted scalar. */
static void putq(struct w *w, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    char esc[8];

    put(w, "\"", 1);
    while (*p) {
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            put(w, esc, 2);
            p++;
        } else if (*p < 0x20 || *p == 0x7f) {
            snprintf(esc, sizeof(esc), "\\x%02x", *p);
            put(w, esc, 4);
            p++;
        } else if (p[0] == 0xc2 && p[1] == 0x85) {
            put(w, "\\N", 2); /* U+0085 would be folded as a line break */
            p += 2;
        } else if (p[0] == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9)) {
            put(w, p[2] == 0xa8 ? "\\L" : "\\P", 2);
            p += 3;
        } else if (p[0] == 0xef && p[1] == 0xbb && p[2] == 0xbf) {
            put(w, "\\uFEFF", 6);
            p += 3;
        } else {
            put(w, (const char *)p, 1);
            p++;
        }
    }
    put(w, "\"", 1);
}

static void put_secret(struct w *w, const struct ar_key *k, bool redact)
{
    if (redact) {
        char hex[2 * sizeof(k->fp) + 1];
        ar_hex(k->fp, sizeof(k->fp), hex);
        puts_(w, "\"REDACTED:");
        puts_(w, hex);
        puts_(w, "\"");
        return;
    }
    put(w, "\"", 1);
    if (w->buf)
        ar_b64_encode(k->secret, k->secret_len, w->buf + w->len);
    if (w->hash) { /* the key text, in a wiped stack buffer (44 bytes for 32-byte keys) */
        char t[4 * ((64 + 2) / 3) + 1];
        if (k->secret_len <= 64) {
            ar_b64_encode(k->secret, k->secret_len, t);
            crypto_hash_sha256_update(w->hash, (const unsigned char *)t, strlen(t));
            sodium_memzero(t, sizeof(t));
        }
    }
    w->len += 4 * ((k->secret_len + 2) / 3);
    put(w, "\"", 1);
}

static void render(const struct ar_config *c, bool redact, struct w *w)
{
    size_t i, j, k;
    char tmp[64];

    puts_(w, "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n");
    puts_(w, "resources:\n");
    for (i = 0; i < c->nrules; i++) {
        const struct ar_rule *r = &c->rules[i];

        puts_(w, "  - resources:\n");
        for (j = 0; j < r->nresources; j++) {
            puts_(w, "      - ");
            putq(w, r->resources[j]);
            puts_(w, "\n");
        }
        puts_(w, "    providers:\n");
        for (j = 0; j < r->nproviders; j++) {
            const struct ar_provider *p = &r->providers[j];

            if (p->type == AR_P_IDENTITY) {
                puts_(w, "      - identity: {}\n");
                continue;
            }
            if (p->type == AR_P_KMS) {
                puts_(w, "      - kms:\n          apiVersion: ");
                puts_(w, p->kms.api_version == 2 ? "v2" : "v1");
                puts_(w, "\n          name: ");
                putq(w, p->kms.name);
                puts_(w, "\n          endpoint: ");
                putq(w, p->kms.endpoint);
                if (p->kms.api_version == 1) {
                    snprintf(tmp, sizeof(tmp), "\n          cachesize: %d", (int)p->kms.cachesize);
                    puts_(w, tmp);
                }
                puts_(w, "\n          timeout: ");
                ar_format_go_duration(p->kms.timeout_ns, tmp, sizeof(tmp));
                putq(w, tmp);
                puts_(w, "\n");
                continue;
            }
            puts_(w, "      - ");
            puts_(w, ar_ptype_name(p->type));
            puts_(w, ":\n          keys:\n");
            for (k = 0; k < p->nkeys; k++) {
                puts_(w, "            - name: ");
                putq(w, p->keys[k].name);
                puts_(w, "\n              secret: ");
                put_secret(w, &p->keys[k], redact);
                puts_(w, "\n");
            }
        }
    }
}

int ar_config_render(const struct ar_config *c, bool redact, char **out, size_t *outlen)
{
    struct w w = {NULL, 0, NULL};
    size_t need;

    *out = NULL;
    *outlen = 0;
    render(c, redact, &w);
    need = w.len;
    w.buf = sodium_malloc(need + 1);
    if (!w.buf)
        return -ENOMEM;
    w.len = 0;
    render(c, redact, &w);
    w.buf[w.len] = '\0';
    *out = w.buf;
    *outlen = w.len;
    return 0;
}

void ar_config_render_free(char *buf, size_t len)
{
    (void)len;
    if (buf)
        sodium_free(buf); /* wipes the whole region */
}

void ar_cfg_render_sha256(const struct ar_config *c, uint8_t out[AR_SHA256_LEN])
{
    crypto_hash_sha256_state st;
    struct w w = {NULL, 0, &st};

    crypto_hash_sha256_init(&st);
    render(c, false, &w);
    crypto_hash_sha256_final(&st, out);
    sodium_memzero(&st, sizeof(st));
}
