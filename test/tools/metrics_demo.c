/* metrics_demo: builds two worker-like registries (counters, gauges and
 * histograms with labels), merges their snapshots into a fresh registry as
 * the supervisor does (sum plus per-worker series) and prints the rendered
 * Prometheus text. `build/tools/metrics_demo | promtool check metrics`. */
#include <stdio.h>

#include "metrics.h"

static metrics_registry_t *fake_worker(int id)
{
    metrics_registry_t *r = metrics_registry_new();
    metric_t *msgs = metrics_reg_family(r, METRIC_COUNTER, "exchange_messages_total",
                                        "Messages received from exchanges.", NULL, 0);
    metric_add(metric_labels(msgs, "exchange=\"upbit\",type=\"%s\"", "ticker"), 100.0 * id);
    metric_add(metric_labels(msgs, "exchange=\"binance\",type=\"%s\"", "trade"), 7.0 * id);
    metric_t *clients =
        metrics_reg_family(r, METRIC_GAUGE, "exchange_clients", "Connected WebSocket clients.", NULL, 0);
    metric_set(clients, 10 + id);
    metric_t *lat = metrics_reg_family(r, METRIC_HISTOGRAM, "exchange_fanout_latency_seconds",
                                       "Kafka to client write latency.", NULL, 0);
    for (int i = 0; i < 50; i++)
        metric_observe(metric_labels(lat, "source=\"kafka\""), 0.0004 * (i + id));
    metrics_reg_family(r, METRIC_COUNTER, "exchange_client_drops_total", "Clients dropped for a full queue.",
                       NULL, 0);
    return r;
}

int main(void)
{
    metrics_registry_t *sum = metrics_registry_new();
    for (int id = 1; id <= 2; id++) {
        metrics_registry_t *w = fake_worker(id);
        json_t *snap = metrics_snapshot(w);
        char extra[32];
        snprintf(extra, sizeof extra, "worker=\"%d\"", id);
        if (metrics_merge(sum, snap, NULL) < 0 || metrics_merge(sum, snap, extra) < 0) {
            fprintf(stderr, "metrics_demo: merge failed\n");
            return 1;
        }
        json_decref(snap);
        metrics_registry_free(w);
    }
    buf_t out;
    buf_init(&out);
    if (metrics_render(sum, &out) < 0) {
        fprintf(stderr, "metrics_demo: render failed\n");
        return 1;
    }
    fwrite(out.data, 1, out.len, stdout);
    buf_free(&out);
    metrics_registry_free(sum);
    return 0;
}
