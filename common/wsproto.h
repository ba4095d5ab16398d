/* RFC 6455 pieces shared by the client (wsclient.c) and server (wsserver.c)
 * transports: the handshake's accept key and the wslay input callback body. */
#ifndef WSPROTO_H
#define WSPROTO_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <wslay/wslay.h>

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID)),
 * NUL-terminated in out. 0, or -EINVAL for an oversized key, -EIO. */
int ws_accept_key(const char *key, char out[29]);

/* wslay recv callback body: hand wslay up to len bytes of the pending input
 * (*rx, *rxlen), advancing it; WOULDBLOCK when none is left. */
ssize_t ws_feed_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, const uint8_t **rx,
                     size_t *rxlen);

#endif
