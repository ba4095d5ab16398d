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
