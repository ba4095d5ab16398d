/* Client commands: parse one JSON request, act on the hub, answer. Every bad
 * request gets an error frame with a code and the connection stays open;
 * only flooding ends it. Replies are built with jansson (not a hot path). */
#include "protocol.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "msg.h"

static void send_json(hub_client_t *c, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    if (s != NULL) {
        (void)hub_client_send_text(c, s, strlen(s));
        free(s);
    }
    json_decref(o);
}

static void send_error(hub_client_t *c, const char *code, const char *message, json_t *id)
{
    json_t *o = json_pack("{s:s, s:s, s:s}", "type", "error", "code", code, "message", message);
    if (id != NULL)
        json_object_set(o, "id", id);
    send_json(c, o);
}

static int nonneg(json_t *v, int64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (int64_t)json_integer_value(v);
    return 0;
}

/* A since value: {"epoch":E,"seq":S}, or a number S (legacy: a seq in the
 * channel's current epoch here; {"seq":S} alike). 0 or -1. */
static int since_value(json_t *v, hub_pos_t *pos)
{
    *pos = (hub_pos_t){0};
    if (!json_is_object(v))
        return nonneg(v, &pos->seq);
    json_t *ep = json_object_get(v, "epoch");
    if (nonneg(json_object_get(v, "seq"), &pos->seq) < 0 || (ep != NULL && nonneg(ep, &pos->epoch) < 0))
        return -1;
    pos->has_epoch = ep != NULL;
    return 0;
}

/* Collect the channel names of a subscribe/unsubscribe: "channels" array (or
 * a single "channel" string). Returns 0, or fills code/message. */
static int collect_channels(json_t *req, json_t *names, const char **code, char *msg, size_t msgsz)
{
    json_t *chs = json_object_get(req, "channels");
    json_t *one = json_object_get(req, "channel");
    if (chs == NULL && json_is_string(one)) {
        json_array_append(names, one);
        chs = NULL;
    } else if (chs != NULL && !json_is_array(chs)) {
        *code = "bad_request";
        snprintf(msg, msgsz, "channels must be an array of strings");
        return -1;
    }
    size_t i;
    json_t *v;
    json_array_foreach(chs, i, v)
    {
        if (!json_is_string(v)) {
            *code = "bad_request";
            snprintf(msg, msgsz, "channels must be an array of strings");
            return -1;
        }
        json_array_append(names, v);
    }
    json_array_foreach(names, i, v)
    {
        if (!msg_channel_valid(json_string_value(v), 1)) {
            *code = "bad_channel";
            snprintf(msg, msgsz, "bad channel name: %.128s (TYPE.EXCHANGE.SYMBOL, * for one segment)",
                     json_string_value(v));
            return -1;
        }
    }
    return 0;
}

static int names_contain(json_t *names, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(names, i, v) if (strcmp(json_string_value(v), s) == 0) return 1;
    return 0;
}

static void do_subscribe(hub_client_t *c, json_t *req, json_t *id)
{
    const char *code = NULL;
    char msg[256];
    json_t *names = json_array();
    json_t *since = json_object_get(req, "since");
    json_t *recovered = NULL;
    hub_since_t *pos = NULL;
    int npos = 0;
    if (json_object_get(req, "channels") == NULL && json_object_get(req, "channel") == NULL &&
        since == NULL) {
        send_error(c, "bad_request", "subscribe needs channels", id);
        goto out;
    }
    if (collect_channels(req, names, &code, msg, sizeof msg) < 0) {
        send_error(c, code, msg, id);
        goto out;
    }
    if (since != NULL) {
        if (!json_is_object(since)) {
            send_error(c, "bad_request", "since must be an object {\"CHANNEL\": {\"epoch\":E,\"seq\":S}}",
                       id);
            goto out;
        }
        /* Every since channel becomes a subscription: bound it before
         * allocating. */
        int maxs = hub_max_subscriptions(hub_client_hub(c));
        if (maxs > 0 && json_object_size(since) > (size_t)maxs) {
            snprintf(msg, sizeof msg, "at most %d subscriptions per connection", maxs);
            send_error(c, "too_many_subscriptions", msg, id);
            goto out;
        }
        if ((pos = calloc(json_object_size(since) + 1, sizeof(*pos))) == NULL) {
            send_error(c, "too_many_subscriptions", "out of memory for this many since entries", id);
            goto out;
        }
        const char *k;
        json_t *v;
        json_object_foreach(since, k, v)
        {
            if (!msg_channel_valid(k, 0)) {
                snprintf(msg, sizeof msg, "bad channel name in since: %.128s (no wildcards)", k);
                send_error(c, "bad_channel", msg, id);
                goto out;
            }
            if (since_value(v, &pos[npos].pos) < 0) {
                send_error(c, "bad_request",
                           "since values must be {\"epoch\":E,\"seq\":S} or a seq, integers >= 0", id);
                goto out;
            }
            pos[npos++].channel = k;
            /* A since names a channel to resume: it is subscribed. */
            if (!names_contain(names, k))
                json_array_append_new(names, json_string(k));
        }
    }
    /* All or nothing: check the subscription bound before touching the hub. */
    hub_t *h = hub_client_hub(c);
    int fresh = 0;
    size_t i;
    json_t *v;
    json_array_foreach(names, i, v)
    {
        const char *s = json_string_value(v);
        int dup = 0;
        for (size_t k = 0; k < i; k++)
            if (strcmp(json_string_value(json_array_get(names, k)), s) == 0)
                dup = 1;
        if (!dup && !hub_client_has_sub(c, s))
            fresh++;
    }
    (void)h;
    if (hub_max_subscriptions(h) > 0 && hub_client_sub_count(c) + fresh > hub_max_subscriptions(h)) {
        snprintf(msg, sizeof msg, "at most %d subscriptions per connection", hub_max_subscriptions(h));
        send_error(c, "too_many_subscriptions", msg, id);
        goto out;
    }
    json_t *reply = json_pack("{s:s, s:O}", "type", "subscribed", "channels", names);
    if (id != NULL)
        json_object_set(reply, "id", id);
    if (since != NULL) {
        /* Answered before the hub acts; nothing reaches the hub in between,
         * so the subscribes below do what these answers say. */
        recovered = json_object();
        for (int k = 0; k < npos; k++)
            json_object_set_new(recovered, pos[k].channel,
                                json_boolean(hub_resume_check(c, pos[k].channel, &pos[k].pos)));
        json_object_set(reply, "recovered", recovered);
    }
    send_json(c, reply);
    /* Every since applies to whichever subscription first covers its
     * channel, pattern or exact, in any order. */
    json_array_foreach(names, i, v)(void) hub_subscribe(c, json_string_value(v), pos, npos);
out:
    free(pos);
    json_decref(recovered);
    json_decref(names);
}

static void do_unsubscribe(hub_client_t *c, json_t *req, json_t *id)
{
    const char *code = NULL;
    char msg[256];
    json_t *names = json_array();
    if (json_object_get(req, "channels") == NULL && json_object_get(req, "channel") == NULL) {
        send_error(c, "bad_request", "unsubscribe needs channels", id);
        goto out;
    }
    if (collect_channels(req, names, &code, msg, sizeof msg) < 0) {
        send_error(c, code, msg, id);
        goto out;
    }
    json_t *done = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(names, i, v) if (hub_unsubscribe(c, json_string_value(v)) == 0)
        json_array_append(done, v);
    json_t *reply = json_pack("{s:s, s:o}", "type", "unsubscribed", "channels", done);
    if (id != NULL)
        json_object_set(reply, "id", id);
    send_json(c, reply);
out:
    json_decref(names);
}

static void do_list(hub_client_t *c, json_t *id)
{
    hub_t *h = hub_client_hub(c);
    json_t *chans = json_array(), *subs = json_array();
    int n = hub_channel_slots(h);
    for (int i = 0; i < n; i++) {
        const char *name = hub_channel_known(h, i);
        if (name != NULL)
            json_array_append_new(chans, json_string(name));
    }
    for (int i = 0; i < hub_client_sub_count(c); i++)
        json_array_append_new(subs, json_string(hub_client_sub(c, i)));
    json_t *reply = json_pack("{s:s, s:o, s:o}", "type", "list", "channels", chans, "subscriptions", subs);
    if (id != NULL)
        json_object_set(reply, "id", id);
    send_json(c, reply);
}

static void do_ping(hub_client_t *c, json_t *id, uint64_t now_ms)
{
    json_t *reply = json_pack("{s:s, s:I}", "type", "pong", "ts", (json_int_t)now_ms);
    if (id != NULL)
        json_object_set(reply, "id", id);
    send_json(c, reply);
}

int proto_handle(hub_client_t *c, proto_rate_t *rate, int max_rps, const char *text, size_t len,
                 uint64_t now_ms, int *rate_limited)
{
    if (rate_limited)
        *rate_limited = 0;
    if (max_rps > 0) {
        if (now_ms - rate->window_start_ms >= 1000) {
            rate->window_start_ms = now_ms;
            rate->count = 0;
        }
        rate->count++;
        if (rate->count > 2 * max_rps)
            return PROTO_CLOSE_POLICY;
        if (rate->count > max_rps) {
            if (rate_limited)
                *rate_limited = 1;
            char m[96];
            snprintf(m, sizeof m, "more than %d requests per second", max_rps);
            send_error(c, "rate_limited", m, NULL);
            return PROTO_OK;
        }
    }
    json_error_t err;
    json_t *req = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (req == NULL || !json_is_object(req)) {
        char m[256];
        if (req == NULL)
            snprintf(m, sizeof m, "invalid JSON: %s", err.text);
        else
            snprintf(m, sizeof m, "a request must be a JSON object");
        send_error(c, "bad_json", m, NULL);
        json_decref(req);
        return PROTO_OK;
    }
    json_t *id = json_object_get(req, "id");
    json_t *opv = json_object_get(req, "op");
    const char *op = json_string_value(opv);
    if (op == NULL)
        send_error(c, "bad_request", "missing \"op\" (subscribe, unsubscribe, list, ping)", id);
    else if (strcmp(op, "subscribe") == 0)
        do_subscribe(c, req, id);
    else if (strcmp(op, "unsubscribe") == 0)
        do_unsubscribe(c, req, id);
    else if (strcmp(op, "list") == 0)
        do_list(c, id);
    else if (strcmp(op, "ping") == 0)
        do_ping(c, id, now_ms);
    else {
        char m[200];
        snprintf(m, sizeof m, "unknown op: %.64s (subscribe, unsubscribe, list, ping)", op);
        send_error(c, "unknown_op", m, id);
    }
    json_decref(req);
    return PROTO_OK;
}

void proto_binary(hub_client_t *c)
{
    send_error(c, "bad_request", "binary frames are not supported; send JSON text", NULL);
}

int proto_check_names(char **names, int n, int max, const char **bad)
{
    for (int i = 0; i < n; i++) {
        if (!msg_channel_valid(names[i], 1)) {
            if (bad)
                *bad = names[i];
            return -EINVAL;
        }
    }
    if (max > 0 && n > max)
        return -E2BIG;
    return 0;
}

int proto_subscribe_names(hub_client_t *c, char **names, int n)
{
    json_t *arr = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(arr, json_string(names[i]));
    send_json(c, json_pack("{s:s, s:o}", "type", "subscribed", "channels", arr));
    for (int i = 0; i < n; i++) {
        int r = hub_subscribe(c, names[i], NULL, 0);
        if (r < 0 && r != -E2BIG)
            return r;
    }
    return 0;
}

char *proto_reconnect_msg(const char *reason, int after_ms)
{
    json_t *o = json_pack("{s:s, s:s, s:i}", "type", "reconnect", "reason", reason, "after_ms", after_ms);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}
