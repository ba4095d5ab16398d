/* For unit tests on a real libuv loop: run it until a counter reaches a
 * value, bounded by a deadline (a condition, never a bare sleep). */
#ifndef TEST_LOOP_WAIT_H
#define TEST_LOOP_WAIT_H
#include <uv.h>

static void loop_wait_deadline(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

/* Runs loop until *counter >= n or ms pass; returns whether it got there. */
static inline int loop_wait(uv_loop_t *loop, const int *counter, int n, uint64_t ms)
{
    int late = 0;
    uv_timer_t t;
    uv_timer_init(loop, &t);
    t.data = &late;
    uv_timer_start(&t, loop_wait_deadline, ms, 0);
    while (*counter < n && !late)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return *counter >= n;
}

#endif
