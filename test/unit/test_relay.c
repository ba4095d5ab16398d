/* Unit tests for workers/ingest/relay.c: the relay's token check. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "relay.h"

static void test_token(void **state)
{
    (void)state;
    assert_true(relay_token_ok("", NULL, NULL)); /* no token configured */
    assert_true(relay_token_ok(NULL, "Bearer x", NULL));
    assert_false(relay_token_ok("s3cret", NULL, NULL)); /* nothing presented */
    assert_true(relay_token_ok("s3cret", "Bearer s3cret", NULL));
    assert_true(relay_token_ok("s3cret", "bearer   s3cret", NULL));
    assert_false(relay_token_ok("s3cret", "Bearer s3cre", NULL));
    assert_false(relay_token_ok("s3cret", "Bearer s3cretX", NULL));
    assert_false(relay_token_ok("s3cret", "Basic s3cret", NULL));
    assert_false(relay_token_ok("s3cret", "Bearer ", NULL));
    assert_true(relay_token_ok("s3cret", NULL, "s3cret"));
    assert_false(relay_token_ok("s3cret", NULL, ""));
    /* The header wins over the query when both are given. */
    assert_false(relay_token_ok("s3cret", "Bearer wrong", "s3cret"));
    assert_true(relay_token_ok("s3cret", "Basic abc", "s3cret"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
