/* REST backfill of one exchange feed: after the ingest starts and after each
 * exchange reconnect, the trades of every trade channel since its last
 * published trade are fetched from the exchange's public REST recent-trades
 * endpoint ([exchange.NAME] rest_url; exchanges.md "REST recent trades"),
 * oldest first, marked "backfill":true, de-duplicated, while the channel's
 * live trades are held (feed.c). What the endpoint no longer serves is
 * announced as a gap. Requests stay under [exchange.NAME] rest_rate (a token
 * bucket) and wait out 429/418 (Retry-After). */
#ifndef BACKFILL_H
#define BACKFILL_H
#include <stddef.h>
#include "connector.h"
#include "ingest.h"

/* NULL (no error) when rest_url is empty or the feed has no trade channel. */
int backfill_create(ingest_t *in, feed_t *f, int ex, const connector_t *conn, backfill_t **out);
/* The exchange connection (re)opened: hold and backfill every trade channel
 * with a known last trade. */
void backfill_begin(backfill_t *b);
/* Cancel what runs, release held trades, free (after the loop runs once). */
void backfill_stop(backfill_t *b);

/* ---- pure, for unit tests ---- */
/* The request path+query for a page of market (exchange spelling); cursor:
 * Upbit/Bithumb sequential_id, Binance fromId, Coinbase end (seconds), or
 * "" for the newest page; days_ago: Upbit/Bithumb's UTC day (0: today). */
int backfill_page_path(int ex, const char *market, const char *cursor, int days_ago, buf_t *out);
/* Parse a 200 answer into trades (exchange order). 0 or the malformed reason
 * as a negative errno (-EPROTO). *out is malloc'ed. */
int backfill_parse_page(int ex, const char *body, size_t len, norm_trade_t **out, int *n);

#endif
