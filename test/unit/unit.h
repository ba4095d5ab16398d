/* What every cmocka unit test file starts with, and its main(): the file's
 * tests as one group, e.g. UNIT_MAIN(cmocka_unit_test(test_a),
 * cmocka_unit_test(test_b)). */
#ifndef TEST_UNIT_H
#define TEST_UNIT_H
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#define UNIT_MAIN(...)                                                                                       \
    int main(void)                                                                                           \
    {                                                                                                        \
        const struct CMUnitTest tests[] = {__VA_ARGS__};                                                     \
        return cmocka_run_group_tests(tests, NULL, NULL);                                                    \
    }

#endif
