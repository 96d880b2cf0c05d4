/* fuzz/fuzz_etcd_pb.c: arbitrary bytes as etcd gRPC answers to the KV calls, through the same
 * code as real answers (coord/etcd/etcd_int.h): the header callback (grpc-status and
 * grpc-message lines, as headers or trailers), then ar_etcd_decode_grpc (the 5-byte frame, the
 * protobuf of a Range, Put, DeleteRange or Txn response).
 * Input: byte 0 = answer type (bits 0-1: range, put, delete, txn) and how the status comes
 * (bits 2-3: "grpc-status: 0"; none; a header line taken from the input; status 14 with a
 * percent-encoded message), bit 4: frame the body here (so the parser is reached at once);
 * byte 1 = length of the header line taken from the input; then that line, then the body.
 * Invariants beyond "no crash, no leak": an error status equals err.code, a gRPC error carries
 * its code, returned keys and values are NUL-terminated, no result on failure, nesting never
 * deeper than a txn, and no kv stays accounted on the client. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "coord/etcd/etcd_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
const char *__ubsan_default_options(void);

/* The fuzz build's -fsanitize=undefined recovers by default: make every report a crash. */
const char *__ubsan_default_options(void)
{
    return "halt_on_error=1:print_stacktrace=1";
}

static uv_loop_t loop;
static struct ar_etcd *client;
static volatile size_t sink;

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_etcd_pb: invariant violated: %s\n", what);
        abort();
    }
}

static void check_result(const struct ar_etcd_result *r, int depth)
{
    check(depth < 2, "nested results deeper than a txn");
    check(r->n_kvs == 0 || r->kvs, "kvs count without kvs");
    check(r->n_ops == 0 || r->ops, "ops count without ops");
    check(r->revision >= 0 && r->count >= 0 && r->deleted >= 0, "negative revision or count");
    for (size_t i = 0; i < r->n_kvs; i++) {
        const struct ar_etcd_kv *kv = &r->kvs[i];

        check(kv->key && kv->key[kv->key_len] == 0, "key not NUL-terminated");
        check(kv->value && kv->value[kv->value_len] == 0, "value not NUL-terminated");
        for (size_t j = 0; j < kv->key_len; j++)
            sink += kv->key[j];
        for (size_t j = 0; j < kv->value_len; j++)
            sink += kv->value[j];
    }
    for (size_t i = 0; i < r->n_ops; i++)
        check_result(&r->ops[i], depth + 1);
}

static void header(struct ar_xfer *x, const char *s, size_t n)
{
    char line[300];

    if (n > sizeof(line) - 2)
        n = sizeof(line) - 2;
    memcpy(line, s, n);
    memcpy(line + n, "\r\n", 2);
    ar_xfer_grpc_header(line, 1, n + 2, x);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ar_etcd_settings s = {.endpoints = {"http://127.0.0.1:9"}, .n_endpoints = 1};
    struct ar_xfer x = {0};
    struct ar_etcd_error e;
    struct ar_etcd_result *res = NULL;
    const uint8_t *body;
    size_t hl, n, off = 0;
    bool txn;
    int st;

    if (!client) {
        if (uv_loop_init(&loop) < 0 || ar_etcd_new(&loop, &s, &client) < 0)
            abort();
    }
    if (size < 2)
        return 0;
    hl = data[1];
    if (hl > size - 2)
        hl = size - 2;
    body = data + 2 + hl;
    n = size - 2 - hl;
    x.c = client;
    x.grpc = true;
    x.grpc_status = -1;
    switch ((data[0] >> 2) & 3) {
    case 0:
        header(&x, "grpc-status: 0", 14);
        break;
    case 1:
        break;
    case 2:
        header(&x, (const char *)data + 2, hl);
        break;
    case 3:
        header(&x, "Grpc-Status: 14", 15);
        header(&x, "grpc-message: etcdserver%3A no leader%00%zz", 43);
        break;
    }
    x.resp = malloc(n + 6);
    if (!x.resp)
        return 0;
    if (data[0] & 0x10) {
        x.resp[0] = 0;
        x.resp[1] = (char)(n >> 24);
        x.resp[2] = (char)(n >> 16);
        x.resp[3] = (char)(n >> 8);
        x.resp[4] = (char)n;
        off = 5;
    }
    if (n)
        memcpy(x.resp + off, body, n);
    x.resp_len = n + off;
    x.resp[x.resp_len] = 0;
    x.resp_cap = n + 6;
    txn = (data[0] & 3) == 3;
    st = ar_etcd_decode_grpc(&x, txn ? AR_ETCD_RANGE : (enum ar_etcd_op_type)(data[0] & 3), txn,
                             &res, &e);
    if (st < 0) {
        check(res == NULL, "result on failure");
        check(e.code == st, "err.code differs from the status");
        check(memchr(e.msg, 0, sizeof(e.msg)) != NULL, "message not terminated");
        check(x.grpc_status <= 0 || x.grpc_status > 16 || e.grpc_code == x.grpc_status,
              "gRPC error without its code");
    } else {
        check(res != NULL && x.grpc_status == 0, "success without status 0");
        check_result(res, 0);
        ar_etcd_result_free(res);
    }
    free(x.resp);
    check(client->kvs_live == 0, "kvs still accounted after the results were freed");
    return 0;
}
