/*
 * agent/cli_status.c: `atrest status`, the local agent's view at a glance.
 *
 * GETs /status from the agent's status server (TCP or unix socket) and prints either the raw
 * JSON (--json) or a table. The address comes from --addr/--socket, else from the agent's
 * settings file (status.socket, then status.listen), else the built-in default. The renderer
 * tolerates missing fields (prints "-"), so an older or newer agent still shows what it can.
 *
 * Exit codes: 0 shown; 1 the agent could not be reached or answered garbage; 2 usage.
 */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "agent/cmd.h"
#include "agent/settings.h"

#define MAX_STATUS_BYTES (8u << 20)

struct fetch {
    char *p;
    size_t len;
    bool too_big;
};

static size_t on_data(char *p, size_t sz, size_t n, void *ud)
{
    struct fetch *f = ud;
    size_t len = sz * n;
    if (f->len + len > MAX_STATUS_BYTES) {
        f->too_big = true;
        return 0;
    }
    char *np = realloc(f->p, f->len + len + 1);
    if (!np)
        return 0;
    f->p = np;
    memcpy(f->p + f->len, p, len);
    f->len += len;
    f->p[f->len] = '\0';
    return len;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: atrest status [--addr URL | --socket PATH] [--config FILE] [--json]\n"
            "                     [--timeout SECONDS]\n\n"
            "Show the local agent's view: node, reload result, desired and effective\n"
            "configs, keys per resource (names and fingerprints only), etcd, leader, members.\n\n"
            "  --addr URL      the agent's status server, e.g. http://127.0.0.1:9798\n"
            "  --socket PATH   the agent's status unix socket\n"
            "  --config FILE   read the address from this agent settings file\n"
            "                  (default %s)\n"
            "  --json          print the agent's /status document as is\n"
            "  --timeout S     give up after S seconds (default 5)\n\n"
            "Exit status: 0 shown, 1 agent unreachable or bad answer, 2 usage.\n",
            AR_SETTINGS_DEFAULT_PATH);
}

/* ---- where is the agent? ------------------------------------------------------------------- */

struct target {
    char url[512];     /* base URL (no path) */
    char sock[256];    /* unix socket or "" */
    char origin[1200]; /* where the address came from, for error messages */
};

static int target_from_settings(const char *file, bool explicit_file, struct target *t)
{
    struct ar_settings s;
    struct ar_diags d;
    int rc = ar_settings_init(&s);
    if (rc < 0)
        return rc;
    ar_diags_init(&d);
    char note[300] = "";
    if (access(file, F_OK) == 0 || explicit_file) {
        rc = ar_settings_load_file(&s, file, &d);
        if (rc < 0) {
            if (explicit_file) {
                for (size_t i = 0; i < d.n; i++) {
                    char line[512];
                    ar_diag_format(&d.v[i], line, sizeof(line));
                    fprintf(stderr, "atrest status: %s\n", line);
                }
                if (!d.n)
                    fprintf(stderr, "atrest status: cannot read %s: %s\n", file, strerror(-rc));
                goto out;
            }
            /* Typically: agent.yaml is 0600 root and this is an operator's shell. */
            if (rc == -EINVAL)
                snprintf(note, sizeof(note), " (built-in default; %s has errors)", file);
            else
                snprintf(note, sizeof(note), " (built-in default; %s: %s)", file, strerror(-rc));
            ar_settings_free(&s);
            ar_settings_init(&s);
        } else {
            snprintf(note, sizeof(note), " (from %s)", file);
        }
    } else {
        snprintf(note, sizeof(note), " (built-in default; %s not found)", file);
    }
    rc = 0;
    if (s.status_socket && *s.status_socket) {
        snprintf(t->sock, sizeof(t->sock), "%s", s.status_socket);
        snprintf(t->url, sizeof(t->url), "http://localhost");
        snprintf(t->origin, sizeof(t->origin), "unix socket %s%s", t->sock, note);
    } else if (s.status_listen && *s.status_listen) {
        char host[64];
        uint16_t port;
        if (ar_parse_listen(s.status_listen, host, sizeof(host), &port) < 0) {
            fprintf(stderr, "atrest status: invalid status.listen \"%s\" in %s\n", s.status_listen,
                    file);
            rc = -EINVAL;
            goto out;
        }
        snprintf(t->url, sizeof(t->url), strchr(host, ':') ? "http://[%s]:%u" : "http://%s:%u",
                 host, port);
        snprintf(t->origin, sizeof(t->origin), "%s%s", t->url, note);
    } else {
        fprintf(stderr,
                "atrest status: the agent's status server is disabled in %s "
                "(status.listen and status.socket are empty); use --addr or --socket\n",
                file);
        rc = -EINVAL;
    }
out:
    ar_diags_free(&d);
    ar_settings_free(&s);
    return rc;
}

/* ---- fetching -------------------------------------------------------------------------------- */

static int fetch_status(const struct target *t, long timeout_s, struct fetch *f)
{
    char url[600];
    snprintf(url, sizeof(url), "%s/status", t->url);
    CURL *e = curl_easy_init();
    if (!e) {
        fprintf(stderr, "atrest status: cannot initialise libcurl\n");
        return -ENOMEM;
    }
    char cerr[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, f);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, timeout_s);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http");
    curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
    if (t->sock[0])
        curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, t->sock);
    CURLcode cc = curl_easy_perform(e);
    long code = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(e);
    if (cc != CURLE_OK) {
        if (f->too_big)
            fprintf(stderr, "atrest status: the answer from %s is larger than %u bytes\n",
                    t->origin, MAX_STATUS_BYTES);
        else if (cc == CURLE_COULDNT_CONNECT)
            fprintf(stderr,
                    "atrest status: cannot reach the agent at %s: %s\n"
                    "  is it running? (systemctl status atrest)\n",
                    t->origin, cerr[0] ? cerr : curl_easy_strerror(cc));
        else
            fprintf(stderr, "atrest status: %s: %s\n", t->origin,
                    cerr[0] ? cerr : curl_easy_strerror(cc));
        return -EIO;
    }
    if (code != 200) {
        fprintf(stderr, "atrest status: %s answered HTTP %ld%s%.*s\n", t->origin, code,
                f->len ? ": " : "", f->len > 200 ? 200 : (int)f->len, f->p ? f->p : "");
        return -EIO;
    }
    return 0;
}

/* ---- rendering ------------------------------------------------------------------------------- */

/* Look up a dotted path; alternatives separated by '|'. */
static json_t *jget(json_t *root, const char *paths)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", paths);
    char *save = NULL;
    for (char *alt = strtok_r(buf, "|", &save); alt; alt = strtok_r(NULL, "|", &save)) {
        json_t *cur = root;
        char *s2 = NULL;
        for (char *k = strtok_r(alt, ".", &s2); k && cur; k = strtok_r(NULL, ".", &s2))
            cur = json_is_object(cur) ? json_object_get(cur, k) : NULL;
        if (cur && !json_is_null(cur))
            return cur;
    }
    return NULL;
}

static const char *jstr(json_t *root, const char *paths)
{
    json_t *v = jget(root, paths);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static const char *dash(const char *s)
{
    return s && *s ? s : "-";
}

/* "sha256:0123456789abcdef..." -> "0123456789ab" */
static const char *short_fp(const char *fp, char out[16])
{
    if (!fp || !*fp)
        return "-";
    const char *h = strncmp(fp, "sha256:", 7) ? fp : fp + 7;
    snprintf(out, 16, "%.12s", h);
    return out;
}

/* A time field: RFC 3339 UTC ("2025-01-31T12:00:00.123Z") or epoch s/ms. Printed as
 * "12s ago (2025-01-31 12:00:00Z)". */
static const char *when(json_t *v, char *out, size_t len)
{
    time_t t;
    if (json_is_string(v)) {
        struct tm tm;
        memset(&tm, 0, sizeof(tm));
        const char *end = strptime(json_string_value(v), "%Y-%m-%dT%H:%M:%S", &tm);
        if (!end) {
            snprintf(out, len, "%s", json_string_value(v));
            return out;
        }
        t = timegm(&tm);
    } else if (json_is_number(v)) {
        double x = json_number_value(v);
        if (x <= 0)
            return "never";
        t = (time_t)(x > 1e11 ? x / 1000.0 : x);
    } else {
        return "never";
    }
    struct tm tm;
    char iso[32] = "";
    if (gmtime_r(&t, &tm))
        strftime(iso, sizeof(iso), "%Y-%m-%d %H:%M:%SZ", &tm);
    long ago = (long)(time(NULL) - t);
    if (ago < 0)
        snprintf(out, len, "%s", iso);
    else if (ago < 120)
        snprintf(out, len, "%lds ago (%s)", ago, iso);
    else if (ago < 7200)
        snprintf(out, len, "%ldm ago (%s)", ago / 60, iso);
    else if (ago < 172800)
        snprintf(out, len, "%ldh ago (%s)", ago / 3600, iso);
    else
        snprintf(out, len, "%ldd ago (%s)", ago / 86400, iso);
    return out;
}

static void jnum_str(json_t *v, char *out, size_t len)
{
    if (json_is_integer(v))
        snprintf(out, len, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        snprintf(out, len, "%g", json_real_value(v));
    else
        snprintf(out, len, "-");
}

/* One key as "provider:name [fp]" from an object or a string. */
static void key_str(json_t *k, char *out, size_t len)
{
    if (json_is_string(k)) {
        snprintf(out, len, "%s", json_string_value(k));
        return;
    }
    const char *prov = jstr(k, "provider|type");
    const char *name = jstr(k, "key|name");
    const char *fp = jstr(k, "fingerprint|fp|key_fp");
    if (prov && name && fp)
        snprintf(out, len, "%s:%s [%.8s]", prov, name, fp);
    else if (prov && name)
        snprintf(out, len, "%s:%s", prov, name);
    else
        snprintf(out, len, "%s", dash(prov ? prov : name));
}

static void print_resources(json_t *root)
{
    json_t *res = jget(root, "resources|effective.resources");
    if (!json_is_array(res) || !json_array_size(res))
        return;
    printf("\n%-24s %-34s %s\n", "RESOURCES", "WRITE KEY", "READ KEYS");
    size_t i;
    json_t *r;
    json_array_foreach(res, i, r)
    {
        char names[256] = "";
        json_t *nm = jget(r, "resources|resource|names");
        if (json_is_array(nm)) {
            size_t j;
            json_t *s;
            json_array_foreach(nm, j, s)
            {
                if (json_is_string(s))
                    snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
                             j ? "," : "", json_string_value(s));
            }
        } else if (json_is_string(nm)) {
            snprintf(names, sizeof(names), "%s", json_string_value(nm));
        }
        char wk[160];
        key_str(jget(r, "write"), wk, sizeof(wk));
        char rk[1024] = "";
        json_t *rd = jget(r, "read");
        if (json_is_array(rd)) {
            size_t j;
            json_t *k;
            json_array_foreach(rd, j, k)
            {
                char one[160];
                key_str(k, one, sizeof(one));
                snprintf(rk + strlen(rk), sizeof(rk) - strlen(rk), "%s%s", j ? ", " : "", one);
            }
        }
        printf("%-24s %-34s %s\n", dash(names), wk, dash(rk));
    }
}

static void print_members(json_t *root)
{
    json_t *ms = jget(root, "members|cluster.members");
    if (!json_is_array(ms) || !json_array_size(ms))
        return;
    printf("\n%-20s %-7s %-14s %-14s %-10s %s\n", "MEMBER", "ALIVE", "DESIRED", "EFFECTIVE",
           "VERSION", "REPORTED");
    size_t i;
    json_t *m;
    json_array_foreach(ms, i, m)
    {
        char f1[16], f2[16], tb[96];
        json_t *alive = jget(m, "alive");
        printf("%-20s %-7s %-14s %-14s %-10s %s\n", dash(jstr(m, "node|name")),
               json_is_boolean(alive) ? (json_is_true(alive) ? "yes" : "NO") : "-",
               short_fp(jstr(m, "desired_fingerprint|desired_fp"), f1),
               short_fp(jstr(m, "effective_fingerprint|effective_fp"), f2),
               dash(jstr(m, "version")), when(jget(m, "reported_at|reported"), tb, sizeof(tb)));
    }
}

/* The rotation at a glance: id and phase, what it waits for, per member ack and proof, the
 * re-encrypt and verify counts, the last finished ones. */
static void print_rotation(json_t *rot)
{
    char f1[16], f2[16], tb[96];
    const char *k, *w;
    json_t *m, *v, *h;
    size_t i;

    if (!json_is_object(rot))
        return;
    printf("%-10s %s %s (%s -> %s)%s%s\n", "rotation", dash(jstr(rot, "phase")),
           dash(jstr(rot, "id")), short_fp(jstr(rot, "from"), f1), short_fp(jstr(rot, "to"), f2),
           jstr(rot, "phase_since") ? ", since " : "",
           jstr(rot, "phase_since") ? when(jget(rot, "phase_since"), tb, sizeof(tb)) : "");
    w = jstr(rot, "waiting_for");
    if (w && *w)
        printf("%-10s waiting: %s\n", "", w);
    if (jstr(rot, "abort_refused"))
        printf("%-10s %s\n", "", jstr(rot, "abort_refused"));
    v = jget(rot, "reencrypt");
    if (json_is_object(v) && json_integer_value(jget(v, "total")))
        printf("%-10s re-encrypt (%s) %lld/%lld done, %lld skipped, %lld conflicts\n", "",
               dash(jstr(v, "mode")), (long long)json_integer_value(jget(v, "done")),
               (long long)json_integer_value(jget(v, "total")),
               (long long)json_integer_value(jget(v, "skipped")),
               (long long)json_integer_value(jget(v, "conflicts")));
    v = jget(rot, "verify");
    if (json_is_object(v) && json_object_size(jget(v, "counts")))
        printf("%-10s verify: %lld under dropped keys, %lld undecryptable%s\n", "",
               (long long)json_integer_value(jget(v, "under_dropped_keys")),
               (long long)json_integer_value(jget(v, "undecryptable")),
               json_is_true(jget(v, "passed")) ? " (passed)" : "");
    m = jget(rot, "members");
    if (json_is_object(m) && json_object_size(m)) {
        printf("\n%-20s %-7s %-7s %-8s %s\n", "ROTATION MEMBER", "ALIVE", "ACKED", "PROOF",
               "LAST ERROR");
        json_object_foreach(m, k, v)
        {
            printf("%-20s %-7s %-7s %-8s %s\n", k, json_is_true(jget(v, "alive")) ? "yes" : "NO",
                   json_is_true(jget(v, "acked")) ? "yes" : "no", dash(jstr(v, "proof")),
                   dash(jstr(v, "last_error")));
        }
    }
    h = jget(rot, "history");
    if (json_is_array(h) && json_array_size(h)) {
        printf("\n%-36s %-8s %s\n", "FINISHED ROTATION", "RESULT", "DURATION");
        json_array_foreach(h, i, v)
        {
            if (i >= 5)
                break;
            printf("%-36s %-8s %llds\n", dash(jstr(v, "id")), dash(jstr(v, "result")),
                   (long long)json_integer_value(jget(v, "duration_seconds")));
        }
    }
}

static void print_table(json_t *root)
{
    char tb[96], f1[16], f2[16], n1[32], n2[32];
    json_t *ready = jget(root, "ready|health.ready");
    printf("%-10s %s (atrest %s)%s\n", "node", dash(jstr(root, "node")),
           dash(jstr(root, "version")),
           json_is_boolean(ready) ? (json_is_true(ready) ? "  ready" : "  NOT READY") : "");
    printf("%-10s %s\n", "started", when(jget(root, "started"), tb, sizeof(tb)));

    const char *res = jstr(root, "last_reload.result|reload.result");
    printf("%-10s %s, %s\n", "reload", dash(res),
           when(jget(root, "last_reload.time|reload.time"), tb, sizeof(tb)));
    jnum_str(jget(root, "last_reload.ok_total|reload.ok_total"), n1, sizeof(n1));
    jnum_str(jget(root, "last_reload.failed_total|reload.failed_total"), n2, sizeof(n2));
    printf("%-10s %s applied, %s failed\n", "", n1, n2);
    const char *rerr = jstr(root, "last_reload.error|reload.error");
    if (rerr)
        printf("%-10s error: %s\n", "", rerr);

    const char *dfp = jstr(root, "desired.fingerprint");
    const char *efp = jstr(root, "effective.fingerprint");
    json_t *dvalid = jget(root, "desired.valid");
    printf("%-10s %-14s %s%s\n", "desired", short_fp(dfp, f1), dash(jstr(root, "desired.path")),
           json_is_boolean(dvalid) && !json_is_true(dvalid) ? "  (INVALID: last valid kept)" : "");
    const char *derr = jstr(root, "desired.error");
    if (derr)
        printf("%-10s error: %s\n", "", derr);
    printf("%-10s %-14s %s%s\n", "effective", short_fp(efp, f2), dash(jstr(root, "effective.path")),
           dfp && efp ? (strcmp(dfp, efp) ? "  (differs from desired)" : "  (= desired)") : "");

    const char *es = jstr(root, "etcd.state|etcd.status|etcd");
    const char *ee = jstr(root, "etcd.error");
    printf("%-10s %s%s%s\n", "etcd", dash(es), ee ? ": " : "", ee ? ee : "");
    printf("%-10s %s\n", "leader", dash(jstr(root, "leader|cluster.leader")));
    print_rotation(jget(root, "rotation|cluster.rotation"));
    print_resources(root);
    print_members(root);
}

/* ---- the command ----------------------------------------------------------------------------- */

int ar_cmd_status(int argc, char **argv)
{
    static const struct option opts[] = {
        {"addr", required_argument, NULL, 'a'},
        {"socket", required_argument, NULL, 's'},
        {"config", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, 'j'},
        {"timeout", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *addr = NULL, *sock = NULL, *config = NULL;
    bool json = false;
    long timeout_s = 5;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'a':
            addr = optarg;
            break;
        case 's':
            sock = optarg;
            break;
        case 'c':
            config = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 't': {
            char *end;
            timeout_s = strtol(optarg, &end, 10);
            if (*end || timeout_s < 1 || timeout_s > 3600) {
                fprintf(stderr, "atrest status: --timeout wants 1..3600 seconds\n");
                return 2;
            }
            break;
        }
        case 'h':
            usage(stdout);
            return 0;
        default:
            fprintf(stderr, "atrest status: unknown or incomplete option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "atrest status: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (addr && sock) {
        fprintf(stderr, "atrest status: --addr and --socket exclude each other\n");
        return 2;
    }

    struct target t = {0};
    if (addr) {
        bool has_scheme = strstr(addr, "://") != NULL;
        if (has_scheme && strncmp(addr, "http://", 7)) {
            fprintf(stderr, "atrest status: --addr wants http://HOST:PORT\n");
            return 2;
        }
        snprintf(t.url, sizeof(t.url), "%s%s", has_scheme ? "" : "http://", addr);
        size_t n = strlen(t.url);
        while (n > 7 && t.url[n - 1] == '/')
            t.url[--n] = '\0';
        snprintf(t.origin, sizeof(t.origin), "%s", t.url);
    } else if (sock) {
        snprintf(t.sock, sizeof(t.sock), "%s", sock);
        snprintf(t.url, sizeof(t.url), "http://localhost");
        snprintf(t.origin, sizeof(t.origin), "unix socket %s", sock);
    } else if (target_from_settings(config ? config : AR_SETTINGS_DEFAULT_PATH, config != NULL,
                                    &t) < 0) {
        return 1;
    }

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "atrest status: cannot initialise libcurl\n");
        return 1;
    }
    struct fetch f = {0};
    int rc = 1;
    if (fetch_status(&t, timeout_s, &f) < 0)
        goto out;
    json_error_t jerr;
    json_t *root = json_loadb(f.p ? f.p : "", f.len, 0, &jerr);
    if (!json_is_object(root)) {
        fprintf(stderr, "atrest status: %s sent something that is not a JSON object (%s)\n",
                t.origin, jerr.text);
        json_decref(root);
        goto out;
    }
    if (json) {
        fwrite(f.p, 1, f.len, stdout);
        if (f.len && f.p[f.len - 1] != '\n')
            putchar('\n');
    } else {
        print_table(root);
    }
    json_decref(root);
    rc = fflush(stdout) == 0 ? 0 : 1;
out:
    free(f.p);
    curl_global_cleanup();
    return rc;
}
