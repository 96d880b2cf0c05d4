/*
 * coord/etcd/etcd_pb.c: the KV calls in etcd's own wire format (gRPC, protobuf), see etcd_int.h.
 *
 * Only the messages of etcdserverpb.KV's Range, Put, DeleteRange and Txn (etcd 3.4 rpc.proto and
 * mvccpb/kv.proto, by field number): requests are written exactly (one pass to size, one to
 * write), answers are read strictly: every length is checked against what is left, a known field
 * with the wrong wire type, a group, a truncated varint or a nested txn is -EPROTO; unknown fields
 * are skipped, as protobuf readers do (newer etcd adds fields). Keys and values are copied out
 * NUL-terminated into buffers of their own, as the JSON path does (ar_kv_clear wipes them).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "coord/etcd/etcd_int.h"

/* wire types */
#define WT_VARINT 0
#define WT_I64    1
#define WT_LEN    2
#define WT_I32    5

/* ---- writing ------------------------------------------------------------------------------- */

struct pbw {
    uint8_t *p; /* NULL: only count */
    size_t n;
};

static void put_byte(struct pbw *w, uint8_t b)
{
    if (w->p)
        w->p[w->n] = b;
    w->n++;
}

static void put_varint(struct pbw *w, uint64_t v)
{
    while (v >= 0x80) {
        put_byte(w, (uint8_t)(v | 0x80));
        v >>= 7;
    }
    put_byte(w, (uint8_t)v);
}

static void put_tag(struct pbw *w, unsigned field, unsigned wt)
{
    put_varint(w, ((uint64_t)field << 3) | wt);
}

static void put_bytes(struct pbw *w, unsigned field, const uint8_t *p, size_t n)
{
    put_tag(w, field, WT_LEN);
    put_varint(w, n);
    if (w->p && n)
        memcpy(w->p + w->n, p, n);
    w->n += n;
}

/* int64 and bool as varints (negative numbers: ten bytes, two's complement) */
static void put_int(struct pbw *w, unsigned field, int64_t v)
{
    put_tag(w, field, WT_VARINT);
    put_varint(w, (uint64_t)v);
}

/* A nested message: its tag, its size (measured by writing it to a counter), itself. */
typedef void (*pb_body_fn)(struct pbw *w, const void *m);

static void put_msg(struct pbw *w, unsigned field, pb_body_fn fn, const void *m)
{
    struct pbw count = {NULL, 0};

    fn(&count, m);
    put_tag(w, field, WT_LEN);
    put_varint(w, count.n);
    fn(w, m);
}

static void op_body(struct pbw *w, const void *m)
{
    const struct ar_etcd_op *op = m;

    put_bytes(w, 1, op->key, op->key_len);
    if (op->range_end && op->type != AR_ETCD_PUT)
        put_bytes(w, 2, op->range_end, op->range_end_len);
    switch (op->type) {
    case AR_ETCD_RANGE: /* RangeRequest */
        if (op->limit)
            put_int(w, 3, op->limit);
        if (op->revision)
            put_int(w, 4, op->revision);
        if (op->serializable)
            put_int(w, 7, 1);
        if (op->keys_only)
            put_int(w, 8, 1);
        if (op->count_only)
            put_int(w, 9, 1);
        break;
    case AR_ETCD_PUT: /* PutRequest */
        if (op->value_len)
            put_bytes(w, 2, op->value, op->value_len);
        if (op->lease)
            put_int(w, 3, op->lease);
        if (op->prev_kv)
            put_int(w, 4, 1);
        break;
    case AR_ETCD_DELETE: /* DeleteRangeRequest */
        if (op->prev_kv)
            put_int(w, 3, 1);
        break;
    }
}

/* RequestOp: oneof request_range = 1, request_put = 2, request_delete_range = 3 */
static void request_op_body(struct pbw *w, const void *m)
{
    const struct ar_etcd_op *op = m;

    put_msg(w, (unsigned)op->type + 1, op_body, op);
}

static void compare_body(struct pbw *w, const void *m)
{
    const struct ar_etcd_compare *cp = m;

    if (cp->result)
        put_int(w, 1, cp->result);
    if (cp->target)
        put_int(w, 2, cp->target);
    put_bytes(w, 3, cp->key, cp->key_len);
    /* target_union is a oneof: written even when 0 (version 4, create 5, mod 6, value 7) */
    if (cp->target == AR_ETCD_CMP_VALUE)
        put_bytes(w, 7, cp->value, cp->value_len);
    else
        put_int(w, 4 + (unsigned)cp->target, cp->number);
}

static void txn_body(struct pbw *w, const void *m)
{
    const struct ar_etcd_txn *t = m;

    for (size_t i = 0; i < t->n_compare; i++)
        put_msg(w, 1, compare_body, &t->compare[i]);
    for (size_t i = 0; i < t->n_success; i++)
        put_msg(w, 2, request_op_body, &t->success[i]);
    for (size_t i = 0; i < t->n_failure; i++)
        put_msg(w, 3, request_op_body, &t->failure[i]);
}

static bool op_ok(const struct ar_etcd_op *op)
{
    return op->key && op->key_len && (unsigned)op->type <= AR_ETCD_DELETE &&
           (op->value || !op->value_len) && (op->range_end || !op->range_end_len);
}

/* The gRPC message: 1 byte "not compressed", 4 bytes big-endian length, the message. */
static char *frame(pb_body_fn fn, const void *m, size_t *len, int *rc)
{
    struct pbw w = {NULL, 0};
    uint8_t *p;

    fn(&w, m);
    if (w.n > UINT32_MAX) {
        *rc = -EMSGSIZE;
        return NULL;
    }
    p = malloc(5 + w.n + 1);
    if (!p) {
        *rc = -ENOMEM;
        return NULL;
    }
    p[0] = 0;
    p[1] = (uint8_t)(w.n >> 24);
    p[2] = (uint8_t)(w.n >> 16);
    p[3] = (uint8_t)(w.n >> 8);
    p[4] = (uint8_t)w.n;
    w.p = p + 5;
    w.n = 0;
    fn(&w, m);
    p[5 + w.n] = 0;
    *len = 5 + w.n;
    *rc = 0;
    return (char *)p;
}

char *ar_pb_op(const struct ar_etcd_op *op, size_t *len, int *rc)
{
    if (!op_ok(op)) {
        *rc = -EINVAL;
        return NULL;
    }
    return frame(op_body, op, len, rc);
}

char *ar_pb_txn(const struct ar_etcd_txn *t, size_t *len, int *rc)
{
    for (size_t i = 0; i < t->n_compare; i++) {
        const struct ar_etcd_compare *cp = &t->compare[i];

        if ((unsigned)cp->target > AR_ETCD_CMP_VALUE || (unsigned)cp->result > AR_ETCD_NOT_EQUAL ||
            !cp->key || !cp->key_len || (!cp->value && cp->value_len)) {
            *rc = -EINVAL;
            return NULL;
        }
    }
    for (size_t i = 0; i < t->n_success; i++)
        if (!op_ok(&t->success[i])) {
            *rc = -EINVAL;
            return NULL;
        }
    for (size_t i = 0; i < t->n_failure; i++)
        if (!op_ok(&t->failure[i])) {
            *rc = -EINVAL;
            return NULL;
        }
    return frame(txn_body, t, len, rc);
}

/* ---- reading ------------------------------------------------------------------------------- */

struct pbr {
    const uint8_t *p, *end;
};

struct field {
    unsigned num, wt;
    uint64_t v;          /* varint, i64, i32 */
    const uint8_t *data; /* WT_LEN */
    size_t len;
};

static int get_varint(struct pbr *r, uint64_t *out)
{
    uint64_t v = 0;

    for (unsigned shift = 0; shift < 64; shift += 7) {
        uint8_t b;

        if (r->p >= r->end)
            return -EPROTO;
        b = *r->p++;
        if (shift == 63 && b > 1)
            return -EPROTO;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -EPROTO;
}

/* The next field, or 1 at the end of the message. */
static int next_field(struct pbr *r, struct field *f)
{
    uint64_t tag, n;

    if (r->p == r->end)
        return 1;
    if (get_varint(r, &tag) < 0 || tag >> 3 == 0 || tag >> 3 > 536870911u)
        return -EPROTO;
    f->num = (unsigned)(tag >> 3);
    f->wt = (unsigned)(tag & 7);
    f->v = 0;
    f->data = NULL;
    f->len = 0;
    switch (f->wt) {
    case WT_VARINT:
        return get_varint(r, &f->v);
    case WT_I64:
    case WT_I32:
        n = f->wt == WT_I64 ? 8 : 4;
        if ((size_t)(r->end - r->p) < n)
            return -EPROTO;
        for (unsigned i = 0; i < n; i++)
            f->v |= (uint64_t)r->p[i] << (8 * i);
        r->p += n;
        return 0;
    case WT_LEN:
        if (get_varint(r, &n) < 0 || n > (size_t)(r->end - r->p))
            return -EPROTO;
        f->data = r->p;
        f->len = (size_t)n;
        r->p += n;
        return 0;
    default: /* groups (3, 4) and 6, 7 */
        return -EPROTO;
    }
}

static int want(const struct field *f, unsigned wt)
{
    return f->wt == wt ? 0 : -EPROTO;
}

static int copy_bytes(const struct field *f, uint8_t **out, size_t *len)
{
    uint8_t *p;

    if (want(f, WT_LEN) < 0)
        return -EPROTO;
    p = malloc(f->len + 1);
    if (!p)
        return -ENOMEM;
    if (f->len)
        memcpy(p, f->data, f->len);
    p[f->len] = 0;
    if (*out) { /* a repeated scalar field: the last one wins */
        sodium_memzero(*out, *len);
        free(*out);
    }
    *out = p;
    *len = f->len;
    return 0;
}

static int get_int(const struct field *f, int64_t *out)
{
    if (want(f, WT_VARINT) < 0)
        return -EPROTO;
    *out = (int64_t)f->v;
    return 0;
}

static int get_bool(const struct field *f, bool *out)
{
    if (want(f, WT_VARINT) < 0)
        return -EPROTO;
    *out = f->v != 0;
    return 0;
}

/* mvccpb.KeyValue */
static int parse_kv(const uint8_t *p, size_t n, struct ar_etcd_kv *kv)
{
    struct pbr r = {p, p + n};
    struct field f;
    int rc;

    memset(kv, 0, sizeof(*kv));
    while ((rc = next_field(&r, &f)) == 0) {
        switch (f.num) {
        case 1:
            rc = copy_bytes(&f, &kv->key, &kv->key_len);
            break;
        case 2:
            rc = get_int(&f, &kv->create_revision);
            break;
        case 3:
            rc = get_int(&f, &kv->mod_revision);
            break;
        case 4:
            rc = get_int(&f, &kv->version);
            break;
        case 5:
            rc = copy_bytes(&f, &kv->value, &kv->value_len);
            break;
        case 6:
            rc = get_int(&f, &kv->lease);
            break;
        default:
            rc = 0;
        }
        if (rc < 0)
            goto fail;
    }
    if (rc < 0)
        goto fail;
    rc = 0;
    /* omitted = empty; still NUL-terminated buffers, as from the JSON path */
    if (!kv->key && !(kv->key = calloc(1, 1)))
        rc = -ENOMEM;
    if (!rc && !kv->value && !(kv->value = calloc(1, 1)))
        rc = -ENOMEM;
    if (!rc)
        return 0;
fail:
    ar_kv_clear(kv);
    return rc;
}

/* How many length-delimited fields number num the message at p has (a repeated message);
 * a malformed message is -EPROTO. */
static int count_msgs(const uint8_t *p, size_t n, unsigned num, size_t *count)
{
    struct pbr r = {p, p + n};
    struct field f;
    int rc;

    *count = 0;
    while ((rc = next_field(&r, &f)) == 0)
        if (f.num == num && f.wt == WT_LEN)
            (*count)++;
    return rc < 0 ? rc : 0;
}

/* Every field number kv_field of the message at p (repeated KeyValue) -> res->kvs. */
static int parse_kvs(struct ar_etcd *c, const uint8_t *p, size_t n, unsigned kv_field,
                     struct ar_etcd_result *res)
{
    struct pbr r = {p, p + n};
    struct field f;
    size_t count;
    int rc;

    if ((rc = count_msgs(p, n, kv_field, &count)) < 0 || !count)
        return rc;
    res->kvs = calloc(count, sizeof(*res->kvs));
    if (!res->kvs)
        return -ENOMEM;
    while ((rc = next_field(&r, &f)) == 0) {
        if (f.num != kv_field || f.wt != WT_LEN)
            continue;
        if ((rc = parse_kv(f.data, f.len, &res->kvs[res->n_kvs])) < 0)
            return rc;
        res->n_kvs++;
        ar_kvs_account(c, 1, true);
    }
    return rc < 0 ? rc : 0;
}

/* ResponseHeader: revision = 3 */
static int parse_header(const struct field *hf, int64_t *rev)
{
    struct pbr r;
    struct field f;
    int rc;

    if (want(hf, WT_LEN) < 0)
        return -EPROTO;
    r = (struct pbr){hf->data, hf->data + hf->len};
    while ((rc = next_field(&r, &f)) == 0)
        if (f.num == 3 && (rc = get_int(&f, rev)) < 0)
            return rc;
    return rc < 0 ? rc : 0;
}

static int parse_msg(struct ar_etcd *c, const uint8_t *p, size_t n, enum ar_etcd_op_type type,
                     bool txn, int depth, struct ar_etcd_result *res);

/* TxnResponse.responses: ResponseOp { response_range 1, put 2, delete_range 3, txn 4 } */
static int parse_responses(struct ar_etcd *c, const uint8_t *p, size_t n, int depth,
                           struct ar_etcd_result *res)
{
    struct pbr r = {p, p + n};
    struct field f;
    size_t count;
    int rc;

    if ((rc = count_msgs(p, n, 3, &count)) < 0 || !count)
        return rc;
    res->ops = calloc(count, sizeof(*res->ops));
    if (!res->ops)
        return -ENOMEM;
    while ((rc = next_field(&r, &f)) == 0) {
        struct pbr or ;
        struct field of;
        bool seen = false;

        if (f.num != 3)
            continue;
        if (want(&f, WT_LEN) < 0)
            return -EPROTO;
        or = (struct pbr){f.data, f.data + f.len};
        while ((rc = next_field(& or, &of)) == 0) {
            if (of.num < 1 || of.num > 4)
                continue;
            /* a nested txn is not part of this API; a oneof set twice is not an answer */
            if (of.num == 4 || seen || want(&of, WT_LEN) < 0)
                return -EPROTO;
            seen = true;
            rc = parse_msg(c, of.data, of.len, (enum ar_etcd_op_type)(of.num - 1), false, depth + 1,
                           &res->ops[res->n_ops]);
            res->n_ops++;
            if (rc < 0)
                return rc;
        }
        if (rc < 0 || !seen)
            return -EPROTO;
    }
    return rc < 0 ? rc : 0;
}

/*
 * RangeResponse  { header 1, kvs 2, more 3, count 4 }
 * PutResponse    { header 1, prev_kv 2 }
 * DeleteRange... { header 1, deleted 2, prev_kvs 3 }
 * TxnResponse    { header 1, succeeded 2, responses 3 }
 */
static int parse_msg(struct ar_etcd *c, const uint8_t *p, size_t n, enum ar_etcd_op_type type,
                     bool txn, int depth, struct ar_etcd_result *res)
{
    struct pbr r = {p, p + n};
    struct field f;
    unsigned kv_field = 0;
    int rc;

    memset(res, 0, sizeof(*res));
    res->type = type;
    if (depth > 1)
        return -EPROTO;
    if (txn)
        rc = parse_responses(c, p, n, depth, res);
    else {
        kv_field = type == AR_ETCD_RANGE ? 2 : type == AR_ETCD_PUT ? 2 : 3;
        rc = parse_kvs(c, p, n, kv_field, res);
        if (!rc && type == AR_ETCD_PUT && res->n_kvs > 1)
            rc = -EPROTO; /* prev_kv is one message */
    }
    if (rc < 0)
        return rc;
    while ((rc = next_field(&r, &f)) == 0) {
        if (f.num == 1) {
            rc = parse_header(&f, &res->revision);
        } else if (txn) {
            if (f.num == 2)
                rc = get_bool(&f, &res->succeeded);
            else if (f.num == 3)
                rc = want(&f, WT_LEN);
        } else if (f.num == kv_field) {
            rc = want(&f, WT_LEN);
        } else if (type == AR_ETCD_RANGE && f.num == 3) {
            rc = get_bool(&f, &res->more);
        } else if (type == AR_ETCD_RANGE && f.num == 4) {
            rc = get_int(&f, &res->count);
        } else if (type == AR_ETCD_DELETE && f.num == 2) {
            rc = get_int(&f, &res->deleted);
        }
        if (rc < 0)
            return rc;
    }
    if (rc < 0)
        return rc;
    /* users compute revision + 1: reject what etcd never sends */
    if (res->revision < 0 || res->revision == INT64_MAX || res->count < 0 || res->deleted < 0)
        return -EPROTO;
    return 0;
}

int ar_pb_unframe(const uint8_t *p, size_t n, const uint8_t **msg, size_t *len)
{
    size_t l;

    if (n < 5 || p[0] != 0) /* we never ask for compression */
        return -EPROTO;
    l = (size_t)p[1] << 24 | (size_t)p[2] << 16 | (size_t)p[3] << 8 | p[4];
    if (l != n - 5) /* a unary answer is exactly one message */
        return -EPROTO;
    *msg = p + 5;
    *len = l;
    return 0;
}

int ar_pb_parse_result(struct ar_etcd *c, const uint8_t *p, size_t n, enum ar_etcd_op_type type,
                       bool txn, struct ar_etcd_result *res)
{
    return parse_msg(c, p, n, type, txn, 0, res);
}
