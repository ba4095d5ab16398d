/* Channels, subscriptions and broadcast. A client-channel pair is one edge
 * kept in both the channel's subscriber array and the client's edge array
 * (each edge knows its index in both, so removal is O(1)); its count is how
 * many of the client's subscriptions cover the channel, so a message reaches
 * a client once however many patterns match.
 *
 * Order and resume: a channel accepts a higher epoch (any seq) or a higher
 * seq in its epoch. Its history keeps (epoch, seq) across epochs and marks
 * each entry that follows its predecessor without loss, so a resume is
 * answered from history only over an unbroken run. A since ahead of this
 * instance is the client's floor on that channel (its edge is gated):
 * nothing at or below it is sent, so a client that resumes on a lagging
 * instance never goes back. A since behind needs no floor: everything sent
 * from then on is newer (history after it, the snapshot, live). */
#include "hub.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "strmap.h"
#include "wsserver.h"

typedef struct edge_s {
    hub_client_t *c;
    hub_channel_t *ch;
    int count;
    int ci;                  /* index in ch->subs */
    int ki;                  /* index in c->edges */
    unsigned char gated;     /* the client has a floor on ch (c->floors) */
    unsigned char replaying; /* a resume replay waits for room (h->replays): live waits in the history */
} edge_t;

/* A resume replay waiting for room on its client: the position the client
 * has on the edge's channel. */
typedef struct {
    edge_t *e;
    int64_t epoch, seq;
} replay_t;

typedef struct {
    rbuf_t *b;
    int64_t epoch, seq;
    int cont; /* follows the message accepted before it with nothing missing */
} hist_t;

struct hub_channel_s {
    char *name;
    int snap;  /* keeps a snapshot and conflates (everything but trades) */
    int known; /* has data */
    int has_seq;
    int brk; /* the source may have lost messages before the next one */
    int64_t epoch, last_seq;
    rbuf_t *snapshot;
    hist_t *hist; /* ring of h->opts.history entries */
    int hstart, hlen;
    edge_t **subs;
    int nsubs, capsubs;
    strmap_node_t node; /* in h->names, keyed by name */
    int index;          /* in h->chans */
};

typedef struct {
    char *pattern;
    int wildcard;
    int pi; /* index in h->pats when wildcard */
} sub_t;

/* A since ahead of this instance; kept on the client (not the edge, which
 * stays small) so that a later cover of the channel (pattern, resubscribe)
 * is gated too; dropped once the channel passes it. */
typedef struct {
    char *channel;
    int64_t epoch, seq;
} floor_t;

struct hub_client_s {
    hub_t *h;
    void *user;
    sub_t *subs;
    int nsubs, capsubs;
    edge_t **edges;
    int nedges, capedges;
    floor_t *floors;
    int nfloors, capfloors;
};

typedef struct {
    hub_client_t *c;
    int si; /* index in c->subs */
} pat_t;

struct hub_s {
    hub_opts_t opts;
    hub_ops_t ops;
    hub_stats_t stats;
    strmap_t names; /* channels by name */
    hub_channel_t **chans;
    int nchans, capchans;
    int nknown;
    pat_t *pats;
    int npats, cappats;
    int64_t max_epoch;
    int has_epoch;
    replay_t *replays;
    int nreplays, capreplays;
};

/* ---- small helpers -------------------------------------------------------- */

static int grow(void **arr, int *cap, int need, size_t elem)
{
    if (need <= *cap)
        return 0;
    /* Start small: most clients hold one subscription (idle memory). */
    int ncap = *cap ? *cap * 2 : 2;
    while (ncap < need)
        ncap *= 2;
    void *n = realloc(*arr, (size_t)ncap * elem);
    if (n == NULL)
        return -ENOMEM;
    *arr = n;
    *cap = ncap;
    return 0;
}

/* (e1, s1) compared with (e2, s2): <0, 0, >0. */
static int pos_cmp(int64_t e1, int64_t s1, int64_t e2, int64_t s2)
{
    if (e1 != e2)
        return e1 < e2 ? -1 : 1;
    return s1 < s2 ? -1 : s1 > s2;
}

/* ---- channels ------------------------------------------------------------- */

static hub_channel_t *chan_find_n(const hub_t *h, const char *name, size_t n)
{
    strmap_node_t *e = strmap_get(&h->names, name, n);
    return e ? STRMAP_ENTRY(e, hub_channel_t, node) : NULL;
}

static hub_channel_t *chan_find(const hub_t *h, const char *name)
{
    return chan_find_n(h, name, strlen(name));
}

static hist_t *hist_at(const hub_t *h, const hub_channel_t *ch, int i)
{
    return &ch->hist[(ch->hstart + i) % h->opts.history];
}

static void chan_destroy(hub_t *h, hub_channel_t *ch)
{
    for (int i = 0; i < ch->hlen; i++)
        rbuf_unref(hist_at(h, ch, i)->b);
    free(ch->hist);
    rbuf_unref(ch->snapshot);
    free(ch->subs);
    free(ch->name);
    free(ch);
}

static int edge_attach(hub_client_t *c, hub_channel_t *ch, edge_t **out);

static hub_channel_t *chan_create(hub_t *h, const char *name)
{
    if (grow((void **)&h->chans, &h->capchans, h->nchans + 1, sizeof(*h->chans)) < 0)
        return NULL;
    hub_channel_t *ch = calloc(1, sizeof(*ch));
    if (ch == NULL)
        return NULL;
    if ((ch->name = strdup(name)) == NULL ||
        (h->opts.history > 0 && (ch->hist = calloc((size_t)h->opts.history, sizeof(hist_t))) == NULL)) {
        free(ch->name);
        free(ch);
        return NULL;
    }
    ch->snap = strncmp(name, "trade.", 6) != 0;
    strmap_put(&h->names, &ch->node, ch->name, strlen(ch->name));
    ch->index = h->nchans;
    h->chans[h->nchans++] = ch;
    /* Pattern subscribers cover channels that appear later. */
    for (int i = 0; i < h->npats; i++) {
        pat_t *p = &h->pats[i];
        if (msg_channel_match(p->c->subs[p->si].pattern, name))
            (void)edge_attach(p->c, ch, NULL);
    }
    return ch;
}

/* Free a channel nobody needs: no data and no subscriber. */
static void chan_maybe_gc(hub_t *h, hub_channel_t *ch)
{
    if (ch->known || ch->nsubs > 0)
        return;
    strmap_del(&h->names, &ch->node);
    int i = ch->index;
    h->chans[i] = h->chans[--h->nchans];
    h->chans[i]->index = i;
    chan_destroy(h, ch);
}

/* ---- edges ---------------------------------------------------------------- */

static edge_t *edge_find(const hub_client_t *c, const hub_channel_t *ch)
{
    if (c->nedges <= ch->nsubs) {
        for (int i = 0; i < c->nedges; i++)
            if (c->edges[i]->ch == ch)
                return c->edges[i];
    } else {
        for (int i = 0; i < ch->nsubs; i++)
            if (ch->subs[i]->c == c)
                return ch->subs[i];
    }
    return NULL;
}

/* Adds one cover of ch by c. *out (optional) is the edge when it is new
 * (first cover), else NULL. */
static int edge_attach(hub_client_t *c, hub_channel_t *ch, edge_t **out)
{
    if (out)
        *out = NULL;
    edge_t *e = edge_find(c, ch);
    if (e != NULL) {
        e->count++;
        return 0;
    }
    if (grow((void **)&ch->subs, &ch->capsubs, ch->nsubs + 1, sizeof(*ch->subs)) < 0 ||
        grow((void **)&c->edges, &c->capedges, c->nedges + 1, sizeof(*c->edges)) < 0)
        return -ENOMEM;
    if ((e = calloc(1, sizeof(*e))) == NULL)
        return -ENOMEM;
    e->c = c;
    e->ch = ch;
    e->count = 1;
    e->ci = ch->nsubs;
    ch->subs[ch->nsubs++] = e;
    e->ki = c->nedges;
    c->edges[c->nedges++] = e;
    for (int i = 0; i < c->nfloors && !e->gated; i++)
        e->gated = strcmp(c->floors[i].channel, ch->name) == 0;
    if (out)
        *out = e;
    return 0;
}

/* The replay of e, waiting for room, goes (e is detached). */
static void replay_drop(hub_t *h, const edge_t *e)
{
    for (int i = 0; i < h->nreplays; i++)
        if (h->replays[i].e == e) {
            h->replays[i] = h->replays[--h->nreplays];
            return;
        }
}

/* Removes one cover (all of them with all=1). */
static void edge_detach(hub_t *h, edge_t *e, int all)
{
    if (!all && --e->count > 0)
        return;
    if (e->replaying)
        replay_drop(h, e);
    hub_channel_t *ch = e->ch;
    hub_client_t *c = e->c;
    ch->subs[e->ci] = ch->subs[--ch->nsubs];
    ch->subs[e->ci]->ci = e->ci;
    c->edges[e->ki] = c->edges[--c->nedges];
    c->edges[e->ki]->ki = e->ki;
    free(e);
    chan_maybe_gc(h, ch);
}

/* ---- hub ------------------------------------------------------------------ */

hub_t *hub_new(const hub_opts_t *opts, const hub_ops_t *ops)
{
    hub_t *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    h->opts = *opts;
    if (h->opts.history < 0)
        h->opts.history = 0;
    h->ops = *ops;
    if (strmap_init(&h->names, 64) < 0) {
        free(h);
        return NULL;
    }
    return h;
}

void hub_free(hub_t *h)
{
    if (h == NULL)
        return;
    for (int i = 0; i < h->nchans; i++) {
        hub_channel_t *ch = h->chans[i];
        for (int k = 0; k < ch->nsubs; k++)
            ch->subs[k]->ch = NULL;
        chan_destroy(h, ch);
    }
    free(h->chans);
    strmap_free(&h->names);
    free(h->pats);
    free(h->replays);
    free(h);
}

const hub_stats_t *hub_stats(const hub_t *h)
{
    return &h->stats;
}

int64_t hub_max_epoch(const hub_t *h)
{
    return h->max_epoch;
}

int hub_channel_count(const hub_t *h)
{
    return h->nknown;
}

int hub_max_subscriptions(const hub_t *h)
{
    return h->opts.max_subscriptions;
}

int hub_channel_slots(const hub_t *h)
{
    return h->nchans;
}

const char *hub_channel_known(const hub_t *h, int i)
{
    if (i < 0 || i >= h->nchans || !h->chans[i]->known)
        return NULL;
    return h->chans[i]->name;
}

/* ---- floors --------------------------------------------------------------- */

static int floor_find(const hub_client_t *c, const char *channel)
{
    for (int i = 0; i < c->nfloors; i++)
        if (strcmp(c->floors[i].channel, channel) == 0)
            return i;
    return -1;
}

static void floor_remove(hub_client_t *c, int i)
{
    free(c->floors[i].channel);
    memmove(c->floors + i, c->floors + i + 1, (size_t)(--c->nfloors - i) * sizeof(*c->floors));
}

/* Remember a since ahead of this instance and gate e on it. At most
 * max_subscriptions (1024 when unlimited) per client: the oldest goes first;
 * without memory there is no floor (the snapshot rules then). */
static void floor_set(edge_t *e, int64_t epoch, int64_t seq)
{
    hub_client_t *c = e->c;
    const char *channel = e->ch->name;
    e->gated = 1;
    int i = floor_find(c, channel);
    if (i >= 0) {
        if (pos_cmp(epoch, seq, c->floors[i].epoch, c->floors[i].seq) > 0) {
            c->floors[i].epoch = epoch;
            c->floors[i].seq = seq;
        }
        return;
    }
    int cap = c->h->opts.max_subscriptions > 0 ? c->h->opts.max_subscriptions : 1024;
    if (c->nfloors >= cap)
        floor_remove(c, 0); /* oldest first: the list is kept in order */
    char *name = strdup(channel);
    if (name == NULL || grow((void **)&c->floors, &c->capfloors, c->nfloors + 1, sizeof(*c->floors)) < 0) {
        free(name);
        return;
    }
    c->floors[c->nfloors++] = (floor_t){.channel = name, .epoch = epoch, .seq = seq};
}

/* Does a message at (epoch, seq) pass gated e's floor? Once one does, every
 * later one does too (the channel only moves forward): the floor is dropped. */
static int gate_pass(edge_t *e, int64_t epoch, int64_t seq)
{
    int i = floor_find(e->c, e->ch->name);
    if (i >= 0 && pos_cmp(epoch, seq, e->c->floors[i].epoch, e->c->floors[i].seq) <= 0)
        return 0;
    e->gated = 0;
    if (i >= 0)
        floor_remove(e->c, i);
    return 1;
}

/* ---- routing fields -------------------------------------------------------- */

static void deliver(hub_t *h, edge_t *e, rbuf_t *frame, const void *tag)
{
    int r = h->ops.send(e->c->user, frame, tag);
    if (r < 0) {
        h->stats.send_failures++;
        return;
    }
    h->stats.deliveries++;
    if (r == 1)
        h->stats.conflated++;
}

void hub_channel_break(hub_t *h, const char *channel, size_t len)
{
    hub_channel_t *ch = chan_find_n(h, channel, len);
    if (ch != NULL && ch->has_seq)
        ch->brk = 1;
}

/* 1 when the transport's key or epoch header contradicts the message. */
static int route_mismatch(const msg_meta_t *m, const hub_route_t *r)
{
    if (r == NULL)
        return 0;
    if (r->key != NULL && (r->key_len != strlen(m->channel) || memcmp(r->key, m->channel, r->key_len) != 0))
        return 1;
    return r->epoch_hdr == HUB_EPOCH_BAD || (r->epoch_hdr == HUB_EPOCH_SET && r->epoch != m->epoch);
}

int hub_publish(hub_t *h, const char *json, size_t len, const hub_route_t *route, int64_t *ts_out,
                int64_t *recv_ts_out)
{
    msg_meta_t m;
    if (msg_parse_meta(json, len, &m) < 0 || !msg_channel_valid(m.channel, 0)) {
        h->stats.invalid++;
        return -EINVAL;
    }
    if (route_mismatch(&m, route)) {
        h->stats.mismatched++;
        return HUB_MISMATCH;
    }
    if (ts_out)
        *ts_out = m.ts;
    if (recv_ts_out)
        *recv_ts_out = m.recv_ts;
    /* Order per channel: a zombie leader's messages (older epoch on this
     * channel) and repeats never reach clients; other channels, which may
     * lag on other partitions, are judged on their own. */
    hub_channel_t *ch = chan_find(h, m.channel);
    if (ch != NULL && ch->has_seq) {
        if (m.epoch < ch->epoch) {
            h->stats.fenced++;
            return HUB_FENCED;
        }
        if (m.epoch == ch->epoch && m.seq <= ch->last_seq) {
            h->stats.duplicate++;
            return HUB_DUPLICATE;
        }
    }
    if (ch == NULL && (ch = chan_create(h, m.channel)) == NULL)
        return -ENOMEM;
    rbuf_t *frame = wss_frame(WSS_OP_TEXT, json, len);
    if (frame == NULL)
        return -ENOMEM;
    /* A new epoch restarts every channel at seq 1. */
    int cont = ch->has_seq && !ch->brk && (m.epoch == ch->epoch ? m.seq == ch->last_seq + 1 : m.seq == 1);
    if (ch->has_seq && !cont) {
        h->stats.gaps++;
        if (h->ops.gap)
            h->ops.gap(ch->name, ch->epoch, ch->last_seq, m.epoch, m.seq);
    }
    ch->brk = 0;
    ch->epoch = m.epoch;
    ch->last_seq = m.seq;
    ch->has_seq = 1;
    if (!h->has_epoch || m.epoch > h->max_epoch)
        h->max_epoch = m.epoch;
    h->has_epoch = 1;
    if (!ch->known) {
        ch->known = 1;
        h->nknown++;
    }
    if (ch->snap) {
        rbuf_unref(ch->snapshot);
        ch->snapshot = rbuf_ref(frame);
    }
    if (h->opts.history > 0) {
        int cap = h->opts.history;
        if (ch->hlen == cap) {
            rbuf_unref(ch->hist[ch->hstart].b);
            ch->hstart = (ch->hstart + 1) % cap;
            ch->hlen--;
        }
        hist_t *e = hist_at(h, ch, ch->hlen);
        e->b = rbuf_ref(frame);
        e->epoch = m.epoch;
        e->seq = m.seq;
        e->cont = cont;
        ch->hlen++;
    }
    h->stats.accepted++;
    const void *tag = ch->snap ? ch : NULL;
    for (int i = 0; i < ch->nsubs; i++) {
        edge_t *e = ch->subs[i];
        if (e->replaying)
            continue; /* in the history now: its replay reaches it */
        if (e->gated && !gate_pass(e, m.epoch, m.seq))
            continue;
        deliver(h, e, frame, tag);
    }
    rbuf_unref(frame);
    return HUB_ACCEPTED;
}

/* ---- clients -------------------------------------------------------------- */

hub_client_t *hub_client_new(hub_t *h, void *user)
{
    hub_client_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->h = h;
    c->user = user;
    return c;
}

static void pat_remove(hub_t *h, int pi)
{
    h->pats[pi] = h->pats[--h->npats];
    if (pi < h->npats) {
        pat_t *p = &h->pats[pi];
        p->c->subs[p->si].pi = pi;
    }
}

void hub_client_free(hub_client_t *c)
{
    if (c == NULL)
        return;
    hub_t *h = c->h;
    while (c->nedges > 0)
        edge_detach(h, c->edges[c->nedges - 1], 1);
    for (int i = 0; i < c->nsubs; i++) {
        if (c->subs[i].wildcard)
            pat_remove(h, c->subs[i].pi);
        free(c->subs[i].pattern);
    }
    for (int i = 0; i < c->nfloors; i++)
        free(c->floors[i].channel);
    free(c->floors);
    free(c->subs);
    free(c->edges);
    free(c);
}

void *hub_client_user(const hub_client_t *c)
{
    return c->user;
}

hub_t *hub_client_hub(const hub_client_t *c)
{
    return c->h;
}

int hub_client_sub_count(const hub_client_t *c)
{
    return c->nsubs;
}

const char *hub_client_sub(const hub_client_t *c, int i)
{
    return i >= 0 && i < c->nsubs ? c->subs[i].pattern : NULL;
}

static int sub_index(const hub_client_t *c, const char *pattern)
{
    for (int i = 0; i < c->nsubs; i++)
        if (strcmp(c->subs[i].pattern, pattern) == 0)
            return i;
    return -1;
}

int hub_client_has_sub(const hub_client_t *c, const char *pattern)
{
    return sub_index(c, pattern) >= 0;
}

int hub_client_send_text(hub_client_t *c, const char *text, size_t len)
{
    rbuf_t *b = wss_frame(WSS_OP_TEXT, text, len);
    if (b == NULL)
        return -ENOMEM;
    int r = c->h->ops.send(c->user, b, NULL);
    rbuf_unref(b);
    return r;
}

/* ---- resume ----------------------------------------------------------------- */

/* Index of the first history entry after (epoch, seq): the history is in
 * position order (a channel only moves forward). */
static int hist_after(const hub_t *h, const hub_channel_t *ch, int64_t epoch, int64_t seq)
{
    int lo = 0, hi = ch->hlen;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        const hist_t *x = hist_at(h, ch, mid);
        if (pos_cmp(x->epoch, x->seq, epoch, seq) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Does history entry i follow (epoch, seq) with nothing missing: the next
 * seq of its epoch, or an unbroken successor of that position itself
 * (across an epoch change)? */
static int hist_follows(const hub_t *h, const hub_channel_t *ch, int i, int64_t epoch, int64_t seq)
{
    const hist_t *x = hist_at(h, ch, i), *prev = i > 0 ? hist_at(h, ch, i - 1) : NULL;
    return (x->epoch == epoch && x->seq == seq + 1) ||
           (x->cont && prev != NULL && prev->epoch == epoch && prev->seq == seq);
}

enum {
    RESUME_NONE,   /* the channel has no data here */
    RESUME_REPLAY, /* history from index *from on fills the gap (maybe nothing) */
    RESUME_AHEAD,  /* since is past this instance's newest message */
    RESUME_GAP,    /* missed messages this instance does not hold */
};

static int resume_plan(const hub_t *h, const hub_channel_t *ch, int64_t epoch, int64_t seq, int *from)
{
    *from = ch->hlen;
    if (!ch->known)
        return RESUME_NONE;
    int c = pos_cmp(epoch, seq, ch->epoch, ch->last_seq);
    if (c >= 0)
        return c > 0 ? RESUME_AHEAD : RESUME_REPLAY;
    int n = ch->hlen, i = hist_after(h, ch, epoch, seq);
    if (i == n)
        return RESUME_GAP;                   /* no history */
    if (!hist_follows(h, ch, i, epoch, seq)) /* the first entry after since must follow it */
        return RESUME_GAP;
    for (int k = i + 1; k < n; k++)
        if (!hist_at(h, ch, k)->cont)
            return RESUME_GAP; /* this instance skipped something after since */
    *from = i;
    return RESUME_REPLAY;
}

/* The plan for a since on ch, its position resolved into (epoch, seq); -1
 * when it gives no position. A legacy since is a seq in the channel's
 * current epoch here. One past this instance's newest message cannot be told
 * from a seq of an older epoch, so it is a gap (snapshot), never a floor
 * that could silence the channel. */
static int since_plan(const hub_t *h, const hub_channel_t *ch, const hub_pos_t *p, int64_t *epoch,
                      int64_t *seq, int *from)
{
    *from = ch->hlen;
    if (!p->has_epoch && !ch->has_seq)
        return -1;
    *epoch = p->has_epoch ? p->epoch : ch->epoch;
    *seq = p->seq;
    int plan = resume_plan(h, ch, *epoch, *seq, from);
    if (!p->has_epoch && plan == RESUME_AHEAD)
        return RESUME_GAP;
    return plan;
}

int hub_resume_check(const hub_client_t *c, const char *channel, const hub_pos_t *since)
{
    const hub_channel_t *ch = chan_find(c->h, channel);
    int64_t epoch, seq;
    int from;
    int plan = ch ? since_plan(c->h, ch, since, &epoch, &seq, &from) : -1;
    if (plan < 0)
        return 0;
    if (edge_find(c, ch) != NULL) /* already live here: nothing is replayed */
        return plan == RESUME_AHEAD || (plan == RESUME_REPLAY && from == ch->hlen);
    return plan == RESUME_REPLAY || plan == RESUME_AHEAD;
}

static const hub_since_t *since_for(const hub_since_t *since, int n, const char *channel)
{
    for (int i = 0; i < n; i++)
        if (strcmp(since[i].channel, channel) == 0)
            return &since[i];
    return NULL;
}

static void deliver_at(hub_t *h, edge_t *e, rbuf_t *frame, const void *tag, int64_t epoch, int64_t seq)
{
    if (e->gated && !gate_pass(e, epoch, seq))
        return;
    deliver(h, e, frame, tag);
}

/* since on a channel: ahead of this instance (or on a channel without data
 * here) it is the connection's floor there. Returns the resume plan, or -1
 * for a since that gives no position (legacy, no data here); epoch and seq
 * get the position since names. */
static int apply_since(hub_t *h, edge_t *e, const hub_since_t *since, int *from, int64_t *epoch, int64_t *seq)
{
    int plan = since_plan(h, e->ch, &since->pos, epoch, seq, from);
    if (plan == RESUME_AHEAD || plan == RESUME_NONE)
        floor_set(e, *epoch, *seq);
    return plan;
}

/* ---- paced replay ------------------------------------------------------------- */

/* Queue r's history while its client has room. 1 when it reached the
 * channel's newest message (the edge is live from now on), 0 when it waits
 * for room. */
static int replay_run(hub_t *h, replay_t *r)
{
    edge_t *e = r->e;
    hub_channel_t *ch = e->ch;
    int i = hist_after(h, ch, r->epoch, r->seq);
    if (i < ch->hlen) {
        /* The next one must follow the client's position, else the history
         * moved past it while it read: the client sees the seq jump. */
        if (!hist_follows(h, ch, i, r->epoch, r->seq)) {
            const hist_t *x = hist_at(h, ch, i);
            h->stats.replay_gaps++;
            if (h->ops.replay_gap)
                h->ops.replay_gap(e->c->user, ch->name, r->epoch, r->seq, x->epoch, x->seq);
        }
    }
    int idle = 0, sent = 0;
    size_t room = h->ops.room ? h->ops.room(e->c->user, &idle) : SIZE_MAX;
    for (; i < ch->hlen; i++) {
        hist_t *x = hist_at(h, ch, i);
        size_t n = x->b->len;
        if (n > room && !(sent == 0 && idle))
            return 0;
        deliver_at(h, e, x->b, NULL, x->epoch, x->seq);
        room = n < room ? room - n : 0;
        r->epoch = x->epoch;
        r->seq = x->seq;
        sent++;
    }
    return 1;
}

/* A resume's replay from after (epoch, seq): what fits now, the rest when
 * the client has read it. Without memory for the wait, all of it now. */
static void replay_start(hub_t *h, edge_t *e, int64_t epoch, int64_t seq)
{
    replay_t r = {.e = e, .epoch = epoch, .seq = seq};
    if (replay_run(h, &r))
        return;
    if (grow((void **)&h->replays, &h->capreplays, h->nreplays + 1, sizeof(*h->replays)) < 0) {
        for (int i = hist_after(h, e->ch, r.epoch, r.seq); i < e->ch->hlen; i++) {
            hist_t *x = hist_at(h, e->ch, i);
            deliver_at(h, e, x->b, NULL, x->epoch, x->seq);
        }
        return;
    }
    e->replaying = 1;
    h->replays[h->nreplays++] = r;
    if (h->ops.replay_wanted)
        h->ops.replay_wanted();
}

int hub_replay_step(hub_t *h)
{
    for (int i = h->nreplays - 1; i >= 0; i--) {
        if (i >= h->nreplays)
            continue;
        replay_t *r = &h->replays[i];
        if (replay_run(h, r)) {
            r->e->replaying = 0;
            h->replays[i] = h->replays[--h->nreplays];
        }
    }
    return h->nreplays;
}

/* What a client gets when it starts covering a channel: with a since, the
 * history after it when that fills the gap, nothing when since is ahead of
 * this instance, else (and without since) the latest snapshot. */
static void send_initial(hub_t *h, edge_t *e, const hub_since_t *since)
{
    hub_channel_t *ch = e->ch;
    int from;
    int64_t epoch = 0, seq = 0;
    int plan = since ? apply_since(h, e, since, &from, &epoch, &seq) : -1;
    if (!ch->known || plan == RESUME_AHEAD || plan == RESUME_NONE)
        return;
    if (plan == RESUME_REPLAY) {
        replay_start(h, e, epoch, seq);
        return;
    }
    if (ch->snap && ch->snapshot)
        deliver_at(h, e, ch->snapshot, ch, ch->epoch, ch->last_seq);
}

int hub_subscribe(hub_client_t *c, const char *pattern, const hub_since_t *since, int nsince)
{
    hub_t *h = c->h;
    int wildcard = strchr(pattern, '*') != NULL;
    if (sub_index(c, pattern) >= 0) {
        /* Already live on it: a since only raises the floor. */
        const hub_since_t *s = wildcard ? NULL : since_for(since, nsince, pattern);
        hub_channel_t *ch = s ? chan_find(h, pattern) : NULL;
        edge_t *e = ch ? edge_find(c, ch) : NULL;
        int from;
        int64_t ep, sq;
        if (e != NULL)
            (void)apply_since(h, e, s, &from, &ep, &sq);
        return 1;
    }
    if (h->opts.max_subscriptions > 0 && c->nsubs >= h->opts.max_subscriptions)
        return -E2BIG;
    if (grow((void **)&c->subs, &c->capsubs, c->nsubs + 1, sizeof(*c->subs)) < 0)
        return -ENOMEM;
    if (wildcard && grow((void **)&h->pats, &h->cappats, h->npats + 1, sizeof(*h->pats)) < 0)
        return -ENOMEM;
    char *dup = strdup(pattern);
    if (dup == NULL)
        return -ENOMEM;
    if (!wildcard) {
        hub_channel_t *ch = chan_find(h, pattern);
        if (ch == NULL && (ch = chan_create(h, pattern)) == NULL) {
            free(dup);
            return -ENOMEM;
        }
        edge_t *e;
        if (edge_attach(c, ch, &e) < 0) {
            free(dup);
            chan_maybe_gc(h, ch);
            return -ENOMEM;
        }
        c->subs[c->nsubs++] = (sub_t){.pattern = dup, .wildcard = 0, .pi = -1};
        const hub_since_t *s = since_for(since, nsince, pattern);
        int from;
        int64_t ep, sq;
        if (e != NULL)
            send_initial(h, e, s);
        else if (s != NULL && (e = edge_find(c, ch)) != NULL)
            (void)apply_since(h, e, s, &from, &ep, &sq); /* a pattern already covers it */
        return 0;
    }
    int si = c->nsubs++;
    c->subs[si] = (sub_t){.pattern = dup, .wildcard = 1, .pi = h->npats};
    h->pats[h->npats++] = (pat_t){.c = c, .si = si};
    /* Channel slots may be appended by nothing here; iterate a stable count. */
    int n = h->nchans;
    for (int i = 0; i < n; i++) {
        hub_channel_t *ch = h->chans[i];
        if (!msg_channel_match(pattern, ch->name))
            continue;
        edge_t *e;
        if (edge_attach(c, ch, &e) == 0 && e != NULL)
            send_initial(h, e, since_for(since, nsince, ch->name));
    }
    return 0;
}

int hub_unsubscribe(hub_client_t *c, const char *pattern)
{
    hub_t *h = c->h;
    int si = sub_index(c, pattern);
    if (si < 0)
        return -ENOENT;
    sub_t s = c->subs[si];
    if (s.wildcard) {
        for (int i = c->nedges - 1; i >= 0; i--) {
            if (i >= c->nedges)
                continue;
            edge_t *e = c->edges[i];
            if (msg_channel_match(pattern, e->ch->name))
                edge_detach(h, e, 0);
        }
        pat_remove(h, s.pi);
    } else {
        hub_channel_t *ch = chan_find(h, pattern);
        edge_t *e = ch ? edge_find(c, ch) : NULL;
        if (e != NULL)
            edge_detach(h, e, 0);
    }
    free(s.pattern);
    c->subs[si] = c->subs[--c->nsubs];
    if (si < c->nsubs && c->subs[si].wildcard)
        h->pats[c->subs[si].pi].si = si;
    return 0;
}
