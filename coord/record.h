/*
 * coord/record.h: the rotation's records in etcd (DESIGN 4.4), built and parsed here only:
 *   <prefix>rotation                    the rotation record (one at a time)
 *   <prefix>acks/<id>/<index>/<node>    a member's ack of phase <index> (-1: the abort)
 *   <prefix>abort/<id>                  an operator's abort request
 *   <prefix>history/<id>                a finished rotation (the last AR_RECORD_HISTORY kept)
 *
 * Contract
 * - Build: exact bytes, compact JSON, members in the order shown (other agents read them):
 *     {"id":I,"from":F,"to":T,"phases":[{"name":N,"hash":H},...],"index":i,
 *      "state":"running"|"aborting","members":[...],"started_ms":S,"phase_since_ms":P
 *      [,"abort_refused":"<one sentence>"]}
 *     {"node":N,"phase":P,"hash":H,"proof":K,"ok":B,"time_ms":T}
 *     {"id":I,"by":N,"time_ms":T}
 *     {"id":I,"from":F,"to":T,"result":"done"|"aborted","started_ms":S,"finished_ms":E,
 *      "phases":[names]}
 *   A struct that would not parse back is refused with -EINVAL (nothing built).
 * - Parse: the bytes are another agent's (or an operator's): trust nothing. At most
 *   AR_RECORD_MAX_BYTES; one JSON object without duplicate keys; every member above present
 *   (abort_refused optional) with its type and form: an id is "yyyymmddThhmmssZ-" + 8 + "-" + 8
 *   lowercase hex digits; fingerprints and hashes "sha256:" + 64 lowercase hex; phase names
 *   from coord/phase.h in their order, each at most once, 1..AR_RECORD_MAX_PHASES of them;
 *   index within the phases; node names non-empty, without '/', shorter than AR_REPORT_NODE_MAX,
 *   distinct, 1..AR_RECORD_MAX_MEMBERS; times integers >= 0; an ack's phase a phase name or
 *   "abort", its proof one of canary|metrics|restart|none|file. Members not named here are
 *   ignored (newer writers). Anything else: -EBADMSG and *out zeroed; -EMSGSIZE when too long.
 */
#ifndef ATREST_COORD_RECORD_H
#define ATREST_COORD_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord/report.h"

#define AR_RECORD_MAX_BYTES   16384
#define AR_RECORD_MAX_PHASES  5
#define AR_RECORD_MAX_MEMBERS 16
#define AR_RECORD_ID_LEN      35 /* "20261130T090347Z-0123abcd-4567cdef" + NUL */
#define AR_RECORD_NAME_MAX    12 /* "reencrypt" + NUL, "aborting" */
#define AR_RECORD_MSG_MAX     256
#define AR_RECORD_HISTORY     20 /* history/ entries kept */

enum ar_rot_state { AR_ROT_RUNNING = 0, AR_ROT_ABORTING };

struct ar_rec_phase {
    char name[AR_RECORD_NAME_MAX]; /* ar_phase_name() */
    char hash[AR_REPORT_FP_LEN];   /* file hash of the phase config */
};

struct ar_rotation_rec {
    char id[AR_RECORD_ID_LEN];
    char from[AR_REPORT_FP_LEN], to[AR_REPORT_FP_LEN];
    struct ar_rec_phase phases[AR_RECORD_MAX_PHASES];
    size_t nphases;
    int index; /* 0 .. nphases - 1 */
    enum ar_rot_state state;
    char members[AR_RECORD_MAX_MEMBERS][AR_REPORT_NODE_MAX];
    size_t nmembers;
    int64_t started_ms, phase_since_ms;
    char abort_refused[AR_RECORD_MSG_MAX]; /* "" when none */
};

struct ar_ack_rec {
    char node[AR_REPORT_NODE_MAX];
    char phase[AR_RECORD_NAME_MAX]; /* a phase name, or "abort" for index -1 */
    char hash[AR_REPORT_FP_LEN];    /* file hash of the config the member wrote */
    char proof[AR_RECORD_NAME_MAX]; /* canary|metrics|restart|none|file */
    bool ok;
    int64_t time_ms;
};

struct ar_abort_rec {
    char id[AR_RECORD_ID_LEN];
    char by[AR_REPORT_NODE_MAX]; /* who asked (a node or "operator") */
    int64_t time_ms;
};

struct ar_history_rec {
    char id[AR_RECORD_ID_LEN];
    char from[AR_REPORT_FP_LEN], to[AR_REPORT_FP_LEN];
    bool aborted; /* "result": "aborted", else "done" */
    int64_t started_ms, finished_ms;
    char phases[AR_RECORD_MAX_PHASES][AR_RECORD_NAME_MAX];
    size_t nphases;
};

/* The JSON text into *out (free()). 0, -EINVAL, -ENOMEM. */
int ar_rotation_rec_build(const struct ar_rotation_rec *r, char **out);
int ar_ack_rec_build(const struct ar_ack_rec *r, char **out);
int ar_abort_rec_build(const struct ar_abort_rec *r, char **out);
int ar_history_rec_build(const struct ar_history_rec *r, char **out);

int ar_rotation_rec_parse(const char *json, size_t len, struct ar_rotation_rec *out);
int ar_ack_rec_parse(const char *json, size_t len, struct ar_ack_rec *out);
int ar_abort_rec_parse(const char *json, size_t len, struct ar_abort_rec *out);
int ar_history_rec_parse(const char *json, size_t len, struct ar_history_rec *out);

/* The rotation id for a start at wall clock ms (UTC) between fingerprints from and to:
 * "yyyymmddThhmmssZ-<8 hex of from>-<8 hex of to>". 0 or -EINVAL. */
int ar_record_id(int64_t ms, const char *from, const char *to, char out[AR_RECORD_ID_LEN]);
bool ar_record_id_valid(const char *id);
/* Index of a phase name in coord/phase.h's order (0..4), or -1. */
int ar_record_phase_kind(const char *name);
/* A proof kind name of the ack. */
bool ar_record_proof_valid(const char *proof);

#endif
