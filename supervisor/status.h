/* The /status snapshot (status.c): what the admin port serves as JSON. */
#ifndef STATUS_H
#define STATUS_H
#include <jansson.h>
#include <uv.h>

void status_start(uv_loop_t *loop); /* the once-a-second rate sampling */
void status_stop(void);
json_t *status_snapshot(void); /* a new document; NULL when out of memory */

#endif
