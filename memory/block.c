/* block.c: the sealed block format.
 * A block is one (namespace, layer, kv-head, segment): header, the encoded
 * keys tile, the encoded values tile. The checksum covers the key it is
 * stored under, so a block copied to the wrong place is caught too. */
#include "internal.h"
#include <stdlib.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

_Static_assert(sizeof(eg_block_hdr) == 48, "block header must have no implicit padding");

void eg_block_key(unsigned char k[24], uint64_t ns, uint32_t layer, uint32_t kvh, uint64_t seg)
{
    eg_be64(k, ns);
    eg_be32(k + 8, layer);
    eg_be32(k + 12, kvh);
    eg_be64(k + 16, seg);
}

static uint64_t block_sum(const unsigned char key[24], const eg_block_hdr *h, const void *payload,
                          size_t len)
{
    eg_block_hdr z;
    memcpy(&z, h, sizeof z);   /* bytes, not members: what is stored is what is hashed */
    z.checksum = 0;
    XXH3_state_t s;
    XXH3_64bits_reset(&s);
    XXH3_64bits_update(&s, key, 24);
    XXH3_64bits_update(&s, &z, sizeof z);
    XXH3_64bits_update(&s, payload, len);
    return XXH3_64bits_digest(&s);
}

uint64_t eg_record_sum(const void *kb, size_t klen, const void *bytes, size_t len)
{
    XXH3_state_t s;
    XXH3_64bits_reset(&s);
    XXH3_64bits_update(&s, kb, klen);
    if (len) XXH3_64bits_update(&s, bytes, len);
    return XXH3_64bits_digest(&s);
}

int eg_block_put(eg_store *st, MDB_txn *txn, uint64_t ns, uint32_t layer, uint32_t kvh,
                 uint64_t seg, int codec, uint32_t n_tokens, uint32_t dk, uint32_t dv,
                 const float *keys, const float *values, uint64_t serial, float prior_k,
                 float prior_v, float *kd, float *vd)
{
    size_t kl, vl;
    int rc;
    if ((rc = eg_codec_size(codec, EG_KIND_K, n_tokens, dk, &kl)) ||
        (rc = eg_codec_size(codec, EG_KIND_V, n_tokens, dv, &vl)))
        return rc;
    eg_block_hdr h;
    memset(&h, 0, sizeof h);
    h.magic = EG_BLOCK_MAGIC;
    h.codec = (uint8_t)codec;
    h.version = 1;
    h.n_tokens = (uint16_t)n_tokens;
    h.dim_k = (uint16_t)dk;
    h.dim_v = (uint16_t)dv;
    h.klen = (uint32_t)kl;
    h.vlen = (uint32_t)vl;
    h.serial = serial;
    h.prior_k = prior_k;
    h.prior_v = prior_v;
    unsigned char kb[24];
    eg_block_key(kb, ns, layer, kvh, seg);
    MDB_val k = {24, kb}, v = {sizeof h + kl + vl, NULL};
    rc = mdb_put(txn, st->db_blocks, &k, &v, MDB_RESERVE);
    if (rc) return eg_mdb_fail(rc, "block write");
    unsigned char *p = v.mv_data;
    if ((rc = eg_codec_encode(codec, EG_KIND_K, keys, n_tokens, dk, p + sizeof h, kl)) ||
        (rc = eg_codec_encode(codec, EG_KIND_V, values, n_tokens, dv, p + sizeof h + kl, vl)))
        return rc;
    h.checksum = block_sum(kb, &h, p + sizeof h, kl + vl);
    memcpy(p, &h, sizeof h);
    if (kd && (rc = eg_codec_decode(codec, EG_KIND_K, p + sizeof h, kl, n_tokens, dk, kd)))
        return rc;
    if (vd && (rc = eg_codec_decode(codec, EG_KIND_V, p + sizeof h + kl, vl, n_tokens, dv, vd)))
        return rc;
    pthread_mutex_lock(&st->mu);
    st->stats.blocks_sealed++;
    pthread_mutex_unlock(&st->mu);
    return 0;
}

int eg_block_check(const unsigned char key[24], const void *data, size_t len, eg_block_hdr *hdr)
{
    unsigned long long ns = eg_rd64(key), seg = eg_rd64(key + 16);
    unsigned layer = eg_rd32(key + 8), kvh = eg_rd32(key + 12);
    if (len < sizeof *hdr)
        return eg_mem_fail(EG_ECORRUPT, "block ns %llu layer %u kv-head %u segment %llu: %zu bytes, "
                           "shorter than its header", ns, layer, kvh, seg, len);
    memcpy(hdr, data, sizeof *hdr);
    size_t kl, vl;
    if (hdr->magic != EG_BLOCK_MAGIC || !eg_codec_name(hdr->codec) ||
        eg_codec_size(hdr->codec, EG_KIND_K, hdr->n_tokens, hdr->dim_k, &kl) ||
        eg_codec_size(hdr->codec, EG_KIND_V, hdr->n_tokens, hdr->dim_v, &vl) ||
        kl != hdr->klen || vl != hdr->vlen || len != sizeof *hdr + kl + vl ||
        !(hdr->prior_k >= 0 && hdr->prior_k < 1e30f) || !(hdr->prior_v >= 0 && hdr->prior_v < 1e30f))
        return eg_mem_fail(EG_ECORRUPT, "block ns %llu layer %u kv-head %u segment %llu: damaged "
                           "header", ns, layer, kvh, seg);
    if (block_sum(key, hdr, (const char *)data + sizeof *hdr, kl + vl) != hdr->checksum)
        return eg_mem_fail(EG_ECORRUPT, "block ns %llu layer %u kv-head %u segment %llu: checksum "
                           "mismatch", ns, layer, kvh, seg);
    return 0;
}

int eg_block_decode(const void *data, const eg_block_hdr *h, float *keys, float *values)
{
    const char *p = (const char *)data + sizeof *h;
    int rc = 0;
    if (keys) rc = eg_codec_decode(h->codec, EG_KIND_K, p, h->klen, h->n_tokens, h->dim_k, keys);
    if (!rc && values)
        rc = eg_codec_decode(h->codec, EG_KIND_V, p + h->klen, h->vlen, h->n_tokens, h->dim_v, values);
    return rc;
}
