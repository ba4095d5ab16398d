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
#include "rbuf.h"

typedef struct producer_s producer_t;

/* Settings (cfg [kafka]):
 *   brokers, topic, partitions, replication  topic created when missing
 *   linger_ms                                 batching delay (default small, 5 ms)
 *   buffer_messages                           queue.buffering.max.messages: when the
 *                                             local queue is full the message is dropped
 *                                             and counted {reason="queue_full"}
 *   security_protocol, sasl_*, ssl_ca         the matching librdkafka properties
 *   transactions, transactional_id,           transactional producer (fencing): every
 *   transaction_commit_ms                     message goes into a transaction committed
 *                                             every transaction_commit_ms; the messages of
 *                                             an aborted transaction are produced again in
 *                                             order. A client that fails for good (abort
 *                                             refused, fatal error, fenced after the
 *                                             coordinator timed the transaction out) while
 *                                             the lease holds and not deposed is rebuilt
 *                                             (same transactional.id, backoff, counted in
 *                                             exchange_ingest_kafka_producer_rebuilds_total)
 *                                             and what did not commit is produced again,
 *                                             first, in order, same bytes. Deposed or past
 *                                             the lease: producing stops for good
 * Fixed: enable.idempotence=true, acks=all, compression lz4,
 * message.timeout.ms = PRODUCER_MESSAGE_TIMEOUT_MS (transactional:
 * PRODUCER_TXN_TIMEOUT_MS). init/commit/abort_transaction and the topic
 * metadata warm-up of a new client block: they run on libuv's work threads;
 * delivery reports are events served on the loop. */
#define PRODUCER_MESSAGE_TIMEOUT_MS 120000
/* Transactional: transaction.timeout.ms and message.timeout.ms. A dead
 * leader's open transaction holds read-committed consumers back at most this
 * long when no new leader fences it sooner. */
#define PRODUCER_TXN_TIMEOUT_MS 10000
#define PRODUCER_POLL_MS 20

/* Returns 0 or a negative errno (-EINVAL: a property librdkafka rejected,
 * logged with its name). cfg must outlive the producer. */
int producer_create(uv_loop_t *loop, const cfg_t *cfg, producer_t **out);
/* Queue one message, value's bytes as they are. The producer takes a
 * reference to value (never a copy) and drops it once Kafka is done with it
 * (delivery report, or the transaction committed); the caller keeps its own.
 * 0: accepted (delivery is reported through metrics); -ENOBUFS: local queue
 * full, dropped and counted; other negative: dropped and counted with the
 * librdkafka error name. */
int producer_send(producer_t *p, const char *channel, rbuf_t *value, int64_t epoch);
/* cb(arg, fenced) once the transactional producer has failed for good: it
 * failed while deposed (producer_abort) or past its lease, i.e. when a newer
 * leader may exist (fenced: Kafka said so); nothing is produced after it. */
void producer_on_fatal(producer_t *p, void (*cb)(void *arg, int fenced), void *arg);
/* cb(arg) once, on the loop thread, when init_transactions first completed
 * (any older producer of the id is fenced, its open transaction aborted):
 * from then on the topic holds nothing more of an older leader. Called at
 * once when already so (not transactional: always). */
void producer_on_ready(producer_t *p, void (*cb)(void *arg), void *arg);
/* Nothing is produced once the monotonic clock (uv_hrtime in ms) passes
 * until_ms (0: no lease); messages sent later are dropped and counted. */
void producer_set_lease(producer_t *p, uint64_t until_ms);
/* Deposed: drop what waits, abort the open transaction (never commit it),
 * then done(arg) on the loop thread. Nothing is produced afterwards. */
void producer_abort(producer_t *p, void (*done)(void *arg), void *arg);
/* A blocking transactional call is running on a work thread. */
int producer_busy(const producer_t *p);
/* "off" (not transactional), "init", "idle", "open", "commit", "abort", "dead",
 * "rebuild" (a failed client replaced). */
const char *producer_tx_state(const producer_t *p);
/* Messages queued or in flight (rd_kafka_outq_len; transactional: not yet committed). */
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
