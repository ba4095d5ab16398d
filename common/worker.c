/* Worker process runtime: IPC with the supervisor (config first, then
 * leader/loglevel/drain commands), periodic stats, parent-death exit, and a
 * standalone mode that loads the configuration itself. */
#include "worker.h"

#include <errno.h>
#include <dirent.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"

uint64_t worker_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int worker_open_fds(int pid)
{
    char path[64];
    int n = 0;
    snprintf(path, sizeof path, pid > 0 ? "/proc/%d/fd" : "/proc/self/fd", pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return -errno;
    for (struct dirent *e = readdir(d); e != NULL; e = readdir(d))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return pid > 0 ? n : n - 1; /* our own count leaves out the directory's fd */
}

static void apply_log_settings(const cfg_t *c)
{
    if (log_set_level(c->log.level) < 0)
        log_warn("bad log level ignored", "level=%s", log_q(c->log.level));
    if (log_set_format(c->log.format) < 0)
        log_warn("bad log format ignored", "format=%s", log_q(c->log.format));
}

void worker_send(worker_t *w, json_t *msg)
{
    if (w->ipc != NULL)
        (void)ipc_send(w->ipc, msg);
}

static void on_stats_timer(uv_timer_t *t)
{
    worker_t *w = t->data;
    json_t *status =
        json_pack("{s:i, s:s, s:b}", "pid", (int)getpid(), "role", w->ops->role, "draining", w->draining);
    if (w->ops->on_status != NULL)
        w->ops->on_status(w, status);
    json_t *msg = json_pack("{s:s, s:o, s:o}", "t", "stats", "metrics", metrics_snapshot(metrics_default()),
                            "status", status);
    worker_send(w, msg);
    json_decref(msg);
}

static void start_drain(worker_t *w, int ms)
{
    if (w->draining)
        return;
    w->draining = 1;
    log_info("draining", "drain_ms=%d", ms);
    if (w->ops->on_drain != NULL)
        w->ops->on_drain(w, ms);
    else
        worker_exit(w, 0);
}

static int start_worker(worker_t *w)
{
    int r;
    apply_log_settings(w->cfg);
    if ((r = w->ops->on_start(w)) < 0) {
        log_error_err(r, "worker failed to start", LOG_NOFIELDS);
        return r;
    }
    uv_timer_start(&w->stats_timer, on_stats_timer, 50, (uint64_t)w->cfg->supervisor.stats_interval_ms);
    json_t *ready = json_pack("{s:s}", "t", "ready");
    worker_send(w, ready);
    json_decref(ready);
    return 0;
}

/* Runs on the loop thread (libuv IPC read callback). */
static void on_ipc_msg(ipc_t *ipc, json_t *msg, void *arg)
{
    worker_t *w = arg;
    (void)ipc;
    const char *t = json_string_value(json_object_get(msg, "t"));
    if (t == NULL) {
        log_warn("ipc message without type ignored", LOG_NOFIELDS);
        return;
    }
    if (strcmp(t, "config") == 0) {
        if (w->cfg != NULL) {
            log_warn("second config message ignored", LOG_NOFIELDS);
            return;
        }
        const char *ini = json_string_value(json_object_get(msg, "ini"));
        const char *name = json_string_value(json_object_get(msg, "name"));
        buf_t err;
        buf_init(&err);
        w->cfg = cfg_load_string(ini ? ini : "", name ? name : "ipc", &err);
        if (w->cfg == NULL) {
            log_error("config from supervisor rejected", "err=%s", log_q(err.data ? err.data : ""));
            buf_free(&err);
            worker_exit(w, 2);
            return;
        }
        buf_free(&err);
        if (start_worker(w) < 0)
            worker_exit(w, 1);
    } else if (strcmp(t, "loglevel") == 0) {
        const char *lvl = json_string_value(json_object_get(msg, "level"));
        if (lvl != NULL && log_set_level(lvl) == 0)
            log_info("log level changed", "level=%s", lvl);
    } else if (strcmp(t, "drain") == 0) {
        json_t *ms = json_object_get(msg, "ms");
        start_drain(w, json_is_integer(ms) ? (int)json_integer_value(ms)
                                           : (w->cfg ? w->cfg->fanout.drain_ms : 0));
    } else if (w->ops->on_msg != NULL) {
        w->ops->on_msg(w, t, msg);
    }
}

static void on_ipc_close(ipc_t *ipc, int err, void *arg)
{
    worker_t *w = arg;
    (void)ipc;
    w->ipc = NULL;
    log_errf(LOG_INFO, err, "supervisor gone, exiting", LOG_NOFIELDS);
    if (w->ops->on_stop != NULL)
        w->ops->on_stop(w);
    worker_exit(w, 0);
}

static void on_signal(uv_signal_t *s, int signum)
{
    worker_t *w = s->data;
    if (w->ipc != NULL && signum == SIGINT)
        return; /* Ctrl-C hits the whole process group: the supervisor leads the drain */
    if (w->draining) {
        log_warn("second signal, exiting now", "signal=%d", signum);
        worker_exit(w, 1);
        return;
    }
    start_drain(w, w->cfg ? w->cfg->fanout.drain_ms : 0);
}

void worker_exit(worker_t *w, int code)
{
    w->exit_code = code;
    uv_stop(w->loop);
}

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--ipc-fd N] | [--conf-dir DIR] [--profile NAME] [--config FILE]\n"
            "  Started by exchange-service with --ipc-fd; standalone it loads the\n"
            "  configuration like the supervisor does.\n",
            prog);
}

int worker_main(int argc, char **argv, const worker_ops_t *ops, void *data)
{
    static const struct option opts[] = {
        {"ipc-fd", required_argument, NULL, 'i'},  {"conf-dir", required_argument, NULL, 'd'},
        {"profile", required_argument, NULL, 'p'}, {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    static worker_t w;
    int ipc_fd = -1, c;
    cfg_opts_t copts = {.use_env = 1};

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'i': ipc_fd = atoi(optarg); break;
        case 'd': copts.conf_dir = optarg; break;
        case 'p': copts.profile = optarg; break;
        case 'c': copts.extra_file = optarg; break;
        default: usage(argv[0]); return c == 'h' ? 0 : 2;
        }
    }
    log_init(ops->role);
    signal(SIGPIPE, SIG_IGN);
    memset(&w, 0, sizeof(w));
    w.loop = uv_default_loop();
    w.ops = ops;
    w.data = data;
    uv_timer_init(w.loop, &w.stats_timer);
    w.stats_timer.data = &w;
    uv_signal_init(w.loop, &w.sigterm);
    uv_signal_init(w.loop, &w.sigint);
    w.sigterm.data = w.sigint.data = &w;
    uv_signal_start(&w.sigterm, on_signal, SIGTERM);
    uv_signal_start(&w.sigint, on_signal, SIGINT);

    if (ipc_fd >= 0) {
        /* Belt and braces beside the EOF check: never outlive the supervisor. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int r = ipc_open(w.loop, ipc_fd, on_ipc_msg, on_ipc_close, &w, &w.ipc);
        if (r < 0) {
            log_error_err(r, "cannot open ipc channel", "fd=%d", ipc_fd);
            return 1;
        }
        if (getppid() == 1) {
            log_error("parent already gone at start", LOG_NOFIELDS);
            return 1;
        }
        log_info("worker started, waiting for config", "ipc_fd=%d", ipc_fd);
    } else {
        buf_t err;
        buf_init(&err);
        w.cfg = cfg_load(&copts, &err);
        if (w.cfg == NULL) {
            fputs(err.data ? err.data : "configuration error\n", stderr);
            buf_free(&err);
            return 2;
        }
        buf_free(&err);
        log_info("worker started standalone", "profile=%s", log_q(w.cfg->profile));
        if (start_worker(&w) < 0)
            return 1;
    }
    uv_run(w.loop, UV_RUN_DEFAULT);
    log_info("worker exiting", "code=%d", w.exit_code);
    return w.exit_code;
}
