/* Reference-counted immutable byte buffer: a message framed once and shared
 * by every client queue that holds it. */
#ifndef RBUF_H
#define RBUF_H
#include <stddef.h>

typedef struct rbuf_s {
    unsigned refs;
    size_t len;
    char data[];
} rbuf_t;

rbuf_t *rbuf_new(const void *data, size_t len); /* refs = 1 */
rbuf_t *rbuf_alloc(size_t len);                 /* uninitialised data */
static inline rbuf_t *rbuf_ref(rbuf_t *b)
{
    b->refs++;
    return b;
}
void rbuf_unref(rbuf_t *b);

#endif
