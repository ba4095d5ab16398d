/* wcost: this machine's kernel cost of one loopback TCP write of N bytes, the
 * floor under any fanout server that makes one write per delivered message.
 * K connected loopback sockets; a reader thread drains them all; the writer
 * thread does write(N bytes) round robin over them and its own CPU time
 * (RUSAGE_THREAD: user + system, which on loopback includes the receive path
 * run in the sender's context) is divided by the writes. Prints one JSON
 * line: {"size":N,"writes":W,"cpu_s":C,"writes_per_cpu_s":R,"us_per_write":U}.
 *   wcost [--size N] [--writes W] [--conns K] */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 1024

static int nconns = 100;
static int rfd[MAX_CONNS], wfd[MAX_CONNS];
static volatile int done;

static void *reader(void *arg)
{
    static char buf[1 << 18];
    struct pollfd p[MAX_CONNS];
    (void)arg;
    for (int i = 0; i < nconns; i++)
        p[i] = (struct pollfd){.fd = rfd[i], .events = POLLIN};
    while (!done) {
        if (poll(p, (nfds_t)nconns, 100) <= 0)
            continue;
        for (int i = 0; i < nconns; i++)
            if (p[i].revents & POLLIN)
                while (read(rfd[i], buf, sizeof buf) > 0) {
                }
    }
    return NULL;
}

static int pair(int *r, int *w)
{
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0 ||
        getsockname(l, (struct sockaddr *)&a, &al) < 0)
        return -1;
    *w = socket(AF_INET, SOCK_STREAM, 0);
    if (*w < 0 || connect(*w, (struct sockaddr *)&a, sizeof a) < 0 || (*r = accept(l, NULL, NULL)) < 0)
        return -1;
    close(l);
    /* like the servers: TCP_NODELAY, non-blocking reader */
    setsockopt(*w, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fcntl(*r, F_SETFL, fcntl(*r, F_GETFL) | O_NONBLOCK);
}

static double thread_cpu_s(void)
{
    struct rusage u;
    getrusage(RUSAGE_THREAD, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"size", 1, 0, 's'}, {"writes", 1, 0, 'w'}, {"conns", 1, 0, 'k'}, {0, 0, 0, 0}};
    long size = 260, writes = 200000;
    int o;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 's': size = atol(optarg); break;
        case 'w': writes = atol(optarg); break;
        case 'k': nconns = atoi(optarg); break;
        default: goto usage;
        }
    }
    if (size < 1 || size > (1 << 20) || writes < 1 || nconns < 1 || nconns > MAX_CONNS)
        goto usage;
    for (int i = 0; i < nconns; i++)
        if (pair(&rfd[i], &wfd[i]) < 0) {
            fprintf(stderr, "wcost: loopback pair: %s\n", strerror(errno));
            return 1;
        }
    char *msg = malloc((size_t)size);
    if (!msg)
        return 1;
    memset(msg, 'x', (size_t)size);
    pthread_t th;
    if (pthread_create(&th, NULL, reader, NULL) != 0)
        return 1;
    double c0 = thread_cpu_s();
    for (long i = 0; i < writes; i++) {
        const char *p = msg;
        size_t left = (size_t)size;
        while (left) { /* a full socket buffer: the reader is behind, retry */
            ssize_t n = write(wfd[i % nconns], p, left);
            if (n < 0 && errno != EINTR) {
                fprintf(stderr, "wcost: write: %s\n", strerror(errno));
                return 1;
            }
            if (n > 0)
                p += n, left -= (size_t)n;
        }
    }
    double cpu = thread_cpu_s() - c0;
    done = 1;
    pthread_join(th, NULL);
    printf("{\"size\":%ld,\"writes\":%ld,\"conns\":%d,\"cpu_s\":%.3f,\"writes_per_cpu_s\":%.0f,"
           "\"us_per_write\":%.3f}\n",
           size, writes, nconns, cpu, cpu > 0 ? (double)writes / cpu : 0.0, cpu * 1e6 / (double)writes);
    free(msg);
    return 0;
usage:
    fprintf(stderr, "usage: wcost [--size BYTES] [--writes N] [--conns K]\n");
    return 64;
}
