/*
 * fuzz/fuzz_proof_answer.c: what the canary proof (agent/proof.h) makes of an API server's
 * answer body, on arbitrary bytes (the API server is a peer: untrusted input). The verdict is
 * -1, 0 or 1, and 1 only for a body holding the probe; the texts that go into the status and
 * the log are NUL-terminated, one line of printable ASCII, within their buffer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/proof.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define PROBE "cHJvYmUtMDEyMzQ1Njc4OQ=="

static void check_line(const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);

    if (n == cap)
        abort();
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[200], msg[200];
    int r;

    memset(why, 'x', sizeof(why));
    r = ar_proof_canary_matches(PROBE, (const char *)data, size, why, sizeof(why));
    if (r < -1 || r > 1)
        abort();
    check_line(why, sizeof(why));
    if (r == 1 && !memmem(data, size, PROBE, strlen(PROBE)) && !memmem(data, size, "\\u", 2))
        abort(); /* the probe matched without being in the body (escapes aside) */
    if (r == -1 && !why[0])
        abort();
    if (ar_proof_canary_matches(NULL, (const char *)data, size, why, sizeof(why)) == 1)
        abort();
    memset(msg, 'x', sizeof(msg));
    if (ar_proof_peer_message((const char *)data, size, msg, sizeof(msg)) != msg)
        abort();
    check_line(msg, sizeof(msg));
    return 0;
}
