/* The one way to open a listening TCP socket (fanout, relay, admin): the
 * address as configured ("host:port", "[v6]:port", "*:port" or ":port" for
 * every IPv4 address), host names resolved with getaddrinfo (AI_PASSIVE),
 * each resolved address tried in turn; SO_REUSEADDR always, SO_REUSEPORT on
 * request (the fanout workers share one port). Resolution blocks: call it at
 * start, not per request. */
#ifndef LISTENER_H
#define LISTENER_H
#include <uv.h>

/* A non-blocking, close-on-exec socket listening on addr. Returns the fd,
 * or a negative libuv/errno code: -EINVAL for a malformed address,
 * UV_EAI_NONAME (and other UV_EAI_*) when the host does not resolve, the
 * socket, bind or listen error otherwise. *port_out (may be NULL) gets the
 * bound port, useful with port 0. */
int listener_open(const char *addr, int reuseport, int backlog, int *port_out);
/* listener_open, then tcp (initialized here whatever the result, so the
 * caller uv_closes it as on stop) accepting with cb. 0 or a negative code. */
int listener_tcp(uv_loop_t *loop, uv_tcp_t *tcp, const char *addr, int backlog, uv_connection_cb cb,
                 int *port_out);

#endif
