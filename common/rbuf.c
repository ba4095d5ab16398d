/* Reference-counted immutable buffers shared by client write queues. The data
 * is NUL-terminated (one extra byte) so text payloads can be logged as is. */
#include "rbuf.h"

#include <stdlib.h>
#include <string.h>

rbuf_t *rbuf_alloc(size_t len)
{
    if (len > (size_t)-1 - sizeof(rbuf_t) - 1)
        return NULL;
    rbuf_t *b = malloc(sizeof(rbuf_t) + len + 1);
    if (!b)
        return NULL;
    b->refs = 1;
    b->len = len;
    b->data[len] = '\0';
    return b;
}

rbuf_t *rbuf_new(const void *data, size_t len)
{
    rbuf_t *b = rbuf_alloc(len);
    if (b && len)
        memcpy(b->data, data, len);
    return b;
}

void rbuf_unref(rbuf_t *b)
{
    if (b && --b->refs == 0)
        free(b);
}
