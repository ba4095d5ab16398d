/* Growable byte buffer. data is never NULL after buf_init (an empty buffer
 * points at a shared static "" until the first append), and data[len] is
 * always 0 so the content can be used as a C string. */
#include "buf.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char buf_empty[1];

void buf_init(buf_t *b)
{
    b->data = buf_empty;
    b->len = 0;
    b->cap = 0;
}

void buf_free(buf_t *b)
{
    if (b->cap > 0 && b->data != buf_empty)
        free(b->data);
    buf_init(b);
}

void buf_reset(buf_t *b)
{
    b->len = 0;
    if (b->cap > 0)
        b->data[0] = '\0';
    else
        b->data = buf_empty;
}

int buf_reserve(buf_t *b, size_t extra)
{
    if (b->cap > 0 && b->len + extra < b->cap)
        return 0;
    if (extra > SIZE_MAX / 2 - b->len)
        return -ENOMEM;
    size_t need = b->len + extra + 1;
    size_t cap = b->cap > 0 ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    char *p = b->cap > 0 ? realloc(b->data, cap) : malloc(cap);
    if (!p)
        return -ENOMEM;
    if (b->cap == 0) /* data was NULL (zeroed struct) or the static "" */
        p[0] = '\0';
    b->data = p;
    b->cap = cap;
    b->data[b->len] = '\0';
    return 0;
}

int buf_append(buf_t *b, const void *p, size_t n)
{
    int r;
    if (n == 0)
        return b->data ? 0 : buf_reserve(b, 0);
    if ((r = buf_reserve(b, n)) < 0)
        return r;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int buf_puts(buf_t *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

int buf_vprintf(buf_t *b, const char *fmt, va_list ap)
{
    char tmp[256];
    va_list ap2;
    int r, n;

    va_copy(ap2, ap);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return -EINVAL;
    if ((size_t)n < sizeof tmp)
        return buf_append(b, tmp, (size_t)n);
    if ((r = buf_reserve(b, (size_t)n)) < 0)
        return r;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int buf_printf(buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = buf_vprintf(b, fmt, ap);
    va_end(ap);
    return r;
}

void buf_consume(buf_t *b, size_t n)
{
    if (n >= b->len) {
        buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

size_t buf_escape_byte(unsigned char c, char esc[8])
{
    static const char hex[] = "0123456789abcdef";
    static const char from[] = "\"\\\n\r\t\b\f";
    static const char to[] = "\"\\nrtbf";
    const char *hit = c ? memchr(from, c, sizeof(from) - 1) : NULL;
    if (hit != NULL) {
        esc[0] = '\\';
        esc[1] = to[hit - from];
        return 2;
    }
    if (c < 0x20 || c == 0x7f) {
        memcpy(esc, "\\u00", 4);
        esc[4] = hex[c >> 4];
        esc[5] = hex[c & 15];
        return 6;
    }
    return 0;
}

int buf_json_str(buf_t *b, const char *s)
{
    int r;
    char esc[8];
    if (!s)
        return buf_append(b, "null", 4);
    if ((r = buf_reserve(b, strlen(s) + 2)) < 0)
        return r;
    b->data[b->len++] = '"';
    const char *run = s;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        size_t elen = buf_escape_byte(*p, esc);
        if (elen) {
            if ((r = buf_append(b, run, (size_t)((const char *)p - run))) < 0)
                return r;
            if ((r = buf_append(b, esc, elen)) < 0)
                return r;
            run = (const char *)p + 1;
        }
    }
    if ((r = buf_append(b, run, strlen(run))) < 0)
        return r;
    return buf_append(b, "\"", 1);
}

char *buf_steal(buf_t *b)
{
    char *p;
    if (b->cap > 0 && b->data != buf_empty) {
        p = b->data;
    } else {
        p = malloc(1);
        if (!p)
            return NULL;
        p[0] = '\0';
    }
    buf_init(b);
    return p;
}
