/* Unit tests for workers/fanout/hub.c driven by fake clients: subscriptions
 * and patterns, snapshots first, history recovery, fencing and duplicates,
 * conflation tags. (Client requests: test_protocol.c.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include "wsproto.h"

#include "hub.h"
#include "protocol.h"
#include "wsserver.h"

#include "fake_hub.h"

static void test_exact_subscribe_live_and_snapshot(void **state)
{
    (void)state;
    hub_t *h = mkhub(10, 0);
    fake_t a = {0}, b = {0};
    hub_client_t *ca = hub_client_new(h, &a), *cb = hub_client_new(h, &b);
    assert_int_equal(hub_subscribe(ca, "ticker.x.A-B", NULL, 0), 0);
    assert_int_equal(pub(h, "ticker.x.A-B", 1, 1), HUB_ACCEPTED);
    assert_int_equal(pub(h, "ticker.x.A-B", 2, 1), HUB_ACCEPTED);
    assert_int_equal(a.n, 2);
    assert_int_equal(seq_of(a.text[1]), 2);
    assert_non_null(a.tag[0]); /* tickers are conflatable */
    /* a late subscriber gets the latest snapshot first, then live */
    assert_int_equal(hub_subscribe(cb, "ticker.x.A-B", NULL, 0), 0);
    assert_int_equal(b.n, 1);
    assert_int_equal(seq_of(b.text[0]), 2);
    assert_int_equal(pub(h, "ticker.x.A-B", 3, 1), HUB_ACCEPTED);
    assert_int_equal(b.n, 2);
    assert_int_equal(seq_of(b.text[1]), 3);
    /* subscribing twice is a no-op */
    assert_int_equal(hub_subscribe(cb, "ticker.x.A-B", NULL, 0), 1);
    assert_int_equal(b.n, 2);
    /* unsubscribe stops delivery */
    assert_int_equal(hub_unsubscribe(cb, "ticker.x.A-B"), 0);
    assert_int_equal(hub_unsubscribe(cb, "ticker.x.A-B"), -2);
    pub(h, "ticker.x.A-B", 4, 1);
    assert_int_equal(b.n, 2);
    assert_int_equal(a.n, 4);
    assert_int_equal(hub_channel_count(h), 1);
    hub_client_free(ca);
    hub_client_free(cb);
    fake_reset(&a);
    fake_reset(&b);
    hub_free(h);
}

static void test_trades_have_no_snapshot(void **state)
{
    (void)state;
    hub_t *h = mkhub(10, 0);
    fake_t a = {0};
    pub(h, "trade.x.A-B", 1, 1);
    hub_client_t *ca = hub_client_new(h, &a);
    hub_subscribe(ca, "trade.x.A-B", NULL, 0);
    assert_int_equal(a.n, 0);
    pub(h, "trade.x.A-B", 2, 1);
    assert_int_equal(a.n, 1);
    assert_null(a.tag[0]); /* trades are never conflated */
    hub_client_free(ca);
    fake_reset(&a);
    hub_free(h);
}

static void test_patterns(void **state)
{
    (void)state;
    hub_t *h = mkhub(10, 0);
    fake_t a = {0};
    pub(h, "ticker.x.A-B", 1, 1);
    pub(h, "ticker.y.A-B", 1, 1);
    pub(h, "ticker.y.C-D", 1, 1);
    hub_client_t *ca = hub_client_new(h, &a);
    assert_int_equal(hub_subscribe(ca, "ticker.*.A-B", NULL, 0), 0);
    assert_int_equal(a.n, 2); /* snapshots of both matching channels */
    /* a channel that appears later is covered too */
    pub(h, "ticker.z.A-B", 1, 1);
    assert_int_equal(a.n, 3);
    pub(h, "ticker.z.C-D", 1, 1);
    assert_int_equal(a.n, 3);
    /* overlapping exact + pattern: delivered once */
    assert_int_equal(hub_subscribe(ca, "ticker.x.A-B", NULL, 0), 0);
    assert_int_equal(a.n, 3); /* already covered: no second snapshot */
    pub(h, "ticker.x.A-B", 2, 1);
    assert_int_equal(a.n, 4);
    /* dropping the pattern keeps the exact one */
    assert_int_equal(hub_unsubscribe(ca, "ticker.*.A-B"), 0);
    pub(h, "ticker.x.A-B", 3, 1);
    pub(h, "ticker.y.A-B", 2, 1);
    assert_int_equal(a.n, 5);
    assert_int_equal(seq_of(a.text[4]), 3);
    hub_client_free(ca);
    fake_reset(&a);
    hub_free(h);
}

static void test_subscribe_before_data(void **state)
{
    (void)state;
    hub_t *h = mkhub(10, 0);
    fake_t a = {0};
    hub_client_t *ca = hub_client_new(h, &a);
    hub_subscribe(ca, "orderbook.x.A-B", NULL, 0);
    assert_int_equal(a.n, 0);
    assert_int_equal(hub_channel_count(h), 0); /* not "known" without data */
    pub(h, "orderbook.x.A-B", 5, 1);
    assert_int_equal(a.n, 1);
    hub_unsubscribe(ca, "orderbook.x.A-B");
    hub_subscribe(ca, "orderbook.q.Q-Q", NULL, 0);
    hub_unsubscribe(ca, "orderbook.q.Q-Q"); /* the empty channel is freed */
    assert_int_equal(hub_channel_slots(h), 1);
    hub_client_free(ca);
    fake_reset(&a);
    hub_free(h);
}

/* Resume helpers: a position with an epoch, or a legacy seq. */
static hub_since_t at(const char *ch, long epoch, long seq)
{
    return (hub_since_t){.channel = ch, .pos = {.epoch = epoch, .seq = seq, .has_epoch = 1}};
}

static hub_since_t legacy(const char *ch, long seq)
{
    return (hub_since_t){.channel = ch, .pos = {.seq = seq}};
}

static int check(hub_client_t *c, hub_since_t s)
{
    return hub_resume_check(c, s.channel, &s.pos);
}

/* (epoch, seq) of every data frame f got from index i on, as "e:s e:s". */
static const char *positions(fake_t *f, int i)
{
    static char out[4096];
    size_t n = 0;
    out[0] = '\0';
    for (; i < f->n; i++) {
        const char *e = strstr(f->text[i], "\"epoch\":");
        long seq = seq_of(f->text[i]);
        if (e == NULL || seq < 0)
            continue;
        n += (size_t)snprintf(out + n, sizeof out - n, "%s%ld:%ld", n ? " " : "", strtol(e + 8, NULL, 10),
                              seq);
    }
    return out;
}

static void test_fencing_and_duplicates(void **state)
{
    (void)state;
    hub_t *h = mkhub(10, 0);
    fake_t a = {0};
    hub_client_t *ca = hub_client_new(h, &a);
    hub_subscribe(ca, "trade.x.A-B", NULL, 0);
    hub_subscribe(ca, "trade.y.A-B", NULL, 0);
    assert_int_equal(pub(h, "trade.x.A-B", 10, 5), HUB_ACCEPTED);
    assert_int_equal(pub(h, "trade.x.A-B", 10, 5), HUB_DUPLICATE);
    assert_int_equal(pub(h, "trade.x.A-B", 9, 5), HUB_DUPLICATE);
    assert_int_equal(pub(h, "trade.x.A-B", 11, 4), HUB_FENCED); /* zombie leader */
    /* order is per channel: y has not seen epoch 5 yet */
    assert_int_equal(pub(h, "trade.y.A-B", 1, 4), HUB_ACCEPTED);
    /* a new epoch on x, any seq */
    assert_int_equal(pub(h, "trade.x.A-B", 1, 6), HUB_ACCEPTED);
    assert_int_equal(pub(h, "trade.x.A-B", 11, 5), HUB_FENCED);
    assert_int_equal(pub(h, "trade.x.A-B", 2, 6), HUB_ACCEPTED);
    /* old-epoch messages still queued for y (another partition) arrive after
     * x moved on: not affected by x */
    assert_int_equal(pub(h, "trade.y.A-B", 2, 4), HUB_ACCEPTED);
    assert_int_equal(pub(h, "trade.y.A-B", 1, 6), HUB_ACCEPTED);
    assert_int_equal(pub(h, "trade.y.A-B", 3, 4), HUB_FENCED);
    assert_string_equal(positions(&a, 0), "5:10 4:1 6:1 6:2 4:2 6:1");
    assert_int_equal(hub_publish(h, "{}", 2, NULL, NULL, NULL), -22);
    assert_int_equal(hub_publish(h, "not json", 8, NULL, NULL, NULL), -22);
    const hub_stats_t *s = hub_stats(h);
    assert_int_equal(s->fenced, 3);
    assert_int_equal(s->duplicate, 2);
    assert_int_equal(s->invalid, 2);
    assert_int_equal(s->gaps, 0); /* every epoch change started at seq 1 */
    assert_int_equal(hub_max_epoch(h), 6);
    /* a new epoch not starting at 1, and a seq jump, are gaps */
    assert_int_equal(pub(h, "trade.x.A-B", 5, 7), HUB_ACCEPTED);
    assert_int_equal(pub(h, "trade.x.A-B", 7, 7), HUB_ACCEPTED);
    assert_int_equal(s->gaps, 2);
    hub_client_free(ca);
    fake_reset(&a);
    hub_free(h);
}

/* A Kafka record's key and epoch header must agree with the message's own
 * prefix: a mismatch is dropped (counted) before it can order or reach a
 * channel; no route (the relay) is the prefix alone. */
static int pub_routed(hub_t *h, const char *ch, long seq, long epoch, const hub_route_t *r)
{
    char buf[256];
    snprintf(buf, sizeof buf,
             "{\"channel\":\"%s\",\"type\":\"trade\",\"exchange\":\"x\",\"symbol\":\"A-B\",\"seq\":%ld,"
             "\"epoch\":%ld,\"ts\":1,\"recv_ts\":2}",
             ch, seq, epoch);
    return hub_publish(h, buf, strlen(buf), r, NULL, NULL);
}

static void test_route_key_and_epoch_checked(void **state)
{
    (void)state;
    hub_t *h = mkhub(10, 0);
    fake_t a = {0}, b = {0};
    hub_client_t *ca = hub_client_new(h, &a), *cb = hub_client_new(h, &b);
    hub_subscribe(ca, "trade.x.A-B", NULL, 0);
    hub_subscribe(cb, "trade.y.A-B", NULL, 0);
    const char *kx = "trade.x.A-B";
    hub_route_t ok = {.key = kx, .key_len = strlen(kx), .epoch_hdr = HUB_EPOCH_SET, .epoch = 3};
    assert_int_equal(pub_routed(h, "trade.x.A-B", 1, 3, &ok), HUB_ACCEPTED);
    /* the key names another channel: not delivered on either */
    hub_route_t other = ok;
    other.key = "trade.y.A-B";
    assert_int_equal(pub_routed(h, "trade.x.A-B", 2, 3, &other), HUB_MISMATCH);
    /* a key that is a prefix of the channel, or longer, is not it */
    hub_route_t shortk = ok;
    shortk.key_len = 7;
    assert_int_equal(pub_routed(h, "trade.x.A-B", 2, 3, &shortk), HUB_MISMATCH);
    hub_route_t longk = {.key = "trade.x.A-BC", .key_len = 12};
    assert_int_equal(pub_routed(h, "trade.x.A-B", 2, 3, &longk), HUB_MISMATCH);
    /* the epoch header differs, or is not a number */
    hub_route_t ep = ok;
    ep.epoch = 4;
    assert_int_equal(pub_routed(h, "trade.x.A-B", 2, 3, &ep), HUB_MISMATCH);
    hub_route_t bad = ok;
    bad.epoch_hdr = HUB_EPOCH_BAD;
    bad.epoch = 3;
    assert_int_equal(pub_routed(h, "trade.x.A-B", 2, 3, &bad), HUB_MISMATCH);
    /* a dropped message did not move the channel: seq 2 is still new */
    assert_int_equal(pub_routed(h, "trade.x.A-B", 2, 3, &ok), HUB_ACCEPTED);
    /* no key, no header: nothing to check (a producer without them) */
    hub_route_t none = {0};
    assert_int_equal(pub_routed(h, "trade.x.A-B", 3, 3, &none), HUB_ACCEPTED);
    /* the relay: no route at all */
    assert_int_equal(pub_routed(h, "trade.x.A-B", 4, 3, NULL), HUB_ACCEPTED);
    /* a key alone, or a header alone, is checked alone */
    hub_route_t keyonly = {.key = "trade.y.A-B", .key_len = 11};
    assert_int_equal(pub_routed(h, "trade.y.A-B", 1, 3, &keyonly), HUB_ACCEPTED);
    hub_route_t eponly = {.epoch_hdr = HUB_EPOCH_SET, .epoch = 2};
    assert_int_equal(pub_routed(h, "trade.y.A-B", 2, 3, &eponly), HUB_MISMATCH);
    assert_string_equal(positions(&a, 0), "3:1 3:2 3:3 3:4");
    assert_string_equal(positions(&b, 0), "3:1");
    const hub_stats_t *s = hub_stats(h);
    assert_int_equal(s->mismatched, 6);
    assert_int_equal(s->accepted, 5);
    assert_int_equal(s->gaps, 0);
    hub_client_free(ca);
    hub_client_free(cb);
    fake_reset(&a);
    fake_reset(&b);
    hub_free(h);
}

static void test_history_recovery(void **state)
{
    (void)state;
    hub_t *h = mkhub(5, 0);
    fake_t a = {0}, b = {0}, c = {0}, q = {0};
    hub_client_t *cq = hub_client_new(h, &q);
    for (int i = 1; i <= 8; i++)
        pub(h, "trade.x.A-B", i, 1);
    /* history holds 4..8 */
    assert_true(check(cq, at("trade.x.A-B", 1, 3)));
    assert_true(check(cq, at("trade.x.A-B", 1, 8)));
    assert_false(check(cq, at("trade.x.A-B", 1, 2)));
    assert_false(check(cq, at("trade.none.A-B", 1, 1)));
    assert_false(check(cq, legacy("trade.none.A-B", 1)));
    hub_client_t *ca = hub_client_new(h, &a);
    hub_since_t s = at("trade.x.A-B", 1, 5);
    hub_subscribe(ca, "trade.x.A-B", &s, 1);
    assert_string_equal(positions(&a, 0), "1:6 1:7 1:8");
    pub(h, "trade.x.A-B", 9, 1);
    assert_int_equal(seq_of(a.text[3]), 9);
    /* gap older than the history: nothing replayed for trades */
    hub_client_t *cb = hub_client_new(h, &b);
    s = at("trade.x.A-B", 1, 1);
    hub_subscribe(cb, "trade.x.A-B", &s, 1);
    assert_int_equal(b.n, 0);
    /* ticker: an unrecoverable gap (beyond the ring) gets the snapshot */
    for (int i = 1; i <= 8; i++)
        pub(h, "ticker.x.A-B", i, 1);
    hub_client_t *cc = hub_client_new(h, &c);
    s = at("ticker.x.A-B", 1, 1);
    assert_false(check(cc, s));
    hub_subscribe(cc, "ticker.x.A-B", &s, 1);
    assert_string_equal(positions(&c, 0), "1:8");
    /* a seq jump breaks the history: nothing before it vouches for after */
    pub(h, "trade.x.A-B", 11, 1); /* 10 never came */
    pub(h, "trade.x.A-B", 12, 1);
    assert_false(check(cq, at("trade.x.A-B", 1, 8)));
    assert_false(check(cq, at("trade.x.A-B", 1, 9)));
    assert_true(check(cq, at("trade.x.A-B", 1, 11)));
    assert_true(check(cq, at("trade.x.A-B", 1, 10))); /* 11 follows 10 */
    hub_client_free(ca);
    hub_client_free(cb);
    hub_client_free(cc);
    hub_client_free(cq);
    fake_reset(&a);
    fake_reset(&b);
    fake_reset(&c);
    hub_free(h);
}

static void test_resume_across_epochs(void **state)
{
    (void)state;
    hub_t *h = mkhub(10, 0);
    fake_t a = {0}, b = {0}, q = {0};
    const char *ch = "trade.x.A-B";
    hub_client_t *cq = hub_client_new(h, &q);
    for (int i = 1; i <= 4; i++)
        pub(h, ch, i, 1);
    for (int i = 1; i <= 3; i++)
        pub(h, ch, i, 2); /* the new leader starts at 1: no break */
    /* a client that saw 1:3 missed 1:4 and 2:1..3: all here, in order */
    hub_since_t s = at(ch, 1, 3);
    assert_true(check(cq, s));
    hub_client_t *ca = hub_client_new(h, &a);
    hub_subscribe(ca, ch, &s, 1);
    assert_string_equal(positions(&a, 0), "1:4 2:1 2:2 2:3");
    /* one that saw the old epoch's last message too */
    assert_true(check(cq, at(ch, 1, 4)));
    /* a position in the old epoch this instance never had: not vouched for */
    assert_false(check(cq, at(ch, 1, 7)));
    /* legacy numeric since is a seq in the current epoch (2) */
    assert_true(check(cq, legacy(ch, 1)));
    hub_client_t *cb = hub_client_new(h, &b);
    s = legacy(ch, 1);
    hub_subscribe(cb, ch, &s, 1);
    assert_string_equal(positions(&b, 0), "2:2 2:3");
    /* an epoch change the hub received with a break (epoch 3 from seq 4):
     * nothing before it can be resumed, after it can */
    pub(h, ch, 4, 3);
    pub(h, ch, 5, 3);
    assert_false(check(cq, at(ch, 2, 3)));
    assert_false(check(cq, at(ch, 1, 3)));
    assert_true(check(cq, at(ch, 3, 4)));
    /* a break the source reported (a relay switch that may have lost the
     * old epoch's tail): epoch 4 from seq 1 is not vouched for either */
    hub_channel_break(h, ch, strlen(ch));
    pub(h, ch, 1, 4);
    assert_false(check(cq, at(ch, 3, 5)));
    assert_true(check(cq, at(ch, 4, 1)));
    assert_int_equal(hub_stats(h)->gaps, 2);
    hub_client_free(ca);
    hub_client_free(cb);
    hub_client_free(cq);
    fake_reset(&a);
    fake_reset(&b);
    hub_free(h);
}

static void test_resume_on_lagging_instance(void **state)
{
    (void)state;
    hub_t *h = mkhub(10, 0);
    fake_t a = {0}, b = {0}, c = {0};
    const char *tr = "trade.x.A-B", *tk = "ticker.x.A-B";
    for (int i = 1; i <= 5; i++) {
        pub(h, tr, i, 1);
        pub(h, tk, i, 1);
    }
    /* the client saw 2:3 elsewhere; this instance is still in epoch 1 */
    hub_client_t *ca = hub_client_new(h, &a);
    hub_since_t s[2] = {at(tr, 2, 3), at(tk, 2, 3)};
    assert_true(check(ca, s[0])); /* nothing missed; the rest follows in order */
    assert_true(check(ca, s[1]));
    hub_subscribe(ca, tr, s, 2);
    hub_subscribe(ca, tk, s, 2);
    assert_int_equal(a.n, 0); /* no history, no older snapshot */
    for (int i = 6; i <= 7; i++) {
        pub(h, tr, i, 1); /* still epoch 1: never to this client */
        pub(h, tk, i, 1);
    }
    for (int i = 1; i <= 5; i++)
        pub(h, tr, i, 2);
    assert_string_equal(positions(&a, 0), "2:4 2:5");
    /* same epoch, higher seq */
    hub_client_t *cb = hub_client_new(h, &b);
    hub_since_t t = at(tr, 2, 7);
    assert_true(check(cb, t));
    hub_subscribe(cb, "trade.*.A-B", &t, 1);
    pub(h, tr, 6, 2);
    pub(h, tr, 7, 2);
    pub(h, tr, 8, 2);
    assert_string_equal(positions(&b, 0), "2:8");
    /* the floor outlives an unsubscribe: a resubscribe without since gets
     * no snapshot older than it */
    hub_client_t *cc = hub_client_new(h, &c);
    t = at(tk, 3, 1);
    hub_subscribe(cc, tk, &t, 1);
    assert_int_equal(hub_unsubscribe(cc, tk), 0);
    hub_subscribe(cc, "ticker.*.A-B", NULL, 0);
    pub(h, tk, 8, 1);
    pub(h, tk, 1, 3);
    pub(h, tk, 2, 3);
    assert_string_equal(positions(&c, 0), "3:2");
    /* a channel this instance has no data on: unknown, not recovered */
    hub_since_t u = at("trade.z.A-B", 2, 9);
    assert_false(check(cc, u));
    hub_subscribe(cc, "trade.z.A-B", &u, 1);
    pub(h, "trade.z.A-B", 9, 2);
    pub(h, "trade.z.A-B", 10, 2);
    assert_string_equal(positions(&c, 1), "2:10");
    hub_client_free(ca);
    hub_client_free(cb);
    hub_client_free(cc);
    fake_reset(&a);
    fake_reset(&b);
    fake_reset(&c);
    hub_free(h);
}

static void test_resume_pattern_before_exact(void **state)
{
    (void)state;
    hub_t *h = mkhub(10, 0);
    fake_t a = {0}, b = {0};
    proto_rate_t r = {0};
    for (int i = 1; i <= 5; i++) {
        pub(h, "trade.x.A-B", i, 1);
        pub(h, "trade.y.A-B", i, 1);
    }
    /* hub level: the pattern comes first and carries the since */
    hub_client_t *ca = hub_client_new(h, &a);
    hub_since_t s = at("trade.x.A-B", 1, 3);
    hub_subscribe(ca, "trade.*.A-B", &s, 1);
    hub_subscribe(ca, "trade.x.A-B", &s, 1);
    assert_string_equal(positions(&a, 0), "1:4 1:5");
    /* protocol level, legacy and object forms, pattern listed first */
    hub_client_t *cb = hub_client_new(h, &b);
    const char *text = "{\"op\":\"subscribe\",\"channels\":[\"trade.*.A-B\",\"trade.x.A-B\"],"
                       "\"since\":{\"trade.x.A-B\":{\"epoch\":1,\"seq\":4},\"trade.y.A-B\":2},\"id\":7}";
    assert_int_equal(proto_handle(cb, &r, 0, text, strlen(text), 1000, NULL), PROTO_OK);
    assert_non_null(strstr(b.text[0], "\"recovered\":{\"trade.x.A-B\":true,\"trade.y.A-B\":true}"));
    assert_non_null(strstr(b.text[0], "\"channels\":[\"trade.*.A-B\",\"trade.x.A-B\",\"trade.y.A-B\"]"));
    char got[256];
    snprintf(got, sizeof got, "%s", positions(&b, 1));
    /* each channel's missed messages once, in order */
    assert_true(strcmp(got, "1:5 1:3 1:4 1:5") == 0 || strcmp(got, "1:3 1:4 1:5 1:5") == 0);
    pub(h, "trade.y.A-B", 6, 1);
    assert_int_equal(b.n, 6);
    hub_client_free(ca);
    hub_client_free(cb);
    fake_reset(&a);
    fake_reset(&b);
    hub_free(h);
}

static void test_resume_on_a_channel_already_covered(void **state)
{
    (void)state;
    hub_t *h = mkhub(10, 0);
    fake_t a = {0};
    const char *ch = "trade.x.A-B";
    for (int i = 1; i <= 5; i++)
        pub(h, ch, i, 1);
    hub_client_t *ca = hub_client_new(h, &a);
    hub_subscribe(ca, "trade.*.A-B", NULL, 0);
    /* live on it already: nothing is replayed, so only a since at or past
     * the newest is recovered */
    assert_false(check(ca, at(ch, 1, 3)));
    assert_true(check(ca, at(ch, 1, 5)));
    assert_true(check(ca, at(ch, 1, 8)));
    hub_since_t s = at(ch, 1, 3);
    assert_int_equal(hub_subscribe(ca, ch, &s, 1), 0);
    assert_int_equal(a.n, 0);
    /* a since ahead sets the floor on the live edge */
    s = at(ch, 1, 7);
    assert_int_equal(hub_subscribe(ca, ch, &s, 1), 1);
    for (int i = 6; i <= 8; i++)
        pub(h, ch, i, 1);
    assert_string_equal(positions(&a, 0), "1:8");
    hub_client_free(ca);
    fake_reset(&a);
    hub_free(h);
}

static void test_max_subscriptions(void **state)
{
    (void)state;
    hub_t *h = mkhub(0, 2);
    fake_t a = {0};
    hub_client_t *ca = hub_client_new(h, &a);
    assert_int_equal(hub_subscribe(ca, "trade.x.A-B", NULL, 0), 0);
    assert_int_equal(hub_subscribe(ca, "trade.*.A-B", NULL, 0), 0);
    assert_int_equal(hub_subscribe(ca, "trade.y.A-B", NULL, 0), -7);
    assert_int_equal(hub_client_sub_count(ca), 2);
    hub_client_free(ca);
    hub_free(h);
}

static void test_refusing_client_does_not_block_others(void **state)
{
    (void)state;
    hub_t *h = mkhub(0, 0);
    fake_t slow = {.refuse = 1}, fast = {0};
    hub_client_t *cs = hub_client_new(h, &slow), *cf = hub_client_new(h, &fast);
    hub_subscribe(cs, "trade.x.A-B", NULL, 0);
    hub_subscribe(cf, "trade.x.A-B", NULL, 0);
    for (int i = 1; i <= 10; i++)
        pub(h, "trade.x.A-B", i, 1);
    assert_int_equal(fast.n, 10);
    assert_int_equal(hub_stats(h)->send_failures, 10);
    hub_client_free(cs);
    hub_client_free(cf);
    fake_reset(&fast);
    hub_free(h);
}

/* ---- paced replay: a resume bigger than the client's room ------------------------ */

static size_t g_room;
static int g_idle, g_wanted;

static size_t fake_room(void *user, int *idle)
{
    (void)user;
    *idle = g_idle;
    return g_room;
}

static void fake_wanted(void)
{
    g_wanted++;
}

static char g_replay_gap[128];

static void fake_replay_gap(void *user, const char *channel, int64_t epoch, int64_t seq, int64_t next_epoch,
                            int64_t next_seq)
{
    (void)user;
    snprintf(g_replay_gap, sizeof g_replay_gap, "%s %lld:%lld %lld:%lld", channel, (long long)epoch,
             (long long)seq, (long long)next_epoch, (long long)next_seq);
}

static void test_replay_paced_by_room(void **state)
{
    (void)state;
    hub_opts_t o = {.history = 10};
    hub_ops_t ops = {
        .send = fake_send, .room = fake_room, .replay_wanted = fake_wanted, .replay_gap = fake_replay_gap};
    hub_t *h = hub_new(&o, &ops);
    const char *ch = "trade.x.A-B";
    for (int i = 1; i <= 6; i++)
        pub(h, ch, i, 1);
    size_t frame = 0;
    {
        fake_t probe = {0};
        hub_client_t *cp = hub_client_new(h, &probe);
        g_room = SIZE_MAX;
        hub_since_t s = at(ch, 1, 5);
        hub_subscribe(cp, ch, &s, 1);
        assert_int_equal(probe.n, 1);
        frame = strlen(probe.text[0]) + 2; /* a frame: text and a 2-byte header */
        hub_client_free(cp);
        fake_reset(&probe);
    }
    /* Room for two frames: two now, the rest waits, live messages too. */
    fake_t a = {0};
    hub_client_t *ca = hub_client_new(h, &a);
    g_room = 2 * frame + frame / 2;
    g_idle = 0;
    g_wanted = 0;
    hub_since_t s = at(ch, 1, 1);
    assert_int_equal(hub_resume_check(ca, ch, &s.pos), 1);
    assert_int_equal(hub_subscribe(ca, ch, &s, 1), 0);
    assert_string_equal(positions(&a, 0), "1:2 1:3");
    assert_int_equal(g_wanted, 1);
    assert_int_equal(pub(h, ch, 7, 1), HUB_ACCEPTED);
    assert_int_equal(a.n, 2); /* 7 waits in the history behind 4..6 */
    assert_int_equal(hub_replay_step(h), 1);
    assert_string_equal(positions(&a, 0), "1:2 1:3 1:4 1:5");
    g_room = 0; /* nothing read: nothing more, still waiting */
    assert_int_equal(hub_replay_step(h), 1);
    assert_int_equal(a.n, 4);
    /* An empty queue takes one frame even when it is bigger than the room. */
    g_room = 1;
    g_idle = 1;
    assert_int_equal(hub_replay_step(h), 1);
    assert_string_equal(positions(&a, 0), "1:2 1:3 1:4 1:5 1:6");
    g_room = SIZE_MAX;
    g_idle = 0;
    assert_int_equal(hub_replay_step(h), 0); /* caught up: live from here */
    assert_int_equal(pub(h, ch, 8, 1), HUB_ACCEPTED);
    assert_string_equal(positions(&a, 0), "1:2 1:3 1:4 1:5 1:6 1:7 1:8");
    assert_int_equal(hub_stats(h)->replay_gaps, 0);
    assert_string_equal(g_replay_gap, "");

    /* A reader so slow that the history moves past it: the jump is counted
     * and the client gets what is left, in order. */
    fake_t b = {0};
    hub_client_t *cb = hub_client_new(h, &b);
    g_room = 0;
    s = at(ch, 1, 3);
    assert_int_equal(hub_subscribe(cb, ch, &s, 1), 0);
    assert_int_equal(b.n, 0);
    for (int i = 9; i <= 20; i++)
        pub(h, ch, i, 1);
    assert_int_equal(b.n, 0);
    g_room = SIZE_MAX;
    assert_int_equal(hub_replay_step(h), 0);
    assert_int_equal(hub_stats(h)->replay_gaps, 1);
    assert_string_equal(g_replay_gap, "trade.x.A-B 1:3 1:11");
    assert_string_equal(positions(&b, 0), "1:11 1:12 1:13 1:14 1:15 1:16 1:17 1:18 1:19 1:20");
    assert_int_equal(a.n, 7 + 12); /* the live reader got every one */

    /* Unsubscribed or gone while waiting: the replay goes with it. */
    fake_t c = {0};
    hub_client_t *cc = hub_client_new(h, &c), *cd = hub_client_new(h, &c);
    g_room = 0;
    s = at(ch, 1, 12);
    hub_subscribe(cc, ch, &s, 1);
    hub_subscribe(cd, ch, &s, 1);
    assert_int_equal(hub_replay_step(h), 2);
    assert_int_equal(hub_unsubscribe(cc, ch), 0);
    assert_int_equal(hub_replay_step(h), 1);
    hub_client_free(cd);
    assert_int_equal(hub_replay_step(h), 0);
    assert_int_equal(c.n, 0);
    hub_client_free(cc);
    hub_client_free(cb);
    hub_client_free(ca);
    fake_reset(&a);
    fake_reset(&b);
    hub_free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_subscribe_live_and_snapshot),
        cmocka_unit_test(test_trades_have_no_snapshot),
        cmocka_unit_test(test_patterns),
        cmocka_unit_test(test_subscribe_before_data),
        cmocka_unit_test(test_fencing_and_duplicates),
        cmocka_unit_test(test_route_key_and_epoch_checked),
        cmocka_unit_test(test_history_recovery),
        cmocka_unit_test(test_resume_across_epochs),
        cmocka_unit_test(test_resume_on_lagging_instance),
        cmocka_unit_test(test_resume_pattern_before_exact),
        cmocka_unit_test(test_resume_on_a_channel_already_covered),
        cmocka_unit_test(test_max_subscriptions),
        cmocka_unit_test(test_refusing_client_does_not_block_others),
        cmocka_unit_test(test_replay_paced_by_room),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
