/* Structured logging: one line per event on stderr in logfmt or JSON. Each
 * line is written with a single write(2) so lines from the supervisor and its
 * workers sharing stderr do not interleave (atomic below PIPE_BUF). */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "buf.h"

#define LOG_Q_SLOTS 8
#define LOG_Q_MAX 1024 /* quoted output bytes per log_q() buffer */

static char log_role[32] = "-";
static log_level_t log_level = LOG_INFO;
static int log_json;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

static int parse_level(const char *name, log_level_t *out)
{
    if (!name)
        return -EINVAL;
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(name, level_names[i]) == 0) {
            *out = (log_level_t)i;
            return 0;
        }
    }
    if (strcasecmp(name, "warning") == 0) {
        *out = LOG_WARN;
        return 0;
    }
    return -EINVAL;
}

void log_init(const char *role)
{
    snprintf(log_role, sizeof log_role, "%s", role && *role ? role : "-");
    /* The environment is a convenience for tools and tests; the config
     * loader applies LOG_LEVEL through [log] level as well. */
    const char *lv = getenv("LOG_LEVEL");
    if (lv && *lv)
        log_set_level(lv);
    const char *fmt = getenv("LOG_FORMAT");
    if (fmt && *fmt)
        log_set_format(fmt);
}

int log_set_level(const char *name)
{
    log_level_t l;
    if (parse_level(name, &l) < 0)
        return -EINVAL;
    log_level = l;
    return 0;
}

int log_set_format(const char *name)
{
    if (!name)
        return -EINVAL;
    if (strcasecmp(name, "logfmt") == 0)
        log_json = 0;
    else if (strcasecmp(name, "json") == 0)
        log_json = 1;
    else
        return -EINVAL;
    return 0;
}

log_level_t log_get_level(void)
{
    return log_level;
}

int log_enabled(log_level_t lvl)
{
    return lvl >= log_level;
}

/* Quote into out (size outsz >= 8), escaping \" \\ \n \r \t and other
 * control bytes; long input is cut and marked with "...". */
static void quote_into(char *out, size_t outsz, const char *s)
{
    size_t o = 0;
    const size_t room = outsz - 5; /* closing quote, "...", NUL */
    out[o++] = '"';
    if (!s)
        s = "";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        size_t elen = buf_escape_byte(*p, esc);
        if (elen == 0) {
            esc[0] = (char)*p;
            elen = 1;
        }
        if (o + elen > room) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(out + o, esc, elen);
        o += elen;
    }
    out[o++] = '"';
    out[o] = '\0';
}

const char *log_q(const char *s)
{
    static __thread char slots[LOG_Q_SLOTS][LOG_Q_MAX];
    static __thread unsigned next;
    char *out = slots[next++ % LOG_Q_SLOTS];
    quote_into(out, LOG_Q_MAX, s);
    return out;
}

static void fmt_time(char *out, size_t n)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ts.tv_nsec / 1000000));
}

/* Append s to b as a logfmt quoted value (no length limit). */
static void buf_logfmt_q(buf_t *b, const char *s)
{
    buf_append(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        switch (*p) {
        case '"': buf_append(b, "\\\"", 2); break;
        case '\\': buf_append(b, "\\\\", 2); break;
        case '\n': buf_append(b, "\\n", 2); break;
        case '\r': buf_append(b, "\\r", 2); break;
        case '\t': buf_append(b, "\\t", 2); break;
        default: buf_append(b, p, 1);
        }
    }
    buf_append(b, "\"", 1);
}

/* Convert logfmt pairs to JSON members appended to b (each preceded by ','). */
static void fields_to_json(buf_t *b, const char *f)
{
    buf_t key, val;
    buf_init(&key);
    buf_init(&val);
    const char *p = f;
    while (*p) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        buf_reset(&key);
        buf_reset(&val);
        const char *ks = p;
        while (*p && *p != '=' && *p != ' ' && *p != '\t')
            p++;
        buf_append(&key, ks, (size_t)(p - ks));
        if (*p == '=') {
            p++;
            if (*p == '"') {
                p++;
                while (*p && *p != '"') {
                    if (*p == '\\' && p[1]) {
                        p++;
                        char c = *p;
                        if (c == 'n')
                            c = '\n';
                        else if (c == 'r')
                            c = '\r';
                        else if (c == 't')
                            c = '\t';
                        else if (c == 'x' && p[1] && p[2]) {
                            char hx[3] = {p[1], p[2], 0};
                            c = (char)strtol(hx, NULL, 16);
                            p += 2;
                        }
                        buf_append(&val, &c, 1);
                    } else {
                        buf_append(&val, p, 1);
                    }
                    p++;
                }
                if (*p == '"')
                    p++;
            } else {
                const char *vs = p;
                while (*p && *p != ' ' && *p != '\t')
                    p++;
                buf_append(&val, vs, (size_t)(p - vs));
            }
        }
        if (key.len == 0)
            continue;
        buf_append(b, ",", 1);
        buf_json_str(b, key.data);
        buf_append(b, ":", 1);
        buf_json_str(b, val.data);
    }
    buf_free(&key);
    buf_free(&val);
}

/* Exposed for unit tests: format one line (with trailing newline) into b. */
void log_format_line(buf_t *b, log_level_t lvl, const char *msg, const char *fields)
{
    char ts[80];
    fmt_time(ts, sizeof ts);
    const char *lname = (unsigned)lvl < 4 ? level_names[lvl] : "info";
    if (!msg)
        msg = "";
    if (!fields)
        fields = "";
    if (log_json) {
        buf_printf(b, "{\"time\":\"%s\",\"level\":\"%s\",\"role\":", ts, lname);
        buf_json_str(b, log_role);
        buf_printf(b, ",\"pid\":%d,\"msg\":", (int)getpid());
        buf_json_str(b, msg);
        fields_to_json(b, fields);
        buf_append(b, "}\n", 2);
    } else {
        buf_printf(b, "time=%s level=%s role=%s pid=%d msg=", ts, lname, log_role, (int)getpid());
        buf_logfmt_q(b, msg);
        while (*fields == ' ')
            fields++;
        if (*fields) {
            buf_append(b, " ", 1);
            buf_puts(b, fields);
        }
        /* a field value must not break the one-line-per-event rule */
        for (size_t i = 0; i < b->len; i++)
            if (b->data[i] == '\n' || b->data[i] == '\r')
                b->data[i] = ' ';
        buf_append(b, "\n", 1);
    }
}

const char *log_strerror(int err)
{
    if (err > 0)
        err = -err;
    return uv_strerror(err);
}

/* Format fields (and, with has_err and a non-zero err, the err="..." pair)
 * and write the line. */
static void log_vwrite(log_level_t lvl, int has_err, int err, const char *msg, const char *fields, va_list ap)
{
    int saved_errno = errno;
    buf_t f, line;
    buf_init(&f);
    buf_init(&line);
    char fbuf[1024];
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(fbuf, sizeof fbuf, fields ? fields : "", ap);
    if (n > 0 && (size_t)n < sizeof fbuf) {
        buf_append(&f, fbuf, (size_t)n);
    } else if (n > 0) {
        char *heap = malloc((size_t)n + 1);
        if (heap) {
            vsnprintf(heap, (size_t)n + 1, fields, ap2);
            buf_append(&f, heap, (size_t)n);
            free(heap);
        }
    }
    va_end(ap2);
    if (has_err && err != 0) {
        if (f.len)
            buf_append(&f, " ", 1);
        buf_puts(&f, "err=");
        buf_puts(&f, log_q(log_strerror(err)));
    }
    log_format_line(&line, lvl, msg, f.data ? f.data : "");
    size_t off = 0;
    while (off < line.len) {
        ssize_t w = write(STDERR_FILENO, line.data + off, line.len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        off += (size_t)w;
    }
    buf_free(&line);
    buf_free(&f);
    errno = saved_errno;
}

void log_write(log_level_t lvl, const char *msg, const char *fields, ...)
{
    if (!log_enabled(lvl))
        return;
    va_list ap;
    va_start(ap, fields);
    log_vwrite(lvl, 0, 0, msg, fields, ap);
    va_end(ap);
}

void log_errf(log_level_t lvl, int err, const char *msg, const char *fields, ...)
{
    if (!log_enabled(lvl))
        return;
    va_list ap;
    va_start(ap, fields);
    log_vwrite(lvl, 1, err, msg, fields, ap);
    va_end(ap);
}
