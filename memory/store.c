/* store.c: the LMDB environment, map growth, group commit and counters. */
#include "internal.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#define DEFAULT_MAP (8u << 20)

/* Directories open in this process: LMDB must not open one env twice. */
static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static eg_store *registry[64];

int eg_mdb_fail(int rc, const char *what)
{
    switch (rc) {
    case ENOSPC: case EFBIG: case EDQUOT:
        return eg_mem_fail(EG_ENOSPC, "%s: %s", what, strerror(rc));
    case ENOMEM:
        return eg_mem_fail(EG_ENOMEM, "%s: out of memory", what);
    case EIO: case EACCES: case EPERM: case EROFS:
        return eg_mem_fail(EG_EIO, "%s: %s", what, strerror(rc));
    case MDB_CORRUPTED: case MDB_PAGE_NOTFOUND: case MDB_INVALID:
        return eg_mem_fail(EG_ECORRUPT, "%s: %s", what, mdb_strerror(rc));
    case MDB_MAP_FULL: case MDB_TXN_FULL:
        return eg_mem_fail(EG_IMAPFULL, "%s: map full", what);
    case MDB_NOTFOUND:
        return eg_mem_fail(EG_ENOTFOUND, "%s: not found", what);
    default:
        if (rc > 0 && rc < 1000) return eg_mem_fail(EG_EIO, "%s: %s", what, strerror(rc));
        return eg_mem_fail(EG_ELMDB, "%s: %s", what, mdb_strerror(rc));
    }
}

static int open_dbs(eg_store *st)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(st->env, NULL, 0, &txn);
    if (rc) return eg_mdb_fail(rc, "open databases");
    struct { const char *name; MDB_dbi *dbi; } dbs[] = {
        {"catalog", &st->db_catalog}, {"blocks", &st->db_blocks},
        {"summaries", &st->db_summaries}, {"tail", &st->db_tail},
        {"tokens", &st->db_tokens}, {"router", &st->db_router},
        {"refs", &st->db_refs}, {"meta", &st->db_meta},
    };
    for (size_t i = 0; i < sizeof dbs / sizeof *dbs && !rc; i++)
        rc = mdb_dbi_open(txn, dbs[i].name, MDB_CREATE, dbs[i].dbi);
    /* Format version: written once, refused if it is not ours. */
    MDB_val k = {7, "version"}, v;
    if (!rc) {
        rc = mdb_get(txn, st->db_meta, &k, &v);
        if (rc == MDB_NOTFOUND) {
            uint32_t ver = EG_FORMAT_VERSION;
            v.mv_size = 4; v.mv_data = &ver;
            rc = mdb_put(txn, st->db_meta, &k, &v, 0);
        } else if (!rc) {
            uint32_t ver = 0;
            if (v.mv_size == 4) memcpy(&ver, v.mv_data, 4);
            if (ver != EG_FORMAT_VERSION) {
                mdb_txn_abort(txn);
                return eg_mem_fail(EG_EFORMAT, "%s: format version %u, this build reads %u",
                                   st->path, ver, EG_FORMAT_VERSION);
            }
        }
    }
    if (rc) { mdb_txn_abort(txn); return eg_mdb_fail(rc, "open databases"); }
    rc = mdb_txn_commit(txn);
    return rc ? eg_mdb_fail(rc, "open databases: commit") : 0;
}

/* Create and open the LMDB environment and its databases. */
static int env_open(eg_store *st)
{
    int rc;
    if ((rc = mdb_env_create(&st->env))) { st->env = NULL; return eg_mdb_fail(rc, st->path); }
    mdb_env_set_maxdbs(st->env, 16);
    mdb_env_set_maxreaders(st->env, 512);
    mdb_env_set_mapsize(st->env, st->map_bytes);
    /* NOTLS: read txns are not tied to threads (workers hand them around).
     * Never WRITEMAP: a full disk must be an error, not SIGBUS. */
    unsigned flags = MDB_NOTLS | MDB_NORDAHEAD;
    if (st->opt.sync_mode == EG_SYNC_NONE) flags |= MDB_NOSYNC;
    if ((rc = mdb_env_open(st->env, st->path, flags, 0644))) {
        rc = eg_mdb_fail(rc, st->path);
        mdb_env_close(st->env);
        st->env = NULL;
        return rc;
    }
    /* The file may be larger than asked (an earlier run grew it). */
    MDB_envinfo info;
    mdb_env_info(st->env, &info);
    st->map_bytes = info.me_mapsize;
    int dead = 0;
    mdb_reader_check(st->env, &dead);
    if ((rc = open_dbs(st))) {
        mdb_env_close(st->env);
        st->env = NULL;
    }
    return rc;
}

/* After LMDB's fatal state (a failed meta-page write) the environment must
 * be reopened; what was committed before is intact on disk. Called by the
 * writer with nothing open; takes grow_lock to keep readers out. */
static int env_recover(eg_store *st)
{
    pthread_rwlock_wrlock(&st->grow_lock);
    mdb_env_close(st->env);
    st->env = NULL;
    int rc = env_open(st);
    pthread_rwlock_unlock(&st->grow_lock);
    return rc;
}

int eg_store_open(const char *path, const eg_store_options *opt, eg_store **out)
{
    if (!path || !*path || !out) return eg_mem_fail(EG_EINVAL, "eg_store_open: path and out required");
    *out = NULL;
    if (strlen(path) >= sizeof ((eg_store *)0)->path)
        return eg_mem_fail(EG_EINVAL, "eg_store_open: path too long");
    if (opt && opt->sync_mode != EG_SYNC_FULL && opt->sync_mode != EG_SYNC_NONE)
        return eg_mem_fail(EG_EOPTION, "eg_store_open: unknown sync mode %d", opt->sync_mode);
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return eg_mem_fail(EG_EIO, "%s: cannot create directory: %s", path, strerror(errno));
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return eg_mem_fail(EG_EIO, "%s: not a directory", path);

    eg_store *st = calloc(1, sizeof *st);
    if (!st) return eg_mem_fail(EG_ENOMEM, "eg_store_open: out of memory");
    if (opt) st->opt = *opt;
    snprintf(st->path, sizeof st->path, "%s", path);
    st->dev = sb.st_dev; st->ino = sb.st_ino;

    pthread_mutex_lock(&registry_mu);
    size_t slot = SIZE_MAX;
    for (size_t i = 0; i < sizeof registry / sizeof *registry; i++) {
        if (registry[i] && registry[i]->dev == st->dev && registry[i]->ino == st->ino) {
            pthread_mutex_unlock(&registry_mu);
            free(st);
            return eg_mem_fail(EG_EBUSY, "%s: already open in this process", path);
        }
        if (!registry[i] && slot == SIZE_MAX) slot = i;
    }
    if (slot == SIZE_MAX) {
        pthread_mutex_unlock(&registry_mu);
        free(st);
        return eg_mem_fail(EG_ELIMIT, "eg_store_open: more than 64 stores open");
    }
    registry[slot] = st;
    pthread_mutex_unlock(&registry_mu);

    /* LMDB lets two processes share an environment, but our catalog state
     * lives in this process: a second process on the same directory would
     * corrupt it, so the directory is locked for the store's lifetime. */
    char lock_path[sizeof st->path + 16];
    snprintf(lock_path, sizeof lock_path, "%s/engram.lock", path);
    st->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (st->lock_fd < 0 || flock(st->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int busy = st->lock_fd >= 0 && errno == EWOULDBLOCK;
        int e = errno;
        if (st->lock_fd >= 0) close(st->lock_fd);
        pthread_mutex_lock(&registry_mu);
        registry[slot] = NULL;
        pthread_mutex_unlock(&registry_mu);
        free(st);
        if (busy) return eg_mem_fail(EG_EBUSY, "%s: in use by another process (engram.lock is held)", path);
        return eg_mem_fail(EG_EIO, "%s: cannot lock engram.lock: %s", path, strerror(e));
    }

    int rc;
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    /* Writer preference: map growth must not starve behind readers. */
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&st->grow_lock, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->cv, NULL);

    st->map_bytes = st->opt.map_bytes ? st->opt.map_bytes : DEFAULT_MAP;
    if ((rc = env_open(st))) goto fail;
    if (st->opt.cache_bytes && (rc = eg_cache_new(st->opt.cache_bytes, &st->cache))) goto fail;
    st->stats.map_bytes = st->map_bytes;
    *out = st;
    return 0;
fail:
    if (st->env) mdb_env_close(st->env);
    close(st->lock_fd);
    pthread_mutex_lock(&registry_mu);
    registry[slot] = NULL;
    pthread_mutex_unlock(&registry_mu);
    pthread_rwlock_destroy(&st->grow_lock);
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
    free(st);
    return rc;
}

int eg_store_close(eg_store *st)
{
    if (!st) return 0;
    pthread_mutex_lock(&st->mu);
    st->closing = 1;
    while (st->writer_active || st->q_head) pthread_cond_wait(&st->cv, &st->mu);
    eg_msession *s = st->open_list;
    st->open_list = NULL;
    pthread_mutex_unlock(&st->mu);
    while (s) {
        eg_msession *n = s->next;
        eg_sess_state_free(&s->state);
        eg_sess_state_free(&s->work);
        pthread_mutex_destroy(&s->mu);
        free(s);
        s = n;
    }
    int rc = 0;
    if (st->env && st->opt.sync_mode == EG_SYNC_NONE) {
        int r = mdb_env_sync(st->env, 1);
        if (r) rc = eg_mdb_fail(r, "close: sync");
    }
    if (st->env) mdb_env_close(st->env);
    eg_cache_free(st->cache);
    close(st->lock_fd); /* after the environment: the next opener sees it whole */
    pthread_mutex_lock(&registry_mu);
    for (size_t i = 0; i < sizeof registry / sizeof *registry; i++)
        if (registry[i] == st) registry[i] = NULL;
    pthread_mutex_unlock(&registry_mu);
    pthread_rwlock_destroy(&st->grow_lock);
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
    free(st);
    return rc;
}

int eg_store_sync(eg_store *st)
{
    if (!st) return eg_mem_fail(EG_EINVAL, "eg_store_sync: NULL store");
    pthread_rwlock_rdlock(&st->grow_lock);
    int rc = st->env ? mdb_env_sync(st->env, 1) : MDB_PANIC;
    pthread_rwlock_unlock(&st->grow_lock);
    return rc ? eg_mdb_fail(rc, "sync") : 0;
}

int eg_store_get_stats(eg_store *st, eg_store_stats *out)
{
    if (!st || !out) return eg_mem_fail(EG_EINVAL, "eg_store_get_stats: NULL argument");
    pthread_mutex_lock(&st->mu);
    *out = st->stats;
    pthread_mutex_unlock(&st->mu);
    if (st->cache)
        eg_cache_counters(st->cache, &out->cache_hits, &out->cache_misses, &out->cache_bytes,
                          &out->cache_entries, &out->cache_evictions);
    return 0;
}

int eg_store_set_seal_hook(eg_store *st, eg_seal_fn fn, void *user)
{
    if (!st) return eg_mem_fail(EG_EINVAL, "eg_store_set_seal_hook: NULL store");
    pthread_mutex_lock(&st->mu);
    while (st->writer_active) pthread_cond_wait(&st->cv, &st->mu);
    st->hook = fn;
    st->hook_user = user;
    pthread_mutex_unlock(&st->mu);
    return 0;
}

int eg_rtxn_begin(eg_store *st, MDB_txn **out)
{
    pthread_rwlock_rdlock(&st->grow_lock);
    int rc = st->env ? mdb_txn_begin(st->env, NULL, MDB_RDONLY, out) : MDB_PANIC;
    if (rc) {
        pthread_rwlock_unlock(&st->grow_lock);
        return eg_mdb_fail(rc, "begin read transaction");
    }
    return 0;
}

void eg_rtxn_end(eg_store *st, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&st->grow_lock);
}

int eg_meta_next(eg_store *st, MDB_txn *txn, const char *counter, uint64_t *out)
{
    MDB_val k = {strlen(counter), (void *)counter}, v;
    uint64_t n = 1;
    int rc = mdb_get(txn, st->db_meta, &k, &v);
    if (rc == 0 && v.mv_size == 8) memcpy(&n, v.mv_data, 8);
    else if (rc && rc != MDB_NOTFOUND) return rc;
    *out = n;
    n++;
    v.mv_size = 8; v.mv_data = &n;
    return mdb_put(txn, st->db_meta, &k, &v, 0);
}

/* LMDB reports a short write (what a full disk or a file size limit gives)
 * as EIO. Tell the caller which it most likely was. */
static int commit_failure(eg_store *st, int rc)
{
    if (rc != EIO) return eg_mdb_fail(rc, "commit");
    char p[sizeof st->path + 16];
    snprintf(p, sizeof p, "%s/data.mdb", st->path);
    struct stat sb;
    struct statvfs vfs;
    struct rlimit rl;
    if (statvfs(st->path, &vfs) == 0 && (uint64_t)vfs.f_bavail * vfs.f_frsize < (64u << 20))
        return eg_mem_fail(EG_ENOSPC, "commit: disk full (%llu bytes free); nothing of this batch "
                           "was written", (unsigned long long)vfs.f_bavail * vfs.f_frsize);
    if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && stat(p, &sb) == 0 &&
        (uint64_t)sb.st_size + (16u << 20) >= (uint64_t)rl.rlim_cur)
        return eg_mem_fail(EG_ENOSPC, "commit: file size limit reached (%llu bytes); nothing of "
                           "this batch was written", (unsigned long long)rl.rlim_cur);
    return eg_mdb_fail(rc, "commit");
}

/* Grow the map: only with no transaction open in this process, so it takes
 * grow_lock exclusively (the caller holds nothing). */
static int grow_map(eg_store *st)
{
    pthread_rwlock_wrlock(&st->grow_lock);
    size_t want = st->map_bytes < (1u << 30) ? st->map_bytes * 2 : st->map_bytes + (1u << 30);
    int rc = mdb_env_set_mapsize(st->env, want);
    if (!rc) {
        MDB_envinfo info;
        mdb_env_info(st->env, &info);
        st->map_bytes = info.me_mapsize;
    }
    pthread_rwlock_unlock(&st->grow_lock);
    if (rc) return eg_mdb_fail(rc, "grow map");
    pthread_mutex_lock(&st->mu);
    st->stats.map_grows++;
    st->stats.map_bytes = st->map_bytes;
    pthread_mutex_unlock(&st->mu);
    return 0;
}

/* Apply a batch of jobs in one write transaction. Each job runs in a nested
 * transaction so that a refused job leaves the others standing; MAP_FULL
 * anywhere aborts everything, grows the map and runs the whole batch again. */
static void run_batch(eg_store *st, eg_job *batch)
{
    for (int attempt = 0;; attempt++) {
        MDB_txn *txn = NULL;
        int grow = 0, fatal = 0;
        pthread_rwlock_rdlock(&st->grow_lock);
        int rc = st->env ? mdb_txn_begin(st->env, NULL, 0, &txn) : MDB_PANIC;
        if (rc == MDB_PANIC && attempt < 2) {
            pthread_rwlock_unlock(&st->grow_lock);
            if (env_recover(st) == 0) continue;
            rc = MDB_PANIC;
            pthread_rwlock_rdlock(&st->grow_lock);
        }
        if (rc) {
            pthread_rwlock_unlock(&st->grow_lock);
            rc = eg_mdb_fail(rc, "begin write transaction");
            for (eg_job *j = batch; j; j = j->next) j->rc = rc;
            return;
        }
        for (eg_job *j = batch; j; j = j->next) {
            if (j->s) { eg_sess_work(j->s); }
            eg_sess_state backup = {0};
            if (j->s && eg_sess_state_copy(&backup, &j->s->work)) { fatal = EG_ENOMEM; break; }
            MDB_txn *child = NULL;
            rc = mdb_txn_begin(st->env, txn, 0, &child);
            if (rc) { fatal = eg_mdb_fail(rc, "begin nested transaction"); eg_sess_state_free(&backup); break; }
            j->rc = j->apply(st, child, j);
            if (j->rc == 0) {
                rc = mdb_txn_commit(child);
                if (rc) j->rc = eg_mdb_fail(rc, "commit nested transaction");
            } else {
                mdb_txn_abort(child);
            }
            if (j->rc) snprintf(j->msg, sizeof j->msg, "%s", eg_mem_last_error());
            if (j->rc != 0 && j->s) {
                eg_sess_state_free(&j->s->work);
                j->s->work = backup;
                backup.layer_tokens = NULL;
            }
            eg_sess_state_free(&backup);
            if (j->rc == EG_IMAPFULL) { grow = 1; break; }
            if (j->rc == EG_ENOSPC || j->rc == EG_EIO) { fatal = j->rc; break; }
        }
        if (!grow && !fatal) {
            rc = mdb_txn_commit(txn);
            txn = NULL;
            if (rc == MDB_MAP_FULL || rc == MDB_TXN_FULL) grow = 1;
            else if (rc) fatal = commit_failure(st, rc);
        } else {
            mdb_txn_abort(txn);
        }
        pthread_rwlock_unlock(&st->grow_lock);
        if (grow) {
            /* Throw away the work copies: the retry starts from committed. */
            for (eg_job *j = batch; j; j = j->next)
                if (j->s) j->s->in_batch = 0;
            int g = grow_map(st);
            if (g == 0 && attempt < 40) continue;
            fatal = g ? g : eg_mem_fail(EG_ENOSPC, "map cannot grow further");
        }
        if (fatal) {
            /* Nothing of the batch committed: every job fails with the cause. */
            const char *msg = eg_mem_last_error();
            for (eg_job *j = batch; j; j = j->next) {
                j->rc = fatal;
                snprintf(j->msg, sizeof j->msg, "%s", msg);
                if (j->s) j->s->in_batch = 0;
            }
            return;
        }
        /* Committed: publish the work states. */
        for (eg_job *j = batch; j; j = j->next) {
            if (!j->s || !j->s->in_batch) continue;
            pthread_mutex_lock(&j->s->mu);
            eg_sess_state tmp = j->s->state;
            j->s->state = j->s->work;
            j->s->work = tmp;
            pthread_mutex_unlock(&j->s->mu);
            j->s->in_batch = 0;
        }
        pthread_mutex_lock(&st->mu);
        st->stats.commits++;
        pthread_mutex_unlock(&st->mu);
        return;
    }
}

int eg_store_write(eg_store *st, eg_job *job)
{
    job->rc = 0;
    job->finished = 0;
    job->next = NULL;
    pthread_mutex_lock(&st->mu);
    if (st->closing) {
        pthread_mutex_unlock(&st->mu);
        return eg_mem_fail(EG_ECLOSED, "store is closing");
    }
    if (st->q_tail) st->q_tail->next = job; else st->q_head = job;
    st->q_tail = job;
    while (!job->finished) {
        if (!st->writer_active) {
            /* Become the leader: take everything queued so far as one batch. */
            eg_job *batch = st->q_head;
            st->q_head = st->q_tail = NULL;
            st->writer_active = 1;
            pthread_mutex_unlock(&st->mu);
            run_batch(st, batch);
            for (eg_job *j = batch; j; j = j->next)
                if (j->done && j->rc == 0) j->done(st, j);
            pthread_mutex_lock(&st->mu);
            for (eg_job *j = batch, *n; j; j = n) { n = j->next; j->finished = 1; }
            st->writer_active = 0;
            pthread_cond_broadcast(&st->cv);
        } else {
            pthread_cond_wait(&st->cv, &st->mu);
        }
    }
    pthread_mutex_unlock(&st->mu);
    /* Messages are per thread: hand the job's own message to its caller. */
    if (job->rc < 0) eg_mem_fail(job->rc, "%s", job->msg[0] ? job->msg : eg_mem_strerror(job->rc));
    return job->rc;
}
