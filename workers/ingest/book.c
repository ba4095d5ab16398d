/* Sorted price levels with exact decimal keys. Updates are binary searched
 * and inserted in place: snapshots arrive best first, so most inserts are at
 * the end of the array. */
#include "book.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void book_init(book_t *b)
{
    memset(b, 0, sizeof(*b));
    b->bids.desc = 1;
}

void book_free(book_t *b)
{
    free(b->bids.v);
    free(b->asks.v);
    book_init(b);
}

void book_clear(book_t *b)
{
    b->bids.n = 0;
    b->asks.n = 0;
}

/* Index of price, or where it would be inserted; *found says which. */
static size_t side_find(const book_side_t *s, const char *price, int *found)
{
    size_t lo = 0, hi = s->n;
    *found = 0;
    /* fast path: beyond the worst level (snapshots come in order) */
    if (s->n > 0) {
        int c = decimal_cmp(price, s->v[s->n - 1].price);
        if (s->desc)
            c = -c;
        if (c > 0)
            return s->n;
    }
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = decimal_cmp(price, s->v[mid].price);
        if (s->desc)
            c = -c;
        if (c == 0) {
            *found = 1;
            return mid;
        }
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

int book_set(book_t *b, int bid, const char *price, const char *qty)
{
    book_side_t *s = bid ? &b->bids : &b->asks;
    size_t pl = strlen(price), ql = strlen(qty);
    int found;
    if (!decimal_valid(price, pl) || !decimal_valid(qty, ql))
        return -EINVAL;
    size_t i = side_find(s, price, &found);
    if (decimal_is_zero(qty)) {
        if (found) {
            memmove(&s->v[i], &s->v[i + 1], (s->n - i - 1) * sizeof(s->v[0]));
            s->n--;
        }
        return 0;
    }
    if (!found) {
        if (s->n == s->cap) {
            size_t cap = s->cap ? s->cap * 2 : 64;
            book_level_t *nv = realloc(s->v, cap * sizeof(*nv));
            if (!nv)
                return -ENOMEM;
            s->v = nv;
            s->cap = cap;
        }
        memmove(&s->v[i + 1], &s->v[i], (s->n - i) * sizeof(s->v[0]));
        s->n++;
    }
    memcpy(s->v[i].price, price, pl + 1); /* the latest spelling of the level */
    memcpy(s->v[i].qty, qty, ql + 1);
    return 0;
}

size_t book_depth(const book_t *b, int bid)
{
    return bid ? b->bids.n : b->asks.n;
}

const book_level_t *book_level(const book_t *b, int bid, size_t i)
{
    const book_side_t *s = bid ? &b->bids : &b->asks;
    return i < s->n ? &s->v[i] : NULL;
}

int book_top_json(const book_t *b, int bid, size_t n, buf_t *out)
{
    const book_side_t *s = bid ? &b->bids : &b->asks;
    int r = buf_puts(out, "[");
    for (size_t i = 0; i < n && i < s->n && r == 0; i++) {
        buf_puts(out, i ? ",[" : "[");
        buf_json_str(out, s->v[i].price);
        buf_puts(out, ",");
        buf_json_str(out, s->v[i].qty);
        r = buf_puts(out, "]");
    }
    if (r == 0)
        r = buf_puts(out, "]");
    return r;
}
