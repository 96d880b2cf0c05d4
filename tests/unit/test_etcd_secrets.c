/*
 * tests/unit/test_etcd_secrets.c: S5 for the etcd credentials. The password and the auth token
 * live in sodium_malloc'd memory; the authenticate body is built by hand there (JSON escaping
 * tested on exact bytes); after a real authenticated request (single etcd, auth on, a password
 * generated at test time with characters JSON must escape) a child process scans its own
 * [heap] for the password and the token.
 *
 * What the scan allows (copies outside atrest's reach, documented in coord/etcd/etcd.c):
 *   - libcurl's request buffer: for a small CURLOPT_POSTFIELDS body libcurl copies the body
 *     into the malloc'd buffer that holds "POST /v3/auth/authenticate HTTP/1.1 ..." and frees
 *     it unwiped; a password occurrence is allowed only right after that request's headers.
 *   - the token: libcurl copies the Authorization header into every request buffer (jansson's
 *     blocks are wiped on free since coord/etcd installs a wiping allocator); token
 *     occurrences are only counted and printed, not asserted.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/wait.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <sodium.h>

#include "coord/etcd/etcd_int.h"
#include "coord/etcd/etcd_sync.h"
#include "tests/support/etcd_harness.h"

static struct etcd_harness H;
static char password[64]; /* generated: S5-<hex>"\é */

#define K(s) (const uint8_t *)(s), strlen(s)

static void test_escape(void **state)
{
    char out[64];
    ssize_t n;

    n = ar_json_escape(out, "a\"b\\c\n\t\r\b\f\x01\x1f\x7f \xc3\xa9", 16);
    assert_int_equal(n, 33);
    assert_memory_equal(out, "a\\\"b\\\\c\\n\\t\\r\\b\\f\\u0001\\u001f\x7f \xc3\xa9", 33);
    assert_int_equal(ar_json_escape(out, "\xf0\x9f\x94\x91", 4), 4); /* U+1F511 */
    assert_int_equal(ar_json_escape(out, "", 0), 0);
    /* not UTF-8: refused, never sent as is */
    assert_int_equal(ar_json_escape(out, "\xc3", 1), -EINVAL);             /* truncated */
    assert_int_equal(ar_json_escape(out, "\xc0\xaf", 2), -EINVAL);         /* overlong '/' */
    assert_int_equal(ar_json_escape(out, "\xed\xa0\x80", 3), -EINVAL);     /* surrogate */
    assert_int_equal(ar_json_escape(out, "\xf4\x90\x80\x80", 4), -EINVAL); /* > U+10FFFF */
    assert_int_equal(ar_json_escape(out, "\xff", 1), -EINVAL);
    assert_int_equal(ar_json_escape(out, "a\0b", 3), -EINVAL);
}

/* The hand-built request bodies, byte for byte (what jansson produced before). */
static void test_bodies(void **state)
{
    struct ar_etcd_op put = {
        .type = AR_ETCD_PUT, .key = K("k1"), .value = K("v"), .lease = 42, .prev_kv = true};
    struct ar_etcd_op rng = {.type = AR_ETCD_RANGE,
                             .key = K("a"),
                             .range_end = K("b"),
                             .limit = 5,
                             .revision = -1,
                             .keys_only = true,
                             .count_only = true,
                             .serializable = true};
    struct ar_etcd_op del = {.type = AR_ETCD_DELETE, .key = K("\xff"), .prev_kv = true};
    struct ar_etcd_op bad = {.type = AR_ETCD_PUT};
    struct ar_jbuf b;
    size_t len;
    int rc;
    char *s;

    ar_jbuf_init(&b, 0);
    ar_jbuf_op(&b, &put);
    ar_jbuf_raw(&b, ",", 1);
    ar_jbuf_op(&b, &rng);
    ar_jbuf_raw(&b, ",", 1);
    ar_jbuf_op(&b, &del);
    s = ar_jbuf_take(&b, &len, &rc);
    assert_non_null(s);
    assert_string_equal(s, "{\"key\":\"azE=\",\"value\":\"dg==\",\"lease\":\"42\","
                           "\"prev_kv\":true},"
                           "{\"key\":\"YQ==\",\"range_end\":\"Yg==\",\"limit\":\"5\","
                           "\"revision\":\"-1\",\"keys_only\":true,\"count_only\":true,"
                           "\"serializable\":true},{\"key\":\"/w==\",\"prev_kv\":true}");
    assert_int_equal(len, strlen(s));
    free(s);
    ar_jbuf_init(&b, 4); /* grows */
    ar_jbuf_op(&b, &bad);
    assert_null(ar_jbuf_take(&b, &len, &rc));
    assert_int_equal(rc, -EINVAL);
}

static int setup(void **state)
{
    struct etcd_harness_opts o = {.members = 1, .fast = true};
    uint8_t r[12];
    char cmd[300], hex[25];

    if (sodium_init() < 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
        return -1;
    randombytes_buf(r, sizeof(r));
    sodium_bin2hex(hex, sizeof(hex), r, sizeof(r));
    snprintf(password, sizeof(password), "S5-%s\"\\\xc3\xa9", hex);
    if (etcd_harness_start(&H, &o) < 0)
        return -1;
    snprintf(cmd, sizeof(cmd), "user add agent --new-user-password='%s' --interactive=false",
             password);
    if (etcd_harness_ctl(&H, "user add root:rootpw --interactive=false") ||
        etcd_harness_ctl(&H, "user grant-role root root") || etcd_harness_ctl(&H, cmd) ||
        etcd_harness_ctl(&H, "role add app") ||
        etcd_harness_ctl(&H, "role grant-permission app readwrite /atrest/ --prefix=true") ||
        etcd_harness_ctl(&H, "user grant-role agent app") || etcd_harness_ctl(&H, "auth enable"))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    etcd_harness_destroy(&H);
    return 0;
}

/* Occurrences of needle in [heap]; *in_req counts those that are the password field of an HTTP
 * request buffer: "HTTP/1.1\r\nHost: " before, "\r\n\r\n{"name":"agent","password":"" just
 * before (the buffer's first 16 bytes, "POST /v3/auth/au", are malloc's free-list pointers once
 * libcurl has freed it). */
static int scan_heap(const char *needle, size_t nlen, int *in_req)
{
    static const char body[] = "\r\n\r\n{\"name\":\"agent\",\"password\":\"";
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int found = 0;

    *in_req = 0;
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;

        if (!strstr(line, "[heap]") || sscanf(line, "%lx-%lx", &lo, &hi) != 2)
            continue;
        for (const char *p = (const char *)lo, *end = (const char *)hi;
             (p = memmem(p, (size_t)(end - p), needle, nlen)); p += nlen) {
            const char *win = p - (p - (const char *)lo > 1024 ? 1024 : p - (const char *)lo);
            const char *http = memmem(win, (size_t)(p - win), "HTTP/1.1\r\nHost: ", 16);

            found++;
            if (http && p - win >= (ptrdiff_t)sizeof(body) - 1 &&
                !memcmp(p - (sizeof(body) - 1), body, sizeof(body) - 1))
                (*in_req)++;
        }
    }
    fclose(f);
    return found;
}

/* Child: authenticate, do a few requests, scan. Exit 0 when nothing of ours is left. */
static int child(void)
{
    struct ar_etcd_settings st;
    struct ar_etcd_sync *s;
    struct ar_etcd_error err;
    struct ar_etcd_op op = {.key = K("/atrest/s5"), .value = K("v")};
    char esc[sizeof(password) * 6], tok[256];
    ssize_t en = ar_json_escape(esc, password, strlen(password));
    int n_pw, n_esc, n_tok, req_pw, req_esc, req_tok;

    etcd_harness_settings(&H, &st);
    st.request_timeout_ms = 3000;
    st.username = "agent";
    st.password = password;
    if (ar_etcd_sync_new(&st, &s) < 0 || en < 0)
        return 10;
    for (int i = 0; i < 3; i++) {
        if (ar_etcd_sync_put(s, &op, NULL, &err) < 0) {
            fprintf(stderr, "put: %s\n", err.msg);
            return 11;
        }
    }
    if (!ar_etcd_token(ar_etcd_sync_client(s)))
        return 12;
    snprintf(tok, sizeof(tok), "%s", ar_etcd_token(ar_etcd_sync_client(s)));
    /* the test's own copies are not on the heap: password[] is static, esc and tok on the stack */
    n_pw = scan_heap(password, strlen(password), &req_pw);
    n_esc = scan_heap(esc, (size_t)en, &req_esc);
    n_tok = scan_heap(tok, strlen(tok), &req_tok);
    fprintf(stderr,
            "heap: password %d (%d in libcurl's request buffer), escaped %d (%d), "
            "token %d\n",
            n_pw, req_pw, n_esc, req_esc, n_tok);
    sodium_memzero(tok, sizeof(tok));
    ar_etcd_sync_free(s);
    if (n_pw < 0 || n_esc < 0)
        return 13;
    return n_pw == req_pw && n_esc == req_esc ? 0 : 1;
}

static void test_password_not_on_heap(void **state)
{
    pid_t pid;
    int st = 0;

#ifdef ATREST_SANITIZE
    skip(); /* ASan's allocator does not use [heap]: the scan would prove nothing */
#endif
    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(child());
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* The locked copies: the client's password and token are in sodium_malloc'd memory (a guard
 * page precedes them: the bytes just before the canary region are not on the heap). */
static void test_locked_copies(void **state)
{
    struct ar_etcd_settings st;
    struct ar_etcd_sync *s;
    struct ar_etcd_error err;
    struct ar_etcd_op op = {.key = K("/atrest/s5"), .value = K("w")};
    struct ar_etcd *c;

    etcd_harness_settings(&H, &st);
    st.username = "agent";
    st.password = password;
    assert_int_equal(ar_etcd_sync_new(&st, &s), 0);
    assert_non_null(s);
    c = ar_etcd_sync_client(s);
    assert_int_equal(ar_etcd_sync_put(s, &op, NULL, &err), 0);
    assert_non_null(ar_etcd_token(c));
    assert_string_equal(c->password, password);
    assert_ptr_not_equal(c->password, password);
    /* sodium_malloc puts the allocation at the end of its own mapping, never inside [heap] */
    {
        FILE *f = fopen("/proc/self/maps", "r");
        char line[512];

        assert_non_null(f);
        while (fgets(line, sizeof(line), f)) {
            unsigned long lo, hi;

            if (!strstr(line, "[heap]") || sscanf(line, "%lx-%lx", &lo, &hi) != 2)
                continue;
            assert_false((unsigned long)c->password >= lo && (unsigned long)c->password < hi);
            assert_false((unsigned long)ar_etcd_token(c) >= lo &&
                         (unsigned long)ar_etcd_token(c) < hi);
        }
        fclose(f);
    }
    ar_etcd_sync_free(s);
}

int main(void)
{
    const struct CMUnitTest offline[] = {
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_bodies),
    };
    const struct CMUnitTest auth[] = {
        cmocka_unit_test(test_password_not_on_heap),
        cmocka_unit_test(test_locked_copies),
    };
    int rc = cmocka_run_group_tests_name("etcd_secrets_offline", offline, NULL, NULL);

    rc |= cmocka_run_group_tests_name("etcd_secrets_auth", auth, setup, teardown);
    curl_global_cleanup();
    return rc;
}
