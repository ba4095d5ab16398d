/* The admin port's status page (GET /): plain HTML, CSS and JavaScript
 * compiled into the binary; no CDN. It polls /status once a
 * second and shows this instance's role, the leader and epoch, the session,
 * the exchange connection board, each worker (pid, state, uptime, restarts,
 * clients, Kafka or relay source, messages per second) and the latency
 * percentiles. Every state is shown as colour plus text. Elements carry
 * data-exchange / data-kind / data-field attributes for the browser test
 * (test/browser/pages.mjs). The page is supervisor/status_page.html, turned
 * into a C string at build time (the Makefile writes status_page_html.h). */
#include "status_page.h"

#include "status_page_html.h" /* const char status_page_html[] */
