/*
 * crypto/config_int.h: private to the config loader (config.c, config_validate.c, render.c).
 *
 * Loading is four steps:
 *   1. libyaml events -> a small node tree (struct yn), depth-capped, as goyaml.v2 reads YAML:
 *      an alias is a node that shares its anchor's node (never a copy), merge keys (<<) merge
 *      mappings, and goyaml's errors come first (unknown anchor, an anchor containing itself,
 *      a bad merge value, "document contains excessive aliasing" by its decode-count ratio,
 *      replayed without expanding); then atrest's bounds: the expanded document may hold no
 *      more nodes and scalar bytes than a file may, and merges nest at most 32 deep. Decoding
 *      reads through aliases, so errors carry the path of the place of use and the line and
 *      column where the value is written; a key used twice gets two arena slots, its text one
 *      (wiped) copy in the tree;
 *   2. strict decoding of the tree into the Go-shaped model below (struct dconf), which keeps
 *      what Go's structs keep (nil pointers, unset fields, strings as written) plus positions;
 *   3. defaults and validation of the model (config_validate.c), decoding each key secret
 *      straight into its slot of the locked arena;
 *   4. building the public struct ar_config.
 */
#ifndef ATREST_CRYPTO_CONFIG_INT_H
#define ATREST_CRYPTO_CONFIG_INT_H

#include <stddef.h>
#include <stdint.h>

#include "crypto/config.h"

#define AR_CFG_MAX_DEPTH          32
#define AR_CFG_DEFAULT_MAX_BYTES  (4u * 1024u * 1024u)
#define AR_KMS_DEFAULT_TIMEOUT_NS 3000000000LL
#define AR_KMS_DEFAULT_CACHESIZE  1000

struct dkey {
    char *name;         /* "" when absent or null */
    const char *secret; /* borrowed from the node tree; "" when absent */
    size_t secret_len;
    uint8_t *dst;   /* slot in the arena (ar_b64_decoded_max(secret_len) bytes) */
    size_t dec_len; /* after a successful decode */
    struct ar_pos pos, name_pos, secret_pos;
};

struct dkeys {
    bool set; /* the Go pointer is non-nil */
    struct dkey *v;
    size_t n;
    struct ar_pos pos, keys_pos;
};

struct dkms {
    bool set;
    char *api_version; /* "" when absent: defaulted to "v1" */
    char *name;
    char *endpoint;
    bool cachesize_set;
    int32_t cachesize;
    bool timeout_set;
    int64_t timeout_ns;
    struct ar_pos pos, api_pos, name_pos, endpoint_pos, cache_pos, timeout_pos;
};

struct dprov {
    struct dkeys aesgcm, aescbc, secretbox;
    bool identity;
    struct dkms kms;
    struct ar_pos pos;
};

struct drule {
    char **res;
    struct ar_pos *res_pos;
    size_t nres;
    struct dprov *prov;
    size_t nprov;
    struct ar_pos pos, res_list_pos, prov_list_pos;
};

struct dconf {
    struct drule *rules;
    size_t nrules;
    struct ar_pos pos, rules_pos;
};

/* What every struct ar_config really is: callers see only .pub. */
struct ar_config_priv {
    struct ar_config pub;
    int refs;
    void *arena; /* the locked key arena (read-only once built) */
};

static inline struct ar_config_priv *ar_cfg_priv(const struct ar_config *c)
{
    return (struct ar_config_priv *)((char *)(uintptr_t)c - offsetof(struct ar_config_priv, pub));
}

struct ar_vctx {
    struct ar_diags *diags;
    const char *file;
    const struct ar_load_opts *opts;
};

/* config.c: the struct-building steps, shared with compose.c. */
/* A zeroed config inside its private wrapper, one reference. NULL when out of memory. */
struct ar_config *ar_cfg_alloc(void);
/* Give c its locked key arena of size bytes (once; NULL when out of memory or size 0). */
uint8_t *ar_cfg_arena(struct ar_config *c, size_t size);
/* Step 4: move the validated model into c (strings are taken, d keeps NULLs); each key's secret
 * points at its dst slot. 0 or -ENOMEM (c is then half-built: ar_cfg_destroy it). */
int ar_cfg_build(struct dconf *d, struct ar_config *c);
/* Compute the fingerprint and make the arena read-only. */
void ar_cfg_seal(struct ar_config *c);
/* Free a config that was never handed out (whatever its reference count). */
void ar_cfg_destroy(struct ar_config *c);
void ar_cfg_dconf_free(struct dconf *c);

/* render.c: sha256 of ar_config_render(c, false) without building the buffer. */
void ar_cfg_render_sha256(const struct ar_config *c, uint8_t out[AR_SHA256_LEN]);

/* config_validate.c */
void ar_cfg_defaults(struct dconf *c);
/* Appends every validation error (and the KMSv1 warning) to ctx->diags; decodes secrets into
 * their dst slots. Returns 0 or -ENOMEM. */
int ar_cfg_validate(struct dconf *c, const struct ar_vctx *ctx);
/* The cross-item masking check of config.go (run only when validation passed). */
int ar_cfg_check_masking(const struct dconf *c, const struct ar_vctx *ctx);
/* time.ParseDuration: 0 or -EINVAL with a Go error text in err. */
int ar_parse_go_duration(const char *s, int64_t *ns, char *err, size_t errlen);
/* time.Duration.String into out (at least 32 bytes). */
void ar_format_go_duration(int64_t ns, char *out, size_t outlen);
/* Go's %q for a string (ASCII-safe, as strconv.Quote). Returns malloc'd text or NULL. */
char *ar_go_quote(const char *s, size_t n);
/* schema.ParseGroupResource into malloc'd strings. 0 or -ENOMEM. */
int ar_split_gr(const char *s, char **group, char **resource);

#endif
