/* inotify.c: files changed under watched paths -> `fs` events (core_inotify.h;
 * docs/sources/inotify.md).
 *
 * Watches are kept in the core's one index keyed by the watch descriptor; each knows its
 * path and whether its events are reported (it lies in a root) and whether its new
 * subdirectories get watches (recursive). A directory made later is watched first and
 * scanned second: what is made in it before the watch landed is found by the scan, what is
 * made after by the watch, and what is made in between by both (the aggregator merges the
 * two, same path and operation). Decoded events wait in a bounded ring for their actor (the
 * audit join) and are written in order. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core_inotify.h"
#include "index.h"
#include "mpread.h"
#include "sink.h"

enum {
    MAX_ROOTS = 64,
    READ_BYTES = 65536,
    EXE_MAX = 256,
    COMM_MAX = 32,
    REC_HEADER = (int)sizeof(struct inotify_event),
    /* An audit record is stamped at the syscall's entry, an event when it is read: later.
     * Both read CLOCK_REALTIME; this much covers the millisecond rounding of each. */
    CLOCK_SLACK_MS = 2
};

#define WATCH_MASK                                                                            \
    (IN_CREATE | IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE |           \
     IN_DELETE_SELF | IN_MOVE_SELF | IN_CLOSE_WRITE)

enum op { OP_CREATE, OP_MODIFY, OP_ATTRIB, OP_MOVE, OP_DELETE, OP_OPEN, OP_CLOSE_WRITE,
          OP_OVERFLOW };
static const char *const op_names[] = {"create", "modify", "attrib", "move", "delete",
                                       "open", "close_write", "overflow"};

enum moved { MOVED_NONE, MOVED_PAIRED, MOVED_OUT, MOVED_IN };

typedef struct watch {
    int32_t wd;
    uint8_t report;  /* in a root: its events are reported */
    uint8_t recurse; /* its new subdirectories are watched */
    uint8_t is_dir;
    uint8_t mark;    /* scratch of set_paths */
    uint32_t len;
    char *path;
} watch;

typedef struct root {
    char *path;
    uint32_t len;
    uint8_t pending; /* does not exist (yet): watched from its nearest existing parent */
} root;

typedef struct pend {
    uint64_t ts;
    uint8_t op, isdir, moved, scanned;
    char *path; /* NULL for an overflow */
    char *from; /* a paired move's old path */
} pend;

/* One process the audit saw at a path. */
typedef struct who {
    uint64_t ts;
    int64_t pid, uid, auid;
    uint8_t valid, has_pid, has_uid, has_auid;
    char exe[EXE_MAX];
    char comm[COMM_MAX];
} who;

/* What the audit saw at a path, by what it did there: made it (a PATH item of nametype
 * CREATE: open O_CREAT, mkdir, a rename's target), removed it (DELETE: unlink, rmdir, a
 * rename's source), or wrote or changed its attributes (NORMAL and the others). */
enum { DID_CREATE, DID_DELETE, DID_CHANGE, DID_KINDS };
/* Processes kept per kind: the latest and the one before (a later change's records may come
 * before an earlier event is written). */
enum { DID_DEPTH = 2 };

typedef struct actor {
    char *path;
    uint64_t newest; /* the latest ts of all */
    who did[DID_KINDS][DID_DEPTH]; /* [kind][0] the latest */
} actor;

struct am_inotify {
    struct am_inotify_options opt;
    int fd;
    int err;
    am_index watches;   /* wd -> watch */
    am_index actors;    /* path -> actor */
    root roots[MAX_ROOTS];
    uint32_t nroots;
    pend *ring;         /* max_pending events in decode order */
    uint32_t head, count;
    pend from;          /* a MOVED_FROM waiting for its MOVED_TO */
    uint32_t from_cookie;
    uint8_t has_from;
    uint8_t *rx;        /* READ_BYTES */
    size_t rx_len, rx_off;
    char scratch[PATH_MAX];
    struct am_inotify_stats st;
};

/* ---- small helpers ---- */

static uint64_t now_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* dir + "/" + name into out (PATH_MAX); 0 when it would not fit. */
static int join_path(char *out, const char *dir, size_t dn, const char *name, size_t nn)
{
    int slash = !(dn == 1 && dir[0] == '/');
    if (dn + (size_t)slash + nn + 1 > PATH_MAX)
        return 0;
    memcpy(out, dir, dn);
    if (slash)
        out[dn] = '/';
    memcpy(out + dn + slash, name, nn);
    out[dn + slash + nn] = '\0';
    return 1;
}

/* Whether path is root itself, or (with sub) under it. */
static int under(const char *path, size_t pn, const char *root, size_t rn, int sub)
{
    if (pn == rn)
        return memcmp(path, root, rn) == 0;
    if (!sub || pn < rn || memcmp(path, root, rn) != 0)
        return 0;
    return rn == 1 || path[rn] == '/';
}

/* ---- the watch index ---- */

static int same_wd(const void *entry, const void *key, size_t len, const void *ctx)
{
    (void)ctx;
    int32_t wd;
    memcpy(&wd, key, sizeof wd);
    return len == sizeof wd && ((const watch *)entry)->wd == wd;
}

static watch *watch_find(am_inotify *h, int32_t wd)
{
    uint32_t pos = am_index_find(&h->watches, &wd, sizeof wd);
    return pos == AM_INDEX_NONE ? NULL : am_index_at(&h->watches, pos);
}

/* What a root says of a path: reported (under a root), recursive (its subdirectories too). */
static void classify(const am_inotify *h, const char *path, size_t n, uint8_t *report,
                     uint8_t *recurse)
{
    *report = 0;
    *recurse = 0;
    for (uint32_t i = 0; i < h->nroots; i++) {
        const root *r = &h->roots[i];
        if (under(path, n, r->path, r->len, (int)h->opt.recursive)) {
            *report = 1;
            *recurse |= (uint8_t)h->opt.recursive;
        }
    }
}

/* Adds (or refreshes) the kernel watch of path and its entry. Returns the entry, NULL when
 * not watched (counted). */
static watch *add_watch(am_inotify *h, const char *path, size_t n, int follow)
{
    if (h->fd < 0)
        return NULL;
    uint32_t mask = WATCH_MASK | (h->opt.open_events ? IN_OPEN : 0) |
                    (follow ? 0 : IN_DONT_FOLLOW);
    int wd = inotify_add_watch(h->fd, path, mask);
    if (wd < 0) {
        if (errno == ENOSPC)
            h->st.watch_limit++;
        else if (errno != ENOENT && errno != ENOTDIR)
            h->st.watch_errors++;
        return NULL;
    }
    int32_t key = wd;
    watch *w = watch_find(h, key);
    if (w != NULL) {
        if (w->len != n || memcmp(w->path, path, n) != 0) {
            /* The same inode under another name (a hard link, or a moved directory). */
            char *p = dup_n(path, n);
            if (p != NULL) {
                free(w->path);
                w->path = p;
                w->len = (uint32_t)n;
            }
        }
    } else {
        char *p = dup_n(path, n);
        uint32_t pos;
        int st = p == NULL ? AM_ERR_NOMEM : am_index_add(&h->watches, &key, sizeof key, &pos);
        if (st != AM_INDEX_ADDED) {
            free(p);
            inotify_rm_watch(h->fd, wd);
            h->st.watch_bound++;
            return NULL;
        }
        w = am_index_at(&h->watches, pos);
        w->wd = key;
        w->path = p;
        w->len = (uint32_t)n;
        h->st.watches_added++;
    }
    struct stat sb;
    w->is_dir = stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
    classify(h, w->path, w->len, &w->report, &w->recurse);
    return w;
}

static void drop_watch_at(am_inotify *h, uint32_t pos, int rm)
{
    watch *w = am_index_at(&h->watches, pos);
    if (rm && h->fd >= 0)
        inotify_rm_watch(h->fd, w->wd);
    free(w->path);
    am_index_remove_at(&h->watches, pos);
    h->st.watches_removed++;
}

/* ---- pending events ---- */

static void pend_release(pend *p)
{
    free(p->path);
    free(p->from);
    memset(p, 0, sizeof *p);
}

static int release_some(am_inotify *h, am_sink *sink, int force, uint64_t now,
                        uint64_t *appended);

/* Queues an event (path and from are taken over). A full ring writes its oldest event first
 * (counted), into sink when there is one. */
static void queue_event(am_inotify *h, am_sink *sink, uint8_t op, char *path, char *from,
                        uint8_t isdir, uint8_t moved, uint8_t scanned, uint64_t *appended)
{
    if (h->count == h->opt.max_pending) {
        h->st.pending_full++;
        if (sink != NULL)
            release_some(h, sink, 2, 0, appended); /* 2: the oldest one, whatever its wait */
        if (h->count == h->opt.max_pending) {
            pend_release(&h->ring[h->head]);
            h->head = (h->head + 1) % h->opt.max_pending;
            h->count--;
            h->st.dropped++;
        }
    }
    pend *p = &h->ring[(h->head + h->count) % h->opt.max_pending];
    p->ts = now_ms();
    p->op = op;
    p->path = path;
    p->from = from;
    p->isdir = isdir;
    p->moved = moved;
    p->scanned = scanned;
    h->count++;
}

static void queue_path(am_inotify *h, am_sink *sink, uint8_t op, const char *path, size_t n,
                       uint8_t isdir, uint8_t moved, uint8_t scanned, uint64_t *appended)
{
    char *p = dup_n(path, n);
    if (p == NULL) {
        h->st.dropped++;
        return;
    }
    queue_event(h, sink, op, p, NULL, isdir, moved, scanned, appended);
}

/* ---- directory trees ---- */

/* Watches dir and (recursive) every directory under it, depth first with an explicit stack
 * bounded by max_watches. emit: the entries found are new (a directory made after the
 * start): each becomes a `create` event marked `scan`. */
static void add_tree(am_inotify *h, am_sink *sink, const char *dir, size_t dn, int follow,
                     int emit, uint64_t *appended)
{
    size_t cap = 64, top = 0;
    char **stack = malloc(cap * sizeof *stack);
    if (stack == NULL)
        return;
    stack[top++] = dup_n(dir, dn);
    int first = 1;
    while (top > 0) {
        char *path = stack[--top];
        if (path == NULL)
            continue;
        size_t pn = strlen(path);
        watch *w = add_watch(h, path, pn, first && follow);
        first = 0;
        int recurse = w != NULL && w->recurse;
        int report = w != NULL && w->report;
        DIR *d = w != NULL && (recurse || emit) ? opendir(path) : NULL;
        struct dirent *de;
        while (d != NULL && (de = readdir(d)) != NULL) {
            const char *name = de->d_name;
            if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0')))
                continue;
            char child[PATH_MAX];
            if (!join_path(child, path, pn, name, strlen(name))) {
                h->st.long_paths++;
                continue;
            }
            int isdir = de->d_type == DT_DIR;
            if (de->d_type == DT_UNKNOWN) {
                struct stat sb;
                isdir = lstat(child, &sb) == 0 && S_ISDIR(sb.st_mode);
            }
            if (emit && report) {
                h->st.scanned++;
                queue_path(h, sink, OP_CREATE, child, strlen(child), (uint8_t)isdir,
                           MOVED_NONE, 1, appended);
            }
            if (!isdir || !recurse)
                continue;
            if (am_index_count(&h->watches) + top >= h->opt.max_watches) {
                h->st.watch_bound++;
                continue;
            }
            if (top == cap) {
                char **grown = realloc(stack, 2 * cap * sizeof *stack);
                if (grown == NULL) {
                    h->st.watch_bound++;
                    continue;
                }
                stack = grown;
                cap *= 2;
            }
            stack[top++] = dup_n(child, strlen(child));
        }
        if (d != NULL)
            closedir(d);
        free(path);
    }
    free(stack);
}

/* ---- roots ---- */

/* Watches a root: itself when it exists (a directory with its tree), else its nearest
 * existing parent, from which its creation is seen. emit: it was just made. */
static void install_root(am_inotify *h, am_sink *sink, root *r, int emit, uint64_t *appended)
{
    struct stat sb;
    if (stat(r->path, &sb) == 0) {
        r->pending = 0;
        if (S_ISDIR(sb.st_mode))
            add_tree(h, sink, r->path, r->len, 1, emit, appended);
        else
            add_watch(h, r->path, r->len, 1);
        return;
    }
    r->pending = 1;
    size_t n = r->len;
    memcpy(h->scratch, r->path, n);
    while (n > 1) {
        while (n > 1 && h->scratch[n - 1] != '/')
            n--;
        if (n > 1)
            n--; /* the slash, unless it is "/" */
        h->scratch[n] = '\0';
        if (stat(h->scratch, &sb) == 0 && S_ISDIR(sb.st_mode)) {
            add_watch(h, h->scratch, n, 1);
            return;
        }
    }
}

static void prune_watches(am_inotify *h);

/* A name appeared at path: a pending root it is (or leads to) is watched again. A root that
 * exists now was made after the start: it and what it holds already are `create` events. */
static void check_pending(am_inotify *h, am_sink *sink, const char *path, size_t n,
                          uint64_t *appended)
{
    int installed = 0;
    for (uint32_t i = 0; i < h->nroots; i++) {
        root *r = &h->roots[i];
        if (!r->pending || !under(r->path, r->len, path, n, 1))
            continue;
        struct stat sb;
        if (stat(r->path, &sb) == 0)
            queue_path(h, sink, OP_CREATE, r->path, r->len, (uint8_t)S_ISDIR(sb.st_mode),
                       MOVED_NONE, r->len != n, appended);
        install_root(h, sink, r, 1, appended);
        installed |= !r->pending;
    }
    if (installed)
        prune_watches(h); /* the parents it was watched from */
}

/* Removes the watches nobody needs: not under a root and not on the way to a pending one.
 * The others get their flags from the roots again. */
static void prune_watches(am_inotify *h)
{
    for (uint32_t pos = 0; pos < am_index_count(&h->watches);) {
        watch *w = am_index_at(&h->watches, pos);
        classify(h, w->path, w->len, &w->report, &w->recurse);
        int needed = w->report;
        for (uint32_t i = 0; i < h->nroots && !needed; i++)
            needed = h->roots[i].pending &&
                     under(h->roots[i].path, h->roots[i].len, w->path, w->len, 1);
        if (needed)
            pos++;
        else
            drop_watch_at(h, pos, 1); /* the last entry moved into pos: look at it again */
    }
}

/* Removes the watches of path and everything under it (moved out, or gone). */
static void drop_subtree(am_inotify *h, const char *path, size_t n)
{
    for (uint32_t pos = 0; pos < am_index_count(&h->watches);) {
        watch *w = am_index_at(&h->watches, pos);
        if (under(w->path, w->len, path, n, 1))
            drop_watch_at(h, pos, 1);
        else
            pos++;
    }
}

/* A directory moved from old to new: the watches under it follow. */
static void rename_subtree(am_inotify *h, const char *old, size_t on, const char *neu, size_t nn)
{
    for (uint32_t pos = 0; pos < am_index_count(&h->watches); pos++) {
        watch *w = am_index_at(&h->watches, pos);
        if (!under(w->path, w->len, old, on, 1))
            continue;
        size_t rest = w->len - on;
        if (nn + rest + 1 > PATH_MAX) {
            h->st.long_paths++;
            continue;
        }
        char *p = malloc(nn + rest + 1);
        if (p == NULL)
            continue;
        memcpy(p, neu, nn);
        memcpy(p + nn, w->path + on, rest);
        p[nn + rest] = '\0';
        free(w->path);
        w->path = p;
        w->len = (uint32_t)(nn + rest);
        classify(h, w->path, w->len, &w->report, &w->recurse);
    }
}

static void free_roots(root *roots, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        free(roots[i].path);
}

int am_inotify_set_paths(am_inotify *h, const char *list, size_t len)
{
    if (h == NULL || (list == NULL && len > 0))
        return AM_ERR_ARG;
    root fresh[MAX_ROOTS];
    uint32_t n = 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && list[i] != ',')
            continue;
        size_t pn = i - start;
        const char *p = list + start;
        start = i + 1;
        if (pn == 0 && len == 0)
            break;
        int ok = n < MAX_ROOTS && pn > 0 && pn < PATH_MAX && p[0] == '/' &&
                 memchr(p, '\0', pn) == NULL && (pn == 1 || p[pn - 1] != '/');
        int dup = 0;
        for (uint32_t j = 0; ok && j < n; j++)
            dup |= fresh[j].len == pn && memcmp(fresh[j].path, p, pn) == 0;
        if (dup)
            continue;
        char *copy = ok ? dup_n(p, pn) : NULL;
        if (copy == NULL) {
            free_roots(fresh, n);
            return ok ? AM_ERR_NOMEM : AM_ERR_ARG;
        }
        fresh[n].path = copy;
        fresh[n].len = (uint32_t)pn;
        fresh[n].pending = 0;
        n++;
    }
    /* Roots that stay keep their state; the new ones are installed after the prune. */
    uint8_t is_new[MAX_ROOTS];
    for (uint32_t i = 0; i < n; i++) {
        is_new[i] = 1;
        for (uint32_t j = 0; j < h->nroots; j++) {
            if (h->roots[j].len == fresh[i].len &&
                memcmp(h->roots[j].path, fresh[i].path, fresh[i].len) == 0) {
                fresh[i].pending = h->roots[j].pending;
                is_new[i] = 0;
            }
        }
    }
    free_roots(h->roots, h->nroots);
    memcpy(h->roots, fresh, n * sizeof *fresh);
    h->nroots = n;
    /* A new root is pending until installed: the prune keeps the parents it may need. */
    for (uint32_t i = 0; i < n; i++)
        if (is_new[i])
            h->roots[i].pending = 1;
    prune_watches(h);
    for (uint32_t i = 0; i < n; i++)
        if (is_new[i])
            install_root(h, NULL, &h->roots[i], 0, NULL);
    prune_watches(h); /* parents of roots that existed after all */
    return AM_OK;
}

/* ---- decoding ---- */

/* The end of a read: a MOVED_FROM still alone was a move out of the watched paths. */
static void flush_from(am_inotify *h, am_sink *sink, uint64_t *appended)
{
    if (!h->has_from)
        return;
    h->has_from = 0;
    h->st.moves_out++;
    if (h->from.isdir)
        drop_subtree(h, h->from.path, strlen(h->from.path));
    queue_event(h, sink, OP_MOVE, h->from.path, NULL, h->from.isdir, MOVED_OUT, 0, appended);
    h->from.path = NULL;
}

static void decode_one(am_inotify *h, am_sink *sink, const struct inotify_event *ev,
                       const char *name, size_t nn, uint64_t *appended)
{
    uint32_t m = ev->mask;
    if (m & IN_Q_OVERFLOW) {
        h->st.overflows++;
        flush_from(h, sink, appended);
        queue_event(h, sink, OP_OVERFLOW, NULL, NULL, 0, MOVED_NONE, 0, appended);
        return;
    }
    watch *w = watch_find(h, ev->wd);
    if (w == NULL) {
        h->st.unknown_wd++;
        return;
    }
    if (m & IN_IGNORED) {
        /* The kernel removed the watch (its inode is gone, or the file system unmounted). */
        uint32_t pos = am_index_find(&h->watches, &w->wd, sizeof w->wd);
        int was_root = 0;
        for (uint32_t i = 0; i < h->nroots; i++)
            if (h->roots[i].len == w->len && memcmp(h->roots[i].path, w->path, w->len) == 0) {
                h->roots[i].pending = 1;
                was_root = 1;
            }
        drop_watch_at(h, pos, 0);
        if (was_root)
            for (uint32_t i = 0; i < h->nroots; i++)
                if (h->roots[i].pending)
                    install_root(h, sink, &h->roots[i], 0, appended);
        return;
    }
    char full[PATH_MAX];
    if (nn > 0 && !join_path(full, w->path, w->len, name, nn)) {
        h->st.long_paths++;
        return;
    }
    uint8_t isdir = (m & IN_ISDIR) != 0;
    if (nn > 0 && (m & (IN_CREATE | IN_MOVED_TO)))
        check_pending(h, sink, full, strlen(full), appended);
    /* check_pending may add watches: the index may have moved w. */
    w = watch_find(h, ev->wd);
    if (w == NULL)
        return;
    if (nn == 0)
        memcpy(full, w->path, (size_t)w->len + 1);
    const char *path = full;
    size_t pn = strlen(full);
    if (!w->report) {
        h->st.outside++;
        return;
    }
    if (nn == 0) {
        /* The watched thing itself. A directory's parent reports what happens to it, unless
         * it is a root; a root moved away is watched again where its path leads. */
        int is_root = 0;
        for (uint32_t i = 0; i < h->nroots; i++)
            is_root |= h->roots[i].len == pn && memcmp(h->roots[i].path, path, pn) == 0;
        if (!is_root && w->is_dir)
            return;
        if (m & IN_MOVE_SELF) {
            drop_subtree(h, path, pn);
            for (uint32_t i = 0; i < h->nroots; i++)
                if (h->roots[i].len == pn && memcmp(h->roots[i].path, path, pn) == 0)
                    install_root(h, sink, &h->roots[i], 0, appended);
            queue_path(h, sink, OP_MOVE, path, pn, isdir, MOVED_OUT, 0, appended);
            return;
        }
        if (m & IN_DELETE_SELF) {
            queue_path(h, sink, OP_DELETE, path, pn, w->is_dir, MOVED_NONE, 0, appended);
            return;
        }
    }
    if (m & IN_MOVED_FROM) {
        flush_from(h, sink, appended);
        char *p = dup_n(path, pn);
        if (p == NULL)
            return;
        h->from.path = p;
        h->from.isdir = isdir;
        h->from_cookie = ev->cookie;
        h->has_from = 1;
        return;
    }
    if (m & IN_MOVED_TO) {
        char *to = dup_n(path, pn);
        if (to == NULL)
            return;
        if (h->has_from && h->from_cookie == ev->cookie) {
            h->has_from = 0;
            h->st.moves_paired++;
            if (isdir) {
                rename_subtree(h, h->from.path, strlen(h->from.path), to, pn);
                if (w->recurse)
                    add_tree(h, sink, to, pn, 0, 0, appended);
            }
            queue_event(h, sink, OP_MOVE, to, h->from.path, isdir, MOVED_PAIRED, 0, appended);
            h->from.path = NULL;
        } else {
            flush_from(h, sink, appended);
            h->st.moves_in++;
            if (isdir && w->recurse)
                add_tree(h, sink, to, pn, 0, 0, appended);
            queue_event(h, sink, OP_MOVE, to, NULL, isdir, MOVED_IN, 0, appended);
        }
        return;
    }
    flush_from(h, sink, appended);
    if (m & IN_CREATE) {
        if (isdir && w->recurse) {
            char *copy = dup_n(path, pn);
            if (copy == NULL)
                return;
            queue_event(h, sink, OP_CREATE, copy, NULL, 1, MOVED_NONE, 0, appended);
            /* Watched first, then scanned: see the top of the file. */
            char dir[PATH_MAX];
            memcpy(dir, path, pn + 1);
            add_tree(h, sink, dir, pn, 0, 1, appended);
            return;
        }
        queue_path(h, sink, OP_CREATE, path, pn, isdir, MOVED_NONE, 0, appended);
    }
    if (m & IN_MODIFY)
        queue_path(h, sink, OP_MODIFY, path, pn, isdir, MOVED_NONE, 0, appended);
    if (m & IN_ATTRIB)
        queue_path(h, sink, OP_ATTRIB, path, pn, isdir, MOVED_NONE, 0, appended);
    if (m & IN_OPEN)
        queue_path(h, sink, OP_OPEN, path, pn, isdir, MOVED_NONE, 0, appended);
    if (m & IN_CLOSE_WRITE)
        queue_path(h, sink, OP_CLOSE_WRITE, path, pn, isdir, MOVED_NONE, 0, appended);
    if (m & IN_DELETE)
        queue_path(h, sink, OP_DELETE, path, pn, isdir, MOVED_NONE, 0, appended);
}

static int decode_buffer(am_inotify *h, am_sink *sink, const uint8_t *data, size_t len,
                         size_t *off, uint64_t *appended)
{
    while (*off < len) {
        if (h->count == h->opt.max_pending && am_sink_full(sink))
            return AM_ERR_FULL;
        struct inotify_event ev;
        if (len - *off < (size_t)REC_HEADER) {
            h->st.malformed++;
            *off = len;
            break;
        }
        memcpy(&ev, data + *off, sizeof ev);
        if (ev.len > len - *off - (size_t)REC_HEADER) {
            h->st.malformed++;
            *off = len;
            break;
        }
        const char *name = (const char *)data + *off + REC_HEADER;
        size_t nn = strnlen(name, ev.len);
        /* A name with a slash is no name (the kernel never sends one). */
        if (memchr(name, '/', nn) != NULL) {
            h->st.malformed++;
            *off += (size_t)REC_HEADER + ev.len;
            continue;
        }
        h->st.records++;
        *off += (size_t)REC_HEADER + ev.len;
        decode_one(h, sink, &ev, name, nn, appended);
    }
    return AM_OK;
}

/* ---- the audit join ---- */

static int same_path(const void *entry, const void *key, size_t len, const void *ctx)
{
    (void)ctx;
    const actor *a = entry;
    return strlen(a->path) == len && memcmp(a->path, key, len) == 0;
}

/* What an operation at a path means to the audit. */
static int did_of(uint8_t op, int from)
{
    switch (op) {
    case OP_CREATE:
        return DID_CREATE;
    case OP_DELETE:
        return DID_DELETE;
    case OP_MOVE:
        return from ? DID_DELETE : DID_CREATE;
    default:
        return DID_CHANGE;
    }
}

/* The process behind an event at path: the latest the audit saw doing what the event says
 * (else, for a write or a chmod, the one that made the path; else any), no later than the
 * event was read and no older than actor_ttl_ms. NULL when none. */
static const who *actor_of(am_inotify *h, const char *path, uint8_t op, int from, uint64_t ts)
{
    if (path == NULL)
        return NULL;
    uint32_t pos = am_index_find(&h->actors, path, strlen(path));
    if (pos == AM_INDEX_NONE)
        return NULL;
    const actor *a = am_index_at(&h->actors, pos);
    int want = did_of(op, from);
    const int order[3][DID_KINDS] = {
        [DID_CREATE] = {DID_CREATE, DID_CHANGE, DID_DELETE},
        [DID_DELETE] = {DID_DELETE, DID_CHANGE, DID_CREATE},
        [DID_CHANGE] = {DID_CHANGE, DID_CREATE, DID_DELETE},
    };
    for (int i = 0; i < DID_KINDS; i++) {
        for (int k = 0; k < DID_DEPTH; k++) {
            const who *w = &a->did[order[want][i]][k];
            if (w->valid && w->ts <= ts + CLOCK_SLACK_MS && ts <= w->ts + h->opt.actor_ttl_ms)
                return w;
        }
    }
    return NULL;
}

/* Forgets actors older than the ttl (before a learn finds the table full). */
static void prune_actors(am_inotify *h, uint64_t now)
{
    for (uint32_t pos = 0; pos < am_index_count(&h->actors);) {
        actor *a = am_index_at(&h->actors, pos);
        if (a->newest + h->opt.actor_ttl_ms < now) {
            free(a->path);
            am_index_remove_at(&h->actors, pos);
        } else {
            pos++;
        }
    }
}

typedef struct audit_fields {
    int64_t ts, pid, uid, auid;
    uint8_t has_ts, has_pid, has_uid, has_auid;
    const uint8_t *exe, *comm, *cwd;
    uint32_t exe_n, comm_n, cwd_n;
    mpr paths, recs;
    uint8_t has_paths, has_recs;
} audit_fields;

static int key_is(const uint8_t *k, uint32_t n, const char *lit)
{
    return strlen(lit) == n && memcmp(k, lit, n) == 0;
}

static void copy_text(char *dst, size_t cap, const uint8_t *s, uint32_t n)
{
    size_t k = n < cap - 1 ? n : cap - 1;
    if (s != NULL)
        memcpy(dst, s, k);
    dst[s != NULL ? k : 0] = '\0';
}

static void learn(am_inotify *h, const audit_fields *f, const uint8_t *name, uint32_t nn,
                  int did)
{
    char path[PATH_MAX];
    if (nn == 0 || memchr(name, '\0', nn) != NULL)
        return;
    if (name[0] == '/') {
        if (nn >= PATH_MAX)
            return;
        memcpy(path, name, nn);
        path[nn] = '\0';
    } else {
        if (f->cwd == NULL || f->cwd_n == 0 || memchr(f->cwd, '\0', f->cwd_n) != NULL ||
            !join_path(path, (const char *)f->cwd, f->cwd_n, (const char *)name, nn))
            return;
    }
    size_t pn = strlen(path);
    uint32_t pos = am_index_find(&h->actors, path, pn);
    if (pos == AM_INDEX_NONE) {
        if (am_index_count(&h->actors) == h->opt.max_actors)
            prune_actors(h, f->has_ts ? (uint64_t)f->ts : now_ms());
        char *copy = dup_n(path, pn);
        if (copy == NULL || am_index_add(&h->actors, path, pn, &pos) != AM_INDEX_ADDED) {
            free(copy);
            h->st.actors_full++;
            return;
        }
        ((actor *)am_index_at(&h->actors, pos))->path = copy;
    }
    actor *a = am_index_at(&h->actors, pos);
    memmove(&a->did[did][1], &a->did[did][0], (DID_DEPTH - 1) * sizeof(who));
    who *w = &a->did[did][0];
    w->valid = 1;
    w->ts = f->has_ts && f->ts > 0 ? (uint64_t)f->ts : now_ms();
    w->pid = f->pid;
    w->uid = f->uid;
    w->auid = f->auid;
    w->has_pid = f->has_pid;
    w->has_uid = f->has_uid;
    w->has_auid = f->has_auid;
    copy_text(w->exe, sizeof w->exe, f->exe, f->exe_n);
    copy_text(w->comm, sizeof w->comm, f->comm, f->comm_n);
    if (w->ts > a->newest)
        a->newest = w->ts;
    h->st.actors_learned++;
}

static int did_of_nametype(const uint8_t *nt, uint32_t n)
{
    if (nt == NULL)
        return DID_CHANGE;
    if (key_is(nt, n, "CREATE"))
        return DID_CREATE;
    if (key_is(nt, n, "DELETE"))
        return DID_DELETE;
    return DID_CHANGE;
}

/* One map of path fields (an exec event's `paths` item: n, nt; an `audit` event's PATH
 * record's `f`: name, nametype): learned unless it is the PARENT. 0 when malformed. */
static int learn_item(am_inotify *h, const audit_fields *f, mpr *r, const char *name_key,
                      const char *type_key)
{
    uint32_t m;
    if (!mpr_map(r, &m))
        return 0;
    const uint8_t *name = NULL, *nt = NULL;
    uint32_t name_n = 0, nt_n = 0;
    for (uint32_t j = 0; j < m; j++) {
        const uint8_t *k;
        uint32_t kl;
        if (!mpr_str(r, &k, &kl))
            return 0;
        if (key_is(k, kl, name_key) && mpr_str(r, &name, &name_n))
            continue;
        if (key_is(k, kl, type_key) && mpr_str(r, &nt, &nt_n))
            continue;
        if (!mpr_skip(r))
            return 0;
    }
    if (name != NULL && !(nt != NULL && key_is(nt, nt_n, "PARENT")))
        learn(h, f, name, name_n, did_of_nametype(nt, nt_n));
    return 1;
}

static void learn_items(am_inotify *h, const audit_fields *f, const mpr *at, const char *name_key,
                        const char *type_key)
{
    mpr r = *at;
    uint32_t items;
    if (!mpr_array(&r, &items))
        return;
    for (uint32_t i = 0; i < items; i++)
        if (!learn_item(h, f, &r, name_key, type_key))
            return;
}

/* An `audit` event's records: each PATH record's fields (`f`). */
static void learn_records(am_inotify *h, const audit_fields *f)
{
    mpr r = f->recs;
    uint32_t items;
    if (!mpr_array(&r, &items))
        return;
    for (uint32_t i = 0; i < items; i++) {
        uint32_t m;
        if (!mpr_map(&r, &m))
            return;
        int is_path = 0;
        mpr fields = {NULL, 0, 0};
        for (uint32_t j = 0; j < m; j++) {
            const uint8_t *k, *v;
            uint32_t kl, vl;
            if (!mpr_str(&r, &k, &kl))
                return;
            if (key_is(k, kl, "type") && mpr_str(&r, &v, &vl)) {
                is_path = key_is(v, vl, "PATH");
                continue;
            }
            if (key_is(k, kl, "f"))
                fields = r;
            if (!mpr_skip(&r))
                return;
        }
        if (is_path && fields.data != NULL)
            learn_item(h, f, &fields, "name", "nametype");
    }
}

/* One event map: its process and its path items. 0 when malformed. */
static int audit_event(am_inotify *h, mpr *r)
{
    uint32_t n;
    if (!mpr_map(r, &n))
        return 0;
    audit_fields f;
    memset(&f, 0, sizeof f);
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *k;
        uint32_t kl;
        if (!mpr_str(r, &k, &kl))
            return 0;
        if (key_is(k, kl, "ts") && mpr_int(r, &f.ts)) {
            f.has_ts = 1;
        } else if (key_is(k, kl, "pid") && mpr_int(r, &f.pid)) {
            f.has_pid = 1;
        } else if (key_is(k, kl, "uid") && mpr_int(r, &f.uid)) {
            f.has_uid = 1;
        } else if (key_is(k, kl, "auid") && mpr_int(r, &f.auid)) {
            f.has_auid = 1;
        } else if (key_is(k, kl, "exe") && mpr_str(r, &f.exe, &f.exe_n)) {
        } else if (key_is(k, kl, "comm") && mpr_str(r, &f.comm, &f.comm_n)) {
        } else if (key_is(k, kl, "cwd") && mpr_str(r, &f.cwd, &f.cwd_n)) {
        } else if (key_is(k, kl, "paths")) {
            f.paths = *r;
            f.has_paths = 1;
            if (!mpr_skip(r))
                return 0;
        } else if (key_is(k, kl, "recs")) {
            f.recs = *r;
            f.has_recs = 1;
            if (!mpr_skip(r))
                return 0;
        } else if (!mpr_skip(r)) {
            return 0;
        }
    }
    if (f.has_paths)
        learn_items(h, &f, &f.paths, "n", "nt");
    if (f.has_recs)
        learn_records(h, &f);
    return 1;
}
int am_inotify_audit(am_inotify *h, const uint8_t *batch, size_t len)
{
    if (h == NULL || (batch == NULL && len > 0))
        return AM_ERR_ARG;
    if (h->opt.join_ms == 0)
        return AM_OK;
    mpr r = {batch, len, 0};
    uint32_t count;
    if (!mpr_array(&r, &count))
        return AM_OK;
    for (uint32_t i = 0; i < count; i++)
        if (!audit_event(h, &r))
            break;
    return AM_OK;
}

/* ---- writing events ---- */

static int put_kv_str(mp_buf *b, const char *k, const char *v, size_t n)
{
    int st = mp_cstr(b, k);
    return st == AM_OK ? mp_text(b, v, n) : st;
}

static int write_event(am_inotify *h, am_sink *sink, const pend *p, const who *a)
{
    mp_buf *b = sink_begin(sink);
    uint32_t n = 4 + (p->path != NULL) + (p->from != NULL) + (p->moved == MOVED_OUT ||
                 p->moved == MOVED_IN) + p->isdir + p->scanned;
    if (a != NULL)
        n += 1 + a->has_pid + a->has_uid + a->has_auid + (a->exe[0] != 0) + (a->comm[0] != 0);
    else
        n += 1;
    int st = mp_map(b, n);
    if (st == AM_OK) st = put_kv_str(b, "t", "fs", 2);
    if (st == AM_OK) st = put_kv_str(b, "src", "inotify", 7);
    if (st == AM_OK) st = mp_cstr(b, "ts");
    if (st == AM_OK) st = mp_uint(b, p->ts);
    if (st == AM_OK) st = mp_cstr(b, "op");
    if (st == AM_OK) st = mp_cstr(b, op_names[p->op]);
    if (st == AM_OK && p->path != NULL) st = put_kv_str(b, "path", p->path, strlen(p->path));
    if (st == AM_OK && p->from != NULL) st = put_kv_str(b, "from", p->from, strlen(p->from));
    if (st == AM_OK && p->moved == MOVED_OUT) st = put_kv_str(b, "moved", "out", 3);
    if (st == AM_OK && p->moved == MOVED_IN) st = put_kv_str(b, "moved", "in", 2);
    if (st == AM_OK && p->isdir) st = mp_cstr(b, "isdir");
    if (st == AM_OK && p->isdir) st = mp_bool(b, 1);
    if (st == AM_OK && p->scanned) st = mp_cstr(b, "scan");
    if (st == AM_OK && p->scanned) st = mp_bool(b, 1);
    if (a == NULL) {
        const char *why = h->opt.join_ms == 0 || p->op == OP_OVERFLOW ? "unavailable"
                                                                       : "unmatched";
        if (st == AM_OK) st = put_kv_str(b, "actor", why, strlen(why));
    } else {
        if (st == AM_OK) st = put_kv_str(b, "actor", "audit", 5);
        if (st == AM_OK && a->has_pid) st = mp_cstr(b, "pid");
        if (st == AM_OK && a->has_pid) st = mp_int(b, a->pid);
        if (st == AM_OK && a->has_uid) st = mp_cstr(b, "uid");
        if (st == AM_OK && a->has_uid) st = mp_int(b, a->uid);
        if (st == AM_OK && a->has_auid) st = mp_cstr(b, "auid");
        if (st == AM_OK && a->has_auid) st = mp_int(b, a->auid);
        if (st == AM_OK && a->exe[0]) st = put_kv_str(b, "exe", a->exe, strlen(a->exe));
        if (st == AM_OK && a->comm[0]) st = put_kv_str(b, "comm", a->comm, strlen(a->comm));
    }
    if (st != AM_OK) {
        sink_drop(sink);
        h->st.dropped++;
        return AM_OK;
    }
    if (sink_commit(sink) != AM_OK) {
        h->st.dropped++;
        return AM_OK;
    }
    h->st.events++;
    uint64_t *per[] = {&h->st.create, &h->st.modify, &h->st.attrib, &h->st.move, &h->st.delete,
                       &h->st.open, &h->st.close_write, NULL};
    if (per[p->op] != NULL)
        (*per[p->op])++;
    return AM_OK;
}

/* Writes events from the oldest on while their wait is over (force 1: all; 2: one, the
 * oldest, whatever its wait). Events keep their order: a waiting one holds those after it. */
static int release_some(am_inotify *h, am_sink *sink, int force, uint64_t now,
                        uint64_t *appended)
{
    while (h->count > 0) {
        pend *p = &h->ring[h->head];
        const who *a = NULL;
        if (h->opt.join_ms > 0 && p->op != OP_OVERFLOW) {
            /* Every event waits join_ms: the records of later changes of its path that come
             * meanwhile are told apart by their time, those of its own change must be in. */
            if (force == 0 && now < p->ts + h->opt.join_ms)
                return AM_OK;
            a = actor_of(h, p->path, p->op, 0, p->ts);
            if (a == NULL && p->from != NULL)
                a = actor_of(h, p->from, p->op, 1, p->ts);
            if (a != NULL)
                h->st.actors_matched++;
            else
                h->st.actors_unmatched++;
        }
        if (force != 2 && am_sink_full(sink))
            return AM_ERR_FULL;
        write_event(h, sink, p, a);
        if (appended != NULL)
            (*appended)++;
        pend_release(p);
        h->head = (h->head + 1) % h->opt.max_pending;
        h->count--;
        if (force == 2)
            return AM_OK;
    }
    return AM_OK;
}

int am_inotify_release(am_inotify *h, am_sink *sink, int force, uint64_t *appended)
{
    if (appended != NULL)
        *appended = 0;
    if (h == NULL || sink == NULL || (force != 0 && force != 1))
        return AM_ERR_ARG;
    if (force)
        flush_from(h, sink, appended);
    return release_some(h, sink, force, now_ms(), appended);
}

int am_inotify_decode(am_inotify *h, am_sink *sink, const uint8_t *data, size_t len,
                      uint64_t *appended)
{
    if (appended != NULL)
        *appended = 0;
    if (h == NULL || sink == NULL || (data == NULL && len > 0))
        return AM_ERR_ARG;
    size_t off = 0;
    decode_buffer(h, sink, data, len, &off, appended);
    flush_from(h, sink, appended);
    int st = release_some(h, sink, 0, now_ms(), appended);
    return off < len ? AM_ERR_FULL : st;
}

int am_inotify_drain(am_inotify *h, am_sink *sink, uint64_t *appended)
{
    if (appended == NULL || h == NULL || sink == NULL)
        return AM_ERR_ARG;
    *appended = 0;
    if (h->fd < 0)
        return AM_ERR_ARG;
    for (;;) {
        int st = release_some(h, sink, 0, now_ms(), appended);
        if (st != AM_OK)
            return st;
        if (h->rx_off < h->rx_len) {
            decode_buffer(h, sink, h->rx, h->rx_len, &h->rx_off, appended);
            if (h->rx_off < h->rx_len)
                return AM_ERR_FULL;
            continue;
        }
        if (am_sink_full(sink))
            return AM_ERR_FULL;
        ssize_t got = read(h->fd, h->rx, READ_BYTES);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                flush_from(h, sink, appended);
                return release_some(h, sink, 0, now_ms(), appended);
            }
            h->err = errno;
            return AM_INOTIFY_ERR_SYS;
        }
        if (got == 0)
            return AM_OK;
        h->st.reads++;
        h->rx_len = (size_t)got;
        h->rx_off = 0;
    }
}

/* ---- the handle ---- */

void am_inotify_default_options(struct am_inotify_options *out)
{
    if (out == NULL)
        return;
    out->recursive = 1;
    out->open_events = 0;
    out->max_watches = 65536;
    out->max_pending = 4096;
    out->join_ms = 0;
    out->actor_ttl_ms = 10000;
    out->max_actors = 256;
}

am_inotify *am_inotify_new(const struct am_inotify_options *opts)
{
    struct am_inotify_options o;
    am_inotify_default_options(&o);
    if (opts != NULL)
        o = *opts;
    if (o.recursive > 1 || o.open_events > 1 || o.max_watches < 1 ||
        o.max_watches > (1u << 20) || o.max_pending < 16 || o.max_pending > (1u << 20) ||
        o.join_ms > 60000 || o.actor_ttl_ms > 3600000 || o.max_actors < 1 ||
        o.max_actors > 65536)
        return NULL;
    am_inotify *h = calloc(1, sizeof *h);
    if (h == NULL)
        return NULL;
    h->opt = o;
    h->fd = -1;
    h->ring = calloc(o.max_pending, sizeof *h->ring);
    h->rx = malloc(READ_BYTES);
    if (h->ring == NULL || h->rx == NULL ||
        am_index_init(&h->watches, sizeof(watch), o.max_watches, same_wd, NULL, NULL) != AM_OK) {
        free(h->ring);
        free(h->rx);
        free(h);
        return NULL;
    }
    if (am_index_init(&h->actors, sizeof(actor), o.max_actors, same_path, NULL, NULL) != AM_OK) {
        am_index_release(&h->watches);
        free(h->ring);
        free(h->rx);
        free(h);
        return NULL;
    }
    return h;
}

void am_inotify_free(am_inotify *h)
{
    if (h == NULL)
        return;
    if (h->fd >= 0)
        close(h->fd);
    for (uint32_t i = 0; i < am_index_count(&h->watches); i++)
        free(((watch *)am_index_at(&h->watches, i))->path);
    am_index_release(&h->watches);
    for (uint32_t i = 0; i < am_index_count(&h->actors); i++)
        free(((actor *)am_index_at(&h->actors, i))->path);
    am_index_release(&h->actors);
    for (uint32_t i = 0; i < h->count; i++)
        pend_release(&h->ring[(h->head + i) % h->opt.max_pending]);
    free(h->from.path);
    free_roots(h->roots, h->nroots);
    free(h->ring);
    free(h->rx);
    free(h);
}

int am_inotify_open(am_inotify *h)
{
    if (h == NULL || h->fd >= 0)
        return AM_ERR_ARG;
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) {
        h->err = errno;
        return AM_INOTIFY_ERR_SYS;
    }
    h->fd = fd;
    return AM_OK;
}

int am_inotify_fileno(const am_inotify *h)
{
    return h == NULL ? -1 : h->fd;
}

int am_inotify_errno(const am_inotify *h)
{
    return h == NULL ? 0 : h->err;
}

int am_inotify_test_watch(am_inotify *h, int wd, const char *path, int report, int recurse)
{
    if (h == NULL || path == NULL || h->fd >= 0)
        return AM_ERR_ARG;
    size_t n = strnlen(path, PATH_MAX);
    if (n == 0 || n == PATH_MAX)
        return AM_ERR_ARG;
    int32_t key = wd;
    uint32_t pos;
    if (watch_find(h, key) != NULL)
        return AM_ERR_ARG;
    char *p = dup_n(path, n);
    if (p == NULL)
        return AM_ERR_NOMEM;
    int st = am_index_add(&h->watches, &key, sizeof key, &pos);
    if (st != AM_INDEX_ADDED) {
        free(p);
        return st < 0 ? st : AM_ERR_ARG;
    }
    watch *w = am_index_at(&h->watches, pos);
    w->wd = key;
    w->path = p;
    w->len = (uint32_t)n;
    w->report = report != 0;
    w->recurse = recurse != 0;
    w->is_dir = 1;
    h->st.watches_added++;
    return AM_OK;
}

void am_inotify_stats(const am_inotify *h, struct am_inotify_stats *out)
{
    if (out == NULL)
        return;
    memset(out, 0, sizeof *out);
    if (h == NULL)
        return;
    *out = h->st;
    out->watches = am_index_count(&h->watches);
    out->roots = h->nroots;
    for (uint32_t i = 0; i < h->nroots; i++)
        out->roots_pending += h->roots[i].pending;
}
