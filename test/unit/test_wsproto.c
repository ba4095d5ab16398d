/* Unit tests for common/wsproto.c: frame headers and the upgrade accept key. */
#include "unit.h"

#include <string.h>

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

UNIT_MAIN(cmocka_unit_test(test_accept_rfc6455), cmocka_unit_test(test_frame_header))
