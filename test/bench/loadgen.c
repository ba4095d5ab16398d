/* loadgen: N WebSocket clients (libuv + wslay) against a fanout server
 * (exchange-service, nchan, the node `ws` peer); measures connection setup,
 * delivered messages, end-to-end latency from the payload's "bench_us",
 * per-channel loss / reordering from "seq", and the server's CPU and RSS.
 *
 * Driven line by line on stdin (run.sh / bench.py), one JSON line out each:
 *   (after start)  {"event":"ready",...}        all clients subscribed or failed
 *   measure SECS   {"event":"result",...}       counters over the next SECS
 *   rss            {"event":"rss",...}          server RSS now (sum of processes)
 *   reset          forget each client's last seq (a new publisher starts over)
 *   storm [K [S]]  reconnect storm: every client but the --observers first
 *                  ones drops its connection at once and reconnects (K at a
 *                  time, default 1024) resuming from the last message it got
 *                  ("since" {"epoch","seq"}; Centrifugo: recover with offset
 *                  and epoch); {"event":"storm",...} when each is served:
 *                  recovered:true and every message published on its channel
 *                  before it re-subscribed received in order (the channel's
 *                  newest seq then, as the observers saw it), or after S s
 *   quit | EOF     close everything, exit 0
 *
 * Client i subscribes to channel i % channels, named as in channels.h. With
 * --url containing "{ch}" the channel goes in the URL (nchan); otherwise the
 * client sends {"op":"subscribe","channels":[...],"id":1} after the upgrade.
 * --proto centrifugo: Centrifugo's JSON client protocol instead: one frame
 * {"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":CH}}; subscribed on
 * the reply with id 2; data arrives as {"push":{"channel":..,"pub":{"data":
 * MESSAGE}}} (several per frame, one per line); server pings {} get {}.
 * --server-pid P (repeatable) names the server; its descendants count too.
 * --deflate offers permessage-deflate (client_no_context_takeover); frames
 * with RSV1 are inflated (raw deflate + 00 00 ff ff, RFC 7692); "wire_bytes"
 * counts the bytes read from the sockets, so compression shows. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include <wslay/wslay.h>
#include <zlib.h>

#include "channels.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { C_IDLE, C_CONNECTING, C_HANDSHAKE, C_OPEN, C_SUBSCRIBED, C_FAILED, C_CLOSED };

typedef struct {
    uv_tcp_t tcp;
    uv_connect_t creq;
    wslay_event_context_ptr ws;
    const uint8_t *in; /* bytes of the current read not yet handed to wslay */
    size_t inlen;
    char *hs; /* upgrade response being read */
    size_t hslen;
    int64_t last_seq, last_epoch;
    int64_t offset;  /* Centrifugo: the stream offset of the last publication */
    int64_t target;  /* storm: the channel's newest seq when it re-subscribed */
    char cepoch[24]; /* Centrifugo: the stream epoch of its subscribe reply */
    uint32_t idx;
    uint16_t ch;
    uint8_t state;
    uint8_t deflate; /* permessage-deflate negotiated */
    uint8_t resume;  /* storm: reconnecting with since */
    uint8_t recovered;
    uint8_t served;
} client_t;

/* Latency histogram: exact below 64 us, then 64 sub-buckets per power of two
 * (about 1.5% resolution). */
#define H_SUB 64
#define H_N (H_SUB + 40 * H_SUB)
typedef struct {
    uint64_t n[H_N];
    uint64_t count, max;
} hist_t;

static struct {
    const char *url, *host, *path_tmpl;
    int port;
    int nclients, nchannels, concurrency, src_ips, src_first;
    int centrifugo; /* --proto centrifugo: its JSON client protocol */
    int kind;       /* channels.h */
    int deflate;    /* --deflate: offer permessage-deflate */
    int observers;  /* --observers K: clients 0..K-1 stay through a storm */
    double connect_timeout_s;
    int npids;
    int pids[16];
} opt = {.nclients = 100,
         .nchannels = 10,
         .concurrency = 256,
         .src_ips = 1,
         .src_first = 1,
         .connect_timeout_s = 60};

static uv_loop_t *loop;
static client_t *clients;
static int inflight, n_subscribed, n_failed, n_closed, n_deflate, ready_sent, quitting;
static int *queue, qhead, qtail; /* clients waiting to connect */
static int conc_now;             /* connections in setup at once */
static uint64_t t_first_connect, t_last_ready;
static uv_timer_t connect_timer, measure_timer;
static uv_pipe_t stdin_pipe;
static char cmdbuf[256];
static size_t cmdlen;
static uint8_t rbuf[256 * 1024];

/* measurement window */
static int measuring;
static uint64_t w_start_us, w_msgs, w_bytes, w_wire, w_lost, w_ooo, w_other;
static uint64_t *w_lost_ch;
static hist_t hist;
static double w_cpu0;

/* the newest seq any client got on each channel (observers keep it live) */
static int64_t *ch_top;

/* reconnect storm */
static uv_timer_t storm_timer, kick_timer;
static int storm_on, storm_n, storm_served, storm_failed, storm_notrec;
static uint64_t storm_t0, storm_last_reply, storm_lost, storm_dup;
static double *storm_times;

/* permessage-deflate: one inflater, reset per message
 * (server_no_context_takeover) */
static z_stream zin;
static uint8_t *zbuf;
static size_t zcap;

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int hist_idx(uint64_t v)
{
    if (v < H_SUB)
        return (int)v;
    int e = 63 - __builtin_clzll(v); /* >= 6 */
    int i = H_SUB + (e - 6) * H_SUB + (int)((v >> (e - 6)) - H_SUB);
    return i < H_N ? i : H_N - 1;
}

static uint64_t hist_val(int i)
{
    if (i < H_SUB)
        return (uint64_t)i;
    int e = (i - H_SUB) / H_SUB + 6;
    uint64_t m = (uint64_t)((i - H_SUB) % H_SUB + H_SUB);
    return (m << (e - 6)) + ((1ull << (e - 6)) >> 1);
}

static uint64_t hist_pct(const hist_t *h, double p)
{
    if (!h->count)
        return 0;
    uint64_t want = (uint64_t)(p * (double)h->count + 0.999999), acc = 0;
    if (want < 1)
        want = 1;
    for (int i = 0; i < H_N; i++) {
        acc += h->n[i];
        if (acc >= want) {
            uint64_t v = hist_val(i);
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}

/* ---- /proc: server CPU and RSS over the named processes and descendants -- */

static int proc_stat(int pid, int *ppid, double *cpu_s, long *rss_pages)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    /* fields after ")": state ppid pgrp session tty tpgid flags minflt cminflt
     * majflt cmajflt utime stime cutime cstime prio nice threads itreal
     * starttime vsize rss */
    char st;
    int pp;
    unsigned long ut, stt, vsize;
    long rss;
    if (sscanf(p + 2, "%c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %*d %*d %*u %lu %ld",
               &st, &pp, &ut, &stt, &vsize, &rss) != 6)
        return -1;
    *ppid = pp;
    *cpu_s = (double)(ut + stt) / (double)sysconf(_SC_CLK_TCK);
    *rss_pages = rss;
    return 0;
}

/* Sum over the server processes: CPU seconds (utime+stime of live
 * processes) and RSS in KiB. */
static void server_usage(double *cpu_s, long *rss_kb, int *nprocs)
{
    int pids[4096], ppids[4096], n = 0;
    double cpus[4096];
    long rsss[4096];
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d)) && n < 4096) {
        int pid = atoi(e->d_name);
        if (pid <= 0)
            continue;
        if (proc_stat(pid, &ppids[n], &cpus[n], &rsss[n]) == 0)
            pids[n++] = pid;
    }
    if (d)
        closedir(d);
    char in[4096] = {0};
    for (int changed = 1; changed;) {
        changed = 0;
        for (int i = 0; i < n; i++) {
            if (in[i])
                continue;
            int yes = 0;
            for (int k = 0; k < opt.npids; k++)
                yes |= pids[i] == opt.pids[k];
            for (int j = 0; j < n && !yes; j++)
                yes = in[j] && pids[j] == ppids[i];
            if (yes)
                in[i] = 1, changed = 1;
        }
    }
    *cpu_s = 0;
    *rss_kb = 0;
    *nprocs = 0;
    long pk = sysconf(_SC_PAGESIZE) / 1024;
    for (int i = 0; i < n; i++)
        if (in[i]) {
            *cpu_s += cpus[i];
            *rss_kb += rsss[i] * pk;
            (*nprocs)++;
        }
}

/* ---- clients --------------------------------------------------------------- */

static void client_start(int i);

static void maybe_ready(void)
{
    if (ready_sent || n_subscribed + n_failed < opt.nclients)
        return;
    ready_sent = 1;
    uv_timer_stop(&connect_timer);
    double setup = (double)(t_last_ready - t_first_connect) / 1e6;
    printf("{\"event\":\"ready\",\"clients\":%d,\"subscribed\":%d,\"failed\":%d,\"setup_s\":%.3f,"
           "\"setup_rate\":%.0f,\"deflate\":%d}\n",
           opt.nclients, n_subscribed, n_failed, setup, setup > 0 ? n_subscribed / setup : 0.0, n_deflate);
    fflush(stdout);
}

static void start_more(void)
{
    while (!quitting && inflight < conc_now && qhead < qtail)
        client_start(queue[qhead++]);
}

static void on_client_closed(uv_handle_t *h)
{
    client_t *c = h->data;
    if (c->ws)
        wslay_event_context_free(c->ws);
    c->ws = NULL;
    free(c->hs);
    c->hs = NULL;
}

/* End of a client: failed during setup, or closed afterwards. */
static void storm_check_done(void);

static void client_end(client_t *c, int failed)
{
    if (c->state == C_FAILED || c->state == C_CLOSED || c->state == C_IDLE)
        return;
    int was_setup = c->state < C_SUBSCRIBED;
    c->state = failed && was_setup ? C_FAILED : C_CLOSED;
    if (c->resume && storm_on && !c->served) {
        c->served = 1; /* settled: as failed */
        storm_failed++;
        storm_check_done();
    }
    if (was_setup) {
        inflight--;
        n_failed++;
        start_more();
        maybe_ready();
    } else {
        n_closed++;
    }
    if (c->tcp.loop && !uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, on_client_closed);
}

static void client_subscribed(client_t *c)
{
    c->state = C_SUBSCRIBED;
    inflight--;
    n_subscribed++;
    t_last_ready = now_us();
    start_more();
    maybe_ready();
}

/* ---- reconnect storm --------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void storm_report(void)
{
    if (!storm_on)
        return;
    storm_on = 0;
    uv_timer_stop(&storm_timer);
    qsort(storm_times, (size_t)storm_served, sizeof(double), cmp_double);
#define STORM_PCT(p) (storm_served ? storm_times[(int)((p) * (storm_served - 1))] : -1.0)
    printf("{\"event\":\"storm\",\"clients\":%d,\"served\":%d,\"not_recovered\":%d,\"failed\":%d,"
           "\"lost\":%" PRIu64 ",\"dup\":%" PRIu64 ",\"all_served_s\":%.3f,\"p50_s\":%.3f,\"p99_s\":%.3f,"
           "\"max_s\":%.3f,\"replies_s\":%.3f}\n",
           storm_n, storm_served, storm_notrec, storm_failed, storm_lost, storm_dup,
           storm_served == storm_n ? STORM_PCT(1.0) : -1.0, STORM_PCT(0.5), STORM_PCT(0.99), STORM_PCT(1.0),
           storm_last_reply ? (double)(storm_last_reply - storm_t0) / 1e6 : -1.0);
#undef STORM_PCT
    fflush(stdout);
    for (int i = 0; i < opt.nclients; i++)
        clients[i].resume = 0;
    conc_now = opt.concurrency;
}

static void storm_check_done(void)
{
    if (storm_on && storm_served + storm_failed + storm_notrec >= storm_n)
        storm_report();
}

static void on_storm_timeout(uv_timer_t *t)
{
    (void)t;
    storm_report();
}

/* Served: recovered, and it has every message its channel had when it
 * re-subscribed (gaps and repeats on the way are counted apart). */
static void storm_maybe_served(client_t *c)
{
    if (!storm_on || !c->resume || c->served || !c->recovered || c->last_seq < c->target)
        return;
    c->served = 1;
    storm_times[storm_served++] = (double)(now_us() - storm_t0) / 1e6;
    storm_check_done();
}

static void on_kick(uv_timer_t *t)
{
    (void)t;
    start_more();
}

static void on_storm_closed(uv_handle_t *h)
{
    client_t *c = h->data;
    on_client_closed(h);
    c->state = C_IDLE;
    queue[qtail++] = (int)c->idx;
    /* reconnect from the next loop iteration, not inside the close */
    if (!uv_is_active((uv_handle_t *)&kick_timer))
        uv_timer_start(&kick_timer, on_kick, 0, 0);
}

static void storm_start(int conc, double secs)
{
    if (storm_on || qhead < qtail || !ready_sent) {
        printf("{\"event\":\"storm\",\"error\":\"busy\"}\n");
        fflush(stdout);
        return;
    }
    storm_on = 1;
    storm_n = storm_served = storm_failed = storm_notrec = 0;
    storm_lost = storm_dup = storm_last_reply = 0;
    storm_t0 = now_us();
    conc_now = conc > 0 ? conc : 1024;
    qhead = qtail = 0;
    for (int i = opt.observers; i < opt.nclients; i++) {
        client_t *c = &clients[i];
        if (c->state != C_SUBSCRIBED)
            continue;
        c->resume = 1;
        c->served = c->recovered = 0;
        storm_n++;
        uv_close((uv_handle_t *)&c->tcp, on_storm_closed);
    }
    uv_update_time(loop);
    uv_timer_start(&storm_timer, on_storm_timeout, (uint64_t)(secs * 1000), 0);
    storm_check_done();
}

/* The subscribe reply of a resuming client. Centrifugo's carries the
 * recovered publications, each {"data":MESSAGE,"offset":N}. */
static void on_server_data(client_t *c, const char *s, size_t len);

static void storm_on_reply(client_t *c, const char *s, size_t len)
{
    storm_last_reply = now_us();
    int ok;
    if (opt.centrifugo) {
        ok = memmem(s, len, "\"recovered\":true", 16) != NULL;
        const char *p = memmem(s, len, "{\"data\":", 8), *end = s + len;
        while (ok && p) {
            const char *q = memmem(p + 8, (size_t)(end - p - 8), "{\"data\":", 8);
            on_server_data(c, p, (size_t)((q ? q : end) - p));
            p = q;
        }
    } else {
        const char *p = memmem(s, len, "\"recovered\":{", 13);
        ok = p && memmem(p, (size_t)(s + len - p), "true", 4) != NULL;
    }
    if (!ok) {
        c->served = 1; /* settled: not recovered */
        storm_notrec++;
        storm_check_done();
        return;
    }
    c->recovered = 1;
    storm_maybe_served(c);
}

static void on_write(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

static int client_write(client_t *c, const void *data, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int r = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (r == (int)len)
        return 0;
    if (r < 0 && r != UV_EAGAIN)
        return r;
    size_t done = r > 0 ? (size_t)r : 0;
    uv_write_t *req = malloc(sizeof(*req) + len - done);
    if (!req)
        return UV_ENOMEM;
    memcpy(req + 1, (const char *)data + done, len - done);
    b = uv_buf_init((char *)(req + 1), (unsigned)(len - done));
    return uv_write(req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *user)
{
    (void)ctx;
    (void)flags;
    return client_write(user, data, len) < 0 ? (wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE), -1)
                                             : (ssize_t)len;
}

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *user)
{
    (void)flags;
    client_t *c = user;
    if (!c->inlen) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < c->inlen ? len : c->inlen;
    memcpy(buf, c->in, n);
    c->in += n;
    c->inlen -= n;
    return (ssize_t)n;
}

static int ws_genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user)
{
    (void)ctx;
    (void)user;
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)rand();
    return 0;
}

static int64_t field_int(const char *s, size_t len, const char *key, size_t klen)
{
    const char *p = memmem(s, len, key, klen);
    if (!p)
        return -1;
    p += klen;
    const char *end = s + len;
    while (p < end && (*p == ' ' || *p == '"'))
        p++;
    int64_t v = 0;
    int any = 0;
    while (p < end && *p >= '0' && *p <= '9')
        v = v * 10 + (*p++ - '0'), any = 1;
    return any ? v : -1;
}

static uint64_t cur_us; /* receive time of the read being processed */

/* One server message (a line of a Centrifugo frame, or a whole frame). */
static void on_server_msg(client_t *c, const char *s, size_t len)
{
    if (opt.centrifugo && c->state == C_OPEN && memmem(s, len, "\"id\":2,", 7)) {
        /* the subscribe reply: its stream epoch, for a later recover */
        const char *e = memmem(s, len, "\"epoch\":\"", 9);
        if (e) {
            size_t k = 0;
            for (e += 9; e < s + len && *e != '"' && k + 1 < sizeof(c->cepoch); e++)
                c->cepoch[k++] = *e;
            c->cepoch[k] = 0;
        }
    }
    if (field_int(s, len, "\"bench_us\":", 11) < 0 || (c->resume && c->state == C_OPEN)) {
        if (opt.centrifugo && len == 2 && s[0] == '{' && s[1] == '}') {
            /* server ping: answer with an empty command (pong) */
            struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)"{}", 2};
            wslay_event_queue_msg(c->ws, &m);
        } else if (c->state == C_OPEN && opt.centrifugo && memmem(s, len, "\"error\"", 7)) {
            fprintf(stderr, "loadgen: centrifugo error: %.*s\n", (int)(len > 200 ? 200 : len), s);
            client_end(c, 1);
        } else if (c->state == C_OPEN && (opt.centrifugo ? memmem(s, len, "\"id\":2,", 7) != NULL
                                                         : memmem(s, len, "\"subscribed\"", 12) != NULL)) {
            client_subscribed(c);
            if (c->resume)
                storm_on_reply(c, s, len);
        } else if (measuring)
            w_other++;
        return;
    }
    on_server_data(c, s, len);
}

/* One data message (a publication for Centrifugo). */
static void on_server_data(client_t *c, const char *s, size_t len)
{
    int64_t bus = field_int(s, len, "\"bench_us\":", 11);
    if (bus < 0)
        return;
    if (c->state == C_OPEN) /* data before the ack still means subscribed */
        client_subscribed(c);
    int64_t seq = field_int(s, len, "\"seq\":", 6);
    if (opt.centrifugo) {
        int64_t off = field_int(s, len, "\"offset\":", 9);
        if (off > c->offset)
            c->offset = off;
    }
    if (c->resume && storm_on && c->last_seq >= 0 && seq >= 0) {
        if (seq <= c->last_seq)
            storm_dup++;
        else if (seq > c->last_seq + 1)
            storm_lost += (uint64_t)(seq - c->last_seq - 1);
    }
    if (measuring) {
        w_msgs++;
        w_bytes += len;
        uint64_t lat = cur_us > (uint64_t)bus ? cur_us - (uint64_t)bus : 0;
        hist.n[hist_idx(lat)]++;
        hist.count++;
        if (lat > hist.max)
            hist.max = lat;
        if (c->last_seq >= 0 && seq >= 0) {
            if (seq <= c->last_seq)
                w_ooo++;
            else if (seq > c->last_seq + 1) {
                w_lost += (uint64_t)(seq - c->last_seq - 1);
                w_lost_ch[c->ch] += (uint64_t)(seq - c->last_seq - 1);
            }
        }
    }
    if (seq > c->last_seq) {
        c->last_seq = seq;
        c->last_epoch = field_int(s, len, "\"epoch\":", 8);
    }
    if (seq > ch_top[c->ch])
        ch_top[c->ch] = seq;
    if (c->resume)
        storm_maybe_served(c);
}

/* A permessage-deflate message into zbuf (RFC 7692 7.2.2: the payload plus
 * 00 00 ff ff, raw deflate; the server keeps no context between messages). */
static int inflate_msg(const uint8_t *in, size_t len, size_t *outlen)
{
    static const uint8_t tail[4] = {0, 0, 0xff, 0xff};
    inflateReset(&zin);
    size_t used = 0;
    for (int part = 0; part < 2; part++) {
        zin.next_in = (Bytef *)(part ? tail : in);
        zin.avail_in = (uInt)(part ? sizeof(tail) : len);
        while (zin.avail_in > 0) {
            if (zcap - used < 4096) {
                size_t cap = zcap ? zcap * 2 : 65536;
                uint8_t *b = cap <= (16u << 20) ? realloc(zbuf, cap) : NULL;
                if (!b)
                    return -1;
                zbuf = b;
                zcap = cap;
            }
            zin.next_out = zbuf + used;
            zin.avail_out = (uInt)(zcap - used);
            int r = inflate(&zin, Z_SYNC_FLUSH);
            used = (size_t)(zin.next_out - zbuf);
            if (r == Z_STREAM_END)
                break;
            if (r != Z_OK && !(r == Z_BUF_ERROR && zin.avail_out > 0))
                return -1;
            if (r == Z_BUF_ERROR)
                break;
        }
    }
    *outlen = used;
    return 0;
}

static void ws_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *a, void *user)
{
    client_t *c = user;
    (void)ctx;
    if (a->opcode == WSLAY_CONNECTION_CLOSE) {
        client_end(c, 0);
        return;
    }
    if (a->opcode != WSLAY_TEXT_FRAME && a->opcode != WSLAY_BINARY_FRAME)
        return;
    const char *s = (const char *)a->msg, *end = s + a->msg_length;
    if (a->rsv & WSLAY_RSV1_BIT) {
        size_t n;
        if (!c->deflate || inflate_msg(a->msg, a->msg_length, &n) < 0) {
            fprintf(stderr, "loadgen: client %u: bad compressed frame\n", c->idx);
            client_end(c, 1);
            return;
        }
        s = (const char *)zbuf;
        end = s + n;
    }
    if (!opt.centrifugo) {
        on_server_msg(c, s, (size_t)(end - s));
        return;
    }
    /* Centrifugo's JSON protocol puts several replies/pushes in one frame,
     * one per line. */
    while (s < end && c->state != C_CLOSED && c->state != C_FAILED) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *e = nl ? nl : end;
        if (e > s)
            on_server_msg(c, s, (size_t)(e - s));
        s = e + 1;
    }
}

static const struct wslay_event_callbacks ws_cbs = {
    .recv_callback = ws_recv_cb,
    .send_callback = ws_send_cb,
    .genmask_callback = ws_genmask_cb,
    .on_msg_recv_callback = ws_msg_cb,
};

static void ws_pump(client_t *c)
{
    if (wslay_event_recv(c->ws) != 0 || wslay_event_send(c->ws) != 0) {
        client_end(c, 1);
        return;
    }
    if (!wslay_event_want_read(c->ws) && !wslay_event_want_write(c->ws))
        client_end(c, 0);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    (void)hint;
    *b = uv_buf_init((char *)rbuf, sizeof(rbuf));
}

static void on_upgraded(client_t *c)
{
    c->state = C_OPEN;
    if (wslay_event_context_client_init(&c->ws, &ws_cbs, c) != 0) {
        client_end(c, 1);
        return;
    }
    if (c->deflate) {
        wslay_event_config_set_allowed_rsv_bits(c->ws, WSLAY_RSV1_BIT);
        n_deflate++;
    }
    if (strstr(opt.path_tmpl, "{ch}")) {
        client_subscribed(c);
        return;
    }
    char ch[128], msg[512];
    channel_name(opt.kind, c->ch, ch, sizeof(ch));
    int n;
    if (c->resume && c->last_seq >= 0) {
        c->target = ch_top[c->ch];
        n = opt.centrifugo
                ? snprintf(msg, sizeof(msg),
                           "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"%s\","
                           "\"recover\":true,\"offset\":%" PRId64 ",\"epoch\":\"%s\"}}",
                           ch, c->offset, c->cepoch)
                : snprintf(msg, sizeof(msg),
                           "{\"op\":\"subscribe\",\"channels\":[\"%s\"],\"since\":{\"%s\":"
                           "{\"epoch\":%" PRId64 ",\"seq\":%" PRId64 "}},\"id\":1}",
                           ch, ch, c->last_epoch, c->last_seq);
    } else {
        c->target = -1;
        n = opt.centrifugo
                ? snprintf(msg, sizeof(msg),
                           "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"%s\"}}", ch)
                : snprintf(msg, sizeof(msg), "{\"op\":\"subscribe\",\"channels\":[\"%s\"],\"id\":1}", ch);
    }
    struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)msg, (size_t)n};
    if (wslay_event_queue_msg(c->ws, &m) != 0 || wslay_event_send(c->ws) != 0)
        client_end(c, 1);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    client_t *c = s->data;
    if (nread < 0) {
        client_end(c, 1);
        return;
    }
    if (nread == 0)
        return;
    cur_us = now_us();
    if (measuring)
        w_wire += (uint64_t)nread;
    const uint8_t *p = (const uint8_t *)b->base;
    size_t n = (size_t)nread;
    if (c->state == C_HANDSHAKE) {
        char *hs = realloc(c->hs, c->hslen + n + 1);
        if (!hs || c->hslen + n > 8192) {
            free(hs);
            c->hs = NULL;
            client_end(c, 1);
            return;
        }
        c->hs = hs;
        memcpy(hs + c->hslen, p, n);
        c->hslen += n;
        hs[c->hslen] = 0;
        char *end = strstr(hs, "\r\n\r\n");
        if (!end)
            return;
        if (strncmp(hs, "HTTP/1.1 101", 12) != 0) {
            client_end(c, 1);
            return;
        }
        const char *ext = strcasestr(hs, "\r\nSec-WebSocket-Extensions:");
        c->deflate = ext && ext < end && strstr(ext, "permessage-deflate") != NULL;
        if (c->deflate && !strstr(ext, "server_no_context_takeover")) {
            fprintf(stderr, "loadgen: permessage-deflate without server_no_context_takeover\n");
            client_end(c, 1);
            return;
        }
        size_t used = (size_t)(end + 4 - hs), rest = c->hslen - used;
        p = p + n - rest;
        n = rest;
        free(c->hs);
        c->hs = NULL;
        on_upgraded(c);
        if (c->state != C_OPEN && c->state != C_SUBSCRIBED)
            return;
    }
    c->in = p;
    c->inlen = n;
    ws_pump(c);
}

static void on_connect(uv_connect_t *req, int status)
{
    client_t *c = req->data;
    if (status < 0 || c->state != C_CONNECTING) {
        client_end(c, 1);
        return;
    }
    c->state = C_HANDSHAKE;
    char path[512], ch[128], req_s[1024];
    const char *t = strstr(opt.path_tmpl, "{ch}");
    if (t) {
        channel_name(opt.kind, c->ch, ch, sizeof(ch));
        snprintf(path, sizeof(path), "%.*s%s%s", (int)(t - opt.path_tmpl), opt.path_tmpl, ch, t + 4);
    } else {
        snprintf(path, sizeof(path), "%s", opt.path_tmpl);
    }
    int n =
        snprintf(req_s, sizeof(req_s),
                 "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                 "Origin: http://%s\r\n%s\r\n",
                 path, opt.host, opt.port, opt.host,
                 opt.deflate ? "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; "
                               "server_no_context_takeover\r\n"
                             : "");
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0 || client_write(c, req_s, (size_t)n) < 0)
        client_end(c, 1);
}

static void client_start(int i)
{
    client_t *c = &clients[i];
    c->idx = (uint32_t)i;
    c->ch = (uint16_t)(i % opt.nchannels);
    if (!c->resume)
        c->last_seq = c->offset = -1;
    c->deflate = 0;
    c->hslen = 0;
    c->state = C_CONNECTING;
    inflight++;
    if (!t_first_connect)
        t_first_connect = now_us();
    int r = uv_tcp_init_ex(loop, &c->tcp, AF_INET);
    if (r < 0) {
        inflight--;
        n_failed++;
        c->state = C_FAILED;
        maybe_ready();
        return;
    }
    c->tcp.data = c;
    c->creq.data = c;
    if (opt.src_ips > 1 || opt.src_first != 1) {
        uv_os_fd_t fd;
        int one = 1;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        char ip[32];
        struct sockaddr_in src;
        snprintf(ip, sizeof(ip), "127.0.%d.%d", (opt.src_first + i % opt.src_ips) / 250,
                 1 + (opt.src_first + i % opt.src_ips) % 250);
        uv_ip4_addr(ip, 0, &src);
        uv_tcp_bind(&c->tcp, (const struct sockaddr *)&src, 0);
    }
    struct sockaddr_in dst;
    uv_ip4_addr(opt.host, opt.port, &dst);
    if ((r = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&dst, on_connect)) < 0)
        client_end(c, 1);
}

static void on_connect_timeout(uv_timer_t *t)
{
    (void)t;
    /* Whatever has not finished setup by now counts as failed. */
    for (int i = 0; i < opt.nclients; i++)
        if (clients[i].state < C_SUBSCRIBED && clients[i].state != C_IDLE)
            client_end(&clients[i], 1);
    while (qhead < qtail) {
        clients[queue[qhead++]].state = C_FAILED;
        n_failed++;
    }
    maybe_ready();
}

/* ---- commands ------------------------------------------------------------ */

static void on_measure_done(uv_timer_t *t)
{
    (void)t;
    double cpu1;
    long rss;
    int np;
    server_usage(&cpu1, &rss, &np);
    uint64_t end = now_us();
    measuring = 0;
    double dur = (double)(end - w_start_us) / 1e6;
    int chloss = 0;
    for (int i = 0; i < opt.nchannels; i++)
        chloss += w_lost_ch[i] > 0;
    int open = 0;
    for (int i = 0; i < opt.nclients; i++)
        open += clients[i].state == C_SUBSCRIBED;
    printf("{\"event\":\"result\",\"duration_s\":%.3f,\"clients\":%d,\"msgs\":%" PRIu64
           ",\"msgs_per_s\":%.0f,\"bytes\":%" PRIu64 ",\"lat_us\":{\"p50\":%" PRIu64 ",\"p99\":%" PRIu64
           ",\"p999\":%" PRIu64 ",\"max\":%" PRIu64 "},\"lost\":%" PRIu64 ",\"ooo\":%" PRIu64
           ",\"channels_with_loss\":%d,\"other\":%" PRIu64 ",\"closed\":%d,\"cpu_s\":%.2f,"
           "\"server_procs\":%d,\"rss_kb\":%ld,\"wire_bytes\":%" PRIu64 "}\n",
           dur, open, w_msgs, (double)w_msgs / dur, w_bytes, hist_pct(&hist, 0.50), hist_pct(&hist, 0.99),
           hist_pct(&hist, 0.999), hist.max, w_lost, w_ooo, chloss, w_other, n_closed, cpu1 - w_cpu0, np, rss,
           w_wire);
    fflush(stdout);
}

static void on_all_closed(uv_handle_t *h)
{
    on_client_closed(h);
}

static void do_quit(void)
{
    if (quitting)
        return;
    quitting = 1;
    for (int i = 0; i < opt.nclients; i++) {
        uv_handle_t *h = (uv_handle_t *)&clients[i].tcp;
        if (clients[i].tcp.loop && !uv_is_closing(h))
            uv_close(h, on_all_closed);
    }
    uv_close((uv_handle_t *)&connect_timer, NULL);
    uv_close((uv_handle_t *)&measure_timer, NULL);
    uv_close((uv_handle_t *)&storm_timer, NULL);
    uv_close((uv_handle_t *)&kick_timer, NULL);
    if (!uv_is_closing((uv_handle_t *)&stdin_pipe))
        uv_close((uv_handle_t *)&stdin_pipe, NULL);
}

static void run_command(char *line)
{
    double secs;
    if (sscanf(line, "measure %lf", &secs) == 1) {
        memset(&hist, 0, sizeof(hist));
        memset(w_lost_ch, 0, sizeof(uint64_t) * (size_t)opt.nchannels);
        w_msgs = w_bytes = w_wire = w_lost = w_ooo = w_other = 0;
        long rss;
        int np;
        server_usage(&w_cpu0, &rss, &np);
        w_start_us = now_us();
        measuring = 1;
        /* the loop's cached time may be a long busy iteration old: a window
         * timed from it would end at once */
        uv_update_time(loop);
        uv_timer_start(&measure_timer, on_measure_done, (uint64_t)(secs * 1000), 0);
    } else if (strncmp(line, "rss", 3) == 0) {
        double cpu;
        long rss;
        int np;
        server_usage(&cpu, &rss, &np);
        int open = 0;
        for (int i = 0; i < opt.nclients; i++)
            open += clients[i].state == C_SUBSCRIBED;
        printf("{\"event\":\"rss\",\"rss_kb\":%ld,\"server_procs\":%d,\"clients\":%d,\"cpu_s\":%.2f}\n", rss,
               np, open, cpu);
        fflush(stdout);
    } else if (strncmp(line, "storm", 5) == 0) {
        int k = 0;
        double limit = 60;
        sscanf(line + 5, "%d %lf", &k, &limit);
        storm_start(k, limit);
    } else if (strncmp(line, "reset", 5) == 0) {
        for (int i = 0; i < opt.nclients; i++)
            clients[i].last_seq = -1;
    } else if (strncmp(line, "quit", 4) == 0) {
        do_quit();
    } else if (line[0]) {
        fprintf(stderr, "loadgen: unknown command: %s\n", line);
    }
}

static void on_stdin_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    (void)hint;
    *b = uv_buf_init(cmdbuf + cmdlen, (unsigned)(sizeof(cmdbuf) - 1 - cmdlen));
}

static void on_stdin(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)s;
    (void)b;
    if (n < 0) {
        do_quit();
        return;
    }
    cmdlen += (size_t)n;
    cmdbuf[cmdlen] = 0;
    char *nl;
    while ((nl = strchr(cmdbuf, '\n'))) {
        *nl = 0;
        run_command(cmdbuf);
        size_t used = (size_t)(nl + 1 - cmdbuf);
        memmove(cmdbuf, nl + 1, cmdlen - used + 1);
        cmdlen -= used;
    }
    if (cmdlen >= sizeof(cmdbuf) - 1)
        cmdlen = 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: loadgen --url ws://127.0.0.1:8080/ws/exchange|ws://H:P/sub/{ch} [--clients N]\n"
                    "  [--channels C] [--kind trade|orderbook|ticker|mixed] [--concurrency K] [--src-ips K]\n"
                    "  [--src-first I] [--connect-timeout S] [--server-pid P]...\n"
                    "  [--proto exchange|centrifugo] [--deflate] [--observers K]\n");
    exit(64);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {{"url", 1, 0, 'u'},
                                       {"clients", 1, 0, 'n'},
                                       {"channels", 1, 0, 'c'},
                                       {"kind", 1, 0, 'K'},
                                       {"concurrency", 1, 0, 'k'},
                                       {"src-ips", 1, 0, 's'},
                                       {"src-first", 1, 0, 'f'},
                                       {"connect-timeout", 1, 0, 't'},
                                       {"server-pid", 1, 0, 'P'},
                                       {"proto", 1, 0, 'r'},
                                       {"deflate", 0, 0, 'D'},
                                       {"observers", 1, 0, 'O'},
                                       {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'u': opt.url = optarg; break;
        case 'n': opt.nclients = atoi(optarg); break;
        case 'c': opt.nchannels = atoi(optarg); break;
        case 'K':
            if ((opt.kind = kind_parse(optarg)) < 0)
                usage();
            break;
        case 'k': opt.concurrency = atoi(optarg); break;
        case 's': opt.src_ips = atoi(optarg); break;
        case 'f': opt.src_first = atoi(optarg); break;
        case 't': opt.connect_timeout_s = atof(optarg); break;
        case 'r':
            if (strcmp(optarg, "centrifugo") == 0)
                opt.centrifugo = 1;
            else if (strcmp(optarg, "exchange") != 0)
                usage();
            break;
        case 'D': opt.deflate = 1; break;
        case 'O': opt.observers = atoi(optarg); break;
        case 'P':
            if (opt.npids < 16)
                opt.pids[opt.npids++] = atoi(optarg);
            break;
        default: usage();
        }
    }
    static char host[256];
    if (!opt.url || sscanf(opt.url, "ws://%255[^:/]:%d", host, &opt.port) != 2 || opt.nclients <= 0 ||
        opt.nchannels <= 0 || opt.nchannels > 65535 || opt.src_ips <= 0)
        usage();
    opt.host = host;
    opt.path_tmpl = strchr(opt.url + 5, '/');
    if (!opt.path_tmpl)
        opt.path_tmpl = "/";

    /* One fd per client plus a few; the hard limit is what we may have. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < (rlim_t)opt.nclients + 32)
            fprintf(stderr, "loadgen: RLIMIT_NOFILE %lu < clients %d; run several loadgens\n",
                    (unsigned long)rl.rlim_cur, opt.nclients);
    }
    srand((unsigned)getpid());
    /* A server closing a client (Centrifugo drops slow ones) must not kill
     * the whole load generator on the next write. */
    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();
    clients = calloc((size_t)opt.nclients, sizeof(*clients));
    w_lost_ch = calloc((size_t)opt.nchannels, sizeof(uint64_t));
    ch_top = malloc((size_t)opt.nchannels * sizeof(int64_t));
    queue = malloc((size_t)opt.nclients * sizeof(int));
    storm_times = malloc((size_t)opt.nclients * sizeof(double));
    if (!clients || !w_lost_ch || !ch_top || !queue || !storm_times || inflateInit2(&zin, -15) != Z_OK)
        return 1;
    for (int i = 0; i < opt.nchannels; i++)
        ch_top[i] = -1;
    for (int i = 0; i < opt.nclients; i++)
        queue[qtail++] = i;
    conc_now = opt.concurrency;
    uv_timer_init(loop, &connect_timer);
    uv_timer_init(loop, &measure_timer);
    uv_timer_init(loop, &storm_timer);
    uv_timer_init(loop, &kick_timer);
    uv_pipe_init(loop, &stdin_pipe, 0);
    if (uv_pipe_open(&stdin_pipe, 0) == 0)
        uv_read_start((uv_stream_t *)&stdin_pipe, on_stdin_alloc, on_stdin);
    uv_timer_start(&connect_timer, on_connect_timeout, (uint64_t)(opt.connect_timeout_s * 1000), 0);
    start_more();
    uv_run(loop, UV_RUN_DEFAULT);
    inflateEnd(&zin);
    free(zbuf);
    free(clients);
    free(w_lost_ch);
    free(ch_top);
    free(queue);
    free(storm_times);
    return 0;
}
