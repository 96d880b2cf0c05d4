/*
 * coord/etcd/etcd_sync.h: a blocking facade over coord/etcd/etcd.h for the CLI. It owns a private
 * uv_loop and runs it until the one operation completes, so every atrest subcommand reuses the
 * same client (failover, TLS, auth, timeouts) as the daemon.
 *
 * Results returned through *out belong to the caller (ar_etcd_result_free). On failure *out is
 * NULL and err (when given) holds the endpoint and etcd's message. Never call these from a
 * loop callback.
 */
#ifndef ATREST_COORD_ETCD_SYNC_H
#define ATREST_COORD_ETCD_SYNC_H

#include "coord/etcd/etcd.h"

struct ar_etcd_sync;

/* 0 and *out set, or a negative errno (as ar_etcd_new, or libuv's) with *out NULL. */
int ar_etcd_sync_new(const struct ar_etcd_settings *s, struct ar_etcd_sync **out);
/* Closes the client and the private loop (uv_loop_close returns 0 then). */
void ar_etcd_sync_free(struct ar_etcd_sync *s);
struct ar_etcd *ar_etcd_sync_client(struct ar_etcd_sync *s);

int ar_etcd_sync_range(struct ar_etcd_sync *s, const struct ar_etcd_op *op,
                       struct ar_etcd_result **out, struct ar_etcd_error *err);
int ar_etcd_sync_put(struct ar_etcd_sync *s, const struct ar_etcd_op *op,
                     struct ar_etcd_result **out, struct ar_etcd_error *err);
int ar_etcd_sync_delete(struct ar_etcd_sync *s, const struct ar_etcd_op *op,
                        struct ar_etcd_result **out, struct ar_etcd_error *err);
int ar_etcd_sync_txn(struct ar_etcd_sync *s, const struct ar_etcd_txn *t,
                     struct ar_etcd_result **out, struct ar_etcd_error *err);
int ar_etcd_sync_lease_grant(struct ar_etcd_sync *s, int64_t ttl_s, struct ar_etcd_result **out,
                             struct ar_etcd_error *err);
int ar_etcd_sync_lease_revoke(struct ar_etcd_sync *s, int64_t id, struct ar_etcd_error *err);
/* Calls cb for each page as ar_etcd_iterate does; returns the final status. */
int ar_etcd_sync_iterate(struct ar_etcd_sync *s, const struct ar_etcd_op *op, ar_etcd_page_cb cb,
                         void *arg, struct ar_etcd_error *err);
/* Run the private loop for up to ms milliseconds (for CLI commands that watch). */
void ar_etcd_sync_run_for(struct ar_etcd_sync *s, unsigned ms);

#endif
