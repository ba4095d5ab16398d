/* Kafka producer of the ingest worker (librdkafka): idempotent, acks=all,
 * key = channel, the leader epoch as record header "epoch" (decimal text).
 * librdkafka's callbacks are served by rd_kafka_poll() from a uv_timer, so
 * every callback (delivery reports, errors, admin results) runs on the loop
 * thread. Creates the topic through the Admin API when it is missing. */
#ifndef PRODUCER_H
#define PRODUCER_H
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "config.h"

typedef struct producer_s producer_t;

/* Settings (cfg [kafka]):
 *   brokers, topic, partitions, replication  topic created when missing
 *   linger_ms                                 batching delay (default small, 5 ms)
 *   buffer_messages                           queue.buffering.max.messages: when the
 *                                             local queue is full the message is dropped
 *                                             and counted {reason="queue_full"}
 *   security_protocol, sasl_*, ssl_ca         the matching librdkafka properties
 * Fixed: enable.idempotence=true, acks=all, compression lz4,
 * message.timeout.ms = PRODUCER_MESSAGE_TIMEOUT_MS. */
#define PRODUCER_MESSAGE_TIMEOUT_MS 120000
#define PRODUCER_POLL_MS 20

/* Returns 0 or a negative errno (-EINVAL: a property librdkafka rejected,
 * logged with its name). cfg must outlive the producer. */
int producer_create(uv_loop_t *loop, const cfg_t *cfg, producer_t **out);
/* Queue one message. 0: accepted (delivery is reported through metrics);
 * -ENOBUFS: local queue full, dropped and counted; other negative: dropped
 * and counted with the librdkafka error name. */
int producer_send(producer_t *p, const char *channel, const char *json, size_t len, int64_t epoch);
/* Messages queued or in flight (rd_kafka_outq_len). */
int producer_queue_len(const producer_t *p);
/* Asynchronous drain: done(arg, remaining) is called on the loop thread once
 * the queue is empty or timeout_ms has passed (remaining > 0 then). */
void producer_drain(producer_t *p, int timeout_ms, void (*done)(void *arg, int remaining), void *arg);
/* Blocking flush bounded by timeout_ms (for the quick-exit path); returns
 * the number of messages still queued. Logs what remained. */
int producer_flush(producer_t *p, int timeout_ms);
/* Purge what is left, destroy the client, close the timer (memory is freed
 * in the timer's close callback, so the loop must run once more, or the
 * process exits). */
void producer_destroy(producer_t *p);

#endif
