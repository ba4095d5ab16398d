/* Growable byte buffer used for building text (metrics, HTTP responses,
 * log lines, JSON) and for framing. Never NUL-free: data[len] is always 0. */
#ifndef BUF_H
#define BUF_H
#include <stdarg.h>
#include <stddef.h>

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} buf_t;

void buf_init(buf_t *b);
void buf_free(buf_t *b);
void buf_reset(buf_t *b);                /* len = 0, keeps memory */
int buf_reserve(buf_t *b, size_t extra); /* 0 or -ENOMEM */
int buf_append(buf_t *b, const void *p, size_t n);
int buf_puts(buf_t *b, const char *s);
int buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_vprintf(buf_t *b, const char *fmt, va_list ap);
void buf_consume(buf_t *b, size_t n); /* drop n bytes from the front */
/* The escape sequence for byte c inside a quoted string (\" \\ \n \r \t \b \f,
 * other control bytes \u00XX) written to esc; 0 when c stands as it is. */
size_t buf_escape_byte(unsigned char c, char esc[8]);
/* Append s as a JSON string literal (with quotes, escaped). */
int buf_json_str(buf_t *b, const char *s);
/* Take the heap string out of b (never the static empty one; caller frees)
 * and leave b empty. NULL on ENOMEM. */
char *buf_steal(buf_t *b);

#endif
