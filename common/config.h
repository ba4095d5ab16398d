/* Configuration: one declarative key table (config.c) drives INI parsing
 * (inih), validation, environment overrides, --check-config output and the
 * generated conf/exchange.ini. Load into a fresh cfg_t; swap only on success. */
#ifndef CONFIG_H
#define CONFIG_H
#include <stddef.h>
#include "buf.h"
#include "cfgval.h" /* lists, addresses, CPU count */

enum { EX_UPBIT = 0, EX_BITHUMB, EX_BINANCE, EX_COINBASE, EX_COUNT };
extern const char *const cfg_exchange_names[EX_COUNT]; /* "upbit", ... */

#define CFG_MAX_LIST 256

typedef struct {
    int enabled;
    char *url;
    char *markets;        /* comma-separated, exchange's own spelling */
    char *channels;       /* comma-separated subset of ticker,trade,orderbook */
    int depth;            /* orderbook levels published */
    int book_interval_ms; /* coinbase: min interval between book publishes */
    int stale_after_ms;   /* reconnect a feed silent this long */
    int reconnect_min_ms; /* never reconnect faster than this (exchange limit) */
    int reconnect_max_ms;
    int max_message_bytes;
    int connect_timeout_ms; /* each of DNS+TCP, TLS handshake, upgrade */
    char *ca_file;
    int insecure_skip_verify;
    char *format;        /* upbit/bithumb: DEFAULT or SIMPLE */
    char *rest_url;      /* public REST base for backfill; empty: no backfill */
    int rest_rate;       /* REST requests per second (token bucket) */
    int backfill_max_ms; /* bound on one channel's backfill (live is buffered meanwhile) */
    int dedup_ids;       /* trade ids remembered per channel */
} cfg_exchange_t;

typedef struct {
    struct {
        char *cluster;
        char *instance;
    } service;
    struct {
        char *connect;
        int session_timeout_ms;
        char *root;
        char *auth;   /* digest user:password, resolved from file: / a path; "" none */
        int lease_ms; /* 0 = auto: cfg_lease_ms() */
    } zookeeper;
    struct {
        char *brokers;
        char *topic;
        int partitions;
        int replication;
        int fallback_after_ms;
        int recover_after_ms;
        int linger_ms;
        int fetch_wait_max_ms;
        int start_tail;
        int ingest_tail;
        int ingest_tail_ms;
        int buffer_messages;
        int transactions;
        char *transactional_id; /* empty: cfg_transactional_id() derives it */
        int transaction_commit_ms;
        char *security_protocol;
        char *sasl_mechanism;
        char *sasl_username;
        char *sasl_password;
        char *ssl_ca;
    } kafka;
    cfg_exchange_t exchange[EX_COUNT];
    struct {
        char *listen;
        char *path;
        int workers; /* 0 = auto */
        int drain_ms;
        int history;
        int client_queue_bytes;
        char *allowed_origins;
        int max_clients;
        int max_message_bytes;
        int max_subscriptions;
        int max_requests_per_sec;
        int idle_timeout_ms;
        int pong_timeout_ms;
        int max_header_bytes;
        int max_connections_per_ip;
        int max_connections_per_sec_per_ip;
        int max_bytes_in_per_sec;
        int compression;    /* permessage-deflate with clients that offer it */
        int write_delay_ms; /* 0: write at once */
    } fanout;
    struct {
        char *listen;
        char *advertise;
        char *token;
        int history;
        int client_queue_bytes;
    } relay;
    struct {
        char *listen;
        char *token;
    } admin;
    struct {
        char *level;
        char *format;
    } log;
    struct {
        char *cert;
        char *key;
        char *ca;
    } tls;
    struct {
        int enabled;
        char *secret;
        char *channels_claim;
        int leeway_ms;
    } auth;
    struct {
        int restart_min_ms;
        int restart_max_ms;
        int crash_window_ms;
        int crash_limit;
        int stop_deadline_ms;
        int stats_interval_ms;
    } supervisor;

    /* Where each key's value came from, parallel to the key table:
     * "default", "conf/prod.ini:12", "env EXCHANGE_KAFKA_BROKERS". */
    char **source;
    char *profile;
    char *files; /* the files read, comma-separated, for /status */
} cfg_t;

typedef struct {
    const char *profile;    /* NULL: $EXCHANGE_PROFILE, $SPRING_PROFILES_ACTIVE, "local" */
    const char *conf_dir;   /* NULL: $EXCHANGE_CONF_DIR, else "conf" */
    const char *extra_file; /* --config FILE, or NULL */
    int use_env;            /* apply EXCHANGE_* and LOG_LEVEL overrides */
} cfg_opts_t;

/* Load conf_dir/exchange.ini, conf_dir/PROFILE.ini, extra_file, then env.
 * On error returns NULL and writes one line per problem into err
 * ("conf/prod.ini:12: [fanout] workers: must be 1..256, got 0"). */
cfg_t *cfg_load(const cfg_opts_t *opts, buf_t *err);
/* The profile the plan's manifests set: the first name in
 * $SPRING_PROFILES_ACTIVE, used when neither --profile nor $EXCHANGE_PROFILE
 * is given (use_env). NULL when unset. */
const char *cfg_spring_profile(char *out, size_t n);
/* Parse INI text (name is used in messages) over the defaults, no env. */
cfg_t *cfg_load_string(const char *text, const char *name, buf_t *err);
void cfg_free(cfg_t *c);

/* The effective configuration as INI, every key. with_sources: for people
 * (--check-config): each line ends "  ; from: SOURCE" and secrets show as ***.
 * Without: the exact values (secrets included) for cfg_load_string, e.g.
 * over IPC to the workers. */
int cfg_dump(const cfg_t *c, buf_t *out, int with_sources);
/* The commented default file (conf/exchange.ini), generated from the table. */
int cfg_print_defaults(buf_t *out);
/* True if any non-reloadable key differs (a SIGHUP then warns and keeps the
 * old value for that key). Names the keys in out. */
int cfg_diff_restart_keys(const cfg_t *old_c, const cfg_t *new_c, buf_t *out);
/* True if any key in sections that matter to the ingest worker differs. */
int cfg_ingest_changed(const cfg_t *a, const cfg_t *b);
/* Resolved [zookeeper] lease_ms (0 = a third of the session timeout). */
int cfg_lease_ms(const cfg_t *c);
/* Resolved [kafka] transactional_id into out ("exchange-service.CLUSTER" when empty). */
void cfg_transactional_id(const cfg_t *c, char *out, size_t n);
/* Resolved fanout worker count ([fanout] workers, 0 = CPUs of the cgroup). */
int cfg_fanout_workers(const cfg_t *c);

/* Added by the config module (not in the first draft of this header): */
/* For SIGHUP: copy the old value (and source) of every non-reloadable key
 * that differs into new_c. Returns how many keys were kept. */
int cfg_keep_restart_keys(cfg_t *new_c, const cfg_t *old_c);
/* Where a key's value came from ("default", "conf/x.ini:3", "env NAME"),
 * NULL for an unknown key. */
const char *cfg_source(const cfg_t *c, const char *section, const char *key);
/* Number of (section, key) slots, the length of cfg_t.source. */
int cfg_key_count(void);

#endif
