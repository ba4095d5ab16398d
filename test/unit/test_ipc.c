/* Unit tests for IPC framing (split across arbitrary chunk boundaries,
 * oversized and empty frames) and for the uv channel over a real socketpair:
 * messages both ways, large frames, EOF, bad frames, close from a callback,
 * and the bounded write queue. */
#include "unit.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ipc.h"

/* ---- pure framing ------------------------------------------------------ */

typedef struct {
    int nframes;
    buf_t all;   /* payloads joined with '|' */
    int fail_at; /* return -EPROTO on this frame index (1-based), 0 = never */
} collect_t;

static int collect(void *arg, const char *p, size_t n)
{
    collect_t *c = arg;
    c->nframes++;
    buf_append(&c->all, p, n);
    buf_append(&c->all, "|", 1);
    if (c->fail_at && c->nframes == c->fail_at)
        return -EPROTO;
    return 0;
}

static void make_stream(buf_t *s, buf_t *expect, int nframes)
{
    buf_init(s);
    buf_init(expect);
    for (int i = 0; i < nframes; i++) {
        char p[600];
        int n = (i * 37) % 500; /* includes empty payloads */
        for (int k = 0; k < n; k++)
            p[k] = (char)('a' + (i + k) % 26);
        assert_int_equal(ipc_encode(s, p, (size_t)n), 0);
        buf_append(expect, p, (size_t)n);
        buf_append(expect, "|", 1);
    }
}

static void test_encode_header(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_int_equal(ipc_encode(&b, "{}", 2), 0);
    assert_int_equal(b.len, 6);
    assert_memory_equal(b.data, "\0\0\0\2{}", 6);
    buf_reset(&b);
    char *big = calloc(1, 0x01020304);
    assert_int_equal(ipc_encode(&b, big, 0x01020304), -EMSGSIZE); /* > 16 MiB */
    assert_int_equal(ipc_encode(&b, big, 0x00010203), 0);
    assert_memory_equal(b.data, "\x00\x01\x02\x03", 4);
    assert_int_equal(b.len, 4 + 0x10203);
    free(big);
    buf_free(&b);
}

/* Decodes s in pieces of next(round) bytes (at least 1) and checks that
 * exactly the nframes frames of expect came out, nothing left over. */
static void decode_in_pieces(const buf_t *s, const buf_t *expect, int nframes, size_t (*next)(int), int round)
{
    collect_t c = {0};
    buf_init(&c.all);
    buf_t in;
    buf_init(&in);
    for (size_t off = 0, n; off < s->len; off += n) {
        n = next(round);
        if (n > s->len - off)
            n = s->len - off;
        assert_int_equal(ipc_decode(&in, s->data + off, n, collect, &c), 0);
    }
    assert_int_equal(c.nframes, nframes);
    assert_int_equal(in.len, 0);
    assert_string_equal(c.all.data, expect->data);
    buf_free(&in);
    buf_free(&c.all);
}

static size_t whole(int round)
{
    (void)round;
    return SIZE_MAX;
}

static size_t one_byte(int round)
{
    (void)round;
    return 1;
}

static size_t random_piece(int round)
{
    return (size_t)(rand() % (round % 3 == 0 ? 8 : 1500)) + 1;
}

static void test_decode_whole_and_bytewise(void **state)
{
    (void)state;
    buf_t s, expect;
    make_stream(&s, &expect, 60);
    decode_in_pieces(&s, &expect, 60, whole, 0);
    decode_in_pieces(&s, &expect, 60, one_byte, 0);
    buf_free(&s);
    buf_free(&expect);
}

static void test_decode_random_splits(void **state)
{
    (void)state;
    buf_t s, expect;
    make_stream(&s, &expect, 200);
    srand(12345);
    for (int round = 0; round < 200; round++)
        decode_in_pieces(&s, &expect, 200, random_piece, round);
    buf_free(&s);
    buf_free(&expect);
}

static void test_decode_errors(void **state)
{
    (void)state;
    collect_t c = {0};
    buf_init(&c.all);
    buf_t in;
    buf_init(&in);
    /* oversized length: error as soon as the header is complete */
    assert_int_equal(ipc_decode(&in, "\x01\x00", 2, collect, &c), 0);
    assert_int_equal(ipc_decode(&in, "\x00\x01", 2, collect, &c), -EMSGSIZE);
    assert_int_equal(c.nframes, 0);
    buf_reset(&in);
    /* exactly the maximum is allowed (header alone is fine) */
    assert_int_equal(ipc_decode(&in, "\x01\x00\x00\x00", 4, collect, &c), 0);
    buf_reset(&in);
    /* callback error stops decoding and is returned */
    buf_t s, expect;
    make_stream(&s, &expect, 5);
    c.fail_at = 3;
    assert_int_equal(ipc_decode(&in, s.data, s.len, collect, &c), -EPROTO);
    assert_int_equal(c.nframes, 3);
    /* a valid frame before an oversized one is delivered */
    buf_reset(&in);
    c.nframes = 0;
    c.fail_at = 0;
    assert_int_equal(ipc_decode(&in, "\0\0\0\1x\xff\xff\xff\xff", 9, collect, &c), -EMSGSIZE);
    assert_int_equal(c.nframes, 1);
    buf_free(&s);
    buf_free(&expect);
    buf_free(&in);
    buf_free(&c.all);
}

/* ---- channel over a socketpair --------------------------------------------- */

typedef struct {
    int msgs;
    int closes;
    int close_err;
    int close_after; /* ipc_close from on_msg after this many, 0 = never */
    long last_n;
    size_t last_len;
    ipc_t *self;
} peer_t;

static void on_msg(ipc_t *ipc, json_t *msg, void *arg)
{
    peer_t *p = arg;
    p->msgs++;
    p->last_n = (long)json_integer_value(json_object_get(msg, "n"));
    const char *s = json_string_value(json_object_get(msg, "blob"));
    p->last_len = s ? strlen(s) : 0;
    if (p->close_after && p->msgs == p->close_after) {
        ipc_close(ipc);
        p->self = NULL;
    }
}

static void on_close(ipc_t *ipc, int err, void *arg)
{
    (void)ipc;
    peer_t *p = arg;
    p->closes++;
    p->close_err = err;
    p->self = NULL;
}

static void run_until(uv_loop_t *loop, int *flag, int value)
{
    for (int i = 0; i < 100000 && *flag < value; i++)
        uv_run(loop, UV_RUN_ONCE);
}

/* A channel for p on one end of a new socketpair; *other is the other end. */
static ipc_t *open_peer(uv_loop_t *loop, peer_t *p, int *other)
{
    int sv[2];
    ipc_t *ipc;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(ipc_open(loop, sv[0], on_msg, on_close, p, &ipc), 0);
    p->self = ipc;
    *other = sv[1];
    return ipc;
}

/* A JSON message {"blob": n - 1 copies of ch} (plus fields), n bytes of
 * string to cross many reads. */
static json_t *blob_msg(size_t n, char ch, const char *type, int seq)
{
    char *blob = malloc(n);
    assert_non_null(blob);
    memset(blob, ch, n - 1);
    blob[n - 1] = '\0';
    json_t *m = type ? json_pack("{s:s,s:i,s:s}", "t", type, "n", seq, "blob", blob)
                     : json_pack("{s:s}", "blob", blob);
    free(blob);
    return m;
}

/* The channel tests run on their own loop (*state), closed (all handles
 * gone) after each; a write to a gone peer must not kill the test. */
static int loop_setup(void **state)
{
    static uv_loop_t loop;
    signal(SIGPIPE, SIG_IGN);
    assert_int_equal(uv_loop_init(&loop), 0);
    *state = &loop;
    return 0;
}

static int loop_teardown(void **state)
{
    assert_int_equal(uv_loop_close(*state), 0);
    return 0;
}

static void test_channel_roundtrip(void **state)
{
    uv_loop_t *loop = *state;
    peer_t a = {0}, b = {0};
    int fd;
    ipc_t *ia = open_peer(loop, &a, &fd), *ib;
    assert_int_equal(ipc_open(loop, fd, on_msg, on_close, &b, &ib), 0);
    b.self = ib;

    for (int i = 1; i <= 100; i++) {
        json_t *m = json_pack("{s:s,s:i}", "t", "ping", "n", i);
        assert_int_equal(ipc_send(ia, m), 0);
        json_decref(m);
    }
    /* a 4 MiB message crosses many reads */
    json_t *big = blob_msg(4u << 20, 'q', "big", 101);
    assert_int_equal(ipc_send(ia, big), 0);
    json_decref(big);
    run_until(loop, &b.msgs, 101);
    assert_int_equal(b.msgs, 101);
    assert_int_equal(b.last_n, 101);
    assert_int_equal(b.last_len, (4u << 20) - 1);

    json_t *m = json_pack("{s:s,s:i}", "t", "pong", "n", 7);
    assert_int_equal(ipc_send(ib, m), 0);
    json_decref(m);
    run_until(loop, &a.msgs, 1);
    assert_int_equal(a.last_n, 7);
    assert_int_equal(ipc_queued(ia), 0);

    /* b goes away: a sees EOF once, with err 0; b's on_close not called */
    ipc_close(ib);
    run_until(loop, &a.closes, 1);
    assert_int_equal(a.closes, 1);
    assert_int_equal(a.close_err, 0);
    assert_int_equal(b.closes, 0);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(a.closes, 1);
}

static void test_channel_bad_frame_and_close_in_cb(void **state)
{
    uv_loop_t *loop = *state;
    peer_t a = {0};
    int fd;
    open_peer(loop, &a, &fd);
    /* one good frame, one empty (ignored), then garbage JSON */
    buf_t s;
    buf_init(&s);
    ipc_encode(&s, "{\"n\":1}", 7);
    ipc_encode(&s, "", 0);
    ipc_encode(&s, "{nope", 5);
    ipc_encode(&s, "{\"n\":2}", 7);
    assert_int_equal(write(fd, s.data, s.len), (ssize_t)s.len);
    run_until(loop, &a.closes, 1);
    assert_int_equal(a.msgs, 1);
    assert_int_equal(a.closes, 1);
    assert_int_equal(a.close_err, -EINVAL);
    uv_run(loop, UV_RUN_DEFAULT);

    /* oversized length header closes with -EMSGSIZE */
    peer_t c = {0};
    int fd2;
    open_peer(loop, &c, &fd2);
    assert_int_equal(write(fd2, "\x7f\0\0\0", 4), 4);
    run_until(loop, &c.closes, 1);
    assert_int_equal(c.close_err, -EMSGSIZE);
    uv_run(loop, UV_RUN_DEFAULT);

    /* ipc_close inside on_msg: later frames in the same read not delivered */
    peer_t d = {0};
    d.close_after = 2;
    int fd3;
    open_peer(loop, &d, &fd3);
    buf_reset(&s);
    for (int i = 0; i < 5; i++)
        ipc_encode(&s, "{\"n\":3}", 7);
    assert_int_equal(write(fd3, s.data, s.len), (ssize_t)s.len);
    run_until(loop, &d.msgs, 2);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(d.msgs, 2);
    assert_int_equal(d.closes, 0);

    close(fd);
    close(fd2);
    close(fd3);
    buf_free(&s);
}

static void test_channel_write_bound(void **state)
{
    uv_loop_t *loop = *state;
    peer_t a = {0};
    int fd;
    ipc_t *ia = open_peer(loop, &a, &fd);
    json_t *m = blob_msg(1u << 20, 'z', NULL, 0);
    int ok = 0, r = 0;
    /* the peer never reads: the queue fills up to the 64 MiB bound */
    for (int i = 0; i < 100; i++) {
        r = ipc_send(ia, m);
        if (r < 0)
            break;
        ok++;
    }
    assert_int_equal(r, -ENOBUFS);
    assert_true(ok >= 60 && ok <= 64);
    assert_true(ipc_queued(ia) <= (64u << 20));
    json_decref(m);
    /* peer gone: a write error or EOF closes the channel once */
    close(fd);
    run_until(loop, &a.closes, 1);
    assert_int_equal(a.closes, 1);
    assert_int_equal(ipc_send(NULL, NULL), -EPIPE);
    uv_run(loop, UV_RUN_DEFAULT);
}

UNIT_MAIN(cmocka_unit_test(test_encode_header), cmocka_unit_test(test_decode_whole_and_bytewise),
          cmocka_unit_test(test_decode_random_splits), cmocka_unit_test(test_decode_errors),
          cmocka_unit_test_setup_teardown(test_channel_roundtrip, loop_setup, loop_teardown),
          cmocka_unit_test_setup_teardown(test_channel_bad_frame_and_close_in_cb, loop_setup, loop_teardown),
          cmocka_unit_test_setup_teardown(test_channel_write_bound, loop_setup, loop_teardown))
