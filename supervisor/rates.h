/* Rates and latency for /status (rates.c). Workers send cumulative counters
 * (metrics snapshots, ingest status) every stats_interval_ms. Once a second
 * rates_tick adds up each tracked counter's increase and samples it into a
 * ring; the status reports the increase over the last RATE_WINDOW seconds:
 * messages per second in and out, per exchange, and the latency percentiles
 * from the fanout histograms' bucket increases. */
#ifndef RATES_H
#define RATES_H
#include <jansson.h>
#include <stdint.h>

#include "procs.h"

#define RATE_WINDOW 5
#define RATE_SLOTS (RATE_WINDOW + 1)
#define RATE_MAX 512
#define LAT_MAX_BUCKETS 32
#define LAT_KINDS 2

typedef struct {
    char key[48];
    double last; /* last raw value */
    double acc;  /* increase since tracked (a counter reset counts from 0) */
    double ring[RATE_SLOTS];
    uint64_t first_tick, seen_tick;
} rate_ctr_t;

typedef struct {
    rate_ctr_t ctrs[RATE_MAX];
    int n;
    uint64_t tick;
    /* 0: ingest receive -> fanout (recv_ts), 1: exchange timestamp -> fanout (ts) */
    double lat_bounds[LAT_KINDS][LAT_MAX_BUCKETS];
    int lat_nb[LAT_KINDS];
} rates_t;

/* One second passed: sample every live worker of the list. */
void rates_tick(rates_t *r, const proc_t *list);
/* Adds to a /status document (rates.c lists the fields): per worker
 * messages_out_per_s and messages_in_per_s, per exchange messages_per_s,
 * then messages_out_per_s, latency_ms and exchange_latency_ms. */
void rates_add_status(const rates_t *r, json_t *st);
/* Like Prometheus' histogram_quantile: linear within the bucket. counts has
 * nb + 1 entries (the last is +Inf). */
double rates_bucket_quantile(double q, const double *counts, const double *bounds, int nb, double total);

#endif
