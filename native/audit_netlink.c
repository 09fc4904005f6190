/* audit_netlink.c: the live audit source (core_audit_netlink.h).
 *
 * Two NETLINK_AUDIT sockets: the event socket receives records (as the registered audit
 * daemon, or as a member of the AUDIT_NLGRP_READLOG multicast group) and is what Python
 * selects on; the control socket carries our requests (AUDIT_GET, rule changes) so that their
 * replies never interleave with records. Records go to the am_audit parser, unchanged.
 *
 * Framing facts this relies on (checked on 6.x kernels):
 * - the kernel sends one record per datagram; on unicast its nlmsg_len counts the payload
 *   only (a historical quirk auditd depends on), on multicast the whole message. So a record
 *   extends to the end of its datagram, whatever nlmsg_len says, and is cut at a NUL;
 * - replies to requests are ordinary netlink messages (NLMSG_ALIGN framing, nlmsg_len
 *   including the header), AUDIT_LIST_RULES as NLM_F_MULTI parts ended by NLMSG_DONE.
 *
 * The event socket is read with recvmmsg, up to EVENT_SLOTS datagrams per system call: an exec
 * is about seven records, so one datagram per recvmsg made the system call itself the largest
 * part of the agent's CPU under load (docs/performance.md). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/netlink.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "core.h"
#include "core_audit_netlink.h"

#define KEY "iot-micro-agent"
#define KEY_LEN (sizeof KEY - 1)
/* libaudit's MAX_AUDIT_MESSAGE_LENGTH (8970) plus the header, rounded up: no record is larger.
 * Each datagram of a recvmmsg call has a slot of this size. */
#define EVENT_BUF_BYTES 16384
/* Datagrams one recvmmsg call takes at most. A record is a few hundred bytes, so a slot uses
 * one page of its 16 KiB (those pages stay resident: 128 KiB); past 32 the system call's fixed
 * cost is already a small part of each datagram's (the copy, the skb). */
#define EVENT_SLOTS 32
/* Rule listings: a rule is struct audit_rule_data plus its strings (a few paths at most). */
#define CTL_BUF_BYTES 65536
#define MAX_WATCHES 64 /* FileSystem_Paths: at most 64 */
#define MAX_RULES (16 + MAX_WATCHES)
/* The kernel's rules are listed (guard_rules) at the first poll after a CONFIG_CHANGE record
 * (a rule added or deleted, audit turned off: the kernel logs each change to the reader) and
 * otherwise at every this many polls: for a change whose record never came (an exclusion of
 * CONFIG_CHANGE). The listing is most of an idle poll's cost. The agent polls every 5 s when
 * idle and every second when busy (agent.collectors.audit_source): every 10 s, or 2 s. */
#define RULES_LISTED_EVERY 2
#define MAX_STALE 64
#define STATE_BYTES 256
#define REPORT_BYTES 512

/* socketcall(2) call numbers (linux/net.h): i386 reaches the network calls through it. */
#define SYS_BIND_CALL 2
#define SYS_CONNECT_CALL 3
#define SYS_ACCEPT_CALL 5
#define SYS_ACCEPT4_CALL 18

struct rule {
    struct audit_rule_data *data;
    size_t len;
    int shared; /* the kernel had it already (another agent's, EEXIST): not ours to delete */
    int watch; /* a watch rule (am_anl_watch), of the path in data's buffer */
    int exclusion; /* one of our exclusions (EXCL_UNREAD, EXCL_PATH, EXCL_PROCTITLE), else 0 */
};

struct am_anl {
    struct am_anl_options opt;
    am_audit *parser;
    int ev_fd;
    int ctl_fd;
    pid_t pid;       /* the process that opened: only it restores the kernel state */
    uint32_t seq;
    int opened;
    int closed;
    int mode;
    struct am_anl_status found;
    int set_enabled;   /* open turned enabled 0 -> 1 */
    int set_backlog;   /* open raised backlog_limit */
    int set_wait;      /* open set backlog_wait_time 0 */
    int probed;        /* `found` was read by am_anl_probe */
    int exclusions_allowed; /* owner, with no other reader of the multicast group */
    const char *kept_why;   /* why exclusions that were wanted are not in (the state says it) */
    /* Tests only (AM_ANL_KILL_AFTER=N in the environment at am_anl_new): the process kills
     * itself with SIGKILL right after its Nth accepted AUDIT_SET, to prove that a kill between
     * any two changes of the kernel state is recovered. 0: never. */
    uint32_t kill_after_set;
    uint32_t sets_done;
    uint32_t last_lost;
    uint64_t config_changes_guarded; /* st.config_changes at the last guard_rules */
    uint32_t polls_unlisted;         /* polls since the last guard_rules */
    struct rule rules[MAX_RULES];
    size_t nrules;
    char *watches[MAX_WATCHES]; /* the paths of am_anl_watch */
    size_t nwatches;
    struct am_anl_stats st;
    char state[STATE_BYTES];
    char report[REPORT_BYTES];
    /* The datagrams of the last recvmmsg: slot i at ev_buf + i * EVENT_BUF_BYTES, its length
     * in ev_msgs[i].msg_len (0 for a foreign one). Slots [ev_next, ev_count) are still to
     * decode, the first of them from ev_off on (the sink filled inside it). */
    uint8_t *ev_buf;
    struct mmsghdr ev_msgs[EVENT_SLOTS];
    struct iovec ev_iov[EVENT_SLOTS];
    struct sockaddr_nl ev_from[EVENT_SLOTS];
    size_t ev_count;
    size_t ev_next;
    size_t ev_off;
    uint8_t *ctl_buf;
    /* The ack of a request sent on the event socket (AUDIT_SET pid), seen by the decoder. */
    uint32_t ack_seq;
    int ack_error;
    int ack_seen;
};

/* ---------------------------------------------------------------------------------------------
 * decoding one datagram */

static int is_record_type(uint16_t type)
{
    /* 1000-1099 are requests and their replies; AUDIT_REPLACE is a binary probe. */
    return type >= AUDIT_FIRST_USER_MSG && type <= AUDIT_LAST_USER_MSG2 && type != AUDIT_REPLACE;
}

static int decode(am_audit *p, am_sink *sink, const uint8_t *buf, size_t len,
                  size_t *consumed, struct am_anl_stats *st, am_anl *ack_to)
{
    size_t off = 0;
    int status = AM_OK;
    while (off < len) {
        size_t left = len - off;
        struct nlmsghdr h;
        if (left < sizeof h) {
            st->malformed++;
            off = len;
            break;
        }
        memcpy(&h, buf + off, sizeof h);
        if (is_record_type(h.nlmsg_type)) {
            if (h.nlmsg_type == AUDIT_CONFIG_CHANGE)
                st->config_changes++;
            const char *text = (const char *)buf + off + sizeof h;
            size_t n = left - sizeof h;
            if (h.nlmsg_len != left && h.nlmsg_len != n)
                st->length_mismatch++;
            const char *nul = memchr(text, '\0', n);
            if (nul != NULL)
                n = (size_t)(nul - text);
            int s = am_audit_feed_record(p, sink, h.nlmsg_type, text, n);
            if (s == AM_ERR_FULL) {
                status = s;
                break;
            }
            st->messages++;
            st->records++;
            st->bytes += n;
            off = len; /* a record is the whole rest of its datagram */
            if (s != AM_OK)
                status = s;
            break;
        }
        if (h.nlmsg_len < sizeof h || h.nlmsg_len > left) {
            st->malformed++;
            off = len;
            break;
        }
        st->messages++;
        if (h.nlmsg_type == NLMSG_ERROR) {
            struct nlmsgerr e;
            if (h.nlmsg_len < sizeof h + sizeof e.error) {
                st->malformed++;
            } else {
                memcpy(&e.error, buf + off + sizeof h, sizeof e.error);
                if (e.error == 0)
                    st->acks++;
                else
                    st->nl_errors++;
                if (ack_to != NULL && h.nlmsg_seq == ack_to->ack_seq) {
                    ack_to->ack_error = e.error;
                    ack_to->ack_seen = 1;
                }
            }
        } else if (h.nlmsg_type == AUDIT_REPLACE) {
            st->replaced++;
        } else {
            st->ignored++;
        }
        size_t step = NLMSG_ALIGN(h.nlmsg_len);
        off = step >= left ? len : off + step;
    }
    *consumed = off;
    return status;
}

int am_audit_nl_decode(am_audit *p, am_sink *sink, const uint8_t *buf, size_t len,
                       size_t *consumed, struct am_anl_stats *st)
{
    if (consumed != NULL)
        *consumed = 0;
    if (p == NULL || consumed == NULL || st == NULL || (buf == NULL && len > 0))
        return AM_ERR_ARG;
    int s = decode(p, sink, buf, len, consumed, st, NULL);
    audit_nl_counters(p, st);
    return s;
}

/* ---------------------------------------------------------------------------------------------
 * sockets and requests */

static int open_socket(void)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_AUDIT);
    if (fd < 0)
        return -1;
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint32_t next_seq(am_anl *a)
{
    if (++a->seq == 0) /* 0 means "no request" */
        a->seq = 1;
    return a->seq;
}

/* Sends one request; returns its sequence number, 0 on a send error (errno set). */
static uint32_t send_request(am_anl *a, int fd, uint16_t type, uint16_t flags, const void *data,
                             size_t len)
{
    struct nlmsghdr h = {
        .nlmsg_len = (uint32_t)NLMSG_LENGTH(len),
        .nlmsg_type = type,
        .nlmsg_flags = (uint16_t)(NLM_F_REQUEST | flags),
        .nlmsg_seq = next_seq(a),
    };
    struct sockaddr_nl to = {.nl_family = AF_NETLINK};
    struct iovec iov[2] = {{&h, sizeof h}, {(void *)data, len}};
    struct msghdr m = {.msg_name = &to, .msg_namelen = sizeof to, .msg_iov = iov,
                       .msg_iovlen = len ? 2 : 1};
    for (;;) {
        ssize_t n = sendmsg(fd, &m, 0);
        if (n >= 0)
            return h.nlmsg_seq;
        if (errno != EINTR)
            return 0;
    }
}

/* Waits for the next datagram on the control socket until deadline; its length, or -1 with
 * errno (ETIMEDOUT on time out). Datagrams not from the kernel are skipped. */
static ssize_t ctl_recv(am_anl *a, uint64_t deadline)
{
    for (;;) {
        uint64_t now = mono_ms();
        if (now >= deadline) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd pfd = {.fd = a->ctl_fd, .events = POLLIN};
        int r = poll(&pfd, 1, (int)(deadline - now));
        if (r < 0 && errno != EINTR)
            return -1;
        if (r <= 0)
            continue;
        struct sockaddr_nl from;
        struct iovec iov = {a->ctl_buf, CTL_BUF_BYTES};
        struct msghdr m = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov,
                           .msg_iovlen = 1};
        ssize_t n = recvmsg(a->ctl_fd, &m, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ENOBUFS)
                continue;
            return -1;
        }
        if (from.nl_pid != 0 || (m.msg_flags & MSG_TRUNC))
            continue;
        return n;
    }
}

/* One reply message of a request, handed to a callback: return 1 when the reply is complete. */
typedef int (*reply_fn)(am_anl *a, const struct nlmsghdr *h, const uint8_t *data, size_t len,
                        void *ctx);

/* Sends a request on the control socket and reads its replies until the callback says done or
 * an NLMSG_ERROR answers it. Returns 0 or a negative errno. */
static int ctl_request(am_anl *a, uint16_t type, uint16_t flags, const void *data, size_t len,
                       reply_fn on_reply, void *ctx)
{
    uint32_t seq = send_request(a, a->ctl_fd, type, flags, data, len);
    if (seq == 0)
        return -errno;
    uint64_t deadline = mono_ms() + a->opt.reply_timeout_ms;
    for (;;) {
        ssize_t n = ctl_recv(a, deadline);
        if (n < 0)
            return -errno;
        size_t off = 0, total = (size_t)n;
        while (total - off >= sizeof(struct nlmsghdr)) {
            struct nlmsghdr h;
            memcpy(&h, a->ctl_buf + off, sizeof h);
            if (h.nlmsg_len < sizeof h || h.nlmsg_len > total - off)
                break;
            const uint8_t *body = a->ctl_buf + off + sizeof h;
            size_t body_len = h.nlmsg_len - sizeof h;
            if (h.nlmsg_seq == seq) {
                if (h.nlmsg_type == NLMSG_ERROR) {
                    int32_t err = -EPROTO;
                    if (body_len >= sizeof err)
                        memcpy(&err, body, sizeof err);
                    if (err != 0 || on_reply == NULL)
                        return err;
                } else if (h.nlmsg_type == NLMSG_DONE) {
                    return 0;
                } else if (on_reply != NULL && on_reply(a, &h, body, body_len, ctx)) {
                    return 0;
                }
            }
            size_t step = NLMSG_ALIGN(h.nlmsg_len);
            if (step >= total - off)
                break;
            off += step;
        }
    }
}

static int status_reply(am_anl *a, const struct nlmsghdr *h, const uint8_t *data, size_t len,
                        void *ctx)
{
    (void)a;
    if (h->nlmsg_type != AUDIT_GET)
        return 0;
    struct am_anl_status *out = ctx;
    memset(out, 0, sizeof *out);
    memcpy(out, data, len < sizeof *out ? len : sizeof *out);
    return 1;
}

static int get_status(am_anl *a, struct am_anl_status *out)
{
    return ctl_request(a, AUDIT_GET, 0, NULL, 0, status_reply, out);
}

/* Counts an accepted AUDIT_SET; the test-only kill (kill_after_set). */
static void set_done(am_anl *a)
{
    a->sets_done++;
    if (a->kill_after_set != 0 && a->sets_done == a->kill_after_set)
        (void)raise(SIGKILL);
}

static int set_status(am_anl *a, uint32_t mask, uint32_t value)
{
    struct audit_status s;
    memset(&s, 0, sizeof s);
    s.mask = mask;
    if (mask == AUDIT_STATUS_ENABLED)
        s.enabled = value;
    else if (mask == AUDIT_STATUS_FAILURE)
        s.failure = value;
    else if (mask == AUDIT_STATUS_RATE_LIMIT)
        s.rate_limit = value;
    else if (mask == AUDIT_STATUS_BACKLOG_LIMIT)
        s.backlog_limit = value;
    else if (mask == AUDIT_STATUS_BACKLOG_WAIT_TIME)
        s.backlog_wait_time = value;
    else if (mask == AUDIT_STATUS_PID)
        s.pid = value;
    else
        return -EINVAL;
    int err = ctl_request(a, AUDIT_SET, NLM_F_ACK, &s, sizeof s, NULL, NULL);
    if (err == 0)
        set_done(a);
    return err;
}

/* ---------------------------------------------------------------------------------------------
 * the event socket */

/* One recvmmsg of up to `want` datagrams into the slots, each counted (datagrams, foreign,
 * truncated); returns how many came, 0 when nothing is readable. A foreign datagram keeps its
 * slot with length 0. An error after some datagrams came is kept by the kernel for the next
 * call (do_recvmmsg stores it in sk_err), so ENOBUFS is still counted once, one call later. */
static size_t recv_datagrams(am_anl *a, unsigned want)
{
    for (;;) {
        for (unsigned i = 0; i < want; i++) {
            a->ev_msgs[i].msg_hdr.msg_namelen = sizeof a->ev_from[i];
            a->ev_msgs[i].msg_hdr.msg_flags = 0;
            a->ev_msgs[i].msg_len = 0;
        }
        int n = recvmmsg(a->ev_fd, a->ev_msgs, want, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ENOBUFS) {
                /* The socket overflowed (multicast): the kernel dropped records. */
                a->st.enobufs++;
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                a->st.recv_errors++;
            return 0;
        }
        a->st.recv_calls++;
        for (int i = 0; i < n; i++) {
            struct mmsghdr *m = &a->ev_msgs[i];
            a->st.datagrams++;
            if (a->ev_from[i].nl_pid != 0) {
                a->st.foreign++;
                m->msg_len = 0;
                continue;
            }
            if (m->msg_hdr.msg_flags & MSG_TRUNC)
                a->st.truncated++;
            if (m->msg_len > EVENT_BUF_BYTES) /* never: recvmmsg reports what it copied */
                m->msg_len = EVENT_BUF_BYTES;
        }
        a->ev_count = (size_t)n;
        a->ev_next = 0;
        a->ev_off = 0;
        return (size_t)n;
    }
}

/* Decodes what is left of the held datagrams; AM_ERR_FULL leaves the rest held. */
static int decode_held(am_anl *a, am_sink *sink)
{
    while (a->ev_next < a->ev_count) {
        const uint8_t *slot = a->ev_buf + a->ev_next * EVENT_BUF_BYTES;
        size_t len = a->ev_msgs[a->ev_next].msg_len;
        int s = AM_OK;
        if (a->ev_off < len) {
            size_t used = 0;
            s = decode(a->parser, sink, slot + a->ev_off, len - a->ev_off, &used, &a->st, a);
            a->ev_off += used;
            if (s == AM_ERR_FULL) {
                if (sink != NULL)
                    a->st.parser_full++;
                return s;
            }
        }
        /* Any other status consumed the datagram (decode skips what it cannot use). */
        a->ev_next++;
        a->ev_off = 0;
        if (s != AM_OK)
            return s;
    }
    return AM_OK;
}

int am_anl_drain(am_anl *a, am_sink *sink, uint32_t max_datagrams)
{
    if (a == NULL)
        return AM_ERR_ARG;
    if (a->ev_fd < 0)
        return AM_OK;
    int s = decode_held(a, sink);
    if (s != AM_OK)
        return s;
    for (uint32_t got = 0; max_datagrams == 0 || got < max_datagrams;) {
        unsigned want = EVENT_SLOTS;
        if (max_datagrams != 0 && max_datagrams - got < want)
            want = max_datagrams - got;
        size_t n = recv_datagrams(a, want);
        if (n == 0)
            return sink != NULL ? am_audit_nl_drain_end(a->parser, sink, mono_ms(), NULL) : AM_OK;
        got += (uint32_t)n;
        s = decode_held(a, sink);
        if (s != AM_OK)
            return s;
    }
    return AM_OK;
}

/* ---------------------------------------------------------------------------------------------
 * rules */

static int string_field(uint32_t field)
{
    return (field >= AUDIT_SUBJ_USER && field <= AUDIT_SUBJ_CLR) ||
           (field >= AUDIT_OBJ_USER && field <= AUDIT_OBJ_LEV_HIGH) || field == AUDIT_WATCH ||
           field == AUDIT_DIR || field == AUDIT_FILTERKEY || field == AUDIT_EXE;
}

/* The agent's exclusions (install_exclusions) are ranges of record types: EOE (1320) to
 * BPRM_FCAPS (1321), records no event reads; PATH (1302) to PATH, which only the `paths` key of
 * exec events reads (exclude_path); PROCTITLE (1327) to PROCTITLE, whose end-of-event mark and
 * title the parser's unmarked mode replaces (exclude_proctitle; 1322-1326 stay). The kernel's exclude filter gives up on a rule with any
 * field it does not filter on (a key among them: the rule would then exclude nothing), so
 * these rules cannot carry our key; their exact shape (msgtype>=A msgtype<=B) is what tells
 * them from an administrator's exclusions (msgtype=EOE, say), which restore and the
 * stale-rule removal never touch. */
enum { EXCL_NONE = 0, EXCL_UNREAD = 1, EXCL_PATH = 2, EXCL_PROCTITLE = 3 };

static void exclusion_fields(struct audit_rule_data *r, int which)
{
    static const uint32_t from[] = {[EXCL_UNREAD] = AUDIT_EOE, [EXCL_PATH] = AUDIT_PATH,
                                    [EXCL_PROCTITLE] = AUDIT_PROCTITLE};
    static const uint32_t to[] = {[EXCL_UNREAD] = AUDIT_BPRM_FCAPS, [EXCL_PATH] = AUDIT_PATH,
                                  [EXCL_PROCTITLE] = AUDIT_PROCTITLE};
    r->flags = AUDIT_FILTER_EXCLUDE;
    r->action = AUDIT_ALWAYS;
    for (size_t i = 0; i < AUDIT_BITMASK_SIZE; i++)
        r->mask[i] = ~0u;
    r->fields[0] = AUDIT_MSGTYPE;
    r->fieldflags[0] = AUDIT_GREATER_THAN_OR_EQUAL;
    r->values[0] = from[which];
    r->fields[1] = AUDIT_MSGTYPE;
    r->fieldflags[1] = AUDIT_LESS_THAN_OR_EQUAL;
    r->values[1] = to[which];
    r->field_count = 2;
}

/* Which of our exclusions a listed rule is (EXCL_NONE: none). */
static int rule_exclusion(const struct audit_rule_data *r, size_t len)
{
    if (len < sizeof *r || (r->flags & ~(uint32_t)AUDIT_FILTER_PREPEND) != AUDIT_FILTER_EXCLUDE)
        return EXCL_NONE;
    for (int which = EXCL_UNREAD; which <= EXCL_PROCTITLE; which++) {
        struct audit_rule_data want;
        memset(&want, 0, sizeof want);
        exclusion_fields(&want, which);
        if (r->action == want.action && r->field_count == want.field_count && r->buflen == 0 &&
            memcmp(r->fields, want.fields, 2 * sizeof want.fields[0]) == 0 &&
            memcmp(r->fieldflags, want.fieldflags, 2 * sizeof want.fieldflags[0]) == 0 &&
            memcmp(r->values, want.values, 2 * sizeof want.values[0]) == 0)
            return which;
    }
    return EXCL_NONE;
}

/* Does a listed rule carry exactly our key? Strings follow in field order in buf. */
static int rule_has_our_key(const struct audit_rule_data *r, size_t len)
{
    if (len < sizeof *r || r->field_count > AUDIT_MAX_FIELDS || r->buflen > len - sizeof *r)
        return 0;
    size_t off = 0;
    for (uint32_t i = 0; i < r->field_count; i++) {
        if (!string_field(r->fields[i]))
            continue;
        size_t n = r->values[i];
        if (n > r->buflen - off)
            return 0;
        if (r->fields[i] == AUDIT_FILTERKEY && n == KEY_LEN &&
            memcmp(r->buf + off, KEY, KEY_LEN) == 0)
            return 1;
        off += n;
    }
    return 0;
}

struct stale_list {
    struct rule items[MAX_STALE];
    size_t count;
    size_t more; /* stale rules beyond MAX_STALE (removed by the next open) */
};

static int list_reply(am_anl *a, const struct nlmsghdr *h, const uint8_t *data, size_t len,
                      void *ctx)
{
    (void)a;
    struct stale_list *list = ctx;
    if (h->nlmsg_type != AUDIT_LIST_RULES || len < sizeof(struct audit_rule_data))
        return 0;
    struct audit_rule_data *r = malloc(len);
    if (r == NULL)
        return 0;
    memcpy(r, data, len);
    int ours = rule_has_our_key(r, len) || rule_exclusion(r, len) != EXCL_NONE;
    if (!ours || list->count >= MAX_STALE) {
        if (ours)
            list->more++;
        free(r);
        return 0;
    }
    list->items[list->count].data = r;
    list->items[list->count].len = len;
    list->count++;
    return 0;
}

static uint32_t syscall_number(uint32_t arch, const char *name, int *found)
{
    for (uint32_t nr = 0; nr < AUDIT_BITMASK_SIZE * 32; nr++) {
        const char *n = am_syscall_name(arch, nr);
        if (n != NULL && strcmp(n, name) == 0) {
            *found = 1;
            return nr;
        }
    }
    *found = 0;
    return 0;
}

__attribute__((format(printf, 2, 3))) static void report_add(am_anl *a, const char *fmt, ...)
{
    size_t used = strlen(a->report);
    if (used + 1 >= sizeof a->report)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->report + used, sizeof a->report - used, fmt, ap);
    va_end(ap);
}

/* A new rule -a always,exit -F arch=ARCH [-F a0=A0] -S ... -k iot-micro-agent with the
 * syscalls of names[] that the arch has; NULL when it has none (or no memory). */
static struct audit_rule_data *build_rule(am_anl *a, uint32_t arch, const char *const *names,
                                          size_t count, int with_a0, uint32_t a0, size_t *len)
{
    size_t size = sizeof(struct audit_rule_data) + KEY_LEN;
    struct audit_rule_data *r = calloc(1, size);
    if (r == NULL)
        return NULL;
    int any = 0;
    const char *arch_name = am_arch_name(arch);
    for (size_t i = 0; i < count; i++) {
        int found;
        uint32_t nr = syscall_number(arch, names[i], &found);
        if (!found) {
            a->st.rules_skipped++;
            report_add(a, " %s has no %s;", arch_name ? arch_name : "?", names[i]);
            continue;
        }
        r->mask[nr / 32] |= 1u << (nr % 32);
        any = 1;
    }
    if (!any) {
        free(r);
        return NULL;
    }
    r->flags = AUDIT_FILTER_EXIT;
    r->action = AUDIT_ALWAYS;
    uint32_t f = 0;
    r->fields[f] = AUDIT_ARCH;
    r->fieldflags[f] = AUDIT_EQUAL;
    r->values[f++] = arch;
    if (with_a0) {
        r->fields[f] = AUDIT_ARG0;
        r->fieldflags[f] = AUDIT_EQUAL;
        r->values[f++] = a0;
    }
    r->fields[f] = AUDIT_FILTERKEY;
    r->fieldflags[f] = AUDIT_EQUAL;
    r->values[f++] = KEY_LEN;
    r->field_count = f;
    r->buflen = KEY_LEN;
    memcpy(r->buf, KEY, KEY_LEN);
    *len = size;
    return r;
}

static void install_rule(am_anl *a, struct audit_rule_data *r, size_t len, const char *what,
                         const char *arch_name)
{
    if (r == NULL)
        return;
    if (a->nrules >= MAX_RULES) {
        free(r);
        return;
    }
    int err = ctl_request(a, AUDIT_ADD_RULE, NLM_F_ACK, r, len, NULL, NULL);
    int shared = err == -EEXIST;
    if (shared) {
        /* Another agent running beside us installed the same rule: its events reach us too
         * (multicast), and the rule is its to remove. Kept, so that the guard puts it back
         * should it go while we still need it. */
        a->st.rules_shared++;
    } else if (err != 0) {
        a->st.rules_failed++;
        report_add(a, " %s %s: refused (%s);", arch_name, what, strerror(-err));
        free(r);
        return;
    }
    a->rules[a->nrules].data = r;
    a->rules[a->nrules].len = len;
    a->rules[a->nrules].shared = shared;
    a->rules[a->nrules].watch = 0;
    a->rules[a->nrules].exclusion = 0;
    a->nrules++;
    if (!shared)
        a->st.rules_installed++;
}

/* -a always,exit -F dir=PATH (a directory: its whole tree) or -F path=PATH (a file, or a
 * path not made yet) -F perm=wa -k iot-micro-agent: the changes under a FileSystem path. */
static void add_watch_rule(am_anl *a, const char *path)
{
    size_t n = strlen(path);
    size_t size = sizeof(struct audit_rule_data) + n + KEY_LEN;
    struct audit_rule_data *r = calloc(1, size);
    if (r == NULL)
        return;
    struct stat sb;
    int dir = stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
    r->flags = AUDIT_FILTER_EXIT;
    r->action = AUDIT_ALWAYS;
    for (size_t i = 0; i < AUDIT_BITMASK_SIZE; i++)
        r->mask[i] = ~0u;
    r->fields[0] = dir ? AUDIT_DIR : AUDIT_WATCH;
    r->fieldflags[0] = AUDIT_EQUAL;
    r->values[0] = (uint32_t)n;
    r->fields[1] = AUDIT_PERM;
    r->fieldflags[1] = AUDIT_EQUAL;
    r->values[1] = AUDIT_PERM_WRITE | AUDIT_PERM_ATTR;
    r->fields[2] = AUDIT_FILTERKEY;
    r->fieldflags[2] = AUDIT_EQUAL;
    r->values[2] = KEY_LEN;
    r->field_count = 3;
    r->buflen = (uint32_t)(n + KEY_LEN);
    memcpy(r->buf, path, n);
    memcpy(r->buf + n, KEY, KEY_LEN);
    size_t before = a->nrules;
    install_rule(a, r, size, "watch", path);
    if (a->nrules > before)
        a->rules[before].watch = 1;
}

/* Whether rule i is the watch rule of path. */
static int watch_rule_is(const struct rule *rule, const char *path)
{
    size_t n = strlen(path);
    return rule->watch && rule->data->values[0] == n && memcmp(rule->data->buf, path, n) == 0;
}

static void install_watch_rules(am_anl *a)
{
    for (size_t i = 0; i < a->nwatches; i++) {
        int have = 0;
        for (size_t j = 0; j < a->nrules && !have; j++)
            have = watch_rule_is(&a->rules[j], a->watches[i]);
        if (!have)
            add_watch_rule(a, a->watches[i]);
    }
}

static void add_rule(am_anl *a, uint32_t arch, const char *const *names, size_t count,
                     int with_a0, uint32_t a0, const char *what)
{
    size_t len = 0;
    struct audit_rule_data *r = build_rule(a, arch, names, count, with_a0, a0, &len);
    const char *arch_name = am_arch_name(arch);
    install_rule(a, r, len, what, arch_name ? arch_name : "?");
}

static void install_arch_rules(am_anl *a, uint32_t arch)
{
    static const char *const exec_calls[] = {"execve", "execveat"};
    static const char *const net_calls[] = {"connect", "accept", "accept4", "bind"};
    static const char *const socketcall[] = {"socketcall"};
    static const uint32_t socket_calls[] = {SYS_BIND_CALL, SYS_CONNECT_CALL, SYS_ACCEPT_CALL,
                                            SYS_ACCEPT4_CALL};
    if (a->opt.exec_rules)
        add_rule(a, arch, exec_calls, 2, 0, 0, "exec");
    if (a->opt.net_rules) {
        add_rule(a, arch, net_calls, 4, 0, 0, "net");
        /* i386 also reaches these calls through socketcall (older C libraries use nothing
         * else): one rule per call number, so that send/recv through it stay unaudited. */
        int found;
        syscall_number(arch, "socketcall", &found);
        if (found && arch == AUDIT_ARCH_I386) {
            for (size_t i = 0; i < 4; i++)
                add_rule(a, arch, socketcall, 1, 1, socket_calls[i], "socketcall");
        }
    }
}

/* Other readers of the records: sockets of the audit netlink family in the multicast group
 * (journald's audit socket, a second agent, auditd's af_unix bridge does not count: it is
 * behind auditd, which is the owner then, not us). -1: /proc/net/netlink unreadable. */
static int multicast_readers(void)
{
    FILE *f = fopen("/proc/net/netlink", "re");
    if (f == NULL)
        return -1;
    char line[256];
    int readers = 0;
    /* sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode; the first line is the header. */
    if (fgets(line, sizeof line, f) == NULL) {
        fclose(f);
        return -1;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned long long sk;
        int proto;
        unsigned int pid, groups;
        if (sscanf(line, "%llx %d %u %x", &sk, &proto, &pid, &groups) == 4 &&
            proto == NETLINK_AUDIT && groups != 0)
            readers++;
    }
    fclose(f);
    return readers;
}

/* As the audit daemon, the kernel sends us every record of every audited event, and kauditd
 * wakes and sends a datagram for each: an exec is SYSCALL, EXECVE, CWD, PATH (one or two),
 * PROCTITLE and EOE, and BPRM_FCAPS when the new program's capabilities differ (root's execs);
 * a connect SYSCALL, SOCKADDR, PROCTITLE and EOE. Every one of them feeds a key of the events
 * (docs/events.md) but EOE and BPRM_FCAPS: the kernel writes PROCTITLE last in every syscall's
 * event and the parser completes the event on it (the EOE that follows finds it gone), and no
 * event has a key from BPRM_FCAPS. So both are excluded (one datagram in seven or two in eight
 * of an exec, one in four of a connect). PATH records feed only the `paths` key of exec events
 * (the program's and the interpreter's name, inode and mode) and the FileSystem collector's
 * actors: with exclude_path and no watch rules they are excluded too (two more of an exec's
 * datagrams). Not beside another reader of the multicast group: what it reads may want them;
 * not when not the owner (auditd's log keeps them). Refused by the kernel: counted and
 * reported, and the events are complete as before. */
static int exclusion_index(const am_anl *a, int which)
{
    for (size_t i = 0; i < a->nrules; i++)
        if (a->rules[i].exclusion == which)
            return (int)i;
    return -1;
}

static void add_exclusion(am_anl *a, int which)
{
    if (exclusion_index(a, which) >= 0)
        return;
    struct audit_rule_data *r = calloc(1, sizeof *r);
    if (r == NULL)
        return;
    exclusion_fields(r, which);
    size_t before = a->nrules;
    install_rule(a, r, sizeof *r,
                 which == EXCL_PATH        ? "msgtype PATH"
                 : which == EXCL_PROCTITLE ? "msgtype PROCTITLE"
                                           : "msgtype EOE..BPRM_FCAPS",
                 "exclude");
    if (a->nrules > before)
        a->rules[before].exclusion = which;
}

static void remove_rule_at(am_anl *a, size_t i)
{
    if (a->rules[i].shared) {
        /* another agent's rule: it stays */
    } else if (ctl_request(a, AUDIT_DEL_RULE, NLM_F_ACK, a->rules[i].data, a->rules[i].len,
                           NULL, NULL) == 0) {
        a->st.rules_removed++;
    } else {
        a->st.rules_remove_failed++;
    }
    free(a->rules[i].data);
    a->rules[i] = a->rules[--a->nrules];
}

/* PATH records excluded exactly while no watch rule wants them (am_anl_watch calls it too). */
static void sync_path_exclusion(am_anl *a)
{
    int want = a->exclusions_allowed && a->opt.exclude_path && a->nwatches == 0;
    int at = exclusion_index(a, EXCL_PATH);
    if (want && at < 0)
        add_exclusion(a, EXCL_PATH);
    else if (!want && at >= 0)
        remove_rule_at(a, (size_t)at);
    a->st.path_excluded = exclusion_index(a, EXCL_PATH) >= 0;
}

/* PROCTITLE excluded, and the parser in unmarked mode, exactly while no watch rule is
 * installed: with watches, the FileSystem collector waits join_ms (300 ms) for the audit event
 * of each change, and an event without its end mark completes only at a later drain end (up to
 * the next timer's, a second, when nothing else arrives). Events open when the mode goes off
 * complete by timeout. */
static void sync_proctitle_exclusion(am_anl *a)
{
    int want = a->exclusions_allowed && a->opt.exclude_proctitle && a->nwatches == 0 &&
               exclusion_index(a, EXCL_UNREAD) >= 0; /* only where EOE is left out too */
    int at = exclusion_index(a, EXCL_PROCTITLE);
    if (want && at < 0) {
        /* The parser's mode first: an event without PROCTITLE must never wait for it. */
        if (am_audit_nl_unmarked(a->parser, 1) == AM_OK)
            add_exclusion(a, EXCL_PROCTITLE);
    } else if (!want && at >= 0) {
        remove_rule_at(a, (size_t)at);
    }
    a->st.proctitle_excluded = exclusion_index(a, EXCL_PROCTITLE) >= 0;
    if (!a->st.proctitle_excluded)
        am_audit_nl_unmarked(a->parser, 0);
}

static void install_exclusions(am_anl *a)
{
    if ((!a->opt.exclude_unread && !a->opt.exclude_path && !a->opt.exclude_proctitle) ||
        a->mode != AM_ANL_OWNER)
        return;
    int readers = multicast_readers();
    if (readers != 0) {
        a->st.unread_kept = 1;
        a->kept_why = readers < 0 ? "/proc/net/netlink unreadable"
                                  : "another reader of the audit multicast group";
        if (readers < 0)
            report_add(a, " every record type kept: /proc/net/netlink unreadable;");
        else
            report_add(a, " every record type kept: %d other reader(s) of the audit "
                          "multicast group;", readers);
        return;
    }
    a->exclusions_allowed = 1;
    if (a->opt.exclude_unread) {
        add_exclusion(a, EXCL_UNREAD);
        a->st.unread_excluded = exclusion_index(a, EXCL_UNREAD) >= 0;
        a->st.unread_kept = !a->st.unread_excluded;
        if (a->st.unread_kept)
            a->kept_why = "the kernel refused the exclusion";
        if (a->st.unread_excluded)
            report_add(a, " EOE and BPRM_FCAPS excluded (no event reads them);");
    }
    sync_path_exclusion(a);
    if (a->st.path_excluded)
        report_add(a, " PATH excluded (exec events without `paths`);");
    sync_proctitle_exclusion(a);
    if (a->st.proctitle_excluded)
        report_add(a, " PROCTITLE excluded (events complete at drain ends);");
}

static void arches(uint32_t out[2], size_t *count, int compat)
{
    struct utsname u;
    *count = 0;
    if (uname(&u) != 0)
        return;
    if (strcmp(u.machine, "x86_64") == 0) {
        out[(*count)++] = AUDIT_ARCH_X86_64;
        if (compat)
            out[(*count)++] = AUDIT_ARCH_I386;
    } else if (strcmp(u.machine, "aarch64") == 0) {
        out[(*count)++] = AUDIT_ARCH_AARCH64;
        if (compat)
            out[(*count)++] = AUDIT_ARCH_ARM;
    } else if (u.machine[0] == 'i' && strcmp(u.machine + 2, "86") == 0) {
        out[(*count)++] = AUDIT_ARCH_I386;
    } else if (strncmp(u.machine, "arm", 3) == 0) {
        out[(*count)++] = AUDIT_ARCH_ARM;
    }
}

static void remove_stale_rules(am_anl *a)
{
    struct stale_list list;
    memset(&list, 0, sizeof list);
    int err = ctl_request(a, AUDIT_LIST_RULES, 0, NULL, 0, list_reply, &list);
    if (err != 0)
        report_add(a, " listing rules failed (%s);", strerror(-err));
    for (size_t i = 0; i < list.count; i++) {
        if (ctl_request(a, AUDIT_DEL_RULE, NLM_F_ACK, list.items[i].data, list.items[i].len,
                        NULL, NULL) == 0)
            a->st.stale_rules_removed++;
        free(list.items[i].data);
    }
    if (list.count > 0 || list.more > 0)
        report_add(a, " removed %llu of %zu stale rule(s) with our key;",
                   (unsigned long long)a->st.stale_rules_removed, list.count + list.more);
}

static void install_rules(am_anl *a)
{
    if (!a->opt.exec_rules && !a->opt.net_rules && a->nwatches == 0) {
        report_add(a, "no rules asked for");
        return;
    }
    if (a->found.enabled == 2) {
        report_add(a, "audit is locked (enabled 2): rules cannot change");
        return;
    }
    /* Rules with our key are stale (a killed run's) only where no live agent can hold them:
     * when we became the audit daemon. Beside a live owner they may be its rules, in use. */
    if (a->mode == AM_ANL_OWNER)
        remove_stale_rules(a);
    install_watch_rules(a);
    uint32_t list[2];
    size_t count;
    arches(list, &count, a->opt.compat_arch != 0);
    if (count == 0) {
        report_add(a, " unknown machine: no rules;");
        return;
    }
    for (size_t i = 0; i < count; i++)
        install_arch_rules(a, list[i]);
    install_exclusions(a);
    size_t used = strlen(a->report);
    char head[64];
    snprintf(head, sizeof head, "%llu rule(s) installed, %llu failed;",
             (unsigned long long)a->st.rules_installed, (unsigned long long)a->st.rules_failed);
    /* The summary first, then the details gathered above. */
    if (strlen(head) + used + 1 < sizeof a->report) {
        memmove(a->report + strlen(head), a->report, used + 1);
        memcpy(a->report, head, strlen(head));
    }
}

static void remove_rules(am_anl *a)
{
    for (size_t i = 0; i < a->nrules; i++) {
        if (a->rules[i].shared) {
            free(a->rules[i].data);
            a->rules[i].data = NULL;
            continue;
        }
        if (ctl_request(a, AUDIT_DEL_RULE, NLM_F_ACK, a->rules[i].data, a->rules[i].len, NULL,
                        NULL) == 0)
            a->st.rules_removed++;
        else
            a->st.rules_remove_failed++;
        free(a->rules[i].data);
        a->rules[i].data = NULL;
    }
    a->nrules = 0;
}

/* ---------------------------------------------------------------------------------------------
 * mode */

static void owner_name(uint32_t pid, char *out, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%u/comm", pid);
    out[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, out, cap - 1);
    close(fd);
    if (n <= 0) {
        out[0] = '\0';
        return;
    }
    out[n] = '\0';
    char *nl = strchr(out, '\n');
    if (nl != NULL)
        *nl = '\0';
}

static int pid_alive(uint32_t pid)
{
    return pid != 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

/* AUDIT_SET pid from the event socket (the kernel sends records to the socket that asked),
 * waiting for its ack there; records that come first go to the parser. 0 or -errno. */
static int become_owner(am_anl *a)
{
    struct audit_status s;
    memset(&s, 0, sizeof s);
    s.mask = AUDIT_STATUS_PID;
    s.pid = (uint32_t)a->pid;
    uint32_t seq = send_request(a, a->ev_fd, AUDIT_SET, NLM_F_ACK, &s, sizeof s);
    if (seq == 0)
        return -errno;
    a->ack_seq = seq;
    a->ack_seen = 0;
    uint64_t deadline = mono_ms() + a->opt.reply_timeout_ms;
    while (!a->ack_seen) {
        uint64_t now = mono_ms();
        if (now >= deadline)
            break;
        struct pollfd pfd = {.fd = a->ev_fd, .events = POLLIN};
        if (poll(&pfd, 1, (int)(deadline - now)) <= 0)
            continue;
        if (am_anl_drain(a, NULL, 1) == AM_ERR_FULL)
            break; /* a record came first (no sink yet: it waits): ask the kernel instead */
    }
    a->ack_seq = 0;
    if (a->ack_seen && a->ack_error != 0)
        return a->ack_error;
    if (a->ack_seen)
        set_done(a);
    struct am_anl_status now;
    if (get_status(a, &now) != 0)
        return -EIO;
    return now.pid == (uint32_t)a->pid ? 0 : -EBUSY;
}

/* Appends to the state string. */
__attribute__((format(printf, 2, 3))) static void state_add(am_anl *a, const char *fmt, ...)
{
    size_t used = strlen(a->state);
    if (used + 1 >= sizeof a->state)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->state + used, sizeof a->state - used, fmt, ap);
    va_end(ap);
}

int am_anl_open(am_anl *a)
{
    if (a == NULL || a->opened || a->closed)
        return AM_ERR_ARG;
    a->opened = 1;
    a->pid = getpid();
    if (a->ev_fd < 0 || a->ctl_fd < 0)
        return AM_OK; /* unavailable, as am_anl_new said in the state */
    a->state[0] = '\0';
    int err = a->probed ? 0 : get_status(a, &a->found);
    if (err != 0) {
        state_add(a, "unavailable: AUDIT_GET failed: %s", strerror(-err));
        return AM_OK;
    }
    a->last_lost = a->found.lost;
    char comm[32];
    uint32_t owner = a->found.pid;
    int owned = owner != 0 && pid_alive(owner);
    int mine = owner == (uint32_t)a->pid;
    err = -EBUSY;
    if (a->opt.take_ownership && !owned) {
        err = become_owner(a);
        if (err == 0) {
            a->mode = AM_ANL_OWNER;
            a->state[0] = '\0';
            state_add(a, "owner");
            if (a->found.enabled == 0) {
                int e = set_status(a, AUDIT_STATUS_ENABLED, 1);
                if (e == 0)
                    a->set_enabled = 1;
                else
                    state_add(a, "; enabling audit failed: %s", strerror(-e));
            }
            if (a->opt.backlog_limit > a->found.backlog_limit && a->found.enabled != 2) {
                if (set_status(a, AUDIT_STATUS_BACKLOG_LIMIT, a->opt.backlog_limit) == 0)
                    a->set_backlog = 1;
            }
            /* A task whose record finds the backlog full sleeps up to backlog_wait_time (60 s
             * by default) for the reader: a stopped or starved agent would stall the device.
             * 0 drops that record at once, counted in `lost`. Not when failure is 2: there a
             * counted loss panics the kernel, and the administrator chose waiting over that. */
            if (a->opt.drop_when_full && a->found.enabled != 2 &&
                a->found.failure != AUDIT_FAIL_PANIC && a->found.backlog_wait_time != 0) {
                if (set_status(a, AUDIT_STATUS_BACKLOG_WAIT_TIME, 0) == 0) {
                    a->set_wait = 1;
                    a->st.wait_time_set = 1;
                } else {
                    state_add(a, "; setting backlog_wait_time 0 failed");
                }
            } else if (a->opt.drop_when_full && a->found.failure == AUDIT_FAIL_PANIC) {
                state_add(a, "; backlog_wait_time kept: failure is 2 (a loss would panic)");
            }
            if (a->found.enabled == 2)
                state_add(a, "; audit is locked (enabled 2): rules and settings cannot change");
        } else {
            /* Someone won the race, or the kernel refused: fall back to reading the group. */
            struct am_anl_status now;
            if (get_status(a, &now) == 0) {
                owner = now.pid;
                owned = owner != 0;
                mine = owner == (uint32_t)a->pid;
            }
        }
    }
    if (a->mode != AM_ANL_OWNER) {
        int group = AUDIT_NLGRP_READLOG;
        if (setsockopt(a->ev_fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof group) != 0) {
            state_add(a, "unavailable: cannot join the audit multicast group (needs "
                         "CAP_AUDIT_READ): %s", strerror(errno));
            return AM_OK;
        }
        a->mode = AM_ANL_MULTICAST;
        owner_name(owner, comm, sizeof comm);
        if (mine)
            state_add(a, "multicast: owned by this process (pid %u)", owner);
        else if (owned)
            state_add(a, "multicast: owned by pid %u (%s)", owner, comm[0] ? comm : "?");
        else if (!a->opt.take_ownership)
            state_add(a, "multicast: no audit daemon (taking ownership is off)");
        else
            state_add(a, "multicast: could not become the audit daemon: %s", strerror(-err));
        if (a->found.enabled == 0)
            state_add(a, "; audit is disabled (enabled 0): no events will come");
        else if (a->found.enabled == 2)
            state_add(a, "; audit is locked (enabled 2): rules cannot change");
    }
    install_rules(a);
    /* What the agent then costs per event is not what it could: the state (status) says why. */
    if (a->st.unread_kept && a->kept_why != NULL)
        state_add(a, "; every record type asked for: %s", a->kept_why);
    return AM_OK;
}

int am_anl_probe(am_anl *a)
{
    if (a == NULL || a->opened || a->closed)
        return AM_ERR_ARG;
    if (a->ctl_fd < 0)
        return AM_EMPTY;
    a->probed = get_status(a, &a->found) == 0;
    return a->probed ? AM_OK : AM_EMPTY;
}

/* Deletes every listed rule with our key; the rules of others are never touched, so they keep
 * their order. A listing holds at most MAX_STALE of ours: list again while some were left. */
static void restore_rules(am_anl *a, struct am_anl_restore_report *r)
{
    for (int round = 0; round < 64; round++) {
        struct stale_list list;
        memset(&list, 0, sizeof list);
        if (ctl_request(a, AUDIT_LIST_RULES, 0, NULL, 0, list_reply, &list) != 0) {
            for (size_t i = 0; i < list.count; i++)
                free(list.items[i].data);
            return;
        }
        size_t deleted = 0;
        for (size_t i = 0; i < list.count; i++) {
            if (ctl_request(a, AUDIT_DEL_RULE, NLM_F_ACK, list.items[i].data, list.items[i].len,
                            NULL, NULL) == 0) {
                r->rules_removed++;
                deleted++;
            } else {
                r->rules_remove_failed++;
            }
            free(list.items[i].data);
        }
        if (list.more == 0 || deleted == 0)
            return;
    }
}

static uint32_t rules_with_our_key(am_anl *a, int *ok)
{
    struct stale_list list;
    memset(&list, 0, sizeof list);
    *ok = ctl_request(a, AUDIT_LIST_RULES, 0, NULL, 0, list_reply, &list) == 0;
    for (size_t i = 0; i < list.count; i++)
        free(list.items[i].data);
    return (uint32_t)(list.count + list.more);
}

/* Rules of ours that another process deleted (auditctl -D, augenrules --load at a package's
 * upgrade, an intruder blinding the agent before acting) are added again: when fewer rules
 * with our key are listed than we installed, every rule we hold is deleted (a rule still there
 * goes; ENOENT for one already gone) and added back, so that none is doubled and the set is
 * whole again. Which ones went is not worth telling apart. */
static void guard_rules(am_anl *a)
{
    if (a->nrules == 0 || a->found.enabled == 2)
        return;
    int ok;
    uint32_t have = rules_with_our_key(a, &ok);
    a->st.rule_checks++;
    if (!ok) {
        a->st.rule_check_errors++;
        return;
    }
    if (have >= a->nrules)
        return;
    a->st.rules_lost += a->nrules - have;
    for (size_t i = 0; i < a->nrules; i++) {
        (void)ctl_request(a, AUDIT_DEL_RULE, NLM_F_ACK, a->rules[i].data, a->rules[i].len, NULL,
                          NULL);
        if (ctl_request(a, AUDIT_ADD_RULE, NLM_F_ACK, a->rules[i].data, a->rules[i].len, NULL,
                        NULL) == 0) {
            a->st.rules_readded++;
            a->rules[i].shared = 0; /* added by us now: ours to remove at close */
        } else {
            a->st.rules_readd_failed++;
        }
    }
}

/* One status field put back when it differs; counts what it did. */
static void restore_field(am_anl *a, uint32_t mask, uint32_t now, uint32_t saved,
                          struct am_anl_restore_report *r)
{
    if (now == saved)
        return;
    if (set_status(a, mask, saved) == 0)
        r->settings_changed++;
    else
        r->settings_failed++;
}

int am_anl_restore(am_anl *a, const struct am_anl_status *saved,
                   struct am_anl_restore_report *report)
{
    struct am_anl_restore_report r;
    memset(&r, 0, sizeof r);
    if (report != NULL)
        *report = r;
    if (a == NULL || saved == NULL || a->opened || a->closed)
        return AM_ERR_ARG;
    if (a->ctl_fd < 0)
        return AM_EMPTY;
    struct am_anl_status now;
    if (get_status(a, &now) != 0)
        return AM_EMPTY;
    restore_rules(a, &r);
    uint32_t self = (uint32_t)getpid();
    /* A live audit daemon that is not us (auditd started after the agent was killed) owns the
     * settings now: only our rules were ours to remove. */
    r.settings_skipped = now.pid != 0 && now.pid != self && pid_alive(now.pid);
    if (!r.settings_skipped && now.enabled != 2) {
        restore_field(a, AUDIT_STATUS_FAILURE, now.failure, saved->failure, &r);
        restore_field(a, AUDIT_STATUS_RATE_LIMIT, now.rate_limit, saved->rate_limit, &r);
        restore_field(a, AUDIT_STATUS_BACKLOG_LIMIT, now.backlog_limit, saved->backlog_limit, &r);
        restore_field(a, AUDIT_STATUS_BACKLOG_WAIT_TIME, now.backlog_wait_time,
                      saved->backlog_wait_time, &r);
        restore_field(a, AUDIT_STATUS_ENABLED, now.enabled, saved->enabled, &r);
        /* The killed agent's pid stays registered until the kernel fails a send to it; our
         * AUDIT_SET pid 0 makes the kernel probe it (AUDIT_REPLACE) and clear it. */
        if (now.pid != 0) {
            if (set_status(a, AUDIT_STATUS_PID, 0) == 0)
                r.ownership_released = 1;
            else
                r.settings_failed++;
        }
    }
    int status = AM_OK;
    int listed;
    r.rules_left = rules_with_our_key(a, &listed);
    if (get_status(a, &now) != 0 || !listed) {
        status = AM_EMPTY;
    } else {
        if (!r.settings_skipped) {
            r.mismatched += now.enabled != saved->enabled;
            r.mismatched += now.failure != saved->failure;
            r.mismatched += now.rate_limit != saved->rate_limit;
            r.mismatched += now.backlog_limit != saved->backlog_limit;
            r.mismatched += now.backlog_wait_time != saved->backlog_wait_time;
            /* A dead pid in saved was the kernel's stale registration: 0 is what it stood for. */
            r.mismatched += now.pid != 0 && now.pid != saved->pid;
        }
        if (r.mismatched != 0 || r.rules_left != 0)
            status = AM_ERR_LIMIT;
    }
    if (report != NULL)
        *report = r;
    return status;
}

/* ---------------------------------------------------------------------------------------------
 * the rest of the API */

void am_anl_default_options(struct am_anl_options *out)
{
    if (out == NULL)
        return;
    out->take_ownership = 1;
    out->backlog_limit = 8192;
    out->exec_rules = 1;
    out->net_rules = 1;
    out->compat_arch = 1;
    out->rcvbuf_bytes = 4u << 20;
    out->reply_timeout_ms = 2000;
    out->drop_when_full = 1;
    out->exclude_unread = 1;
    out->exclude_path = 1;
    out->exclude_proctitle = 1;
}

am_anl *am_anl_new(const struct am_anl_options *opts, const struct am_audit_options *audit)
{
    struct am_anl_options o;
    am_anl_default_options(&o);
    if (opts != NULL)
        o = *opts;
    if (o.take_ownership > 1 || o.exec_rules > 1 || o.net_rules > 1 || o.compat_arch > 1 || o.drop_when_full > 1 ||
        o.exclude_unread > 1 || o.exclude_path > 1 || o.exclude_proctitle > 1 ||
        o.rcvbuf_bytes > (1u << 30) || o.reply_timeout_ms < 1 || o.reply_timeout_ms > 60000 ||
        o.backlog_limit > (1u << 30))
        return NULL;
    am_anl *a = calloc(1, sizeof *a);
    if (a == NULL)
        return NULL;
    a->opt = o;
    const char *kill_after = getenv("AM_ANL_KILL_AFTER");
    if (kill_after != NULL)
        a->kill_after_set = (uint32_t)strtoul(kill_after, NULL, 10);
    a->ev_fd = -1;
    a->ctl_fd = -1;
    a->parser = am_audit_new(audit);
    a->ev_buf = malloc((size_t)EVENT_SLOTS * EVENT_BUF_BYTES);
    a->ctl_buf = malloc(CTL_BUF_BYTES);
    if (a->parser == NULL || a->ev_buf == NULL || a->ctl_buf == NULL) {
        am_anl_free(a);
        return NULL;
    }
    for (size_t i = 0; i < EVENT_SLOTS; i++) {
        a->ev_iov[i] = (struct iovec){a->ev_buf + i * EVENT_BUF_BYTES, EVENT_BUF_BYTES};
        a->ev_msgs[i].msg_hdr = (struct msghdr){.msg_name = &a->ev_from[i],
                                                .msg_namelen = sizeof a->ev_from[i],
                                                .msg_iov = &a->ev_iov[i], .msg_iovlen = 1};
    }
    a->ev_fd = open_socket();
    a->ctl_fd = open_socket();
    if (a->ev_fd < 0 || a->ctl_fd < 0) {
        snprintf(a->state, sizeof a->state, "unavailable: no NETLINK_AUDIT socket: %s",
                 strerror(errno));
    } else {
        snprintf(a->state, sizeof a->state, "not opened");
        int size = (int)o.rcvbuf_bytes;
        if (size > 0 && setsockopt(a->ev_fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0)
            (void)setsockopt(a->ev_fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    }
    return a;
}

int am_anl_mode(const am_anl *a)
{
    return a == NULL ? AM_ANL_UNAVAILABLE : a->mode;
}

const char *am_anl_state(const am_anl *a)
{
    return a == NULL ? "unavailable" : a->state;
}

const char *am_anl_rules_report(const am_anl *a)
{
    return a == NULL ? "" : a->report;
}

int am_anl_found_status(const am_anl *a, struct am_anl_status *out)
{
    if (a == NULL || out == NULL)
        return AM_ERR_ARG;
    *out = a->found;
    return a->opened || a->probed ? AM_OK : AM_EMPTY;
}

int am_anl_fileno(const am_anl *a)
{
    return a == NULL ? -1 : a->ev_fd;
}

int am_anl_poll_status(am_anl *a, struct am_anl_status *out)
{
    if (a == NULL)
        return AM_ERR_ARG;
    if (!a->opened || a->closed || a->ctl_fd < 0 || a->mode == AM_ANL_UNAVAILABLE)
        return AM_EMPTY;
    struct am_anl_status s;
    if (get_status(a, &s) != 0) {
        a->st.status_errors++;
        return AM_EMPTY;
    }
    a->st.status_polls++;
    /* `lost` only grows, except when someone resets it (AUDIT_STATUS_LOST): then it counts
     * from zero again. A 32-bit wrap between two polls is not plausible. */
    if (s.lost >= a->last_lost)
        a->st.kernel_lost_delta += s.lost - a->last_lost;
    else
        a->st.kernel_lost_delta += s.lost;
    a->last_lost = s.lost;
    if (a->mode == AM_ANL_OWNER && s.pid != (uint32_t)a->pid) {
        /* The kernel resets its audit daemon when sends to it keep failing (a reader starved
         * for longer than the kernel's send timeout, 100 ms on 6.x); what it could not send
         * it printed and, unless booted with audit=1, dropped without counting `lost`. */
        a->st.ownership_lost++;
        if ((s.pid == 0 || !pid_alive(s.pid)) && become_owner(a) == 0) {
            a->st.ownership_regained++;
            a->state[0] = '\0';
            state_add(a, "owner (the kernel dropped us %llu time(s); records lost then)",
                      (unsigned long long)a->st.ownership_lost);
        } else {
            a->state[0] = '\0';
            state_add(a, "owner lost: the audit daemon is now pid %u", s.pid);
        }
    }
    if (a->mode == AM_ANL_OWNER && s.pid == (uint32_t)a->pid && s.enabled == 0) {
        /* Someone turned audit off under us (auditctl -e 0): nothing would arrive. */
        a->st.disabled_by_others++;
        if (set_status(a, AUDIT_STATUS_ENABLED, 1) == 0) {
            a->st.reenabled++;
            s.enabled = 1;
        }
    }
    /* Owner or multicast: our rules, and those we share with another agent. */
    if (a->st.config_changes != a->config_changes_guarded ||
        ++a->polls_unlisted >= RULES_LISTED_EVERY) {
        a->config_changes_guarded = a->st.config_changes;
        a->polls_unlisted = 0;
        guard_rules(a);
    }
    if (out != NULL)
        *out = s;
    return AM_OK;
}

int am_anl_expire(am_anl *a, am_sink *sink, uint64_t now_ms)
{
    if (a == NULL)
        return AM_ERR_ARG;
    if (a->st.proctitle_excluded) {
        /* Unmarked mode: the last events of a burst complete at a drain end, and after a burst
         * no readable socket calls for one: the timer's drain is it (ending with the socket
         * read to EAGAIN, so nothing unread is cut off). */
        int s = am_anl_drain(a, sink, 0);
        if (s != AM_OK)
            return s;
    }
    return am_audit_expire(a->parser, sink, now_ms);
}

int am_anl_flush(am_anl *a, am_sink *sink)
{
    return a == NULL ? AM_ERR_ARG : am_audit_flush(a->parser, sink);
}

void am_anl_stats(const am_anl *a, struct am_anl_stats *out, struct am_audit_stats *parser)
{
    if (out != NULL)
        memset(out, 0, sizeof *out);
    if (parser != NULL)
        memset(parser, 0, sizeof *parser);
    if (a == NULL)
        return;
    if (out != NULL) {
        *out = a->st;
        audit_nl_counters(a->parser, out);
    }
    if (parser != NULL)
        am_audit_stats(a->parser, NULL, parser);
}

int am_anl_close(am_anl *a)
{
    if (a == NULL)
        return AM_ERR_ARG;
    if (a->closed)
        return AM_OK;
    a->closed = 1;
    if (a->opened && a->pid == getpid() && a->ctl_fd >= 0) {
        remove_rules(a);
        if (a->mode == AM_ANL_OWNER) {
            if (a->set_enabled)
                (void)set_status(a, AUDIT_STATUS_ENABLED, a->found.enabled);
            if (a->set_backlog)
                (void)set_status(a, AUDIT_STATUS_BACKLOG_LIMIT, a->found.backlog_limit);
            if (a->set_wait)
                (void)set_status(a, AUDIT_STATUS_BACKLOG_WAIT_TIME, a->found.backlog_wait_time);
            (void)set_status(a, AUDIT_STATUS_PID, 0);
        }
    }
    for (size_t i = 0; i < a->nrules; i++)
        free(a->rules[i].data);
    a->nrules = 0;
    for (size_t i = 0; i < a->nwatches; i++)
        free(a->watches[i]);
    a->nwatches = 0;
    if (a->ev_fd >= 0)
        close(a->ev_fd);
    if (a->ctl_fd >= 0)
        close(a->ctl_fd);
    a->ev_fd = a->ctl_fd = -1;
    a->ev_count = a->ev_next = a->ev_off = 0;
    if (a->mode != AM_ANL_UNAVAILABLE)
        snprintf(a->state, sizeof a->state, "closed");
    return AM_OK;
}

int am_anl_watch(am_anl *a, const char *list, size_t len)
{
    if (a == NULL || a->closed || (list == NULL && len > 0))
        return AM_ERR_ARG;
    char *fresh[MAX_WATCHES];
    size_t n = 0, start = 0;
    for (size_t i = 0; len > 0 && i <= len; i++) {
        if (i < len && list[i] != ',')
            continue;
        size_t pn = i - start;
        const char *p = list + start;
        start = i + 1;
        char *copy = NULL;
        if (n < MAX_WATCHES && pn > 0 && pn < PATH_MAX && p[0] == '/' &&
            memchr(p, '\0', pn) == NULL && (copy = malloc(pn + 1)) != NULL) {
            memcpy(copy, p, pn);
            copy[pn] = '\0';
        }
        if (copy == NULL) {
            for (size_t j = 0; j < n; j++)
                free(fresh[j]);
            return AM_ERR_ARG;
        }
        fresh[n++] = copy;
    }
    for (size_t i = 0; i < a->nwatches; i++)
        free(a->watches[i]);
    memcpy(a->watches, fresh, n * sizeof *fresh);
    a->nwatches = n;
    if (!a->opened || a->mode == AM_ANL_UNAVAILABLE || a->found.enabled == 2)
        return AM_OK; /* open installs them */
    /* Opened: the rules of paths that went are removed, those of new paths added. */
    for (size_t i = 0; i < a->nrules;) {
        int keep = !a->rules[i].watch;
        for (size_t j = 0; j < a->nwatches && !keep; j++)
            keep = watch_rule_is(&a->rules[i], a->watches[j]);
        if (keep) {
            i++;
            continue;
        }
        remove_rule_at(a, i);
    }
    /* Before the new watch rules: their events need PATH (and PROCTITLE, which ends them in
     * time for FileSystem's join) from the first one on. */
    sync_path_exclusion(a);
    sync_proctitle_exclusion(a);
    install_watch_rules(a);
    return AM_OK;
}

void am_anl_free(am_anl *a)
{
    if (a == NULL)
        return;
    am_anl_close(a);
    am_audit_free(a->parser);
    free(a->ev_buf);
    free(a->ctl_buf);
    free(a);
}
