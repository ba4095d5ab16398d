/* exchange-fanout: one fanout worker process. Wires the worker runtime
 * (common/worker.h) to the hub, the client server and the data source. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "fanout.h"
#include "log.h"
#include "msg.h"

static fanout_t g_fanout;

/* A record whose Kafka key or epoch header contradicts its prefix: logged
 * at most once a second (with how many since), every one counted. */
static void log_mismatch(fanout_t *f, const char *data, size_t len, const hub_route_t *route)
{
    uint64_t now = worker_now_ms();
    f->mismatch_unlogged++;
    if (f->mismatch_logged_at != 0 && now - f->mismatch_logged_at < 1000)
        return;
    msg_meta_t m;
    int ok = msg_parse_meta(data, len, &m) == 0;
    char key[MSG_CHANNEL_MAX];
    size_t kn = route->key_len < sizeof key - 1 ? route->key_len : sizeof key - 1;
    memcpy(key, route->key ? route->key : "", route->key ? kn : 0);
    key[route->key ? kn : 0] = '\0';
    log_warn("message dropped: Kafka key or epoch header differs from the message",
             "key=%s header_epoch=%" PRId64 " channel=%s epoch=%" PRId64 " dropped=%" PRIu64, log_q(key),
             route->epoch_hdr == HUB_EPOCH_SET ? route->epoch : -1, log_q(ok ? m.channel : ""),
             ok ? m.epoch : -1, f->mismatch_unlogged);
    f->mismatch_logged_at = now;
    f->mismatch_unlogged = 0;
}

static void on_source_message(void *arg, const char *data, size_t len, const hub_route_t *route)
{
    fanout_t *f = arg;
    int64_t ts = 0, recv_ts = 0;
    metric_inc(f->m.received);
    int r = hub_publish(f->hub, data, len, route, &ts, &recv_ts);
    switch (r) {
    case HUB_ACCEPTED: {
        /* Once per message, not per client. */
        int64_t now = (int64_t)worker_now_ms();
        if (ts > 0)
            metric_observe(f->m.latency_ts, (double)(now - ts) / 1000.0);
        if (recv_ts > 0)
            metric_observe(f->m.latency_recv, (double)(now - recv_ts) / 1000.0);
        break;
    }
    case HUB_FENCED: metric_inc(f->m.drop_fenced); break;
    case HUB_DUPLICATE: metric_inc(f->m.drop_duplicate); break;
    case HUB_MISMATCH:
        metric_inc(f->m.drop_mismatch);
        log_mismatch(f, data, len, route);
        break;
    default:
        metric_inc(f->m.drop_invalid);
        log_debug("invalid message dropped", "len=%zu", len);
        break;
    }
}

static void on_source_gap(void *arg, const char *channel, size_t len)
{
    fanout_t *f = arg;
    hub_channel_break(f->hub, channel, len);
}

/* A message that does not follow its channel's previous one: clients that
 * resume from before it get recovered:false here. Rare (outages, failovers). */
static void on_hub_gap(const char *channel, int64_t from_epoch, int64_t from_seq, int64_t epoch, int64_t seq)
{
    metric_inc(g_fanout.m.source_gaps);
    log_info("channel not continuous at this instance",
             "channel=%s from=%" PRId64 ":%" PRId64 " to=%" PRId64 ":%" PRId64, log_q(channel), from_epoch,
             from_seq, epoch, seq);
}

static void on_replay_wanted(void)
{
    server_replay_wanted(&g_fanout);
}

static int fanout_start(worker_t *w)
{
    fanout_t *f = w->data;
    int r;
    f->w = w;
    f->loop = w->loop;
    f->cfg = w->cfg;
    fanout_metrics_init(&f->m);
    hub_opts_t ho = {.history = f->cfg->fanout.history,
                     .max_subscriptions = f->cfg->fanout.max_subscriptions};
    hub_ops_t ops = {.send = server_client_send,
                     .gap = on_hub_gap,
                     .room = server_client_room,
                     .replay_gap = server_client_replay_gap,
                     .replay_wanted = on_replay_wanted};
    if ((f->hub = hub_new(&ho, &ops)) == NULL)
        return -ENOMEM;
    if ((r = server_start(f)) < 0)
        return r;
    /* Kafka with the relay fallback, or the relay alone without brokers. */
    source_sink_t sink = {.on_message = on_source_message, .on_gap = on_source_gap, .arg = f};
    if ((r = source_switch_new(f->loop, f->cfg, &sink, &f->src)) < 0)
        return r;
    /* Without a supervisor no leader message comes: this instance's relay. */
    if (w->ipc == NULL)
        source_switch_set_leader(f->src, f->cfg->relay.advertise, 0);
    return 0;
}

/* The supervisor's leader message carries the leader's relay address. */
static void fanout_msg(worker_t *w, const char *t, json_t *msg)
{
    fanout_t *f = w->data;
    if (strcmp(t, "leader") == 0 && f->src != NULL)
        source_switch_set_leader(f->src, json_string_value(json_object_get(msg, "relay")),
                                 (int64_t)json_integer_value(json_object_get(msg, "epoch")));
}

static void fanout_status(worker_t *w, json_t *status)
{
    fanout_t *f = w->data;
    server_sync_metrics(f);
    json_object_set_new(status, "clients", json_integer(f->nclients));
    json_object_set_new(status, "channels", json_integer(f->hub ? hub_channel_count(f->hub) : 0));
    json_object_set_new(status, "source", json_string(source_name(f->src)));
    json_object_set_new(status, "source_healthy", json_boolean(source_healthy(f->src)));
    json_object_set_new(status, "epoch", json_integer(f->hub ? hub_max_epoch(f->hub) : 0));
    json_object_set_new(status, "port", json_integer(f->port));
    if (f->src != NULL) {
        json_object_set_new(status, "last_message_age_ms",
                            json_integer(f->src->vt->last_message_age_ms(f->src)));
        f->src->vt->status(f->src, status);
    }
}

static void fanout_drain(worker_t *w, int drain_ms)
{
    server_drain(w->data, drain_ms);
}

static void fanout_stop(worker_t *w)
{
    server_stop(w->data);
}

static const worker_ops_t fanout_ops = {
    .role = "fanout",
    .on_start = fanout_start,
    .on_msg = fanout_msg,
    .on_drain = fanout_drain,
    .on_status = fanout_status,
    .on_stop = fanout_stop,
};

int main(int argc, char **argv)
{
    return worker_main(argc, argv, &fanout_ops, &g_fanout);
}
