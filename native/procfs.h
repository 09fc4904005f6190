/* procfs.h: reading /proc for the proc connector (exec enrichment) and the /proc scanner.
 * Private to the core (no core_ prefix): small-file reads into caller buffers with plain
 * read(2), hand-written parsers over those buffers (stat, status, meminfo, cpuinfo, uptime,
 * loadavg; the fuzz harness fuzz_procfs.c drives them directly), and the per-process reader
 * both sources share, which encodes what it found into an event map. */
#ifndef AM_PROCFS_H
#define AM_PROCFS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "msgpack.h"

/* ---- reading ---- */

/* Reads the file at dirfd-relative path: up to cap - 1 bytes, NUL-terminated. Returns the
 * length, or -1 with errno set (ENOENT / ESRCH: the process is gone). */
ssize_t pf_read_file(int dirfd, const char *path, char *buf, size_t cap);

/* Reads a whole file into buf (cap bytes, not NUL-terminated). *full is set when the file
 * did not fit, i.e. holds more than cap bytes. short_is_end: a read that returns less than
 * asked is the end (files that answer in one piece). Returns the length or -1 (errno). */
ssize_t pf_read_all(int dirfd, const char *path, char *buf, size_t cap, int *full,
                    int short_is_end);

/* A line reader over a file descriptor with a fixed buffer: a line longer than the buffer
 * comes back cut to it (*cut set), the rest of it is skipped. */
struct pf_lines {
    int fd;
    char *buf;
    size_t cap, start, end;
    int eof, skipping;
};
void pf_lines_init(struct pf_lines *r, int fd, char *buf, size_t cap);
/* 1: a line in *line, *len (without '\n'); 0: end of file; -1: read error (errno). */
int pf_lines_next(struct pf_lines *r, const char **line, size_t *len, int *cut);

/* ---- parsers over buffers (no NUL terminator needed; every length checked) ---- */

enum { PF_COMM_MAX = 64 };

/* PF_KTHREAD of include/linux/sched.h: the process is a kernel thread. */
#define PF_FLAG_KTHREAD 0x00200000u

struct pf_stat {
    int32_t pid;
    char comm[PF_COMM_MAX]; /* raw bytes between the first '(' and the last ')' */
    size_t comm_len;
    char state;
    int32_t ppid;
    uint32_t flags;
    int64_t threads;
    uint64_t starttime; /* clock ticks after boot */
    int64_t rss_pages;
};
/* /proc/PID/stat. 0 when every field up to rss was read, -1 when malformed. */
int pf_parse_stat(const char *buf, size_t len, struct pf_stat *out);

struct pf_status {
    uint32_t uid[4]; /* real, effective, saved, filesystem */
    uint32_t gid[4];
    int32_t ppid;
    int has_uid, has_gid, has_ppid;
};
/* /proc/PID/status: Uid, Gid, PPid. 0 when Uid and Gid were found, else -1. */
int pf_parse_status(const char *buf, size_t len, struct pf_status *out);

/* The ids of pid (caller's pid namespace) through pidfd_open and PIDFD_GET_INFO (Linux 6.13):
 * every Uid, Gid and PPid field of its status. 0, or -1 with errno (ENOSYS, ENOTTY, EINVAL:
 * the kernel lacks them; ESRCH: gone; EPERM: refused by a system call filter). */
int pf_pidfd_ids(int32_t pid, struct pf_status *out);

/* The value of a "btime N" line of /proc/stat. -1 when this is not that line. */
int pf_parse_btime_line(const char *line, size_t len, uint64_t *btime);

/* Encodes NUL-separated argv (a /proc/PID/cmdline) as a msgpack array of at most max_args
 * strings (mp_text). A trailing NUL ends the last argument; *cut is set when arguments
 * beyond max_args were left out. `more`: buf holds only the first len bytes of a longer
 * cmdline; what follows its last NUL is a piece of an argument, left out (and *cut set), so
 * that no element is ever part of an argument. */
int pf_encode_argv(mp_buf *e, const char *buf, size_t len, int more, uint32_t max_args,
                   int *cut);

/* ---- one process: the details both sources emit ---- */

enum pf_want {
    PF_WANT_STAT = 1,
    PF_WANT_STATUS = 2,
    PF_WANT_CMDLINE = 4,
    PF_WANT_EXE = 8,
    PF_WANT_CWD = 16,
    /* Open PID/file relative to /proc instead of opening the PID directory first: two
     * syscalls fewer per process, for the scanner, where a pid reused between two reads of
     * one process (microseconds apart) is not worth them. */
    PF_PATHS = 64,
    /* With PF_PATHS: the ids (PF_WANT_STATUS) from the pid's pidfd (PIDFD_GET_INFO) when the
     * kernel has it, else from the status file. Only for a /proc of the caller's own pid
     * namespace (pf_pidfd_usable). */
    PF_PIDFD = 128
};

/* Outcome flags of pf_process_read. */
enum pf_result {
    PF_GONE = 1,      /* nothing could be read: the process vanished (or never was) */
    PF_PARTIAL = 2,   /* some reads failed: the process vanished midway */
    PF_ARGV_CUT = 4,  /* cmdline longer than the buffer, or more arguments than max_args */
    PF_KTHREAD = 8,   /* a kernel thread */
    PF_PATH_CUT = 16, /* exe or cwd longer than PATH_MAX */
    PF_DENIED = 32    /* some reads were refused (EACCES / EPERM), not lost */
};

struct pf_process {
    /* what was read */
    unsigned got; /* PF_WANT_* bits that succeeded */
    unsigned result; /* PF_* of enum pf_result */
    struct pf_stat stat;
    struct pf_status status;
    size_t cmdline_len;
    int cmdline_full;
    char exe[4096];
    size_t exe_len;
    char cwd[4096];
    size_t cwd_len;
};

/* Reads the wanted files of /proc/PID (proc_dirfd: /proc) into p, the cmdline into cmdline
 * (cap bytes). Unless PF_PATHS, the directory is opened once and every file read through it,
 * so that all reads describe one process: after it exits they fail with ESRCH even if the
 * pid is reused. Sets p->result. */
void pf_process_read(int proc_dirfd, int32_t pid, unsigned want, struct pf_process *p,
                     char *cmdline, size_t cap);

/* Decimal text of v into buf (at least 12 bytes), NUL-terminated; returns its length. */
size_t pf_utoa(uint32_t v, char *buf);

#endif
