/* proc_scan.c: a process snapshot, or the changes since the last walk, from /proc (see core_proc_scan.h and
 * docs/sources/proc-scan.md). Each small file is read with one read(2) into a buffer the
 * handle or the stack owns and parsed by hand (procfs.c); every file of a process is opened
 * relative to its /proc/PID directory fd. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core.h"
#include "core_proc_scan.h"
#include "index.h"
#include "procfs.h"
#include "sink.h"

struct am_pscan {
    struct am_pscan_options opt;
    struct am_pscan_stats st;
    int proc_fd; /* /proc, O_PATH */
    int err;
    long clk_tck;
    long page_size;
    unsigned pidfd;       /* PF_PIDFD when the ids may come from pidfds, else 0 */
    DIR *walk;    /* the snapshot in progress, NULL between snapshots */
    uint64_t ts_ms;       /* of the snapshot in progress */
    uint64_t btime;       /* boot time, seconds since the epoch (/proc/stat btime) */
    int have_btime;
    char *cmdline;        /* max_argv_bytes */
    struct pf_process proc;
    /* changes: the processes of the previous walk (struct tracked by pid), each stamped with
     * the walk that last saw it. */
    am_index tracked;
    uint32_t gen;         /* the walk in progress */
    int learned;          /* a first walk has completed: changes are events from now on */
    int sweeping;         /* the walk is done; gone processes are being reported */
    uint32_t sweep_at;
};

struct tracked {
    int32_t pid;
    uint32_t gen;
    uint64_t starttime;
    char comm[16];
    uint8_t comm_len;
    uint8_t kthread;      /* kernel threads are tracked but never reported: no program runs */
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void am_pscan_default_options(struct am_pscan_options *out)
{
    if (out == NULL)
        return;
    out->max_argv_bytes = 32768;
    out->max_args = 256;
    out->changes = 0;
    out->max_tracked = 1u << 22;
}

static int same_pid(const void *entry, const void *key, size_t len, const void *ctx)
{
    (void)ctx;
    const struct tracked *t = entry;
    return len == sizeof t->pid && memcmp(&t->pid, key, len) == 0;
}

/* PF_PIDFD when this kernel answers PIDFD_GET_INFO and /proc is of this process's pid
 * namespace (its "self" is our pid), so that a pid read from /proc names the same process
 * to pidfd_open. */
static unsigned pidfd_usable(int proc_fd)
{
    char self[16], own[12];
    ssize_t n = readlinkat(proc_fd, "self", self, sizeof self);
    size_t own_len = pf_utoa((uint32_t)getpid(), own);
    if (n < 0 || (size_t)n != own_len || memcmp(self, own, own_len) != 0)
        return 0;
    struct pf_status ids;
    if (pf_pidfd_ids((int32_t)getpid(), &ids) != 0 || ids.uid[0] != (uint32_t)getuid() ||
        ids.uid[1] != (uint32_t)geteuid() || ids.gid[0] != (uint32_t)getgid() ||
        ids.gid[1] != (uint32_t)getegid())
        return 0;
    return PF_PIDFD;
}

am_pscan *am_pscan_new(const struct am_pscan_options *opts)
{
    struct am_pscan_options o;
    am_pscan_default_options(&o);
    if (opts != NULL)
        o = *opts;
    if (o.max_argv_bytes < 64 || o.max_argv_bytes > (1u << 24) || o.max_args < 1 ||
        o.max_args > 65536 || o.changes > 1 || o.max_tracked < 16 || o.max_tracked > (1u << 24))
        return NULL;
    am_pscan *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->opt = o;
    p->clk_tck = sysconf(_SC_CLK_TCK);
    if (p->clk_tck <= 0)
        p->clk_tck = 100;
    p->page_size = sysconf(_SC_PAGESIZE);
    if (p->page_size <= 0)
        p->page_size = 4096;
    p->cmdline = malloc(o.max_argv_bytes);
    p->proc_fd = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (p->cmdline == NULL || p->proc_fd < 0 ||
        am_index_init(&p->tracked, sizeof(struct tracked), o.max_tracked, same_pid, NULL, NULL) != AM_OK) {
        am_pscan_free(p);
        return NULL;
    }
    p->pidfd = pidfd_usable(p->proc_fd);
    return p;
}

static void pscan_reset(am_pscan *p)
{
    if (p != NULL && p->walk != NULL) {
        closedir(p->walk);
        p->walk = NULL;
    }
    if (p != NULL)
        p->sweeping = 0;
}

void am_pscan_free(am_pscan *p)
{
    if (p == NULL)
        return;
    pscan_reset(p);
    if (p->proc_fd >= 0)
        close(p->proc_fd);
    free(p->cmdline);
    am_index_release(&p->tracked);
    free(p);
}

int am_pscan_errno(const am_pscan *p)
{
    return p == NULL ? 0 : p->err;
}

void am_pscan_stats(const am_pscan *p, struct am_pscan_stats *out)
{
    if (out == NULL)
        return;
    if (p == NULL) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = p->st;
    out->tracked = am_index_count(&p->tracked);
}

/* "btime N" of /proc/stat; its intr line can be long, hence the line reader. */
static int read_btime(int proc_fd, uint64_t *btime)
{
    int fd = openat(proc_fd, "stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[4096];
    struct pf_lines r;
    pf_lines_init(&r, fd, buf, sizeof buf);
    const char *line;
    size_t len;
    int cut, found = -1;
    while (found != 0 && pf_lines_next(&r, &line, &len, &cut) == 1)
        found = pf_parse_btime_line(line, len, btime);
    close(fd);
    return found;
}

static int parse_pid(const char *name, int32_t *pid)
{
    int64_t v = 0;
    if (*name == '\0')
        return -1;
    for (const char *s = name; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        v = v * 10 + (*s - '0');
        if (v > INT32_MAX)
            return -1;
    }
    *pid = (int32_t)v;
    return 0;
}

#define TRY(x) \
    do { \
        if ((st = (x)) != AM_OK) \
            goto done; \
    } while (0)

static int put_int(mp_buf *e, const char *key, int64_t v)
{
    int st = mp_cstr(e, key);
    return st == AM_OK ? mp_int(e, v) : st;
}

static int put_uint(mp_buf *e, const char *key, uint64_t v)
{
    int st = mp_cstr(e, key);
    return st == AM_OK ? mp_uint(e, v) : st;
}

static int put_true(mp_buf *e, const char *key)
{
    int st = mp_cstr(e, key);
    return st == AM_OK ? mp_bool(e, 1) : st;
}

static int commit(am_pscan *p, am_sink *sink, int st)
{
    if (st != AM_OK) {
        sink_drop(sink);
        p->st.dropped++;
        return st;
    }
    if (sink_commit(sink) != AM_OK) {
        p->st.dropped++;
        return AM_ERR_FULL;
    }
    return AM_OK;
}

/* The event of one process read into p->proc. lean: without argv and exe (with `trunc`),
 * for an event that would not fit a batch otherwise. */
static int encode_process(am_pscan *p, mp_buf *e, int32_t pid, int lean, int *argv_cut,
                          const char *type)
{
    const struct pf_process *pr = &p->proc;
    const struct pf_stat *s = &pr->stat;
    int partial = (pr->result & PF_PARTIAL) != 0;
    int denied = (pr->result & PF_DENIED) != 0;
    int kthread = (pr->result & PF_KTHREAD) != 0;
    int argv = !lean && (pr->got & PF_WANT_CMDLINE) && pr->cmdline_len > 0;
    int ids = (pr->got & PF_WANT_STATUS) != 0;
    int exe = !lean && (pr->got & PF_WANT_EXE) != 0;
    uint32_t n = 9 + p->have_btime + 4 * ids + exe + argv + partial + denied + kthread;
    *argv_cut = 0;
    int st;
    size_t map_at = e->len;
    TRY(mp_map32(e, n));
    TRY(mp_cstr(e, "t"));
    TRY(mp_cstr(e, type));
    TRY(put_uint(e, "ts", p->ts_ms));
    TRY(mp_cstr(e, "src"));
    TRY(mp_cstr(e, "proc"));
    TRY(put_int(e, "pid", pid));
    TRY(put_int(e, "ppid", s->ppid));
    if (ids) {
        TRY(put_int(e, "uid", pr->status.uid[0]));
        TRY(put_int(e, "euid", pr->status.uid[1]));
        TRY(put_int(e, "gid", pr->status.gid[0]));
        TRY(put_int(e, "egid", pr->status.gid[1]));
    }
    TRY(mp_cstr(e, "comm"));
    TRY(mp_text(e, s->comm, s->comm_len));
    if (exe) {
        TRY(mp_cstr(e, "exe"));
        TRY(mp_text(e, pr->exe, pr->exe_len));
    }
    if (argv) {
        TRY(mp_cstr(e, "argv"));
        TRY(pf_encode_argv(e, p->cmdline, pr->cmdline_len, pr->cmdline_full, p->opt.max_args,
                               argv_cut));
    }
    if (p->have_btime) {
        /* start: boot time (whole seconds, as /proc/stat gives it) + starttime ticks. */
        uint64_t start = p->btime * 1000u + s->starttime * 1000u / (uint64_t)p->clk_tck;
        TRY(put_uint(e, "start", start));
    }
    TRY(mp_cstr(e, "state"));
    TRY(mp_str(e, &s->state, 1));
    TRY(put_int(e, "threads", s->threads));
    TRY(put_int(e, "rss", s->rss_pages * (int64_t)p->page_size));
    if (kthread)
        TRY(put_true(e, "kthread"));
    if (partial)
        TRY(put_true(e, "partial"));
    if (denied)
        TRY(put_true(e, "denied"));
    if (lean || *argv_cut || (pr->result & (PF_ARGV_CUT | PF_PATH_CUT))) {
        TRY(put_true(e, "trunc"));
        n++;
    }
    mp_patch_u32(e, map_at, n);
done:
    return st;
}

/* ---- changes: the table of processes seen ---- */

static struct tracked *find(am_pscan *p, int32_t pid)
{
    uint32_t pos = am_index_find(&p->tracked, &pid, sizeof pid);
    return pos == AM_INDEX_NONE ? NULL : am_index_at(&p->tracked, pos);
}

/* A new entry for pid (not tracked yet); NULL at max_tracked or without memory. */
static struct tracked *insert(am_pscan *p, int32_t pid)
{
    uint32_t pos;
    if (am_index_add(&p->tracked, &pid, sizeof pid, &pos) != AM_INDEX_ADDED)
        return NULL;
    struct tracked *t = am_index_at(&p->tracked, pos);
    t->pid = pid;
    return t;
}

static int encode_exit(am_pscan *p, mp_buf *e, const struct tracked *t)
{
    int st;
    TRY(mp_map(e, 6 + (p->have_btime ? 1 : 0)));
    TRY(mp_cstr(e, "t"));
    TRY(mp_cstr(e, "exit"));
    TRY(put_uint(e, "ts", p->ts_ms));
    TRY(mp_cstr(e, "src"));
    TRY(mp_cstr(e, "proc"));
    TRY(put_int(e, "pid", t->pid));
    TRY(mp_cstr(e, "comm"));
    TRY(mp_text(e, t->comm, t->comm_len));
    TRY(put_true(e, "poll"));
    if (p->have_btime)
        TRY(put_uint(e, "start", p->btime * 1000u + t->starttime * 1000u / (uint64_t)p->clk_tck));
done:
    return st;
}

/* The events of the processes the last walk did not see; resumable when the sink fills. */
static int sweep(am_pscan *p, am_sink *sink, uint64_t *appended)
{
    while (p->sweep_at < am_index_count(&p->tracked)) {
        struct tracked *t = am_index_at(&p->tracked, p->sweep_at);
        if (t->gen == p->gen) {
            p->sweep_at++;
            continue;
        }
        if (p->learned && !t->kthread) {
            if (am_sink_full(sink))
                return AM_ERR_FULL;
            if (commit(p, sink, encode_exit(p, sink_begin(sink), t)) == AM_OK) {
                (*appended)++;
                p->st.exited++;
            }
        }
        am_index_remove_at(&p->tracked, p->sweep_at); /* the last one moved here: look again */
    }
    p->sweeping = 0;
    p->learned = 1;
    p->st.scans++;
    return AM_OK;
}

/* One process: 0 appended, 1 skipped (vanished or unchanged), <0 refused by the sink. */
static int scan_one(am_pscan *p, am_sink *sink, int dir_fd, int32_t pid)
{
    struct pf_process *pr = &p->proc;
    const char *type = "process";
    if (p->opt.changes) {
        pf_process_read(dir_fd, pid, PF_WANT_STAT | PF_PATHS, pr, p->cmdline, p->opt.max_argv_bytes);
        if (!(pr->got & PF_WANT_STAT)) {
            p->st.vanished++;
            return 1;
        }
        struct tracked *t = find(p, pid);
        /* Same pid, start time and comm: the same process running the same program. A new
         * comm at the same start time is an exec within the process (counted as new). */
        size_t clen = pr->stat.comm_len < sizeof t->comm ? pr->stat.comm_len : sizeof t->comm;
        if (t != NULL && t->starttime == pr->stat.starttime && t->comm_len == clen &&
            memcmp(t->comm, pr->stat.comm, clen) == 0) {
            t->gen = p->gen;
            return 1;
        }
        if (t == NULL)
            t = insert(p, pid);
        if (t == NULL) {
            p->st.untracked++; /* reported as new again at the next walk */
        } else {
            t->gen = p->gen;
            t->starttime = pr->stat.starttime;
            size_t n = pr->stat.comm_len < sizeof t->comm ? pr->stat.comm_len : sizeof t->comm;
            memcpy(t->comm, pr->stat.comm, n);
            t->comm_len = (uint8_t)n;
            t->kthread = (pr->stat.flags & PF_FLAG_KTHREAD) != 0;
        }
        if (!p->learned || (pr->stat.flags & PF_FLAG_KTHREAD))
            return 1;
        p->st.started++;
        type = "exec";
    }
    pf_process_read(dir_fd, pid, PF_WANT_STAT | PF_WANT_STATUS | PF_WANT_CMDLINE | PF_WANT_EXE |
                    PF_PATHS | p->pidfd, pr, p->cmdline, p->opt.max_argv_bytes);
    if (!(pr->got & PF_WANT_STAT)) {
        p->st.vanished++;
        return 1;
    }
    int argv_cut = 0;
    int st = encode_process(p, sink_begin(sink), pid, 0, &argv_cut, type);
    if (st == AM_ERR_FULL) { /* larger than a batch: again without argv and exe */
        p->st.oversize++;
        st = encode_process(p, sink_begin(sink), pid, 1, &argv_cut, type);
    }
    st = commit(p, sink, st);
    if (st != AM_OK)
        return st;
    p->st.processes++;
    p->st.kthreads += (pr->result & PF_KTHREAD) != 0;
    p->st.partial += (pr->result & PF_PARTIAL) != 0;
    p->st.denied += (pr->result & PF_DENIED) != 0;
    if (argv_cut || (pr->result & PF_ARGV_CUT))
        p->st.argv_truncated++;
    return 0;
}

int am_pscan_run(am_pscan *p, am_sink *sink, uint64_t *appended)
{
    if (p == NULL || sink == NULL || appended == NULL)
        return AM_ERR_ARG;
    *appended = 0;
    if (p->sweeping)
        return sweep(p, sink, appended);
    if (p->walk == NULL) {
        int fd = openat(p->proc_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
            p->err = errno;
            return AM_PSCAN_ERR_SYS;
        }
        p->walk = fdopendir(fd);
        if (p->walk == NULL) {
            p->err = errno;
            close(fd);
            return AM_PSCAN_ERR_SYS;
        }
        p->ts_ms = now_ms();
        p->have_btime = read_btime(p->proc_fd, &p->btime) == 0;
        p->gen++;
        if (p->gen == 0) /* a wrap: no entry may look seen by this walk */
            p->gen = 1;
    }
    int dir_fd = dirfd(p->walk);
    for (;;) {
        if (am_sink_full(sink))
            return AM_ERR_FULL;
        errno = 0;
        struct dirent *d = readdir(p->walk);
        if (d == NULL) {
            int err = errno;
            pscan_reset(p);
            if (err != 0) {
                p->err = err;
                return AM_PSCAN_ERR_SYS;
            }
            if (p->opt.changes) {
                p->sweeping = 1;
                p->sweep_at = 0;
                return sweep(p, sink, appended);
            }
            p->st.scans++;
            return AM_OK;
        }
        int32_t pid;
        if ((d->d_type != DT_DIR && d->d_type != DT_UNKNOWN) || parse_pid(d->d_name, &pid) != 0)
            continue;
        if (scan_one(p, sink, dir_fd, pid) == 0)
            (*appended)++;
    }
}
