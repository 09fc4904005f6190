/* procfs.c: small /proc files read with one read(2) into the caller's buffer and parsed by
 * hand (see procfs.h). No stdio, no allocation: the sources own every buffer. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core.h"
#include "procfs.h"

/* ---- reading ---- */

/* A read of /proc/PID failed: refused (EACCES, EPERM: another security context) or lost
 * (the process went away, or its answer made no sense). */
static void note_failure(unsigned bit, int err, unsigned *failed, unsigned *denied)
{
    if (err == EACCES || err == EPERM)
        *denied |= bit;
    else
        *failed |= bit;
}

static ssize_t read_retry(int fd, char *buf, size_t len)
{
    for (;;) {
        ssize_t n = read(fd, buf, len);
        if (n >= 0 || errno != EINTR)
            return n;
    }
}

ssize_t pf_read_file(int dirfd, const char *path, char *buf, size_t cap)
{
    if (buf == NULL || cap < 2) {
        errno = EINVAL;
        return -1;
    }
    int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -1;
    /* A /proc seq_file hands over the whole text (up to len) in the first read. */
    ssize_t n = read_retry(fd, buf, cap - 1);
    int saved = errno;
    close(fd);
    if (n < 0) {
        errno = saved;
        return -1;
    }
    buf[n] = '\0';
    return n;
}

ssize_t pf_read_all(int dirfd, const char *path, char *buf, size_t cap, int *full,
                    int short_is_end)
{
    *full = 0;
    int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -1;
    size_t len = 0;
    while (len < cap) {
        ssize_t n = read_retry(fd, buf + len, cap - len);
        if (n < 0) {
            int saved = errno;
            close(fd);
            errno = saved;
            return -1;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        /* /proc/PID/cmdline hands over everything it has, across pages, in one read: a
         * short read is the end (this saves the read that would return 0). */
        if (short_is_end && len < cap)
            break;
    }
    if (len == cap) {
        char probe;
        ssize_t n = read_retry(fd, &probe, 1);
        *full = n > 0;
    }
    close(fd);
    return (ssize_t)len;
}

void pf_lines_init(struct pf_lines *r, int fd, char *buf, size_t cap)
{
    r->fd = fd;
    r->buf = buf;
    r->cap = cap;
    r->start = r->end = 0;
    r->eof = 0;
    r->skipping = 0;
}

int pf_lines_next(struct pf_lines *r, const char **line, size_t *len, int *cut)
{
    *cut = 0;
    for (;;) {
        char *nl = r->end > r->start ? memchr(r->buf + r->start, '\n', r->end - r->start)
                                      : NULL;
        if (nl != NULL) {
            size_t at = r->start;
            size_t n = (size_t)(nl - (r->buf + at));
            r->start = at + n + 1;
            if (r->skipping) { /* the tail of a line already returned cut */
                r->skipping = 0;
                continue;
            }
            *line = r->buf + at;
            *len = n;
            return 1;
        }
        if (r->eof) {
            if (r->end > r->start && !r->skipping) { /* a last line without '\n' */
                *line = r->buf + r->start;
                *len = r->end - r->start;
                r->start = r->end;
                return 1;
            }
            return 0;
        }
        if (r->start == 0 && r->end == r->cap) {
            /* A line longer than the buffer: hand out its head, skip the rest. */
            int was_skipping = r->skipping;
            r->start = r->end = 0;
            r->skipping = 1;
            if (!was_skipping) {
                *line = r->buf;
                *len = r->cap;
                *cut = 1;
                return 1;
            }
            continue;
        }
        if (r->start > 0) { /* keep the partial line, make room after it */
            memmove(r->buf, r->buf + r->start, r->end - r->start);
            r->end -= r->start;
            r->start = 0;
        }
        ssize_t n = read_retry(r->fd, r->buf + r->end, r->cap - r->end);
        if (n < 0)
            return -1;
        if (n == 0)
            r->eof = 1;
        r->end += (size_t)n;
    }
}

/* ---- number parsing ---- */

/* Reads a decimal (optionally negative) at *p, below end; advances *p. -1 when there is
 * no digit or the value overflows int64. */
static int parse_i64(const char **p, const char *end, int64_t *out)
{
    const char *s = *p;
    int neg = 0;
    if (s < end && *s == '-') {
        neg = 1;
        s++;
    }
    if (s >= end || *s < '0' || *s > '9')
        return -1;
    uint64_t v = 0;
    while (s < end && *s >= '0' && *s <= '9') {
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
        s++;
    }
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1)
            return -1;
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    } else {
        if (v > (uint64_t)INT64_MAX)
            return -1;
        *out = (int64_t)v;
    }
    *p = s;
    return 0;
}

static int parse_u64(const char **p, const char *end, uint64_t *out)
{
    const char *s = *p;
    if (s >= end || *s < '0' || *s > '9')
        return -1;
    uint64_t v = 0;
    while (s < end && *s >= '0' && *s <= '9') {
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
        s++;
    }
    *out = v;
    *p = s;
    return 0;
}

static void skip_blanks(const char **p, const char *end)
{
    while (*p < end && (**p == ' ' || **p == '\t'))
        (*p)++;
}

static int is_key(const char *line, size_t len, const char *key, size_t key_len)
{
    return len >= key_len && memcmp(line, key, key_len) == 0;
}

/* ---- parsers ---- */

int pf_parse_stat(const char *buf, size_t len, struct pf_stat *out)
{
    memset(out, 0, sizeof *out);
    const char *end = buf + len;
    const char *p = buf;
    int64_t v;
    if (parse_i64(&p, end, &v) != 0 || v < 0 || v > INT32_MAX)
        return -1;
    out->pid = (int32_t)v;
    const char *open = memchr(p, '(', (size_t)(end - p));
    if (open == NULL)
        return -1;
    /* comm may hold ')' and spaces: it ends at the last ')'. */
    const char *close = NULL;
    for (const char *q = end; q > open + 1;) {
        q--;
        if (*q == ')') {
            close = q;
            break;
        }
    }
    if (close == NULL)
        return -1;
    size_t comm_len = (size_t)(close - open - 1);
    if (comm_len > sizeof out->comm)
        comm_len = sizeof out->comm;
    memcpy(out->comm, open + 1, comm_len);
    out->comm_len = comm_len;
    p = close + 1;
    skip_blanks(&p, end);
    if (p >= end)
        return -1;
    out->state = *p++;
    /* Fields 4 (ppid) .. 24 (rss), as numbered in proc(5). */
    for (int field = 4; field <= 24; field++) {
        skip_blanks(&p, end);
        if (parse_i64(&p, end, &v) != 0)
            return -1;
        switch (field) {
        case 4:
            if (v < 0 || v > INT32_MAX)
                return -1;
            out->ppid = (int32_t)v;
            break;
        case 9:
            out->flags = (uint32_t)v;
            break;
        case 20:
            out->threads = v;
            break;
        case 22:
            if (v < 0)
                return -1;
            out->starttime = (uint64_t)v;
            break;
        case 24:
            out->rss_pages = v;
            break;
        default:
            break;
        }
    }
    return 0;
}

static int parse_ids(const char *p, const char *end, uint32_t ids[4])
{
    for (int k = 0; k < 4; k++) {
        uint64_t v;
        skip_blanks(&p, end);
        if (parse_u64(&p, end, &v) != 0 || v > UINT32_MAX)
            return -1;
        ids[k] = (uint32_t)v;
    }
    return 0;
}

int pf_parse_status(const char *buf, size_t len, struct pf_status *out)
{
    memset(out, 0, sizeof *out);
    const char *p = buf, *end = buf + len;
    while (p < end && !(out->has_uid && out->has_gid && out->has_ppid)) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl != NULL ? nl : end;
        size_t n = (size_t)(eol - p);
        if (is_key(p, n, "Uid:", 4))
            out->has_uid = parse_ids(p + 4, eol, out->uid) == 0;
        else if (is_key(p, n, "Gid:", 4))
            out->has_gid = parse_ids(p + 4, eol, out->gid) == 0;
        else if (is_key(p, n, "PPid:", 5)) {
            const char *q = p + 5;
            int64_t v;
            skip_blanks(&q, eol);
            if (parse_i64(&q, eol, &v) == 0 && v >= 0 && v <= INT32_MAX) {
                out->ppid = (int32_t)v;
                out->has_ppid = 1;
            }
        }
        p = eol + (nl != NULL);
    }
    return out->has_uid && out->has_gid ? 0 : -1;
}

int pf_parse_btime_line(const char *line, size_t len, uint64_t *btime)
{
    if (!is_key(line, len, "btime ", 6))
        return -1;
    const char *p = line + 6, *end = line + len;
    skip_blanks(&p, end);
    return parse_u64(&p, end, btime);
}

int pf_encode_argv(mp_buf *e, const char *buf, size_t len, int more, uint32_t max_args,
                   int *cut)
{
    *cut = 0;
    if (more) {
        /* The read stopped inside an argument: keep the arguments that ended before it. */
        while (len > 0 && buf[len - 1] != '\0')
            len--;
        *cut = 1;
    }
    /* A trailing NUL terminates the last argument; it does not start another one. */
    size_t body = len > 0 && buf[len - 1] == '\0' ? len - 1 : len;
    uint32_t count = 0;
    if (len > 0) {
        count = 1;
        for (const char *p = buf; (p = memchr(p, '\0', (size_t)(buf + body - p))) != NULL;
             p++) {
            count++;
            if (count > max_args)
                break;
        }
    }
    if (count > max_args) {
        count = max_args;
        *cut = 1;
    }
    int st = mp_array(e, count);
    const char *p = buf, *end = buf + body;
    for (uint32_t k = 0; k < count && st == AM_OK; k++) {
        const char *nul = memchr(p, '\0', (size_t)(end - p));
        const char *stop = nul != NULL ? nul : end;
        st = mp_text(e, p, (size_t)(stop - p));
        p = stop + (nul != NULL);
    }
    return st;
}

size_t pf_utoa(uint32_t v, char *buf)
{
    char tmp[12];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t k = 0; k < n; k++)
        buf[k] = tmp[n - 1 - k];
    buf[n] = '\0';
    return n;
}

/* ---- one process ---- */

/* struct pidfd_info and PIDFD_GET_INFO of <linux/pidfd.h> (Linux 6.13), declared here because
 * the C libraries' headers of the boards' toolchains predate them. The kernel copies at most
 * the size the command encodes, so this first version of the layout stays valid. */
struct pf_pidfd_info {
    uint64_t mask;
    uint64_t cgroupid;
    uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
    uint32_t spare0[1];
};
#define PF_PIDFD_INFO_CREDS 2u /* PIDFD_INFO_CREDS: ask for the ids */
#define PF_PIDFD_GET_INFO _IOWR(0xFF, 11, struct pf_pidfd_info)

int pf_pidfd_ids(int32_t pid, struct pf_status *out)
{
#ifdef SYS_pidfd_open
    int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0u);
    if (fd < 0)
        return -1;
    struct pf_pidfd_info info;
    memset(&info, 0, sizeof info);
    info.mask = PF_PIDFD_INFO_CREDS;
    int st = ioctl(fd, PF_PIDFD_GET_INFO, &info);
    int saved = errno;
    close(fd);
    if (st != 0) {
        errno = saved;
        return -1;
    }
    if (!(info.mask & PF_PIDFD_INFO_CREDS) || info.ppid > INT32_MAX) {
        errno = EINVAL;
        return -1;
    }
    memset(out, 0, sizeof *out);
    out->uid[0] = info.ruid;
    out->uid[1] = info.euid;
    out->uid[2] = info.suid;
    out->uid[3] = info.fsuid;
    out->gid[0] = info.rgid;
    out->gid[1] = info.egid;
    out->gid[2] = info.sgid;
    out->gid[3] = info.fsgid;
    out->ppid = (int32_t)info.ppid;
    out->has_uid = out->has_gid = out->has_ppid = 1;
    return 0;
#else
    (void)pid;
    (void)out;
    errno = ENOSYS;
    return -1;
#endif
}

void pf_process_read(int proc_dirfd, int32_t pid, unsigned want, struct pf_process *p,
                     char *cmdline, size_t cap)
{
    p->got = 0;
    p->result = 0;
    p->cmdline_len = 0;
    p->cmdline_full = 0;
    p->exe_len = p->cwd_len = 0;
    char name[12];
    if (pid <= 0) {
        p->result = PF_GONE;
        return;
    }
    size_t name_len = pf_utoa((uint32_t)pid, name);
    /* Either names relative to the PID directory fd, or "PID/name" relative to /proc. */
    int dfd;
    char path_stat[24], path_status[24], path_cmdline[24], path_exe[24], path_cwd[24];
    const char *f_stat = "stat", *f_status = "status", *f_cmdline = "cmdline", *f_exe = "exe",
               *f_cwd = "cwd";
    if (want & PF_PATHS) {
        dfd = proc_dirfd;
        struct {
            char *buf;
            const char **name;
        } paths[] = {{path_stat, &f_stat}, {path_status, &f_status},
                     {path_cmdline, &f_cmdline}, {path_exe, &f_exe}, {path_cwd, &f_cwd}};
        for (size_t k = 0; k < sizeof paths / sizeof paths[0]; k++) {
            size_t leaf = strlen(*paths[k].name);
            memcpy(paths[k].buf, name, name_len);
            paths[k].buf[name_len] = '/';
            memcpy(paths[k].buf + name_len + 1, *paths[k].name, leaf + 1);
            *paths[k].name = paths[k].buf;
        }
    } else {
        dfd = openat(proc_dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0) {
            p->result = PF_GONE;
            return;
        }
    }
    unsigned failed = 0, denied = 0;
    char small[4096];
    if (want & PF_WANT_STAT) {
        ssize_t n = pf_read_file(dfd, f_stat, small, sizeof small);
        if (n > 0 && pf_parse_stat(small, (size_t)n, &p->stat) == 0)
            p->got |= PF_WANT_STAT;
        else
            note_failure(PF_WANT_STAT, n < 0 ? errno : EBADMSG, &failed, &denied);
    }
    /* The ids through the pid's pidfd: a third of the cost of rendering the status text.
     * Trusted only when it names the process stat just described (same parent), so that a
     * pid reused in between, or a /proc of another pid namespace, falls back to the file. */
    if ((want & PF_WANT_STATUS) && (want & PF_PIDFD) && (p->got & PF_WANT_STAT) &&
        pf_pidfd_ids(pid, &p->status) == 0 && p->status.ppid == p->stat.ppid)
        p->got |= PF_WANT_STATUS;
    if ((want & PF_WANT_STATUS) && !(p->got & PF_WANT_STATUS)) {
        ssize_t n = pf_read_file(dfd, f_status, small, sizeof small);
        if (n > 0 && pf_parse_status(small, (size_t)n, &p->status) == 0)
            p->got |= PF_WANT_STATUS;
        else
            note_failure(PF_WANT_STATUS, n < 0 ? errno : EBADMSG, &failed, &denied);
    }
    int kthread = (p->got & PF_WANT_STAT) && (p->stat.flags & PF_FLAG_KTHREAD);
    int zombie = (p->got & PF_WANT_STAT) && (p->stat.state == 'Z' || p->stat.state == 'X');
    if (kthread)
        p->result |= PF_KTHREAD;
    /* A kernel thread has no memory of its own: its cmdline is empty and its exe link
     * answers ENOENT, always; the four system calls that would say so are skipped. */
    if (kthread && (want & PF_WANT_CMDLINE) && cmdline != NULL && cap > 0)
        p->got |= PF_WANT_CMDLINE;
    if (!kthread && (want & PF_WANT_CMDLINE) && cmdline != NULL && cap > 0) {
        int full = 0;
        ssize_t n = pf_read_all(dfd, f_cmdline, cmdline, cap, &full, 1);
        if (n >= 0) {
            p->cmdline_len = (size_t)n;
            p->cmdline_full = full;
            if (full)
                p->result |= PF_ARGV_CUT;
            /* A live user process always has an argv; an empty one means it is exiting. */
            if (n > 0 || kthread || zombie)
                p->got |= PF_WANT_CMDLINE;
            else
                failed |= PF_WANT_CMDLINE;
        } else {
            note_failure(PF_WANT_CMDLINE, errno, &failed, &denied);
        }
    }
    /* exe and cwd: ENOENT is what a kernel thread or a zombie answers, not a loss. */
    if ((want & PF_WANT_EXE) && !kthread) {
        ssize_t n = readlinkat(dfd, f_exe, p->exe, sizeof p->exe);
        if (n >= 0) {
            if ((size_t)n == sizeof p->exe) {
                p->result |= PF_PATH_CUT;
                n--;
            }
            p->exe_len = (size_t)n;
            p->got |= PF_WANT_EXE;
        } else if (!((kthread || zombie) && errno == ENOENT)) {
            note_failure(PF_WANT_EXE, errno, &failed, &denied);
        }
    }
    if (want & PF_WANT_CWD) {
        ssize_t n = readlinkat(dfd, f_cwd, p->cwd, sizeof p->cwd);
        if (n >= 0) {
            if ((size_t)n == sizeof p->cwd) {
                p->result |= PF_PATH_CUT;
                n--;
            }
            p->cwd_len = (size_t)n;
            p->got |= PF_WANT_CWD;
        } else if (!((kthread || zombie) && errno == ENOENT)) {
            note_failure(PF_WANT_CWD, errno, &failed, &denied);
        }
    }
    if (!(want & PF_PATHS))
        close(dfd);
    if (p->got == 0 && denied == 0)
        p->result |= PF_GONE;
    else if (failed != 0)
        p->result |= PF_PARTIAL;
    if (denied != 0)
        p->result |= PF_DENIED;
}
