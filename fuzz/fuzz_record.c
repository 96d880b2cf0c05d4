/*
 * fuzz/fuzz_record.c: the rotation records (coord/record.h) on arbitrary bytes. A record that
 * parses must build again, and the built text must parse back to the same struct (what one
 * agent accepts, it could have written itself).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "coord/record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ROUND_TRIP(type, parse, build)                                                             \
    do {                                                                                           \
        type r, back;                                                                              \
        char *s;                                                                                   \
        if (parse((const char *)data, size, &r) == 0) {                                            \
            if (build(&r, &s) < 0)                                                                 \
                abort();                                                                           \
            if (parse(s, strlen(s), &back) < 0 || memcmp(&r, &back, sizeof(r)))                    \
                abort();                                                                           \
            free(s);                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ROUND_TRIP(struct ar_rotation_rec, ar_rotation_rec_parse, ar_rotation_rec_build);
    ROUND_TRIP(struct ar_ack_rec, ar_ack_rec_parse, ar_ack_rec_build);
    ROUND_TRIP(struct ar_abort_rec, ar_abort_rec_parse, ar_abort_rec_build);
    ROUND_TRIP(struct ar_history_rec, ar_history_rec_parse, ar_history_rec_build);
    return 0;
}
