/* One uv_write of a buffer the write owns: the bytes are taken from the
 * caller's buf_t and freed when the write completes. Used where bytes are
 * made once and written as they are (TLS records, a flushed output buffer,
 * an HTTP request), so that no caller keeps its own request type. */
#ifndef UVWRITE_H
#define UVWRITE_H
#include <uv.h>

#include "buf.h"

/* Called when the write failed (status < 0; not for UV_ECANCELED, a closed
 * handle), after the buffer was freed. */
typedef void (*uvw_error_cb)(void *arg, int status);

/* Write data's bytes on s. data is taken in every case (left empty). An
 * empty data writes nothing and returns 0. Returns 0 or a negative errno
 * (-ENOMEM, uv_write's error): then nothing was written and on_error is not
 * called. */
int uvw_write_buf(uv_stream_t *s, buf_t *data, uvw_error_cb on_error, void *arg);

#endif
