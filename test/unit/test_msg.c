/* Unit tests for common/msg.c: the message builder and msg_parse_meta,
 * shortest round-trip number text, channel names (decimals: test_decimal.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "msg.h"

static void test_fmt_double(void **state)
{
    (void)state;
    static const struct {
        double v;
        const char *want;
    } t[] = {
        {6747000, "6747000"},
        {6.747e6, "6747000"},
        {0.06499468, "0.06499468"},
        {0.1 + 0.2, "0.30000000000000004"},
        {1e-8, "0.00000001"},
        {123456789.12345679, "123456789.12345679"},
        {-0.0012, "-0.0012"},
        {-31373000, "-31373000"},
        {0, "0"},
        {0.5, "0.5"},
        {100, "100"},
        {1e21, "1000000000000000000000"},
        {65651848085.94966, "65651848085.94966"},
        {2.5e-7, "0.00000025"},
        {1234.5, "1234.5"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        char out[64];
        assert_int_equal(msg_fmt_double(t[i].v, out, sizeof(out)), 0);
        assert_string_equal(out, t[i].want);
        assert_true(strtod(out, NULL) == t[i].v);
    }
    char out[64];
    assert_int_equal(msg_fmt_double(1.0 / 0.0, out, sizeof(out)), -EINVAL);
    assert_int_equal(msg_fmt_double(1e300, out, sizeof(out)), -ERANGE); /* 301 digits */
    assert_int_equal(msg_fmt_double(123456.0, out, 4), -ERANGE);
}

static void test_channels(void **state)
{
    (void)state;
    static const struct {
        const char *ch;
        int wildcard, valid;
    } t[] = {
        {"ticker.upbit.BTC-KRW", 0, 1},
        {"status.binance", 0, 1},
        {"ticker.upbit", 0, 0},
        {"ticker.upbit.BTC-KRW.x", 0, 0},
        {"ticker..BTC-KRW", 0, 0},
        {"", 0, 0},
        {"ticker.up bit.BTC-KRW", 0, 0},
        {"ticker.*.BTC-KRW", 0, 0},
        {"ticker.*.BTC-KRW", 1, 1},
        {"*.*.*", 1, 1},
        {"status.*", 1, 1},
        {"tick*.upbit.BTC-KRW", 1, 0},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        assert_int_equal(msg_channel_valid(t[i].ch, t[i].wildcard), t[i].valid);
    char longch[200];
    memset(longch, 'a', sizeof(longch) - 1);
    longch[sizeof(longch) - 1] = 0;
    longch[3] = '.';
    longch[7] = '.';
    assert_false(msg_channel_valid(longch, 0));

    assert_true(msg_channel_match("ticker.*.BTC-KRW", "ticker.upbit.BTC-KRW"));
    assert_true(msg_channel_match("ticker.*.BTC-KRW", "ticker.bithumb.BTC-KRW"));
    assert_false(msg_channel_match("ticker.*.BTC-KRW", "trade.upbit.BTC-KRW"));
    assert_false(msg_channel_match("ticker.*.BTC-KRW", "ticker.upbit.ETH-KRW"));
    assert_true(msg_channel_match("*.*.*", "orderbook.binance.BTC-USDT"));
    assert_true(msg_channel_match("trade.binance.BTC-USDT", "trade.binance.BTC-USDT"));
    assert_false(msg_channel_match("trade.binance.BTC", "trade.binance.BTC-USDT"));
    assert_false(msg_channel_match("*.*", "trade.binance.BTC-USDT"));
    assert_false(msg_channel_match("*.*.*", "status.binance"));
    assert_true(msg_channel_match("status.*", "status.binance"));
    assert_false(msg_channel_match("ticker.*.BTC-KRW", "ticker..BTC-KRW"));
}

static void test_build_and_meta(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    msg_begin(&b, "trade", "upbit", "BTC-KRW", 42, 7, 1676965262139, 1676965262200);
    msg_str(&b, "price", "31373000");
    msg_str(&b, "side", "buy");
    msg_int(&b, "n", -3);
    msg_raw(&b, "bids", "[[\"1\",\"2\"]]");
    msg_end(&b);
    assert_string_equal(b.data, "{\"channel\":\"trade.upbit.BTC-KRW\",\"type\":\"trade\",\"exchange\":"
                                "\"upbit\",\"symbol\":\"BTC-KRW\",\"seq\":42,\"epoch\":7,\"ts\":"
                                "1676965262139,\"recv_ts\":1676965262200,\"price\":\"31373000\","
                                "\"side\":\"buy\",\"n\":-3,\"bids\":[[\"1\",\"2\"]]}");
    msg_meta_t m;
    assert_int_equal(msg_parse_meta(b.data, b.len, &m), 0);
    assert_string_equal(m.channel, "trade.upbit.BTC-KRW");
    assert_string_equal(m.type, "trade");
    assert_int_equal(m.seq, 42);
    assert_int_equal(m.epoch, 7);
    assert_int_equal(m.ts, 1676965262139);
    assert_int_equal(m.recv_ts, 1676965262200);

    buf_reset(&b);
    msg_begin(&b, "status", "binance", NULL, 3, 7, 10, 11);
    msg_str(&b, "state", "connected");
    msg_end(&b);
    assert_string_equal(b.data, "{\"channel\":\"status.binance\",\"type\":\"status\",\"exchange\":"
                                "\"binance\",\"seq\":3,\"epoch\":7,\"ts\":10,\"recv_ts\":11,"
                                "\"state\":\"connected\"}");
    assert_int_equal(msg_parse_meta(b.data, b.len, &m), 0);
    assert_string_equal(m.channel, "status.binance");

    static const char *bad[] = {
        "[1]",
        "{\"channel\":1,\"type\":\"t\",\"seq\":1,\"epoch\":1}",
        "{\"channel\":\"a.b.c\",\"type\":\"t\",\"seq\":\"1\",\"epoch\":1}",
        "{\"channel\":\"a.b.c\",\"type\":\"t\",\"seq\":1}",
        "{\"channel\":",
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(msg_parse_meta(bad[i], strlen(bad[i]), &m), -EINVAL);
    buf_free(&b);
}

/* The prefix reader agrees with the full parse on what msg_begin writes, and
 * leaves everything else to it. */
static void test_read_prefix(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    msg_begin(&b, "orderbook", "binance", "BTC-USDT", 9007199254740993LL, -2, 0, 1676965262200);
    msg_raw(&b, "bids", "[[\"1\",\"2\"]]");
    msg_end(&b);
    msg_meta_t fast, full;
    assert_int_equal(msg_read_prefix(b.data, b.len, &fast), 0);
    assert_string_equal(fast.channel, "orderbook.binance.BTC-USDT");
    assert_string_equal(fast.type, "orderbook");
    assert_true(fast.seq == 9007199254740993LL && fast.epoch == -2 && fast.ts == 0 &&
                fast.recv_ts == 1676965262200);
    assert_int_equal(msg_parse_meta(b.data, b.len, &full), 0);
    assert_memory_equal(&fast, &full, sizeof(fast));

    buf_reset(&b);
    msg_begin(&b, "status", "upbit", NULL, 1, 3, 4, 5);
    msg_end(&b);
    assert_int_equal(msg_read_prefix(b.data, b.len, &fast), 0);
    assert_string_equal(fast.channel, "status.upbit");
    assert_int_equal(fast.recv_ts, 5);

    /* not msg_begin's form: the prefix reader declines, the full parse reads
     * it (or rejects it) */
    static const struct {
        const char *text;
        int full_ok;
    } other[] = {
        {"{\"type\":\"trade\",\"channel\":\"trade.a.B-C\",\"seq\":1,\"epoch\":2}", 1},
        {"{\"channel\":\"trade.a.B-C\",\"type\":\"trade\",\"exchange\":\"a\\u0041\",\"seq\":1,\"epoch\":2,"
         "\"ts\":3,\"recv_ts\":4}",
         1},
        {"{\"channel\":\"trade.a.B-C\",\"type\":\"trade\",\"exchange\":\"a\",\"seq\":12345678901234567890,"
         "\"epoch\":2,\"ts\":3,\"recv_ts\":4}",
         0},
        {"{\"channel\":\"trade.a.B-C\",\"type\":\"trade\",\"exchange\":\"a\",\"seq\":01,\"epoch\":2,\"ts\":3,"
         "\"recv_ts\":4}",
         0},
        {"{\"channel\":\"trade.a.B-C\",\"type\":\"trade\",\"exchange\":\"a\",\"seq\":1,\"epoch\":2,\"ts\":3,"
         "\"recv_ts\":4,\"price\":\"1\"",
         0},
        {"{\"channel\":\"trade.a.B-C\",\"type\":\"trade\",\"exchange\":\"a\",\"seq\":1.5,\"epoch\":2,\"ts\":"
         "3,"
         "\"recv_ts\":4}",
         0},
        {"{\"channel\":\"trade.a.B-C\",\"type\":\"trade\"", 0},
        {"", 0},
    };
    for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++) {
        assert_int_equal(msg_read_prefix(other[i].text, strlen(other[i].text), &fast), -EINVAL);
        assert_int_equal(msg_parse_meta(other[i].text, strlen(other[i].text), &full),
                         other[i].full_ok ? 0 : -EINVAL);
    }
    buf_free(&b);
}

/* The fanout forwards a message whose prefix it read only when the whole
 * message is one valid JSON object: garbage after a good prefix is refused. */
static void test_json_object_valid(void **state)
{
    (void)state;
    static const char *good[] = {
        "{}",
        " {\"a\":1} ",
        "{\"channel\":\"trade.upbit.BTC-KRW\",\"seq\":4,\"p\":\"1.5\",\"x\":[1,-2.5e3,true,false,null]}",
        "{\"s\":\"caf\xc3\xa9 \\u00e9 \\\" \\\\ \\/ \\n\",\"n\":{\"m\":[[]]}}",
        "{\"e\":\"\xf0\x9f\x98\x80\"}",
    };
    static const char *bad[] = {
        "",
        "[]",
        "{",
        "{\"a\":1,}",
        "{\"a\" 1}",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":-}",
        "{\"a\":tru}",
        "{\"a\":\"x}",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\\u12g4\"}",
        "{\"a\":1} x",
        "{\"a\":1}{}",
        "{a:1}",
        "{\"a\":\"\x01\"}",
        "{\"a\":\"\xc3\"}",
        "{\"a\":\"\xc0\xaf\"}",
        "{\"a\":\"\xed\xa0\x80\"}",
        "{\"a\":\"\xf4\x90\x80\x80\"}",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_true(msg_json_object_valid(good[i], strlen(good[i])));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (msg_json_object_valid(bad[i], strlen(bad[i])))
            fail_msg("accepted: %s", bad[i]);
    /* nesting: 64 levels pass, 65 do not */
    char deep[200];
    size_t n = 0;
    deep[n++] = '{';
    deep[n++] = '"';
    deep[n++] = 'a';
    deep[n++] = '"';
    deep[n++] = ':';
    for (int k = 0; k < 63; k++)
        deep[n++] = '[';
    for (int k = 0; k < 63; k++)
        deep[n++] = ']';
    deep[n++] = '}';
    assert_true(msg_json_object_valid(deep, n));
    memmove(deep + 6, deep + 5, n - 5);
    deep[5] = '[';
    memmove(deep + n + 1 - 1, deep + n - 1, 1);
    deep[n] = ']';
    deep[n + 1] = '}';
    assert_false(msg_json_object_valid(deep, n + 2));
    /* msg_parse_meta: a good prefix followed by garbage is refused */
    const char *tampered =
        "{\"channel\":\"ticker.upbit.BTC-KRW\",\"type\":\"ticker\",\"exchange\":\"upbit\","
        "\"symbol\":\"BTC-KRW\",\"seq\":4,\"epoch\":5,\"ts\":1,\"recv_ts\":2,\xde\x8f\"x\":1}";
    msg_meta_t m;
    assert_int_equal(msg_parse_meta(tampered, strlen(tampered), &m), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fmt_double),        cmocka_unit_test(test_channels),
        cmocka_unit_test(test_build_and_meta),    cmocka_unit_test(test_read_prefix),
        cmocka_unit_test(test_json_object_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
