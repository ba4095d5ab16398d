/* HS256 JSON Web Tokens: base64url, HMAC-SHA256 (OpenSSL), constant-time
 * signature compare, the registered time claims. No allocation beyond the
 * decoded parts and the jansson payload. */
#include "jwt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

static int b64val(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '-')
        return 62;
    if (ch == '_')
        return 63;
    return -1;
}

long jwt_b64url_decode(const char *in, size_t n, unsigned char *out)
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    if (n % 4 == 1)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int v = b64val((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    /* Leftover bits must be zero (canonical encoding). */
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
        return -1;
    out[o] = '\0';
    return (long)o;
}

size_t jwt_b64url_encode(const unsigned char *in, size_t n, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = tab[(v >> 6) & 63];
    }
    out[o] = '\0';
    return o;
}

static json_t *decode_object(const char *in, size_t n)
{
    unsigned char *raw = malloc(n * 3 / 4 + 2);
    if (raw == NULL)
        return NULL;
    long len = jwt_b64url_decode(in, n, raw);
    json_t *o = NULL;
    if (len > 0) {
        o = json_loadb((const char *)raw, (size_t)len, JSON_REJECT_DUPLICATES, NULL);
        if (o != NULL && !json_is_object(o)) {
            json_decref(o);
            o = NULL;
        }
    }
    free(raw);
    return o;
}

/* A NumericDate claim in ms: 1 present and valid, 0 absent, -1 bad type. */
static int time_claim(json_t *claims, const char *name, double *ms)
{
    json_t *v = json_object_get(claims, name);
    if (v == NULL)
        return 0;
    if (!json_is_number(v))
        return -1;
    double s = json_number_value(v);
    if (!isfinite(s))
        return -1;
    *ms = s * 1000.0;
    return 1;
}

jwt_result_t jwt_verify_hs256(const char *token, size_t len, const void *key, size_t keylen, int64_t now_ms,
                              int64_t leeway_ms, json_t **claims)
{
    json_t *hdr = NULL, *pl = NULL;
    jwt_result_t r = JWT_MALFORMED;
    if (claims != NULL)
        *claims = NULL;
    if (token == NULL || len == 0)
        return JWT_MISSING;
    if (len > JWT_MAX_LEN)
        return JWT_MALFORMED;
    const char *d1 = memchr(token, '.', len);
    if (d1 == NULL)
        return JWT_MALFORMED;
    const char *d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token));
    if (d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)) != NULL)
        return JWT_MALFORMED;
    size_t hl = (size_t)(d1 - token), pll = (size_t)(d2 - d1 - 1), sl = len - (size_t)(d2 + 1 - token);
    if (hl == 0 || pll == 0)
        return JWT_MALFORMED;
    if ((hdr = decode_object(token, hl)) == NULL)
        goto out;
    /* The header decides nothing: HS256 or refused. */
    const char *alg = json_string_value(json_object_get(hdr, "alg"));
    if (alg == NULL || strcmp(alg, "HS256") != 0 || json_object_get(hdr, "crit") != NULL) {
        r = JWT_BAD_ALG;
        goto out;
    }
    unsigned char sig[64], mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (sl != 43 || jwt_b64url_decode(d2 + 1, sl, sig) != 32)
        goto out;
    if (HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)token, (size_t)(d2 - token), mac,
             &maclen) == NULL ||
        maclen != 32) {
        r = JWT_BAD_SIGNATURE;
        goto out;
    }
    if (CRYPTO_memcmp(sig, mac, 32) != 0) {
        r = JWT_BAD_SIGNATURE;
        goto out;
    }
    /* Only a signed payload is parsed. */
    if ((pl = decode_object(d1 + 1, pll)) == NULL)
        goto out;
    double exp_ms = 0, nbf_ms = 0;
    int he = time_claim(pl, "exp", &exp_ms), hn = time_claim(pl, "nbf", &nbf_ms);
    if (he < 0 || hn < 0)
        goto out;
    if (he > 0 && (double)now_ms > exp_ms + (double)leeway_ms) {
        r = JWT_EXPIRED;
        goto out;
    }
    if (hn > 0 && (double)now_ms + (double)leeway_ms < nbf_ms) {
        r = JWT_NOT_YET_VALID;
        goto out;
    }
    r = JWT_OK;
    if (claims != NULL) {
        *claims = pl;
        pl = NULL;
    }
out:
    json_decref(hdr);
    json_decref(pl);
    return r;
}

const char *jwt_result_name(jwt_result_t r)
{
    switch (r) {
    case JWT_OK: return "ok";
    case JWT_MISSING: return "missing";
    case JWT_MALFORMED: return "malformed";
    case JWT_BAD_ALG: return "bad_alg";
    case JWT_BAD_SIGNATURE: return "bad_signature";
    case JWT_EXPIRED: return "expired";
    case JWT_NOT_YET_VALID: return "not_yet_valid";
    }
    return "unknown";
}

char *jwt_sign_hs256(const char *payload_json, const void *key, size_t keylen)
{
    static const char hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    size_t pl = payload_json ? strlen(payload_json) : 0;
    if (pl == 0)
        return NULL;
    size_t cap = (sizeof hdr + 2) / 3 * 4 + (pl + 2) / 3 * 4 + 48 + 4;
    char *out = malloc(cap);
    if (out == NULL)
        return NULL;
    size_t o = jwt_b64url_encode((const unsigned char *)hdr, sizeof hdr - 1, out);
    out[o++] = '.';
    o += jwt_b64url_encode((const unsigned char *)payload_json, pl, out + o);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)out, o, mac, &maclen) == NULL) {
        free(out);
        return NULL;
    }
    out[o++] = '.';
    jwt_b64url_encode(mac, maclen, out + o);
    return out;
}
