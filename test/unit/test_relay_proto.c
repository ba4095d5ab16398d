/* Unit tests for common/relay_proto.c: the resume request as the fanout
 * builds it and the ingest parses it. */
#include "unit.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "relay_proto.h"

static json_t *roundtrip(json_t *req)
{
    char *text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    assert_non_null(text);
    json_error_t err;
    json_t *back = json_loads(text, 0, &err);
    free(text);
    assert_non_null(back);
    return back;
}

static void test_build_and_parse(void **state)
{
    (void)state;
    json_t *since = json_pack("{s:i, s:i}", "trade.upbit.BTC-KRW", 41, "ticker.x.A-B", 7);
    json_t *req = roundtrip(relay_proto_resume_new(9, since, 50));
    relay_resume_t r;
    assert_int_equal(relay_proto_resume_parse(req, &r), 0);
    assert_int_equal(r.epoch, 9);
    assert_int_equal(r.tail, 50);
    assert_int_equal(relay_proto_resume_since(&r, "trade.upbit.BTC-KRW"), 41);
    assert_int_equal(relay_proto_resume_since(&r, "ticker.x.A-B"), 7);
    assert_int_equal(relay_proto_resume_since(&r, "ticker.y.A-B"), 0); /* new channel */
    json_decref(req);
}

/* The fanout's fallback request knows nothing: epoch 0, since {}, no tail. */
static void test_defaults(void **state)
{
    (void)state;
    json_t *req = roundtrip(relay_proto_resume_new(0, NULL, -1));
    assert_null(json_object_get(req, "tail"));
    assert_true(json_is_object(json_object_get(req, "since")));
    relay_resume_t r;
    assert_int_equal(relay_proto_resume_parse(req, &r), 0);
    assert_int_equal(r.epoch, 0);
    assert_int_equal(r.tail, 1);
    json_decref(req);

    req = json_pack("{s:s, s:s, s:i, s:s}", "op", "resume", "epoch", "x", "tail", -3, "since", "no");
    assert_int_equal(relay_proto_resume_parse(req, &r), 0);
    assert_int_equal(r.epoch, 0);
    assert_int_equal(r.tail, 1);
    assert_null(r.since);
    assert_int_equal(relay_proto_resume_since(&r, "a.b.C"), 0);
    json_decref(req);
}

static void test_not_a_resume(void **state)
{
    (void)state;
    relay_resume_t r;
    json_t *req = json_pack("{s:s}", "op", "subscribe");
    assert_int_equal(relay_proto_resume_parse(req, &r), -EINVAL);
    json_decref(req);
    req = json_pack("{s:i}", "epoch", 3);
    assert_int_equal(relay_proto_resume_parse(req, &r), -EINVAL);
    json_decref(req);
    assert_int_equal(relay_proto_resume_parse(NULL, &r), -EINVAL); /* bad JSON */
}

UNIT_MAIN(cmocka_unit_test(test_build_and_parse), cmocka_unit_test(test_defaults),
          cmocka_unit_test(test_not_a_resume))
