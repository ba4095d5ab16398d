/* Structured logging on stderr: one line per event, logfmt (default) or JSON.
 * Every line carries time, level, role, pid, msg and the caller's fields. */
#ifndef LOG_H
#define LOG_H
#include "buf.h"

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level_t;

void log_init(const char *role);      /* "supervisor", "ingest", "fanout", ... */
int log_set_level(const char *name);  /* debug|info|warn|error; -EINVAL otherwise */
int log_set_format(const char *name); /* logfmt|json; -EINVAL otherwise */
log_level_t log_get_level(void);
int log_enabled(log_level_t lvl);

/* fields: printf format producing logfmt pairs `k=v k2="v with spaces"`;
 * LOG_NOFIELDS for none. Values with spaces or quotes must be quoted by the
 * caller (use %s with log_q() for untrusted strings). */
void log_write(log_level_t lvl, const char *msg, const char *fields, ...)
    __attribute__((format(printf, 3, 4)));
/* A line without fields: `log_info("started", LOG_NOFIELDS)` (an empty
 * format string would trip -Wformat-zero-length in every caller). */
#define LOG_NOFIELDS "%s", ""

/* Log a failure with its cause: err is a libuv result or a negative errno (a
 * positive errno is taken as its negative). The logger appends it once, as
 * err="<uv_strerror text>" after the caller's fields, quoted for logfmt and
 * a proper member in JSON. err 0 adds nothing. */
void log_errf(log_level_t lvl, int err, const char *msg, const char *fields, ...)
    __attribute__((format(printf, 4, 5)));
/* The text log_errf renders for err (libuv's message; never NULL). */
const char *log_strerror(int err);
/* Quote a string for a logfmt value into a rotating static buffer
 * (safe for up to 8 uses in one log call). */
const char *log_q(const char *s);

/* Format one complete line (newline-terminated) for the current role, level
 * and format into b without writing it; log_write uses it (tests too). */
void log_format_line(buf_t *b, log_level_t lvl, const char *msg, const char *fields);

#define log_debug(msg, ...)                                                                                  \
    do {                                                                                                     \
        if (log_enabled(LOG_DEBUG))                                                                          \
            log_write(LOG_DEBUG, msg, __VA_ARGS__);                                                          \
    } while (0)
#define log_info(msg, ...) log_write(LOG_INFO, msg, __VA_ARGS__)
#define log_warn(msg, ...) log_write(LOG_WARN, msg, __VA_ARGS__)
#define log_error(msg, ...) log_write(LOG_ERROR, msg, __VA_ARGS__)
/* log_errf at a level: log_warn_err(r, "accept failed", "peer=%s", p) */
#define log_warn_err(err, msg, ...) log_errf(LOG_WARN, err, msg, __VA_ARGS__)
#define log_error_err(err, msg, ...) log_errf(LOG_ERROR, err, msg, __VA_ARGS__)

#endif
