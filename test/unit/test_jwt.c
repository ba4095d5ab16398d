/* Unit tests for common/jwt (HS256 verify/sign, base64url, secret compare)
 * and the fanout's auth grants (workers/fanout/auth) and per-IP limits
 * (workers/fanout/limits). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../workers/fanout/auth.h"
#include "../../workers/fanout/limits.h"
#include "jwt.h"

static const char KEY[] = "0123456789abcdef0123456789abcdef";
#define NOW_MS 1700000000000LL

static jwt_result_t verify(const char *tok, json_t **claims)
{
    return jwt_verify_hs256(tok, tok ? strlen(tok) : 0, KEY, strlen(KEY), NOW_MS, 30000, claims);
}

static void test_b64url(void **state)
{
    (void)state;
    char enc[64];
    unsigned char dec[64];
    assert_int_equal(jwt_b64url_encode((const unsigned char *)"\xfb\xff", 2, enc), 3);
    assert_string_equal(enc, "-_8");
    assert_int_equal(jwt_b64url_decode("-_8", 3, dec), 2);
    assert_memory_equal(dec, "\xfb\xff", 2);
    assert_int_equal(jwt_b64url_encode((const unsigned char *)"abc", 3, enc), 4);
    assert_string_equal(enc, "YWJj");
    assert_int_equal(jwt_b64url_decode("YWJj", 4, dec), 3);
    assert_int_equal(jwt_b64url_decode("YW=j", 4, dec), -1); /* padding/std alphabet refused */
    assert_int_equal(jwt_b64url_decode("Y", 1, dec), -1);
    assert_int_equal(jwt_b64url_decode("YR", 2, dec), -1); /* non-zero leftover bits */
}

static void test_sign_verify_roundtrip(void **state)
{
    (void)state;
    char *tok = jwt_sign_hs256("{\"sub\":\"a\",\"exp\":1700000600}", KEY, strlen(KEY));
    assert_non_null(tok);
    json_t *claims = NULL;
    assert_int_equal(verify(tok, &claims), JWT_OK);
    assert_string_equal(json_string_value(json_object_get(claims, "sub")), "a");
    json_decref(claims);
    /* A flipped signature character, a different key. */
    size_t n = strlen(tok);
    tok[n - 2] = tok[n - 2] == 'A' ? 'B' : 'A';
    assert_int_equal(verify(tok, &claims), JWT_BAD_SIGNATURE);
    assert_null(claims);
    free(tok);
    tok = jwt_sign_hs256("{\"exp\":1700000600}", "another key", 11);
    assert_int_equal(verify(tok, NULL), JWT_BAD_SIGNATURE);
    free(tok);
}

static void test_time_claims(void **state)
{
    (void)state;
    char *t;
    t = jwt_sign_hs256("{\"exp\":1699999000}", KEY, strlen(KEY)); /* 1000 s ago */
    assert_int_equal(verify(t, NULL), JWT_EXPIRED);
    free(t);
    t = jwt_sign_hs256("{\"exp\":1699999980}", KEY, strlen(KEY)); /* 20 s ago: within the leeway */
    assert_int_equal(verify(t, NULL), JWT_OK);
    free(t);
    t = jwt_sign_hs256("{\"nbf\":1700001000}", KEY, strlen(KEY));
    assert_int_equal(verify(t, NULL), JWT_NOT_YET_VALID);
    free(t);
    t = jwt_sign_hs256("{\"nbf\":1700000020}", KEY, strlen(KEY));
    assert_int_equal(verify(t, NULL), JWT_OK);
    free(t);
    t = jwt_sign_hs256("{\"exp\":\"tomorrow\"}", KEY, strlen(KEY));
    assert_int_equal(verify(t, NULL), JWT_MALFORMED);
    free(t);
    t = jwt_sign_hs256("{}", KEY, strlen(KEY)); /* no exp: valid */
    assert_int_equal(verify(t, NULL), JWT_OK);
    free(t);
}

static void test_malformed_and_alg(void **state)
{
    (void)state;
    assert_int_equal(verify(NULL, NULL), JWT_MISSING);
    assert_int_equal(verify("", NULL), JWT_MISSING);
    assert_int_equal(verify("abc", NULL), JWT_MALFORMED);
    assert_int_equal(verify("a.b", NULL), JWT_MALFORMED);
    assert_int_equal(verify("a.b.c.d", NULL), JWT_MALFORMED);
    assert_int_equal(verify("!!.b.c", NULL), JWT_MALFORMED);
    /* {"alg":"none"}.{"exp":1} with no signature */
    char h[64], p[64], tok[200];
    jwt_b64url_encode((const unsigned char *)"{\"alg\":\"none\"}", 14, h);
    jwt_b64url_encode((const unsigned char *)"{\"exp\":1}", 9, p);
    snprintf(tok, sizeof tok, "%s.%s.", h, p);
    assert_int_equal(verify(tok, NULL), JWT_BAD_ALG);
    jwt_b64url_encode((const unsigned char *)"{\"alg\":\"HS512\"}", 15, h);
    snprintf(tok, sizeof tok, "%s.%s.xyz", h, p);
    assert_int_equal(verify(tok, NULL), JWT_BAD_ALG);
    char big[JWT_MAX_LEN + 10];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(verify(big, NULL), JWT_MALFORMED);
    assert_string_equal(jwt_result_name(JWT_NOT_YET_VALID), "not_yet_valid");
}

static void test_secret_equal(void **state)
{
    (void)state;
    assert_true(jwt_secret_equal("abc", 3, "abc", 3));
    assert_false(jwt_secret_equal("abc", 3, "abd", 3));
    assert_false(jwt_secret_equal("abc", 3, "abcd", 4));
    assert_false(jwt_secret_equal(NULL, 0, "", 0));
}

static void test_grant_patterns(void **state)
{
    (void)state;
    auth_grant_t g;
    json_t *c =
        json_pack("{s:[s,s], s:i}", "channels", "ticker.upbit.*", "trade.*.BTC-KRW", "exp", 1700000600);
    assert_int_equal(auth_grant_from_claims(c, "channels", 1000, &g), 0);
    assert_true(g.restricted);
    assert_int_equal(g.n, 2);
    assert_int_equal(g.exp_ms, 1700000601000LL);
    assert_true(auth_channel_allowed(&g, "ticker.upbit.BTC-KRW"));
    assert_true(auth_channel_allowed(&g, "ticker.upbit.*"));
    assert_true(auth_channel_allowed(&g, "trade.binance.BTC-KRW"));
    assert_false(auth_channel_allowed(&g, "ticker.binance.BTC-USDT"));
    assert_false(auth_channel_allowed(&g, "ticker.*.BTC-KRW")); /* wider than the grant */
    assert_false(auth_channel_allowed(&g, "orderbook.upbit.BTC-KRW"));
    char bad[64];
    const char *req = "{\"op\":\"subscribe\",\"channels\":[\"ticker.upbit.BTC-KRW\"],\"since\":{\"trade."
                      "upbit.ETH-KRW\":3}}";
    assert_int_equal(auth_check_request(&g, req, strlen(req), bad, sizeof bad), -EACCES);
    assert_string_equal(bad, "trade.upbit.ETH-KRW");
    req = "{\"op\":\"subscribe\",\"channel\":\"ticker.upbit.ETH-KRW\"}";
    assert_int_equal(auth_check_request(&g, req, strlen(req), bad, sizeof bad), 0);
    req = "{\"op\":\"unsubscribe\",\"channels\":[\"orderbook.x.Y-Z\"]}";
    assert_int_equal(auth_check_request(&g, req, strlen(req), bad, sizeof bad), 0);
    req = "not json";
    assert_int_equal(auth_check_request(&g, req, strlen(req), bad, sizeof bad), 0);
    auth_grant_free(&g);
    json_decref(c);

    /* A string claim, "*" for everything, absent claim, bad types. */
    c = json_pack("{s:s}", "chans", "ticker.upbit.BTC-KRW, trade.upbit.BTC-KRW");
    assert_int_equal(auth_grant_from_claims(c, "chans", 0, &g), 0);
    assert_int_equal(g.n, 2);
    assert_true(auth_channel_allowed(&g, "trade.upbit.BTC-KRW"));
    auth_grant_free(&g);
    json_decref(c);
    c = json_pack("{s:[s]}", "channels", "*");
    assert_int_equal(auth_grant_from_claims(c, "channels", 0, &g), 0);
    assert_true(auth_channel_allowed(&g, "orderbook.coinbase.BTC-USD"));
    auth_grant_free(&g);
    json_decref(c);
    c = json_pack("{s:s}", "sub", "x");
    assert_int_equal(auth_grant_from_claims(c, "channels", 0, &g), 0);
    assert_false(g.restricted);
    assert_true(auth_channel_allowed(&g, "ticker.a.B-C"));
    auth_grant_free(&g);
    json_decref(c);
    c = json_pack("{s:i}", "channels", 5);
    assert_int_equal(auth_grant_from_claims(c, "channels", 0, &g), -EINVAL);
    json_decref(c);
    c = json_pack("{s:[s]}", "channels", "not a channel");
    assert_int_equal(auth_grant_from_claims(c, "channels", 0, &g), -EINVAL);
    json_decref(c);
}

static void test_limits(void **state)
{
    (void)state;
    limits_t *l = limits_new();
    assert_non_null(l);
    /* 2 open per IP */
    assert_int_equal(limits_connect(l, "10.0.0.1", 2, 0, 1000), LIMITS_OK);
    assert_int_equal(limits_connect(l, "10.0.0.1", 2, 0, 1000), LIMITS_OK);
    assert_int_equal(limits_connect(l, "10.0.0.1", 2, 0, 1000), LIMITS_CONNECTIONS);
    assert_int_equal(limits_connect(l, "10.0.0.2", 2, 0, 1000), LIMITS_OK);
    assert_int_equal(limits_open(l, "10.0.0.1"), 3);
    limits_disconnect(l, "10.0.0.1");
    limits_disconnect(l, "10.0.0.1");
    assert_int_equal(limits_connect(l, "10.0.0.1", 2, 0, 1000), LIMITS_OK);
    /* 3 per second, connect-and-close cannot reset the window */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(limits_connect(l, "::1", 0, 3, 5000), LIMITS_OK);
        limits_disconnect(l, "::1");
    }
    assert_int_equal(limits_connect(l, "::1", 0, 3, 5500), LIMITS_RATE);
    limits_disconnect(l, "::1");
    assert_int_equal(limits_connect(l, "::1", 0, 3, 6001), LIMITS_OK);
    limits_disconnect(l, "::1");
    /* Idle entries are swept; many addresses grow the table. */
    for (int i = 0; i < 2000; i++) {
        char ip[32];
        snprintf(ip, sizeof ip, "192.168.%d.%d", i / 256, i % 256);
        assert_int_equal(limits_connect(l, ip, 5, 0, 7000), LIMITS_OK);
        limits_disconnect(l, ip);
    }
    assert_true(limits_tracked(l) >= 2000);
    assert_int_equal(limits_connect(l, "10.9.9.9", 5, 0, 9000), LIMITS_OK);
    assert_true(limits_tracked(l) < 10); /* only live ones left */
    assert_int_equal(limits_open(l, "10.0.0.1"), 2);
    /* Off: nothing counted. */
    assert_int_equal(limits_connect(l, "10.0.0.3", 0, 0, 9000), LIMITS_OK);
    assert_int_equal(limits_open(l, "10.0.0.3"), 0);
    limits_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url),       cmocka_unit_test(test_sign_verify_roundtrip),
        cmocka_unit_test(test_time_claims),  cmocka_unit_test(test_malformed_and_alg),
        cmocka_unit_test(test_secret_equal), cmocka_unit_test(test_grant_patterns),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
