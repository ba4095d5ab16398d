/* Unit tests for workers/fanout/auth.c: the channel grants a token carries. */
#include "unit.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "jwt.h"

static void test_grant_patterns(void **state)
{
    (void)state;
    auth_grant_t g;
    json_t *c =
        json_pack("{s:[s,s], s:i}", "channels", "ticker.upbit.*", "trade.*.BTC-KRW", "exp", 1700000600);
    assert_int_equal(auth_grant_from_claims(c, "channels", 1000, &g), 0);
    assert_true(g.restricted);
    assert_int_equal(g.n, 2);
    assert_int_equal(g.exp_ms, 1700000601000LL);
    assert_true(auth_channel_allowed(&g, "ticker.upbit.BTC-KRW"));
    assert_true(auth_channel_allowed(&g, "ticker.upbit.*"));
    assert_true(auth_channel_allowed(&g, "trade.binance.BTC-KRW"));
    assert_false(auth_channel_allowed(&g, "ticker.binance.BTC-USDT"));
    assert_false(auth_channel_allowed(&g, "ticker.*.BTC-KRW")); /* wider than the grant */
    assert_false(auth_channel_allowed(&g, "orderbook.upbit.BTC-KRW"));
    char bad[64];
    const char *req = "{\"op\":\"subscribe\",\"channels\":[\"ticker.upbit.BTC-KRW\"],\"since\":{\"trade."
                      "upbit.ETH-KRW\":3}}";
    assert_int_equal(auth_check_request(&g, req, strlen(req), bad, sizeof bad), -EACCES);
    assert_string_equal(bad, "trade.upbit.ETH-KRW");
    req = "{\"op\":\"subscribe\",\"channel\":\"ticker.upbit.ETH-KRW\"}";
    assert_int_equal(auth_check_request(&g, req, strlen(req), bad, sizeof bad), 0);
    req = "{\"op\":\"unsubscribe\",\"channels\":[\"orderbook.x.Y-Z\"]}";
    assert_int_equal(auth_check_request(&g, req, strlen(req), bad, sizeof bad), 0);
    req = "not json";
    assert_int_equal(auth_check_request(&g, req, strlen(req), bad, sizeof bad), 0);
    auth_grant_free(&g);
    json_decref(c);

    /* A string claim, "*" for everything, absent claim, bad types. */
    c = json_pack("{s:s}", "chans", "ticker.upbit.BTC-KRW, trade.upbit.BTC-KRW");
    assert_int_equal(auth_grant_from_claims(c, "chans", 0, &g), 0);
    assert_int_equal(g.n, 2);
    assert_true(auth_channel_allowed(&g, "trade.upbit.BTC-KRW"));
    auth_grant_free(&g);
    json_decref(c);
    c = json_pack("{s:[s]}", "channels", "*");
    assert_int_equal(auth_grant_from_claims(c, "channels", 0, &g), 0);
    assert_true(auth_channel_allowed(&g, "orderbook.coinbase.BTC-USD"));
    auth_grant_free(&g);
    json_decref(c);
    c = json_pack("{s:s}", "sub", "x");
    assert_int_equal(auth_grant_from_claims(c, "channels", 0, &g), 0);
    assert_false(g.restricted);
    assert_true(auth_channel_allowed(&g, "ticker.a.B-C"));
    auth_grant_free(&g);
    json_decref(c);
    c = json_pack("{s:i}", "channels", 5);
    assert_int_equal(auth_grant_from_claims(c, "channels", 0, &g), -EINVAL);
    json_decref(c);
    c = json_pack("{s:[s]}", "channels", "not a channel");
    assert_int_equal(auth_grant_from_claims(c, "channels", 0, &g), -EINVAL);
    json_decref(c);
}

UNIT_MAIN(cmocka_unit_test(test_grant_patterns))
