/* table_io.c: an int8 quest or ball table to and from bytes, so that a resumed
 * session loads its table instead of rebuilding it from every summary.
 *
 * Layout: "EGRT", u32 version (1), u32 byte-order mark 0x01020304 (the
 * arrays are host order; a host of the other order refuses the bytes and
 * rebuilds), u32 kind, dim, seg_tokens, quest_f16, u64 n, then i8 weight
 * exponents [dim], u32 tags [n], the code blocks [ceil(n/8)][4 nq][8]... as
 * table.c keeps them, f32 scales [n], i32 L1 [n], u8 infinite flags [n],
 * for a ball table f32 radii [n] and u8 unmeasured flags [n], and last a
 * u64 XXH64 of everything before it. Group rows are not kept: they
 * are recomputed from the codes at load, which keeps the rule that a group
 * bounds its segments independent of what the bytes say. */
#include "ix_internal.h"
#include <float.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define MAGIC "EGRT"
#define VERSION 1u
#define BOM 0x01020304u
#define HEAD 40

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static size_t code_bytes(const eg_route_table *t, size_t n)
{
    return (n + IX_BLK - 1) / IX_BLK * ix_q8_quads(t) * IX_BLK * 4;
}

static size_t blob_bytes(const eg_route_table *t, size_t n)
{
    size_t d = (size_t)t->spec.dim;
    return HEAD + d + n * 4 + code_bytes(t, n) + n * 4 + n * 4 + n + (ix_ball(t) ? n * 5 : 0) + 8;
}

int eg_route_table_save(const eg_route_table *t, void **bytes, size_t *len)
{
    if (!t || !bytes || !len) return ix_fail(EG_IX_EINVAL, "table or outputs are NULL");
    if (!ix_q8_table(t)) return ix_fail(EG_IX_EKIND, "only int8 quest tables and ball tables are saved");
    size_t n = t->n, d = (size_t)t->spec.dim, total = blob_bytes(t, n);
    uint8_t *b = malloc(total);
    if (!b) return ix_fail(EG_IX_ENOMEM, "out of memory (%zu bytes)", total);
    memcpy(b, MAGIC, 4);
    put32(b + 4, VERSION);
    put32(b + 8, BOM);
    put32(b + 12, (uint32_t)t->spec.kind);
    put32(b + 16, (uint32_t)t->spec.dim);
    put32(b + 20, (uint32_t)t->spec.seg_tokens);
    put32(b + 24, (uint32_t)t->spec.quest_f16);
    uint64_t n64 = n;
    memcpy(b + 28, &n64, 8);
    put32(b + 36, (uint32_t)t->q8w_set);
    uint8_t *p = b + HEAD;
    memcpy(p, t->q8w, d); p += d;
    memcpy(p, t->tags, n * 4); p += n * 4;
    memcpy(p, t->q8, code_bytes(t, n)); p += code_bytes(t, n);
    memcpy(p, t->q8s, n * 4); p += n * 4;
    memcpy(p, t->q8l1, n * 4); p += n * 4;
    memcpy(p, t->q8inf, n); p += n;
    if (ix_ball(t)) {
        memcpy(p, t->q8rad, n * 4); p += n * 4;
        memcpy(p, t->q8unk, n); p += n;
    }
    uint64_t h = XXH64(b, total - 8, 0);
    memcpy(p, &h, 8);
    *bytes = b;
    *len = total;
    return 0;
}

/* A scale the encoder makes: a power of two in [2^-60, 2^60]. */
static int scale_ok(float s)
{
    uint32_t u;
    memcpy(&u, &s, 4);
    int e = (int)((u >> 23) & 0xff) - 127;
    return (u & 0x807fffffu) == 0 && e >= -60 && e <= 60;
}

int eg_route_table_load(const eg_summary_spec *spec, const void *bytes, size_t len, eg_route_table **out)
{
    if (!spec || !bytes || !out) return ix_fail(EG_IX_EINVAL, "spec, bytes or out is NULL");
    *out = NULL;
    const uint8_t *b = bytes;
    if (len < HEAD + 8 || memcmp(b, MAGIC, 4) != 0)
        return ix_fail(EG_IX_ECORRUPT, "not a saved route table (%zu bytes, bad magic or too short)", len);
    if (get32(b + 4) != VERSION)
        return ix_fail(EG_IX_EVERSION, "saved route table of version %u (this build reads %u)", get32(b + 4), VERSION);
    if (get32(b + 8) != BOM) return ix_fail(EG_IX_EVERSION, "saved route table of the other byte order");
    uint64_t h;
    memcpy(&h, b + len - 8, 8);
    if (XXH64(b, len - 8, 0) != h) return ix_fail(EG_IX_ECORRUPT, "saved route table: checksum mismatch");
    if ((int)get32(b + 12) != (int)spec->kind || (int)get32(b + 16) != spec->dim ||
        (int)get32(b + 20) != spec->seg_tokens || (int)get32(b + 24) != spec->quest_f16)
        return ix_fail(EG_IX_ECORRUPT, "saved route table is of another kind or shape than the table asked for");
    eg_route_table *t;
    int rc = eg_route_table_create(spec, &t);
    if (rc < 0) return rc;
    if (!ix_q8_table(t)) {
        eg_route_table_free(t);
        return ix_fail(EG_IX_EKIND, "only int8 quest tables and ball tables load");
    }
    uint64_t n64;
    memcpy(&n64, b + 28, 8);
    size_t d = (size_t)spec->dim;
    if (n64 > ((uint64_t)1 << 40) || blob_bytes(t, (size_t)n64) != len) {
        eg_route_table_free(t);
        return ix_fail(EG_IX_ECORRUPT, "saved route table: %zu bytes for %llu segments", len, (unsigned long long)n64);
    }
    size_t n = (size_t)n64;
    if ((rc = eg_route_table_reserve(t, n ? n : 1)) < 0) { eg_route_table_free(t); return rc; }
    const uint8_t *p = b + HEAD;
    memcpy(t->q8w, p, d); p += d;
    memcpy(t->tags, p, n * 4); p += n * 4;
    memcpy(t->q8, p, code_bytes(t, n)); p += code_bytes(t, n);
    memcpy(t->q8s, p, n * 4); p += n * 4;
    memcpy(t->q8l1, p, n * 4); p += n * 4;
    memcpy(t->q8inf, p, n); p += n;
    if (ix_ball(t)) {
        memcpy(t->q8rad, p, n * 4);
        memcpy(t->q8unk, p + n * 4, n);
    }
    t->q8w_set = get32(b + 36) != 0;
    /* What the bound rests on is checked, not trusted: weights and scales
     * the encoder could have made, and each L1 against its codes. */
    int bad = 0;
    for (size_t c = 0; c < d; c++) {
        if (t->q8w[c] < -24 || t->q8w[c] > 16) bad = 1;
        t->q8wf[c] = ldexpf(1.0f, t->q8w[c]);
        t->q8wi[c] = ldexpf(1.0f, -t->q8w[c]);
    }
    /* Block by block in the codes' layout (element-wise loops): per
     * position the sum of |code| over the quads, then per lane. */
    size_t nq = ix_q8_quads(t), L = IX_BLK * 4;
    for (size_t bi = 0; bi * IX_BLK < n && !bad; bi++) {
        const int8_t *blk = t->q8 + bi * nq * L;
        int32_t acc[IX_BLK * 4] = { 0 };
        int m128 = 0;
        for (size_t k = 0; k < nq; k++)
            for (size_t i = 0; i < L; i++) {
                int q = blk[k * L + i];
                acc[i] += q < 0 ? -q : q;
                m128 |= q == -128;
            }
        bad |= m128;
        for (size_t l = 0; l < IX_BLK && bi * IX_BLK + l < n; l++) {
            size_t s = bi * IX_BLK + l;
            int32_t l1 = acc[l * 4] + acc[l * 4 + 1] + acc[l * 4 + 2] + acc[l * 4 + 3];
            bad |= l1 != t->q8l1[s] || t->q8inf[s] > 1 || (t->q8inf[s] && l1) || !scale_ok(t->q8s[s]);
            if (ix_ball(t)) {
                bad |= !(t->q8rad[s] >= 0.0f && t->q8rad[s] <= FLT_MAX) || (t->q8inf[s] && t->q8rad[s] != 0.0f) ||
                       t->q8unk[s] > 1;
                t->n_unk += t->q8unk[s];
            }
        }
    }
    if (bad) {
        eg_route_table_free(t);
        return ix_fail(EG_IX_ECORRUPT, "saved route table: codes, scales or weights the encoder does not make");
    }
    t->n = n;
    ix_table_regroup(t, 0);
    *out = t;
    return 0;
}
