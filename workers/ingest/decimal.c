/* Exact decimal text (prices, quantities) as the exchanges send it: checked,
 * shifted and compared as text, never through a double. */
#include "decimal.h"

#include <errno.h>
#include <string.h>

int decimal_valid(const char *s, size_t n)
{
    size_t i = 0, id = 0, fd = 0;
    if (i < n && s[i] == '-')
        i++;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        i++;
        id++;
    }
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            i++;
            fd++;
        }
        if (fd == 0)
            return 0;
    }
    return i == n && id > 0 && n < DECIMAL_MAX;
}

int decimal_shift(const char *in, int places, char *out, size_t outsz)
{
    size_t n = strlen(in);
    if (!decimal_valid(in, n) || places < 0 || places > 20)
        return -EINVAL;
    const char *p = in;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    const char *dot = strchr(p, '.');
    size_t il = dot ? (size_t)(dot - p) : strlen(p);
    const char *frac = dot ? dot + 1 : "";
    size_t fl = strlen(frac);
    /* all digits in order, the point moves `places` to the left */
    char digits[DECIMAL_MAX + 32];
    size_t nd = 0;
    for (int i = 0; i < places - (int)il; i++)
        digits[nd++] = '0'; /* pad so the integer part keeps at least one digit */
    memcpy(digits + nd, p, il);
    nd += il;
    memcpy(digits + nd, frac, fl);
    nd += fl;
    size_t nint = nd - fl - (size_t)places; /* digits before the new point */
    if (nint == 0) {
        memmove(digits + 1, digits, nd);
        digits[0] = '0';
        nd++;
        nint = 1;
    }
    /* strip redundant leading zeros in the integer part */
    size_t lead = 0;
    while (lead + 1 < nint && digits[lead] == '0')
        lead++;
    char tmp[DECIMAL_MAX + 40];
    size_t o = 0;
    if (neg)
        tmp[o++] = '-';
    memcpy(tmp + o, digits + lead, nint - lead);
    o += nint - lead;
    if (nd > nint) {
        tmp[o++] = '.';
        memcpy(tmp + o, digits + nint, nd - nint);
        o += nd - nint;
    }
    tmp[o] = 0;
    if (o + 1 > outsz)
        return -ERANGE;
    memcpy(out, tmp, o + 1);
    return 0;
}

/* Split a valid decimal into sign, integer digits without leading zeros and
 * fraction digits without trailing zeros. */
static void dec_parts(const char *s, int *neg, const char **ip, size_t *il, const char **fp, size_t *fl)
{
    *neg = 0;
    if (*s == '-') {
        *neg = 1;
        s++;
    } else if (*s == '+') {
        s++;
    }
    while (*s == '0')
        s++;
    *ip = s;
    while (*s >= '0' && *s <= '9')
        s++;
    *il = (size_t)(s - *ip);
    *fp = "";
    *fl = 0;
    if (*s == '.') {
        *fp = ++s;
        while (*s >= '0' && *s <= '9')
            s++;
        size_t l = (size_t)(s - *fp);
        while (l > 0 && (*fp)[l - 1] == '0')
            l--;
        *fl = l;
    }
    if (*il == 0 && *fl == 0)
        *neg = 0; /* -0 == 0 */
}

int decimal_cmp(const char *a, const char *b)
{
    int na, nb;
    const char *ia, *fa, *ib, *fb;
    size_t ila, fla, ilb, flb;
    dec_parts(a, &na, &ia, &ila, &fa, &fla);
    dec_parts(b, &nb, &ib, &ilb, &fb, &flb);
    if (na != nb)
        return na ? -1 : 1;
    int mag;
    if (ila != ilb) {
        mag = ila < ilb ? -1 : 1;
    } else {
        int c = memcmp(ia, ib, ila);
        if (c == 0) {
            size_t m = fla > flb ? fla : flb;
            for (size_t i = 0; i < m && c == 0; i++) {
                char x = i < fla ? fa[i] : '0';
                char y = i < flb ? fb[i] : '0';
                c = (x > y) - (x < y);
            }
        }
        mag = (c > 0) - (c < 0);
    }
    return na ? -mag : mag;
}

int decimal_is_zero(const char *s)
{
    return decimal_cmp(s, "0") == 0;
}
