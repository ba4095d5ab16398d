/* Unit tests for common/cfgval.c: comma lists, host:port addresses, the
 * cgroup CPU count. */
#include "unit.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cfgval.h"

static void test_split_list(void **state)
{
    (void)state;
    char **items;
    int n;
    assert_int_equal(cfg_split_list(" a , b,,c ,", &items, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(items[0], "a");
    assert_string_equal(items[1], "b");
    assert_string_equal(items[2], "c");
    cfg_free_list(items, n);
    assert_int_equal(cfg_split_list("", &items, &n), 0);
    assert_int_equal(n, 0);
    cfg_free_list(items, n);
}

static void test_parse_addr(void **state)
{
    (void)state;
    char host[64];
    int port;
    assert_int_equal(cfg_parse_addr("127.0.0.1:8080", host, sizeof(host), &port), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 8080);
    assert_int_equal(cfg_parse_addr(":9000", host, sizeof(host), &port), 0);
    assert_string_equal(host, "0.0.0.0");
    assert_int_equal(cfg_parse_addr("*:0", host, sizeof(host), &port), 0);
    assert_string_equal(host, "0.0.0.0");
    assert_int_equal(port, 0);
    assert_int_equal(cfg_parse_addr("[::1]:443", host, sizeof(host), &port), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 443);
    assert_int_equal(cfg_parse_addr("kafka-1.example:9092", host, sizeof(host), &port), 0);
    assert_string_equal(host, "kafka-1.example");
    assert_true(cfg_parse_addr("host", host, sizeof(host), &port) < 0);
    assert_true(cfg_parse_addr("host:", host, sizeof(host), &port) < 0);
    assert_true(cfg_parse_addr("host:65536", host, sizeof(host), &port) < 0);
    assert_true(cfg_parse_addr("host:-1", host, sizeof(host), &port) < 0);
    assert_true(cfg_parse_addr("a b:1", host, sizeof(host), &port) < 0);
    assert_true(cfg_parse_addr("::1:80", host, sizeof(host), &port) < 0);
    assert_true(cfg_parse_addr("averyveryverylonghostname:1", host, 8, &port) < 0);
}

static void test_cpus(void **state)
{
    (void)state;
    assert_int_equal(cfg_cpus_from_cpu_max("max 100000\n", 8), 8);
    assert_int_equal(cfg_cpus_from_cpu_max("200000 100000\n", 8), 2);
    assert_int_equal(cfg_cpus_from_cpu_max("150000 100000", 8), 2);
    assert_int_equal(cfg_cpus_from_cpu_max("50000 100000", 8), 1);
    assert_int_equal(cfg_cpus_from_cpu_max("800000 100000", 2), 2);
    assert_int_equal(cfg_cpus_from_cpu_max("garbage", 3), 3);
    assert_int_equal(cfg_cpus_from_cpu_max(NULL, 0), 1);
    int n = cfg_cgroup_cpus();
    assert_true(n >= 1 && n <= 256);
}

UNIT_MAIN(cmocka_unit_test(test_split_list), cmocka_unit_test(test_parse_addr), cmocka_unit_test(test_cpus))
