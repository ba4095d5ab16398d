/* exchange-ingest: the leader's ingest worker. Wires the worker runtime
 * (common/worker.h) to the exchange feeds, the channel table and the Kafka
 * producer: epoch from the supervisor, status for /status, drain = close the
 * feeds then flush Kafka (bounded) then exit. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ingest.h"
#include "log.h"
#include "producer.h"
#include "relay.h"
#include "tail.h"
#include "worker.h"

#define TICK_MS 100
/* Under a supervisor the feeds start with the first leader message (it
 * carries the epoch to stamp); if none came by then, start anyway. */
#define LEADER_WAIT_MS 2000
/* Bound on the Kafka flush when draining or stopping. */
#define FLUSH_MS 5000

static ingest_t ing;
static relay_t *relay; /* [relay] listen: the fanout workers' path when Kafka fails */
static worker_t *wk;
static uv_timer_t leader_wait;
/* Feeds get this long to close before Kafka is flushed anyway. */
#define FEED_CLOSE_MS 2000
static int feeds_started, flush_started, producer_drained;
static int tail_running, feeds_wanted; /* the feeds wait for the topic's tail */
/* The tail is read once the producer's transactions are initialised (any
 * older leader fenced, so nothing of it lands after the read); waited for at
 * most [kafka] ingest_tail_ms. */
static uv_timer_t tail_wait;
static int tail_started;
/* Lease (supervisor renews it over IPC): past it nothing is produced or
 * relayed and the worker exits; deposed: abort, never flush. */
static uv_timer_t lease_timer;
static int deposed;
static uint64_t drain_started_at;
static int feed_close_ms = FEED_CLOSE_MS, flush_ms = FLUSH_MS; /* within the drain message's bound */

static int64_t env_epoch(void)
{
    const char *s = getenv("EXCHANGE_EPOCH");
    if (s != NULL && *s != '\0') {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (*end == '\0' && v > 0)
            return (int64_t)v;
        log_warn("EXCHANGE_EPOCH ignored: not a positive integer", "value=%s", log_q(s));
    }
    return 1;
}

static int feeds_alive(void)
{
    for (int ex = 0; ex < EX_COUNT; ex++)
        if (ing.feeds[ex] != NULL)
            return 1;
    return 0;
}

static void on_producer_drained(void *arg, int remaining);
static void on_producer_fatal(void *arg, int fenced);

/* Drain order: feeds closed (their last status messages published), then
 * Kafka flushed, then exit. Checked on every tick. */
static void maybe_finish_drain(void)
{
    if (!ing.draining)
        return;
    if (!flush_started &&
        (!feeds_alive() || uv_now(ing.loop) - drain_started_at >= (uint64_t)feed_close_ms)) {
        flush_started = 1;
        if (ing.producer != NULL)
            producer_drain(ing.producer, flush_ms, on_producer_drained, NULL);
        else
            producer_drained = 1;
    }
    if (producer_drained) {
        log_info("ingest drained", "epoch=%" PRId64, ing.epoch);
        relay_stop(relay);
        worker_exit(wk, 0);
    }
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
    int64_t now = (int64_t)worker_now_ms();
    for (int ex = 0; ex < EX_COUNT; ex++)
        if (ing.feeds[ex] != NULL)
            feed_tick(ing.feeds[ex], now);
    maybe_finish_drain();
}

static int start_feeds(void)
{
    int r;
    if (feeds_started)
        return 0;
    if (tail_running) {
        feeds_wanted = 1;
        return 0;
    }
    feeds_started = 1;
    uv_timer_stop(&leader_wait);
    int n = 0;
    for (int ex = 0; ex < EX_COUNT; ex++) {
        if (!ing.cfg->exchange[ex].enabled)
            continue;
        if ((r = feed_start(&ing, ex, &ing.feeds[ex])) < 0)
            return r;
        n++;
    }
    if (n == 0)
        log_warn("no exchange enabled", "epoch=%" PRId64, ing.epoch);
    log_info("ingest running", "exchanges=%d epoch=%" PRId64 " kafka=%d", n, ing.epoch, ing.producer != NULL);
    return 0;
}

/* The topic's tail: every trade id there is one this leader must not
 * publish again, and each channel's newest is where its backfill starts. */
static void on_tail(void *arg, const tail_result_t *res)
{
    (void)arg;
    tail_running = 0;
    for (int i = 0; i < res->ntrades; i++) {
        const tail_trade_t *t = &res->trades[i];
        const char *ex = t->channel + strlen("trade.");
        for (int e = 0; e < EX_COUNT; e++) {
            size_t n = strlen(cfg_exchange_names[e]);
            if (strncmp(ex, cfg_exchange_names[e], n) == 0 && ex[n] == '.')
                ingest_trade_seed(&ing, e, t->channel, t->trade_id, t->ts);
        }
    }
    ing.tail_max_epoch = res->max_epoch;
    if (res->err < 0)
        log_warn_err(res->err, "topic tail not read; starting without it", "detail=%s elapsed_ms=%" PRId64,
                     log_q(res->detail), res->elapsed_ms);
    log_info("topic tail read",
             "partitions=%d records=%" PRId64 " trades=%d max_epoch=%" PRId64 " elapsed_ms=%" PRId64,
             res->partitions, res->records, res->ntrades, res->max_epoch, res->elapsed_ms);
    if (feeds_wanted && start_feeds() < 0)
        worker_exit(wk, 1);
}

static void tail_not_read(void)
{
    tail_running = 0;
    if (feeds_wanted && start_feeds() < 0)
        worker_exit(wk, 1);
}

/* Producer ready (init_transactions done): read the tail now. */
static void on_producer_ready(void *arg)
{
    (void)arg;
    if (!tail_running || tail_started)
        return;
    tail_started = 1;
    uv_timer_stop(&tail_wait);
    int r = tail_start(ing.loop, ing.cfg, ing.cfg->kafka.ingest_tail, ing.cfg->kafka.ingest_tail_ms, on_tail,
                       NULL);
    if (r < 0) {
        log_warn_err(r, "topic tail not read", LOG_NOFIELDS);
        tail_not_read();
    }
}

static void on_tail_wait(uv_timer_t *t)
{
    (void)t;
    if (tail_started)
        return;
    tail_started = 1; /* a late ready no longer reads it */
    log_warn("kafka transactions not initialised in time: starting without the topic's tail",
             "waited_ms=%d tx=%s", ing.cfg->kafka.ingest_tail_ms, producer_tx_state(ing.producer));
    tail_not_read();
}

static void on_leader_wait(uv_timer_t *t)
{
    (void)t;
    log_warn("no leader message from the supervisor, starting with the default epoch", "epoch=%" PRId64,
             ing.epoch);
    if (start_feeds() < 0)
        worker_exit(wk, 1);
}

static int on_start(worker_t *w)
{
    int r;
    wk = w;
    if ((r = ingest_init(&ing, w->loop, w->cfg, env_epoch())) < 0)
        return r;
    if (w->cfg->kafka.brokers != NULL && w->cfg->kafka.brokers[0] != '\0') {
        if ((r = producer_create(w->loop, w->cfg, &ing.producer)) < 0)
            return r;
        producer_on_fatal(ing.producer, on_producer_fatal, NULL);
    } else {
        log_info("no kafka brokers configured: relay only", "epoch=%" PRId64, ing.epoch);
    }
    if ((r = relay_start(&ing, &relay)) < 0)
        return r;
    uv_timer_init(w->loop, &tail_wait);
    if (ing.producer != NULL && w->cfg->kafka.ingest_tail > 0) {
        tail_running = 1;
        uv_update_time(w->loop); /* stale after producer_create (rd_kafka_new) */
        uv_timer_start(&tail_wait, on_tail_wait, (uint64_t)w->cfg->kafka.ingest_tail_ms, 0);
        producer_on_ready(ing.producer, on_producer_ready, NULL); /* may read it at once */
    }
    uv_timer_init(w->loop, &ing.tick);
    uv_timer_start(&ing.tick, on_tick, TICK_MS, TICK_MS);
    uv_timer_init(w->loop, &leader_wait);
    uv_timer_init(w->loop, &lease_timer);
    if (w->ipc != NULL) {
        uv_timer_start(&leader_wait, on_leader_wait, LEADER_WAIT_MS, 0);
        return 0;
    }
    return start_feeds();
}

static void on_lease_expired(uv_timer_t *t)
{
    (void)t;
    log_error("lease expired: the supervisor did not renew it, stopping production and exiting",
              "epoch=%" PRId64, ing.epoch);
    relay_stop(relay);
    worker_exit(wk, WORKER_EXIT_LEASE);
}

static void on_lease(json_t *msg)
{
    json_t *ms = json_object_get(msg, "ms");
    if (!json_is_integer(ms) || json_integer_value(ms) <= 0) {
        log_warn("lease message without a valid duration ignored", LOG_NOFIELDS);
        return;
    }
    uint64_t d = (uint64_t)json_integer_value(ms);
    /* The loop time may be stale (on_start blocks for the Kafka metadata
     * warm-up): the lease counts from now. */
    uv_update_time(ing.loop);
    if (ing.producer != NULL)
        producer_set_lease(ing.producer, uv_hrtime() / 1000000u + d);
    uv_timer_start(&lease_timer, on_lease_expired, d, 0);
}

static void on_aborted(void *arg)
{
    (void)arg;
    log_info("ingest stopped after losing leadership: open transaction aborted", "epoch=%" PRId64, ing.epoch);
    relay_stop(relay);
    worker_exit(wk, 0);
}

/* The supervisor lost leadership: whatever is not committed must never
 * reach the topic (the new leader may already be writing). */
static void on_deposed(void)
{
    if (deposed)
        return;
    deposed = 1;
    ing.draining = 1;
    uv_timer_stop(&leader_wait);
    for (int ex = 0; ex < EX_COUNT; ex++)
        if (ing.feeds[ex] != NULL)
            feed_stop(ing.feeds[ex]);
    if (ing.producer != NULL)
        producer_abort(ing.producer, on_aborted, NULL);
    else
        on_aborted(NULL);
}

/* Runs on the loop thread (producer_on_fatal). */
static void on_producer_fatal(void *arg, int fenced)
{
    (void)arg;
    log_error(fenced ? "fenced by a newer leader's producer: exiting" : "kafka producer failed: exiting",
              "epoch=%" PRId64, ing.epoch);
    relay_stop(relay);
    worker_exit(wk, fenced ? WORKER_EXIT_FENCED : 1);
}

static void on_msg(worker_t *w, const char *t, json_t *msg)
{
    if (strcmp(t, "lease") == 0) {
        on_lease(msg);
        return;
    }
    if (strcmp(t, "deposed") == 0) {
        on_deposed();
        return;
    }
    if (strcmp(t, "leader") != 0) {
        log_debug("ipc message ignored", "t=%s", log_q(t));
        return;
    }
    json_t *ep = json_object_get(msg, "epoch");
    json_t *self = json_object_get(msg, "is_self");
    if (!json_is_integer(ep) || json_integer_value(ep) <= 0) {
        log_warn("leader message without a valid epoch ignored", "t=%s", t);
        return;
    }
    if (json_is_false(self))
        log_warn("leader message names another instance; stamping its epoch until stopped", "epoch=%" PRId64,
                 (int64_t)json_integer_value(ep));
    ingest_set_epoch(&ing, (int64_t)json_integer_value(ep));
    if (!w->draining && start_feeds() < 0)
        worker_exit(w, 1);
}

static void on_producer_drained(void *arg, int remaining)
{
    (void)arg;
    (void)remaining; /* logged by the producer */
    producer_drained = 1;
    maybe_finish_drain();
}

static void on_drain(worker_t *w, int drain_ms)
{
    (void)w;
    if (deposed)
        return; /* already aborting: never flush */
    /* Nothing to hand over: close the feeds, then commit, both within the
     * supervisor's bound (it kills us past its stop deadline). */
    if (drain_ms > 0 && drain_ms < FEED_CLOSE_MS + FLUSH_MS) {
        feed_close_ms = drain_ms / 3;
        flush_ms = drain_ms - feed_close_ms;
    }
    ing.draining = 1;
    drain_started_at = uv_now(ing.loop);
    uv_timer_stop(&leader_wait);
    for (int ex = 0; ex < EX_COUNT; ex++)
        if (ing.feeds[ex] != NULL)
            feed_stop(ing.feeds[ex]);
    maybe_finish_drain(); /* the tick timer checks again until the feeds are closed */
}

static void on_status(worker_t *w, json_t *status)
{
    (void)w;
    int64_t now = (int64_t)worker_now_ms();
    json_t *ex = json_object();
    for (int i = 0; i < EX_COUNT; i++)
        if (ing.feeds[i] != NULL)
            json_object_set_new(ex, cfg_exchange_names[i], feed_status(ing.feeds[i], now));
    json_object_set_new(status, "exchanges", ex);
    json_object_set_new(status, "epoch", json_integer(ing.epoch));
    json_object_set_new(status, "kafka",
                        json_pack("{s:b, s:i, s:s}", "enabled", ing.producer != NULL, "queue",
                                  ing.producer ? producer_queue_len(ing.producer) : 0, "transaction",
                                  ing.producer ? producer_tx_state(ing.producer) : "off"));
    json_object_set_new(status, "relay", relay_status(relay));
}

static void on_stop(worker_t *w)
{
    (void)w;
    /* Parent gone: no time for an orderly close, but keep what Kafka accepted. */
    if (ing.producer != NULL)
        (void)producer_flush(ing.producer, FLUSH_MS);
    relay_stop(relay);
}

static void close_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

int main(int argc, char **argv)
{
    static const worker_ops_t ops = {
        .role = "ingest",
        .on_start = on_start,
        .on_msg = on_msg,
        .on_drain = on_drain,
        .on_status = on_status,
        .on_stop = on_stop,
    };
    int code = worker_main(argc, argv, &ops, &ing);
    if (producer_busy(ing.producer)) {
        /* A blocking transactional call still runs on a work thread and
         * waits for delivery reports only this loop served: exit now,
         * skipping libuv's thread-pool join at exit. The broker aborts the
         * open transaction when the next producer of the id starts. */
        log_info("exiting with a kafka transactional call in flight", "code=%d", code);
        _exit(code);
    }
    if (wk != NULL) {
        /* Release what is left so leak checkers see a clean exit. */
        producer_destroy(ing.producer);
        ing.producer = NULL;
        uv_walk(wk->loop, close_handle, NULL);
        uv_run(wk->loop, UV_RUN_DEFAULT);
        (void)uv_loop_close(wk->loop);
        ingest_free(&ing);
    }
    return code;
}
