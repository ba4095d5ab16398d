/* The /status snapshot (status.c): what the admin port serves as JSON. */
#ifndef STATUS_H
#define STATUS_H
#include <jansson.h>
#include <uv.h>

struct sup_s;
void status_start(struct sup_s *s); /* the once-a-second rate sampling */
void status_stop(struct sup_s *s);
json_t *status_snapshot(struct sup_s *s); /* a new document; NULL when out of memory */

#endif
