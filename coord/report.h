/*
 * coord/report.h: the member records other agents read (DESIGN 4.3, 4.4):
 *   <prefix>alive/<node>    the report: this node's fingerprints (never key material, S5)
 *   <prefix>members/<node>  the registration
 *
 * Contract
 * - Build: exact bytes, compact JSON, members in this order (other agents and older versions
 *   read them):
 *     {"node":N,"version":V,"desired":{"fingerprint":F|null,"valid":B[,"since_ms":S]},
 *      "effective":{"fingerprint":F|null,"file_hash":H|null}[,"time_ms":T]}
 *     {"node":N,"version":V,"first_seen_ms":T1,"registered_ms":T2}
 * - Parse: a record is another agent's bytes: trust nothing. At most AR_REPORT_MAX_BYTES, one
 *   JSON object without duplicate keys; a member may be absent (older agents), but one that is
 *   present must have the right type and form (a fingerprint or hash is "sha256:" + 64
 *   lowercase hex digits; node a non-empty name without '/', at most AR_REPORT_NODE_MAX - 1
 *   bytes; version at most AR_REPORT_VERSION_MAX - 1 bytes; times integers >= 0), else the
 *   whole record is refused with -EBADMSG (and *out is zeroed). -EMSGSIZE when too long.
 *   since_ms (rotation agreement, DESIGN 4.1): since when (wall clock) this node has had its
 *   desired fingerprint; written only when known (> 0), so older readers and records work.
 * - Absent strings are "" in struct ar_report, absent times 0.
 */
#ifndef ATREST_COORD_REPORT_H
#define ATREST_COORD_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AR_REPORT_MAX_BYTES   4096
#define AR_REPORT_FP_LEN      72 /* "sha256:" + 64 hex + NUL */
#define AR_REPORT_NODE_MAX    254
#define AR_REPORT_VERSION_MAX 64
#define AR_REPORT_ERROR_MAX   256

struct ar_report {
    char node[AR_REPORT_NODE_MAX];
    char version[AR_REPORT_VERSION_MAX];
    char desired_fp[AR_REPORT_FP_LEN]; /* "" when the node has no valid desired config */
    bool desired_valid;
    char effective_fp[AR_REPORT_FP_LEN];   /* "" when none is in force */
    char effective_hash[AR_REPORT_FP_LEN]; /* sha256 of the effective file's bytes */
    int64_t time_ms;                       /* when it was sent (wall clock), 0: not given */
    int64_t desired_since_ms; /* since when desired_fp has been the desired config, 0: unknown */
    char error[AR_REPORT_ERROR_MAX]; /* why this member does not ack its rotation phase ("") */
};

struct ar_registration {
    char node[AR_REPORT_NODE_MAX];
    char version[AR_REPORT_VERSION_MAX];
    int64_t first_seen_ms;
    int64_t registered_ms;
};

/* The report's JSON text into *out (free()); with_time: add time_ms (the copy sent; without it
 * the text says whether anything but the time changed). 0, -EINVAL (a field that would not
 * parse back), -ENOMEM. */
int ar_report_build(const struct ar_report *r, bool with_time, char **out);
int ar_report_parse(const char *json, size_t len, struct ar_report *out);

int ar_registration_build(const struct ar_registration *r, char **out);
int ar_registration_parse(const char *json, size_t len, struct ar_registration *out);

/* "sha256:" + 64 lowercase hex digits. */
bool ar_report_fp_valid(const char *fp);
/* A node name: 1 to AR_REPORT_NODE_MAX - 1 bytes, no '/' (it is part of etcd keys). */
bool ar_report_node_valid(const char *n);
/* Both fingerprints present and equal (an absent one never matches). */
bool ar_report_fp_equal(const char *a, const char *b);
/* The member reports fp as its effective config (the ack of "this config is in force"). */
bool ar_report_effective_is(const struct ar_report *r, const char *fp);

#endif
