/* Unit tests of the configuration module: defaults, layering (profile,
 * --config, environment), source tracking, every error kind with its exact
 * text, the dump round trip and conf/exchange.ini against the key table.
 * Run from the repository root (make unit). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"

extern char **environ;

/* ---- fixtures -------------------------------------------------------------- */

static char tmpdir[64];

static void write_file(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void remove_file(const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    unlink(path);
}

/* No EXCHANGE_* or LOG_LEVEL from the caller's shell may leak into a test. */
static void clear_env(void)
{
    for (;;) {
        int found = 0;
        for (char **ep = environ; ep && *ep; ep++) {
            if (strncmp(*ep, "EXCHANGE_", 9) == 0 || strncmp(*ep, "LOG_LEVEL=", 10) == 0) {
                char name[256];
                const char *eq = strchr(*ep, '=');
                size_t n = eq ? (size_t)(eq - *ep) : strlen(*ep);
                if (n >= sizeof(name))
                    n = sizeof(name) - 1;
                memcpy(name, *ep, n);
                name[n] = '\0';
                unsetenv(name);
                found = 1;
                break;
            }
        }
        if (!found)
            return;
    }
}

static int setup_dir(void **state)
{
    (void)state;
    clear_env();
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_config.XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    return 0;
}

static int teardown_dir(void **state)
{
    (void)state;
    static const char *names[] = {"exchange.ini", "p1.ini", "extra.ini", "local.ini", "bad.ini"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        remove_file(names[i]);
    rmdir(tmpdir);
    clear_env();
    return 0;
}

/* Parse text as "t.ini" and return the error text (the config must fail). */
static char *load_err(const char *text)
{
    buf_t err;
    buf_init(&err);
    cfg_t *c = cfg_load_string(text, "t.ini", &err);
    assert_null(c);
    assert_non_null(err.data);
    return err.data; /* caller frees */
}

static void assert_err(const char *text, const char *want)
{
    char *got = load_err(text);
    assert_string_equal(got, want);
    free(got);
}

static char *dump(const cfg_t *c, int with_sources)
{
    buf_t b;
    buf_init(&b);
    assert_int_equal(cfg_dump(c, &b, with_sources), 0);
    return b.data;
}

/* ---- defaults ------------------------------------------------------------- */

static void test_defaults(void **state)
{
    (void)state;
    buf_t err;
    buf_init(&err);
    cfg_t *c = cfg_load_string("", "empty", &err);
    assert_non_null(c);
    assert_string_equal(c->service.cluster, "exchange");
    assert_string_equal(c->zookeeper.connect, "");
    assert_int_equal(c->zookeeper.session_timeout_ms, 10000);
    assert_string_equal(c->kafka.brokers, "");
    assert_string_equal(c->kafka.topic, "market-data");
    assert_string_equal(c->kafka.security_protocol, "PLAINTEXT");
    assert_int_equal(c->kafka.start_tail, 500);
    assert_string_equal(c->fanout.listen, "0.0.0.0:8080");
    assert_string_equal(c->fanout.path, "/ws/exchange");
    assert_int_equal(c->fanout.workers, 0);
    assert_string_equal(c->relay.listen, "0.0.0.0:8091");
    assert_string_equal(c->admin.listen, "0.0.0.0:8090");
    assert_string_equal(c->log.level, "info");
    assert_string_equal(c->log.format, "logfmt");
    assert_int_equal(c->supervisor.crash_limit, 5);

    assert_string_equal(c->exchange[EX_UPBIT].url, "wss://api.upbit.com/websocket/v1");
    assert_string_equal(c->exchange[EX_BITHUMB].url, "wss://ws-api.bithumb.com/websocket/v1");
    assert_string_equal(c->exchange[EX_BINANCE].url, "wss://stream.binance.com:9443/stream");
    assert_string_equal(c->exchange[EX_COINBASE].url, "wss://advanced-trade-ws.coinbase.com");
    assert_string_equal(c->exchange[EX_UPBIT].markets, "KRW-BTC,KRW-ETH");
    assert_string_equal(c->exchange[EX_BINANCE].markets, "BTCUSDT,ETHUSDT");
    assert_string_equal(c->exchange[EX_COINBASE].markets, "BTC-USD,ETH-USD");
    assert_int_equal(c->exchange[EX_UPBIT].reconnect_min_ms, 200);
    assert_int_equal(c->exchange[EX_BITHUMB].reconnect_min_ms, 100);
    assert_int_equal(c->exchange[EX_BINANCE].reconnect_min_ms, 1000);
    assert_int_equal(c->exchange[EX_COINBASE].reconnect_min_ms, 125);
    assert_int_equal(c->exchange[EX_COINBASE].book_interval_ms, 100);
    for (int i = 0; i < EX_COUNT; i++) {
        assert_int_equal(c->exchange[i].enabled, 1);
        assert_string_equal(c->exchange[i].channels, "ticker,trade,orderbook");
    }

    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    assert_string_equal(c->service.instance, host);
    assert_string_equal(cfg_source(c, "service", "instance"), "default (hostname)");
    char adv[300];
    snprintf(adv, sizeof(adv), "%s:8091", host);
    assert_string_equal(c->relay.advertise, adv);
    assert_string_equal(cfg_source(c, "relay", "advertise"), "default (relay listen)");
    assert_string_equal(cfg_source(c, "kafka", "topic"), "default");
    assert_null(cfg_source(c, "kafka", "nope"));
    assert_true(cfg_key_count() > 90);
    cfg_free(c);
    buf_free(&err);
}

/* conf/exchange.ini restates the defaults: loading it changes no value. */
static void test_exchange_ini_is_defaults(void **state)
{
    (void)state;
    FILE *f = fopen("conf/exchange.ini", "r");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long size = ftell(f);
    assert_true(size > 0);
    rewind(f);
    buf_t text;
    buf_init(&text);
    assert_int_equal(buf_reserve(&text, (size_t)size + 1), 0);
    assert_int_equal(fread(text.data, 1, (size_t)size, f), (size_t)size);
    text.data[size] = '\0';
    text.len = (size_t)size;
    fclose(f);
    buf_t err;
    buf_init(&err);
    cfg_t *a = cfg_load_string("", "empty", &err);
    cfg_t *b = cfg_load_string(text.data, "conf/exchange.ini", &err);
    assert_non_null(a);
    assert_non_null(b);
    char *da = dump(a, 0), *db = dump(b, 0);
    assert_string_equal(da, db);
    /* the source names the line that sets it, wherever the key table puts it */
    const char *at = strstr(text.data, "\nworkers = auto\n");
    assert_non_null(at);
    int line = 2;
    for (const char *p = text.data; p < at; p++)
        line += *p == '\n';
    char want[64];
    snprintf(want, sizeof(want), "conf/exchange.ini:%d", line);
    assert_string_equal(cfg_source(b, "fanout", "workers"), want);
    free(da);
    free(db);
    cfg_free(a);
    cfg_free(b);
    buf_free(&err);
    buf_free(&text);
}

static void test_print_defaults_matches_file(void **state)
{
    (void)state;
    buf_t gen, file;
    buf_init(&gen);
    buf_init(&file);
    assert_int_equal(cfg_print_defaults(&gen), 0);
    FILE *f = fopen("conf/exchange.ini", "r");
    assert_non_null(f);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        buf_append(&file, chunk, n);
    fclose(f);
    /* If this fails: build/exchange-service --print-ini > conf/exchange.ini */
    assert_string_equal(gen.data, file.data);
    assert_non_null(strstr(gen.data, "\n; Fanout worker processes; auto: the CPUs available to the cgroup "
                                     "(reloadable; auto or 1..256)\nworkers = auto\n"));
    assert_non_null(strstr(gen.data, "EXCHANGE_EXCHANGE_UPBIT_URL"));
    buf_free(&gen);
    buf_free(&file);
}

/* ---- layering -------------------------------------------------------------- */

static void test_repo_profiles(void **state)
{
    (void)state;
    buf_t err;
    buf_init(&err);
    cfg_opts_t o = {.profile = "local", .conf_dir = "conf"};
    cfg_t *c = cfg_load(&o, &err);
    if (c == NULL)
        fail_msg("%s", err.data);
    assert_string_equal(c->profile, "local");
    assert_string_equal(c->files, "conf/exchange.ini,conf/local.ini");
    assert_string_equal(c->zookeeper.connect, "");
    assert_string_equal(c->kafka.brokers, "");
    assert_string_equal(c->admin.listen, "127.0.0.1:8090");
    assert_string_equal(c->fanout.listen, "0.0.0.0:8080");
    assert_int_equal(c->fanout.workers, 2);
    assert_string_equal(c->relay.listen, "127.0.0.1:8091");
    assert_string_not_equal(c->relay.token, "");
    assert_string_equal(c->exchange[EX_UPBIT].url, "ws://127.0.0.1:9101/websocket/v1");
    assert_string_equal(c->exchange[EX_BITHUMB].url, "ws://127.0.0.1:9102/websocket/v1");
    assert_string_equal(c->exchange[EX_BINANCE].url, "ws://127.0.0.1:9103/stream");
    assert_string_equal(c->exchange[EX_COINBASE].url, "ws://127.0.0.1:9104/");
    assert_string_equal(c->log.level, "info");
    assert_memory_equal(cfg_source(c, "fanout", "workers"), "conf/local.ini:", 15);
    cfg_free(c);

    o.profile = "docker";
    c = cfg_load(&o, &err);
    if (c == NULL)
        fail_msg("%s", err.data);
    assert_string_equal(c->zookeeper.connect, "zookeeper:2181");
    assert_string_equal(c->kafka.brokers, "kafka:9092");
    assert_string_equal(c->relay.listen, "0.0.0.0:8091");
    assert_string_equal(c->admin.listen, "0.0.0.0:8090");
    assert_string_equal(c->relay.advertise + strlen(c->relay.advertise) - 5, ":8091");
    cfg_free(c);
    cfg_t *r = cfg_load_string("[relay]\nlisten = 10.1.2.3:7000\n", "r", &err);
    assert_non_null(r);
    assert_string_equal(r->relay.advertise, "10.1.2.3:7000");
    cfg_free(r);

    o.profile = "prod";
    c = cfg_load(&o, &err);
    if (c == NULL)
        fail_msg("%s", err.data);
    assert_string_equal(c->kafka.security_protocol, "SASL_SSL");
    assert_string_equal(c->kafka.sasl_mechanism, "SCRAM-SHA-512");
    assert_int_equal(c->fanout.workers, 0);
    assert_string_equal(c->log.format, "json");
    assert_string_equal(c->exchange[EX_UPBIT].url, "wss://api.upbit.com/websocket/v1");
    char **items;
    int n;
    assert_int_equal(cfg_split_list(c->zookeeper.connect, &items, &n), 0);
    assert_int_equal(n, 3);
    cfg_free_list(items, n);
    cfg_free(c);
    buf_free(&err);
}

static void test_profile_and_extra_overlay(void **state)
{
    (void)state;
    write_file("exchange.ini", "[fanout]\nworkers = 3\n\n[kafka]\ntopic = base\n");
    write_file("p1.ini", "; profile p1\n[fanout]\n\n  workers = 5\n[log]\nlevel = warn\n");
    write_file("extra.ini", "[log]\nlevel = error ; inline comment\n");
    buf_t err;
    buf_init(&err);
    cfg_opts_t o = {.profile = "p1", .conf_dir = tmpdir};
    cfg_t *c = cfg_load(&o, &err);
    if (c == NULL)
        fail_msg("%s", err.data);
    char want[1024];
    assert_int_equal(c->fanout.workers, 5);
    snprintf(want, sizeof(want), "%s/p1.ini:4", tmpdir);
    assert_string_equal(cfg_source(c, "fanout", "workers"), want);
    assert_string_equal(c->kafka.topic, "base");
    snprintf(want, sizeof(want), "%s/exchange.ini:5", tmpdir);
    assert_string_equal(cfg_source(c, "kafka", "topic"), want);
    assert_string_equal(c->log.level, "warn");
    assert_string_equal(cfg_source(c, "kafka", "brokers"), "default");
    cfg_free(c);

    char extra[512];
    snprintf(extra, sizeof(extra), "%s/extra.ini", tmpdir);
    o.extra_file = extra;
    c = cfg_load(&o, &err);
    if (c == NULL)
        fail_msg("%s", err.data);
    assert_string_equal(c->log.level, "error");
    snprintf(want, sizeof(want), "%s:2", extra);
    assert_string_equal(cfg_source(c, "log", "level"), want);
    snprintf(want, sizeof(want), "%s/exchange.ini,%s/p1.ini,%s", tmpdir, tmpdir, extra);
    assert_string_equal(c->files, want);
    cfg_free(c);

    /* The profile from the environment when opts has none. */
    setenv("EXCHANGE_PROFILE", "p1", 1);
    cfg_opts_t o2 = {.conf_dir = tmpdir};
    c = cfg_load(&o2, &err);
    unsetenv("EXCHANGE_PROFILE");
    if (c == NULL)
        fail_msg("%s", err.data);
    assert_string_equal(c->profile, "p1");
    assert_int_equal(c->fanout.workers, 5);
    cfg_free(c);
    buf_free(&err);
}

static void test_env_overrides(void **state)
{
    (void)state;
    write_file("exchange.ini", "[log]\nlevel = warn\n");
    write_file("local.ini", "[kafka]\nbrokers = k1:9092\n");
    setenv("EXCHANGE_EXCHANGE_UPBIT_URL", "wss://example.test/ws", 1);
    setenv("EXCHANGE_KAFKA_BROKERS", " a:1,b:2 ", 1);
    setenv("EXCHANGE_FANOUT_WORKERS", "auto", 1);
    setenv("EXCHANGE_EXCHANGE_BINANCE_ENABLED", "off", 1);
    setenv("LOG_LEVEL", "DEBUG", 1);
    setenv("EXCHANGE_BUILD", "/somewhere", 1); /* not ours, not close to ours */

    buf_t err;
    buf_init(&err);
    cfg_opts_t o = {.conf_dir = tmpdir, .use_env = 1};
    cfg_t *c = cfg_load(&o, &err);
    if (c == NULL)
        fail_msg("%s", err.data);
    assert_string_equal(c->profile, "local");
    assert_string_equal(c->exchange[EX_UPBIT].url, "wss://example.test/ws");
    assert_string_equal(cfg_source(c, "exchange.upbit", "url"), "env EXCHANGE_EXCHANGE_UPBIT_URL");
    assert_string_equal(c->kafka.brokers, "a:1,b:2");
    assert_string_equal(cfg_source(c, "kafka", "brokers"), "env EXCHANGE_KAFKA_BROKERS");
    assert_int_equal(c->exchange[EX_BINANCE].enabled, 0);
    assert_string_equal(c->log.level, "debug");
    assert_string_equal(cfg_source(c, "log", "level"), "env LOG_LEVEL");
    assert_int_equal(c->fanout.workers, 0);
    cfg_free(c);

    /* Without use_env the environment is ignored. */
    o.use_env = 0;
    c = cfg_load(&o, &err);
    assert_non_null(c);
    assert_string_equal(c->kafka.brokers, "k1:9092");
    assert_string_equal(c->log.level, "warn");
    cfg_free(c);

    /* Errors name the variable; a near miss of a known name is reported. */
    setenv("EXCHANGE_FANOUT_WORKERS", "0", 1);
    setenv("EXCHANGE_KAFKA_BROKER", "x:1", 1);
    o.use_env = 1;
    buf_reset(&err);
    c = cfg_load(&o, &err);
    assert_null(c);
    assert_string_equal(
        err.data, "env EXCHANGE_FANOUT_WORKERS: [fanout] workers: must be auto or 1..256, got 0\n"
                  "env EXCHANGE_KAFKA_BROKER: unknown variable (did you mean EXCHANGE_KAFKA_BROKERS?)\n");
    clear_env();
    remove_file("local.ini");
    buf_free(&err);
}

/* ---- errors ------------------------------------------------------------------ */

static void test_err_unknown_section(void **state)
{
    (void)state;
    assert_err("[fanot]\nworkers = 2\nlisten = :1\n",
               "t.ini:1: [fanot]: unknown section (did you mean fanout?)\n");
    assert_err("[service]\n[exchange.upbt]\nurl = wss://x\n",
               "t.ini:2: [exchange.upbt]: unknown section (did you mean exchange.upbit?)\n");
    assert_err("[zzzzzzzz]\n", "t.ini:1: [zzzzzzzz]: unknown section\n");
}

static void test_err_unknown_key(void **state)
{
    (void)state;
    assert_err("[fanout]\nlistn = :1\n", "t.ini:2: [fanout] listn: unknown key (did you mean listen?)\n");
    assert_err("; c\n[exchange.coinbase]\nmarket = BTC-USD\n",
               "t.ini:3: [exchange.coinbase] market: unknown key (did you mean markets?)\n");
    assert_err("[log]\ncompletely_unrelated = 1\n", "t.ini:2: [log] completely_unrelated: unknown key\n");
    assert_err("workers = 1\n", "t.ini:1: workers: key outside any [section]\n");
}

static void test_err_values(void **state)
{
    (void)state;
    assert_err("[kafka]\npartitions = many\n",
               "t.ini:2: [kafka] partitions: must be an integer 1..1024, got many\n");
    assert_err("[kafka]\npartitions = 12x\n",
               "t.ini:2: [kafka] partitions: must be an integer 1..1024, got 12x\n");
    assert_err("[kafka]\npartitions = 2000\n", "t.ini:2: [kafka] partitions: must be 1..1024, got 2000\n");
    assert_err("[fanout]\nworkers = 0\n", "t.ini:2: [fanout] workers: must be auto or 1..256, got 0\n");
    assert_err("[fanout]\nworkers = lots\n", "t.ini:2: [fanout] workers: must be auto or 1..256, got lots\n");
    assert_err("[log]\nlevel = verbose\n",
               "t.ini:2: [log] level: must be one of debug|info|warn|error, got verbose\n");
    assert_err("[log]\nformat = xml\n", "t.ini:2: [log] format: must be one of logfmt|json, got xml\n");
    assert_err("[exchange.upbit]\nenabled = maybe\n",
               "t.ini:2: [exchange.upbit] enabled: must be true or false, got maybe\n");
    assert_err("[admin]\nlisten = localhost\n",
               "t.ini:2: [admin] listen: must be host:port with port 0..65535, got localhost\n");
    assert_err("[admin]\nlisten = h:65536\n",
               "t.ini:2: [admin] listen: must be host:port with port 0..65535, got h:65536\n");
    assert_err("[relay]\nadvertise = h:0\n",
               "t.ini:2: [relay] advertise: must be host:port with port 1..65535, or empty, got h:0\n");
    assert_err("[kafka]\nbrokers = k1:9092,k2\n",
               "t.ini:2: [kafka] brokers: must be a comma list of host:port, got k1:9092,k2\n");
    assert_err("[exchange.binance]\nurl = https://x\n",
               "t.ini:2: [exchange.binance] url: must be a ws:// or wss:// URL, got https://x\n");
    assert_err("[exchange.upbit]\nchannels = ticker,candles\n",
               "t.ini:2: [exchange.upbit] channels: must be a comma list of ticker|trade|orderbook, "
               "got ticker,candles\n");
    assert_err("[kafka]\ntopic =\n", "t.ini:2: [kafka] topic: must not be empty, got \"\"\n");
    assert_err("[fanout]\npath = ws\n", "t.ini:2: [fanout] path: must be a path starting with /, got ws\n");
    assert_err("[fanout]\nthis is not ini\n",
               "t.ini:2: syntax error: expected key = value, got this is not ini\n");
    assert_err("[fanout\n", "t.ini:1: syntax error: missing ] in section header\n");
    /* Keys checked against each other. */
    assert_err("[tls]\ncert = /c.pem\n", "t.ini:2: [tls] key: must be set together with [tls] cert\n");
    assert_err("[exchange.bithumb]\nreconnect_max_ms = 100\nreconnect_min_ms = 500\n",
               "t.ini:2: [exchange.bithumb] reconnect_max_ms: must be >= reconnect_min_ms (500), got 100\n");
}

static void test_err_collects_all(void **state)
{
    (void)state;
    assert_err("[fanout]\nworkers = 0\nlistn = x\n[log]\nlevel = loud\n",
               "t.ini:2: [fanout] workers: must be auto or 1..256, got 0\n"
               "t.ini:3: [fanout] listn: unknown key (did you mean listen?)\n"
               "t.ini:5: [log] level: must be one of debug|info|warn|error, got loud\n");
}

static void test_err_in_file_and_missing_profile(void **state)
{
    (void)state;
    write_file("exchange.ini", "[fanout]\nworkers = 1\n");
    write_file("bad.ini", "[fanout]\n\n\nworkers = 0\n");
    buf_t err;
    buf_init(&err);
    char want[1024];

    cfg_opts_t o = {.profile = "bad", .conf_dir = tmpdir};
    assert_null(cfg_load(&o, &err));
    snprintf(want, sizeof(want), "%s/bad.ini:4: [fanout] workers: must be auto or 1..256, got 0\n", tmpdir);
    assert_string_equal(err.data, want);

    buf_reset(&err);
    o.profile = "staging";
    assert_null(cfg_load(&o, &err));
    snprintf(want, sizeof(want),
             "%s/staging.ini: unknown profile staging (from --profile): No such file or directory\n", tmpdir);
    assert_string_equal(err.data, want);

    buf_reset(&err);
    o.profile = "../etc/passwd";
    assert_null(cfg_load(&o, &err));
    assert_string_equal(err.data, "--profile: profile: must be letters, digits, - or _, got ../etc/passwd\n");

    buf_reset(&err);
    write_file("p1.ini", "");
    o.profile = "p1";
    o.extra_file = "/nonexistent/x.ini";
    assert_null(cfg_load(&o, &err));
    assert_string_equal(err.data,
                        "/nonexistent/x.ini: cannot read --config file: No such file or directory\n");
    buf_free(&err);
}

/* ---- dump ------------------------------------------------------------------ */

static void test_dump_round_trip(void **state)
{
    (void)state;
    setenv("EXCHANGE_KAFKA_SASL_PASSWORD", "s3cret=;x", 1);
    setenv("EXCHANGE_ADMIN_TOKEN", "adm", 1);
    buf_t err;
    buf_init(&err);
    cfg_opts_t o = {.profile = "prod", .conf_dir = "conf", .use_env = 1};
    cfg_t *a = cfg_load(&o, &err);
    clear_env();
    if (a == NULL)
        fail_msg("%s", err.data);
    char *text = dump(a, 0);
    cfg_t *b = cfg_load_string(text, "ipc", &err);
    if (b == NULL)
        fail_msg("%s", err.data);
    char *text2 = dump(b, 0);
    assert_string_equal(text, text2);
    assert_string_equal(b->kafka.sasl_password, "s3cret=;x");
    assert_string_equal(b->admin.token, "adm");
    assert_string_equal(b->service.instance, a->service.instance);
    assert_int_equal(b->fanout.workers, 0);
    assert_false(cfg_ingest_changed(a, b));
    assert_false(cfg_diff_restart_keys(a, b, NULL));
    /* the source names the line of [kafka] topic in the text it came from */
    const char *ksec = strstr(text, "[kafka]");
    assert_non_null(ksec);
    const char *tline = strstr(ksec, "\ntopic");
    assert_non_null(tline);
    int lineno = 2; /* tline points at the newline that ends the line before */
    for (const char *q = text; q < tline; q++)
        lineno += *q == '\n';
    char want[32];
    snprintf(want, sizeof want, "ipc:%d", lineno);
    assert_string_equal(cfg_source(b, "kafka", "topic"), want);

    /* For people: sources, secrets masked, and it still parses. */
    char *human = dump(a, 1);
    assert_non_null(strstr(human, "\nsasl_password = ***  ; from: env EXCHANGE_KAFKA_SASL_PASSWORD\n"));
    assert_non_null(strstr(human, "\ntoken = ***  ; from: env EXCHANGE_ADMIN_TOKEN\n"));
    assert_non_null(strstr(human, "\nformat = json  ; from: conf/prod.ini:"));
    assert_null(strstr(human, "s3cret"));
    cfg_t *h = cfg_load_string(human, "human", &err);
    if (h == NULL)
        fail_msg("%s", err.data);
    assert_string_equal(h->log.format, "json");
    cfg_free(h);

    free(human);
    free(text);
    free(text2);
    cfg_free(a);
    cfg_free(b);
    buf_free(&err);
}

static void test_long_line(void **state)
{
    (void)state;
    buf_t text, err;
    buf_init(&text);
    buf_init(&err);
    buf_puts(&text, "[exchange.binance]\nmarkets = ");
    for (int i = 0; i < 200; i++)
        buf_printf(&text, "%sSYM%dUSDT", i ? ", " : "", i);
    buf_puts(&text, "\ndepth = 5\n");
    cfg_t *c = cfg_load_string(text.data, "long", &err);
    if (c == NULL)
        fail_msg("%s", err.data);
    char **items;
    int n;
    assert_int_equal(cfg_split_list(c->exchange[EX_BINANCE].markets, &items, &n), 0);
    assert_int_equal(n, 200);
    assert_string_equal(items[199], "SYM199USDT");
    assert_null(strchr(c->exchange[EX_BINANCE].markets, ' '));
    assert_int_equal(c->exchange[EX_BINANCE].depth, 5);
    assert_string_equal(cfg_source(c, "exchange.binance", "depth"), "long:3");
    cfg_free_list(items, n);
    cfg_free(c);
    buf_free(&text);
    buf_free(&err);
}

/* ---- reload helpers -------------------------------------------------------- */

static void test_reload_diffs(void **state)
{
    (void)state;
    buf_t err, out;
    buf_init(&err);
    buf_init(&out);
    cfg_t *a = cfg_load_string("[fanout]\nworkers = 2\n", "a", &err);
    cfg_t *b = cfg_load_string("[fanout]\nworkers = 4\n", "b", &err);
    cfg_t *d = cfg_load_string("[fanout]\nlisten = 0.0.0.0:9000\n[zookeeper]\nconnect = z:2181\n", "d", &err);
    cfg_t *e = cfg_load_string("[exchange.upbit]\nmarkets = KRW-XRP\n", "e", &err);
    cfg_t *l = cfg_load_string("[log]\nlevel = debug\n", "l", &err);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(d);
    assert_non_null(e);
    assert_non_null(l);

    assert_false(cfg_diff_restart_keys(a, b, &out));
    assert_int_equal(out.len, 0);
    assert_true(cfg_diff_restart_keys(a, d, &out));
    assert_string_equal(out.data, "[zookeeper] connect:  -> z:2181 (restart required)\n"
                                  "[fanout] listen: 0.0.0.0:8080 -> 0.0.0.0:9000 (restart required)\n");
    assert_int_equal(cfg_keep_restart_keys(d, a), 2);
    assert_string_equal(d->fanout.listen, "0.0.0.0:8080");
    assert_string_equal(cfg_source(d, "fanout", "listen"), "default");
    assert_false(cfg_diff_restart_keys(a, d, NULL));

    assert_false(cfg_ingest_changed(a, b)); /* fanout only */
    assert_false(cfg_ingest_changed(a, l)); /* log only */
    assert_true(cfg_ingest_changed(a, e));
    cfg_free(a);
    cfg_free(b);
    cfg_free(d);
    cfg_free(e);
    cfg_free(l);
    buf_free(&err);
    buf_free(&out);
}

static void test_fanout_workers(void **state)
{
    (void)state;
    buf_t err;
    buf_init(&err);
    cfg_t *c = cfg_load_string("", "x", &err);
    assert_non_null(c);
    int n = cfg_fanout_workers(c);
    assert_true(n >= 1 && n <= 256);
    c->fanout.workers = 7;
    assert_int_equal(cfg_fanout_workers(c), 7);
    cfg_free(c);
    buf_free(&err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_exchange_ini_is_defaults),
        cmocka_unit_test(test_print_defaults_matches_file),
        cmocka_unit_test(test_repo_profiles),
        cmocka_unit_test(test_profile_and_extra_overlay),
        cmocka_unit_test(test_env_overrides),
        cmocka_unit_test(test_err_unknown_section),
        cmocka_unit_test(test_err_unknown_key),
        cmocka_unit_test(test_err_values),
        cmocka_unit_test(test_err_collects_all),
        cmocka_unit_test(test_err_in_file_and_missing_profile),
        cmocka_unit_test(test_dump_round_trip),
        cmocka_unit_test(test_long_line),
        cmocka_unit_test(test_reload_diffs),
        cmocka_unit_test(test_fanout_workers),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
