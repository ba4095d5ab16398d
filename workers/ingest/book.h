/* Local order book for exchanges that send a snapshot then level updates
 * (Coinbase level2). Levels are keyed by the exchange's exact decimal text
 * and ordered by exact decimal comparison (never through a double). */
#ifndef BOOK_H
#define BOOK_H
#include <stddef.h>
#include <stdint.h>
#include "buf.h"
#include "decimal.h"
#include "msg.h"

typedef struct {
    char price[DECIMAL_MAX];
    char qty[DECIMAL_MAX];
} book_level_t;

typedef struct {
    book_level_t *v; /* best first */
    size_t n, cap;
    int desc; /* bids: highest price first */
} book_side_t;

typedef struct {
    book_side_t bids, asks;
} book_t;

void book_init(book_t *b);
void book_free(book_t *b);
void book_clear(book_t *b);
/* Set the absolute quantity at a price; a zero quantity removes the level.
 * price and qty must be valid decimals (decimal_valid): -EINVAL
 * otherwise, -ENOMEM on allocation failure. */
int book_set(book_t *b, int bid, const char *price, const char *qty);
size_t book_depth(const book_t *b, int bid);
const book_level_t *book_level(const book_t *b, int bid, size_t i); /* NULL past the end */
/* Append the top n levels of one side as a JSON array [["p","q"],...]. */
int book_top_json(const book_t *b, int bid, size_t n, buf_t *out);

#endif
