/* proc_connector.c: cn_proc datagrams -> events (see core_proc_connector.h and
 * docs/sources/proc-connector.md). Every read of the datagram goes through memcpy from a
 * bounds-checked offset: the bytes may come from Python at any alignment, or be garbage. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#include <linux/connector.h>
#include <linux/netlink.h>

#include "core.h"
#include "core_proc_connector.h"
#include "procfs.h"
#include "sink.h"

/* linux/cn_proc.h values, spelled out: the uapi header's enum shifts between kernel
 * versions and we decode the wire format, not the header. */
enum {
    EV_NONE = 0x00000000,
    EV_FORK = 0x00000001,
    EV_EXEC = 0x00000002,
    EV_UID = 0x00000004,
    EV_GID = 0x00000040,
    EV_SID = 0x00000080,
    EV_PTRACE = 0x00000100,
    EV_COMM = 0x00000200,
    EV_COREDUMP = 0x40000000,
    EV_EXIT = 0x80000000u
};
enum { MCAST_LISTEN = 1, MCAST_IGNORE = 2 };

/* Wire layout: struct cn_msg (20 bytes) then struct proc_event: what, cpu, timestamp_ns
 * (16 bytes), then the union of the event's data. */
enum {
    CN_MSG_SIZE = 20,
    EV_HEAD = 16,
    RX_SLOTS = 64,
    RX_SLOT_BYTES = 256, /* a cn_proc datagram is 16 + 20 + 40 bytes */
    MAX_TRACKED_CPUS = 8192,
    PARENT_SLOTS = 1024 /* a power of two: slots by pid % PARENT_SLOTS */
};

/* The parent of a process, as its fork event said. The kernel fills an exit event's parent
 * only while the child's pid is still attached (proc_exit_connector runs after exit_notify):
 * a parent that reaps the zombie first (the usual wait loop, on another CPU) leaves it 0.
 * The fork of the same pid, seen moments earlier, still knows it. */
struct parent_slot {
    int32_t pid, ppid;
};

struct am_cnproc {
    struct am_cnproc_options opt;
    struct am_cnproc_stats st;
    int fd;      /* the socket, -1 when not listening */
    int proc_fd; /* /proc for exec enrichment, -1 when not enriching */
    int err;
    long clk_tck;
    uint32_t ncpu;      /* CPUs whose sequence is tracked */
    uint32_t *last_seq; /* per CPU: the last seq seen */
    uint8_t *seen;      /* per CPU: a seq was seen */
    uint8_t *unsure;    /* per CPU: no message since listening or since an overrun */
    pid_t probe_tid;    /* the thread whose comm events are probes (am_cnproc_probe) */
    uint32_t probes_out; /* probes sent and not yet seen */
    int overrun;         /* ENOBUFS seen; the queue not yet emptied since */
    char *cmdline;      /* max_argv_bytes */
    struct pf_process proc;
    /* Datagrams read by recvmmsg but not yet decoded because the sink filled up. */
    uint8_t *rx;
    size_t rx_len[RX_SLOTS];
    unsigned rx_next, rx_count;
    size_t rx_off; /* where decoding of rx[rx_next] stopped */
    /* The last fork of each pid % PARENT_SLOTS (8 KiB): a process that ends or execs within
     * about PARENT_SLOTS forks of its start is still there. */
    struct parent_slot parents[PARENT_SLOTS];
};

static void remember_parent(am_cnproc *c, int32_t pid, int32_t ppid)
{
    struct parent_slot *s = &c->parents[(uint32_t)pid % PARENT_SLOTS];
    s->pid = pid;
    s->ppid = ppid;
}

/* The parent the fork of pid named, 0 when that fork is not remembered. */
static int32_t recall_parent(const am_cnproc *c, int32_t pid)
{
    const struct parent_slot *s = &c->parents[(uint32_t)pid % PARENT_SLOTS];
    return pid > 0 && s->pid == pid ? s->ppid : 0;
}

/* Clock offsets, read once per call: kernel timestamps are CLOCK_MONOTONIC nanoseconds. */
struct clocks {
    uint64_t real_minus_mono; /* add to a monotonic ns for epoch ns */
    uint64_t boot_minus_mono; /* add for CLOCK_BOOTTIME ns (what /proc starttime counts) */
};

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    if (clock_gettime(id, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void read_clocks(struct clocks *k)
{
    uint64_t mono = clock_ns(CLOCK_MONOTONIC);
    uint64_t real = clock_ns(CLOCK_REALTIME);
    uint64_t boot = clock_ns(CLOCK_BOOTTIME);
    k->real_minus_mono = real > mono ? real - mono : 0;
    k->boot_minus_mono = boot > mono ? boot - mono : 0;
}

static uint64_t epoch_ms(const struct clocks *k, uint64_t mono_ns)
{
    uint64_t ns;
    if (__builtin_add_overflow(mono_ns, k->real_minus_mono, &ns))
        ns = mono_ns;
    return ns / 1000000u;
}

static uint32_t rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static int32_t rdi32(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

void am_cnproc_default_options(struct am_cnproc_options *out)
{
    if (out == NULL)
        return;
    out->rcvbuf = 4u << 20;
    out->enrich = 1;
    out->threads = 0;
    out->max_argv_bytes = 32768;
    out->max_args = 256;
}

am_cnproc *am_cnproc_new(const struct am_cnproc_options *opts)
{
    struct am_cnproc_options o;
    am_cnproc_default_options(&o);
    if (opts != NULL)
        o = *opts;
    if (o.enrich > 1 || o.threads > 1 || o.max_argv_bytes < 64 ||
        o.max_argv_bytes > (1u << 24) || o.max_args < 1 || o.max_args > 65536 ||
        o.rcvbuf > (1u << 30))
        return NULL;
    am_cnproc *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->opt = o;
    c->fd = -1;
    c->proc_fd = -1;
    c->clk_tck = sysconf(_SC_CLK_TCK);
    if (c->clk_tck <= 0)
        c->clk_tck = 100;
    int cpus = get_nprocs_conf();
    c->ncpu = cpus < 1 ? 1 : cpus > MAX_TRACKED_CPUS ? MAX_TRACKED_CPUS : (uint32_t)cpus;
    c->last_seq = calloc(c->ncpu, sizeof *c->last_seq);
    c->seen = calloc(c->ncpu, 1);
    c->unsure = calloc(c->ncpu, 1);
    c->rx = malloc((size_t)RX_SLOTS * RX_SLOT_BYTES);
    c->cmdline = o.enrich ? malloc(o.max_argv_bytes) : NULL;
    if (c->last_seq == NULL || c->seen == NULL || c->unsure == NULL || c->rx == NULL ||
        (o.enrich && c->cmdline == NULL)) {
        am_cnproc_free(c);
        return NULL;
    }
    if (o.enrich)
        /* Failing here leaves proc_fd -1: exec events then say `gone`, counted. */
        c->proc_fd = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC);
    return c;
}

void am_cnproc_free(am_cnproc *c)
{
    if (c == NULL)
        return;
    am_cnproc_close(c);
    if (c->proc_fd >= 0)
        close(c->proc_fd);
    free(c->last_seq);
    free(c->seen);
    free(c->unsure);
    free(c->rx);
    free(c->cmdline);
    free(c);
}

static int send_op(int fd, uint32_t op)
{
    uint8_t msg[NLMSG_HDRLEN + CN_MSG_SIZE + 4];
    struct nlmsghdr nlh = {
        .nlmsg_len = sizeof msg,
        .nlmsg_type = NLMSG_DONE,
        .nlmsg_flags = 0,
        .nlmsg_seq = 0,
        .nlmsg_pid = 0,
    };
    struct cn_msg cn = {
        .id = {.idx = CN_IDX_PROC, .val = CN_VAL_PROC},
        .seq = 0,
        .ack = 0,
        .len = 4,
        .flags = 0,
    };
    memset(msg, 0, sizeof msg);
    memcpy(msg, &nlh, sizeof nlh);
    memcpy(msg + NLMSG_HDRLEN, &cn, CN_MSG_SIZE);
    memcpy(msg + NLMSG_HDRLEN + CN_MSG_SIZE, &op, 4);
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK, .nl_pid = 0, .nl_groups = 0};
    for (;;) {
        ssize_t n = sendto(fd, msg, sizeof msg, 0, (struct sockaddr *)&kernel, sizeof kernel);
        if (n == (ssize_t)sizeof msg)
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        if (n >= 0)
            errno = EMSGSIZE;
        return -1;
    }
}

int am_cnproc_listen(am_cnproc *c)
{
    if (c == NULL)
        return AM_ERR_ARG;
    if (c->fd >= 0)
        return AM_OK;
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_CONNECTOR);
    if (fd < 0) {
        c->err = errno;
        return AM_CNPROC_ERR_SYS;
    }
    if (c->opt.rcvbuf > 0) {
        int size = (int)c->opt.rcvbuf;
        /* FORCE passes rmem_max with CAP_NET_ADMIN; without it the plain option is capped. */
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0)
            (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    }
    struct sockaddr_nl addr = {.nl_family = AF_NETLINK, .nl_pid = 0, .nl_groups = CN_IDX_PROC};
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || send_op(fd, MCAST_LISTEN) != 0) {
        c->err = errno;
        close(fd);
        return AM_CNPROC_ERR_SYS;
    }
    c->fd = fd;
    /* A new subscription: sequences seen before say nothing about this one. */
    memset(c->seen, 0, c->ncpu);
    /* Until a CPU has sent once, an overrun's cost there could not be known: unsure. */
    memset(c->unsure, 1, c->ncpu);
    c->overrun = 0;
    c->probes_out = 0;
    c->rx_next = c->rx_count = 0;
    c->rx_off = 0;
    return AM_OK;
}

/* Runs the calling thread on `cpu` and sends a comm event there: prctl(PR_SET_NAME) with the
 * thread's own name makes the kernel send one (unconditionally, from the CPU it runs on). */
static int probe_cpu(uint32_t cpu, cpu_set_t *one, size_t setsize)
{
    char name[17] = {0};
    CPU_ZERO_S(setsize, one);
    CPU_SET_S(cpu, setsize, one);
    if (sched_setaffinity(0, setsize, one) != 0)
        return -1; /* offline, or outside our cpuset */
    if (prctl(PR_GET_NAME, name, 0, 0, 0) != 0 || prctl(PR_SET_NAME, name, 0, 0, 0) != 0)
        return -1;
    return 0;
}

int am_cnproc_probe(am_cnproc *c, uint32_t *sent)
{
    if (c == NULL || sent == NULL)
        return AM_ERR_ARG;
    *sent = 0;
    if (c->fd < 0)
        return AM_OK;
    uint32_t want = 0;
    for (uint32_t cpu = 0; cpu < c->ncpu; cpu++)
        want += c->unsure[cpu];
    if (want == 0)
        return AM_OK;
    size_t setsize = CPU_ALLOC_SIZE(c->ncpu);
    cpu_set_t *saved = CPU_ALLOC(c->ncpu), *one = CPU_ALLOC(c->ncpu);
    int st = AM_OK;
    if (saved == NULL || one == NULL) {
        st = AM_ERR_NOMEM;
        goto out;
    }
    if (sched_getaffinity(0, setsize, saved) != 0) {
        c->err = errno;
        st = AM_CNPROC_ERR_SYS;
        goto out;
    }
    c->probe_tid = (pid_t)syscall(SYS_gettid);
    for (uint32_t cpu = 0; cpu < c->ncpu; cpu++) {
        if (!c->unsure[cpu])
            continue;
        if (!CPU_ISSET_S(cpu, setsize, saved) || probe_cpu(cpu, one, setsize) != 0) {
            /* A CPU we may not run on (offline, another cpuset): its losses stay uncounted
             * beyond the overrun itself (enobufs). */
            c->st.probe_failed++;
            c->unsure[cpu] = 0;
            continue;
        }
        c->probes_out++;
        c->st.probes++;
        (*sent)++;
    }
    if (sched_setaffinity(0, setsize, saved) != 0) {
        c->err = errno;
        st = AM_CNPROC_ERR_SYS;
    }
out:
    CPU_FREE(saved);
    CPU_FREE(one);
    return st;
}

int am_cnproc_close(am_cnproc *c)
{
    if (c == NULL)
        return AM_ERR_ARG;
    if (c->fd < 0)
        return AM_OK;
    /* The kernel counts listeners globally: leave its count as we found it. */
    int st = AM_OK;
    if (send_op(c->fd, MCAST_IGNORE) != 0) {
        c->err = errno;
        st = AM_CNPROC_ERR_SYS;
    }
    close(c->fd);
    c->fd = -1;
    c->rx_next = c->rx_count = 0;
    return st;
}

int am_cnproc_fileno(const am_cnproc *c)
{
    return c == NULL ? -1 : c->fd;
}

int am_cnproc_errno(const am_cnproc *c)
{
    return c == NULL ? 0 : c->err;
}

void am_cnproc_stats(const am_cnproc *c, struct am_cnproc_stats *out)
{
    if (out == NULL)
        return;
    if (c == NULL) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = c->st;
}

/* ---- sequence tracking ---- */

/* The kernel numbers cn_proc messages per CPU (cn_msg.seq from a per-CPU counter, taken
 * with proc_event.cpu under one local lock) and delivers each CPU's messages in order, so a
 * jump forward within one CPU is a loss. */
static void track_seq(am_cnproc *c, uint32_t cpu, uint32_t seq)
{
    if (cpu >= c->ncpu)
        return;
    c->unsure[cpu] = 0; /* whatever the overrun cost this CPU, the gap below counts it */
    if (!c->seen[cpu]) {
        c->seen[cpu] = 1;
        c->last_seq[cpu] = seq;
        return;
    }
    uint32_t step = seq - c->last_seq[cpu];
    c->last_seq[cpu] = seq;
    if (step == 1)
        return;
    if (step == 0 || step > 0x80000000u) {
        c->st.seq_resets++;
        return;
    }
    c->st.gaps++;
    c->st.lost += step - 1;
}

/* ---- encoding ---- */

struct ev {
    uint32_t what;
    uint64_t ts_ms;
    uint64_t ts_ns;
    const uint8_t *d; /* the union's bytes */
    size_t len;       /* how many */
};

#define TRY(x) \
    do { \
        if ((st = (x)) != AM_OK) \
            goto done; \
    } while (0)

static int put_head(mp_buf *e, const char *type, const struct ev *ev, int32_t pid, int32_t tid)
{
    int st;
    TRY(mp_cstr(e, "t"));
    TRY(mp_cstr(e, type));
    TRY(mp_cstr(e, "ts"));
    TRY(mp_uint(e, ev->ts_ms));
    TRY(mp_cstr(e, "src"));
    TRY(mp_cstr(e, "cnproc"));
    TRY(mp_cstr(e, "pid"));
    TRY(mp_int(e, pid));
    if (tid != pid) {
        TRY(mp_cstr(e, "tid"));
        TRY(mp_int(e, tid));
    }
done:
    return st;
}

static int put_int(mp_buf *e, const char *key, int64_t v)
{
    int st = mp_cstr(e, key);
    return st == AM_OK ? mp_int(e, v) : st;
}

static int put_true(mp_buf *e, const char *key)
{
    int st = mp_cstr(e, key);
    return st == AM_OK ? mp_bool(e, 1) : st;
}

static int finish(am_cnproc *c, am_sink *sink, int st, uint64_t *appended)
{
    if (st != AM_OK) {
        sink_drop(sink);
        c->st.dropped++;
        return st;
    }
    if (sink_commit(sink) != AM_OK) {
        c->st.dropped++;
        return AM_ERR_FULL;
    }
    c->st.events++;
    (*appended)++;
    return AM_OK;
}

/* The exec event from what c->proc holds (result: its PF_* flags). lean: without argv, exe
 * and cwd (with `trunc`), for an event that would not fit a batch otherwise. */
static int put_exec(am_cnproc *c, mp_buf *e, const struct ev *ev, unsigned result, int lean,
                    int *argv_cut)
{
    int32_t pid = rdi32(ev->d), tgid = rdi32(ev->d + 4);
    const struct pf_process *p = &c->proc;
    int gone = (result & PF_GONE) != 0;
    unsigned got = gone ? 0 : p->got;
    if (lean)
        got &= ~(unsigned)(PF_WANT_EXE | PF_WANT_CWD | PF_WANT_CMDLINE);
    int st;
    *argv_cut = 0;
    uint32_t n = 4 + (pid != tgid);
    /* Gone before /proc was read: its fork, when remembered, still names the parent. */
    int32_t gone_parent = c->opt.enrich && gone ? recall_parent(c, tgid) : 0;
    if (!c->opt.enrich) {
        /* details not asked for: no flag */
    } else if (gone) {
        n += 1 + (gone_parent > 0);
    } else {
        n += (got & PF_WANT_STAT) ? 2 : 0;   /* ppid, comm */
        n += (got & PF_WANT_STATUS) ? 4 : 0; /* uid, gid, euid, egid */
        n += (got & PF_WANT_EXE) ? 1 : 0;
        n += (got & PF_WANT_CWD) ? 1 : 0;
        n += (got & PF_WANT_CMDLINE) && p->cmdline_len > 0 ? 1 : 0;
        n += (result & PF_PARTIAL) ? 1 : 0;
        n += (result & PF_DENIED) ? 1 : 0;
        /* trunc is known only once argv is encoded: counted then, the header patched. */
    }
    size_t map_at = e->len;
    TRY(mp_map32(e, n));
    TRY(put_head(e, "exec", ev, tgid, pid));
    if (c->opt.enrich && gone) {
        TRY(put_true(e, "gone"));
        if (gone_parent > 0)
            TRY(put_int(e, "ppid", gone_parent));
    } else if (c->opt.enrich) {
        if (got & PF_WANT_STAT) {
            TRY(put_int(e, "ppid", p->stat.ppid));
            TRY(mp_cstr(e, "comm"));
            TRY(mp_text(e, p->stat.comm, p->stat.comm_len));
        }
        if (got & PF_WANT_STATUS) {
            TRY(put_int(e, "uid", p->status.uid[0]));
            TRY(put_int(e, "gid", p->status.gid[0]));
            TRY(put_int(e, "euid", p->status.uid[1]));
            TRY(put_int(e, "egid", p->status.gid[1]));
        }
        if (got & PF_WANT_EXE) {
            TRY(mp_cstr(e, "exe"));
            TRY(mp_text(e, p->exe, p->exe_len));
        }
        if (got & PF_WANT_CWD) {
            TRY(mp_cstr(e, "cwd"));
            TRY(mp_text(e, p->cwd, p->cwd_len));
        }
        if ((got & PF_WANT_CMDLINE) && p->cmdline_len > 0) {
            TRY(mp_cstr(e, "argv"));
            TRY(pf_encode_argv(e, c->cmdline, p->cmdline_len, p->cmdline_full, c->opt.max_args,
                                  argv_cut));
        }
        if (result & PF_PARTIAL)
            TRY(put_true(e, "partial"));
        if (result & PF_DENIED)
            TRY(put_true(e, "denied"));
        if (lean || *argv_cut || (result & (PF_ARGV_CUT | PF_PATH_CUT))) {
            TRY(put_true(e, "trunc"));
            n++;
        }
    }
    mp_patch_u32(e, map_at, n);
done:
    return st;
}

static int encode_exec(am_cnproc *c, am_sink *sink, const struct ev *ev,
                       const struct clocks *k, uint64_t *appended)
{
    int32_t tgid = rdi32(ev->d + 4);
    struct pf_process *p = &c->proc;
    unsigned result = PF_GONE;
    if (c->opt.enrich) {
        pf_process_read(c->proc_fd, tgid, PF_WANT_STAT | PF_WANT_STATUS | PF_WANT_CMDLINE |
                        PF_WANT_EXE | PF_WANT_CWD, p, c->cmdline, c->opt.max_argv_bytes);
        result = p->result;
        if (p->got & PF_WANT_STAT) {
            /* /proc starttime is in ticks of CLOCK_BOOTTIME and floors: a process that
             * started after this exec is a newer one under a reused pid. */
            uint64_t tick_ns = 1000000000u / (uint64_t)c->clk_tck;
            uint64_t start_ns, event_ns;
            if (__builtin_mul_overflow(p->stat.starttime, tick_ns, &start_ns))
                start_ns = UINT64_MAX;
            if (__builtin_add_overflow(ev->ts_ns, k->boot_minus_mono + tick_ns, &event_ns))
                event_ns = UINT64_MAX;
            if (start_ns > event_ns) {
                c->st.reused++;
                result = PF_GONE;
            }
        }
        /* A zombie ended already: /proc keeps its stat and status, but its argv, exe and cwd
         * are gone (procfs.c takes their absence as no loss, which is true of a zombie in a
         * snapshot). For its exec event they are the point: it is partial. */
        if (!(result & PF_GONE) && (p->got & PF_WANT_STAT) &&
            (p->stat.state == 'Z' || p->stat.state == 'X'))
            result |= PF_PARTIAL;
        if (result & PF_GONE) {
            c->st.gone++;
        } else {
            c->st.partial += (result & PF_PARTIAL) != 0;
            c->st.denied += (result & PF_DENIED) != 0;
        }
    }
    int argv_cut = 0;
    int st = put_exec(c, sink_begin(sink), ev, result, 0, &argv_cut);
    if (st == AM_ERR_FULL) { /* larger than a batch: again without argv, exe, cwd */
        c->st.oversize++;
        st = put_exec(c, sink_begin(sink), ev, result, 1, &argv_cut);
    }
    if (st == AM_OK && (argv_cut || (result & PF_ARGV_CUT)))
        c->st.argv_truncated++;
    return finish(c, sink, st, appended);
}

/* One proc_event (ev->d: ev->len bytes of its union). */
static int encode_event(am_cnproc *c, am_sink *sink, const struct ev *ev,
                        const struct clocks *k, uint64_t *appended)
{
    const uint8_t *d = ev->d;
    mp_buf *e;
    int st;
    int threads = c->opt.threads != 0;
    switch (ev->what) {
    case EV_FORK: {
        if (ev->len < 16)
            goto malformed;
        c->st.fork++;
        int32_t ppid = rdi32(d), ptgid = rdi32(d + 4), cpid = rdi32(d + 8), ctgid = rdi32(d + 12);
        if (cpid == ctgid && ptgid > 0)
            remember_parent(c, ctgid, ptgid);
        if (cpid != ctgid && !threads)
            goto filtered;
        e = sink_begin(sink);
        TRY(mp_map(e, 5 + (cpid != ctgid) + (ppid != ptgid)));
        TRY(put_head(e, "fork", ev, ctgid, cpid));
        TRY(put_int(e, "ppid", ptgid));
        if (ppid != ptgid)
            TRY(put_int(e, "ptid", ppid));
        break;
    }
    case EV_EXEC:
        if (ev->len < 8)
            goto malformed;
        c->st.exec++;
        return encode_exec(c, sink, ev, k, appended);
    case EV_UID:
    case EV_GID: {
        if (ev->len < 16)
            goto malformed;
        int uid = ev->what == EV_UID;
        if (uid)
            c->st.uid++;
        else
            c->st.gid++;
        int32_t pid = rdi32(d), tgid = rdi32(d + 4);
        if (pid != tgid && !threads)
            goto filtered;
        e = sink_begin(sink);
        TRY(mp_map(e, 6 + (pid != tgid)));
        TRY(put_head(e, uid ? "uid" : "gid", ev, tgid, pid));
        TRY(put_int(e, uid ? "uid" : "gid", rd32(d + 8)));
        TRY(put_int(e, uid ? "euid" : "egid", rd32(d + 12)));
        break;
    }
    case EV_SID: {
        if (ev->len < 8)
            goto malformed;
        c->st.sid++;
        int32_t pid = rdi32(d), tgid = rdi32(d + 4);
        e = sink_begin(sink);
        TRY(mp_map(e, 4 + (pid != tgid)));
        TRY(put_head(e, "sid", ev, tgid, pid));
        break;
    }
    case EV_PTRACE: {
        if (ev->len < 16)
            goto malformed;
        c->st.ptrace++;
        int32_t pid = rdi32(d), tgid = rdi32(d + 4), tracer = rdi32(d + 12);
        /* The kernel names the tracer on PTRACE_ATTACH and sends zeros on PTRACE_DETACH. */
        int attach = tracer != 0;
        e = sink_begin(sink);
        TRY(mp_map(e, 5 + (pid != tgid) + attach));
        TRY(put_head(e, "ptrace", ev, tgid, pid));
        TRY(mp_cstr(e, "op"));
        TRY(mp_cstr(e, attach ? "attach" : "detach"));
        if (attach)
            TRY(put_int(e, "tracer", tracer));
        break;
    }
    case EV_COMM: {
        if (ev->len < 24)
            goto malformed;
        int32_t pid = rdi32(d), tgid = rdi32(d + 4);
        if (c->probes_out > 0 && pid == c->probe_tid) {
            /* Our own probe: it has done its work (its seq was tracked); not an event. */
            c->probes_out--;
            c->st.probes_seen++;
            return AM_OK;
        }
        c->st.comm++;
        if (pid != tgid && !threads)
            goto filtered;
        const char *name = (const char *)d + 8;
        const char *nul = memchr(name, '\0', 16);
        size_t name_len = nul != NULL ? (size_t)(nul - name) : 16;
        e = sink_begin(sink);
        TRY(mp_map(e, 5 + (pid != tgid)));
        TRY(put_head(e, "comm", ev, tgid, pid));
        TRY(mp_cstr(e, "comm"));
        TRY(mp_text(e, name, name_len));
        break;
    }
    case EV_COREDUMP: {
        if (ev->len < 8)
            goto malformed;
        c->st.coredump++;
        int32_t pid = rdi32(d), tgid = rdi32(d + 4);
        int parent = ev->len >= 16; /* parent fields since Linux 4.18 */
        e = sink_begin(sink);
        TRY(mp_map(e, 4 + (pid != tgid) + parent));
        TRY(put_head(e, "coredump", ev, tgid, pid));
        if (parent)
            TRY(put_int(e, "ppid", rdi32(d + 12)));
        break;
    }
    case EV_EXIT: {
        if (ev->len < 16)
            goto malformed;
        c->st.exit++;
        int32_t pid = rdi32(d), tgid = rdi32(d + 4);
        uint32_t status = rd32(d + 8);
        int32_t xsig = rdi32(d + 12);
        /* The parent fields (since Linux 4.18) are 0 when the parent reaped the child
         * before its exit event was made: the fork's record stands in. */
        int32_t parent = ev->len >= 24 ? rdi32(d + 20) : 0;
        if (pid != tgid && !threads)
            goto filtered;
        if (parent <= 0) {
            parent = recall_parent(c, tgid);
            if (parent > 0)
                c->st.parent_recalled++;
            else
                c->st.parent_unknown++;
        }
        /* exit_code is a wait(2) status: exited with a code, or killed by a signal. */
        unsigned low = status & 0x7f;
        int exited = low == 0, killed = low != 0 && low != 0x7f;
        int core = killed && (status & 0x80);
        e = sink_begin(sink);
        TRY(mp_map(e, 6 + (pid != tgid) + core + (parent > 0)));
        TRY(put_head(e, "exit", ev, tgid, pid));
        if (exited)
            TRY(put_int(e, "code", (status >> 8) & 0xff));
        else if (killed)
            TRY(put_int(e, "sig", low));
        else
            TRY(put_int(e, "status", status));
        if (core)
            TRY(put_true(e, "core"));
        TRY(put_int(e, "xsig", xsig));
        if (parent > 0)
            TRY(put_int(e, "ppid", parent));
        break;
    }
    default:
        c->st.unknown++;
        return AM_OK;
    }
done:
    return finish(c, sink, st, appended);
malformed:
    c->st.malformed++;
    return AM_OK;
filtered:
    c->st.threads_filtered++;
    return AM_OK;
}

/* One netlink message's payload: cn_msg + proc_event. */
static int decode_message(am_cnproc *c, am_sink *sink, const uint8_t *p, size_t len,
                          const struct clocks *k, uint64_t *appended)
{
    if (len < CN_MSG_SIZE) {
        c->st.malformed++;
        return AM_OK;
    }
    uint32_t idx = rd32(p), val = rd32(p + 4), seq = rd32(p + 8);
    uint16_t cn_len;
    memcpy(&cn_len, p + 16, sizeof cn_len);
    if (idx != CN_IDX_PROC || val != CN_VAL_PROC || cn_len > len - CN_MSG_SIZE ||
        cn_len < EV_HEAD) {
        c->st.malformed++;
        return AM_OK;
    }
    const uint8_t *pe = p + CN_MSG_SIZE;
    struct ev ev;
    ev.what = rd32(pe);
    uint32_t cpu = rd32(pe + 4);
    ev.ts_ns = rd64(pe + 8);
    ev.ts_ms = epoch_ms(k, ev.ts_ns);
    ev.d = pe + EV_HEAD;
    ev.len = cn_len - EV_HEAD;
    if (ev.what == EV_NONE) {
        /* The answer to a LISTEN / IGNORE (ours or another listener's): its seq echoes
         * the request, not the per-CPU counter. */
        c->st.acks++;
        if (ev.len >= 4 && rd32(ev.d) != 0)
            c->st.ack_errors++;
        return AM_OK;
    }
    track_seq(c, cpu, seq);
    return encode_event(c, sink, &ev, k, appended);
}

/* Netlink messages in data[off..len). Returns AM_ERR_FULL with *off at the message to
 * resume at, else AM_OK with *off == len. */
static int decode_buffer(am_cnproc *c, am_sink *sink, const uint8_t *data, size_t len,
                         size_t *off, const struct clocks *k, uint64_t *appended)
{
    while (*off < len) {
        size_t left = len - *off;
        struct nlmsghdr nlh;
        if (left < sizeof nlh) {
            c->st.malformed++;
            *off = len;
            break;
        }
        memcpy(&nlh, data + *off, sizeof nlh);
        if (nlh.nlmsg_len < NLMSG_HDRLEN || nlh.nlmsg_len > left) {
            c->st.malformed++;
            *off = len;
            break;
        }
        if (am_sink_full(sink))
            return AM_ERR_FULL;
        c->st.messages++;
        if (nlh.nlmsg_type == NLMSG_DONE) {
            /* A refused commit is counted in `dropped`; the next message goes on. */
            (void)decode_message(c, sink, data + *off + NLMSG_HDRLEN,
                                 nlh.nlmsg_len - NLMSG_HDRLEN, k, appended);
        } else if (nlh.nlmsg_type != NLMSG_NOOP) {
            c->st.malformed++;
        }
        size_t step = NLMSG_ALIGN(nlh.nlmsg_len);
        *off = step >= left ? len : *off + step;
    }
    return AM_OK;
}

int am_cnproc_decode(am_cnproc *c, am_sink *sink, const uint8_t *data, size_t len,
                     size_t *consumed, uint64_t *appended)
{
    if (c == NULL || sink == NULL || (data == NULL && len > 0) || consumed == NULL ||
        appended == NULL)
        return AM_ERR_ARG;
    *consumed = 0;
    *appended = 0;
    struct clocks k;
    read_clocks(&k);
    size_t off = 0;
    int st = decode_buffer(c, sink, data, len, &off, &k, appended);
    *consumed = off;
    if (st == AM_OK)
        c->st.datagrams++;
    return st;
}

int am_cnproc_drain(am_cnproc *c, am_sink *sink, uint64_t *appended)
{
    if (c == NULL || sink == NULL || appended == NULL)
        return AM_ERR_ARG;
    *appended = 0;
    if (c->fd < 0)
        return AM_ERR_ARG;
    struct clocks k;
    read_clocks(&k);
    struct mmsghdr msgs[RX_SLOTS];
    struct iovec iov[RX_SLOTS];
    struct sockaddr_nl from[RX_SLOTS];
    for (;;) {
        while (c->rx_next < c->rx_count) {
            unsigned i = c->rx_next;
            if (decode_buffer(c, sink, c->rx + (size_t)i * RX_SLOT_BYTES, c->rx_len[i],
                              &c->rx_off, &k, appended) == AM_ERR_FULL)
                return AM_ERR_FULL;
            c->rx_next++;
            c->rx_off = 0;
        }
        if (am_sink_full(sink))
            return AM_ERR_FULL;
        memset(msgs, 0, sizeof msgs);
        for (unsigned i = 0; i < RX_SLOTS; i++) {
            iov[i].iov_base = c->rx + (size_t)i * RX_SLOT_BYTES;
            iov[i].iov_len = RX_SLOT_BYTES;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &from[i];
            msgs[i].msg_hdr.msg_namelen = sizeof from[i];
        }
        int n = recvmmsg(c->fd, msgs, RX_SLOTS, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (c->overrun) {
                    memset(c->unsure, 1, c->ncpu);
                    c->overrun = 0;
                }
                return AM_OK;
            }
            if (errno == ENOBUFS) {
                /* The receive queue overran; the per-CPU sequences say how much was lost,
                 * once each CPU sends again (am_cnproc_probe makes it do so). What the queue
                 * still holds was sent before the overrun: only a message read after it is
                 * emptied tells, so the CPUs become unsure then (below). */
                c->st.enobufs++;
                c->overrun = 1;
                continue;
            }
            c->err = errno;
            return AM_CNPROC_ERR_SYS;
        }
        c->rx_count = 0;
        c->rx_next = 0;
        c->rx_off = 0;
        for (int i = 0; i < n; i++) {
            struct msghdr *h = &msgs[i].msg_hdr;
            c->st.datagrams++;
            if (h->msg_namelen < sizeof(struct sockaddr_nl) || from[i].nl_pid != 0) {
                c->st.foreign++; /* only the kernel speaks on this group */
                continue;
            }
            if (h->msg_flags & MSG_TRUNC) {
                c->st.malformed++;
                continue;
            }
            /* Compact the accepted datagrams to the front, in order. */
            unsigned slot = c->rx_count++;
            if (slot != (unsigned)i)
                memmove(c->rx + (size_t)slot * RX_SLOT_BYTES, c->rx + (size_t)i * RX_SLOT_BYTES,
                        msgs[i].msg_len);
            c->rx_len[slot] = msgs[i].msg_len;
        }
    }
}
