/* Channel names of the bench, shared by publish.c and loadgen.c:
 * KIND.sim.S<i>-KRW for i = 0..channels-1. --kind mixed gives channel i the
 * kind of i % 10: 0-4 trade, 5-7 orderbook, 8-9 ticker (at one rate per
 * channel, half the messages are trades, 30% books and 20% tickers). */
#ifndef BENCH_CHANNELS_H
#define BENCH_CHANNELS_H
#include <stdio.h>
#include <string.h>

enum { K_TRADE, K_BOOK, K_TICKER, K_MIXED };
static const char *const kind_names[] = {"trade", "orderbook", "ticker", "mixed"};

/* The kind named s, or -1. */
static inline int kind_parse(const char *s)
{
    for (int k = 0; k <= K_MIXED; k++)
        if (!strcmp(s, kind_names[k]))
            return k;
    return -1;
}

static inline int channel_kind(int kind, int ch)
{
    if (kind != K_MIXED)
        return kind;
    int r = ch % 10;
    return r < 5 ? K_TRADE : r < 8 ? K_BOOK : K_TICKER;
}

static inline void channel_name(int kind, int ch, char *out, size_t n)
{
    snprintf(out, n, "%s.sim.S%d-KRW", kind_names[channel_kind(kind, ch)], ch);
}
#endif
