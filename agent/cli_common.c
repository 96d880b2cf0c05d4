/* agent/cli_common.c: settings, etcd and config loading shared by the subcommands (contract in
 * agent/cli_common.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "agent/cli_common.h"
#include "agent/effective.h"

int ar_cli_settings(const char *cmd, const char *file, int argc, char **argv, struct ar_settings *s)
{
    struct ar_diags d;
    char line[1024];
    int r;

    r = ar_settings_init(s);
    if (r < 0) {
        fprintf(stderr, "atrest %s: %s\n", cmd, strerror(-r));
        return r;
    }
    ar_diags_init(&d);
    if (file)
        r = ar_settings_load_file(s, file, &d);
    if (r == 0)
        r = ar_settings_apply_flags(s, argc, argv, &d);
    if (r < 0 || d.nerrors) {
        for (size_t i = 0; i < d.n; i++) {
            if (d.v[i].severity != AR_SEV_ERROR)
                continue;
            ar_diag_format(&d.v[i], line, sizeof(line));
            fprintf(stderr, "atrest %s: %s\n", cmd, line);
        }
        if (!d.nerrors)
            fprintf(stderr, "atrest %s: %s: %s\n", cmd, file ? file : "settings", strerror(-r));
        r = r < 0 ? r : -EINVAL;
        ar_settings_free(s);
    }
    ar_diags_free(&d);
    return r;
}

int ar_cli_etcd(const char *cmd, const struct ar_settings *s, unsigned timeout_s,
                struct ar_etcd_settings *es, char **password)
{
    size_t n;
    int r;

    memset(es, 0, sizeof(*es));
    *password = NULL;
    if (!s->n_etcd_endpoints) {
        fprintf(stderr, "atrest %s: no etcd endpoints: give --etcd-servers or --settings\n", cmd);
        return -ENOENT;
    }
    for (size_t i = 0; i < s->n_etcd_endpoints && i < AR_ETCD_MAX_ENDPOINTS; i++) {
        const char *ep = s->etcd_endpoints[i];

        if (strncmp(ep, "http://", 7) && strncmp(ep, "https://", 8)) {
            fprintf(stderr,
                    "atrest %s: etcd endpoint \"%s\": must start with http:// or https://\n", cmd,
                    ep);
            return -EINVAL;
        }
        es->endpoints[es->n_endpoints++] = ep;
    }
    es->cacert = s->etcd_cafile;
    es->kv_json = s->etcd_json_gateway;
    es->cert = s->etcd_certfile;
    es->key = s->etcd_keyfile;
    es->request_timeout_ms = timeout_s * 1000u;
    if (!s->etcd_user)
        return 0;
    if (!s->etcd_password_file) {
        fprintf(stderr, "atrest %s: --etcd-user needs --etcd-password-file\n", cmd);
        return -EINVAL;
    }
    r = ar_file_read_locked(s->etcd_password_file, 4096, password, &n);
    if (r < 0) {
        fprintf(stderr, "atrest %s: cannot read the password file %s: %s\n", cmd,
                s->etcd_password_file, strerror(-r));
        return r;
    }
    while (n && ((*password)[n - 1] == '\n' || (*password)[n - 1] == '\r'))
        (*password)[--n] = '\0';
    es->username = s->etcd_user;
    es->password = *password;
    return 0;
}

int ar_cli_config(const char *cmd, const char *path, const struct ar_load_opts *lo,
                  struct ar_config **cfg)
{
    struct ar_diags d;
    char line[4096] = "";
    int r;

    ar_diags_init(&d);
    *cfg = NULL;
    r = ar_config_load_file(path, lo, cfg, &d);
    if (r < 0 || d.nerrors > 0) {
        for (size_t i = 0; i < d.n && !line[0]; i++)
            if (d.v[i].severity == AR_SEV_ERROR)
                ar_diag_format(&d.v[i], line, sizeof(line));
        if (!line[0])
            snprintf(line, sizeof(line), "%s: %s", path, strerror(r < 0 ? -r : EINVAL));
        fprintf(stderr, "atrest %s: invalid config: %s%s\n", cmd, line,
                d.nerrors > 1 ? " (and more: run atrest lint)" : "");
        *cfg = ar_config_unref(*cfg);
        r = r < 0 ? r : -EINVAL;
    }
    ar_diags_free(&d);
    return r;
}
