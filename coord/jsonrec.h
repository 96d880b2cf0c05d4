/*
 * coord/jsonrec.h: the strict JSON that coord/ keeps in etcd (records, acks, reports), read
 * and written one way by coord/record.c and coord/report.c.
 *
 * Contract
 * - ar_jrec_dump takes j (NULL allowed: -ENOMEM), writes compact JSON in member order into a
 *   malloc'd *out and frees j: 0 or -ENOMEM.
 * - ar_jrec_load parses exactly len bytes (no NUL needed): NULL json -EINVAL, more than max
 *   bytes -EMSGSIZE, not JSON / a duplicate member / not an object at the top -EBADMSG; on 0
 *   *root is an object the caller json_decref's, else *root is NULL.
 * - The getters copy a member into the caller's buffer. A string must be shorter than n and
 *   hold no NUL; an integer time must be >= 0; anything else is -EBADMSG. With
 *   AR_JREC_OPTIONAL an absent (or, for strings, null) member gives "" / 0 and 0; with
 *   AR_JREC_REQUIRED it is -EBADMSG.
 */
#ifndef ATREST_COORD_JSONREC_H
#define ATREST_COORD_JSONREC_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

enum ar_jrec_need { AR_JREC_REQUIRED, AR_JREC_OPTIONAL };

int ar_jrec_dump(json_t *j, char **out);
int ar_jrec_load(const char *json, size_t len, size_t max, json_t **root);
/* A string value (not a member): shorter than n, no NUL. */
int ar_jrec_str(const json_t *v, char *out, size_t n);
int ar_jrec_get_str(const json_t *o, const char *k, enum ar_jrec_need need, char *out, size_t n);
int ar_jrec_get_time(const json_t *o, const char *k, enum ar_jrec_need need, int64_t *out);

#endif
