/* Unit tests for workers/ingest/backfill.c: REST pages into trades. */
#include "unit.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "config.h"
#include "msg.h"
#include "backfill.h"

static void test_backfill_pages(void **state)
{
    (void)state;
    norm_trade_t *v;
    int n;
    buf_t b;
    buf_init(&b);
    static const struct {
        int ex, days;
        const char *market, *cursor, *want;
    } paths[] = {
        {EX_UPBIT, 0, "KRW-BTC", "", "/v1/trades/ticks?market=KRW-BTC&count=200"},
        {EX_BITHUMB, 0, "KRW-BTC", "17303368620470000",
         "/v1/trades/ticks?market=KRW-BTC&count=200&cursor=17303368620470000"},
        {EX_UPBIT, 1, "KRW-BTC", "", "/v1/trades/ticks?market=KRW-BTC&count=200&days_ago=1"},
        {EX_BITHUMB, 2, "KRW-BTC", "5", "/v1/trades/ticks?market=KRW-BTC&count=200&cursor=5&daysAgo=2"},
        {EX_BINANCE, 0, "BTCUSDT", "28457",
         "/api/v3/historicalTrades?symbol=BTCUSDT&limit=1000&fromId=28457"},
        {EX_BINANCE, 0, "BTCUSDT", "", "/api/v3/trades?symbol=BTCUSDT&limit=1000"},
        {EX_COINBASE, 0, "BTC-USD", "1700000000",
         "/api/v3/brokerage/market/products/BTC-USD/ticker?limit=1000&end=1700000000"},
    };
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        buf_reset(&b);
        assert_int_equal(backfill_page_path(paths[i].ex, paths[i].market, paths[i].cursor, paths[i].days, &b),
                         0);
        assert_string_equal(b.data, paths[i].want);
    }
    buf_free(&b);

    /* Upbit: 17-digit sequential_id (> 2^53) kept exact, BID = buy */
    static const char UP[] =
        "[{\"market\":\"KRW-BTC\",\"trade_date_utc\":\"2024-10-31\",\"trade_time_utc\":\"01:07:42\","
        "\"timestamp\":1730336862047,\"trade_price\":100473000.0,\"trade_volume\":0.00014208,"
        "\"prev_closing_price\":100571000.0,\"change_price\":-98000.0,\"ask_bid\":\"BID\","
        "\"sequential_id\":17303368620470001}]";
    assert_int_equal(backfill_parse_page(EX_UPBIT, UP, strlen(UP), &v, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].trade_id, "17303368620470001");
    assert_string_equal(v[0].price, "100473000");
    assert_string_equal(v[0].qty, "0.00014208");
    assert_string_equal(v[0].side, "buy");
    assert_string_equal(v[0].symbol, "BTC-KRW");
    assert_true(v[0].ts == 1730336862047LL && v[0].backfill);
    free(v);
    static const char BN[] =
        "[{\"id\":28457,\"price\":\"4.00000100\",\"qty\":\"12.00000000\",\"quoteQty\":"
        "\"48.000012\",\"time\":1499865549590,\"isBuyerMaker\":true,\"isBestMatch\":true}]";
    assert_int_equal(backfill_parse_page(EX_BINANCE, BN, strlen(BN), &v, &n), 0);
    assert_string_equal(v[0].trade_id, "28457");
    assert_string_equal(v[0].price, "4.00000100");
    assert_string_equal(v[0].side, "sell");
    free(v);
    static const char CB[] =
        "{\"trades\":[{\"trade_id\":\"10438098\",\"product_id\":\"BTC-USD\",\"price\":\"68900.5\",\"size\":"
        "\"0.0015\",\"time\":\"2026-04-07T14:30:02.789012Z\",\"side\":\"BUY\",\"exchange\":\"coinbase\"}],"
        "\"best_bid\":\"68900\",\"best_ask\":\"68901\"}";
    assert_int_equal(backfill_parse_page(EX_COINBASE, CB, strlen(CB), &v, &n), 0);
    assert_string_equal(v[0].trade_id, "10438098");
    assert_string_equal(v[0].symbol, "BTC-USD");
    assert_true(v[0].ts == 1775572202789LL);
    free(v);
    /* not a page: Upbit's plain-text 429 body, an error object */
    assert_int_equal(backfill_parse_page(EX_UPBIT, "Too many API requests.", 22, &v, &n), -EPROTO);
    assert_int_equal(backfill_parse_page(EX_BINANCE, "{\"code\":-1121}", 14, &v, &n), -EPROTO);
    assert_int_equal(backfill_parse_page(EX_UPBIT, "[{\"market\":1}]", 14, &v, &n), -EPROTO);
}

UNIT_MAIN(cmocka_unit_test(test_backfill_pages))
