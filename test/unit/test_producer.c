/* Unit tests for workers/ingest/producer.c against a broker that accepts
 * connections and never answers: the metadata warm-up runs off the loop
 * (producer_create does not wait for it), and the producer holds a
 * reference to the value it is given, never a copy, dropped exactly once. */
#include "unit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "buf.h"
#include "config.h"
#include "log.h"
#include "producer.h"
#include "rbuf.h"

typedef struct {
    int fd; /* listening, never accepting: connections hang in the backlog */
    cfg_t *cfg;
    producer_t *p;
} pfx_t;

static void pfx_start(pfx_t *x, int transactions)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    x->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(x->fd >= 0);
    assert_int_equal(bind(x->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(x->fd, 16), 0);
    assert_int_equal(getsockname(x->fd, (struct sockaddr *)&a, &al), 0);
    char ini[160];
    snprintf(ini, sizeof(ini), "[kafka]\nbrokers = 127.0.0.1:%d\ntransactions = %s\n", ntohs(a.sin_port),
             transactions ? "true" : "false");
    buf_t err;
    buf_init(&err);
    x->cfg = cfg_load_string(ini, "test", &err);
    buf_free(&err);
    assert_non_null(x->cfg);
    uint64_t t0 = uv_hrtime();
    assert_int_equal(producer_create(uv_default_loop(), x->cfg, &x->p), 0);
    /* The warm-up's rd_kafka_metadata waits its full 1000 ms for this
     * broker: on the loop, producer_create would take that long. */
    uint64_t ms = (uv_hrtime() - t0) / 1000000u;
    if (ms >= 1000)
        fail_msg("producer_create took %llu ms: it waited for the metadata warm-up", (unsigned long long)ms);
}

/* Destroys the producer. Not transactional: runs the loop until its handles
 * and work items are gone (the warm-up's client is destroyed once its work
 * item returns, within the warm-up's 1 s). Transactional: init_transactions
 * waits up to PRODUCER_TXN_TIMEOUT_MS on its work thread for this broker,
 * and a client stuck there is left to exit() (its config with it): only
 * the closes are run, so the last test of the file. */
static void pfx_stop(pfx_t *x, int transactions)
{
    producer_destroy(x->p);
    uv_run(uv_default_loop(), transactions ? UV_RUN_NOWAIT : UV_RUN_DEFAULT);
    if (!transactions)
        cfg_free(x->cfg);
    close(x->fd);
}

static void check_reference(int transactions)
{
    pfx_t x;
    pfx_start(&x, transactions);
    static const char json[] = "{\"channel\":\"trade.upbit.BTC-KRW\",\"seq\":1}";
    rbuf_t *m = rbuf_new(json, sizeof(json) - 1);
    assert_non_null(m);
    assert_int_equal(producer_send(x.p, "trade.upbit.BTC-KRW", m, 7), 0);
    assert_int_equal(m->refs, 2); /* the producer's reference, no copy */
    assert_int_equal(producer_queue_len(x.p), 1);
    pfx_stop(&x, transactions); /* purged: the delivery report (or the pending record) lets go */
    assert_int_equal(m->refs, 1);
    rbuf_unref(m);
}

/* Also: producer_create did not wait for the warm-up (pfx_start). */
static void test_send_references_value(void **state)
{
    (void)state;
    check_reference(0);
}

/* The warm-up goes before init_transactions, on the same work thread. */
static void test_send_references_value_transactional(void **state)
{
    (void)state;
    check_reference(1);
}

int main(void)
{
    log_set_level("error");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_send_references_value),
        cmocka_unit_test(test_send_references_value_transactional),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    fflush(NULL);
    /* Not exit(): libuv's destructor joins its work threads, one of them in
     * the transactional test's init_transactions for up to 10 s. */
    _exit(failed != 0);
}
