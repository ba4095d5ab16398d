/* Listening sockets for every server in the service (listener.h). */
#include "listener.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"

static int eai_to_uv(int e)
{
    switch (e) {
    case EAI_AGAIN: return UV_EAI_AGAIN;
    case EAI_NONAME: return UV_EAI_NONAME;
    case EAI_FAMILY: return UV_EAI_FAMILY;
    case EAI_MEMORY: return UV_ENOMEM;
    case EAI_SERVICE: return UV_EAI_SERVICE;
    case EAI_SYSTEM: return -errno;
    default: return UV_EAI_FAIL;
    }
}

static int bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t n = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &n) < 0)
        return 0;
    return ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                          : ((struct sockaddr_in *)&ss)->sin_port);
}

static int open_one(const struct addrinfo *ai, int reuseport, int backlog)
{
    int one = 1, r;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, backlog) < 0) {
        r = -errno;
        close(fd);
        return r;
    }
    return fd;
}

int listener_open(const char *addr, int reuseport, int backlog, int *port_out)
{
    char host[256], service[8];
    int port = 0;
    if (cfg_parse_addr(addr, host, sizeof host, &port) < 0)
        return -EINVAL;
    if (host[0] == '\0' || strcmp(host, "*") == 0)
        snprintf(host, sizeof host, "0.0.0.0");
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV | AI_ADDRCONFIG};
    struct addrinfo *res = NULL;
    int e = getaddrinfo(host, service, &hints, &res);
    if (e == EAI_NONAME || e == EAI_ADDRFAMILY) {
        /* AI_ADDRCONFIG hides loopback-only families on a host without
         * another address; ask again without it. */
        hints.ai_flags &= ~AI_ADDRCONFIG;
        e = getaddrinfo(host, service, &hints, &res);
    }
    if (e != 0)
        return eai_to_uv(e);
    int fd = UV_EAI_NONAME;
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next)
        if ((fd = open_one(ai, reuseport, backlog)) >= 0)
            break;
    freeaddrinfo(res);
    if (fd >= 0 && port_out != NULL)
        *port_out = bound_port(fd);
    return fd;
}

int listener_tcp(uv_loop_t *loop, uv_tcp_t *tcp, const char *addr, int backlog, uv_connection_cb cb,
                 int *port_out)
{
    int r = uv_tcp_init(loop, tcp);
    if (r < 0)
        return r;
    int fd = listener_open(addr, 0, backlog, port_out);
    if (fd < 0)
        return fd;
    if ((r = uv_tcp_open(tcp, fd)) < 0) {
        close(fd);
        return r;
    }
    return uv_listen((uv_stream_t *)tcp, backlog, cb);
}
