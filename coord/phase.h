/*
 * coord/phase.h: the phases of a rotation from one EncryptionConfiguration to another (DESIGN
 * 4.2). One pure function: the same (from, to) gives, on every member, the same phases and
 * byte-identical phase configs (ar_config_render of each is identical; its sha256 is
 * config->file_sha256, what kube-apiserver 1.34+ reports for the file).
 *
 * The algorithm
 *
 * 1. Selectors. Every {group, resource} named in from or to (parsed as kube-apiserver does,
 *    so "secrets" and "secrets." are one selector) is a selector, written canonically
 *    ("secrets", "deployments.apps", "*.apps", "*." for the core group, "*.*"). Selectors are
 *    ordered by class (exact resources, then "*.<group>", then "*.*") and by byte order of the
 *    canonical name inside a class. This order passes the cross-rule masking check.
 * 2. Effective lists. For each config C and selector S, eff(C, S) is the provider list
 *    kube-apiserver's lookup gives S: for an exact S, the lists of every rule naming it,
 *    concatenated in rule order, else the "*.<group>" rule, else "*.*"; for "*.<group>", that
 *    rule, else "*.*"; for "*.*", that rule. No rule means plain identity, taken as [identity].
 *    A resource nobody names falls to the same wildcard in from, to and every phase config, so
 *    the wildcard selectors carry it.
 * 3. merge(A, B): A as it is (order, providers, keys), then each provider of B in order: an
 *    identity or a KMS provider (compared by all its fields) not yet in the list is appended;
 *    each key of a keyed provider not yet in the list (same type, name and secret) is appended
 *    to the first provider of its type in the list, or starts a new provider of that type at
 *    the end (the next keys of that type then join it). KMS providers are never merged.
 * 4. Per selector: stage(S) = merge(eff(from, S), eff(to, S)) (writes W_from, reads all);
 *    promote(S) = merge(eff(to, S), eff(from, S)) (writes W_to, reads all).
 *    W(C, S) is the first provider and its first key.
 * 5. Phases, in order, skipping those with nothing to do:
 *    - stage     when some stage(S) != eff(from, S) (new read keys or providers);
 *    - promote   when some W(from, S) != W(to, S);
 *    - reencrypt, verify  when promote runs or prune runs (data under a dropped key must be
 *      rewritten before prune even when no write key changes: S2);
 *    - prune     when some promote(S) != eff(to, S) (from has keys or providers to drops).
 *    reencrypt and verify run the promote config. The last phase runs exactly `to`: its
 *    config is `to`'s own rules composed anew (same canonical fingerprint as to). When from and
 *    to differ in fingerprint but no selector changes (rules only regrouped), the one phase is
 *    a prune that drops nothing.
 * 6. A phase config has one rule per selector in selector order, except that the selectors of
 *    one class with equal lists share the rule of the first of them (deterministic; it also
 *    keeps a KMS v2 provider, whose name must be unique in a file, in one rule when it can).
 * 7. Refusals: a key name used in from and to for the same provider type with different
 *    secrets (the prefixes would collide), or a KMS name with different settings, is an error
 *    in diags (at the key in `to`), -EINVAL. A phase config that fails validation (e.g. a KMS
 *    v2 provider that would have to appear in two rules) is an error from ar_config_compose.
 *
 * The re-encrypt pass rewrites the selectors whose write provider/key changes or that lose a
 * key (rewrite[], canonical names; a wildcard means the resources that wildcard serves). Prune
 * drops the provider/keys of drops[] (per selector, deduplicated; identity included: then
 * stored plaintext must be gone too).
 */
#ifndef ATREST_COORD_PHASE_H
#define ATREST_COORD_PHASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto/config.h"

enum ar_phase_kind {
    AR_PHASE_STAGE = 0,
    AR_PHASE_PROMOTE,
    AR_PHASE_REENCRYPT,
    AR_PHASE_VERIFY,
    AR_PHASE_PRUNE,
};

/* "stage", "promote", "reencrypt", "verify", "prune" */
const char *ar_phase_name(enum ar_phase_kind k);

/* A provider/key named without its secret. */
struct ar_phase_key {
    enum ar_ptype type;
    const char *name; /* key or KMS name (points into from); NULL for identity */
    uint8_t fp[8];    /* short key fingerprint (keyed types) */
    bool has_fp;
};

struct ar_phase {
    enum ar_phase_kind kind;
    struct ar_config *config; /* the plan holds this reference */
    /* reencrypt only: the selectors to rewrite (canonical names) */
    const char *const *rewrite;
    size_t nrewrite;
    /* verify and prune: what prune drops (verify must count zero objects under them) */
    const struct ar_phase_key *drops;
    size_t ndrops;
};

struct ar_plan {
    struct ar_phase phases[5];
    size_t nphases; /* 0: from and to have the same fingerprint */
    char **rewrite;
    size_t nrewrite;
    struct ar_phase_key *drops;
    size_t ndrops;
    struct ar_config *from, *to; /* references held for drops[].name */
};

/* Derive the plan. name labels diagnostics (e.g. the to file's name); opts are the load
 * options every phase config is validated with (NULL: defaults). Returns 0, -EINVAL (reasons in
 * diags) or -ENOMEM. */
int ar_plan_derive(struct ar_config *from, struct ar_config *to, const char *name,
                   const struct ar_load_opts *opts, struct ar_plan **out, struct ar_diags *diags);
/* Accepts NULL. */
void ar_plan_free(struct ar_plan *p);

#endif
