/*
 * coord/member.h: membership under a prefix (default "/atrest/"):
 *   <prefix>members/<node>   persistent registration (JSON)
 *   <prefix>alive/<node>     liveness key bound to this agent's lease, carrying a small JSON report
 */
#ifndef ATREST_COORD_MEMBER_H
#define ATREST_COORD_MEMBER_H

#include <stdbool.h>
#include <stddef.h>

#include "coord/etcd/etcd.h"
#include "coord/session.h"

#define AR_DEFAULT_PREFIX "/atrest/"

/* Build "<prefix><kind>/<node>" into out; -ENAMETOOLONG/-EINVAL on bad input (node must be
 * non-empty and contain no '/'). prefix NULL means AR_DEFAULT_PREFIX. */
int ar_member_key(char *out, size_t outsz, const char *prefix, const char *kind, const char *node);

/* Put <prefix>members/<node> = json (persistent). */
int ar_member_register(struct ar_etcd *c, const char *prefix, const char *node, const char *json,
                       ar_etcd_cb cb, void *arg);

/*
 * Liveness: put <prefix>alive/<node> = report bound to a session's lease (coord/session.h), and
 * put it again on every new lease of the session (the key goes with a lost lease). A put that
 * etcd answers "lease not found" tells the session (ar_session_lost). ar_member_alive_update
 * replaces the report (written at once). cb (may be NULL) reports every write (status, err),
 * every lost lease and every failed grant.
 */
struct ar_member_alive;
/* On the agent's shared session (same client; it must outlive this): stop deletes the key. */
int ar_member_alive_start_on(struct ar_session *s, const char *prefix, const char *node,
                             const char *report_json, ar_etcd_cb cb, void *arg,
                             struct ar_member_alive **out);
/* On an own session of ttl_s seconds: stop revokes its lease. */
/* 0 and *out set, or -EINVAL (bad node) / -ENOMEM with *out NULL. */
int ar_member_alive_start(struct ar_etcd *c, const char *prefix, const char *node, int64_t ttl_s,
                          const char *report_json, ar_etcd_cb cb, void *arg,
                          struct ar_member_alive **out);
int ar_member_alive_update(struct ar_member_alive *a, const char *report_json);
bool ar_member_alive_ok(const struct ar_member_alive *a);
/* Delete the alive key (own session: revoke its lease) and free; done may be NULL. */
void ar_member_alive_stop(struct ar_member_alive *a, void (*done)(void *arg), void *arg);

/* One member as seen in etcd. */
struct ar_member_info {
    char *node;
    char *registration; /* JSON text, NULL if not registered */
    char *report;       /* JSON text of the alive key, NULL if not alive */
};
struct ar_member_list {
    struct ar_member_info *m;
    size_t n;
    int64_t revision;
};
typedef void (*ar_member_list_cb)(void *arg, int status, struct ar_member_list *list,
                                  const struct ar_etcd_error *err);
/* Lists registered and alive members at one revision (sorted by node). list belongs to the
 * callback: free with ar_member_list_free. */
int ar_member_list(struct ar_etcd *c, const char *prefix, ar_member_list_cb cb, void *arg);
void ar_member_list_free(struct ar_member_list *l);

#endif
