/* Value parsers shared by the configuration and its users (cfgval.c):
 * comma lists, host:port addresses, the CPU count a cgroup allows. */
#ifndef CFGVAL_H
#define CFGVAL_H
#include <stddef.h>

/* Trim white space in place: the first non-space byte of s. */
char *cfg_trim(char *s);
/* Split a comma list into trimmed items (malloc'd array of malloc'd strings). */
int cfg_split_list(const char *s, char ***items, int *n);
void cfg_free_list(char **items, int n);
/* Parse "host:port" (host may be empty or "*" for 0.0.0.0) into parts. */
int cfg_parse_addr(const char *s, char *host, size_t hostsz, int *port);
/* CPUs allowed by a cgroup v2 cpu.max text ("max 100000", "200000 100000":
 * ceil(quota/period)), capped at ncpu, at least 1. */
int cfg_cpus_from_cpu_max(const char *text, int ncpu);
/* CPUs this process may use: affinity, capped by the cgroup quota, 1..256. */
int cfg_cgroup_cpus(void);

#endif
