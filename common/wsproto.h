/* RFC 6455 pieces: the handshake's accept key and the wslay input callback
 * body, shared by the client (wsclient.c) and server (wsserver.c)
 * transports, and the encoder of server frames, which the hub and the relay
 * use to frame a message once for all their connections. */
#ifndef WSPROTO_H
#define WSPROTO_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <wslay/wslay.h>

#include "rbuf.h"

#define WSS_OP_TEXT 0x1
#define WSS_OP_BINARY 0x2
#define WSS_OP_CLOSE 0x8
#define WSS_OP_PING 0x9
#define WSS_OP_PONG 0xa

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID)),
 * NUL-terminated in out. 0, or -EINVAL for an oversized key, -EIO. */
int ws_accept_key(const char *key, char out[29]);

/* wslay recv callback body: hand wslay up to len bytes of the pending input
 * (*rx, *rxlen), advancing it; WOULDBLOCK when none is left. */
ssize_t ws_feed_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, const uint8_t **rx,
                     size_t *rxlen);

/* Frame a message once, as a server sends it (unmasked, FIN set): the same
 * refcounted buffer then goes to every connection (wss_send). NULL when out
 * of memory. */
rbuf_t *wss_frame(int opcode, const void *data, size_t len);
/* Header length of such a frame for a payload of len bytes. */
size_t wss_frame_header_len(size_t len);

#endif
