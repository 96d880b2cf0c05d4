/* coord/reencrypt.c: the re-encrypt pass (see reencrypt.h). */
#include "coord/reencrypt.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <sodium.h>

#include "coord/verify.h"
#include "crypto/buf.h"
#include "crypto/resource.h"

#define DEFAULT_PAGE     500u
#define DEFAULT_READERS  8u
#define DEFAULT_INFLIGHT 8u
#define DEFAULT_CK_EVERY 10000u
#define DEFAULT_CK_MS    5000u
#define TICK_MS          20u
#define CKPT_MAX_BYTES   4096u
#define KEY_MAX          AR_REENCRYPT_KEY_MAX
#define KEY_CUT          (KEY_MAX - 1) /* a longer key's stand-in: its first KEY_CUT bytes */
_Static_assert(KEY_CUT == 1399, "the errors say 1399");

/* B_READING: a reader's placeholder, the end of its key range; it holds the cursor back until
 * the reader has read (and queued) everything before it. */
enum bstate { B_READING, B_QUEUED, B_SENT, B_RETRY, B_DONE };

#define MAX_READERS  8
#define SPLIT_ROUNDS 4      /* a split cuts this many rounds of nreaders pages */
#define SPLIT_MAX    65536u /* keys in one split at most (halved while the answer is too big) */

struct counts {
    uint64_t rewritten, skipped, conflicts, failed;
};

struct item {
    size_t koff, klen, voff, vlen;
    int64_t mod;
};

struct ar_reencrypt;

struct single {
    struct batch *b;
    size_t i;
};

struct batch {
    struct batch *next;
    struct ar_reencrypt *r;
    enum bstate st;
    size_t n, body;
    struct item it[AR_REENCRYPT_MAX_OPS];
    struct single sc[AR_REENCRYPT_MAX_OPS];
    struct ar_buf mem; /* keys and new values, wiped */
    size_t next_single, singles_out;
    struct counts cnt;
    uint64_t handled;
    size_t selector;
    uint64_t sent_ms;
    uint8_t *end_key; /* the last key this batch covers (NULL: none) */
    size_t end_len;
};

struct sel {
    char group[256], resource[256];
    bool wild;
    uint8_t start[KEY_MAX], end[KEY_MAX];
    size_t start_len, end_len;
};

/* A reader pages through one piece [pos, end) of a selector's range; its batches go into the
 * queue after prev and before its placeholder ph, so the queue stays in key order. */
struct reader {
    struct ar_reencrypt *r;
    uint8_t pos[KEY_MAX + 1], end[KEY_MAX + 1];
    size_t pos_len, end_len;
    unsigned limit;
    uint8_t *skip; /* pos is this long key's stand-in: skip keys up to it (NULL: none) */
    size_t skip_len;
    struct batch *prev, *ph;
    bool active, inflight;
    uint64_t sent_ms;
};

struct ar_reencrypt {
    struct ar_etcd *c;
    struct ar_chain *chain;
    char prefix[1024];
    struct sel *sel;
    size_t nsel;
    char *ckpt_key;
    struct ar_etcd_compare *guard;
    size_t n_guard;
    unsigned page, inflight_max, ck_every, ck_ms;
    double rate_limit;
    ar_reencrypt_progress_cb progress_cb;
    ar_reencrypt_done_cb done_cb;
    void *arg;

    uv_timer_t *tick;
    unsigned pending; /* etcd requests outstanding */
    unsigned inflight;
    bool stopped, finished, in_cb, tick_closed, counting, started;
    bool *freed_flag;

    /* scan position (ahead of the committed cursor): the selector's range from rpos on is not
     * given to a reader yet; sel_eof: all of it is */
    size_t cur_sel;
    uint8_t rpos[KEY_MAX + 1];
    size_t rpos_len;
    bool splitting, sel_eof;
    size_t split_limit; /* keys a split asks for */
    /* where the next cut's range (and the one in flight) ends: a guess from the last cut, see
     * next_cut_end; 0: the selector's end. Only on_split changes it while a cut is out. */
    uint8_t cut_end[KEY_MAX];
    size_t cut_end_len;
    struct reader rd[MAX_READERS];
    unsigned nreaders;
    /* pieces cut by the last split and not given to a reader yet: [bound[i], bound[i + 1])
     * for next_piece <= i < nbounds - 1 (bounds in one wiped-on-free block; keys only) */
    uint8_t *bound;
    size_t *bound_len;
    size_t nbounds, next_piece;

    /* committed (what the checkpoint says) */
    size_t com_sel;
    uint8_t com_cursor[KEY_MAX];
    size_t com_cursor_len;
    struct counts com;
    uint64_t com_done;

    struct counts live;
    uint64_t live_done, total, resumed, since_ckpt;
    uint64_t t0_ms, last_ckpt_ms;
    bool ckpt_inflight, ckpt_want, final_ckpt_sent;
    unsigned checkpoints;
    uint64_t range_ms, handle_ns, txn_ms, txns;

    struct batch *head, *tail;
    size_t nbatches, held, peak_window;

    struct ar_buf pt, enc;
    /* wildcard decision cache */
    char last_g[256], last_r[256];
    size_t last_sel;
    bool last_ours;

    char first_failed[600];
};

/* ---- checkpoint record ------------------------------------------------------------------- */

static const char *const ck_fields[] = {"selector",  "cursor", "done",  "rewritten", "skipped",
                                        "conflicts", "failed", "total", "time_ms"};

static int get_u64(json_t *o, const char *name, uint64_t *out)
{
    json_t *v = json_object_get(o, name);

    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -EBADMSG;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

int ar_reencrypt_ckpt_parse(const uint8_t *p, size_t n, struct ar_reencrypt_ckpt *out)
{
    json_t *root, *cur;
    json_error_t je;
    uint64_t sel = 0;
    const char *s;
    size_t bl = 0;
    int r = -EBADMSG;

    memset(out, 0, sizeof(*out));
    if (!p || n > CKPT_MAX_BYTES)
        return -EBADMSG;
    root = json_loadb((const char *)p, n, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return -EBADMSG;
    if (!json_is_object(root) || json_object_size(root) != sizeof(ck_fields) / sizeof(ck_fields[0]))
        goto out;
    for (size_t i = 0; i < sizeof(ck_fields) / sizeof(ck_fields[0]); i++)
        if (!json_object_get(root, ck_fields[i]))
            goto out;
    cur = json_object_get(root, "cursor");
    if (!json_is_string(cur))
        goto out;
    s = json_string_value(cur);
    if (get_u64(root, "selector", &sel) || sel > AR_REENCRYPT_MAX_SELECTORS ||
        get_u64(root, "done", &out->done) || get_u64(root, "rewritten", &out->rewritten) ||
        get_u64(root, "skipped", &out->skipped) || get_u64(root, "conflicts", &out->conflicts) ||
        get_u64(root, "failed", &out->failed) || get_u64(root, "total", &out->total) ||
        get_u64(root, "time_ms", &out->time_ms))
        goto out;
    if (out->rewritten + out->skipped + out->conflicts + out->failed != out->done)
        goto out;
    if (json_string_length(cur) &&
        sodium_base642bin(out->cursor, sizeof(out->cursor), s, json_string_length(cur), NULL, &bl,
                          NULL, sodium_base64_VARIANT_ORIGINAL) != 0)
        goto out;
    out->cursor_len = bl;
    out->selector = (size_t)sel;
    r = 0;
out:
    json_decref(root);
    if (r < 0)
        memset(out, 0, sizeof(*out));
    return r;
}

char *ar_reencrypt_ckpt_build(const struct ar_reencrypt_ckpt *c, size_t *len)
{
    char b64[sizeof(c->cursor) * 4 / 3 + 8];
    json_t *o;
    char *s;

    if (c->cursor_len > sizeof(c->cursor))
        return NULL;
    sodium_bin2base64(b64, sizeof(b64), c->cursor, c->cursor_len, sodium_base64_VARIANT_ORIGINAL);
    o = json_pack("{sI sI sI sI sI sI sI sI ss}", "selector", (json_int_t)c->selector, "done",
                  (json_int_t)c->done, "rewritten", (json_int_t)c->rewritten, "skipped",
                  (json_int_t)c->skipped, "conflicts", (json_int_t)c->conflicts, "failed",
                  (json_int_t)c->failed, "total", (json_int_t)c->total, "time_ms",
                  (json_int_t)c->time_ms, "cursor", b64);
    if (!o)
        return NULL;
    s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    if (s && len)
        *len = strlen(s);
    return s;
}

/* ---- lifetime ------------------------------------------------------------------------------ */

static void batch_free(struct batch *b)
{
    ar_buf_free(&b->mem);
    free(b->end_key);
    free(b);
}

static void engine_free(struct ar_reencrypt *r)
{
    while (r->head) {
        struct batch *b = r->head;

        r->head = b->next;
        batch_free(b);
    }
    ar_buf_free(&r->pt);
    ar_buf_free(&r->enc);
    free(r->bound);
    free(r->bound_len);
    for (unsigned i = 0; i < MAX_READERS; i++)
        free(r->rd[i].skip);
    ar_chain_unref(r->chain);
    free(r->sel);
    free(r->ckpt_key);
    for (size_t i = 0; i < r->n_guard; i++) {
        free((void *)r->guard[i].key);
        free((void *)r->guard[i].value);
    }
    free(r->guard);
    if (r->freed_flag)
        *r->freed_flag = true;
    sodium_memzero(r, sizeof(*r));
    free(r);
}

void ar_reencrypt_progress_rate(struct ar_reencrypt_progress *p, uint64_t counted, double elapsed_s)
{
    if (p->total < p->done)
        p->total = p->done;
    p->rate = elapsed_s > 0 ? (double)counted / elapsed_s : 0;
    p->eta_s = p->rate > 0 ? (double)(p->total - p->done) / p->rate : -1;
}

static void try_free(struct ar_reencrypt *r)
{
    if ((r->stopped || r->finished) && !r->pending && !r->in_cb && (r->tick_closed || !r->tick))
        engine_free(r);
}

static void tick_closed(uv_handle_t *h)
{
    struct ar_reencrypt *r = h->data;

    free(h);
    r->tick = NULL;
    r->tick_closed = true;
    try_free(r);
}

static void teardown(struct ar_reencrypt *r)
{
    if (r->tick && !uv_is_closing((uv_handle_t *)r->tick)) {
        uv_timer_stop(r->tick);
        uv_close((uv_handle_t *)r->tick, tick_closed);
    }
    try_free(r);
}

static void fill_progress(const struct ar_reencrypt *r, struct ar_reencrypt_progress *p)
{
    uint64_t now = ar_etcd_now_ms();
    double el = (double)(now - r->t0_ms) / 1000.0;

    memset(p, 0, sizeof(*p));
    p->done = r->live_done;
    p->total = r->total;
    p->rewritten = r->live.rewritten;
    p->skipped = r->live.skipped;
    p->conflicts = r->live.conflicts;
    p->failed = r->live.failed;
    ar_reencrypt_progress_rate(p, r->live_done - r->resumed, el);
    p->selector = r->cur_sel;
    p->resumed = r->resumed;
    p->peak_window = r->peak_window;
    p->checkpoints = r->checkpoints;
    p->range_ms = r->range_ms;
    p->handle_ms = r->handle_ns / 1000000u;
    p->txn_ms = r->txn_ms;
    p->txns = r->txns;
    snprintf(p->first_failed, sizeof(p->first_failed), "%s", r->first_failed);
}

static void finish(struct ar_reencrypt *r, int status, const struct ar_err *err)
{
    struct ar_reencrypt_progress p;

    if (r->finished || r->stopped)
        return;
    r->finished = true;
    fill_progress(r, &p);
    r->in_cb = true;
    r->done_cb(r->arg, status, &p, err);
    r->in_cb = false;
    teardown(r);
}

static void fail(struct ar_reencrypt *r, int status, const char *what,
                 const struct ar_etcd_error *ee)
{
    struct ar_err e;

    ar_err_from_etcd(&e, what, status, ee);
    finish(r, status, &e);
}

/* Returns true when the pass was stopped (or finished) meanwhile: the caller returns. */
static bool progress(struct ar_reencrypt *r)
{
    struct ar_reencrypt_progress p;

    if (r->progress_cb && !r->stopped && !r->finished) {
        fill_progress(r, &p);
        r->in_cb = true;
        r->progress_cb(r->arg, &p);
        r->in_cb = false;
    }
    return r->stopped || r->finished;
}

/* ---- checkpoint writes --------------------------------------------------------------------- */

static void pump(struct ar_reencrypt *r);

/* The start of every etcd callback after its pending-- : false when the callback must stop
 * there (the pass was stopped or finished: freed when this was the last answer; or the
 * request failed: the pass fails with what said). */
static bool answered(struct ar_reencrypt *r, int status, const char *what,
                     const struct ar_etcd_error *err)
{
    if (r->stopped || r->finished) {
        try_free(r);
        return false;
    }
    if (status < 0) {
        fail(r, status, what, err);
        return false;
    }
    return true;
}

static void on_ckpt(void *arg, int status, const struct ar_etcd_result *res,
                    const struct ar_etcd_error *err)
{
    struct ar_reencrypt *r = arg;

    r->pending--;
    r->ckpt_inflight = false;
    if (!answered(r, status, "re-encrypt checkpoint", err))
        return;
    if (!res->succeeded) {
        struct ar_err e;

        ar_err_set(&e, -EPERM, r->ckpt_key, "re-encrypt: the guard failed: no longer the leader");
        finish(r, -EPERM, &e);
        return;
    }
    r->checkpoints++;
    if (!progress(r))
        pump(r);
}

static int write_ckpt(struct ar_reencrypt *r)
{
    struct ar_reencrypt_ckpt ck = {
        .selector = r->com_sel,
        .cursor_len = r->com_cursor_len,
        .done = r->com_done,
        .rewritten = r->com.rewritten,
        .skipped = r->com.skipped,
        .conflicts = r->com.conflicts,
        .failed = r->com.failed,
        .total = r->total > r->live_done ? r->total : r->live_done,
        .time_ms = 0,
    };
    struct ar_etcd_op put = {.type = AR_ETCD_PUT};
    struct ar_etcd_txn t = {
        .compare = r->guard, .n_compare = r->n_guard, .success = &put, .n_success = 1};
    struct timespec ts;
    size_t len = 0;
    char *s;
    int rc;

    if (!r->ckpt_key) {
        r->ckpt_want = false;
        return 0;
    }
    if (r->ckpt_inflight) {
        r->ckpt_want = true;
        return 0;
    }
    clock_gettime(CLOCK_REALTIME, &ts);
    ck.time_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    if (r->com_cursor_len > sizeof(ck.cursor))
        return -ENAMETOOLONG; /* not reached: advance_head cuts it */
    memcpy(ck.cursor, r->com_cursor, r->com_cursor_len);
    s = ar_reencrypt_ckpt_build(&ck, &len);
    if (!s)
        return -ENOMEM;
    put.key = (const uint8_t *)r->ckpt_key;
    put.key_len = strlen(r->ckpt_key);
    put.value = (const uint8_t *)s;
    put.value_len = len;
    rc = ar_etcd_txn(r->c, &t, on_ckpt, r);
    free(s);
    if (rc < 0)
        return rc;
    r->pending++;
    r->ckpt_inflight = true;
    r->ckpt_want = false;
    r->since_ckpt = 0;
    r->last_ckpt_ms = ar_etcd_now_ms();
    return 0;
}

/* ---- batches ------------------------------------------------------------------------------- */

static void on_batch(void *arg, int status, const struct ar_etcd_result *res,
                     const struct ar_etcd_error *err);
static void on_single(void *arg, int status, const struct ar_etcd_result *res,
                      const struct ar_etcd_error *err);

static int send_batch(struct ar_reencrypt *r, struct batch *b, size_t from, size_t n, void *arg,
                      ar_etcd_cb cb)
{
    struct ar_etcd_compare cmp[AR_REENCRYPT_MAX_OPS];
    struct ar_etcd_op ops[AR_REENCRYPT_MAX_OPS];
    struct ar_etcd_txn t = {.compare = cmp, .n_compare = n, .success = ops, .n_success = n};
    int rc;

    for (size_t k = 0; k < n; k++) {
        const struct item *it = &b->it[from + k];

        cmp[k] = (struct ar_etcd_compare){.key = b->mem.p + it->koff,
                                          .key_len = it->klen,
                                          .target = AR_ETCD_CMP_MOD,
                                          .result = AR_ETCD_EQUAL,
                                          .number = it->mod};
        ops[k] = (struct ar_etcd_op){.type = AR_ETCD_PUT,
                                     .key = b->mem.p + it->koff,
                                     .key_len = it->klen,
                                     .value = b->mem.p + it->voff,
                                     .value_len = it->vlen};
    }
    rc = ar_etcd_txn(r->c, &t, cb, arg);
    if (rc == 0) {
        r->pending++;
        r->inflight++;
        b->sent_ms = ar_etcd_now_ms();
    }
    return rc;
}

static void batch_done(struct ar_reencrypt *r, struct batch *b)
{
    b->st = B_DONE;
    ar_buf_free(&b->mem); /* the new values are no longer needed */
    r->held -= b->n;
}

/* Pop finished batches off the head: the committed cursor moves over them. */
static void advance_head(struct ar_reencrypt *r)
{
    while (r->head && r->head->st == B_DONE) {
        struct batch *b = r->head;

        r->com.rewritten += b->cnt.rewritten;
        r->com.skipped += b->cnt.skipped;
        r->com.conflicts += b->cnt.conflicts;
        r->com.failed += b->cnt.failed;
        r->com_done += b->handled;
        r->since_ckpt += b->handled;
        if (b->end_key) {
            /* a longer key: its first KEY_CUT bytes, all of which is handled too */
            r->com_cursor_len = b->end_len < KEY_CUT ? b->end_len : KEY_CUT;
            memcpy(r->com_cursor, b->end_key, r->com_cursor_len);
            r->com_sel = b->selector;
        }
        r->head = b->next;
        if (!r->head)
            r->tail = NULL;
        r->nbatches--;
        for (unsigned i = 0; i < MAX_READERS; i++)
            if (r->rd[i].prev == b) /* it was just before the reader's placeholder */
                r->rd[i].prev = NULL;
        batch_free(b);
    }
    if (r->since_ckpt >= r->ck_every)
        r->ckpt_want = true;
}

static void on_batch(void *arg, int status, const struct ar_etcd_result *res,
                     const struct ar_etcd_error *err)
{
    struct batch *b = arg;
    struct ar_reencrypt *r = b->r;

    r->pending--;
    r->inflight--;
    r->txn_ms += ar_etcd_now_ms() - b->sent_ms;
    r->txns++;
    if (!answered(r, status, "re-encrypt txn", err))
        return;
    if (res->succeeded) {
        b->cnt.rewritten += b->n;
        r->live.rewritten += b->n;
        batch_done(r, b);
    } else {
        b->st = B_RETRY; /* someone changed one of them: one by one */
        b->next_single = 0;
    }
    pump(r);
}

static void on_single(void *arg, int status, const struct ar_etcd_result *res,
                      const struct ar_etcd_error *err)
{
    struct single *s = arg;
    struct batch *b = s->b;
    struct ar_reencrypt *r = b->r;

    r->pending--;
    r->inflight--;
    b->singles_out--;
    if (!answered(r, status, "re-encrypt txn", err))
        return;
    if (res->succeeded) {
        b->cnt.rewritten++;
        r->live.rewritten++;
    } else {
        b->cnt.conflicts++;
        r->live.conflicts++;
    }
    if (b->next_single == b->n && !b->singles_out)
        batch_done(r, b);
    pump(r);
}

/* ---- pages --------------------------------------------------------------------------------- */

/* A new batch after `after` (NULL: at the head). */
static struct batch *batch_open(struct ar_reencrypt *r, struct batch *after)
{
    struct batch *b = calloc(1, sizeof(*b));

    if (!b)
        return NULL;
    b->r = r;
    b->st = B_QUEUED;
    b->selector = r->cur_sel;
    b->mem.max = AR_ETCD_MAX_BODY;
    if (after) {
        b->next = after->next;
        after->next = b;
    } else {
        b->next = r->head;
        r->head = b;
    }
    if (r->tail == after)
        r->tail = b;
    r->nbatches++;
    return b;
}

static int batch_close(struct batch *b, const uint8_t *key, size_t len)
{
    if (!key)
        return 0;
    b->end_key = malloc(len ? len : 1);
    if (!b->end_key)
        return -ENOMEM;
    memcpy(b->end_key, key, len);
    b->end_len = len;
    return 0;
}

/* Is this key's resource the selector's? */
static bool ours(struct ar_reencrypt *r, const struct sel *s, const struct ar_resource *rs)
{
    struct ar_plist pl;
    char g[256], res[256];

    if (!s->wild)
        return !strcmp(rs->group, s->group) && !strcmp(rs->resource, s->resource);
    if (r->last_sel == r->cur_sel && !strcmp(rs->group, r->last_g) &&
        !strcmp(rs->resource, r->last_r))
        return r->last_ours;
    ar_chain_lookup(r->chain, rs->group, rs->resource, &pl);
    r->last_ours = pl.rule &&
                   ar_parse_group_resource(pl.rule, g, sizeof(g), res, sizeof(res)) == 0 &&
                   !strcmp(g, s->group) && !strcmp(res, s->resource);
    r->last_sel = r->cur_sel;
    snprintf(r->last_g, sizeof(r->last_g), "%s", rs->group);
    snprintf(r->last_r, sizeof(r->last_r), "%s", rs->resource);
    return r->last_ours;
}

static void note_failed(struct ar_reencrypt *r, struct batch *b, const struct ar_etcd_kv *kv,
                        const char *why)
{
    b->cnt.failed++;
    r->live.failed++;
    if (!r->first_failed[0]) {
        char k[300];
        size_t o = 0;

        for (size_t i = 0; i < kv->key_len && o + 5 < sizeof(k); i++) {
            uint8_t ch = kv->key[i];

            if (ch >= 0x20 && ch < 0x7f && ch != '\\')
                k[o++] = (char)ch;
            else
                o += (size_t)snprintf(k + o, 5, "\\x%02x", ch);
        }
        k[o] = 0;
        snprintf(r->first_failed, sizeof(r->first_failed), "%s: %s", k, why);
    }
}

/* One value: skip, fail or add to the open batch (opening a new one when full). */
static int handle_kv(struct ar_reencrypt *r, struct batch **bp, const struct ar_etcd_kv *kv,
                     const uint8_t *prev_key, size_t prev_len)
{
    const struct sel *s = &r->sel[r->cur_sel];
    struct batch *b = *bp;
    struct ar_resource rs;
    struct ar_result res;
    struct item *it;
    size_t cost;
    int rc;

    if (ar_resource_of_key(r->prefix, (const char *)kv->key, kv->key_len, &rs) < 0 ||
        !ours(r, s, &rs))
        return 0; /* not this selector's: not counted */
    b->handled++;
    r->live_done++;
    memset(&res, 0, sizeof(res));
    rc = ar_chain_read(r->chain, rs.group, rs.resource, kv->key, kv->key_len, kv->value,
                       kv->value_len, &r->pt, &res);
    if (rc == -ENOMEM)
        return rc;
    if (rc < 0) {
        note_failed(r, b, kv, res.err[0] ? res.err : strerror(-rc));
        return 0;
    }
    if (!res.stale && res.provider_index <= 0 && res.key_index <= 0) {
        ar_buf_reset(&r->pt);
        b->cnt.skipped++;
        r->live.skipped++;
        return 0;
    }
    memset(&res, 0, sizeof(res));
    rc = ar_chain_write(r->chain, rs.group, rs.resource, kv->key, kv->key_len, r->pt.p, r->pt.len,
                        &r->enc, &res);
    ar_buf_reset(&r->pt);
    if (rc == -ENOMEM)
        return rc;
    if (rc < 0) {
        ar_buf_reset(&r->enc);
        note_failed(r, b, kv, res.err[0] ? res.err : strerror(-rc));
        return 0;
    }
    /* the request body: base64 of key (twice) and value, plus the JSON around them */
    cost = (2 * kv->key_len + r->enc.len) * 4 / 3 + 256;
    if (b->n == AR_REENCRYPT_MAX_OPS || (b->n && b->body + cost > AR_REENCRYPT_MAX_BODY)) {
        /* this object was counted in b: move it to the next batch, whose range starts after
         * prev_key */
        b->handled--;
        if ((rc = batch_close(b, prev_key, prev_len)) < 0)
            return rc;
        if (!(b = batch_open(r, b)))
            return -ENOMEM;
        *bp = b;
        b->handled++;
    }
    it = &b->it[b->n];
    it->koff = b->mem.len;
    it->klen = kv->key_len;
    if ((rc = ar_buf_append(&b->mem, kv->key, kv->key_len)) < 0)
        return rc;
    it->voff = b->mem.len;
    it->vlen = r->enc.len;
    if ((rc = ar_buf_append(&b->mem, r->enc.p, r->enc.len)) < 0)
        return rc;
    ar_buf_reset(&r->enc);
    it->mod = kv->mod_revision;
    b->n++;
    b->body += cost;
    r->held++;
    return 0;
}

/* dst = the first key after key (key, then a 0 byte): true. For a key of KEY_MAX bytes or more,
 * its first KEY_CUT bytes instead, which sort before it: false. dst holds KEY_MAX bytes. */
static bool set_after(uint8_t *dst, size_t *dlen, const uint8_t *key, size_t len)
{
    if (len >= KEY_MAX) {
        memcpy(dst, key, KEY_CUT);
        *dlen = KEY_CUT;
        return false;
    }
    memcpy(dst, key, len);
    dst[len] = 0;
    *dlen = len + 1;
    return true;
}

static void reader_done(struct reader *rd)
{
    rd->active = false;
    rd->ph->st = B_QUEUED; /* empty: done at the next pump */
}

static void on_page(void *arg, int status, const struct ar_etcd_result *res,
                    const struct ar_etcd_error *err)
{
    struct reader *rd = arg;
    struct ar_reencrypt *r = rd->r;
    struct batch *b;
    const uint8_t *prev = NULL;
    size_t prev_len = 0, i0 = 0;
    uint64_t t0;
    int rc;

    r->pending--;
    rd->inflight = false;
    r->range_ms += ar_etcd_now_ms() - rd->sent_ms;
    if (r->stopped || r->finished) {
        try_free(r);
        return;
    }
    if (status == -EMSGSIZE && rd->limit > 1) {
        rd->limit /= 2;
        pump(r);
        return;
    }
    if (status < 0) {
        fail(r, status, "re-encrypt range", err);
        return;
    }
    if (res->n_kvs + r->held > r->peak_window)
        r->peak_window = res->n_kvs + r->held;
    if (!(b = batch_open(r, rd->prev))) {
        fail(r, -ENOMEM, "re-encrypt", NULL);
        return;
    }
    t0 = uv_hrtime();
    if (rd->skip) { /* the page began at a long key's stand-in: up to that key is done */
        while (i0 < res->n_kvs &&
               !ar_etcd_key_before(rd->skip, rd->skip_len, res->kvs[i0].key, res->kvs[i0].key_len))
            i0++;
        free(rd->skip);
        rd->skip = NULL;
        if (i0 == res->n_kvs && res->more) {
            fail(r, -ENAMETOOLONG, "re-encrypt: a page of keys share their first 1399 bytes", NULL);
            return;
        }
    }
    for (size_t i = i0; i < res->n_kvs; i++) {
        if ((rc = handle_kv(r, &b, &res->kvs[i], prev, prev_len)) < 0) {
            fail(r, rc, "re-encrypt", NULL);
            return;
        }
        prev = res->kvs[i].key;
        prev_len = res->kvs[i].key_len;
    }
    r->handle_ns += uv_hrtime() - t0;
    rd->prev = b;
    if (prev && (rc = batch_close(b, prev, prev_len)) < 0) {
        fail(r, rc, "re-encrypt", NULL);
        return;
    }
    if (!res->more || !res->n_kvs) {
        reader_done(rd);
    } else if (!set_after(rd->pos, &rd->pos_len, prev, prev_len)) {
        /* a long key: the next page begins at its stand-in and skips up to it */
        if (!(rd->skip = malloc(prev_len))) {
            fail(r, -ENOMEM, "re-encrypt", NULL);
            return;
        }
        memcpy(rd->skip, prev, prev_len);
        rd->skip_len = prev_len;
    }
    if (!progress(r))
        pump(r);
}

/* A reader over [start, end) (end NULL: the selector's end), its placeholder at the tail. */
static int reader_start(struct ar_reencrypt *r, const uint8_t *start, size_t start_len,
                        const uint8_t *end, size_t end_len)
{
    struct reader *rd = NULL;

    for (unsigned i = 0; i < r->nreaders && !rd; i++)
        if (!r->rd[i].active)
            rd = &r->rd[i];
    if (!rd || start_len > KEY_MAX || end_len > KEY_MAX)
        return -EINVAL;
    free(rd->skip);
    memset(rd, 0, sizeof(*rd));
    rd->r = r;
    memcpy(rd->pos, start, start_len);
    rd->pos_len = start_len;
    if (end) {
        memcpy(rd->end, end, end_len);
        rd->end_len = end_len;
    } else {
        memcpy(rd->end, r->sel[r->cur_sel].end, r->sel[r->cur_sel].end_len);
        rd->end_len = r->sel[r->cur_sel].end_len;
    }
    rd->limit = r->page;
    rd->prev = r->tail;
    rd->ph = batch_open(r, r->tail);
    if (!rd->ph)
        return -ENOMEM;
    rd->ph->st = B_READING;
    rd->active = true;
    return 0;
}

/* etcd 3.4 walks its index to the end of every limited range (ar_etcd_guess_end): the next
 * cut's range ends at a guess. A cut that finds fewer keys than it asked for just cuts fewer
 * pieces, one that finds none leaves the next cut to go to the selector's end (on_split).
 * Pieces and the scan position come from the keys found, never from the guess, so no key is
 * skipped whatever it is. A cut that reached the end of its range makes no guess. */
static void next_cut_end(struct ar_reencrypt *r, const struct ar_etcd_result *res)
{
    const struct sel *s = &r->sel[r->cur_sel];
    const struct ar_etcd_kv *f = &res->kvs[0], *l = &res->kvs[res->n_kvs - 1];

    r->cut_end_len = 0;
    if (res->more && res->n_kvs == r->split_limit)
        r->cut_end_len = ar_etcd_guess_end(f->key, f->key_len, l->key, l->key_len, s->end,
                                           s->end_len, r->cut_end, sizeof(r->cut_end));
}

/* The split: keys only, SPLIT_ROUNDS * nreaders pages of them, cut into pieces of a page;
 * readers take the pieces in key order as they become free (start_pieces). etcd 3.4 visits
 * every key to the range's end for each range with a limit, so a split over the rest of the
 * selector costs etcd time in proportion to what is left: fewer, bigger splits, each ending
 * at a guess (next_cut_end). */
static void on_split(void *arg, int status, const struct ar_etcd_result *res,
                     const struct ar_etcd_error *err)
{
    struct ar_reencrypt *r = arg;
    size_t n, per = r->page, m, keep, k, first;
    uint8_t *nb;
    size_t *nl;

    r->pending--;
    r->splitting = false;
    if (status == -EMSGSIZE && !r->stopped && !r->finished && r->split_limit > r->page) {
        r->split_limit = r->split_limit / 2 > r->page ? r->split_limit / 2 : r->page;
        pump(r); /* the same split, fewer keys */
        return;
    }
    if (!answered(r, status, "re-encrypt range", err))
        return;
    n = res->n_kvs;
    if (!n) {
        if (r->cut_end_len)
            r->cut_end_len = 0; /* nothing before the guess: the next cut goes to the end */
        else
            r->sel_eof = true;
        pump(r);
        return;
    }
    m = (n + per - 1) / per; /* pieces */
    /* the pieces not given out yet stay in front: the split began at rpos, their last bound */
    keep = r->nbounds ? r->nbounds - r->next_piece : 0;
    nb = malloc(((keep ? keep : 1) + m) * (KEY_MAX + 1));
    nl = calloc((keep ? keep : 1) + m, sizeof(*nl));
    if (!nb || !nl) {
        free(nb);
        free(nl);
        fail(r, -ENOMEM, "re-encrypt", NULL);
        return;
    }
    if (keep) {
        memcpy(nb, r->bound + r->next_piece * (KEY_MAX + 1), keep * (KEY_MAX + 1));
        memcpy(nl, r->bound_len + r->next_piece, keep * sizeof(*nl));
        k = keep;
    } else {
        memcpy(nb, r->rpos, r->rpos_len);
        nl[0] = r->rpos_len;
        k = 1;
    }
    free(r->bound);
    free(r->bound_len);
    r->bound = nb;
    r->bound_len = nl;
    r->next_piece = 0;
    /* piece i: from its first key to the next piece's first key, the last one to just after
     * the last key; a long key's stand-in (set_after) when it is past the bound before, else
     * no bound there: the pieces stay in key order and cover the range */
    first = k - 1;
    for (size_t i = 1; i < m; i++) {
        const struct ar_etcd_kv *kv = &res->kvs[i * per];
        size_t l = kv->key_len < KEY_MAX ? kv->key_len : KEY_CUT;

        if (ar_etcd_key_before(nb + (k - 1) * (KEY_MAX + 1), nl[k - 1], kv->key, l)) {
            memcpy(nb + k * (KEY_MAX + 1), kv->key, l);
            nl[k++] = l;
        }
    }
    set_after(nb + k * (KEY_MAX + 1), &nl[k], res->kvs[n - 1].key, res->kvs[n - 1].key_len);
    if (!ar_etcd_key_before(nb + (k - 1) * (KEY_MAX + 1), nl[k - 1], nb + k * (KEY_MAX + 1),
                            nl[k])) {
        if (k - 1 == first) {
            fail(r, -ENAMETOOLONG, "re-encrypt: a cut of keys share their first 1399 bytes", NULL);
            return;
        }
        k--; /* the last piece (long keys) goes to the next cut */
    }
    r->nbounds = k + 1;
    memcpy(r->rpos, nb + k * (KEY_MAX + 1), nl[k]);
    r->rpos_len = nl[k];
    next_cut_end(r, res);
    pump(r);
}

static size_t pieces_left(const struct ar_reencrypt *r)
{
    return r->next_piece + 1 < r->nbounds ? r->nbounds - 1 - r->next_piece : 0;
}

/* Give the split's pieces to free readers, in key order. */
static int start_pieces(struct ar_reencrypt *r)
{
    int rc = 0;

    while (rc == 0 && pieces_left(r)) {
        bool free_slot = false;

        for (unsigned i = 0; i < r->nreaders && !free_slot; i++)
            free_slot = !r->rd[i].active;
        if (!free_slot)
            break;
        rc = reader_start(r, r->bound + r->next_piece * (KEY_MAX + 1), r->bound_len[r->next_piece],
                          r->bound + (r->next_piece + 1) * (KEY_MAX + 1),
                          r->bound_len[r->next_piece + 1]);
        r->next_piece++;
    }
    return rc;
}

static bool queued(const struct ar_reencrypt *r)
{
    for (const struct batch *b = r->head; b; b = b->next)
        if (b->st == B_QUEUED)
            return true;
    return false;
}

static bool rate_ok(struct ar_reencrypt *r)
{
    double el;

    if (r->rate_limit <= 0)
        return true;
    el = (double)(ar_etcd_now_ms() - r->t0_ms) / 1000.0;
    return (double)(r->live_done - r->resumed) <= r->rate_limit * el;
}

static void sel_begin(struct ar_reencrypt *r)
{
    const struct sel *s = &r->sel[r->cur_sel];

    memcpy(r->rpos, s->start, s->start_len);
    r->rpos_len = s->start_len;
    r->sel_eof = false;
    r->nbounds = r->next_piece = 0;
    r->cut_end_len = 0;
}

static bool readers_active(const struct ar_reencrypt *r)
{
    for (unsigned i = 0; i < MAX_READERS; i++)
        if (r->rd[i].active)
            return true;
    return false;
}

static void read_page(struct reader *rd)
{
    struct ar_reencrypt *r = rd->r;
    unsigned page = rd->limit;
    struct ar_etcd_op op;
    int rc;

    if (r->rate_limit > 0 && r->rate_limit < page)
        page = r->rate_limit >= 1 ? (unsigned)r->rate_limit : 1;
    op = (struct ar_etcd_op){.type = AR_ETCD_RANGE,
                             .key = rd->pos,
                             .key_len = rd->pos_len,
                             .range_end = rd->end,
                             .range_end_len = rd->end_len,
                             .limit = page};
    rc = ar_etcd_range(r->c, &op, on_page, rd);
    if (rc < 0) {
        fail(r, rc, "re-encrypt range", NULL);
        return;
    }
    r->pending++;
    rd->inflight = true;
    rd->sent_ms = ar_etcd_now_ms();
}

/* Give the rest of the selector's range to readers: one reader for all of it, or (several
 * readers) a keys-only range first to cut the next nreaders pages apart. */
static void split(struct ar_reencrypt *r)
{
    const struct sel *s = &r->sel[r->cur_sel];
    struct ar_etcd_op op = {.type = AR_ETCD_RANGE,
                            .key = r->rpos,
                            .key_len = r->rpos_len,
                            .range_end = s->end,
                            .range_end_len = s->end_len,
                            .keys_only = true};
    int rc;

    if (r->nreaders <= 1 || r->rate_limit > 0) {
        if ((rc = reader_start(r, r->rpos, r->rpos_len, NULL, 0)) < 0)
            fail(r, rc, "re-encrypt", NULL);
        r->sel_eof = true;
        return;
    }
    op.limit = (int64_t)r->split_limit;
    if (r->cut_end_len) {
        op.range_end = r->cut_end;
        op.range_end_len = r->cut_end_len;
    }
    if ((rc = ar_etcd_range(r->c, &op, on_split, r)) < 0) {
        fail(r, rc, "re-encrypt range", NULL);
        return;
    }
    r->pending++;
    r->splitting = true;
}

/* The reader of the first piece in key order that is still being read (NULL: none): everything
 * after its placeholder waits for it. */
static const struct reader *first_reader(const struct ar_reencrypt *r)
{
    for (const struct batch *b = r->head; b; b = b->next)
        if (b->st == B_READING)
            for (unsigned i = 0; i < MAX_READERS; i++)
                if (r->rd[i].active && r->rd[i].ph == b)
                    return &r->rd[i];
    return NULL;
}

/* Send what may be sent, move the cursor, read on, checkpoint, finish. */
static void pump(struct ar_reencrypt *r)
{
    int rc;

    if (r->stopped || r->finished || !r->started)
        return;
    for (struct batch *b = r->head; b && r->inflight < r->inflight_max; b = b->next) {
        if (b->st == B_READING)
            continue;
        if (b->st == B_QUEUED && !b->n) {
            batch_done(r, b);
        } else if (b->st == B_QUEUED) {
            if ((rc = send_batch(r, b, 0, b->n, b, on_batch)) < 0) {
                fail(r, rc, "re-encrypt txn", NULL);
                return;
            }
            b->st = B_SENT;
        }
        while (b->st == B_RETRY && b->next_single < b->n && r->inflight < r->inflight_max) {
            struct single *s = &b->sc[b->next_single];

            s->b = b;
            s->i = b->next_single;
            if ((rc = send_batch(r, b, s->i, 1, s, on_single)) < 0) {
                fail(r, rc, "re-encrypt txn", NULL);
                return;
            }
            b->next_single++;
            b->singles_out++;
        }
    }
    advance_head(r);
    if (r->cur_sel < r->nsel && !queued(r) && rate_ok(r)) {
        /* the queue holds at most about this many batches, the finished ones behind the first
         * unread piece included; that piece's reader reads on even when it is full, or the
         * queue could never drain (a piece that grew after the cut: test_grown_piece) */
        bool room = r->nbatches < 4 * (size_t)r->inflight_max + 8 + 2 * MAX_READERS;
        const struct reader *first = first_reader(r);

        if (room && pieces_left(r) && (rc = start_pieces(r)) < 0) {
            fail(r, rc, "re-encrypt", NULL);
            return;
        }
        /* the next split is asked for while the readers still have a round of pieces, so
         * its answer (slow on a big range with etcd 3.4) comes while they read */
        if (room && !r->splitting && !r->sel_eof && pieces_left(r) <= r->nreaders &&
            (!readers_active(r) || (r->nreaders > 1 && r->rate_limit <= 0)))
            split(r);
        for (unsigned i = 0; i < MAX_READERS && !r->finished; i++)
            if (r->rd[i].active && !r->rd[i].inflight && (room || &r->rd[i] == first))
                read_page(&r->rd[i]);
    }
    if (r->finished)
        return;
    if (r->cur_sel < r->nsel && r->sel_eof && !r->head && !readers_active(r) && !r->splitting &&
        !pieces_left(r)) {
        /* the selector is done: the next one starts from its range's beginning */
        r->cur_sel++;
        r->com_sel = r->cur_sel;
        r->com_cursor_len = 0;
        r->ckpt_want = true;
        if (r->cur_sel < r->nsel) {
            sel_begin(r);
            pump(r);
            return;
        }
    }
    if (r->cur_sel >= r->nsel && !r->head) {
        if (!r->ckpt_key) {
            finish(r, 0, NULL);
            return;
        }
        if (!r->final_ckpt_sent && !r->ckpt_inflight) {
            r->final_ckpt_sent = true;
            if ((rc = write_ckpt(r)) < 0)
                fail(r, rc, "re-encrypt checkpoint", NULL);
            return;
        }
        if (r->final_ckpt_sent && !r->ckpt_inflight)
            finish(r, 0, NULL);
        return;
    }
    if (r->ckpt_want && !r->ckpt_inflight && (rc = write_ckpt(r)) < 0)
        fail(r, rc, "re-encrypt checkpoint", NULL);
}

static void on_tick(uv_timer_t *t)
{
    struct ar_reencrypt *r = t->data;

    if (r->stopped || r->finished)
        return;
    if (r->started && r->ckpt_key && ar_etcd_now_ms() - r->last_ckpt_ms >= r->ck_ms)
        r->ckpt_want = true;
    pump(r);
}

/* ---- start: checkpoint, then totals -------------------------------------------------------- */

static void begin_run(struct ar_reencrypt *r)
{
    r->started = true;
    r->last_ckpt_ms = ar_etcd_now_ms();
    if (r->cur_sel < r->nsel) {
        sel_begin(r);
        if (r->com_cursor_len) {
            memcpy(r->rpos, r->com_cursor, r->com_cursor_len);
            r->rpos[r->com_cursor_len] = 0;
            r->rpos_len = r->com_cursor_len + 1;
        }
    }
    if (!progress(r))
        pump(r);
}

static void on_count(void *arg, int status, const struct ar_etcd_result *res,
                     const struct ar_etcd_error *err)
{
    struct ar_reencrypt *r = arg;

    r->pending--;
    if (!answered(r, status, "re-encrypt count", err))
        return;
    r->total += (uint64_t)res->count;
    if (r->pending == 0)
        begin_run(r);
}

static void count_ranges(struct ar_reencrypt *r)
{
    bool wild_done = false;
    uint8_t start[KEY_MAX], end[KEY_MAX];
    size_t sl = strlen(r->prefix);

    memcpy(start, r->prefix, sl);
    for (size_t i = 0; i < r->nsel; i++) {
        struct ar_etcd_op op = {.type = AR_ETCD_RANGE, .count_only = true};
        int rc;

        if (r->sel[i].wild) {
            if (wild_done)
                continue;
            wild_done = true;
            op.key = start;
            op.key_len = sl;
            op.range_end = end;
            op.range_end_len = ar_etcd_prefix_end(start, sl, end);
        } else {
            op.key = r->sel[i].start;
            op.key_len = r->sel[i].start_len;
            op.range_end = r->sel[i].end;
            op.range_end_len = r->sel[i].end_len;
        }
        if ((rc = ar_etcd_range(r->c, &op, on_count, r)) < 0) {
            fail(r, rc, "re-encrypt count", NULL);
            return;
        }
        r->pending++;
    }
    if (!r->pending)
        begin_run(r);
}

static void on_ckpt_read(void *arg, int status, const struct ar_etcd_result *res,
                         const struct ar_etcd_error *err)
{
    struct ar_reencrypt *r = arg;
    struct ar_reencrypt_ckpt ck;

    r->pending--;
    if (!answered(r, status, "re-encrypt checkpoint read", err))
        return;
    if (res->n_kvs) {
        struct ar_err e;

        if (ar_reencrypt_ckpt_parse(res->kvs[0].value, res->kvs[0].value_len, &ck) < 0 ||
            ck.selector > r->nsel || ck.cursor_len > KEY_CUT) {
            ar_err_set(&e, -EBADMSG, r->ckpt_key, "re-encrypt: the checkpoint is not valid");
            finish(r, -EBADMSG, &e);
            return;
        }
        r->cur_sel = r->com_sel = ck.selector;
        memcpy(r->com_cursor, ck.cursor, ck.cursor_len);
        r->com_cursor_len = ck.cursor_len;
        r->com = (struct counts){ck.rewritten, ck.skipped, ck.conflicts, ck.failed};
        r->live = r->com;
        r->com_done = r->live_done = r->resumed = ck.done;
    }
    count_ranges(r);
}

/* ---- options ------------------------------------------------------------------------------- */

static int sel_init(struct ar_reencrypt *r, const char *s, struct sel *out)
{
    int rc;

    if (!s || ar_parse_group_resource(s, out->group, sizeof(out->group), out->resource,
                                      sizeof(out->resource)) < 0)
        return -EINVAL;
    if (!strcmp(out->resource, "*")) {
        out->wild = true;
        out->start_len = strlen(r->prefix);
        memcpy(out->start, r->prefix, out->start_len);
    } else {
        char p[KEY_MAX];

        if (!strcmp(out->group, "*"))
            return -EINVAL;
        rc = ar_resource_key_prefix(r->prefix, out->group, out->resource, p, sizeof(p));
        if (rc < 0)
            return rc;
        out->start_len = strlen(p);
        memcpy(out->start, p, out->start_len);
    }
    memcpy(out->end, out->start, out->start_len);
    out->end_len = ar_etcd_prefix_end(out->start, out->start_len, out->end);
    return 0;
}

static int copy_guard(struct ar_reencrypt *r, const struct ar_reencrypt_opts *o)
{
    size_t n = o->guard ? (o->n_guard ? o->n_guard : 1) : 0;

    if (!n)
        return 0;
    r->guard = calloc(n, sizeof(*r->guard));
    if (!r->guard)
        return -ENOMEM;
    r->n_guard = n;
    for (size_t i = 0; i < n; i++) {
        uint8_t *k = malloc(o->guard[i].key_len + 1), *v = NULL;

        if (!k)
            return -ENOMEM;
        memcpy(k, o->guard[i].key, o->guard[i].key_len);
        r->guard[i] = o->guard[i];
        r->guard[i].key = k;
        r->guard[i].value = NULL;
        if (o->guard[i].value) {
            if (!(v = malloc(o->guard[i].value_len + 1)))
                return -ENOMEM;
            memcpy(v, o->guard[i].value, o->guard[i].value_len);
            r->guard[i].value = v;
        }
    }
    return 0;
}

int ar_reencrypt_start(struct ar_etcd *c, struct ar_chain *chain, const struct ar_reencrypt_opts *o,
                       ar_reencrypt_progress_cb progress_cb, ar_reencrypt_done_cb done, void *arg,
                       struct ar_reencrypt **out)
{
    struct ar_reencrypt *r;
    int rc;

    *out = NULL;
    if (!c || !chain || !o || !done || !o->nselectors || !o->selectors ||
        o->nselectors > AR_REENCRYPT_MAX_SELECTORS || o->rate_limit < 0)
        return -EINVAL;
    r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->c = c;
    r->chain = ar_chain_ref(chain);
    r->pt.max = r->enc.max = AR_ETCD_MAX_BODY;
    r->page = o->page_size ? o->page_size : DEFAULT_PAGE;
    r->inflight_max = o->max_inflight ? o->max_inflight : DEFAULT_INFLIGHT;
    r->nreaders =
        o->readers ? (o->readers < MAX_READERS ? o->readers : MAX_READERS) : DEFAULT_READERS;
    r->split_limit = (size_t)r->page * r->nreaders * SPLIT_ROUNDS;
    if (r->split_limit > SPLIT_MAX)
        r->split_limit = SPLIT_MAX;
    r->ck_every = o->checkpoint_every ? o->checkpoint_every : DEFAULT_CK_EVERY;
    r->ck_ms = o->checkpoint_ms ? o->checkpoint_ms : DEFAULT_CK_MS;
    r->rate_limit = o->rate_limit;
    r->progress_cb = progress_cb;
    r->done_cb = done;
    r->arg = arg;
    r->last_sel = SIZE_MAX;
    r->t0_ms = ar_etcd_now_ms();
    if ((rc = ar_verify_join_prefix(o->etcd_prefix, r->prefix, sizeof(r->prefix))) < 0)
        goto fail;
    r->sel = calloc(o->nselectors, sizeof(*r->sel));
    rc = -ENOMEM;
    if (!r->sel)
        goto fail;
    r->nsel = o->nselectors;
    for (size_t i = 0; i < r->nsel; i++)
        if ((rc = sel_init(r, o->selectors[i], &r->sel[i])) < 0)
            goto fail;
    if (o->checkpoint_key && !(r->ckpt_key = strdup(o->checkpoint_key))) {
        rc = -ENOMEM;
        goto fail;
    }
    if ((rc = copy_guard(r, o)) < 0)
        goto fail;
    r->tick = calloc(1, sizeof(*r->tick));
    if (!r->tick) {
        rc = -ENOMEM;
        goto fail;
    }
    uv_timer_init(ar_etcd_loop(c), r->tick);
    r->tick->data = r;
    uv_timer_start(r->tick, on_tick, TICK_MS, TICK_MS);
    if (r->ckpt_key) {
        struct ar_etcd_op op = {.type = AR_ETCD_RANGE,
                                .key = (const uint8_t *)r->ckpt_key,
                                .key_len = strlen(r->ckpt_key)};

        if ((rc = ar_etcd_range(c, &op, on_ckpt_read, r)) < 0) {
            r->stopped = true;
            teardown(r);
            return rc;
        }
        r->pending++;
    } else {
        count_ranges(r);
        if (r->finished) { /* failed at once: the callback was called */
            *out = NULL;
            return 0;
        }
    }
    *out = r;
    return 0;
fail:
    engine_free(r);
    return rc;
}

void ar_reencrypt_stop(struct ar_reencrypt *r)
{
    if (!r || r->stopped || r->finished)
        return;
    r->stopped = true;
    teardown(r);
}

/* ---- blocking ------------------------------------------------------------------------------ */

struct run {
    bool done, freed;
    int status;
    uint64_t stop_after, start_done;
    bool have_start;
    struct ar_reencrypt *r;
    struct ar_reencrypt_progress *out;
    struct ar_err *err;
    ar_reencrypt_progress_cb progress;
    void *arg;
};

static void run_progress(void *arg, const struct ar_reencrypt_progress *p)
{
    struct run *ru = arg;

    if (!ru->have_start) {
        ru->have_start = true;
        ru->start_done = p->done;
    }
    if (ru->progress)
        ru->progress(ru->arg, p);
    if (ru->stop_after && ru->r && p->done - ru->start_done >= ru->stop_after) {
        *ru->out = *p;
        ru->status = -EINTR;
        if (ru->err)
            ar_err_set(ru->err, -EINTR, "", "re-encrypt: stopped after %" PRIu64 " objects",
                       p->done - ru->start_done);
        ru->done = true;
        ar_reencrypt_stop(ru->r);
    }
}

static void run_done(void *arg, int status, const struct ar_reencrypt_progress *p,
                     const struct ar_err *err)
{
    struct run *ru = arg;

    ru->done = true;
    ru->status = status;
    *ru->out = *p;
    if (ru->err) {
        if (err)
            *ru->err = *err;
        else
            ar_err_clear(ru->err);
    }
}

int ar_reencrypt_run(struct ar_etcd_sync *s, struct ar_chain *chain,
                     const struct ar_reencrypt_opts *o, ar_reencrypt_progress_cb progress_cb,
                     void *arg, uint64_t stop_after, struct ar_reencrypt_progress *out,
                     struct ar_err *err)
{
    struct ar_etcd *c = ar_etcd_sync_client(s);
    struct run ru = {
        .stop_after = stop_after, .out = out, .err = err, .progress = progress_cb, .arg = arg};
    int rc;

    memset(out, 0, sizeof(*out));
    if (err)
        ar_err_clear(err);
    rc = ar_reencrypt_start(c, chain, o, run_progress, run_done, &ru, &ru.r);
    if (rc < 0) {
        if (err)
            ar_err_set(err, rc, "", "re-encrypt: %s", strerror(-rc));
        return rc;
    }
    if (ru.r)
        ru.r->freed_flag = &ru.freed;
    else
        ru.freed = true;
    /* bounded: every request ends within the client's timeout; the tick keeps the loop alive */
    while (!ru.freed)
        uv_run(ar_etcd_loop(c), UV_RUN_ONCE);
    return ru.status;
}
