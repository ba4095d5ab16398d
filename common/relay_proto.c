/* The relay's resume request, built by the fanout and parsed by the ingest
 * (relay_proto.h has the protocol). */
#include "relay_proto.h"

#include <errno.h>
#include <string.h>

json_t *relay_proto_resume_new(int64_t epoch, json_t *since, int64_t tail)
{
    if (since == NULL && (since = json_object()) == NULL)
        return NULL;
    json_t *req = json_pack("{s:s, s:I, s:o}", "op", "resume", "epoch", (json_int_t)epoch, "since", since);
    if (req != NULL && tail >= 0 && json_object_set_new(req, "tail", json_integer(tail)) < 0) {
        json_decref(req);
        return NULL;
    }
    return req;
}

int relay_proto_resume_parse(const json_t *req, relay_resume_t *out)
{
    const char *op = json_string_value(json_object_get(req, "op"));
    if (op == NULL || strcmp(op, "resume") != 0)
        return -EINVAL;
    const json_t *ep = json_object_get(req, "epoch");
    const json_t *tail = json_object_get(req, "tail");
    const json_t *since = json_object_get(req, "since");
    out->epoch = json_is_integer(ep) ? (int64_t)json_integer_value(ep) : 0;
    out->tail =
        json_is_integer(tail) && json_integer_value(tail) >= 0 ? (int64_t)json_integer_value(tail) : 1;
    out->since = json_is_object(since) ? since : NULL;
    return 0;
}

int64_t relay_proto_resume_since(const relay_resume_t *r, const char *channel)
{
    const json_t *v = r->since ? json_object_get(r->since, channel) : NULL;
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}
