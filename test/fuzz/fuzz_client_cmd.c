/* libFuzzer target: client commands (workers/fanout/protocol.c) against a
 * real hub (hub.c) with fake clients. Every frame a client receives must be
 * one well-formed unmasked WebSocket text frame holding a JSON object, and
 * everything is freed at the end (leaks are crashes).
 * Input: records separated by 0xFF. A record whose first byte is
 *   0: publish the rest to the hub (a message from the source),
 *   1: the rest is a request from client A,  2: from client B,
 *   3: client A disconnects and a new A connects,
 *   4: client A stops (or resumes) taking frames (a slow client),
 *   anything else: the whole record is a request from client A. */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hub.h"
#include "protocol.h"
#include "log.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define MAX_RPS 20

typedef struct {
    int refuse;
    int frames;
} fake_t;

static int fake_send(void *user, rbuf_t *frame, const void *tag)
{
    fake_t *f = user;
    (void)tag;
    const unsigned char *p = (const unsigned char *)frame->data;
    FUZZ_CHECK(frame->len >= 2);
    FUZZ_CHECK(p[0] == 0x81);       /* FIN + text */
    FUZZ_CHECK((p[1] & 0x80) == 0); /* server frames are not masked */
    size_t h = 2, len = p[1] & 0x7f;
    if (len == 126) {
        FUZZ_CHECK(frame->len >= 4);
        len = (size_t)p[2] << 8 | p[3];
        h = 4;
    } else if (len == 127) {
        FUZZ_CHECK(frame->len >= 10);
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        h = 10;
    }
    FUZZ_CHECK(h + len == frame->len);
    json_error_t err;
    json_t *m = json_loadb(frame->data + h, len, 0, &err);
    if (m == NULL || !json_is_object(m)) {
        fprintf(stderr, "client got a frame that is not a JSON object: %.*s\n", (int)len, frame->data + h);
        abort();
    }
    json_decref(m);
    if (f->refuse)
        return -ENOBUFS;
    f->frames++;
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level("error");
    return 0;
}

static void publish(hub_t *h, const char *ch, const char *type, int seq, int epoch)
{
    char m[512];
    int n = snprintf(m, sizeof m,
                     "{\"channel\":\"%s\",\"type\":\"%s\",\"exchange\":\"upbit\",\"symbol\":\"BTC-KRW\","
                     "\"seq\":%d,\"epoch\":%d,\"ts\":1700000000000,\"recv_ts\":1700000000005,"
                     "\"price\":\"1.5\",\"qty\":\"2\"}",
                     ch, type, seq, epoch);
    (void)hub_publish(h, m, (size_t)n, NULL, NULL, NULL);
}

typedef struct {
    hub_client_t *hc;
    proto_rate_t rate;
} cl_t;

static void request(cl_t *c, const uint8_t *p, size_t n, uint64_t now)
{
    int limited = 0;
    int r = proto_handle(c->hc, &c->rate, MAX_RPS, (const char *)p, n, now, &limited);
    FUZZ_CHECK(r == PROTO_OK || r == PROTO_CLOSE_POLICY);
    if (r == PROTO_CLOSE_POLICY) {
        /* the server closes the connection (1008); the user reconnects */
        void *user = hub_client_user(c->hc);
        hub_t *h = hub_client_hub(c->hc);
        hub_client_free(c->hc);
        c->hc = hub_client_new(h, user);
        FUZZ_CHECK(c->hc != NULL);
        memset(&c->rate, 0, sizeof c->rate);
    }
    FUZZ_CHECK(hub_client_sub_count(c->hc) <= hub_max_subscriptions(hub_client_hub(c->hc)));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    hub_opts_t o = {.history = 4, .max_subscriptions = 16};
    hub_ops_t ops = {.send = fake_send};
    hub_t *h = hub_new(&o, &ops);
    FUZZ_CHECK(h != NULL);
    publish(h, "ticker.upbit.BTC-KRW", "ticker", 1, 5);
    publish(h, "ticker.upbit.BTC-KRW", "ticker", 2, 5);
    publish(h, "trade.upbit.BTC-KRW", "trade", 1, 5);
    publish(h, "orderbook.upbit.BTC-KRW", "orderbook", 7, 5);
    fake_t fa = {0}, fb = {0};
    cl_t a = {.hc = hub_client_new(h, &fa)}, b = {.hc = hub_client_new(h, &fb)};
    FUZZ_CHECK(a.hc != NULL && b.hc != NULL);
    uint64_t now = 1700000000000ull;
    size_t off = 0;
    int recs = 0;
    while (off < size && recs++ < 512) {
        const uint8_t *p;
        size_t n = fuzz_next_record(data, size, &off, 0xFF, &p);
        now += 13;
        int op = n > 0 ? p[0] : -1;
        switch (op) {
        case 0: {
            int64_t ts, rts;
            int r = hub_publish(h, (const char *)p + 1, n - 1, NULL, &ts, &rts);
            FUZZ_CHECK(r == HUB_ACCEPTED || r == HUB_FENCED || r == HUB_DUPLICATE || r == -EINVAL);
            break;
        }
        case 1: request(&a, p + 1, n - 1, now); break;
        case 2: request(&b, p + 1, n - 1, now); break;
        case 3:
            hub_client_free(a.hc);
            a.hc = hub_client_new(h, &fa);
            FUZZ_CHECK(a.hc != NULL);
            memset(&a.rate, 0, sizeof a.rate);
            break;
        case 4: fa.refuse = !fa.refuse; break;
        default: request(&a, p, n, now); break;
        }
        FUZZ_CHECK(hub_channel_count(h) <= hub_channel_slots(h));
    }
    /* A list at the end touches every channel slot left. */
    request(&b, (const uint8_t *)"{\"op\":\"list\"}", 13, now + 5000);
    hub_client_free(a.hc);
    hub_client_free(b.hc);
    hub_free(h);
    return 0;
}
