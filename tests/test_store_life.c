/* test_store_life.c: fork, truncate, drop (space reclaimed, forks kept
 * readable), verify, and damage found on purpose. */
#include "storeutil.h"
#include <lmdb.h>
#include <stdio.h>

static char dir[512];

static eg_store *open_store(void)
{
    eg_store_options o = {1 << 20, 1 << 20, EG_SYNC_NONE};
    eg_store *st = NULL;
    if (eg_store_open(dir, &o, &st)) fprintf(stderr, "  open: %s\n", eg_mem_last_error());
    return st;
}

static uint64_t problems_of(eg_store *st, const char *name)
{
    uint64_t p = 999;
    if (eg_store_verify(st, name, NULL, NULL, &p)) return 998;
    return p;
}

/* Entries of one named tree in the raw LMDB file (store closed); with
 * flip, flips the last byte of the first entry's value. */
static long raw_entries(const char *db, int flip)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_stat ms;
    long n = -1;
    if (mdb_env_create(&env)) return -1;
    mdb_env_set_maxdbs(env, 16);
    if (!mdb_env_open(env, dir, flip ? 0 : MDB_RDONLY, 0644) &&
        !mdb_txn_begin(env, NULL, flip ? 0 : MDB_RDONLY, &txn)) {
        if (!mdb_dbi_open(txn, db, 0, &dbi) && !mdb_stat(txn, dbi, &ms)) n = (long)ms.ms_entries;
        MDB_cursor *c;
        MDB_val k, v;
        if (flip && n > 0 && !mdb_cursor_open(txn, dbi, &c)) {
            if (!mdb_cursor_get(c, &k, &v, MDB_FIRST)) {
                unsigned char *b = malloc(v.mv_size);
                memcpy(b, v.mv_data, v.mv_size);
                b[v.mv_size - 1] ^= 1;
                MDB_val nv = {v.mv_size, b};
                if (mdb_cursor_put(c, &k, &nv, MDB_CURRENT)) n = -2;
                free(b);
            }
            mdb_cursor_close(c);
        }
        if (flip ? mdb_txn_commit(txn) : (mdb_txn_abort(txn), 0)) n = -3;
    }
    mdb_env_close(env);
    return n;
}

/* Blocks in the raw LMDB file (store closed). */
static long raw_blocks(void) { return raw_entries("blocks", 0); }

static int rec_is(eg_msession *s, uint32_t layer, uint32_t kvh, uint32_t kind, const char *want)
{
    void *rec = NULL;
    size_t len = 0;
    int rc = eg_record_get_session(s, layer, kvh, kind, 0, &rec, &len);
    if (rc) return rc;
    rc = len == strlen(want) && memcmp(rec, want, len) == 0 ? 0 : 1;
    free(rec);
    return rc;
}

/* Session records: truncate removes those of token kinds and keeps the
 * model's (EG_RECORD_KEEP); a fork copies the model's ones to the child, as
 * its own; a damaged one fails the fork and creates nothing; drop removes all. */
static void test_session_records_keep(void)
{
    tu_tmpdir(dir, sizeof dir, "srec");
    eg_store *st = open_store();
    REQUIRE(st);
    eg_session_config c;
    su_config(&c, 2, 2, 16, 16, 16, EG_CODEC_Q8);
    CHECK_OK(eg_session_create(st, "p", &c));
    eg_msession *p, *ch;
    CHECK_OK(eg_session_open(st, "p", NULL, &p));
    CHECK_OK(su_append(p, &c, 0, 70));
    const uint32_t K = 7u | EG_RECORD_KEEP;
    CHECK_OK(eg_record_put_session(p, 0, 1, 7, 0, "groups", 6));
    CHECK_OK(eg_record_put_session(p, 0, 1, K, 0, "w01", 3));
    CHECK_OK(eg_record_put_session(p, 1, 0, K, 0, "w10", 3));
    CHECK_OK(eg_record_put_session(p, 1, 0, K, 0, "w10b", 4));  /* replaces */
    CHECK_EQ_INT(eg_record_put_session(p, 2, 0, K, 0, "x", 1), EG_ERANGE);
    CHECK_EQ_INT(eg_record_put_session(p, 0, 2, K, 0, "x", 1), EG_ERANGE);
    CHECK_OK(eg_session_truncate(p, 40));
    CHECK_EQ_INT(rec_is(p, 0, 1, 7, "groups"), EG_ENOTFOUND);
    CHECK_OK(rec_is(p, 0, 1, K, "w01"));
    CHECK_OK(rec_is(p, 1, 0, K, "w10b"));
    CHECK_OK(eg_record_put_session(p, 0, 1, 7, 0, "groups", 6));
    CHECK_OK(eg_session_fork(st, "p", "c", 20));
    CHECK_OK(eg_session_open(st, "c", NULL, &ch));
    CHECK_OK(rec_is(ch, 0, 1, K, "w01"));
    CHECK_OK(rec_is(ch, 1, 0, K, "w10b"));
    CHECK_EQ_INT(rec_is(ch, 0, 1, 7, "groups"), EG_ENOTFOUND);
    CHECK_OK(eg_record_put_session(ch, 0, 1, K, 0, "child", 5)); /* the child's own copy */
    CHECK_OK(rec_is(p, 0, 1, K, "w01"));
    CHECK_OK(rec_is(ch, 0, 1, K, "child"));
    CHECK_OK(eg_session_close(ch));
    CHECK_OK(eg_session_close(p));
    CHECK_OK(eg_session_drop(st, "c"));
    CHECK_OK(eg_store_close(st));
    CHECK_EQ_INT(raw_entries("router", 0), 3);
    /* The parent's first record (layer 0, kv-head 1, "groups") damaged: a
     * fork still works (token records are not copied); then damage the
     * first kept one. */
    CHECK_EQ_INT(raw_entries("router", 1), 3);
    st = open_store();
    REQUIRE(st);
    CHECK_OK(eg_session_fork(st, "p", "c2", 20));
    CHECK_OK(eg_session_open(st, "p", NULL, &p));
    CHECK_OK(eg_record_put_session(p, 0, 1, 7, 0, "groups", 6));
    CHECK_OK(eg_session_truncate(p, 40));                        /* removes it */
    CHECK_OK(eg_session_close(p));
    CHECK_OK(eg_store_close(st));
    CHECK_EQ_INT(raw_entries("router", 1), 4);                   /* p's w01 */
    st = open_store();
    REQUIRE(st);
    CHECK_EQ_INT(eg_session_fork(st, "p", "c3", 20), EG_ECORRUPT);
    CHECK(strstr(eg_mem_last_error(), "checksum") != NULL);
    CHECK_EQ_INT(eg_session_open(st, "c3", NULL, &ch), EG_ENOTFOUND);
    CHECK_OK(eg_session_drop(st, "p"));
    CHECK_OK(eg_session_drop(st, "c2"));
    CHECK_OK(eg_store_close(st));
    CHECK_EQ_INT(raw_entries("router", 0), 0);
    tu_rmrf(dir);
}

/* Several session records in one call: all stored, or (one bad) none. */
static void test_session_records_many(void)
{
    tu_tmpdir(dir, sizeof dir, "srecm");
    eg_store *st = open_store();
    REQUIRE(st);
    eg_session_config c;
    su_config(&c, 2, 2, 16, 16, 16, EG_CODEC_Q8);
    CHECK_OK(eg_session_create(st, "p", &c));
    eg_msession *p;
    CHECK_OK(eg_session_open(st, "p", NULL, &p));
    eg_session_record r[3] = {{0, 0, 9, 0, "a", 1}, {1, 1, 9, 0, "bb", 2}, {1, 1, 9, 1, "", 0}};
    CHECK_OK(eg_record_put_session_many(p, r, 3));
    CHECK_OK(rec_is(p, 0, 0, 9, "a"));
    CHECK_OK(rec_is(p, 1, 1, 9, "bb"));
    void *b = NULL;
    size_t len = 1;
    CHECK_OK(eg_record_get_session(p, 1, 1, 9, 1, &b, &len));
    CHECK_EQ_INT(len, 0);
    free(b);
    eg_session_record bad[2] = {{0, 1, 9, 0, "new", 3}, {2, 0, 9, 0, "x", 1}};   /* layer 2 of 2 */
    CHECK_EQ_INT(eg_record_put_session_many(p, bad, 2), EG_ERANGE);
    CHECK_EQ_INT(rec_is(p, 0, 1, 9, "new"), EG_ENOTFOUND);                    /* nothing written */
    CHECK_EQ_INT(eg_record_put_session_many(p, NULL, 1), EG_EINVAL);
    CHECK_OK(eg_record_put_session_many(p, NULL, 0));
    CHECK_OK(eg_session_close(p));
    CHECK_OK(eg_store_close(st));
    tu_rmrf(dir);
}

static void test_fork_shares_and_diverges(void)
{
    tu_tmpdir(dir, sizeof dir, "fork");
    eg_store *st = open_store();
    REQUIRE(st);
    eg_session_config c;
    su_config(&c, 2, 2, 32, 16, 16, EG_CODEC_Q8);
    CHECK_OK(eg_session_create(st, "p", &c));
    eg_msession *p;
    CHECK_OK(eg_session_open(st, "p", NULL, &p));
    CHECK_OK(su_append(p, &c, 0, 100));
    /* Fork points: 0, inside a sealed segment, at a boundary, inside the tail, the end. */
    uint64_t at[] = {0, 37, 48, 98, 100};
    for (size_t i = 0; i < sizeof at / sizeof *at; i++) {
        char name[32];
        snprintf(name, sizeof name, "c%llu", (unsigned long long)at[i]);
        CHECK_OK(eg_session_fork(st, "p", name, at[i]));
        eg_msession *ch;
        CHECK_OK(eg_session_open(st, name, "test-model", &ch));
        eg_session_info info;
        CHECK_OK(eg_session_info_get(ch, &info));
        CHECK_EQ_INT(info.n_tokens, at[i]);
        /* A fork point inside a sealed segment copies its decoded rows. */
        uint64_t lo = at[i] / 16 * 16, hi = at[i] < 96 ? at[i] : lo;
        CHECK_EQ_INT(su_check_range(ch, at[i], lo, hi), 0);
        /* The child grows on its own; the parent is untouched. */
        CHECK_OK(su_append(ch, &c, at[i], 40));
        CHECK_EQ_INT(su_check_range(ch, at[i] + 40, lo, hi), 0);
        CHECK_EQ_INT(su_walk_matches(ch, 1, 1, 0, (at[i] + 40) / 16), 0);   /* across namespaces */
        CHECK_OK(eg_session_close(ch));
    }
    CHECK_EQ_INT(su_check_all(p, 100), 0);
    /* Errors. */
    CHECK_EQ_INT(eg_session_fork(st, "p", "c0", 5), EG_EEXIST);
    CHECK_EQ_INT(eg_session_fork(st, "p", "x", 101), EG_ERANGE);
    CHECK_EQ_INT(eg_session_fork(st, "nope", "x", 0), EG_ENOTFOUND);
    CHECK_EQ_INT(eg_session_fork(st, "p", "", 0), EG_ENAME_EMPTY);
    /* Parent grows after the fork: children do not see it. */
    CHECK_OK(su_append(p, &c, 100, 30));
    eg_session_info ci;
    CHECK_OK(eg_session_info_by_name(st, "c48", &ci));
    CHECK_EQ_INT(ci.n_tokens, 88);
    CHECK_EQ_INT(problems_of(st, NULL), 0);
    CHECK_OK(eg_session_close(p));
    CHECK_OK(eg_store_close(st));
    tu_rmrf(dir);
}

/* A fork of a fork, then drops in every order: forks stay readable, and
 * when everything is gone no block is left. */
static void test_drop_parent_keeps_forks(void)
{
    tu_tmpdir(dir, sizeof dir, "drop");
    eg_store *st = open_store();
    REQUIRE(st);
    eg_session_config c;
    su_config(&c, 1, 2, 16, 16, 16, EG_CODEC_Q4);
    CHECK_OK(eg_session_create(st, "a", &c));
    eg_msession *a, *b;
    CHECK_OK(eg_session_open(st, "a", NULL, &a));
    CHECK_OK(su_append(a, &c, 0, 90));
    CHECK_OK(eg_session_close(a));
    CHECK_OK(eg_session_fork(st, "a", "b", 70));
    CHECK_OK(eg_session_fork(st, "b", "c", 50));
    CHECK_OK(eg_session_drop(st, "a"));
    CHECK_OK(eg_session_open(st, "b", NULL, &b));
    CHECK_EQ_INT(su_check_range(b, 70, 64, 70), 0);
    CHECK_OK(su_append(b, &c, 70, 50));
    CHECK_EQ_INT(su_check_range(b, 120, 64, 70), 0);
    CHECK_OK(eg_session_close(b));
    CHECK_EQ_INT(problems_of(st, NULL), 0);
    CHECK_OK(eg_session_drop(st, "b"));
    eg_msession *cc;
    CHECK_OK(eg_session_open(st, "c", NULL, &cc));
    CHECK_EQ_INT(su_check_range(cc, 50, 48, 50), 0);
    CHECK_OK(eg_session_close(cc));
    CHECK_EQ_INT(problems_of(st, NULL), 0);
    CHECK_OK(eg_store_close(st));
    /* Only c's 3 segments x 2 heads remain. */
    CHECK_EQ_INT(raw_blocks(), 3 * 2);
    st = open_store();
    REQUIRE(st);
    CHECK_OK(eg_session_drop(st, "c"));
    CHECK_EQ_INT(problems_of(st, NULL), 0);
    CHECK_OK(eg_store_close(st));
    CHECK_EQ_INT(raw_blocks(), 0);
    tu_rmrf(dir);
}

static void test_truncate(void)
{
    tu_tmpdir(dir, sizeof dir, "trunc");
    eg_store *st = open_store();
    REQUIRE(st);
    eg_session_config c;
    su_config(&c, 2, 1, 16, 16, 16, EG_CODEC_Q8);
    CHECK_OK(eg_session_create(st, "s", &c));
    eg_msession *s;
    CHECK_OK(eg_session_open(st, "s", NULL, &s));
    CHECK_OK(su_append(s, &c, 0, 100));
    CHECK_EQ_INT(eg_session_truncate(s, 101), EG_ERANGE);
    CHECK_OK(eg_session_truncate(s, 99));      /* inside the tail */
    CHECK_EQ_INT(su_check_all(s, 99), 0);
    CHECK_OK(eg_session_truncate(s, 40));      /* inside a sealed segment */
    eg_session_info info;
    CHECK_OK(eg_session_info_get(s, &info));
    CHECK_EQ_INT(info.n_sealed, 2);
    CHECK_EQ_INT(su_check_range(s, 40, 32, 40), 0);
    CHECK_OK(su_append(s, &c, 40, 60));         /* re-seal segments 2.. */
    CHECK_EQ_INT(su_check_range(s, 100, 32, 40), 0);
    CHECK_OK(eg_session_truncate(s, 32));       /* at a boundary */
    CHECK_EQ_INT(su_check_all(s, 32), 0);
    CHECK_OK(eg_session_truncate(s, 0));
    CHECK_EQ_INT(su_check_all(s, 0), 0);
    CHECK_OK(su_append(s, &c, 0, 20));
    CHECK_EQ_INT(su_check_all(s, 20), 0);
    CHECK_EQ_INT(problems_of(st, NULL), 0);
    CHECK_OK(eg_session_close(s));
    CHECK_OK(eg_store_close(st));
    CHECK_EQ_INT(raw_blocks(), 1 * 2);
    tu_rmrf(dir);
}

/* Truncating a parent below a fork point, then appending different data:
 * the fork keeps reading the old segments. */
static void test_truncate_under_fork(void)
{
    tu_tmpdir(dir, sizeof dir, "tf");
    eg_store *st = open_store();
    REQUIRE(st);
    eg_session_config c;
    su_config(&c, 1, 1, 16, 16, 16, EG_CODEC_F32);
    CHECK_OK(eg_session_create(st, "p", &c));
    eg_msession *p, *f;
    CHECK_OK(eg_session_open(st, "p", NULL, &p));
    CHECK_OK(su_append(p, &c, 0, 80));
    CHECK_OK(eg_session_fork(st, "p", "f", 70));
    CHECK_OK(eg_session_truncate(p, 20));
    /* New data for tokens 20..79 of p: shifted values, so a mix-up shows. */
    float k[60 * 16], v[60 * 16];
    for (int i = 0; i < 60 * 16; i++) { k[i] = 1000.0f + (float)i; v[i] = -(float)i; }
    CHECK_OK(eg_append(p, &(eg_append_req){EG_DTYPE_F32, 60, -1, k, v, NULL, 0}, NULL));
    CHECK_OK(eg_session_open(st, "f", NULL, &f));
    CHECK_EQ_INT(su_check_all(f, 70), 0);
    float blk[16 * 16];
    CHECK_OK(eg_read_block(p, 0, 0, 2, blk, NULL));
    CHECK(blk[0] == 1000.0f + 12 * 16);
    CHECK_EQ_INT(problems_of(st, NULL), 0);
    CHECK_OK(eg_session_close(p));
    CHECK_OK(eg_session_drop(st, "p"));
    CHECK_EQ_INT(su_check_all(f, 70), 0);
    CHECK_OK(eg_session_close(f));
    CHECK_EQ_INT(problems_of(st, NULL), 0);
    CHECK_OK(eg_session_drop(st, "f"));
    CHECK_OK(eg_store_close(st));
    CHECK_EQ_INT(raw_blocks(), 0);
    tu_rmrf(dir);
}

/* Damage a block's bytes behind the store's back: the read names the block,
 * verify reports it, other blocks still read. */
static void test_damage_reported(void)
{
    tu_tmpdir(dir, sizeof dir, "dmg");
    eg_store *st = open_store();
    REQUIRE(st);
    eg_session_config c;
    su_config(&c, 1, 1, 16, 16, 16, EG_CODEC_Q8);
    CHECK_OK(eg_session_create(st, "s", &c));
    eg_msession *s;
    CHECK_OK(eg_session_open(st, "s", NULL, &s));
    CHECK_OK(su_append(s, &c, 0, 48));
    CHECK_OK(eg_session_close(s));
    CHECK_OK(eg_store_close(st));
    /* Flip one payload byte of the second block (segment 1). */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_cursor *cur;
    MDB_val k, v;
    REQUIRE(mdb_env_create(&env) == 0);
    mdb_env_set_maxdbs(env, 16);
    REQUIRE(mdb_env_open(env, dir, 0, 0644) == 0);
    REQUIRE(mdb_txn_begin(env, NULL, 0, &txn) == 0);
    REQUIRE(mdb_dbi_open(txn, "blocks", 0, &dbi) == 0);
    REQUIRE(mdb_cursor_open(txn, dbi, &cur) == 0);
    REQUIRE(mdb_cursor_get(cur, &k, &v, MDB_FIRST) == 0);
    REQUIRE(mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0);
    unsigned char key[64], val[8192];
    REQUIRE(k.mv_size <= sizeof key && v.mv_size <= sizeof val);
    memcpy(key, k.mv_data, k.mv_size);
    memcpy(val, v.mv_data, v.mv_size);
    val[v.mv_size - 5] ^= 0x40;
    MDB_val k2 = {k.mv_size, key}, v2 = {v.mv_size, val};
    mdb_cursor_close(cur);
    REQUIRE(mdb_put(txn, dbi, &k2, &v2, 0) == 0);
    REQUIRE(mdb_txn_commit(txn) == 0);
    mdb_env_close(env);
    st = open_store();
    REQUIRE(st);
    CHECK_OK(eg_session_open(st, "s", NULL, &s));
    float kb[16 * 16];
    CHECK_OK(eg_read_block(s, 0, 0, 0, kb, NULL));
    CHECK_EQ_INT(eg_read_block(s, 0, 0, 1, kb, NULL), EG_ECORRUPT);
    CHECK(strstr(eg_mem_last_error(), "segment 1") != NULL);
    CHECK(strstr(eg_mem_last_error(), "checksum") != NULL);
    CHECK_OK(eg_read_block(s, 0, 0, 2, kb, NULL));
    /* The encoded walk stops at the damaged block, naming it, after one visit. */
    su_walk w = {s, 0, 0, 16, 16, 16, 0, 0};
    CHECK_EQ_INT(eg_read_blocks_encoded(s, 0, 0, 0, 3, su_walk_cb, &w), EG_ECORRUPT);
    CHECK(strstr(eg_mem_last_error(), "segment 1") != NULL);
    CHECK_EQ_INT(w.next, 1);
    CHECK_EQ_INT(w.bad, 0);
    CHECK_EQ_INT(problems_of(st, "s"), 1);
    CHECK_EQ_INT(problems_of(st, NULL), 1);
    CHECK_OK(eg_session_close(s));
    CHECK_OK(eg_store_close(st));
    tu_rmrf(dir);
}

int main(void)
{
    TEST_RUN(test_fork_shares_and_diverges);
    TEST_RUN(test_drop_parent_keeps_forks);
    TEST_RUN(test_truncate);
    TEST_RUN(test_truncate_under_fork);
    TEST_RUN(test_damage_reported);
    TEST_RUN(test_session_records_keep);
    TEST_RUN(test_session_records_many);
    TEST_END();
}
