/* test_store_big.c: a million tokens in one session, from a map of 4 MiB.
 * Sync is off for the ingest (the test is about map growth and reading a
 * million tokens back, not fsync latency; durability is test_store_crash's). */
#include "storeutil.h"
#include <stdio.h>

static void test_million_tokens(void)
{
    char dir[512];
    tu_tmpdir(dir, sizeof dir, "big");
    uint64_t total = tu_slow() ? 131072 : 1048576;
    if (tu_slow()) printf("  under sanitizers: %llu tokens instead of 1048576\n", (unsigned long long)total);
    eg_store_options o = {4u << 20, 0, EG_SYNC_NONE};
    eg_store *st;
    REQUIRE(eg_store_open(dir, &o, &st) == 0);
    eg_session_config c;
    su_config(&c, 1, 1, 64, 64, 64, EG_CODEC_Q8);
    CHECK_OK(eg_session_create(st, "big", &c));
    eg_msession *s;
    CHECK_OK(eg_session_open(st, "big", NULL, &s));
    enum { CHUNK = 4096 };
    float *k = malloc((size_t)CHUNK * 64 * 4), *v = malloc((size_t)CHUNK * 64 * 4);
    for (uint64_t n = 0; n < total && !tu_case_failed; n += CHUNK) {
        su_fill(&c, n, CHUNK, k, v);
        CHECK_OK(eg_append(s, &(eg_append_req){EG_DTYPE_F32, CHUNK, -1, k, v, NULL, 0}, NULL));
    }
    free(k); free(v);
    eg_store_stats stats;
    eg_store_get_stats(st, &stats);
    printf("  %llu tokens, map grew %llu times to %llu MiB\n", (unsigned long long)total,
           (unsigned long long)stats.map_grows, (unsigned long long)(stats.map_bytes >> 20));
    CHECK(stats.map_grows > 0);
    CHECK_OK(eg_session_close(s));
    CHECK_OK(eg_store_close(st));
    o.map_bytes = 4u << 20;      /* reopen small: the file's own size wins */
    REQUIRE(eg_store_open(dir, &o, &st) == 0);
    CHECK_OK(eg_session_open(st, "big", NULL, &s));
    eg_session_info info;
    CHECK_OK(eg_session_info_get(s, &info));
    CHECK_EQ_INT(info.n_tokens, total);
    CHECK_EQ_INT(info.n_sealed, total / 64);
    CHECK_EQ_INT(su_check_all(s, total), 0);
    uint64_t problems = 1;
    CHECK_OK(eg_store_verify(st, NULL, NULL, NULL, &problems));
    CHECK_EQ_INT(problems, 0);
    CHECK_OK(eg_session_close(s));
    CHECK_OK(eg_store_close(st));
    tu_rmrf(dir);
}

int main(void)
{
    TEST_RUN(test_million_tokens);
    TEST_END();
}
