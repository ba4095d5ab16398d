/* The fanout port's demo page (GET / and /demo): a live ticker board, recent
 * trades and a top-10 order book over the client protocol. */
#ifndef FANOUT_DEMO_PAGE_H
#define FANOUT_DEMO_PAGE_H
#include "buf.h"
#include "http.h"

/* For a request that is not a WebSocket upgrade: 200 with the page in body
 * and its headers in extra when path is / or /demo (GET or HEAD), else 0.
 * ws_path is the client endpoint the page connects to ([fanout] path). */
int demo_page_answer(const http_req_t *req, const char *path, const char *ws_path, buf_t *extra, buf_t *body);

#endif
