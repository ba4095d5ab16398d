/* Process table: spawns fanout and ingest workers (fork/exec with a
 * socketpair on fd 3), reaps every child (we may be PID 1), restarts crashed
 * workers with exponential backoff (common/backoff.c) and reports crash
 * loops. A leaf: it reports spawned/ready/exited to the policy (procs.h). */
#include "procs.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "worker.h"

const char *proc_state_name(proc_state_t s)
{
    static const char *const n[] = {"starting", "running", "draining", "exited"};
    return n[s];
}

const char *proc_kind_name(proc_kind_t k)
{
    return k == PROC_INGEST ? "ingest" : "fanout";
}

/* Counters by kind="fanout|ingest". */
static metric_t *count_kind(metric_t *family, const proc_t *p)
{
    return metric_labels(family, "kind=\"%s\"", proc_kind_name(p->kind));
}

static void on_sigchld(uv_signal_t *s, int signum)
{
    (void)signum;
    procs_reap(s->data);
}

int procs_init(procs_t *ps, uv_loop_t *loop, metrics_registry_t *reg, const char *exe_dir,
               const procs_limits_t *limits, const procs_events_t *ev, void *data)
{
    int r;
    memset(ps, 0, sizeof(*ps));
    const struct {
        metric_t **m;
        const char *name, *help;
    } fam[] = {
        {&ps->m_spawns, "exchange_worker_spawns_total", "Worker processes started."},
        {&ps->m_exits, "exchange_worker_exits_total", "Worker processes exited, by kind and how."},
        {&ps->m_restarts, "exchange_worker_restarts_total", "Crashed workers restarted."},
        {&ps->m_crashloops, "exchange_worker_crashloops_total", "Times a worker slot entered a crash loop."},
        {&ps->m_kills, "exchange_worker_kills_total",
         "Workers killed (SIGKILL) for not stopping by the deadline."},
        {&ps->m_ingest_stops, "exchange_ingest_fenced_exits_total",
         "Ingest workers that stopped producing on their own, by reason "
         "(fenced: a newer leader's producer; lease_expired: not renewed)."},
    };
    ps->loop = loop;
    snprintf(ps->exe_dir, sizeof(ps->exe_dir), "%s", exe_dir);
    ps->limits = *limits;
    ps->generation = 1;
    if (ev != NULL)
        ps->ev = *ev;
    ps->data = data;
    for (size_t i = 0; i < sizeof(fam) / sizeof(fam[0]); i++) {
        if ((*fam[i].m = metrics_reg_family(reg, METRIC_COUNTER, fam[i].name, fam[i].help, NULL, 0)) == NULL)
            return -ENOMEM;
    }
    if ((r = uv_signal_init(loop, &ps->sig_chld)) < 0)
        return r;
    ps->sig_chld.data = ps;
    if ((r = uv_signal_start(&ps->sig_chld, on_sigchld, SIGCHLD)) < 0) {
        uv_close((uv_handle_t *)&ps->sig_chld, NULL);
        return r;
    }
    return 0;
}

void procs_set_limits(procs_t *ps, const procs_limits_t *limits)
{
    ps->limits = *limits;
}

/* Runs on the loop thread. */
static void on_worker_msg(ipc_t *ipc, json_t *msg, void *arg)
{
    proc_t *p = arg;
    procs_t *ps = p->table;
    (void)ipc;
    const char *t = json_string_value(json_object_get(msg, "t"));
    if (t == NULL)
        return;
    if (strcmp(t, "ready") == 0) {
        if (p->state == PS_STARTING)
            p->state = PS_RUNNING;
        log_info("worker ready", "kind=%s pid=%d slot=%d generation=%d", proc_kind_name(p->kind), (int)p->pid,
                 p->slot, p->generation);
        if (ps->ev.ready != NULL)
            ps->ev.ready(ps, p);
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
    } else if (ps->ev.message != NULL) {
        ps->ev.message(ps, p, t, msg);
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

static proc_t *proc_new(procs_t *ps, proc_kind_t kind, int slot)
{
    proc_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->table = ps;
    p->kind = kind;
    p->slot = slot;
    p->generation = ps->generation;
    p->state = PS_STARTING;
    p->want_restart = 1;
    backoff_init(&p->backoff, (uint64_t)ps->limits.restart_min_ms, (uint64_t)ps->limits.restart_max_ms, 0);
    uv_timer_init(ps->loop, &p->restart_timer);
    uv_timer_init(ps->loop, &p->kill_timer);
    p->restart_timer.data = p->kill_timer.data = p;
    p->open_handles = 2;
    return p;
}

static void on_proc_handle_closed(uv_handle_t *h)
{
    proc_t *p = h->data;
    if (--p->open_handles == 0) {
        json_decref(p->metrics);
        json_decref(p->status);
        free(p);
    }
}

/* Its handles close first; the memory goes in their close callbacks. */
static void proc_free(proc_t *p)
{
    if (p->ipc != NULL) {
        ipc_close(p->ipc);
        p->ipc = NULL;
    }
    uv_close((uv_handle_t *)&p->restart_timer, on_proc_handle_closed);
    uv_close((uv_handle_t *)&p->kill_timer, on_proc_handle_closed);
}

static proc_history_t history_of(const proc_t *p)
{
    return (proc_history_t){.restarts = p->restarts,
                            .crashes_in_window = p->crashes_in_window,
                            .crashloop = p->crashloop,
                            .window_start_ms = p->window_start_ms,
                            .attempt = p->backoff.attempt};
}

static void history_set(proc_t *p, const proc_history_t *h)
{
    p->restarts = h->restarts;
    p->crashes_in_window = h->crashes_in_window;
    p->crashloop = h->crashloop;
    p->window_start_ms = h->window_start_ms;
    p->backoff.attempt = h->attempt;
}

int procs_spawn(procs_t *ps, proc_kind_t kind, int slot)
{
    int sv[2], r;
    char exe[4200], fdarg[16];
    snprintf(exe, sizeof(exe), "%s/%s", ps->exe_dir,
             kind == PROC_INGEST ? "exchange-ingest" : "exchange-fanout");
    proc_t *p = proc_new(ps, kind, slot);
    if (p == NULL) {
        log_error_err(-ENOMEM, "cannot spawn a worker", "kind=%s slot=%d", proc_kind_name(kind), slot);
        return -ENOMEM;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        r = -errno;
        log_error_err(r, "socketpair failed", LOG_NOFIELDS);
        proc_free(p);
        return r;
    }
    pid_t pid = fork();
    if (pid < 0) {
        r = -errno;
        log_error_err(r, "fork failed", LOG_NOFIELDS);
        close(sv[0]);
        close(sv[1]);
        proc_free(p);
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
    p->pid = pid;
    p->started_ms = worker_now_ms();
    /* Carry the slot's restart history over from its previous process. */
    for (proc_t *o = ps->list; o != NULL; o = o->next) {
        if (o->kind == kind && o->slot == slot && o->state == PS_EXITED && o->want_restart) {
            proc_history_t hist = history_of(o);
            history_set(p, &hist);
            o->want_restart = 0; /* superseded */
        }
    }
    if (kind == PROC_INGEST && ps->ingest_carry_valid) {
        history_set(p, &ps->ingest_carry);
        ps->ingest_carry_valid = 0;
    }
    p->next = ps->list;
    ps->list = p;
    if ((r = ipc_open(ps->loop, sv[0], on_worker_msg, on_worker_close, p, &p->ipc)) < 0) {
        log_error_err(r, "ipc open failed", LOG_NOFIELDS);
        close(sv[0]);
        kill(pid, SIGKILL);
        return r;
    }
    if (ps->ev.spawned != NULL)
        ps->ev.spawned(ps, p);
    metric_inc(count_kind(ps->m_spawns, p));
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
    if (p->ipc != NULL && msg != NULL)
        ipc_send(p->ipc, msg);
    else
        kill(p->pid, SIGTERM);
    json_decref(msg);
    log_info("worker draining", "kind=%s pid=%d drain_ms=%d", proc_kind_name(p->kind), (int)p->pid, ms);
}

void procs_shutdown(procs_t *ps, int drain_ms)
{
    ps->draining = 1;
    for (proc_t *p = ps->list; p != NULL; p = p->next) {
        if (p->kind == PROC_FANOUT)
            procs_drain(p, drain_ms);
        if (uv_is_active((uv_handle_t *)&p->restart_timer))
            p->want_restart = 0;
    }
}

void procs_send_all(procs_t *ps, proc_kind_t kind, json_t *msg)
{
    for (proc_t *p = ps->list; p != NULL; p = p->next)
        if (p->kind == kind && p->ipc != NULL && p->state != PS_EXITED)
            ipc_send(p->ipc, msg);
}

proc_t *procs_ingest(procs_t *ps)
{
    for (proc_t *p = ps->list; p != NULL; p = p->next)
        if (p->kind == PROC_INGEST && p->state != PS_EXITED)
            return p;
    return NULL;
}

int procs_running(procs_t *ps, proc_kind_t kind)
{
    int n = 0;
    for (proc_t *p = ps->list; p != NULL; p = p->next)
        n += p->kind == kind && p->state == PS_RUNNING;
    return n;
}

int procs_any_alive(procs_t *ps)
{
    for (proc_t *p = ps->list; p != NULL; p = p->next)
        if (p->state != PS_EXITED)
            return 1;
    return 0;
}

int proc_open_fds(const proc_t *p)
{
    int n = p->state == PS_EXITED || p->pid <= 0 ? -1 : worker_open_fds((int)p->pid);
    return n < 0 ? -1 : n;
}

void procs_kill_all(procs_t *ps, int sig)
{
    for (proc_t *p = ps->list; p != NULL; p = p->next)
        if (p->state != PS_EXITED && p->pid > 0)
            kill(p->pid, sig);
}

static void on_restart_timer(uv_timer_t *t)
{
    proc_t *p = t->data;
    procs_t *ps = p->table;
    if (ps->draining || !p->want_restart)
        return;
    if (p->kind == PROC_INGEST) {
        metric_inc(count_kind(ps->m_restarts, p));
        p->restarts++;
        ps->ingest_carry = history_of(p);
        ps->ingest_carry_valid = 1;
        if (ps->ev.restart_ingest != NULL)
            ps->ev.restart_ingest(ps, p); /* procs_spawn carries the history over */
        p->want_restart = 0;
        return;
    }
    if (p->generation != ps->generation) {
        p->want_restart = 0; /* a reload replaced this slot's generation */
        return;
    }
    metric_inc(count_kind(ps->m_restarts, p));
    p->restarts++;
    (void)procs_spawn(ps, p->kind, p->slot);
}

/* ---- stop deadline: a worker told to stop that does not is killed ------ */

static void on_kill_timer(uv_timer_t *t)
{
    proc_t *p = t->data;
    if (p->state == PS_EXITED || p->pid <= 0)
        return;
    log_error("worker did not stop by the deadline: killing it", "kind=%s pid=%d", proc_kind_name(p->kind),
              (int)p->pid);
    metric_inc(count_kind(p->table->m_kills, p));
    kill(p->pid, SIGKILL);
}

void procs_kill_after(proc_t *p, int ms)
{
    if (p->state == PS_EXITED || uv_is_active((uv_handle_t *)&p->kill_timer))
        return;
    uv_timer_start(&p->kill_timer, on_kill_timer, (uint64_t)ms, 0);
}

/* Exit codes an ingest worker uses when it stopped producing on its own. */
static void count_ingest_stop(proc_t *p, int status)
{
    if (p->kind != PROC_INGEST || !WIFEXITED(status))
        return;
    if (WEXITSTATUS(status) == WORKER_EXIT_FENCED)
        metric_inc(metric_labels(p->table->m_ingest_stops, "reason=\"fenced\""));
    else if (WEXITSTATUS(status) == WORKER_EXIT_LEASE)
        metric_inc(metric_labels(p->table->m_ingest_stops, "reason=\"lease_expired\""));
}

/* Decide the restart delay of a crashed slot: exponential, capped, and a
 * crash loop (crash_limit crashes within crash_window_ms) is reported and
 * retried at the cap. */
static uint64_t restart_delay(proc_t *p)
{
    const procs_limits_t *l = &p->table->limits;
    uint64_t now = worker_now_ms();
    if (now - p->started_ms > (uint64_t)l->crash_window_ms) {
        backoff_reset(&p->backoff); /* it ran long enough: a fresh start */
        p->crashloop = 0;
    }
    if (p->window_start_ms == 0 || now - p->window_start_ms > (uint64_t)l->crash_window_ms) {
        p->window_start_ms = now;
        p->crashes_in_window = 0;
    }
    p->crashes_in_window++;
    /* The limits are reloadable: the slot keeps only its attempt count. */
    p->backoff.base_ms = (uint64_t)l->restart_min_ms;
    p->backoff.max_ms = (uint64_t)l->restart_max_ms;
    uint64_t d = backoff_ceiling(&p->backoff); /* no jitter: one slot per process */
    p->backoff.attempt++;
    if (p->crashes_in_window >= l->crash_limit) {
        if (!p->crashloop) {
            metric_inc(count_kind(p->table->m_crashloops, p));
            log_error("worker crash loop", "kind=%s slot=%d crashes=%d window_ms=%d retry_ms=%d",
                      proc_kind_name(p->kind), p->slot, p->crashes_in_window, l->crash_window_ms,
                      l->restart_max_ms);
        }
        p->crashloop = 1;
        d = (uint64_t)l->restart_max_ms;
    }
    return d;
}

static void on_exit_proc(proc_t *p, int status)
{
    procs_t *ps = p->table;
    int crashed = p->state != PS_DRAINING && p->want_restart && !ps->draining;
    char how[64];
    if (WIFEXITED(status))
        snprintf(how, sizeof(how), "exit=%d", WEXITSTATUS(status));
    else
        snprintf(how, sizeof(how), "signal=%d", WTERMSIG(status));
    p->state = PS_EXITED;
    uv_timer_stop(&p->kill_timer);
    count_ingest_stop(p, status);
    if (p->ipc != NULL) {
        ipc_close(p->ipc);
        p->ipc = NULL;
    }
    metric_inc(metric_labels(ps->m_exits, "kind=\"%s\",how=\"%s\"", proc_kind_name(p->kind),
                             crashed ? "crash" : "clean"));
    if (crashed) {
        uint64_t d = restart_delay(p);
        log_error("worker died", "kind=%s pid=%d slot=%d %s restart_in_ms=%llu", proc_kind_name(p->kind),
                  (int)p->pid, p->slot, how, (unsigned long long)d);
        uv_timer_start(&p->restart_timer, on_restart_timer, d, 0);
    } else {
        p->want_restart = 0;
        log_info("worker exited", "kind=%s pid=%d slot=%d %s", proc_kind_name(p->kind), (int)p->pid, p->slot,
                 how);
    }
    if (ps->ev.exited != NULL)
        ps->ev.exited(ps, p, status, crashed);
}

/* Free exited entries nobody refers to any more. */
static void gc(procs_t *ps)
{
    proc_t **pp = &ps->list;
    while (*pp != NULL) {
        proc_t *p = *pp;
        if (p->state == PS_EXITED && !p->want_restart && !uv_is_active((uv_handle_t *)&p->restart_timer)) {
            *pp = p->next;
            proc_free(p);
        } else {
            pp = &p->next;
        }
    }
}

void procs_reap(procs_t *ps)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        proc_t *p;
        for (p = ps->list; p != NULL; p = p->next)
            if (p->pid == pid && p->state != PS_EXITED)
                break;
        if (p == NULL) {
            log_debug("reaped unknown child", "pid=%d", (int)pid); /* PID 1 duty */
            continue;
        }
        on_exit_proc(p, status);
    }
    gc(ps);
}

void procs_close(procs_t *ps)
{
    while (ps->list != NULL) {
        proc_t *p = ps->list;
        ps->list = p->next;
        proc_free(p);
    }
    uv_close((uv_handle_t *)&ps->sig_chld, NULL);
}
