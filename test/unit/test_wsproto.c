/* Unit tests for common/wsproto.c: frame headers and the upgrade accept key. */
#include "unit.h"

#include <string.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <zlib.h>

#include "rbuf.h"
#include "wsproto.h"

static void test_frame_header(void **state)
{
    (void)state;
    char big[70000];
    memset(big, 'a', sizeof big);
    rbuf_t *b = wss_frame(WSS_OP_TEXT, big, 125);
    assert_int_equal(b->len, 127);
    assert_int_equal((unsigned char)b->data[0], 0x81);
    assert_int_equal((unsigned char)b->data[1], 125);
    rbuf_unref(b);
    b = wss_frame(WSS_OP_TEXT, big, 300);
    assert_int_equal(b->len, 304);
    assert_int_equal((unsigned char)b->data[1], 126);
    assert_int_equal(((unsigned char)b->data[2] << 8) | (unsigned char)b->data[3], 300);
    rbuf_unref(b);
    b = wss_frame(WSS_OP_TEXT, big, sizeof big);
    assert_int_equal(b->len, sizeof big + 10);
    assert_int_equal((unsigned char)b->data[1], 127);
    rbuf_unref(b);
    char acc[29];
    /* RFC 6455 section 1.3 example */
    ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", acc);
    assert_string_equal(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void test_accept_rfc6455(void **state)
{
    (void)state;
    char out[29];
    ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#define FULL "permessage-deflate; server_no_context_takeover; client_no_context_takeover"

static void test_negotiate(void **state)
{
    (void)state;
    char r[128];
    assert_int_equal(ws_deflate_negotiate("permessage-deflate", r, sizeof r), 1);
    assert_string_equal(r, FULL);
    assert_int_equal(ws_deflate_negotiate("permessage-deflate; client_max_window_bits", r, sizeof r), 1);
    assert_string_equal(r, FULL);
    assert_int_equal(ws_deflate_negotiate(" permessage-deflate ;client_max_window_bits=\"12\" ; "
                                          "client_no_context_takeover;server_no_context_takeover",
                                          r, sizeof r),
                     1);
    assert_string_equal(r, FULL);
    assert_int_equal(ws_deflate_negotiate("permessage-deflate; server_max_window_bits=15", r, sizeof r), 1);
    assert_string_equal(r, FULL "; server_max_window_bits=15");
    /* the first offer we can honour */
    assert_int_equal(ws_deflate_negotiate("foo, permessage-deflate; server_max_window_bits=8, "
                                          "permessage-deflate; client_max_window_bits",
                                          r, sizeof r),
                     1);
    assert_string_equal(r, FULL);
    static const char *const no[] = {
        NULL,
        "",
        "x-webkit-deflate-frame",
        "permessage-deflatex",
        "permessage-deflate; server_max_window_bits=14",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=015",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=x",
        "permessage-deflate; client_max_window_bits; client_max_window_bits",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=\"\"",
        "permessage-deflate; unknown",
        "permessage-deflate; server_max_window_bits=10, permessage-deflate; bogus=1",
    };
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        if (ws_deflate_negotiate(no[i], r, sizeof r) != 0)
            fail_msg("accepted: %s", no[i] ? no[i] : "(null)");
    }
    /* an answer that does not fit declines rather than truncates */
    assert_int_equal(ws_deflate_negotiate("permessage-deflate", r, 20), 0);
}

/* Payload of a server frame; its header checked for FIN, RSV1, opcode. */
static const unsigned char *frame_payload(const rbuf_t *b, int rsv1, int opcode, size_t *len)
{
    const unsigned char *p = (const unsigned char *)b->data;
    assert_int_equal(p[0], 0x80 | (rsv1 ? 0x40 : 0) | opcode);
    assert_int_equal(p[1] & 0x80, 0); /* server frames are unmasked */
    unsigned l7 = p[1] & 0x7f;
    size_t h = l7 < 126 ? 2 : l7 == 126 ? 4 : 10, n = l7;
    if (l7 == 126)
        n = (size_t)p[2] << 8 | p[3];
    else if (l7 == 127)
        for (int i = (int)(n = 0); i < 8; i++)
            n = n << 8 | p[2 + i];
    assert_int_equal(h, ws_frame_header_len(n));
    assert_int_equal(h + n, b->len);
    *len = n;
    return p + h;
}

static void test_deflate_round_trip(void **state)
{
    (void)state;
    ws_deflater_t *dz;
    ws_inflater_t *iz;
    assert_int_equal(ws_deflater_new(6, &dz), 0);
    assert_int_equal(ws_inflater_new(&iz), 0);
    buf_t out;
    buf_init(&out);
    size_t sizes[] = {200, 1000, 20000, 300000};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        char *msg = malloc(n);
        assert_non_null(msg);
        for (size_t i = 0; i < n; i++)
            msg[i] = "[\"12345.6\",\"0.0012\"],"[(i * 7 + i / 13) % 21];
        /* twice through one deflater: no context carried over */
        for (int rep = 0; rep < 2; rep++) {
            rbuf_t *b = ws_deflate_frame(dz, 0x1, msg, n);
            assert_non_null(b);
            assert_true(b->len < n / 2);
            size_t zl;
            const unsigned char *z = frame_payload(b, 1, 0x1, &zl);
            /* independently inflatable: a fresh zlib stream, tail re-added */
            assert_int_equal(ws_inflate(iz, z, zl, n, &out), 0);
            assert_int_equal(out.len, n);
            assert_memory_equal(out.data, msg, n);
            assert_int_equal(out.data[n], '\0');
            /* one byte under the size: too big */
            assert_int_equal(ws_inflate(iz, z, zl, n - 1, &out), -EMSGSIZE);
            rbuf_unref(b);
        }
        free(msg);
    }
    /* binary opcode kept; incompressible data is not sent compressed */
    unsigned char rnd[4096];
    unsigned x = 12345;
    for (size_t i = 0; i < sizeof rnd; i++) {
        x = x * 1103515245u + 12345u;
        rnd[i] = (unsigned char)(x >> 16);
    }
    assert_null(ws_deflate_frame(dz, 0x2, rnd, sizeof rnd));
    memset(rnd, 'a', sizeof rnd);
    rbuf_t *b = ws_deflate_frame(dz, 0x2, rnd, sizeof rnd);
    assert_non_null(b);
    size_t zl;
    frame_payload(b, 1, 0x2, &zl);
    rbuf_unref(b);
    buf_free(&out);
    ws_inflater_free(iz);
    ws_deflater_free(dz);
}

/* Client-side compression as zlib does it: (payload, length) without the
 * tail; final != 0 ends with a BFINAL block instead (7.2.3.3). */
static size_t client_deflate(const void *in, size_t n, unsigned char *out, size_t cap, int final)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    assert_int_equal(deflateInit2(&zs, 9, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY), Z_OK);
    zs.next_in = (Bytef *)(uintptr_t)in;
    zs.avail_in = (uInt)n;
    zs.next_out = out;
    zs.avail_out = (uInt)cap;
    assert_int_equal(deflate(&zs, final ? Z_FINISH : Z_SYNC_FLUSH), final ? Z_STREAM_END : Z_OK);
    size_t k = cap - zs.avail_out;
    deflateEnd(&zs);
    if (!final) {
        assert_memory_equal(out + k - 4, "\x00\x00\xff\xff", 4);
        k -= 4;
    }
    return k;
}

static void test_inflate_bounds(void **state)
{
    (void)state;
    ws_inflater_t *iz;
    assert_int_equal(ws_inflater_new(&iz), 0);
    buf_t out;
    buf_init(&out);
    /* a deflate bomb: 4 MB of spaces in a few KB, stopped at the bound */
    size_t big = 4 << 20;
    char *sp = malloc(big);
    unsigned char *z = malloc(big);
    assert_non_null(sp);
    assert_non_null(z);
    memset(sp, ' ', big);
    size_t zl = client_deflate(sp, big, z, big, 0);
    assert_true(zl < 8192);
    assert_int_equal(ws_inflate(iz, z, zl, 65536, &out), -EMSGSIZE);
    assert_true(out.len <= 65537 && out.cap < 4 * 65536); /* never inflated past the bound */
    /* exactly at the bound is fine */
    zl = client_deflate(sp, 65536, z, big, 0);
    assert_int_equal(ws_inflate(iz, z, zl, 65536, &out), 0);
    assert_int_equal(out.len, 65536);
    /* a final block (BFINAL) instead of a sync flush */
    zl = client_deflate("{\"op\":\"ping\"}", 13, z, big, 1);
    assert_int_equal(ws_inflate(iz, z, zl, 100, &out), 0);
    assert_string_equal(out.data, "{\"op\":\"ping\"}");
    /* an empty message */
    zl = client_deflate("", 0, z, big, 0);
    assert_int_equal(ws_inflate(iz, z, zl, 100, &out), 0);
    assert_int_equal(out.len, 0);
    /* garbage, and a valid stream with junk after its final block */
    assert_int_equal(ws_inflate(iz, "\xff\xff\xff\xff\xff", 5, 100, &out), -EINVAL);
    zl = client_deflate("abc", 3, z, big, 0);
    z[zl] = 0x07; /* reserved block type 3 */
    assert_int_equal(ws_inflate(iz, z, zl + 1, 100, &out), -EINVAL);
    free(sp);
    free(z);
    buf_free(&out);
    ws_inflater_free(iz);
}

static void test_utf8(void **state)
{
    (void)state;
    static const char *const ok[] = {
        "", "plain", "caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xed\x9f\xbf", "\xf4\x8f\xbf\xbf"};
    static const char *const bad[] = {"\xff",
                                      "\xc3",
                                      "\xc0\x80",
                                      "\xe0\x80\x80",
                                      "\xed\xa0\x80",
                                      "\xf4\x90\x80\x80",
                                      "\xf5\x80\x80\x80",
                                      "\xe2\x82",
                                      "a\x80"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        assert_true(ws_utf8_valid((const unsigned char *)ok[i], strlen(ok[i])));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (ws_utf8_valid((const unsigned char *)bad[i], strlen(bad[i])))
            fail_msg("valid: bad[%zu]", i);
}

static void test_frame_header_rsv(void **state)
{
    (void)state;
    unsigned char h[10];
    assert_int_equal(ws_frame_header(h, 0x81, 125), 2);
    assert_int_equal(h[1], 125);
    assert_int_equal(ws_frame_header(h, 0xc1, 126), 4);
    assert_int_equal(h[0], 0xc1);
    assert_int_equal(h[1], 126);
    assert_int_equal(h[2] << 8 | h[3], 126);
    assert_int_equal(ws_frame_header(h, 0x82, 65536), 10);
    assert_int_equal(h[1], 127);
    assert_int_equal(h[7], 1);
    assert_int_equal(h[8], 0);
}

UNIT_MAIN(cmocka_unit_test(test_accept_rfc6455), cmocka_unit_test(test_frame_header),
          cmocka_unit_test(test_negotiate), cmocka_unit_test(test_deflate_round_trip),
          cmocka_unit_test(test_inflate_bounds), cmocka_unit_test(test_utf8),
          cmocka_unit_test(test_frame_header_rsv))
