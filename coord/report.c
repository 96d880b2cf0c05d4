/* coord/report.c: the member report and registration records (see report.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "coord/jsonrec.h"
#include "coord/report.h"

bool ar_report_fp_valid(const char *fp)
{
    if (!fp || strncmp(fp, "sha256:", 7) != 0 || strlen(fp) != AR_REPORT_FP_LEN - 1)
        return false;
    for (const char *p = fp + 7; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

bool ar_report_fp_equal(const char *a, const char *b)
{
    return a && b && ar_report_fp_valid(a) && !strcmp(a, b);
}

bool ar_report_effective_is(const struct ar_report *r, const char *fp)
{
    return r && ar_report_fp_equal(r->effective_fp, fp);
}

bool ar_report_node_valid(const char *n)
{
    size_t len = n ? strnlen(n, AR_REPORT_NODE_MAX) : 0;

    return len > 0 && len < AR_REPORT_NODE_MAX && !strchr(n, '/');
}

/* "" or a valid fingerprint */
static bool opt_fp_ok(const char *fp)
{
    return !fp[0] || ar_report_fp_valid(fp);
}

int ar_report_build(const struct ar_report *r, bool with_time, char **out)
{
    json_t *j;

    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!r || !ar_report_node_valid(r->node) || strlen(r->version) >= AR_REPORT_VERSION_MAX ||
        !opt_fp_ok(r->desired_fp) || !opt_fp_ok(r->effective_fp) || !opt_fp_ok(r->effective_hash) ||
        r->time_ms < 0 || r->desired_since_ms < 0 ||
        strnlen(r->error, AR_REPORT_ERROR_MAX) >= AR_REPORT_ERROR_MAX)
        return -EINVAL;
    j = json_pack("{s:s, s:s, s:{s:s?, s:b}, s:{s:s?, s:s?}}", "node", r->node, "version",
                  r->version, "desired", "fingerprint", r->desired_fp[0] ? r->desired_fp : NULL,
                  "valid", (int)r->desired_valid, "effective", "fingerprint",
                  r->effective_fp[0] ? r->effective_fp : NULL, "file_hash",
                  r->effective_hash[0] ? r->effective_hash : NULL);
    if (j && r->desired_since_ms > 0 &&
        json_object_set_new(json_object_get(j, "desired"), "since_ms",
                            json_integer((json_int_t)r->desired_since_ms)) < 0) {
        json_decref(j);
        return -ENOMEM;
    }
    if (j && r->error[0] && json_object_set_new(j, "error", json_string(r->error)) < 0) {
        json_decref(j); /* also when json_string refused text that is not UTF-8 */
        return -ENOMEM;
    }
    if (j && with_time &&
        json_object_set_new(j, "time_ms", json_integer((json_int_t)r->time_ms)) < 0) {
        json_decref(j);
        return -ENOMEM;
    }
    return ar_jrec_dump(j, out);
}

int ar_registration_build(const struct ar_registration *r, char **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!r || !ar_report_node_valid(r->node) || strlen(r->version) >= AR_REPORT_VERSION_MAX ||
        r->first_seen_ms < 0 || r->registered_ms < 0)
        return -EINVAL;
    return ar_jrec_dump(json_pack("{s:s, s:s, s:I, s:I}", "node", r->node, "version", r->version,
                                  "first_seen_ms", (json_int_t)r->first_seen_ms, "registered_ms",
                                  (json_int_t)r->registered_ms),
                        out);
}

/* --- parsing --------------------------------------------------------------------------------- */

static int get_fp(const json_t *o, const char *k, char *out)
{
    int rc = ar_jrec_get_str(o, k, AR_JREC_OPTIONAL, out, AR_REPORT_FP_LEN);

    if (rc == 0 && !opt_fp_ok(out))
        rc = -EBADMSG;
    return rc;
}

/* An optional object member: absent -> NULL (0), not an object -> -EBADMSG. */
static int get_obj(const json_t *o, const char *k, const json_t **out)
{
    *out = json_object_get(o, k);
    if (*out && json_is_null(*out))
        *out = NULL;
    return !*out || json_is_object(*out) ? 0 : -EBADMSG;
}

static int get_bool(const json_t *o, const char *k, bool *out)
{
    const json_t *v = o ? json_object_get(o, k) : NULL;

    *out = false;
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return -EBADMSG;
    *out = json_is_true(v);
    return 0;
}

static int get_ident(const json_t *root, char *node, char *version)
{
    const json_t *n = json_object_get(root, "node");
    int rc = ar_jrec_get_str(root, "node", AR_JREC_OPTIONAL, node, AR_REPORT_NODE_MAX);

    if (rc == 0 && n && !json_is_null(n) && !ar_report_node_valid(node)) /* present: a real name */
        rc = -EBADMSG;
    if (rc == 0)
        rc = ar_jrec_get_str(root, "version", AR_JREC_OPTIONAL, version, AR_REPORT_VERSION_MAX);
    return rc;
}

int ar_report_parse(const char *json, size_t len, struct ar_report *out)
{
    json_t *root;
    const json_t *d = NULL, *e = NULL;
    int rc;

    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    rc = ar_jrec_load(json, len, AR_REPORT_MAX_BYTES, &root);
    if (rc < 0)
        return rc;
    rc = get_ident(root, out->node, out->version);
    if (rc == 0)
        rc = get_obj(root, "desired", &d);
    if (rc == 0)
        rc = get_obj(root, "effective", &e);
    if (rc == 0 && d)
        rc = get_fp(d, "fingerprint", out->desired_fp);
    if (rc == 0)
        rc = get_bool(d, "valid", &out->desired_valid);
    if (rc == 0 && d)
        rc = ar_jrec_get_time(d, "since_ms", AR_JREC_OPTIONAL, &out->desired_since_ms);
    if (rc == 0 && e)
        rc = get_fp(e, "fingerprint", out->effective_fp);
    if (rc == 0 && e)
        rc = get_fp(e, "file_hash", out->effective_hash);
    if (rc == 0)
        rc = ar_jrec_get_str(root, "error", AR_JREC_OPTIONAL, out->error, AR_REPORT_ERROR_MAX);
    if (rc == 0)
        rc = ar_jrec_get_time(root, "time_ms", AR_JREC_OPTIONAL, &out->time_ms);
    json_decref(root);
    if (rc < 0)
        memset(out, 0, sizeof(*out));
    return rc;
}

int ar_registration_parse(const char *json, size_t len, struct ar_registration *out)
{
    json_t *root;
    int rc;

    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    rc = ar_jrec_load(json, len, AR_REPORT_MAX_BYTES, &root);
    if (rc < 0)
        return rc;
    rc = get_ident(root, out->node, out->version);
    if (rc == 0)
        rc = ar_jrec_get_time(root, "first_seen_ms", AR_JREC_OPTIONAL, &out->first_seen_ms);
    if (rc == 0)
        rc = ar_jrec_get_time(root, "registered_ms", AR_JREC_OPTIONAL, &out->registered_ms);
    json_decref(root);
    if (rc < 0)
        memset(out, 0, sizeof(*out));
    return rc;
}
