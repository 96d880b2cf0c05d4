/*
 * agent/cli_rotation.c: the operator's commands on the rotation (DESIGN 4.3, 4.4), each through
 * etcd transactions under the coordination prefix; etcd settings as `atrest verify` takes them
 * (--settings agent.yaml, or the flags; flags win):
 *   atrest member list [--json]     registered and alive members, their fingerprints
 *   atrest member remove NODE       delete members/NODE, refused while alive/NODE exists
 *   atrest rotation abort           put abort/<id> for the leader; refused at or after promote
 * Exit codes: 0 done, 1 refused (the reason on stderr), 2 usage, settings or etcd error.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <sodium.h>

#include "agent/cli_common.h"
#include "agent/cmd.h"
#include "agent/effective.h"
#include "agent/settings.h"
#include "coord/etcd/etcd_sync.h"
#include "coord/record.h"
#include "coord/report.h"

#define MAX_FLAGS 16
#define KEY_MAX   600

struct cli {
    const char *name; /* "member list", for messages */
    struct ar_settings set;
    bool have_set;
    struct ar_etcd_sync *sync;
    char *password;
    bool json;
    char **rest; /* positional arguments */
    int nrest;
};

static const char rotation_help[] =
    "usage: atrest member list [--json] [ETCD]\n"
    "       atrest member remove NODE [ETCD]\n"
    "       atrest rotation abort [ETCD]\n"
    "\n"
    "ETCD: --settings agent.yaml (the agent's etcd section and etcd.prefix) and/or\n"
    "  --etcd-servers URLS --etcd-cafile F --etcd-certfile F --etcd-keyfile F\n"
    "  --etcd-user U --etcd-password-file F --coord-prefix /atrest/\n"
    "\n"
    "member remove: for a member that is gone for good (refused while it is alive).\n"
    "rotation abort: before promote the leader withdraws the staged keys and every member\n"
    "writes the from config again; at or after promote it is refused: every API server already\n"
    "writes with the new key, and going back is a new rotation to the old config.\n"
    "Exit: 0 done, 1 refused, 2 usage, settings or etcd error.\n";

static void cli_free(struct cli *c)
{
    ar_etcd_sync_free(c->sync);
    if (c->have_set)
        ar_settings_free(&c->set);
    sodium_free(c->password);
}

/* Parse the common options, load the settings, connect. 0, or the exit code (2) / 0 for
 * --help (*help set). */
static int cli_open(struct cli *c, int argc, char **argv, bool *help)
{
    static const struct option lopts[] = {
        {"settings", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},
        {"etcd-servers", required_argument, NULL, 'e'},
        {"etcd-cafile", required_argument, NULL, 'e'},
        {"etcd-certfile", required_argument, NULL, 'e'},
        {"etcd-keyfile", required_argument, NULL, 'e'},
        {"etcd-user", required_argument, NULL, 'e'},
        {"etcd-password-file", required_argument, NULL, 'e'},
        {"coord-prefix", required_argument, NULL, 'e'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char *flags[MAX_FLAGS + 1];
    const char *file = NULL;
    struct ar_etcd_settings es;
    int n = 1, ch, li = 0, r, rc = 2;

    *help = false;
    flags[0] = argv[0];
    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", lopts, &li)) != -1) {
        if (ch == 's')
            file = optarg;
        else if (ch == 'j')
            c->json = true;
        else if (ch == 'e' && n <= MAX_FLAGS) {
            size_t len = strlen(lopts[li].name) + strlen(optarg) + 4;
            if (!(flags[n] = malloc(len)))
                goto out;
            snprintf(flags[n++], len, "--%s=%s", lopts[li].name, optarg);
        } else if (ch == 'h') {
            fputs(rotation_help, stdout);
            *help = true;
            rc = 0;
            goto out;
        } else {
            fputs(rotation_help, stderr);
            goto out;
        }
    }
    c->rest = argv + optind;
    c->nrest = argc - optind;
    if (ar_cli_settings(c->name, file, n, flags, &c->set) < 0)
        goto out;
    c->have_set = true;
    if (ar_cli_etcd(c->name, &c->set, 10, &es, &c->password) < 0)
        goto out;
    r = ar_etcd_sync_new(&es, &c->sync);
    if (r < 0) {
        fprintf(stderr, "atrest %s: cannot create the etcd client: %s\n", c->name, strerror(-r));
        goto out;
    }
    rc = 0;
out:
    for (int i = 1; i < n; i++)
        free(flags[i]);
    return rc;
}

static int etcd_fail(const struct cli *c, const char *what, int r, const struct ar_etcd_error *e)
{
    fprintf(stderr, "atrest %s: %s: %s\n", c->name, what, e && e->msg[0] ? e->msg : strerror(-r));
    return 2;
}

/* Everything under the prefix (small: records only). */
static int read_prefix(struct cli *c, struct ar_etcd_result **out)
{
    uint8_t end[KEY_MAX];
    struct ar_etcd_op op = {.type = AR_ETCD_RANGE,
                            .key = (const uint8_t *)c->set.coord_prefix,
                            .key_len = strlen(c->set.coord_prefix),
                            .range_end = end};
    struct ar_etcd_error e;
    int r;

    op.range_end_len = ar_etcd_prefix_end(op.key, op.key_len, end);
    r = ar_etcd_sync_range(c->sync, &op, out, &e);
    return r < 0 ? etcd_fail(c, "reading etcd", r, &e) : 0;
}

static const struct ar_etcd_kv *kv_at(const struct ar_etcd_result *res, const char *key)
{
    for (size_t i = 0; i < res->n_kvs; i++)
        if (res->kvs[i].key_len == strlen(key) && !memcmp(res->kvs[i].key, key, strlen(key)))
            return &res->kvs[i];
    return NULL;
}

/* ---- member list ------------------------------------------------------------------------------
 */

static int member_list(struct cli *c)
{
    struct ar_etcd_result *res = NULL;
    size_t pl = strlen(c->set.coord_prefix);
    json_t *arr = json_array();
    char key[KEY_MAX];
    struct ar_rotation_rec rot;
    const struct ar_etcd_kv *kv;
    bool have_rot = false;
    int rc = read_prefix(c, &res);

    if (rc)
        goto out;
    snprintf(key, sizeof(key), "%srotation", c->set.coord_prefix);
    kv = kv_at(res, key);
    have_rot = kv && ar_rotation_rec_parse((const char *)kv->value, kv->value_len, &rot) == 0;
    for (size_t i = 0; i < res->n_kvs; i++) {
        const struct ar_etcd_kv *m = &res->kvs[i];
        char node[AR_REPORT_NODE_MAX];
        struct ar_report rep;
        const struct ar_etcd_kv *alive;
        bool ok = false, in_rot = false;

        if (m->key_len <= pl + 8 || memcmp(m->key + pl, "members/", 8) ||
            m->key_len - pl - 8 >= sizeof(node))
            continue;
        memcpy(node, m->key + pl + 8, m->key_len - pl - 8);
        node[m->key_len - pl - 8] = '\0';
        snprintf(key, sizeof(key), "%salive/%s", c->set.coord_prefix, node);
        alive = kv_at(res, key);
        if (alive)
            ok = ar_report_parse((const char *)alive->value, alive->value_len, &rep) == 0;
        for (size_t k = 0; have_rot && k < rot.nmembers; k++)
            in_rot |= !strcmp(rot.members[k], node);
        json_array_append_new(
            arr,
            json_pack("{s:s, s:b, s:s?, s:s?, s:b}", "node", node, "alive", alive != NULL,
                      "desired", ok && rep.desired_fp[0] ? rep.desired_fp : NULL, "effective",
                      ok && rep.effective_fp[0] ? rep.effective_fp : NULL, "in_rotation", in_rot));
    }
    if (c->json) {
        char *s = json_dumps(arr, JSON_COMPACT);
        printf("%s\n", s ? s : "[]");
        free(s);
    } else {
        size_t i;
        json_t *e;

        printf("%-20s %-6s %-20s %-20s %s\n", "NODE", "ALIVE", "DESIRED", "EFFECTIVE",
               "IN ROTATION");
        json_array_foreach(arr, i, e)
        {
            const char *d = json_string_value(json_object_get(e, "desired"));
            const char *f = json_string_value(json_object_get(e, "effective"));
            printf("%-20s %-6s %-20.19s %-20.19s %s\n",
                   json_string_value(json_object_get(e, "node")),
                   json_is_true(json_object_get(e, "alive")) ? "yes" : "no", d ? d : "-",
                   f ? f : "-", json_is_true(json_object_get(e, "in_rotation")) ? "yes" : "no");
        }
    }
out:
    json_decref(arr);
    ar_etcd_result_free(res);
    return rc;
}

/* ---- member remove ----------------------------------------------------------------------------
 */

static int member_remove(struct cli *c, const char *node)
{
    char mkey[KEY_MAX], akey[KEY_MAX];
    struct ar_etcd_compare cmp[2] = {
        {.target = AR_ETCD_CMP_CREATE, .result = AR_ETCD_EQUAL, .number = 0},    /* not alive */
        {.target = AR_ETCD_CMP_CREATE, .result = AR_ETCD_GREATER, .number = 0}}; /* registered */
    struct ar_etcd_op del = {.type = AR_ETCD_DELETE};
    struct ar_etcd_op why[2] = {{.type = AR_ETCD_RANGE}, {.type = AR_ETCD_RANGE}};
    struct ar_etcd_txn t = {.compare = cmp,
                            .n_compare = 2,
                            .success = &del,
                            .n_success = 1,
                            .failure = why,
                            .n_failure = 2};
    struct ar_etcd_result *res = NULL;
    struct ar_etcd_error e;
    int r;

    if (!node[0] || strchr(node, '/') || strlen(node) >= AR_REPORT_NODE_MAX) {
        fprintf(stderr, "atrest member remove: \"%s\" is not a node name\n", node);
        return 2;
    }
    snprintf(mkey, sizeof(mkey), "%smembers/%s", c->set.coord_prefix, node);
    snprintf(akey, sizeof(akey), "%salive/%s", c->set.coord_prefix, node);
    cmp[0].key = why[0].key = (const uint8_t *)akey;
    cmp[0].key_len = why[0].key_len = strlen(akey);
    cmp[1].key = why[1].key = del.key = (const uint8_t *)mkey;
    cmp[1].key_len = why[1].key_len = del.key_len = strlen(mkey);
    r = ar_etcd_sync_txn(c->sync, &t, &res, &e);
    if (r < 0)
        return etcd_fail(c, "removing the member", r, &e);
    if (res->succeeded) {
        printf("member %s removed: a rotation no longer waits for it\n", node);
        r = 0;
    } else if (res->n_ops >= 2 && res->ops[0].n_kvs) {
        fprintf(stderr,
                "atrest member remove: refused: %s is alive (its agent holds %s); stop it first, "
                "or wait for its lease to expire\n",
                node, akey);
        r = 1;
    } else {
        fprintf(stderr, "atrest member remove: %s is not registered (no %s)\n", node, mkey);
        r = 1;
    }
    ar_etcd_result_free(res);
    return r;
}

/* ---- rotation abort ---------------------------------------------------------------------------
 */

static int rotation_abort(struct cli *c)
{
    char rkey[KEY_MAX], akey[KEY_MAX], *json = NULL;
    struct ar_etcd_result *res = NULL, *tr = NULL;
    const struct ar_etcd_kv *kv;
    struct ar_rotation_rec rot;
    struct ar_abort_rec ab = {.by = "operator"};
    struct ar_etcd_compare cmp = {.target = AR_ETCD_CMP_MOD, .result = AR_ETCD_EQUAL};
    struct ar_etcd_op put = {.type = AR_ETCD_PUT};
    struct ar_etcd_txn t = {.compare = &cmp, .n_compare = 1, .success = &put, .n_success = 1};
    struct ar_etcd_error e;
    struct timespec ts;
    int rc = read_prefix(c, &res);

    if (rc)
        return rc;
    snprintf(rkey, sizeof(rkey), "%srotation", c->set.coord_prefix);
    kv = kv_at(res, rkey);
    if (!kv) {
        fprintf(stderr, "atrest rotation abort: no rotation runs\n");
        rc = 1;
        goto out;
    }
    if (ar_rotation_rec_parse((const char *)kv->value, kv->value_len, &rot) < 0) {
        fprintf(stderr, "atrest rotation abort: the rotation record in etcd is not valid\n");
        rc = 2;
        goto out;
    }
    if (rot.state == AR_ROT_ABORTING) {
        printf("rotation %s is already being aborted\n", rot.id);
        goto out;
    }
    if (ar_record_phase_kind(rot.phases[rot.index].name) != 0 /* stage */) {
        fprintf(stderr,
                "atrest rotation abort: refused: rotation %s is in phase %s, at or after promote: "
                "every API server already writes with the new key, so the old config can no "
                "longer read everything; going back is a new rotation to the old config (push it "
                "as the desired config once this one is done)\n",
                rot.id, rot.phases[rot.index].name);
        rc = 1;
        goto out;
    }
    clock_gettime(CLOCK_REALTIME, &ts);
    memcpy(ab.id, rot.id, sizeof(ab.id));
    ab.time_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    snprintf(akey, sizeof(akey), "%sabort/%s", c->set.coord_prefix, rot.id);
    if (ar_abort_rec_build(&ab, &json) < 0) {
        rc = 2;
        goto out;
    }
    cmp.key = (const uint8_t *)rkey;
    cmp.key_len = strlen(rkey);
    cmp.number = kv->mod_revision; /* the rotation as read: still in stage */
    put.key = (const uint8_t *)akey;
    put.key_len = strlen(akey);
    put.value = (const uint8_t *)json;
    put.value_len = strlen(json);
    rc = ar_etcd_sync_txn(c->sync, &t, &tr, &e);
    if (rc < 0) {
        rc = etcd_fail(c, "writing the abort request", rc, &e);
        goto out;
    }
    if (!tr->succeeded) {
        fprintf(stderr, "atrest rotation abort: the rotation moved on meanwhile; run the command "
                        "again to see where it is\n");
        rc = 1;
        goto out;
    }
    printf("abort of rotation %s requested (phase stage): the leader withdraws the staged keys "
           "and every member writes the from config again (see atrest status)\n",
           rot.id);
    rc = 0;
out:
    free(json);
    ar_etcd_result_free(tr);
    ar_etcd_result_free(res);
    return rc;
}

/* ---- entries ----------------------------------------------------------------------------------
 */

int ar_cmd_member(int argc, char **argv)
{
    struct cli c = {.name = "member"};
    bool help;
    int rc;

    if (argc < 2 || (strcmp(argv[1], "list") && strcmp(argv[1], "remove"))) {
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
            fputs(rotation_help, stdout);
            return 0;
        }
        fputs(rotation_help, stderr);
        return 2;
    }
    c.name = !strcmp(argv[1], "list") ? "member list" : "member remove";
    rc = cli_open(&c, argc - 1, argv + 1, &help);
    if (rc || help)
        goto out;
    if (!strcmp(argv[1], "list"))
        rc = c.nrest ? (fputs(rotation_help, stderr), 2) : member_list(&c);
    else if (c.nrest != 1) {
        fprintf(stderr, "atrest member remove: give one NODE\n");
        rc = 2;
    } else
        rc = member_remove(&c, c.rest[0]);
out:
    cli_free(&c);
    return rc;
}

int ar_cmd_rotation(int argc, char **argv)
{
    struct cli c = {.name = "rotation abort"};
    bool help;
    int rc;

    if (argc < 2 || strcmp(argv[1], "abort")) {
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
            fputs(rotation_help, stdout);
            return 0;
        }
        fputs(rotation_help, stderr);
        return 2;
    }
    rc = cli_open(&c, argc - 1, argv + 1, &help);
    if (rc || help)
        goto out;
    rc = c.nrest ? (fputs(rotation_help, stderr), 2) : rotation_abort(&c);
out:
    cli_free(&c);
    return rc;
}
