/* proc_net.h: the /proc/net/{tcp,tcp6,udp,udp6} text parser. Pure: it reads no file and knows
 * no table; it turns text, in chunks of any size, into one procnet_sock per socket line and
 * counts the lines it could not read. The socket table (sock_diag.c) reads the files and
 * keeps what it is given. */
#ifndef AM_PROC_NET_H
#define AM_PROC_NET_H

#include <stddef.h>
#include <stdint.h>

enum { PROCNET_MAX_LINE = 512 }; /* longer lines are skipped and counted */

/* One socket line. Addresses in network order (an IPv4 one in the first 4 bytes, the rest
 * zero); ports in host order. */
struct procnet_sock {
    uint8_t laddr[16];
    uint8_t raddr[16];
    uint16_t lport, rport;
    uint32_t uid;
    uint32_t inode;
    uint8_t state;     /* the st column: a TCP state number */
};

typedef void (*procnet_sock_fn)(void *ctx, const struct procnet_sock *s);

struct procnet_parser {
    uint8_t fam;           /* 4 or 6: the file's address family */
    procnet_sock_fn sock;  /* called with each socket line */
    void *ctx;
    uint64_t malformed;    /* lines that did not parse (long ones included) */
    uint64_t long_lines;   /* lines over PROCNET_MAX_LINE */
    char carry[PROCNET_MAX_LINE]; /* a line cut by the end of a chunk */
    size_t carry_len;
    int skipping;          /* the carried line is too long: drop up to its newline */
};

void procnet_begin(struct procnet_parser *p, uint8_t fam, procnet_sock_fn sock, void *ctx);
/* The next chunk of the file's text; a line may span chunks. */
void procnet_feed(struct procnet_parser *p, const char *data, size_t len);
/* The end of the text: a last line without its newline is parsed too. */
void procnet_end(struct procnet_parser *p);

#endif
