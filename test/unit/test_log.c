/* Unit tests for common/log.c: line formatting (logfmt and JSON), log_q
 * quoting, levels, and log_errf rendering an error code in both formats. */
#include "unit.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "buf.h"
#include "log.h"

/* ---- log ------------------------------------------------------------- */

static void check_time_prefix(const char *t)
{
    /* 2026-11-25T02:12:00.123Z */
    assert_true(strlen(t) >= 24);
    for (int i = 0; i < 24; i++) {
        char c = t[i];
        switch (i) {
        case 4:
        case 7: assert_int_equal(c, '-'); break;
        case 10: assert_int_equal(c, 'T'); break;
        case 13:
        case 16: assert_int_equal(c, ':'); break;
        case 19: assert_int_equal(c, '.'); break;
        case 23: assert_int_equal(c, 'Z'); break;
        default: assert_true(c >= '0' && c <= '9');
        }
    }
}

/* Log as role, in format, from here on. */
static void log_as(const char *role, const char *format)
{
    log_init(role);
    assert_int_equal(log_set_format(format), 0);
}

static void test_log_logfmt(void **state)
{
    (void)state;
    log_as("fanout", "logfmt");
    buf_t b;
    buf_init(&b);
    log_format_line(&b, LOG_INFO, "listening", "addr=0.0.0.0:8080 note=\"a b\"");
    assert_true(strncmp(b.data, "time=", 5) == 0);
    check_time_prefix(b.data + 5);
    char expect[256];
    snprintf(expect, sizeof expect,
             " level=info role=fanout pid=%d msg=\"listening\" addr=0.0.0.0:8080 note=\"a b\"\n",
             (int)getpid());
    assert_string_equal(b.data + 5 + 24, expect);

    buf_reset(&b);
    log_format_line(&b, LOG_ERROR, "say \"hi\"\nnow", "");
    snprintf(expect, sizeof expect, " level=error role=fanout pid=%d msg=\"say \\\"hi\\\"\\nnow\"\n",
             (int)getpid());
    assert_string_equal(b.data + 5 + 24, expect);
    /* exactly one line */
    assert_ptr_equal(strchr(b.data, '\n'), b.data + b.len - 1);
    buf_free(&b);
}

static void test_log_json(void **state)
{
    (void)state;
    log_as("ingest", "json");
    buf_t b;
    buf_init(&b);
    log_format_line(&b, LOG_WARN, "reconnect",
                    "exchange=upbit delay_ms=1500 reason=\"tls \\\"fail\\\"\\nx\" flag");
    assert_int_equal(b.data[b.len - 1], '\n');
    json_error_t err;
    json_t *j = json_loadb(b.data, b.len, 0, &err);
    assert_non_null(j);
    check_time_prefix(json_string_value(json_object_get(j, "time")));
    assert_string_equal(json_string_value(json_object_get(j, "level")), "warn");
    assert_string_equal(json_string_value(json_object_get(j, "role")), "ingest");
    assert_int_equal(json_integer_value(json_object_get(j, "pid")), getpid());
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "reconnect");
    assert_string_equal(json_string_value(json_object_get(j, "exchange")), "upbit");
    assert_string_equal(json_string_value(json_object_get(j, "delay_ms")), "1500");
    assert_string_equal(json_string_value(json_object_get(j, "reason")), "tls \"fail\"\nx");
    assert_string_equal(json_string_value(json_object_get(j, "flag")), "");
    /* members in order: time, level, role, pid, msg, fields */
    assert_true(strncmp(b.data, "{\"time\":", 8) == 0);
    json_decref(j);

    /* log_q output round-trips through the JSON conversion */
    buf_reset(&b);
    char f[1200];
    snprintf(f, sizeof f, "v=%s", log_q("a=b \"c\" \\ d\te"));
    log_format_line(&b, LOG_INFO, "m", f);
    j = json_loadb(b.data, b.len, 0, &err);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "v")), "a=b \"c\" \\ d\te");
    json_decref(j);
    buf_free(&b);
    log_set_format("logfmt");
}

static void test_log_q(void **state)
{
    (void)state;
    assert_string_equal(log_q("plain"), "\"plain\"");
    assert_string_equal(log_q("a \"b\" \\c\nd"), "\"a \\\"b\\\" \\\\c\\nd\"");
    assert_string_equal(log_q(NULL), "\"\"");
    /* 8 distinct buffers usable in one call */
    const char *p[8];
    char in[8][8];
    for (int i = 0; i < 8; i++) {
        snprintf(in[i], sizeof in[i], "v%d", i);
        p[i] = log_q(in[i]);
    }
    for (int i = 0; i < 8; i++) {
        char e[16];
        snprintf(e, sizeof e, "\"v%d\"", i);
        assert_string_equal(p[i], e);
    }
    /* very long strings are cut, still quoted, marked */
    char *lng = malloc(100000);
    memset(lng, 'z', 99999);
    lng[99999] = '\0';
    const char *q = log_q(lng);
    size_t n = strlen(q);
    assert_true(n < 2000);
    assert_int_equal(q[0], '"');
    assert_int_equal(q[n - 1], '"');
    assert_memory_equal(q + n - 4, "...\"", 4);
    free(lng);
}

static void test_log_levels_and_write(void **state)
{
    (void)state;
    assert_int_equal(log_set_level("bogus"), -EINVAL);
    assert_int_equal(log_set_format("xml"), -EINVAL);
    assert_int_equal(log_set_level("warn"), 0);
    assert_int_equal(log_get_level(), LOG_WARN);
    assert_false(log_enabled(LOG_INFO));
    assert_true(log_enabled(LOG_ERROR));

    int fds[2];
    assert_int_equal(pipe(fds), 0);
    int saved = dup(2);
    dup2(fds[1], 2);
    log_init("supervisor");
    log_info("hidden", "k=%d", 1);
    log_debug("hidden too", LOG_NOFIELDS);
    log_warn("shown", "k=%d who=%s", 2, log_q("x y"));
    assert_int_equal(log_set_level("debug"), 0);
    log_debug("dbg", LOG_NOFIELDS);
    dup2(saved, 2);
    close(saved);
    close(fds[1]);
    char out[4096];
    ssize_t n = read(fds[0], out, sizeof out - 1);
    close(fds[0]);
    assert_true(n > 0);
    out[n] = '\0';
    assert_null(strstr(out, "hidden"));
    assert_non_null(strstr(out, "level=warn role=supervisor"));
    assert_non_null(strstr(out, "msg=\"shown\" k=2 who=\"x y\"\n"));
    assert_non_null(strstr(out, "level=debug role=supervisor"));
    int lines = 0;
    for (char *c = out; *c; c++)
        lines += *c == '\n';
    assert_int_equal(lines, 2);
    log_set_level("info");
}

/* Run fn with stderr captured; return what it wrote (static buffer). */
static const char *capture_stderr(void (*fn)(void))
{
    static char out[8192];
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    int saved = dup(2);
    dup2(fds[1], 2);
    fn();
    dup2(saved, 2);
    close(saved);
    close(fds[1]);
    ssize_t n = read(fds[0], out, sizeof out - 1);
    close(fds[0]);
    assert_true(n > 0);
    out[n] = '\0';
    return out;
}

static void emit_errors(void)
{
    log_warn_err(UV_EADDRINUSE, "cannot listen", "listen=%s", log_q("0.0.0.0:8080"));
    log_errf(LOG_ERROR, EPIPE, "write failed", LOG_NOFIELDS); /* positive errno */
    log_errf(LOG_INFO, 0, "closed", "pid=%d", 7);             /* 0: no err field */
}

/* A multi-word error text stays one value in logfmt... */
static void test_log_errf_logfmt(void **state)
{
    (void)state;
    log_as("fanout", "logfmt");
    assert_string_equal(log_strerror(UV_EADDRINUSE), "address already in use");
    const char *out = capture_stderr(emit_errors);
    assert_contains_all(out, "msg=\"cannot listen\" listen=\"0.0.0.0:8080\" err=\"address already in use\"\n",
                        "msg=\"write failed\" err=\"broken pipe\"\n", "msg=\"closed\" pid=7\n");
}

/* ...and one member in JSON (it used to split into "address","already",...). */
static void test_log_errf_json(void **state)
{
    (void)state;
    log_as("fanout", "json");
    const char *out = capture_stderr(emit_errors);
    log_set_format("logfmt");
    const char *line[3];
    char *copy = strdup(out);
    char *save = NULL;
    int n = 0;
    for (char *t = strtok_r(copy, "\n", &save); t && n < 3; t = strtok_r(NULL, "\n", &save))
        line[n++] = t;
    assert_int_equal(n, 3);
    json_error_t jerr;
    json_t *j = json_loads(line[0], 0, &jerr);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "cannot listen");
    assert_string_equal(json_string_value(json_object_get(j, "listen")), "0.0.0.0:8080");
    assert_string_equal(json_string_value(json_object_get(j, "err")), "address already in use");
    assert_null(json_object_get(j, "already"));
    assert_int_equal(json_object_size(j), 7); /* time level role pid msg listen err */
    json_decref(j);
    j = json_loads(line[1], 0, &jerr);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "err")), "broken pipe");
    json_decref(j);
    j = json_loads(line[2], 0, &jerr);
    assert_non_null(j);
    assert_null(json_object_get(j, "err"));
    assert_string_equal(json_string_value(json_object_get(j, "pid")), "7");
    json_decref(j);
    free(copy);
}

UNIT_MAIN(cmocka_unit_test(test_log_logfmt), cmocka_unit_test(test_log_json), cmocka_unit_test(test_log_q),
          cmocka_unit_test(test_log_levels_and_write), cmocka_unit_test(test_log_errf_logfmt),
          cmocka_unit_test(test_log_errf_json))
