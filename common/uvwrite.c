/* See uvwrite.h. */
#include "uvwrite.h"

#include <errno.h>
#include <stdlib.h>

typedef struct {
    uv_write_t req; /* first: the callback gets it */
    buf_t data;
    uvw_error_cb on_error;
    void *arg;
} uvw_t;

static void on_written(uv_write_t *req, int status)
{
    uvw_t *w = (uvw_t *)req;
    uvw_error_cb cb = w->on_error;
    void *arg = w->arg;
    buf_free(&w->data);
    free(w);
    if (status < 0 && status != UV_ECANCELED && cb != NULL)
        cb(arg, status);
}

int uvw_write_buf(uv_stream_t *s, buf_t *data, uvw_error_cb on_error, void *arg)
{
    if (data->len == 0) {
        buf_free(data);
        return 0;
    }
    uvw_t *w = malloc(sizeof *w);
    if (w == NULL) {
        buf_free(data);
        return -ENOMEM;
    }
    w->data = *data;
    buf_init(data);
    w->on_error = on_error;
    w->arg = arg;
    uv_buf_t b = uv_buf_init(w->data.data, (unsigned)w->data.len);
    int r = uv_write(&w->req, s, &b, 1, on_written);
    if (r < 0) {
        buf_free(&w->data);
        free(w);
    }
    return r;
}
