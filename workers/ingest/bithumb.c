/* Bithumb connector: the public API copies Upbit's (upbit.c "upbitlike").
 * The differences seen in clients (string sequential_id, microsecond string
 * timestamps, delisting_date "") are accepted by the shared field readers. */
#include "connector.h"

static connector_t *bithumb_create(const cfg_exchange_t *cfg, norm_sink_t *sink)
{
    return upbitlike_create(&bithumb_connector, cfg, sink);
}

static int bithumb_url(const cfg_exchange_t *cfg, buf_t *out)
{
    return buf_puts(out, cfg->url && *cfg->url ? cfg->url : "wss://ws-api.bithumb.com/websocket/v1");
}

const connector_ops_t bithumb_connector = {
    .name = "bithumb",
    .url = bithumb_url,
    .create = bithumb_create,
    .destroy = upbitlike_destroy,
    .on_open = upbitlike_on_open,
    .on_frame = upbitlike_on_frame,
    .on_tick = upbitlike_on_tick,
    .on_close = upbitlike_on_close,
};
