/* libFuzzer target: server-side WebSocket connections (common/wsserver.c)
 * driven end to end through a real libuv loop. Each input is one connection
 * over a Unix stream socket accepted by wss_accept: a valid upgrade request
 * (or, in raw mode, whatever the input says), then the input's bytes in
 * chunks, then EOF. The application callbacks echo, close, abort and queue
 * conflatable frames so the write queue and closing paths run too.
 * Invariants: on_close exactly once per accepted connection, on_message only
 * between on_open and on_close with the announced length NUL-terminated and
 * within the message bound, nothing left queued once every connection is gone.
 * Input: byte 0 = flags (bit 0 raw mode, bit 1 upgrade in the same write as
 * the first chunk, bit 2 small limits), bytes 1-2 = chunking seed, rest = the
 * client's bytes (frames must be masked; a zero mask key leaves the payload
 * readable). */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <uv.h>

#include "log.h"
#include "wsserver.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static const char UPGRADE[] = "GET /ws/exchange?channels=ticker.upbit.BTC-KRW HTTP/1.1\r\n"
                              "Host: localhost:8080\r\n"
                              "Upgrade: websocket\r\n"
                              "Connection: Upgrade\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              "Sec-WebSocket-Version: 13\r\n"
                              "Origin: http://localhost\r\n"
                              "\r\n";

enum { LIM_BIG, LIM_SMALL, NCTX };

static uv_loop_t loop;
static uv_pipe_t listener;
static wss_ctx_t *ctxs[NCTX];
static wss_ctx_t *cur_ctx;
static char sock_path[108];
static rbuf_t *tagged; /* one conflatable frame shared like a broadcast */
static const char TAG_A[] = "a", TAG_B[] = "b";
static size_t max_msg[NCTX] = {1 << 20, 1024};

static struct {
    wss_conn_t *conn;
    int accepted, opened, closed, messages;
    int client_eof;
} st;

static int on_request(wss_conn_t *c, const http_req_t *req, buf_t *extra, buf_t *body)
{
    (void)c;
    (void)body;
    FUZZ_CHECK(req->complete);
    char path[256];
    if (http_req_path(req, path, sizeof path) == 0 && strcmp(path, "/refuse") == 0) {
        buf_puts(body, "refused by the fuzzer");
        return 403;
    }
    buf_puts(extra, "X-Fuzz: 1\r\n");
    return 0;
}

static void on_open(wss_conn_t *c)
{
    FUZZ_CHECK(c == st.conn && !st.opened && !st.closed);
    FUZZ_CHECK(wss_conn_is_open(c));
    st.opened = 1;
    (void)wss_send(c, tagged, TAG_A);
    (void)wss_send_text(c, "{\"type\":\"hello\"}", 16);
}

static void on_message(wss_conn_t *c, int opcode, const char *msg, size_t len)
{
    FUZZ_CHECK(c == st.conn && st.opened && !st.closed);
    FUZZ_CHECK(opcode == WSS_OP_TEXT || opcode == WSS_OP_BINARY);
    FUZZ_CHECK(msg[len] == '\0');
    FUZZ_CHECK(len <= max_msg[cur_ctx == ctxs[LIM_SMALL]]);
    st.messages++;
    char cmd = len > 0 ? msg[0] : 0;
    switch (cmd) {
    case 'c': /* close, optionally dropping what is queued */
        wss_close(c, 1000 + (len > 1 ? (unsigned char)msg[1] % 16 : 0), msg + (len > 1),
                  len > 2 && msg[2] == 'd');
        break;
    case 'a': wss_abort(c); break;
    case 'f': /* flood: fill the queue until it refuses */
        for (int i = 0; i < 64; i++) {
            int r = wss_send(c, tagged, (i & 1) ? TAG_A : TAG_B);
            if (r < 0) {
                FUZZ_CHECK(r == -ENOBUFS || r == -EPIPE);
                break;
            }
            r = wss_send(c, tagged, NULL);
            if (r < 0)
                break;
        }
        break;
    default: /* echo, plus one conflatable frame */
        (void)wss_send_text(c, msg, len);
        (void)wss_send(c, tagged, TAG_B);
        break;
    }
    (void)wss_queued_bytes(c);
}

static void on_close(wss_conn_t *c, wss_end_t why, int code)
{
    FUZZ_CHECK(c == st.conn && !st.closed);
    FUZZ_CHECK(why >= WSS_END_PEER && why <= WSS_END_REJECTED);
    (void)code;
    st.closed = 1;
}

static void on_connection(uv_stream_t *server, int status)
{
    FUZZ_CHECK(status == 0);
    wss_conn_t *c = NULL;
    int r = wss_accept(cur_ctx, server, NULL, &c);
    FUZZ_CHECK(r == 0 && c != NULL);
    FUZZ_CHECK(st.conn == NULL);
    st.conn = c;
    st.accepted = 1;
}

static void cleanup(void)
{
    unlink(sock_path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    log_set_level("error");
    FUZZ_CHECK(uv_loop_init(&loop) == 0);
    snprintf(sock_path, sizeof sock_path, "/tmp/fuzz_ws_frames.%d.sock", (int)getpid());
    unlink(sock_path);
    atexit(cleanup);
    FUZZ_CHECK(uv_pipe_init(&loop, &listener, 0) == 0);
    FUZZ_CHECK(uv_pipe_bind(&listener, sock_path) == 0);
    FUZZ_CHECK(uv_listen((uv_stream_t *)&listener, 128, on_connection) == 0);
    wss_limits_t big = {.max_header_bytes = 8192,
                        .max_message_bytes = max_msg[LIM_BIG],
                        .queue_bytes = 0,
                        .close_timeout_ms = 20,
                        .handshake_timeout_ms = 50};
    wss_limits_t small = {.max_header_bytes = 512,
                          .max_message_bytes = max_msg[LIM_SMALL],
                          .queue_bytes = 4096,
                          .close_timeout_ms = 20,
                          .handshake_timeout_ms = 50};
    wss_callbacks_t cbs = {
        .on_request = on_request, .on_open = on_open, .on_message = on_message, .on_close = on_close};
    FUZZ_CHECK(wss_ctx_new(&loop, &big, &cbs, &ctxs[LIM_BIG]) == 0);
    FUZZ_CHECK(wss_ctx_new(&loop, &small, &cbs, &ctxs[LIM_SMALL]) == 0);
    static const char payload[] = "{\"channel\":\"ticker.upbit.BTC-KRW\",\"seq\":1}";
    tagged = wss_frame(WSS_OP_TEXT, payload, sizeof payload - 1);
    FUZZ_CHECK(tagged != NULL);
    return 0;
}

/* The client end: read and discard what the server writes, note its EOF. */
static void on_client_readable(uv_poll_t *p, int status, int events)
{
    char tmp[65536];
    (void)events;
    int fd = *(int *)p->data;
    if (status < 0) {
        st.client_eof = 1;
        uv_poll_stop(p);
        return;
    }
    for (;;) {
        ssize_t n = read(fd, tmp, sizeof tmp);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        st.client_eof = 1;
        uv_poll_stop(p);
        return;
    }
}

static void send_all(int fd, const char *p, size_t n)
{
    int spins = 0;
    while (n > 0 && !st.closed) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EAGAIN && spins++ < 1000) {
            uv_run(&loop, UV_RUN_ONCE);
            continue;
        }
        return; /* the server closed, or will not read more */
    }
}

static void on_poll_closed(uv_handle_t *h)
{
    (void)h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    int raw = data[0] & 1, together = (data[0] >> 1) & 1;
    cur_ctx = ctxs[(data[0] >> 2) & 1];
    fuzz_rng_t rng = {((uint32_t)data[1] << 8 | data[2]) + 1};
    const char *p = (const char *)data + 3;
    size_t left = size - 3;
    memset(&st, 0, sizeof st);

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, sock_path, strlen(sock_path) + 1);
    FUZZ_CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    uv_poll_t poll;
    FUZZ_CHECK(uv_poll_init(&loop, &poll, fd) == 0);
    poll.data = &fd;
    FUZZ_CHECK(uv_poll_start(&poll, UV_READABLE, on_client_readable) == 0);
    for (int i = 0; !st.accepted; i++) {
        FUZZ_CHECK(i < 1000);
        uv_run(&loop, UV_RUN_ONCE);
    }

    if (!raw) {
        if (together && left > 0) {
            size_t n = fuzz_chunk(&rng, left);
            char *both = malloc(sizeof UPGRADE - 1 + n);
            FUZZ_CHECK(both != NULL);
            memcpy(both, UPGRADE, sizeof UPGRADE - 1);
            memcpy(both + sizeof UPGRADE - 1, p, n);
            send_all(fd, both, sizeof UPGRADE - 1 + n);
            free(both);
            p += n;
            left -= n;
        } else {
            send_all(fd, UPGRADE, sizeof UPGRADE - 1);
        }
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    while (left > 0 && !st.closed) {
        size_t n = fuzz_chunk(&rng, left);
        send_all(fd, p, n);
        p += n;
        left -= n;
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    shutdown(fd, SHUT_WR);
    for (int i = 0; !st.closed; i++) {
        FUZZ_CHECK(i < 100000);
        uv_run(&loop, UV_RUN_ONCE);
    }
    FUZZ_CHECK(st.closed == 1);
    if (!st.opened)
        FUZZ_CHECK(st.messages == 0);
    uv_poll_stop(&poll);
    uv_close((uv_handle_t *)&poll, on_poll_closed);
    uv_run(&loop, UV_RUN_NOWAIT);
    close(fd);
    /* Every connection is gone: nothing may stay accounted as queued. */
    FUZZ_CHECK(wss_ctx_stats(cur_ctx)->queued_bytes == 0);
    return 0;
}
