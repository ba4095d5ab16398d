/* Unit tests for common/rbuf.c. */
#include "unit.h"

#include <string.h>

#include "rbuf.h"

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

UNIT_MAIN(cmocka_unit_test(test_rbuf))
