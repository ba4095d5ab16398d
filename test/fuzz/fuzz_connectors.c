/* libFuzzer target: each exchange connector's on_frame (workers/ingest) with
 * a fake sink that checks every normalized message it emits (valid JSON
 * object, routing fields consistent with the channel, seq 1, 2, ... per
 * channel, the sink's epoch). Frames go through one connector instance in
 * order, with on_tick, reconnects and resubscribes in between, so stateful
 * parts (Coinbase's book and sequence gaps) are reached.
 * Input: byte 0 = exchange (bits 0-1), BINARY flag (bit 2), SIMPLE format
 * (bit 3), depth (bits 4-5), ticks between frames (bit 6); the rest = frames
 * separated by 0xFF (never valid inside UTF-8 JSON). */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "connector.h"
#include "log.h"
#include "msg.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define EPOCH 42
#define MAXCH 64

typedef struct {
    const char *exchange;
    char names[MAXCH][MSG_CHANNEL_MAX];
    int64_t seq[MAXCH];
    int n;
    int reconnects;
    int emitted;
} rec_t;

static int64_t *seq_slot(rec_t *r, const char *channel)
{
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->names[i], channel) == 0)
            return &r->seq[i];
    FUZZ_CHECK(r->n < MAXCH);
    FUZZ_CHECK(strlen(channel) < MSG_CHANNEL_MAX);
    strcpy(r->names[r->n], channel);
    r->seq[r->n] = 0;
    return &r->seq[r->n++];
}

static int64_t f_next_seq(void *arg, const char *channel)
{
    return ++*seq_slot(arg, channel);
}

static void f_emit(void *arg, const char *channel, const char *json, size_t len)
{
    rec_t *r = arg;
    FUZZ_CHECK(strlen(json) == len);
    FUZZ_CHECK(msg_channel_valid(channel, 0));
    json_error_t err;
    json_t *m = json_loadb(json, len, JSON_REJECT_DUPLICATES, &err);
    if (m == NULL || !json_is_object(m)) {
        fprintf(stderr, "connector %s emitted invalid JSON (%s): %.*s\n", r->exchange, err.text, (int)len,
                json);
        abort();
    }
    const char *ch = json_string_value(json_object_get(m, "channel"));
    const char *type = json_string_value(json_object_get(m, "type"));
    const char *ex = json_string_value(json_object_get(m, "exchange"));
    json_t *seq = json_object_get(m, "seq"), *epoch = json_object_get(m, "epoch");
    FUZZ_CHECK(ch != NULL && strcmp(ch, channel) == 0);
    FUZZ_CHECK(type != NULL && strncmp(channel, type, strlen(type)) == 0 && channel[strlen(type)] == '.');
    FUZZ_CHECK(ex != NULL && strcmp(ex, r->exchange) == 0);
    FUZZ_CHECK(json_is_integer(epoch) && json_integer_value(epoch) == EPOCH);
    /* seq is taken from the sink just before the message is built. */
    FUZZ_CHECK(json_is_integer(seq) && json_integer_value(seq) == *seq_slot(r, channel));
    msg_meta_t meta;
    FUZZ_CHECK(msg_parse_meta(json, len, &meta) == 0);
    FUZZ_CHECK(strcmp(meta.channel, channel) == 0);
    if (strcmp(type, "trade") == 0 || strcmp(type, "ticker") == 0) {
        /* prices are exact decimal strings */
        const char *k;
        json_t *v;
        json_object_foreach(m, k, v)
        {
            if (strcmp(k, "price") == 0 || strcmp(k, "qty") == 0 || strcmp(k, "last") == 0)
                FUZZ_CHECK(json_is_string(v) && decimal_valid(json_string_value(v), json_string_length(v)));
        }
    } else if (strcmp(type, "orderbook") == 0) {
        FUZZ_CHECK(json_is_array(json_object_get(m, "bids")));
        FUZZ_CHECK(json_is_array(json_object_get(m, "asks")));
    }
    json_decref(m);
    r->emitted++;
}

static void f_malformed(void *arg, const char *exchange, const char *reason)
{
    rec_t *r = arg;
    FUZZ_CHECK(strcmp(exchange, r->exchange) == 0);
    FUZZ_CHECK(reason != NULL && *reason);
}

static int f_send(void *arg, const char *data, size_t len)
{
    (void)arg;
    FUZZ_CHECK(data != NULL && strnlen(data, len + 1) >= len);
    return 0;
}

static void f_reconnect(void *arg, const char *cause)
{
    rec_t *r = arg;
    FUZZ_CHECK(cause != NULL);
    r->reconnects++;
}

static void f_status(void *arg, const char *exchange, const char *state, const char *detail)
{
    rec_t *r = arg;
    FUZZ_CHECK(strcmp(exchange, r->exchange) == 0);
    FUZZ_CHECK(state != NULL && detail != NULL);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level("error");
    /* the connectors log warnings for exchange errors; keep stderr quiet */
    log_set_level("error");
    return 0;
}

static const char *const markets[EX_COUNT] = {
    [EX_UPBIT] = "KRW-BTC,KRW-ETH,BTC-ETH",
    [EX_BITHUMB] = "KRW-BTC,KRW-ETH",
    [EX_BINANCE] = "BTCUSDT,ETHBTC,SOLBNB",
    [EX_COINBASE] = "BTC-USD,ETH-USD",
};

/* What every run's sink calls; its arg is the run's record. */
static const norm_sink_t sink_callbacks = {.emit = f_emit,
                                           .next_seq = f_next_seq,
                                           .epoch = EPOCH,
                                           .malformed = f_malformed,
                                           .send_text = f_send,
                                           .reconnect = f_reconnect,
                                           .status = f_status};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static const int depths[4] = {0, 5, 15, 1};
    int ex = data[0] & 3;
    int binary = (data[0] >> 2) & 1;
    int simple = (data[0] >> 3) & 1;
    int depth = depths[(data[0] >> 4) & 3];
    int ticks = (data[0] >> 6) & 1;
    const connector_ops_t *ops = connectors[ex];
    rec_t rec = {.exchange = ops->name};
    norm_sink_t sink = sink_callbacks;
    sink.arg = &rec;
    cfg_exchange_t cfg = {.enabled = 1, .depth = depth, .book_interval_ms = 100, .stale_after_ms = 30000};
    cfg.markets = (char *)markets[ex];
    cfg.channels = (char *)"ticker,trade,orderbook";
    cfg.format = (char *)(simple ? "SIMPLE" : "DEFAULT");
    buf_t url;
    buf_init(&url);
    FUZZ_CHECK(ops->url(&cfg, &url) == 0);
    buf_free(&url);
    connector_t *c = ops->create(&cfg, &sink);
    FUZZ_CHECK(c != NULL);
    int64_t now = 1700000000000LL;
    FUZZ_CHECK(ops->on_open(c) == 0);
    ops->on_tick(c, now);
    size_t off = 1;
    int frames = 0;
    while (off < size && frames < 256) {
        const uint8_t *rec_p;
        size_t n = fuzz_next_record(data, size, &off, 0xFF, &rec_p);
        now += 37;
        int before = rec.reconnects;
        FUZZ_CHECK(ops->on_frame(c, binary, (const char *)rec_p, n, now) == 0);
        frames++;
        if (ticks)
            ops->on_tick(c, now);
        if (rec.reconnects != before) {
            /* what the transport does: drop the socket, connect, resubscribe */
            ops->on_close(c);
            FUZZ_CHECK(ops->on_open(c) == 0);
        }
    }
    ops->on_tick(c, now + 60000);
    ops->on_close(c);
    ops->destroy(c);
    return 0;
}
