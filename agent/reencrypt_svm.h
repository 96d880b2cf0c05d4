/*
 * agent/reencrypt_svm.h: the re-encrypt pass in StorageVersionMigration mode (reencrypt.mode:
 * svm, issue 9): the rotation's leader asks its LOCAL API server to migrate every resource of
 * the plan's rewrite list (storagemigration.k8s.io: v1beta1 from Kubernetes 1.35, v1alpha1 from
 * 1.30; the in-tree controller then rewrites every object of the resource through the API
 * server, so a KMS write key works too). It is coord/node.h's reencrypt op for mode svm.
 *
 * Contract
 * - GET /apis/storagemigration.k8s.io first: its preferredVersion is used; not served (404):
 *   the pass fails with -EOPNOTSUPP and says so. Wildcard selectors: -EOPNOTSUPP (use etcd).
 * - Per resource, in order: its object count (LIST limit=1: items + remainingItemCount; a
 *   group's version from GET /apis/<group>), then one StorageVersionMigration named
 *   "atrest-<rotation id, lowercase>-<resource>[.<group>]" with spec.resource {group, resource}
 *   (v1alpha1 also version). An existing one of that name (409: a previous leader's) is
 *   followed, not recreated. It is read every poll_ms until a condition is True: Succeeded ->
 *   the next resource; Failed (or gone: 404) -> deleted and created again, at most
 *   AR_RESVM_MAX_FAILS times, then the pass fails with -EIO and the condition's message.
 * - Progress (coord/reencrypt.h's struct): total = the objects counted; a resource's objects
 *   count as done and rewritten when its migration succeeded (the API server does not say which
 *   were stale); failed counts the Failed migrations (conditions) seen, as a figure of how often
 *   they were retried; after every poll. done EXACTLY ONCE, from a loop callback, unless
 *   ar_resvm_stop ran first. The pass frees itself after done (its API client on a later turn).
 *   The StorageVersionMigration objects are left in place (audit trail; a new rotation has a
 *   new id, hence new names).
 * - Any transport error or unexpected HTTP answer ends the pass with a negative errno (the
 *   rotation runs it again; existing migrations are followed).
 */
#ifndef ATREST_AGENT_REENCRYPT_SVM_H
#define ATREST_AGENT_REENCRYPT_SVM_H

#include <uv.h>

#include "agent/settings.h"
#include "coord/node.h"
#include "coord/reencrypt.h"

#define AR_RESVM_MAX_FAILS 5

struct ar_resvm;

/* poll_ms 0: 1000; timeout_ms (per request) 0: 30000. 0 and *out (done will be called), or
 * -EINVAL / -EOPNOTSUPP (a wildcard) / -ENOMEM with err, and no callback. */
int ar_resvm_start(uv_loop_t *loop, const struct ar_settings *s,
                   const struct ar_node_reenc_req *req, unsigned poll_ms, unsigned timeout_ms,
                   ar_reencrypt_progress_cb progress, ar_reencrypt_done_cb done, void *arg,
                   struct ar_resvm **out, char *err, size_t errlen);
/* No callback after it; memory goes on a later loop turn. Not after done. */
void ar_resvm_stop(struct ar_resvm *p);

#endif
