/* shared.c: the decode job of the quest and ball routers, pipelined over
 * a layer's kv-heads (moved out of attend.c, which passed 800 lines).
 *
 * A layer's kv-heads as one task each left a core idle whenever the heads
 * did not divide evenly among the threads (3 heads on 2 cores: two table
 * scans one after the other on one core while the other waited). So a
 * quest call routes in one pool job of three kinds of tasks per head:
 * - begin: its rows and the list of groups its answer needs
 *   (eg_route_prep_begin);
 * - parts: the scoring of that list, in equal shares;
 * - finish: select, bound and attention.
 * The pool hands tasks out in order, and the order is begin of head h+1,
 * parts of head h, finish of head h-1: a task that needs an earlier one
 * (parts their begin, a finish its parts) waits (spinning) only for tasks
 * already taken by running threads, and seldom, since a head's worth of
 * other tasks lies between them. No thread idles at a barrier: begins
 * were a round of their own before, 0.13-0.23 ms of a 2.3 ms step at 1M
 * tokens of 32/8/128, the scan waiting on the slowest head's list.
 * The answers are those of the one-task path (tests/test_index.c: same
 * selection, bound within the coarse groups' share). */
#include "en_task.h"
#include <stdio.h>
#include <stdlib.h>

enum { TASK_BEGIN = -2, TASK_FINISH = -1 };   /* else: a part's index */

static void shared_begin(call_ctx *c, int kvh)
{
    task_buf *b = &c->bufs[kvh];
    int rc = en_task_buf_init(c, b, c->v.S);
    if (!rc) {
        en_task_rows(c, b, (uint32_t)kvh);
        en_task_rows_of(c, b, (uint32_t)kvh, &c->rows[kvh]);
        eg_route_opts o;
        en_task_route_opts(c, &o);
        rc = en_pass(eg_route_prep_begin(c->quest[kvh], &c->rows[kvh], &o, &c->preps[kvh]), "route");
    }
    c->rc[kvh] = rc;
    if (rc) snprintf(c->msg[kvh], sizeof c->msg[kvh], "%s", eg_engine_last_error());
}

static void shared_finish(call_ctx *c, int kvh)
{
    task_buf *b = &c->bufs[kvh];
    int rc = c->rc[kvh];
    if (!rc) {
        eg_route_selection sel;
        double *log_ub = NULL;
        rc = en_pass(eg_route_prep_finish(c->preps[kvh], &sel, &log_ub), "route");
        if (!rc) rc = en_task_routed(c, b, (uint32_t)kvh, sel, log_ub);
        c->rc[kvh] = rc;
        if (rc) snprintf(c->msg[kvh], sizeof c->msg[kvh], "%s", eg_engine_last_error());
    }
    en_window_unpin_many(c->s->win, b->pinned, b->n_pinned);
    en_task_buf_free(b);
    eg_route_prep_free(c->preps[kvh]);
    c->preps[kvh] = NULL;
}

/* A head's scan in parts of at least this many groups, at most 2 per
 * thread: the pool hands them out as threads come free, and a finish
 * waits at most for the last part of its head still running. */
#define SHARED_MIN_GROUPS 16
#define SHARED_PARTS_PER_THREAD 2

/* Task i of the shared job, as en_run_shared ordered them. A part whose
 * index is beyond what its head's list needs (or whose head failed)
 * scores nothing and only counts itself done. */
static void shared_task(void *arg, int i)
{
    call_ctx *c = arg;
    int h = c->order[i].head, k = c->order[i].part;
    if (k == TASK_BEGIN) {
        shared_begin(c, h);
        size_t n = c->rc[h] ? 0 : eg_route_prep_items(c->preps[h]), parts = n / SHARED_MIN_GROUPS;
        size_t most = (size_t)c->parts_max;
        c->n_part[h] = (int)(n == 0 ? 0 : parts < 1 ? 1 : parts < most ? parts : most);
        atomic_store_explicit(&c->begun[h], 1, memory_order_release);
        return;
    }
    if (k >= 0) {
        for (unsigned r = 1; !atomic_load_explicit(&c->begun[h], memory_order_acquire); r++)
            en_spin(r);   /* its begin runs elsewhere */
        if (k < c->n_part[h]) {
            size_t n = eg_route_prep_items(c->preps[h]), parts = (size_t)c->n_part[h];
            eg_route_prep_score(c->preps[h], n * (size_t)k / parts, n * (size_t)(k + 1) / parts);
        }
        atomic_fetch_sub_explicit(&c->left[h], 1, memory_order_release);
        return;
    }
    for (unsigned r = 1; atomic_load_explicit(&c->left[h], memory_order_acquire) > 0; r++)
        en_spin(r);   /* parts running elsewhere */
    shared_finish(c, h);
}

int en_run_shared(call_ctx *c)
{
    uint32_t H = c->v.H;
    int T = en_pool_threads(c->s->e->pool), P = SHARED_PARTS_PER_THREAD * T;
    c->parts_max = P;
    c->bufs = calloc(H, sizeof *c->bufs);
    c->rows = calloc(H, sizeof *c->rows);
    c->preps = calloc(H, sizeof *c->preps);
    c->n_part = calloc(H, sizeof *c->n_part);
    c->left = calloc(H, sizeof *c->left);
    c->begun = calloc(H, sizeof *c->begun);
    c->order = calloc((size_t)H * ((size_t)P + 2), sizeof *c->order);
    if (!c->bufs || !c->rows || !c->preps || !c->n_part || !c->left || !c->begun || !c->order) {
        free(c->bufs); free(c->rows); free(c->preps); free(c->n_part); free(c->left); free(c->begun); free(c->order);
        return en_fail(EG_EN_ENOMEM, "attend: out of memory");
    }
    for (uint32_t h = 0; h < H; h++) {
        atomic_init(&c->left[h], P);
        atomic_init(&c->begun[h], 0);
    }
    /* begin 0; then for each head h: begin h+1, the parts of h, finish h-1;
     * last, finish H-1. */
    int n = 0;
    c->order[n].head = 0;
    c->order[n++].part = TASK_BEGIN;
    for (uint32_t h = 0; h < H; h++) {
        if (h + 1 < H) { c->order[n].head = (int)h + 1; c->order[n++].part = TASK_BEGIN; }
        for (int k = 0; k < P; k++) { c->order[n].head = (int)h; c->order[n++].part = k; }
        if (h > 0) { c->order[n].head = (int)h - 1; c->order[n++].part = TASK_FINISH; }
    }
    c->order[n].head = (int)H - 1;
    c->order[n++].part = TASK_FINISH;
    en_pool_run(c->s->e->pool, n, shared_task, c);
    free(c->bufs); free(c->rows); free(c->preps); free(c->n_part); free(c->left); free(c->begun); free(c->order);
    c->bufs = NULL;
    c->rows = NULL;
    c->preps = NULL;
    c->n_part = NULL;
    c->left = NULL;
    c->begun = NULL;
    c->order = NULL;
    return 0;
}

