/*
 * crypto/resource.h: which {group, resource} an etcd key belongs to (shared spec section 4).
 *
 * Built-in resources: the prefix is the lowercased resource without the group, with the
 * special prefixes (controllers, services/endpoints, minions, services/specs, ingress); a
 * table maps each built-in prefix to its API group. CRs, CRDs and APIServices are stored under
 * <group>/<resource>/ (the first segment contains a dot).
 */
#ifndef ATREST_CRYPTO_RESOURCE_H
#define ATREST_CRYPTO_RESOURCE_H

#include <stddef.h>

#define AR_DEFAULT_ETCD_PREFIX "/registry"

struct ar_resource {
    char group[256];
    char resource[256];
    size_t name_off; /* offset in the key where "<ns>/<name>" or "<name>" starts */
};

/* Map key (bytes, not NUL terminated) under prefix (e.g. "/registry", leading '/' optional,
 * as --etcd-prefix) to its resource. 0, or -ENOENT when the key is not under the prefix or
 * names no known resource. */
int ar_resource_of_key(const char *prefix, const char *key, size_t keylen, struct ar_resource *out);

/* The etcd key prefix of a resource ("/registry/secrets/", "/registry/services/specs/", ...),
 * for scanning. 0, -ENOENT for an unknown built-in, -ENAMETOOLONG. */
int ar_resource_key_prefix(const char *prefix, const char *group, const char *resource, char *out,
                           size_t outlen);

/* Parse "secrets", "deployments.apps", "*.", "*.*" as schema.ParseGroupResource does (split at
 * the first '.'). Writes into the two buffers; -ENAMETOOLONG when they are too small. */
int ar_parse_group_resource(const char *s, char *group, size_t glen, char *resource, size_t rlen);

#endif
