/* The relay endpoint: listener, token check at the upgrade, the resume
 * handshake with its replay from the channel rings (feed.c), and the live
 * stream framed once per message for every connection. See relay.h for the
 * protocol and DESIGN.md "Kafka failure and the relay" for why. */
#include "relay.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "relay_proto.h"
#include "strmap.h"
#include "wsproto.h"
#include "wsserver.h"

enum { RC_HANDSHAKE = 0, RC_AWAIT_RESUME, RC_CATCHUP, RC_LIVE, RC_CLOSING };

/* The catch-up steps of resuming clients run this often (see catch_up). */
#define PACE_MS 2

typedef struct cursor_s cursor_t;

typedef struct rconn_s rconn_t;
struct rconn_s {
    relay_t *r;
    wss_conn_t *conn;
    int state;
    int counted;      /* in r->nclients */
    int mode;         /* FROM_*: where the resume starts */
    strmap_t cursors; /* RC_CATCHUP: channel -> cursor_t */
    uint64_t replayed;
    int gaps;
    rconn_t *prev, *next;
};

struct relay_s {
    ingest_t *in;
    uv_loop_t *loop;
    wss_ctx_t *wss;
    uv_tcp_t listener;
    uv_timer_t pace;  /* runs the catch-up steps while a client catches up */
    uv_tcp_t refused; /* takes a connection refused for want of memory */
    int refusing, refuse_pending;
    int listening, pace_open, stopping;
    char *listen;
    ingest_relay_t hook;
    rconn_t *conns;
    int nclients; /* upgraded, not closed */
    int nlive;    /* resumed: receiving the live stream */
    int ncatchup; /* resuming: being caught up from the rings */
    int nconns;   /* every accepted connection, until its on_close */
    uint64_t messages;
    metric_t *m_clients, *m_messages, *m_replayed, *m_rejected, *m_disconnects, *m_gaps;
};

/* ---- helpers ------------------------------------------------------------ */

static void list_del(rconn_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else if (c->r->conns == c)
        c->r->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void maybe_free(relay_t *r)
{
    if (r->stopping && !r->listening && !r->pace_open && r->nconns == 0) {
        free(r->listen);
        free(r);
    }
}

static void on_pace(uv_timer_t *t);

static void set_state(rconn_t *c, int st)
{
    relay_t *r = c->r;
    if (c->state == RC_LIVE)
        r->nlive--;
    if (c->state == RC_CATCHUP && --r->ncatchup == 0 && r->pace_open)
        uv_timer_stop(&r->pace);
    c->state = st;
    if (st == RC_LIVE)
        r->nlive++;
    if (st == RC_CATCHUP && r->ncatchup++ == 0 && r->pace_open)
        uv_timer_start(&r->pace, on_pace, PACE_MS, PACE_MS);
}

/* Queue one frame; a connection that cannot take it is too slow and is
 * closed (its unsent frames dropped): it reconnects and resumes by seq. */
static int send_frame(rconn_t *c, rbuf_t *frame, int replay)
{
    relay_t *r = c->r;
    int rc = wss_send(c->conn, frame, NULL);
    if (rc >= 0) {
        metric_inc(replay ? r->m_replayed : r->m_messages);
        r->messages++;
        return 0;
    }
    if (replay)
        return rc; /* handle_resume decides */
    if (rc == -ENOBUFS) {
        metric_inc(metric_labels(r->m_disconnects, "reason=\"slow\""));
        log_warn("relay client too slow, disconnected", "peer=%s queued=%zu", wss_peer(c->conn),
                 wss_queued_bytes(c->conn));
        wss_close(c->conn, RELAY_CLOSE_POLICY, "relay queue limit exceeded; resume again", 1);
    } else if (rc != -EPIPE) {
        /* Missed a message (no memory): never leave a hole in an open stream. */
        wss_close(c->conn, RELAY_CLOSE_ERROR, "relay send failed; resume again", 1);
    }
    set_state(c, RC_CLOSING);
    return rc;
}

/* ---- ingest hook (loop thread) ----------------------------------------------- */

static void hook_publish(void *arg, const char *channel, int64_t seq, rbuf_t *msg)
{
    relay_t *r = arg;
    (void)channel;
    (void)seq;
    if (r->nlive == 0)
        return;
    rbuf_t *frame = wss_frame(WSS_OP_TEXT, msg->data, msg->len);
    if (frame == NULL) {
        /* Cannot deliver this one: better a reconnect with resume than a
         * silent hole in every client's stream. */
        for (rconn_t *c = r->conns; c != NULL; c = c->next)
            if (c->state == RC_LIVE) {
                wss_close(c->conn, RELAY_CLOSE_ERROR, "out of memory; resume again", 1);
                set_state(c, RC_CLOSING);
            }
        return;
    }
    rconn_t *next;
    for (rconn_t *c = r->conns; c != NULL; c = next) {
        next = c->next;
        if (c->state == RC_LIVE)
            (void)send_frame(c, frame, 0);
    }
    rbuf_unref(frame);
}

static void hook_epoch(void *arg, int64_t epoch)
{
    relay_t *r = arg;
    /* Nothing to do for live connections: the new epoch's messages start at
     * seq 1 and the fanout's hub takes a higher epoch as a fresh start. A
     * catch-up's positions were in the old epoch, whose rings are cleared:
     * that client resumes again, from the new epoch's start. */
    for (rconn_t *c = r->conns; c != NULL; c = c->next)
        if (c->state == RC_CATCHUP) {
            wss_close(c->conn, RELAY_CLOSE_ERROR, "new epoch; resume again", 0);
            set_state(c, RC_CLOSING);
        }
    log_info("relay: new epoch", "epoch=%" PRId64 " clients=%d", epoch, r->nclients);
}

/* ---- resume: a paced catch-up from the rings ------------------------------------ */

/* A resuming client is caught up from the channel rings, oldest first, a
 * step at a time: each step queues at most what takes its queue to half of
 * [relay] client_queue_bytes (the rest of the bound is room for the
 * writes in flight), and the next step runs once the client has read it (the
 * pace timer). Live messages are not sent to it meanwhile: they are in the
 * rings, where the catch-up reaches them. When a whole pass over every
 * channel finds nothing left, the client goes live in the same loop turn,
 * so it sees each channel's seq strictly increasing, and however much it
 * missed, it misses nothing the rings still hold. What the rings no longer
 * hold (a client slower than [relay] history) is a gap, logged and counted. */
enum { FROM_SINCE, FROM_TAIL, FROM_ALL, FROM_NONE };
static const char *const from_name[] = {"since", "tail", "all", "none"};

struct cursor_s {
    strmap_node_t node;
    int64_t pos;    /* the client has every message of the channel up to here */
    int expect_all; /* a hole after pos is a gap (not for a warm start's tail) */
    char name[];
};

typedef struct {
    rconn_t *c;
    cursor_t *cur;
    const relay_resume_t *req; /* while the cursors are made */
    uint64_t budget;           /* bytes this step may still queue */
    int sent, full, failed;
} step_t;

static void cursor_free(strmap_node_t *n)
{
    free(STRMAP_ENTRY(n, cursor_t, node));
}

static void cursors_free(rconn_t *c)
{
    if (c->cursors.buckets != NULL)
        strmap_clear(&c->cursors, cursor_free);
    memset(&c->cursors, 0, sizeof(c->cursors));
}

static cursor_t *cursor_get(rconn_t *c, const char *channel, int64_t pos, int expect_all)
{
    size_t n = strlen(channel);
    strmap_node_t *e = strmap_get(&c->cursors, channel, n);
    if (e != NULL)
        return STRMAP_ENTRY(e, cursor_t, node);
    cursor_t *cur = malloc(sizeof(*cur) + n + 1);
    if (cur == NULL)
        return NULL;
    memcpy(cur->name, channel, n + 1);
    cur->pos = pos;
    cur->expect_all = expect_all;
    strmap_put(&c->cursors, &cur->node, cur->name, n);
    return cur;
}

static uint64_t frame_bytes(const rbuf_t *msg)
{
    return (uint64_t)(msg->len + wss_frame_header_len(msg->len));
}

/* The client's position on every channel known at the resume. */
static int add_cursor(void *arg, const char *channel, int64_t last_seq, rbuf_t *latest)
{
    step_t *st = arg;
    (void)latest;
    int64_t from = 0;
    int expect_all = 1;
    if (st->c->mode == FROM_SINCE) {
        from = relay_proto_resume_since(st->req, channel);
    } else if (st->c->mode == FROM_TAIL) {
        from = last_seq - st->req->tail;
        if (from < 0)
            from = 0;
        expect_all = 0;
    }
    if (cursor_get(st->c, channel, from, expect_all) == NULL) {
        st->failed = 1;
        return 1;
    }
    return 0;
}

static int step_msg(void *arg, int64_t seq, rbuf_t *msg)
{
    step_t *st = arg;
    rconn_t *c = st->c;
    cursor_t *cur = st->cur;
    uint64_t n = frame_bytes(msg);
    /* A message bigger than the step goes alone into an empty queue. */
    if (n > st->budget && (st->sent > 0 || wss_queued_bytes(c->conn) > 0)) {
        st->full = 1;
        return 1;
    }
    if (seq > cur->pos + 1 && cur->expect_all) {
        c->gaps++;
        metric_inc(c->r->m_gaps);
        log_info("relay replay cannot fill the client's gap",
                 "peer=%s channel=%s since=%" PRId64 " first=%" PRId64 " why=ring", wss_peer(c->conn),
                 log_q(cur->name), cur->pos, seq);
    }
    rbuf_t *frame = wss_frame(WSS_OP_TEXT, msg->data, msg->len);
    if (frame == NULL || send_frame(c, frame, 1) < 0) {
        rbuf_unref(frame);
        st->failed = 1;
        return 1;
    }
    rbuf_unref(frame);
    cur->pos = seq;
    st->budget = n < st->budget ? st->budget - n : 0;
    st->sent++;
    c->replayed++;
    return 0;
}

static int step_chan(void *arg, const char *channel, int64_t last_seq, rbuf_t *latest)
{
    step_t *st = arg;
    (void)latest;
    /* A channel that first appeared after the resume: all of it is new. */
    if ((st->cur = cursor_get(st->c, channel, 0, 1)) == NULL) {
        st->failed = 1;
        return 1;
    }
    if (st->cur->pos < last_seq)
        (void)ingest_history(st->c->r->in, channel, st->cur->pos, step_msg, st); /* holes: step_msg */
    return st->full || st->failed;
}

static void go_live(rconn_t *c)
{
    cursors_free(c);
    set_state(c, RC_LIVE);
    log_info("relay client resumed", "peer=%s mode=%s replayed=%" PRIu64 " gaps=%d epoch=%" PRId64,
             wss_peer(c->conn), from_name[c->mode], c->replayed, c->gaps, c->r->in->epoch);
}

/* One step of a client's catch-up. */
static void catch_up(rconn_t *c)
{
    relay_t *r = c->r;
    uint64_t half = (uint64_t)r->in->cfg->relay.client_queue_bytes / 2;
    uint64_t queued = wss_queued_bytes(c->conn);
    if (queued >= half)
        return; /* still reading the last step */
    step_t st = {.c = c, .budget = half - queued};
    ingest_channels(r->in, step_chan, &st);
    if (st.failed) {
        /* Out of memory, or the connection is closing: never a hole in an
         * open stream; what is queued is progress, the client resumes. */
        if (c->state == RC_CATCHUP) {
            metric_inc(metric_labels(r->m_disconnects, "reason=\"replay_failed\""));
            log_warn("relay replay could not queue; client must resume again", "peer=%s replayed=%" PRIu64,
                     wss_peer(c->conn), c->replayed);
            wss_close(c->conn, RELAY_CLOSE_ERROR, "replay failed; resume again", 0);
            set_state(c, RC_CLOSING);
        }
        return;
    }
    if (!st.full)
        go_live(c);
}

static void on_pace(uv_timer_t *t)
{
    relay_t *r = t->data;
    rconn_t *next;
    for (rconn_t *c = r->conns; c != NULL; c = next) {
        next = c->next;
        if (c->state == RC_CATCHUP)
            catch_up(c);
    }
}

static void handle_resume(rconn_t *c, const relay_resume_t *req)
{
    relay_t *r = c->r;
    int64_t epoch = req->epoch;
    if (epoch <= 0)
        c->mode = FROM_TAIL;
    else if (epoch == r->in->epoch)
        c->mode = FROM_SINCE;
    else if (epoch < r->in->epoch)
        c->mode = FROM_ALL; /* every channel restarted at seq 1 in our epoch */
    else
        c->mode = FROM_NONE; /* the client has seen a newer leader: we are stale, it fences us */
    log_info("relay client resuming", "peer=%s mode=%s client_epoch=%" PRId64 " epoch=%" PRId64,
             wss_peer(c->conn), from_name[c->mode], epoch, r->in->epoch);
    if (c->mode == FROM_NONE) {
        go_live(c);
        return;
    }
    step_t st = {.c = c, .req = req};
    if (strmap_init(&c->cursors, 64) < 0)
        st.failed = 1;
    else
        ingest_channels(r->in, add_cursor, &st);
    if (st.failed) {
        cursors_free(c);
        log_warn("relay resume: out of memory; client must resume again", "peer=%s", wss_peer(c->conn));
        wss_close(c->conn, RELAY_CLOSE_ERROR, "out of memory; resume again", 1);
        set_state(c, RC_CLOSING);
        return;
    }
    set_state(c, RC_CATCHUP);
    catch_up(c);
}

/* ---- wss callbacks ------------------------------------------------------------ */

static int on_request(wss_conn_t *conn, const http_req_t *req, buf_t *extra, buf_t *body)
{
    rconn_t *c = wss_conn_data(conn);
    relay_t *r = c->r;
    char path[256], accept[29];
    int st;
    if (r->stopping) {
        buf_puts(body, "relay stopping");
        return 503;
    }
    if (http_req_path(req, path, sizeof path) < 0 || strcmp(path, RELAY_PATH) != 0) {
        buf_printf(body, "not found; the relay endpoint is %s", RELAY_PATH);
        return 404;
    }
    if ((st = wss_check_upgrade(req, accept)) != 0) {
        buf_puts(extra, "Sec-WebSocket-Version: 13\r\n");
        buf_puts(body, "WebSocket upgrade required");
        return st;
    }
    if (!http_req_token_ok(req, r->in->cfg->relay.token)) {
        buf_puts(extra, "WWW-Authenticate: Bearer realm=\"relay\"\r\n");
        buf_puts(body, "relay token required");
        return 401;
    }
    c->state = RC_AWAIT_RESUME;
    c->counted = 1;
    r->nclients++;
    return 0;
}

static void on_open(wss_conn_t *conn)
{
    rconn_t *c = wss_conn_data(conn);
    metric_set(c->r->m_clients, c->r->nclients);
    log_info("relay client connected", "peer=%s clients=%d", wss_peer(conn), c->r->nclients);
}

static void on_message(wss_conn_t *conn, int opcode, const char *data, size_t len)
{
    rconn_t *c = wss_conn_data(conn);
    if (opcode != WSS_OP_TEXT || c->state == RC_CLOSING)
        return;
    json_error_t err;
    json_t *req = json_loadb(data, len, 0, &err);
    const char *op = json_string_value(json_object_get(req, "op"));
    relay_resume_t rr;
    if (c->state == RC_AWAIT_RESUME && relay_proto_resume_parse(req, &rr) == 0) {
        handle_resume(c, &rr);
    } else {
        /* Only one request exists; anything else is a confused peer. */
        log_warn("relay: unexpected client message", "peer=%s op=%s", wss_peer(conn), log_q(op ? op : ""));
        wss_close(conn, RELAY_CLOSE_POLICY, "expected one resume request", 1);
        set_state(c, RC_CLOSING);
    }
    json_decref(req);
}

static const char *reject_reason(int status)
{
    switch (status) {
    case 401: return "token";
    case 404: return "not_found";
    case 426: return "not_upgrade";
    case 431: return "headers_too_large";
    case 503: return "unavailable";
    default: return "bad_request";
    }
}

static void on_close(wss_conn_t *conn, wss_end_t why, int code)
{
    rconn_t *c = wss_conn_data(conn);
    relay_t *r = c->r;
    if (!c->counted) {
        const char *reason = why == WSS_END_REJECTED  ? reject_reason(code)
                             : why == WSS_END_TIMEOUT ? "handshake_timeout"
                                                      : "aborted";
        metric_inc(metric_labels(r->m_rejected, "reason=\"%s\"", reason));
        if (why == WSS_END_REJECTED && code == 401)
            log_warn("relay connection refused: bad or missing token", "peer=%s", wss_peer(conn));
    } else {
        if (c->state != RC_CLOSING)
            metric_inc(metric_labels(r->m_disconnects, "reason=\"%s\"",
                                     why == WSS_END_TIMEOUT    ? "pong_timeout"
                                     : why == WSS_END_PROTOCOL ? "protocol"
                                     : why == WSS_END_LOCAL    ? "server"
                                                               : "peer"));
        set_state(c, RC_CLOSING);
        r->nclients--;
        metric_set(r->m_clients, r->nclients);
        log_info("relay client disconnected", "peer=%s code=%d clients=%d", wss_peer(conn), code,
                 r->nclients);
    }
    cursors_free(c);
    list_del(c);
    free(c);
    r->nconns--;
    maybe_free(r);
}

static const wss_callbacks_t relay_cbs = {
    .on_request = on_request,
    .on_open = on_open,
    .on_message = on_message,
    .on_close = on_close,
};

/* ---- listener --------------------------------------------------------------------- */

static void on_connection(uv_stream_t *s, int status);

static void on_refused_closed(uv_handle_t *h)
{
    relay_t *r = h->data;
    r->refusing = 0;
    r->nconns--;
    if (r->refuse_pending && !r->stopping) {
        r->refuse_pending = 0;
        on_connection((uv_stream_t *)&r->listener, 0);
    }
    maybe_free(r);
}

/* No memory for a connection: accept it into the relay's spare handle and
 * close it, so that the client retries. (libuv stops watching the listener
 * while an accepted socket waits for uv_accept: leaving it there would
 * stall every later connection.) */
static void refuse(relay_t *r)
{
    metric_inc(metric_labels(r->m_rejected, "reason=\"no_memory\""));
    log_error("relay connection refused: out of memory", LOG_NOFIELDS);
    if (r->refusing) {
        r->refuse_pending = 1; /* taken when the spare handle is closed */
        return;
    }
    uv_tcp_init(r->loop, &r->refused);
    r->refused.data = r;
    r->refusing = 1;
    r->nconns++;
    if (uv_accept((uv_stream_t *)&r->listener, (uv_stream_t *)&r->refused) < 0)
        log_warn("relay: cannot take the refused connection", LOG_NOFIELDS);
    uv_close((uv_handle_t *)&r->refused, on_refused_closed);
}

static void on_connection(uv_stream_t *s, int status)
{
    relay_t *r = s->data;
    if (status < 0) {
        log_warn_err(status, "relay accept failed", LOG_NOFIELDS);
        return;
    }
    rconn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        refuse(r);
        return;
    }
    c->r = r;
    int rc = wss_accept(r->wss, s, c, &c->conn);
    if (rc < 0) {
        log_warn_err(rc, "relay accept failed", LOG_NOFIELDS);
        free(c);
        return;
    }
    r->nconns++;
    c->next = r->conns;
    if (r->conns)
        r->conns->prev = c;
    r->conns = c;
}

static void on_listener_closed(uv_handle_t *h)
{
    relay_t *r = h->data;
    r->listening = 0;
    maybe_free(r);
}

static void on_pace_closed(uv_handle_t *h)
{
    relay_t *r = h->data;
    r->pace_open = 0;
    maybe_free(r);
}

int relay_start(ingest_t *in, relay_t **out)
{
    const cfg_t *cfg = in->cfg;
    int rc;
    relay_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -ENOMEM;
    r->in = in;
    r->loop = in->loop;
    if ((r->listen = strdup(cfg->relay.listen)) == NULL) {
        free(r);
        return -ENOMEM;
    }
    r->m_clients = metric_gauge("exchange_relay_clients", "Fanout workers connected to this relay");
    r->m_messages = metric_counter("exchange_relay_messages_total", "Live messages queued to relay clients");
    r->m_replayed = metric_counter("exchange_relay_replayed_total",
                                   "Messages replayed from the channel rings to resuming relay clients");
    r->m_rejected = metric_counter("exchange_relay_rejected_total", "Relay connections refused, by reason");
    r->m_disconnects =
        metric_counter("exchange_relay_disconnects_total", "Relay clients disconnected, by reason");
    r->m_gaps = metric_counter("exchange_relay_replay_gaps_total",
                               "Channels whose ring no longer reached back to a resuming client's position");
    metric_set(r->m_clients, 0);

    wss_limits_t lim = {
        .max_header_bytes = 16384,
        /* The resume request names every channel the worker knows. */
        .max_message_bytes = 4 << 20,
        .queue_bytes = (size_t)cfg->relay.client_queue_bytes,
        .idle_timeout_ms = 5000,
        .pong_timeout_ms = 10000,
        .close_timeout_ms = 2000,
        .handshake_timeout_ms = 5000,
    };
    if ((rc = wss_ctx_new(r->loop, &lim, &relay_cbs, &r->wss)) < 0)
        goto fail;
    r->listener.data = r;
    r->listening = 1;
    if ((rc = listener_tcp(r->loop, &r->listener, cfg->relay.listen, 128, on_connection, NULL)) < 0) {
        log_error_err(rc, "relay cannot listen", "listen=%s", log_q(cfg->relay.listen));
        r->stopping = 1;
        wss_ctx_free(r->wss);
        uv_close((uv_handle_t *)&r->listener, on_listener_closed); /* frees r */
        return rc;
    }
    uv_timer_init(r->loop, &r->pace);
    r->pace.data = r;
    r->pace_open = 1;
    r->hook.arg = r;
    r->hook.publish = hook_publish;
    r->hook.epoch_changed = hook_epoch;
    ingest_set_relay(in, &r->hook);
    log_info("relay listening", "listen=%s path=%s token=%s queue_bytes=%d", log_q(cfg->relay.listen),
             RELAY_PATH, cfg->relay.token[0] ? "set" : "none", cfg->relay.client_queue_bytes);
    *out = r;
    return 0;
fail:
    free(r->listen);
    free(r);
    return rc;
}

void relay_stop(relay_t *r)
{
    if (r == NULL || r->stopping)
        return;
    r->stopping = 1;
    ingest_set_relay(r->in, NULL);
    for (rconn_t *c = r->conns; c != NULL; c = c->next) {
        set_state(c, RC_CLOSING);
        wss_abort(c->conn);
    }
    wss_ctx_free(r->wss);
    if (r->pace_open && !uv_is_closing((uv_handle_t *)&r->pace))
        uv_close((uv_handle_t *)&r->pace, on_pace_closed);
    if (r->listening && !uv_is_closing((uv_handle_t *)&r->listener))
        uv_close((uv_handle_t *)&r->listener, on_listener_closed);
}

json_t *relay_status(const relay_t *r)
{
    if (r == NULL)
        return json_null();
    return json_pack("{s:s, s:i, s:i, s:i, s:I}", "listen", r->listen, "clients", r->nclients, "live",
                     r->nlive, "catching_up", r->ncatchup, "messages", (json_int_t)r->messages);
}
