/* libFuzzer target: common/ipc.c frame decoding with arbitrary chunking.
 * Oracle: the frames seen and the result must not depend on how the stream
 * was split (one call with everything vs. many small calls). Each payload is
 * also parsed as the channel does (json_loadb, objects only).
 * Input: bytes 0-1 = chunking seed, byte 2 = callback failure position,
 * rest = the byte stream. */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ipc.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    uint64_t hash; /* FNV over (len, payload) of every frame */
    int frames;
    int fail_at; /* return -EINVAL for this frame (1-based), 0: never */
} sink_t;

static int on_frame(void *arg, const char *payload, size_t n)
{
    sink_t *s = arg;
    s->frames++;
    uint64_t h = s->hash ^ n;
    h *= 1099511628211ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)payload[i];
        h *= 1099511628211ull;
    }
    s->hash = h;
    if (n > 0) {
        json_error_t err;
        json_t *m = json_loadb(payload, n, 0, &err);
        if (m != NULL && json_is_object(m))
            (void)json_string_value(json_object_get(m, "t"));
        json_decref(m);
    }
    if (s->fail_at && s->frames == s->fail_at)
        return -EINVAL;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    fuzz_rng_t rng = {((uint32_t)data[0] << 8 | data[1]) + 1};
    int fail_at = data[2] & 7;
    const char *p = (const char *)data + 3;
    size_t n = size - 3;

    sink_t whole = {.hash = 1469598103934665603ull, .fail_at = fail_at};
    buf_t in1;
    buf_init(&in1);
    int rc1 = ipc_decode(&in1, p, n, on_frame, &whole);

    sink_t parts = {.hash = 1469598103934665603ull, .fail_at = fail_at};
    buf_t in2;
    buf_init(&in2);
    int rc2 = 0;
    size_t off = 0;
    while (off < n) {
        size_t k = fuzz_chunk(&rng, n - off);
        rc2 = ipc_decode(&in2, p + off, k, on_frame, &parts);
        off += k;
        if (rc2 < 0)
            break; /* the channel closes on the first error */
    }
    FUZZ_CHECK(rc1 == rc2);
    FUZZ_CHECK(whole.frames == parts.frames);
    FUZZ_CHECK(whole.hash == parts.hash);
    if (rc1 == 0) {
        /* What is left over is the incomplete tail: same either way. */
        FUZZ_CHECK(in1.len == in2.len);
        FUZZ_CHECK(in1.len < 4 ||
                   in1.len <
                       4 + (size_t)((unsigned char)in1.data[0] << 24 | (unsigned char)in1.data[1] << 16 |
                                    (unsigned char)in1.data[2] << 8 | (unsigned char)in1.data[3]));
        /* Round trip: re-encoding what we got and decoding it again works. */
        buf_t enc;
        buf_init(&enc);
        FUZZ_CHECK(ipc_encode(&enc, "{\"t\":\"x\"}", 9) == 0);
        sink_t again = {.hash = 1469598103934665603ull};
        buf_t in3;
        buf_init(&in3);
        FUZZ_CHECK(ipc_decode(&in3, enc.data, enc.len, on_frame, &again) == 0);
        FUZZ_CHECK(again.frames == 1 && in3.len == 0);
        buf_free(&in3);
        buf_free(&enc);
    } else {
        FUZZ_CHECK(rc1 == -EMSGSIZE || rc1 == -EINVAL);
    }
    buf_free(&in1);
    buf_free(&in2);
    return 0;
}
