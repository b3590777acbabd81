/* test_store_crash.c: durability under SIGKILL, and write faults (a file
 * size limit standing in for a full disk). */
#include "storeutil.h"
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[512];

static void shape(eg_session_config *c) { su_config(c, 2, 2, 32, 32, 16, EG_CODEC_Q8); }

/* Child: open the store (small map, full sync), continue the session from
 * where it stands, report every acknowledged count on the pipe. */
static void appender(int fd, uint64_t seed)
{
    eg_store_options o = {1 << 20, 0, EG_SYNC_FULL};
    eg_store *st;
    eg_msession *s;
    eg_session_config c;
    shape(&c);
    if (eg_store_open(dir, &o, &st)) _exit(10);
    if (eg_session_open(st, "crash", NULL, &s)) _exit(11);
    eg_session_info info;
    eg_session_info_get(s, &info);
    uint64_t n = info.n_tokens;
    for (;;) {
        uint32_t m = 1 + (uint32_t)(tu_rand(&seed) % 40);
        if (su_append(s, &c, n, m)) _exit(12);
        n += m;
        if (write(fd, &n, 8) != 8) _exit(13);
    }
}

static void test_sigkill_loses_nothing_acknowledged(void)
{
    tu_tmpdir(dir, sizeof dir, "crash");
    eg_session_config c;
    shape(&c);
    eg_store *st;
    REQUIRE(eg_store_open(dir, NULL, &st) == 0);
    CHECK_OK(eg_session_create(st, "crash", &c));
    CHECK_OK(eg_store_close(st));
    uint64_t rs = 12345, acked = 0;
    int kills = 0, rounds = tu_slow() ? 20 : 60;
    for (int r = 0; r < rounds; r++) {
        int pfd[2];
        REQUIRE(pipe(pfd) == 0);
        pid_t pid = fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            close(pfd[0]);
            appender(pfd[1], tu_rand(&rs) + (uint64_t)r);
        }
        close(pfd[1]);
        /* Let it run a random while, reading acknowledgements. */
        struct timespec t0, now;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        long wait_us = (long)(tu_rand(&rs) % 30000);
        for (;;) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            long el = (now.tv_sec - t0.tv_sec) * 1000000L + (now.tv_nsec - t0.tv_nsec) / 1000;
            if (el >= wait_us) break;
            struct timeval tv = {0, wait_us - el};
            fd_set fs;
            FD_ZERO(&fs);
            FD_SET(pfd[0], &fs);
            if (select(pfd[0] + 1, &fs, NULL, NULL, &tv) > 0) {
                uint64_t v;
                if (read(pfd[0], &v, 8) == 8 && v > acked) acked = v;
            }
        }
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        if (WIFEXITED(status)) {
            fprintf(stderr, "  appender exited %d before the kill\n", WEXITSTATUS(status));
            CHECK(0);
        } else {
            kills++;
        }
        uint64_t v;
        while (read(pfd[0], &v, 8) == 8) if (v > acked) acked = v;   /* drain: written before the kill */
        close(pfd[0]);
        /* After the kill: opens, verifies, holds every acknowledged token. */
        REQUIRE(eg_store_open(dir, NULL, &st) == 0);
        uint64_t problems = 1;
        CHECK_OK(eg_store_verify(st, NULL, NULL, NULL, &problems));
        CHECK_EQ_INT(problems, 0);
        eg_msession *s;
        CHECK_OK(eg_session_open(st, "crash", NULL, &s));
        eg_session_info info;
        CHECK_OK(eg_session_info_get(s, &info));
        CHECK(info.n_tokens >= acked);
        if (r % 10 == 9 || r == rounds - 1) CHECK_EQ_INT(su_check_all(s, info.n_tokens), 0);
        acked = info.n_tokens;
        eg_session_close(s);
        CHECK_OK(eg_store_close(st));
        if (tu_case_failed) break;
    }
    printf("  %d kills, %llu tokens acknowledged and found\n", kills, (unsigned long long)acked);
    CHECK(kills >= (tu_slow() ? 20 : 50));
    CHECK(acked > 0);
    tu_rmrf(dir);
}

static off_t data_size(void)
{
    char p[600];
    struct stat sb;
    snprintf(p, sizeof p, "%s/data.mdb", dir);
    return stat(p, &sb) == 0 ? sb.st_size : 0;
}

/* Child body: appends until the file size limit bites, checks the error,
 * reads, lifts the limit, appends again. Exit code = first failed step. */
static int fault_child(size_t map)
{
    signal(SIGXFSZ, SIG_IGN);
    eg_store_options o = {map, 0, EG_SYNC_FULL};
    eg_store *st;
    eg_msession *s;
    eg_session_config c;
    shape(&c);
    if (eg_store_open(dir, &o, &st)) return 20;
    if (eg_session_create(st, "f", &c) || eg_session_open(st, "f", NULL, &s)) return 21;
    if (su_append(s, &c, 0, 50)) return 22;
    struct rlimit rl;
    getrlimit(RLIMIT_FSIZE, &rl);
    struct rlimit low = {(rlim_t)data_size() + 512 * 1024, rl.rlim_max};
    if (setrlimit(RLIMIT_FSIZE, &low)) return 23;
    uint64_t n = 50, before = 50;
    int rc = 0;
    for (int i = 0; i < 100000 && rc == 0; i++) {
        rc = su_append(s, &c, n, 37);
        if (rc == 0) n += 37;
    }
    if (rc != EG_ENOSPC) {
        fprintf(stderr, "  append under the limit returned %d (%s)\n", rc, eg_mem_last_error());
        return 24;
    }
    if (!strstr(eg_mem_last_error(), "limit")) {
        fprintf(stderr, "  message: %s\n", eg_mem_last_error());
        return 25;
    }
    fprintf(stderr, "  refused with: %s\n", eg_mem_last_error());
    if (n == before) return 37;   /* the limit left room: some appends must have fit */
    uint64_t hit = n;
    /* Reads keep working; nothing acknowledged is lost; the store is sound. */
    if (su_check_all(s, n)) return 26;
    uint64_t problems = 1;
    if (eg_store_verify(st, NULL, NULL, NULL, &problems) || problems) return 27;
    /* A second failing attempt changes nothing either. */
    if (su_append(s, &c, n, 37) == 0) return 28;
    if (su_check_all(s, n)) return 29;
    /* The fault goes: writes resume. */
    if (setrlimit(RLIMIT_FSIZE, &rl)) return 30;
    for (int i = 0; i < 10; i++) {
        if (su_append(s, &c, n, 37)) { fprintf(stderr, "  resume: %s\n", eg_mem_last_error()); return 31; }
        n += 37;
    }
    if (su_check_all(s, n)) return 32;
    eg_session_close(s);
    if (eg_store_close(st)) return 33;
    if (eg_store_open(dir, &o, &st) || eg_session_open(st, "f", NULL, &s)) return 34;
    if (su_check_all(s, n)) return 35;
    if (eg_store_verify(st, NULL, NULL, NULL, &problems) || problems) return 36;
    eg_session_close(s);
    eg_store_close(st);
    printf("  limit hit at %llu tokens (%s); resumed to %llu\n", (unsigned long long)hit,
           eg_mem_strerror(rc), (unsigned long long)n);
    fflush(stdout);
    return 0;
}

static void run_fault(size_t map)
{
    tu_tmpdir(dir, sizeof dir, "fault");
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) _exit(fault_child(map));
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status));
    if (WIFEXITED(status) && WEXITSTATUS(status))
        fprintf(stderr, "  fault child failed at step %d\n", WEXITSTATUS(status));
    CHECK_EQ_INT(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0);
    tu_rmrf(dir);
}

static void test_disk_full_then_resume(void) { run_fault(64u << 20); }
static void test_disk_full_during_map_growth(void) { run_fault(256u << 10); }

int main(void)
{
    TEST_RUN(test_sigkill_loses_nothing_acknowledged);
    TEST_RUN(test_disk_full_then_resume);
    TEST_RUN(test_disk_full_during_map_growth);
    TEST_END();
}
