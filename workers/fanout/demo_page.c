/* The fanout port's demo page, served on GET / and /demo (demo_page.h): plain
 * HTML, CSS and JavaScript compiled into the binary; no CDN. The page's
 * script is one inline ES module: the JavaScript client library of
 * clients/js (compiled by tsc at build time into exchange_client_js.h, see
 * the Makefile) followed by the page code below, which uses it. The library
 * does the connection work (reconnect with backoff or after the drain hint,
 * resume with "since", no duplicate or lower epoch, gap events); the page
 * lets a person pick markets from the channel list and shows a live ticker
 * board, recent trades and a top-10 order book. Exchange states come from
 * the status.EXCHANGE channels; a market whose exchange is not connected, or
 * that has been quiet for 10 s, is marked stale. window.demo exposes the
 * counters to the browser test (test/browser/pages.mjs). The page is
 * demo_page.html and demo_page.js beside this file, embedded at build time. */
#include <string.h>

#include "demo_page.h"
#include "exchange_client_js.h"

/* demo_page.html with its @WS_PATH@ and @SCRIPT@ tokens, and the page code
 * demo_page.js, as C strings (the Makefile writes the headers). */
#include "demo_page_html.h" /* static const char demo_page_html[] */
#include "demo_page_js.h"   /* static const char demo_page_js[] */

int demo_page_answer(const http_req_t *req, const char *path, const char *ws_path, buf_t *extra, buf_t *body)
{
    static const char token[] = "@WS_PATH@", script[] = "@SCRIPT@";
    if (strcmp(req->method, "GET") != 0 || (strcmp(path, "/") != 0 && strcmp(path, "/demo") != 0))
        return 0;
    if (http_req_header(req, "upgrade") != NULL)
        return 0; /* a WebSocket client at the wrong path: keep the 404 */
    const char *at = strstr(demo_page_html, token);
    const char *sc = strstr(demo_page_html, script);
    if (at == NULL || sc == NULL || sc < at)
        return 0;
    buf_append(body, demo_page_html, (size_t)(at - demo_page_html));
    for (const char *p = ws_path; *p; p++) {
        switch (*p) {
        case '&': buf_puts(body, "&amp;"); break;
        case '"': buf_puts(body, "&quot;"); break;
        case '<': buf_puts(body, "&lt;"); break;
        case '>': buf_puts(body, "&gt;"); break;
        default: buf_append(body, p, 1); break;
        }
    }
    at += sizeof(token) - 1;
    buf_append(body, at, (size_t)(sc - at));
    buf_puts(body, exchange_client_js);
    buf_puts(body, demo_page_js);
    buf_puts(body, sc + sizeof(script) - 1);
    buf_puts(extra, "Content-Type: text/html; charset=utf-8\r\n"
                    "Cache-Control: no-cache\r\n"
                    "X-Content-Type-Options: nosniff\r\n"
                    "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
                    "style-src 'unsafe-inline'; img-src data:; connect-src 'self' ws: wss:; "
                    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n");
    return 200;
}
