/* Unit tests for common/buf.c. */
#include "unit.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

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

UNIT_MAIN(cmocka_unit_test(test_buf_basic), cmocka_unit_test(test_buf_large_printf),
          cmocka_unit_test(test_buf_zeroed_struct), cmocka_unit_test(test_buf_json_str))
