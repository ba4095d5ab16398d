/* The supervisor's /metrics (sup_metrics.c): its own registry, exited
 * workers' counters, its per-worker view and the live workers' snapshots. */
#ifndef SUP_METRICS_H
#define SUP_METRICS_H
#include "buf.h"
#include "procs.h"

struct sup_s;
void sup_metrics_retire(struct sup_s *s, const proc_t *p); /* keep an exited worker's counters in /metrics */
int sup_metrics_render(struct sup_s *s, buf_t *out);

#endif
