/* agent/state.c: the daemon state and the hot-swappable chain slot. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/state.h"

int ar_chain_slot_init(struct ar_chain_slot *s)
{
    int r = pthread_mutex_init(&s->mu, NULL);
    if (r)
        return -r;
    s->cur = NULL;
    s->generation = 0;
    return 0;
}

struct ar_chain *ar_chain_slot_acquire(struct ar_chain_slot *s)
{
    struct ar_chain *c;

    pthread_mutex_lock(&s->mu);
    c = s->cur ? ar_chain_ref(s->cur) : NULL;
    pthread_mutex_unlock(&s->mu);
    return c;
}

void ar_chain_slot_swap(struct ar_chain_slot *s, struct ar_chain *c)
{
    struct ar_chain *old;

    if (c)
        ar_chain_ref(c);
    pthread_mutex_lock(&s->mu);
    old = s->cur;
    s->cur = c;
    s->generation++;
    pthread_mutex_unlock(&s->mu);
    ar_chain_unref(old);
}

uint64_t ar_chain_slot_generation(struct ar_chain_slot *s)
{
    uint64_t g;

    pthread_mutex_lock(&s->mu);
    g = s->generation;
    pthread_mutex_unlock(&s->mu);
    return g;
}

void ar_chain_slot_destroy(struct ar_chain_slot *s)
{
    s->cur = ar_chain_unref(s->cur);
    pthread_mutex_destroy(&s->mu);
}

const char *ar_reload_result_name(enum ar_reload_result r)
{
    switch (r) {
    case AR_RELOAD_NONE:
        return "none";
    case AR_RELOAD_APPLIED:
        return "applied";
    case AR_RELOAD_UNCHANGED:
        return "unchanged";
    case AR_RELOAD_INVALID:
        return "invalid";
    case AR_RELOAD_FAILED:
        return "failed";
    }
    return "none";
}

const char *ar_etcd_conn_name(enum ar_etcd_conn c)
{
    switch (c) {
    case AR_ETCD_NOT_CONFIGURED:
        return "not configured";
    case AR_ETCD_CONNECTING:
        return "connecting";
    case AR_ETCD_CONNECTED:
        return "connected";
    case AR_ETCD_UNREACHABLE:
        return "unreachable";
    }
    return "not configured";
}

static int64_t realtime_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ar_state_init(struct ar_state *st)
{
    memset(st, 0, sizeof(*st));
    st->started_ms = realtime_ms();
    return ar_chain_slot_init(&st->chain);
}

void ar_state_members_free(struct ar_state_member *m, size_t n)
{
    if (!m)
        return;
    for (size_t i = 0; i < n; i++) {
        free(m[i].node);
        free(m[i].desired_fp);
        free(m[i].effective_fp);
        free(m[i].effective_hash);
        free(m[i].version);
    }
    free(m);
}

void ar_state_set_members(struct ar_state *st, struct ar_state_member *m, size_t n)
{
    ar_state_members_free(st->members, st->nmembers);
    st->members = m;
    st->nmembers = m ? n : 0;
}

int ar_state_set_str(char **field, const char *s)
{
    char *d = NULL;

    if (s) {
        d = strdup(s);
        if (!d)
            return -ENOMEM;
    }
    free(*field);
    *field = d;
    return 0;
}

void ar_state_free(struct ar_state *st)
{
    ar_chain_slot_destroy(&st->chain);
    st->desired = ar_config_unref(st->desired);
    st->effective = ar_config_unref(st->effective);
    free(st->desired_error);
    free(st->last_reload_error);
    free(st->node_waiting);
    st->node_waiting = NULL;
    free(st->etcd_error);
    free(st->leader);
    ar_state_members_free(st->members, st->nmembers);
    st->desired_error = st->last_reload_error = st->etcd_error = st->leader = NULL;
    st->members = NULL;
    st->nmembers = 0;
}

bool ar_state_is_leader(const struct ar_state *st)
{
    return st->leading && !st->stopping && st->leading(st->leading_arg);
}

bool ar_state_ready(const struct ar_state *st)
{
    return st->effective != NULL && st->status_up && !st->stopping;
}

bool ar_state_healthy(const struct ar_state *st, uint64_t now_mono_ms, uint64_t max_lag_ms)
{
    if (st->stopping)
        return false;
    return now_mono_ms <= st->loop_tick_mono_ms + max_lag_ms;
}

const char *ar_node_step_name(enum ar_node_step s)
{
    switch (s) {
    case AR_NODE_IDLE:
        return "idle";
    case AR_NODE_APPLYING:
        return "applying";
    case AR_NODE_PROVING:
        return "proving";
    }
    return "unknown";
}

const char *ar_node_proof_name(enum ar_node_proof p)
{
    switch (p) {
    case AR_NODE_PROOF_NONE:
        return "none";
    case AR_NODE_PROOF_FILE:
        return "file";
    case AR_NODE_PROOF_CANARY:
        return "canary";
    case AR_NODE_PROOF_METRICS:
        return "metrics";
    case AR_NODE_PROOF_RESTART:
        return "restart";
    }
    return "unknown";
}
