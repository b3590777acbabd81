/* qscan.c: quest tables held in RAM as int8, scored with integer dot
 * products.
 *
 * Why: a decode step at a million tokens streams every quest summary of
 * the layer, and the f16 table's float kernel is bound by its own
 * instructions as much as by memory. Codes of 8 bits halve the bytes, and
 * integer multiply-adds (AVX-512 VNNI: 64 per instruction) take the
 * arithmetic out of the way, while the score stays an upper bound:
 *
 * - Per table, channel c has a power-of-two weight w_c (from segment 0,
 *   so an outlier channel does not take every code's range), per segment
 *   a power-of-two scale s; a max channel's code is ceil(max / (w s)), a
 *   min channel's floor(min / (w s)), in -127..127. Both divisions are
 *   exact, so code * w * s bounds the stored value outward, exactly.
 * - Per query row, u_c = qp_c * w_c is rounded to q_c * t with t a power
 *   of two and |q_c| <= 2047 (12 bits: the query's share of the looseness
 *   below is 16 times smaller than with 8), so |u_c - q_c t| <= t / 2
 *   exactly.
 * - Then sum_c qp_c X_c = s (t I + sum_c e_c code_c) <= s t (I + L1 / 2),
 *   with I the integer dot of the codes with q and L1 the sum of |code|:
 *   the score (2I + L1) * s * t/2 is an integer times a power of two,
 *   exact in float (up to 2^24, and rounded up beyond), and at most
 *   s t (L1 + 32) above the exact dot with the dequantized codes.
 *
 * The kernels (portable C, AVX2 vpmaddwd, AVX-512 VNNI vpdpwssd on codes
 * widened to 16 bits) compute I exactly, so they give the same bits;
 * tests/test_index_kernels.c checks them against each other and every
 * score against the exact max of q.k.
 *
 * Layout: blocks of IX_BLK segments; per block, the 2d channels (max then
 * min, padded with zero codes to a multiple of 4) in quads; per quad, the
 * IX_BLK segments' 4 codes each: byte ((b * nq + quad) * IX_BLK + lane) *
 * 4 + j is channel 4 quad + j of segment b * IX_BLK + lane. */
#include "ix_internal.h"
#include <float.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define Q8_X86 1
#endif

#define EXP_MIN (-60)          /* scale exponents are clamped to this range so */
#define EXP_MAX 60             /* that no score underflows or overflows */
#define W_EXP_MIN (-24)
#define W_EXP_MAX 16
#define QMAX 2047              /* query codes: 12 bits */

size_t ix_q8_quads(const eg_route_table *t) { return ((size_t)t->width + 3) / 4; }

static size_t q8_idx(size_t nq, size_t s, size_t c)
{
    return (((s / IX_BLK) * nq + c / 4) * IX_BLK + s % IX_BLK) * 4 + c % 4;
}

int8_t ix_q8_code(const eg_route_table *t, size_t s, size_t c) { return t->q8[q8_idx(ix_q8_quads(t), s, c)]; }

/* Exponent e of the smallest power of two with m * 2^e >= a (a > 0). */
static int exp_for(double a, double m)
{
    int e;
    frexp(a / m, &e);               /* a/m = f 2^e, f in [0.5, 1): 2^e >= a/m */
    if (ldexp(m, e - 1) >= a) e--;
    return e;
}

/* The table's channel weights, from the first segment's summary. */
static void set_weights(eg_route_table *t, const float *v)
{
    size_t d = (size_t)t->spec.dim;
    int top = W_EXP_MIN;
    for (size_t c = 0; c < d; c++) {
        float a = fmaxf(fabsf(v[c]), fabsf(v[d + c]));
        if (!(a <= 65504.0f)) a = 65504.0f;   /* inf: as large as f16 goes */
        int e = W_EXP_MIN - 1;
        if (a > 0) { frexpf(a, &e); e--; }    /* a in [2^e, 2^(e+1)) */
        if (e > W_EXP_MAX) e = W_EXP_MAX;
        t->q8w[c] = (int8_t)e;
        if (e >= W_EXP_MIN && e > top) top = e;
    }
    /* A channel that is zero in segment 0: its values elsewhere are
     * unknown; weigh it like the largest, so it cannot widen the codes. */
    for (size_t c = 0; c < d; c++) {
        if (t->q8w[c] < W_EXP_MIN) t->q8w[c] = (int8_t)top;
        t->q8wf[c] = ldexpf(1.0f, t->q8w[c]);
        t->q8wi[c] = ldexpf(1.0f, -t->q8w[c]);
    }
    t->q8w_set = 1;
}

/* Segment s's codes (nq quads, zero-padded) into its block's layout, with
 * their L1 sum, the scale 2^e and the infinite flag. */
static void put_codes(eg_route_table *t, size_t s, const int8_t *code, int e, int inf)
{
    size_t nq = ix_q8_quads(t);
    int32_t l1 = 0;
    int8_t *blk = t->q8 + (s / IX_BLK) * nq * IX_BLK * 4 + (s % IX_BLK) * 4;
    for (size_t k = 0; k < nq; k++)
        for (int j = 0; j < 4; j++) {
            int8_t q = code[k * 4 + j];
            blk[k * IX_BLK * 4 + j] = q;
            l1 += q < 0 ? -q : q;
        }
    t->q8s[s] = ldexpf(1.0f, e);
    t->q8l1[s] = l1;
    t->q8inf[s] = (uint8_t)inf;
}

void ix_q8_put_row(eg_route_table *t, size_t s, const float *v)
{
    size_t d = (size_t)t->spec.dim, w = 2 * d;
    if (!t->q8w_set) set_weights(t, v);
    /* x = v / w_c: exact (powers of two, no f16 value leaves the normal
     * floats under the clamped weights); then the codes of x / s. */
    float x[2 * EG_IX_DIM_MAX + 4], amax = 0.0f;
    int8_t code[2 * EG_IX_DIM_MAX + 4];
    int inf = 0;
    for (size_t c = 0; c < d; c++) {
        x[c] = v[c] * t->q8wi[c];
        x[d + c] = v[d + c] * t->q8wi[c];
    }
    for (size_t c = 0; c < w; c++) {
        float a = fabsf(x[c]);
        inf |= !(a <= FLT_MAX);
        amax = a > amax ? a : amax;
    }
    int e = amax > 0 && !inf ? exp_for(amax, 127.0) : EXP_MIN;
    e = e < EXP_MIN ? EXP_MIN : e > EXP_MAX ? EXP_MAX : e;
    float inv = ldexpf(1.0f, -e);
    memset(code, 0, sizeof code);
    /* Ceil (max channels) and floor (min channels) of y = x / s, exact and
     * |y| <= 127: by truncation and a step, which vectorises. */
    for (size_t c = 0; c < w && !inf; c++) {
        float y = x[c] * inv;
        int i = (int)y;
        code[c] = (int8_t)(c < d ? i + ((float)i < y) : i - ((float)i > y));
    }
    put_codes(t, s, code, e, inf);
}

/* Ball: the centre m = (max + min) / 2 of the stored box (in double, as
 * the summary's radius was measured from it), as nearest codes on the
 * table's weights and a power-of-two scale; the radius grows by the
 * codes' distance from m, so the ball around the decoded centre still
 * holds every key: |k - c'| <= |k - m| + |m - c'|. */
void ix_q8_put_ball(eg_route_table *t, size_t s, const float *v, float radius)
{
    size_t d = (size_t)t->spec.dim;
    if (!t->q8w_set) set_weights(t, v);
    double m[EG_IX_DIM_MAX], x[EG_IX_DIM_MAX], amax = 0, hw2 = 0;
    int8_t code[EG_IX_DIM_MAX + 4];
    int inf = !(radius <= FLT_MAX) && radius == radius;   /* +inf: keys beyond any bound */
    for (size_t c = 0; c < d; c++) {
        inf |= !(fabsf(v[c]) <= FLT_MAX) || !(fabsf(v[d + c]) <= FLT_MAX);
        m[c] = 0.5 * ((double)v[c] + (double)v[d + c]);
        double h = 0.5 * ((double)v[c] - (double)v[d + c]);
        hw2 += h * h;
        x[c] = m[c] * t->q8wi[c];
        amax = fabs(x[c]) > amax ? fabs(x[c]) : amax;
    }
    int e = amax > 0 && !inf ? exp_for(amax, 127.0) : EXP_MIN;
    e = e < EXP_MIN ? EXP_MIN : e > EXP_MAX ? EXP_MAX : e;
    double inv = ldexp(1.0, -e), sc = ldexp(1.0, e), err2 = 0;
    memset(code, 0, sizeof code);
    for (size_t c = 0; c < d && !inf; c++) {
        double y = nearbyint(x[c] * inv);                 /* |x / s| <= 127 */
        y = y > 127 ? 127 : y < -127 ? -127 : y;
        code[c] = (int8_t)y;
        double dv = m[c] - y * sc * t->q8wf[c];
        err2 += dv * dv;
    }
    /* A radius not measured (negative; NaN is refused at append): the
     * half-diagonal of the box, which holds every key of it. */
    double r = radius >= 0 ? (double)radius : sqrt(hw2);
    r = (r + sqrt(err2)) * (1.0 + 0x1p-40);               /* the double roundings, outward */
    float rf = ix_f32_up(r);
    put_codes(t, s, code, e, inf);
    t->q8rad[s] = inf || !(rf <= FLT_MAX) ? 0.0f : rf;
    if (!inf && !(rf <= FLT_MAX)) t->q8inf[s] = 1;
}

float ix_q8_value(const eg_route_table *t, size_t s, size_t c)
{
    if (t->q8inf[s]) return ix_ball(t) ? NAN : c < (size_t)t->spec.dim ? INFINITY : -INFINITY;
    return (float)ix_q8_code(t, s, c) * t->q8s[s] * t->q8wf[c % (size_t)t->spec.dim];   /* exact */
}

/* Block by block, in the codes' own layout (quad, lane, channel of the
 * quad), so that every loop is element-wise and vectorises: per position
 * the running max (min) over the group's blocks, then over the 8 lanes. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)   /* clang wants it on every declaration */
__attribute__((target_clones("avx2", "default")))   /* same bits: exact operations */
#endif
void ix_q8_group(const eg_route_table *t, size_t s0, size_t s1, float *mx, float *mn)
{
    size_t d = (size_t)t->spec.dim, nq = ix_q8_quads(t), L = IX_BLK * 4;
    float amx[(2 * EG_IX_DIM_MAX + 4) / 4 * IX_BLK * 4], amn[(2 * EG_IX_DIM_MAX + 4) / 4 * IX_BLK * 4];
    for (size_t i = 0; i < nq * L; i++) amx[i] = -INFINITY;
    for (size_t i = 0; i < nq * L; i++) amn[i] = INFINITY;
    for (size_t b = s0 / IX_BLK; b * IX_BLK < s1; b++) {
        float sc[IX_BLK * 4], lo[IX_BLK * 4], hi[IX_BLK * 4];   /* per position: scale, and what a lane out
                                                                 * of the group or infinite adds */
        for (size_t l = 0; l < IX_BLK; l++) {
            size_t s = b * IX_BLK + l;
            int in = s >= s0 && s < s1, inf = in && t->q8inf[s];
            for (int j = 0; j < 4; j++) {
                sc[l * 4 + j] = in && !inf ? t->q8s[s] : 0.0f;
                hi[l * 4 + j] = !in ? -INFINITY : inf ? INFINITY : 0.0f;   /* 0: take the value */
                lo[l * 4 + j] = !in ? INFINITY : inf ? -INFINITY : 0.0f;
            }
        }
        const int8_t *blk = t->q8 + b * nq * L;
        for (size_t k = 0; k < nq; k++)
            for (size_t i = 0; i < L; i++) {
                float v = (float)blk[k * L + i] * sc[i];   /* exact */
                float vh = hi[i] != 0.0f ? hi[i] : v, vl = lo[i] != 0.0f ? lo[i] : v;
                amx[k * L + i] = vh > amx[k * L + i] ? vh : amx[k * L + i];
                amn[k * L + i] = vl < amn[k * L + i] ? vl : amn[k * L + i];
            }
    }
    for (size_t c = 0; c < 2 * d; c++) {
        size_t k = c / 4, j = c % 4;
        float a = -INFINITY, z = INFINITY;
        for (size_t l = 0; l < IX_BLK; l++) {
            a = amx[k * L + l * 4 + j] > a ? amx[k * L + l * 4 + j] : a;
            z = amn[k * L + l * 4 + j] < z ? amn[k * L + l * 4 + j] : z;
        }
        float wc = t->q8wf[c % d];   /* times the channel's weight: exact, monotone */
        if (c < d) mx[c] = a * wc;
        else mn[c] = z * wc;
    }
}

/* ---- query rows ----------------------------------------------------------------- */
int ix_q8_rows(ix_ctx *c)
{
    const eg_route_table *t = c->t;
    size_t d = (size_t)t->spec.dim, w = (size_t)t->width, nq = ix_q8_quads(t), nr = (size_t)c->nr, nc = nq * 4;
    /* one allocation: codes [nr][nc] int16, then (t/2, t) [nr][2] f32, |q|_1
     * [nr] double, |q|_2 [nr] f32, flags [nr] */
    size_t b_codes = nr * nc * sizeof(int16_t), b_qt = nr * 2 * sizeof(float), b_l1 = nr * sizeof(double);
    size_t off_qt = (b_codes + 7) & ~(size_t)7, off_l1 = off_qt + ((b_qt + 7) & ~(size_t)7);
    size_t off_qn = off_l1 + b_l1, off_inf = off_qn + nr * sizeof(float);
    unsigned char *mem = calloc(1, off_inf + nr);
    if (!mem) return ix_fail(EG_IX_ENOMEM, "out of memory");
    c->qq = (int16_t *)mem;
    c->qt = (float *)(mem + off_qt);
    c->ql1 = (double *)(mem + off_l1);
    c->qn = (float *)(mem + off_qn);
    c->qinf = mem + off_inf;
    for (size_t r = 0; r < nr; r++) {
        double l2 = 0;
        for (size_t i = 0; i < d; i++) {
            double x = c->rows->q[r * d + i];
            c->ql1[r] += fabs(x);
            l2 += x * x;   /* exact products; the sum's rounding is far below the margin */
        }
        c->qn[r] = ix_f32_up(sqrt(l2) * (1.0 + 0x1p-40));
        const float *qp = c->qp + r * w;
        int16_t *q = c->qq + r * nc;
        double u[2 * EG_IX_DIM_MAX], amax = 0;
        for (size_t h = 0; h < w; h += d)   /* channel i of each half: no i % d a value */
            for (size_t i = 0; i < d; i++) u[h + i] = (double)qp[h + i] * t->q8wf[i];   /* exact (powers of two) */
        for (size_t i = 0; i < w; i++) amax = fabs(u[i]) > amax ? fabs(u[i]) : amax;
        int e = amax > 0 ? exp_for(amax, QMAX) : EXP_MIN;
        c->qinf[r] = e > EXP_MAX;   /* |q| beyond 2^45: scores are +inf (still bounds) */
        e = e < EXP_MIN ? EXP_MIN : e > EXP_MAX ? EXP_MAX : e;
        double inv = ldexp(1.0, -e);
        if (!c->qinf[r])
            for (size_t i = 0; i < w; i++) {
                double x = u[i] * inv;                     /* exact; |x| <= QMAX */
                q[i] = (int16_t)(x >= 0 ? (long)(x + 0.5) : -(long)(0.5 - x));   /* |x - q| <= 1/2 */
            }
        c->qt[2 * r] = ldexpf(1.0f, e - 1);   /* t / 2: the score's factor */
        c->qt[2 * r + 1] = ldexpf(1.0f, e);   /* t: the hierarchy's margin */
    }
    return 0;
}

/* ---- kernels ---------------------------------------------------------------------- */
/* What a kernel needs besides the table: rows' query codes (qld apart), t/2
 * and the infinite flag of each row. Scores of segments [s0, s1) go to
 * out[r*ld + s - s0]: the integer dot I, J = 2I + L1 (plus 64 when float
 * rounding could take it below), times s and t/2 (exact), +inf for a
 * segment or row flagged so. The vector epilogues do the same IEEE
 * operations as the scalar one, so every kernel gives the same bits. */
typedef struct {
    const eg_route_table *t;
    size_t nq, qld;
    const int16_t *qq;
    const float *th;
    const uint8_t *rinf;
    const float *rq;          /* ball: per row f |q|_2, times the segment's radius added */
} q8_job;

static inline float epilogue(int32_t I, size_t s, const eg_route_table *t, float th, int rinf, float rq)
{
    int32_t J = 2 * I + t->q8l1[s];                  /* |J| < 2^31: 2 * 2048 * 127 * 2047 + L1 */
    if (J >= (1 << 24) || J <= -(1 << 24)) J += 64;   /* float(J) then rounds to >= J */
    float v = (float)J * t->q8s[s] * th;              /* exact: powers of two */
    if (t->q8rad) v = v + rq * t->q8rad[s];           /* ball: multiply, then add (no FMA: every kernel alike) */
    return rinf || t->q8inf[s] ? INFINITY : v;
}

static void dot_portable(const q8_job *j, size_t s0, size_t s1, int nr, float *out, size_t ld)
{
    size_t nq = j->nq;
    for (size_t s = s0; s < s1; s++) {
        const int8_t *blk = j->t->q8 + (s / IX_BLK) * nq * IX_BLK * 4 + (s % IX_BLK) * 4;
        for (int r = 0; r < nr; r++) {
            const int16_t *q = j->qq + (size_t)r * j->qld;
            int32_t acc = 0;
            for (size_t k = 0; k < nq; k++)
                for (int i = 0; i < 4; i++) acc += (int32_t)blk[k * IX_BLK * 4 + i] * q[k * 4 + i];
            out[(size_t)r * ld + (s - s0)] = epilogue(acc, s, j->t, j->th[r], j->rinf[r], j->rq[r]);
        }
    }
}

#ifdef Q8_X86
#define T_AVX2 __attribute__((target("avx2")))
#define T_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2")))

static inline int64_t quad_of(const int16_t *q)
{
    int64_t v;
    memcpy(&v, q, 8);
    return v;
}

/* The epilogue of 8 lanes (segments first .. first+7) of one row, stored
 * for those in [s0, s1). The per-segment arrays have room for whole
 * blocks (table.c). One copy per target, so that it inlines into the
 * kernels (a call per block and row was 5 % of a decode step). */
#define EPI_STORE(NAME, TGT)                                                                                  \
    TGT static inline void NAME(__m256i I, size_t first, size_t s0, size_t s1, const eg_route_table *t,       \
                                float th, int rinf, float rq, float *dst)                                     \
    {                                                                                                         \
        __m256i J = _mm256_add_epi32(_mm256_add_epi32(I, I),                                                  \
                                     _mm256_loadu_si256((const __m256i *)(t->q8l1 + first)));                  \
        __m256i big = _mm256_cmpgt_epi32(_mm256_abs_epi32(J), _mm256_set1_epi32((1 << 24) - 1));              \
        J = _mm256_add_epi32(J, _mm256_and_si256(big, _mm256_set1_epi32(64)));                                \
        __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(J), _mm256_loadu_ps(t->q8s + first)),       \
                                 _mm256_set1_ps(th));                                                         \
        if (t->q8rad)                                                                                         \
            v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_set1_ps(rq), _mm256_loadu_ps(t->q8rad + first)));       \
        __m256i fl = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(t->q8inf + first)));              \
        __m256i inf = _mm256_or_si256(_mm256_cmpgt_epi32(fl, _mm256_setzero_si256()),                         \
                                      _mm256_set1_epi32(rinf ? -1 : 0));                                      \
        v = _mm256_blendv_ps(v, _mm256_set1_ps(INFINITY), _mm256_castsi256_ps(inf));                          \
        if (first >= s0 && first + IX_BLK <= s1) { _mm256_storeu_ps(dst + (first - s0), v); return; }      \
        float res[IX_BLK];                                                                                    \
        _mm256_storeu_ps(res, v);                                                                             \
        for (size_t l = 0; l < IX_BLK; l++)                                                                   \
            if (first + l >= s0 && first + l < s1) dst[first + l - s0] = res[l];                              \
    }

/* Blocks ahead of the scan that it prefetches: 2 to 8 measured alike here
 * from DRAM (within 4 %, the machine's noise larger). */
#define PF_BLOCKS 6

/* AVX2, R rows of blocks [b0, b1): a quad's 32 codes widened to 16 bits in
 * two registers (segments 0-3, 4-7), multiplied by a row's 4 query values
 * in pairs summed into 32 bits (vpmaddwd, then an add: the chain is the
 * add alone, so one accumulator pair a row), a segment's two pair sums
 * added at the end. */
#define DA_BLOCK(R)                                                                            \
    T_AVX2 static void da_##R(const q8_job *j, size_t b0, size_t b1, size_t s0, size_t s1, float *out, size_t ld) \
    {                                                                                          \
        const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);                      \
        const size_t nq = j->nq, bstride = nq * IX_BLK * 4;                                    \
        for (size_t b = b0; b < b1; b++) {                                                     \
            const int8_t *blk = j->t->q8 + b * bstride;                                        \
            __m256i lo[R], hi[R];                                                              \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) lo[r] = hi[r] = _mm256_setzero_si256(); \
            for (size_t k = 0; k < nq; k++) {                                                  \
                if ((k & 1) == 0) /* a line of a block ahead */                                \
                    _mm_prefetch((const char *)(blk + PF_BLOCKS * bstride + k * 32), _MM_HINT_T0); \
                const __m128i *p = (const __m128i *)(blk + k * IX_BLK * 4);                    \
                __m256i x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p));                         \
                __m256i x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p + 1));                     \
                _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {                          \
                    __m256i qv = _mm256_set1_epi64x(quad_of(j->qq + (size_t)r * j->qld + k * 4)); \
                    lo[r] = _mm256_add_epi32(lo[r], _mm256_madd_epi16(x0, qv));                \
                    hi[r] = _mm256_add_epi32(hi[r], _mm256_madd_epi16(x1, qv));                \
                }                                                                              \
            }                                                                                  \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)  /* hadd: [s0 s1 s4 s5 | s2 s3 s6 s7] */ \
                epi_avx2(_mm256_permutevar8x32_epi32(_mm256_hadd_epi32(lo[r], hi[r]), order), b * IX_BLK, s0, s1, \
                         j->t, j->th[r], j->rinf[r], j->rq[r], out + (size_t)r * ld);           \
        }                                                                                      \
    }
EPI_STORE(epi_avx2, T_AVX2)
EPI_STORE(epi_vnni, T_VNNI)
DA_BLOCK(1) DA_BLOCK(2) DA_BLOCK(3) DA_BLOCK(4)

/* The epilogue of 16 lanes: two blocks (segments first .. first+15), the
 * same operations as EPI_STORE's 8 lanes. Half the instructions a
 * segment: at d 64 the 8-lane epilogue was as long as the dot itself. */
T_VNNI static inline void epi16_vnni(__m512i I, size_t first, size_t s0, size_t s1, const eg_route_table *t,
                                     float th, int rinf, float rq, float *dst)
{
    __m512i J = _mm512_add_epi32(_mm512_add_epi32(I, I), _mm512_loadu_si512(t->q8l1 + first));
    __mmask16 big = _mm512_cmpgt_epi32_mask(_mm512_abs_epi32(J), _mm512_set1_epi32((1 << 24) - 1));
    J = _mm512_mask_add_epi32(J, big, J, _mm512_set1_epi32(64));
    __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(J), _mm512_loadu_ps(t->q8s + first)),
                             _mm512_set1_ps(th));
    if (t->q8rad) v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(rq), _mm512_loadu_ps(t->q8rad + first)));
    __m128i fl = _mm_loadu_si128((const __m128i *)(t->q8inf + first));
    __mmask16 inf = rinf ? (__mmask16)0xFFFF : _mm_test_epi8_mask(fl, fl);
    v = _mm512_mask_blend_ps(inf, v, _mm512_set1_ps(INFINITY));
    if (first >= s0 && first + 2 * IX_BLK <= s1) { _mm512_storeu_ps(dst + (first - s0), v); return; }
    float res[2 * IX_BLK];
    _mm512_storeu_ps(res, v);
    for (size_t l = 0; l < 2 * IX_BLK; l++)
        if (first + l >= s0 && first + l < s1) dst[first + l - s0] = res[l];
}

/* AVX-512 VNNI on whole 512-bit registers: a quad's 32 codes widened to
 * 16 bits fill one register (lane i: segment i / 2, channels 2 (i % 2)
 * and 2 (i % 2) + 1), and a row's 4 query values, broadcast 8 times,
 * multiply it in one vpdpwssd: per quad and row one instruction, where
 * the 256-bit kernel took two and a broadcast (a 1M-token decode step
 * spent half its CPU here). vpdpwssd's multiply-add is one long
 * dependency per accumulator, so it keeps two sets (even and odd quads),
 * added at the end; then a segment's two lanes are added (integer sums:
 * the same as the 256-bit kernel's, in any order), leaving segment i in
 * lane 2i. Blocks go in pairs, so that the epilogue works on 16 lanes.
 * (Two blocks per register in the dot measured slower from DRAM on a
 * Zen 4.) */
#define DOTZ_BLOCK(R)                                                                          \
    T_VNNI static inline __attribute__((always_inline)) void dvs_##R(const q8_job *j, const int8_t *blk, size_t bstride, __m512i *sum) \
    {                                                                                          \
        const size_t nq = j->nq;                                                               \
        __m512i acc[2][R];                                                                     \
        _Pragma("GCC unroll 2") for (int u = 0; u < 2; u++)                                     \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) acc[u][r] = _mm512_setzero_si512(); \
        size_t k = 0;                                                                          \
        for (; k + 2 <= nq; k += 2) {                                                          \
            _mm_prefetch((const char *)(blk + PF_BLOCKS * bstride + k * 32), _MM_HINT_T0);     \
            _Pragma("GCC unroll 2") for (int u = 0; u < 2; u++) {                               \
                __m512i x = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(blk + (k + u) * 32))); \
                _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)                            \
                    acc[u][r] = _mm512_dpwssd_epi32(                                           \
                        acc[u][r], x, _mm512_set1_epi64(quad_of(j->qq + (size_t)r * j->qld + (k + u) * 4))); \
            }                                                                                  \
        }                                                                                      \
        if (k < nq) {   /* an odd quad count */                                                \
            __m512i x = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(blk + k * 32))); \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)                                \
                acc[0][r] = _mm512_dpwssd_epi32(acc[0][r], x,                                  \
                                                _mm512_set1_epi64(quad_of(j->qq + (size_t)r * j->qld + k * 4))); \
        }                                                                                      \
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {                                  \
            __m512i a = _mm512_add_epi32(acc[0][r], acc[1][r]);                                \
            sum[r] = _mm512_add_epi32(a, _mm512_shuffle_epi32(a, _MM_PERM_CDAB));              \
        }                                                                                      \
    }                                                                                          \
    T_VNNI static void dv_##R(const q8_job *j, size_t b0, size_t b1, size_t s0, size_t s1, float *out, size_t ld) \
    {                                                                                          \
        const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30); \
        const size_t bstride = j->nq * IX_BLK * 4;                                             \
        size_t b = b0;                                                                         \
        for (; b + 2 <= b1; b += 2) {                                                          \
            __m512i x[R], y[R];                                                                \
            dvs_##R(j, j->t->q8 + b * bstride, bstride, x);                                    \
            dvs_##R(j, j->t->q8 + (b + 1) * bstride, bstride, y);                              \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)                                \
                epi16_vnni(_mm512_permutex2var_epi32(x[r], evens, y[r]), b * IX_BLK, s0, s1, j->t, j->th[r], \
                           j->rinf[r], j->rq[r], out + (size_t)r * ld);                         \
        }                                                                                      \
        if (b < b1) {   /* the last block of an odd count: 8 lanes */                          \
            __m512i x[R];                                                                      \
            dvs_##R(j, j->t->q8 + b * bstride, bstride, x);                                    \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)                                \
                epi_vnni(_mm512_castsi512_si256(_mm512_permutexvar_epi32(evens, x[r])), b * IX_BLK, s0, s1, \
                         j->t, j->th[r], j->rinf[r], j->rq[r], out + (size_t)r * ld);           \
        }                                                                                      \
    }
DOTZ_BLOCK(1) DOTZ_BLOCK(2) DOTZ_BLOCK(3) DOTZ_BLOCK(4)

typedef void (*blk_fn)(const q8_job *, size_t, size_t, size_t, size_t, float *, size_t);
static const blk_fn da_table[4] = {da_1, da_2, da_3, da_4};
static const blk_fn dv_table[4] = {dv_1, dv_2, dv_3, dv_4};

/* Blocks to score for every group of four rows before the next: small
 * enough to stay in L1 for the next rows (nr > 4), large enough that a
 * call covers many. */
#define RUN_BLOCKS 8

/* Every block of [s0, s1), rows four at a time, with a kernel table. */
static void run_blocks(const q8_job *j, size_t s0, size_t s1, int nr, float *out, size_t ld, const blk_fn *tab)
{
    size_t bend = (s1 + IX_BLK - 1) / IX_BLK;
    for (size_t b = s0 / IX_BLK; b < bend; b += RUN_BLOCKS) {
        size_t be = b + RUN_BLOCKS < bend ? b + RUN_BLOCKS : bend;
        if (nr <= 4) {   /* one pass: the whole range in one call */
            tab[nr - 1](j, b, bend, s0, s1, out, ld);
            return;
        }
        for (int r0 = 0; r0 < nr; r0 += 4) {
            q8_job jr = *j;
            jr.qq += (size_t)r0 * j->qld;
            jr.th += r0;
            jr.rinf += r0;
            jr.rq += r0;
            tab[(nr - r0 < 4 ? nr - r0 : 4) - 1](&jr, b, be, s0, s1, out + (size_t)r0 * ld, ld);
        }
    }
}

static void dot_avx2(const q8_job *j, size_t s0, size_t s1, int nr, float *out, size_t ld)
{
    run_blocks(j, s0, s1, nr, out, ld, da_table);
}

static void dot_vnni(const q8_job *j, size_t s0, size_t s1, int nr, float *out, size_t ld)
{
    run_blocks(j, s0, s1, nr, out, ld, dv_table);
}
#endif

typedef void (*dot_fn)(const q8_job *, size_t, size_t, int, float *, size_t);
static int cpu_level = -1;     /* 0 portable, 1 AVX2, 2 AVX-512 VNNI */
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void detect(void)
{
    cpu_level = 0;
#ifdef Q8_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) cpu_level = 1;
    unsigned a, b, c, d;
    if (cpu_level && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (c & (1u << 11)) &&   /* AVX512_VNNI */
        __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        cpu_level = 2;
#endif
}

int ix_q8_level(int cap)
{
    pthread_once(&once, detect);
    return cap < cpu_level ? cap : cpu_level;
}

const char *ix_q8_kernel_name(int cap)
{
    static const char *const names[3] = {"portable", "avx2", "avx512-vnni"};
    return names[ix_q8_level(cap)];
}

static dot_fn pick(int level)
{
#ifdef Q8_X86
    if (level == 2) return dot_vnni;
    if (level == 1) return dot_avx2;
#else
    (void)level;
#endif
    return dot_portable;
}

/* ---- scores ------------------------------------------------------------------------- */
void ix_q8_scores(const ix_ctx *c, size_t s0, size_t s1, float *out, size_t ld, float f)
{
    const eg_route_table *t = c->t;
    size_t nq = ix_q8_quads(t);
    q8_job j = {t, nq, nq * 4, c->qq, NULL, c->qinf, NULL};
    float th[EG_IX_ROWS_MAX], rq[EG_IX_ROWS_MAX];
    for (int r = 0; r < c->nr; r++) {
        th[r] = c->qt[2 * r];
        rq[r] = ix_ball(t) ? f * c->qn[r] : 0.0f;
    }
    j.th = th;
    j.rq = rq;
    if (s1 > s0) pick(ix_q8_level(ix_simd_cap()))(&j, s0, s1, c->nr, out, ld);
}
