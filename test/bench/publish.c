/* publish: feeds benchmark messages at a controlled rate into one of the
 * systems under test; the same normalized JSON for each (DESIGN.md, plus
 * "bench_us", the publish time in CLOCK_REALTIME microseconds, and "pad" up
 * to --size bytes):
 *   --kafka BOOTSTRAP [--topic exchange]  exchange-service and Centrifugo
 *                                         (key = channel, header epoch, header
 *                                         centrifugo-channels = channel)
 *   --http http://H:P/pub/{ch}            nginx + nchan (one POST per message,
 *                                         keep-alive, pipelined)
 *   --tcp H:P                             the node ws peer (one line per message)
 * Channels: channels.h (trade.sim.S0-KRW ...), round robin; --kind trade
 * (default), orderbook (15 levels a side), ticker or mixed; seq per channel,
 * from --seq-base + 1 (a later publisher in the same epoch starts above the
 * last one: fanout workers drop seqs they have already passed).
 * stdin commands: "rate R" (messages/s in total, 0 = pause), "stats" (one
 * JSON line), "quit" / EOF. */
#include <errno.h>
#include <getopt.h>
#include <http_parser.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "channels.h"

#define MAX_CONNS 16
#define PIPELINE 256
#define BOOK_SIZE 1600

typedef struct {
    uv_tcp_t tcp;
    uv_connect_t creq;
    http_parser hp;
    int up, inflight;
} conn_t;

static struct {
    const char *kafka, *topic, *http, *tcp;
    int channels, size, conns, epoch, kind, no_pad;
} opt = {.topic = "exchange", .channels = 10, .size = 128, .conns = 4, .epoch = 1};

static uv_loop_t *loop;
static uv_timer_t tick;
static uv_pipe_t in_pipe;
static char cmd[256];
static size_t cmdlen;
static rd_kafka_t *rk;
static conn_t conns[MAX_CONNS];
static char host[256], path_tmpl[512];
static int port;
static int64_t *seqs, seq_base;
static double rate;
static uint64_t rate_t0, rate_sent;
static uint64_t sent, skipped, errors, acked, next_ch;
static int quitting;
static http_parser_settings hps;

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t mono_us(void)
{
    return uv_hrtime() / 1000;
}

/* 15 levels a side, prices and sizes as 8-decimal strings (Binance style). */
static int book_fields(char *out, size_t cap, int64_t seq)
{
    int n = 0;
    for (int side = 0; side < 2; side++) {
        n += snprintf(out + n, cap - (size_t)n, ",\"%s\":[", side ? "asks" : "bids");
        for (int l = 0; l < 15 && (size_t)n < cap; l++) {
            int64_t px = 5012345 + (side ? l + 1 : -l) * 7 + seq % 13;
            n += snprintf(out + n, cap - (size_t)n, "%s[\"%" PRId64 ".%02d000000\",\"%d.%08d\"]",
                          l ? "," : "", px / 100, (int)(px % 100), (int)(seq % 3),
                          (int)((seq * 7919 + l * 104729) % 100000000));
        }
        n += snprintf(out + n, cap - (size_t)n, "]");
    }
    return n;
}

static int ticker_fields(char *out, size_t cap, int64_t seq)
{
    int64_t px = 50000000 + seq % 1000;
    return snprintf(
        out, cap,
        ",\"last\":\"%" PRId64 ".5\",\"open\":\"49800000\",\"high\":\"50210000\",\"low\":\"49650000\","
        "\"volume\":\"1234.56789012\",\"quote_volume\":\"61728394506.25\",\"change_rate\":\"0.0041\","
        "\"bid\":\"%" PRId64 "\",\"bid_qty\":\"0.5231\",\"ask\":\"%" PRId64 "\",\"ask_qty\":\"0.0871\"",
        px, px - 1, px + 1);
}

/* The message for channel ch with its next seq (the prefix in msg_begin's
 * order, then the kind's fields, "bench_us" and "pad"); returns its length. */
static int build(char *out, size_t cap, int ch, char *chname, size_t chcap)
{
    channel_name(opt.kind, ch, chname, chcap);
    int64_t seq = ++seqs[ch];
    uint64_t us = now_us();
    int kind = channel_kind(opt.kind, ch);
    const char *sym = strrchr(chname, '.') + 1;
    int n = snprintf(out, cap,
                     "{\"channel\":\"%s\",\"type\":\"%s\",\"exchange\":\"sim\",\"symbol\":\"%s\","
                     "\"seq\":%" PRId64 ",\"epoch\":%d,\"ts\":%" PRIu64 ",\"recv_ts\":%" PRIu64,
                     chname, kind_names[kind], sym, seq, opt.epoch, us / 1000, us / 1000);
    if (kind == K_TRADE)
        n += snprintf(out + n, cap - (size_t)n,
                      ",\"price\":\"%" PRId64
                      ".5\",\"qty\":\"0.0123\",\"side\":\"%s\",\"trade_id\":\"%" PRId64 "\"",
                      50000000 + seq % 1000, seq & 1 ? "buy" : "sell", seq);
    else if (kind == K_BOOK)
        n += book_fields(out + n, cap - (size_t)n, seq);
    else
        n += ticker_fields(out + n, cap - (size_t)n, seq);
    n += snprintf(out + n, cap - (size_t)n, ",\"bench_us\":%" PRIu64 ",\"pad\":\"", us);
    /* --no-pad: every kind at its natural size (the compression rows: an
     * 'x' run would compress to nothing). Books: at least BOOK_SIZE (15 levels a side in our format are ~1.2
     * KB; the scenario asks for 1.5-2 KB books). Mixed: natural sizes. */
    int size = opt.no_pad            ? 64
               : kind == K_BOOK      ? (opt.size > BOOK_SIZE ? opt.size : BOOK_SIZE)
               : opt.kind == K_MIXED ? 64
                                     : opt.size;
    int want = size - 2 > n ? size - 2 : n;
    if ((size_t)want + 3 > cap)
        want = (int)cap - 3;
    memset(out + n, 'x', (size_t)(want - n));
    n = want;
    out[n++] = '"';
    out[n++] = '}';
    out[n] = 0;
    return n;
}

/* ---- Kafka ----------------------------------------------------------------- */

static void dr_cb(rd_kafka_t *k, const rd_kafka_message_t *m, void *o)
{
    (void)k;
    (void)o;
    if (m->err)
        errors++;
    else
        acked++;
}

static int kafka_init(void)
{
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    const char *kv[][2] = {{"bootstrap.servers", opt.kafka},
                           {"linger.ms", "1"},
                           {"acks", "1"},
                           {"queue.buffering.max.messages", "1000000"},
                           {"message.timeout.ms", "30000"}};
    for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++)
        if (rd_kafka_conf_set(c, kv[i][0], kv[i][1], err, sizeof(err)) != RD_KAFKA_CONF_OK) {
            fprintf(stderr, "publish: kafka %s: %s\n", kv[i][0], err);
            return -1;
        }
    rd_kafka_conf_set_dr_msg_cb(c, dr_cb);
    if (!(rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof(err)))) {
        fprintf(stderr, "publish: rd_kafka_new: %s\n", err);
        return -1;
    }
    return 0;
}

static void kafka_send(int ch)
{
    char msg[8192], chname[128], ep[16];
    int n = build(msg, sizeof(msg), ch, chname, sizeof(chname));
    int eplen = snprintf(ep, sizeof(ep), "%d", opt.epoch);
    rd_kafka_resp_err_t e = rd_kafka_producev(
        rk, RD_KAFKA_V_TOPIC(opt.topic), RD_KAFKA_V_KEY(chname, strlen(chname)),
        RD_KAFKA_V_VALUE(msg, (size_t)n), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADER("epoch", ep, eplen),
        /* Centrifugo's publication data mode: the channel to publish the value to */
        RD_KAFKA_V_HEADER("centrifugo-channels", chname, (ssize_t)strlen(chname)), RD_KAFKA_V_END);
    if (e) {
        errors++;
        seqs[ch]--; /* not sent: no gap for the clients */
        skipped++;
    } else {
        sent++;
    }
}

/* ---- HTTP (nchan) and TCP lines (node) ----------------------------------- */

static void on_write(uv_write_t *w, int status)
{
    if (status < 0)
        errors++;
    free(w);
}

static int conn_write(conn_t *c, const char *a, size_t alen, const char *b, size_t blen)
{
    uv_write_t *w = malloc(sizeof(*w) + alen + blen);
    if (!w)
        return -1;
    char *p = (char *)(w + 1);
    memcpy(p, a, alen);
    memcpy(p + alen, b, blen);
    uv_buf_t buf = uv_buf_init(p, (unsigned)(alen + blen));
    return uv_write(w, (uv_stream_t *)&c->tcp, &buf, 1, on_write);
}

static int on_msg_complete(http_parser *p)
{
    conn_t *c = p->data;
    c->inflight--;
    if (p->status_code >= 200 && p->status_code < 300)
        acked++;
    else
        errors++;
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    (void)hint;
    static char buf[65536];
    *b = uv_buf_init(buf, sizeof(buf));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    conn_t *c = s->data;
    if (n < 0) {
        fprintf(stderr, "publish: connection lost: %s\n", uv_strerror((int)n));
        c->up = 0;
        uv_close((uv_handle_t *)s, NULL);
        return;
    }
    if (opt.http && n > 0 && http_parser_execute(&c->hp, &hps, b->base, (size_t)n) != (size_t)n) {
        fprintf(stderr, "publish: bad HTTP response\n");
        c->up = 0;
        uv_close((uv_handle_t *)s, NULL);
    }
}

static void on_connect(uv_connect_t *r, int status)
{
    conn_t *c = r->data;
    if (status < 0) {
        fprintf(stderr, "publish: connect %s:%d: %s\n", host, port, uv_strerror(status));
        uv_close((uv_handle_t *)&c->tcp, NULL);
        return;
    }
    c->up = 1;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static int conns_init(void)
{
    int n = opt.tcp ? 1 : opt.conns;
    struct sockaddr_in a;
    if (uv_ip4_addr(host, port, &a) < 0)
        return -1;
    hps.on_message_complete = on_msg_complete;
    for (int i = 0; i < n; i++) {
        conn_t *c = &conns[i];
        uv_tcp_init(loop, &c->tcp);
        uv_tcp_nodelay(&c->tcp, 1);
        c->tcp.data = c->creq.data = c;
        http_parser_init(&c->hp, HTTP_RESPONSE);
        c->hp.data = c;
        if (uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&a, on_connect) < 0)
            return -1;
    }
    return 0;
}

static void http_send(int ch)
{
    /* A channel always uses the same connection: nginx answers one
     * connection's pipelined requests in order, so per-channel order holds. */
    conn_t *c = &conns[ch % opt.conns];
    if (!c->up || c->inflight >= PIPELINE) {
        skipped++;
        return;
    }
    char msg[8192], chname[128], hdr[1024], path[640];
    int len = build(msg, sizeof(msg), ch, chname, sizeof(chname));
    char *t = strstr(path_tmpl, "{ch}");
    snprintf(path, sizeof(path), "%.*s%s%s", (int)(t - path_tmpl), path_tmpl, chname, t + 4);
    int hl = snprintf(hdr, sizeof(hdr),
                      "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %d\r\n\r\n",
                      path, host, len);
    if (conn_write(c, hdr, (size_t)hl, msg, (size_t)len) < 0) {
        errors++;
        return;
    }
    c->inflight++;
    sent++;
}

/* ---- rate control ------------------------------------------------------------ */

static void on_tick(uv_timer_t *t)
{
    (void)t;
    if (rk)
        rd_kafka_poll(rk, 0);
    if (rate <= 0 || quitting)
        return;
    uint64_t due = (uint64_t)(rate * (double)(mono_us() - rate_t0) / 1e6);
    if (due <= rate_sent)
        return;
    uint64_t n = due - rate_sent;
    if (n > 100000) /* far behind (stall): do not burst, skip */
        skipped += n - 100000, n = 100000;
    if (opt.tcp) {
        if (!conns[0].up) {
            skipped += n;
            rate_sent += n;
            return;
        }
        /* one write per tick with every line */
        size_t cap = n * ((size_t)(opt.size > 2048 ? opt.size : 2048) + 512), off = 0; /* books ~1.4 KB */
        char *buf = malloc(cap), chname[128];
        for (uint64_t i = 0; i < n && buf; i++) {
            int ch = (int)(next_ch++ % (uint64_t)opt.channels);
            off += (size_t)build(buf + off, cap - off - 1, ch, chname, sizeof(chname));
            buf[off++] = '\n';
        }
        if (buf && conn_write(&conns[0], buf, off, "", 0) == 0)
            sent += n;
        else
            errors++;
        free(buf);
    } else {
        for (uint64_t i = 0; i < n; i++) {
            int ch = (int)(next_ch++ % (uint64_t)opt.channels);
            if (rk)
                kafka_send(ch);
            else
                http_send(ch);
        }
    }
    rate_sent += n;
}

static void print_stats(void)
{
    uint64_t outq = rk ? (uint64_t)rd_kafka_outq_len(rk) : 0;
    printf("{\"event\":\"stats\",\"sent\":%" PRIu64 ",\"acked\":%" PRIu64 ",\"skipped\":%" PRIu64
           ",\"errors\":%" PRIu64 ",\"outq\":%" PRIu64 ",\"rate\":%.0f}\n",
           sent, acked, skipped, errors, outq, rate);
    fflush(stdout);
}

static void quit(void)
{
    if (quitting)
        return;
    quitting = 1;
    if (rk)
        rd_kafka_flush(rk, 2000);
    print_stats();
    uv_stop(loop);
}

static void on_cmd_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    (void)hint;
    *b = uv_buf_init(cmd + cmdlen, (unsigned)(sizeof(cmd) - 1 - cmdlen));
}

static void on_cmd(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)s;
    (void)b;
    if (n < 0) {
        quit();
        return;
    }
    cmdlen += (size_t)n;
    cmd[cmdlen] = 0;
    char *nl;
    while ((nl = strchr(cmd, '\n'))) {
        *nl = 0;
        double r;
        if (sscanf(cmd, "rate %lf", &r) == 1) {
            rate = r;
            rate_t0 = mono_us();
            rate_sent = 0;
        } else if (!strcmp(cmd, "stats")) {
            print_stats();
        } else if (!strcmp(cmd, "quit")) {
            quit();
        }
        size_t used = (size_t)(nl + 1 - cmd);
        memmove(cmd, nl + 1, cmdlen - used + 1);
        cmdlen -= used;
    }
    if (cmdlen >= sizeof(cmd) - 1)
        cmdlen = 0;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {{"kafka", 1, 0, 'k'},
                                       {"topic", 1, 0, 'T'},
                                       {"http", 1, 0, 'h'},
                                       {"tcp", 1, 0, 't'},
                                       {"channels", 1, 0, 'c'},
                                       {"size", 1, 0, 's'},
                                       {"conns", 1, 0, 'C'},
                                       {"rate", 1, 0, 'r'},
                                       {"epoch", 1, 0, 'e'},
                                       {"seq-base", 1, 0, 'b'},
                                       {"kind", 1, 0, 'K'},
                                       {"no-pad", 0, 0, 'N'},
                                       {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'k': opt.kafka = optarg; break;
        case 'T': opt.topic = optarg; break;
        case 'h': opt.http = optarg; break;
        case 't': opt.tcp = optarg; break;
        case 'c': opt.channels = atoi(optarg); break;
        case 's': opt.size = atoi(optarg); break;
        case 'C': opt.conns = atoi(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'e': opt.epoch = atoi(optarg); break;
        case 'b': seq_base = strtoll(optarg, NULL, 10); break;
        case 'N': opt.no_pad = 1; break;
        case 'K':
            if ((opt.kind = kind_parse(optarg)) < 0)
                goto usage;
            break;
        default: goto usage;
        }
    }
    if (!!opt.kafka + !!opt.http + !!opt.tcp != 1 || opt.channels <= 0 || opt.size < 64 || opt.size > 8000 ||
        opt.conns < 1 || opt.conns > MAX_CONNS)
        goto usage;
    if (opt.http && (sscanf(opt.http, "http://%255[^:/]:%d%511s", host, &port, path_tmpl) != 3 ||
                     !strstr(path_tmpl, "{ch}")))
        goto usage;
    if (opt.tcp && sscanf(opt.tcp, "%255[^:]:%d", host, &port) != 2)
        goto usage;
    seqs = calloc((size_t)opt.channels, sizeof(*seqs));
    for (int i = 0; seqs && i < opt.channels; i++)
        seqs[i] = seq_base;
    signal(SIGPIPE, SIG_IGN); /* a server closing a feed connection: an error, not death */
    loop = uv_default_loop();
    if (opt.kafka ? kafka_init() : conns_init())
        return 1;
    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, on_tick, 1, 1);
    uv_pipe_init(loop, &in_pipe, 0);
    if (uv_pipe_open(&in_pipe, 0) == 0)
        uv_read_start((uv_stream_t *)&in_pipe, on_cmd_alloc, on_cmd);
    rate_t0 = mono_us();
    uv_run(loop, UV_RUN_DEFAULT);
    if (rk)
        rd_kafka_destroy(rk);
    return 0;
usage:
    fprintf(stderr,
            "usage: publish (--kafka BOOTSTRAP [--topic T] | --http http://H:P/pub/{ch} | --tcp H:P)\n"
            "  [--channels C] [--size BYTES] [--no-pad] [--conns N] [--rate R]"
            " [--epoch E] [--seq-base S]\n"
            "  [--kind trade|orderbook|ticker|mixed]\n");
    return 64;
}
