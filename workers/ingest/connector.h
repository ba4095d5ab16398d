/* Exchange connector interface: one implementation per exchange
 * (upbit.c, bithumb.c, binance.c, coinbase.c). A connector is pure protocol:
 * it builds the URL and subscribe frames, turns each received frame into
 * normalized messages, and says when to send keep-alives. The transport
 * (common/wsclient) and the Kafka producer are wired in main.c. */
#ifndef CONNECTOR_H
#define CONNECTOR_H
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "buf.h"
#include "config.h"
#include "decimal.h"
#include "msg.h"

typedef struct connector_s connector_t;

/* One exchange trade, normalized but not yet a message: the sink decides
 * whether it is new (trade id de-duplication), when it is published (after
 * a running backfill of its channel) and stamps seq/epoch then. */
typedef struct norm_trade_s {
    char symbol[48];
    char price[DECIMAL_MAX], qty[DECIMAL_MAX];
    char side[8];
    char trade_id[80];
    int64_t ts, recv_ts;
    int snapshot; /* the exchange re-sent it on subscribe (SNAPSHOT / snapshot event) */
    int backfill; /* fetched from the exchange's REST API */
} norm_trade_t;

/* Sink for normalized messages. The connector fills the fields; the sink
 * (ingest main) assigns seq/epoch through norm_next_seq before building. */
typedef struct {
    void *arg;
    /* json: one complete normalized message (built with common/msg.h).
     * channel: its channel name. Called on the loop thread. */
    void (*emit)(void *arg, const char *channel, const char *json, size_t len);
    /* Trades go here when set (else they are built and emitted at once):
     * channel is "trade.EXCHANGE.SYMBOL". */
    void (*trade)(void *arg, const char *channel, const norm_trade_t *t);
    /* Per-channel sequence: returns the next seq for channel (1, 2, ...). */
    int64_t (*next_seq)(void *arg, const char *channel);
    int64_t epoch;
    /* Counted and skipped input: reason is a short metric label such as
     * "bad_json", "missing_field", "wrong_type", "unknown_type", "bad_utf8". */
    void (*malformed)(void *arg, const char *exchange, const char *reason);
    /* The connector asks the transport to send a frame (subscribe, PING,
     * resubscribe) or to reconnect (cause is a metric label). */
    int (*send_text)(void *arg, const char *data, size_t len);
    void (*reconnect)(void *arg, const char *cause);
    /* status.EXCHANGE messages: state connected|subscribed|stale|disconnected|error */
    void (*status)(void *arg, const char *exchange, const char *state, const char *detail);
} norm_sink_t;

typedef struct {
    const char *name; /* "upbit" */
    /* Build the connection URL from cfg (binance puts streams in it). */
    int (*url)(const cfg_exchange_t *cfg, buf_t *out);
    connector_t *(*create)(const cfg_exchange_t *cfg, norm_sink_t *sink);
    void (*destroy)(connector_t *c);
    /* Called after the WebSocket opens: send subscriptions via sink. */
    int (*on_open)(connector_t *c);
    /* One complete frame. binary: 1 for BINARY frames. recv_ts in ms.
     * Returns 0; malformed input is reported through sink->malformed. */
    int (*on_frame)(connector_t *c, int binary, const char *data, size_t len, int64_t recv_ts);
    /* Called every 100 ms on the loop: keep-alives, book publishing. */
    void (*on_tick)(connector_t *c, int64_t now_ms);
    /* The transport lost the connection. */
    void (*on_close)(connector_t *c);
} connector_ops_t;

/* ---- for connector implementations (connectors.c) ----------------------
 * Every connector struct starts with this base; create() copies what it
 * needs from cfg (the cfg may be freed on SIGHUP). on_open may be called
 * again at any time to resend the full subscription (resubscribe path). */
struct connector_s {
    const connector_ops_t *ops;
    norm_sink_t *sink;
    const char *exchange; /* "upbit" */
    char **markets;       /* exchange spelling, from cfg->markets */
    int nmarkets;
    int ch_ticker, ch_trade, ch_orderbook; /* from cfg->channels */
    char *channels_order[3];               /* cfg order: "ticker","trade","orderbook" */
    int nchannels;
    int depth; /* cfg->depth (0: exchange default) */
    int book_interval_ms;
    char format[16]; /* upbit/bithumb: DEFAULT or SIMPLE */
    /* per connection */
    int open;          /* on_open seen, on_close not yet */
    int subscribed;    /* "subscribed" status sent */
    int64_t opened_ms; /* first on_tick after on_open */
    int64_t last_ping_ms;
    buf_t body, out; /* scratch for building messages */
};

/* Fill the base from cfg; -EINVAL on a bad channel name or no markets. */
int conn_base_init(connector_t *c, const connector_ops_t *ops, const cfg_exchange_t *cfg, norm_sink_t *sink);
void conn_base_free(connector_t *c);
/* Validate UTF-8 then parse one frame; on failure reports bad_utf8,
 * bad_json, huge_number, or not_object via sink->malformed and returns NULL. */
struct json_t *conn_parse(connector_t *c, const char *data, size_t len);
/* Price/size: a decimal string as given, or a JSON number as its shortest
 * round-trip text. Returns NULL, or the malformed reason. */
const char *conn_decimal(struct json_t *v, char *out, size_t outsz);
/* Trade id: a string as given or an integer's exact text. */
const char *conn_id(struct json_t *v, char *out, size_t outsz);
/* Timestamp: integer or digit string in ms, us (>= 1e14) or ns (>= 1e17). */
const char *conn_ts(struct json_t *v, int64_t *ms);
/* RFC3339 ("2023-02-09T20:32:50.714964855Z") to ms since the epoch. */
int conn_rfc3339_ms(const char *s, int64_t *ms);
/* Symbols. "KRW-BTC" -> "BTC-KRW"; "BTCUSDT"/"btcusdt" -> "BTC-USDT" (by the
 * known quote assets, longest suffix); "btc-usd" -> "BTC-USD". 0 or -EINVAL. */
int conn_symbol_quote_first(const char *code, char *out, size_t outsz);
int conn_symbol_concat(const char *sym, char *out, size_t outsz);
int conn_symbol_dash(const char *sym, char *out, size_t outsz);
/* Build and emit c->body (the ,"key":val fields) as one message: takes the
 * next seq from the sink only now, so a skipped message leaves no gap. */
void conn_emit(connector_t *c, const char *type, const char *symbol, int64_t ts, int64_t recv_ts);
/* A trade: the one field set every exchange maps to (exchanges.md). */
void conn_emit_trade(connector_t *c, const char *symbol, const char *price, const char *qty, const char *side,
                     const char *trade_id, int64_t ts, int64_t recv_ts, int snapshot);
/* The one writer of a trade message: msg_begin .. msg_end into out. */
void conn_trade_msg(buf_t *out, const char *exchange, const norm_trade_t *t, int64_t seq, int64_t epoch);
/* A data frame arrived: sends status "subscribed" once per connection. */
void conn_data_seen(connector_t *c);
/* The end of every on_frame: reports why (NULL: nothing wrong) as
 * malformed, frees the parsed frame; returns 0 for on_frame to return. */
int conn_frame_done(connector_t *c, const char *why, json_t *root);
void conn_malformed(connector_t *c, const char *reason);
/* A random version 4 UUID (37 bytes with the NUL). */
void conn_uuid(char out[37]);
/* Upbit and Bithumb share one protocol (upbit.c). */
connector_t *upbitlike_create(const connector_ops_t *ops, const cfg_exchange_t *cfg, norm_sink_t *sink);
void upbitlike_destroy(connector_t *c);
int upbitlike_on_open(connector_t *c);
int upbitlike_on_frame(connector_t *c, int binary, const char *data, size_t len, int64_t recv_ts);
void upbitlike_on_tick(connector_t *c, int64_t now_ms);
void upbitlike_on_close(connector_t *c);
/* The request array, exposed for tests: ticket is the UUID to use. */
int upbitlike_request(const connector_t *c, const char *ticket, buf_t *out);

extern const connector_ops_t upbit_connector;
extern const connector_ops_t bithumb_connector;
extern const connector_ops_t binance_connector;
extern const connector_ops_t coinbase_connector;
/* Indexed by EX_UPBIT.. (config.h). */
extern const connector_ops_t *const connectors[EX_COUNT];

#endif
