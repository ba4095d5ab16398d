/* libFuzzer target: common/config.c cfg_load_string (inih + the key table +
 * validation). Oracle: an accepted configuration survives the trip the
 * supervisor makes it take to every worker (cfg_dump without sources, then
 * cfg_load_string in the worker) unchanged, and the reload helpers
 * (restart-key diff, keep) work on it. Input: INI text. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static cfg_t *defaults;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    buf_t err;
    buf_init(&err);
    log_set_level("error");
    defaults = cfg_load_string("", "defaults", &err);
    FUZZ_CHECK(defaults != NULL);
    buf_free(&err);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024)
        return 0;
    char *text = malloc(size + 1);
    FUZZ_CHECK(text != NULL);
    memcpy(text, data, size);
    text[size] = '\0';
    buf_t err, d1, d2, human, diff;
    buf_init(&err);
    buf_init(&d1);
    buf_init(&d2);
    buf_init(&human);
    buf_init(&diff);
    cfg_t *c = cfg_load_string(text, "fuzz.ini", &err);
    if (c == NULL) {
        /* Every refusal says why, naming the place. */
        FUZZ_CHECK(err.len > 0);
        goto out;
    }
    FUZZ_CHECK(cfg_dump(c, &d1, 0) == 0);
    FUZZ_CHECK(cfg_dump(c, &human, 1) == 0);
    buf_reset(&err);
    cfg_t *c2 = cfg_load_string(d1.data, "ipc", &err);
    if (c2 == NULL) {
        fprintf(stderr, "dump does not load back:\n%s\n--- dump ---\n%s\n", err.data, d1.data);
        abort();
    }
    FUZZ_CHECK(cfg_dump(c2, &d2, 0) == 0);
    if (d1.len != d2.len || memcmp(d1.data, d2.data, d1.len) != 0) {
        fprintf(stderr, "dump changed over a round trip:\n--- first ---\n%s\n--- second ---\n%s\n", d1.data,
                d2.data);
        abort();
    }
    FUZZ_CHECK(cfg_ingest_changed(c, c2) == 0);
    FUZZ_CHECK(cfg_diff_restart_keys(c, c2, &diff) == 0);
    buf_reset(&diff);
    (void)cfg_diff_restart_keys(defaults, c, &diff);
    (void)cfg_ingest_changed(defaults, c);
    (void)cfg_keep_restart_keys(c2, defaults);
    /* After keeping the old restart-only values nothing restart-only differs. */
    buf_reset(&diff);
    FUZZ_CHECK(cfg_diff_restart_keys(defaults, c2, &diff) == 0);
    cfg_free(c2);
    cfg_free(c);
out:
    buf_free(&err);
    buf_free(&d1);
    buf_free(&d2);
    buf_free(&human);
    buf_free(&diff);
    free(text);
    return 0;
}
