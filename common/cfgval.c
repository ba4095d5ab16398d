/* Values the configuration and its users parse the same way (cfgval.h):
 * comma lists, host:port addresses, and the CPU count this process may use
 * (affinity, then the cgroup v2 or v1 quota). */
#include "cfgval.h"

#include <ctype.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* For the list splitter's error bound (config.h: at most CFG_MAX_LIST items
 * a key; a list of anything else stays far below this). */
#include "config.h"

char *cfg_trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

int cfg_split_list(const char *s, char ***items, int *n)
{
    *items = NULL;
    *n = 0;
    if (s == NULL)
        return 0;
    char *copy = strdup(s);
    if (copy == NULL)
        return -ENOMEM;
    int cap = 0, r = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        char *t = cfg_trim(tok);
        if (*t == '\0')
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 8;
            if (cap > CFG_MAX_LIST * 64) {
                r = -E2BIG;
                goto fail;
            }
            char **grown = realloc(*items, sizeof(char *) * (size_t)cap);
            if (grown == NULL) {
                r = -ENOMEM;
                goto fail;
            }
            *items = grown;
        }
        if (((*items)[*n] = strdup(t)) == NULL) {
            r = -ENOMEM;
            goto fail;
        }
        (*n)++;
    }
    free(copy);
    return 0;
fail:
    free(copy);
    cfg_free_list(*items, *n);
    *items = NULL;
    *n = 0;
    return r;
}

void cfg_free_list(char **items, int n)
{
    for (int i = 0; i < n; i++)
        free(items[i]);
    free(items);
}

static int valid_host(const char *h, size_t n)
{
    if (n == 0)
        return 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)h[i];
        if (!isalnum(ch) && ch != '-' && ch != '.' && ch != '_')
            return 0;
    }
    return 1;
}

int cfg_parse_addr(const char *s, char *host, size_t hostsz, int *port)
{
    if (s == NULL)
        return -EINVAL;
    const char *h = s, *colon;
    size_t hl;
    if (*s == '[') { /* [v6]:port */
        const char *end = strchr(s, ']');
        if (end == NULL || end[1] != ':')
            return -EINVAL;
        h = s + 1;
        hl = (size_t)(end - h);
        colon = end + 1;
        for (size_t i = 0; i < hl; i++)
            if (!isxdigit((unsigned char)h[i]) && h[i] != ':' && h[i] != '.' && h[i] != '%')
                return -EINVAL;
        if (hl == 0)
            return -EINVAL;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return -EINVAL;
        hl = (size_t)(colon - s);
        if (hl == 1 && *s == '*')
            hl = 0;
        else if (!valid_host(s, hl))
            return -EINVAL;
    }
    const char *p = colon + 1;
    if (*p == '\0' || strlen(p) > 5)
        return -EINVAL;
    long v = 0;
    for (; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return -EINVAL;
        v = v * 10 + (*p - '0');
    }
    if (v > 65535)
        return -EINVAL;
    if (hl == 0) {
        h = "0.0.0.0";
        hl = 7;
    }
    if (host != NULL) {
        if (hl + 1 > hostsz)
            return -ENAMETOOLONG;
        memcpy(host, h, hl);
        host[hl] = '\0';
    }
    if (port != NULL)
        *port = (int)v;
    return 0;
}

int cfg_cpus_from_cpu_max(const char *text, int ncpu)
{
    long quota = 0, period = 0;
    char q[32] = "";
    if (ncpu < 1)
        ncpu = 1;
    if (text != NULL && sscanf(text, "%31s %ld", q, &period) == 2 && strcmp(q, "max") != 0) {
        char *end;
        quota = strtol(q, &end, 10);
        if (*end == '\0' && quota > 0 && period > 0) {
            long n = (quota + period - 1) / period;
            if (n < ncpu)
                ncpu = (int)n;
        }
    }
    return ncpu < 1 ? 1 : ncpu;
}

static int read_small_file(const char *path, char *out, size_t n)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -errno;
    size_t got = fread(out, 1, n - 1, f);
    out[got] = '\0';
    fclose(f);
    return 0;
}

int cfg_cgroup_cpus(void)
{
    int ncpu = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        ncpu = CPU_COUNT(&set);
    if (ncpu < 1)
        ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    char text[128];
    if (read_small_file("/sys/fs/cgroup/cpu.max", text, sizeof(text)) == 0) {
        ncpu = cfg_cpus_from_cpu_max(text, ncpu);
    } else { /* cgroup v1 */
        char q[32], p[32];
        if (read_small_file("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", q, sizeof(q)) == 0 &&
            read_small_file("/sys/fs/cgroup/cpu/cpu.cfs_period_us", p, sizeof(p)) == 0 && atol(q) > 0) {
            snprintf(text, sizeof(text), "%ld %ld", atol(q), atol(p));
            ncpu = cfg_cpus_from_cpu_max(text, ncpu);
        }
    }
    if (ncpu < 1)
        ncpu = 1;
    if (ncpu > 256)
        ncpu = 256;
    return ncpu;
}
