/*
 * coord/reencrypt.c: TEMPORARY stand-in (rotation branch) until the re-encrypt engine's branch
 * is merged; take that branch's file whole. Starting fails with -ENOSYS, so the rotation's
 * leader waits in phase reencrypt saying "re-encrypt engine not built".
 */
#include <errno.h>

#include "coord/reencrypt.h"

int ar_reencrypt_start(struct ar_etcd *c, struct ar_chain *chain, const struct ar_reencrypt_opts *o,
                       ar_reencrypt_progress_cb progress, ar_reencrypt_done_cb done, void *arg,
                       struct ar_reencrypt **out)
{
    if (out)
        *out = NULL;
    return -ENOSYS;
}

void ar_reencrypt_stop(struct ar_reencrypt *r)
{
}
