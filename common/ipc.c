/* Supervisor <-> worker IPC: 4-byte big-endian length-prefixed JSON frames
 * over a socketpair end wrapped in a uv_pipe_t. The decoder is pure so the
 * unit tests and the fuzzer can drive it without a loop. */
#include "ipc.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define IPC_READ_CHUNK (64u << 10)
#define IPC_MAX_QUEUED ((size_t)64 << 20)
#define IPC_STOP (-ECANCELED) /* on_frame: the channel was closed by on_msg */

struct ipc_s {
    uv_pipe_t pipe; /* first: the handle's memory is the ipc_t */
    ipc_msg_cb on_msg;
    ipc_close_cb on_close;
    void *arg;
    buf_t in;
    size_t queued; /* bytes handed to uv_write and not yet completed */
    int closing;
    char rbuf[IPC_READ_CHUNK];
};

typedef struct {
    uv_write_t req;
    ipc_t *ipc;
    size_t len;
    char data[];
} ipc_wreq_t;

/* ---- framing ----------------------------------------------------------- */

int ipc_encode(buf_t *out, const char *payload, size_t n)
{
    int r;
    if (n > IPC_MAX_FRAME)
        return -EMSGSIZE;
    unsigned char h[4] = {(unsigned char)(n >> 24), (unsigned char)(n >> 16), (unsigned char)(n >> 8),
                          (unsigned char)n};
    if ((r = buf_reserve(out, 4 + n)) < 0)
        return r;
    buf_append(out, h, 4);
    return buf_append(out, payload, n);
}

static uint32_t rd32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return ((uint32_t)u[0] << 24) | ((uint32_t)u[1] << 16) | ((uint32_t)u[2] << 8) | u[3];
}

/* Calls on_frame for the complete frames in p[0..n); sets *used to the bytes
 * consumed (including a frame whose callback failed). */
static int decode_frames(const char *p, size_t n, size_t *used, ipc_frame_cb on_frame, void *arg)
{
    size_t off = 0;
    int rc = 0;
    while (n - off >= 4) {
        uint32_t len = rd32(p + off);
        if (len > IPC_MAX_FRAME) {
            rc = -EMSGSIZE;
            break;
        }
        if (n - off - 4 < len)
            break;
        const char *payload = p + off + 4;
        off += 4 + (size_t)len;
        if ((rc = on_frame(arg, payload, len)) < 0)
            break;
        rc = 0;
    }
    *used = off;
    return rc;
}

int ipc_decode(buf_t *in, const char *data, size_t n, ipc_frame_cb on_frame, void *arg)
{
    size_t used = 0;
    int rc, r;
    if (in->len == 0) {
        /* Common case: frames straight from the read buffer, copy the tail. */
        rc = decode_frames(data, n, &used, on_frame, arg);
        if (rc == 0 && used < n && (r = buf_append(in, data + used, n - used)) < 0)
            return r;
        return rc;
    }
    if ((r = buf_append(in, data, n)) < 0)
        return r;
    rc = decode_frames(in->data, in->len, &used, on_frame, arg);
    buf_consume(in, used);
    return rc;
}

/* ---- channel ----------------------------------------------------------- */

static void on_closed(uv_handle_t *h)
{
    ipc_t *ipc = (ipc_t *)h;
    buf_free(&ipc->in);
    free(ipc);
}

static void ipc_fail(ipc_t *ipc, int err)
{
    if (ipc->closing)
        return;
    ipc->closing = 1;
    uv_read_stop((uv_stream_t *)&ipc->pipe);
    if (ipc->on_close)
        ipc->on_close(ipc, err, ipc->arg);
    uv_close((uv_handle_t *)&ipc->pipe, on_closed);
}

static int on_frame(void *arg, const char *payload, size_t n)
{
    ipc_t *ipc = arg;
    json_error_t jerr;
    if (ipc->closing)
        return IPC_STOP;
    if (n == 0) /* an empty frame is a no-op (keepalive) */
        return 0;
    json_t *msg = json_loadb(payload, n, 0, &jerr);
    if (!msg)
        return -EINVAL;
    if (!json_is_object(msg)) {
        json_decref(msg);
        return -EINVAL;
    }
    if (ipc->on_msg)
        ipc->on_msg(ipc, msg, ipc->arg);
    json_decref(msg);
    return ipc->closing ? IPC_STOP : 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    ipc_t *ipc = (ipc_t *)h;
    (void)suggested;
    b->base = ipc->rbuf;
    b->len = sizeof ipc->rbuf;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    ipc_t *ipc = (ipc_t *)s;
    if (nread == 0 || ipc->closing)
        return;
    if (nread < 0) {
        ipc_fail(ipc, nread == UV_EOF ? 0 : (int)nread);
        return;
    }
    int rc = ipc_decode(&ipc->in, b->base, (size_t)nread, on_frame, ipc);
    if (rc < 0 && rc != IPC_STOP)
        ipc_fail(ipc, rc);
}

int ipc_open(uv_loop_t *loop, int fd, ipc_msg_cb on_msg, ipc_close_cb on_close, void *arg, ipc_t **out)
{
    int r;
    ipc_t *ipc = calloc(1, sizeof *ipc);
    if (!ipc)
        return -ENOMEM;
    ipc->on_msg = on_msg;
    ipc->on_close = on_close;
    ipc->arg = arg;
    buf_init(&ipc->in);
    if ((r = uv_pipe_init(loop, &ipc->pipe, 0)) < 0) {
        free(ipc);
        return r;
    }
    if ((r = uv_pipe_open(&ipc->pipe, fd)) < 0)
        goto fail;
    if ((r = uv_read_start((uv_stream_t *)&ipc->pipe, on_alloc, on_read)) < 0)
        goto fail;
    *out = ipc;
    return 0;
fail:
    /* uv_pipe_open took the fd (it is closed with the handle) only if it
     * succeeded; the memory is freed in the close callback either way. */
    ipc->closing = 1;
    uv_close((uv_handle_t *)&ipc->pipe, on_closed);
    return r;
}

static void on_write(uv_write_t *req, int status)
{
    ipc_wreq_t *w = (ipc_wreq_t *)req;
    ipc_t *ipc = w->ipc;
    ipc->queued -= w->len;
    free(w);
    if (status < 0 && status != UV_ECANCELED)
        ipc_fail(ipc, status);
}

int ipc_send(ipc_t *ipc, json_t *msg)
{
    if (!ipc || ipc->closing)
        return -EPIPE;
    char *s = json_dumps(msg, JSON_COMPACT);
    if (!s)
        return -EINVAL;
    size_t n = strlen(s);
    int r;
    if (n > IPC_MAX_FRAME) {
        r = -EMSGSIZE;
        goto out;
    }
    if (ipc->queued + n + 4 > IPC_MAX_QUEUED) {
        r = -ENOBUFS;
        goto out;
    }
    ipc_wreq_t *w = malloc(sizeof *w + 4 + n);
    if (!w) {
        r = -ENOMEM;
        goto out;
    }
    w->ipc = ipc;
    w->len = 4 + n;
    w->data[0] = (char)(n >> 24);
    w->data[1] = (char)(n >> 16);
    w->data[2] = (char)(n >> 8);
    w->data[3] = (char)n;
    memcpy(w->data + 4, s, n);
    uv_buf_t ub = uv_buf_init(w->data, (unsigned)w->len);
    if ((r = uv_write(&w->req, (uv_stream_t *)&ipc->pipe, &ub, 1, on_write)) < 0) {
        free(w);
        goto out;
    }
    ipc->queued += w->len;
    r = 0;
out:
    free(s);
    return r;
}

void ipc_close(ipc_t *ipc)
{
    if (!ipc || ipc->closing)
        return;
    ipc->closing = 1;
    uv_read_stop((uv_stream_t *)&ipc->pipe);
    uv_close((uv_handle_t *)&ipc->pipe, on_closed);
}

size_t ipc_queued(const ipc_t *ipc)
{
    return ipc ? ipc->queued : 0;
}
