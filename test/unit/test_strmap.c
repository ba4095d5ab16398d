/* Unit tests for common/strmap.c: lookups across growth, keys that are not
 * NUL-terminated, iteration that frees as it goes. */
#include "unit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strmap.h"

typedef struct {
    int value;
    strmap_node_t node; /* not first: STRMAP_ENTRY must subtract the offset */
    char name[24];
} ent_t;

static ent_t *add(strmap_t *m, const char *name, int value)
{
    ent_t *e = calloc(1, sizeof *e);
    assert_non_null(e);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->value = value;
    strmap_put(m, &e->node, e->name, strlen(e->name));
    return e;
}

static int value_of(const strmap_t *m, const char *key, size_t n)
{
    strmap_node_t *nd = strmap_get(m, key, n);
    return nd ? STRMAP_ENTRY(nd, ent_t, node)->value : -1;
}

static void test_get_put_grow(void **state)
{
    (void)state;
    strmap_t m;
    assert_int_equal(strmap_init(&m, 4), 0);
    char k[24];
    for (int i = 0; i < 1000; i++) {
        snprintf(k, sizeof k, "trade.x.C%d", i);
        add(&m, k, i);
    }
    assert_int_equal(m.count, 1000);
    assert_true(m.nbuckets >= 1000); /* doubled as it filled */
    for (int i = 0; i < 1000; i++) {
        snprintf(k, sizeof k, "trade.x.C%d", i);
        assert_int_equal(value_of(&m, k, strlen(k)), i);
    }
    assert_int_equal(value_of(&m, "trade.x.C1000", 13), -1);
    /* a prefix of a message: "trade.x.C12" inside a longer text */
    const char *text = "trade.x.C12\",\"seq\":1";
    assert_int_equal(value_of(&m, text, 11), 12);
    assert_int_equal(value_of(&m, text, 10), 1); /* "trade.x.C1" */
    /* iterate, freeing as we go */
    size_t b = 0, seen = 0;
    long sum = 0;
    strmap_node_t *nd = strmap_next(&m, &b, NULL), *next;
    for (; nd != NULL; nd = next) {
        next = strmap_next(&m, &b, nd);
        ent_t *e = STRMAP_ENTRY(nd, ent_t, node);
        sum += e->value;
        seen++;
        free(e);
    }
    assert_int_equal(seen, 1000);
    assert_int_equal(sum, 999L * 1000 / 2);
    strmap_free(&m);
    assert_null(m.buckets);
}

static void test_del(void **state)
{
    (void)state;
    strmap_t m;
    assert_int_equal(strmap_init(&m, 2), 0);
    ent_t *a = add(&m, "a", 1), *b = add(&m, "b", 2), *c = add(&m, "c", 3);
    strmap_del(&m, &b->node);
    assert_int_equal(m.count, 2);
    assert_int_equal(value_of(&m, "b", 1), -1);
    assert_int_equal(value_of(&m, "a", 1), 1);
    assert_int_equal(value_of(&m, "c", 1), 3);
    strmap_del(&m, &a->node);
    strmap_del(&m, &c->node);
    assert_int_equal(m.count, 0);
    size_t k = 0;
    assert_null(strmap_next(&m, &k, NULL));
    free(a);
    free(b);
    free(c);
    strmap_free(&m);
}

static void test_empty(void **state)
{
    (void)state;
    strmap_t m;
    assert_int_equal(strmap_init(&m, 8), 0);
    size_t b = 0;
    assert_null(strmap_next(&m, &b, NULL));
    assert_null(strmap_get(&m, "a", 1));
    strmap_free(&m);
    strmap_t z = {0}; /* never initialized: lookups find nothing */
    assert_null(strmap_get(&z, "a", 1));
    /* FNV-1a reference values */
    assert_true(strmap_hash("", 0) == 14695981039346656037ull);
    assert_true(strmap_hash("a", 1) == 0xaf63dc4c8601ec8cull);
}

UNIT_MAIN(cmocka_unit_test(test_get_put_grow), cmocka_unit_test(test_del), cmocka_unit_test(test_empty))
