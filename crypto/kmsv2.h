/*
 * crypto/kmsv2.h: the KMS v2 EncryptedObject (shared spec 1.7), parsed without a protobuf
 * library. Tolerant of field order, repeated fields (last wins) and unknown fields; validated
 * with kube-apiserver's rules and error texts.
 */
#ifndef ATREST_CRYPTO_KMSV2_H
#define ATREST_CRYPTO_KMSV2_H

#include <stddef.h>
#include <stdint.h>

#define AR_KMSV2_MAX_ANNOTATIONS 64

struct ar_kmsv2_span {
    const uint8_t *p; /* points into the parsed input */
    size_t n;
};

struct ar_kmsv2_info {
    struct ar_kmsv2_span encrypted_data;
    struct ar_kmsv2_span key_id;
    struct ar_kmsv2_span encrypted_dek_source;
    int dek_source_type; /* 0 AES_GCM_KEY, 1 HKDF_SHA256_XNONCE_AES_GCM_SEED */
    size_t nannotations;
    struct ar_kmsv2_span ann_key[AR_KMSV2_MAX_ANNOTATIONS];
    struct ar_kmsv2_span ann_value[AR_KMSV2_MAX_ANNOTATIONS];
};

/* Parse and validate. 0 or -EBADMSG with kube-apiserver's text in err (errlen bytes). */
int ar_kmsv2_parse(const uint8_t *p, size_t n, struct ar_kmsv2_info *out, char *err, size_t errlen);

#endif
