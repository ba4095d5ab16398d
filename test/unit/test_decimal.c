/* Unit tests for workers/ingest/decimal.c: exact decimal text (validity,
 * shift by a power of ten, comparison), never through a double. */
#include "unit.h"

#include <errno.h>
#include <string.h>

#include "decimal.h"

static void test_decimal_shift(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *want;
    } t[] = {
        {"-1.234", "-0.01234"}, {"1.234", "0.01234"},   {"5", "0.05"},
        {"150", "1.50"},        {"12345.6", "123.456"}, {"0", "0.00"},
        {"0.000", "0.00000"},   {"-94.99", "-0.9499"},  {"-4.15775596190603", "-0.0415775596190603"},
        {"100", "1.00"},        {"007.5", "0.075"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        char out[80];
        assert_int_equal(decimal_shift(t[i].in, 2, out, sizeof(out)), 0);
        assert_string_equal(out, t[i].want);
    }
    static const char *const bad[] = {"1e5", "abc", "1.", ""};
    char out[80];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(decimal_shift(bad[i], 2, out, sizeof(out)), -EINVAL);
    assert_int_equal(decimal_shift("12345", 2, out, 4), -ERANGE);
}

static void test_decimal_valid_cmp(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int valid;
    } v[] = {
        {"0.001", 1}, {"-12", 1}, {".5", 0}, {"1e-8", 0}, {"+1", 0}, {"1.2.3", 0}, {"NaN", 0}, {"", 0},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        assert_int_equal(decimal_valid(v[i].s, strlen(v[i].s)), v[i].valid);
    static const struct {
        const char *a, *b;
        int sign; /* of decimal_cmp(a, b) */
    } c[] = {
        {"1.50", "1.5", 0},      {"10.1", "9.99", 1}, {"100000.01", "99999.5", 1},
        {"0.0001", "0.001", -1}, {"-1", "0", -1},     {"-2", "-1", -1},
        {"-0.0", "0", 0},        {"007", "7.000", 0}, {"21921.73", "21921.8", -1},
    };
    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        int r = decimal_cmp(c[i].a, c[i].b);
        assert_int_equal((r > 0) - (r < 0), c[i].sign);
    }
    assert_true(decimal_is_zero("0.000"));
    assert_false(decimal_is_zero("0.0001"));
}

UNIT_MAIN(cmocka_unit_test(test_decimal_shift), cmocka_unit_test(test_decimal_valid_cmp))
