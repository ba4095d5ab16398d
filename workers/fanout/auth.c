/* Token checks at the upgrade and channel grants afterwards. The secret
 * never reaches a log line; failures are reported by reason only. */
#include "auth.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "msg.h"

void auth_grant_free(auth_grant_t *g)
{
    if (g == NULL)
        return;
    cfg_free_list(g->patterns, g->n);
    memset(g, 0, sizeof *g);
}

static int add_pattern(auth_grant_t *g, const char *p, size_t n)
{
    if (n == 0)
        return 0;
    char *s = strndup(p, n);
    if (s == NULL)
        return -ENOMEM;
    /* "*" alone: any channel; else TYPE.EXCHANGE.SYMBOL with '*' segments. */
    if (strcmp(s, "*") != 0 && !msg_channel_valid(s, 1)) {
        free(s);
        return -EINVAL;
    }
    char **grown = realloc(g->patterns, sizeof(char *) * (size_t)(g->n + 1));
    if (grown == NULL) {
        free(s);
        return -ENOMEM;
    }
    g->patterns = grown;
    g->patterns[g->n++] = s;
    return 0;
}

int auth_grant_from_claims(json_t *claims, const char *claim, int64_t leeway_ms, auth_grant_t *g)
{
    memset(g, 0, sizeof *g);
    json_t *exp = json_object_get(claims, "exp");
    if (json_is_number(exp))
        g->exp_ms = (int64_t)(json_number_value(exp) * 1000.0) + leeway_ms;
    if (claim == NULL || *claim == '\0')
        return 0;
    json_t *v = json_object_get(claims, claim);
    if (v == NULL)
        return 0;
    g->restricted = 1;
    int r = 0;
    if (json_is_array(v)) {
        size_t i;
        json_t *it;
        json_array_foreach(v, i, it)
        {
            const char *s = json_string_value(it);
            if (s == NULL || (r = add_pattern(g, s, strlen(s))) < 0)
                goto fail;
        }
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        while (*s) {
            size_t n = strcspn(s, ", \t");
            if ((r = add_pattern(g, s, n)) < 0)
                goto fail;
            s += n;
            s += strspn(s, ", \t");
        }
    } else {
        goto fail;
    }
    return 0;
fail:
    auth_grant_free(g);
    return r < 0 && r != -EINVAL ? r : -EINVAL;
}

jwt_result_t auth_request(const cfg_t *cfg, const http_req_t *req, int64_t now_ms, auth_grant_t *g)
{
    memset(g, 0, sizeof *g);
    const char *tok = NULL;
    size_t n = 0;
    char *q = NULL;
    /* The header wins: it does not end up in access logs. */
    if (!http_bearer(http_req_header(req, "authorization"), &tok, &n)) {
        if ((q = malloc(JWT_MAX_LEN + 2)) == NULL)
            return JWT_MALFORMED;
        if (http_req_query(req, "token", q, JWT_MAX_LEN + 2) == 0) {
            tok = q;
            n = strlen(q);
        }
    }
    json_t *claims = NULL;
    jwt_result_t r = jwt_verify_hs256(tok, n, cfg->auth.secret, strlen(cfg->auth.secret), now_ms,
                                      cfg->auth.leeway_ms, &claims);
    free(q);
    if (r == JWT_OK && auth_grant_from_claims(claims, cfg->auth.channels_claim, cfg->auth.leeway_ms, g) < 0)
        r = JWT_MALFORMED;
    json_decref(claims);
    return r;
}

int auth_channel_allowed(const auth_grant_t *g, const char *channel)
{
    if (g == NULL || !g->restricted)
        return 1;
    for (int i = 0; i < g->n; i++)
        if (strcmp(g->patterns[i], "*") == 0 || msg_channel_match(g->patterns[i], channel))
            return 1;
    return 0;
}

static int check_name(const auth_grant_t *g, const char *s, char *bad, size_t badsz)
{
    if (s == NULL || auth_channel_allowed(g, s))
        return 0;
    if (bad != NULL && badsz > 0) {
        strncpy(bad, s, badsz - 1);
        bad[badsz - 1] = '\0';
    }
    return -EACCES;
}

int auth_check_request(const auth_grant_t *g, const char *text, size_t len, char *bad, size_t badsz)
{
    if (g == NULL || !g->restricted)
        return 0;
    json_t *req = json_loadb(text, len, 0, NULL);
    if (req == NULL)
        return 0;
    int r = 0;
    const char *op = json_string_value(json_object_get(req, "op"));
    if (op != NULL && strcmp(op, "subscribe") == 0) {
        json_t *chs = json_object_get(req, "channels"), *v;
        size_t i;
        if (json_is_array(chs))
            json_array_foreach(chs, i, v) if (r == 0) r = check_name(g, json_string_value(v), bad, badsz);
        if (r == 0)
            r = check_name(g, json_string_value(json_object_get(req, "channel")), bad, badsz);
        json_t *since = json_object_get(req, "since");
        const char *k;
        if (r == 0 && json_is_object(since))
            json_object_foreach(since, k, v) if (r == 0) r = check_name(g, k, bad, badsz);
    }
    json_decref(req);
    return r;
}
