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
#include "buf.h"
#include "rbuf.h"

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

/* Header length of a server (unmasked) frame with a len-byte payload. */
size_t ws_frame_header_len(size_t len);
/* Write that header: first byte b0 (FIN, RSV, opcode), then the length.
 * Returns the header length. */
size_t ws_frame_header(unsigned char *p, unsigned b0, size_t len);

/* ---- permessage-deflate (RFC 7692) ---------------------------------------- */

/* Answer a Sec-WebSocket-Extensions offer list. We compress every message
 * on its own (server_no_context_takeover, so one compressed frame serves
 * every client) and inflate every message on its own (we always ask for
 * client_no_context_takeover, allowed by 7.1.1.1). The first
 * permessage-deflate offer whose parameters we can honour is accepted:
 * its response parameters go to resp (NUL-terminated) and 1 is returned;
 * 0 when none can be (unknown or repeated parameters, bad values,
 * server_max_window_bits below 15): the connection then runs without it. */
int ws_deflate_negotiate(const char *offers, char *resp, size_t cap);

/* Compress one message payload (raw deflate, sync flush, the trailing
 * 00 00 ff ff removed) into a server frame with RSV1 set. NULL when the
 * result would not be smaller than the plain frame, or on error. */
typedef struct ws_deflater_s ws_deflater_t;
int ws_deflater_new(int level, ws_deflater_t **out);
void ws_deflater_free(ws_deflater_t *z);
rbuf_t *ws_deflate_frame(ws_deflater_t *z, int opcode, const void *data, size_t len);

/* Inflate one compressed message (7.2.2: 00 00 ff ff appended) into out,
 * replacing its contents. 0, -EMSGSIZE when it would exceed max bytes
 * (close 1009), -EINVAL for bad deflate data, -ENOMEM. */
typedef struct ws_inflater_s ws_inflater_t;
int ws_inflater_new(ws_inflater_t **out);
void ws_inflater_free(ws_inflater_t *z);
int ws_inflate(ws_inflater_t *z, const void *data, size_t len, size_t max, buf_t *out);

/* 1 when data is valid UTF-8 (RFC 3629). */
int ws_utf8_valid(const unsigned char *p, size_t n);

#endif
