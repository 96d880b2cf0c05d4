/*
 * crypto/resource.c: etcd key <-> {group, resource} (shared spec section 4).
 *
 * The table lists the built-in resources of kube-apiserver that are stored in etcd, with the
 * storage prefix each uses (DefaultStorageFactory.ResourcePrefix: the lowercased resource, or a
 * SpecialDefaultResourcePrefixes entry). Sources: k/k pkg/kubeapiserver/default_storage_factory_
 * builder.go, pkg/registry/<group>/<resource>/storage/storage.go, test/integration/etcd/data.go
 * (1.28-1.32 and HEAD). Entries marked "unsure" are alpha/beta APIs whose storage key was not
 * checked against data.go of every release; they follow the default rule (lowercased plural).
 */
#include "crypto/resource.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

struct builtin {
    const char *group;
    const char *resource;
    const char *prefix; /* storage prefix without the leading/trailing '/' */
};

static const struct builtin builtins[] = {
    /* core ("") */
    {"", "configmaps", "configmaps"},
    {"", "endpoints", "services/endpoints"},
    {"", "events", "events"},
    {"", "limitranges", "limitranges"},
    {"", "namespaces", "namespaces"},
    {"", "nodes", "minions"},
    {"", "persistentvolumeclaims", "persistentvolumeclaims"},
    {"", "persistentvolumes", "persistentvolumes"},
    {"", "pods", "pods"},
    {"", "podtemplates", "podtemplates"},
    {"", "replicationcontrollers", "controllers"},
    {"", "resourcequotas", "resourcequotas"},
    {"", "secrets", "secrets"},
    {"", "serviceaccounts", "serviceaccounts"},
    {"", "services", "services/specs"},
    /* Not REST resources (validation forbids naming them); stored by the IP/port allocators.
     * Unsure whether wildcard rules route them through the transformers (spec 7.3). */
    {"", "serviceipallocations", "ranges/serviceips"},
    {"", "servicenodeportallocations", "ranges/servicenodeports"},
    /* apps */
    {"apps", "controllerrevisions", "controllerrevisions"},
    {"apps", "daemonsets", "daemonsets"},
    {"apps", "deployments", "deployments"},
    {"apps", "replicasets", "replicasets"},
    {"apps", "statefulsets", "statefulsets"},
    /* autoscaling */
    {"autoscaling", "horizontalpodautoscalers", "horizontalpodautoscalers"},
    /* batch */
    {"batch", "cronjobs", "cronjobs"},
    {"batch", "jobs", "jobs"},
    /* policy */
    {"policy", "poddisruptionbudgets", "poddisruptionbudgets"},
    /* rbac */
    {"rbac.authorization.k8s.io", "clusterrolebindings", "clusterrolebindings"},
    {"rbac.authorization.k8s.io", "clusterroles", "clusterroles"},
    {"rbac.authorization.k8s.io", "rolebindings", "rolebindings"},
    {"rbac.authorization.k8s.io", "roles", "roles"},
    /* networking */
    {"networking.k8s.io", "ingressclasses", "ingressclasses"},
    {"networking.k8s.io", "ingresses", "ingress"},
    {"networking.k8s.io", "networkpolicies", "networkpolicies"},
    {"networking.k8s.io", "ipaddresses", "ipaddresses"},   /* beta 1.31; unsure */
    {"networking.k8s.io", "servicecidrs", "servicecidrs"}, /* beta 1.31; unsure */
    /* discovery */
    {"discovery.k8s.io", "endpointslices", "endpointslices"},
    /* coordination */
    {"coordination.k8s.io", "leases", "leases"},
    {"coordination.k8s.io", "leasecandidates", "leasecandidates"}, /* alpha 1.31; unsure */
    /* storage */
    {"storage.k8s.io", "csidrivers", "csidrivers"},
    {"storage.k8s.io", "csinodes", "csinodes"},
    {"storage.k8s.io", "csistoragecapacities", "csistoragecapacities"},
    {"storage.k8s.io", "storageclasses", "storageclasses"},
    {"storage.k8s.io", "volumeattachments", "volumeattachments"},
    {"storage.k8s.io", "volumeattributesclasses", "volumeattributesclasses"}, /* beta; unsure */
    /* admissionregistration */
    {"admissionregistration.k8s.io", "mutatingwebhookconfigurations",
     "mutatingwebhookconfigurations"},
    {"admissionregistration.k8s.io", "validatingwebhookconfigurations",
     "validatingwebhookconfigurations"},
    {"admissionregistration.k8s.io", "validatingadmissionpolicies", "validatingadmissionpolicies"},
    {"admissionregistration.k8s.io", "validatingadmissionpolicybindings",
     "validatingadmissionpolicybindings"},
    {"admissionregistration.k8s.io", "mutatingadmissionpolicies", /* alpha 1.32; unsure */
     "mutatingadmissionpolicies"},
    {"admissionregistration.k8s.io", "mutatingadmissionpolicybindings", /* alpha; unsure */
     "mutatingadmissionpolicybindings"},
    /* certificates */
    {"certificates.k8s.io", "certificatesigningrequests", "certificatesigningrequests"},
    {"certificates.k8s.io", "clustertrustbundles", "clustertrustbundles"}, /* alpha; unsure */
    /* scheduling, node */
    {"scheduling.k8s.io", "priorityclasses", "priorityclasses"},
    {"node.k8s.io", "runtimeclasses", "runtimeclasses"},
    /* flowcontrol */
    {"flowcontrol.apiserver.k8s.io", "flowschemas", "flowschemas"},
    {"flowcontrol.apiserver.k8s.io", "prioritylevelconfigurations", "prioritylevelconfigurations"},
    /* apiserver internals */
    {"internal.apiserver.k8s.io", "storageversions", "storageversions"},                 /* alpha */
    {"storagemigration.k8s.io", "storageversionmigrations", "storageversionmigrations"}, /* alpha */
    /* resource (DRA); alpha/beta across 1.26-1.32, unsure */
    {"resource.k8s.io", "deviceclasses", "deviceclasses"},
    {"resource.k8s.io", "resourceclaims", "resourceclaims"},
    {"resource.k8s.io", "resourceclaimtemplates", "resourceclaimtemplates"},
    {"resource.k8s.io", "resourceslices", "resourceslices"},
    {"resource.k8s.io", "podschedulingcontexts", "podschedulingcontexts"},
};

#define NBUILTINS (sizeof(builtins) / sizeof(builtins[0]))

/* Groups served by kube-apiserver itself: an unknown resource in one of them is not a CR. */
static const char *const builtin_groups[] = {
    "",
    "apps",
    "autoscaling",
    "batch",
    "policy",
    "extensions",
    "events.k8s.io",
    "rbac.authorization.k8s.io",
    "networking.k8s.io",
    "discovery.k8s.io",
    "coordination.k8s.io",
    "storage.k8s.io",
    "admissionregistration.k8s.io",
    "certificates.k8s.io",
    "scheduling.k8s.io",
    "node.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "internal.apiserver.k8s.io",
    "storagemigration.k8s.io",
    "resource.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
};

/* path.Join("/", prefix) with a trailing '/', as etcd3.newStore builds pathPrefix. */
static int clean_prefix(const char *prefix, char *out, size_t outlen)
{
    size_t n = 0, i = 0, plen = prefix ? strlen(prefix) : 0;

    if (outlen < 2)
        return -ENAMETOOLONG;
    out[n++] = '/';
    while (i < plen) {
        size_t s, l;

        while (i < plen && prefix[i] == '/')
            i++;
        s = i;
        while (i < plen && prefix[i] != '/')
            i++;
        l = i - s;
        if (l == 0 || (l == 1 && prefix[s] == '.'))
            continue;
        if (l == 2 && prefix[s] == '.' && prefix[s + 1] == '.') {
            /* drop the last element */
            if (n > 1) {
                n--; /* the trailing '/' */
                while (n > 1 && out[n - 1] != '/')
                    n--;
            }
            continue;
        }
        if (n + l + 2 > outlen)
            return -ENAMETOOLONG;
        memcpy(out + n, prefix + s, l);
        n += l;
        out[n++] = '/';
    }
    out[n] = '\0';
    return (int)n;
}

static int copy_str(char *dst, size_t dlen, const char *src, size_t n)
{
    if (n + 1 > dlen)
        return -ENAMETOOLONG;
    memcpy(dst, src, n);
    dst[n] = '\0';
    return 0;
}

int ar_resource_of_key(const char *prefix, const char *key, size_t keylen, struct ar_resource *out)
{
    char pp[1024];
    const char *rest, *slash, *slash2;
    size_t restlen, best = 0;
    const struct builtin *hit = NULL;
    int n;

    n = clean_prefix(prefix, pp, sizeof(pp));
    if (n < 0)
        return -ENOENT;
    if (keylen < (size_t)n || memcmp(key, pp, (size_t)n) != 0)
        return -ENOENT;
    rest = key + n;
    restlen = keylen - (size_t)n;
    slash = memchr(rest, '/', restlen);
    if (!slash || slash == rest)
        return -ENOENT;
    if (memchr(rest, '.', (size_t)(slash - rest))) {
        /* <group>/<resource>/<name...>: CRs, CRDs, APIServices */
        size_t glen = (size_t)(slash - rest), rlen;
        const char *r = slash + 1;
        size_t left = restlen - glen - 1;

        slash2 = memchr(r, '/', left);
        if (!slash2 || slash2 == r || (size_t)(slash2 - rest) + 1 >= restlen)
            return -ENOENT;
        rlen = (size_t)(slash2 - r);
        /* a NUL cannot be part of a group or resource name */
        if (memchr(rest, '\0', glen) || memchr(r, '\0', rlen))
            return -ENOENT;
        if (copy_str(out->group, sizeof(out->group), rest, glen) < 0 ||
            copy_str(out->resource, sizeof(out->resource), r, rlen) < 0)
            return -ENOENT;
        out->name_off = (size_t)(slash2 - key) + 1;
        return 0;
    }
    for (size_t i = 0; i < NBUILTINS; i++) {
        size_t pl = strlen(builtins[i].prefix);

        /* the longest prefix wins: services/specs before a hypothetical "services" */
        if (pl + 1 < restlen && pl > best && memcmp(rest, builtins[i].prefix, pl) == 0 &&
            rest[pl] == '/') {
            hit = &builtins[i];
            best = pl;
        }
    }
    if (!hit)
        return -ENOENT;
    snprintf(out->group, sizeof(out->group), "%s", hit->group);
    snprintf(out->resource, sizeof(out->resource), "%s", hit->resource);
    out->name_off = (size_t)n + best + 1;
    return 0;
}

static bool is_builtin_group(const char *group)
{
    for (size_t i = 0; i < sizeof(builtin_groups) / sizeof(builtin_groups[0]); i++)
        if (strcmp(group, builtin_groups[i]) == 0)
            return true;
    return false;
}

int ar_resource_key_prefix(const char *prefix, const char *group, const char *resource, char *out,
                           size_t outlen)
{
    char pp[1024];
    const char *sp = NULL;
    int n, w;

    n = clean_prefix(prefix, pp, sizeof(pp));
    if (n < 0)
        return n;
    /* cohabitating and legacy groups share the storage of the current one */
    if (strcmp(group, "events.k8s.io") == 0 && strcmp(resource, "events") == 0)
        group = "";
    else if (strcmp(group, "extensions") == 0 && strcmp(resource, "ingresses") == 0)
        group = "networking.k8s.io";
    for (size_t i = 0; i < NBUILTINS; i++) {
        if (strcmp(builtins[i].group, group) == 0 && strcmp(builtins[i].resource, resource) == 0) {
            sp = builtins[i].prefix;
            break;
        }
    }
    if (sp)
        w = snprintf(out, outlen, "%s%s/", pp, sp);
    else if (!is_builtin_group(group) && resource[0] && !strchr(resource, '/'))
        w = snprintf(out, outlen, "%s%s/%s/", pp, group, resource);
    else
        return -ENOENT;
    if (w < 0 || (size_t)w >= outlen)
        return -ENAMETOOLONG;
    return 0;
}

int ar_parse_group_resource(const char *s, char *group, size_t glen, char *resource, size_t rlen)
{
    const char *dot = strchr(s, '.');

    if (!dot)
        return copy_str(group, glen, "", 0) < 0 ? -ENAMETOOLONG
                                                : copy_str(resource, rlen, s, strlen(s));
    if (copy_str(resource, rlen, s, (size_t)(dot - s)) < 0)
        return -ENAMETOOLONG;
    return copy_str(group, glen, dot + 1, strlen(dot + 1));
}
