/* exchange-service: the supervisor. Loads and validates the configuration,
 * runs the leader election, spawns fanout workers (and the ingest worker
 * while leading), serves the admin port, reloads on SIGHUP and drains on
 * SIGTERM/SIGINT. */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "election.h"
#include "log.h"
#include "supervisor.h"
#include "worker.h"

sup_t sup;
static metric_t *m_reloads;

static void usage(FILE *f)
{
    fputs("usage: exchange-service [--profile NAME] [--config FILE] [--conf-dir DIR]\n"
          "                        [--check-config] [--print-ini]\n"
          "  --profile NAME   local|docker|prod overlay (default $EXCHANGE_PROFILE or local)\n"
          "  --config FILE    a last overlay file\n"
          "  --conf-dir DIR   where exchange.ini and the profiles live ($EXCHANGE_CONF_DIR, conf)\n"
          "  --check-config   validate, print the effective configuration with sources, exit\n"
          "  --print-ini      print the commented default configuration (conf/exchange.ini)\n",
          f);
}

static void spawn_fanouts(void)
{
    int n = cfg_fanout_workers(sup.cfg);
    log_info("starting fanout workers", "count=%d generation=%d", n, sup.generation);
    for (int i = 0; i < n; i++)
        (void)procs_spawn(PROC_FANOUT, i);
}

static void on_drain_timeout(uv_timer_t *t)
{
    (void)t;
    log_warn("drain deadline passed, killing remaining workers", "");
    procs_kill_all(SIGKILL);
}

static void begin_shutdown(const char *why)
{
    if (sup.draining) {
        log_warn("second stop signal, exiting now", "why=%s", why);
        procs_kill_all(SIGKILL);
        exit(1);
    }
    sup.draining = 1;
    sd_notify_msg("STOPPING=1");
    log_info("shutting down: draining", "why=%s drain_ms=%d", why, sup.cfg->fanout.drain_ms);
    /* Resign first so a follower takes over without waiting for the
     * session timeout, then stop ingest (it flushes Kafka) and drain. */
    sup_resign();
    sup_stop_ingest(0); /* commits what is in flight: fencing keeps it before the next leader's */
    for (proc_t *p = sup.procs; p != NULL; p = p->next) {
        if (p->kind == PROC_FANOUT)
            procs_drain(p, sup.cfg->fanout.drain_ms);
        if (p->restart_timer != NULL)
            p->want_restart = 0;
    }
    /* The admin port stays up: /readyz answers 503 while we drain. */
    /* The hard bound: drain time plus a margin for the Kafka flush. */
    uv_timer_start(&sup.drain_timer, on_drain_timeout, (uint64_t)sup.cfg->fanout.drain_ms + 6000, 0);
    sup_check_drained();
}

static void reload(void)
{
    buf_t err, why;
    buf_init(&err);
    buf_init(&why);
    sd_notify_msg("RELOADING=1");
    log_info("reload requested", "");
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
    procs_send_all(PROC_INGEST, lvl);
    json_decref(lvl);
    /* nginx-style: the new generation starts; each old worker drains when
     * its successor in the same slot is ready (procs.c); surplus old slots
     * drain now. */
    sup.generation++;
    int n = cfg_fanout_workers(nc);
    for (proc_t *p = sup.procs; p != NULL; p = p->next)
        if (p->kind == PROC_FANOUT && p->slot >= n && p->state != PS_EXITED)
            procs_drain(p, nc->fanout.drain_ms);
    spawn_fanouts();
    if (ingest_changed && procs_ingest() != NULL) {
        log_info("ingest settings changed: restarting ingest worker", "");
        sup_stop_ingest(0); /* procs.c starts the new one when it has exited */
    }
    cfg_free(old);
    metric_inc(metric_labels(m_reloads, "result=\"ok\""));
    log_info("reload applied", "generation=%d", sup.generation);
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
    case SIGCHLD: procs_reap(); break;
    default: break;
    }
}

static int find_exe_dir(void)
{
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
    if (n < 0)
        return -errno;
    path[n] = '\0';
    snprintf(sup.exe_dir, sizeof(sup.exe_dir), "%s", dirname(path));
    const char *env = getenv("EXCHANGE_LIBEXEC_DIR");
    if (env != NULL && env[0] != '\0')
        snprintf(sup.exe_dir, sizeof(sup.exe_dir), "%s", env);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"profile", required_argument, NULL, 'p'},
                                         {"config", required_argument, NULL, 'c'},
                                         {"conf-dir", required_argument, NULL, 'd'},
                                         {"check-config", no_argument, NULL, 'k'},
                                         {"print-ini", no_argument, NULL, 'P'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c, check = 0, r;
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
    if ((r = find_exe_dir()) < 0) {
        log_error("cannot find own executable", "err=%s", log_q(strerror(-r)));
        return 1;
    }
    sup.loop = uv_default_loop();
    sup.reg = metrics_default();
    sup.started_ms = worker_now_ms();
    sup.generation = 1;
    snprintf(sup.session_state, sizeof(sup.session_state), "none");
    m_reloads = metrics_reg_family(sup.reg, METRIC_COUNTER, "exchange_reloads_total",
                                   "SIGHUP reloads by result.", NULL, 0);
    uv_timer_init(sup.loop, &sup.drain_timer);
    uv_signal_init(sup.loop, &sup.sig_term);
    uv_signal_init(sup.loop, &sup.sig_int);
    uv_signal_init(sup.loop, &sup.sig_hup);
    uv_signal_init(sup.loop, &sup.sig_chld);
    uv_signal_start(&sup.sig_term, on_signal, SIGTERM);
    uv_signal_start(&sup.sig_int, on_signal, SIGINT);
    uv_signal_start(&sup.sig_hup, on_signal, SIGHUP);
    uv_signal_start(&sup.sig_chld, on_signal, SIGCHLD);

    log_info("exchange-service starting", "instance=%s profile=%s files=%s pid=%d",
             log_q(sup.cfg->service.instance), log_q(sup.cfg->profile ? sup.cfg->profile : ""),
             log_q(sup.cfg->files ? sup.cfg->files : ""), (int)getpid());
    if ((r = admin_start(sup.cfg->admin.listen)) < 0) {
        log_error("admin listen failed", "addr=%s err=%s", sup.cfg->admin.listen, log_q(uv_strerror(r)));
        return 1;
    }
    spawn_fanouts();
    if ((r = election_start()) < 0) {
        log_error("election start failed", "err=%s", log_q(uv_strerror(r)));
        return 1;
    }
    uv_run(sup.loop, UV_RUN_DEFAULT);
    admin_stop();
    election_stop();
    log_info("exchange-service stopped", "");
    return 0;
}
