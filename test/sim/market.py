"""Seeded market model: price random walk, trades, 24 h statistics and an
order book whose changes can be reported as level deltas (Coinbase level2)
or as full top-N snapshots (Upbit, Bithumb, Binance)."""

import collections
import random
import time
from decimal import Decimal

BOOK_LEVELS = 50
LOT = Decimal("0.00000001")

# rough starting prices by base and quote
START = {
    "BTC": {"KRW": 95_000_000, "USDT": 67_000, "USD": 67_000, "USDC": 67_000, "EUR": 62_000},
    "ETH": {"KRW": 4_500_000, "USDT": 3_500, "USD": 3_500, "USDC": 3_500, "BTC": "0.052", "EUR": 3_200},
    "XRP": {"KRW": 800, "USDT": "0.52", "USD": "0.52", "BTC": "0.0000078"},
    "SOL": {"KRW": 200_000, "USDT": 150, "USD": 150, "BTC": "0.0022"},
    "DOGE": {"KRW": 200, "USDT": "0.15", "USD": "0.15"},
}
DEFAULT_START = {"KRW": 10_000, "USDT": 10, "USD": 10, "BTC": "0.0005"}


def krw_tick(p):
    """Upbit KRW market price unit."""
    for limit, tick in ((2_000_000, "1000"), (1_000_000, "500"), (500_000, "100"),
                        (100_000, "50"), (10_000, "10"), (1_000, "1"), (100, "0.1"),
                        (10, "0.01"), (1, "0.001")):
        if p >= limit:
            return Decimal(tick)
    return Decimal("0.0001")


def tick_for(quote, price):
    if quote == "KRW":
        return krw_tick(price)
    if quote in ("BTC", "ETH"):
        return Decimal("0.00000001")
    if price >= 100:
        return Decimal("0.01")
    if price >= 1:
        return Decimal("0.001")
    return Decimal("0.0001")


Trade = collections.namedtuple("Trade", "id price qty side ts")


class Market:
    """One market of one exchange. Prices are kept as integer ticks and sizes
    as integer lots of 1e-8 so every value is an exact decimal."""

    def __init__(self, exchange, symbol, base, quote, seed):
        self.exchange = exchange
        self.symbol = symbol
        self.base = base
        self.quote = quote
        self.rng = random.Random(f"{seed}:{exchange}:{symbol}")
        start = Decimal(str(START.get(base, DEFAULT_START).get(quote, DEFAULT_START.get(quote, 10))))
        start *= Decimal(str(round(self.rng.uniform(0.97, 1.03), 4)))
        self.tick = tick_for(quote, start)
        self.last = int(start / self.tick)
        self.step_ticks = max(1, int(self.last * 0.00015))
        self.min_ticks = max(10, self.last // 10)
        r = self.rng
        self.open = self.last + r.randint(-30, 30) * self.step_ticks
        self.prev_close = self.open
        self.high = max(self.open, self.last) + r.randint(0, 40) * self.step_ticks
        self.low = min(self.open, self.last) - r.randint(0, 40) * self.step_ticks
        self.volume24 = r.randint(10_000, 900_000) * 10**6     # lots
        self.volume_today = self.volume24 // 2
        self.quote_vol24 = self.price(self.last) * self.volume24 * LOT
        self.quote_vol_today = self.quote_vol24 / 2
        self.high52 = self.high * 2
        self.low52 = max(1, self.low // 2)
        self.trade_id = r.randint(100_000_000, 3_000_000_000)
        self.seq_sub = 0
        self.update_id = r.randint(1_000_000_000, 9_000_000_000)
        self.trades = collections.deque(maxlen=50)      # Coinbase's snapshot
        self.history = collections.deque(maxlen=1000)   # REST recent trades (--rest-window)
        self.made = collections.deque(maxlen=1_000_000)  # every trade made: the truth
        self.bids = {}   # ticks -> lots
        self.asks = {}
        self.acc_ask = self.volume_today // 2
        self.acc_bid = self.volume_today - self.acc_ask
        self.last_trade = None
        self.last_ts = 0
        self._rebuild_book(initial=True)
        self.trade(time.time_ns() // 1_000_000)

    # -- helpers
    def price(self, ticks):
        return (self.tick * ticks).normalize() if ticks else Decimal(0)

    def qty(self, lots):
        return (LOT * lots)

    def _rand_lots(self):
        r = self.rng
        x = r.random()
        if x < 0.6:
            return r.randint(1_000, 5_000_000)            # 0.00001 .. 0.05
        if x < 0.95:
            return r.randint(5_000_000, 200_000_000)      # .. 2
        return r.randint(200_000_000, 5_000_000_000)      # .. 50

    # -- book
    def _rebuild_book(self, initial=False):
        """Move the book around self.last. Returns deltas [(side, ticks, lots)]
        where lots == 0 removes the level."""
        r = self.rng
        spread = r.randint(1, 2)
        best_bid = self.last - (0 if r.random() < 0.5 else 1)
        best_ask = best_bid + spread
        want_bids, want_asks = set(), set()
        p = best_bid
        while len(want_bids) < BOOK_LEVELS and p > 0:
            want_bids.add(p)
            p -= 1 if r.random() < 0.85 else 2
        p = best_ask
        while len(want_asks) < BOOK_LEVELS:
            want_asks.add(p)
            p += 1 if r.random() < 0.85 else 2
        deltas = []
        for side, book, want in (("bid", self.bids, want_bids), ("ask", self.asks, want_asks)):
            for t in [t for t in book if t not in want]:
                del book[t]
                deltas.append((side, t, 0))
            for t in sorted(want):
                if t not in book:
                    book[t] = self._rand_lots()
                    deltas.append((side, t, book[t]))
                elif not initial and r.random() < 0.15:
                    book[t] = self._rand_lots()
                    deltas.append((side, t, book[t]))
        return deltas

    def top(self, n):
        bids = sorted(self.bids.items(), key=lambda kv: -kv[0])[:n]
        asks = sorted(self.asks.items(), key=lambda kv: kv[0])[:n]
        return bids, asks

    # -- trades
    def trade(self, ts):
        r = self.rng
        side = "buy" if r.random() < 0.5 else "sell"
        if self.asks and self.bids:
            px = min(self.asks) if side == "buy" else max(self.bids)
        else:
            px = self.last
        lots = self._rand_lots()
        self.trade_id += 1
        self.last = px
        self.high = max(self.high, px)
        self.low = min(self.low, px)
        self.volume24 += lots
        self.volume_today += lots
        if side == "buy":
            self.acc_bid += lots
        else:
            self.acc_ask += lots
        notional = self.price(px) * self.qty(lots)
        self.quote_vol24 += notional
        self.quote_vol_today += notional
        t = Trade(self.trade_id, px, lots, side, ts)
        self.trades.append(t)
        self.history.append(t)
        self.made.append(t)
        self.last_trade = t
        return t

    def step(self, ts):
        """Advance one tick: walk the price, trade once, move the book."""
        r = self.rng
        move = r.choice((-2, -1, -1, 0, 0, 1, 1, 2)) * self.step_ticks
        # mean-revert gently toward the open so long runs stay plausible
        if self.last > self.open * 1.05:
            move -= self.step_ticks
        elif self.last < self.open * 0.95:
            move += self.step_ticks
        self.last = max(self.min_ticks, self.last + move)
        deltas = self._rebuild_book()
        t = self.trade(ts)
        self.update_id += r.randint(1, 40)
        self.last_ts = ts
        return {"trade": t, "deltas": deltas}

    # -- derived statistics
    def change(self):
        diff = self.last - self.prev_close
        state = "RISE" if diff > 0 else "FALL" if diff < 0 else "EVEN"
        rate = (Decimal(diff) / Decimal(self.prev_close)) if self.prev_close else Decimal(0)
        return state, diff, rate
