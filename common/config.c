/* Configuration: the key table below is the one source of truth. INI parsing
 * (inih, with a line-counting reader so every error names file:line),
 * validation, environment overrides, dumps and the generated
 * conf/exchange.ini all walk it. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

extern char **environ;

const char *const cfg_exchange_names[EX_COUNT] = {"upbit", "bithumb", "binance", "coinbase"};

/* ---- the key table ------------------------------------------------------ */

enum {
    T_STR,      /* free text */
    T_INT,      /* integer within min..max (durations are *_ms ints) */
    T_BOOL,     /* true/false (yes/no, on/off, 1/0 accepted) */
    T_ENUM,     /* one of allowed ("a|b|c"), case-insensitive, stored canonical */
    T_LIST,     /* comma list; items restricted to allowed when set */
    T_ADDR,     /* host:port */
    T_ADDRLIST, /* comma list of host:port */
    T_URL,      /* ws:// or wss:// URL */
    T_HTTPURL,  /* http:// or https:// URL, or empty */
    T_SUB,      /* marker: the exchange sub-table goes here */
};

#define CF_RELOAD 0x01   /* SIGHUP applies it (else: restart required) */
#define CF_SECRET 0x02   /* masked in --check-config output */
#define CF_AUTO 0x04     /* int: "auto" is accepted and stored as 0 */
#define CF_LISTEN 0x08   /* addr: a listen address, port 0 allowed */
#define CF_EMPTY_OK 0x10 /* addr: may be empty */
#define CF_NONEMPTY 0x20 /* must not be empty */
#define CF_PATH 0x40     /* must start with '/' */

typedef struct {
    const char *section; /* NULL in the exchange sub-table */
    const char *name;
    int type;
    unsigned flags;
    long min, max;
    const char *allowed;
    const char *def;
    const char *exdef[EX_COUNT]; /* sub-table: per-exchange default (NULL: def) */
    const char *help;
    size_t off; /* into cfg_t, or into cfg_exchange_t for the sub-table */
} cfg_key_t;

#define K(sec_, name_, type_, flags_, min_, max_, allowed_, def_, help_)                                     \
    {                                                                                                        \
        .section = #sec_, .name = #name_, .type = type_, .flags = flags_, .min = min_, .max = max_,          \
        .allowed = allowed_, .def = def_, .help = help_, .off = offsetof(cfg_t, sec_.name_)                  \
    }
#define X(name_, type_, flags_, min_, max_, allowed_, def_, up_, bt_, bn_, cb_, help_)                       \
    {                                                                                                        \
        .name = #name_, .type = type_, .flags = flags_, .min = min_, .max = max_, .allowed = allowed_,       \
        .def = def_, .exdef = {up_, bt_, bn_, cb_}, .help = help_, .off = offsetof(cfg_exchange_t, name_)    \
    }

#define R CF_RELOAD

static const cfg_key_t main_keys[] = {
    K(service, cluster, T_STR, CF_NONEMPTY, 0, 0, NULL, "exchange",
      "Election namespace: instances with the same cluster elect one leader"),
    K(service, instance, T_STR, 0, 0, 0, NULL, "",
      "Instance id, unique within the cluster; empty: the host name"),

    K(zookeeper, connect, T_ADDRLIST, 0, 0, 0, NULL, "",
      "ZooKeeper hosts for the leader election; empty: standalone, always leader"),
    K(zookeeper, session_timeout_ms, T_INT, 0, 2000, 600000, NULL, "10000",
      "ZooKeeper session timeout; a disconnected leader stops ingesting before it can expire"),
    K(zookeeper, root, T_STR, CF_PATH, 0, 0, NULL, "/exchange-service",
      "ZooKeeper path under which ROOT/CLUSTER/election lives"),
    K(zookeeper, auth, T_STR, CF_SECRET, 0, 0, NULL, "",
      "Digest credentials user:password (or file:NAME, or an absolute path to a file holding them); the "
      "election nodes are then created creator-only (ZOO_CREATOR_ALL_ACL). Empty: no auth, open ACL"),
    K(zookeeper, lease_ms, T_INT, R | CF_AUTO, 100, 300000, NULL, "auto",
      "The ingest worker stops producing when its supervisor has not renewed its lease this long (renewed "
      "every third of it); at most half of session_timeout_ms; auto: a third of session_timeout_ms"),

    K(kafka, brokers, T_ADDRLIST, R, 0, 0, NULL, "",
      "Kafka bootstrap brokers; empty: no Kafka, the relay is the only path"),
    K(kafka, topic, T_STR, R | CF_NONEMPTY, 0, 0, NULL, "market-data",
      "Topic carrying the normalized messages (key = channel)"),
    K(kafka, partitions, T_INT, R, 1, 1024, NULL, "6", "Partitions when the topic is created"),
    K(kafka, replication, T_INT, R, 1, 16, NULL, "1", "Replication factor when the topic is created"),
    K(kafka, fallback_after_ms, T_INT, R, 100, 600000, NULL, "3000",
      "A fanout worker that cannot consume this long switches to the leader's relay"),
    K(kafka, recover_after_ms, T_INT, R, 0, 600000, NULL, "5000",
      "Kafka must be healthy this long before a fanout worker switches back from the relay"),
    K(kafka, linger_ms, T_INT, R, 0, 1000, NULL, "5", "Producer batching delay"),
    K(kafka, fetch_wait_max_ms, T_INT, R, 1, 10000, NULL, "10",
      "Consumer fetch.wait.max.ms: how long a broker may hold a fetch with no data (latency bound)"),
    K(kafka, start_tail, T_INT, R, 0, 1000000, NULL, "500",
      "Fanout workers start this many records before the end of each partition (warm snapshots)"),
    K(kafka, ingest_tail, T_INT, R, 0, 10000000, NULL, "20000",
      "Records per partition a starting ingest reads from the topic's end: the last trades per channel, "
      "so a new leader neither repeats nor skips them (0: not read)"),
    K(kafka, ingest_tail_ms, T_INT, R, 100, 600000, NULL, "5000",
      "Bound on that read; Kafka unreachable by then: logged, the ingest starts without it"),
    K(kafka, buffer_messages, T_INT, R, 1000, 10000000, NULL, "100000",
      "Producer queue size in messages; when full a message is dropped and counted"),
    K(kafka, transactions, T_BOOL, R, 0, 0, NULL, "true",
      "Transactional producer: a new leader fences the old one's writes (fanouts read committed only); false "
      "only for brokers without transactions or for measurements"),
    K(kafka, transactional_id, T_STR, 0, 0, 0, NULL, "",
      "transactional.id shared by every instance of the cluster; empty: exchange-service.CLUSTER"),
    K(kafka, transaction_commit_ms, T_INT, R, 0, 10000, NULL, "20",
      "Commit the open transaction this often; read-committed consumers see a message only after its commit "
      "(latency cost measured in README, Leadership)"),
    K(kafka, security_protocol, T_ENUM, R, 0, 0, "PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL", "PLAINTEXT",
      "Kafka security.protocol"),
    K(kafka, sasl_mechanism, T_ENUM, R, 0, 0, "PLAIN|SCRAM-SHA-256|SCRAM-SHA-512", "PLAIN",
      "Kafka sasl.mechanism (with a SASL_* protocol)"),
    K(kafka, sasl_username, T_STR, R, 0, 0, NULL, "", "Kafka SASL user name"),
    K(kafka, sasl_password, T_STR, R | CF_SECRET, 0, 0, NULL, "",
      "Kafka SASL password (secret: prefer EXCHANGE_KAFKA_SASL_PASSWORD)"),
    K(kafka, ssl_ca, T_STR, R, 0, 0, NULL, "", "CA bundle for the brokers' TLS; empty: system default"),

    {.section = "exchange.*", .name = "", .type = T_SUB},

    K(fanout, listen, T_ADDR, CF_LISTEN, 0, 0, NULL, "0.0.0.0:8080",
      "Client WebSocket address, bound by every fanout worker with SO_REUSEPORT"),
    K(fanout, path, T_STR, CF_PATH, 0, 0, NULL, "/ws/exchange", "Client WebSocket path"),
    K(fanout, workers, T_INT, R | CF_AUTO, 1, 256, NULL, "auto",
      "Fanout worker processes; auto: the CPUs available to the cgroup"),
    K(fanout, drain_ms, T_INT, R, 0, 600000, NULL, "10000",
      "On drain, client closes (after a reconnect hint) are spread over this long"),
    K(fanout, history, T_INT, R, 0, 100000, NULL, "1000",
      "Messages kept per channel for replay (subscribe with since)"),
    K(fanout, client_queue_bytes, T_INT, R, 4096, 1073741824, NULL, "4194304",
      "Unsent bytes queued for one client before it is disconnected as too slow"),
    K(fanout, allowed_origins, T_LIST, R, 0, 0, NULL, "", "Origins allowed to connect; empty: any"),
    K(fanout, max_clients, T_INT, R, 1, 1000000, NULL, "10000", "Clients per worker"),
    K(fanout, max_message_bytes, T_INT, R, 256, 1048576, NULL, "65536", "Largest client-to-server message"),
    K(fanout, max_subscriptions, T_INT, R, 1, 100000, NULL, "1000", "Channels one client may subscribe to"),
    K(fanout, max_requests_per_sec, T_INT, R, 1, 10000, NULL, "50",
      "Requests one client may send per second before it is treated as flooding"),
    K(fanout, idle_timeout_ms, T_INT, R, 1000, 3600000, NULL, "30000", "Ping a client silent this long"),
    K(fanout, pong_timeout_ms, T_INT, R, 1000, 600000, NULL, "10000",
      "Close a client that does not answer a ping within this"),
    K(fanout, max_header_bytes, T_INT, R, 1024, 1048576, NULL, "16384", "Largest HTTP upgrade request"),
    K(fanout, max_connections_per_ip, T_INT, R, 0, 1000000, NULL, "0",
      "Open connections (handshakes included) from one IP address, per worker process; 0: no limit. Keep 0 "
      "behind a proxy or ingress, where every client has the proxy's address"),
    K(fanout, max_connections_per_sec_per_ip, T_INT, R, 0, 100000, NULL, "0",
      "New connections per second from one IP address, per worker process (HTTP 429 over it); 0: no limit"),
    K(fanout, max_bytes_in_per_sec, T_INT, R, 0, 1073741824, NULL, "262144",
      "Bytes per second one client may send (every frame counts); over it the client is closed (1008); 0: no "
      "limit"),
    K(fanout, compression, T_BOOL, R, 0, 0, NULL, "true",
      "permessage-deflate (RFC 7692) with clients that offer it: each message compressed once per worker "
      "and shared (server_no_context_takeover); messages under 128 bytes go plain"),
    K(fanout, write_delay_ms, T_INT, R, 0, 1000, NULL, "0",
      "Hold a client's messages this long so those within the window leave in one write; 0: write at once"),

    K(relay, listen, T_ADDR, CF_LISTEN, 0, 0, NULL, "0.0.0.0:8091",
      "Relay WebSocket address served by the ingest worker"),
    K(relay, advertise, T_ADDR, CF_EMPTY_OK, 0, 0, NULL, "",
      "Relay address other instances use (written to the election node); empty: the listen address, with the "
      "host name when it listens on all interfaces"),
    K(relay, token, T_STR, R | CF_SECRET, 0, 0, NULL, "",
      "Shared secret fanout workers present to the relay; empty: no check"),
    K(relay, history, T_INT, R, 0, 1000000, NULL, "10000",
      "Messages the relay keeps so a switching fanout worker can catch up"),
    K(relay, client_queue_bytes, T_INT, R, 65536, 1073741824, NULL, "67108864",
      "Unsent bytes the relay queues for one fanout worker (replay included) before it disconnects it; "
      "the worker reconnects and resumes by seq"),

    K(admin, listen, T_ADDR, CF_LISTEN, 0, 0, NULL, "0.0.0.0:8090",
      "Admin HTTP address: /metrics, /healthz, /readyz, /status, /"),
    K(admin, token, T_STR, R | CF_SECRET, 0, 0, NULL, "",
      "Token required by /status and / (Authorization: Bearer or ?token=); /healthz, /readyz and /metrics "
      "stay open; empty: no check"),

    K(log, level, T_ENUM, R, 0, 0, "debug|info|warn|error", "info", "Least severe level logged"),
    K(log, format, T_ENUM, R, 0, 0, "logfmt|json", "logfmt", "Log line format"),

    K(tls, cert, T_STR, R, 0, 0, NULL, "", "PEM certificate for wss:// serving; empty: plain ws://"),
    K(tls, key, T_STR, R, 0, 0, NULL, "", "PEM private key matching cert"),
    K(tls, ca, T_STR, R, 0, 0, NULL, "",
      "CA bundle (PEM) for client certificates: when set, wss:// clients must present a certificate it "
      "signed (mutual TLS); empty: none asked"),

    K(auth, enabled, T_BOOL, R, 0, 0, NULL, "false",
      "Require a JWT (HS256) from clients, in ?token= or Authorization: Bearer; failures close with 4001"),
    K(auth, secret, T_STR, R | CF_SECRET, 0, 0, NULL, "",
      "HMAC-SHA256 key the tokens are signed with, at least 32 bytes (secret: prefer EXCHANGE_AUTH_SECRET)"),
    K(auth, channels_claim, T_STR, R, 0, 0, NULL, "channels",
      "Claim listing the channel patterns a client may subscribe to (array, or a comma/space list; * for one "
      "segment); other channels close with 4003. Token without it: every channel; empty: not checked"),
    K(auth, leeway_ms, T_INT, R, 0, 600000, NULL, "30000", "Clock skew allowed when checking exp and nbf"),

    K(supervisor, restart_min_ms, T_INT, R, 10, 600000, NULL, "500",
      "First restart delay of a crashed worker (doubles per crash)"),
    K(supervisor, restart_max_ms, T_INT, R, 10, 3600000, NULL, "30000", "Restart delay cap"),
    K(supervisor, crash_window_ms, T_INT, R, 1000, 3600000, NULL, "60000",
      "A worker that ran this long restarts with a fresh backoff"),
    K(supervisor, crash_limit, T_INT, R, 1, 1000, NULL, "5",
      "Crashes within crash_window_ms that count as a crash loop"),
    K(supervisor, stop_deadline_ms, T_INT, R, 100, 600000, NULL, "3000",
      "An ingest worker told to stop (step-down, reload) that has not exited after this is killed (SIGKILL)"),
    K(supervisor, stats_interval_ms, T_INT, R, 100, 60000, NULL, "1000",
      "How often workers report metrics and status"),
};

/* Shared by [exchange.upbit], [exchange.bithumb], [exchange.binance] and
 * [exchange.coinbase]; defaults in exchange order. */
static const cfg_key_t exchange_keys[] = {
    X(enabled, T_BOOL, R, 0, 0, NULL, "true", NULL, NULL, NULL, NULL, "Connect to this exchange"),
    X(url, T_URL, R, 0, 0, NULL, NULL, "wss://api.upbit.com/websocket/v1",
      "wss://ws-api.bithumb.com/websocket/v1", "wss://stream.binance.com:9443/stream",
      "wss://advanced-trade-ws.coinbase.com", "Public market-data WebSocket URL"),
    X(markets, T_LIST, R, 0, 0, NULL, NULL, "KRW-BTC,KRW-ETH", "KRW-BTC,KRW-ETH", "BTCUSDT,ETHUSDT",
      "BTC-USD,ETH-USD", "Markets in the exchange's own spelling"),
    X(channels, T_LIST, R | CF_NONEMPTY, 0, 0, "ticker|trade|orderbook", "ticker,trade,orderbook", NULL, NULL,
      NULL, NULL, "Message types to subscribe"),
    X(depth, T_INT, R, 1, 100, NULL, NULL, "15", "15", "20", "20", "Orderbook levels published"),
    X(book_interval_ms, T_INT, R, 0, 60000, NULL, "0", NULL, NULL, NULL, "100",
      "Least interval between orderbook publishes of a locally kept book; 0: every update"),
    X(stale_after_ms, T_INT, R, 1000, 3600000, NULL, "30000", NULL, NULL, NULL, NULL,
      "Reconnect a feed that sent nothing for this long"),
    X(reconnect_min_ms, T_INT, R, 0, 3600000, NULL, NULL, "200", "100", "1000", "125",
      "Least delay between connection attempts (the exchange's connection rate limit)"),
    X(reconnect_max_ms, T_INT, R, 100, 3600000, NULL, "30000", NULL, NULL, NULL, NULL,
      "Reconnect backoff cap"),
    X(max_message_bytes, T_INT, R, 1024, 67108864, NULL, "4194304", NULL, NULL, NULL, NULL,
      "Largest message accepted from the exchange"),
    X(connect_timeout_ms, T_INT, R, 100, 600000, NULL, "10000", NULL, NULL, NULL, NULL,
      "Bound on each connection step (DNS and TCP, TLS handshake, HTTP upgrade): a stalling peer is "
      "dropped and retried"),
    X(ca_file, T_STR, R, 0, 0, NULL, "", NULL, NULL, NULL, NULL,
      "CA bundle for this feed's TLS; empty: system default"),
    X(insecure_skip_verify, T_BOOL, R, 0, 0, NULL, "false", NULL, NULL, NULL, NULL,
      "Skip TLS certificate checks (tests against the simulator only)"),
    X(format, T_ENUM, R, 0, 0, "DEFAULT|SIMPLE", "DEFAULT", NULL, NULL, NULL, NULL,
      "Upbit/Bithumb message keys: DEFAULT or SIMPLE (short keys); ignored elsewhere"),
    X(rest_url, T_HTTPURL, R, 0, 0, NULL, NULL, "https://api.upbit.com", "https://api.bithumb.com",
      "https://api.binance.com", "https://api.coinbase.com",
      "Public REST base URL: recent trades are backfilled from it after a takeover or a reconnect; empty: "
      "no backfill"),
    X(rest_rate, T_INT, R, 1, 1000, NULL, NULL, "8", "100", "3", "8",
      "REST requests per second to this exchange (under its public limit: Upbit 10, Bithumb 150, Binance "
      "240/min at weight 25, Coinbase 10)"),
    X(backfill_max_ms, T_INT, R, 100, 600000, NULL, "10000", NULL, NULL, NULL, NULL,
      "Bound on one channel's backfill; live trades of the channel wait meanwhile, what is not fetched by "
      "then is announced as a gap"),
    X(dedup_ids, T_INT, R, 16, 1000000, NULL, "4096", NULL, NULL, NULL, NULL,
      "Exchange trade ids remembered per channel: a trade re-sent by the exchange is dropped"),
};

#undef R

static const struct {
    const char *section;
    const char *help;
} section_help[] = {
    {"service", "Identity of this instance within its cluster."},
    {"zookeeper", "Leader election over ZooKeeper. Empty connect: standalone, this instance always leads."},
    {"kafka",
     "Kafka between the ingest worker (leader only) and the fanout workers. Empty brokers: relay only."},
    {"exchange.upbit", "Upbit public feed (limit: 5 connections per second per IP)."},
    {"exchange.bithumb", "Bithumb public feed (limit: 10 connections per second per IP)."},
    {"exchange.binance", "Binance Spot public feed (limit: 300 connection attempts per 5 minutes per IP)."},
    {"exchange.coinbase", "Coinbase Advanced Trade public feed (limit: 8 connections per second per IP)."},
    {"fanout", "Client WebSocket workers at ws://HOST:PORT/PATH."},
    {"relay", "Internal relay served by the ingest worker: the path to the fanout workers when Kafka fails."},
    {"admin", "Admin HTTP port of the supervisor."},
    {"log", "Log lines on stderr. LOG_LEVEL overrides level."},
    {"tls", "Optional wss:// serving on the fanout port: set both cert and key. Files are read when a fanout "
            "worker starts: SIGHUP starts new workers, so a renewed certificate is served after a reload."},
    {"auth", "Optional client authentication on the fanout port with HS256 JSON Web Tokens."},
    {"supervisor", "Worker restarts and statistics."},
};

/* The flattened table: one slot per (section, key), in output order. The
 * source array of cfg_t is parallel to it. */
typedef struct {
    const cfg_key_t *k;
    char section[24];
    size_t off;
    int ex; /* exchange index, or -1 */
    char env[64];
} slot_t;

#define MAX_SLOTS 160
#define MAX_SECTIONS 24
static slot_t g_slots[MAX_SLOTS];
static int g_nslots;
static const char *g_sections[MAX_SECTIONS];
static int g_nsections;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void add_slot(const cfg_key_t *k, const char *section, size_t off, int ex)
{
    if (g_nslots >= MAX_SLOTS) {
        fputs("config: MAX_SLOTS too small\n", stderr);
        abort();
    }
    slot_t *s = &g_slots[g_nslots++];
    s->k = k;
    snprintf(s->section, sizeof(s->section), "%s", section);
    s->off = off;
    s->ex = ex;
    char *e = s->env;
    size_t n = (size_t)snprintf(e, sizeof(s->env), "EXCHANGE_%s_%s", section, k->name);
    for (size_t i = 0; i < n && e[i]; i++)
        e[i] = e[i] == '.' ? '_' : (char)toupper((unsigned char)e[i]);
    if (g_nsections == 0 || strcmp(g_sections[g_nsections - 1], s->section) != 0) {
        if (g_nsections >= MAX_SECTIONS)
            abort();
        g_sections[g_nsections++] = s->section;
    }
}

static void build_slots(void)
{
    for (size_t i = 0; i < sizeof(main_keys) / sizeof(main_keys[0]); i++) {
        const cfg_key_t *k = &main_keys[i];
        if (k->type != T_SUB) {
            add_slot(k, k->section, k->off, -1);
            continue;
        }
        for (int ex = 0; ex < EX_COUNT; ex++) {
            char sec[24];
            snprintf(sec, sizeof(sec), "exchange.%s", cfg_exchange_names[ex]);
            for (size_t j = 0; j < sizeof(exchange_keys) / sizeof(exchange_keys[0]); j++)
                add_slot(&exchange_keys[j], sec,
                         offsetof(cfg_t, exchange) + (size_t)ex * sizeof(cfg_exchange_t) +
                             exchange_keys[j].off,
                         ex);
        }
    }
}

static void init_table(void)
{
    pthread_once(&g_once, build_slots);
}

static int find_section(const char *section)
{
    for (int i = 0; i < g_nsections; i++)
        if (strcmp(g_sections[i], section) == 0)
            return i;
    return -1;
}

static int find_slot(const char *section, const char *key)
{
    for (int i = 0; i < g_nslots; i++)
        if (strcmp(g_slots[i].section, section) == 0 && strcmp(g_slots[i].k->name, key) == 0)
            return i;
    return -1;
}

static char **slot_str(const cfg_t *c, int i)
{
    return (char **)((char *)(uintptr_t)c + g_slots[i].off);
}

static int *slot_int(const cfg_t *c, int i)
{
    return (int *)((char *)(uintptr_t)c + g_slots[i].off);
}

static int is_int_type(int t)
{
    return t == T_INT || t == T_BOOL;
}

static const char *slot_default(int i)
{
    const slot_t *s = &g_slots[i];
    if (s->ex >= 0 && s->k->exdef[s->ex] != NULL)
        return s->k->exdef[s->ex];
    return s->k->def ? s->k->def : "";
}

/* The value of slot i as INI text (tmp holds formatted ints). */
static const char *slot_text(const cfg_t *c, int i, char tmp[32])
{
    const cfg_key_t *k = g_slots[i].k;
    if (k->type == T_BOOL)
        return *slot_int(c, i) ? "true" : "false";
    if (k->type == T_INT) {
        int v = *slot_int(c, i);
        if ((k->flags & CF_AUTO) && v == 0)
            return "auto";
        snprintf(tmp, 32, "%d", v);
        return tmp;
    }
    const char *s = *slot_str(c, i);
    return s ? s : "";
}

/* ---- small helpers ------------------------------------------------------- */

static int edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return 99;
    int prev[64], cur[64];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int sub = prev[j - 1] + (tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]));
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof(int) * (lb + 1));
    }
    return prev[lb];
}

/* Whether d is close enough for a "did you mean" to help rather than confuse. */
static int close_enough(const char *word, int d)
{
    int len = (int)strlen(word);
    int limit = len / 2;
    if (limit > 3)
        limit = 3;
    if (limit < 1)
        limit = 1;
    return d <= limit;
}

static const char *nearest_section(const char *s)
{
    const char *best = NULL;
    int bd = 99;
    for (int i = 0; i < g_nsections; i++) {
        int d = edit_distance(s, g_sections[i]);
        if (d < bd) {
            bd = d;
            best = g_sections[i];
        }
    }
    return best && close_enough(s, bd) ? best : NULL;
}

static const char *nearest_key(const char *section, const char *key)
{
    const char *best = NULL;
    int bd = 99;
    for (int i = 0; i < g_nslots; i++) {
        if (strcmp(g_slots[i].section, section) != 0)
            continue;
        int d = edit_distance(key, g_slots[i].k->name);
        if (d < bd) {
            bd = d;
            best = g_slots[i].k->name;
        }
    }
    return best && close_enough(key, bd) ? best : NULL;
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s ? s : "");
    if (p == NULL) {
        fputs("config: out of memory\n", stderr);
        abort();
    }
    return p;
}

int cfg_lease_ms(const cfg_t *c)
{
    return c->zookeeper.lease_ms > 0 ? c->zookeeper.lease_ms : c->zookeeper.session_timeout_ms / 3;
}

void cfg_transactional_id(const cfg_t *c, char *out, size_t n)
{
    if (c->kafka.transactional_id != NULL && c->kafka.transactional_id[0] != '\0')
        snprintf(out, n, "%s", c->kafka.transactional_id);
    else
        snprintf(out, n, "exchange-service.%s", c->service.cluster);
}

int cfg_fanout_workers(const cfg_t *c)
{
    if (c != NULL && c->fanout.workers > 0)
        return c->fanout.workers;
    return cfg_cgroup_cpus();
}

/* ---- validation ------------------------------------------------------------ */

typedef struct {
    buf_t *err;
    int nerr;
} errs_t;

static void add_err(errs_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_err(errs_t *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (e->err != NULL) {
        buf_vprintf(e->err, fmt, ap);
        buf_puts(e->err, "\n");
    }
    va_end(ap);
    e->nerr++;
}

static void describe_allowed(const cfg_key_t *k, char *out, size_t n)
{
    switch (k->type) {
    case T_INT: snprintf(out, n, "%s%ld..%ld", (k->flags & CF_AUTO) ? "auto or " : "", k->min, k->max); break;
    case T_BOOL: snprintf(out, n, "true or false"); break;
    case T_ENUM: snprintf(out, n, "one of %s", k->allowed); break;
    case T_LIST:
        if (k->allowed)
            snprintf(out, n, "a comma list of %s", k->allowed);
        else
            snprintf(out, n, "a comma list");
        break;
    case T_ADDR:
        snprintf(out, n, "host:port with port %s..65535%s", (k->flags & CF_LISTEN) ? "0" : "1",
                 (k->flags & CF_EMPTY_OK) ? ", or empty" : "");
        break;
    case T_ADDRLIST: snprintf(out, n, "a comma list of host:port"); break;
    case T_URL: snprintf(out, n, "a ws:// or wss:// URL"); break;
    case T_HTTPURL: snprintf(out, n, "an http:// or https:// URL, or empty"); break;
    default:
        if (k->flags & CF_PATH)
            snprintf(out, n, "a path starting with /");
        else if (k->flags & CF_NONEMPTY)
            snprintf(out, n, "non-empty text");
        else
            snprintf(out, n, "text");
        break;
    }
}

static int valid_addr(const cfg_key_t *k, const char *v)
{
    char host[256];
    int port;
    if (*v == '\0')
        return (k->flags & CF_EMPTY_OK) != 0;
    if (cfg_parse_addr(v, host, sizeof(host), &port) < 0)
        return 0;
    if (port == 0 && !(k->flags & CF_LISTEN))
        return 0;
    /* Addresses others connect to need a host. */
    if (!(k->flags & CF_LISTEN) && (v[0] == ':' || v[0] == '*'))
        return 0;
    return 1;
}

/* Check v against key k. On success fills *ival (int types) or *sval
 * (malloc'd canonical text); on failure writes "must be ..." into msg. */
static int validate(const cfg_key_t *k, const char *v, int *ival, char **sval, char *msg, size_t n)
{
    char allowed[160];
    describe_allowed(k, allowed, sizeof(allowed));
    *sval = NULL;
    for (const char *p = v; *p; p++) {
        if (iscntrl((unsigned char)*p)) {
            snprintf(msg, n, "must not contain control characters");
            return -1;
        }
        if (*p == ';' && p > v && isspace((unsigned char)p[-1])) {
            snprintf(msg, n, "must not contain \" ;\" (it starts a comment)");
            return -1;
        }
    }
    if ((k->flags & CF_NONEMPTY) && *v == '\0') {
        snprintf(msg, n, "must not be empty");
        return -1;
    }
    switch (k->type) {
    case T_INT: {
        if ((k->flags & CF_AUTO) && strcasecmp(v, "auto") == 0) {
            *ival = 0;
            return 0;
        }
        char *end;
        errno = 0;
        long x = strtol(v, &end, 10);
        if (*v == '\0' || *end != '\0' || errno == ERANGE || isspace((unsigned char)*v)) {
            if (k->flags & CF_AUTO)
                snprintf(msg, n, "must be %s", allowed);
            else
                snprintf(msg, n, "must be an integer %s", allowed);
            return -1;
        }
        if (x < k->min || x > k->max) {
            snprintf(msg, n, "must be %s", allowed);
            return -1;
        }
        *ival = (int)x;
        return 0;
    }
    case T_BOOL:
        if (!strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on") || !strcmp(v, "1")) {
            *ival = 1;
            return 0;
        }
        if (!strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcasecmp(v, "off") || !strcmp(v, "0")) {
            *ival = 0;
            return 0;
        }
        snprintf(msg, n, "must be true or false");
        return -1;
    case T_ENUM: {
        size_t vl = strlen(v);
        for (const char *a = k->allowed; *a;) {
            const char *bar = strchr(a, '|');
            size_t al = bar ? (size_t)(bar - a) : strlen(a);
            if (al == vl && strncasecmp(a, v, vl) == 0) {
                *sval = strndup(a, al);
                return *sval ? 0 : -1;
            }
            a += al + (bar ? 1 : 0);
        }
        snprintf(msg, n, "must be %s", allowed);
        return -1;
    }
    case T_LIST: {
        /* Normalized to "a,b,c"; empty items are mistakes, not padding. */
        buf_t out;
        buf_init(&out);
        char *copy = xstrdup(v);
        int bad = 0, count = 0;
        if (*cfg_trim(copy) != '\0') {
            char *save = NULL, *p = copy;
            for (;;) {
                char *comma = strchr(p, ',');
                if (comma)
                    *comma = '\0';
                char *item = cfg_trim(p);
                if (*item == '\0') {
                    bad = 1;
                } else {
                    if (k->allowed) {
                        int ok = 0;
                        size_t il = strlen(item);
                        for (const char *a = k->allowed; *a;) {
                            const char *bar = strchr(a, '|');
                            size_t al = bar ? (size_t)(bar - a) : strlen(a);
                            if (al == il && strncmp(a, item, il) == 0)
                                ok = 1;
                            a += al + (bar ? 1 : 0);
                        }
                        if (!ok)
                            bad = 1;
                    }
                    for (const char *q = item; *q; q++)
                        if (isspace((unsigned char)*q))
                            bad = 1;
                    buf_printf(&out, "%s%s", count ? "," : "", item);
                    count++;
                }
                if (!comma)
                    break;
                p = comma + 1;
            }
            (void)save;
        }
        free(copy);
        if (count > CFG_MAX_LIST) {
            snprintf(msg, n, "must have at most %d items", CFG_MAX_LIST);
            bad = 2;
        } else if (bad) {
            snprintf(msg, n, "must be %s", allowed);
        }
        if (bad) {
            buf_free(&out);
            return -1;
        }
        *sval = xstrdup(out.data ? out.data : "");
        buf_free(&out);
        return 0;
    }
    case T_ADDR:
        if (!valid_addr(k, v)) {
            snprintf(msg, n, "must be %s", allowed);
            return -1;
        }
        break;
    case T_ADDRLIST: {
        char **items;
        int cnt, bad = 0;
        if (cfg_split_list(v, &items, &cnt) < 0)
            return -1;
        static const cfg_key_t one = {.type = T_ADDR};
        for (int i = 0; i < cnt; i++)
            if (!valid_addr(&one, items[i]))
                bad = 1;
        /* "a,,b" or a trailing comma: reject rather than guess. */
        int commas = 0;
        for (const char *p = v; *p; p++)
            commas += *p == ',';
        if (cnt > 0 && commas != cnt - 1)
            bad = 1;
        cfg_free_list(items, cnt);
        if (bad) {
            snprintf(msg, n, "must be %s", allowed);
            return -1;
        }
        break;
    }
    case T_URL:
    case T_HTTPURL: {
        const char *rest = NULL;
        int web = k->type == T_HTTPURL;
        if (web && *v == '\0')
            break;
        if (strncmp(v, web ? "http://" : "ws://", web ? 7 : 5) == 0)
            rest = v + (web ? 7 : 5);
        else if (strncmp(v, web ? "https://" : "wss://", web ? 8 : 6) == 0)
            rest = v + (web ? 8 : 6);
        if (rest == NULL || *rest == '\0' || *rest == '/' || *rest == ':' || strchr(v, ' ')) {
            snprintf(msg, n, "must be %s", allowed);
            return -1;
        }
        break;
    }
    default:
        if ((k->flags & CF_PATH) && v[0] != '/') {
            snprintf(msg, n, "must be %s", allowed);
            return -1;
        }
        break;
    }
    *sval = xstrdup(v);
    return 0;
}

/* Validate v for slot i and store it with its source. where prefixes the
 * error ("conf/x.ini:3", "env NAME"). */
static int set_value(cfg_t *c, int i, const char *v, const char *where, const char *source, errs_t *e)
{
    const slot_t *s = &g_slots[i];
    char msg[256];
    int ival = 0;
    char *sval = NULL;
    if (validate(s->k, v, &ival, &sval, msg, sizeof(msg)) < 0) {
        const char *shown = (s->k->flags & CF_SECRET) ? "***" : (*v ? v : "\"\"");
        add_err(e, "%s: [%s] %s: %s, got %s", where, s->section, s->k->name, msg, shown);
        return -1;
    }
    if (is_int_type(s->k->type)) {
        *slot_int(c, i) = ival;
    } else {
        free(*slot_str(c, i));
        *slot_str(c, i) = sval;
    }
    free(c->source[i]);
    c->source[i] = xstrdup(source);
    return 0;
}

/* ---- lifecycle -------------------------------------------------------------- */

static cfg_t *cfg_new_defaults(void)
{
    init_table();
    cfg_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->source = calloc((size_t)g_nslots, sizeof(char *));
    if (c->source == NULL) {
        free(c);
        return NULL;
    }
    errs_t e = {0};
    buf_t err;
    buf_init(&err);
    e.err = &err;
    for (int i = 0; i < g_nslots; i++) {
        if (set_value(c, i, slot_default(i), "default", "default", &e) < 0) {
            /* A bad default is a bug in the table: fail loudly in every test. */
            fprintf(stderr, "config: bad built-in default: %s", err.data);
            abort();
        }
    }
    buf_free(&err);
    c->profile = xstrdup("");
    c->files = xstrdup("");
    return c;
}

void cfg_free(cfg_t *c)
{
    if (c == NULL)
        return;
    init_table();
    for (int i = 0; i < g_nslots; i++) {
        if (!is_int_type(g_slots[i].k->type))
            free(*slot_str(c, i));
        if (c->source)
            free(c->source[i]);
    }
    free(c->source);
    free(c->profile);
    free(c->files);
    free(c);
}

static void add_file(cfg_t *c, const char *path)
{
    size_t n = strlen(c->files) + strlen(path) + 2;
    char *f = malloc(n);
    if (f == NULL)
        abort();
    snprintf(f, n, "%s%s%s", c->files, *c->files ? "," : "", path);
    free(c->files);
    c->files = f;
}

/* ---- INI parsing ------------------------------------------------------------ */

#define MAX_LINE 60000

typedef struct {
    cfg_t *c;
    const char *name;
    const char *p; /* next unread character of the text */
    char *line;    /* current logical line, cleaned, '\n'-terminated */
    size_t len, pos;
    int lineno;
    int sec_ok; /* the current section is known (an unknown one was reported) */
    errs_t *e;
} parse_t;

/* Load the next logical line into ps->line: comments become blank, section
 * headers are checked here (inih only reports keys), leading blanks are
 * dropped so an indented key is never taken as a continuation line. */
static int next_line(parse_t *ps)
{
    if (*ps->p == '\0')
        return -1;
    const char *nl = strchr(ps->p, '\n');
    size_t n = nl ? (size_t)(nl - ps->p) : strlen(ps->p);
    ps->lineno++;
    char *raw = strndup(ps->p, n);
    if (raw == NULL)
        abort();
    ps->p += n + (nl ? 1 : 0);
    char *l = raw;
    if (ps->lineno == 1 && (unsigned char)l[0] == 0xEF && (unsigned char)l[1] == 0xBB &&
        (unsigned char)l[2] == 0xBF)
        l += 3;
    l = cfg_trim(l);

    free(ps->line);
    ps->line = NULL;
    const char *out = "";
    char hdr[96];
    if (n > MAX_LINE) {
        add_err(ps->e, "%s:%d: line too long (max %d characters)", ps->name, ps->lineno, MAX_LINE);
    } else if (*l == '\0' || *l == ';' || *l == '#') {
        out = "";
    } else if (*l == '[') {
        char *end = strchr(l, ']');
        if (end == NULL) {
            add_err(ps->e, "%s:%d: syntax error: missing ] in section header", ps->name, ps->lineno);
            ps->sec_ok = 0;
        } else {
            *end = '\0';
            char *name = cfg_trim(l + 1);
            const char *rest = end + 1;
            while (isspace((unsigned char)*rest))
                rest++;
            if (*rest != '\0' && *rest != ';' && *rest != '#') {
                add_err(ps->e, "%s:%d: syntax error: unexpected text after [%s]", ps->name, ps->lineno, name);
                ps->sec_ok = 0;
            } else if (find_section(name) < 0) {
                const char *near = nearest_section(name);
                if (near)
                    add_err(ps->e, "%s:%d: [%s]: unknown section (did you mean %s?)", ps->name, ps->lineno,
                            name, near);
                else
                    add_err(ps->e, "%s:%d: [%s]: unknown section", ps->name, ps->lineno, name);
                ps->sec_ok = 0;
            } else {
                ps->sec_ok = 1;
            }
            snprintf(hdr, sizeof(hdr), "[%.80s]", name);
            out = hdr;
        }
    } else {
        char *d = strpbrk(l, "=:");
        if (d == NULL) {
            add_err(ps->e, "%s:%d: syntax error: expected key = value, got %s", ps->name, ps->lineno, l);
        } else if (d == l) {
            add_err(ps->e, "%s:%d: syntax error: missing key name before %c", ps->name, ps->lineno, *d);
        } else {
            out = l;
        }
    }
    size_t ol = strlen(out);
    ps->line = malloc(ol + 2);
    if (ps->line == NULL)
        abort();
    memcpy(ps->line, out, ol);
    ps->line[ol] = '\n';
    ps->line[ol + 1] = '\0';
    ps->len = ol + 1;
    ps->pos = 0;
    free(raw);
    return 0;
}

/* fgets-like reader for inih: serves the current logical line, in pieces
 * when inih's buffer is smaller. */
static char *ini_reader_cb(char *str, int num, void *stream)
{
    parse_t *ps = stream;
    if (num < 2)
        return NULL;
    if (ps->pos >= ps->len && next_line(ps) < 0)
        return NULL;
    size_t n = ps->len - ps->pos;
    if (n > (size_t)num - 1)
        n = (size_t)num - 1;
    memcpy(str, ps->line + ps->pos, n);
    str[n] = '\0';
    ps->pos += n;
    return str;
}

static int ini_handler_cb(void *user, const char *section, const char *name, const char *value)
{
    parse_t *ps = user;
    char where[512];
    snprintf(where, sizeof(where), "%s:%d", ps->name, ps->lineno);
    if (section == NULL || *section == '\0') {
        add_err(ps->e, "%s: %s: key outside any [section]", where, name);
        return 1;
    }
    if (!ps->sec_ok)
        return 1; /* the unknown section was reported at its header */
    int i = find_slot(section, name);
    if (i < 0) {
        const char *near = nearest_key(section, name);
        if (near)
            add_err(ps->e, "%s: [%s] %s: unknown key (did you mean %s?)", where, section, name, near);
        else
            add_err(ps->e, "%s: [%s] %s: unknown key", where, section, name);
        return 1;
    }
    (void)set_value(ps->c, i, value ? value : "", where, where, ps->e);
    return 1; /* errors are collected here, not counted by inih */
}

static void parse_text(cfg_t *c, const char *text, const char *name, errs_t *e)
{
    parse_t ps = {.c = c, .name = name, .p = text ? text : "", .e = e};
    /* Debian's libinih exposes its build options as variables: use a heap
     * line buffer that grows so long lists are not cut at 200 bytes. */
    bool use_stack = ini_use_stack, allow_realloc = ini_allow_realloc, multiline = ini_allow_multiline;
    int max_line = ini_max_line;
    ini_use_stack = false;
    ini_allow_realloc = true;
    ini_max_line = MAX_LINE + 8;
    ini_allow_multiline = false;
    int r = ini_parse_stream(ini_reader_cb, &ps, ini_handler_cb, &ps);
    ini_use_stack = use_stack;
    ini_allow_realloc = allow_realloc;
    ini_max_line = max_line;
    ini_allow_multiline = multiline;
    if (r == -2)
        add_err(e, "%s: out of memory while parsing", name);
    free(ps.line);
}

static int load_file(cfg_t *c, const char *path, errs_t *e, const char *what)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        int r = -errno;
        if (what)
            add_err(e, "%s: %s: %s", path, what, strerror(-r));
        return r;
    }
    buf_t text;
    buf_init(&text);
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        buf_append(&text, chunk, n);
    int rerr = ferror(f);
    fclose(f);
    if (rerr) {
        add_err(e, "%s: read error", path);
        buf_free(&text);
        return -EIO;
    }
    if (text.len > 0 && memchr(text.data, '\0', text.len) != NULL)
        add_err(e, "%s: not a text file (contains NUL bytes)", path);
    else
        parse_text(c, text.data ? text.data : "", path, e);
    buf_free(&text);
    add_file(c, path);
    return 0;
}

/* Fill what the files left to be derived and check keys against each other. */
static void finalize(cfg_t *c, errs_t *e)
{
    if (c->service.instance[0] == '\0') {
        char host[256] = "";
        if (gethostname(host, sizeof(host) - 1) < 0 || host[0] == '\0')
            snprintf(host, sizeof(host), "localhost");
        int i = find_slot("service", "instance");
        free(c->service.instance);
        c->service.instance = xstrdup(host);
        /* Also when a file restates the empty default (conf/exchange.ini does). */
        free(c->source[i]);
        c->source[i] = xstrdup("default (hostname)");
    }
    if (c->relay.advertise[0] == '\0') {
        char host[256];
        int port = 0, i = find_slot("relay", "advertise");
        if (cfg_parse_addr(c->relay.listen, host, sizeof(host), &port) == 0) {
            if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0)
                snprintf(host, sizeof(host), "%s", c->service.instance);
            size_t n = strlen(host) + 16;
            char *adv = malloc(n);
            if (adv == NULL)
                abort();
            snprintf(adv, n, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
            free(c->relay.advertise);
            c->relay.advertise = adv;
            free(c->source[i]);
            c->source[i] = xstrdup("default (relay listen)");
        }
    }
    int cert = find_slot("tls", "cert"), key = find_slot("tls", "key");
    if (!!c->tls.cert[0] != !!c->tls.key[0]) {
        int set = c->tls.cert[0] ? cert : key, unset = c->tls.cert[0] ? key : cert;
        add_err(e, "%s: [tls] %s: must be set together with [tls] %s", c->source[set], g_slots[unset].k->name,
                g_slots[set].k->name);
    }
    if (c->fanout.max_bytes_in_per_sec > 0 && c->fanout.max_bytes_in_per_sec < c->fanout.max_message_bytes) {
        int i = find_slot("fanout", "max_bytes_in_per_sec");
        add_err(e,
                "%s: [fanout] max_bytes_in_per_sec: must be 0 or >= [fanout] max_message_bytes (%d), got %d",
                c->source[i], c->fanout.max_message_bytes, c->fanout.max_bytes_in_per_sec);
    }
    if (c->zookeeper.lease_ms > c->zookeeper.session_timeout_ms / 2) {
        int i = find_slot("zookeeper", "lease_ms");
        add_err(
            e,
            "%s: [zookeeper] lease_ms: must be at most half of [zookeeper] session_timeout_ms (%d), got %d",
            c->source[i], c->zookeeper.session_timeout_ms / 2, c->zookeeper.lease_ms);
    }
    if (c->auth.enabled && strlen(c->auth.secret) < 32) {
        int i = find_slot("auth", "secret");
        add_err(e, "%s: [auth] secret: must be at least 32 bytes when [auth] enabled is true, got %zu",
                c->source[i], strlen(c->auth.secret));
    }
    for (int ex = 0; ex < EX_COUNT; ex++) {
        const cfg_exchange_t *x = &c->exchange[ex];
        if (x->reconnect_min_ms > x->reconnect_max_ms) {
            char sec[32];
            snprintf(sec, sizeof(sec), "exchange.%s", cfg_exchange_names[ex]);
            int i = find_slot(sec, "reconnect_max_ms");
            add_err(e, "%s: [%s] reconnect_max_ms: must be >= reconnect_min_ms (%d), got %d", c->source[i],
                    sec, x->reconnect_min_ms, x->reconnect_max_ms);
        }
    }
    if (c->zookeeper.auth[0] != '\0' &&
        (c->zookeeper.auth[0] == ':' || strchr(c->zookeeper.auth, ':') == NULL)) {
        int i = find_slot("zookeeper", "auth");
        add_err(e,
                "%s: [zookeeper] auth: must be user:password (digest), a file:NAME or a /path holding that",
                c->source[i]);
    }
    if (c->supervisor.restart_min_ms > c->supervisor.restart_max_ms) {
        int i = find_slot("supervisor", "restart_max_ms");
        add_err(e, "%s: [supervisor] restart_max_ms: must be >= restart_min_ms (%d), got %d", c->source[i],
                c->supervisor.restart_min_ms, c->supervisor.restart_max_ms);
    }
}

static void apply_env(cfg_t *c, errs_t *e)
{
    char where[160];
    const char *ll = getenv("LOG_LEVEL");
    if (ll != NULL && *ll != '\0') {
        char *v = xstrdup(ll);
        snprintf(where, sizeof(where), "env LOG_LEVEL");
        (void)set_value(c, find_slot("log", "level"), cfg_trim(v), where, where, e);
        free(v);
    }
    for (int i = 0; i < g_nslots; i++) {
        const char *v = getenv(g_slots[i].env);
        if (v == NULL)
            continue;
        char *copy = xstrdup(v);
        snprintf(where, sizeof(where), "env %s", g_slots[i].env);
        (void)set_value(c, i, cfg_trim(copy), where, where, e);
        free(copy);
    }
    /* A near miss of a known variable is a typo, not someone else's variable. */
    for (char **ep = environ; ep && *ep; ep++) {
        if (strncmp(*ep, "EXCHANGE_", 9) != 0)
            continue;
        const char *eq = strchr(*ep, '=');
        size_t nl = eq ? (size_t)(eq - *ep) : strlen(*ep);
        char name[128];
        if (nl >= sizeof(name))
            continue;
        memcpy(name, *ep, nl);
        name[nl] = '\0';
        int known = 0, bd = 99;
        const char *best = NULL;
        for (int i = 0; i < g_nslots && !known; i++) {
            if (strcmp(name, g_slots[i].env) == 0) {
                known = 1;
                break;
            }
            int d = edit_distance(name, g_slots[i].env);
            if (d < bd) {
                bd = d;
                best = g_slots[i].env;
            }
        }
        if (!known && best != NULL && bd <= 2 && strcmp(name, "EXCHANGE_PROFILE") != 0 &&
            strcmp(name, "EXCHANGE_CONF_DIR") != 0)
            add_err(e, "env %s: unknown variable (did you mean %s?)", name, best);
    }
}

const char *cfg_spring_profile(char *out, size_t n)
{
    const char *v = getenv("SPRING_PROFILES_ACTIVE");
    if (v == NULL || n == 0)
        return NULL;
    while (*v == ' ')
        v++;
    size_t len = strcspn(v, ", ");
    if (len == 0 || len >= n)
        return NULL;
    memcpy(out, v, len);
    out[len] = '\0';
    return out;
}

/* A secret key's value "file:NAME" is read from the file NAME (relative:
 * in $CREDENTIALS_DIRECTORY, where systemd's LoadCredential= puts them,
 * else the working directory); one trailing newline is dropped. Read at
 * every load, so a SIGHUP picks up a rotated secret. */
static void resolve_secret_files(cfg_t *c, errs_t *e)
{
    for (int i = 0; i < g_nslots; i++) {
        if (!(g_slots[i].k->flags & CF_SECRET) || g_slots[i].k->type != T_STR)
            continue;
        char **v = slot_str(c, i);
        /* [zookeeper] auth also takes a bare absolute path (user:password never starts with '/'). */
        int zk_path = *v != NULL && (*v)[0] == '/' && i == find_slot("zookeeper", "auth");
        if (*v == NULL || (strncmp(*v, "file:", 5) != 0 && !zk_path))
            continue;
        const char *name = zk_path ? *v : *v + 5, *dir = getenv("CREDENTIALS_DIRECTORY");
        char path[4096];
        if (name[0] != '/' && dir != NULL && dir[0] != '\0')
            snprintf(path, sizeof path, "%s/%s", dir, name);
        else
            snprintf(path, sizeof path, "%s", name);
        FILE *f = fopen(path, "rb");
        char secret[4096];
        size_t len = 0;
        if (f != NULL) {
            len = fread(secret, 1, sizeof secret - 1, f);
            fclose(f);
        }
        if (f == NULL || len == 0 || len == sizeof secret - 1) {
            add_err(e, "%s: [%s] %s: cannot read the secret file %s: %s", c->source[i], g_slots[i].section,
                    g_slots[i].k->name, path,
                    f == NULL  ? strerror(errno)
                    : len == 0 ? "empty"
                               : "longer than 4 KiB");
            continue;
        }
        secret[len] = '\0';
        if (secret[len - 1] == '\n')
            secret[--len] = '\0';
        if (len > 0 && secret[len - 1] == '\r')
            secret[--len] = '\0';
        free(*v);
        *v = xstrdup(secret);
        char *src = malloc(strlen(c->source[i]) + strlen(path) + 16);
        if (src == NULL)
            abort();
        sprintf(src, "%s (file %s)", c->source[i], path);
        free(c->source[i]);
        c->source[i] = src;
    }
}

static int valid_profile(const char *p)
{
    if (*p == '\0' || strlen(p) > 64)
        return 0;
    for (; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
            return 0;
    return 1;
}

cfg_t *cfg_load(const cfg_opts_t *opts, buf_t *err)
{
    cfg_opts_t none = {0};
    if (opts == NULL)
        opts = &none;
    errs_t e = {.err = err};
    cfg_t *c = cfg_new_defaults();
    if (c == NULL) {
        add_err(&e, "config: out of memory");
        return NULL;
    }
    const char *dir = opts->conf_dir;
    if (dir == NULL || *dir == '\0')
        dir = getenv("EXCHANGE_CONF_DIR");
    if (dir == NULL || *dir == '\0')
        dir = "conf";
    const char *profile = opts->profile;
    const char *profile_src = "--profile";
    if (profile == NULL || *profile == '\0') {
        profile = getenv("EXCHANGE_PROFILE");
        profile_src = "env EXCHANGE_PROFILE";
    }
    char spring[65];
    if ((profile == NULL || *profile == '\0') && opts->use_env &&
        (profile = cfg_spring_profile(spring, sizeof spring)) != NULL)
        profile_src = "env SPRING_PROFILES_ACTIVE";
    if (profile == NULL || *profile == '\0') {
        profile = "local";
        profile_src = "default";
    }
    free(c->profile);
    c->profile = xstrdup(profile);

    size_t pn = strlen(dir) + 80;
    char *path = malloc(pn);
    if (path == NULL)
        abort();
    snprintf(path, pn, "%s/exchange.ini", dir);
    (void)load_file(c, path, &e, NULL); /* optional: it restates the defaults */

    if (!valid_profile(profile)) {
        add_err(&e, "%s: profile: must be letters, digits, - or _, got %s", profile_src, profile);
    } else {
        snprintf(path, pn, "%s/%s.ini", dir, profile);
        int r = load_file(c, path, &e, NULL);
        if (r < 0)
            add_err(&e, "%s: unknown profile %s (from %s): %s", path, profile, profile_src, strerror(-r));
    }
    free(path);
    if (opts->extra_file != NULL && *opts->extra_file != '\0')
        (void)load_file(c, opts->extra_file, &e, "cannot read --config file");
    if (opts->use_env)
        apply_env(c, &e);
    resolve_secret_files(c, &e);
    finalize(c, &e);
    if (e.nerr > 0) {
        cfg_free(c);
        return NULL;
    }
    return c;
}

cfg_t *cfg_load_string(const char *text, const char *name, buf_t *err)
{
    errs_t e = {.err = err};
    cfg_t *c = cfg_new_defaults();
    if (c == NULL) {
        add_err(&e, "config: out of memory");
        return NULL;
    }
    if (name == NULL)
        name = "string";
    parse_text(c, text ? text : "", name, &e);
    finalize(c, &e);
    if (e.nerr > 0) {
        cfg_free(c);
        return NULL;
    }
    return c;
}

/* ---- output ------------------------------------------------------------------ */

int cfg_dump(const cfg_t *c, buf_t *out, int with_sources)
{
    init_table();
    char tmp[32];
    const char *cur = NULL;
    for (int i = 0; i < g_nslots; i++) {
        const slot_t *s = &g_slots[i];
        if (cur == NULL || strcmp(cur, s->section) != 0) {
            buf_printf(out, "%s[%s]\n", cur || with_sources ? "\n" : "", s->section);
            cur = s->section;
        }
        const char *v = slot_text(c, i, tmp);
        if (with_sources && (s->k->flags & CF_SECRET) && *v)
            v = "***";
        buf_printf(out, "%s =%s%s", s->k->name, *v ? " " : "", v);
        if (with_sources)
            buf_printf(out, "  ; from: %s", c->source && c->source[i] ? c->source[i] : "default");
        buf_puts(out, "\n");
    }
    return 0;
}

static const char ini_header[] =
    "; exchange-service configuration: every key, its default and what it does.\n"
    ";\n"
    "; GENERATED from the key table in common/config.c (exchange-service --print-ini).\n"
    "; Do not edit: change the table and regenerate; `make check-conf` fails on drift.\n"
    ";\n"
    "; Load order, each layer overriding the one before:\n"
    ";   1. conf/exchange.ini (this file; the same defaults are built in)\n"
    ";   2. conf/PROFILE.ini, PROFILE from --profile NAME, else $EXCHANGE_PROFILE,\n"
    ";      else local. Profiles: local (one machine, the exchange simulator),\n"
    ";      docker (compose: zookeeper:2181, kafka:9092), prod (real exchanges,\n"
    ";      ZooKeeper ensemble, SASL_SSL Kafka). An unknown profile is an error.\n"
    ";   3. --config FILE, if given\n"
    ";   4. environment: EXCHANGE_<SECTION>_<KEY> in upper case, dots in the\n"
    ";      section becoming underscores: [kafka] brokers is EXCHANGE_KAFKA_BROKERS,\n"
    ";      [exchange.upbit] url is EXCHANGE_EXCHANGE_UPBIT_URL. LOG_LEVEL sets\n"
    ";      [log] level.\n"
    ";\n"
    "; Unknown sections or keys and bad values are errors naming file:line.\n"
    "; `exchange-service --check-config` prints the effective configuration and\n"
    "; where each value came from. Durations (*_ms) are milliseconds. Keys marked\n"
    "; \"restart required\" keep their old value on SIGHUP.\n";

int cfg_print_defaults(buf_t *out)
{
    init_table();
    buf_puts(out, ini_header);
    const char *cur = NULL;
    for (int i = 0; i < g_nslots; i++) {
        const slot_t *s = &g_slots[i];
        if (cur == NULL || strcmp(cur, s->section) != 0) {
            buf_printf(out, "\n[%s]\n", s->section);
            for (size_t h = 0; h < sizeof(section_help) / sizeof(section_help[0]); h++)
                if (strcmp(section_help[h].section, s->section) == 0)
                    buf_printf(out, "; %s\n", section_help[h].help);
            cur = s->section;
        }
        char allowed[160];
        describe_allowed(s->k, allowed, sizeof(allowed));
        buf_printf(out, "\n; %s (%s; %s)\n", s->k->help,
                   (s->k->flags & CF_RELOAD) ? "reloadable" : "restart required", allowed);
        const char *d = slot_default(i);
        buf_printf(out, "%s =%s%s\n", s->k->name, *d ? " " : "", d);
    }
    return 0;
}

/* ---- comparisons ---------------------------------------------------------- */

static int slot_differs(const cfg_t *a, const cfg_t *b, int i)
{
    char ta[32], tb[32];
    return strcmp(slot_text(a, i, ta), slot_text(b, i, tb)) != 0;
}

/* The first slot from i on that needs a restart and differs; -1: none. */
static int next_restart_diff(const cfg_t *a, const cfg_t *b, int i)
{
    init_table();
    for (; i < g_nslots; i++)
        if (!(g_slots[i].k->flags & CF_RELOAD) && slot_differs(a, b, i))
            return i;
    return -1;
}

int cfg_diff_restart_keys(const cfg_t *old_c, const cfg_t *new_c, buf_t *out)
{
    int n = 0;
    for (int i = 0; (i = next_restart_diff(old_c, new_c, i)) >= 0; i++) {
        const slot_t *s = &g_slots[i];
        n++;
        if (out != NULL) {
            char ta[32], tb[32];
            int secret = (s->k->flags & CF_SECRET) != 0;
            buf_printf(out, "[%s] %s: %s -> %s (restart required)\n", s->section, s->k->name,
                       secret ? "***" : slot_text(old_c, i, ta), secret ? "***" : slot_text(new_c, i, tb));
        }
    }
    return n > 0;
}

int cfg_keep_restart_keys(cfg_t *new_c, const cfg_t *old_c)
{
    int n = 0;
    for (int i = 0; (i = next_restart_diff(old_c, new_c, i)) >= 0; i++) {
        const slot_t *s = &g_slots[i];
        if (is_int_type(s->k->type)) {
            *slot_int(new_c, i) = *slot_int(old_c, i);
        } else {
            free(*slot_str(new_c, i));
            *slot_str(new_c, i) = xstrdup(*slot_str(old_c, i));
        }
        free(new_c->source[i]);
        new_c->source[i] = xstrdup(old_c->source[i]);
        n++;
    }
    return n;
}

static int ingest_section(const char *s)
{
    return strcmp(s, "service") == 0 || strcmp(s, "kafka") == 0 || strncmp(s, "exchange.", 9) == 0 ||
           strcmp(s, "relay") == 0;
}

int cfg_ingest_changed(const cfg_t *a, const cfg_t *b)
{
    init_table();
    for (int i = 0; i < g_nslots; i++)
        if (ingest_section(g_slots[i].section) && slot_differs(a, b, i))
            return 1;
    return 0;
}

const char *cfg_source(const cfg_t *c, const char *section, const char *key)
{
    init_table();
    int i = find_slot(section, key);
    return i < 0 || c == NULL || c->source == NULL ? NULL : c->source[i];
}

int cfg_key_count(void)
{
    init_table();
    return g_nslots;
}
