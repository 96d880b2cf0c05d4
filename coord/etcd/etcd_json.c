/* coord/etcd/etcd_json.c: JSON shapes of the etcd v3 gateway (requests and responses). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "coord/etcd/etcd_int.h"

#define LINE_MAX_BYTES ((size_t)AR_ETCD_MAX_BODY)

int ar_json_b64(json_t *obj, const char *name, const uint8_t *p, size_t n)
{
    size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
    char *s = malloc(cap);
    int rc = -ENOMEM;

    if (!s)
        goto out;
    sodium_bin2base64(s, cap, p ? p : (const uint8_t *)"", n, sodium_base64_VARIANT_ORIGINAL);
    rc = json_object_set_new_nocheck(obj, name, json_stringn_nocheck(s, cap - 1)) ? -ENOMEM : 0;
    sodium_memzero(s, cap); /* the base64 of a value: a Secret's plaintext under identity */
out:
    free(s);
    return rc;
}

int ar_json_i64str(json_t *obj, const char *name, int64_t v)
{
    char s[24];

    snprintf(s, sizeof(s), "%" PRId64, v);
    return json_object_set_new_nocheck(obj, name, json_string(s)) ? -ENOMEM : 0;
}

int ar_etcd_b64_decode(const char *s, size_t slen, uint8_t **out, size_t *outlen)
{
    size_t cap = slen / 4 * 3 + 1;
    uint8_t *p = malloc(cap);
    size_t n = 0;

    *out = NULL;
    *outlen = 0;
    if (!p)
        return -ENOMEM;
    if (slen &&
        sodium_base642bin(p, cap, s, slen, NULL, &n, NULL, sodium_base64_VARIANT_ORIGINAL) != 0) {
        sodium_memzero(p, cap); /* what was decoded before the bad byte */
        free(p);
        return -EPROTO;
    }
    p[n] = 0;
    *out = p;
    *outlen = n;
    return 0;
}

int64_t ar_json_get_i64(const json_t *obj, const char *name)
{
    const json_t *v = json_object_get(obj, name);

    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        long long r;

        errno = 0;
        r = strtoll(s, &end, 10);
        if (errno || end == s || *end)
            return 0;
        return (int64_t)r;
    }
    return 0;
}

static int get_bytes(const json_t *obj, const char *name, uint8_t **out, size_t *len)
{
    const json_t *v = json_object_get(obj, name);

    if (!v) {
        /* omitted = empty; still give a NUL-terminated buffer for keys/values */
        *out = calloc(1, 1);
        *len = 0;
        return *out ? 0 : -ENOMEM;
    }
    if (!json_is_string(v))
        return -EPROTO;
    return ar_etcd_b64_decode(json_string_value(v), json_string_length(v), out, len);
}

void ar_kv_clear(struct ar_etcd_kv *kv)
{
    if (kv->value)
        sodium_memzero(kv->value, kv->value_len);
    free(kv->key);
    free(kv->value);
    memset(kv, 0, sizeof(*kv));
}

int ar_parse_kv(struct ar_etcd *c, const json_t *o, struct ar_etcd_kv *kv)
{
    int rc;

    memset(kv, 0, sizeof(*kv));
    if (!json_is_object(o))
        return -EPROTO;
    rc = get_bytes(o, "key", &kv->key, &kv->key_len);
    if (rc < 0)
        goto fail;
    rc = get_bytes(o, "value", &kv->value, &kv->value_len);
    if (rc < 0)
        goto fail;
    kv->create_revision = ar_json_get_i64(o, "create_revision");
    kv->mod_revision = ar_json_get_i64(o, "mod_revision");
    kv->version = ar_json_get_i64(o, "version");
    kv->lease = ar_json_get_i64(o, "lease");
    (void)c;
    return 0;
fail:
    ar_kv_clear(kv);
    return rc;
}

void ar_kvs_account(struct ar_etcd *c, size_t n, bool add)
{
    if (!c)
        return;
    if (add) {
        c->kvs_live += n;
        if (c->kvs_live > c->kvs_peak)
            c->kvs_peak = c->kvs_live;
    } else {
        c->kvs_live -= n;
    }
}

static int parse_kv_array(struct ar_etcd *c, const json_t *arr, struct ar_etcd_result *res)
{
    size_t n = json_array_size(arr);
    int rc;

    if (!n)
        return 0;
    if (res->kvs)
        return -EPROTO;
    res->kvs = calloc(n, sizeof(*res->kvs));
    if (!res->kvs)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        rc = ar_parse_kv(c, json_array_get(arr, i), &res->kvs[i]);
        if (rc < 0)
            return rc;
        res->n_kvs++;
        ar_kvs_account(c, 1, true);
    }
    return 0;
}

void ar_result_clear(struct ar_etcd *owner, struct ar_etcd_result *res)
{
    for (size_t i = 0; i < res->n_kvs; i++)
        ar_kv_clear(&res->kvs[i]);
    ar_kvs_account(owner, res->n_kvs, false);
    free(res->kvs);
    for (size_t i = 0; i < res->n_ops; i++)
        ar_result_clear(owner, &res->ops[i]);
    free(res->ops);
    sodium_free(res->token); /* wipes; NULL is fine */
    memset(res, 0, sizeof(*res));
}

int ar_parse_result(struct ar_etcd *c, const json_t *root, enum ar_etcd_op_type type,
                    struct ar_etcd_result *res)
{
    const json_t *v;
    int rc = 0;

    memset(res, 0, sizeof(*res));
    res->type = type;
    if (!json_is_object(root))
        return -EPROTO;
    res->revision = ar_json_get_i64(json_object_get(root, "header"), "revision");
    if ((v = json_object_get(root, "kvs")) && (rc = parse_kv_array(c, v, res)) < 0)
        return rc;
    if ((v = json_object_get(root, "prev_kvs")) && (rc = parse_kv_array(c, v, res)) < 0)
        return rc;
    if ((v = json_object_get(root, "prev_kv"))) {
        json_t *arr = json_array();

        if (!arr)
            return -ENOMEM;
        json_array_append(arr, (json_t *)v);
        rc = parse_kv_array(c, arr, res);
        json_decref(arr);
        if (rc < 0)
            return rc;
    }
    res->count = ar_json_get_i64(root, "count");
    res->more = json_is_true(json_object_get(root, "more"));
    res->deleted = ar_json_get_i64(root, "deleted");
    res->succeeded = json_is_true(json_object_get(root, "succeeded"));
    res->lease_id = ar_json_get_i64(root, "ID");
    res->ttl = ar_json_get_i64(root, "TTL");
    res->granted_ttl = ar_json_get_i64(root, "grantedTTL");
    /* users compute revision + 1 and deadlines from TTL * 1000: reject what etcd never sends */
    if (res->revision < 0 || res->revision == INT64_MAX || res->ttl < -1 ||
        res->ttl > AR_ETCD_MAX_TTL_S || res->granted_ttl < 0 ||
        res->granted_ttl > AR_ETCD_MAX_TTL_S)
        return -EPROTO;
    if (json_is_string(v = json_object_get(root, "token"))) {
        size_t n = json_string_length(v);

        /* locked; ar_result_clear sodium_frees it (sodium_init: for callers without a client) */
        res->token = sodium_init() < 0 ? NULL : sodium_malloc(n + 1);
        if (!res->token)
            return -ENOMEM;
        memcpy(res->token, json_string_value(v), n);
        res->token[n] = 0;
    }
    v = json_object_get(root, "responses");
    if (json_array_size(v)) {
        size_t n = json_array_size(v);

        res->ops = calloc(n, sizeof(*res->ops));
        if (!res->ops)
            return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
            const json_t *r = json_array_get(v, i), *inner;
            enum ar_etcd_op_type t;

            if ((inner = json_object_get(r, "response_range")))
                t = AR_ETCD_RANGE;
            else if ((inner = json_object_get(r, "response_put")))
                t = AR_ETCD_PUT;
            else if ((inner = json_object_get(r, "response_delete_range")))
                t = AR_ETCD_DELETE;
            else
                return -EPROTO; /* nested txn is not part of this API */
            rc = ar_parse_result(c, inner, t, &res->ops[i]);
            res->n_ops++;
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

char *ar_json_dump(json_t *o, size_t *len)
{
    char *s = json_dumps(o, JSON_COMPACT);

    if (s && len)
        *len = strlen(s);
    return s;
}

/* --- request bodies by hand ---------------------------------------------------------------- */

static bool jbuf_reserve(struct ar_jbuf *b, size_t n)
{
    size_t cap;
    char *np;

    if (b->err)
        return false;
    if (b->len + n + 1 <= b->cap)
        return true;
    cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1)
        cap *= 2;
    np = malloc(cap);
    if (!np) {
        b->err = -ENOMEM;
        return false;
    }
    if (b->p) { /* move, and wipe what stays behind (values) */
        memcpy(np, b->p, b->len);
        sodium_memzero(b->p, b->cap);
        free(b->p);
    }
    b->p = np;
    b->cap = cap;
    return true;
}

void ar_jbuf_init(struct ar_jbuf *b, size_t hint)
{
    memset(b, 0, sizeof(*b));
    if (hint)
        jbuf_reserve(b, hint);
}

void ar_jbuf_raw(struct ar_jbuf *b, const char *s, size_t n)
{
    if (!jbuf_reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

void ar_jbuf_lit(struct ar_jbuf *b, const char *s)
{
    ar_jbuf_raw(b, s, strlen(s));
}

/* ,"name": (no comma right after '{' or '[') */
static void jbuf_name(struct ar_jbuf *b, const char *name)
{
    if (b->len && b->p && b->p[b->len - 1] != '{' && b->p[b->len - 1] != '[')
        ar_jbuf_raw(b, ",", 1);
    ar_jbuf_raw(b, "\"", 1);
    ar_jbuf_lit(b, name);
    ar_jbuf_raw(b, "\":", 2);
}

void ar_jbuf_b64(struct ar_jbuf *b, const char *name, const uint8_t *p, size_t n)
{
    size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);

    jbuf_name(b, name);
    ar_jbuf_raw(b, "\"", 1);
    if (!jbuf_reserve(b, cap + 1))
        return;
    sodium_bin2base64(b->p + b->len, cap, p ? p : (const uint8_t *)"", n,
                      sodium_base64_VARIANT_ORIGINAL);
    b->len += cap - 1;
    ar_jbuf_raw(b, "\"", 1);
}

void ar_jbuf_i64str(struct ar_jbuf *b, const char *name, int64_t v)
{
    char s[24];
    int n = snprintf(s, sizeof(s), "\"%" PRId64 "\"", v);

    jbuf_name(b, name);
    ar_jbuf_raw(b, s, (size_t)n);
}

void ar_jbuf_true(struct ar_jbuf *b, const char *name)
{
    jbuf_name(b, name);
    ar_jbuf_raw(b, "true", 4);
}

void ar_jbuf_op(struct ar_jbuf *b, const struct ar_etcd_op *op)
{
    if (b->err)
        return;
    if (!op->key || !op->key_len || (unsigned)op->type > AR_ETCD_DELETE) {
        b->err = -EINVAL;
        return;
    }
    ar_jbuf_raw(b, "{", 1);
    ar_jbuf_b64(b, "key", op->key, op->key_len);
    if (op->range_end)
        ar_jbuf_b64(b, "range_end", op->range_end, op->range_end_len);
    switch (op->type) {
    case AR_ETCD_RANGE:
        if (op->limit)
            ar_jbuf_i64str(b, "limit", op->limit);
        if (op->revision)
            ar_jbuf_i64str(b, "revision", op->revision);
        if (op->keys_only)
            ar_jbuf_true(b, "keys_only");
        if (op->count_only)
            ar_jbuf_true(b, "count_only");
        if (op->serializable)
            ar_jbuf_true(b, "serializable");
        break;
    case AR_ETCD_PUT:
        ar_jbuf_b64(b, "value", op->value, op->value_len);
        if (op->lease)
            ar_jbuf_i64str(b, "lease", op->lease);
        if (op->prev_kv)
            ar_jbuf_true(b, "prev_kv");
        break;
    case AR_ETCD_DELETE:
        if (op->prev_kv)
            ar_jbuf_true(b, "prev_kv");
        break;
    }
    ar_jbuf_raw(b, "}", 1);
}

char *ar_jbuf_take(struct ar_jbuf *b, size_t *len, int *rc)
{
    char *p;

    if (!b->err)
        jbuf_reserve(b, 0);
    if (b->err) {
        *rc = b->err;
        ar_jbuf_free(b);
        return NULL;
    }
    p = b->p;
    p[b->len] = 0;
    *len = b->len;
    *rc = 0;
    memset(b, 0, sizeof(*b));
    return p;
}

void ar_jbuf_free(struct ar_jbuf *b)
{
    if (b->p) {
        sodium_memzero(b->p, b->cap);
        free(b->p);
    }
    memset(b, 0, sizeof(*b));
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 (RFC 3629: no overlongs, surrogates,
 * or code points above U+10FFFF). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

ssize_t ar_json_escape(char *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0;

    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        size_t l;

        if (c == 0)
            return -EINVAL;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
            i++;
        } else if (c < 0x20) {
            const char *esc = c == '\n'   ? "\\n"
                              : c == '\t' ? "\\t"
                              : c == '\r' ? "\\r"
                              : c == '\b' ? "\\b"
                              : c == '\f' ? "\\f"
                                          : NULL;

            if (esc) {
                out[o++] = esc[0];
                out[o++] = esc[1];
            } else {
                memcpy(out + o, "\\u00", 4);
                out[o + 4] = hex[c >> 4];
                out[o + 5] = hex[c & 15];
                o += 6;
            }
            i++;
        } else {
            if (!(l = utf8_len(u + i, n - i)))
                return -EINVAL;
            memcpy(out + o, s + i, l);
            o += l;
            i += l;
        }
    }
    return (ssize_t)o;
}

bool ar_etcd_parse_error_json(json_t *root, struct ar_etcd_error *e, long http)
{
    json_t *err = json_object_get(root, "error");
    const char *msg = NULL;
    int code = 0;

    if (json_is_object(err)) { /* stream shape */
        msg = json_string_value(json_object_get(err, "message"));
        code = (int)ar_json_get_i64(err, "grpc_code");
    } else if (json_is_string(err)) {
        msg = json_string_value(json_object_get(root, "message"));
        if (!msg)
            msg = json_string_value(err);
        code = (int)ar_json_get_i64(root, "code");
    } else {
        return false;
    }
    e->grpc_code = code;
    e->http_status = http;
    e->code = ar_etcd_grpc_errno(code, msg ? msg : "");
    snprintf(e->msg, sizeof(e->msg), "%s", msg ? msg : "(no message)");
    return true;
}

#define LINEBUF_MIN ((size_t)4096)

/* Move to a buffer of cap bytes (>= len + 1); the old one is wiped (stream data may be values). */
static int linebuf_resize(struct ar_linebuf *b, size_t cap)
{
    char *np = malloc(cap);

    if (!np)
        return -ENOMEM;
    if (b->p) {
        memcpy(np, b->p, b->len + 1);
        sodium_memzero(b->p, b->cap);
        free(b->p);
    } else {
        np[0] = 0;
    }
    b->p = np;
    b->cap = cap;
    return 0;
}

int ar_linebuf_add(struct ar_linebuf *b, const char *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : LINEBUF_MIN;

        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > LINE_MAX_BYTES + 1)
            return -EMSGSIZE;
        if (linebuf_resize(b, cap) < 0)
            return -ENOMEM;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

char *ar_linebuf_next(struct ar_linebuf *b, size_t *consumed)
{
    char *start, *nl;

    if (*consumed >= b->len)
        return NULL;
    start = b->p + *consumed;
    nl = memchr(start, '\n', b->len - *consumed);
    if (!nl)
        return NULL;
    *nl = 0;
    *consumed = (size_t)(nl - b->p) + 1;
    return start;
}

void ar_linebuf_shift(struct ar_linebuf *b, size_t consumed)
{
    size_t cap = LINEBUF_MIN;

    if (!consumed)
        return;
    memmove(b->p, b->p + consumed, b->len - consumed);
    b->len -= consumed;
    b->p[b->len] = 0;
    /* one big event must not pin its buffer for the life of the stream: give it back once the
     * rest fits in a quarter (a failed shrink just keeps the big buffer) */
    while (cap < b->len + 1)
        cap *= 2;
    if (cap <= b->cap / 4)
        linebuf_resize(b, cap);
}

void ar_linebuf_free(struct ar_linebuf *b)
{
    if (b->p)
        sodium_memzero(b->p, b->cap);
    free(b->p);
    memset(b, 0, sizeof(*b));
}
