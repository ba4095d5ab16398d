/* Relay source: a WebSocket client (common/wsclient) to the leader's relay
 * (common/relay_proto.h: RELAY_PATH, Bearer [relay] token). On every
 * (re)connect it first sends the resume request built by the owner (the
 * per-channel positions it has delivered), so the relay replays exactly
 * what is missing before going live; then every text message is handed to
 * the sink as is. Reconnects with a short backoff; follows the leader via
 * source_relay_set_addr. */
#include "source.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "relay_proto.h"
#include "wsclient.h"

#define RELAY_RECONNECT_MIN_MS 200
#define RELAY_RECONNECT_MAX_MS 2000
#define RELAY_PING_MS 5000
#define RELAY_CONNECT_TIMEOUT_MS 3000

typedef struct {
    source_t base;
    uv_loop_t *loop;
    source_sink_t sink;
    source_resume_fn resume;
    void *resume_arg;
    wsc_t *wsc;
    char addr[256];
    int open;        /* upgraded and resume sent */
    int last_status; /* of the last refused upgrade, logged once per change */
    int have_msg;
    uint64_t last_msg, opened_at;
    uint64_t messages, connects;
    int closing;
    void (*on_closed)(void *);
    void *closed_arg;
    metric_t *m_msgs, *m_healthy;
} rsrc_t;

static uint64_t now_ms(rsrc_t *s)
{
    uv_update_time(s->loop);
    return uv_now(s->loop);
}

static int build_url(const char *addr, char *out, size_t n)
{
    int w = snprintf(out, n, "ws://%s%s", addr, RELAY_PATH);
    return w > 0 && (size_t)w < n ? 0 : -EINVAL;
}

/* ---- wsclient callbacks (loop thread) --------------------------------------- */

static void on_open(wsc_t *w, void *arg)
{
    rsrc_t *s = arg;
    json_t *req = s->resume ? s->resume(s->resume_arg) : NULL;
    if (req == NULL)
        req = relay_proto_resume_new(0, NULL, -1);
    char *text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (text == NULL || wsc_send_text(w, text, strlen(text)) < 0) {
        free(text);
        wsc_reconnect(w, "user");
        return;
    }
    free(text);
    s->open = 1;
    s->opened_at = now_ms(s);
    s->connects++;
    metric_set(s->m_healthy, 1);
    log_info("relay source connected", "addr=%s", log_q(s->addr));
}

static void on_message(wsc_t *w, int binary, const char *data, size_t len, void *arg)
{
    rsrc_t *s = arg;
    (void)w;
    if (binary || s->closing)
        return;
    s->last_msg = now_ms(s);
    s->have_msg = 1;
    s->messages++;
    metric_inc(s->m_msgs);
    s->sink.on_message(s->sink.arg, data, len, NULL); /* the prefix alone routes it */
}

static void on_close(wsc_t *w, const char *cause, void *arg)
{
    rsrc_t *s = arg;
    if (s->open)
        log_warn("relay source lost", "addr=%s cause=%s err=%s", log_q(s->addr), cause,
                 log_q(wsc_last_error(w)));
    else if (wsc_last_http_status(w) != 0 && wsc_last_http_status(w) != s->last_status)
        /* 401: [relay] token differs from the leader's; 404: not a relay. */
        log_error("relay refused the connection", "addr=%s status=%d err=%s", log_q(s->addr),
                  wsc_last_http_status(w), log_q(wsc_last_error(w)));
    else
        log_debug("relay source attempt failed", "addr=%s cause=%s err=%s status=%d", log_q(s->addr), cause,
                  log_q(wsc_last_error(w)), wsc_last_http_status(w));
    s->last_status = wsc_last_http_status(w);
    s->open = 0;
    metric_set(s->m_healthy, 0);
}

static void on_stopped(wsc_t *w, void *arg)
{
    rsrc_t *s = arg;
    (void)w;
    void (*cb)(void *) = s->on_closed;
    void *cbarg = s->closed_arg;
    free(s);
    if (cb)
        cb(cbarg);
}

/* ---- source interface ----------------------------------------------------------- */

static int r_healthy(const source_t *base)
{
    const rsrc_t *s = (const rsrc_t *)base;
    return s->open && !s->closing;
}

static int64_t r_age(const source_t *base)
{
    rsrc_t *s = (rsrc_t *)base;
    return s->have_msg ? (int64_t)(now_ms(s) - s->last_msg) : -1;
}

static void r_status(const source_t *base, json_t *out)
{
    const rsrc_t *s = (const rsrc_t *)base;
    json_object_set_new(out, "relay",
                        json_pack("{s:s, s:b, s:I, s:I, s:s}", "addr", s->addr, "connected", s->open,
                                  "messages", (json_int_t)s->messages, "connects", (json_int_t)s->connects,
                                  "last_error", s->wsc ? wsc_last_error(s->wsc) : ""));
}

static void r_close(source_t *base, void (*on_closed)(void *), void *arg)
{
    rsrc_t *s = (rsrc_t *)base;
    if (s->closing)
        return;
    s->closing = 1;
    s->open = 0;
    s->on_closed = on_closed;
    s->closed_arg = arg;
    metric_set(s->m_healthy, 0);
    wsc_stop(s->wsc); /* on_stopped frees s */
}

static const source_vtbl_t relay_vtbl = {
    .name = "relay",
    .healthy = r_healthy,
    .last_message_age_ms = r_age,
    .status = r_status,
    .close = r_close,
};

int source_relay_set_addr(source_t *base, const char *addr)
{
    rsrc_t *s = (rsrc_t *)base;
    char url[320];
    if (addr == NULL || addr[0] == '\0' || strcmp(addr, s->addr) == 0)
        return 0;
    if (build_url(addr, url, sizeof url) < 0 || wsc_set_url(s->wsc, url) < 0) {
        log_warn("relay address not usable", "addr=%s", log_q(addr));
        return -EINVAL;
    }
    log_info("relay source follows the leader", "from=%s to=%s", log_q(s->addr), log_q(addr));
    snprintf(s->addr, sizeof s->addr, "%s", addr);
    /* The old leader's relay may still be up (a zombie): leave it now. */
    wsc_reconnect(s->wsc, "user");
    return 0;
}

int source_relay_new(uv_loop_t *loop, const cfg_t *cfg, const char *addr, const source_sink_t *sink,
                     source_resume_fn resume, void *resume_arg, source_t **out)
{
    char url[320], auth[600];
    int r;
    if (addr == NULL || build_url(addr, url, sizeof url) < 0)
        return -EINVAL;
    rsrc_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->base.vt = &relay_vtbl;
    s->loop = loop;
    s->sink = *sink;
    s->resume = resume;
    s->resume_arg = resume_arg;
    snprintf(s->addr, sizeof s->addr, "%s", addr);
    s->m_msgs = metric_labels(
        metric_counter("exchange_fanout_source_messages_total", "Messages received from the data source"),
        "source=\"relay\"");
    s->m_healthy =
        metric_labels(metric_gauge("exchange_fanout_source_healthy", "1 when the data source can deliver"),
                      "source=\"relay\"");
    auth[0] = '\0';
    if (cfg->relay.token != NULL && cfg->relay.token[0] != '\0')
        snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", cfg->relay.token);
    wsc_opts_t o = {
        .name = "relay",
        .url = url,
        .reconnect_min_ms = RELAY_RECONNECT_MIN_MS,
        .reconnect_max_ms = RELAY_RECONNECT_MAX_MS,
        .ping_interval_ms = RELAY_PING_MS,
        .connect_timeout_ms = RELAY_CONNECT_TIMEOUT_MS,
        .extra_headers = auth,
    };
    wsc_callbacks_t cb = {
        .on_open = on_open, .on_message = on_message, .on_close = on_close, .on_stopped = on_stopped};
    if ((r = wsc_start(loop, &o, &cb, s, &s->wsc)) < 0) {
        log_error_err(r, "relay source not started", "addr=%s", log_q(addr));
        free(s);
        return r;
    }
    log_info("relay source started", "addr=%s token=%s", log_q(addr), auth[0] ? "set" : "none");
    *out = &s->base;
    return 0;
}
