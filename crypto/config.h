/*
 * crypto/config.h: the EncryptionConfiguration model, loader, validator and renderer.
 *
 * Contract
 * - Loading follows kube-apiserver 1.31+ exactly (shared spec section 2): YAML or JSON,
 *   apiserver.config.k8s.io/v1 EncryptionConfiguration or legacy v1 EncryptionConfig, strict
 *   decoding (unknown or duplicate field = error), defaults, every validation rule, the
 *   cross-item masking check. All errors of a file are collected into a struct ar_diags.
 * - Key secrets are decoded (Go StdEncoding rules) straight into one sodium_malloc'd, locked
 *   arena owned by the config; every scratch copy of key text is wiped before it is freed.
 *   No key value ever appears in a diagnostic.
 * - A loaded config is immutable and reference counted (ar_config_ref/unref); the last unref
 *   wipes and frees the arena.
 * - Errors: functions return 0 or a negative errno. -EINVAL means "the file is invalid" (the
 *   diagnostics say why); -ENOMEM, -EIO, -ENOENT, ... are system errors (also one diagnostic).
 */
#ifndef ATREST_CRYPTO_CONFIG_H
#define ATREST_CRYPTO_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AR_SHA256_LEN 32
/* "sha256:" + 64 hex digits + NUL */
#define AR_HASH_STRLEN 72

enum ar_ptype {
    AR_P_IDENTITY = 0,
    AR_P_AESCBC,
    AR_P_AESGCM,
    AR_P_SECRETBOX,
    AR_P_KMS,
};

/* "identity", "aescbc", "aesgcm", "secretbox", "kms" */
const char *ar_ptype_name(enum ar_ptype t);

struct ar_pos {
    int line; /* 1-based; 0 when unknown */
    int col;  /* 1-based */
};

struct ar_key {
    char *name;            /* as written (may contain ':'); ordinary heap */
    const uint8_t *secret; /* decoded bytes inside the config's locked arena */
    size_t secret_len;     /* 16, 24 or 32 (secretbox: 32) */
    uint8_t fp[8];         /* first 8 bytes of SHA-256(secret): a short key fingerprint */
    struct ar_pos pos;
};

struct ar_kms {
    char *name;
    char *endpoint;
    int api_version;    /* 1 or 2 (defaulted to 1 when absent, as kube-apiserver does) */
    int64_t timeout_ms; /* defaulted to 3000 (timeout_ns / 1e6, truncated) */
    int64_t timeout_ns; /* the exact metav1.Duration value; defaulted to 3e9 */
    int32_t cachesize;  /* v1: defaulted to 1000; v2: 0 */
    bool cachesize_set;
};

struct ar_provider {
    enum ar_ptype type;
    struct ar_key *keys; /* aescbc, aesgcm, secretbox */
    size_t nkeys;
    struct ar_kms kms; /* type == AR_P_KMS */
    struct ar_pos pos;
};

struct ar_gr {
    char *group;    /* "" for core, "*" for all groups */
    char *resource; /* plural, lowercase, or "*" */
};

struct ar_rule {          /* one element of .resources[] */
    char **resources;     /* as written, e.g. "secrets", "*.apps", "*.*" */
    struct ar_gr *parsed; /* parallel to resources[] */
    size_t nresources;
    struct ar_provider *providers;
    size_t nproviders;
    struct ar_pos pos;
};

/* The model of one loaded (or composed) config. Only crypto/ allocates it: the reference count
 * and the locked key arena live in a private wrapper around it (crypto/config_int.h). */
struct ar_config {
    bool legacy_kind; /* apiVersion v1, kind EncryptionConfig */
    struct ar_rule *rules;
    size_t nrules;
    uint8_t file_sha256[AR_SHA256_LEN]; /* over the raw file bytes */
    uint8_t fingerprint[AR_SHA256_LEN]; /* over the canonical meaning (see ar_config_fingerprint) */
    bool keys_locked; /* the arena is mlock'ed (false: RLIMIT_MEMLOCK too low; log it) */
};

/* ---- diagnostics ----------------------------------------------------------------------- */

enum ar_severity { AR_SEV_ERROR = 0, AR_SEV_WARNING = 1 };

struct ar_diag {
    enum ar_severity severity;
    char *file;        /* the name given to the loader */
    struct ar_pos pos; /* where in the file; 0:0 when it concerns the whole file */
    char *path; /* kube-apiserver field path, e.g. resources[0].providers[1].aescbc.keys[0].secret;
                   may be "" */
    char *detail; /* kube-apiserver's text, e.g. Invalid value: "REDACTED": secrets must be base64
                     encoded */
};

struct ar_diags {
    struct ar_diag *v;
    size_t n;
    size_t cap;
    size_t nerrors; /* how many of v[] are AR_SEV_ERROR */
};

void ar_diags_init(struct ar_diags *d);
void ar_diags_free(struct ar_diags *d);
/* Appends; returns 0 or -ENOMEM. fmt builds the detail. */
int ar_diags_add(struct ar_diags *d, enum ar_severity sev, const char *file, struct ar_pos pos,
                 const char *path, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* One line, no newline: "FILE:LINE:COL: PATH: DETAIL" (warnings: "FILE:LINE:COL: warning: PATH:
 * DETAIL"). Returns the number of characters that would have been written (snprintf semantics). */
int ar_diag_format(const struct ar_diag *d, char *buf, size_t len);

/* ---- loading ---------------------------------------------------------------------------- */

struct ar_load_opts {
    bool reload; /* as --encryption-provider-config-automatic-reload: duplicate KMS v1 names are
                    errors */
    bool kmsv1_allowed; /* as --feature-gates=KMSv1=true; when false a KMS v1 provider is a warning
                         */
    size_t max_bytes;   /* refuse larger files (0: 4 MiB) */
};

/* Read and load a file. name_for_diags defaults to path when NULL. */
int ar_config_load_file(const char *path, const struct ar_load_opts *opts, struct ar_config **out,
                        struct ar_diags *diags);
/* Load from memory (the buffer is not modified; callers wipe it). */
int ar_config_load_mem(const char *name, const void *buf, size_t len,
                       const struct ar_load_opts *opts, struct ar_config **out,
                       struct ar_diags *diags);

struct ar_config *ar_config_ref(struct ar_config *c);
/* Accepts NULL; returns NULL so callers can write p = ar_config_unref(p). */
struct ar_config *ar_config_unref(struct ar_config *c);

/* "sha256:<hex>" of the raw file bytes, as kube-apiserver 1.34+ prints it. */
void ar_config_file_hash_str(const struct ar_config *c, char out[AR_HASH_STRLEN]);
/* "sha256:<hex>" of the canonical meaning: the same for the same config written as YAML or
 * JSON, with other spacing, comments, key order inside a mapping, legacy kind, or explicit
 * defaults. Covers structure, resource names, provider order, key names and key secrets. */
void ar_config_fingerprint_str(const struct ar_config *c, char out[AR_HASH_STRLEN]);
/* Lowercase hex of n bytes into out (2n+1 bytes). */
void ar_hex(const uint8_t *p, size_t n, char *out);

/* Render the config as deterministic YAML (apiserver.config.k8s.io/v1 EncryptionConfiguration).
 * With redact, every secret is written as "REDACTED:<hex key fingerprint>" (the output is then
 * for humans only and does not load). Without redact the buffer holds key text: it is allocated
 * with sodium_malloc and must be released with ar_config_render_free. The rendered bytes load
 * back to a config with the same fingerprint. */
int ar_config_render(const struct ar_config *c, bool redact, char **out, size_t *outlen);
void ar_config_render_free(char *buf, size_t len);

/* ---- composing a config from parts of others (crypto/compose.c) ------------------------ */

/* One provider of a composed config. Keyed types (aescbc, aesgcm, secretbox) name keys of live
 * configs (pointers into their rules); AR_P_KMS names a KMS provider of a live config (copied
 * as it is: name, endpoint, apiVersion, timeout, cachesize); identity needs nothing. */
struct ar_compose_provider {
    enum ar_ptype type;
    const struct ar_key *const *keys;
    size_t nkeys;
    const struct ar_kms *kms;
};

struct ar_compose_rule {
    const char *const *resources; /* as they will be written, e.g. "secrets", "*.apps", "*.*" */
    size_t nresources;
    const struct ar_compose_provider *providers;
    size_t nproviders;
};

/* Build a new config from the given rules, as if a file saying exactly that had been loaded:
 * the same defaults, the same validation rules and masking check (opts as for loading; NULL:
 * defaults), every error appended to diags with name as the file and 0:0 positions (-EINVAL;
 * -ENOMEM). Key secrets are copied from the source configs' arenas straight into the new
 * config's own locked arena: key bytes never pass through ordinary memory and no key text
 * (base64) is made. Source configs are only read; the caller keeps them alive during the call.
 * diags must not be NULL. The result has one reference; its fingerprint is computed as for a loaded
 * file and its file_sha256 is over ar_config_render(result, false): the bytes kube-apiserver would
 * hash. */
int ar_config_compose(const char *name, const struct ar_compose_rule *rules, size_t nrules,
                      const struct ar_load_opts *opts, struct ar_config **out,
                      struct ar_diags *diags);

/* ---- Go-compatible base64 (StdEncoding.DecodeString) ----------------------------------- */

/* Decode src as Go's base64.StdEncoding does: padding required, '\r' and '\n' skipped,
 * non-canonical trailing bits accepted, anything else an error (-EINVAL). dst must hold
 * ar_b64_decoded_max(srclen) bytes. */
size_t ar_b64_decoded_max(size_t srclen);
int ar_b64_decode(const char *src, size_t srclen, uint8_t *dst, size_t *dstlen);
/* Standard base64 with padding; dst must hold 4*((n+2)/3)+1 bytes (NUL terminated). */
void ar_b64_encode(const uint8_t *src, size_t n, char *dst);

/* ---- process hardening ------------------------------------------------------------------ */

/* sodium_init, RLIMIT_CORE 0, PR_SET_DUMPABLE 0. Call once at start. Returns 0 or -errno. */
int ar_crypto_init(void);

#endif
