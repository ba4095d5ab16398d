/* Client authentication for the fanout port ([auth]): the JWT from the
 * upgrade request (?token= or Authorization: Bearer) and the channel
 * patterns it grants. Pure functions over the request and claims, so unit
 * tests can drive them; server.c decides the close codes (4001, 4003). */
#ifndef FANOUT_AUTH_H
#define FANOUT_AUTH_H
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "config.h"
#include "http.h"
#include "jwt.h"

typedef struct {
    int restricted;  /* patterns apply (the claim was present) */
    char **patterns; /* channel patterns, '*' for one segment */
    int n;
    int64_t exp_ms; /* token expiry (exp + leeway), 0 = none */
} auth_grant_t;

/* Check the upgrade request's token against cfg->auth. On JWT_OK fills g
 * (free it with auth_grant_free); otherwise g is left empty. */
jwt_result_t auth_request(const cfg_t *cfg, const http_req_t *req, int64_t now_ms, auth_grant_t *g);
/* Build the grant from verified claims: claim is the name of the claim with
 * the patterns (array of strings, or one string of comma/space separated
 * patterns); NULL or "" means no restriction. 0, or -EINVAL when the claim
 * has a bad type or a bad pattern (the token is then refused as malformed). */
int auth_grant_from_claims(json_t *claims, const char *claim, int64_t leeway_ms, auth_grant_t *g);
void auth_grant_free(auth_grant_t *g);
/* Whether a subscription (which may itself hold '*' segments) stays inside
 * the grant: some pattern covers every channel it can match. */
int auth_channel_allowed(const auth_grant_t *g, const char *channel);
/* For a client request (JSON text): if it is a subscribe, every channel in
 * "channels", "channel" and the "since" keys must be allowed. Returns 0, or
 * -EACCES with the first forbidden name copied into bad. Anything else
 * (other ops, bad JSON) is left to the protocol module: 0. */
int auth_check_request(const auth_grant_t *g, const char *text, size_t len, char *bad, size_t badsz);

#endif
