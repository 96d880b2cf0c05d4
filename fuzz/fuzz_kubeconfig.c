/*
 * fuzz/fuzz_kubeconfig.c: the kubeconfig subset reader (agent/apiclient.h) on arbitrary bytes.
 * A result either parses (a server URL is set) or fails with -EINVAL/-ENOMEM and a non-empty,
 * NUL-terminated error naming the file.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/apiclient.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ar_kubeconfig *k = NULL;
    char err[256];
    int r = ar_kubeconfig_parse("fuzz.kubeconfig", "/d", (const char *)data, size, &k, err,
                                sizeof(err));

    if (r == 0) {
        if (!k || !k->server)
            abort();
        ar_kubeconfig_free(k);
    } else {
        if (k || (r != -EINVAL && r != -ENOMEM))
            abort();
        if (r == -EINVAL && strncmp(err, "fuzz.kubeconfig", 15))
            abort();
    }
    return 0;
}
