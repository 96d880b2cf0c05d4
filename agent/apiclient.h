/*
 * agent/apiclient.h: a small client for the local kube-apiserver, on the agent's libuv loop
 * (libcurl multi driven by uv_poll/uv_timer), and the kubeconfig subset it reads.
 *
 * Contract
 * - Credentials, as the settings name them: apiserver.url with cafile, certfile/keyfile (a client
 *   certificate) and/or tokenFile (a bearer token), or a kubeconfig. The token and any client
 *   key given inline in a kubeconfig live only in sodium_malloc'd memory (wiped when freed);
 *   they never appear in an error text or a log line.
 * - TLS: the peer is always verified (CA file or inline CA data, else the system store); a CA
 *   that does not sign the server fails the request with -EACCES and libcurl's text.
 * - Requests: one at a time or many; every request has its own timeout (whole transfer) and a
 *   response body cap (AR_API_MAX_BODY, larger: -EMSGSIZE). The callback is called EXACTLY ONCE
 *   for a request that was started (0 = an HTTP answer arrived, whatever its status), unless the
 *   request is cancelled (ar_api_cancel) or the client freed first: then never. Request and
 *   response bodies are wiped when freed (they may hold a canary's data).
 * - Statuses: 0, -ETIMEDOUT, -ECONNREFUSED (cannot connect), -EACCES (TLS verification or
 *   client-certificate failure), -EMSGSIZE, -ENOMEM, -EIO (any other transport error); err says
 *   which in one line.
 * - A request handle is invalid once its callback runs (do not cancel it from there). Never
 *   free the client from inside one of its callbacks.
 * - ar_api_free: cancels what is pending and closes the handles; run the loop afterwards until
 *   the close callbacks fired.
 *
 * kubeconfig (the subset a control-plane node's admin/agent kubeconfig uses): current-context ->
 * contexts[].context.{cluster,user} -> clusters[].cluster.{server, certificate-authority,
 * certificate-authority-data} and users[].user.{token, tokenFile, client-certificate,
 * client-certificate-data, client-key, client-key-data}. Relative file names are relative to the
 * kubeconfig's directory. Anything else a selected entry needs (exec, auth-provider,
 * username/password, insecure-skip-tls-verify, proxy-url, ...) is refused as FILE:LINE: what.
 */
#ifndef ATREST_AGENT_APICLIENT_H
#define ATREST_AGENT_APICLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "agent/settings.h"

#define AR_API_MAX_BODY (8u << 20)

struct ar_kubeconfig {
    char *server;
    char *ca_file; /* or ca_data (PEM bytes) */
    uint8_t *ca_data;
    size_t ca_len;
    char *cert_file; /* or cert_data */
    uint8_t *cert_data;
    size_t cert_len;
    char *key_file; /* or key_data (sodium_malloc'd) */
    uint8_t *key_data;
    size_t key_len;
    char *token; /* sodium_malloc'd, NUL-terminated, or NULL */
    char *token_file;
};

/* Parse a kubeconfig held in buf (name: for errors; dir: the directory relative paths are
 * resolved against, NULL: as given). 0 and *out, or -EINVAL with err = "NAME:LINE: what",
 * -ENOMEM. */
int ar_kubeconfig_parse(const char *name, const char *dir, const char *buf, size_t len,
                        struct ar_kubeconfig **out, char *err, size_t errlen);
/* Read and parse a file (at most 1 MiB, read into locked memory). */
int ar_kubeconfig_load(const char *path, struct ar_kubeconfig **out, char *err, size_t errlen);
void ar_kubeconfig_free(struct ar_kubeconfig *k);

struct ar_api;
struct ar_api_req;

/* status: see above; http: the HTTP status (0 without an answer); body (NUL-terminated, valid
 * during the callback only); err: one line when status < 0. */
typedef void (*ar_api_cb)(void *arg, int status, long http, const char *body, size_t len,
                          const char *err);

/* From the settings (api_url + files, or kubeconfig). Reads the token file / kubeconfig now.
 * 0 and *out, or -EINVAL (no URL, unreadable or invalid files: err says which), -ENOMEM. */
int ar_api_new(uv_loop_t *loop, const struct ar_settings *s, struct ar_api **out, char *err,
               size_t errlen);
void ar_api_free(struct ar_api *a);
/* The server URL in use (for messages). */
const char *ar_api_url(const struct ar_api *a);

/* method "GET"/"PUT"/"POST"; path starts with '/'; body (JSON) may be NULL. timeout_ms 0: 10 s.
 * 0 and (optionally) *out, or -ENOMEM / -EINVAL (no callback then). */
int ar_api_request(struct ar_api *a, const char *method, const char *path, const char *body,
                   size_t body_len, unsigned timeout_ms, ar_api_cb cb, void *arg,
                   struct ar_api_req **out);
/* The callback will not be called. Accepts NULL. */
void ar_api_cancel(struct ar_api_req *r);

#endif
