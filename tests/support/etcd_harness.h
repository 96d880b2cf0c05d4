/*
 * tests/support/etcd_harness.h: start Debian's etcd (/usr/bin/etcd) for tests, on loopback, on
 * free ports, in a temporary directory, as one member or a cluster of up to 5.
 *
 * Every etcd runs in its own process group. Whatever happens (test failure, abort, signal,
 * exit) the processes are SIGKILLed and the directory removed: by etcd_harness_destroy, and
 * from an atexit handler and fatal-signal handlers as a backstop.
 */
#ifndef ATREST_TESTS_ETCD_HARNESS_H
#define ATREST_TESTS_ETCD_HARNESS_H

#include <stdbool.h>
#include <sys/types.h>

#include "coord/etcd/etcd.h"

#define ETCD_HARNESS_MAX 5

struct etcd_harness_opts {
    int members;       /* 1..5; 0 means 1 */
    bool tls;          /* https client URLs with a throwaway CA, --client-cert-auth */
    bool fast;         /* short heartbeat/election (50/500 ms) for quick failover */
    const char *extra; /* extra etcd arguments, space separated (optional) */
};

struct etcd_harness {
    int n;
    char dir[256];
    pid_t pid[ETCD_HARNESS_MAX];
    int client_port[ETCD_HARNESS_MAX];
    int peer_port[ETCD_HARNESS_MAX];
    char endpoint[ETCD_HARNESS_MAX][64];
    bool tls, fast;
    char extra[256];
    /* with tls: <dir>/pki/{ca.crt,client.crt,client.key,other-ca.crt} */
    char cacert[300], cert[300], key[300], other_ca[300];
};

/* 0 or -errno; on failure everything started is cleaned up. Waits for /health everywhere. */
int etcd_harness_start(struct etcd_harness *h, const struct etcd_harness_opts *o);
/* Stop member i with sig (SIGKILL, SIGTERM, SIGSTOP...) and, unless SIGSTOP, reap it. */
int etcd_harness_stop_member(struct etcd_harness *h, int i, int sig);
/* Start member i again on its data directory (after a stop). Does not wait for health. */
int etcd_harness_start_member(struct etcd_harness *h, int i);
/* Wait until member i answers {"health":"true"} (0) or timeout (-ETIMEDOUT). */
int etcd_harness_wait_healthy(struct etcd_harness *h, int i, unsigned timeout_ms);
/* Fill client settings with every member's endpoint (and the TLS files). */
void etcd_harness_settings(const struct etcd_harness *h, struct ar_etcd_settings *s);
/* Run a command (sh -c) with ETCDCTL_ENDPOINTS etc. set for member 0; returns exit status. */
int etcd_harness_ctl(const struct etcd_harness *h, const char *args);
/* Print the tail of member i's log to stderr (for failing tests). */
void etcd_harness_dump_log(const struct etcd_harness *h, int i);
/* Run loop until *flag is true or ms passed; returns *flag. */
bool etcd_harness_run_until(uv_loop_t *loop, const bool *flag, unsigned ms);
/* Run loop for ms milliseconds. */
void etcd_harness_run_for(uv_loop_t *loop, unsigned ms);

/* Kill everything, remove the directory. Safe to call twice. */
void etcd_harness_destroy(struct etcd_harness *h);

/*
 * A scripted etcd gateway on loopback, on the caller's libuv loop (so it runs between the
 * client's callbacks): every POST is handed to fn, whose reply is sent back. For answers a real
 * etcd cannot be made to give (a lease grant with TTL 0, a stream that goes silent).
 * HTTP/1.1 with keep-alive; requests need a Content-Length (what libcurl sends for POSTFIELDS).
 */
struct fake_gw_reply {
    int status;  /* HTTP status; 0: never answer, hold the connection open and silent */
    bool stream; /* 200 chunked, body sent as one chunk, then the connection stays open */
    char body[2048];
};
typedef void (*fake_gw_fn)(void *arg, const char *path, const char *body, struct fake_gw_reply *r);
struct fake_gw;
struct fake_gw *fake_gw_start(uv_loop_t *loop, fake_gw_fn fn, void *arg);
const char *fake_gw_endpoint(const struct fake_gw *g);
/* Requests seen on path so far. */
unsigned fake_gw_count(const struct fake_gw *g, const char *path);
/* Close the listener and every connection (held ones too); the loop must run afterwards. */
void fake_gw_stop(struct fake_gw *g);

#endif
