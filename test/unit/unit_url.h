/* URL checks shared by the tests of the two URL parsers that fill a
 * wsc_url_t (wsclient_parse.c for ws/wss, httpc.c for http/https): a table
 * of URLs and what each must parse into. */
#ifndef TEST_UNIT_URL_H
#define TEST_UNIT_URL_H
#include "unit.h"

#include <stdio.h>
#include <string.h>

#include "wsclient_parse.h"

typedef struct {
    const char *text;
    int tls;
    const char *host;
    int port;
    const char *path;
    const char *hosthdr;
} unit_url_case_t;

typedef int (*unit_url_parse_fn)(const char *url, wsc_url_t *out);

/* Each case parses, into exactly its fields; a failure names the URL. */
#define assert_urls(parse, cases)                                                                            \
    unit_urls((parse), (cases), sizeof(cases) / sizeof((cases)[0]), __FILE__, __LINE__)

static inline void unit_urls(unit_url_parse_fn parse, const unit_url_case_t *cases, size_t n,
                             const char *file, int line)
{
    for (size_t i = 0; i < n; i++) {
        const unit_url_case_t *c = &cases[i];
        wsc_url_t u;
        memset(&u, 0, sizeof u);
        int rc = parse(c->text, &u);
        if (rc != 0 || u.tls != c->tls || strcmp(u.host, c->host) != 0 || u.port != c->port ||
            strcmp(u.path, c->path) != 0 || strcmp(u.hosthdr, c->hosthdr) != 0) {
            print_error("%s: rc=%d tls=%d host=%s port=%d path=%s hosthdr=%s\n", c->text, rc, u.tls, u.host,
                        u.port, u.path, u.hosthdr);
            _fail(file, line);
        }
    }
}

#endif
