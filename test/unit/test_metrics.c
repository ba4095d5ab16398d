/* Unit tests for the metrics registry: exact Prometheus text for a small
 * registry, label escaping, snapshot/merge sums with per-worker labels, and
 * `promtool check metrics` on the rendered text when promtool is installed. */
#include "unit.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "metrics.h"

/* Renders r into out (initialized here; the caller frees it). */
static void render(metrics_registry_t *r, buf_t *out)
{
    buf_init(out);
    assert_int_equal(metrics_render(r, out), 0);
}

/* A fresh registry (*state) for the test, freed after it. */
static int registry_setup(void **state)
{
    *state = metrics_registry_new();
    return *state == NULL ? -1 : 0;
}

static int registry_teardown(void **state)
{
    metrics_registry_free(*state);
    return 0;
}

static void test_render_exact(void **state)
{
    metrics_registry_t *r = *state;
    metric_t *c =
        metrics_reg_family(r, METRIC_COUNTER, "exchange_messages_total", "Messages received.", NULL, 0);
    metric_t *g = metrics_reg_family(r, METRIC_GAUGE, "exchange_clients", "Connected clients.", NULL, 0);
    metric_t *idle =
        metrics_reg_family(r, METRIC_GAUGE, "exchange_a_idle", "Never touched\\ with\nnewline.", NULL, 0);
    const double bk[] = {0.1, 1, 2.5};
    metric_t *h = metrics_reg_family(r, METRIC_HISTOGRAM, "exchange_latency_seconds", "Latency.", bk, 3);
    (void)idle;
    metric_t *up = metric_labels(c, "exchange=\"upbit\"");
    metric_t *bn = metric_labels(c, "exchange=\"%s\"", "binance");
    assert_ptr_equal(metric_labels(c, "exchange=\"upbit\""), up);
    metric_inc(up);
    metric_add(up, 2);
    metric_add(bn, 0.5);
    metric_set(g, 7);
    metric_observe(h, 0.05);
    metric_observe(h, 0.1);
    metric_observe(h, 2);
    metric_observe(h, 100);
    assert_true(metric_value(up) == 3);
    assert_true(metric_value(h) == 4);

    buf_t out;
    render(r, &out);
    const char *expect = "# HELP exchange_a_idle Never touched\\\\ with\\nnewline.\n"
                         "# TYPE exchange_a_idle gauge\n"
                         "exchange_a_idle 0\n"
                         "# HELP exchange_clients Connected clients.\n"
                         "# TYPE exchange_clients gauge\n"
                         "exchange_clients 7\n"
                         "# HELP exchange_latency_seconds Latency.\n"
                         "# TYPE exchange_latency_seconds histogram\n"
                         "exchange_latency_seconds_bucket{le=\"0.1\"} 2\n"
                         "exchange_latency_seconds_bucket{le=\"1\"} 2\n"
                         "exchange_latency_seconds_bucket{le=\"2.5\"} 3\n"
                         "exchange_latency_seconds_bucket{le=\"+Inf\"} 4\n"
                         "exchange_latency_seconds_sum 102.15\n"
                         "exchange_latency_seconds_count 4\n"
                         "# HELP exchange_messages_total Messages received.\n"
                         "# TYPE exchange_messages_total counter\n"
                         "exchange_messages_total{exchange=\"binance\"} 0.5\n"
                         "exchange_messages_total{exchange=\"upbit\"} 3\n";
    assert_string_equal(out.data, expect);
    buf_free(&out);
}

static void test_labels_escaping_and_histogram_labels(void **state)
{
    metrics_registry_t *r = *state;
    metric_t *c = metrics_reg_family(r, METRIC_COUNTER, "x_total", "X.", NULL, 0);
    metric_t *s = metric_labels(c, "reason=\"%s\",code=%d", "bad \"quote\" \\ and\nnl", 7);
    metric_inc(s);
    /* same raw text finds the same series through normalization */
    assert_ptr_equal(metric_labels(c, "reason=\"%s\",code=%d", "bad \"quote\" \\ and\nnl", 7), s);
    assert_ptr_equal(metrics_find(r, "x_total", "reason=\"bad \\\"quote\\\" \\\\ and\\nnl\",code=\"7\""), s);
    const double bk[] = {1};
    metric_t *h = metrics_reg_family(r, METRIC_HISTOGRAM, "y_seconds", "Y.", bk, 1);
    metric_observe(metric_labels(h, "op=\"a\""), 0.5);
    buf_t out;
    render(r, &out);
    assert_string_equal(out.data, "# HELP x_total X.\n"
                                  "# TYPE x_total counter\n"
                                  "x_total{reason=\"bad \\\"quote\\\" \\\\ and\\nnl\",code=\"7\"} 1\n"
                                  "# HELP y_seconds Y.\n"
                                  "# TYPE y_seconds histogram\n"
                                  "y_seconds_bucket{op=\"a\",le=\"1\"} 1\n"
                                  "y_seconds_bucket{op=\"a\",le=\"+Inf\"} 1\n"
                                  "y_seconds_sum{op=\"a\"} 0.5\n"
                                  "y_seconds_count{op=\"a\"} 1\n");
    buf_free(&out);
}

static void test_many_series_lookup(void **state)
{
    metrics_registry_t *r = *state;
    metric_t *c = metrics_reg_family(r, METRIC_COUNTER, "n_total", "N.", NULL, 0);
    metric_t *ser[2000];
    for (int i = 0; i < 2000; i++) {
        ser[i] = metric_labels(c, "ch=\"c%d\"", i);
        metric_add(ser[i], i);
    }
    for (int i = 0; i < 2000; i++) {
        assert_ptr_equal(metric_labels(c, "ch=\"c%d\"", i), ser[i]);
        assert_true(metric_value(ser[i]) == i);
    }
    /* re-registering returns the same family */
    assert_ptr_equal(metrics_reg_family(r, METRIC_COUNTER, "n_total", "N.", NULL, 0), c);
}

static metrics_registry_t *worker_registry(double msgs, double clients, int nobs)
{
    metrics_registry_t *r = metrics_registry_new();
    metric_t *c = metrics_reg_family(r, METRIC_COUNTER, "exchange_messages_total", "Msgs.", NULL, 0);
    metric_add(metric_labels(c, "exchange=\"upbit\""), msgs);
    metric_set(metrics_reg_family(r, METRIC_GAUGE, "exchange_clients", "Clients.", NULL, 0), clients);
    metric_t *h = metrics_reg_family(r, METRIC_HISTOGRAM, "exchange_latency_seconds", "Lat.", NULL, 0);
    for (int i = 0; i < nobs; i++)
        metric_observe(h, 0.003);
    metrics_reg_family(r, METRIC_COUNTER, "exchange_errors_total", "Errors.", NULL, 0);
    return r;
}

static void test_snapshot_merge(void **state)
{
    (void)state;
    metrics_registry_t *w1 = worker_registry(10, 3, 2);
    metrics_registry_t *w2 = worker_registry(5, 4, 1);
    json_t *s1 = metrics_snapshot(w1);
    json_t *s2 = metrics_snapshot(w2);
    assert_non_null(s1);
    /* snapshots survive a JSON round trip (they travel over IPC) */
    char *txt = json_dumps(s2, JSON_COMPACT);
    json_decref(s2);
    json_error_t err;
    s2 = json_loads(txt, 0, &err);
    free(txt);
    assert_non_null(s2);

    metrics_registry_t *sum = metrics_registry_new();
    assert_int_equal(metrics_merge(sum, s1, NULL), 0);
    assert_int_equal(metrics_merge(sum, s2, NULL), 0);
    assert_int_equal(metrics_merge(sum, s1, "worker=\"1\""), 0);
    assert_int_equal(metrics_merge(sum, s2, "worker=\"2\""), 0);

    assert_true(metric_value(metrics_find(sum, "exchange_messages_total", "exchange=\"upbit\"")) == 15);
    assert_true(
        metric_value(metrics_find(sum, "exchange_messages_total", "exchange=\"upbit\",worker=\"2\"")) == 5);
    assert_true(metric_value(metrics_find(sum, "exchange_clients", NULL)) == 7);
    assert_true(metric_value(metrics_find(sum, "exchange_clients", "worker=\"1\"")) == 3);
    assert_true(metric_value(metrics_find(sum, "exchange_latency_seconds", NULL)) == 3);

    buf_t out;
    render(sum, &out);
    assert_contains_all(out.data, "exchange_clients 7\n", "exchange_clients{worker=\"1\"} 3\n",
                        "exchange_clients{worker=\"2\"} 4\n",
                        "exchange_latency_seconds_bucket{le=\"0.0025\"} 0\n",
                        "exchange_latency_seconds_bucket{le=\"0.005\"} 3\n",
                        "exchange_latency_seconds_bucket{le=\"+Inf\"} 3\n",
                        "exchange_latency_seconds_bucket{worker=\"1\",le=\"10\"} 2\n",
                        "exchange_latency_seconds_count 3\n", "exchange_latency_seconds_sum 0.00900",
                        /* never-touched family is still visible */
                        "# TYPE exchange_errors_total counter\nexchange_errors_total 0\n");
    buf_free(&out);

    /* malformed input and type conflicts are reported */
    json_t *bad = json_pack("{s:[{s:s,s:s,s:s,s:[]}]}", "families", "name", "exchange_clients", "help", "",
                            "type", "counter", "series");
    assert_int_equal(metrics_merge(sum, bad, NULL), -EINVAL);
    json_decref(bad);
    json_t *empty = json_object();
    assert_int_equal(metrics_merge(sum, empty, NULL), -EINVAL);
    json_decref(empty);

    json_decref(s1);
    json_decref(s2);
    metrics_registry_free(w1);
    metrics_registry_free(w2);
    metrics_registry_free(sum);
}

static void test_default_registry(void **state)
{
    (void)state;
    metric_t *c = metric_counter("exchange_test_total", "Test.");
    assert_ptr_equal(metric_counter("exchange_test_total", "Test."), c);
    metric_inc(c);
    metric_t *g = metric_gauge("exchange_test_gauge", "Test gauge.");
    metric_set(g, -2.5);
    metric_t *h = metric_histogram("exchange_test_seconds", "Test hist.", NULL, 0);
    metric_observe(h, 0.0005); /* le is inclusive */
    buf_t out;
    render(metrics_default(), &out);
    assert_contains_all(out.data, "exchange_test_total 1\n", "exchange_test_gauge -2.5\n",
                        "exchange_test_seconds_bucket{le=\"0.0005\"} 1\n",
                        "exchange_test_seconds_bucket{le=\"10\"} 1\n");
    buf_free(&out);
    /* NULL-safe updates */
    metric_inc(NULL);
    metric_observe(NULL, 1);
    assert_null(metric_labels(NULL, "a=\"b\""));
}

/* Real format check: pipe the rendered text of a merged registry through
 * `promtool check metrics`, which parses and lints exposition text. */
static void test_promtool(void **state)
{
    (void)state;
    if (access("/usr/bin/promtool", X_OK) != 0) {
        print_message("promtool not installed; skipped\n");
        skip();
    }
    metrics_registry_t *w1 = worker_registry(10, 3, 2);
    metric_t *c = metrics_reg_family(w1, METRIC_COUNTER, "exchange_drops_total",
                                     "Dropped \"frames\" \\ per reason.", NULL, 0);
    metric_inc(metric_labels(c, "reason=\"%s\"", "queue \"full\" \\ x\ny"));
    json_t *s1 = metrics_snapshot(w1);
    metrics_registry_t *sum = metrics_registry_new();
    assert_int_equal(metrics_merge(sum, s1, NULL), 0);
    assert_int_equal(metrics_merge(sum, s1, "worker=\"1\""), 0);
    buf_t out;
    render(sum, &out);

    char path[] = "/tmp/test_metrics_promtool_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "/usr/bin/promtool check metrics > %s 2>&1", path);
    FILE *p = popen(cmd, "w");
    assert_non_null(p);
    assert_int_equal(fwrite(out.data, 1, out.len, p), out.len);
    int st = pclose(p);
    FILE *f = fopen(path, "r");
    char msg[4096] = "";
    if (f) {
        size_t n = fread(msg, 1, sizeof msg - 1, f);
        msg[n] = '\0';
        fclose(f);
    }
    unlink(path);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        print_error("promtool said:\n%s\ninput:\n%s\n", msg, out.data);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    buf_free(&out);
    json_decref(s1);
    metrics_registry_free(w1);
    metrics_registry_free(sum);
}

UNIT_MAIN(cmocka_unit_test_setup_teardown(test_render_exact, registry_setup, registry_teardown),
          cmocka_unit_test_setup_teardown(test_labels_escaping_and_histogram_labels, registry_setup,
                                          registry_teardown),
          cmocka_unit_test_setup_teardown(test_many_series_lookup, registry_setup, registry_teardown),
          cmocka_unit_test(test_snapshot_merge), cmocka_unit_test(test_default_registry),
          cmocka_unit_test(test_promtool))
