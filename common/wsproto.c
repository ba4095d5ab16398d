/* RFC 6455 helpers shared by both WebSocket transports. */
#include "wsproto.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

int ws_accept_key(const char *key, char out[29])
{
    unsigned char sha[EVP_MAX_MD_SIZE];
    unsigned int shalen = 0;
    char in[128];
    int n = snprintf(in, sizeof in, "%s%s", key, WS_GUID);
    if (n < 0 || (size_t)n >= sizeof in)
        return -EINVAL;
    /* Fetched once: EVP_sha1() makes EVP_Digest look the algorithm up on
     * every call (measured with callgrind: 16k of the 18k instructions a
     * key cost, on every upgrade). Kept for the process's life. */
    static EVP_MD *sha1;
    if (sha1 == NULL && (sha1 = EVP_MD_fetch(NULL, "SHA1", NULL)) == NULL)
        return -EIO;
    if (!EVP_Digest(in, (size_t)n, sha, &shalen, sha1, NULL) || shalen != 20)
        return -EIO;
    EVP_EncodeBlock((unsigned char *)out, sha, 20);
    out[28] = '\0';
    return 0;
}

ssize_t ws_feed_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, const uint8_t **rx, size_t *rxlen)
{
    if (*rxlen == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < *rxlen ? len : *rxlen;
    memcpy(buf, *rx, n);
    *rx += n;
    *rxlen -= n;
    return (ssize_t)n;
}

size_t ws_frame_header_len(size_t len)
{
    return len < 126 ? 2 : len <= 0xffff ? 4 : 10;
}

size_t ws_frame_header(unsigned char *p, unsigned b0, size_t len)
{
    p[0] = (unsigned char)b0;
    if (len < 126) {
        p[1] = (unsigned char)len;
    } else if (len <= 0xffff) {
        p[1] = 126;
        p[2] = (unsigned char)(len >> 8);
        p[3] = (unsigned char)len;
    } else {
        p[1] = 127;
        for (int i = 0; i < 8; i++)
            p[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    }
    return ws_frame_header_len(len);
}

/* ---- permessage-deflate ---------------------------------------------------- */

#define WS_DEFLATE_TAIL "\x00\x00\xff\xff"

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

/* One "name[=value]" parameter in [p, end): trimmed, quotes removed. */
static void param_split(const char *p, const char *end, char *name, size_t ncap, char *val, size_t vcap,
                        int *has_val)
{
    p = skip_ws(p, end);
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    const char *eq = memchr(p, '=', (size_t)(end - p));
    const char *ne = eq ? eq : end;
    while (ne > p && (ne[-1] == ' ' || ne[-1] == '\t'))
        ne--;
    size_t nl = (size_t)(ne - p) < ncap - 1 ? (size_t)(ne - p) : ncap - 1;
    memcpy(name, p, nl);
    name[nl] = '\0';
    *has_val = eq != NULL;
    val[0] = '\0';
    if (eq == NULL)
        return;
    const char *v = skip_ws(eq + 1, end);
    if (end - v >= 2 && *v == '"' && end[-1] == '"') {
        v++;
        end--;
    }
    size_t vl = (size_t)(end - v) < vcap - 1 ? (size_t)(end - v) : vcap - 1;
    memcpy(val, v, vl);
    val[vl] = '\0';
}

/* Window bits 8..15 as the RFC's 1*DIGIT without leading zeros, else -1. */
static int window_bits(const char *v)
{
    if (v[0] < '1' || v[0] > '9' || (v[1] != '\0' && (v[1] < '0' || v[1] > '9' || v[2] != '\0')))
        return -1;
    int n = atoi(v);
    return n >= 8 && n <= 15 ? n : -1;
}

/* One offer's parameters in [p, end) after the extension name. 1 when we
 * can honour all of them; *echo_smwb when server_max_window_bits=15 must be
 * echoed (7.1.2.1). */
static int offer_ok(const char *p, const char *end, int *echo_smwb)
{
    int seen_snct = 0, seen_cnct = 0, seen_smwb = 0, seen_cmwb = 0;
    *echo_smwb = 0;
    while (p < end) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *pe = semi ? semi : end;
        char name[40], val[16];
        int has_val;
        param_split(p, pe, name, sizeof name, val, sizeof val, &has_val);
        if (strcmp(name, "server_no_context_takeover") == 0) {
            if (seen_snct++ || has_val)
                return 0;
        } else if (strcmp(name, "client_no_context_takeover") == 0) {
            if (seen_cnct++ || has_val)
                return 0;
        } else if (strcmp(name, "server_max_window_bits") == 0) {
            /* One frame serves every client: we cannot narrow the window
             * for one of them. */
            if (seen_smwb++ || !has_val || window_bits(val) != 15)
                return 0;
            *echo_smwb = 1;
        } else if (strcmp(name, "client_max_window_bits") == 0) {
            /* A hint that the client accepts the parameter; our inflater
             * takes any window, so it is not answered. */
            if (seen_cmwb++ || (has_val && window_bits(val) < 0))
                return 0;
        } else {
            return 0;
        }
        p = semi ? semi + 1 : end;
    }
    return 1;
}

int ws_deflate_negotiate(const char *offers, char *resp, size_t cap)
{
    if (offers == NULL)
        return 0;
    const char *p = offers, *end = offers + strlen(offers);
    while (p < end) {
        /* Offers are separated by commas outside quoted values. */
        const char *oe = p;
        int quoted = 0;
        while (oe < end && (quoted || *oe != ',')) {
            if (*oe == '"')
                quoted = !quoted;
            oe++;
        }
        const char *semi = memchr(p, ';', (size_t)(oe - p));
        const char *ne = semi ? semi : oe;
        const char *ns = skip_ws(p, ne);
        while (ne > ns && (ne[-1] == ' ' || ne[-1] == '\t'))
            ne--;
        int echo = 0;
        if ((size_t)(ne - ns) == strlen("permessage-deflate") &&
            strncasecmp(ns, "permessage-deflate", (size_t)(ne - ns)) == 0 &&
            offer_ok(semi ? semi + 1 : oe, oe, &echo)) {
            int n = snprintf(resp, cap,
                             "permessage-deflate; server_no_context_takeover; "
                             "client_no_context_takeover%s",
                             echo ? "; server_max_window_bits=15" : "");
            return n > 0 && (size_t)n < cap;
        }
        p = oe < end ? oe + 1 : end;
    }
    return 0;
}

struct ws_deflater_s {
    z_stream zs;
    buf_t out;
};

int ws_deflater_new(int level, ws_deflater_t **out)
{
    ws_deflater_t *z = calloc(1, sizeof *z);
    if (z == NULL)
        return -ENOMEM;
    /* Raw deflate, 32 KB window; memLevel 8 is zlib's default. */
    if (deflateInit2(&z->zs, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        free(z);
        return -ENOMEM;
    }
    buf_init(&z->out);
    *out = z;
    return 0;
}

void ws_deflater_free(ws_deflater_t *z)
{
    if (z == NULL)
        return;
    deflateEnd(&z->zs);
    buf_free(&z->out);
    free(z);
}

rbuf_t *ws_deflate_frame(ws_deflater_t *z, int opcode, const void *data, size_t len)
{
    size_t bound = deflateBound(&z->zs, (uLong)len) + 16;
    buf_reset(&z->out);
    if (buf_reserve(&z->out, bound) < 0 || deflateReset(&z->zs) != Z_OK)
        return NULL;
    z->zs.next_in = (Bytef *)(uintptr_t)data;
    z->zs.avail_in = (uInt)len;
    z->zs.next_out = (Bytef *)z->out.data;
    z->zs.avail_out = (uInt)bound;
    if (deflate(&z->zs, Z_SYNC_FLUSH) != Z_OK || z->zs.avail_in != 0)
        return NULL;
    size_t n = bound - z->zs.avail_out;
    if (n < 4 || memcmp(z->out.data + n - 4, WS_DEFLATE_TAIL, 4) != 0)
        return NULL;
    n -= 4;
    size_t h = ws_frame_header_len(n);
    if (h + n >= ws_frame_header_len(len) + len)
        return NULL; /* not worth it: the plain frame is no bigger */
    rbuf_t *b = rbuf_alloc(h + n);
    if (b == NULL)
        return NULL;
    unsigned char *p = (unsigned char *)b->data;
    ws_frame_header(p, 0x80 | 0x40 | ((unsigned)opcode & 0x0f), n); /* FIN, RSV1 */
    memcpy(p + h, z->out.data, n);
    return b;
}

struct ws_inflater_s {
    z_stream zs;
};

int ws_inflater_new(ws_inflater_t **out)
{
    ws_inflater_t *z = calloc(1, sizeof *z);
    if (z == NULL)
        return -ENOMEM;
    if (inflateInit2(&z->zs, -15) != Z_OK) {
        free(z);
        return -ENOMEM;
    }
    *out = z;
    return 0;
}

void ws_inflater_free(ws_inflater_t *z)
{
    if (z == NULL)
        return;
    inflateEnd(&z->zs);
    free(z);
}

int ws_inflate(ws_inflater_t *z, const void *data, size_t len, size_t max, buf_t *out)
{
    buf_reset(out);
    if (inflateReset(&z->zs) != Z_OK)
        return -ENOMEM;
    static const unsigned char tail[4] = {0x00, 0x00, 0xff, 0xff};
    const unsigned char *in[2] = {data, tail};
    size_t inlen[2] = {len, 4};
    for (int part = 0; part < 2; part++) {
        z->zs.next_in = (Bytef *)(uintptr_t)in[part];
        z->zs.avail_in = (uInt)inlen[part];
        for (;;) {
            /* One byte past the bound tells "too big" from "exactly max". */
            size_t room = max + 1 - out->len;
            size_t chunk = room < 16384 ? room : 16384;
            if (buf_reserve(out, chunk + 1) < 0)
                return -ENOMEM;
            z->zs.next_out = (Bytef *)out->data + out->len;
            z->zs.avail_out = (uInt)chunk;
            int r = inflate(&z->zs, Z_SYNC_FLUSH);
            out->len += chunk - z->zs.avail_out;
            if (out->len > max)
                return -EMSGSIZE;
            if (r == Z_STREAM_END)
                goto done; /* a final block (7.2.3.3): nothing follows */
            if (r != Z_OK && r != Z_BUF_ERROR)
                return -EINVAL;
            if (z->zs.avail_out > 0)
                break; /* input used up and output drained */
        }
        if (z->zs.avail_in > 0)
            return -EINVAL;
    }
done:
    out->data[out->len] = '\0';
    return 0;
}

int ws_utf8_valid(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        unsigned lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            k = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            k = 2;
            if (c == 0xe0)
                lo = 0xa0;
            else if (c == 0xed)
                hi = 0x9f; /* no surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 3;
            if (c == 0xf0)
                lo = 0x90;
            else if (c == 0xf4)
                hi = 0x8f;
        } else {
            return 0;
        }
        if (i + k >= n)
            return 0;
        if (p[i + 1] < lo || p[i + 1] > hi)
            return 0;
        for (size_t j = 2; j <= k; j++)
            if ((p[i + j] & 0xc0) != 0x80)
                return 0;
        i += k + 1;
    }
    return 1;
}

/* ---- server frames, framed once ------------------------------------------------ */

size_t wss_frame_header_len(size_t len)
{
    return ws_frame_header_len(len);
}

rbuf_t *wss_frame(int opcode, const void *data, size_t len)
{
    size_t h = ws_frame_header_len(len);
    rbuf_t *b = rbuf_alloc(h + len);
    if (b == NULL)
        return NULL;
    unsigned char *p = (unsigned char *)b->data;
    ws_frame_header(p, 0x80 | ((unsigned)opcode & 0x0f), len);
    if (len)
        memcpy(p + h, data, len);
    return b;
}
