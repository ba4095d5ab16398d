/* JSON Web Tokens (RFC 7519) signed with HS256, checked with OpenSSL's HMAC
 * and a constant-time compare: signature, alg, exp and nbf with a leeway.
 * Only HS256 is accepted ("none" and every other alg are refused), so a
 * token can never choose how it is verified. */
#ifndef JWT_H
#define JWT_H
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#define JWT_MAX_LEN 8192 /* longer tokens are refused as malformed */

typedef enum {
    JWT_OK = 0,
    JWT_MISSING,   /* no token at all (for the caller's bookkeeping) */
    JWT_MALFORMED, /* not three base64url parts of JSON objects, bad exp/nbf types */
    JWT_BAD_ALG,   /* header alg is not HS256, or crit is present */
    JWT_BAD_SIGNATURE,
    JWT_EXPIRED,       /* now > exp + leeway */
    JWT_NOT_YET_VALID, /* now + leeway < nbf */
} jwt_result_t;

/* Verify token (len bytes, need not be NUL-terminated) with key. now_ms is
 * wall-clock time in ms, leeway_ms the clock skew allowed for exp and nbf.
 * On JWT_OK and claims != NULL, *claims gets the payload object (caller
 * decrefs); on failure *claims is NULL. */
jwt_result_t jwt_verify_hs256(const char *token, size_t len, const void *key, size_t keylen, int64_t now_ms,
                              int64_t leeway_ms, json_t **claims);

/* A short stable name for metrics and logs: "ok", "missing", "malformed",
 * "bad_alg", "bad_signature", "expired", "not_yet_valid". */
const char *jwt_result_name(jwt_result_t r);

/* Sign a payload (a JSON object as text) into a malloc'd token (tests and
 * tools). NULL on bad input or out of memory. */
char *jwt_sign_hs256(const char *payload_json, const void *key, size_t keylen);

/* base64url without padding. decode: out must hold n*3/4+1 bytes; returns
 * the decoded length or -1 on a bad character or length. */
long jwt_b64url_decode(const char *in, size_t n, unsigned char *out);
/* encode: out must hold (n+2)/3*4+1 bytes; NUL-terminated; returns length. */
size_t jwt_b64url_encode(const unsigned char *in, size_t n, char *out);

#endif
