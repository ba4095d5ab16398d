/* The topic's tail at ingest start: a short-lived librdkafka consumer
 * (isolation.level=read_committed, no group) assigns every partition at
 * end - N and reads up to the end, bounded in time, on a libuv worker
 * thread. What it found seeds the trade id sets and each channel's last
 * trade (a new leader neither repeats nor skips what the previous one
 * published), and the highest epoch in the topic (for the epoch rule "a new
 * epoch is above every epoch in the topic"). Kafka unreachable within the
 * bound: logged, and the ingest goes on with what it has. */
#ifndef TAIL_H
#define TAIL_H
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "config.h"

typedef struct {
    char channel[128];
    char trade_id[80];
    int64_t ts, epoch, seq;
} tail_trade_t;

typedef struct {
    int err;              /* 0, or a negative errno (-ETIMEDOUT: the end was not reached in time) */
    char detail[256];     /* the cause, for the log */
    int partitions;       /* partitions read */
    int64_t records;      /* records read */
    int64_t max_epoch;    /* highest epoch seen in the tail (header or message); 0: none */
    tail_trade_t *trades; /* trade messages, in topic order per partition */
    int ntrades;
    int64_t elapsed_ms;
} tail_result_t;

typedef void (*tail_done_cb)(void *arg, const tail_result_t *res);

/* Start reading the last per_partition records of every partition of
 * cfg->kafka.topic, for at most timeout_ms. done runs on the loop thread
 * (the result is freed after it returns). 0 or a negative errno. */
int tail_start(uv_loop_t *loop, const cfg_t *cfg, int per_partition, int timeout_ms, tail_done_cb done,
               void *arg);

/* Blocking form (tests, tools): fills res; free it with tail_result_free. */
int tail_read(const cfg_t *cfg, int per_partition, int timeout_ms, tail_result_t *res);
void tail_result_free(tail_result_t *res);
/* One record's value (a normalized message): a trade into *t (1), another
 * message (0), or not a message (-EINVAL). Also returns its epoch. */
int tail_parse_record(const char *json, size_t len, tail_trade_t *t, int64_t *epoch);

#endif
