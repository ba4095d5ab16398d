/* Pure parts of the source switch (source_switch.c), exposed for unit tests:
 * the decision between Kafka and the relay, and the cheap read of a
 * message's channel/seq/epoch used to track per-channel positions. */
#ifndef FANOUT_SOURCE_SWITCH_H
#define FANOUT_SOURCE_SWITCH_H
#include <stddef.h>
#include <stdint.h>

enum { SWITCH_KAFKA = 0, SWITCH_RELAY = 1 };

typedef struct {
    int mode;               /* SWITCH_KAFKA / SWITCH_RELAY now */
    int have_kafka;         /* [kafka] brokers set */
    int kafka_ok;           /* Kafka source healthy now */
    uint64_t kafka_held_ms; /* how long kafka_ok has held */
    int kafka_caught_up;    /* since healthy, Kafka delivered a message at the head of its channel */
    int relay_quiet;        /* relay not connected, or silent for recover_after_ms */
    int fallback_after_ms, recover_after_ms;
} switch_input_t;

/* The mode to be in (SWITCH_KAFKA or SWITCH_RELAY); *why gets a reason
 * when it differs from in->mode. */
int switch_decide(const switch_input_t *in, const char **why);

/* Read channel, seq and epoch from the fixed prefix the ingest worker writes
 * ({"channel":"C",...,"seq":N,"epoch":N,...}); 0 or -1 when the text does
 * not have that shape. ch points into json (not NUL-terminated). */
int switch_scan_meta(const char *json, size_t len, const char **ch, size_t *chlen, int64_t *seq,
                     int64_t *epoch);

#endif
