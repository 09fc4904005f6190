/* sock_diag.c: the socket table (core_sock_diag.h). A snapshot is built from four
 * NETLINK_SOCK_DIAG dumps (TCP and UDP, IPv4 and IPv6; or the four /proc/net files), keeps the
 * listening and connected sockets, maps their inodes to processes and becomes `cur`. `base`
 * holds the connections reported open so far: changes() reports what is in one and not the
 * other and updates base as it writes each event, so that a call cut short by a full sink
 * resumes where it stopped and a snapshot taken in between loses nothing. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core.h"
#include "core_sock_diag.h"
#include "index.h"
#include "ip_text.h"
#include "proc_net.h"
#include "sink.h"
#include "sock_owner.h"

enum {
    RECV_BUF = 65536,
    /* skip_quiet_tcp: a whole TCP dump at least every this many + 1 snapshots (30 s at
     * NetworkActivity's 2 s), for a connection that opened without counting as an open
     * (a TCP_REPAIR restore). */
    TCP_SKIPS_MAX = 14,
    TCP_ST_ESTABLISHED = 1,
    TCP_ST_SYN_SENT = 2,
    TCP_ST_FIN_WAIT1 = 4,
    TCP_ST_FIN_WAIT2 = 5,
    TCP_ST_CLOSE = 7,
    TCP_ST_CLOSE_WAIT = 8,
    TCP_ST_LAST_ACK = 9,
    TCP_ST_LISTEN = 10,
    TCP_ST_CLOSING = 11,
    /* The TCP states snap_add keeps (listening and connected): the kernel skips the others
     * (TIME_WAIT above all, thousands on a busy host) before filling a message. */
    TCP_KEPT_STATES = (1u << TCP_ST_ESTABLISHED) | (1u << TCP_ST_SYN_SENT) |
                      (1u << TCP_ST_FIN_WAIT1) | (1u << TCP_ST_FIN_WAIT2) |
                      (1u << TCP_ST_CLOSE_WAIT) | (1u << TCP_ST_LAST_ACK) |
                      (1u << TCP_ST_LISTEN) | (1u << TCP_ST_CLOSING)
};

/* ---- the snapshot tables ---- */

/* What identifies a socket across snapshots: the inode and both ends. Packed without holes,
 * and zeroed before it is filled, so that its bytes are the key. */
struct sock_key {
    uint8_t laddr[16];
    uint8_t raddr[16];
    uint32_t inode;
    uint16_t lport, rport;
    uint8_t proto;  /* IPPROTO_TCP, IPPROTO_UDP */
    uint8_t fam;    /* 4 or 6 */
    uint8_t pad[2];
};

enum sock_kind { SK_LISTEN = 1, SK_CONN = 2 };
enum sock_flags {
    SKF_INFO = 1,    /* rx, tx from tcp_info */
    SKF_SENT = 2,    /* sent from tcp_info */
    SKF_IN = 4,      /* direction decided at open: inbound */
    SKF_OUT = 8      /* outbound */
};

struct sock_entry {
    struct sock_key k;
    uint64_t rx, tx, sent;
    uint32_t uid;
    uint32_t owner_pos; /* where its owner was at the last commit (owners_at checks it) */
    uint8_t state;    /* TCP state number (UDP: 1 connected, 7 unconnected) */
    uint8_t kind;
    uint8_t flags;
};

/* Sockets by key (index.h); positions are the dense order the events walk. */
struct sock_tab {
    am_index x;
};

struct am_sock {
    struct am_sock_options opt;
    int source;        /* AM_SOCK_DIAG or AM_SOCK_PROCNET */
    int source_err;    /* errno that ruled sock_diag out */
    int fd;
    int tcp_both;      /* TCPDIAG_GETSOCK answers: one TCP dump for IPv4 and IPv6 */
    uint32_t seq;
    uint8_t *buf;      /* receive / read buffer */
    size_t buf_cap;
    struct sock_tab build, cur, base;
    int building;
    int build_overflow;
    int cur_overflow;
    int have_cur;
    int base_ready;
    uint64_t cur_ts;
    uint32_t listen_cursor;
    uint8_t listen_ports[2][8192]; /* cur's listening ports, tcp and udp: a bit per port */
    uint32_t cur_tcp_conns;  /* TCP connections in cur */
    uint64_t tcp_opens;      /* ActiveOpens + PassiveOpens read before cur's TCP dump */
    int tcp_opens_known;     /* 0: no snapshot since the last am_sock_commit took a TCP dump */
    uint32_t tcp_skips;      /* snapshots in a row that kept the TCP listeners */
    uint32_t build_tcp_listeners; /* TCP LISTEN sockets decoded into build */
    struct owner_map owners;
    struct am_sock_stats st;
};

static int same_sock(const void *entry, const void *key, size_t len, const void *ctx)
{
    (void)ctx;
    const struct sock_entry *e = entry;
    return len == sizeof e->k && memcmp(&e->k, key, len) == 0;
}

static int tab_init(struct sock_tab *t, uint32_t cap)
{
    return am_index_init(&t->x, sizeof(struct sock_entry), cap, same_sock, NULL, NULL);
}

static uint32_t tab_count(const struct sock_tab *t)
{
    return am_index_count(&t->x);
}

static struct sock_entry *tab_at(const struct sock_tab *t, uint32_t i)
{
    return am_index_at(&t->x, i);
}

/* The three tables (build, cur, base) share one seed (am_sock_new): a socket's hash, computed
 * once when its dump is decoded, goes with it from table to table (tab_hash), so a snapshot
 * costs one SipHash per socket, not one per table it is looked up in. */
static uint32_t tab_hash(const struct sock_tab *t, uint32_t i)
{
    return am_index_hash_at(&t->x, i);
}

static uint32_t key_hash(const struct sock_tab *t, const struct sock_entry *e)
{
    return am_index_hash(&t->x, &e->k, sizeof e->k);
}

static struct sock_entry *tab_find(struct sock_tab *t, const struct sock_entry *key, uint32_t h)
{
    uint32_t pos = am_index_find_hashed(&t->x, &key->k, sizeof key->k, h);
    return pos == AM_INDEX_NONE ? NULL : tab_at(t, pos);
}

/* Adds e, of hash h (key_hash, or tab_hash of its entry in another table); a duplicate in one
 * dump replaces the earlier one. AM_OK, AM_ERR_LIMIT at the bound, AM_ERR_NOMEM. */
static int tab_add(struct sock_tab *t, const struct sock_entry *e, uint32_t h)
{
    uint32_t pos;
    int st = am_index_add_hashed(&t->x, &e->k, sizeof e->k, h, &pos);
    if (st < 0)
        return st;
    *tab_at(t, pos) = *e;
    return AM_OK;
}

/* ---- options, life cycle ---- */

void am_sock_default_options(struct am_sock_options *out)
{
    if (out == NULL)
        return;
    out->source = AM_SOCK_AUTO;
    out->max_sockets = 16384;
    out->max_owners = 16384;
    out->map_owners = 1;
    out->first_existing = 1;
    out->timeout_ms = 2000;
    out->skip_quiet_tcp = 0;
}

static int options_ok(const struct am_sock_options *o)
{
    return o->source <= AM_SOCK_PROCNET && o->max_sockets >= 1 &&
           o->max_sockets <= (1u << 24) && o->max_owners >= 1 && o->max_owners <= (1u << 24) &&
           o->map_owners <= 1 && o->first_existing <= 1 && o->timeout_ms >= 1 &&
           o->timeout_ms <= 600000 && o->skip_quiet_tcp <= 1;
}

static int diag_socket(void)
{
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_SOCK_DIAG);
    if (fd < 0)
        return -errno;
    /* A dump of many sockets arrives faster than it is read: room for a few of its skbs. */
    int rcv = 1 << 20;
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    struct sockaddr_nl sa;
    memset(&sa, 0, sizeof sa);
    sa.nl_family = AF_NETLINK;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* One whole request to the kernel: 0, or -errno (-EIO for a short send). */
static int send_to_kernel(int fd, const void *req, size_t len)
{
    struct sockaddr_nl kernel;
    memset(&kernel, 0, sizeof kernel);
    kernel.nl_family = AF_NETLINK;
    for (;;) {
        ssize_t n = sendto(fd, req, len, 0, (struct sockaddr *)&kernel, sizeof kernel);
        if (n == (ssize_t)len)
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 ? -errno : -EIO;
    }
}

static int send_dump(int fd, uint32_t seq, uint8_t family, uint8_t proto, uint32_t states)
{
    struct {
        struct nlmsghdr nlh;
        struct inet_diag_req_v2 r;
    } req;
    memset(&req, 0, sizeof req);
    req.nlh.nlmsg_len = sizeof req;
    req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.nlh.nlmsg_seq = seq;
    req.r.sdiag_family = family;
    req.r.sdiag_protocol = proto;
    req.r.idiag_states = states;
    if (proto == IPPROTO_TCP)
        req.r.idiag_ext = 1u << (INET_DIAG_INFO - 1);
    return send_to_kernel(fd, &req, sizeof req);
}

/* The TCP sockets of both families in one dump: the original inet_diag request
 * (TCPDIAG_GETSOCK) is answered for every family at once, so the kernel walks its established
 * hash table (2^18 buckets on a large host) once instead of once per family. */
static int send_dump_tcp_both(int fd, uint32_t seq, uint32_t states)
{
    struct {
        struct nlmsghdr nlh;
        struct inet_diag_req r;
    } req;
    memset(&req, 0, sizeof req);
    req.nlh.nlmsg_len = sizeof req;
    req.nlh.nlmsg_type = TCPDIAG_GETSOCK;
    req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.nlh.nlmsg_seq = seq;
    req.r.idiag_family = AF_INET;
    req.r.idiag_states = states;
    req.r.idiag_ext = 1u << (INET_DIAG_INFO - 1);
    return send_to_kernel(fd, &req, sizeof req);
}

static uint64_t now_ms_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Reads one dump's answer into the snapshot being built (t may be NULL: a probe that only
 * wants to know the answer is not an error). 0 at NLMSG_DONE, else a negative errno. */
static int read_dump(am_sock *t, int fd, uint8_t *buf, size_t cap, uint32_t seq, uint8_t proto,
                     uint32_t timeout_ms)
{
    uint64_t deadline = now_ms_monotonic() + timeout_ms;
    for (;;) {
        struct sockaddr_nl from;
        struct iovec iov = {buf, cap};
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_name = &from;
        msg.msg_namelen = sizeof from;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        ssize_t n = recvmsg(fd, &msg, 0);
        if (n < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            if (e == EAGAIN || e == EWOULDBLOCK) {
                uint64_t now = now_ms_monotonic();
                if (now >= deadline)
                    return -ETIMEDOUT;
                struct pollfd p = {fd, POLLIN, 0};
                int left = (int)(deadline - now);
                if (poll(&p, 1, left) < 0 && errno != EINTR)
                    return -errno;
                continue;
            }
            return -e;
        }
        if (msg.msg_flags & MSG_TRUNC) {
            if (t != NULL)
                t->st.malformed++;
            return -EMSGSIZE;
        }
        if (from.nl_pid != 0)
            continue; /* not from the kernel */
        if (t == NULL) {
            /* The probe: the first message says whether the protocol is served. */
            if ((size_t)n >= sizeof(struct nlmsghdr)) {
                struct nlmsghdr h;
                memcpy(&h, buf, sizeof h);
                if (h.nlmsg_type == NLMSG_ERROR &&
                    (size_t)n >= sizeof h + sizeof(struct nlmsgerr)) {
                    struct nlmsgerr err;
                    memcpy(&err, buf + sizeof h, sizeof err);
                    if (err.error < 0)
                        return err.error;
                }
                if (h.nlmsg_type == NLMSG_DONE || h.nlmsg_type == NLMSG_ERROR)
                    return 0;
            }
            continue;
        }
        if ((size_t)n >= sizeof(struct nlmsghdr)) {
            struct nlmsghdr h;
            memcpy(&h, buf, sizeof h);
            if (h.nlmsg_seq != seq)
                continue; /* the tail of an earlier dump that was given up */
        }
        int st = am_sock_feed_diag(t, proto, buf, (size_t)n);
        if (st == AM_EMPTY)
            return 0;
        if (st == AM_ERR_LIMIT)
            return -EPROTO;
    }
}

/* Whether sock_diag answers for TCP and UDP: 0, or the negative errno that rules it out. */
static int probe_diag(uint32_t timeout_ms)
{
    int fd = diag_socket();
    if (fd < 0)
        return fd;
    uint8_t *buf = malloc(RECV_BUF);
    if (buf == NULL) {
        close(fd);
        return -ENOMEM;
    }
    int r = 0;
    const uint8_t protos[2] = {IPPROTO_TCP, IPPROTO_UDP};
    for (int i = 0; i < 2 && r == 0; i++) {
        /* A state no socket is in keeps the answer to NLMSG_DONE (or an error). */
        r = send_dump(fd, (uint32_t)i + 1, AF_INET, protos[i], 0);
        if (r == 0)
            r = read_dump(NULL, fd, buf, RECV_BUF, (uint32_t)i + 1, protos[i], timeout_ms);
    }
    free(buf);
    close(fd);
    return r;
}

int am_sock_probe(const struct am_sock_options *opts, int *err)
{
    struct am_sock_options o;
    am_sock_default_options(&o);
    if (opts != NULL)
        o = *opts;
    if (err != NULL)
        *err = 0;
    if (!options_ok(&o))
        return AM_ERR_ARG;
    if (o.source == AM_SOCK_PROCNET)
        return AM_SOCK_PROCNET;
    int r = probe_diag(o.timeout_ms);
    if (r == 0)
        return AM_SOCK_DIAG;
    if (err != NULL)
        *err = -r;
    return o.source == AM_SOCK_DIAG ? AM_ERR_LIMIT : AM_SOCK_PROCNET;
}

am_sock *am_sock_new(const struct am_sock_options *opts)
{
    struct am_sock_options o;
    am_sock_default_options(&o);
    if (opts != NULL)
        o = *opts;
    if (!options_ok(&o))
        return NULL;
    int err = 0;
    int source = am_sock_probe(&o, &err);
    if (source < 0)
        return NULL;
    am_sock *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->opt = o;
    t->source = source;
    t->source_err = err;
    t->fd = -1;
    t->buf_cap = RECV_BUF;
    t->buf = malloc(t->buf_cap);
    if (t->buf == NULL || tab_init(&t->build, o.max_sockets) != AM_OK ||
        tab_init(&t->cur, o.max_sockets) != AM_OK || tab_init(&t->base, o.max_sockets) != AM_OK ||
        am_index_share_seed(&t->cur.x, &t->build.x) != AM_OK ||
        am_index_share_seed(&t->base.x, &t->build.x) != AM_OK ||
        owners_init(&t->owners, o.max_owners) != AM_OK) {
        am_sock_free(t);
        return NULL;
    }
    if (source == AM_SOCK_DIAG) {
        t->fd = diag_socket();
        if (t->fd < 0) {
            am_sock_free(t);
            return NULL;
        }
        /* A state no socket is in: the answer is NLMSG_DONE, or an error where the kernel
         * lacks the request (then two TCP dumps, one per family). */
        t->seq = 1;
        t->tcp_both = send_dump_tcp_both(t->fd, t->seq, 0) == 0 &&
                      read_dump(NULL, t->fd, t->buf, t->buf_cap, t->seq, IPPROTO_TCP,
                                o.timeout_ms) == 0;
    }
    return t;
}

void am_sock_free(am_sock *t)
{
    if (t == NULL)
        return;
    if (t->fd >= 0)
        close(t->fd);
    free(t->buf);
    am_index_release(&t->build.x);
    am_index_release(&t->cur.x);
    am_index_release(&t->base.x);
    owners_release(&t->owners);
    free(t);
}

int am_sock_source(const am_sock *t, int *err)
{
    if (t == NULL)
        return AM_ERR_ARG;
    if (err != NULL)
        *err = t->source_err;
    return t->source;
}

int am_sock_fileno(const am_sock *t)
{
    return t == NULL ? -1 : t->fd;
}

/* ---- decoding ---- */

int am_sock_begin(am_sock *t)
{
    if (t == NULL)
        return AM_ERR_ARG;
    am_index_clear(&t->build.x);
    t->build_overflow = 0;
    t->build_tcp_listeners = 0;
    t->building = 1;
    return AM_OK;
}

/* One decoded socket into the snapshot being built (classified, counted, maybe dropped). */
static void snap_add(am_sock *t, struct sock_entry *e)
{
    t->st.sockets++;
    uint8_t kind = 0;
    if (e->k.proto == IPPROTO_TCP) {
        switch (e->state) {
        case TCP_ST_LISTEN:
            kind = SK_LISTEN;
            t->build_tcp_listeners++;
            break;
        case TCP_ST_ESTABLISHED: case TCP_ST_SYN_SENT: case TCP_ST_FIN_WAIT1:
        case TCP_ST_FIN_WAIT2: case TCP_ST_CLOSE_WAIT: case TCP_ST_LAST_ACK: case TCP_ST_CLOSING:
            /* Inode 0: not yet accepted, or closed by its process (orphaned): no one owns it. */
            kind = e->k.inode != 0 ? SK_CONN : 0;
            break;
        default:
            break; /* SYN_RECV, TIME_WAIT, CLOSE: no socket a process holds */
        }
    } else if (e->k.proto == IPPROTO_UDP) {
        if (e->k.rport == 0 && e->state == TCP_ST_CLOSE && e->k.lport != 0)
            kind = SK_LISTEN;
        else if (e->k.rport != 0 && e->state == TCP_ST_ESTABLISHED && e->k.inode != 0)
            kind = SK_CONN;
    }
    if (kind == 0)
        return;
    e->kind = kind;
    int st = tab_add(&t->build, e, key_hash(&t->build, e));
    if (st != AM_OK) {
        t->st.overflow++;
        t->build_overflow = 1;
    }
}

static int fam_number(uint8_t family)
{
    return family == AF_INET ? 4 : family == AF_INET6 ? 6 : 0;
}

/* One inet_diag_msg with its attributes (len bytes after the netlink header). */
static void decode_diag_msg(am_sock *t, uint8_t proto, const uint8_t *p, size_t len)
{
    struct inet_diag_msg m;
    if (len < sizeof m) {
        t->st.malformed++;
        return;
    }
    memcpy(&m, p, sizeof m);
    struct sock_entry e;
    memset(&e, 0, sizeof e);
    e.k.fam = (uint8_t)fam_number(m.idiag_family);
    if (e.k.fam == 0) {
        t->st.malformed++;
        return;
    }
    size_t alen = e.k.fam == 4 ? 4 : 16;
    memcpy(e.k.laddr, m.id.idiag_src, alen);
    memcpy(e.k.raddr, m.id.idiag_dst, alen);
    e.k.lport = ntohs(m.id.idiag_sport);
    e.k.rport = ntohs(m.id.idiag_dport);
    e.k.inode = m.idiag_inode;
    e.k.proto = proto;
    e.uid = m.idiag_uid;
    e.state = m.idiag_state;

    /* The attributes: a bounded walk; a bad length ends it and is counted. */
    size_t off = NLMSG_ALIGN(sizeof m);
    while (off < len) {
        if (len - off < sizeof(struct nlattr)) {
            t->st.malformed++;
            break;
        }
        struct nlattr a;
        memcpy(&a, p + off, sizeof a);
        if (a.nla_len < sizeof a || a.nla_len > len - off) {
            t->st.malformed++;
            break;
        }
        size_t plen = a.nla_len - sizeof a;
        const uint8_t *pay = p + off + sizeof a;
        if ((a.nla_type & NLA_TYPE_MASK) == INET_DIAG_INFO && proto == IPPROTO_TCP) {
            /* Older kernels send a shorter tcp_info: read a field only if it is all there. */
            if (plen >= offsetof(struct tcp_info, tcpi_bytes_received) + sizeof(uint64_t)) {
                memcpy(&e.tx, pay + offsetof(struct tcp_info, tcpi_bytes_acked), 8);
                memcpy(&e.rx, pay + offsetof(struct tcp_info, tcpi_bytes_received), 8);
                e.flags |= SKF_INFO;
            }
            if (plen >= offsetof(struct tcp_info, tcpi_bytes_sent) + sizeof(uint64_t)) {
                memcpy(&e.sent, pay + offsetof(struct tcp_info, tcpi_bytes_sent), 8);
                e.flags |= SKF_SENT;
                /* bytes_acked also counts the acked SYN of an active open (and a FIN): never
                 * more data was acked than was sent, retransmissions included. */
                if ((e.flags & SKF_INFO) && e.tx > e.sent)
                    e.tx = e.sent;
            }
        }
        size_t step = NLA_ALIGN((size_t)a.nla_len);
        if (step > len - off)
            break; /* the last attribute may lack its padding */
        off += step;
    }
    snap_add(t, &e);
}

int am_sock_feed_diag(am_sock *t, uint8_t protocol, const uint8_t *data, size_t len)
{
    if (t == NULL || (data == NULL && len > 0) ||
        (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP))
        return AM_ERR_ARG;
    if (!t->building)
        am_sock_begin(t);
    size_t off = 0;
    while (off < len) {
        if (len - off < sizeof(struct nlmsghdr)) {
            t->st.malformed++;
            return AM_OK;
        }
        struct nlmsghdr h;
        memcpy(&h, data + off, sizeof h);
        if (h.nlmsg_len < sizeof h || h.nlmsg_len > len - off) {
            t->st.malformed++;
            return AM_OK; /* the rest of this buffer cannot be framed */
        }
        t->st.messages++;
        const uint8_t *p = data + off + sizeof h;
        size_t plen = h.nlmsg_len - sizeof h;
        if (h.nlmsg_type == NLMSG_DONE)
            return AM_EMPTY;
        if (h.nlmsg_type == NLMSG_ERROR) {
            t->st.dump_errors++;
            return AM_ERR_LIMIT;
        }
        if (h.nlmsg_type == SOCK_DIAG_BY_FAMILY ||
            (h.nlmsg_type == TCPDIAG_GETSOCK && protocol == IPPROTO_TCP))
            decode_diag_msg(t, protocol, p, plen);
        else if (h.nlmsg_type != NLMSG_NOOP)
            t->st.malformed++;
        size_t step = NLMSG_ALIGN((size_t)h.nlmsg_len);
        if (step > len - off)
            break;
        off += step;
    }
    return AM_OK;
}

/* ---- /proc/net: the parser's sockets into the snapshot ---- */

struct procnet_into {
    am_sock *t;
    uint8_t proto;
    uint8_t fam;    /* 4 or 6 */
};

static void procnet_sock(void *ctx, const struct procnet_sock *s)
{
    const struct procnet_into *into = ctx;
    struct sock_entry e;
    memset(&e, 0, sizeof e);
    memcpy(e.k.laddr, s->laddr, sizeof e.k.laddr);
    memcpy(e.k.raddr, s->raddr, sizeof e.k.raddr);
    e.k.lport = s->lport;
    e.k.rport = s->rport;
    e.k.inode = s->inode;
    e.k.proto = into->proto;
    e.k.fam = into->fam;
    e.uid = s->uid;
    e.state = s->state;
    snap_add(into->t, &e);
}

static void procnet_counted(am_sock *t, const struct procnet_parser *p)
{
    t->st.malformed += p->malformed;
    t->st.long_lines += p->long_lines;
}

int am_sock_feed_procnet(am_sock *t, uint8_t protocol, uint8_t family, const char *data,
                         size_t len)
{
    if (t == NULL || (data == NULL && len > 0) ||
        (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP) ||
        (family != AF_INET && family != AF_INET6))
        return AM_ERR_ARG;
    if (!t->building)
        am_sock_begin(t);
    struct procnet_into into = {t, protocol, (uint8_t)fam_number(family)};
    struct procnet_parser p;
    procnet_begin(&p, into.fam, procnet_sock, &into);
    procnet_feed(&p, data, len);
    procnet_end(&p);
    procnet_counted(t, &p);
    return AM_OK;
}

/* One /proc/net file read in chunks of the receive buffer. AM_OK, or AM_ERR_LIMIT when it
 * cannot be read (what was read stays in the snapshot). */
static int procnet_read(am_sock *t, const char *path, uint8_t proto, uint8_t fam)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return AM_ERR_LIMIT;
    struct procnet_into into = {t, proto, fam};
    struct procnet_parser p;
    procnet_begin(&p, fam, procnet_sock, &into);
    int status = AM_OK;
    for (;;) {
        ssize_t r = read(fd, t->buf, t->buf_cap);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            status = AM_ERR_LIMIT;
        if (r <= 0)
            break;
        procnet_feed(&p, (const char *)t->buf, (size_t)r);
    }
    if (status == AM_OK)
        procnet_end(&p);
    close(fd);
    procnet_counted(t, &p);
    return status;
}

/* ---- commit: owners, the new current snapshot ---- */

static void set_listen_bit(am_sock *t, const struct sock_entry *e)
{
    int p = e->k.proto == IPPROTO_TCP ? 0 : 1;
    t->listen_ports[p][e->k.lport >> 3] |= (uint8_t)(1u << (e->k.lport & 7));
}

static int is_listen_port(const am_sock *t, const struct sock_entry *e)
{
    int p = e->k.proto == IPPROTO_TCP ? 0 : 1;
    return (t->listen_ports[p][e->k.lport >> 3] >> (e->k.lport & 7)) & 1;
}

int am_sock_commit(am_sock *t, uint64_t now_ms, int map_owners)
{
    if (t == NULL)
        return AM_ERR_ARG;
    if (!t->building)
        am_sock_begin(t);
    struct owner_map *m = &t->owners;
    m->gen++;
    uint32_t unmapped = 0;
    /* The first snapshot's owners in one allocation (later ones find the room there). */
    (void)am_index_reserve(&m->x, tab_count(&t->build));
    for (uint32_t i = 0; i < tab_count(&t->build); i++) {
        struct sock_entry *e = tab_at(&t->build, i);
        if (e->k.inode != 0 && owners_touch(m, e->k.inode, &e->owner_pos) == NULL)
            unmapped++;
    }
    /* Connections not yet reported closed keep their owner for the close event. */
    for (uint32_t i = 0; i < tab_count(&t->base); i++) {
        struct sock_entry *b = tab_at(&t->base, i);
        struct owner *o = b->k.inode ? owners_at(m, &b->owner_pos, b->k.inode) : NULL;
        if (o != NULL)
            o->gen = m->gen;
    }
    owners_prune(m);
    t->st.owner_overflow += unmapped;
    if (map_owners && t->opt.map_owners && m->pending > 0) {
        struct owner_walk w = {0, 0, 0};
        owners_walk(m, &w);
        t->st.owner_walks++;
        t->st.owner_found += w.found;
        t->st.owner_unknown += w.unknown;
        t->st.owner_vanished += w.vanished;
    }
    memset(t->listen_ports, 0, sizeof t->listen_ports);
    uint64_t listening = 0;
    uint32_t tcp_conns = 0;
    for (uint32_t i = 0; i < tab_count(&t->build); i++) {
        struct sock_entry *e = tab_at(&t->build, i);
        if (e->k.inode != 0)
            (void)owners_at(m, &e->owner_pos, e->k.inode); /* the prune may have moved it */
        if (e->kind == SK_LISTEN) {
            set_listen_bit(t, e);
            listening++;
        } else if (e->k.proto == IPPROTO_TCP) {
            tcp_conns++;
        }
    }
    t->cur_tcp_conns = tcp_conns;
    /* A snapshot fed from outside says nothing of the counters: the next one dumps TCP. */
    t->tcp_opens_known = 0;
    struct sock_tab old = t->cur;
    t->cur = t->build;
    t->build = old;
    am_index_clear(&t->build.x);
    t->cur_overflow = t->build_overflow;
    t->building = 0;
    t->have_cur = 1;
    t->cur_ts = now_ms;
    t->listen_cursor = 0;
    t->st.snapshots++;
    t->st.stored = tab_count(&t->cur);
    t->st.listening = listening;
    return AM_OK;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static const char *const procnet_files[4] = {
    "/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"};

/* A small /proc file into t->buf, NUL-terminated: 0, or a negative errno (-EFBIG when it does
 * not fit). */
static int read_proc_file(am_sock *t, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t len = 0;
    for (;;) {
        if (len >= t->buf_cap - 1) {
            close(fd);
            return -EFBIG;
        }
        ssize_t n = read(fd, t->buf + len, t->buf_cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    t->buf[len] = 0;
    return 0;
}

/* The first line of text that starts with prefix, or NULL. */
static const char *line_starting(const char *text, const char *prefix)
{
    const char *line = strstr(text, prefix);
    while (line != NULL && line != text && line[-1] != '\n')
        line = strstr(line + 1, prefix);
    return line;
}

/* A decimal number at p, up to a space, a newline or the end: 0, or -EPROTO. */
static int parse_count(const char *p, uint64_t *out)
{
    size_t len = strcspn(p, " \n");
    uint64_t v = 0;
    if (len == 0 || len > 19)
        return -EPROTO;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -EPROTO;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    *out = v;
    return 0;
}

/* The netns's TCP sockets in the kernel's hash tables, both families: "TCP: inuse N" of
 * /proc/net/sockstat plus "TCP6: inuse N" of /proc/net/sockstat6 (absent without IPv6).
 * Every listener and every connection in a state this table keeps is hashed and counted;
 * TIME_WAIT and half-open requests are not. 0, or a negative errno. */
static int read_tcp_inuse(am_sock *t, uint64_t *out)
{
    static const char *const files[2] = {"/proc/net/sockstat", "/proc/net/sockstat6"};
    static const char *const lines[2] = {"TCP: inuse ", "TCP6: inuse "};
    uint64_t sum = 0;
    for (int i = 0; i < 2; i++) {
        int r = read_proc_file(t, files[i]);
        if (r == -ENOENT && i == 1)
            break;
        if (r < 0)
            return r;
        const char *line = line_starting((const char *)t->buf, lines[i]);
        uint64_t n = 0;
        if (line == NULL || parse_count(line + strlen(lines[i]), &n) != 0)
            return -ENOENT;
        sum += n;
    }
    *out = sum;
    return 0;
}

/* The netns's TCP ActiveOpens + PassiveOpens from /proc/net/snmp (read into t->buf): 0, or a
 * negative errno when the file cannot be read or does not hold them. */
static int read_tcp_opens(am_sock *t, uint64_t *out)
{
    int r = read_proc_file(t, "/proc/net/snmp");
    if (r < 0)
        return r;
    /* Two lines: "Tcp: <names>" and "Tcp: <values>", the same columns in the same order. */
    const char *names = line_starting((const char *)t->buf, "Tcp: ");
    if (names == NULL)
        return -ENOENT;
    const char *values = strstr(names + 5, "\nTcp: ");
    if (values == NULL)
        return -ENOENT;
    names += 5;
    values += 6;
    uint64_t sum = 0;
    int found = 0;
    while (*names != '\n' && *names != 0 && *values != '\n' && *values != 0) {
        size_t name_len = strcspn(names, " \n");
        size_t value_len = strcspn(values, " \n");
        if ((name_len == 11 && memcmp(names, "ActiveOpens", 11) == 0) ||
            (name_len == 12 && memcmp(names, "PassiveOpens", 12) == 0)) {
            uint64_t v = 0;
            if (parse_count(values, &v) != 0)
                return -EPROTO;
            sum += v;
            found++;
        }
        names += name_len;
        values += value_len;
        if (*names == ' ')
            names++;
        if (*values == ' ')
            values++;
    }
    if (found != 2)
        return -ENOENT;
    *out = sum;
    return 0;
}

/* skip_quiet_tcp: cur's TCP sockets (listeners only: see tcp_quiet) into the new snapshot. */
static void keep_tcp_listeners(am_sock *t)
{
    for (uint32_t i = 0; i < tab_count(&t->cur); i++) {
        const struct sock_entry *e = tab_at(&t->cur, i);
        if (e->k.proto == IPPROTO_TCP && tab_add(&t->build, e, tab_hash(&t->cur, i)) != AM_OK) {
            t->st.overflow++;
            t->build_overflow = 1;
        }
    }
}

/* Whether the TCP dump may be left out (skip_quiet_tcp): the last snapshot was whole and held
 * no TCP connection, and no TCP socket was opened since its TCP dump (a connection in any
 * state this table keeps is counted in ActiveOpens at connect or PassiveOpens at accept).
 * A new listener is then missed until the next dump, which the first connection brings:
 * for this table listeners only give new connections their direction. */
static int tcp_quiet(const am_sock *t, int opens_ok, uint64_t opens)
{
    return t->opt.skip_quiet_tcp && t->source == AM_SOCK_DIAG && opens_ok &&
           t->tcp_opens_known && opens == t->tcp_opens && t->have_cur && !t->cur_overflow &&
           t->cur_tcp_conns == 0 && t->tcp_skips < TCP_SKIPS_MAX;
}

/* How a snapshot gets its TCP sockets (skip_quiet_tcp). */
enum tcp_way {
    TCP_DUMP = 0,     /* the whole dump: the kernel walks its established hash table */
    TCP_KEEP = 1,     /* nothing opened, nothing held (tcp_quiet): cur's listeners kept */
    TCP_LISTENERS = 2 /* the listeners' dump first; when they are every TCP socket the
                         kernel has hashed (read_tcp_inuse), that is the whole TCP part */
};

/* TCP_LISTENERS: the TCP listeners of both families into build (its first sockets). 1 when
 * they were all of the namespace's hashed TCP sockets (`inuse`, read just before): then no
 * connection exists in a state this table keeps, and the established table's walk would add
 * nothing. 0: build is emptied for the whole dump. A negative errno: the dump failed. */
static int listeners_are_all(am_sock *t, uint64_t inuse)
{
    uint32_t seq = ++t->seq;
    int r = send_dump_tcp_both(t->fd, seq, 1u << TCP_ST_LISTEN);
    if (r == 0)
        r = read_dump(t, t->fd, t->buf, t->buf_cap, seq, IPPROTO_TCP, t->opt.timeout_ms);
    if (r < 0)
        return r;
    if (!t->build_overflow && t->build_tcp_listeners == inuse)
        return 1;
    am_sock_begin(t);
    return 0;
}

/* The four dumps into a new snapshot: 0, or a negative errno (the snapshot is incomplete).
 * way: how the TCP part is taken (TCP_LISTENERS needs tcp_both and `inuse`); *listeners_only
 * says whether TCP_LISTENERS left the established table's walk out. */
static int take_dumps(am_sock *t, enum tcp_way way, uint64_t inuse, int *listeners_only)
{
    const uint8_t fams[4] = {AF_INET, AF_INET6, AF_INET, AF_INET6};
    const uint8_t protos[4] = {IPPROTO_TCP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDP};
    am_sock_begin(t);
    *listeners_only = 0;
    if (way == TCP_KEEP)
        keep_tcp_listeners(t);
    if (way == TCP_LISTENERS) {
        int r = listeners_are_all(t, inuse);
        if (r < 0) {
            t->st.dump_errors++;
            return r;
        }
        *listeners_only = r;
    }
    for (int i = 0; i < 4; i++) {
        if ((way == TCP_KEEP || *listeners_only) && protos[i] == IPPROTO_TCP)
            continue;
        if (t->source != AM_SOCK_PROCNET && t->tcp_both && i == 1)
            continue; /* the IPv6 TCP sockets came with the IPv4 ones */
        if (t->source == AM_SOCK_PROCNET) {
            if (procnet_read(t, procnet_files[i], protos[i], (uint8_t)fam_number(fams[i])) !=
                    AM_OK &&
                fams[i] == AF_INET)
                return -EIO; /* tcp6/udp6 are absent on a kernel without IPv6 */
            continue;
        }
        uint32_t seq = ++t->seq;
        uint32_t states = protos[i] == IPPROTO_TCP ? TCP_KEPT_STATES : ~0u;
        int r = t->tcp_both && i == 0 ? send_dump_tcp_both(t->fd, seq, states)
                                      : send_dump(t->fd, seq, fams[i], protos[i], states);
        if (r == 0)
            r = read_dump(t, t->fd, t->buf, t->buf_cap, seq, protos[i], t->opt.timeout_ms);
        if (r < 0) {
            if (r == -ENOBUFS)
                t->st.enobufs++;
            else
                t->st.dump_errors++;
            return r;
        }
    }
    return 0;
}

/* Reads and drops whatever is left of a failed dump, so that the retry starts clean. */
static void drain_socket(am_sock *t)
{
    if (t->fd < 0)
        return;
    for (int i = 0; i < 100000; i++) {
        ssize_t n = recv(t->fd, t->buf, t->buf_cap, MSG_DONTWAIT);
        if (n < 0 && errno != EINTR && errno != ENOBUFS)
            return;
    }
}

int am_sock_snapshot(am_sock *t)
{
    if (t == NULL)
        return AM_ERR_ARG;
    /* Read before the dumps: a socket opened during them moves the counter for the next. */
    uint64_t opens = 0, inuse = 0;
    int opens_ok = t->opt.skip_quiet_tcp && t->source == AM_SOCK_DIAG &&
                   read_tcp_opens(t, &opens) == 0;
    enum tcp_way way = TCP_DUMP;
    if (tcp_quiet(t, opens_ok, opens))
        way = TCP_KEEP;
    else if (t->opt.skip_quiet_tcp && t->source == AM_SOCK_DIAG && t->tcp_both &&
             read_tcp_inuse(t, &inuse) == 0)
        way = TCP_LISTENERS;
    int listeners_only = 0;
    int r = take_dumps(t, way, inuse, &listeners_only);
    if (r < 0) {
        t->st.retries++;
        drain_socket(t);
        r = take_dumps(t, way, inuse, &listeners_only);
    }
    if (r < 0) {
        drain_socket(t);
        t->st.incomplete++;
        t->building = 0;
        am_index_clear(&t->build.x);
        return AM_ERR_LIMIT;
    }
    int st = am_sock_commit(t, wall_ms(), 1);
    if (way == TCP_KEEP) {
        t->tcp_skips++;
        t->st.tcp_skipped++;
        t->tcp_opens_known = 1; /* the counters still stand for cur's TCP sockets */
    } else {
        /* A whole dump, or the listeners shown to be every TCP socket: as exact as a dump
         * (also for a connection that opened without counting as an open). */
        t->tcp_skips = 0;
        t->tcp_opens = opens;
        t->tcp_opens_known = opens_ok;
        if (listeners_only)
            t->st.tcp_listeners_only++;
    }
    return st;
}

/* ---- events ---- */

static const char *state_name(uint8_t state)
{
    static const char *const names[] = {
        "unknown", "established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2",
        "time_wait", "close", "close_wait", "last_ack", "listen", "closing", "new_syn_recv"};
    return state < sizeof names / sizeof names[0] ? names[state] : "unknown";
}

static int put_addr(mp_buf *b, uint8_t fam, const uint8_t *addr)
{
    char text[IP_TEXT_MAX];
    int n = am_ip_text(fam, addr, text, sizeof text);
    return n < 0 ? n : mp_str(b, text, (size_t)n);
}

#define PUT(call) \
    do { \
        if ((call) != AM_OK) \
            return AM_ERR_FULL; \
    } while (0)

/* The keys listen and conn events share: ts, src, proto, fam, laddr, lport, uid, inode and
 * the owner. Returns the number of pairs written (or a status < 0). */
static int put_common(am_sock *t, mp_buf *b, const struct sock_entry *e)
{
    int pairs = 0;
    PUT(mp_cstr(b, "ts"));
    PUT(mp_uint(b, t->cur_ts));
    PUT(mp_cstr(b, "src"));
    PUT(mp_cstr(b, t->source == AM_SOCK_DIAG ? "diag" : "procnet"));
    PUT(mp_cstr(b, "proto"));
    PUT(mp_cstr(b, e->k.proto == IPPROTO_TCP ? "tcp" : "udp"));
    PUT(mp_cstr(b, "fam"));
    PUT(mp_cstr(b, e->k.fam == 4 ? "inet" : "inet6"));
    PUT(mp_cstr(b, "laddr"));
    PUT(put_addr(b, e->k.fam, e->k.laddr));
    PUT(mp_cstr(b, "lport"));
    PUT(mp_uint(b, e->k.lport));
    PUT(mp_cstr(b, "uid"));
    PUT(mp_uint(b, e->uid));
    PUT(mp_cstr(b, "inode"));
    PUT(mp_uint(b, e->k.inode));
    pairs += 8;
    uint32_t pos = e->owner_pos;
    const struct owner *o = e->k.inode ? owners_at(&t->owners, &pos, e->k.inode) : NULL;
    if (o != NULL && o->state == OWNER_FOUND) {
        PUT(mp_cstr(b, "pid"));
        PUT(mp_uint(b, (uint32_t)o->pid));
        PUT(mp_cstr(b, "comm"));
        PUT(mp_text_known(b, o->comm, o->comm_len, o->text_utf8 & OWNER_COMM_UTF8));
        pairs += 2;
        if (o->exe != NULL) {
            PUT(mp_cstr(b, "exe"));
            PUT(mp_text_known(b, o->exe->text, o->exe->len, o->text_utf8 & OWNER_EXE_UTF8));
            pairs++;
        }
    }
    return pairs;
}

/* One event into the sink: AM_OK (written, or dropped and counted by the sink when it cannot
 * be encoded), AM_ERR_FULL when the sink had no room (not written, counted by the sink). */
static int put_listen(am_sock *t, am_sink *sink, const struct sock_entry *e)
{
    mp_buf *b = sink_begin(sink);
    int pairs;
    if (mp_map32(b, 0) != AM_OK || mp_cstr(b, "t") != AM_OK || mp_cstr(b, "listen") != AM_OK ||
        (pairs = put_common(t, b, e)) < 0) {
        sink_drop(sink);
        return AM_OK;
    }
    mp_patch_u32(b, 0, (uint32_t)pairs + 1);
    return sink_commit(sink);
}

static int put_conn(am_sock *t, am_sink *sink, const struct sock_entry *e, int open,
                    int existing)
{
    mp_buf *b = sink_begin(sink);
    int pairs;
    if (mp_map32(b, 0) != AM_OK || mp_cstr(b, "t") != AM_OK || mp_cstr(b, "conn") != AM_OK ||
        mp_cstr(b, "op") != AM_OK || mp_cstr(b, open ? "open" : "close") != AM_OK ||
        (pairs = put_common(t, b, e)) < 0)
        goto drop;
    pairs += 2;
    if (mp_cstr(b, "raddr") != AM_OK || put_addr(b, e->k.fam, e->k.raddr) != AM_OK ||
        mp_cstr(b, "rport") != AM_OK || mp_uint(b, e->k.rport) != AM_OK ||
        mp_cstr(b, "state") != AM_OK || mp_cstr(b, state_name(e->state)) != AM_OK)
        goto drop;
    pairs += 3;
    if (e->flags & (SKF_IN | SKF_OUT)) {
        if (mp_cstr(b, "dir") != AM_OK || mp_cstr(b, e->flags & SKF_IN ? "in" : "out") != AM_OK)
            goto drop;
        pairs++;
    }
    if (e->flags & SKF_INFO) {
        if (mp_cstr(b, "rx") != AM_OK || mp_uint(b, e->rx) != AM_OK ||
            mp_cstr(b, "tx") != AM_OK || mp_uint(b, e->tx) != AM_OK)
            goto drop;
        pairs += 2;
    }
    if (e->flags & SKF_SENT) {
        if (mp_cstr(b, "sent") != AM_OK || mp_uint(b, e->sent) != AM_OK)
            goto drop;
        pairs++;
    }
    if (existing) {
        if (mp_cstr(b, "existing") != AM_OK || mp_bool(b, 1) != AM_OK)
            goto drop;
        pairs++;
    }
    mp_patch_u32(b, 0, (uint32_t)pairs); /* t and op are among the pairs */
    return sink_commit(sink);
drop:
    sink_drop(sink);
    return AM_OK;
}

int am_sock_listening(am_sock *t, am_sink *sink, uint32_t *events)
{
    if (events != NULL)
        *events = 0;
    if (t == NULL || sink == NULL)
        return AM_ERR_ARG;
    uint32_t written = 0;
    while (t->listen_cursor < tab_count(&t->cur)) {
        const struct sock_entry *e = tab_at(&t->cur, t->listen_cursor);
        if (e->kind == SK_LISTEN) {
            if (am_sink_full(sink) || put_listen(t, sink, e) == AM_ERR_FULL) {
                if (events != NULL)
                    *events = written;
                return AM_ERR_FULL;
            }
            written++;
            t->st.listen_events++;
        }
        t->listen_cursor++;
    }
    t->listen_cursor = 0;
    if (events != NULL)
        *events = written;
    return AM_OK;
}

int am_sock_changes(am_sock *t, am_sink *sink, uint32_t *events)
{
    if (events != NULL)
        *events = 0;
    if (t == NULL || sink == NULL)
        return AM_ERR_ARG;
    if (!t->have_cur)
        return AM_OK;
    uint32_t written = 0;
    int status = AM_OK;
    int first = !t->base_ready;
    /* Closes: reported connections the last snapshot lacks. A snapshot cut short by
     * max_sockets cannot tell a closed connection from a dropped one: no close then. */
    if (!t->cur_overflow) {
        for (uint32_t i = 0; i < tab_count(&t->base);) {
            struct sock_entry *b = tab_at(&t->base, i);
            if (tab_find(&t->cur, b, tab_hash(&t->base, i)) != NULL) {
                i++;
                continue;
            }
            if (am_sink_full(sink) || put_conn(t, sink, b, 0, 0) == AM_ERR_FULL) {
                status = AM_ERR_FULL;
                goto out;
            }
            written++;
            t->st.closed++;
            am_index_remove_at(&t->base.x, i); /* the last entry moves to i: look at i again */
        }
    }
    /* Opens, and the counters of the connections that stay. The first changes() adds every
     * connection to an empty base: room for them at once. */
    if (tab_count(&t->base) == 0)
        (void)am_index_reserve(&t->base.x, tab_count(&t->cur));
    for (uint32_t i = 0; i < tab_count(&t->cur); i++) {
        struct sock_entry *c = tab_at(&t->cur, i);
        if (c->kind != SK_CONN)
            continue;
        uint32_t h = tab_hash(&t->cur, i);
        struct sock_entry *b = tab_find(&t->base, c, h);
        if (b != NULL) {
            uint8_t dir = b->flags & (SKF_IN | SKF_OUT);
            *b = *c;
            b->flags = (uint8_t)((c->flags & ~(SKF_IN | SKF_OUT)) | dir);
            continue;
        }
        if (tab_count(&t->base) >= t->base.x.bound) {
            /* Its close could not be reported: neither is its open, counted instead. */
            t->st.overflow++;
            continue;
        }
        struct sock_entry n = *c;
        n.flags |= is_listen_port(t, c) ? SKF_IN : SKF_OUT;
        if (!first || t->opt.first_existing) {
            if (am_sink_full(sink) || put_conn(t, sink, &n, 1, first) == AM_ERR_FULL) {
                status = AM_ERR_FULL;
                goto out;
            }
            written++;
            t->st.opened++;
        }
        if (tab_add(&t->base, &n, h) != AM_OK)
            t->st.overflow++; /* no memory: reported, but its close will not be */
    }
    t->base_ready = 1;
out:
    if (events != NULL)
        *events = written;
    return status;
}

void am_sock_stats(const am_sock *t, struct am_sock_stats *out)
{
    if (out == NULL)
        return;
    memset(out, 0, sizeof *out);
    if (t == NULL)
        return;
    *out = t->st;
    out->owner_entries = owners_count(&t->owners);
    out->memory = sizeof *t + t->buf_cap + am_index_memory(&t->build.x) +
                  am_index_memory(&t->cur.x) + am_index_memory(&t->base.x) +
                  owners_memory(&t->owners);
}
