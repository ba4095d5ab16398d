/* Unit tests for common/wsclient_parse.c: ws:// and wss:// URLs and the
 * server's upgrade answer, whole and byte by byte. */
#include "unit_url.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wsclient_parse.h"
#include "wsproto.h"

#define KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define OK_101                                                                                               \
    "HTTP/1.1 101 Switching Protocols\r\n"                                                                   \
    "Upgrade: websocket\r\n"                                                                                 \
    "Connection: Upgrade\r\n"                                                                                \
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"                                                 \
    "\r\n"

static void test_url_good(void **state)
{
    (void)state;
    static const unit_url_case_t good[] = {
        {"ws://example.com", 0, "example.com", 80, "/", "example.com"},
        {"wss://api.upbit.com/websocket/v1", 1, "api.upbit.com", 443, "/websocket/v1", "api.upbit.com"},
        {"wss://stream.binance.com:9443/stream?streams=a@trade/b", 1, "stream.binance.com", 9443,
         "/stream?streams=a@trade/b", "stream.binance.com:9443"},
        {"ws://10.0.0.7:8091?token=x", 0, "10.0.0.7", 8091, "/?token=x", "10.0.0.7:8091"},
        {"WSS://Host.Example:443/", 1, "Host.Example", 443, "/", "Host.Example"}, /* default port omitted */
        {"ws://[::1]:9000/relay", 0, "::1", 9000, "/relay", "[::1]:9000"},
        {"ws://localhost:1/", 0, "localhost", 1, "/", "localhost:1"},
        {"ws://localhost:65535/", 0, "localhost", 65535, "/", "localhost:65535"},
    };
    assert_urls(wsc_url_parse, good);
}

static void test_url_bad(void **state)
{
    (void)state;
    static const char *bad[] = {
        "",
        "example.com",
        "http://example.com/",
        "wss:/example.com",
        "ws://",
        "ws:///path",
        "ws://:80/",
        "ws://host:0/",
        "ws://host:65536/",
        "ws://host:123456/",
        "ws://host:/",
        "ws://host:8a/",
        "ws://user:pass@host/",
        "ws://host/a b",
        "ws://host/x#frag",
        "ws://[::1/",
        "ws://[::1]x/",
        "ws://[nothex]/",
        "ws://ho$t/",
        "ws://host/\n",
        NULL,
    };
    wsc_url_t u;
    for (int i = 0; bad[i]; i++) {
        if (wsc_url_parse(bad[i], &u) != -EINVAL)
            fail_msg("accepted bad url '%s'", bad[i]);
    }
    assert_int_equal(wsc_url_parse(NULL, &u), -EINVAL);

    char longhost[400];
    memset(longhost, 'a', sizeof longhost);
    memcpy(longhost, "ws://", 5);
    longhost[sizeof longhost - 1] = '\0';
    assert_int_equal(wsc_url_parse(longhost, &u), -EINVAL);

    char longpath[4000];
    memset(longpath, 'p', sizeof longpath);
    memcpy(longpath, "ws://h/", 7);
    longpath[sizeof longpath - 1] = '\0';
    assert_int_equal(wsc_url_parse(longpath, &u), -EINVAL);
}

/* The verdict on a whole answer fed at once (its status in *status):
 * wsc_upgrade_verify's result for key. */
#define VERDICT(resp, key, status) verdict((resp), sizeof(resp) - 1, (key), (status))

static int verdict(const char *resp, size_t len, const char *key, int *status)
{
    wsc_upgrade_t u;
    assert_int_equal(wsc_upgrade_init(&u, 0), 0);
    assert_true(wsc_upgrade_feed(&u, resp, len) > 0);
    assert_int_equal(u.done, 1);
    int rc = wsc_upgrade_verify(&u, key);
    if (status != NULL)
        *status = u.status;
    wsc_upgrade_free(&u);
    return rc;
}

static void test_upgrade_101_ok(void **state)
{
    (void)state;
    wsc_upgrade_t u;
    const char resp[] = OK_101 "\x81\x02hi"; /* a frame right behind the header */
    assert_int_equal(wsc_upgrade_init(&u, 0), 0);
    long k = wsc_upgrade_feed(&u, resp, sizeof resp - 1);
    assert_int_equal(u.done, 1);
    assert_int_equal(u.status, 101);
    assert_int_equal(k, (long)strlen(OK_101));
    assert_int_equal(wsc_upgrade_verify(&u, KEY), 0);
    wsc_upgrade_free(&u);
}

static void test_upgrade_byte_by_byte(void **state)
{
    (void)state;
    wsc_upgrade_t u;
    const char resp[] = "HTTP/1.1 101 Switching Protocols\r\n"
                        "upgrade: WebSocket\r\n"
                        "connection: keep-alive, Upgrade\r\n"
                        "sec-websocket-accept:   s3pPLMBiTxaQ9kYGzzhZRbK+xOo=  \r\n"
                        "\r\n";
    assert_int_equal(wsc_upgrade_init(&u, 0), 0);
    size_t total = 0;
    for (size_t i = 0; i < sizeof resp - 1 && !u.done; i++) {
        long k = wsc_upgrade_feed(&u, resp + i, 1);
        assert_true(k >= 0);
        total += (size_t)k;
    }
    assert_int_equal(u.done, 1);
    assert_int_equal(total, sizeof resp - 1);
    assert_int_equal(wsc_upgrade_verify(&u, KEY), 0);
    wsc_upgrade_free(&u);
}

static void test_upgrade_bad_accept(void **state)
{
    (void)state;
    const char resp[] = "HTTP/1.1 101 Switching Protocols\r\n"
                        "Upgrade: websocket\r\n"
                        "Connection: Upgrade\r\n"
                        "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n"
                        "\r\n";
    assert_int_equal(VERDICT(resp, KEY, NULL), -EPROTO);
    /* right accept, wrong key */
    assert_int_equal(VERDICT(OK_101, "AQIDBAUGBwgJCgsMDQ4PEA==", NULL), -EPROTO);
}

static void test_upgrade_missing_headers(void **state)
{
    (void)state;
    const char no_upgrade[] = "HTTP/1.1 101 Switching Protocols\r\n"
                              "Connection: Upgrade\r\n"
                              "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    assert_int_equal(VERDICT(no_upgrade, KEY, NULL), -EPROTO);
    const char ext[] = "HTTP/1.1 101 Switching Protocols\r\n"
                       "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Extensions: permessage-deflate\r\n"
                       "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    assert_int_equal(VERDICT(ext, KEY, NULL), -EPROTO); /* not asked for */
}

static void test_upgrade_429(void **state)
{
    (void)state;
    const char resp[] = "HTTP/1.1 429 Too Many Requests\r\n"
                        "Content-Length: 11\r\n"
                        "Retry-After: 5\r\n"
                        "\r\n"
                        "slow down!\n";
    int status = 0;
    assert_int_equal(VERDICT(resp, KEY, &status), 429);
    assert_int_equal(status, 429);
    const char moved[] = "HTTP/1.1 301 Moved\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(VERDICT(moved, KEY, NULL), 301);
}

static void test_upgrade_garbage_and_bounds(void **state)
{
    (void)state;
    wsc_upgrade_t u;
    assert_int_equal(wsc_upgrade_init(&u, 0), 0);
    assert_int_equal(wsc_upgrade_feed(&u, "SSH-2.0-OpenSSH\r\n", 17), -EPROTO);
    assert_int_equal(u.done, 0);
    assert_int_equal(wsc_upgrade_verify(&u, KEY), -EPROTO);
    wsc_upgrade_free(&u);

    /* A header block that never ends is cut at max_bytes. */
    assert_int_equal(wsc_upgrade_init(&u, 256), 0);
    const char start[] = "HTTP/1.1 101 Switching Protocols\r\n";
    assert_int_equal(wsc_upgrade_feed(&u, start, sizeof start - 1), (long)(sizeof start - 1));
    char line[64];
    long r = 0;
    for (int i = 0; i < 20 && r >= 0; i++) {
        snprintf(line, sizeof line, "X-Filler-%02d: aaaaaaaaaaaaaaaa\r\n", i);
        r = wsc_upgrade_feed(&u, line, strlen(line));
    }
    assert_int_equal(r, -E2BIG);
    assert_int_equal(u.done, 0);
    wsc_upgrade_free(&u);
}

UNIT_MAIN(cmocka_unit_test(test_url_good), cmocka_unit_test(test_url_bad),
          cmocka_unit_test(test_upgrade_101_ok), cmocka_unit_test(test_upgrade_byte_by_byte),
          cmocka_unit_test(test_upgrade_bad_accept), cmocka_unit_test(test_upgrade_missing_headers),
          cmocka_unit_test(test_upgrade_429), cmocka_unit_test(test_upgrade_garbage_and_bounds))
