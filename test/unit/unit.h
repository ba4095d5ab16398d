/* What every cmocka unit test file starts with, and its main(): the file's
 * tests as one group, e.g. UNIT_MAIN(cmocka_unit_test(test_a),
 * cmocka_unit_test(test_b)); and checks shared by the tests: text that must
 * (assert_contains_all) or must not (assert_contains_none) occur. */
#ifndef TEST_UNIT_H
#define TEST_UNIT_H
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#define UNIT_MAIN(...)                                                                                       \
    int main(void)                                                                                           \
    {                                                                                                        \
        const struct CMUnitTest tests[] = {__VA_ARGS__};                                                     \
        return cmocka_run_group_tests(tests, NULL, NULL);                                                    \
    }

/* Each string after hay occurs in it (or, for none, does not); a failure
 * names the string. */
#define assert_contains_all(hay, ...)                                                                        \
    unit_contains((hay), (const char *const[]){__VA_ARGS__, NULL}, 1, __FILE__, __LINE__)
#define assert_contains_none(hay, ...)                                                                       \
    unit_contains((hay), (const char *const[]){__VA_ARGS__, NULL}, 0, __FILE__, __LINE__)

static inline void unit_contains(const char *hay, const char *const *needles, int want, const char *file,
                                 int line)
{
    for (; *needles != NULL; needles++) {
        if ((strstr(hay, *needles) != NULL) != want) {
            print_error("%s \"%s\" in:\n%s\n", want ? "missing" : "unexpected", *needles, hay);
            _fail(file, line);
        }
    }
}

#endif
