/* Unit tests for the small base modules: buf, rbuf and backoff. */
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
