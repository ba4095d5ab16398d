/* Shared by the hub and protocol unit tests: a fake client that records
 * every frame the hub sends it, and helpers to build a hub and publish. */
#ifndef TEST_FAKE_HUB_H
#define TEST_FAKE_HUB_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub.h"

/* A fake client records every frame it gets (payload text, tag). */
#define MAXF 256
typedef struct {
    char *text[MAXF];
    const void *tag[MAXF];
    int n;
    int refuse; /* return -ENOBUFS */
} fake_t;

static inline int fake_send(void *user, rbuf_t *frame, const void *tag)
{
    fake_t *f = user;
    if (f->refuse)
        return -105;
    size_t h = 2;
    unsigned char b1 = (unsigned char)frame->data[1];
    if ((b1 & 0x7f) == 126)
        h = 4;
    else if ((b1 & 0x7f) == 127)
        h = 10;
    assert_true(f->n < MAXF);
    f->text[f->n] = strndup(frame->data + h, frame->len - h);
    f->tag[f->n] = tag;
    f->n++;
    return 0;
}

static inline void fake_reset(fake_t *f)
{
    for (int i = 0; i < f->n; i++)
        free(f->text[i]);
    f->n = 0;
}

static inline hub_t *mkhub(int history, int maxsubs)
{
    hub_opts_t o = {.history = history, .max_subscriptions = maxsubs};
    hub_ops_t ops = {.send = fake_send};
    return hub_new(&o, &ops);
}

static inline int pub(hub_t *h, const char *ch, long seq, long epoch)
{
    char buf[512];
    const char *t = strncmp(ch, "trade", 5) == 0       ? "trade"
                    : strncmp(ch, "orderbook", 9) == 0 ? "orderbook"
                                                       : "ticker";
    snprintf(buf, sizeof buf,
             "{\"channel\":\"%s\",\"type\":\"%s\",\"exchange\":\"x\",\"symbol\":\"A-B\",\"seq\":%ld,"
             "\"epoch\":%ld,\"ts\":1,\"recv_ts\":2}",
             ch, t, seq, epoch);
    return hub_publish(h, buf, strlen(buf), NULL, NULL, NULL);
}

/* seq of a data frame, -1 for a non-data frame */
static inline long seq_of(const char *text)
{
    const char *p = strstr(text, "\"seq\":");
    if (p == NULL || strstr(text, "\"channel\"") == NULL)
        return -1;
    return strtol(p + 6, NULL, 10);
}

#endif
