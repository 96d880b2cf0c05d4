/*
 * crypto/config_validate.c: defaulting and validation of a decoded EncryptionConfiguration,
 * in the order and with the texts of kube-apiserver (apiserver/pkg/apis/apiserver/validation/
 * validation_encryption.go, v1/defaults.go, encryptionconfig/config.go), plus the Go helpers
 * they rely on (time.ParseDuration, url.Parse as far as the endpoint check needs, %q).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <locale.h>
#include <pthread.h>
#include <wctype.h>

#include "crypto/config.h"
#include "crypto/config_int.h"

#define KMSV1_DEPRECATED                                                                           \
    "KMSv1 is deprecated and will only receive security updates going forward. Use KMSv2 "         \
    "instead.  Set --feature-gates=KMSv1=true to use the deprecated KMSv1 feature."

/* ---- Go string helpers ---------------------------------------------------------------------- */

/* Length of a valid UTF-8 sequence at p (max n bytes), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    size_t len, i;
    unsigned cp;

    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xc2 && p[0] <= 0xdf)
        len = 2, cp = p[0] & 0x1f;
    else if (p[0] >= 0xe0 && p[0] <= 0xef)
        len = 3, cp = p[0] & 0x0f;
    else if (p[0] >= 0xf0 && p[0] <= 0xf4)
        len = 4, cp = p[0] & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

char *ar_go_quote(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    char *out = malloc(n * 4 + 3), *o = out;
    size_t i = 0;

    if (!out)
        return NULL;
    *o++ = '"';
    while (i < n) {
        unsigned char c = p[i];
        size_t l;

        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
            i++;
            continue;
        }
        if (c >= 0x20 && c < 0x7f) {
            *o++ = (char)c;
            i++;
            continue;
        }
        if (c < 0x80) {
            const char *e = NULL;
            switch (c) {
            case '\a':
                e = "\\a";
                break;
            case '\b':
                e = "\\b";
                break;
            case '\f':
                e = "\\f";
                break;
            case '\n':
                e = "\\n";
                break;
            case '\r':
                e = "\\r";
                break;
            case '\t':
                e = "\\t";
                break;
            case '\v':
                e = "\\v";
                break;
            default:
                break;
            }
            if (e) {
                memcpy(o, e, 2);
                o += 2;
            } else {
                o += sprintf(o, "\\x%02x", c);
            }
            i++;
            continue;
        }
        l = utf8_len(p + i, n - i);
        if (l == 0) {
            o += sprintf(o, "\\x%02x", c);
            i++;
            continue;
        }
        /* Printable non-ASCII is kept as is (strconv.Quote keeps unicode.IsPrint runes). */
        memcpy(o, p + i, l);
        o += l;
        i += l;
    }
    *o++ = '"';
    *o = '\0';
    return out;
}

int ar_split_gr(const char *s, char **group, char **resource)
{
    const char *dot = strchr(s, '.');

    if (dot) {
        *group = strdup(dot + 1);
        *resource = strndup(s, (size_t)(dot - s));
    } else {
        *group = strdup("");
        *resource = strdup(s);
    }
    if (!*group || !*resource) {
        free(*group);
        free(*resource);
        *group = *resource = NULL;
        return -ENOMEM;
    }
    return 0;
}

/* ---- time.ParseDuration / Duration.String --------------------------------------------------- */

/* The time package's own quote(): bytes < ' ' or >= 0x80 as \xNN, '"' and '\\' escaped. */
static void time_quote(const char *s, char *out, size_t len)
{
    size_t k = 0, i;

    if (len < 3) {
        if (len)
            out[0] = '\0';
        return;
    }
    out[k++] = '"';
    for (i = 0; s[i] && k + 6 < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < ' ' || c >= 0x80) {
            k += (size_t)snprintf(out + k, len - k, "\\x%02x", c);
        } else {
            if (c == '"' || c == '\\')
                out[k++] = '\\';
            out[k++] = (char)c;
        }
    }
    out[k++] = '"';
    out[k] = '\0';
}

static int dur_err(char *err, size_t errlen, const char *what, const char *unit, const char *orig)
{
    char qo[160], qu[160];

    time_quote(orig, qo, sizeof(qo));
    if (unit) {
        time_quote(unit, qu, sizeof(qu));
        snprintf(err, errlen, "time: unknown unit %s in duration %s", qu, qo);
    } else {
        snprintf(err, errlen, "time: %s %s", what, qo);
    }
    return -EINVAL;
}

int ar_parse_go_duration(const char *orig, int64_t *ns, char *err, size_t errlen)
{
    static const struct {
        const char *name;
        uint64_t mult;
    } units[] = {{"ns", 1ULL},           {"us", 1000ULL},      {"\xc2\xb5s", 1000ULL}, /* U+00B5 */
                 {"\xce\xbcs", 1000ULL},                                               /* U+03BC */
                 {"ms", 1000000ULL},     {"s", 1000000000ULL}, {"m", 60000000000ULL},
                 {"h", 3600000000000ULL}};
    const uint64_t lim = 1ULL << 63;
    const char *s = orig;
    uint64_t d = 0;
    bool neg = false;

    if (*s == '-' || *s == '+') {
        neg = *s == '-';
        s++;
    }
    if (strcmp(s, "0") == 0) {
        *ns = 0;
        return 0;
    }
    if (*s == '\0')
        return dur_err(err, errlen, "invalid duration", NULL, orig);
    while (*s) {
        uint64_t v = 0, f = 0, unit = 0;
        double scale = 1;
        bool pre = false, post = false, overflow = false;
        char u[64];
        size_t i, ul;

        if (!(*s == '.' || (*s >= '0' && *s <= '9')))
            return dur_err(err, errlen, "invalid duration", NULL, orig);
        while (*s >= '0' && *s <= '9') {
            if (v > lim / 10)
                return dur_err(err, errlen, "invalid duration", NULL, orig);
            v = v * 10 + (uint64_t)(*s - '0');
            if (v > lim)
                return dur_err(err, errlen, "invalid duration", NULL, orig);
            s++;
            pre = true;
        }
        if (*s == '.') {
            s++;
            while (*s >= '0' && *s <= '9') {
                post = true;
                if (!overflow) {
                    if (f > (lim - 1) / 10) {
                        overflow = true;
                    } else {
                        uint64_t y = f * 10 + (uint64_t)(*s - '0');
                        if (y > lim) {
                            overflow = true;
                        } else {
                            f = y;
                            scale *= 10;
                        }
                    }
                }
                s++;
            }
        }
        if (!pre && !post)
            return dur_err(err, errlen, "invalid duration", NULL, orig);
        for (ul = 0; s[ul] && s[ul] != '.' && !(s[ul] >= '0' && s[ul] <= '9'); ul++)
            ;
        if (ul == 0)
            return dur_err(err, errlen, "missing unit in duration", NULL, orig);
        if (ul >= sizeof(u))
            ul = sizeof(u) - 1; /* longer than any unit: unknown anyway */
        memcpy(u, s, ul);
        u[ul] = '\0';
        for (i = 0; i < sizeof(units) / sizeof(units[0]); i++)
            if (strcmp(units[i].name, u) == 0)
                unit = units[i].mult;
        if (!unit)
            return dur_err(err, errlen, NULL, u, orig);
        while (*s && *s != '.' && !(*s >= '0' && *s <= '9'))
            s++;
        if (v > lim / unit)
            return dur_err(err, errlen, "invalid duration", NULL, orig);
        v *= unit;
        if (f > 0) {
            v += (uint64_t)((double)f * ((double)unit / scale));
            if (v > lim)
                return dur_err(err, errlen, "invalid duration", NULL, orig);
        }
        d += v;
        if (d > lim)
            return dur_err(err, errlen, "invalid duration", NULL, orig);
    }
    if (neg) {
        *ns = d == lim ? INT64_MIN : -(int64_t)d;
        return 0;
    }
    if (d > lim - 1)
        return dur_err(err, errlen, "invalid duration", NULL, orig);
    *ns = (int64_t)d;
    return 0;
}

static size_t fmt_frac(char *buf, size_t w, uint64_t *v, int prec)
{
    bool print = false;
    int i;

    for (i = 0; i < prec; i++) {
        unsigned digit = (unsigned)(*v % 10);
        print = print || digit != 0;
        if (print)
            buf[--w] = (char)('0' + digit);
        *v /= 10;
    }
    if (print)
        buf[--w] = '.';
    return w;
}

static size_t fmt_int(char *buf, size_t w, uint64_t v)
{
    if (v == 0) {
        buf[--w] = '0';
        return w;
    }
    while (v > 0) {
        buf[--w] = (char)('0' + v % 10);
        v /= 10;
    }
    return w;
}

void ar_format_go_duration(int64_t d, char *out, size_t outlen)
{
    char buf[32];
    size_t w = sizeof(buf);
    uint64_t u = (uint64_t)d;
    bool neg = d < 0;

    if (neg)
        u = 0 - u;
    if (u < 1000000000ULL) {
        int prec;
        buf[--w] = 's';
        w--;
        if (u == 0) {
            buf[w] = '0';
            goto done;
        } else if (u < 1000ULL) {
            prec = 0;
            buf[w] = 'n';
        } else if (u < 1000000ULL) {
            prec = 3;
            w--;
            buf[w] = '\xc2';
            buf[w + 1] = '\xb5';
        } else {
            prec = 6;
            buf[w] = 'm';
        }
        w = fmt_frac(buf, w, &u, prec);
        w = fmt_int(buf, w, u);
    } else {
        buf[--w] = 's';
        w = fmt_frac(buf, w, &u, 9);
        w = fmt_int(buf, w, u % 60);
        u /= 60;
        if (u > 0) {
            buf[--w] = 'm';
            w = fmt_int(buf, w, u % 60);
            u /= 60;
            if (u > 0) {
                buf[--w] = 'h';
                w = fmt_int(buf, w, u);
            }
        }
    }
done:
    if (neg)
        buf[--w] = '-';
    snprintf(out, outlen, "%.*s", (int)(sizeof(buf) - w), buf + w);
}

/* ---- url.Parse (Go 1.22/1.23 net/url), as far as it decides the endpoint check --------------- */

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static unsigned unhex(char c)
{
    if (c >= '0' && c <= '9')
        return (unsigned)(c - '0');
    if (c >= 'a' && c <= 'f')
        return (unsigned)(c - 'a' + 10);
    return (unsigned)(c - 'A' + 10);
}

/* shouldEscape(c, encodeHost) for an ASCII byte. */
static bool host_should_escape(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return false;
    return !strchr("!$&'()*+,;=:[]<>\"-_.~", c) || c == '\0';
}

enum url_mode { UM_PATH, UM_HOST, UM_ZONE, UM_USER, UM_FRAG };

/* unescape()'s checks: 0, or -EINVAL with the EscapeError / InvalidHostError text in err. */
static int url_unescape_check(const char *s, size_t n, enum url_mode mode, char *err, size_t errlen)
{
    size_t i = 0;
    char *q;

    while (i < n) {
        if (s[i] == '%') {
            size_t el = n - i < 3 ? n - i : 3;
            bool bad = i + 2 >= n || !is_hex(s[i + 1]) || !is_hex(s[i + 2]);

            if (!bad && mode == UM_HOST && unhex(s[i + 1]) < 8 && memcmp(s + i, "%25", 3) != 0)
                bad = true;
            if (!bad && mode == UM_ZONE) {
                unsigned v = unhex(s[i + 1]) << 4 | unhex(s[i + 2]);
                if (memcmp(s + i, "%25", 3) != 0 && v != ' ' && v < 0x80 &&
                    host_should_escape((unsigned char)v))
                    bad = true;
                /* shouldEscape of a byte >= 0x80 is true as well */
                if (memcmp(s + i, "%25", 3) != 0 && v >= 0x80)
                    bad = true;
            }
            if (bad) {
                q = ar_go_quote(s + i, el);
                if (!q)
                    return -ENOMEM;
                snprintf(err, errlen, "invalid URL escape %s", q);
                free(q);
                return -EINVAL;
            }
            i += 3;
            continue;
        }
        if ((mode == UM_HOST || mode == UM_ZONE) && (unsigned char)s[i] < 0x80 &&
            host_should_escape((unsigned char)s[i])) {
            q = ar_go_quote(s + i, 1);
            if (!q)
                return -ENOMEM;
            snprintf(err, errlen, "invalid character %s in host name", q);
            free(q);
            return -EINVAL;
        }
        i++;
    }
    return 0;
}

/* validOptionalPort */
static bool valid_port(const char *p, size_t n)
{
    size_t i;

    if (n == 0)
        return true;
    if (p[0] != ':')
        return false;
    for (i = 1; i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return false;
    return true;
}

static const char *mem_rchr(const char *s, size_t n, char c)
{
    while (n > 0)
        if (s[--n] == c)
            return s + n;
    return NULL;
}

static const char *mem_str(const char *s, size_t n, const char *needle)
{
    size_t l = strlen(needle), i;

    for (i = 0; i + l <= n; i++)
        if (memcmp(s + i, needle, l) == 0)
            return s + i;
    return NULL;
}

static int port_error(const char *p, size_t n, char *err, size_t errlen)
{
    char *q = ar_go_quote(p, n);

    if (!q)
        return -ENOMEM;
    snprintf(err, errlen, "invalid port %s after host", q);
    free(q);
    return -EINVAL;
}

/* parseHost */
static int url_parse_host(const char *h, size_t n, char *err, size_t errlen)
{
    const char *c;
    int rc;

    if (n > 0 && h[0] == '[') {
        const char *rb = mem_rchr(h, n, ']'), *zone;
        size_t i;

        if (!rb) {
            snprintf(err, errlen, "missing ']' in host");
            return -EINVAL;
        }
        i = (size_t)(rb - h);
        if (!valid_port(rb + 1, n - i - 1))
            return port_error(rb + 1, n - i - 1, err, errlen);
        zone = mem_str(h, i, "%25");
        if (zone) {
            size_t z = (size_t)(zone - h);
            if ((rc = url_unescape_check(h, z, UM_HOST, err, errlen)) < 0 ||
                (rc = url_unescape_check(zone, i - z, UM_ZONE, err, errlen)) < 0 ||
                (rc = url_unescape_check(rb, n - i, UM_HOST, err, errlen)) < 0)
                return rc;
            return 0;
        }
    } else if ((c = mem_rchr(h, n, ':'))) {
        size_t pl = n - (size_t)(c - h);
        if (!valid_port(c, pl))
            return port_error(c, pl, err, errlen);
    }
    return url_unescape_check(h, n, UM_HOST, err, errlen);
}

/* validUserinfo */
static bool valid_userinfo(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
            continue;
        if (c == '\0' || !strchr("-._:~!$&'()*+,;=%@", c))
            return false; /* non-ASCII runes are refused too */
    }
    return true;
}

/* parseAuthority */
static int url_parse_authority(const char *a, size_t n, char *err, size_t errlen)
{
    const char *at = mem_rchr(a, n, '@');
    size_t ul;
    int rc;

    if (!at)
        return url_parse_host(a, n, err, errlen);
    ul = (size_t)(at - a);
    rc = url_parse_host(at + 1, n - ul - 1, err, errlen);
    if (rc < 0)
        return rc;
    if (!valid_userinfo(a, ul)) {
        snprintf(err, errlen, "net/url: invalid userinfo");
        return -EINVAL;
    }
    return url_unescape_check(a, ul, UM_USER, err, errlen);
}

/*
 * url.Parse(raw): sets *scheme (malloc'd, lowercased) or returns -EINVAL with Go's error text
 * (a *url.Error: `parse "<url>": <cause>`) in err. Errors before the fragment quote the URL
 * without its "#...", as Go does; a bad escape in the fragment quotes the whole URL.
 */
static int go_url_parse(const char *raw, char **scheme, char **err)
{
    size_t rawlen = strlen(raw), n = rawlen, i, sl = 0, restlen;
    const char *hash = strchr(raw, '#'), *rest, *q;
    char cause[400], *quoted = NULL, *sch = NULL;
    int rc = -EINVAL;

    *scheme = NULL;
    *err = NULL;
    cause[0] = '\0';
    if (hash)
        n = (size_t)(hash - raw);
    for (i = 0; i < n; i++)
        if ((unsigned char)raw[i] < 0x20 || raw[i] == 0x7f) {
            snprintf(cause, sizeof(cause), "net/url: invalid control character in URL");
            goto fail;
        }
    /* getScheme ("*" has none either) */
    for (i = 0; i < n; i++) {
        char c = raw[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
            continue;
        if ((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.') {
            if (i == 0)
                break;
            continue;
        }
        if (c == ':') {
            if (i == 0) {
                snprintf(cause, sizeof(cause), "missing protocol scheme");
                goto fail;
            }
            sl = i;
        }
        break;
    }
    sch = strndup(raw, sl);
    if (!sch) {
        rc = -ENOMEM;
        goto out;
    }
    for (i = 0; i < sl; i++)
        if (sch[i] >= 'A' && sch[i] <= 'Z')
            sch[i] = (char)(sch[i] - 'A' + 'a');
    rest = raw + (sl ? sl + 1 : 0);
    restlen = n - (sl ? sl + 1 : 0);
    q = memchr(rest, '?', restlen);
    if (q)
        restlen = (size_t)(q - rest);
    if (restlen == 0 || rest[0] != '/') {
        if (sl)
            goto fragment; /* opaque */
        {
            const char *slash = memchr(rest, '/', restlen);
            size_t segl = slash ? (size_t)(slash - rest) : restlen;
            if (memchr(rest, ':', segl)) {
                snprintf(cause, sizeof(cause), "first path segment in URL cannot contain colon");
                goto fail;
            }
        }
    }
    if (restlen >= 2 && rest[0] == '/' && rest[1] == '/' &&
        (sl || !(restlen >= 3 && rest[2] == '/'))) {
        const char *auth = rest + 2, *slash = memchr(auth, '/', restlen - 2);
        size_t al = slash ? (size_t)(slash - auth) : restlen - 2;

        rc = url_parse_authority(auth, al, cause, sizeof(cause));
        if (rc < 0)
            goto fail;
        rest = auth + al;
        restlen = restlen - 2 - al;
    }
    rc = url_unescape_check(rest, restlen, UM_PATH, cause, sizeof(cause));
    if (rc < 0)
        goto fail;
fragment:
    if (hash && hash[1]) {
        rc = url_unescape_check(hash + 1, strlen(hash + 1), UM_FRAG, cause, sizeof(cause));
        if (rc < 0) {
            n = rawlen; /* setFragment errors quote the whole URL */
            goto fail;
        }
    }
    rc = 0;
    goto out;
fail:
    if (rc == -ENOMEM)
        goto out;
    rc = -EINVAL;
    quoted = ar_go_quote(raw, n);
    if (!quoted) {
        rc = -ENOMEM;
        goto out;
    }
    if (asprintf(err, "parse %s: %s", quoted, cause) < 0) {
        *err = NULL;
        rc = -ENOMEM;
    }
out:
    free(quoted);
    if (rc == 0)
        *scheme = sch;
    else
        free(sch);
    return rc;
}

/* ---- defaults ------------------------------------------------------------------------------- */

void ar_cfg_defaults(struct dconf *c)
{
    size_t i, j;

    for (i = 0; i < c->nrules; i++)
        for (j = 0; j < c->rules[i].nprov; j++) {
            struct dkms *k = &c->rules[i].prov[j].kms;
            if (!k->set)
                continue;
            if (!k->timeout_set)
                k->timeout_ns = AR_KMS_DEFAULT_TIMEOUT_NS;
            if (k->api_version[0] == '\0') {
                char *v = strdup("v1");
                if (v) { /* on ENOMEM the empty version fails validation: never silently wrong */
                    free(k->api_version);
                    k->api_version = v;
                }
            }
            if (!k->cachesize_set && strcmp(k->api_version, "v1") == 0)
                k->cachesize = AR_KMS_DEFAULT_CACHESIZE;
        }
}

/* ---- validation ----------------------------------------------------------------------------- */

struct vstate {
    const struct ar_vctx *ctx;
    int nomem;
    int nerr;
    char **kms_names; /* every KMS name seen so far */
    size_t nkms;
};

static void verr(struct vstate *vs, enum ar_severity sev, struct ar_pos pos, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* fmt builds "PATH\x1fDETAIL" so one format string carries both. */
static void verr(struct vstate *vs, enum ar_severity sev, struct ar_pos pos, const char *fmt, ...)
{
    char *msg = NULL, *sep;
    va_list ap;
    int n;

    if (sev == AR_SEV_ERROR)
        vs->nerr++;
    va_start(ap, fmt);
    n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (n < 0) {
        vs->nomem = 1;
        return;
    }
    sep = strchr(msg, '\x1f');
    if (sep)
        *sep++ = '\0';
    if (ar_diags_add(vs->ctx->diags, sev, vs->ctx->file, pos, sep ? msg : "", "%s",
                     sep ? sep : msg) < 0)
        vs->nomem = 1;
    free(msg);
}

static char *q(struct vstate *vs, const char *s)
{
    char *r = ar_go_quote(s, strlen(s));
    if (!r)
        vs->nomem = 1;
    return r;
}

/* Go's %#v of a []string. */
static char *gostrslice(struct vstate *vs, char **v, size_t n)
{
    size_t i, len = 16;
    char *out, **qs = calloc(n ? n : 1, sizeof(*qs));

    if (!qs) {
        vs->nomem = 1;
        return NULL;
    }
    for (i = 0; i < n; i++) {
        qs[i] = ar_go_quote(v[i], strlen(v[i]));
        if (!qs[i]) {
            vs->nomem = 1;
            break;
        }
        len += strlen(qs[i]) + 2;
    }
    out = vs->nomem ? NULL : malloc(len);
    if (out) {
        strcpy(out, "[]string{");
        for (i = 0; i < n; i++) {
            if (i)
                strcat(out, ", ");
            strcat(out, qs[i]);
        }
        strcat(out, "}");
    } else {
        vs->nomem = 1;
    }
    for (i = 0; i < n; i++)
        free(qs[i]);
    free(qs);
    return out;
}

/* The code point of the valid UTF-8 sequence of length l at p. */
static wint_t utf8_cp(const unsigned char *p, size_t l)
{
    unsigned cp = l == 1 ? p[0] : l == 2 ? p[0] & 0x1fu : l == 3 ? p[0] & 0x0fu : p[0] & 0x07u;
    size_t i;

    for (i = 1; i < l; i++)
        cp = (cp << 6) | (p[i] & 0x3fu);
    return (wint_t)cp;
}

/*
 * strings.ToLower(s) != s. Non-ASCII runes use the C.UTF-8 locale's simple lowercase mapping
 * (close to Go's unicode.ToLower; the Unicode versions may differ on recent additions); an
 * invalid UTF-8 byte counts as a capital, as Go's ToLower turns it into U+FFFD. Without that
 * locale only ASCII capitals are detected.
 */
static locale_t utf8_loc;
static pthread_once_t utf8_loc_once = PTHREAD_ONCE_INIT;

static void utf8_loc_init(void)
{
    utf8_loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
}

static bool has_capital(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), i = 0;

    while (i < n) {
        size_t l;

        if (p[i] < 0x80) {
            if (p[i] >= 'A' && p[i] <= 'Z')
                return true;
            i++;
            continue;
        }
        l = utf8_len(p + i, n - i);
        if (l == 0)
            return true;
        pthread_once(&utf8_loc_once, utf8_loc_init);
        if (utf8_loc) {
            wint_t c = utf8_cp(p + i, l);
            if (towlower_l(c, utf8_loc) != c)
                return true;
        }
        i += l;
    }
    return false;
}

struct gr {
    const char *g;
    size_t glen;
    const char *r;
    size_t rlen;
};

static struct gr parse_gr(const char *s)
{
    struct gr g;
    const char *dot = strchr(s, '.');

    if (dot) {
        g.r = s;
        g.rlen = (size_t)(dot - s);
        g.g = dot + 1;
        g.glen = strlen(dot + 1);
    } else {
        g.r = s;
        g.rlen = strlen(s);
        g.g = "";
        g.glen = 0;
    }
    return g;
}

static bool gr_eq(struct gr a, struct gr b)
{
    return a.glen == b.glen && a.rlen == b.rlen && memcmp(a.g, b.g, a.glen) == 0 &&
           memcmp(a.r, b.r, a.rlen) == 0;
}

static bool gr_is(struct gr a, const char *g, const char *r)
{
    return a.glen == strlen(g) && a.rlen == strlen(r) && memcmp(a.g, g, a.glen) == 0 &&
           memcmp(a.r, r, a.rlen) == 0;
}

static void validate_overlap(struct vstate *vs, const struct drule *r, size_t ri)
{
    bool dup = false, overlap = false;
    size_t i, j;
    char *val;

    if (r->nres < 2)
        return;
    for (i = 0; i < r->nres; i++) {
        struct gr r1 = parse_gr(r->res[i]);
        for (j = 0; j < r->nres; j++) {
            struct gr r2 = parse_gr(r->res[j]);
            if (i == j)
                continue;
            if (gr_eq(r1, r2) && !dup) {
                dup = true;
                continue;
            }
            if (overlap)
                continue;
            if (gr_is(r1, "*", "*")) {
                overlap = true;
                continue;
            }
            if (r1.glen != r2.glen || memcmp(r1.g, r2.g, r1.glen) != 0)
                continue;
            if ((r1.rlen == 1 && r1.r[0] == '*') || (r2.rlen == 1 && r2.r[0] == '*'))
                overlap = true;
        }
    }
    if (!dup && !overlap)
        return;
    val = gostrslice(vs, r->res, r->nres);
    if (!val)
        return;
    if (dup)
        verr(vs, AR_SEV_ERROR, r->res_list_pos,
             "resources[%zu].resources\x1fInvalid value: %s: the same resource cannot be "
             "specified multiple times",
             ri, val);
    if (overlap)
        verr(vs, AR_SEV_ERROR, r->res_list_pos,
             "resources[%zu].resources\x1fInvalid value: %s: using overlapping resources such as "
             "'secrets' and '*.' in the same resource list is not allowed as they will be masked",
             ri, val);
    free(val);
}

static void validate_names(struct vstate *vs, const struct drule *r, size_t ri)
{
    size_t j;

    for (j = 0; j < r->nres; j++) {
        const char *res = r->res[j], *msg = NULL;
        struct gr g = parse_gr(res);
        char *qv;

        if (has_capital(res))
            msg = "resource name should not contain capital letters";
        else if (strcmp(res, "*") == 0)
            msg = "use '*.' to encrypt all the resources from core API group or *.* to encrypt "
                  "all resources";
        else if (strcmp(res, "apiserveripinfo") == 0 || strcmp(res, "serviceipallocations") == 0 ||
                 strcmp(res, "servicenodeportallocations") == 0)
            msg = "resources which do not have REST API/s cannot be encrypted";
        else if (g.glen == 13 && memcmp(g.g, "events.k8s.io", 13) == 0)
            msg = "'*.events.k8s.io' objects are stored using the 'events' API group in etcd. Use "
                  "'events' instead in the config file";
        else if (g.glen == 10 && memcmp(g.g, "extensions", 10) == 0)
            msg = "'extensions' group has been removed and cannot be used for encryption";
        else if (g.glen == 1 && g.g[0] == '*' && !(g.rlen == 1 && g.r[0] == '*'))
            msg = "encrypting the same resource across groups is not supported";
        if (!msg)
            continue;
        qv = q(vs, res);
        if (!qv)
            return;
        verr(vs, AR_SEV_ERROR, r->res_pos[j],
             "resources[%zu].resources[%zu]\x1fInvalid value: %s: %s", ri, j, qv, msg);
        free(qv);
    }
}

static void validate_keys(struct vstate *vs, struct dkeys *ks, const char *path, bool secretbox)
{
    size_t k;
    int rc;

    if (ks->n == 0) {
        verr(vs, AR_SEV_ERROR, ks->keys_pos, "%s\x1fRequired value: at least one keys is required",
             path);
        return;
    }
    for (k = 0; k < ks->n; k++) {
        struct dkey *key = &ks->v[k];
        bool ok;

        if (key->name[0] == '\0')
            verr(vs, AR_SEV_ERROR, key->name_pos,
                 "%s[%zu].name\x1fRequired value: name is a mandatory field for a key", path, k);
        if (key->secret_len == 0) {
            verr(vs, AR_SEV_ERROR, key->secret_pos,
                 "%s[%zu].secret\x1fRequired value: secret is a mandatory field for a key", path,
                 k);
            continue;
        }
        rc = ar_b64_decode(key->secret, key->secret_len, key->dst, &key->dec_len);
        if (rc == -ENOMEM) {
            vs->nomem = 1;
            return;
        }
        if (rc < 0) {
            verr(vs, AR_SEV_ERROR, key->secret_pos,
                 "%s[%zu].secret\x1fInvalid value: \"REDACTED\": secrets must be base64 encoded",
                 path, k);
            continue;
        }
        ok = secretbox ? key->dec_len == 32
                       : key->dec_len == 16 || key->dec_len == 24 || key->dec_len == 32;
        if (!ok)
            verr(vs, AR_SEV_ERROR, key->secret_pos,
                 "%s[%zu].secret\x1fInvalid value: \"REDACTED\": secret is not of the expected "
                 "length, got %zu, expected one of %s",
                 path, k, key->dec_len, secretbox ? "[32]" : "[16 24 32]");
    }
}

static bool kms_seen(const struct vstate *vs, const char *name)
{
    size_t i;

    for (i = 0; i < vs->nkms; i++)
        if (strcmp(vs->kms_names[i], name) == 0)
            return true;
    return false;
}

static void validate_kms(struct vstate *vs, struct dkms *k, const char *path)
{
    const struct ar_load_opts *o = vs->ctx->opts;
    bool v1 = strcmp(k->api_version, "v1") == 0;
    char *qv;

    /* name */
    if (k->name[0] == '\0')
        verr(vs, AR_SEV_ERROR, k->name_pos,
             "%s.name\x1fRequired value: name is a mandatory field for a provider", path);
    if (!v1 && strchr(k->name, ':')) {
        if ((qv = q(vs, k->name))) {
            verr(vs, AR_SEV_ERROR, k->name_pos,
                 "%s.name\x1fInvalid value: %s: invalid KMS provider name %s, must not contain ':'",
                 path, qv, k->name);
            free(qv);
        }
    }
    if ((o->reload || !v1) && kms_seen(vs, k->name)) {
        if ((qv = q(vs, k->name))) {
            verr(vs, AR_SEV_ERROR, k->name_pos,
                 "%s.name\x1fInvalid value: %s: duplicate KMS provider name %s, names must be "
                 "unique",
                 path, qv, k->name);
            free(qv);
        }
    }
    /* timeout */
    if (k->timeout_ns <= 0) {
        char ds[40];
        ar_format_go_duration(k->timeout_ns, ds, sizeof(ds));
        verr(vs, AR_SEV_ERROR, k->timeout_pos,
             "%s.timeout\x1fInvalid value: %s: timeout should be a positive value", path, ds);
    }
    /* endpoint */
    if (k->endpoint[0] == '\0') {
        verr(vs, AR_SEV_ERROR, k->endpoint_pos,
             "%s.endpoint\x1fInvalid value: \"\": endpoint is a mandatory field for a kms", path);
    } else {
        char *err = NULL, *scheme = NULL;
        int rc = go_url_parse(k->endpoint, &scheme, &err);
        if (rc == -ENOMEM) {
            vs->nomem = 1;
        } else if ((qv = q(vs, k->endpoint))) {
            if (rc < 0) {
                verr(vs, AR_SEV_ERROR, k->endpoint_pos,
                     "%s.endpoint\x1fInvalid value: %s: invalid endpoint for kms provider, error: "
                     "%s",
                     path, qv, err);
            } else if (strcmp(scheme, "unix") != 0) {
                char *qs = q(vs, scheme);
                if (qs)
                    verr(vs, AR_SEV_ERROR, k->endpoint_pos,
                         "%s.endpoint\x1fInvalid value: %s: unsupported scheme %s for KMS "
                         "provider, only unix is supported",
                         path, qv, qs);
                free(qs);
            }
            free(qv);
        }
        free(scheme);
        free(err);
    }
    /* cachesize */
    if (!v1 && k->cachesize_set)
        verr(vs, AR_SEV_ERROR, k->cache_pos,
             "%s.cachesize\x1fInvalid value: %d: cachesize is not supported in v2", path,
             (int)k->cachesize);
    if (v1 && k->cachesize == 0)
        verr(vs, AR_SEV_ERROR, k->cache_pos,
             "%s.cachesize\x1fInvalid value: 0: cachesize should be a positive value, or negative "
             "to disable",
             path);
    /* apiVersion */
    if (!v1 && strcmp(k->api_version, "v2") != 0) {
        if ((qv = q(vs, k->api_version))) {
            verr(vs, AR_SEV_ERROR, k->api_pos,
                 "%s.apiVersion\x1fInvalid value: %s: unsupported apiVersion apiVersion for KMS "
                 "provider, only v1 and v2 are supported",
                 path, qv);
            free(qv);
        }
    }
    /* kube-apiserver 1.29+ refuses to start with a KMS v1 provider unless the gate is on. */
    if (v1 && !o->kmsv1_allowed)
        verr(vs, AR_SEV_WARNING, k->pos, "%s\x1f%s", path, KMSV1_DEPRECATED);
}

static void go_ptr(char *out, size_t len, const char *type, bool set)
{
    snprintf(out, len, "(*apiserver.%s)(%s)", type, set ? "non-nil" : "nil");
}

static void validate_provider(struct vstate *vs, struct dprov *p, const char *path)
{
    int found = (p->kms.set ? 1 : 0) + (p->aesgcm.set ? 1 : 0) + (p->aescbc.set ? 1 : 0) +
                (p->secretbox.set ? 1 : 0) + (p->identity ? 1 : 0);
    char a[64], b[64], c[64], d[64], e[64];

    if (found == 1)
        return;
    /* Go prints the struct with %#v; pointers print as addresses, we print nil/non-nil. */
    go_ptr(a, sizeof(a), "AESConfiguration", p->aesgcm.set);
    go_ptr(b, sizeof(b), "AESConfiguration", p->aescbc.set);
    go_ptr(c, sizeof(c), "SecretboxConfiguration", p->secretbox.set);
    go_ptr(d, sizeof(d), "IdentityConfiguration", p->identity);
    go_ptr(e, sizeof(e), "KMSConfiguration", p->kms.set);
    verr(vs, AR_SEV_ERROR, p->pos,
         "%s\x1fInvalid value: apiserver.ProviderConfiguration{AESGCM:%s, AESCBC:%s, "
         "Secretbox:%s, Identity:%s, KMS:%s}: %s",
         path, a, b, c, d, e,
         found == 0 ? "provider does not contain any of the expected providers: KMS, AESGCM, "
                      "AESCBC, Secretbox, Identity"
                    : "more than one provider specified in a single element, should split into "
                      "different list elements");
}

int ar_cfg_validate(struct dconf *c, const struct ar_vctx *ctx)
{
    struct vstate vs;
    struct ar_pos p0 = {0, 0};
    size_t i, j;
    char path[128];

    memset(&vs, 0, sizeof(vs));
    vs.ctx = ctx;
    if (c->nrules == 0) {
        verr(&vs, AR_SEV_ERROR, c->rules_pos.line ? c->rules_pos : p0,
             "resources\x1fRequired value: at least one resources is required");
        goto out;
    }
    for (i = 0; i < c->nrules && !vs.nomem; i++) {
        struct drule *r = &c->rules[i];

        if (r->nres == 0)
            verr(&vs, AR_SEV_ERROR, r->res_list_pos,
                 "resources[%zu].resources\x1fRequired value: at least one "
                 "resources[%zu].resources is required",
                 i, i);
        validate_overlap(&vs, r, i);
        validate_names(&vs, r, i);
        if (r->nprov == 0)
            verr(&vs, AR_SEV_ERROR, r->prov_list_pos,
                 "resources[%zu].providers\x1fRequired value: at least one "
                 "resources[%zu].providers is required",
                 i, i);
        for (j = 0; j < r->nprov && !vs.nomem; j++) {
            struct dprov *p = &r->prov[j];

            snprintf(path, sizeof(path), "resources[%zu].providers[%zu]", i, j);
            validate_provider(&vs, p, path);
            if (p->kms.set) {
                char **nv;
                strcat(path, ".kms");
                validate_kms(&vs, &p->kms, path);
                nv = realloc(vs.kms_names, (vs.nkms + 1) * sizeof(*nv));
                if (!nv) {
                    vs.nomem = 1;
                    break;
                }
                vs.kms_names = nv;
                vs.kms_names[vs.nkms++] = p->kms.name;
            } else if (p->aesgcm.set) {
                strcat(path, ".aesgcm.keys");
                validate_keys(&vs, &p->aesgcm, path, false);
            } else if (p->aescbc.set) {
                strcat(path, ".aescbc.keys");
                validate_keys(&vs, &p->aescbc, path, false);
            } else if (p->secretbox.set) {
                strcat(path, ".secretbox.keys");
                validate_keys(&vs, &p->secretbox, path, true);
            }
        }
    }
out:
    free(vs.kms_names);
    return vs.nomem ? -ENOMEM : vs.nerr;
}

/* grYAMLString, %q-quoted; malloc'd or NULL. */
static char *gr_yaml_quoted(struct vstate *vs, struct gr g)
{
    char *s = NULL, *r;
    int n;

    if (g.glen == 0 && g.rlen == 1 && g.r[0] == '*')
        n = asprintf(&s, "*.");
    else if (g.glen == 0)
        n = asprintf(&s, "%.*s", (int)g.rlen, g.r);
    else
        n = asprintf(&s, "%.*s.%.*s", (int)g.rlen, g.r, (int)g.glen, g.g);
    if (n < 0) {
        vs->nomem = 1;
        return NULL;
    }
    r = q(vs, s);
    free(s);
    return r;
}

/* config.go: a resource of a later rule is masked by an earlier {group,*} or {*,*}. Go stops at
 * the first; we report every masked resource. */
int ar_cfg_check_masking(const struct dconf *c, const struct ar_vctx *ctx)
{
    struct vstate vs;
    size_t i, j, pi, pj;

    memset(&vs, 0, sizeof(vs));
    vs.ctx = ctx;
    for (i = 0; i < c->nrules && !vs.nomem; i++) {
        const struct drule *r = &c->rules[i];
        for (j = 0; j < r->nres && !vs.nomem; j++) {
            struct gr g = parse_gr(r->res[j]);
            bool done = false;
            /* every resource inserted before this one: earlier rules, and earlier entries of
             * this rule (validation already forbids overlaps inside one list) */
            int pass;
            /* Go looks up {group,*} first, then {*,*}, among all resources inserted before */
            for (pass = 0; pass < 2 && !done; pass++) {
                for (pi = 0; pi <= i && !done; pi++) {
                    const struct drule *pr = &c->rules[pi];
                    size_t lim = pi == i ? j : pr->nres;
                    for (pj = 0; pj < lim; pj++) {
                        struct gr h = parse_gr(pr->res[pj]);
                        bool m = pass == 0 ? (h.rlen == 1 && h.r[0] == '*' && h.glen == g.glen &&
                                              memcmp(h.g, g.g, g.glen) == 0)
                                           : gr_is(h, "*", "*");
                        if (m) {
                            char *qa = gr_yaml_quoted(&vs, g), *qb = gr_yaml_quoted(&vs, h);
                            if (qa && qb)
                                verr(&vs, AR_SEV_ERROR, r->res_pos[j],
                                     "resources[%zu].resources[%zu]\x1fresource %s is masked by "
                                     "earlier rule %s",
                                     i, j, qa, qb);
                            free(qa);
                            free(qb);
                            done = true;
                            break;
                        }
                    }
                }
            }
        }
    }
    return vs.nomem ? -ENOMEM : vs.nerr;
}
