/* uevent.c: kernel uevents and rtnetlink link messages -> Peripheral events (see
 * core_peripheral.h and docs/sources/uevent.md).
 *
 * A uevent datagram is "ACTION@DEVPATH\0" then "KEY=VALUE\0" pairs (lib/kobject_uevent.c).
 * Every value is a span into the datagram, never copied, bounded by the datagram's length;
 * the decoder takes a datagram at any alignment (rtnetlink fields are read through memcpy). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <linux/if.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>

#include "core.h"
#include "core_peripheral.h"
#include "procfs.h"
#include "sink.h"

enum {
    RX_BYTES = 32768,      /* a uevent is at most 2 KiB of environment; a link dump datagram
                              at most 32 KiB */
    MAX_DEVPATH = 512,     /* longer DEVPATHs are not read in sysfs */
    ATTR_BYTES = 256,      /* a sysfs string attribute read, at most */
    DUMP_SEQ = 0x7e5e0001, /* the sequence number of our link dump requests */
    RTA_ALIGNTO_ = 4
};

/* The action of a snapshot's datagrams (the kernel has no such action; a snapshot builds them
 * from each device's sysfs `uevent` file). */
#define PRESENT "present"

struct link_state {
    int32_t ifindex;
    uint8_t carrier;
};

struct am_periph {
    struct am_periph_options opt;
    struct am_periph_stats st;
    int fd[2]; /* enum am_periph_socket */
    int sysfs_fd; /* -1: no sysfs reads */
    int err;
    struct link_state *links;
    uint32_t link_count;
    uint8_t *rx;
};

void am_periph_default_options(struct am_periph_options *out)
{
    if (out == NULL)
        return;
    out->rcvbuf = 1u << 20;
    out->uevents = 1;
    out->links = 1;
    out->sysfs = 1;
    out->max_links = 1024;
    out->max_datagrams = 1024;
}

am_periph *am_periph_new(const struct am_periph_options *opts)
{
    struct am_periph_options o;
    am_periph_default_options(&o);
    if (opts != NULL)
        o = *opts;
    if (o.uevents > 1 || o.links > 1 || o.sysfs > 1 || o.max_links < 1 || o.max_links > 65536 ||
        o.max_datagrams < 1 || o.rcvbuf > (1u << 30))
        return NULL;
    am_periph *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->opt = o;
    p->fd[0] = p->fd[1] = -1;
    p->sysfs_fd = -1;
    p->links = calloc(o.max_links, sizeof *p->links);
    p->rx = malloc(RX_BYTES);
    if (p->links == NULL || p->rx == NULL) {
        am_periph_free(p);
        return NULL;
    }
    if (o.sysfs)
        /* Failing here leaves sysfs_fd -1: the strings are then missing, counted. */
        p->sysfs_fd = open("/sys", O_PATH | O_DIRECTORY | O_CLOEXEC);
    return p;
}

static void close_sockets(am_periph *p)
{
    for (int i = 0; i < 2; i++) {
        if (p->fd[i] >= 0)
            close(p->fd[i]);
        p->fd[i] = -1;
    }
}

void am_periph_free(am_periph *p)
{
    if (p == NULL)
        return;
    close_sockets(p);
    if (p->sysfs_fd >= 0)
        close(p->sysfs_fd);
    free(p->links);
    free(p->rx);
    free(p);
}

int am_periph_set_sysfs(am_periph *p, const char *path)
{
    if (p == NULL || path == NULL)
        return AM_ERR_ARG;
    int fd = -1;
    if (path[0] != '\0') {
        fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            return AM_ERR_ARG;
    }
    if (p->sysfs_fd >= 0)
        close(p->sysfs_fd);
    p->sysfs_fd = fd;
    return AM_OK;
}

int am_periph_fileno(const am_periph *p, int which)
{
    if (p == NULL || which < 0 || which > 1)
        return -1;
    return p->fd[which];
}

int am_periph_errno(const am_periph *p)
{
    return p == NULL ? 0 : p->err;
}

void am_periph_stats(const am_periph *p, struct am_periph_stats *out)
{
    if (out == NULL)
        return;
    if (p == NULL) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = p->st;
    out->links = p->link_count;
}

/* ---- sockets ---- */

static int open_socket(am_periph *p, int protocol, uint32_t groups)
{
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol);
    if (fd < 0)
        return -1;
    if (p->opt.rcvbuf > 0) {
        int size = (int)p->opt.rcvbuf;
        /* FORCE passes rmem_max with CAP_NET_ADMIN; without it the plain option is capped. */
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0)
            (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    }
    struct sockaddr_nl addr = {.nl_family = AF_NETLINK, .nl_pid = 0, .nl_groups = groups};
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

static int decode_link(am_periph *p, am_sink *sink, uint16_t type, const uint8_t *d, size_t len,
                       int dump, uint64_t *appended);

/* Every link's carrier, remembered without events: a dump read to its end on a socket of its
 * own (not in the multicast group), so that the group's socket, subscribed before, sees every
 * change after it. Read in one go: with a dump left to the drain, a change multicast while a
 * later part of the dump was still unread would meet an unknown link and be taken for its
 * first sight. A read waits 2 s at most; 0, or -1 with errno. */
static int sync_dump(am_periph *p)
{
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct {
        struct nlmsghdr nh;
        struct ifinfomsg ifi;
    } req;
    memset(&req, 0, sizeof req);
    req.nh.nlmsg_len = sizeof req;
    req.nh.nlmsg_type = RTM_GETLINK;
    req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.nh.nlmsg_seq = DUMP_SEQ;
    req.ifi.ifi_family = AF_UNSPEC;
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    ssize_t sent;
    do
        sent = sendto(fd, &req, sizeof req, 0, (struct sockaddr *)&kernel, sizeof kernel);
    while (sent < 0 && errno == EINTR);
    if (sent != (ssize_t)sizeof req) {
        int saved = sent < 0 ? errno : EMSGSIZE;
        close(fd);
        errno = saved;
        return -1;
    }
    p->st.dumps++;
    uint64_t none = 0;
    for (int done = 0; !done;) {
        struct sockaddr_nl from;
        struct iovec iov = {.iov_base = p->rx, .iov_len = RX_BYTES};
        struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov,
                             .msg_iovlen = 1};
        ssize_t n = recvmsg(fd, &msg, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break; /* a timeout or an error: the links not read are met later, first sight */
        }
        if (msg.msg_flags & MSG_TRUNC) {
            p->st.truncated++;
            continue;
        }
        if (from.nl_pid != 0)
            continue;
        size_t off = 0, len = (size_t)n;
        while (off + sizeof(struct nlmsghdr) <= len) {
            struct nlmsghdr nh;
            memcpy(&nh, p->rx + off, sizeof nh);
            if (nh.nlmsg_len < sizeof nh || nh.nlmsg_len > len - off)
                break;
            if (nh.nlmsg_type == NLMSG_DONE || nh.nlmsg_type == NLMSG_ERROR)
                done = 1;
            else if (nh.nlmsg_type == RTM_NEWLINK)
                /* dump: remembered, never an event (no sink is touched) */
                (void)decode_link(p, NULL, nh.nlmsg_type, p->rx + off + NLMSG_HDRLEN,
                                  nh.nlmsg_len - NLMSG_HDRLEN, 1, &none);
            off += NLMSG_ALIGN(nh.nlmsg_len);
        }
    }
    close(fd);
    return 0;
}

int am_periph_listen(am_periph *p)
{
    if (p == NULL)
        return AM_ERR_ARG;
    if (p->fd[0] >= 0 || p->fd[1] >= 0)
        return AM_OK;
    if (p->opt.uevents) {
        /* Group 1 is the kernel's; udevd re-sends its own version on group 2. */
        p->fd[AM_PERIPH_UEVENT] = open_socket(p, NETLINK_KOBJECT_UEVENT, 1);
        if (p->fd[AM_PERIPH_UEVENT] < 0)
            goto fail;
    }
    if (p->opt.links) {
        p->fd[AM_PERIPH_LINK] = open_socket(p, NETLINK_ROUTE, RTMGRP_LINK);
        if (p->fd[AM_PERIPH_LINK] < 0)
            goto fail;
        p->link_count = 0;
        if (sync_dump(p) != 0)
            goto fail;
    }
    return AM_OK;
fail:
    p->err = errno;
    close_sockets(p);
    return AM_PERIPH_ERR_SYS;
}

/* ---- encoding ---- */

#define TRY(x) \
    do { \
        if ((st = (x)) != AM_OK) \
            goto done; \
    } while (0)

typedef struct {
    const char *p;
    size_t len;
} span;

static int span_is(span s, const char *lit)
{
    size_t n = strlen(lit);
    return s.p != NULL && s.len == n && memcmp(s.p, lit, n) == 0;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int put_text(mp_buf *e, const char *key, span v)
{
    int st = mp_cstr(e, key);
    return st == AM_OK ? mp_text(e, v.p, v.len) : st;
}

static int put_uint(mp_buf *e, const char *key, uint64_t v)
{
    int st = mp_cstr(e, key);
    return st == AM_OK ? mp_uint(e, v) : st;
}

static int put_head(mp_buf *e, const char *src, const char *op, const char *kind)
{
    int st;
    TRY(mp_cstr(e, "t"));
    TRY(mp_cstr(e, "periph"));
    TRY(put_uint(e, "ts", now_ms()));
    TRY(mp_cstr(e, "src"));
    TRY(mp_cstr(e, src));
    TRY(mp_cstr(e, "op"));
    TRY(mp_cstr(e, op));
    TRY(mp_cstr(e, "kind"));
    TRY(mp_cstr(e, kind));
done:
    return st;
}

/* The event's end: committed, it counts in events and in its kind's counter (`kind`); an
 * event too large for a batch is dropped and counts in neither. */
static int finish(am_periph *p, am_sink *sink, int st, uint64_t *kind, uint64_t *appended)
{
    if (st != AM_OK) {
        sink_drop(sink);
        p->st.dropped++;
        return AM_OK; /* an event larger than a batch: counted, the input goes on */
    }
    if (sink_commit(sink) != AM_OK) {
        p->st.dropped++;
        return AM_ERR_FULL;
    }
    p->st.events++;
    (*kind)++;
    (*appended)++;
    return AM_OK;
}

/* ---- numbers in uevent values ---- */

/* A number in base 10 or 16 spanning all of s, at most max. */
static int parse_num(span s, unsigned base, uint64_t max, uint64_t *out)
{
    if (s.p == NULL || s.len == 0 || s.len > 20)
        return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.p[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (base == 16 && c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else if (base == 16 && c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else
            return 0;
        if (v > (max - d) / base)
            return 0;
        v = v * base + d;
    }
    *out = v;
    return 1;
}

/* "a/b/c": three numbers of `base`, each at most max (PRODUCT=781/5567/100 in hex, TYPE= and
 * INTERFACE= of USB in decimal). */
static int parse_triple(span s, unsigned base, uint64_t max, uint64_t out[3])
{
    if (s.p == NULL)
        return 0;
    size_t start = 0;
    int k = 0;
    for (size_t i = 0; i <= s.len; i++) {
        if (i < s.len && s.p[i] != '/')
            continue;
        if (k == 3)
            return 0;
        span part = {s.p + start, i - start};
        if (!parse_num(part, base, max, &out[k++]))
            return 0;
        start = i + 1;
    }
    return k == 3;
}

static int put_hex16(mp_buf *e, const char *key, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char text[4] = {digits[(v >> 12) & 15], digits[(v >> 8) & 15], digits[(v >> 4) & 15],
                    digits[v & 15]};
    int st = mp_cstr(e, key);
    return st == AM_OK ? mp_str(e, text, sizeof text) : st;
}

/* ---- sysfs ---- */

/* DEVPATH is the kernel's, but a sysfs read must stay in sysfs whatever it says. */
static int devpath_safe(span d)
{
    if (d.len < 2 || d.len > MAX_DEVPATH || d.p[0] != '/')
        return 0;
    for (size_t i = 0; i < d.len; i++) {
        if (d.p[i] == '\0')
            return 0;
        if (d.p[i] == '.' && (i == 0 || d.p[i - 1] == '/') && i + 1 < d.len && d.p[i + 1] == '.')
            return 0;
    }
    return 1;
}

/* Reads sysfs DEVPATH[/..]/name into buf (trailing newline cut); its length, or -1. */
static ssize_t read_attr(am_periph *p, span devpath, int parent, const char *name, char *buf,
                         size_t cap)
{
    if (p->sysfs_fd < 0 || !devpath_safe(devpath))
        return -1;
    char path[MAX_DEVPATH + 32];
    size_t n = devpath.len - 1; /* without the leading '/': relative to the sysfs fd */
    memcpy(path, devpath.p + 1, n);
    if (parent) {
        while (n > 0 && path[n - 1] != '/')
            n--;
        if (n == 0)
            return -1;
        n--; /* the '/' */
    }
    size_t name_len = strlen(name);
    if (n + 1 + name_len + 1 > sizeof path)
        return -1;
    path[n] = '/';
    memcpy(path + n + 1, name, name_len + 1);
    ssize_t got = pf_read_file(p->sysfs_fd, path, buf, cap);
    if (got < 0) {
        p->st.sysfs_missing++;
        return -1;
    }
    while (got > 0 && (buf[got - 1] == '\n' || buf[got - 1] == '\0'))
        got--;
    return got;
}

/* ---- uevents ---- */

struct uevent {
    span action, devpath, subsystem, devtype, devname, product, type, interface, busnum,
        devnum, ifindex, major, minor, synth;
};

static void take_field(struct uevent *u, span kv)
{
    static const struct {
        const char *name;
        size_t off;
    } keys[] = {
        {"ACTION", offsetof(struct uevent, action)},
        {"DEVPATH", offsetof(struct uevent, devpath)},
        {"SUBSYSTEM", offsetof(struct uevent, subsystem)},
        {"DEVTYPE", offsetof(struct uevent, devtype)},
        {"DEVNAME", offsetof(struct uevent, devname)},
        {"PRODUCT", offsetof(struct uevent, product)},
        {"TYPE", offsetof(struct uevent, type)},
        {"INTERFACE", offsetof(struct uevent, interface)},
        {"BUSNUM", offsetof(struct uevent, busnum)},
        {"DEVNUM", offsetof(struct uevent, devnum)},
        {"IFINDEX", offsetof(struct uevent, ifindex)},
        {"MAJOR", offsetof(struct uevent, major)},
        {"MINOR", offsetof(struct uevent, minor)},
        {"SYNTH_UUID", offsetof(struct uevent, synth)},
    };
    const char *eq = memchr(kv.p, '=', kv.len);
    if (eq == NULL)
        return;
    size_t klen = (size_t)(eq - kv.p);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (strlen(keys[i].name) == klen && memcmp(kv.p, keys[i].name, klen) == 0) {
            span *dst = (span *)((char *)u + keys[i].off);
            dst->p = eq + 1;
            dst->len = kv.len - klen - 1;
            return;
        }
    }
}

enum kind { K_NONE, K_USB_DEVICE, K_USB_INTERFACE, K_BLOCK, K_NET };

static enum kind kind_of(const struct uevent *u)
{
    if (span_is(u->subsystem, "usb")) {
        if (span_is(u->devtype, "usb_device"))
            return K_USB_DEVICE;
        if (span_is(u->devtype, "usb_interface"))
            return K_USB_INTERFACE;
        return K_NONE;
    }
    if (span_is(u->subsystem, "block"))
        return span_is(u->devtype, "disk") || span_is(u->devtype, "partition") ? K_BLOCK : K_NONE;
    if (span_is(u->subsystem, "net"))
        return K_NET;
    return K_NONE;
}

/* The fields of one kind's event, counted first (the map header) and then written. A value
 * that does not parse is left out, counted in bad_fields once per event. */
struct usb_ids {
    uint64_t product[3]; /* vendor, product, bcdDevice */
    uint64_t cls[3];     /* class, subclass, protocol: TYPE= (device) or INTERFACE= */
    uint64_t bus, dev;
    int has_product, has_cls, has_bus, has_dev;
    char prod[ATTR_BYTES], manu[ATTR_BYTES];
    ssize_t prod_len, manu_len;
};

static int encode_uevent(am_periph *p, am_sink *sink, const struct uevent *u, enum kind k,
                         uint64_t *appended)
{
    static const char *const kind_names[] = {"", "usb_device", "usb_interface", "block", "net"};
    int present = span_is(u->action, PRESENT);
    /* A device there now (added, or listed by a snapshot) still has its sysfs attributes. */
    int is_add = span_is(u->action, "add") || present;
    const char *op = span_is(u->action, "add")      ? "add"
                     : present                      ? PRESENT
                     : span_is(u->action, "remove") ? "remove"
                                                    : "move";
    uint32_t n = 6; /* t ts src op kind devpath */
    int bad = 0;
    struct usb_ids ids;
    memset(&ids, 0, sizeof ids);
    ids.prod_len = ids.manu_len = -1;
    uint64_t ifindex = 0, major = 0, minor = 0;
    int has_ifindex = 0, has_major = 0, has_minor = 0, removable = -1;
    n += u->synth.p != NULL;
    if (k == K_USB_DEVICE || k == K_USB_INTERFACE) {
        if (u->product.p != NULL) {
            ids.has_product = parse_triple(u->product, 16, 0xffff, ids.product);
            bad |= !ids.has_product;
            n += ids.has_product ? 3 : 0; /* vendor_id product_id bcd */
        }
        span cls = k == K_USB_DEVICE ? u->type : u->interface;
        if (cls.p != NULL) {
            ids.has_cls = parse_triple(cls, 10, 255, ids.cls);
            bad |= !ids.has_cls;
            n += ids.has_cls ? 3 : 0;
        }
    }
    if (k == K_USB_DEVICE) {
        if (u->busnum.p != NULL) {
            ids.has_bus = parse_num(u->busnum, 10, 0xffff, &ids.bus);
            bad |= !ids.has_bus;
            n += ids.has_bus;
        }
        if (u->devnum.p != NULL) {
            ids.has_dev = parse_num(u->devnum, 10, 0xffff, &ids.dev);
            bad |= !ids.has_dev;
            n += ids.has_dev;
        }
        if (is_add) {
            ids.prod_len = read_attr(p, u->devpath, 0, "product", ids.prod, sizeof ids.prod);
            ids.manu_len = read_attr(p, u->devpath, 0, "manufacturer", ids.manu, sizeof ids.manu);
            n += (ids.prod_len > 0) + (ids.manu_len > 0);
        }
    }
    if (k == K_BLOCK) {
        n += (u->devname.p != NULL) + (u->devtype.p != NULL);
        if (u->major.p != NULL) {
            has_major = parse_num(u->major, 10, 0xffffffffu, &major);
            bad |= !has_major;
        }
        if (u->minor.p != NULL) {
            has_minor = parse_num(u->minor, 10, 0xffffffffu, &minor);
            bad |= !has_minor;
        }
        n += has_major + has_minor;
        if (is_add) {
            char buf[8];
            int partition = span_is(u->devtype, "partition");
            ssize_t got = read_attr(p, u->devpath, partition, "removable", buf, sizeof buf);
            if (got == 1 && (buf[0] == '0' || buf[0] == '1')) {
                removable = buf[0] == '1';
                n++;
            }
        }
    }
    if (k == K_NET) {
        n += u->interface.p != NULL;
        if (u->ifindex.p != NULL) {
            has_ifindex = parse_num(u->ifindex, 10, 0x7fffffff, &ifindex);
            bad |= !has_ifindex;
            n += has_ifindex;
        }
    }
    p->st.bad_fields += (uint64_t)bad;

    mp_buf *e = sink_begin(sink);
    int st;
    TRY(mp_map(e, n));
    TRY(put_head(e, "uevent", op, kind_names[k]));
    TRY(put_text(e, "devpath", u->devpath));
    if (u->synth.p != NULL) {
        /* Written to a uevent file in sysfs (a coldplug or a test), not a device change. */
        TRY(mp_cstr(e, "synthetic"));
        TRY(mp_bool(e, 1));
    }
    if (ids.has_product) {
        TRY(put_hex16(e, "vendor_id", ids.product[0]));
        TRY(put_hex16(e, "product_id", ids.product[1]));
        TRY(put_hex16(e, "bcd", ids.product[2]));
    }
    if (ids.has_cls) {
        TRY(put_uint(e, "class", ids.cls[0]));
        TRY(put_uint(e, "subclass", ids.cls[1]));
        TRY(put_uint(e, "protocol", ids.cls[2]));
    }
    if (ids.has_bus)
        TRY(put_uint(e, "bus", ids.bus));
    if (ids.has_dev)
        TRY(put_uint(e, "dev", ids.dev));
    if (ids.prod_len > 0)
        TRY(put_text(e, "product", (span){ids.prod, (size_t)ids.prod_len}));
    if (ids.manu_len > 0)
        TRY(put_text(e, "manufacturer", (span){ids.manu, (size_t)ids.manu_len}));
    if (k == K_BLOCK) {
        if (u->devname.p != NULL)
            TRY(put_text(e, "name", u->devname));
        if (u->devtype.p != NULL)
            TRY(put_text(e, "devtype", u->devtype));
        if (has_major)
            TRY(put_uint(e, "major", major));
        if (has_minor)
            TRY(put_uint(e, "minor", minor));
        if (removable >= 0) {
            TRY(mp_cstr(e, "removable"));
            TRY(mp_bool(e, removable));
        }
    }
    if (k == K_NET) {
        if (u->interface.p != NULL)
            TRY(put_text(e, "name", u->interface));
        if (has_ifindex)
            TRY(put_uint(e, "ifindex", ifindex));
    }
done:
    {
        uint64_t *count[] = {NULL, &p->st.usb_device, &p->st.usb_interface, &p->st.block,
                             &p->st.net};
        return finish(p, sink, st, count[k], appended);
    }
}

static int decode_uevent(am_periph *p, am_sink *sink, const uint8_t *data, size_t len,
                         uint64_t *appended)
{
    const char *text = (const char *)data;
    const char *nul = memchr(text, '\0', len);
    const char *at = nul == NULL ? NULL : memchr(text, '@', (size_t)(nul - text));
    if (at == NULL) {
        p->st.malformed++;
        return AM_OK;
    }
    span head_action = {text, (size_t)(at - text)};
    span head_devpath = {at + 1, (size_t)(nul - at - 1)};
    struct uevent u;
    memset(&u, 0, sizeof u);
    size_t pos = (size_t)(nul - text) + 1;
    while (pos < len) {
        const char *end = memchr(text + pos, '\0', len - pos);
        size_t n = end == NULL ? len - pos : (size_t)(end - (text + pos));
        if (n > 0)
            take_field(&u, (span){text + pos, n});
        pos += n + 1;
    }
    /* The header repeats ACTION and DEVPATH: a message where they differ is not the kernel's. */
    if (u.action.p == NULL || u.devpath.p == NULL || u.subsystem.p == NULL ||
        u.action.len != head_action.len || memcmp(u.action.p, head_action.p, u.action.len) != 0 ||
        u.devpath.len != head_devpath.len ||
        memcmp(u.devpath.p, head_devpath.p, u.devpath.len) != 0) {
        p->st.malformed++;
        return AM_OK;
    }
    p->st.uevents++;
    enum kind k = kind_of(&u);
    int wanted = span_is(u.action, "add") || span_is(u.action, "remove") ||
                 span_is(u.action, PRESENT) ||
                 (k == K_NET && span_is(u.action, "move"));
    if (k == K_NONE || !wanted) {
        p->st.ignored++;
        return AM_OK;
    }
    return encode_uevent(p, sink, &u, k, appended);
}

/* ---- rtnetlink links ---- */

static struct link_state *find_link(am_periph *p, int32_t ifindex)
{
    for (uint32_t i = 0; i < p->link_count; i++)
        if (p->links[i].ifindex == ifindex)
            return &p->links[i];
    return NULL;
}

static void forget_link(am_periph *p, int32_t ifindex)
{
    struct link_state *l = find_link(p, ifindex);
    if (l != NULL)
        *l = p->links[--p->link_count];
}

static int encode_carrier(am_periph *p, am_sink *sink, int up, int32_t ifindex, span name,
                          uint64_t *appended)
{
    mp_buf *e = sink_begin(sink);
    int st;
    TRY(mp_map(e, 6 + (name.p != NULL)));
    TRY(put_head(e, "rtnl", up ? "carrier_up" : "carrier_down", "net"));
    if (name.p != NULL)
        TRY(put_text(e, "name", name));
    TRY(put_uint(e, "ifindex", (uint64_t)ifindex));
done:
    return finish(p, sink, st, &p->st.carrier, appended);
}

/* One RTM_NEWLINK / RTM_DELLINK (payload after the nlmsghdr). dump: an answer of our dump. */
static int decode_link(am_periph *p, am_sink *sink, uint16_t type, const uint8_t *d, size_t len,
                       int dump, uint64_t *appended)
{
    /* dump: a link's state from a dump, remembered; sink is then not used (may be NULL). */
    struct ifinfomsg ifi;
    if (len < sizeof ifi) {
        p->st.malformed++;
        return AM_OK;
    }
    memcpy(&ifi, d, sizeof ifi);
    p->st.link_messages++;
    if (ifi.ifi_index <= 0) {
        p->st.malformed++;
        return AM_OK;
    }
    span name = {NULL, 0};
    int carrier = (ifi.ifi_flags & IFF_LOWER_UP) != 0;
    size_t off = NLMSG_ALIGN(sizeof ifi);
    while (off + sizeof(struct rtattr) <= len) {
        struct rtattr rta;
        memcpy(&rta, d + off, sizeof rta);
        if (rta.rta_len < sizeof rta || rta.rta_len > len - off) {
            p->st.malformed++;
            return AM_OK;
        }
        const uint8_t *v = d + off + sizeof rta;
        size_t vlen = rta.rta_len - sizeof rta;
        if (rta.rta_type == IFLA_IFNAME && vlen > 0) {
            const char *s = (const char *)v;
            const char *z = memchr(s, '\0', vlen);
            name = (span){s, z == NULL ? vlen : (size_t)(z - s)};
        } else if (rta.rta_type == IFLA_CARRIER && vlen >= 1) {
            carrier = v[0] != 0;
        }
        size_t step = ((size_t)rta.rta_len + RTA_ALIGNTO_ - 1) & ~(size_t)(RTA_ALIGNTO_ - 1);
        if (step > len - off)
            break;
        off += step;
    }
    if (type == RTM_DELLINK) {
        forget_link(p, ifi.ifi_index);
        return AM_OK;
    }
    struct link_state *l = find_link(p, ifi.ifi_index);
    if (l == NULL) {
        /* A link seen for the first time (in the dump, or just made): its carrier is
         * remembered; its arrival is the uevent's `add`. */
        if (p->link_count == p->opt.max_links) {
            p->st.link_overflow++;
            return AM_OK;
        }
        p->links[p->link_count++] = (struct link_state){ifi.ifi_index, (uint8_t)carrier};
        return AM_OK;
    }
    if (l->carrier == carrier)
        return AM_OK;
    l->carrier = (uint8_t)carrier;
    if (dump)
        return AM_OK;
    return encode_carrier(p, sink, carrier, ifi.ifi_index, name, appended);
}

static int decode_rtnl(am_periph *p, am_sink *sink, const uint8_t *data, size_t len,
                       uint64_t *appended)
{
    size_t off = 0;
    int st = AM_OK;
    while (off + sizeof(struct nlmsghdr) <= len) {
        struct nlmsghdr nh;
        memcpy(&nh, data + off, sizeof nh);
        if (nh.nlmsg_len < sizeof nh || nh.nlmsg_len > len - off) {
            p->st.malformed++;
            return st;
        }
        const uint8_t *payload = data + off + NLMSG_HDRLEN;
        size_t plen = nh.nlmsg_len - NLMSG_HDRLEN;
        if (nh.nlmsg_type == RTM_NEWLINK || nh.nlmsg_type == RTM_DELLINK) {
            int r = decode_link(p, sink, nh.nlmsg_type, payload, plen, 0, appended);
            if (r != AM_OK)
                st = r;
        }
        size_t step = NLMSG_ALIGN(nh.nlmsg_len);
        if (step > len - off)
            break;
        off += step;
    }
    if (off < len && len - off >= sizeof(struct nlmsghdr))
        p->st.malformed++;
    return st;
}

int am_periph_decode(am_periph *p, am_sink *sink, int which, const uint8_t *data, size_t len,
                     uint32_t sender_pid, uint64_t *appended)
{
    if (p == NULL || sink == NULL || appended == NULL || (data == NULL && len > 0) ||
        (which != AM_PERIPH_UEVENT && which != AM_PERIPH_LINK))
        return AM_ERR_ARG;
    *appended = 0;
    p->st.datagrams++;
    if (sender_pid != 0) {
        /* Only the kernel sends from port 0: anyone else may write a uevent that names a
         * device that is not there (or hide one behind a forged `remove`). */
        p->st.spoofed++;
        return AM_OK;
    }
    if (len == 0) {
        p->st.malformed++;
        return AM_OK;
    }
    return which == AM_PERIPH_UEVENT ? decode_uevent(p, sink, data, len, appended)
                                     : decode_rtnl(p, sink, data, len, appended);
}

/* One datagram of socket `which` into events: 1 read, 0 nothing to read, -1 error. */
static int receive(am_periph *p, am_sink *sink, int which, uint64_t *appended, int *status)
{
    struct sockaddr_nl from;
    struct iovec iov = {.iov_base = p->rx, .iov_len = RX_BYTES};
    struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov,
                         .msg_iovlen = 1};
    memset(&from, 0, sizeof from);
    ssize_t n = recvmsg(p->fd[which], &msg, MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EINTR)
            return 1;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (errno == ENOBUFS) {
            p->st.enobufs++;
            /* Carrier changes may have been lost: learn the links' state again. */
            if (which == AM_PERIPH_LINK && sync_dump(p) != 0) {
                p->err = errno;
                return -1;
            }
            return 1;
        }
        p->err = errno;
        return -1;
    }
    if (msg.msg_flags & MSG_TRUNC) {
        p->st.datagrams++;
        p->st.truncated++;
        return 1;
    }
    uint64_t got = 0;
    *status = am_periph_decode(p, sink, which, p->rx, (size_t)n, from.nl_pid, &got);
    *appended += got;
    return 1;
}

int am_periph_drain(am_periph *p, am_sink *sink, uint64_t *appended)
{
    if (p == NULL || sink == NULL || appended == NULL || (p->fd[0] < 0 && p->fd[1] < 0))
        return AM_ERR_ARG;
    *appended = 0;
    int open[2] = {p->fd[0] >= 0, p->fd[1] >= 0};
    for (uint32_t reads = 0;; reads++) {
        if (!open[0] && !open[1])
            return AM_OK;
        if (reads >= p->opt.max_datagrams)
            return AM_ERR_LIMIT;
        for (int which = 0; which < 2; which++) {
            if (!open[which])
                continue;
            if (am_sink_full(sink))
                return AM_ERR_FULL;
            int status = AM_OK;
            int r = receive(p, sink, which, appended, &status);
            if (r < 0)
                return AM_PERIPH_ERR_SYS;
            if (r == 0)
                open[which] = 0;
            if (status == AM_ERR_FULL)
                return AM_ERR_FULL;
        }
    }
}
