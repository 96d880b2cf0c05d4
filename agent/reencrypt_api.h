/*
 * agent/reencrypt_api.h: the re-encrypt pass in API mode (reencrypt.mode: api, issue 9): the
 * rotation's leader rewrites every object of the plan's rewrite list through its LOCAL API
 * server instead of writing etcd, so the API server encrypts with whatever its write provider
 * is (a KMS plugin too). It is coord/node.h's reencrypt op for mode api.
 *
 * Contract
 * - Selectors: a concrete one ("secrets", "deployments.apps"); a core resource is listed under
 *   /api/v1, a group's under /apis/<group>/<preferredVersion> (GET /apis/<group> first).
 *   Wildcard selectors ("*.", "*.apps", "*.*") cannot be listed this way: the pass fails with
 *   -EOPNOTSUPP and says so (use mode etcd for them).
 * - Total: one LIST with limit=1 per resource at the start (items + remainingItemCount).
 * - Per resource: LIST with limit = page_size and continue, one page at a time (the next page is
 *   read once every object of the current one was sent); for every object the no-op update:
 *   PUT of the object exactly as listed, with its resourceVersion (kube-apiserver writes it only
 *   when the read was stale, i.e. not under the write key). The answer's resourceVersion tells:
 *   changed = rewritten, unchanged = skipped (already under the write key). 409 Conflict =
 *   conflicts (someone wrote it meanwhile, so with the write key); 404 Not Found = skipped
 *   (gone). 429 and 503 wait the Status's details.retryAfterSeconds (kube-apiserver sends it
 *   with Retry-After; 1 s when absent) before any new request, then the object is sent again
 *   (at most AR_REAPI_MAX_RETRIES times, then failed). Any other HTTP answer: failed (left as
 *   it is; first_failed = "<resource> <ns>/<name>: HTTP <code>: <Status message>"). A
 *   transport error, a LIST that fails, or a continue token that expired (410) ends the pass
 *   with a negative errno (the rotation runs it again from the beginning: the no-op update is
 *   idempotent).
 * - At most max_inflight updates in flight; rate_limit > 0 caps updates started per second.
 * - No checkpoint: a pass that ends early (leader change, error, restart) starts again from the
 *   beginning; objects already rewritten then count as skipped.
 * - Progress (coord/reencrypt.h's struct) after every page and at the end; done EXACTLY ONCE,
 *   always from a loop callback (never inside ar_reapi_start), unless ar_reapi_stop ran first.
 *   The pass frees itself after done returns (its API client is freed from a later loop turn).
 * - Object bodies pass through the API client (wiped) and jansson (not wiped: a Secret's data
 *   is in jansson's heap until the page is freed), as in any API client.
 */
#ifndef ATREST_AGENT_REENCRYPT_API_H
#define ATREST_AGENT_REENCRYPT_API_H

#include <uv.h>

#include "agent/settings.h"
#include "coord/node.h"
#include "coord/reencrypt.h"

#define AR_REAPI_MAX_RETRIES 100

struct ar_reapi_opts {
    unsigned page_size;    /* 0: 1000 (as the etcd engine) */
    unsigned max_inflight; /* 0: 8 (as the etcd engine's txns) */
    unsigned timeout_ms;   /* per request; 0: 30000 */
};

struct ar_reapi;

/* The API client comes from s (apiserver.url + files, or kubeconfig). 0 and *out (done will be
 * called), or -EINVAL (no selector, bad settings: err says why), -ENOMEM; then no callback. */
int ar_reapi_start(uv_loop_t *loop, const struct ar_settings *s,
                   const struct ar_node_reenc_req *req, const struct ar_reapi_opts *o,
                   ar_reencrypt_progress_cb progress, ar_reencrypt_done_cb done, void *arg,
                   struct ar_reapi **out, char *err, size_t errlen);
/* No callback after it; nothing new is sent; memory goes on a later loop turn. Not after done. */
void ar_reapi_stop(struct ar_reapi *p);

#endif
