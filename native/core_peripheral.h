/* core_peripheral.h: devices plugged in and out (native/uevent.c; events in
 * docs/sources/uevent.md).
 *
 * One handle, two kernel sources: the kernel's uevents (NETLINK_KOBJECT_UEVENT, group 1):
 * USB devices and interfaces, block devices and network interfaces added and removed; and
 * rtnetlink's link messages (RTMGRP_LINK): a link's carrier going up or down (a cable
 * plugged or pulled). A uevent whose netlink sender is not the kernel (nl_pid != 0) is a
 * spoof: counted, never taken as a device. USB product and manufacturer strings and a block
 * device's `removable` are read from sysfs when the device is added. A snapshot of the
 * devices present decodes datagrams with ACTION=present built from sysfs `uevent` files
 * (agent.collectors.peripheral.snapshot): op `present`. */
#ifndef AM_CORE_PERIPHERAL_H
#define AM_CORE_PERIPHERAL_H

#include "core.h"

/* CDEF-BEGIN */
enum am_periph_status {
    AM_PERIPH_ERR_SYS = -21 /* a system call failed: am_periph_errno() says why */
};

enum am_periph_socket {
    AM_PERIPH_UEVENT = 0, /* NETLINK_KOBJECT_UEVENT */
    AM_PERIPH_LINK = 1    /* NETLINK_ROUTE, RTMGRP_LINK */
};

struct am_periph_options {
    uint32_t rcvbuf;        /* receive buffer of each socket, bytes (SO_RCVBUFFORCE). 1048576 */
    uint32_t uevents;       /* 1: listen to uevents. 1 */
    uint32_t links;         /* 1: listen to rtnetlink link messages (carrier). 1 */
    uint32_t sysfs;         /* 1: read USB strings and `removable` from sysfs on add. 1 */
    uint32_t max_links;     /* links whose carrier is remembered, 1..65536. 1024 */
    uint32_t max_datagrams; /* datagrams one drain call reads at most, then AM_ERR_LIMIT. 1024 */
};

struct am_periph_stats {
    uint64_t datagrams;     /* datagrams received (or given to decode) */
    uint64_t uevents;       /* kernel uevents decoded */
    uint64_t events;        /* events appended to the sink */
    uint64_t usb_device;    /* events of each kind */
    uint64_t usb_interface;
    uint64_t block;
    uint64_t net;
    uint64_t carrier;       /* carrier up/down events */
    uint64_t ignored;       /* uevents of other subsystems or actions (bind, change, ...) */
    uint64_t spoofed;       /* datagrams not sent by the kernel (netlink sender pid != 0) */
    uint64_t malformed;     /* uevents or link messages that are not what the kernel writes */
    uint64_t bad_fields;    /* values left out of an event: PRODUCT, TYPE, numbers unparsable */
    uint64_t truncated;     /* datagrams larger than the receive buffer: cut, not decoded */
    uint64_t enobufs;       /* a socket overran: the kernel dropped messages */
    uint64_t link_messages; /* RTM_NEWLINK / RTM_DELLINK messages decoded */
    uint64_t links;         /* links remembered now */
    uint64_t link_overflow; /* links not remembered: max_links reached */
    uint64_t dumps;         /* link dumps asked for (at listen, and after an overrun) */
    uint64_t sysfs_missing; /* sysfs attributes not found when read */
    uint64_t dropped;       /* events the sink refused (too large, or full) */
};

typedef struct am_periph am_periph;
void am_periph_default_options(struct am_periph_options *out);
/* A decoder without sockets; opts may be NULL. NULL on a bad option or no memory. */
am_periph *am_periph_new(const struct am_periph_options *opts);
/* Closes the sockets and frees. */
void am_periph_free(am_periph *p);
/* Opens the sockets the options ask for (non-blocking), joins their groups and asks rtnetlink
 * for the links present (their carrier is remembered without events). AM_PERIPH_ERR_SYS on
 * failure (errno in am_periph_errno), with no socket left open. */
int am_periph_listen(am_periph *p);
/* The socket (enum am_periph_socket), -1 when not open. */
int am_periph_fileno(const am_periph *p, int which);
int am_periph_errno(const am_periph *p);
/* The directory sysfs attributes are read under ("/sys" by default; tests give a prepared
 * tree); "" reads none. AM_ERR_ARG when it cannot be opened (the old one stays). */
int am_periph_set_sysfs(am_periph *p, const char *path);
/* Reads what both sockets hold into events. AM_OK: nothing left; AM_ERR_FULL: the sink is
 * full: take batches, call again (unread datagrams stay with the kernel); AM_ERR_LIMIT:
 * max_datagrams read, call again. *appended: events appended by this call. */
int am_periph_drain(am_periph *p, am_sink *sink, uint64_t *appended);
/* One datagram as received from a socket (which: enum am_periph_socket) with the sender's
 * netlink port id: the decoder of drain, for tests, fuzzing and benchmarks. A datagram
 * yields at most one event, except a link datagram (one per message): AM_ERR_FULL when the
 * sink refused one (counted in dropped). */
int am_periph_decode(am_periph *p, am_sink *sink, int which, const uint8_t *data, size_t len,
                     uint32_t sender_pid, uint64_t *appended);
void am_periph_stats(const am_periph *p, struct am_periph_stats *out);
/* CDEF-END */

#endif
