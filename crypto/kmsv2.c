/*
 * crypto/kmsv2.c: a hand-written proto3 wire parser for the KMS v2 EncryptedObject and
 * kube-apiserver's ValidateEncryptedObject (shared spec 1.7).
 *
 * Wire errors use the texts of the gogo-generated Unmarshal of Kubernetes 1.28-1.33.
 */
#include "crypto/kmsv2.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define ENC_DEK_SOURCE_MAX 1024
#define KEY_ID_MAX         1024
#define ANNOTATIONS_MAX    32768

struct rd {
    const uint8_t *p;
    size_t n;
    size_t i;
    char msgbuf[48];
};

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* 0, or -EBADMSG with the text in msg */
static int rd_varint(struct rd *r, uint64_t *v, const char **msg)
{
    uint64_t x = 0;

    for (unsigned shift = 0;; shift += 7) {
        uint8_t b;

        if (shift >= 64) {
            *msg = "proto: integer overflow";
            return -EBADMSG;
        }
        if (r->i >= r->n) {
            *msg = "unexpected EOF";
            return -EBADMSG;
        }
        b = r->p[r->i++];
        x |= (uint64_t)(b & 0x7f) << shift;
        if (b < 0x80)
            break;
    }
    *v = x;
    return 0;
}

static int rd_bytes(struct rd *r, struct ar_kmsv2_span *s, const char **msg)
{
    uint64_t len;
    int e = rd_varint(r, &len, msg);

    if (e < 0)
        return e;
    /* gogo: byteLen < 0, or iNdEx + byteLen overflowing int, is ErrInvalidLengthApi */
    if ((int64_t)len < 0 || (int64_t)(len + r->i) < 0) {
        *msg = "proto: negative length found during unmarshaling";
        return -EBADMSG;
    }
    if (len > r->n - r->i) {
        *msg = "unexpected EOF";
        return -EBADMSG;
    }
    s->p = r->p + r->i;
    s->n = (size_t)len;
    r->i += (size_t)len;
    return 0;
}

/* Skip one field whose tag was already read (as skipApi does, groups included). */
static int rd_skip(struct rd *r, unsigned wt, const char **msg)
{
    uint64_t v;
    struct ar_kmsv2_span s;
    int depth = 0;

    for (;;) {
        switch (wt) {
        case 0:
            if (rd_varint(r, &v, msg) < 0)
                return -EBADMSG;
            break;
        case 1:
            if (r->n - r->i < 8) {
                *msg = "unexpected EOF";
                return -EBADMSG;
            }
            r->i += 8;
            break;
        case 2:
            if (rd_bytes(r, &s, msg) < 0)
                return -EBADMSG;
            break;
        case 3:
            depth++;
            break;
        case 4:
            if (depth == 0) {
                *msg = "proto: unexpected end of group";
                return -EBADMSG;
            }
            depth--;
            break;
        case 5:
            if (r->n - r->i < 4) {
                *msg = "unexpected EOF";
                return -EBADMSG;
            }
            r->i += 4;
            break;
        default:
            snprintf(r->msgbuf, sizeof(r->msgbuf), "proto: illegal wireType %u", wt);
            *msg = r->msgbuf;
            return -EBADMSG;
        }
        if (depth == 0)
            return 0;
        /* no depth limit, as skipApi: every step consumes at least one byte */
        if (rd_varint(r, &v, msg) < 0)
            return -EBADMSG;
        wt = (unsigned)(v & 7);
    }
}

static const char *const field_names[] = {
    NULL, "EncryptedData", "KeyID", "EncryptedDEKSource", "Annotations", "EncryptedDEKSourceType",
};

/*
 * One map entry, read as the gogo-generated code reads it: the entry spans [r->i, end); the
 * key (field 1) and the value (field 2) are read as length-delimited whatever their wire type,
 * and their bounds are the whole buffer, not the entry; any other field is skipped and must end
 * inside the entry. The caller then continues at end, whatever was read.
 */
static int parse_entry(struct rd *r, size_t end, struct ar_kmsv2_span *k, struct ar_kmsv2_span *v,
                       const char **msg)
{
    uint64_t tag;

    k->p = v->p = r->p + r->i;
    k->n = v->n = 0;
    while (r->i < end) {
        int32_t f;

        if (rd_varint(r, &tag, msg) < 0)
            return -EBADMSG;
        f = (int32_t)(uint32_t)(tag >> 3);
        if (f == 1 || f == 2) {
            if (rd_bytes(r, f == 1 ? k : v, msg) < 0)
                return -EBADMSG;
        } else {
            if (rd_skip(r, (unsigned)(tag & 7), msg) < 0)
                return -EBADMSG;
            if (r->i > end) {
                *msg = "unexpected EOF";
                return -EBADMSG;
            }
        }
    }
    return 0;
}

/* ---- validation (k8s.io/apimachinery/pkg/util/validation) ------------------------------ */

static const char subdomain_msg[] =
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
static const char label_msg[] =
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

static bool alnum(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_label(const uint8_t *p, size_t n)
{
    if (n == 0 || !alnum(p[0]) || !alnum(p[n - 1]))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!alnum(p[i]) && p[i] != '-')
            return false;
    return true;
}

static bool is_subdomain_re(const uint8_t *p, size_t n)
{
    size_t s = 0;

    for (size_t i = 0; i <= n; i++) {
        if (i == n || p[i] == '.') {
            if (!is_label(p + s, i - s))
                return false;
            s = i + 1;
        }
    }
    return true;
}

/* Go's %q, close enough for ASCII; other bytes as \xNN. */
static size_t quote(char *dst, size_t dlen, const uint8_t *p, size_t n)
{
    size_t o = 0;

#define PUT(c)                                                                                     \
    do {                                                                                           \
        if (o + 1 < dlen)                                                                          \
            dst[o] = (char)(c);                                                                    \
        o++;                                                                                       \
    } while (0)
    PUT('"');
    for (size_t i = 0; i < n && o < 300; i++) {
        uint8_t c = p[i];

        if (c == '"' || c == '\\') {
            PUT('\\');
            PUT(c);
        } else if (c >= 0x20 && c < 0x7f) {
            PUT(c);
        } else {
            static const char hx[] = "0123456789abcdef";

            PUT('\\');
            PUT('x');
            PUT(hx[c >> 4]);
            PUT(hx[c & 15]);
        }
    }
    PUT('"');
#undef PUT
    if (dlen)
        dst[o < dlen ? o : dlen - 1] = '\0';
    return o;
}

/* IsFullyQualifiedDomainName(field.NewPath("annotations"), name); "" when valid. */
static void fqdn_error(const uint8_t *p, size_t n, char *out, size_t outlen)
{
    char q[320];
    size_t s;

    out[0] = '\0';
    if (n == 0) {
        snprintf(out, outlen, "annotations: Required value");
        return;
    }
    if (p[n - 1] == '.')
        n--;
    if (n > 253 || !is_subdomain_re(p, n)) {
        quote(q, sizeof(q), p, n);
        if (n > 253 && !is_subdomain_re(p, n))
            snprintf(out, outlen,
                     "annotations: Invalid value: %s: must be no more than 253 characters,%s", q,
                     subdomain_msg);
        else if (n > 253)
            snprintf(out, outlen,
                     "annotations: Invalid value: %s: must be no more than 253 characters", q);
        else
            snprintf(out, outlen, "annotations: Invalid value: %s: %s", q, subdomain_msg);
        return;
    }
    if (!memchr(p, '.', n)) {
        quote(q, sizeof(q), p, n);
        snprintf(out, outlen,
                 "annotations: Invalid value: %s: should be a domain with at least two segments "
                 "separated by dots",
                 q);
        return;
    }
    s = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || p[i] == '.') {
            size_t l = i - s;

            if (l > 63 || !is_label(p + s, l)) {
                quote(q, sizeof(q), p + s, l);
                if (l > 63 && !is_label(p + s, l))
                    snprintf(out, outlen,
                             "annotations: Invalid value: %s: must be no more than 63 "
                             "characters,%s",
                             q, label_msg);
                else if (l > 63)
                    snprintf(out, outlen,
                             "annotations: Invalid value: %s: must be no more than 63 characters",
                             q);
                else
                    snprintf(out, outlen, "annotations: Invalid value: %s: %s", q, label_msg);
                return;
            }
            s = i + 1;
        }
    }
}

/* errors.NewAggregate(...).Error(): one message as itself, several (deduplicated) as [a, b]. */
struct agg {
    char *buf;
    size_t len;
    size_t used;
    int count;
    char first[1024];
};

static void agg_add(struct agg *a, const char *msg)
{
    /* dedup against what is already there (exact message match) */
    if (a->count == 1 && strcmp(a->first, msg) == 0)
        return;
    if (a->count == 0) {
        snprintf(a->first, sizeof(a->first), "%s", msg);
        a->count = 1;
        return;
    }
    if (a->count == 1) {
        int w = snprintf(a->buf, a->len, "[%s", a->first);

        a->used = w > 0 ? (size_t)w : 0;
    } else {
        /* crude dedup for later messages */
        if (strstr(a->buf, msg))
            return;
    }
    if (a->used < a->len) {
        int w = snprintf(a->buf + a->used, a->len - a->used, ", %s", msg);

        a->used += w > 0 ? (size_t)w : 0;
    }
    a->count++;
}

static void agg_finish(struct agg *a)
{
    if (a->count == 1)
        snprintf(a->buf, a->len, "%s", a->first);
    else if (a->count > 1 && a->used + 1 < a->len) {
        a->buf[a->used] = ']';
        a->buf[a->used + 1] = '\0';
    }
}

int ar_kmsv2_parse(const uint8_t *p, size_t n, struct ar_kmsv2_info *out, char *err, size_t errlen)
{
    struct rd r = {p, n, 0, ""};
    const char *msg = NULL;
    uint64_t tag, v;
    size_t total = 0;

    memset(out, 0, sizeof(*out));
    if (err && errlen)
        err[0] = '\0';
    while (r.i < r.n) {
        unsigned wt, fnum;
        uint64_t f;
        struct ar_kmsv2_span s, k, val;

        if (rd_varint(&r, &tag, &msg) < 0)
            goto fail;
        wt = (unsigned)(tag & 7);
        f = tag >> 3;
        if (wt == 4) {
            seterr(err, errlen, "proto: EncryptedObject: wiretype end group for non-group");
            return -EBADMSG;
        }
        /* gogo: fieldNum := int32(wire >> 3); the message prints the whole tag */
        if ((int32_t)(uint32_t)f <= 0) {
            seterr(err, errlen, "proto: EncryptedObject: illegal tag %d (wire type %llu)",
                   (int)(int32_t)(uint32_t)f, (unsigned long long)tag);
            return -EBADMSG;
        }
        fnum = (unsigned)(uint32_t)f;
        if (fnum >= 1 && fnum <= 4 && wt != 2) {
            seterr(err, errlen, "proto: wrong wireType = %u for field %s", wt, field_names[fnum]);
            return -EBADMSG;
        }
        switch (fnum) {
        case 1:
        case 2:
        case 3:
            if (rd_bytes(&r, &s, &msg) < 0)
                goto fail;
            if (fnum == 1)
                out->encrypted_data = s;
            else if (fnum == 2)
                out->key_id = s;
            else
                out->encrypted_dek_source = s;
            break;
        case 4: {
            size_t j;

            if (rd_bytes(&r, &s, &msg) < 0)
                goto fail;
            {
                struct rd er = {p, n, (size_t)(s.p - p), ""};

                if (parse_entry(&er, (size_t)(s.p - p) + s.n, &k, &val, &msg) < 0) {
                    seterr(err, errlen, "%s", msg);
                    return -EBADMSG;
                }
            }
            for (j = 0; j < out->nannotations; j++)
                if (out->ann_key[j].n == k.n && memcmp(out->ann_key[j].p, k.p, k.n) == 0)
                    break;
            if (j == out->nannotations) {
                if (j == AR_KMSV2_MAX_ANNOTATIONS) {
                    seterr(err, errlen, "more than %d annotations", AR_KMSV2_MAX_ANNOTATIONS);
                    return -EBADMSG;
                }
                out->nannotations++;
            }
            out->ann_key[j] = k;
            out->ann_value[j] = val;
            break;
        }
        case 5:
            if (wt != 0) {
                seterr(err, errlen, "proto: wrong wireType = %u for field %s", wt, field_names[5]);
                return -EBADMSG;
            }
            if (rd_varint(&r, &v, &msg) < 0)
                goto fail;
            out->dek_source_type = (int)(int32_t)(uint32_t)v;
            break;
        default:
            if (rd_skip(&r, wt, &msg) < 0)
                goto fail;
            break;
        }
    }

    /* ValidateEncryptedObject */
    if (out->dek_source_type != 0 && out->dek_source_type != 1) {
        seterr(err, errlen, "unknown encryptedDEKSourceType: %d", out->dek_source_type);
        return -EBADMSG;
    }
    if (out->encrypted_data.n == 0) {
        seterr(err, errlen, "encrypted data is empty");
        return -EBADMSG;
    }
    if (out->encrypted_dek_source.n == 0) {
        seterr(err, errlen,
               "failed to validate encrypted DEK source: encrypted DEK source is empty");
        return -EBADMSG;
    }
    if (out->encrypted_dek_source.n > ENC_DEK_SOURCE_MAX) {
        seterr(err, errlen,
               "failed to validate encrypted DEK source: encrypted DEK source is %zu bytes, which "
               "exceeds the max size of %d",
               out->encrypted_dek_source.n, ENC_DEK_SOURCE_MAX);
        return -EBADMSG;
    }
    if (out->key_id.n == 0) {
        seterr(err, errlen, "failed to validate key id: keyID is empty");
        return -EBADMSG;
    }
    if (out->key_id.n > KEY_ID_MAX) {
        seterr(err, errlen,
               "failed to validate key id: keyID is %zu bytes, which exceeds the max size of %d",
               out->key_id.n, KEY_ID_MAX);
        return -EBADMSG;
    }
    if (out->nannotations) {
        char one[1024], all[2048];
        struct agg a = {all, sizeof(all), 0, 0, ""};

        all[0] = '\0';
        for (size_t j = 0; j < out->nannotations; j++) {
            fqdn_error(out->ann_key[j].p, out->ann_key[j].n, one, sizeof(one));
            if (one[0])
                agg_add(&a, one);
            total += out->ann_key[j].n + out->ann_value[j].n;
        }
        if (total > ANNOTATIONS_MAX) {
            snprintf(one, sizeof(one),
                     "total size of annotations is %zu, which exceeds the max size of %d", total,
                     ANNOTATIONS_MAX);
            agg_add(&a, one);
        }
        if (a.count) {
            agg_finish(&a);
            seterr(err, errlen, "failed to validate annotations: %s", all);
            return -EBADMSG;
        }
    }
    return 0;
fail:
    seterr(err, errlen, "%s", msg ? msg : "proto: invalid data");
    return -EBADMSG;
}
