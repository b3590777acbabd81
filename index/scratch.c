/* scratch.c: per-thread buffers that outlive a call. A decode step's score
 * arrays are a few hundred KB: from malloc they are mapped, faulted in page
 * by page and unmapped on every call, which cost as much as a tenth of a
 * step. Kept per thread (freed when the thread exits), they are reused. */
#include "ix_internal.h"
#include <pthread.h>
#include <stdlib.h>

typedef struct {
    void *p[IX_SCR_SLOTS];
    size_t cap[IX_SCR_SLOTS];
} scr_set;

static pthread_key_t scr_key;
static int scr_key_ok;
static pthread_once_t scr_once = PTHREAD_ONCE_INIT;

static void scr_destroy(void *v)
{
    scr_set *s = v;
    for (int i = 0; i < IX_SCR_SLOTS; i++) free(s->p[i]);
    free(s);
}

static void scr_init(void) { scr_key_ok = pthread_key_create(&scr_key, scr_destroy) == 0; }

static scr_set *scr_get(void)
{
    pthread_once(&scr_once, scr_init);
    if (!scr_key_ok) return NULL;
    scr_set *s = pthread_getspecific(scr_key);
    if (!s && (s = calloc(1, sizeof *s)) && pthread_setspecific(scr_key, s)) {
        free(s);
        s = NULL;
    }
    return s;
}

int ix_buf_get(ix_buf *b, int slot, size_t bytes)
{
    b->p = NULL;
    b->owned = 0;
    if (bytes == 0) bytes = 1;
    scr_set *s = bytes <= IX_SCR_KEEP && slot >= 0 && slot < IX_SCR_SLOTS ? scr_get() : NULL;
    if (!s) {   /* too large to keep (or no thread key): the caller's own */
        b->p = malloc(bytes);
        b->owned = 1;
        return b->p ? 0 : -1;
    }
    if (s->cap[slot] < bytes) {
        void *p = realloc(s->p[slot], bytes);
        if (!p) return -1;
        s->p[slot] = p;
        s->cap[slot] = bytes;
    }
    b->p = s->p[slot];
    return 0;
}

void ix_buf_put(ix_buf *b)
{
    if (b->owned) free(b->p);
    b->p = NULL;
    b->owned = 0;
}
