/* systemd notification (Type=notify): READY=1, RELOADING=1, STOPPING=1 sent
 * as a datagram to $NOTIFY_SOCKET; a no-op when the variable is unset. With
 * WatchdogSec= in the unit, WATCHDOG=1 every half period from a loop timer:
 * a supervisor whose loop hangs is restarted by systemd. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "supervisor.h"

void sd_notify_msg(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa;
    if (path == NULL || path[0] == '\0' || strlen(path) >= sizeof(sa.sun_path))
        return;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace */
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, len) < 0)
        log_warn("sd_notify failed", "msg=%s", log_q(msg));
    close(fd);
}

static uv_timer_t watchdog_timer;

static void on_watchdog(uv_timer_t *t)
{
    (void)t;
    sd_notify_msg("WATCHDOG=1");
}

void sd_watchdog_start(uv_loop_t *loop)
{
    const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    if (usec == NULL || usec[0] == '\0')
        return;
    if (pid != NULL && pid[0] != '\0' && strtol(pid, NULL, 10) != (long)getpid())
        return; /* meant for another process */
    unsigned long long us = strtoull(usec, NULL, 10);
    if (us < 2000) {
        log_warn("ignoring a bad WATCHDOG_USEC", "value=%s", log_q(usec));
        return;
    }
    uint64_t every = us / 2000; /* ms: twice per period */
    uv_timer_init(loop, &watchdog_timer);
    uv_timer_start(&watchdog_timer, on_watchdog, every, every);
    uv_unref((uv_handle_t *)&watchdog_timer);
    log_info("systemd watchdog on", "period_ms=%llu ping_every_ms=%llu", us / 1000,
             (unsigned long long)every);
}
