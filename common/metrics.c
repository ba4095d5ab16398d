/* Metrics registry: families of counters, gauges and histograms, each with an
 * unlabelled series and labelled children found through a per-family hash
 * table; Prometheus text rendering and the JSON snapshot/merge used to
 * aggregate workers' registries in the supervisor. */
#include "metrics.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct family_s family_t;

struct metric_s {
    family_t *fam;
    char *labels; /* normalized `k="v",...`; "" for the unlabelled series */
    int touched;  /* the unlabelled series is rendered once used */
    double value; /* counter, gauge */
    double sum;   /* histogram */
    uint64_t count;
    uint64_t *counts; /* histogram: nb + 1 (last is +Inf), not cumulative */
};

struct family_s {
    char *name;
    char *help;
    metric_type_t type;
    double *buckets;
    int nb;
    metric_t base;
    metric_t **series; /* labelled children, creation order */
    size_t nseries, capseries;
    metric_t **ht; /* open addressing on labels */
    size_t htcap;
};

struct metrics_registry_s {
    family_t **fams;
    size_t n, cap;
};

static const double default_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                         0.1,    0.25,  0.5,    1,     2.5,  5,     10};

static const char *type_name(metric_type_t t)
{
    switch (t) {
    case METRIC_COUNTER: return "counter";
    case METRIC_GAUGE: return "gauge";
    case METRIC_HISTOGRAM: return "histogram";
    }
    return "untyped";
}

static int type_parse(const char *s, metric_type_t *t)
{
    if (!s)
        return -EINVAL;
    if (strcmp(s, "counter") == 0)
        *t = METRIC_COUNTER;
    else if (strcmp(s, "gauge") == 0)
        *t = METRIC_GAUGE;
    else if (strcmp(s, "histogram") == 0)
        *t = METRIC_HISTOGRAM;
    else
        return -EINVAL;
    return 0;
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

/* ---- series ---------------------------------------------------------- */

static int series_init(metric_t *m, family_t *f, const char *labels)
{
    memset(m, 0, sizeof *m);
    m->fam = f;
    m->labels = strdup(labels);
    if (!m->labels)
        return -ENOMEM;
    if (f->type == METRIC_HISTOGRAM) {
        m->counts = calloc((size_t)f->nb + 1, sizeof *m->counts);
        if (!m->counts) {
            free(m->labels);
            m->labels = NULL;
            return -ENOMEM;
        }
    }
    return 0;
}

static void series_fini(metric_t *m)
{
    free(m->labels);
    free(m->counts);
}

static metric_t *ht_find(const family_t *f, const char *labels)
{
    if (!f->htcap)
        return NULL;
    size_t mask = f->htcap - 1;
    for (size_t i = hash_str(labels) & mask;; i = (i + 1) & mask) {
        metric_t *m = f->ht[i];
        if (!m)
            return NULL;
        if (strcmp(m->labels, labels) == 0)
            return m;
    }
}

static int ht_insert(family_t *f, metric_t *m)
{
    if ((f->nseries + 1) * 2 > f->htcap) {
        size_t ncap = f->htcap ? f->htcap * 2 : 16;
        metric_t **nt = calloc(ncap, sizeof *nt);
        if (!nt)
            return -ENOMEM;
        for (size_t j = 0; j < f->nseries; j++) {
            size_t i = hash_str(f->series[j]->labels) & (ncap - 1);
            while (nt[i])
                i = (i + 1) & (ncap - 1);
            nt[i] = f->series[j];
        }
        free(f->ht);
        f->ht = nt;
        f->htcap = ncap;
    }
    if (f->nseries == f->capseries) {
        size_t ncap = f->capseries ? f->capseries * 2 : 8;
        metric_t **ns = realloc(f->series, ncap * sizeof *ns);
        if (!ns)
            return -ENOMEM;
        f->series = ns;
        f->capseries = ncap;
    }
    size_t i = hash_str(m->labels) & (f->htcap - 1);
    while (f->ht[i])
        i = (i + 1) & (f->htcap - 1);
    f->ht[i] = m;
    f->series[f->nseries++] = m;
    return 0;
}

/* labels must be normalized. */
static metric_t *series_get(family_t *f, const char *labels)
{
    if (!labels[0])
        return &f->base;
    metric_t *m = ht_find(f, labels);
    if (m)
        return m;
    m = malloc(sizeof *m);
    if (!m)
        return NULL;
    if (series_init(m, f, labels) < 0) {
        free(m);
        return NULL;
    }
    if (ht_insert(f, m) < 0) {
        series_fini(m);
        free(m);
        return NULL;
    }
    return m;
}

/* Normalize caller label text `k="v",k2=v2` into `k="v",k2="v2"` with the
 * values escaped for the exposition format (\\, \", \n). Values are taken as
 * raw text: a quoted value ends at the quote followed by ',' or the end. */
static int labels_normalize(const char *raw, buf_t *out)
{
    const char *p = raw;
    int first = 1;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        if (!*p)
            break;
        const char *ks = p;
        while (*p && *p != '=' && *p != ',')
            p++;
        const char *ke = p;
        while (ke > ks && ke[-1] == ' ')
            ke--;
        if (ke == ks) /* no name: skip the piece */
        {
            while (*p && *p != ',')
                p++;
            continue;
        }
        if (!first)
            buf_append(out, ",", 1);
        first = 0;
        buf_append(out, ks, (size_t)(ke - ks));
        buf_append(out, "=\"", 2);
        const char *vs = p, *ve = p;
        if (*p == '=') {
            p++;
            while (*p == ' ')
                p++;
            if (*p == '"') {
                vs = ++p;
                const char *q = NULL;
                for (const char *c = p; *c; c++) {
                    if (*c != '"')
                        continue;
                    const char *a = c + 1;
                    while (*a == ' ')
                        a++;
                    if (*a == ',' || !*a) {
                        q = c;
                        break;
                    }
                }
                if (!q)
                    q = p + strlen(p); /* unterminated: take the rest */
                ve = q;
                p = *q ? q + 1 : q;
            } else {
                vs = p;
                while (*p && *p != ',')
                    p++;
                ve = p;
                while (ve > vs && ve[-1] == ' ')
                    ve--;
            }
        }
        for (const char *c = vs; c < ve; c++) {
            if (*c == '\\')
                buf_append(out, "\\\\", 2);
            else if (*c == '"')
                buf_append(out, "\\\"", 2);
            else if (*c == '\n')
                buf_append(out, "\\n", 2);
            else
                buf_append(out, c, 1);
        }
        buf_append(out, "\"", 1);
        while (*p && *p != ',')
            p++;
    }
    return 0;
}

/* ---- registry ---------------------------------------------------------- */

metrics_registry_t *metrics_registry_new(void)
{
    return calloc(1, sizeof(metrics_registry_t));
}

static void family_free(family_t *f)
{
    for (size_t i = 0; i < f->nseries; i++) {
        series_fini(f->series[i]);
        free(f->series[i]);
    }
    series_fini(&f->base);
    free(f->series);
    free(f->ht);
    free(f->buckets);
    free(f->name);
    free(f->help);
    free(f);
}

void metrics_registry_free(metrics_registry_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        family_free(r->fams[i]);
    free(r->fams);
    free(r);
}

metrics_registry_t *metrics_default(void)
{
    static metrics_registry_t *def;
    if (!def)
        def = metrics_registry_new();
    return def;
}

static family_t *family_find(metrics_registry_t *r, const char *name)
{
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->fams[i]->name, name) == 0)
            return r->fams[i];
    return NULL;
}

static family_t *family_get(metrics_registry_t *r, metric_type_t t, const char *name, const char *help,
                            const double *buckets, int n)
{
    if (!r || !name)
        return NULL;
    family_t *f = family_find(r, name);
    if (f)
        return f;
    if (r->n == r->cap) {
        size_t ncap = r->cap ? r->cap * 2 : 32;
        family_t **nf = realloc(r->fams, ncap * sizeof *nf);
        if (!nf)
            return NULL;
        r->fams = nf;
        r->cap = ncap;
    }
    f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->type = t;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    if (t == METRIC_HISTOGRAM) {
        if (!buckets || n <= 0) {
            buckets = default_buckets;
            n = (int)(sizeof default_buckets / sizeof default_buckets[0]);
        }
        f->buckets = malloc((size_t)n * sizeof *f->buckets);
        if (f->buckets)
            memcpy(f->buckets, buckets, (size_t)n * sizeof *f->buckets);
        f->nb = n;
    }
    if (!f->name || !f->help || (t == METRIC_HISTOGRAM && !f->buckets) || series_init(&f->base, f, "") < 0) {
        free(f->name);
        free(f->help);
        free(f->buckets);
        free(f);
        return NULL;
    }
    r->fams[r->n++] = f;
    return f;
}

metric_t *metrics_reg_family(metrics_registry_t *r, metric_type_t t, const char *name, const char *help,
                             const double *buckets, int n)
{
    family_t *f = family_get(r, t, name, help, buckets, n);
    return f ? &f->base : NULL;
}

metric_t *metric_counter(const char *name, const char *help)
{
    return metrics_reg_family(metrics_default(), METRIC_COUNTER, name, help, NULL, 0);
}

metric_t *metric_gauge(const char *name, const char *help)
{
    return metrics_reg_family(metrics_default(), METRIC_GAUGE, name, help, NULL, 0);
}

metric_t *metric_histogram(const char *name, const char *help, const double *buckets, int n)
{
    return metrics_reg_family(metrics_default(), METRIC_HISTOGRAM, name, help, buckets, n);
}

metric_t *metric_labels(metric_t *family, const char *labels_fmt, ...)
{
    if (!family)
        return NULL;
    family_t *f = family->fam;
    char tmp[512];
    char *raw = tmp;
    va_list ap;
    va_start(ap, labels_fmt);
    int n = vsnprintf(tmp, sizeof tmp, labels_fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    if ((size_t)n >= sizeof tmp) {
        raw = malloc((size_t)n + 1);
        if (!raw)
            return NULL;
        va_start(ap, labels_fmt);
        vsnprintf(raw, (size_t)n + 1, labels_fmt, ap);
        va_end(ap);
    }
    /* Fast path: already-normal label text (the common case) hits directly. */
    metric_t *m = !raw[0] ? &f->base : strchr(raw, '\\') ? NULL : ht_find(f, raw);
    if (!m) {
        buf_t norm;
        buf_init(&norm);
        labels_normalize(raw, &norm);
        m = series_get(f, norm.data ? norm.data : "");
        buf_free(&norm);
    }
    if (raw != tmp)
        free(raw);
    return m;
}

metric_t *metrics_find(metrics_registry_t *r, const char *name, const char *labels)
{
    family_t *f = r ? family_find(r, name) : NULL;
    if (!f)
        return NULL;
    if (!labels || !labels[0])
        return &f->base;
    return ht_find(f, labels);
}

/* ---- updates ----------------------------------------------------------- */

void metric_inc(metric_t *m)
{
    metric_add(m, 1);
}

void metric_add(metric_t *m, double v)
{
    if (!m || m->fam->type == METRIC_HISTOGRAM)
        return;
    m->value += v;
    m->touched = 1;
}

void metric_set(metric_t *m, double v)
{
    if (!m || m->fam->type == METRIC_HISTOGRAM)
        return;
    m->value = v;
    m->touched = 1;
}

void metric_observe(metric_t *m, double v)
{
    if (!m)
        return;
    family_t *f = m->fam;
    if (f->type != METRIC_HISTOGRAM) {
        metric_add(m, v);
        return;
    }
    int i = 0;
    while (i < f->nb && !(v <= f->buckets[i]))
        i++;
    m->counts[i]++;
    m->count++;
    m->sum += v;
    m->touched = 1;
}

double metric_value(const metric_t *m)
{
    if (!m)
        return 0;
    return m->fam->type == METRIC_HISTOGRAM ? (double)m->count : m->value;
}

/* ---- rendering --------------------------------------------------------- */

static void fmt_num(char *out, size_t n, double v)
{
    if (isnan(v)) {
        snprintf(out, n, "NaN");
    } else if (isinf(v)) {
        snprintf(out, n, v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(out, n, "%.15g", v);
        if (strtod(out, NULL) != v)
            snprintf(out, n, "%.17g", v);
    }
}

static int cmp_family(const void *a, const void *b)
{
    return strcmp((*(family_t *const *)a)->name, (*(family_t *const *)b)->name);
}

static int cmp_series(const void *a, const void *b)
{
    return strcmp((*(metric_t *const *)a)->labels, (*(metric_t *const *)b)->labels);
}

static void render_line(buf_t *out, const char *name, const char *suffix, const char *labels,
                        const char *extra, double v)
{
    char num[40];
    fmt_num(num, sizeof num, v);
    buf_puts(out, name);
    buf_puts(out, suffix);
    if (labels[0] || extra) {
        buf_append(out, "{", 1);
        buf_puts(out, labels);
        if (extra) {
            if (labels[0])
                buf_append(out, ",", 1);
            buf_puts(out, extra);
        }
        buf_append(out, "}", 1);
    }
    buf_printf(out, " %s\n", num);
}

static void render_series(buf_t *out, const family_t *f, const metric_t *m)
{
    if (f->type != METRIC_HISTOGRAM) {
        render_line(out, f->name, "", m->labels, NULL, m->value);
        return;
    }
    uint64_t cum = 0;
    char le[64], num[40];
    for (int i = 0; i <= f->nb; i++) {
        cum += m->counts[i];
        if (i < f->nb) {
            fmt_num(num, sizeof num, f->buckets[i]);
            snprintf(le, sizeof le, "le=\"%s\"", num);
        } else {
            snprintf(le, sizeof le, "le=\"+Inf\"");
        }
        render_line(out, f->name, "_bucket", m->labels, le, (double)cum);
    }
    render_line(out, f->name, "_sum", m->labels, NULL, m->sum);
    render_line(out, f->name, "_count", m->labels, NULL, (double)m->count);
}

int metrics_render(metrics_registry_t *r, buf_t *out)
{
    if (!r)
        return -EINVAL;
    size_t before = out->len;
    family_t **fams = NULL;
    metric_t **ser = NULL;
    size_t sercap = 0;
    int rc = -ENOMEM;
    if (r->n) {
        fams = malloc(r->n * sizeof *fams);
        if (!fams)
            goto fail;
        memcpy(fams, r->fams, r->n * sizeof *fams);
        qsort(fams, r->n, sizeof *fams, cmp_family);
    }
    for (size_t i = 0; i < r->n; i++) {
        family_t *f = fams[i];
        buf_printf(out, "# HELP %s ", f->name);
        for (const char *c = f->help; *c; c++) {
            if (*c == '\\')
                buf_append(out, "\\\\", 2);
            else if (*c == '\n')
                buf_append(out, "\\n", 2);
            else
                buf_append(out, c, 1);
        }
        buf_printf(out, "\n# TYPE %s %s\n", f->name, type_name(f->type));
        if (f->base.touched || f->nseries == 0)
            render_series(out, f, &f->base);
        if (f->nseries > sercap) {
            free(ser);
            sercap = f->nseries;
            ser = malloc(sercap * sizeof *ser);
            if (!ser)
                goto fail;
        }
        if (f->nseries) {
            memcpy(ser, f->series, f->nseries * sizeof *ser);
            qsort(ser, f->nseries, sizeof *ser, cmp_series);
        }
        for (size_t j = 0; j < f->nseries; j++)
            render_series(out, f, ser[j]);
    }
    rc = 0;
fail:
    free(ser);
    free(fams);
    if (rc < 0) {
        out->len = before;
        if (out->cap)
            out->data[before] = '\0';
    }
    return rc;
}

/* ---- snapshot / merge -------------------------------------------------- */

static json_t *series_json(const family_t *f, const metric_t *m)
{
    json_t *s = json_object();
    json_object_set_new(s, "labels", json_string(m->labels));
    if (f->type == METRIC_HISTOGRAM) {
        json_t *c = json_array();
        for (int i = 0; i <= f->nb; i++)
            json_array_append_new(c, json_integer((json_int_t)m->counts[i]));
        json_object_set_new(s, "counts", c);
        json_object_set_new(s, "sum", json_real(m->sum));
        json_object_set_new(s, "count", json_integer((json_int_t)m->count));
    } else {
        json_object_set_new(s, "value", json_real(m->value));
    }
    return s;
}

json_t *metrics_snapshot(metrics_registry_t *r)
{
    json_t *root = json_object();
    json_t *fams = json_array();
    if (!root || !fams) {
        json_decref(root);
        json_decref(fams);
        return NULL;
    }
    for (size_t i = 0; r && i < r->n; i++) {
        family_t *f = r->fams[i];
        json_t *jf = json_object();
        json_object_set_new(jf, "name", json_string(f->name));
        json_object_set_new(jf, "help", json_string(f->help));
        json_object_set_new(jf, "type", json_string(type_name(f->type)));
        if (f->type == METRIC_HISTOGRAM) {
            json_t *b = json_array();
            for (int k = 0; k < f->nb; k++)
                json_array_append_new(b, json_real(f->buckets[k]));
            json_object_set_new(jf, "buckets", b);
        }
        json_t *ser = json_array();
        /* An untouched unlabelled series is left out; the merged family
         * still renders a 0 line while it has no series at all. */
        if (f->base.touched)
            json_array_append_new(ser, series_json(f, &f->base));
        for (size_t j = 0; j < f->nseries; j++)
            json_array_append_new(ser, series_json(f, f->series[j]));
        json_object_set_new(jf, "series", ser);
        json_array_append_new(fams, jf);
    }
    json_object_set_new(root, "families", fams);
    return root;
}

static int merge_series(family_t *f, json_t *js, const char *extra)
{
    const char *labels = json_string_value(json_object_get(js, "labels"));
    if (!labels)
        labels = "";
    buf_t lb;
    buf_init(&lb);
    buf_puts(&lb, labels);
    if (extra && extra[0]) {
        if (lb.len)
            buf_append(&lb, ",", 1);
        buf_puts(&lb, extra);
    }
    metric_t *m = series_get(f, lb.data ? lb.data : "");
    buf_free(&lb);
    if (!m)
        return -ENOMEM;
    if (f->type == METRIC_HISTOGRAM) {
        json_t *c = json_object_get(js, "counts");
        if (!json_is_array(c) || json_array_size(c) != (size_t)f->nb + 1)
            return -EINVAL;
        for (int i = 0; i <= f->nb; i++)
            m->counts[i] += (uint64_t)json_integer_value(json_array_get(c, (size_t)i));
        m->sum += json_number_value(json_object_get(js, "sum"));
        m->count += (uint64_t)json_integer_value(json_object_get(js, "count"));
    } else {
        m->value += json_number_value(json_object_get(js, "value"));
    }
    m->touched = 1;
    return 0;
}

int metrics_merge(metrics_registry_t *r, json_t *snapshot, const char *extra_labels)
{
    json_t *fams = json_object_get(snapshot, "families");
    if (!r || !json_is_array(fams))
        return -EINVAL;
    int rc = 0;
    buf_t extra;
    buf_init(&extra);
    if (extra_labels && extra_labels[0])
        labels_normalize(extra_labels, &extra);
    size_t i;
    json_t *jf;
    json_array_foreach(fams, i, jf)
    {
        const char *name = json_string_value(json_object_get(jf, "name"));
        const char *help = json_string_value(json_object_get(jf, "help"));
        metric_type_t t;
        if (!name || type_parse(json_string_value(json_object_get(jf, "type")), &t) < 0) {
            rc = -EINVAL;
            continue;
        }
        double bk[64];
        int nb = 0;
        if (t == METRIC_HISTOGRAM) {
            json_t *jb = json_object_get(jf, "buckets");
            size_t k;
            json_t *v;
            json_array_foreach(jb, k, v)
            {
                if (nb < 64)
                    bk[nb++] = json_number_value(v);
            }
        }
        family_t *f = family_get(r, t, name, help, nb ? bk : NULL, nb);
        if (!f) {
            rc = -ENOMEM;
            continue;
        }
        if (f->type != t) {
            rc = -EINVAL;
            continue;
        }
        if (t == METRIC_HISTOGRAM) {
            int same = f->nb == nb;
            for (int k = 0; same && k < nb; k++)
                same = f->buckets[k] == bk[k];
            if (!same) {
                rc = -EINVAL;
                continue;
            }
        }
        size_t j;
        json_t *js;
        json_array_foreach(json_object_get(jf, "series"), j, js)
        {
            int e = merge_series(f, js, extra.len ? extra.data : NULL);
            if (e < 0)
                rc = e;
        }
    }
    buf_free(&extra);
    return rc;
}
