/* The client side of the fanout worker: the SO_REUSEPORT listener, the
 * upgrade checks (path, handshake, origin, capacity, URL channels), one
 * client per WebSocket connection tied to a hub client, the slow-client rule
 * and the drain (reconnect hint, then close 1001, spread over drain_ms). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth.h"
#include "demo_page.h"
#include "fanout.h"
#include "iplimits.h"
#include "listener.h"
#include "log.h"
#include "protocol.h"

#define DRAIN_TICK_MS 10
#define LISTEN_BACKLOG 1024
#define ACCEPT_PAUSE_MS 250 /* after EMFILE/ENFILE: a retry 4 times a second, not a spin */
#define ACCEPT_BATCH 64     /* accepts per readable event; the loop runs between batches */
#define REPLAY_PACE_MS 2    /* resume replays waiting for room are stepped this often */

struct client_s {
    fanout_t *f;
    wss_conn_t *conn;
    hub_client_t *hc;
    proto_rate_t rate;
    int upgraded; /* counted in f->nclients */
    char **url_chans;
    int n_url;
    int in_list; /* 1: active, 2: drained */
    client_t *prev, *next;
    int ip_counted;   /* its address (wss_peer_ip) is counted in f->limits */
    int limited;      /* LIMITS_* verdict at accept */
    int auth_checked; /* [auth] enabled: auth_result holds the verdict */
    jwt_result_t auth_result;
    auth_grant_t grant;
    int forbidden; /* 1 + index in url_chans of a channel outside the grant */
    int shed;      /* over [fanout] max_clients: hint "shed" and close at open */
};

/* ---- metrics ------------------------------------------------------------- */

void fanout_metrics_init(fanout_metrics_t *m)
{
    static const double lat_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25,  0.5,    1,     2.5,  5,     10,   30};
    int nb = (int)(sizeof lat_buckets / sizeof lat_buckets[0]);
    m->clients = metric_gauge("exchange_fanout_clients", "Connected WebSocket clients");
    m->accepted = metric_counter("exchange_fanout_connections_accepted_total", "WebSocket upgrades accepted");
    m->rejected = metric_counter("exchange_fanout_connections_rejected_total",
                                 "Connections refused at the upgrade, by reason");
    m->limit_hits = metric_counter("exchange_fanout_limit_hits_total", "Client limits hit, by limit");
    m->disconnects =
        metric_counter("exchange_fanout_disconnects_total", "Client connections ended, by reason");
    m->messages_sent =
        metric_counter("exchange_fanout_messages_sent_total", "WebSocket frames written to clients");
    m->bytes_sent = metric_counter("exchange_fanout_bytes_sent_total", "Bytes written to clients");
    m->received =
        metric_counter("exchange_fanout_messages_received_total", "Messages received from the data source");
    m->dropped =
        metric_counter("exchange_fanout_dropped_total",
                       "Messages dropped, by reason (fenced, duplicate, conflated, invalid, key_mismatch: "
                       "the Kafka key or epoch header differs from the message)");
    m->drop_fenced = metric_labels(m->dropped, "reason=\"fenced\"");
    m->drop_duplicate = metric_labels(m->dropped, "reason=\"duplicate\"");
    m->drop_conflated = metric_labels(m->dropped, "reason=\"conflated\"");
    m->drop_invalid = metric_labels(m->dropped, "reason=\"invalid\"");
    m->drop_mismatch = metric_labels(m->dropped, "reason=\"key_mismatch\"");
    m->slow_closes = metric_counter("exchange_fanout_slow_client_closes_total",
                                    "Clients closed (1013) for exceeding client_queue_bytes");
    m->replay_gaps =
        metric_counter("exchange_fanout_replay_gaps_total",
                       "Resume replays whose client read so slowly that the history moved past it "
                       "(the client sees the seq jump)");
    m->queue_bytes = metric_gauge("exchange_fanout_queue_bytes", "Bytes queued for clients");
    m->channels = metric_gauge("exchange_fanout_channels", "Channels with data");
    m->latency_ts = metric_histogram("exchange_fanout_exchange_latency_seconds",
                                     "Receive time minus the exchange timestamp (ts)", lat_buckets, nb);
    m->latency_recv =
        metric_histogram("exchange_fanout_ingest_latency_seconds",
                         "Receive time minus the ingest receive time (recv_ts)", lat_buckets, nb);
    m->max_epoch = metric_gauge("exchange_fanout_epoch", "Highest leader epoch seen");
    m->source_gaps = metric_counter("exchange_fanout_source_gaps_total",
                                    "Messages not continuous with their channel's previous one here (seq "
                                    "jump, new epoch not from seq 1, source switch): no resume across them");
    m->auth_failures = metric_counter("exchange_fanout_auth_failures_total",
                                      "Clients closed by [auth]: 4001 (missing, malformed, bad_alg, "
                                      "bad_signature, expired, not_yet_valid) or 4003 (forbidden_channel)");
    m->accept_errors = metric_counter("exchange_fanout_accept_errors_total",
                                      "accept() failures on the client port, by reason (emfile: the "
                                      "open-files limit; enfile: the system's); accepting pauses briefly");
    m->deflate_clients = metric_counter("exchange_fanout_compression_clients_total",
                                        "Clients that negotiated permessage-deflate ([fanout] compression)");
    m->deflated = metric_counter("exchange_fanout_compressed_messages_total",
                                 "Messages compressed (once per message and worker, shared by its clients)");
    m->compressed_frames = metric_counter("exchange_fanout_compressed_frames_total",
                                          "Compressed frames queued for clients (the rest go plain)");
    m->inflated =
        metric_counter("exchange_fanout_inflated_messages_total", "Compressed client messages inflated");
    m->deflate_ratio = metric_gauge("exchange_fanout_compression_ratio",
                                    "Compressed bytes over plain bytes of the messages compressed so far");
}

void server_sync_metrics(fanout_t *f)
{
    if (f->wss != NULL) {
        const wss_stats_t *s = wss_ctx_stats(f->wss);
        metric_add(f->m.messages_sent, (double)(s->frames_sent - f->synced_frames));
        metric_add(f->m.bytes_sent, (double)(s->bytes_sent - f->synced_bytes));
        metric_add(f->m.drop_conflated, (double)(s->conflated - f->synced_conflated));
        f->synced_frames = s->frames_sent;
        f->synced_bytes = s->bytes_sent;
        f->synced_conflated = s->conflated;
        metric_add(f->m.deflate_clients, (double)(s->deflate_clients - f->synced_dclients));
        metric_add(f->m.deflated, (double)(s->deflated - f->synced_deflated));
        metric_add(f->m.compressed_frames, (double)(s->compressed_frames - f->synced_zframes));
        metric_add(f->m.inflated, (double)(s->inflated - f->synced_inflated));
        f->synced_dclients = s->deflate_clients;
        f->synced_deflated = s->deflated;
        f->synced_zframes = s->compressed_frames;
        f->synced_inflated = s->inflated;
        if (s->deflate_in_bytes > 0)
            metric_set(f->m.deflate_ratio, (double)s->deflate_out_bytes / (double)s->deflate_in_bytes);
        metric_set(f->m.queue_bytes, (double)s->queued_bytes);
    }
    metric_set(f->m.clients, f->nclients);
    if (f->hub != NULL) {
        uint64_t rg = hub_stats(f->hub)->replay_gaps;
        metric_add(f->m.replay_gaps, (double)(rg - f->synced_replay_gaps));
        f->synced_replay_gaps = rg;
        metric_set(f->m.channels, hub_channel_count(f->hub));
        metric_set(f->m.max_epoch, (double)hub_max_epoch(f->hub));
    }
}

static void limit_hit(fanout_t *f, const char *limit)
{
    metric_inc(metric_labels(f->m.limit_hits, "limit=\"%s\"", limit));
}

/* ---- client list ----------------------------------------------------------- */

static client_t **list_of(fanout_t *f, int which)
{
    return which == 1 ? &f->active : &f->drained;
}

static void list_del(client_t *c)
{
    if (!c->in_list)
        return;
    client_t **head = list_of(c->f, c->in_list);
    if (c->prev)
        c->prev->next = c->next;
    else
        *head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->in_list = 0;
}

static void list_add(client_t *c, int which)
{
    client_t **head = list_of(c->f, which);
    c->prev = NULL;
    c->next = *head;
    if (*head)
        (*head)->prev = c;
    *head = c;
    c->in_list = which;
}

static void client_free(client_t *c)
{
    if (c->ip_counted)
        iplimits_disconnect(c->f->limits, wss_peer_ip(c->conn)); /* in on_close: conn still there */
    c->conn = NULL;                                              /* freed after on_close */
    auth_grant_free(&c->grant);
    list_del(c);
    hub_client_free(c->hc);
    cfg_free_list(c->url_chans, c->n_url);
    free(c);
}

/* ---- hub send --------------------------------------------------------------- */

int server_client_send(void *user, rbuf_t *frame, const void *tag)
{
    client_t *c = user;
    if (c->conn == NULL)
        return -EPIPE;
    int r = wss_send(c->conn, frame, tag);
    if (r == -ENOBUFS) {
        /* Too slow: what is queued is stale anyway; the close frame follows
         * the write in progress. The other clients are not affected. */
        metric_inc(c->f->m.slow_closes);
        limit_hit(c->f, "client_queue_bytes");
        log_info("slow client closed", "peer=%s queued=%zu", wss_peer(c->conn), wss_queued_bytes(c->conn));
        wss_close(c->conn, 1013, "slow client: queue limit exceeded", 1);
    }
    return r;
}

size_t server_client_room(void *user, int *idle)
{
    client_t *c = user;
    if (c->conn == NULL || !wss_conn_is_open(c->conn)) {
        *idle = 1;
        return SIZE_MAX; /* nothing will be queued: let the replay end */
    }
    size_t half = (size_t)c->f->cfg->fanout.client_queue_bytes / 2;
    size_t queued = wss_queued_bytes(c->conn);
    *idle = queued == 0;
    return queued >= half ? 0 : half - queued;
}

void server_client_replay_gap(void *user, const char *channel, int64_t epoch, int64_t seq, int64_t next_epoch,
                              int64_t next_seq)
{
    client_t *c = user;
    log_info("resume replay overtaken by the history: the client sees a seq jump",
             "peer=%s channel=%s after=%" PRId64 ":%" PRId64 " next=%" PRId64 ":%" PRId64,
             c->conn ? wss_peer(c->conn) : "-", log_q(channel), epoch, seq, next_epoch, next_seq);
}

static void on_replay_timer(uv_timer_t *t)
{
    fanout_t *f = t->data;
    if (hub_replay_step(f->hub) == 0)
        uv_timer_stop(t);
}

void server_replay_wanted(fanout_t *f)
{
    if (f->timers_init && !uv_is_active((uv_handle_t *)&f->replay_timer))
        uv_timer_start(&f->replay_timer, on_replay_timer, REPLAY_PACE_MS, REPLAY_PACE_MS);
}

/* ---- wss callbacks ---------------------------------------------------------- */

static int origin_allowed(fanout_t *f, const char *origin)
{
    if (f->norigins == 0 || origin == NULL)
        return 1;
    for (int i = 0; i < f->norigins; i++)
        if (strcmp(f->origins[i], "*") == 0 || strcasecmp(f->origins[i], origin) == 0)
            return 1;
    return 0;
}

static int on_request(wss_conn_t *conn, const http_req_t *req, buf_t *extra, buf_t *body)
{
    client_t *c = wss_conn_data(conn);
    fanout_t *f = c->f;
    char path[512];
    int st;
    if (http_req_path(req, path, sizeof path) < 0 || strcmp(path, f->cfg->fanout.path) != 0) {
        if ((st = demo_page_answer(req, path, f->cfg->fanout.path, extra, body)) != 0)
            return st; /* GET / or /demo: the demo page */
        buf_printf(body, "not found; the WebSocket endpoint is %s", f->cfg->fanout.path);
        return 404;
    }
    if ((st = wss_check_upgrade(req, NULL)) != 0) { /* the accept key: made once, by wsserver */
        if (st == 426) {
            buf_puts(extra, "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
            buf_puts(body, "WebSocket upgrade required");
        } else {
            buf_puts(extra, "Sec-WebSocket-Version: 13\r\n");
            buf_puts(body, "bad WebSocket handshake (GET, Sec-WebSocket-Key, Sec-WebSocket-Version: 13)");
        }
        return st;
    }
    if (!origin_allowed(f, http_req_header(req, "origin"))) {
        buf_puts(body, "origin not allowed");
        return 403;
    }
    if (f->draining) {
        buf_puts(extra, "Retry-After: 1\r\n");
        buf_puts(body, "draining; connect again");
        return 503;
    }
    if (f->nclients >= f->cfg->fanout.max_clients) {
        /* Over this worker's share: upgrade, then a reconnect hint (on_open)
         * sends the client to another pod through the Service. A browser
         * never sees an HTTP status; it does see the hint. */
        limit_hit(f, "max_clients");
        metric_inc(metric_labels(f->m.rejected, "reason=\"shed\""));
        c->shed = 1;
        c->upgraded = 1;
        f->nclients++;
        return 0;
    }
    if (c->limited != IPLIMITS_OK) {
        int conns = c->limited == IPLIMITS_CONNECTIONS;
        limit_hit(f, conns ? "max_connections_per_ip" : "max_connections_per_sec_per_ip");
        buf_puts(extra, "Retry-After: 1\r\n");
        buf_puts(body,
                 conns ? "too many connections from this address" : "connecting too fast from this address");
        return 429;
    }
    /* A bad token is answered after the upgrade, with close code 4001, so
     * that browsers (which never see an HTTP status) can tell why. */
    if (f->cfg->auth.enabled) {
        c->auth_checked = 1;
        c->auth_result = auth_request(f->cfg, req, (int64_t)worker_now_ms(), &c->grant);
    }
    char **names = NULL;
    int n = 0;
    char *q = malloc(f->cfg->fanout.max_header_bytes + 1);
    if (q == NULL)
        return 503;
    if (http_req_query(req, "channels", q, (size_t)f->cfg->fanout.max_header_bytes + 1) == 0 &&
        cfg_split_list(q, &names, &n) < 0) {
        free(q);
        return 400;
    }
    free(q);
    const char *bad = NULL;
    int r = proto_check_names(names, n, f->cfg->fanout.max_subscriptions, &bad);
    if (r < 0) {
        if (r == -E2BIG) {
            limit_hit(f, "max_subscriptions");
            buf_printf(body, "at most %d channels", f->cfg->fanout.max_subscriptions);
        } else {
            buf_printf(body, "bad channel name: %.128s", bad);
        }
        cfg_free_list(names, n);
        return 400;
    }
    for (int i = 0; i < n && c->forbidden == 0; i++)
        if (!auth_channel_allowed(&c->grant, names[i]))
            c->forbidden = i + 1;
    c->url_chans = names;
    c->n_url = n;
    c->upgraded = 1;
    /* Which worker took the connection: for operators and tests. */
    buf_printf(extra, "X-Exchange-Worker: %d\r\n", f->pid);
    f->nclients++;
    return 0;
}

/* Count, log (the reason, never the token) and close 4001/4003. */
static void auth_fail(client_t *c, int code, const char *reason, const char *channel)
{
    char msg[124];
    metric_inc(metric_labels(c->f->m.auth_failures, "reason=\"%s\"", reason));
    log_info("client refused by auth", "peer=%s code=%d reason=%s channel=%s", wss_peer(c->conn), code,
             reason, log_q(channel ? channel : ""));
    if (code == 4003)
        snprintf(msg, sizeof msg, "forbidden channel: %.90s", channel ? channel : "");
    else
        snprintf(msg, sizeof msg, "unauthenticated: %s", reason);
    /* Keep what is queued: from on_open that is the 101 answer itself. */
    wss_close(c->conn, code, msg, 0);
}

/* Sent elsewhere: {"type":"reconnect","reason":"shed","after_ms":N} (N
 * spread over a second), then close 1001. */
static void shed_client(client_t *c)
{
    char *msg = proto_reconnect_msg("shed", rand() % 1000);
    if (msg != NULL) {
        (void)wss_send_text(c->conn, msg, strlen(msg));
        free(msg);
    }
    log_debug("client shed", "peer=%s clients=%d max_clients=%d", wss_peer(c->conn), c->f->nclients,
              c->f->cfg->fanout.max_clients);
    wss_close(c->conn, 1001, "over capacity: reconnect", 0);
}

static void on_open(wss_conn_t *conn)
{
    client_t *c = wss_conn_data(conn);
    fanout_t *f = c->f;
    if (c->shed) {
        list_add(c, 2);
        shed_client(c);
        return;
    }
    metric_inc(f->m.accepted);
    metric_set(f->m.clients, f->nclients);
    list_add(c, 1);
    if ((c->hc = hub_client_new(f->hub, c)) == NULL) {
        wss_close(conn, 1011, "out of memory", 1);
        return;
    }
    log_debug("client connected", "peer=%s channels=%d", wss_peer(conn), c->n_url);
    if (c->auth_checked && c->auth_result != JWT_OK) {
        auth_fail(c, 4001, jwt_result_name(c->auth_result), NULL);
        return;
    }
    if (c->forbidden > 0) {
        auth_fail(c, 4003, "forbidden_channel", c->url_chans[c->forbidden - 1]);
        return;
    }
    if (c->n_url > 0)
        (void)proto_subscribe_names(c->hc, c->url_chans, c->n_url);
}

static void on_message(wss_conn_t *conn, int opcode, const char *data, size_t len)
{
    client_t *c = wss_conn_data(conn);
    fanout_t *f = c->f;
    if (c->hc == NULL)
        return;
    if (opcode != WSS_OP_TEXT) {
        proto_binary(c->hc);
        return;
    }
    if (c->auth_checked) {
        char bad[160];
        if (c->grant.exp_ms > 0 && (int64_t)worker_now_ms() > c->grant.exp_ms) {
            auth_fail(c, 4001, "expired", NULL);
            return;
        }
        if (auth_check_request(&c->grant, data, len, bad, sizeof bad) < 0) {
            auth_fail(c, 4003, "forbidden_channel", bad);
            return;
        }
    }
    int limited = 0;
    int r = proto_handle(c->hc, &c->rate, f->cfg->fanout.max_requests_per_sec, data, len, worker_now_ms(),
                         &limited);
    if (limited)
        limit_hit(f, "max_requests_per_sec");
    if (r == PROTO_CLOSE_POLICY) {
        limit_hit(f, "max_requests_per_sec");
        log_info("flooding client closed", "peer=%s", wss_peer(conn));
        wss_close(conn, 1008, "too many requests", 1);
    }
}

static const char *status_reason(int status)
{
    switch (status) {
    case 400: return "bad_request";
    case 403: return "origin";
    case 404: return "not_found";
    case 413: return "too_large";
    case 426: return "not_upgrade";
    case 429: return "too_many_requests";
    case 431: return "headers_too_large";
    case 503: return "unavailable";
    default: return "other";
    }
}

static void drain_maybe_done(fanout_t *f);

static void on_close(wss_conn_t *conn, wss_end_t why, int code)
{
    client_t *c = wss_conn_data(conn);
    fanout_t *f = c->f;
    if (!c->upgraded) {
        if (why == WSS_END_REJECTED && code == 200) {
            client_free(c); /* the demo page was served: not a refused upgrade */
            return;
        }
        if (why == WSS_END_REJECTED)
            metric_inc(metric_labels(f->m.rejected, "reason=\"%s\"", status_reason(code)));
        else
            metric_inc(metric_labels(f->m.rejected, "reason=\"%s\"",
                                     why == WSS_END_TIMEOUT ? "handshake_timeout"
                                     : why == WSS_END_TLS   ? "tls_handshake"
                                                            : "aborted"));
        if (why == WSS_END_REJECTED && code == 431)
            limit_hit(f, "max_header_bytes");
        client_free(c);
        return;
    }
    const char *reason = "peer";
    switch (why) {
    case WSS_END_TIMEOUT:
        reason = "pong_timeout";
        limit_hit(f, "idle_timeout");
        break;
    case WSS_END_PROTOCOL:
        reason = code == 1009 ? "too_big" : code == 1007 ? "bad_utf8" : "protocol";
        if (code == 1009)
            limit_hit(f, "max_message_bytes");
        break;
    case WSS_END_LOCAL:
        reason = code == 1013   ? "slow"
                 : code == 1008 ? "rate"
                 : code == 1001 ? (c->shed ? "shed" : "drain")
                 : code == 4001 ? "unauthenticated"
                 : code == 4003 ? "forbidden"
                                : "server";
        break;
    case WSS_END_RATE:
        reason = "input_rate";
        limit_hit(f, "max_bytes_in_per_sec");
        log_info("client over the input rate closed", "peer=%s", wss_peer(conn));
        break;
    case WSS_END_ERROR: reason = "error"; break;
    default: break;
    }
    f->nclients--;
    metric_inc(metric_labels(f->m.disconnects, "reason=\"%s\"", reason));
    metric_set(f->m.clients, f->nclients);
    log_debug("client disconnected", "peer=%s reason=%s code=%d", wss_peer(conn), reason, code);
    client_free(c);
    if (f->draining)
        drain_maybe_done(f);
}

static const wss_callbacks_t wss_cbs = {
    .on_request = on_request,
    .on_open = on_open,
    .on_message = on_message,
    .on_close = on_close,
};

/* ---- listener -------------------------------------------------------------- */

/* Takes one accepted socket (non-blocking) into a client. */
static void accept_client(fanout_t *f, int fd)
{
    client_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        metric_inc(metric_labels(f->m.accept_errors, "reason=\"enomem\""));
        log_warn_err(-ENOMEM, "accept failed", LOG_NOFIELDS);
        return;
    }
    c->f = f;
    int r = wss_accept_fd(f->wss, fd, c, &c->conn);
    if (r < 0) {
        metric_inc(metric_labels(f->m.accept_errors, "reason=\"setup\""));
        log_warn_err(r, "accept failed", LOG_NOFIELDS);
        free(c);
        return;
    }
    const cfg_t *cfg = f->cfg;
    if (cfg->fanout.max_connections_per_ip > 0 || cfg->fanout.max_connections_per_sec_per_ip > 0) {
        c->ip_counted = 1;
        c->limited = iplimits_connect(f->limits, wss_peer_ip(c->conn), cfg->fanout.max_connections_per_ip,
                                      cfg->fanout.max_connections_per_sec_per_ip, uv_now(f->loop));
    }
}

static void on_listen_readable(uv_poll_t *h, int status, int events);

static void on_accept_resume(uv_timer_t *t)
{
    fanout_t *f = t->data;
    if (f->listening)
        (void)uv_poll_start(&f->listener, UV_READABLE, on_listen_readable);
}

static const char *accept_errno_reason(int err)
{
    switch (err) {
    case EMFILE: return "emfile";
    case ENFILE: return "enfile";
    case ENOBUFS: return "enobufs";
    case ENOMEM: return "enomem";
    default: return "other";
    }
}

/* accept() failed for want of a resource (EMFILE: our open-files limit,
 * ENFILE: the system's, or kernel memory). libuv would close the waiting
 * connections to get going again; we leave them in the backlog, stop
 * watching the listen socket for ACCEPT_PAUSE_MS and try again. One log
 * line per episode, every failure counted. */
static void accept_pause(fanout_t *f, int err)
{
    metric_inc(metric_labels(f->m.accept_errors, "reason=\"%s\"", accept_errno_reason(err)));
    if (f->accept_pauses++ == 0) {
        struct rlimit rl = {0, 0};
        (void)getrlimit(RLIMIT_NOFILE, &rl);
        log_error_err(err, "accept failed, pausing accepts",
                      "clients=%d nofile_soft=%llu nofile_hard=%llu "
                      "pause_ms=%d",
                      f->nclients, (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
                      ACCEPT_PAUSE_MS);
    }
    uv_poll_stop(&f->listener);
    uv_timer_start(&f->accept_timer, on_accept_resume, ACCEPT_PAUSE_MS, 0);
}

static void on_listen_readable(uv_poll_t *h, int status, int events)
{
    fanout_t *f = h->data;
    (void)events;
    if (status < 0) {
        log_warn_err(status, "listen socket poll failed", LOG_NOFIELDS);
        accept_pause(f, -status);
        return;
    }
    for (int i = 0; i < ACCEPT_BATCH && f->listening; i++) {
        int fd = accept4(f->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue; /* that connection is gone; the next may be fine */
            accept_pause(f, errno);
            return;
        }
        if (f->accept_pauses > 0) {
            log_info("accepting again", "pauses=%d clients=%d", f->accept_pauses, f->nclients);
            f->accept_pauses = 0;
        }
        accept_client(f, fd);
    }
}

static void on_listener_closed(uv_handle_t *h)
{
    fanout_t *f = h->data;
    close(f->listen_fd); /* uv_poll_t does not own the socket */
    f->listen_fd = -1;
}

static void close_listener(fanout_t *f)
{
    if (f->listening) {
        f->listening = 0;
        if (f->timers_init)
            uv_timer_stop(&f->accept_timer);
        uv_close((uv_handle_t *)&f->listener, on_listener_closed);
    }
}

static void on_sync_timer(uv_timer_t *t)
{
    server_sync_metrics(t->data);
}

static int open_listener(fanout_t *f)
{
    int r, fd;
    /* SO_REUSEPORT: every worker binds the same port and the kernel spreads
     * new connections among them. */
    if ((fd = r = listener_open(f->cfg->fanout.listen, 1, LISTEN_BACKLOG, &f->port)) < 0)
        goto fail;
    /* Accepted here (accept4), not by uv_listen: libuv answers EMFILE by
     * closing every waiting connection, unlogged (see accept_pause). */
    if ((r = uv_poll_init_socket(f->loop, &f->listener, fd)) < 0)
        goto fail;
    f->listener.data = f;
    f->listen_fd = fd;
    fd = -1;
    f->listening = 1;
    if ((r = uv_poll_start(&f->listener, UV_READABLE, on_listen_readable)) < 0)
        goto fail;
    log_info("fanout listening", "listen=%s port=%d path=%s", log_q(f->cfg->fanout.listen), f->port,
             log_q(f->cfg->fanout.path));
    return 0;
fail:
    log_error_err(r, "cannot listen", "listen=%s", log_q(f->cfg->fanout.listen));
    if (fd >= 0)
        close(fd);
    close_listener(f);
    return r;
}

/* [tls] cert and key: serve wss://. Read once per worker; a SIGHUP starts
 * new workers, which is how a renewed certificate gets served. */
static int server_tls_start(fanout_t *f)
{
    const cfg_t *cfg = f->cfg;
    char err[256] = "";
    if (cfg->tls.cert == NULL || cfg->tls.cert[0] == '\0')
        return 0;
    int r = tls_server_ctx_new(cfg->tls.cert, cfg->tls.key, &f->tls, err, sizeof err);
    if (r == 0 && cfg->tls.ca[0] != '\0' &&
        (r = tls_server_ctx_verify_clients(f->tls, cfg->tls.ca, err, sizeof err)) < 0) {
        tls_ctx_free(f->tls);
        f->tls = NULL;
    }
    if (r < 0) {
        log_error("cannot serve wss://", "cert=%s key=%s ca=%s err=%s", log_q(cfg->tls.cert),
                  log_q(cfg->tls.key), log_q(cfg->tls.ca), log_q(err));
        return r;
    }
    wss_ctx_set_tls(f->wss, f->tls);
    log_info("serving wss://", "cert=%s client_ca=%s", log_q(cfg->tls.cert), log_q(cfg->tls.ca));
    return 0;
}

int server_start(fanout_t *f)
{
    const cfg_t *cfg = f->cfg;
    int r;
    f->pid = (int)getpid();
    wss_limits_t lim = {
        .max_header_bytes = (size_t)cfg->fanout.max_header_bytes,
        .max_message_bytes = (size_t)cfg->fanout.max_message_bytes,
        .queue_bytes = (size_t)cfg->fanout.client_queue_bytes,
        .idle_timeout_ms = (uint64_t)cfg->fanout.idle_timeout_ms,
        .pong_timeout_ms = (uint64_t)cfg->fanout.pong_timeout_ms,
        .close_timeout_ms = 5000,
        .handshake_timeout_ms = 10000,
        .max_rx_bytes_per_sec = (size_t)cfg->fanout.max_bytes_in_per_sec,
        .deflate = cfg->fanout.compression,
        .write_delay_ms = (uint64_t)cfg->fanout.write_delay_ms,
    };
    if (cfg->fanout.allowed_origins && *cfg->fanout.allowed_origins &&
        cfg_split_list(cfg->fanout.allowed_origins, &f->origins, &f->norigins) < 0)
        return -ENOMEM;
    if ((r = wss_ctx_new(f->loop, &lim, &wss_cbs, &f->wss)) < 0)
        return r;
    if ((f->limits = iplimits_new()) == NULL)
        return -ENOMEM;
    if ((r = server_tls_start(f)) < 0)
        return r;
    uv_timer_init(f->loop, &f->drain_timer);
    uv_timer_init(f->loop, &f->deadline_timer);
    uv_timer_init(f->loop, &f->sync_timer);
    uv_timer_init(f->loop, &f->accept_timer);
    uv_timer_init(f->loop, &f->replay_timer);
    f->drain_timer.data = f->deadline_timer.data = f->sync_timer.data = f->accept_timer.data = f;
    f->replay_timer.data = f;
    f->timers_init = 1;
    uv_timer_start(&f->sync_timer, on_sync_timer, 1000, 1000);
    uv_unref((uv_handle_t *)&f->sync_timer);
    return open_listener(f);
}

/* ---- drain / stop ------------------------------------------------------------ */

static void drain_finish(fanout_t *f, const char *why)
{
    server_sync_metrics(f);
    log_info("drain finished", "why=%s clients_left=%d", why, f->nclients);
    uv_timer_stop(&f->drain_timer);
    uv_timer_stop(&f->deadline_timer);
    worker_exit(f->w, 0);
}

static void drain_maybe_done(fanout_t *f)
{
    if (f->nclients == 0)
        drain_finish(f, "no clients");
}

static void drain_one(fanout_t *f, client_t *c)
{
    list_del(c);
    list_add(c, 2);
    /* Spread the reconnects a little too, so a drained instance does not
     * send every client to the others in the same millisecond. */
    int after = f->cfg->fanout.drain_ms > 0
                    ? rand() % (f->cfg->fanout.drain_ms < 1000 ? f->cfg->fanout.drain_ms : 1000)
                    : 0;
    char *msg = proto_reconnect_msg("drain", after);
    if (msg != NULL) {
        (void)wss_send_text(c->conn, msg, strlen(msg));
        free(msg);
    }
    wss_close(c->conn, 1001, "server draining", 0);
}

static void on_drain_tick(uv_timer_t *t)
{
    fanout_t *f = t->data;
    for (int i = 0; i < f->drain_per_tick && f->active != NULL; i++)
        drain_one(f, f->active);
    if (f->active == NULL)
        uv_timer_stop(t);
}

static void on_deadline(uv_timer_t *t)
{
    drain_finish(t->data, "deadline");
}

void server_drain(fanout_t *f, int drain_ms)
{
    if (f->draining)
        return;
    f->draining = 1;
    close_listener(f);
    if (f->nclients == 0) {
        drain_finish(f, "no clients");
        return;
    }
    /* Closes go out over the first 80% of drain_ms; the rest is for the
     * close handshakes. The hard deadline is drain_ms (at least 1s). */
    int spread = drain_ms * 8 / 10;
    int ticks = spread / DRAIN_TICK_MS;
    if (ticks < 1)
        ticks = 1;
    /* Fewer clients than ticks: one per tick, the ticks themselves spread
     * (three clients over 24 s go at 0, 8 and 16 s, not within 30 ms). */
    if (ticks > f->nclients)
        ticks = f->nclients;
    uint64_t tick_ms = (uint64_t)(spread / ticks > DRAIN_TICK_MS ? spread / ticks : DRAIN_TICK_MS);
    f->drain_total = f->nclients;
    f->drain_per_tick = (f->drain_total + ticks - 1) / ticks;
    log_info("draining clients", "clients=%d drain_ms=%d per_tick=%d tick_ms=%" PRIu64, f->nclients, drain_ms,
             f->drain_per_tick, tick_ms);
    uv_timer_start(&f->drain_timer, on_drain_tick, 0, tick_ms);
    uv_timer_start(&f->deadline_timer, on_deadline, (uint64_t)(drain_ms < 1000 ? 1000 : drain_ms), 0);
}

void server_stop(fanout_t *f)
{
    close_listener(f);
    while (f->active != NULL) {
        client_t *c = f->active;
        list_del(c);
        list_add(c, 2);
        wss_abort(c->conn);
    }
    if (f->timers_init) {
        uv_timer_stop(&f->drain_timer);
        uv_timer_stop(&f->deadline_timer);
        uv_timer_stop(&f->sync_timer);
        uv_timer_stop(&f->replay_timer);
    }
}
