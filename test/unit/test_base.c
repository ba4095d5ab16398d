/* Unit tests for the small base modules: buf, rbuf, backoff and the log
 * line formatting (logfmt and JSON) including log_q quoting. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "buf.h"
#include "log.h"
#include "rbuf.h"

/* ---- buf ------------------------------------------------------------- */

static void test_buf_basic(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_non_null(b.data);
    assert_string_equal(b.data, "");
    assert_int_equal(buf_puts(&b, "hello"), 0);
    assert_int_equal(buf_append(&b, ", ", 2), 0);
    assert_int_equal(buf_printf(&b, "%s %d", "world", 42), 0);
    assert_string_equal(b.data, "hello, world 42");
    assert_int_equal(b.len, 15);
    buf_consume(&b, 7);
    assert_string_equal(b.data, "world 42");
    assert_int_equal(b.len, 8);
    buf_consume(&b, 100);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    buf_free(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
}

static void test_buf_large_printf(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    char big[5000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(buf_printf(&b, "<%s>", big), 0);
    assert_int_equal(b.len, sizeof big + 1);
    assert_int_equal(b.data[0], '<');
    assert_int_equal(b.data[b.len - 1], '>');
    assert_int_equal(b.data[b.len], '\0');
    for (int i = 0; i < 10000; i++)
        assert_int_equal(buf_append(&b, "y", 1), 0);
    assert_int_equal(b.len, sizeof big + 1 + 10000);
    assert_true(b.cap > b.len);
    char *s = buf_steal(&b);
    assert_int_equal(strlen(s), sizeof big + 1 + 10000);
    assert_int_equal(b.len, 0);
    free(s);
    s = buf_steal(&b); /* empty: still a heap string */
    assert_string_equal(s, "");
    free(s);
    buf_free(&b);
}

static void test_buf_zeroed_struct(void **state)
{
    (void)state;
    buf_t b = {0};
    assert_int_equal(buf_append(&b, "", 0), 0);
    assert_non_null(b.data);
    assert_int_equal(buf_puts(&b, "ok"), 0);
    assert_string_equal(b.data, "ok");
    buf_free(&b);
}

static void test_buf_json_str(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_int_equal(buf_json_str(&b, "a\"b\\c\nd\te\x01\x1f/\xc3\xa9\xe2\x82\xac"), 0);
    assert_string_equal(b.data, "\"a\\\"b\\\\c\\nd\\te\\u0001\\u001f/\xc3\xa9\xe2\x82\xac\"");
    /* jansson must read back the original bytes */
    json_error_t err;
    json_t *j = json_loads(b.data, JSON_DECODE_ANY, &err);
    assert_non_null(j);
    assert_string_equal(json_string_value(j), "a\"b\\c\nd\te\x01\x1f/\xc3\xa9\xe2\x82\xac");
    json_decref(j);
    buf_reset(&b);
    buf_json_str(&b, "");
    assert_string_equal(b.data, "\"\"");
    buf_reset(&b);
    buf_json_str(&b, NULL);
    assert_string_equal(b.data, "null");
    buf_free(&b);
}

/* ---- rbuf ------------------------------------------------------------ */

static void test_rbuf(void **state)
{
    (void)state;
    rbuf_t *b = rbuf_new("frame", 5);
    assert_non_null(b);
    assert_int_equal(b->refs, 1);
    assert_int_equal(b->len, 5);
    assert_memory_equal(b->data, "frame", 5);
    assert_int_equal(b->data[5], '\0');
    assert_ptr_equal(rbuf_ref(b), b);
    assert_int_equal(b->refs, 2);
    rbuf_unref(b);
    assert_int_equal(b->refs, 1);
    rbuf_unref(b); /* freed; ASan/valgrind would flag a leak or double free */
    rbuf_t *e = rbuf_alloc(0);
    assert_non_null(e);
    assert_int_equal(e->len, 0);
    rbuf_unref(e);
}

/* ---- backoff --------------------------------------------------------- */

static void test_backoff_bounds(void **state)
{
    (void)state;
    backoff_t b;
    backoff_init(&b, 100, 30000, 0);
    for (unsigned a = 0; a < 20; a++) {
        uint64_t expect = 100ull << a;
        if (expect > 30000)
            expect = 30000;
        assert_int_equal(backoff_ceiling(&b), expect);
        uint64_t d = backoff_next(&b);
        assert_true(d <= expect);
        assert_int_equal(b.attempt, a + 1);
    }
    /* many draws at the cap: within [0, cap], mean near cap/2, spread wide */
    double sum = 0;
    uint64_t lo = UINT64_MAX, hi = 0;
    const int N = 20000;
    for (int i = 0; i < N; i++) {
        uint64_t d = backoff_next(&b);
        assert_true(d <= 30000);
        sum += (double)d;
        if (d < lo)
            lo = d;
        if (d > hi)
            hi = d;
    }
    double mean = sum / N;
    assert_true(mean > 14000 && mean < 16000);
    assert_true(lo < 300);
    assert_true(hi > 29700);
    backoff_reset(&b);
    assert_int_equal(b.attempt, 0);
    assert_int_equal(backoff_ceiling(&b), 100);
}

static void test_backoff_floor_and_overflow(void **state)
{
    (void)state;
    backoff_t b;
    backoff_init(&b, 1000, 60000, 5000);
    for (int i = 0; i < 5000; i++) {
        uint64_t d = backoff_next(&b);
        assert_true(d >= 5000 && d <= 60000);
    }
    /* huge attempt counts and bases never overflow past max */
    backoff_init(&b, UINT64_MAX / 3, UINT64_MAX - 1, 0);
    for (int i = 0; i < 200; i++) {
        assert_true(backoff_ceiling(&b) <= UINT64_MAX - 1);
        backoff_next(&b);
    }
    assert_int_equal(backoff_ceiling(&b), UINT64_MAX - 1);
    backoff_init(&b, 1, 1000, 0);
    b.attempt = 1000000;
    assert_int_equal(backoff_ceiling(&b), 1000);
    /* zero base: always floor */
    backoff_init(&b, 0, 1000, 7);
    for (int i = 0; i < 10; i++)
        assert_int_equal(backoff_next(&b), 7);
}

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

static void test_log_logfmt(void **state)
{
    (void)state;
    log_init("fanout");
    assert_int_equal(log_set_format("logfmt"), 0);
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
    log_init("ingest");
    assert_int_equal(log_set_format("json"), 0);
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
    log_debug("hidden too", "");
    log_warn("shown", "k=%d who=%s", 2, log_q("x y"));
    assert_int_equal(log_set_level("debug"), 0);
    log_debug("dbg", "");
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_basic),
        cmocka_unit_test(test_buf_large_printf),
        cmocka_unit_test(test_buf_zeroed_struct),
        cmocka_unit_test(test_buf_json_str),
        cmocka_unit_test(test_rbuf),
        cmocka_unit_test(test_backoff_bounds),
        cmocka_unit_test(test_backoff_floor_and_overflow),
        cmocka_unit_test(test_log_logfmt),
        cmocka_unit_test(test_log_json),
        cmocka_unit_test(test_log_q),
        cmocka_unit_test(test_log_levels_and_write),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
