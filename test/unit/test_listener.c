/* Unit tests for common/listener.c: numeric and named hosts, port 0,
 * SO_REUSEPORT sharing, and the errors for bad or unknown addresses. */
#include "unit.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "listener.h"

/* A client connect to 127.0.0.1:port succeeds (the backlog takes it). */
static void assert_connects(int port)
{
    int c = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(c, (struct sockaddr *)&sa, sizeof sa), 0);
    close(c);
}

static void test_numeric_and_port_zero(void **state)
{
    (void)state;
    int port = 0;
    int fd = listener_open("127.0.0.1:0", 0, 16, &port);
    assert_true(fd >= 0);
    assert_true(port > 0);
    assert_connects(port);
    close(fd);
    fd = listener_open("*:0", 0, 16, &port); /* every IPv4 address */
    assert_true(fd >= 0);
    assert_connects(port);
    close(fd);
}

/* A host name resolves (it used to pass validation and then fail). */
static void test_host_name(void **state)
{
    (void)state;
    int port = 0;
    int fd = listener_open("localhost:0", 0, 16, &port);
    assert_true(fd >= 0);
    assert_true(port > 0);
    close(fd);
}

static void test_reuseport(void **state)
{
    (void)state;
    int port = 0;
    int a = listener_open("127.0.0.1:0", 1, 16, &port);
    assert_true(a >= 0);
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    int b = listener_open(addr, 1, 16, NULL); /* a second worker on the port */
    assert_true(b >= 0);
    close(b);
    close(a);
    a = listener_open("127.0.0.1:0", 0, 16, &port);
    assert_true(a >= 0);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    assert_int_equal(listener_open(addr, 0, 16, NULL), -EADDRINUSE);
    close(a);
}

static void test_errors(void **state)
{
    (void)state;
    assert_int_equal(listener_open("127.0.0.1", 0, 16, NULL), -EINVAL);
    assert_int_equal(listener_open("127.0.0.1:99999", 0, 16, NULL), -EINVAL);
    assert_int_equal(listener_open(NULL, 0, 16, NULL), -EINVAL);
    int r = listener_open("no-such-host.invalid:0", 0, 16, NULL);
    assert_true(r < 0);
    assert_true(r != -EINVAL);
    /* 192.0.2.1 (TEST-NET-1) is not ours: bind fails with the errno */
    assert_int_equal(listener_open("192.0.2.1:0", 0, 16, NULL), -EADDRNOTAVAIL);
}

static void on_conn(uv_stream_t *s, int status)
{
    (void)s;
    (void)status;
}

static void test_tcp(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_tcp_t tcp;
    int port = 0;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(listener_tcp(&loop, &tcp, "127.0.0.1:0", 16, on_conn, &port), 0);
    assert_true(port > 0);
    assert_connects(port);
    uv_close((uv_handle_t *)&tcp, NULL);
    uv_tcp_t bad;
    assert_int_equal(listener_tcp(&loop, &bad, "nonsense", 16, on_conn, NULL), -EINVAL);
    uv_close((uv_handle_t *)&bad, NULL); /* initialized whatever the result */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

UNIT_MAIN(cmocka_unit_test(test_numeric_and_port_zero), cmocka_unit_test(test_host_name),
          cmocka_unit_test(test_reuseport), cmocka_unit_test(test_errors), cmocka_unit_test(test_tcp))
