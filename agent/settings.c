/* agent/settings.c: agent.yaml + flags -> struct ar_settings, and `agent --check` validation. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <stdarg.h>
#include <pwd.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yaml.h>

#include "agent/settings.h"

#define SETTINGS_MAX_BYTES (1u << 20)

enum ftype { F_STR, F_PATH, F_UINT, F_BOOL, F_LIST, F_PROOF, F_LOGLEVEL, F_REMODE };

struct field {
    const char *section; /* NULL: top level */
    const char *key;
    const char *flag;
    enum ftype type;
    size_t off;
    unsigned min, max;
    const char *help;
};

#define O(m) offsetof(struct ar_settings, m)

static const struct field fields[] = {
    {NULL, "node", "node", F_STR, O(node), 0, 0, "this member's name (default: the hostname)"},
    {NULL, "desiredConfig", "desired", F_PATH, O(desired_path), 0, 0,
     "the desired EncryptionConfiguration (pushed by configuration management)"},
    {"effectiveConfig", "path", "effective", F_PATH, O(effective_path), 0, 0,
     "the file kube-apiserver reads (--encryption-provider-config)"},
    {"effectiveConfig", "owner", "effective-owner", F_STR, O(effective_owner), 0, 0,
     "owner of the effective file (user name or number)"},
    {"effectiveConfig", "group", "effective-group", F_STR, O(effective_group), 0, 0,
     "group of the effective file (group name or number)"},
    {NULL, "history", "history", F_UINT, O(history), 0, 1000,
     "previous effective versions kept in the state directory"},
    {NULL, "stateDir", "state-dir", F_PATH, O(state_dir), 0, 0, "state directory"},
    {"etcd", "endpoints", "etcd-servers", F_LIST, O(etcd_endpoints), 0, 0,
     "etcd endpoints, comma separated (as --etcd-servers)"},
    {"etcd", "cafile", "etcd-cafile", F_PATH, O(etcd_cafile), 0, 0, "as --etcd-cafile"},
    {"etcd", "certfile", "etcd-certfile", F_PATH, O(etcd_certfile), 0, 0, "as --etcd-certfile"},
    {"etcd", "keyfile", "etcd-keyfile", F_PATH, O(etcd_keyfile), 0, 0, "as --etcd-keyfile"},
    {"etcd", "user", "etcd-user", F_STR, O(etcd_user), 0, 0, "etcd RBAC user (optional)"},
    {"etcd", "passwordFile", "etcd-password-file", F_PATH, O(etcd_password_file), 0, 0,
     "file holding the etcd user's password"},
    {"etcd", "jsonGateway", "etcd-json-gateway", F_BOOL, O(etcd_json_gateway), 0, 0,
     "send the KV calls through etcd's JSON gateway instead of gRPC (an endpoint behind a "
     "proxy that passes HTTP/1.1 only; slower: the gateway costs etcd about 3 to 6 times the "
     "CPU)"},
    {"etcd", "prefix", "coord-prefix", F_STR, O(coord_prefix), 0, 0,
     "coordination prefix in etcd (default /atrest/)"},
    {"etcd", "leaseTTLSeconds", "lease-ttl", F_UINT, O(lease_ttl_s), 2, 300,
     "TTL of the liveness and leader leases in etcd (s, default 10)"},
    {"apiserver", "url", "apiserver-url", F_STR, O(api_url), 0, 0,
     "the local kube-apiserver, e.g. https://127.0.0.1:6443"},
    {"apiserver", "cafile", "apiserver-cafile", F_PATH, O(api_cafile), 0, 0,
     "CA bundle for the API server"},
    {"apiserver", "certfile", "apiserver-certfile", F_PATH, O(api_certfile), 0, 0,
     "client certificate"},
    {"apiserver", "keyfile", "apiserver-keyfile", F_PATH, O(api_keyfile), 0, 0, "client key"},
    {"apiserver", "tokenFile", "apiserver-token-file", F_PATH, O(api_token_file), 0, 0,
     "bearer token file"},
    {"apiserver", "kubeconfig", "kubeconfig", F_PATH, O(kubeconfig), 0, 0,
     "kubeconfig (instead of url and credentials)"},
    {"apiserver", "etcdPrefix", "apiserver-etcd-prefix", F_STR, O(api_etcd_prefix), 0, 0,
     "the API server's --etcd-prefix (default /registry): where the canary is stored"},
    {"proof", "mode", "proof", F_PROOF, O(proof), 0, 0, "proof of load: canary|metrics|restart"},
    {"proof", "reloadCommand", "reload-command", F_STR, O(reload_command), 0, 0,
     "command that restarts kube-apiserver (proof mode restart)"},
    {"proof", "canaryNamespace", "canary-namespace", F_STR, O(canary_namespace), 0, 0,
     "namespace of the canary Secret (default kube-system)"},
    {"proof", "canaryName", "canary-name", F_STR, O(canary_name), 0, 0,
     "name of the canary Secrets, one per node: <name>-<node> (default atrest-canary)"},
    {"proof", "warnAfterSeconds", "proof-warn-after", F_UINT, O(warn_after_s), 1, 86400,
     "a proof waiting longer is reported as looking stuck; it keeps waiting (s, default 180)"},
    {"rotation", "settleSeconds", "settle-seconds", F_UINT, O(settle_s), 0, 86400,
     "a rotation starts once the desired config is unchanged this long everywhere (s, default "
     "30)"},
    {"reencrypt", "mode", "reencrypt-mode", F_REMODE, O(reencrypt_mode), 0, 0,
     "how the rotation's leader re-encrypts: etcd (direct) | api (through the local API server) | "
     "svm (StorageVersionMigration)"},
    {"reencrypt", "rateLimit", "reencrypt-rate-limit", F_UINT, O(reencrypt_rate), 0, 10000000,
     "objects/s the re-encrypt pass may handle (0: no limit)"},
    {"status", "listen", "status-listen", F_STR, O(status_listen), 0, 0,
     "status server TCP address host:port (loopback; \"\" disables)"},
    {"status", "socket", "status-socket", F_PATH, O(status_socket), 0, 0,
     "status server unix socket path"},
    {"status", "allowNonLoopback", "status-allow-non-loopback", F_BOOL,
     O(status_allow_non_loopback), 0, 0, "allow a non-loopback status address"},
    {NULL, "debounceMs", "debounce-ms", F_UINT, O(debounce_ms), 0, 60000,
     "quiet time after a change of the desired file before it is read (ms)"},
    {NULL, "pollIntervalSeconds", "poll-interval", F_UINT, O(poll_interval_s), 1, 86400,
     "periodic re-read of the desired file (s)"},
    {NULL, "logLevel", "log-level", F_LOGLEVEL, O(log_level), 0, 0, "error|warn|info|debug"},
};
#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

static const char *const sections[] = {"effectiveConfig", "etcd",      "apiserver", "proof",
                                       "rotation",        "reencrypt", "status"};
#define NSECTIONS (sizeof(sections) / sizeof(sections[0]))

_Static_assert(NFIELDS <= 40, "field_pos_ too small");

const char *ar_reencrypt_mode_name(enum ar_reencrypt_mode m)
{
    switch (m) {
    case AR_REENCRYPT_ETCD:
        return "etcd";
    case AR_REENCRYPT_API:
        return "api";
    case AR_REENCRYPT_SVM:
        return "svm";
    }
    return "etcd";
}

const char *ar_proof_mode_name(enum ar_proof_mode m)
{
    switch (m) {
    case AR_PROOF_CANARY:
        return "canary";
    case AR_PROOF_METRICS:
        return "metrics";
    case AR_PROOF_RESTART:
        return "restart";
    }
    return "canary";
}

static int field_index(const struct field *f)
{
    return (int)(f - fields);
}

static void field_path(const struct field *f, char *buf, size_t len)
{
    if (f->section)
        snprintf(buf, len, "%s.%s", f->section, f->key);
    else
        snprintf(buf, len, "%s", f->key);
}

static char **str_at(struct ar_settings *s, const struct field *f)
{
    return (char **)((char *)s + f->off);
}

static void free_list(struct ar_settings *s)
{
    for (size_t i = 0; i < s->n_etcd_endpoints; i++) {
        free(s->etcd_endpoints[i]);
        s->etcd_endpoints[i] = NULL;
    }
    s->n_etcd_endpoints = 0;
}

int ar_settings_init(struct ar_settings *s)
{
    char host[HOST_NAME_MAX + 1];

    memset(s, 0, sizeof(*s));
    if (gethostname(host, sizeof(host)) < 0)
        snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    s->node = strdup(host);
    s->state_dir = strdup("/var/lib/atrest");
    s->coord_prefix = strdup("/atrest/");
    s->status_listen = strdup("127.0.0.1:9798");
    s->history = 5;
    s->debounce_ms = 300;
    s->poll_interval_s = 60;
    s->lease_ttl_s = 10;
    s->settle_s = 30;
    s->log_level = AR_LOG_INFO;
    s->proof = AR_PROOF_CANARY;
    s->warn_after_s = 180;
    s->api_etcd_prefix = strdup("/registry");
    s->canary_namespace = strdup("kube-system");
    s->canary_name = strdup("atrest-canary");
    if (!s->node || !s->state_dir || !s->coord_prefix || !s->status_listen || !s->api_etcd_prefix ||
        !s->canary_namespace || !s->canary_name) {
        ar_settings_free(s);
        return -ENOMEM;
    }
    return 0;
}

void ar_settings_free(struct ar_settings *s)
{
    for (size_t i = 0; i < NFIELDS; i++)
        if (fields[i].type == F_STR || fields[i].type == F_PATH) {
            char **p = str_at(s, &fields[i]);
            free(*p);
            *p = NULL;
        }
    free_list(s);
    free(s->file);
    s->file = NULL;
}

/* ---- value setting (shared by YAML and flags) ------------------------------------------- */

static int diag(struct ar_diags *d, const char *file, struct ar_pos pos, const char *path,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int diag(struct ar_diags *d, const char *file, struct ar_pos pos, const char *path,
                const char *fmt, ...)
{
    char detail[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    ar_diags_add(d, AR_SEV_ERROR, file, pos, path, "%s", detail);
    return -EINVAL;
}

static int warn(struct ar_diags *d, const char *file, struct ar_pos pos, const char *path,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int warn(struct ar_diags *d, const char *file, struct ar_pos pos, const char *path,
                const char *fmt, ...)
{
    char detail[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    ar_diags_add(d, AR_SEV_WARNING, file, pos, path, "%s", detail);
    return 0;
}

static int parse_uint(const char *v, unsigned *out)
{
    char *end;
    unsigned long x;

    if (!*v || *v == '-' || *v == '+')
        return -EINVAL;
    for (const char *p = v; *p; p++)
        if (*p < '0' || *p > '9')
            return -EINVAL;
    errno = 0;
    x = strtoul(v, &end, 10);
    if (errno || *end || x > UINT_MAX)
        return -EINVAL;
    *out = (unsigned)x;
    return 0;
}

static int add_endpoint(struct ar_settings *s, const char *v, size_t n, const char *file,
                        struct ar_pos pos, const char *path, struct ar_diags *d)
{
    while (n && (*v == ' ' || *v == '\t')) {
        v++;
        n--;
    }
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (!n)
        return diag(d, file, pos, path, "empty endpoint: give URLs like https://10.0.0.1:2379");
    if (s->n_etcd_endpoints >= AR_SETTINGS_MAX_ENDPOINTS)
        return diag(d, file, pos, path, "too many endpoints (at most %d)",
                    AR_SETTINGS_MAX_ENDPOINTS);
    s->etcd_endpoints[s->n_etcd_endpoints] = strndup(v, n);
    if (!s->etcd_endpoints[s->n_etcd_endpoints])
        return -ENOMEM;
    s->n_etcd_endpoints++;
    return 0;
}

/* Set one field from text. For lists, v is one comma-separated item list (appended). */
static int set_value(struct ar_settings *s, const struct field *f, const char *v, const char *file,
                     struct ar_pos pos, struct ar_diags *d)
{
    char path[64];
    unsigned u;
    int r;

    field_path(f, path, sizeof(path));
    switch (f->type) {
    case F_PATH:
        if (!*v)
            return diag(d, file, pos, path, "must not be empty: give a path or leave it out");
        /* fall through */
    case F_STR: {
        char *dup = strdup(v);
        if (!dup)
            return -ENOMEM;
        free(*str_at(s, f));
        *str_at(s, f) = dup;
        return 0;
    }
    case F_UINT:
        if (parse_uint(v, &u) < 0 || u < f->min || u > f->max)
            return diag(d, file, pos, path,
                        "invalid value \"%s\": must be a whole number from %u to %u", v, f->min,
                        f->max);
        *(unsigned *)((char *)s + f->off) = u;
        return 0;
    case F_BOOL:
        if (!strcmp(v, "true"))
            *(bool *)((char *)s + f->off) = true;
        else if (!strcmp(v, "false"))
            *(bool *)((char *)s + f->off) = false;
        else
            return diag(d, file, pos, path, "invalid value \"%s\": must be true or false", v);
        return 0;
    case F_LIST: {
        const char *p = v;
        for (;;) {
            const char *c = strchr(p, ',');
            size_t n = c ? (size_t)(c - p) : strlen(p);
            r = add_endpoint(s, p, n, file, pos, path, d);
            if (r < 0)
                return r;
            if (!c)
                break;
            p = c + 1;
        }
        return 0;
    }
    case F_PROOF:
        if (!strcmp(v, "canary"))
            s->proof = AR_PROOF_CANARY;
        else if (!strcmp(v, "metrics"))
            s->proof = AR_PROOF_METRICS;
        else if (!strcmp(v, "restart"))
            s->proof = AR_PROOF_RESTART;
        else
            return diag(d, file, pos, path,
                        "invalid value \"%s\": must be one of canary, metrics, restart", v);
        return 0;
    case F_REMODE:
        if (!strcmp(v, "etcd"))
            s->reencrypt_mode = AR_REENCRYPT_ETCD;
        else if (!strcmp(v, "api"))
            s->reencrypt_mode = AR_REENCRYPT_API;
        else if (!strcmp(v, "svm"))
            s->reencrypt_mode = AR_REENCRYPT_SVM;
        else
            return diag(d, file, pos, path, "invalid value \"%s\": must be one of etcd, api, svm",
                        v);
        return 0;
    case F_LOGLEVEL:
        if (ar_log_level_parse(v, &s->log_level) < 0 || !strcmp(v, "err"))
            return diag(d, file, pos, path,
                        "invalid value \"%s\": must be one of error, warn, info, debug", v);
        return 0;
    }
    return -EINVAL;
}

static void mark(struct ar_settings *s, const struct field *f, const char *src, struct ar_pos pos)
{
    s->field_pos_[field_index(f)] = pos;
    s->field_src_[field_index(f)] = src;
}

/* ---- YAML ------------------------------------------------------------------------------- */

static struct ar_pos node_pos(const yaml_node_t *n)
{
    struct ar_pos p = {(int)n->start_mark.line + 1, (int)n->start_mark.column + 1};
    return p;
}

static const struct field *find_field(const char *section, const char *key)
{
    for (size_t i = 0; i < NFIELDS; i++) {
        if ((section == NULL) != (fields[i].section == NULL))
            continue;
        if (section && strcmp(section, fields[i].section))
            continue;
        if (!strcmp(key, fields[i].key))
            return &fields[i];
    }
    return NULL;
}

static void known_fields(const char *section, char *buf, size_t len)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < NFIELDS && o < len; i++) {
        if ((section == NULL) != (fields[i].section == NULL))
            continue;
        if (section && strcmp(section, fields[i].section))
            continue;
        o += (size_t)snprintf(buf + o, len - o, "%s%s", o ? ", " : "", fields[i].key);
    }
    if (!section)
        for (size_t i = 0; i < NSECTIONS && o < len; i++)
            o += (size_t)snprintf(buf + o, len - o, ", %s", sections[i]);
}

static bool is_null_scalar(const yaml_node_t *v)
{
    if (v->type != YAML_SCALAR_NODE || v->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *t = (const char *)v->data.scalar.value;
    return !*t || !strcmp(t, "~") || !strcmp(t, "null") || !strcmp(t, "Null") || !strcmp(t, "NULL");
}

static int load_value(struct ar_settings *s, yaml_document_t *doc, const struct field *f,
                      yaml_node_t *v, const char *file, struct ar_diags *d)
{
    char path[64];
    int r = 0;

    field_path(f, path, sizeof(path));
    if (is_null_scalar(v))
        return 0; /* "field:" with no value: keep the default */
    if (f->type == F_LIST) {
        if (v->type == YAML_SCALAR_NODE) {
            free_list(s);
            r = set_value(s, f, (const char *)v->data.scalar.value, file, node_pos(v), d);
        } else if (v->type == YAML_SEQUENCE_NODE) {
            free_list(s);
            for (yaml_node_item_t *it = v->data.sequence.items.start;
                 it < v->data.sequence.items.top; it++) {
                yaml_node_t *e = yaml_document_get_node(doc, *it);
                if (!e || e->type != YAML_SCALAR_NODE) {
                    r = diag(d, file, e ? node_pos(e) : node_pos(v), path,
                             "each endpoint must be a string like https://10.0.0.1:2379");
                    continue;
                }
                const char *t = (const char *)e->data.scalar.value;
                int r2 = add_endpoint(s, t, strlen(t), file, node_pos(e), path, d);
                if (r2 < 0)
                    r = r2;
            }
        } else {
            r = diag(d, file, node_pos(v), path, "must be a list of URLs");
        }
    } else if (v->type != YAML_SCALAR_NODE) {
        const char *what = f->type == F_UINT   ? "a number"
                           : f->type == F_BOOL ? "true or false"
                                               : "a string";
        r = diag(d, file, node_pos(v), path, "must be %s, not a %s", what,
                 v->type == YAML_MAPPING_NODE ? "mapping" : "list");
    } else {
        if (f->type == F_UINT || f->type == F_BOOL) {
            if (v->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
                return diag(d, file, node_pos(v), path, "must be %s, not a quoted string",
                            f->type == F_UINT ? "a number" : "true or false");
        }
        r = set_value(s, f, (const char *)v->data.scalar.value, file, node_pos(v), d);
    }
    if (r == 0)
        mark(s, f, s->file ? s->file : file, node_pos(v));
    return r;
}

static int load_mapping(struct ar_settings *s, yaml_document_t *doc, yaml_node_t *map,
                        const char *section, const char *file, struct ar_diags *d)
{
    int r = 0;

    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(doc, p->key);
        yaml_node_t *v = yaml_document_get_node(doc, p->value);
        char path[64];

        if (!k || !v)
            continue;
        if (k->type != YAML_SCALAR_NODE) {
            r = diag(d, file, node_pos(k), section ? section : "", "field names must be strings");
            continue;
        }
        const char *key = (const char *)k->data.scalar.value;
        snprintf(path, sizeof(path), "%s%s%s", section ? section : "", section ? "." : "", key);
        /* duplicates */
        bool dup = false;
        for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
            yaml_node_t *k2 = yaml_document_get_node(doc, q->key);
            if (k2 && k2->type == YAML_SCALAR_NODE &&
                !strcmp((const char *)k2->data.scalar.value, key))
                dup = true;
        }
        if (dup) {
            r = diag(d, file, node_pos(k), path, "duplicate field \"%s\": give it once", key);
            continue;
        }
        if (!section) {
            bool is_section = false;
            for (size_t i = 0; i < NSECTIONS; i++)
                if (!strcmp(key, sections[i]))
                    is_section = true;
            if (is_section) {
                if (is_null_scalar(v))
                    continue;
                if (v->type != YAML_MAPPING_NODE) {
                    r = diag(d, file, node_pos(v), path,
                             "must be a mapping (fields indented below \"%s:\")", key);
                    continue;
                }
                int r2 = load_mapping(s, doc, v, key, file, d);
                if (r2 < 0)
                    r = r2;
                continue;
            }
        }
        const struct field *f = find_field(section, key);
        if (!f) {
            char known[512];
            known_fields(section, known, sizeof(known));
            r = diag(d, file, node_pos(k), path, "unknown field \"%s\" (known here: %s)", key,
                     known);
            continue;
        }
        int r2 = load_value(s, doc, f, v, file, d);
        if (r2 < 0)
            r = r2;
    }
    return r;
}

int ar_settings_load_mem(struct ar_settings *s, const char *name, const char *buf, size_t len,
                         struct ar_diags *diags)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_node_t *root;
    struct ar_pos nopos = {0, 0};
    int r;

    if (!yaml_parser_initialize(&parser))
        return -ENOMEM;
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    if (!yaml_parser_load(&parser, &doc)) {
        struct ar_pos pos = {(int)parser.problem_mark.line + 1,
                             (int)parser.problem_mark.column + 1};
        r = diag(diags, name, pos, "", "YAML syntax error: %s%s%s",
                 parser.problem ? parser.problem : "unknown", parser.context ? " " : "",
                 parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        return r;
    }
    root = yaml_document_get_root_node(&doc);
    if (!root) {
        r = diag(diags, name, nopos, "",
                 "the file is empty: give at least desiredConfig and "
                 "effectiveConfig.path");
    } else if (root->type != YAML_MAPPING_NODE) {
        r = diag(diags, name, node_pos(root), "",
                 "the top level must be a mapping of settings (field: value)");
    } else {
        r = load_mapping(s, &doc, root, NULL, name, diags);
        /* a second document is an error */
        yaml_document_t doc2;
        if (r == 0 && yaml_parser_load(&parser, &doc2)) {
            yaml_node_t *r2 = yaml_document_get_root_node(&doc2);
            if (r2)
                r = diag(diags, name, node_pos(r2), "",
                         "a second YAML document: the settings file holds one");
            yaml_document_delete(&doc2);
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return r;
}

int ar_settings_load_file(struct ar_settings *s, const char *path, struct ar_diags *diags)
{
    struct ar_pos nopos = {0, 0};
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    int fd, r;

    free(s->file);
    s->file = strdup(path);
    if (!s->file)
        return -ENOMEM;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        r = -errno;
        diag(diags, path, nopos, "", "cannot open the settings file: %s", strerror(-r));
        return r;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        r = S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
        diag(diags, path, nopos, "", "not a regular file");
        goto out;
    }
    if ((size_t)st.st_size > SETTINGS_MAX_BYTES) {
        r = -EFBIG;
        diag(diags, path, nopos, "", "larger than %u bytes", SETTINGS_MAX_BYTES);
        goto out;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        r = -ENOMEM;
        goto out;
    }
    while (len < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            diag(diags, path, nopos, "", "read error: %s", strerror(-r));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    r = ar_settings_load_mem(s, s->file, buf, len, diags);
out:
    free(buf);
    close(fd);
    return r;
}

/* ---- flags ------------------------------------------------------------------------------ */

int ar_settings_apply_flags(struct ar_settings *s, int argc, char **argv, struct ar_diags *diags)
{
    struct ar_pos nopos = {0, 0};
    int r = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char name[64];
        const char *val = NULL;
        const struct field *f = NULL;

        if (strncmp(a, "--", 2) || !a[2]) {
            r = diag(diags, "command line", nopos, "", "unexpected argument \"%s\"", a);
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t nl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        if (nl >= sizeof(name)) {
            r = diag(diags, "command line", nopos, "", "unknown flag \"%s\"", a);
            continue;
        }
        memcpy(name, a + 2, nl);
        name[nl] = '\0';
        if (eq)
            val = eq + 1;
        if (!strcmp(name, "check") || !strcmp(name, "help"))
            continue;
        if (!strcmp(name, "config")) {
            if (!eq)
                i++;
            continue;
        }
        for (size_t j = 0; j < NFIELDS; j++)
            if (!strcmp(fields[j].flag, name))
                f = &fields[j];
        if (!f) {
            r = diag(diags, "command line", nopos, "", "unknown flag \"--%s\" (see --help)", name);
            continue;
        }
        if (!val) {
            if (f->type == F_BOOL) {
                val = "true";
            } else if (i + 1 < argc) {
                val = argv[++i];
            } else {
                r = diag(diags, "command line", nopos, "", "flag \"--%s\" needs a value", name);
                continue;
            }
        }
        if (f->type == F_LIST)
            free_list(s);
        char path[80];
        snprintf(path, sizeof(path), "--%s", name);
        int r2 = set_value(s, f, val, "command line", nopos, diags);
        if (r2 < 0) {
            /* set_value named the YAML field; say which flag too */
            if (diags->n && r2 == -EINVAL) {
                struct ar_diag *last = &diags->v[diags->n - 1];
                char *np = strdup(path);
                if (np) {
                    free(last->path);
                    last->path = np;
                }
            }
            r = r2;
            continue;
        }
        mark(s, f, "command line", nopos);
    }
    return r;
}

void ar_settings_usage(FILE *f)
{
    fprintf(f,
            "usage: atrest agent [--config FILE] [--check] [FLAGS]\n\n"
            "  --config FILE               settings file (default %s)\n"
            "  --check                     validate the settings and the files they name, "
            "then exit 0 or 1\n",
            AR_SETTINGS_DEFAULT_PATH);
    for (size_t i = 0; i < NFIELDS; i++) {
        char path[64], flag[80];
        field_path(&fields[i], path, sizeof(path));
        snprintf(flag, sizeof(flag), "--%s%s", fields[i].flag,
                 fields[i].type == F_BOOL ? "" : " V");
        fprintf(f, "  %-27s %s [%s]\n", flag, fields[i].help, path);
    }
}

/* ---- check ------------------------------------------------------------------------------ */

static const struct field *field_by_off(size_t off)
{
    for (size_t i = 0; i < NFIELDS; i++)
        if (fields[i].off == off)
            return &fields[i];
    return NULL;
}

/* Where a field was set: file + position for diagnostics. */
static void where(const struct ar_settings *s, size_t off, const char **file, struct ar_pos *pos,
                  char *path, size_t pathlen)
{
    const struct field *f = field_by_off(off);
    int i = f ? field_index(f) : -1;
    static const struct ar_pos nopos = {0, 0};

    *file = (i >= 0 && s->field_src_[i]) ? s->field_src_[i] : s->file ? s->file : "settings";
    *pos = i >= 0 ? s->field_pos_[i] : nopos;
    if (f && s->field_src_[i] && !strcmp(s->field_src_[i], "command line"))
        snprintf(path, pathlen, "--%s", f->flag);
    else if (f)
        field_path(f, path, pathlen);
    else
        path[0] = '\0';
}

#define CHECK_ERR(off, ...)                                                                        \
    do {                                                                                           \
        const char *file_;                                                                         \
        struct ar_pos pos_;                                                                        \
        char path_[80];                                                                            \
        where(s, (off), &file_, &pos_, path_, sizeof(path_));                                      \
        r = diag(d, file_, pos_, path_, __VA_ARGS__);                                              \
    } while (0)
#define CHECK_WARN(off, ...)                                                                       \
    do {                                                                                           \
        const char *file_;                                                                         \
        struct ar_pos pos_;                                                                        \
        char path_[80];                                                                            \
        where(s, (off), &file_, &pos_, path_, sizeof(path_));                                      \
        warn(d, file_, pos_, path_, __VA_ARGS__);                                                  \
    } while (0)

/* A file that must exist and be readable by us. Returns 0 or -errno. */
static int readable_file(const char *p, char *why, size_t whylen)
{
    struct stat st;
    int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        snprintf(why, whylen, "cannot open %s: %s", p, strerror(e));
        return -e;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(why, whylen, "%s is not a regular file", p);
        close(fd);
        return -EINVAL;
    }
    close(fd);
    return 0;
}

static void check_file(struct ar_settings *s, size_t off, struct ar_diags *d, int *rp)
{
    const char *p = *(char **)((char *)s + off);
    char why[PATH_MAX + 128];
    int r = *rp;

    if (!p)
        return;
    if (readable_file(p, why, sizeof(why)) < 0)
        CHECK_ERR(off, "%s: check the path and that the agent's user may read it", why);
    *rp = r;
}

static int resolve_user(const char *name, uid_t *uid)
{
    unsigned u;
    struct passwd *pw;

    if (parse_uint(name, &u) == 0) {
        *uid = (uid_t)u;
        return 0;
    }
    pw = getpwnam(name);
    if (!pw)
        return -ENOENT;
    *uid = pw->pw_uid;
    return 0;
}

static int resolve_group(const char *name, gid_t *gid)
{
    unsigned u;
    struct group *gr;

    if (parse_uint(name, &u) == 0) {
        *gid = (gid_t)u;
        return 0;
    }
    gr = getgrnam(name);
    if (!gr)
        return -ENOENT;
    *gid = gr->gr_gid;
    return 0;
}

int ar_parse_listen(const char *str, char *host, size_t hostlen, uint16_t *port)
{
    const char *colon;
    size_t hl;
    const char *h = str;
    unsigned u;

    if (!str || !*str)
        return -EINVAL;
    if (*str == '[') {
        const char *close = strchr(str, ']');
        if (!close || close[1] != ':')
            return -EINVAL;
        h = str + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(str, ':');
        if (!colon || memchr(str, ':', (size_t)(colon - str)))
            return -EINVAL;
        hl = (size_t)(colon - str);
    }
    if (!hl || hl >= hostlen)
        return -EINVAL;
    if (parse_uint(colon + 1, &u) < 0 || u > 65535)
        return -EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (!strcmp(host, "localhost"))
        snprintf(host, hostlen, "127.0.0.1");
    unsigned char tmp[16];
    if (inet_pton(AF_INET, host, tmp) != 1 && inet_pton(AF_INET6, host, tmp) != 1)
        return -EINVAL;
    *port = (uint16_t)u;
    return 0;
}

bool ar_host_is_loopback(const char *host)
{
    unsigned char a[16];

    if (!strcmp(host, "localhost"))
        return true;
    if (inet_pton(AF_INET, host, a) == 1)
        return a[0] == 127;
    if (inet_pton(AF_INET6, host, a) == 1) {
        static const unsigned char lo[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
        static const unsigned char v4m[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        return !memcmp(a, lo, 16) || (!memcmp(a, v4m, 12) && a[12] == 127);
    }
    return false;
}

static bool dir_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int parent_dir(const char *p, char *out, size_t len)
{
    const char *sl = strrchr(p, '/');
    if (!sl)
        return snprintf(out, len, ".") < 0 ? -EINVAL : 0;
    if (sl == p)
        return snprintf(out, len, "/") < 0 ? -EINVAL : 0;
    if ((size_t)(sl - p) >= len)
        return -ENAMETOOLONG;
    memcpy(out, p, (size_t)(sl - p));
    out[sl - p] = '\0';
    return 0;
}

/* A DNS-1123 label (dots: subdomain): [a-z0-9]([-a-z0-9.]*[a-z0-9])? */
static bool dns_name_ok(const char *v, size_t max, bool dots)
{
    size_t n = v ? strlen(v) : 0;

    if (!n || n > max || v[0] == '-' || v[n - 1] == '-' || v[0] == '.' || v[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!((v[i] >= 'a' && v[i] <= 'z') || (v[i] >= '0' && v[i] <= '9') || v[i] == '-' ||
              (dots && v[i] == '.')))
            return false;
    }
    return true;
}

int ar_settings_check(struct ar_settings *s, struct ar_diags *d, unsigned flags)
{
    char dir[PATH_MAX];
    int r = 0;

    /* node */
    if (!s->node || !*s->node || strchr(s->node, '/') || strlen(s->node) > 253)
        CHECK_ERR(O(node), "must be a non-empty name without '/' (at most 253 characters)");

    /* desired config: present, absolute, loads and validates */
    if (!s->desired_path) {
        CHECK_ERR(O(desired_path), "missing: set desiredConfig (or --desired) to the desired "
                                   "EncryptionConfiguration file");
    } else if (s->desired_path[0] != '/') {
        CHECK_ERR(O(desired_path), "must be an absolute path, not \"%s\"", s->desired_path);
    } else if (flags & AR_CHECK_DESIRED) {
        struct ar_config *cfg = NULL;
        struct ar_diags cd;
        struct ar_load_opts lo = {.reload = true, .kmsv1_allowed = false, .max_bytes = 0};
        ar_diags_init(&cd);
        if (ar_config_load_file(s->desired_path, &lo, &cfg, &cd) < 0)
            r = -EINVAL;
        for (size_t i = 0; i < cd.n; i++)
            ar_diags_add(d, cd.v[i].severity, cd.v[i].file, cd.v[i].pos, cd.v[i].path, "%s",
                         cd.v[i].detail);
        ar_diags_free(&cd);
        ar_config_unref(cfg);
    }

    /* effective config */
    if (!s->effective_path) {
        CHECK_ERR(O(effective_path), "missing: set effectiveConfig.path (or --effective) to the "
                                     "file kube-apiserver reads");
    } else if (s->effective_path[0] != '/') {
        CHECK_ERR(O(effective_path), "must be an absolute path, not \"%s\"", s->effective_path);
    } else {
        if (parent_dir(s->effective_path, dir, sizeof(dir)) < 0 || !dir_exists(dir))
            CHECK_ERR(O(effective_path), "directory %s does not exist: create it (mode 0700)", dir);
        else if (access(dir, W_OK) < 0)
            CHECK_WARN(O(effective_path), "directory %s is not writable by this user", dir);
        if (s->desired_path && !strcmp(s->desired_path, s->effective_path))
            CHECK_ERR(O(effective_path), "must differ from desiredConfig: the agent owns the "
                                         "effective file");
    }
    s->owner_set = s->group_set = false;
    if (s->effective_owner && *s->effective_owner) {
        if (resolve_user(s->effective_owner, &s->owner_uid) < 0)
            CHECK_ERR(O(effective_owner), "no such user \"%s\"", s->effective_owner);
        else
            s->owner_set = true;
    }
    if (s->effective_group && *s->effective_group) {
        if (resolve_group(s->effective_group, &s->group_gid) < 0)
            CHECK_ERR(O(effective_group), "no such group \"%s\"", s->effective_group);
        else
            s->group_set = true;
    }

    /* state dir */
    if (!s->state_dir || s->state_dir[0] != '/') {
        CHECK_ERR(O(state_dir), "must be an absolute path");
    } else if (!dir_exists(s->state_dir)) {
        if (parent_dir(s->state_dir, dir, sizeof(dir)) < 0 || !dir_exists(dir))
            CHECK_ERR(O(state_dir),
                      "%s does not exist and neither does its parent: create it "
                      "(systemd-tmpfiles does, see atrest.tmpfiles)",
                      s->state_dir);
    }

    /* etcd */
    for (size_t i = 0; i < s->n_etcd_endpoints; i++) {
        const char *e = s->etcd_endpoints[i];
        if (strncmp(e, "http://", 7) && strncmp(e, "https://", 8))
            CHECK_ERR(O(etcd_endpoints), "endpoint \"%s\" must start with https:// or http://", e);
    }
    if (!!s->etcd_certfile != !!s->etcd_keyfile)
        CHECK_ERR(s->etcd_certfile ? O(etcd_certfile) : O(etcd_keyfile),
                  "etcd.certfile and etcd.keyfile go together: set both or neither");
    if (!!s->etcd_user != !!s->etcd_password_file)
        CHECK_ERR(s->etcd_user ? O(etcd_user) : O(etcd_password_file),
                  "etcd.user and etcd.passwordFile go together: set both or neither");
    if (!s->n_etcd_endpoints && (s->etcd_cafile || s->etcd_certfile || s->etcd_user))
        CHECK_WARN(O(etcd_endpoints), "no endpoints: the etcd files are ignored");
    check_file(s, O(etcd_cafile), d, &r);
    check_file(s, O(etcd_certfile), d, &r);
    check_file(s, O(etcd_keyfile), d, &r);
    check_file(s, O(etcd_password_file), d, &r);
    if (!s->coord_prefix || s->coord_prefix[0] != '/' ||
        s->coord_prefix[strlen(s->coord_prefix) - 1] != '/')
        CHECK_ERR(O(coord_prefix), "must start and end with '/', e.g. /atrest/");

    /* API server */
    if (s->api_url && strncmp(s->api_url, "https://", 8) && strncmp(s->api_url, "http://", 7))
        CHECK_ERR(O(api_url), "must start with https:// or http://");
    if (!!s->api_certfile != !!s->api_keyfile)
        CHECK_ERR(s->api_certfile ? O(api_certfile) : O(api_keyfile),
                  "apiserver.certfile and apiserver.keyfile go together: set both or neither");
    if (s->kubeconfig && (s->api_certfile || s->api_token_file))
        CHECK_ERR(O(kubeconfig), "give either a kubeconfig or certfile/keyfile/tokenFile, "
                                 "not both");
    check_file(s, O(api_cafile), d, &r);
    check_file(s, O(api_certfile), d, &r);
    check_file(s, O(api_keyfile), d, &r);
    check_file(s, O(api_token_file), d, &r);
    check_file(s, O(kubeconfig), d, &r);
    if (!s->api_etcd_prefix || s->api_etcd_prefix[0] != '/')
        CHECK_ERR(O(api_etcd_prefix), "must start with '/', e.g. /registry");

    /* proof of load */
    if (!dns_name_ok(s->canary_namespace, 63, false))
        CHECK_ERR(O(canary_namespace),
                  "must be a namespace name (lowercase letters, digits and '-', 1 to 63)");
    if (!dns_name_ok(s->canary_name, 253, true))
        CHECK_ERR(O(canary_name), "must be a Secret name (lowercase letters, digits, '-' and "
                                  "'.', 1 to 253)");
    if (s->proof == AR_PROOF_RESTART && (!s->reload_command || !*s->reload_command))
        CHECK_ERR(O(proof), "proof mode restart needs proof.reloadCommand (--reload-command)");
    if ((s->proof == AR_PROOF_CANARY || s->proof == AR_PROOF_METRICS) && !s->api_url &&
        !s->kubeconfig)
        CHECK_WARN(O(proof),
                   "proof mode %s needs apiserver.url (or apiserver.kubeconfig); "
                   "without it rotations cannot prove a load",
                   ar_proof_mode_name(s->proof));

    /* re-encrypt pass */
    if (s->reencrypt_mode != AR_REENCRYPT_ETCD && !s->api_url && !s->kubeconfig)
        CHECK_ERR(O(reencrypt_mode),
                  "reencrypt mode %s goes through the local API server: it needs apiserver.url "
                  "(or apiserver.kubeconfig)",
                  ar_reencrypt_mode_name(s->reencrypt_mode));

    /* status */
    s->status_host[0] = '\0';
    s->status_port = 0;
    if (s->status_listen && *s->status_listen) {
        if (ar_parse_listen(s->status_listen, s->status_host, sizeof(s->status_host),
                            &s->status_port) < 0)
            CHECK_ERR(O(status_listen),
                      "invalid address \"%s\": use HOST:PORT with a numeric "
                      "host, e.g. 127.0.0.1:9798 or [::1]:9798",
                      s->status_listen);
        else if (!ar_host_is_loopback(s->status_host) && !s->status_allow_non_loopback)
            CHECK_ERR(O(status_listen),
                      "%s is not a loopback address: the status endpoint "
                      "stays on this node unless status.allowNonLoopback is "
                      "true",
                      s->status_host);
    }
    if (s->status_socket) {
        if (s->status_socket[0] != '/')
            CHECK_ERR(O(status_socket), "must be an absolute path");
        else if (parent_dir(s->status_socket, dir, sizeof(dir)) < 0 || !dir_exists(dir))
            CHECK_ERR(O(status_socket), "directory %s does not exist", dir);
    }
    if ((!s->status_listen || !*s->status_listen) && !s->status_socket)
        CHECK_WARN(O(status_listen), "no status listener: /status, /metrics and readiness "
                                     "are unavailable");
    return r;
}
