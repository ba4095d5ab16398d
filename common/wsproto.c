/* RFC 6455 helpers shared by both WebSocket transports. */
#include "wsproto.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

int ws_accept_key(const char *key, char out[29])
{
    unsigned char sha[EVP_MAX_MD_SIZE];
    unsigned int shalen = 0;
    char in[128];
    int n = snprintf(in, sizeof in, "%s%s", key, WS_GUID);
    if (n < 0 || (size_t)n >= sizeof in)
        return -EINVAL;
    if (!EVP_Digest(in, (size_t)n, sha, &shalen, EVP_sha1(), NULL) || shalen != 20)
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

size_t wss_frame_header_len(size_t len)
{
    return len < 126 ? 2 : len <= 0xffff ? 4 : 10;
}

rbuf_t *wss_frame(int opcode, const void *data, size_t len)
{
    size_t h = wss_frame_header_len(len);
    rbuf_t *b = rbuf_alloc(h + len);
    if (b == NULL)
        return NULL;
    unsigned char *p = (unsigned char *)b->data;
    p[0] = (unsigned char)(0x80 | (opcode & 0x0f));
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
    if (len)
        memcpy(p + h, data, len);
    return b;
}
