/* The process table (supervisor/procs.c) on a real loop with real children:
 * a tiny shell worker (exchange-fanout / exchange-ingest in a temporary
 * directory) that crashes, says ready over fd 3, drains when told, or
 * ignores the drain. Waits are conditions with a deadline, never sleeps. */
#include "unit.h"

#include "loop_wait.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "procs.h"

/* {"t":"ready"} is 13 bytes: the IPC frame is a 4-byte big-endian length. */
static const char worker_sh[] =
    "#!/bin/sh\n"
    "case \"$TEST_WORKER\" in\n"
    "crash) exit 3 ;;\n"
    "ready) printf '\\000\\000\\000\\015{\"t\":\"ready\"}' >&3; head -c 1 <&3 >/dev/null; exit 0 ;;\n"
    "stubborn) printf '\\000\\000\\000\\015{\"t\":\"ready\"}' >&3; exec sleep 60 ;;\n"
    "esac\n"
    "exit 99\n";

typedef struct {
    uv_loop_t loop;
    metrics_registry_t *reg;
    procs_t ps;
    char dir[64];
    int spawned, ready, exited, crashed, ingest_restarts;
    int last_status;
    uint64_t delays[16]; /* restart delay scheduled at each crash */
    int stop_after;      /* crashes, then procs_shutdown */
    int respawn_ingest;  /* restart_ingest spawns the next ingest: 1 at once, 2 a little later */
    uv_timer_t later;    /* respawn_ingest 2: as the policy does after its epoch allocation */
} fx_t;

static void write_worker(const char *dir, const char *name)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(worker_sh, f);
    fclose(f);
    assert_int_equal(chmod(path, 0755), 0);
}

static void ev_spawned(procs_t *ps, proc_t *p)
{
    (void)p;
    ((fx_t *)ps->data)->spawned++;
}

static void ev_ready(procs_t *ps, proc_t *p)
{
    assert_int_equal(p->state, PS_RUNNING);
    ((fx_t *)ps->data)->ready++;
}

static void ev_exited(procs_t *ps, proc_t *p, int status, int crashed)
{
    fx_t *fx = ps->data;
    assert_int_equal(p->state, PS_EXITED);
    fx->last_status = status;
    if (crashed && fx->crashed < 16)
        fx->delays[fx->crashed] = uv_timer_get_due_in(&p->restart_timer);
    fx->exited++;
    fx->crashed += crashed;
    if (fx->stop_after > 0 && fx->crashed >= fx->stop_after)
        procs_shutdown(ps, 1000);
}

static void on_later(uv_timer_t *t)
{
    fx_t *fx = t->data;
    if (!fx->ps.draining)
        assert_int_equal(procs_spawn(&fx->ps, PROC_INGEST, 0), 0);
}

static void ev_restart_ingest(procs_t *ps, proc_t *p)
{
    fx_t *fx = ps->data;
    assert_int_equal(p->kind, PROC_INGEST);
    fx->ingest_restarts++;
    if (fx->respawn_ingest == 1)
        assert_int_equal(procs_spawn(ps, PROC_INGEST, 0), 0);
    else if (fx->respawn_ingest == 2)
        uv_timer_start(&fx->later, on_later, 5, 0);
}

static const procs_events_t events = {
    .spawned = ev_spawned, .ready = ev_ready, .exited = ev_exited, .restart_ingest = ev_restart_ingest};

static fx_t *fx_new(const char *mode, int min_ms, int max_ms, int crash_limit)
{
    fx_t *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/test_procs.XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    write_worker(fx->dir, "exchange-fanout");
    write_worker(fx->dir, "exchange-ingest");
    setenv("TEST_WORKER", mode, 1);
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    uv_timer_init(&fx->loop, &fx->later);
    fx->later.data = fx;
    fx->reg = metrics_registry_new();
    procs_limits_t l = {min_ms, max_ms, 60000, crash_limit};
    assert_int_equal(procs_init(&fx->ps, &fx->loop, fx->reg, fx->dir, &l, &events, fx), 0);
    return fx;
}

static void fx_free(fx_t *fx)
{
    char path[128];
    procs_kill_all(&fx->ps, SIGKILL);
    while (procs_any_alive(&fx->ps)) { /* reap what we killed */
        int st;
        pid_t pid = waitpid(-1, &st, 0);
        if (pid < 0)
            break;
        for (proc_t *p = fx->ps.list; p != NULL; p = p->next)
            if (p->pid == pid)
                p->state = PS_EXITED;
    }
    procs_close(&fx->ps);
    uv_close((uv_handle_t *)&fx->later, NULL);
    assert_int_equal(uv_run(&fx->loop, UV_RUN_DEFAULT), 0); /* every handle closed */
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    metrics_registry_free(fx->reg);
    const char *names[] = {"exchange-fanout", "exchange-ingest"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", fx->dir, names[i]);
        unlink(path);
    }
    rmdir(fx->dir);
    free(fx);
}

/* Runs the loop until *counter reaches n or ms pass; returns whether it did. */
static int run_until(fx_t *fx, const int *counter, int n, uint64_t ms)
{
    return loop_wait(&fx->loop, counter, n, ms);
}

static double counter(fx_t *fx, const char *name, const char *labels)
{
    metric_t *m = metrics_find(fx->reg, name, labels);
    return m != NULL ? metric_value(m) : 0;
}

/* A worker of kind that exits 3 at once, restarted until stop_after crashes
 * (then procs_shutdown), waited for; stop_after 0: only spawned. */
static fx_t *fx_crashing(proc_kind_t kind, int min_ms, int max_ms, int crash_limit, int stop_after)
{
    fx_t *fx = fx_new("crash", min_ms, max_ms, crash_limit);
    fx->stop_after = stop_after;
    fx->respawn_ingest = 1;
    assert_int_equal(procs_spawn(&fx->ps, kind, 0), 0);
    if (stop_after > 0)
        assert_true(loop_wait(&fx->loop, &fx->crashed, stop_after, 20000));
    return fx;
}

static void assert_delays(const fx_t *fx, const uint64_t *want, int n)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(fx->delays[i], want[i]);
}

static void test_spawn_ready_drain(void **state)
{
    (void)state;
    fx_t *fx = fx_new("ready", 50, 1000, 5);
    assert_int_equal(procs_spawn(&fx->ps, PROC_FANOUT, 0), 0);
    assert_int_equal(fx->spawned, 1);
    assert_int_equal(fx->ps.list->state, PS_STARTING);
    assert_int_equal(procs_running(&fx->ps, PROC_FANOUT), 0);
    assert_true(run_until(fx, &fx->ready, 1, 10000));
    assert_int_equal(procs_running(&fx->ps, PROC_FANOUT), 1);
    assert_null(procs_ingest(&fx->ps));
    assert_int_equal(counter(fx, "exchange_worker_spawns_total", "kind=\"fanout\""), 1);
    /* Drain: the worker reads the drain frame and exits 0, a clean exit. */
    procs_drain(fx->ps.list, 500);
    assert_int_equal(fx->ps.list->state, PS_DRAINING);
    assert_true(run_until(fx, &fx->exited, 1, 10000));
    assert_int_equal(fx->crashed, 0);
    assert_true(WIFEXITED(fx->last_status) && WEXITSTATUS(fx->last_status) == 0);
    assert_int_equal(counter(fx, "exchange_worker_exits_total", "kind=\"fanout\",how=\"clean\""), 1);
    assert_false(procs_any_alive(&fx->ps));
    assert_null(fx->ps.list); /* collected: nothing to restart */
    fx_free(fx);
}

static void test_restart_backoff_doubles_to_cap(void **state)
{
    (void)state;
    fx_t *fx = fx_crashing(PROC_FANOUT, 40, 200, 100, 5);
    assert_int_equal(fx->spawned, 5);
    assert_delays(fx, (const uint64_t[]){40, 80, 160, 200, 200}, 5);
    assert_true(WIFEXITED(fx->last_status) && WEXITSTATUS(fx->last_status) == 3);
    assert_int_equal(counter(fx, "exchange_worker_restarts_total", "kind=\"fanout\""), 4);
    assert_int_equal(counter(fx, "exchange_worker_exits_total", "kind=\"fanout\",how=\"crash\""), 5);
    assert_int_equal(counter(fx, "exchange_worker_crashloops_total", "kind=\"fanout\""), 0);
    /* The slot's history went from process to process. */
    proc_t *p = fx->ps.list;
    assert_non_null(p);
    assert_int_equal(p->restarts, 4);
    assert_int_equal(p->crashes_in_window, 5);
    fx_free(fx);
}

static void test_crash_loop_retries_at_cap(void **state)
{
    (void)state;
    fx_t *fx = fx_crashing(PROC_FANOUT, 20, 300, 3, 4);
    /* Backoff until the third crash in the window, then the cap. */
    assert_delays(fx, (const uint64_t[]){20, 40, 300, 300}, 4);
    assert_int_equal(fx->ps.list->crashloop, 1);
    /* Reported once when the slot enters the loop, not at every crash. */
    assert_int_equal(counter(fx, "exchange_worker_crashloops_total", "kind=\"fanout\""), 1);
    fx_free(fx);
}

static void test_stubborn_drain_is_killed(void **state)
{
    (void)state;
    fx_t *fx = fx_new("stubborn", 50, 1000, 5);
    assert_int_equal(procs_spawn(&fx->ps, PROC_FANOUT, 0), 0);
    assert_true(run_until(fx, &fx->ready, 1, 10000));
    procs_drain(fx->ps.list, 100);
    procs_kill_after(fx->ps.list, 150);
    assert_true(run_until(fx, &fx->exited, 1, 10000));
    assert_true(WIFSIGNALED(fx->last_status) && WTERMSIG(fx->last_status) == SIGKILL);
    assert_int_equal(fx->crashed, 0); /* told to stop: not a crash */
    assert_int_equal(counter(fx, "exchange_worker_kills_total", "kind=\"fanout\""), 1);
    fx_free(fx);
}

static void test_shutdown_cancels_restart(void **state)
{
    (void)state;
    fx_t *fx = fx_crashing(PROC_FANOUT, 100, 1000, 5, 1); /* procs_shutdown at the first crash */
    assert_int_equal(fx->ps.list->want_restart, 0);
    /* Past the restart delay, nothing was spawned again. */
    int never = 0;
    assert_false(run_until(fx, &never, 1, 300));
    assert_int_equal(fx->spawned, 1);
    fx_free(fx);
}

static void test_ingest_restart_goes_through_policy(void **state)
{
    (void)state;
    fx_t *fx = fx_crashing(PROC_INGEST, 30, 1000, 100, 2);
    assert_int_equal(fx->ingest_restarts, 1);
    assert_delays(fx, (const uint64_t[]){30, 60}, 2); /* the history carried over */
    assert_int_equal(counter(fx, "exchange_worker_restarts_total", "kind=\"ingest\""), 1);
    fx_free(fx);
}

/* The real policy spawns the next ingest after an epoch allocation, i.e.
 * later than restart_ingest: the backoff and the crash-loop count still go
 * on (in CI an ingest that could not bind its port restarted every 100 ms
 * with a new epoch each time, never reported as a crash loop). */
static void test_ingest_restart_spawned_later_keeps_history(void **state)
{
    (void)state;
    fx_t *fx = fx_new("crash", 30, 200, 4);
    fx->stop_after = 5;
    fx->respawn_ingest = 2;
    assert_int_equal(procs_spawn(&fx->ps, PROC_INGEST, 0), 0);
    assert_true(loop_wait(&fx->loop, &fx->crashed, 5, 20000));
    assert_int_equal(fx->ingest_restarts, 4);
    assert_delays(fx, (const uint64_t[]){30, 60, 120, 200, 200}, 5);
    assert_int_equal(counter(fx, "exchange_worker_crashloops_total", "kind=\"ingest\""), 1);
    fx_free(fx);
}

static void test_reload_generation_not_restarted(void **state)
{
    (void)state;
    fx_t *fx = fx_crashing(PROC_FANOUT, 30, 1000, 100, 0);
    fx->ps.generation++; /* a reload while the old slot backs off */
    assert_true(run_until(fx, &fx->crashed, 1, 10000));
    int never = 0;
    assert_false(run_until(fx, &never, 1, 200));
    assert_int_equal(fx->spawned, 1);
    assert_int_equal(fx->ps.list->want_restart, 0);
    fx_free(fx);
}

UNIT_MAIN(cmocka_unit_test(test_spawn_ready_drain), cmocka_unit_test(test_restart_backoff_doubles_to_cap),
          cmocka_unit_test(test_crash_loop_retries_at_cap), cmocka_unit_test(test_stubborn_drain_is_killed),
          cmocka_unit_test(test_shutdown_cancels_restart),
          cmocka_unit_test(test_ingest_restart_goes_through_policy),
          cmocka_unit_test(test_ingest_restart_spawned_later_keeps_history),
          cmocka_unit_test(test_reload_generation_not_restarted))
