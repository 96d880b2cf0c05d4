/* agent/statusjson.c: the /status document, built from struct ar_state with jansson. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "agent/state.h"

/* RFC 3339 UTC with milliseconds, or JSON null for 0. */
static json_t *jtime(int64_t ms)
{
    char buf[40], tb[32];
    struct tm tm;
    time_t s;

    if (ms <= 0)
        return json_null();
    s = (time_t)(ms / 1000);
    gmtime_r(&s, &tm);
    strftime(tb, sizeof(tb), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, sizeof(buf), "%s.%03dZ", tb, (int)(ms % 1000));
    return json_string(buf);
}

static json_t *jstr(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *config_fp(const struct ar_config *c)
{
    char fp[AR_HASH_STRLEN];
    if (!c)
        return json_null();
    ar_config_fingerprint_str(c, fp);
    return json_string(fp);
}

static json_t *config_hash(const struct ar_config *c)
{
    char h[AR_HASH_STRLEN];
    if (!c)
        return json_null();
    ar_config_file_hash_str(c, h);
    return json_string(h);
}

/* {"provider": "aescbc", "name": "k1", "fp": "<16 hex>"} for one key; identity and KMS have no
 * key fingerprint. Never a secret. */
static json_t *key_obj(const struct ar_provider *p, size_t k)
{
    json_t *o = json_object();
    json_object_set_new(o, "provider", json_string(ar_ptype_name(p->type)));
    if (p->type == AR_P_KMS) {
        json_object_set_new(o, "name", jstr(p->kms.name));
        json_object_set_new(o, "kms_api_version", json_integer(p->kms.api_version));
    } else if (p->type != AR_P_IDENTITY && k < p->nkeys) {
        char hex[2 * sizeof(p->keys[k].fp) + 1];
        ar_hex(p->keys[k].fp, sizeof(p->keys[k].fp), hex);
        json_object_set_new(o, "name", jstr(p->keys[k].name));
        json_object_set_new(o, "fp", json_string(hex));
    }
    return o;
}

static json_t *resources_json(struct ar_chain_slot *slot)
{
    json_t *arr = json_array();
    struct ar_chain *ch = ar_chain_slot_acquire(slot);
    const struct ar_config *c;

    if (!ch)
        return arr;
    c = ar_chain_config(ch);
    for (size_t i = 0; c && i < c->nrules; i++) {
        const struct ar_rule *rule = &c->rules[i];
        for (size_t j = 0; j < rule->nresources; j++) {
            struct ar_plist pl;
            bool seen = false;
            /* one entry per resource name, at its first appearance */
            for (size_t i2 = 0; i2 <= i && !seen; i2++)
                for (size_t j2 = 0; j2 < c->rules[i2].nresources && !(i2 == i && j2 >= j); j2++)
                    if (!strcmp(c->rules[i2].resources[j2], rule->resources[j]))
                        seen = true;
            if (seen)
                continue;
            ar_chain_lookup(ch, rule->parsed[j].group, rule->parsed[j].resource, &pl);
            json_t *o = json_object();
            json_t *reads = json_array();
            json_object_set_new(o, "resource", json_string(rule->resources[j]));
            if (pl.n == 0) {
                json_t *id = json_object();
                json_object_set_new(id, "provider", json_string("identity"));
                json_object_set_new(o, "write", id);
            } else {
                const struct ar_provider *w = pl.v[0];
                json_object_set_new(o, "write", key_obj(w, 0));
            }
            for (size_t p = 0; p < pl.n; p++) {
                const struct ar_provider *pv = pl.v[p];
                if (pv->type == AR_P_IDENTITY || pv->type == AR_P_KMS || pv->nkeys == 0)
                    json_array_append_new(reads, key_obj(pv, 0));
                else
                    for (size_t k = 0; k < pv->nkeys; k++)
                        json_array_append_new(reads, key_obj(pv, k));
            }
            json_object_set_new(o, "read", reads);
            json_array_append_new(arr, o);
        }
    }
    ar_chain_unref(ch);
    return arr;
}

int ar_status_json(const struct ar_state *st, char **out, size_t *outlen)
{
    json_t *root = json_object(), *o;
    char *s;

    *out = NULL;
    if (!root)
        return -ENOMEM;
    json_object_set_new(root, "node", jstr(st->node));
    json_object_set_new(root, "version", jstr(st->version));
    json_object_set_new(root, "started", jtime(st->started_ms));
    json_object_set_new(root, "ready", json_boolean(ar_state_ready(st)));

    o = json_object();
    json_object_set_new(o, "path", jstr(st->desired_path));
    json_object_set_new(o, "valid", json_boolean(st->desired_valid));
    json_object_set_new(o, "fingerprint", config_fp(st->desired));
    json_object_set_new(o, "file_hash", config_hash(st->desired));
    json_object_set_new(o, "error", jstr(st->desired_error));
    json_object_set_new(o, "errors", json_integer((json_int_t)st->desired_nerrors));
    json_object_set_new(o, "read_at", jtime(st->desired_read_ms));
    json_object_set_new(o, "changed_at", jtime(st->desired_changed_ms));
    json_object_set_new(root, "desired", o);

    o = json_object();
    json_object_set_new(o, "path", jstr(st->effective_path));
    json_object_set_new(o, "fingerprint", config_fp(st->effective));
    json_object_set_new(o, "file_hash", config_hash(st->effective));
    json_object_set_new(o, "written_at", jtime(st->effective_written_ms));
    json_object_set_new(o, "writes", json_integer((json_int_t)st->effective_writes));
    json_object_set_new(root, "effective", o);

    json_object_set_new(root, "resources", resources_json((struct ar_chain_slot *)&st->chain));

    o = json_object();
    json_object_set_new(o, "time", jtime(st->last_reload_ms));
    json_object_set_new(o, "result", json_string(ar_reload_result_name(st->last_reload_result)));
    json_object_set_new(o, "error", jstr(st->last_reload_error));
    json_object_set_new(o, "ok_total", json_integer((json_int_t)st->reloads_ok));
    json_object_set_new(o, "failed_total", json_integer((json_int_t)st->reloads_failed));
    json_object_set_new(root, "last_reload", o);

    /* how desired configs reach the effective file without etcd (coord/node.h): "direct" (first
     * install) or "local" (the phases on this node; waiting_for: why it stopped before prune);
     * the proof of load is "none" there (never claimed) */
    o = json_object();
    json_object_set_new(o, "mode", jstr(st->node_mode));
    json_object_set_new(o, "step", json_string(ar_node_step_name(st->node_step)));
    json_object_set_new(o, "proof", json_string(ar_node_proof_name(st->node_proof)));
    json_object_set_new(o, "waiting_for", jstr(st->node_waiting));
    json_object_set_new(root, "apply", o);

    o = json_object();
    json_object_set_new(o, "state", json_string(ar_etcd_conn_name(st->etcd)));
    json_object_set_new(o, "error", jstr(st->etcd_error));
    json_object_set_new(o, "last_ok", jtime(st->etcd_last_ok_ms));
    json_object_set_new(root, "etcd", o);

    json_object_set_new(root, "leader", jstr(st->leader));
    json_object_set_new(root, "is_leader", json_boolean(ar_state_is_leader(st)));
    {
        json_t *rot = st->rotation_status ? st->rotation_status(st->rotation_arg) : NULL;
        json_object_set_new(root, "rotation", rot ? rot : json_null());
    }
    char dfp[AR_HASH_STRLEN] = "", efp[AR_HASH_STRLEN] = "";
    if (st->desired)
        ar_config_fingerprint_str(st->desired, dfp);
    if (st->effective)
        ar_config_fingerprint_str(st->effective, efp);
    json_t *mem = json_array();
    for (size_t i = 0; i < st->nmembers; i++) {
        const struct ar_state_member *m = &st->members[i];
        json_t *e = json_object();
        json_object_set_new(e, "node", jstr(m->node));
        json_object_set_new(e, "registered", json_boolean(m->registered));
        json_object_set_new(e, "alive", json_boolean(m->alive));
        json_object_set_new(e, "desired_fingerprint", jstr(m->desired_fp));
        json_object_set_new(e, "desired_valid",
                            m->alive ? json_boolean(m->desired_valid) : json_null());
        json_object_set_new(e, "effective_fingerprint", jstr(m->effective_fp));
        json_object_set_new(e, "effective_file_hash", jstr(m->effective_hash));
        /* agreement with this node's own fingerprints (null when either side has none) */
        json_object_set_new(e, "same_desired",
                            m->desired_fp && dfp[0] ? json_boolean(!strcmp(m->desired_fp, dfp))
                                                    : json_null());
        json_object_set_new(e, "same_effective",
                            m->effective_fp && efp[0] ? json_boolean(!strcmp(m->effective_fp, efp))
                                                      : json_null());
        json_object_set_new(e, "version", jstr(m->version));
        json_object_set_new(e, "reported_at", jtime(m->reported_ms));
        json_array_append_new(mem, e);
    }
    json_object_set_new(root, "members", mem);

    s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!s)
        return -ENOMEM;
    *outlen = strlen(s);
    /* newline terminated, for curl and humans */
    char *t = realloc(s, *outlen + 2);
    if (!t) {
        free(s);
        return -ENOMEM;
    }
    t[(*outlen)++] = '\n';
    t[*outlen] = '\0';
    *out = t;
    return 0;
}
