/* The /status rates and latency percentiles (supervisor/rates.c), fed with
 * workers' cumulative counters tick by tick. */
#include "unit.h"

#include <stdlib.h>

#include "rates.h"

static json_t *sent_snapshot(double sent, double lat_le_1ms, double lat_le_10ms, double lat_inf)
{
    return json_pack("{s:[{s:s, s:s, s:[{s:f}]}, {s:s, s:s, s:[f, f], s:[{s:[f, f, f]}]}]}", "families",
                     "name", "exchange_fanout_messages_sent_total", "type", "counter", "series", "value",
                     sent, "name", "exchange_fanout_ingest_latency_seconds", "type", "histogram", "buckets",
                     0.001, 0.01, "series", "counts", lat_le_1ms, lat_le_10ms, lat_inf);
}

static json_t *status_doc(int pid)
{
    return json_pack("{s:[{s:s, s:i}], s:{s:{s:i}}}", "workers", "kind", "fanout", "pid", pid, "exchanges",
                     "upbit", "messages", 7);
}

static double worker_field(json_t *st, const char *k)
{
    return json_number_value(json_object_get(json_array_get(json_object_get(st, "workers"), 0), k));
}

static void test_quantile_linear_within_bucket(void **state)
{
    (void)state;
    const double bounds[] = {0.001, 0.002, 0.005};
    const double in_second[] = {0, 10, 0, 0}, in_inf[] = {0, 0, 0, 5};
    assert_float_equal(rates_bucket_quantile(0.5, in_second, bounds, 3, 10), 0.0015, 1e-9);
    assert_float_equal(rates_bucket_quantile(0.99, in_second, bounds, 3, 10), 0.00199, 1e-9);
    assert_float_equal(rates_bucket_quantile(0.5, in_inf, bounds, 3, 5), 0.005,
                       1e-9); /* +Inf: the top bound */
}

static void test_rates_over_window_and_reset(void **state)
{
    (void)state;
    rates_t *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    proc_t p = {.kind = PROC_FANOUT, .pid = 42, .state = PS_RUNNING};
    const double sent[] = {100, 300, 400, 50}; /* the last: the worker's counter was reset */
    const double want[] = {-1, 200.0, 150.0, 116.7};
    for (int i = 0; i < 4; i++) {
        p.metrics = sent_snapshot(sent[i], 0, 10 * i, 0);
        rates_tick(r, &p);
        json_decref(p.metrics);
        json_t *st = status_doc(42);
        rates_add_status(r, st);
        if (want[i] < 0) { /* too new: null, not 0 */
            assert_true(json_is_null(json_object_get(st, "messages_out_per_s")));
            assert_true(json_is_null(
                json_object_get(json_array_get(json_object_get(st, "workers"), 0), "messages_out_per_s")));
        } else {
            assert_float_equal(worker_field(st, "messages_out_per_s"), want[i], 1e-9);
            assert_float_equal(json_number_value(json_object_get(st, "messages_out_per_s")), want[i], 1e-9);
        }
        json_decref(st);
    }
    /* Latency: 30 samples, all in (1 ms, 10 ms]: p50 at the middle, in ms. */
    json_t *st = status_doc(42);
    rates_add_status(r, st);
    json_t *lat = json_object_get(st, "latency_ms");
    assert_int_equal(json_integer_value(json_object_get(lat, "samples")), 30);
    assert_int_equal(json_integer_value(json_object_get(lat, "window_s")), 3);
    assert_float_equal(json_number_value(json_object_get(lat, "p50")), 5.5, 1e-9);
    assert_true(json_is_null(json_object_get(json_object_get(st, "exchange_latency_ms"), "p50")));
    json_decref(st);
    /* The worker is gone: its counters are forgotten. */
    rates_tick(r, NULL);
    st = status_doc(42);
    rates_add_status(r, st);
    assert_true(json_is_null(json_object_get(st, "messages_out_per_s")));
    json_decref(st);
    free(r);
}

static void test_exchange_rates_copy_the_ingest_objects(void **state)
{
    (void)state;
    rates_t *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    proc_t p = {.kind = PROC_INGEST, .pid = 7, .state = PS_RUNNING};
    for (int i = 0; i < 3; i++) {
        p.status = json_pack("{s:{s:{s:i}}}", "exchanges", "upbit", "messages", 100 + 50 * i);
        rates_tick(r, &p);
        json_decref(p.status);
    }
    json_t *st = status_doc(1), *ex = json_object_get(json_object_get(st, "exchanges"), "upbit");
    json_incref(ex); /* as if the ingest worker's status still held it */
    rates_add_status(r, st);
    json_t *cp = json_object_get(json_object_get(st, "exchanges"), "upbit");
    assert_float_equal(json_number_value(json_object_get(cp, "messages_per_s")), 50.0, 1e-9);
    assert_null(json_object_get(ex, "messages_per_s")); /* the original is untouched */
    json_decref(ex);
    json_decref(st);
    free(r);
}

UNIT_MAIN(cmocka_unit_test(test_quantile_linear_within_bucket),
          cmocka_unit_test(test_rates_over_window_and_reset),
          cmocka_unit_test(test_exchange_rates_copy_the_ingest_objects))
