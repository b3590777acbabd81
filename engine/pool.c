/* pool.c: a small worker pool. A call is a job of n tasks; the caller works
 * on its own job too, so a call never waits on a busy pool, and many
 * threads may submit at once. Tasks may submit leaf jobs of their own; a
 * caller waiting for its last tasks helps with queued leaf jobs.
 *
 * Idle workers spin a little, then, for a while after their last task,
 * wait in short timed waits (polling), and only then sleep until
 * signalled. Why: waking a sleeping thread took the caller 20-50 us of
 * its own time on this VM (the syscall sends the other vCPU an interrupt;
 * measured after the caller had been busy a few ms, 3 us after it had
 * slept), then the worker started 25-30 us later: 10 % of a 1M-token
 * decode step of 9/3/64. A polling worker needs no wake: it finds the job
 * at its next timeout. */
#include "en_internal.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

/* How long a caller spins for the last tasks of its own job (below). */
#define CALLER_SPIN_S 1e-3

/* Rounds of a pause an idle worker spins, watching the count of queued
 * jobs, before it polls or sleeps: about 20-40 us. */
#define SPIN_ROUNDS 1024

typedef struct en_job {
    void (*fn)(void *, int);
    void *arg;
    int n, next;
    atomic_int done;          /* written under the mutex, read by a spinning caller */
    int leaf;                 /* tasks that submit nothing and use no per-thread scratch */
    struct en_job *link;
} en_job;

struct en_pool {
    pthread_mutex_t mu;
    pthread_cond_t work, fin;
    en_job *jobs;             /* jobs with tasks not yet taken */
    atomic_int queued;        /* how many: spinning workers watch it */
    int stop, n_threads;
    int asleep;               /* workers in an untimed wait: a new job must signal them */
    long poll_ns;             /* timed waits of this long after a task (0: none) */
    double poll_window_s;     /* for this long after the worker's last task */
    pthread_t th[EG_EN_THREADS_MAX];
};

/* Which queued jobs a taker accepts. */
enum { TAKE_ANY, TAKE_LEAF, TAKE_OWN };

/* Hand out the next task of the first queued job the taker accepts (own:
 * that job only), unlinking a job whose tasks are all handed out. Mutex
 * held; NULL when there is none. */
static en_job *take(en_pool *p, int which, const en_job *own, int *idx)
{
    en_job **q = &p->jobs;
    while (*q && !(which == TAKE_ANY || (which == TAKE_LEAF ? (*q)->leaf : *q == own))) q = &(*q)->link;
    en_job *j = *q;
    if (!j) return NULL;
    *idx = j->next++;
    if (j->next == j->n) { /* all handed out */
        *q = j->link;
        atomic_fetch_sub_explicit(&p->queued, 1, memory_order_relaxed);
    }
    return j;
}

/* Run task i of j with the mutex released; count it done. */
static void run_task(en_pool *p, en_job *j, int i)
{
    pthread_mutex_unlock(&p->mu);
    j->fn(j->arg, i);
    pthread_mutex_lock(&p->mu);
    if (atomic_fetch_add_explicit(&j->done, 1, memory_order_release) + 1 == j->n) pthread_cond_broadcast(&p->fin);
}

static double mono_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Wait for work with the mutex held: a timed wait while the worker is
 * within the poll window of its last task (idle_since), else until
 * signalled (counted in asleep, so that a new job signals). */
static void idle_wait(en_pool *p, double idle_since)
{
    if (p->poll_ns > 0 && mono_s() - idle_since < p->poll_window_s) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);   /* the cond's clock (en_pool_create) */
        long ns = ts.tv_nsec + p->poll_ns;
        ts.tv_sec += ns / 1000000000L;
        ts.tv_nsec = ns % 1000000000L;
        pthread_cond_timedwait(&p->work, &p->mu, &ts);
        return;
    }
    p->asleep++;
    pthread_cond_wait(&p->work, &p->mu);
    p->asleep--;
}

static void *worker(void *arg)
{
    en_pool *p = arg;
#ifdef __linux__
    /* timed waits end within 1 us of their time, not the default 50 */
    if (p->poll_ns > 0) prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
#endif
    double idle_since = -1;   /* start of the idle stretch; -1: none yet */
    pthread_mutex_lock(&p->mu);
    for (;;) {
        int i;
        en_job *j = take(p, TAKE_ANY, NULL, &i);
        if (j) { run_task(p, j, i); idle_since = -1; continue; }
        if (p->stop) break;
        if (idle_since < 0) {   /* just out of work: spin a little first (not after every poll) */
            pthread_mutex_unlock(&p->mu);
            for (int r = 0; r < SPIN_ROUNDS && !atomic_load_explicit(&p->queued, memory_order_relaxed); r++)
                en_cpu_pause();
            pthread_mutex_lock(&p->mu);
            idle_since = mono_s();
        }
        if (!p->jobs && !p->stop) idle_wait(p, idle_since);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int en_pool_create(int n, int poll_us, int poll_ms, en_pool **out)
{
    en_pool *p = calloc(1, sizeof *p);
    if (!p) return en_fail(EG_EN_ENOMEM, "pool: out of memory");
    p->poll_ns = poll_us > 0 ? (long)poll_us * 1000L : 0;
    p->poll_window_s = poll_ms > 0 ? poll_ms * 1e-3 : 0;
    pthread_mutex_init(&p->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    /* timed waits measure CLOCK_MONOTONIC deadlines: without that clock
     * (not on glibc) no polling, rather than waits that end at once */
    if (pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0) p->poll_ns = 0;
    pthread_cond_init(&p->work, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&p->fin, NULL);
    if (n > EG_EN_THREADS_MAX) n = EG_EN_THREADS_MAX;
    /* The caller of every job works too: n threads in all means n-1 workers. */
    for (int i = 0; i < n - 1; i++) {
        if (pthread_create(&p->th[i], NULL, worker, p)) break;
        p->n_threads++;
    }
    *out = p;
    return 0;
}

void en_pool_destroy(en_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_threads; i++) pthread_join(p->th[i], NULL);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->fin);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

static void pool_run(en_pool *p, int n, void (*fn)(void *, int), void *arg, int leaf)
{
    if (n <= 0) return;
    if (!p || p->n_threads == 0 || n == 1) {
        for (int i = 0; i < n; i++) fn(arg, i);
        return;
    }
    en_job j = {fn, arg, n, 0, 0, leaf, NULL};
    pthread_mutex_lock(&p->mu);
    en_job **tail = &p->jobs;
    while (*tail) tail = &(*tail)->link;
    *tail = &j;
    atomic_fetch_add_explicit(&p->queued, 1, memory_order_relaxed);
    if (p->asleep) pthread_cond_broadcast(&p->work);   /* spinning and polling workers see the job themselves */
    if (leaf) pthread_cond_broadcast(&p->fin);   /* callers waiting on their jobs help with it */
    /* Work on our own job until its tasks are all handed out. Then, until
     * the others finish them, help with leaf jobs (a head's scan split in
     * parts), so a caller never idles while such work waits. Only leaf
     * jobs: this caller may be inside a task whose per-thread scratch
     * another whole task would reuse. */
    en_job *o;
    int i;
    while ((o = take(p, TAKE_OWN, &j, &i))) run_task(p, o, i);
    while (atomic_load_explicit(&j.done, memory_order_acquire) < j.n) {
        if ((o = take(p, TAKE_LEAF, NULL, &i))) { run_task(p, o, i); continue; }
        /* Spin for the last tasks, up to CALLER_SPIN_S, then sleep: the
         * caller has nothing else to do, its job's last tasks end within a
         * task's time (0.1-0.3 ms in a decode step), and a sleeping caller
         * woken by the worker that ends them lost 30-50 us on this VM
         * (1M flushed A/B, medians: 9/3/64 q8 0.576 -> 0.556 ms, 32/8/128
         * 2.76 -> 2.72). */
        pthread_mutex_unlock(&p->mu);
        double t0 = mono_s();
        for (int r = 1; atomic_load_explicit(&j.done, memory_order_acquire) < j.n &&
                        !atomic_load_explicit(&p->queued, memory_order_relaxed); r++) {
            en_spin((unsigned)r);
            if (r % 64 == 0 && mono_s() - t0 > CALLER_SPIN_S) break;
        }
        pthread_mutex_lock(&p->mu);
        if (atomic_load_explicit(&j.done, memory_order_acquire) == j.n) break;
        if ((o = take(p, TAKE_LEAF, NULL, &i))) run_task(p, o, i);   /* queued while we spun */
        else pthread_cond_wait(&p->fin, &p->mu);
    }
    pthread_mutex_unlock(&p->mu);
}

void en_pool_run(en_pool *p, int n, void (*fn)(void *, int), void *arg) { pool_run(p, n, fn, arg, 0); }

void en_pool_run_leaf(en_pool *p, int n, void (*fn)(void *, int), void *arg) { pool_run(p, n, fn, arg, 1); }

int en_pool_threads(const en_pool *p) { return p ? p->n_threads + 1 : 1; }
