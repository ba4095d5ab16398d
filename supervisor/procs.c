/* Process table: spawns fanout and ingest workers (fork/exec with a
 * socketpair on fd 3), hands each its configuration over IPC, reaps every
 * child (we may be PID 1), restarts crashed workers with exponential backoff
 * and reports crash loops. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "supervisor.h"
#include "worker.h"

static metric_t *m_spawns, *m_exits, *m_restarts, *m_crashloops, *m_kills, *m_ingest_stops;

const char *proc_state_name(proc_state_t s)
{
    static const char *const n[] = {"starting", "running", "draining", "exited", "backoff"};
    return n[s];
}

const char *proc_kind_name(proc_kind_t k)
{
    return k == PROC_INGEST ? "ingest" : "fanout";
}

static void init_metrics(void)
{
    if (m_spawns != NULL)
        return;
    m_spawns = metrics_reg_family(sup.reg, METRIC_COUNTER, "exchange_worker_spawns_total",
                                  "Worker processes started.", NULL, 0);
    m_exits = metrics_reg_family(sup.reg, METRIC_COUNTER, "exchange_worker_exits_total",
                                 "Worker processes exited, by kind and how.", NULL, 0);
    m_restarts = metrics_reg_family(sup.reg, METRIC_COUNTER, "exchange_worker_restarts_total",
                                    "Crashed workers restarted.", NULL, 0);
    m_crashloops = metrics_reg_family(sup.reg, METRIC_COUNTER, "exchange_worker_crashloops_total",
                                      "Times a worker slot entered a crash loop.", NULL, 0);
    m_kills = metrics_reg_family(sup.reg, METRIC_COUNTER, "exchange_worker_kills_total",
                                 "Workers killed (SIGKILL) for not stopping by the deadline.", NULL, 0);
    m_ingest_stops = metrics_reg_family(sup.reg, METRIC_COUNTER, "exchange_ingest_fenced_exits_total",
                                        "Ingest workers that stopped producing on their own, by reason "
                                        "(fenced: a newer leader's producer; lease_expired: not renewed).",
                                        NULL, 0);
}

json_t *procs_leader_msg(void)
{
    return json_pack("{s:s, s:I, s:s, s:s, s:b}", "t", "leader", "epoch", (json_int_t)sup_epoch(), "leader",
                     sup.leader_id, "relay", sup.leader_relay, "is_self", sup.role == ROLE_LEADER);
}

static void send_config(proc_t *p)
{
    buf_t ini;
    buf_init(&ini);
    cfg_dump(sup.cfg, &ini, 0);
    json_t *msg =
        json_pack("{s:s, s:s, s:s}", "t", "config", "ini", ini.data ? ini.data : "", "name", "supervisor");
    ipc_send(p->ipc, msg);
    json_decref(msg);
    buf_free(&ini);
    msg = procs_leader_msg();
    ipc_send(p->ipc, msg);
    json_decref(msg);
    if (p->kind == PROC_INGEST)
        fence_ingest_spawned();
}

/* Runs on the loop thread. */
static void on_worker_msg(ipc_t *ipc, json_t *msg, void *arg)
{
    proc_t *p = arg;
    (void)ipc;
    const char *t = json_string_value(json_object_get(msg, "t"));
    if (t == NULL)
        return;
    if (strcmp(t, "ready") == 0) {
        if (p->state == PS_STARTING)
            p->state = PS_RUNNING;
        log_info("worker ready", "kind=%s pid=%d slot=%d generation=%d", proc_kind_name(p->kind), (int)p->pid,
                 p->slot, p->generation);
        /* Reload: the new generation is serving, drain the old one. */
        if (p->kind == PROC_FANOUT) {
            for (proc_t *o = sup.procs; o != NULL; o = o->next)
                if (o->kind == PROC_FANOUT && o->slot == p->slot && o->generation < p->generation &&
                    (o->state == PS_RUNNING || o->state == PS_STARTING))
                    procs_drain(o, sup.cfg->fanout.drain_ms);
        }
        if (!sup.ready_reported && sup_is_ready()) {
            sup.ready_reported = 1;
            sd_notify_msg("READY=1");
            log_info("service ready", LOG_NOFIELDS);
        }
    } else if (strcmp(t, "epoch_seen") == 0 && p->kind == PROC_INGEST) {
        json_t *e = json_object_get(msg, "epoch");
        if (json_is_integer(e))
            fence_epoch_seen((int64_t)json_integer_value(e));
    } else if (strcmp(t, "stats") == 0) {
        json_t *m = json_object_get(msg, "metrics");
        json_t *s = json_object_get(msg, "status");
        if (m != NULL) {
            json_decref(p->metrics);
            p->metrics = json_incref(m);
        }
        if (s != NULL) {
            json_decref(p->status);
            p->status = json_incref(s);
        }
    }
}

static void on_worker_close(ipc_t *ipc, int err, void *arg)
{
    proc_t *p = arg;
    (void)ipc;
    p->ipc = NULL;
    if (err != 0)
        log_warn_err(err, "worker ipc closed with error", "pid=%d", (int)p->pid);
}

static uint64_t now_ms(void)
{
    return worker_now_ms();
}

int procs_spawn(proc_kind_t kind, int slot)
{
    int sv[2], r;
    char exe[4200], fdarg[16];
    init_metrics();
    snprintf(exe, sizeof(exe), "%s/%s", sup.exe_dir,
             kind == PROC_INGEST ? "exchange-ingest" : "exchange-fanout");
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        r = -errno;
        log_error_err(r, "socketpair failed", LOG_NOFIELDS);
        return r;
    }
    pid_t pid = fork();
    if (pid < 0) {
        r = -errno;
        log_error_err(r, "fork failed", LOG_NOFIELDS);
        close(sv[0]);
        close(sv[1]);
        return r;
    }
    if (pid == 0) {
        /* Child: fd 3 is the IPC channel; default signal dispositions. */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        if (dup2(sv[1], 3) < 0)
            _exit(127);
        snprintf(fdarg, sizeof(fdarg), "%d", 3);
        execl(exe, exe, "--ipc-fd", fdarg, (char *)NULL);
        fprintf(stderr, "exec %s: %s\n", exe, strerror(errno));
        _exit(127);
    }
    close(sv[1]);
    proc_t *p = calloc(1, sizeof(*p));
    p->kind = kind;
    p->slot = slot;
    p->generation = sup.generation;
    p->pid = pid;
    p->state = PS_STARTING;
    p->started_ms = now_ms();
    p->want_restart = 1;
    /* Carry the slot's restart history over from its previous process. */
    for (proc_t *o = sup.procs; o != NULL; o = o->next) {
        if (o->kind == kind && o->slot == slot && o->state == PS_EXITED && o->want_restart) {
            p->restarts = o->restarts;
            p->crashes_in_window = o->crashes_in_window;
            p->window_start_ms = o->window_start_ms;
            p->backoff_attempt = o->backoff_attempt;
            p->crashloop = o->crashloop;
            o->want_restart = 0; /* superseded */
        }
    }
    p->next = sup.procs;
    sup.procs = p;
    if ((r = ipc_open(sup.loop, sv[0], on_worker_msg, on_worker_close, p, &p->ipc)) < 0) {
        log_error_err(r, "ipc open failed", LOG_NOFIELDS);
        close(sv[0]);
        kill(pid, SIGKILL);
        return r;
    }
    send_config(p);
    metric_inc(metric_labels(m_spawns, "kind=\"%s\"", proc_kind_name(kind)));
    log_info("worker spawned", "kind=%s pid=%d slot=%d generation=%d", proc_kind_name(kind), (int)pid, slot,
             p->generation);
    return 0;
}

void procs_drain(proc_t *p, int ms)
{
    if (p->state == PS_EXITED || p->state == PS_DRAINING)
        return;
    p->state = PS_DRAINING;
    p->want_restart = 0;
    json_t *msg = json_pack("{s:s, s:i}", "t", "drain", "ms", ms);
    if (p->ipc != NULL)
        ipc_send(p->ipc, msg);
    else
        kill(p->pid, SIGTERM);
    json_decref(msg);
    log_info("worker draining", "kind=%s pid=%d drain_ms=%d", proc_kind_name(p->kind), (int)p->pid, ms);
}

void procs_send_all(proc_kind_t kind, json_t *msg)
{
    for (proc_t *p = sup.procs; p != NULL; p = p->next)
        if (p->kind == kind && p->ipc != NULL && p->state != PS_EXITED)
            ipc_send(p->ipc, msg);
}

void procs_on_leader_change(void)
{
    json_t *msg = procs_leader_msg();
    procs_send_all(PROC_FANOUT, msg);
    json_decref(msg);
}

proc_t *procs_ingest(void)
{
    for (proc_t *p = sup.procs; p != NULL; p = p->next)
        if (p->kind == PROC_INGEST && p->state != PS_EXITED)
            return p;
    return NULL;
}

int procs_any_alive(void)
{
    for (proc_t *p = sup.procs; p != NULL; p = p->next)
        if (p->state != PS_EXITED)
            return 1;
    return 0;
}

void procs_kill_all(int sig)
{
    for (proc_t *p = sup.procs; p != NULL; p = p->next)
        if (p->state != PS_EXITED && p->pid > 0)
            kill(p->pid, sig);
}

static void on_restart_timer_close(uv_handle_t *h)
{
    free(h);
}

static void on_restart_timer(uv_timer_t *t)
{
    proc_t *p = t->data;
    p->restart_timer = NULL;
    uv_close((uv_handle_t *)t, on_restart_timer_close);
    if (sup.draining || !p->want_restart)
        return;
    if (p->kind == PROC_INGEST) {
        metric_inc(metric_labels(m_restarts, "kind=\"%s\"", proc_kind_name(p->kind)));
        p->restarts++;
        sup_start_ingest_if_leader(); /* carries the history over when it spawns */
        p->want_restart = 0;
        return;
    }
    if (p->generation != sup.generation) {
        p->want_restart = 0; /* a reload replaced this slot's generation */
        return;
    }
    metric_inc(metric_labels(m_restarts, "kind=\"%s\"", proc_kind_name(p->kind)));
    p->restarts++;
    (void)procs_spawn(p->kind, p->slot);
}

/* ---- stop deadline: a worker told to stop that does not is killed ------ */

static void on_kill_timer_close(uv_handle_t *h)
{
    free(h);
}

static void drop_kill_timer(proc_t *p)
{
    if (p->kill_timer == NULL)
        return;
    uv_close((uv_handle_t *)p->kill_timer, on_kill_timer_close);
    p->kill_timer = NULL;
}

static void on_kill_timer(uv_timer_t *t)
{
    proc_t *p = t->data;
    drop_kill_timer(p);
    if (p->state == PS_EXITED || p->pid <= 0)
        return;
    log_error("worker did not stop by the deadline: killing it", "kind=%s pid=%d", proc_kind_name(p->kind),
              (int)p->pid);
    metric_inc(metric_labels(m_kills, "kind=\"%s\"", proc_kind_name(p->kind)));
    kill(p->pid, SIGKILL);
}

void procs_kill_after(proc_t *p, int ms)
{
    if (p->state == PS_EXITED || p->kill_timer != NULL)
        return;
    p->kill_timer = malloc(sizeof(uv_timer_t));
    if (p->kill_timer == NULL)
        return;
    uv_timer_init(sup.loop, p->kill_timer);
    p->kill_timer->data = p;
    uv_timer_start(p->kill_timer, on_kill_timer, (uint64_t)ms, 0);
}

/* Exit codes an ingest worker uses when it stopped producing on its own. */
static void count_ingest_stop(proc_t *p, int status)
{
    if (p->kind != PROC_INGEST || !WIFEXITED(status))
        return;
    if (WEXITSTATUS(status) == WORKER_EXIT_FENCED)
        metric_inc(metric_labels(m_ingest_stops, "reason=\"fenced\""));
    else if (WEXITSTATUS(status) == WORKER_EXIT_LEASE)
        metric_inc(metric_labels(m_ingest_stops, "reason=\"lease_expired\""));
}

/* Decide the restart delay of a crashed slot: exponential, capped, and a
 * crash loop (crash_limit crashes within crash_window_ms) is reported and
 * retried at the cap. */
static uint64_t restart_delay(proc_t *p)
{
    const cfg_t *c = sup.cfg;
    uint64_t now = now_ms();
    if (now - p->started_ms > (uint64_t)c->supervisor.crash_window_ms) {
        p->backoff_attempt = 0; /* it ran long enough: a fresh start */
        p->crashloop = 0;
    }
    if (p->window_start_ms == 0 || now - p->window_start_ms > (uint64_t)c->supervisor.crash_window_ms) {
        p->window_start_ms = now;
        p->crashes_in_window = 0;
    }
    p->crashes_in_window++;
    uint64_t d = (uint64_t)c->supervisor.restart_min_ms;
    for (unsigned i = 0; i < p->backoff_attempt && d < (uint64_t)c->supervisor.restart_max_ms; i++)
        d *= 2;
    if (d > (uint64_t)c->supervisor.restart_max_ms)
        d = (uint64_t)c->supervisor.restart_max_ms;
    p->backoff_attempt++;
    if (p->crashes_in_window >= c->supervisor.crash_limit) {
        if (!p->crashloop) {
            metric_inc(metric_labels(m_crashloops, "kind=\"%s\"", proc_kind_name(p->kind)));
            log_error("worker crash loop", "kind=%s slot=%d crashes=%d window_ms=%d retry_ms=%d",
                      proc_kind_name(p->kind), p->slot, p->crashes_in_window, c->supervisor.crash_window_ms,
                      c->supervisor.restart_max_ms);
        }
        p->crashloop = 1;
        d = (uint64_t)c->supervisor.restart_max_ms;
    }
    return d;
}

static void on_exit_proc(proc_t *p, int status)
{
    int crashed = p->state != PS_DRAINING && p->want_restart && !sup.draining;
    char how[64];
    if (WIFEXITED(status))
        snprintf(how, sizeof(how), "exit=%d", WEXITSTATUS(status));
    else
        snprintf(how, sizeof(how), "signal=%d", WTERMSIG(status));
    p->state = PS_EXITED;
    admin_retire_worker(p);
    drop_kill_timer(p);
    count_ingest_stop(p, status);
    if (p->kind == PROC_INGEST)
        fence_ingest_exited();
    if (p->ipc != NULL) {
        ipc_close(p->ipc);
        p->ipc = NULL;
    }
    metric_inc(metric_labels(m_exits, "kind=\"%s\",how=\"%s\"", proc_kind_name(p->kind),
                             crashed ? "crash" : "clean"));
    if (crashed) {
        uint64_t d = restart_delay(p);
        log_error("worker died", "kind=%s pid=%d slot=%d %s restart_in_ms=%llu", proc_kind_name(p->kind),
                  (int)p->pid, p->slot, how, (unsigned long long)d);
        p->restart_timer = malloc(sizeof(uv_timer_t));
        uv_timer_init(sup.loop, p->restart_timer);
        p->restart_timer->data = p;
        uv_timer_start(p->restart_timer, on_restart_timer, d, 0);
    } else {
        p->want_restart = 0;
        log_info("worker exited", "kind=%s pid=%d slot=%d %s", proc_kind_name(p->kind), (int)p->pid, p->slot,
                 how);
        if (p->kind == PROC_INGEST && !sup.draining)
            sup_start_ingest_if_leader(); /* a reload or leadership change stopped it */
    }
}

/* Free exited entries nobody refers to any more. */
static void gc(void)
{
    proc_t **pp = &sup.procs;
    while (*pp != NULL) {
        proc_t *p = *pp;
        if (p->state == PS_EXITED && !p->want_restart && p->restart_timer == NULL) {
            *pp = p->next;
            json_decref(p->metrics);
            json_decref(p->status);
            free(p);
        } else {
            pp = &p->next;
        }
    }
}

void procs_reap(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        proc_t *p;
        for (p = sup.procs; p != NULL; p = p->next)
            if (p->pid == pid && p->state != PS_EXITED)
                break;
        if (p == NULL) {
            log_debug("reaped unknown child", "pid=%d", (int)pid); /* PID 1 duty */
            continue;
        }
        on_exit_proc(p, status);
    }
    gc();
    sup_check_drained();
}
