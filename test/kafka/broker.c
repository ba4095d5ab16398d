/* test-kafka-broker: a Kafka cluster for tests, built on librdkafka's mock
 * cluster. It speaks the real Kafka protocol over TCP on loopback, so any
 * client (librdkafka, confluent_kafka) in another process can use it.
 *
 *   test-kafka-broker [--brokers N] [--topic NAME:PARTITIONS[:REPLICATION]]...
 *                     [--port-file PATH]
 *
 * Once ready it prints one line to stdout (and to --port-file, written
 * atomically):
 *   {"bootstrap":"127.0.0.1:PORT,...","brokers":N}
 * then reads line commands on stdin and answers each with one line starting
 * with `ok` or `error`:
 *   down ID|all            close the broker's connections, refuse new ones
 *   up ID|all              accept connections again
 *   rtt ID|all MS          add MS of latency to every response
 *   topic NAME PARTITIONS [REPLICATION]
 *   error APIKEY ERRCODE [COUNT]   fail the next COUNT requests of APIKEY
 *                          (number or name: Produce, Fetch, Metadata, ...)
 *                          with ERRCODE (number or name, e.g.
 *                          NOT_LEADER_FOR_PARTITION); cluster-wide
 *   clear APIKEY           drop pending injected errors for APIKEY
 *   topic-error NAME ERRCODE   make metadata report ERRCODE for a topic
 *   leader TOPIC PARTITION ID  move a partition's leadership
 *   status                 ok {"bootstrap":...,"brokers":N,"down":[...],...}
 *   help, quit
 * It exits on stdin EOF (so it never outlives the test that started it),
 * on `quit`, and on SIGTERM/SIGINT. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MAX_BROKERS 64
#define MAX_TOPICS 64
#define LINE_MAX_LEN 1024

static volatile sig_atomic_t g_stop;

struct broker_state {
    int up;
    int rtt_ms;
};

struct app {
    rd_kafka_t *rk;
    rd_kafka_mock_cluster_t *mc;
    int nbrokers;
    struct broker_state b[MAX_BROKERS + 1]; /* mock broker ids are 1..N */
    char bootstrap[1024];
};

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "test-kafka-broker[%d]: ", (int)getpid());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

static int parse_int(const char *s, long min, long max, long *out)
{
    char *end;
    long v;
    if (!s || !*s)
        return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static const struct {
    const char *name;
    int key;
} api_keys[] = {
    {"Produce", 0},       {"Fetch", 1},           {"ListOffsets", 2},         {"Metadata", 3},
    {"OffsetCommit", 8},  {"OffsetFetch", 9},     {"FindCoordinator", 10},    {"JoinGroup", 11},
    {"Heartbeat", 12},    {"LeaveGroup", 13},     {"SyncGroup", 14},          {"ApiVersions", 18},
    {"CreateTopics", 19}, {"InitProducerId", 22}, {"AddPartitionsToTxn", 24}, {"EndTxn", 26},
};

static int parse_api_key(const char *s)
{
    long v;
    size_t i;
    if (parse_int(s, 0, 32767, &v) == 0)
        return (int)v;
    for (i = 0; i < sizeof(api_keys) / sizeof(api_keys[0]); i++)
        if (strcasecmp(s, api_keys[i].name) == 0)
            return api_keys[i].key;
    return -1;
}

/* Error code by number (Kafka protocol code or librdkafka's negative
 * internal code) or by name as librdkafka spells it, with or without the
 * RD_KAFKA_RESP_ERR_ prefix. */
static int parse_err(const char *s, rd_kafka_resp_err_t *out)
{
    const struct rd_kafka_err_desc *descs;
    size_t n, i;
    long v;
    const char *prefix = "RD_KAFKA_RESP_ERR_";
    if (parse_int(s, INT_MIN, INT_MAX, &v) == 0) {
        *out = (rd_kafka_resp_err_t)v;
        return 0;
    }
    if (strncasecmp(s, prefix, strlen(prefix)) == 0)
        s += strlen(prefix);
    rd_kafka_get_err_descs(&descs, &n);
    for (i = 0; i < n; i++) {
        if (descs[i].name && strcasecmp(descs[i].name, s) == 0) {
            *out = descs[i].code;
            return 0;
        }
    }
    return -1;
}

/* "all" -> [1..N]; a number -> that id. Returns the first and last id. */
static int parse_ids(const struct app *a, const char *s, int *first, int *last)
{
    long v;
    if (s && strcmp(s, "all") == 0) {
        *first = 1;
        *last = a->nbrokers;
        return 0;
    }
    if (parse_int(s, 1, a->nbrokers, &v) < 0)
        return -1;
    *first = *last = (int)v;
    return 0;
}

static int create_topic(struct app *a, const char *name, long parts, long repl, char *err, size_t errlen)
{
    rd_kafka_resp_err_t e;
    if (!*name || parts < 1 || parts > 10000 || repl < 1 || repl > a->nbrokers) {
        snprintf(err, errlen, "bad topic %s partitions=%ld replication=%ld (brokers=%d)", name, parts, repl,
                 a->nbrokers);
        return -1;
    }
    e = rd_kafka_mock_topic_create(a->mc, name, (int)parts, (int)repl);
    if (e) {
        snprintf(err, errlen, "topic %s: %s", name, rd_kafka_err2str(e));
        return -1;
    }
    return 0;
}

/* NAME:PARTITIONS[:REPLICATION] */
static int topic_spec(struct app *a, const char *spec, char *err, size_t errlen)
{
    char buf[256], *p1, *p2;
    long parts, repl = 1;
    if (strlen(spec) >= sizeof(buf)) {
        snprintf(err, errlen, "topic spec too long");
        return -1;
    }
    strcpy(buf, spec);
    p1 = strchr(buf, ':');
    if (!p1) {
        snprintf(err, errlen, "topic spec %s: want NAME:PARTITIONS[:REPLICATION]", spec);
        return -1;
    }
    *p1++ = '\0';
    p2 = strchr(p1, ':');
    if (p2)
        *p2++ = '\0';
    if (parse_int(p1, 1, 10000, &parts) < 0 || (p2 && parse_int(p2, 1, MAX_BROKERS, &repl) < 0)) {
        snprintf(err, errlen, "topic spec %s: bad number", spec);
        return -1;
    }
    if (!p2)
        repl = a->nbrokers < 3 ? a->nbrokers : 3;
    return create_topic(a, buf, parts, repl, err, errlen);
}

static void status_line(struct app *a, char *out, size_t len)
{
    size_t off = 0;
    int i, first = 1;
    off += (size_t)snprintf(out + off, len - off, "{\"bootstrap\":\"%s\",\"brokers\":%d,\"down\":[",
                            a->bootstrap, a->nbrokers);
    for (i = 1; i <= a->nbrokers && off < len; i++) {
        if (a->b[i].up)
            continue;
        off += (size_t)snprintf(out + off, len - off, "%s%d", first ? "" : ",", i);
        first = 0;
    }
    if (off < len)
        off += (size_t)snprintf(out + off, len - off, "],\"rtt_ms\":{");
    first = 1;
    for (i = 1; i <= a->nbrokers && off < len; i++) {
        off += (size_t)snprintf(out + off, len - off, "%s\"%d\":%d", first ? "" : ",", i, a->b[i].rtt_ms);
        first = 0;
    }
    if (off < len)
        snprintf(out + off, len - off, "}}");
}

/* Runs one command line; returns 1 to quit. */
static int handle(struct app *a, char *line)
{
    char *argv[8];
    int argc = 0, i, first, last;
    char *save = NULL, *tok;
    char err[512];
    long v, v2;
    rd_kafka_resp_err_t e;

    for (tok = strtok_r(line, " \t\r\n", &save); tok && argc < 8; tok = strtok_r(NULL, " \t\r\n", &save))
        argv[argc++] = tok;
    if (argc == 0) {
        reply("error empty command");
        return 0;
    }

    if (strcmp(argv[0], "down") == 0 || strcmp(argv[0], "up") == 0) {
        int up = argv[0][0] == 'u';
        if (argc != 2 || parse_ids(a, argv[1], &first, &last) < 0) {
            reply("error usage: %s ID|all (ids 1..%d)", argv[0], a->nbrokers);
            return 0;
        }
        for (i = first; i <= last; i++) {
            e = up ? rd_kafka_mock_broker_set_up(a->mc, i) : rd_kafka_mock_broker_set_down(a->mc, i);
            if (e) {
                reply("error %s %d: %s", argv[0], i, rd_kafka_err2str(e));
                return 0;
            }
            a->b[i].up = up;
        }
        logmsg("%s %s", argv[0], argv[1]);
        reply("ok %s %s", argv[0], argv[1]);
    } else if (strcmp(argv[0], "rtt") == 0) {
        if (argc != 3 || parse_ids(a, argv[1], &first, &last) < 0 || parse_int(argv[2], 0, 3600000, &v) < 0) {
            reply("error usage: rtt ID|all MS");
            return 0;
        }
        for (i = first; i <= last; i++) {
            e = rd_kafka_mock_broker_set_rtt(a->mc, i, (int)v);
            if (e) {
                reply("error rtt %d: %s", i, rd_kafka_err2str(e));
                return 0;
            }
            a->b[i].rtt_ms = (int)v;
        }
        logmsg("rtt %s %ld", argv[1], v);
        reply("ok rtt %s %ld", argv[1], v);
    } else if (strcmp(argv[0], "topic") == 0) {
        v2 = a->nbrokers < 3 ? a->nbrokers : 3;
        if (argc < 3 || argc > 4 || parse_int(argv[2], 1, 10000, &v) < 0 ||
            (argc == 4 && parse_int(argv[3], 1, MAX_BROKERS, &v2) < 0)) {
            reply("error usage: topic NAME PARTITIONS [REPLICATION]");
            return 0;
        }
        if (create_topic(a, argv[1], v, v2, err, sizeof(err)) < 0) {
            reply("error %s", err);
            return 0;
        }
        reply("ok topic %s %ld %ld", argv[1], v, v2);
    } else if (strcmp(argv[0], "error") == 0) {
        int key;
        size_t cnt, k;
        rd_kafka_resp_err_t *errs;
        v = 1;
        if (argc < 3 || argc > 4 || (key = parse_api_key(argv[1])) < 0 || parse_err(argv[2], &e) < 0 ||
            (argc == 4 && parse_int(argv[3], 1, 1000000, &v) < 0)) {
            reply("error usage: error APIKEY ERRCODE [COUNT]");
            return 0;
        }
        cnt = (size_t)v;
        errs = calloc(cnt, sizeof(*errs));
        if (!errs) {
            reply("error out of memory");
            return 0;
        }
        for (k = 0; k < cnt; k++)
            errs[k] = e;
        rd_kafka_mock_push_request_errors_array(a->mc, (int16_t)key, cnt, errs);
        free(errs);
        logmsg("error api=%d err=%s count=%zu", key, rd_kafka_err2name(e), cnt);
        reply("ok error %d %s %zu", key, rd_kafka_err2name(e), cnt);
    } else if (strcmp(argv[0], "clear") == 0) {
        int key;
        if (argc != 2 || (key = parse_api_key(argv[1])) < 0) {
            reply("error usage: clear APIKEY");
            return 0;
        }
        rd_kafka_mock_clear_request_errors(a->mc, (int16_t)key);
        reply("ok clear %d", key);
    } else if (strcmp(argv[0], "topic-error") == 0) {
        if (argc != 3 || parse_err(argv[2], &e) < 0) {
            reply("error usage: topic-error NAME ERRCODE");
            return 0;
        }
        rd_kafka_mock_topic_set_error(a->mc, argv[1], e);
        reply("ok topic-error %s %s", argv[1], rd_kafka_err2name(e));
    } else if (strcmp(argv[0], "leader") == 0) {
        long id;
        if (argc != 4 || parse_int(argv[2], 0, 100000, &v) < 0 ||
            parse_int(argv[3], -1, a->nbrokers, &id) < 0) {
            reply("error usage: leader TOPIC PARTITION ID");
            return 0;
        }
        e = rd_kafka_mock_partition_set_leader(a->mc, argv[1], (int32_t)v, (int32_t)id);
        if (e) {
            reply("error leader: %s", rd_kafka_err2str(e));
            return 0;
        }
        reply("ok leader %s %ld %ld", argv[1], v, id);
    } else if (strcmp(argv[0], "status") == 0) {
        char st[2048];
        status_line(a, st, sizeof(st));
        reply("ok %s", st);
    } else if (strcmp(argv[0], "help") == 0) {
        reply("ok commands: down ID|all, up ID|all, rtt ID|all MS, topic NAME PARTITIONS [REPL], "
              "error APIKEY ERRCODE [COUNT], clear APIKEY, topic-error NAME ERRCODE, "
              "leader TOPIC PARTITION ID, status, quit");
    } else if (strcmp(argv[0], "quit") == 0) {
        reply("ok bye");
        return 1;
    } else {
        reply("error unknown command %s (try help)", argv[0]);
    }
    return 0;
}

static int write_port_file(const char *path, const char *line)
{
    char tmp[PATH_MAX];
    FILE *f;
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof(tmp))
        return -1;
    f = fopen(tmp, "w");
    if (!f)
        return -1;
    fprintf(f, "%s\n", line);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: test-kafka-broker [--brokers N] [--topic NAME:PARTITIONS[:REPLICATION]]... "
               "[--port-file PATH]\n");
}

int main(int argc, char **argv)
{
    struct app a;
    rd_kafka_conf_t *conf;
    char errstr[512], ready[1200];
    const char *topics[MAX_TOPICS];
    const char *port_file = NULL;
    int ntopics = 0, i, rc = 0;
    char line[LINE_MAX_LEN];
    size_t used = 0;
    struct sigaction sa;
    long v;

    memset(&a, 0, sizeof(a));
    a.nbrokers = 3;
    for (i = 1; i < argc; i += 2) {
        const char *opt = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(opt, "-h") == 0 || strcmp(opt, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (!val) {
            usage(stderr);
            return 2;
        }
        if (strcmp(opt, "--brokers") == 0) {
            if (parse_int(val, 1, MAX_BROKERS, &v) < 0) {
                logmsg("--brokers: want 1..%d, got %s", MAX_BROKERS, val);
                return 2;
            }
            a.nbrokers = (int)v;
        } else if (strcmp(opt, "--topic") == 0) {
            if (ntopics == MAX_TOPICS) {
                logmsg("too many --topic");
                return 2;
            }
            topics[ntopics++] = val;
        } else if (strcmp(opt, "--port-file") == 0) {
            port_file = val;
        } else {
            usage(stderr);
            return 2;
        }
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
        logmsg("conf: %s", errstr);
        return 1;
    }
    a.rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!a.rk) {
        logmsg("rd_kafka_new: %s", errstr);
        return 1;
    }
    a.mc = rd_kafka_mock_cluster_new(a.rk, a.nbrokers);
    if (!a.mc) {
        logmsg("rd_kafka_mock_cluster_new failed");
        rd_kafka_destroy(a.rk);
        return 1;
    }
    for (i = 1; i <= a.nbrokers; i++)
        a.b[i].up = 1;
    snprintf(a.bootstrap, sizeof(a.bootstrap), "%s", rd_kafka_mock_cluster_bootstraps(a.mc));
    for (i = 0; i < ntopics; i++) {
        if (topic_spec(&a, topics[i], errstr, sizeof(errstr)) < 0) {
            logmsg("%s", errstr);
            rc = 2;
            goto out;
        }
    }

    snprintf(ready, sizeof(ready), "{\"bootstrap\":\"%s\",\"brokers\":%d}", a.bootstrap, a.nbrokers);
    if (port_file && write_port_file(port_file, ready) < 0) {
        logmsg("cannot write %s: %s", port_file, strerror(errno));
        rc = 1;
        goto out;
    }
    printf("%s\n", ready);
    fflush(stdout);
    logmsg("ready bootstrap=%s brokers=%d", a.bootstrap, a.nbrokers);

    while (!g_stop) {
        struct pollfd pfd = {.fd = 0, .events = POLLIN};
        ssize_t n;
        char *nl;
        int pr = poll(&pfd, 1, 500);
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            logmsg("poll: %s", strerror(errno));
            rc = 1;
            break;
        }
        if (pr == 0)
            continue;
        n = read(0, line + used, sizeof(line) - 1 - used);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            logmsg("read stdin: %s", strerror(errno));
            break;
        }
        if (n == 0) {
            logmsg("stdin closed, exiting");
            break;
        }
        used += (size_t)n;
        line[used] = '\0';
        while ((nl = strchr(line, '\n')) != NULL) {
            size_t len = (size_t)(nl - line) + 1;
            int quit;
            *nl = '\0';
            quit = handle(&a, line);
            memmove(line, line + len, used - len + 1);
            used -= len;
            if (quit) {
                g_stop = 1;
                break;
            }
        }
        if (used == sizeof(line) - 1) {
            reply("error line too long");
            used = 0;
        }
    }

out:
    /* Never hang on the way out: a test waits for us. */
    alarm(10);
    logmsg("shutting down");
    rd_kafka_mock_cluster_destroy(a.mc);
    rd_kafka_destroy(a.rk);
    return rc;
}
