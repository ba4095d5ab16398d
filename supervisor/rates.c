/* Rates and latency percentiles for /status from the workers' cumulative
 * counters (rates.h). Pure bookkeeping: no loop, no globals. */
#include "rates.h"

#include <stdio.h>
#include <string.h>

static const char *const lat_family[LAT_KINDS] = {"exchange_fanout_ingest_latency_seconds",
                                                  "exchange_fanout_exchange_latency_seconds"};

static const rate_ctr_t *rate_find(const rates_t *r, const char *key)
{
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->ctrs[i].key, key) == 0)
            return &r->ctrs[i];
    return NULL;
}

static void rate_feed(rates_t *r, const char *key, double raw)
{
    rate_ctr_t *c = (rate_ctr_t *)rate_find(r, key);
    if (c == NULL) {
        if (r->n >= RATE_MAX || strlen(key) >= sizeof(c->key))
            return;
        c = &r->ctrs[r->n++];
        memset(c, 0, sizeof(*c));
        snprintf(c->key, sizeof(c->key), "%s", key);
        c->last = raw;
        c->first_tick = r->tick;
    } else if (c->seen_tick != r->tick) {
        c->acc += raw >= c->last ? raw - c->last : raw;
        c->last = raw;
    }
    c->seen_tick = r->tick;
}

/* Increase over the window (up to RATE_WINDOW seconds); 0 while too new. */
static double rate_delta(const rates_t *r, const rate_ctr_t *c, double *secs)
{
    uint64_t w = r->tick - c->first_tick;
    if (w > RATE_WINDOW)
        w = RATE_WINDOW;
    *secs = (double)w;
    return w == 0 ? 0 : c->acc - c->ring[(r->tick - w) % RATE_SLOTS];
}

/* Per second rounded to 0.1, or JSON null when the counter is unknown or too new. */
static json_t *rate_json(const rates_t *r, const char *key, double *per_s)
{
    double secs;
    const rate_ctr_t *c = rate_find(r, key);
    if (c == NULL)
        return json_null();
    double d = rate_delta(r, c, &secs);
    if (secs <= 0)
        return json_null();
    if (per_s != NULL)
        *per_s = d / secs;
    return json_real((double)(int64_t)(d / secs * 10.0 + 0.5) / 10.0);
}

static json_t *snap_family(json_t *snap, const char *name)
{
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(snap, "families"), i, f)
    {
        if (json_is_string(json_object_get(f, "name")) &&
            strcmp(json_string_value(json_object_get(f, "name")), name) == 0)
            return f;
    }
    return NULL;
}

static double snap_sum(json_t *snap, const char *name)
{
    json_t *series = json_object_get(snap_family(snap, name), "series");
    double v = 0;
    for (size_t i = 0; i < json_array_size(series); i++)
        v += json_number_value(json_object_get(json_array_get(series, i), "value"));
    return v;
}

static void rate_feed_histogram(rates_t *r, int kind, pid_t pid, json_t *snap)
{
    json_t *f = snap_family(snap, lat_family[kind]);
    json_t *b = json_object_get(f, "buckets");
    size_t nb = json_array_size(b), i, j;
    char key[48];
    if (f == NULL || nb == 0 || nb > LAT_MAX_BUCKETS - 1)
        return;
    r->lat_nb[kind] = (int)nb;
    for (i = 0; i < nb; i++)
        r->lat_bounds[kind][i] = json_number_value(json_array_get(b, i));
    for (i = 0; i <= nb; i++) {
        json_t *series = json_object_get(f, "series");
        double v = 0;
        for (j = 0; j < json_array_size(series); j++)
            v += json_number_value(json_array_get(json_object_get(json_array_get(series, j), "counts"), i));
        snprintf(key, sizeof(key), "lat%d:%d:%zu", kind, (int)pid, i);
        rate_feed(r, key, v);
    }
}

void rates_tick(rates_t *r, const proc_t *list)
{
    char key[48];
    r->tick++;
    for (const proc_t *p = list; p != NULL; p = p->next) {
        if (p->state == PS_EXITED)
            continue;
        if (p->kind == PROC_FANOUT && p->metrics != NULL) {
            snprintf(key, sizeof(key), "out:%d", (int)p->pid);
            rate_feed(r, key, snap_sum(p->metrics, "exchange_fanout_messages_sent_total"));
            snprintf(key, sizeof(key), "in:%d", (int)p->pid);
            rate_feed(r, key, snap_sum(p->metrics, "exchange_fanout_messages_received_total"));
            for (int k = 0; k < LAT_KINDS; k++)
                rate_feed_histogram(r, k, p->pid, p->metrics);
        } else if (p->kind == PROC_INGEST && p->status != NULL) {
            const char *name;
            json_t *e;
            json_object_foreach(json_object_get(p->status, "exchanges"), name, e)
            {
                snprintf(key, sizeof(key), "ex:%s", name);
                rate_feed(r, key, json_number_value(json_object_get(e, "messages")));
            }
        }
    }
    /* Forget what is gone (exited workers, removed exchanges); ring the rest. */
    for (int i = 0; i < r->n;) {
        if (r->ctrs[i].seen_tick != r->tick) {
            r->ctrs[i] = r->ctrs[--r->n];
            continue;
        }
        r->ctrs[i].ring[r->tick % RATE_SLOTS] = r->ctrs[i].acc;
        i++;
    }
}

double rates_bucket_quantile(double q, const double *counts, const double *bounds, int nb, double total)
{
    double rank = q * total, cum = 0;
    for (int i = 0; i <= nb; i++) {
        if (counts[i] > 0 && cum + counts[i] >= rank) {
            if (i == nb)
                return bounds[nb - 1];
            double lo = i > 0 ? bounds[i - 1] : 0, hi = bounds[i];
            return lo + (hi - lo) * (rank - cum) / counts[i];
        }
        cum += counts[i];
    }
    return nb > 0 ? bounds[nb - 1] : 0;
}

static json_t *ms_json(double seconds)
{
    return json_real((double)(int64_t)(seconds * 1000.0 * 100.0 + 0.5) / 100.0);
}

/* {"p50": ms, "p99": ms, "samples": n, "window_s": s} over the fanouts. */
static json_t *latency_json(const rates_t *r, int kind)
{
    double counts[LAT_MAX_BUCKETS + 1] = {0}, total = 0, window = 0;
    int nb = r->lat_nb[kind];
    for (int i = 0; i < r->n; i++) {
        int k, b;
        double secs;
        if (sscanf(r->ctrs[i].key, "lat%d:%*d:%d", &k, &b) != 2 || k != kind || b < 0 || b > nb)
            continue;
        double d = rate_delta(r, &r->ctrs[i], &secs);
        counts[b] += d;
        total += d;
        if (secs > window)
            window = secs;
    }
    json_t *o = json_object();
    const double *bounds = r->lat_bounds[kind];
    json_object_set_new(
        o, "p50", total > 0 ? ms_json(rates_bucket_quantile(0.5, counts, bounds, nb, total)) : json_null());
    json_object_set_new(
        o, "p99", total > 0 ? ms_json(rates_bucket_quantile(0.99, counts, bounds, nb, total)) : json_null());
    json_object_set_new(o, "samples", json_integer((json_int_t)(total + 0.5)));
    json_object_set_new(o, "window_s", json_integer((json_int_t)window));
    return o;
}

void rates_add_status(const rates_t *r, json_t *st)
{
    char key[48];
    double out = 0;
    int have_out = 0;
    size_t i;
    json_t *w;
    json_array_foreach(json_object_get(st, "workers"), i, w)
    {
        if (strcmp(json_string_value(json_object_get(w, "kind")), "fanout") != 0)
            continue;
        int pid = (int)json_integer_value(json_object_get(w, "pid"));
        double per_s = -1;
        snprintf(key, sizeof(key), "out:%d", pid);
        json_object_set_new(w, "messages_out_per_s", rate_json(r, key, &per_s));
        if (per_s >= 0) {
            out += per_s;
            have_out = 1;
        }
        snprintf(key, sizeof(key), "in:%d", pid);
        json_object_set_new(w, "messages_in_per_s", rate_json(r, key, NULL));
    }
    const char *name;
    json_t *e, *exchanges = json_object_get(st, "exchanges");
    json_object_foreach(exchanges, name, e)
    {
        /* The values are the ingest worker's own objects: copy, then add. */
        json_t *cp = json_copy(e);
        snprintf(key, sizeof(key), "ex:%s", name);
        json_object_set_new(cp, "messages_per_s", rate_json(r, key, NULL));
        json_object_set_new(exchanges, name, cp);
    }
    json_object_set_new(st, "messages_out_per_s",
                        have_out ? json_real((double)(int64_t)(out * 10.0 + 0.5) / 10.0) : json_null());
    json_object_set_new(st, "latency_ms", latency_json(r, 0));
    json_object_set_new(st, "exchange_latency_ms", latency_json(r, 1));
}
