/* Exact decimal arithmetic on the exchanges' number text (the ingest's
 * prices and quantities): validity, shift by a power of ten, comparison. */
#ifndef DECIMAL_H
#define DECIMAL_H
#include <stddef.h>

/* Exact decimal text ("-12.3400"): no exponent, no '+', at least one integer
 * digit, shorter than DECIMAL_MAX. */
#define DECIMAL_MAX 64
int decimal_valid(const char *s, size_t n); /* 1 if valid */
/* in / 10^places as text, keeping every given digit ("-1.234", 2 ->
 * "-0.01234"; "5", 2 -> "0.05"). -EINVAL on bad input, -ERANGE if too long. */
int decimal_shift(const char *in, int places, char *out, size_t outsz);
/* Numeric comparison of two valid decimals (<0, 0, >0); "1.50" == "1.5". */
int decimal_cmp(const char *a, const char *b);
int decimal_is_zero(const char *s);

#endif
