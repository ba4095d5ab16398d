/* Normalized message helpers (DESIGN.md "Normalized messages"): building the
 * JSON text once in the ingest worker, and reading the routing fields
 * (channel, type, seq, epoch, ts) in the fanout worker. */
#ifndef MSG_H
#define MSG_H
#include <stdint.h>
#include <stddef.h>
#include "buf.h"

#define MSG_CHANNEL_MAX 128

typedef struct {
    char channel[MSG_CHANNEL_MAX];
    char type[16];
    int64_t seq;
    int64_t epoch;
    int64_t ts;
    int64_t recv_ts;
} msg_meta_t;

/* Reads the routing fields of one normalized message; -EINVAL if it is not a
 * JSON object with a string channel/type and integer seq/epoch. Reads the
 * prefix msg_begin writes (msg_read_prefix, ~0.1 us) and parses the whole
 * object only when the text does not start with it. */
int msg_parse_meta(const char *json, size_t len, msg_meta_t *m);
/* The routing fields from msg_begin's fixed prefix alone (field order,
 * unescaped strings, integers as PRId64 prints them) in text ending in '}';
 * -EINVAL when the text is not in that form (nothing else is checked). */
int msg_read_prefix(const char *json, size_t len, msg_meta_t *m);
/* 1 when json[0..len) is exactly one JSON object (RFC 8259 syntax, valid
 * UTF-8, nesting at most 64 deep): a syntax scan, no tree, ~1 ns a byte. */
int msg_json_object_valid(const char *json, size_t len);

/* Builder: msg_begin writes `{"channel":"T.E.S","type":T,"exchange":E,
 * "symbol":S,"seq":N,"epoch":N,"ts":N,"recv_ts":N` then fields follow and
 * msg_end closes the object. */
void msg_begin(buf_t *b, const char *type, const char *exchange, const char *symbol, int64_t seq,
               int64_t epoch, int64_t ts, int64_t recv_ts);
void msg_str(buf_t *b, const char *key, const char *val); /* ,"key":"val" */
void msg_int(buf_t *b, const char *key, int64_t val);
void msg_raw(buf_t *b, const char *key, const char *json); /* ,"key":<json> */
void msg_end(buf_t *b);
/* Shortest decimal text that reads back to the same double ("6747000",
 * "0.06499468"); never exponent notation. out must hold 64 bytes. */
int msg_fmt_double(double v, char *out, size_t outsz);
/* Validate a channel name TYPE.EXCHANGE.SYMBOL or status.EXCHANGE (or a
 * pattern when allow_wildcard: any segment may be "*"). Segments are
 * [A-Za-z0-9_-]+. Returns 1 if valid, 0 if not. */
int msg_channel_valid(const char *ch, int allow_wildcard);
/* Pattern match with '*' standing for one whole segment; 1 on a match. */
int msg_channel_match(const char *pattern, const char *channel);
#endif
