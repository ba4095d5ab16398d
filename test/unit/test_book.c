/* Unit tests for workers/ingest/book.c: price levels, removal, depth. */
#include "unit.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "config.h"
#include "msg.h"
#include "book.h"

static void test_book(void **state)
{
    (void)state;
    book_t b;
    buf_t o;
    book_init(&b);
    buf_init(&o);
    /* bids descending, asks ascending, by exact decimal value */
    const char *bids[] = {"9.5", "10.1", "10.10000001", "0.99", "100"};
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(book_set(&b, 1, bids[i], "1"), 0);
    book_top_json(&b, 1, 10, &o);
    assert_string_equal(o.data, "[[\"100\",\"1\"],[\"10.10000001\",\"1\"],[\"10.1\",\"1\"],"
                                "[\"9.5\",\"1\"],[\"0.99\",\"1\"]]");
    assert_int_equal(book_set(&b, 1, "10.100", "0.000"), 0); /* removes "10.1" */
    assert_int_equal(book_set(&b, 1, "7", "0"), 0);          /* absent: no-op */
    assert_int_equal(book_depth(&b, 1), 4);
    assert_int_equal(book_set(&b, 1, "1e3", "1"), -EINVAL);
    assert_int_equal(book_set(&b, 0, "2", "x"), -EINVAL);
    for (int i = 2000; i > 0; i--) {
        char p[16];
        snprintf(p, sizeof(p), "%d.%d", i, i % 7);
        assert_int_equal(book_set(&b, 0, p, "1"), 0);
    }
    assert_int_equal(book_depth(&b, 0), 2000);
    assert_string_equal(book_level(&b, 0, 0)->price, "1.1");
    assert_string_equal(book_level(&b, 0, 1999)->price, "2000.5");
    assert_null(book_level(&b, 0, 2000));
    buf_reset(&o);
    book_top_json(&b, 0, 2, &o);
    assert_string_equal(o.data, "[[\"1.1\",\"1\"],[\"2.2\",\"1\"]]");
    book_clear(&b);
    assert_int_equal(book_depth(&b, 0), 0);
    buf_free(&o);
    book_free(&b);
}

UNIT_MAIN(cmocka_unit_test(test_book))
