/* Unit tests for workers/fanout/protocol.c: client requests and replies,
 * error codes, the per-client rate limit. */
#include "unit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_hub.h"
#include "hub.h"
#include "protocol.h"

static const char *last(fake_t *f)
{
    return f->n ? f->text[f->n - 1] : "";
}

static void req(hub_client_t *c, proto_rate_t *r, const char *text)
{
    assert_int_equal(proto_handle(c, r, 0, text, strlen(text), 1000, NULL), PROTO_OK);
}

static void test_protocol_errors(void **state)
{
    (void)state;
    hub_t *h = mkhub(10, 2);
    fake_t a = {0};
    proto_rate_t r = {0};
    hub_client_t *ca = hub_client_new(h, &a);
    req(ca, &r, "{bad");
    assert_non_null(strstr(last(&a), "\"code\":\"bad_json\""));
    req(ca, &r, "[1]");
    assert_non_null(strstr(last(&a), "\"code\":\"bad_json\""));
    req(ca, &r, "{\"op\":\"dance\",\"id\":3}");
    assert_non_null(strstr(last(&a), "\"code\":\"unknown_op\""));
    assert_non_null(strstr(last(&a), "\"id\":3"));
    req(ca, &r, "{\"id\":4}");
    assert_non_null(strstr(last(&a), "\"code\":\"bad_request\""));
    req(ca, &r, "{\"op\":\"subscribe\",\"channels\":[\"nope\"],\"id\":5}");
    assert_non_null(strstr(last(&a), "\"code\":\"bad_channel\""));
    assert_non_null(strstr(last(&a), "\"id\":5"));
    req(ca, &r, "{\"op\":\"subscribe\",\"channels\":\"ticker.x.A-B\"}");
    assert_non_null(strstr(last(&a), "\"code\":\"bad_request\""));
    req(ca, &r, "{\"op\":\"subscribe\",\"channels\":[\"a.b.C\",\"a.b.D\",\"a.b.E\"],\"id\":6}");
    assert_non_null(strstr(last(&a), "\"code\":\"too_many_subscriptions\""));
    assert_int_equal(hub_client_sub_count(ca), 0); /* all or nothing */
    req(ca, &r, "{\"op\":\"subscribe\",\"channels\":[\"a.b.C\"],\"since\":{\"a.*.C\":1}}");
    assert_non_null(strstr(last(&a), "\"code\":\"bad_channel\""));
    req(ca, &r, "{\"op\":\"subscribe\",\"channels\":[\"a.b.C\"],\"since\":{\"a.b.C\":\"x\"}}");
    assert_non_null(strstr(last(&a), "\"code\":\"bad_request\""));
    req(ca, &r, "{\"op\":\"subscribe\",\"since\":{\"a.b.C\":{\"epoch\":-1,\"seq\":1}}}");
    assert_non_null(strstr(last(&a), "\"code\":\"bad_request\""));
    req(ca, &r, "{\"op\":\"subscribe\",\"since\":{\"a.b.C\":{\"epoch\":1}}}");
    assert_non_null(strstr(last(&a), "\"code\":\"bad_request\""));
    assert_int_equal(hub_client_sub_count(ca), 0);
    proto_binary(ca);
    assert_non_null(strstr(last(&a), "\"code\":\"bad_request\""));
    hub_client_free(ca);
    fake_reset(&a);
    hub_free(h);
}

static void test_protocol_replies(void **state)
{
    (void)state;
    hub_t *h = mkhub(10, 0);
    fake_t a = {0};
    proto_rate_t r = {0};
    for (int i = 1; i <= 3; i++)
        pub(h, "ticker.x.A-B", i, 1);
    hub_client_t *ca = hub_client_new(h, &a);
    req(ca, &r, "{\"op\":\"subscribe\",\"channels\":[\"ticker.*.A-B\"],\"id\":1}");
    assert_int_equal(a.n, 2);
    assert_non_null(strstr(a.text[0], "\"type\":\"subscribed\""));
    assert_non_null(strstr(a.text[0], "\"id\":1"));
    assert_int_equal(seq_of(a.text[1]), 3); /* reply, then snapshot */
    req(ca, &r, "{\"op\":\"ping\",\"id\":\"p\"}");
    assert_non_null(strstr(last(&a), "\"type\":\"pong\""));
    assert_non_null(strstr(last(&a), "\"id\":\"p\""));
    assert_non_null(strstr(last(&a), "\"ts\":1000"));
    req(ca, &r, "{\"op\":\"list\"}");
    assert_non_null(strstr(last(&a), "\"channels\":[\"ticker.x.A-B\"]"));
    req(ca, &r, "{\"op\":\"unsubscribe\",\"channels\":[\"ticker.*.A-B\"],\"id\":2}");
    assert_non_null(strstr(last(&a), "\"type\":\"unsubscribed\""));
    fake_reset(&a);
    /* since: recovered true replays, recovered false sends the snapshot */
    req(ca, &r, "{\"op\":\"subscribe\",\"since\":{\"ticker.x.A-B\":1},\"id\":3}");
    assert_non_null(strstr(a.text[0], "\"recovered\":{\"ticker.x.A-B\":true}"));
    assert_int_equal(a.n, 3);
    assert_int_equal(seq_of(a.text[1]), 2);
    assert_int_equal(seq_of(a.text[2]), 3);
    fake_reset(&a);
    req(ca, &r, "{\"op\":\"unsubscribe\",\"channels\":[\"ticker.x.A-B\"]}");
    /* a legacy seq past the newest here may be from an older epoch: a gap,
     * the snapshot, and no floor */
    req(ca, &r, "{\"op\":\"subscribe\",\"channels\":[\"ticker.x.A-B\"],\"since\":{\"ticker.x.A-B\":99}}");
    assert_non_null(strstr(a.text[1], "\"recovered\":{\"ticker.x.A-B\":false}"));
    assert_int_equal(a.n, 3);
    assert_int_equal(seq_of(a.text[2]), 3);
    hub_client_free(ca);
    fake_reset(&a);
    hub_free(h);
}

static void test_rate_limit(void **state)
{
    (void)state;
    hub_t *h = mkhub(0, 0);
    fake_t a = {0};
    proto_rate_t r = {0};
    hub_client_t *ca = hub_client_new(h, &a);
    const char *ping = "{\"op\":\"ping\"}";
    int limited = 0, res = PROTO_OK;
    for (int i = 0; i < 5; i++) {
        res = proto_handle(ca, &r, 5, ping, strlen(ping), 10000, &limited);
        assert_int_equal(res, PROTO_OK);
        assert_false(limited);
    }
    res = proto_handle(ca, &r, 5, ping, strlen(ping), 10100, &limited);
    assert_int_equal(res, PROTO_OK);
    assert_true(limited);
    assert_non_null(strstr(last(&a), "\"code\":\"rate_limited\""));
    for (int i = 0; i < 4; i++)
        res = proto_handle(ca, &r, 5, ping, strlen(ping), 10200, &limited);
    assert_int_equal(res, PROTO_OK);
    res = proto_handle(ca, &r, 5, ping, strlen(ping), 10300, &limited);
    assert_int_equal(res, PROTO_CLOSE_POLICY);
    /* a new second starts afresh */
    res = proto_handle(ca, &r, 5, ping, strlen(ping), 11001, &limited);
    assert_int_equal(res, PROTO_OK);
    assert_false(limited);
    hub_client_free(ca);
    fake_reset(&a);
    hub_free(h);
}

UNIT_MAIN(cmocka_unit_test(test_protocol_errors), cmocka_unit_test(test_protocol_replies),
          cmocka_unit_test(test_rate_limit))
