/*
 * tests/unit/test_resource.c: etcd key <-> {group, resource} (shared spec section 4).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>

#include "crypto/resource.h"

struct kcase {
    const char *prefix;
    const char *key;
    const char *group;
    const char *resource;
    const char *name; /* what name_off points at */
};

static const struct kcase key_cases[] = {
    /* k/k test/integration/etcd/data.go and the spec examples */
    {"/registry", "/registry/secrets/default/mysecret", "", "secrets", "default/mysecret"},
    {"/registry", "/registry/configmaps/ns/cm1", "", "configmaps", "ns/cm1"},
    {"/registry", "/registry/deployments/ns/deployment4", "apps", "deployments", "ns/deployment4"},
    {"/registry", "/registry/services/specs/ns/service1", "", "services", "ns/service1"},
    {"/registry", "/registry/services/endpoints/ns/service1", "", "endpoints", "ns/service1"},
    {"/registry", "/registry/minions/node1", "", "nodes", "node1"},
    {"/registry", "/registry/controllers/ns/rc1", "", "replicationcontrollers", "ns/rc1"},
    {"/registry", "/registry/namespaces/namespace1", "", "namespaces", "namespace1"},
    {"/registry", "/registry/ingress/ns/ingress1", "networking.k8s.io", "ingresses", "ns/ingress1"},
    {"/registry", "/registry/events/ns/ev1", "", "events", "ns/ev1"},
    {"/registry", "/registry/leases/kube-node-lease/n1", "coordination.k8s.io", "leases",
     "kube-node-lease/n1"},
    {"/registry", "/registry/clusterroles/admin", "rbac.authorization.k8s.io", "clusterroles",
     "admin"},
    {"/registry", "/registry/cronjobs/ns/cj", "batch", "cronjobs", "ns/cj"},
    {"/registry", "/registry/storageclasses/standard", "storage.k8s.io", "storageclasses",
     "standard"},
    {"/registry", "/registry/validatingwebhookconfigurations/w", "admissionregistration.k8s.io",
     "validatingwebhookconfigurations", "w"},
    /* CRs, CRDs, APIServices */
    {"/registry", "/registry/cr.bar.com/foos/ns/cr1foo", "cr.bar.com", "foos", "ns/cr1foo"},
    {"/registry", "/registry/custom.fancy.com/pants/cr2pant", "custom.fancy.com", "pants",
     "cr2pant"},
    {"/registry", "/registry/apiextensions.k8s.io/customresourcedefinitions/foos.cr.bar.com",
     "apiextensions.k8s.io", "customresourcedefinitions", "foos.cr.bar.com"},
    {"/registry", "/registry/apiregistration.k8s.io/apiservices/v1.apps", "apiregistration.k8s.io",
     "apiservices", "v1.apps"},
    /* --etcd-prefix without leading '/', with a trailing '/', several segments */
    {"registry", "/registry/secrets/a/b", "", "secrets", "a/b"},
    {"/registry/", "/registry/secrets/a/b", "", "secrets", "a/b"},
    {"//registry//", "/registry/secrets/a/b", "", "secrets", "a/b"},
    {"43da1478-5e9c-4ef3-a92a-2b19d540c8a5/registry",
     "/43da1478-5e9c-4ef3-a92a-2b19d540c8a5/registry/secrets/kms-v2-legacy-data/x", "", "secrets",
     "kms-v2-legacy-data/x"},
    {"/a/./b/../registry", "/a/registry/pods/ns/p", "", "pods", "ns/p"},
    {"", "/secrets/ns/s", "", "secrets", "ns/s"},
};

static void test_key_table(void **state)
{
    for (size_t i = 0; i < sizeof(key_cases) / sizeof(key_cases[0]); i++) {
        const struct kcase *c = &key_cases[i];
        struct ar_resource r;

        memset(&r, 0x5a, sizeof(r));
        if (ar_resource_of_key(c->prefix, c->key, strlen(c->key), &r) != 0)
            fail_msg("case %zu: %s under %s not mapped", i, c->key, c->prefix);
        assert_string_equal(r.group, c->group);
        assert_string_equal(r.resource, c->resource);
        assert_string_equal(c->key + r.name_off, c->name);
    }
}

static void test_key_unknown(void **state)
{
    static const char *const bad[] = {
        "/registry",                 /* the prefix alone */
        "/registry/",                /* nothing after */
        "/registry/secrets",         /* no name */
        "/registry/secrets/",        /* empty name */
        "/registry/nosuchthing/a",   /* not a built-in */
        "/other/secrets/ns/s",       /* another prefix */
        "/registryx/secrets/ns/s",   /* not a path prefix */
        "/registry/cr.bar.com/foos", /* CR without a name */
        "/registry/cr.bar.com//x",   /* empty resource */
        "/registry//secrets/a",      /* empty first segment */
        "/registry/services/x",      /* services alone is not a prefix */
    };
    struct ar_resource r;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (ar_resource_of_key("/registry", bad[i], strlen(bad[i]), &r) != -ENOENT)
            fail_msg("%s should not map", bad[i]);
    /* NUL bytes in the group or resource segment */
    assert_int_equal(ar_resource_of_key("/registry", "/registry/a.b/\0x/n", 18, &r), -ENOENT);
    assert_int_equal(ar_resource_of_key("/registry", "/registry/a\0.b/x/n", 18, &r), -ENOENT);
    /* the length is honoured: the bytes after keylen are not looked at */
    assert_int_equal(ar_resource_of_key("/registry", "/registry/secrets/a", 17, &r), -ENOENT);
}

static void test_key_prefix(void **state)
{
    static const struct {
        const char *prefix, *group, *resource, *want;
    } cases[] = {
        {"/registry", "", "secrets", "/registry/secrets/"},
        {"registry", "", "services", "/registry/services/specs/"},
        {"/registry", "", "endpoints", "/registry/services/endpoints/"},
        {"/registry", "", "nodes", "/registry/minions/"},
        {"/registry", "", "replicationcontrollers", "/registry/controllers/"},
        {"/registry", "networking.k8s.io", "ingresses", "/registry/ingress/"},
        {"/registry", "extensions", "ingresses", "/registry/ingress/"},
        {"/registry", "events.k8s.io", "events", "/registry/events/"},
        {"/registry", "apps", "deployments", "/registry/deployments/"},
        {"/registry", "cr.bar.com", "foos", "/registry/cr.bar.com/foos/"},
        {"/registry", "apiextensions.k8s.io", "customresourcedefinitions",
         "/registry/apiextensions.k8s.io/customresourcedefinitions/"},
        {"/p/registry", "apiregistration.k8s.io", "apiservices",
         "/p/registry/apiregistration.k8s.io/apiservices/"},
    };
    char out[256];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(ar_resource_key_prefix(cases[i].prefix, cases[i].group, cases[i].resource,
                                                out, sizeof(out)),
                         0);
        assert_string_equal(out, cases[i].want);
    }
    assert_int_equal(ar_resource_key_prefix("/registry", "", "nosuch", out, sizeof(out)), -ENOENT);
    assert_int_equal(ar_resource_key_prefix("/registry", "apps", "nosuch", out, sizeof(out)),
                     -ENOENT);
    assert_int_equal(ar_resource_key_prefix("/registry", "", "secrets", out, 10), -ENAMETOOLONG);
}

/* every built-in key prefix maps back to the resource it came from */
static void test_roundtrip(void **state)
{
    static const char *const grs[][2] = {
        {"", "secrets"},
        {"", "configmaps"},
        {"", "pods"},
        {"", "serviceaccounts"},
        {"", "namespaces"},
        {"", "events"},
        {"", "persistentvolumes"},
        {"", "persistentvolumeclaims"},
        {"", "limitranges"},
        {"", "resourcequotas"},
        {"", "podtemplates"},
        {"", "services"},
        {"", "endpoints"},
        {"", "nodes"},
        {"", "replicationcontrollers"},
        {"apps", "statefulsets"},
        {"apps", "daemonsets"},
        {"apps", "replicasets"},
        {"apps", "controllerrevisions"},
        {"batch", "jobs"},
        {"networking.k8s.io", "ingresses"},
        {"networking.k8s.io", "networkpolicies"},
        {"networking.k8s.io", "ingressclasses"},
        {"rbac.authorization.k8s.io", "roles"},
        {"rbac.authorization.k8s.io", "rolebindings"},
        {"rbac.authorization.k8s.io", "clusterrolebindings"},
        {"policy", "poddisruptionbudgets"},
        {"storage.k8s.io", "csidrivers"},
        {"scheduling.k8s.io", "priorityclasses"},
        {"discovery.k8s.io", "endpointslices"},
        {"certificates.k8s.io", "certificatesigningrequests"},
        {"flowcontrol.apiserver.k8s.io", "flowschemas"},
        {"node.k8s.io", "runtimeclasses"},
        {"admissionregistration.k8s.io", "mutatingwebhookconfigurations"},
        {"autoscaling", "horizontalpodautoscalers"},
        {"example.com", "widgets"},
    };
    char key[512];
    struct ar_resource r;

    for (size_t i = 0; i < sizeof(grs) / sizeof(grs[0]); i++) {
        assert_int_equal(ar_resource_key_prefix("/registry", grs[i][0], grs[i][1], key, 400), 0);
        strcat(key, "ns/name");
        assert_int_equal(ar_resource_of_key("/registry", key, strlen(key), &r), 0);
        assert_string_equal(r.group, grs[i][0]);
        assert_string_equal(r.resource, grs[i][1]);
        assert_string_equal(key + r.name_off, "ns/name");
    }
}

static void test_parse_group_resource(void **state)
{
    static const char *const cases[][3] = {
        {"secrets", "", "secrets"},
        {"deployments.apps", "apps", "deployments"},
        {"pandas.awesome.bears.example", "awesome.bears.example", "pandas"},
        {"*.", "", "*"},
        {"*.apps", "apps", "*"},
        {"*.*", "*", "*"},
        {"", "", ""},
        {".x", "x", ""},
    };
    char g[64], r[64];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(ar_parse_group_resource(cases[i][0], g, sizeof(g), r, sizeof(r)), 0);
        assert_string_equal(g, cases[i][1]);
        assert_string_equal(r, cases[i][2]);
    }
    assert_int_equal(ar_parse_group_resource("deployments.apps", g, 4, r, sizeof(r)),
                     -ENAMETOOLONG);
    assert_int_equal(ar_parse_group_resource("deployments.apps", g, sizeof(g), r, 5),
                     -ENAMETOOLONG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_table),
        cmocka_unit_test(test_key_unknown),
        cmocka_unit_test(test_key_prefix),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_parse_group_resource),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
