/* Unit tests for the fanout's jwt.c: HS256 verify/sign, base64url. */
#include "unit.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

UNIT_MAIN(cmocka_unit_test(test_b64url), cmocka_unit_test(test_sign_verify_roundtrip),
          cmocka_unit_test(test_time_claims), cmocka_unit_test(test_malformed_and_alg))
