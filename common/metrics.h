/* Metrics registry: counters, gauges and histograms with labels, rendered as
 * Prometheus text. Workers snapshot their registry to JSON and send it to the
 * supervisor over IPC; the supervisor merges snapshots (sum per series) into a
 * fresh registry and renders that. Single-threaded: call from the loop thread. */
#ifndef METRICS_H
#define METRICS_H
#include <jansson.h>
#include "buf.h"

typedef enum { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM } metric_type_t;
typedef struct metrics_registry_s metrics_registry_t;
typedef struct metric_s metric_t; /* one series (a family's unlabelled series or a labelled child) */

metrics_registry_t *metrics_registry_new(void);
void metrics_registry_free(metrics_registry_t *r);
metrics_registry_t *metrics_default(void); /* the process-wide registry */

/* Register (or find) a family in the default registry. Names are prefixed by
 * the caller (exchange_...). Counters should end in _total. The returned
 * pointer is the family's unlabelled series. */
metric_t *metric_counter(const char *name, const char *help);
metric_t *metric_gauge(const char *name, const char *help);
/* buckets: upper bounds ascending, without +Inf. NULL/0 = default latency
 * buckets in seconds (0.0005 .. 10). */
metric_t *metric_histogram(const char *name, const char *help, const double *buckets, int n);
/* Same in a given registry. */
metric_t *metrics_reg_family(metrics_registry_t *r, metric_type_t t, const char *name, const char *help,
                             const double *buckets, int n);

/* Child series with labels, created on first use; labels_fmt formats to
 * Prometheus label pairs without braces: `exchange="upbit",reason="stale"`.
 * Cache the result on hot paths. */
metric_t *metric_labels(metric_t *family, const char *labels_fmt, ...) __attribute__((format(printf, 2, 3)));

void metric_inc(metric_t *m);
void metric_add(metric_t *m, double v);
void metric_set(metric_t *m, double v);
void metric_observe(metric_t *m, double v);
double metric_value(const metric_t *m); /* counter/gauge value; histogram count */

/* Prometheus text exposition format (version 0.0.4) of a registry. */
int metrics_render(metrics_registry_t *r, buf_t *out);
/* Snapshot to JSON (for IPC) and merge a snapshot into r (values added;
 * extra_labels, if non-NULL, e.g. `worker="3"`, makes per-worker series). */
json_t *metrics_snapshot(metrics_registry_t *r);
int metrics_merge(metrics_registry_t *r, json_t *snapshot, const char *extra_labels);

/* Look up an existing series (labels in normalized form `k="v",...`; NULL or
 * "" for the unlabelled one); NULL if absent. For tests and status pages. */
metric_t *metrics_find(metrics_registry_t *r, const char *name, const char *labels);
/* Note on metric_labels: label values are raw text (the registry escapes \,
 * " and newline for the exposition format); a quoted value ends at the quote
 * followed by ',' or the end of the string. */

#endif
