/* coord/jsonrec.c: strict JSON of coord's etcd records (contract in coord/jsonrec.h). */
#include <errno.h>
#include <string.h>

#include "coord/jsonrec.h"

int ar_jrec_dump(json_t *j, char **out)
{
    *out = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    return *out ? 0 : -ENOMEM;
}

int ar_jrec_load(const char *json, size_t len, size_t max, json_t **root)
{
    *root = NULL;
    if (!json)
        return -EINVAL;
    if (len > max)
        return -EMSGSIZE;
    *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(*root)) {
        json_decref(*root);
        *root = NULL;
        return -EBADMSG;
    }
    return 0;
}

int ar_jrec_str(const json_t *v, char *out, size_t n)
{
    size_t len;

    if (!json_is_string(v))
        return -EBADMSG;
    len = json_string_length(v);
    if (len >= n || memchr(json_string_value(v), '\0', len))
        return -EBADMSG;
    memcpy(out, json_string_value(v), len + 1);
    return 0;
}

int ar_jrec_get_str(const json_t *o, const char *k, enum ar_jrec_need need, char *out, size_t n)
{
    const json_t *v = json_object_get(o, k);

    out[0] = '\0';
    if (need == AR_JREC_OPTIONAL && (!v || json_is_null(v)))
        return 0;
    return ar_jrec_str(v, out, n);
}

int ar_jrec_get_time(const json_t *o, const char *k, enum ar_jrec_need need, int64_t *out)
{
    const json_t *v = json_object_get(o, k);

    *out = 0;
    if (!v && need == AR_JREC_OPTIONAL)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -EBADMSG;
    *out = (int64_t)json_integer_value(v);
    return 0;
}
