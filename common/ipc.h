/* Supervisor <-> worker channel: a socketpair carrying length-prefixed
 * frames (4-byte big-endian length, then a JSON object with a "t" type
 * field). EOF or a framing error closes the channel; workers exit on it. */
#ifndef IPC_H
#define IPC_H
#include <jansson.h>
#include <stddef.h>
#include <uv.h>
#include "buf.h"

#define IPC_MAX_FRAME (16u << 20)

typedef struct ipc_s ipc_t;
/* msg is borrowed: valid only during the callback. */
typedef void (*ipc_msg_cb)(ipc_t *ipc, json_t *msg, void *arg);
/* Called once when the peer goes away (EOF), on an error, or a bad frame;
 * err is 0 for EOF. The ipc_t is freed after this returns. */
typedef void (*ipc_close_cb)(ipc_t *ipc, int err, void *arg);

int ipc_open(uv_loop_t *loop, int fd, ipc_msg_cb on_msg, ipc_close_cb on_close, void *arg, ipc_t **out);
int ipc_send(ipc_t *ipc, json_t *msg); /* does not steal the reference */
void ipc_close(ipc_t *ipc);            /* on_close is not called */
/* Bytes queued for writing and not yet written (ipc_send fails with
 * -ENOBUFS past 64 MiB). The peer closing makes writes raise SIGPIPE:
 * processes using ipc must ignore SIGPIPE. */
size_t ipc_queued(const ipc_t *ipc);

/* Pure framing, exposed for unit tests and the fuzzer. */
int ipc_encode(buf_t *out, const char *payload, size_t n);
typedef int (*ipc_frame_cb)(void *arg, const char *payload, size_t n);
/* Appends data to the decoder buffer `in` and calls on_frame for each
 * complete frame. Returns 0, -EMSGSIZE for a frame over IPC_MAX_FRAME, or the
 * first negative value returned by on_frame. */
int ipc_decode(buf_t *in, const char *data, size_t n, ipc_frame_cb on_frame, void *arg);

#endif
