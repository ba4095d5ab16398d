/* REST backfill (backfill.h). One request at a time per exchange, channels
 * in turn; each channel's job pages through the recent-trades endpoint until
 * it overlaps the last published trade (Upbit/Bithumb/Coinbase page back
 * from the newest; Binance pages forward from the last id + 1), then
 * publishes what it found oldest first and releases the held live trades. */
#include "backfill.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dedup.h"
#include "httpc.h"
#include "log.h"
#include "metrics.h"
#include "worker.h"

#define BF_PAGE_UPBIT 200 /* count: 1..500 */
#define BF_PAGE_BINANCE 1000
#define BF_PAGE_COINBASE 1000
#define BF_MAX_BODY (8u << 20)
#define BF_REQ_TIMEOUT_MS 5000
#define BF_RETRY_MS 500
#define BF_BAN_MS 60000 /* 418: Binance's ban is at least 2 minutes; wait a good while */
/* A channel's first page is asked for once its first live trade is held, so
 * the page reaches into the live stream (a page taken before the exchange
 * applied the subscription would miss the trades between the two); a quiet
 * market gets its page after this long. */
#define BF_QUIET_MS 2000

typedef struct {
    char market[48]; /* the exchange's spelling, for the URL */
    char channel[MSG_CHANNEL_MAX];
    int queued, active;
    char from_id[80]; /* last trade published when the job began */
    int64_t from_ts;
    uint64_t begin, deadline;
    char cursor[80];
    int64_t cursor_num; /* Coinbase end / Binance fromId */
    norm_trade_t *got;
    int ngot, capgot;
    int pages, failures;
    int gap; /* the endpoint could not reach back to from_id */
    /* Upbit/Bithumb serve one UTC day per request (days_ago, 0: today);
     * day_ms: a time within the day being paged. */
    int days_ago;
    int64_t day_ms;
} job_t;

struct backfill_s {
    ingest_t *in;
    feed_t *feed;
    int ex;
    const char *name;
    const cfg_exchange_t *xcfg;
    char base[512];
    tls_ctx_t *tls;
    job_t *jobs;
    int njobs, next, cur; /* cur: running job or -1 */
    httpc_t *req;
    uv_timer_t timer;
    int timer_on, stopping;
    double tokens;
    uint64_t refill_ms, blocked_until;
    buf_t url;
    metric_t *m_req;
};

static void kick(backfill_t *b);

static void count_req(backfill_t *b, const char *result)
{
    metric_inc(metric_labels(b->m_req, "exchange=\"%s\",result=\"%s\"", b->name, result));
}

/* ---- pure parts ---------------------------------------------------------- */

int backfill_page_path(int ex, const char *market, const char *cursor, int days_ago, buf_t *out)
{
    switch (ex) {
    case EX_UPBIT:
    case EX_BITHUMB:
        buf_printf(out, "/v1/trades/ticks?market=%s&count=%d", market, BF_PAGE_UPBIT);
        if (*cursor)
            buf_printf(out, "&cursor=%s", cursor);
        if (days_ago > 0) /* Bithumb's docs spell it daysAgo */
            buf_printf(out, ex == EX_UPBIT ? "&days_ago=%d" : "&daysAgo=%d", days_ago);
        return 0;
    case EX_BINANCE:
        if (*cursor)
            return buf_printf(out, "/api/v3/historicalTrades?symbol=%s&limit=%d&fromId=%s", market,
                              BF_PAGE_BINANCE, cursor) < 0
                       ? -ENOMEM
                       : 0;
        return buf_printf(out, "/api/v3/trades?symbol=%s&limit=%d", market, BF_PAGE_BINANCE) < 0 ? -ENOMEM
                                                                                                 : 0;
    case EX_COINBASE:
        buf_printf(out, "/api/v3/brokerage/market/products/%s/ticker?limit=%d", market, BF_PAGE_COINBASE);
        if (*cursor)
            buf_printf(out, "&end=%s", cursor);
        return 0;
    default: return -EINVAL;
    }
}

static int symbol_for(int ex, const char *s, char *out, size_t outsz)
{
    if (ex == EX_UPBIT || ex == EX_BITHUMB)
        return conn_symbol_quote_first(s, out, outsz);
    if (ex == EX_BINANCE)
        return conn_symbol_concat(s, out, outsz);
    return conn_symbol_dash(s, out, outsz);
}

/* The id, price and quantity every exchange's trade has, under its names. */
static const char *trade_fields(json_t *o, const char *id, const char *price, const char *qty,
                                norm_trade_t *t)
{
    const char *why;
    if ((why = conn_id(json_object_get(o, id), t->trade_id, sizeof(t->trade_id))) ||
        (why = conn_decimal(json_object_get(o, price), t->price, sizeof(t->price))))
        return why;
    return conn_decimal(json_object_get(o, qty), t->qty, sizeof(t->qty));
}

/* t->side from a text field: "buy" when it reads buy_word (compared by
 * cmp), else "sell". */
static const char *side_text(json_t *v, const char *buy_word, int (*cmp)(const char *, const char *),
                             norm_trade_t *t)
{
    if (!json_is_string(v))
        return "missing_field";
    snprintf(t->side, sizeof(t->side), "%s", cmp(json_string_value(v), buy_word) == 0 ? "buy" : "sell");
    return NULL;
}

static const char *parse_one(int ex, json_t *o, norm_trade_t *t)
{
    const char *why;
    json_t *side;
    memset(t, 0, sizeof(*t));
    t->backfill = 1;
    if (!json_is_object(o))
        return "wrong_type";
    if (ex == EX_UPBIT || ex == EX_BITHUMB) {
        if ((why = trade_fields(o, "sequential_id", "trade_price", "trade_volume", t)) ||
            (why = conn_ts(json_object_get(o, "timestamp"), &t->ts)) ||
            (why = side_text(json_object_get(o, "ask_bid"), "BID", strcmp, t)))
            return why;
        json_t *m = json_object_get(o, "market");
        if (json_is_string(m) && symbol_for(ex, json_string_value(m), t->symbol, sizeof(t->symbol)) < 0)
            return "bad_symbol";
        return NULL;
    }
    if (ex == EX_BINANCE) {
        if ((why = trade_fields(o, "id", "price", "qty", t)) ||
            (why = conn_ts(json_object_get(o, "time"), &t->ts)))
            return why;
        side = json_object_get(o, "isBuyerMaker");
        if (!json_is_boolean(side))
            return "missing_field";
        snprintf(t->side, sizeof(t->side), "%s", json_is_true(side) ? "sell" : "buy");
        return NULL;
    }
    json_t *tm = json_object_get(o, "time"), *pid = json_object_get(o, "product_id");
    if ((why = trade_fields(o, "trade_id", "price", "size", t)))
        return why;
    if (!json_is_string(tm) || conn_rfc3339_ms(json_string_value(tm), &t->ts) < 0)
        return "bad_time";
    if ((why = side_text(json_object_get(o, "side"), "BUY", strcasecmp, t)))
        return why;
    if (json_is_string(pid) && symbol_for(ex, json_string_value(pid), t->symbol, sizeof(t->symbol)) < 0)
        return "bad_symbol";
    return NULL;
}

int backfill_parse_page(int ex, const char *body, size_t len, norm_trade_t **out, int *n)
{
    json_error_t err;
    json_t *root = json_loadb(body, len, 0, &err), *list = root, *it;
    size_t i;
    *out = NULL;
    *n = 0;
    if (root == NULL)
        return -EPROTO;
    if (ex == EX_COINBASE)
        list = json_is_object(root) ? json_object_get(root, "trades") : NULL;
    if (!json_is_array(list)) {
        json_decref(root);
        return -EPROTO;
    }
    norm_trade_t *v = calloc(json_array_size(list) + 1, sizeof(*v));
    if (v == NULL) {
        json_decref(root);
        return -ENOMEM;
    }
    json_array_foreach(list, i, it)
    {
        if (parse_one(ex, it, &v[*n]) != NULL) {
            free(v);
            *n = 0;
            json_decref(root);
            return -EPROTO;
        }
        (*n)++;
    }
    json_decref(root);
    *out = v;
    return 0;
}

/* ---- jobs ------------------------------------------------------------------ */

static int trade_cmp(const void *a, const void *b)
{
    const norm_trade_t *x = a, *y = b;
    int64_t u, v;
    if (x->ts != y->ts)
        return x->ts < y->ts ? -1 : 1;
    if (dedup_id_num(x->trade_id, &u) == 0 && dedup_id_num(y->trade_id, &v) == 0)
        return u < v ? -1 : u > v;
    return strcmp(x->trade_id, y->trade_id);
}

static int job_add(job_t *j, const norm_trade_t *t)
{
    if (j->ngot == j->capgot) {
        int cap = j->capgot ? j->capgot * 2 : 256;
        norm_trade_t *n = realloc(j->got, sizeof(*n) * (size_t)cap);
        if (n == NULL)
            return -ENOMEM;
        j->got = n;
        j->capgot = cap;
    }
    j->got[j->ngot++] = *t;
    return 0;
}

/* Publish what was found, announce the span not covered (gap), release the
 * channel's held live trades. */
static void job_finish(backfill_t *b, job_t *j, int gap)
{
    char held_id[80];
    int64_t held_ts = 0;
    if (j->ngot > 1)
        qsort(j->got, (size_t)j->ngot, sizeof(*j->got), trade_cmp);
    if (gap) {
        int64_t to = j->ngot > 0 ? j->got[0].ts
                     : ingest_trade_first_held(b->in, j->channel, held_id, sizeof(held_id), &held_ts) == 0
                         ? held_ts
                         : (int64_t)worker_now_ms();
        feed_gap(b->feed, j->channel, j->from_ts, to, j->from_id);
    }
    /* The newest REST trades are also live ones: those held go out with the
     * held ones, unmarked and in the stream's order; those later than the
     * first held trade are still on their way on the stream. */
    int held = ingest_trade_first_held(b->in, j->channel, held_id, sizeof(held_id), &held_ts) == 0;
    for (int i = 0; i < j->ngot; i++)
        if (!(held && j->got[i].ts > held_ts) && !ingest_trade_held(b->in, j->channel, j->got[i].trade_id))
            ingest_trade(b->in, b->ex, j->channel, &j->got[i]);
    log_info("backfill done", "exchange=%s channel=%s trades=%d pages=%d gap=%d", b->name, log_q(j->channel),
             j->ngot, j->pages, gap);
    free(j->got);
    j->got = NULL;
    j->ngot = j->capgot = 0;
    j->active = 0;
    ingest_trade_release(b->in, b->ex, j->channel);
    b->cur = -1;
}

/* A page arrived (trades in the exchange's order). Returns 1 when the job is
 * complete (j->gap set when the endpoint could not reach the last trade). */
static int job_page(backfill_t *b, job_t *j, norm_trade_t *v, int n)
{
    char held_id[80];
    int64_t held_ts, held_num = -1, last_num = -1;
    j->pages++;
    if (b->ex == EX_BINANCE) {
        /* forward from last id + 1: a first id beyond it is a gap */
        if (ingest_trade_first_held(b->in, j->channel, held_id, sizeof(held_id), &held_ts) == 0)
            (void)dedup_id_num(held_id, &held_num);
        for (int i = 0; i < n; i++) {
            int64_t id;
            if (dedup_id_num(v[i].trade_id, &id) < 0 || id < j->cursor_num || j->cursor[0] == '\0')
                continue;
            if (id > j->cursor_num && j->pages == 1 && last_num < 0)
                j->gap = 1; /* announced at the end, with the span */
            if (held_num >= 0 && id >= held_num)
                return 1; /* reached the live stream */
            if (job_add(j, &v[i]) < 0)
                return 1;
            last_num = id;
        }
        if (n < BF_PAGE_BINANCE || last_num < 0)
            return 1;
        j->cursor_num = last_num + 1;
        snprintf(j->cursor, sizeof(j->cursor), "%" PRId64, j->cursor_num);
        return 0;
    }
    /* newest first (Coinbase: sort to be sure): back until the last id */
    if (b->ex == EX_COINBASE && n > 1)
        qsort(v, (size_t)n, sizeof(*v), trade_cmp);
    int reached = 0;
    int64_t oldest_ts = INT64_MAX;
    const char *oldest_id = NULL;
    for (int k = 0; k < n; k++) {
        norm_trade_t *t = b->ex == EX_COINBASE ? &v[n - 1 - k] : &v[k];
        if (!strcmp(t->trade_id, j->from_id) || t->ts < j->from_ts) {
            reached = 1;
            break;
        }
        if (t->ts < oldest_ts || oldest_id == NULL) {
            oldest_ts = t->ts;
            oldest_id = t->trade_id;
        }
        if (!ingest_trade_seen(b->in, b->ex, j->channel, t->trade_id) && job_add(j, t) < 0)
            return 1;
    }
    if (reached)
        return 1;
    if (n == 0 || oldest_id == NULL) {
        /* Upbit/Bithumb: the day is exhausted; the last trade was on an
         * earlier UTC day (a takeover across midnight): page that day. */
        int64_t day_start = j->day_ms - j->day_ms % 86400000;
        if ((b->ex == EX_UPBIT || b->ex == EX_BITHUMB) && j->from_ts < day_start && j->days_ago < 7) {
            j->days_ago++;
            j->day_ms = day_start - 1;
            j->cursor[0] = '\0';
            return 0;
        }
        j->gap = 1; /* the endpoint has nothing older: its window ends after the last trade */
        return 1;
    }
    if (b->ex == EX_COINBASE) {
        int64_t end = oldest_ts / 1000 + 1; /* seconds; the overlap is de-duplicated */
        if (j->cursor_num > 0 && end >= j->cursor_num)
            end = j->cursor_num - 1; /* a full second of trades: step past it */
        j->cursor_num = end;
        snprintf(j->cursor, sizeof(j->cursor), "%" PRId64, end);
    } else {
        snprintf(j->cursor, sizeof(j->cursor), "%s", oldest_id);
    }
    return 0;
}

/* ---- requests ------------------------------------------------------------- */

static void on_timer(uv_timer_t *t)
{
    backfill_t *b = t->data;
    b->timer_on = 0;
    kick(b);
}

static void wait_ms(backfill_t *b, uint64_t ms)
{
    b->timer_on = 1;
    uv_timer_start(&b->timer, on_timer, ms, 0);
}

static void on_answer(void *arg, int err, const char *detail, const httpc_result_t *res)
{
    backfill_t *b = arg;
    b->req = NULL;
    if (b->cur < 0)
        return;
    job_t *j = &b->jobs[b->cur];
    uint64_t now = worker_now_ms();
    int status = err < 0 || res == NULL ? 0 : res->status;
    if (status != 200) {
        char why[160];
        snprintf(why, sizeof(why), "%s", status == 0 ? detail : res->body); /* a body's first bytes */
        int limited = status == 429 || status == 418;
        count_req(b, status == 0 ? "error" : limited ? "rate_limited" : "http_error");
        if (limited) {
            uint64_t ms = res->retry_after_s >= 0 ? (uint64_t)res->retry_after_s * 1000u
                          : status == 418         ? BF_BAN_MS
                                                  : 1000u;
            b->blocked_until = now + (ms > 0 ? ms : 1000u);
        }
        j->failures++;
        log_warn("backfill request failed", "exchange=%s channel=%s status=%d detail=%s failures=%d", b->name,
                 log_q(j->channel), status, log_q(why), j->failures);
        if (now >= j->deadline)
            job_finish(b, j, 1);
        else if (!limited)
            b->blocked_until = now + (uint64_t)BF_RETRY_MS * (uint64_t)(j->failures < 10 ? j->failures : 10);
        kick(b);
        return;
    }
    norm_trade_t *v;
    int n;
    if (backfill_parse_page(b->ex, res->body, res->body_len, &v, &n) < 0) {
        count_req(b, "bad_answer");
        log_warn("backfill answer not understood", "exchange=%s channel=%s", b->name, log_q(j->channel));
        job_finish(b, j, 1);
        kick(b);
        return;
    }
    count_req(b, "ok");
    for (int i = 0; i < n; i++)
        if (v[i].symbol[0] == '\0')
            snprintf(v[i].symbol, sizeof(v[i].symbol), "%s", strchr(strchr(j->channel, '.') + 1, '.') + 1);
    int done = job_page(b, j, v, n);
    free(v);
    if (done || now >= j->deadline)
        job_finish(b, j, j->gap || !done);
    kick(b);
}

static void kick(backfill_t *b)
{
    if (b->stopping || b->req != NULL || b->timer_on)
        return;
    uint64_t now = worker_now_ms();
    if (b->cur < 0) {
        int waiting = 0;
        for (int k = 0; k < b->njobs; k++) {
            int i = (b->next + k) % b->njobs;
            job_t *q = &b->jobs[i];
            char id[80];
            int64_t ts;
            if (!q->queued)
                continue;
            if (ingest_trade_first_held(b->in, q->channel, id, sizeof(id), &ts) < 0 &&
                now < q->begin + BF_QUIET_MS) {
                waiting = 1; /* the live stream has not started on this channel yet */
                continue;
            }
            b->cur = i;
            b->next = (i + 1) % b->njobs;
            q->queued = 0;
            q->active = 1;
            break;
        }
        if (b->cur < 0) {
            if (waiting)
                wait_ms(b, 50);
            return;
        }
    }
    job_t *j = &b->jobs[b->cur];
    if (now >= j->deadline && j->pages + j->failures > 0) {
        job_finish(b, j, 1);
        kick(b);
        return;
    }
    if (now < b->blocked_until) {
        wait_ms(b, b->blocked_until - now);
        return;
    }
    double rate = b->xcfg->rest_rate > 0 ? b->xcfg->rest_rate : 1;
    b->tokens += (double)(now - b->refill_ms) * rate / 1000.0;
    if (b->tokens > rate)
        b->tokens = rate;
    b->refill_ms = now;
    if (b->tokens < 1.0) {
        wait_ms(b, (uint64_t)((1.0 - b->tokens) * 1000.0 / rate) + 1);
        return;
    }
    b->tokens -= 1.0;
    buf_reset(&b->url);
    buf_puts(&b->url, b->base);
    backfill_page_path(b->ex, j->market, j->cursor, j->days_ago, &b->url);
    int r =
        httpc_get(b->in->loop, b->tls, b->url.data, BF_REQ_TIMEOUT_MS, BF_MAX_BODY, on_answer, b, &b->req);
    if (r < 0) {
        b->req = NULL;
        count_req(b, "error");
        log_error_err(r, "backfill request not sent", "exchange=%s url=%s", b->name, log_q(b->url.data));
        job_finish(b, j, 1);
        kick(b);
    }
}

void backfill_begin(backfill_t *b)
{
    if (b == NULL || b->stopping)
        return;
    uint64_t now = worker_now_ms();
    for (int i = 0; i < b->njobs; i++) {
        job_t *j = &b->jobs[i];
        if (j->queued || j->active)
            continue; /* still running from the previous connection: it covers this one too */
        if (ingest_trade_last(b->in, j->channel, j->from_id, sizeof(j->from_id), &j->from_ts) < 0)
            continue; /* nothing published yet: nothing known to be missed */
        ingest_trade_hold(b->in, j->channel);
        j->queued = 1;
        j->begin = now;
        j->deadline = now + (uint64_t)b->xcfg->backfill_max_ms;
        j->pages = j->failures = j->gap = 0;
        j->cursor[0] = '\0';
        j->cursor_num = 0;
        j->days_ago = 0;
        j->day_ms = (int64_t)now;
        if (b->ex == EX_BINANCE) {
            int64_t last;
            if (dedup_id_num(j->from_id, &last) == 0) {
                j->cursor_num = last + 1;
                snprintf(j->cursor, sizeof(j->cursor), "%" PRId64, j->cursor_num);
            }
        }
        log_info("backfill queued", "exchange=%s channel=%s last_trade_id=%s last_ts=%" PRId64, b->name,
                 log_q(j->channel), log_q(j->from_id), j->from_ts);
    }
    kick(b);
}

int backfill_create(ingest_t *in, feed_t *f, int ex, const connector_t *conn, backfill_t **out)
{
    const cfg_exchange_t *x = &in->cfg->exchange[ex];
    *out = NULL;
    if (x->rest_url == NULL || *x->rest_url == '\0' || !conn->ch_trade || conn->nmarkets == 0)
        return 0;
    backfill_t *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return -ENOMEM;
    b->in = in;
    b->feed = f;
    b->ex = ex;
    b->name = cfg_exchange_names[ex];
    b->xcfg = x;
    b->cur = -1;
    snprintf(b->base, sizeof(b->base), "%s", x->rest_url);
    size_t bl = strlen(b->base);
    while (bl > 0 && b->base[bl - 1] == '/')
        b->base[--bl] = '\0';
    buf_init(&b->url);
    b->m_req = metric_counter("exchange_ingest_backfill_requests_total",
                              "REST backfill requests, by exchange and result (ok, rate_limited, http_error, "
                              "error, bad_answer)");
    b->jobs = calloc((size_t)conn->nmarkets, sizeof(*b->jobs));
    if (b->jobs == NULL)
        goto fail;
    for (int i = 0; i < conn->nmarkets; i++) {
        char sym[48];
        if (symbol_for(ex, conn->markets[i], sym, sizeof(sym)) < 0)
            continue;
        job_t *j = &b->jobs[b->njobs++];
        snprintf(j->market, sizeof(j->market), "%s", conn->markets[i]);
        if (ex == EX_UPBIT || ex == EX_BITHUMB || ex == EX_BINANCE)
            for (char *p = j->market; *p; p++)
                *p = (char)(*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
        snprintf(j->channel, sizeof(j->channel), "trade.%s.%s", b->name, sym);
    }
    if (strncasecmp(b->base, "https://", 8) == 0) {
        char err[256] = "";
        if (tls_client_ctx_new(x->ca_file && *x->ca_file ? x->ca_file : NULL, x->insecure_skip_verify,
                               &b->tls, err, sizeof(err)) < 0) {
            log_error("backfill: cannot create a TLS context", "exchange=%s err=%s", b->name, log_q(err));
            goto fail;
        }
    }
    uv_timer_init(in->loop, &b->timer);
    b->timer.data = b;
    b->refill_ms = worker_now_ms();
    b->tokens = 1;
    *out = b;
    return 0;
fail:
    free(b->jobs);
    buf_free(&b->url);
    free(b);
    return -ENOMEM;
}

static void on_closed(uv_handle_t *h)
{
    backfill_t *b = h->data;
    if (b->tls)
        tls_ctx_free(b->tls);
    for (int i = 0; i < b->njobs; i++)
        free(b->jobs[i].got);
    free(b->jobs);
    buf_free(&b->url);
    free(b);
}

void backfill_stop(backfill_t *b)
{
    if (b == NULL || b->stopping)
        return;
    b->stopping = 1;
    if (b->req != NULL)
        httpc_cancel(b->req);
    b->req = NULL;
    for (int i = 0; i < b->njobs; i++)
        if (b->jobs[i].active || b->jobs[i].queued)
            ingest_trade_release(b->in, b->ex, b->jobs[i].channel);
    uv_close((uv_handle_t *)&b->timer, on_closed);
}
