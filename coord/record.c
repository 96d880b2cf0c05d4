/* coord/record.c: the rotation, ack, abort and history records (see record.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "coord/jsonrec.h"
#include "coord/record.h"

static const char *const phase_names[] = {"stage", "promote", "reencrypt", "verify", "prune"};
static const char *const proofs[] = {"canary", "metrics", "restart", "none", "file"};

int ar_record_phase_kind(const char *name)
{
    for (int i = 0; name && i < 5; i++)
        if (!strcmp(name, phase_names[i]))
            return i;
    return -1;
}

bool ar_record_proof_valid(const char *proof)
{
    for (size_t i = 0; proof && i < sizeof(proofs) / sizeof(proofs[0]); i++)
        if (!strcmp(proof, proofs[i]))
            return true;
    return false;
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

bool ar_record_id_valid(const char *id)
{
    /* yyyymmddThhmmssZ-xxxxxxxx-xxxxxxxx */
    if (!id || strlen(id) != AR_RECORD_ID_LEN - 1)
        return false;
    for (int i = 0; i < 34; i++) {
        char c = id[i];
        bool ok;
        if (i == 8)
            ok = c == 'T';
        else if (i == 15)
            ok = c == 'Z';
        else if (i == 16 || i == 25)
            ok = c == '-';
        else if (i < 15)
            ok = is_digit(c);
        else
            ok = is_hex(c);
        if (!ok)
            return false;
    }
    return true;
}

int ar_record_id(int64_t ms, const char *from, const char *to, char out[AR_RECORD_ID_LEN])
{
    time_t t;
    struct tm tm;

    if (!out || ms < 0 || !ar_report_fp_valid(from) || !ar_report_fp_valid(to))
        return -EINVAL;
    t = (time_t)(ms / 1000);
    if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 > 9999)
        return -EINVAL;
    if (strftime(out, AR_RECORD_ID_LEN, "%Y%m%dT%H%M%SZ-", &tm) != 17)
        return -EINVAL;
    memcpy(out + 17, from + 7, 8);
    out[25] = '-';
    memcpy(out + 26, to + 7, 8);
    out[34] = '\0';
    return 0;
}

/* --- build ----------------------------------------------------------------------------------- */

static bool rotation_ok(const struct ar_rotation_rec *r)
{
    if (!ar_record_id_valid(r->id) || !ar_report_fp_valid(r->from) || !ar_report_fp_valid(r->to) ||
        r->nphases < 1 || r->nphases > AR_RECORD_MAX_PHASES || r->index < 0 ||
        (size_t)r->index >= r->nphases || r->nmembers < 1 || r->nmembers > AR_RECORD_MAX_MEMBERS ||
        r->started_ms < 0 || r->phase_since_ms < 0 ||
        (r->state != AR_ROT_RUNNING && r->state != AR_ROT_ABORTING) ||
        strnlen(r->abort_refused, AR_RECORD_MSG_MAX) >= AR_RECORD_MSG_MAX)
        return false;
    for (size_t i = 0; i < r->nphases; i++) {
        int k = ar_record_phase_kind(r->phases[i].name);
        if (k < 0 || !ar_report_fp_valid(r->phases[i].hash) ||
            (i > 0 && k <= ar_record_phase_kind(r->phases[i - 1].name)))
            return false;
    }
    for (size_t i = 0; i < r->nmembers; i++) {
        if (!ar_report_node_valid(r->members[i]))
            return false;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(r->members[i], r->members[j]))
                return false;
    }
    return true;
}

int ar_rotation_rec_build(const struct ar_rotation_rec *r, char **out)
{
    json_t *j, *ph, *m;

    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!r || !rotation_ok(r))
        return -EINVAL;
    ph = json_array();
    m = json_array();
    for (size_t i = 0; ph && i < r->nphases; i++)
        json_array_append_new(
            ph, json_pack("{s:s, s:s}", "name", r->phases[i].name, "hash", r->phases[i].hash));
    for (size_t i = 0; m && i < r->nmembers; i++)
        json_array_append_new(m, json_string(r->members[i]));
    if (!ph || !m || json_array_size(ph) != r->nphases || json_array_size(m) != r->nmembers) {
        json_decref(ph);
        json_decref(m);
        return -ENOMEM;
    }
    j = json_pack("{s:s, s:s, s:s, s:o, s:i, s:s, s:o, s:I, s:I}", "id", r->id, "from", r->from,
                  "to", r->to, "phases", ph, "index", r->index, "state",
                  r->state == AR_ROT_ABORTING ? "aborting" : "running", "members", m, "started_ms",
                  (json_int_t)r->started_ms, "phase_since_ms", (json_int_t)r->phase_since_ms);
    if (j && r->abort_refused[0] &&
        json_object_set_new(j, "abort_refused", json_string(r->abort_refused)) < 0) {
        json_decref(j);
        return -ENOMEM;
    }
    return ar_jrec_dump(j, out);
}

int ar_ack_rec_build(const struct ar_ack_rec *r, char **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!r || !ar_report_node_valid(r->node) ||
        (ar_record_phase_kind(r->phase) < 0 && strcmp(r->phase, "abort")) ||
        !ar_report_fp_valid(r->hash) || !ar_record_proof_valid(r->proof) || r->time_ms < 0)
        return -EINVAL;
    return ar_jrec_dump(json_pack("{s:s, s:s, s:s, s:s, s:b, s:I}", "node", r->node, "phase",
                                  r->phase, "hash", r->hash, "proof", r->proof, "ok", (int)r->ok,
                                  "time_ms", (json_int_t)r->time_ms),
                        out);
}

int ar_abort_rec_build(const struct ar_abort_rec *r, char **out)
{
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!r || !ar_record_id_valid(r->id) || !ar_report_node_valid(r->by) || r->time_ms < 0)
        return -EINVAL;
    return ar_jrec_dump(
        json_pack("{s:s, s:s, s:I}", "id", r->id, "by", r->by, "time_ms", (json_int_t)r->time_ms),
        out);
}

int ar_history_rec_build(const struct ar_history_rec *r, char **out)
{
    json_t *ph;

    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!r || !ar_record_id_valid(r->id) || !ar_report_fp_valid(r->from) ||
        !ar_report_fp_valid(r->to) || r->started_ms < 0 || r->finished_ms < 0 ||
        r->nphases > AR_RECORD_MAX_PHASES)
        return -EINVAL;
    for (size_t i = 0; i < r->nphases; i++)
        if (ar_record_phase_kind(r->phases[i]) < 0 ||
            (i > 0 && ar_record_phase_kind(r->phases[i]) <= ar_record_phase_kind(r->phases[i - 1])))
            return -EINVAL;
    ph = json_array();
    for (size_t i = 0; ph && i < r->nphases; i++)
        json_array_append_new(ph, json_string(r->phases[i]));
    if (!ph || json_array_size(ph) != r->nphases) {
        json_decref(ph);
        return -ENOMEM;
    }
    return ar_jrec_dump(json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:o}", "id", r->id, "from",
                                  r->from, "to", r->to, "result", r->aborted ? "aborted" : "done",
                                  "started_ms", (json_int_t)r->started_ms, "finished_ms",
                                  (json_int_t)r->finished_ms, "phases", ph),
                        out);
}

/* --- parse ----------------------------------------------------------------------------------- */

static int get_fp(const json_t *o, const char *k, char *out)
{
    int rc = ar_jrec_get_str(o, k, AR_JREC_REQUIRED, out, AR_REPORT_FP_LEN);

    return rc == 0 && !ar_report_fp_valid(out) ? -EBADMSG : rc;
}

static int get_id(const json_t *o, char *out)
{
    int rc = ar_jrec_get_str(o, "id", AR_JREC_REQUIRED, out, AR_RECORD_ID_LEN);

    return rc == 0 && !ar_record_id_valid(out) ? -EBADMSG : rc;
}

static int get_node(const json_t *o, const char *k, char *out)
{
    int rc = ar_jrec_get_str(o, k, AR_JREC_REQUIRED, out, AR_REPORT_NODE_MAX);

    return rc == 0 && !ar_report_node_valid(out) ? -EBADMSG : rc;
}

/* A phase name, each one after the one before (so at most once each). */
static int phase_name(const json_t *v, char *out, int *last)
{
    int k, rc = ar_jrec_str(v, out, AR_RECORD_NAME_MAX);

    if (rc < 0)
        return rc;
    k = ar_record_phase_kind(out);
    if (k < 0 || k <= *last)
        return -EBADMSG;
    *last = k;
    return 0;
}

static int rotation_phases(const json_t *a, struct ar_rotation_rec *out)
{
    size_t i;
    const json_t *v;
    int last = -1, rc = 0;

    if (!json_is_array(a) || json_array_size(a) < 1 || json_array_size(a) > AR_RECORD_MAX_PHASES)
        return -EBADMSG;
    json_array_foreach(a, i, v)
    {
        if (!json_is_object(v))
            return -EBADMSG;
        rc = phase_name(json_object_get(v, "name"), out->phases[i].name, &last);
        if (rc == 0)
            rc = get_fp(v, "hash", out->phases[i].hash);
        if (rc < 0)
            return rc;
        out->nphases = i + 1;
    }
    return 0;
}

static int rotation_members(const json_t *a, struct ar_rotation_rec *out)
{
    size_t i;
    const json_t *v;

    if (!json_is_array(a) || json_array_size(a) < 1 || json_array_size(a) > AR_RECORD_MAX_MEMBERS)
        return -EBADMSG;
    json_array_foreach(a, i, v)
    {
        if (ar_jrec_str(v, out->members[i], AR_REPORT_NODE_MAX) < 0 ||
            !ar_report_node_valid(out->members[i]))
            return -EBADMSG;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(out->members[i], out->members[j]))
                return -EBADMSG;
        out->nmembers = i + 1;
    }
    return 0;
}

int ar_rotation_rec_parse(const char *json, size_t len, struct ar_rotation_rec *out)
{
    json_t *root;
    const json_t *idx, *refused;
    char state[AR_RECORD_NAME_MAX];
    int rc;

    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    rc = ar_jrec_load(json, len, AR_RECORD_MAX_BYTES, &root);
    if (rc < 0)
        return rc;
    rc = get_id(root, out->id);
    if (rc == 0)
        rc = get_fp(root, "from", out->from);
    if (rc == 0)
        rc = get_fp(root, "to", out->to);
    if (rc == 0)
        rc = rotation_phases(json_object_get(root, "phases"), out);
    idx = json_object_get(root, "index");
    if (rc == 0 && (!json_is_integer(idx) || json_integer_value(idx) < 0 ||
                    json_integer_value(idx) >= (json_int_t)out->nphases))
        rc = -EBADMSG;
    if (rc == 0)
        out->index = (int)json_integer_value(idx);
    if (rc == 0)
        rc = ar_jrec_get_str(root, "state", AR_JREC_REQUIRED, state, sizeof(state));
    if (rc == 0 && !strcmp(state, "aborting"))
        out->state = AR_ROT_ABORTING;
    else if (rc == 0 && strcmp(state, "running"))
        rc = -EBADMSG;
    if (rc == 0)
        rc = rotation_members(json_object_get(root, "members"), out);
    if (rc == 0)
        rc = ar_jrec_get_time(root, "started_ms", AR_JREC_REQUIRED, &out->started_ms);
    if (rc == 0)
        rc = ar_jrec_get_time(root, "phase_since_ms", AR_JREC_REQUIRED, &out->phase_since_ms);
    refused = json_object_get(root, "abort_refused");
    if (rc == 0 && refused)
        rc = ar_jrec_str(refused, out->abort_refused, sizeof(out->abort_refused));
    json_decref(root);
    if (rc < 0)
        memset(out, 0, sizeof(*out));
    return rc;
}

int ar_ack_rec_parse(const char *json, size_t len, struct ar_ack_rec *out)
{
    json_t *root;
    const json_t *ok;
    int rc;

    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    rc = ar_jrec_load(json, len, AR_RECORD_MAX_BYTES, &root);
    if (rc < 0)
        return rc;
    rc = get_node(root, "node", out->node);
    if (rc == 0)
        rc = ar_jrec_get_str(root, "phase", AR_JREC_REQUIRED, out->phase, sizeof(out->phase));
    if (rc == 0 && ar_record_phase_kind(out->phase) < 0 && strcmp(out->phase, "abort"))
        rc = -EBADMSG;
    if (rc == 0)
        rc = get_fp(root, "hash", out->hash);
    if (rc == 0)
        rc = ar_jrec_get_str(root, "proof", AR_JREC_REQUIRED, out->proof, sizeof(out->proof));
    if (rc == 0 && !ar_record_proof_valid(out->proof))
        rc = -EBADMSG;
    ok = json_object_get(root, "ok");
    if (rc == 0 && !json_is_boolean(ok))
        rc = -EBADMSG;
    if (rc == 0)
        out->ok = json_is_true(ok);
    if (rc == 0)
        rc = ar_jrec_get_time(root, "time_ms", AR_JREC_REQUIRED, &out->time_ms);
    json_decref(root);
    if (rc < 0)
        memset(out, 0, sizeof(*out));
    return rc;
}

int ar_abort_rec_parse(const char *json, size_t len, struct ar_abort_rec *out)
{
    json_t *root;
    int rc;

    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    rc = ar_jrec_load(json, len, AR_RECORD_MAX_BYTES, &root);
    if (rc < 0)
        return rc;
    rc = get_id(root, out->id);
    if (rc == 0)
        rc = get_node(root, "by", out->by);
    if (rc == 0)
        rc = ar_jrec_get_time(root, "time_ms", AR_JREC_REQUIRED, &out->time_ms);
    json_decref(root);
    if (rc < 0)
        memset(out, 0, sizeof(*out));
    return rc;
}

int ar_history_rec_parse(const char *json, size_t len, struct ar_history_rec *out)
{
    json_t *root;
    const json_t *ph, *v;
    char result[AR_RECORD_NAME_MAX];
    size_t i;
    int last = -1, rc;

    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    rc = ar_jrec_load(json, len, AR_RECORD_MAX_BYTES, &root);
    if (rc < 0)
        return rc;
    rc = get_id(root, out->id);
    if (rc == 0)
        rc = get_fp(root, "from", out->from);
    if (rc == 0)
        rc = get_fp(root, "to", out->to);
    if (rc == 0)
        rc = ar_jrec_get_str(root, "result", AR_JREC_REQUIRED, result, sizeof(result));
    if (rc == 0 && !strcmp(result, "aborted"))
        out->aborted = true;
    else if (rc == 0 && strcmp(result, "done"))
        rc = -EBADMSG;
    if (rc == 0)
        rc = ar_jrec_get_time(root, "started_ms", AR_JREC_REQUIRED, &out->started_ms);
    if (rc == 0)
        rc = ar_jrec_get_time(root, "finished_ms", AR_JREC_REQUIRED, &out->finished_ms);
    ph = json_object_get(root, "phases");
    if (rc == 0 && (!json_is_array(ph) || json_array_size(ph) > AR_RECORD_MAX_PHASES))
        rc = -EBADMSG;
    if (rc == 0)
        json_array_foreach(ph, i, v)
        {
            rc = phase_name(v, out->phases[i], &last);
            if (rc < 0)
                break;
            out->nphases = i + 1;
        }
    json_decref(root);
    if (rc < 0)
        memset(out, 0, sizeof(*out));
    return rc;
}
