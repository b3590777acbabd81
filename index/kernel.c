/* kernel.c: the numeric pieces of routing: f16 with directed rounding,
 * row scoring, int8 dots, a bounded heap for top-k. */
#include "ix_internal.h"
#include <string.h>

static uint16_t f16_nearest(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)                       /* inf or nan */
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
    if (ax >= 0x477ff000u)                       /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) {                      /* below 2^-14: subnormal half */
        if (ax < 0x33000000u) return sign;       /* below half of the smallest subnormal */
        uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(ax >> 23);       /* 14..24 */
        uint32_t h = mant >> (shift);
        uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((ax - 0x38000000u) >> 13);
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

float ix_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu, x;
    if (e == 0) {
        float v = (float)m * 0x1p-24f;           /* subnormal: exact in f32 */
        return sign ? -v : v;
    }
    if (e == 31) x = sign | 0x7f800000u | (m << 13);
    else x = sign | ((e + 112) << 23) | (m << 13);
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* The next half toward +inf (up) or -inf (down); h is not NaN. */
static uint16_t f16_step(uint16_t h, int up)
{
    int neg = (h & 0x8000u) != 0;
    if ((h & 0x7fffu) == 0) return up ? 0x0001u : 0x8001u;
    if (neg == !up) return (h & 0x7fffu) == 0x7c00u ? h : (uint16_t)(h + 1);
    return (uint16_t)(h - 1);
}

uint16_t ix_f32_to_f16_dir(float f, int dir)
{
    uint16_t h = f16_nearest(f);
    if (dir == 0 || f != f) return h;
    if ((h & 0x7fffu) == 0x7c00u) {              /* overflowed to inf */
        int neg = (h & 0x8000u) != 0;
        if (neg && dir > 0) return 0xfbffu;      /* -65504 is >= f */
        if (!neg && dir < 0) return 0x7bffu;     /* 65504 is <= f */
        return h;
    }
    float back = ix_f16_to_f32(h);
    if (dir > 0 && back < f) return f16_step(h, 1);
    if (dir < 0 && back > f) return f16_step(h, 0);
    return h;
}

/* Dot of two f32 rows with 16 independent partial sums in a fixed order:
 * vectorises (the partial sums are lanes) and gives the same bits for a
 * row wherever it is scored. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define IX_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define IX_CLONES
#endif

IX_CLONES
void ix_score_rows(const float *tab, size_t n, size_t width, const float *qp, int nr, float *out)
{
    size_t w16 = width & ~(size_t)15;
    for (size_t s = 0; s < n; s++) {
        const float *a = tab + s * width;
        for (int r = 0; r < nr; r++) {
            const float *b = qp + (size_t)r * width;
            float acc[16] = { 0 };
            for (size_t c = 0; c < w16; c += 16)
                for (int l = 0; l < 16; l++) acc[l] += a[c + l] * b[c + l];
            float tail = 0.0f;
            for (size_t c = w16; c < width; c++) tail += a[c] * b[c];
            for (int l = 0; l < 8; l++) acc[l] += acc[l + 8];
            for (int l = 0; l < 4; l++) acc[l] += acc[l + 4];
            out[s * (size_t)nr + (size_t)r] = ((acc[0] + acc[2]) + (acc[1] + acc[3])) + tail;
        }
    }
}

IX_CLONES
float ix_dot_f(const float *a, const float *b, int n)
{
    float acc[16] = { 0 };
    int n16 = n & ~15, c;
    for (c = 0; c < n16; c += 16)
        for (int l = 0; l < 16; l++) acc[l] += a[c + l] * b[c + l];
    float tail = 0.0f;
    for (; c < n; c++) tail += a[c] * b[c];
    for (int l = 0; l < 8; l++) acc[l] += acc[l + 8];
    for (int l = 0; l < 4; l++) acc[l] += acc[l + 4];
    return ((acc[0] + acc[2]) + (acc[1] + acc[3])) + tail;
}

float ix_dot_i8(const int8_t *a, const float *b, int n)
{
    float acc[16] = { 0 };
    int n16 = n & ~15, c;
    for (c = 0; c < n16; c += 16)
        for (int l = 0; l < 16; l++) acc[l] += (float)a[c + l] * b[c + l];
    float tail = 0.0f;
    for (; c < n; c++) tail += (float)a[c] * b[c];
    for (int l = 0; l < 8; l++) acc[l] += acc[l + 8];
    for (int l = 0; l < 4; l++) acc[l] += acc[l + 4];
    return ((acc[0] + acc[2]) + (acc[1] + acc[3])) + tail;
}

/* Min-heap ordered by "worse first", so h[0] is the current k-th best. */
static void sift_down(ix_cand *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && ix_worse(h[l], h[m])) m = l;
        if (r < n && ix_worse(h[r], h[m])) m = r;
        if (m == i) return;
        ix_cand t = h[i]; h[i] = h[m]; h[m] = t;
        i = m;
    }
}

void ix_heap_push(ix_heap *hp, ix_cand c)
{
    if (hp->k == 0) return;
    if (hp->n < hp->k) {
        size_t i = hp->n++;
        hp->h[i] = c;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (!ix_worse(hp->h[i], hp->h[p])) break;
            ix_cand t = hp->h[i]; hp->h[i] = hp->h[p]; hp->h[p] = t;
            i = p;
        }
        return;
    }
    if (!ix_worse(hp->h[0], c)) return;          /* not better than the k-th */
    hp->h[0] = c;
    sift_down(hp->h, hp->n, 0);
}

void ix_heap_sort_desc(ix_heap *hp)
{
    /* Heap sort: repeatedly move the worst to the end, giving best first. */
    for (size_t n = hp->n; n > 1; n--) {
        ix_cand t = hp->h[0]; hp->h[0] = hp->h[n - 1]; hp->h[n - 1] = t;
        sift_down(hp->h, n - 1, 0);
    }
    /* The worst went to the end first, so the array is now best first. */
}
