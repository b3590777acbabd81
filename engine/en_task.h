/* en_task.h: ATTEND's per-call context and per-head tasks, shared by
 * attend.c (the calls, the per-head tasks, the dense path) and shared.c
 * (the pipelined decode job of the quest and ball routers). Internal to
 * engine/. */
#ifndef EN_TASK_H
#define EN_TASK_H
#include "en_internal.h"
#include <stdatomic.h>

/* Per-call context shared by the tasks. */
typedef struct {
    en_sess *s;
    const eg_attend_req *req;
    eg_attend_result *res;
    en_view v;
    int dense;
    float scale;
    eg_route_table **quest, **route;
    const float *tail_k, *tail_v;  /* [n_tail][H][dk], [n_tail][H][dv] */
    uint32_t n_tail;
    float *seg_mass;
    int *rc;                       /* [H] */
    char (*msg)[256];              /* [H] */
    uint64_t *page_ins, *segs, *toks;
    double *worst;
    /* Quest decode routed in one pipelined job (run_shared): per kv-head
     * its buffers, rows and prepared route, kept from its begin to its
     * finish. */
    struct task_buf *bufs;
    eg_route_rows *rows;
    eg_route_prep **preps;
    struct { int head, part; } *order; /* the shared job's tasks: part >= 0 scores, else TASK_* */
    int *n_part;                   /* [H] scoring parts each head's list needs (set by its begin) */
    int parts_max;                 /* part tasks per head in the job */
    atomic_int *left;              /* [H] the head's part tasks not yet done */
    atomic_int *begun;             /* [H] 1 once the head's begin is done */
} call_ctx;

/* ---- one kv-head ------------------------------------------------------------------ */
typedef struct task_buf {
    int nr;
    float *qraw, *qt, *qe, *sc;     /* [nr][dk] x3, scores [nr][block] */
    int64_t *vis;                   /* [nr] last visible token, -1: none */
    int64_t *rpos;                  /* [nr] routing positions (vis clamped at 0) */
    float *tk, *tv;                 /* open rows of this kv-head [n_tail][d] */
    float *sk, *sv;                 /* one segment's tiles decoded [S][dk], [S][dv] */
    en_attn_state st, tr;              /* attention (true or remapped), lse at true positions */
    en_wentry **pinned;
    size_t n_pinned, cap_pinned;
    en_wentry *ahead;               /* pinned for the next attend_seg (its tiles loaded meanwhile), or NULL */
    /* Entries of the selection pinned in one batch (en_task_routed), which
     * pin takes in order: pre[i] for pre_seg[i], NULL where not in the
     * window (paged in then). Also in pinned. */
    en_wentry **pre;
    const int64_t *pre_seg;
    size_t n_pre, pre_at;
} task_buf;

/* Per-head scratch of block keys a task (dense: a run of segments, else
 * one). Errors: EG_EN_ENOMEM (free with en_task_buf_free either way). */
int en_task_buf_init(call_ctx *c, task_buf *b, size_t block);
void en_task_buf_free(task_buf *b);
/* kv-head kvh's rows: raw and rotated queries, visibility, open rows. */
void en_task_rows(call_ctx *c, task_buf *b, uint32_t kvh);
/* The router's rows and options for kv-head kvh. */
void en_task_rows_of(call_ctx *c, task_buf *b, uint32_t kvh, eg_route_rows *rows);
void en_task_route_opts(const call_ctx *c, eg_route_opts *o);
/* Attention over kv-head kvh's selection (sel's arrays and log_ub are
 * taken over and freed), rows written to the result. Errors: memory and
 * window codes, EG_EN_ENOMEM. */
int en_task_routed(call_ctx *c, task_buf *b, uint32_t kvh, eg_route_selection sel, double *log_ub);
/* The pipelined decode job (shared.c). Errors: EG_EN_ENOMEM; the heads'
 * own codes are in c->rc. */
int en_run_shared(call_ctx *c);
#endif
