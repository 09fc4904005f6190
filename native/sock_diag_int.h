/* sock_diag_int.h: the inside of the socket table (core_sock_diag.h), shared by the sock_diag
 * decoder (sock_diag.c) and the /proc/net parser (proc_net.c). */
#ifndef AM_SOCK_DIAG_INT_H
#define AM_SOCK_DIAG_INT_H

#include <stddef.h>
#include <stdint.h>

#include "core_sock_diag.h"
#include "sink.h"
#include "sock_owner.h"

/* What identifies a socket across snapshots: the inode and both ends. Packed without holes
 * so that memcmp compares it (entries are zeroed before they are filled). */
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
    uint32_t hash;
    int32_t pid;      /* copied from the owner cache at commit; 0 unknown */
    uint8_t state;    /* TCP state number (UDP: 1 connected, 7 unconnected) */
    uint8_t kind;
    uint8_t flags;
};

struct sock_tab {
    struct sock_entry *e;  /* dense */
    uint32_t n, alloc, cap;
    uint32_t *slot;        /* open addressing over e: index + 1, 0 empty */
    uint32_t mask;
};

struct am_sock {
    struct am_sock_options opt;
    int source;        /* AM_SOCK_DIAG or AM_SOCK_PROCNET */
    int source_err;    /* errno that ruled sock_diag out */
    int fd;
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
    struct owner_map owners;
    struct am_sock_stats st;
};

/* One decoded socket into the snapshot being built (classified, counted, maybe dropped). */
void snap_add(am_sock *t, struct sock_entry *e);
/* The text of one /proc/net file, any chunk of whole lines (a last line without newline too). */
int procnet_lines(am_sock *t, uint8_t proto, uint8_t fam, const char *data, size_t len);
/* One /proc/net file read in bounded chunks. AM_OK, or AM_ERR_LIMIT when it cannot be read. */
int procnet_read(am_sock *t, const char *path, uint8_t proto, uint8_t fam);

#endif
