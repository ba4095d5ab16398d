/* wsc_probe: drive common/wsclient against a URL and print what happens, one
 * line per event on stdout, for integration tests and by hand:
 *   open | text LEN DATA | binary LEN HEX | http_status N | close CAUSE DETAIL
 * DATA escapes \ \n \r; HEX is lower case. Logs go to stderr.
 * (--metrics adds "metric SERIES VALUE" lines after "stopped".)
 * Exit: 0 after --count messages (or SIGINT/SIGTERM), 2 on --timeout-ms,
 * 3 after --closes events, 64 on bad usage. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "buf.h"
#include "log.h"
#include "metrics.h"
#include "wsclient.h"

typedef struct {
    uv_loop_t *loop;
    wsc_t *w;
    uv_timer_t timeout;
    uv_signal_t sigint, sigterm;
    const char *send;
    long count, closes, reconnect_after;
    long got, closed;
    int metrics;
    int exit_code;
    int stopping;
} probe_t;

static void handle_closed(uv_handle_t *h)
{
    (void)h;
}

static void probe_finish(probe_t *p, int code)
{
    if (p->stopping)
        return;
    p->stopping = 1;
    p->exit_code = code;
    wsc_stop(p->w);
}

static void on_open(wsc_t *w, void *arg)
{
    probe_t *p = arg;
    printf("open\n");
    if (p->send) {
        int r = wsc_send_text(w, p->send, strlen(p->send));
        if (r < 0)
            fprintf(stderr, "wsc_probe: send failed: %s\n", strerror(-r));
    }
}

static void on_message(wsc_t *w, int binary, const char *data, size_t len, void *arg)
{
    (void)w;
    probe_t *p = arg;
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "%s %zu ", binary ? "binary" : "text", len);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)data[i];
        if (binary)
            buf_printf(&b, "%02x", ch);
        else if (ch == '\\')
            buf_puts(&b, "\\\\");
        else if (ch == '\n')
            buf_puts(&b, "\\n");
        else if (ch == '\r')
            buf_puts(&b, "\\r");
        else
            buf_append(&b, &data[i], 1);
    }
    buf_puts(&b, "\n");
    fwrite(b.data, 1, b.len, stdout);
    buf_free(&b);
    ++p->got;
    if (p->count > 0 && p->got >= p->count)
        probe_finish(p, 0);
    else if (p->reconnect_after > 0 && p->got % p->reconnect_after == 0)
        wsc_reconnect(w, "user");
}

static void on_close(wsc_t *w, const char *cause, void *arg)
{
    probe_t *p = arg;
    if (wsc_last_http_status(w) && strcmp(cause, "http_status") == 0)
        printf("http_status %d\n", wsc_last_http_status(w));
    printf("close %s %s\n", cause, wsc_last_error(w));
    if (p->closes > 0 && ++p->closed >= p->closes)
        probe_finish(p, 3);
}

static void on_stopped(wsc_t *w, void *arg)
{
    (void)w;
    probe_t *p = arg;
    printf("stopped\n");
    if (p->metrics) {
        buf_t b;
        buf_init(&b);
        metrics_render(metrics_default(), &b);
        for (char *line = strtok(b.data, "\n"); line; line = strtok(NULL, "\n"))
            if (line[0] != '#')
                printf("metric %s\n", line);
        buf_free(&b);
    }
    uv_close((uv_handle_t *)&p->timeout, handle_closed);
    uv_close((uv_handle_t *)&p->sigint, handle_closed);
    uv_close((uv_handle_t *)&p->sigterm, handle_closed);
}

static void on_timeout(uv_timer_t *t)
{
    probe_t *p = t->data;
    printf("timeout\n");
    probe_finish(p, 2);
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)signum;
    probe_finish(s->data, 0);
}

static void usage(void)
{
    fprintf(stderr, "usage: wsc_probe [options] URL\n"
                    "  --ca-file FILE        trust only this CA bundle (wss)\n"
                    "  --insecure            skip certificate verification (wss)\n"
                    "  --max-message BYTES   max message size (close 1009 above)\n"
                    "  --send TEXT           send TEXT after each open\n"
                    "  --count N             exit 0 after N messages\n"
                    "  --closes N            exit 3 after N close events\n"
                    "  --reconnect-after N   call wsc_reconnect every N messages\n"
                    "  --metrics             print the metrics (\"metric ...\") when stopped\n"
                    "  --stale-ms MS         reconnect when no data for MS\n"
                    "  --ping-ms MS          send pings every MS\n"
                    "  --min-ms MS --max-ms MS   reconnect backoff bounds\n"
                    "  --connect-timeout-ms MS   per-phase connect timeout\n"
                    "  --header 'K: V'       extra upgrade header (repeatable)\n"
                    "  --timeout-ms MS       exit 2 after MS\n");
}

int main(int argc, char **argv)
{
    probe_t p;
    memset(&p, 0, sizeof p);
    wsc_opts_t o;
    memset(&o, 0, sizeof o);
    o.name = "probe";
    long timeout_ms = 0;
    buf_t headers;
    buf_init(&headers);
    const char *url = NULL;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_ARG                                                                                             \
    do {                                                                                                     \
        if (!v) {                                                                                            \
            usage();                                                                                         \
            return 64;                                                                                       \
        }                                                                                                    \
        i++;                                                                                                 \
    } while (0)
        if (strcmp(a, "--insecure") == 0) {
            o.insecure_skip_verify = 1;
        } else if (strcmp(a, "--ca-file") == 0) {
            NEED_ARG;
            o.ca_file = v;
        } else if (strcmp(a, "--max-message") == 0) {
            NEED_ARG;
            o.max_message_bytes = strtoull(v, NULL, 10);
        } else if (strcmp(a, "--send") == 0) {
            NEED_ARG;
            p.send = v;
        } else if (strcmp(a, "--count") == 0) {
            NEED_ARG;
            p.count = atol(v);
        } else if (strcmp(a, "--closes") == 0) {
            NEED_ARG;
            p.closes = atol(v);
        } else if (strcmp(a, "--reconnect-after") == 0) {
            NEED_ARG;
            p.reconnect_after = atol(v);
        } else if (strcmp(a, "--metrics") == 0) {
            p.metrics = 1;
        } else if (strcmp(a, "--stale-ms") == 0) {
            NEED_ARG;
            o.stale_after_ms = atoi(v);
        } else if (strcmp(a, "--ping-ms") == 0) {
            NEED_ARG;
            o.ping_interval_ms = atoi(v);
        } else if (strcmp(a, "--min-ms") == 0) {
            NEED_ARG;
            o.reconnect_min_ms = atoi(v);
        } else if (strcmp(a, "--max-ms") == 0) {
            NEED_ARG;
            o.reconnect_max_ms = atoi(v);
        } else if (strcmp(a, "--connect-timeout-ms") == 0) {
            NEED_ARG;
            o.connect_timeout_ms = atoi(v);
        } else if (strcmp(a, "--timeout-ms") == 0) {
            NEED_ARG;
            timeout_ms = atol(v);
        } else if (strcmp(a, "--header") == 0) {
            NEED_ARG;
            buf_printf(&headers, "%s\r\n", v);
        } else if (strcmp(a, "--name") == 0) {
            NEED_ARG;
            o.name = v;
        } else if (a[0] == '-') {
            usage();
            return 64;
        } else {
            url = a;
        }
    }
    if (!url) {
        usage();
        return 64;
    }
    o.url = url;
    o.extra_headers = headers.data;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    log_init("wsc_probe");
    const char *lvl = getenv("LOG_LEVEL");
    if (lvl)
        log_set_level(lvl);

    uv_loop_t loop;
    uv_loop_init(&loop);
    p.loop = &loop;
    static const wsc_callbacks_t cb = {on_open, on_message, on_close, on_stopped};
    int r = wsc_start(&loop, &o, &cb, &p, &p.w);
    buf_free(&headers);
    if (r < 0) {
        fprintf(stderr, "wsc_probe: wsc_start: %s\n", strerror(-r));
        uv_loop_close(&loop);
        return 64;
    }
    uv_timer_init(&loop, &p.timeout);
    p.timeout.data = &p;
    if (timeout_ms > 0)
        uv_timer_start(&p.timeout, on_timeout, (uint64_t)timeout_ms, 0);
    uv_signal_init(&loop, &p.sigint);
    uv_signal_init(&loop, &p.sigterm);
    p.sigint.data = p.sigterm.data = &p;
    uv_signal_start(&p.sigint, on_signal, SIGINT);
    uv_signal_start(&p.sigterm, on_signal, SIGTERM);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return p.exit_code;
}
