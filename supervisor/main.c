/* exchange-service: the supervisor. Loads and validates the configuration,
 * runs the leader election, spawns fanout workers (and the ingest worker
 * while leading), serves the admin port, reloads on SIGHUP and drains on
 * SIGTERM/SIGINT. */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <netdb.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "election.h"
#include "log.h"
#include "supervisor.h"
#include "worker.h"

#ifndef EXCHANGE_VERSION
#define EXCHANGE_VERSION "unknown"
#endif
#ifndef EXCHANGE_COMMIT
#define EXCHANGE_COMMIT "unknown"
#endif

/* The supervisor: main owns it and passes it to every module (supervisor.h). */
static sup_t sup;
static metric_t *m_reloads;

static void usage(FILE *f)
{
    fputs("usage: exchange-service [--profile NAME] [--config FILE] [--conf-dir DIR]\n"
          "                        [--check-config] [--print-ini] [--healthcheck] [--version]\n"
          "  --profile NAME   local|docker|prod overlay (default $EXCHANGE_PROFILE,\n"
          "                   else the first of $SPRING_PROFILES_ACTIVE, else local)\n"
          "  --config FILE    a last overlay file\n"
          "  --conf-dir DIR   where exchange.ini and the profiles live ($EXCHANGE_CONF_DIR, conf)\n"
          "  --check-config   validate, print the effective configuration with sources, exit\n"
          "  --print-ini      print the commented default configuration (conf/exchange.ini)\n"
          "  --healthcheck    GET /healthz on this configuration's admin port; exit 0 when 200\n"
          "  --version        print the version and git commit\n",
          f);
}

/* Container runtimes start processes with a soft open-files limit of 1024
 * (Kubernetes has no ulimit field); every client is a file descriptor.
 * Raise the soft limit to the hard one (the workers inherit it) and say
 * what we got, warning when the fanout workers could run out before
 * [fanout] max_clients. */
static void raise_nofile_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
        log_warn_err(-errno, "cannot read the open-files limit", LOG_NOFIELDS);
        return;
    }
    unsigned long long was = (unsigned long long)rl.rlim_cur;
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit want = {rl.rlim_max, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &want) == 0)
            rl = want;
        else
            log_warn_err(-errno, "cannot raise the open-files limit", "soft=%llu hard=%llu", was,
                         (unsigned long long)rl.rlim_max);
    }
    log_info("open-files limit", "soft=%llu hard=%llu soft_before=%llu", (unsigned long long)rl.rlim_cur,
             (unsigned long long)rl.rlim_max, was);
    unsigned long long want = (unsigned long long)sup.cfg->fanout.max_clients + 256;
    if ((unsigned long long)rl.rlim_cur < want)
        log_warn(
            "open-files limit below what a fanout worker may need: clients beyond it wait in the backlog",
            "soft=%llu max_clients=%d needed=%llu", (unsigned long long)rl.rlim_cur,
            sup.cfg->fanout.max_clients, want);
}

/* exchange_build_info{version,commit} 1, the usual Prometheus idiom. */
static void register_build_info(void)
{
    metric_t *bi = metrics_reg_family(sup.reg, METRIC_GAUGE, "exchange_build_info",
                                      "Always 1; the labels say which build runs.", NULL, 0);
    metric_set(metric_labels(bi, "version=\"%s\",commit=\"%s\"", EXCHANGE_VERSION, EXCHANGE_COMMIT), 1);
}

/* For the image's HEALTHCHECK (no curl in the runtime image): one GET
 * /healthz on the configured admin address, exit 0 on 200. */
static int healthcheck(const cfg_t *c)
{
    char host[256], req[512], resp[64] = "";
    int port, fd = -1, ok = 0;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    struct timeval tv = {3, 0};
    char ports[16];
    if (cfg_parse_addr(c->admin.listen, host, sizeof host, &port) < 0)
        return 1;
    if (host[0] == '\0' || strcmp(host, "0.0.0.0") == 0 || strcmp(host, "*") == 0)
        snprintf(host, sizeof host, "127.0.0.1");
    else if (strcmp(host, "::") == 0)
        snprintf(host, sizeof host, "::1");
    snprintf(ports, sizeof ports, "%d", port);
    if (getaddrinfo(host, ports, &hints, &ai) != 0 || ai == NULL)
        return 1;
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0 &&
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0 &&
        connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
        int n = snprintf(req, sizeof req, "GET /healthz HTTP/1.0\r\nHost: %s\r\n\r\n", host);
        if (write(fd, req, (size_t)n) == n && read(fd, resp, sizeof resp - 1) > 12)
            ok = strncmp(resp, "HTTP/1.1 200", 12) == 0 || strncmp(resp, "HTTP/1.0 200", 12) == 0;
    }
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    fprintf(ok ? stdout : stderr, "%s: http://%s:%d/healthz\n", ok ? "healthy" : "unhealthy", host, port);
    return ok ? 0 : 1;
}

/* The plan's manifests set SPRING_PROFILES_ACTIVE; it stands in for
 * EXCHANGE_PROFILE (config.c), said once at start. */
static void log_profile_alias(void)
{
    char spring[65];
    const char *ep = getenv("EXCHANGE_PROFILE");
    if (sup.cfg_opts.profile == NULL && (ep == NULL || ep[0] == '\0') &&
        cfg_spring_profile(spring, sizeof spring) != NULL)
        log_info("profile from SPRING_PROFILES_ACTIVE, an alias of EXCHANGE_PROFILE", "profile=%s value=%s",
                 log_q(spring), log_q(getenv("SPRING_PROFILES_ACTIVE")));
}

/* [supervisor] restart keys: the process table's limits. */
static procs_limits_t procs_limits(const cfg_t *c)
{
    return (procs_limits_t){c->supervisor.restart_min_ms, c->supervisor.restart_max_ms,
                            c->supervisor.crash_window_ms, c->supervisor.crash_limit};
}

static void spawn_fanouts(void)
{
    int n = cfg_fanout_workers(sup.cfg);
    log_info("starting fanout workers", "count=%d generation=%d", n, sup.procs.generation);
    for (int i = 0; i < n; i++)
        (void)procs_spawn(&sup.procs, PROC_FANOUT, i);
}

static void on_drain_timeout(uv_timer_t *t)
{
    (void)t;
    log_warn("drain deadline passed, killing remaining workers", LOG_NOFIELDS);
    procs_kill_all(&sup.procs, SIGKILL);
}

static void begin_shutdown(const char *why)
{
    if (sup.draining) {
        log_warn("second stop signal, exiting now", "why=%s", why);
        procs_kill_all(&sup.procs, SIGKILL);
        exit(1);
    }
    sup.draining = 1;
    sd_notify_msg("STOPPING=1");
    log_info("shutting down: draining", "why=%s drain_ms=%d", why, sup.cfg->fanout.drain_ms);
    /* Resign first so a follower takes over without waiting for the
     * session timeout, then stop ingest (it flushes Kafka) and drain. */
    sup_resign(&sup);
    sup_stop_ingest(&sup, 0); /* commits what is in flight: fencing keeps it before the next leader's */
    procs_shutdown(&sup.procs, sup.cfg->fanout.drain_ms);
    /* The admin port stays up: /readyz answers 503 while we drain. */
    /* The hard bound: drain time plus a margin for the Kafka flush. */
    uv_timer_start(&sup.drain_timer, on_drain_timeout, (uint64_t)sup.cfg->fanout.drain_ms + 6000, 0);
    sup_check_drained(&sup);
}

static void reload(void)
{
    buf_t err, why;
    buf_init(&err);
    buf_init(&why);
    sd_notify_msg("RELOADING=1");
    log_info("reload requested", LOG_NOFIELDS);
    cfg_t *nc = cfg_load(&sup.cfg_opts, &err);
    if (nc == NULL) {
        metric_inc(metric_labels(m_reloads, "result=\"failed\""));
        log_error("reload failed, keeping the old configuration", "err=%s", log_q(err.data ? err.data : ""));
        goto out;
    }
    if (cfg_diff_restart_keys(sup.cfg, nc, &why)) {
        metric_inc(metric_labels(m_reloads, "result=\"failed\""));
        log_error("reload refused: keys need a restart, keeping the old configuration", "keys=%s",
                  log_q(why.data ? why.data : ""));
        cfg_free(nc);
        goto out;
    }
    cfg_t *old = sup.cfg;
    int ingest_changed = cfg_ingest_changed(old, nc);
    sup.cfg = nc;
    (void)log_set_level(nc->log.level);
    (void)log_set_format(nc->log.format);
    json_t *lvl = json_pack("{s:s, s:s}", "t", "loglevel", "level", nc->log.level);
    procs_send_all(&sup.procs, PROC_INGEST, lvl);
    json_decref(lvl);
    /* nginx-style: the new generation starts; each old worker drains when
     * its successor in the same slot is ready (supervisor.c); surplus old slots
     * drain now. */
    procs_limits_t limits = procs_limits(nc);
    procs_set_limits(&sup.procs, &limits);
    sup.procs.generation++;
    int n = cfg_fanout_workers(nc);
    for (proc_t *p = sup.procs.list; p != NULL; p = p->next)
        if (p->kind == PROC_FANOUT && p->slot >= n && p->state != PS_EXITED)
            procs_drain(p, nc->fanout.drain_ms);
    spawn_fanouts();
    if (ingest_changed && procs_ingest(&sup.procs) != NULL) {
        log_info("ingest settings changed: restarting ingest worker", LOG_NOFIELDS);
        sup_stop_ingest(&sup, 0); /* supervisor.c starts the new one when it has exited */
    }
    cfg_free(old);
    metric_inc(metric_labels(m_reloads, "result=\"ok\""));
    log_info("reload applied", "generation=%d", sup.procs.generation);
out:
    sd_notify_msg("READY=1");
    buf_free(&err);
    buf_free(&why);
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)s;
    switch (signum) {
    case SIGTERM: begin_shutdown("SIGTERM"); break;
    case SIGINT: begin_shutdown("SIGINT"); break;
    case SIGHUP:
        if (!sup.draining)
            reload();
        break;
    default: break;
    }
}

/* Where the worker programs are: next to ours, or $EXCHANGE_LIBEXEC_DIR. */
static int find_exe_dir(char *out, size_t n)
{
    char path[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", path, sizeof(path) - 1);
    if (len < 0)
        return -errno;
    path[len] = '\0';
    snprintf(out, n, "%s", dirname(path));
    const char *env = getenv("EXCHANGE_LIBEXEC_DIR");
    if (env != NULL && env[0] != '\0')
        snprintf(out, n, "%s", env);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"profile", required_argument, NULL, 'p'},
                                         {"config", required_argument, NULL, 'c'},
                                         {"conf-dir", required_argument, NULL, 'd'},
                                         {"check-config", no_argument, NULL, 'k'},
                                         {"print-ini", no_argument, NULL, 'P'},
                                         {"healthcheck", no_argument, NULL, 'H'},
                                         {"version", no_argument, NULL, 'V'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c, check = 0, health = 0, r;
    buf_t err, out;

    sup.cfg_opts.use_env = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'p': sup.cfg_opts.profile = optarg; break;
        case 'c': sup.cfg_opts.extra_file = optarg; break;
        case 'd': sup.cfg_opts.conf_dir = optarg; break;
        case 'k': check = 1; break;
        case 'P':
            buf_init(&out);
            cfg_print_defaults(&out);
            fwrite(out.data, 1, out.len, stdout);
            buf_free(&out);
            return 0;
        case 'H': health = 1; break;
        case 'V': printf("exchange-service %s (commit %s)\n", EXCHANGE_VERSION, EXCHANGE_COMMIT); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    log_init("supervisor");
    buf_init(&err);
    sup.cfg = cfg_load(&sup.cfg_opts, &err);
    if (sup.cfg == NULL) {
        fputs(err.data ? err.data : "configuration error\n", stderr);
        buf_free(&err);
        return 2;
    }
    buf_free(&err);
    if (health)
        return healthcheck(sup.cfg);
    if (check) {
        buf_init(&out);
        cfg_dump(sup.cfg, &out, 1);
        printf("; profile: %s\n; files: %s\n", sup.cfg->profile ? sup.cfg->profile : "",
               sup.cfg->files ? sup.cfg->files : "");
        fwrite(out.data, 1, out.len, stdout);
        printf("; configuration OK\n");
        buf_free(&out);
        return 0;
    }
    (void)log_set_level(sup.cfg->log.level);
    (void)log_set_format(sup.cfg->log.format);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile_limit();
    char exe_dir[PATH_MAX];
    if ((r = find_exe_dir(exe_dir, sizeof exe_dir)) < 0) {
        log_error_err(r, "cannot find own executable", LOG_NOFIELDS);
        return 1;
    }
    sup.loop = uv_default_loop();
    sup.reg = metrics_default();
    sup.started_ms = worker_now_ms();
    snprintf(sup.session_state, sizeof(sup.session_state), "none");
    register_build_info();
    m_reloads = metrics_reg_family(sup.reg, METRIC_COUNTER, "exchange_reloads_total",
                                   "SIGHUP reloads by result.", NULL, 0);
    uv_timer_init(sup.loop, &sup.drain_timer);
    uv_signal_init(sup.loop, &sup.sig_term);
    uv_signal_init(sup.loop, &sup.sig_int);
    uv_signal_init(sup.loop, &sup.sig_hup);
    uv_signal_start(&sup.sig_term, on_signal, SIGTERM);
    uv_signal_start(&sup.sig_int, on_signal, SIGINT);
    uv_signal_start(&sup.sig_hup, on_signal, SIGHUP);
    procs_limits_t limits = procs_limits(sup.cfg);
    if ((r = procs_init(&sup.procs, sup.loop, sup.reg, exe_dir, &limits, &sup_procs_events, &sup)) < 0) {
        log_error_err(r, "cannot start the process table", LOG_NOFIELDS);
        return 1;
    }

    log_profile_alias();
    log_info("exchange-service starting", "version=%s commit=%s instance=%s profile=%s files=%s pid=%d",
             log_q(EXCHANGE_VERSION), log_q(EXCHANGE_COMMIT), log_q(sup.cfg->service.instance),
             log_q(sup.cfg->profile ? sup.cfg->profile : ""), log_q(sup.cfg->files ? sup.cfg->files : ""),
             (int)getpid());
    if ((r = admin_start(&sup, sup.cfg->admin.listen)) < 0) {
        log_error_err(r, "admin listen failed", "addr=%s", log_q(sup.cfg->admin.listen));
        return 1;
    }
    sd_watchdog_start(sup.loop);
    spawn_fanouts();
    if ((r = election_start(&sup)) < 0) {
        log_error_err(r, "election start failed", LOG_NOFIELDS);
        return 1;
    }
    uv_run(sup.loop, UV_RUN_DEFAULT);
    admin_stop(&sup);
    election_stop(&sup);
    log_info("exchange-service stopped", LOG_NOFIELDS);
    return 0;
}
