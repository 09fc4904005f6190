/* core_dns.h: DNS answers seen on the wire (native/dns.c; docs/sources/dns.md).
 *
 * A capture owns an AF_PACKET socket (SOCK_DGRAM: packets from their IP header on, whatever
 * the link) with a TPACKET_V3 receive ring and a classic BPF filter, written by hand, that
 * passes only incoming IPv4 / IPv6 UDP and TCP packets to or from port 53 of the chosen
 * interfaces. drain() walks the ring's filled blocks and parses each DNS response (header,
 * questions, A / AAAA / CNAME answers; every name bounded: labels <= 63, names <= 255, only
 * backward compression pointers, at most max_jumps of them) into one `dns` event, and keeps
 * address -> name in a bounded cache (the core's keyed index, clock eviction) that the
 * NetworkActivity aggregator consults to give `conn` and `net` events their `host`.
 * Malformed, truncated and hostile packets never stop it: they are counted by reason. */
#ifndef AM_CORE_DNS_H
#define AM_CORE_DNS_H

#include "core.h"
#include "core_aggregate.h"

/* CDEF-BEGIN */
enum am_dns_status {
    AM_DNS_ERR_SYS = -17 /* a system call failed: am_dns_errno() says why */
};

struct am_dns_options {
    uint32_t ring_bytes;  /* the receive ring (NetworkActivity_PacketBufferSize): rounded down
                             to whole blocks, clamped to 2 .. 1024 blocks. 262144 */
    uint32_t block_bytes; /* one ring block: a power of two, 4096 .. 4194304. 65536 */
    uint32_t block_ms;    /* a block is handed over at the latest this long after its first
                             packet (retire_blk_tov). 64 */
    uint32_t max_hosts;   /* addresses in the address -> name cache, 1 .. 1048576. 4096 */
    uint32_t max_jumps;   /* compression pointers followed per name, 1 .. 127. 32 */
    char devices[1024];   /* comma-separated interface names, at most 64; "" for all. "" */
};

struct am_dns_stats {
    uint64_t packets;       /* packets taken from the ring (or fed) */
    uint64_t messages;      /* DNS messages parsed whole */
    uint64_t queries;       /* of which queries (QR 0): no event */
    uint64_t events;        /* dns events appended to sinks */
    uint64_t answers;       /* A / AAAA / CNAME records of the answer chain used */
    uint64_t other_answers; /* answer records of other types (or classes), skipped */
    uint64_t unrelated;     /* A / AAAA / CNAME records for a name outside the question's chain:
                               not believed, not cached */
    uint64_t answers_cut;   /* addresses or CNAMEs beyond what one event keeps (16 / 8) */
    uint64_t bad_ip;        /* IP headers short, of another version, or with lengths that lie */
    uint64_t fragments;     /* IPv4 fragments (no DNS message whole): skipped */
    uint64_t unsupported;   /* IPv6 extension headers, other protocols: skipped */
    uint64_t bad_transport; /* UDP / TCP headers short or with lengths that lie */
    uint64_t tcp_partial;   /* TCP segments not made of whole length-prefixed messages: the
                               part left over (a message across segments is not reassembled) */
    uint64_t snap_cut;      /* packets the ring cut (tp_snaplen < tp_len) */
    uint64_t truncated;     /* messages ending before their header, counts or records say */
    uint64_t bad_label;     /* labels over 63 bytes or of a reserved type (0x40, 0x80) */
    uint64_t long_name;     /* names over 255 bytes */
    uint64_t bad_pointer;   /* compression pointers forward, to themselves, or out of the message */
    uint64_t pointer_loop;  /* names that took more than max_jumps pointers */
    uint64_t bad_rdata;     /* A rdata not 4 bytes, AAAA not 16, CNAME rdata not one name */
    uint64_t hosts;         /* addresses in the cache now */
    uint64_t hosts_added;   /* addresses put in the cache (new or renamed) */
    uint64_t hosts_evicted; /* addresses the clock evicted to stay within max_hosts */
    uint64_t host_lookups;  /* lookups by the aggregator (or am_dns_host) */
    uint64_t host_hits;     /* of which found */
    uint64_t long_host;     /* names over 255 characters as text: not cached */
    uint64_t ring_drops;    /* packets the kernel dropped: the ring was full (tp_drops) */
    uint64_t ring_freezes;  /* times the ring filled up (tp_freeze_q_cnt) */
    uint64_t dropped;       /* events the sink refused (one larger than a batch, or full) */
    uint64_t ring_bytes;    /* the ring in use (0 without a socket) */
    uint64_t ring_clamped;  /* 1: ring_bytes was not a whole number of blocks in range */
    uint64_t devices;       /* interfaces the filter takes (0: all) */
    uint64_t devices_missing; /* names in devices with no interface when the socket opened */
    uint64_t memory;        /* bytes held now, ring included */
    uint64_t memory_bound;  /* the most these options ever hold: the ring (as open() would
                               make it), a full cache */
};

typedef struct am_dns am_dns;
void am_dns_default_options(struct am_dns_options *out);
/* A parser and cache without a socket; opts may be NULL. NULL on a bad option or no memory. */
am_dns *am_dns_new(const struct am_dns_options *opts);
/* Closes the socket, unmaps the ring and frees. An aggregator using the cache must have been
 * told to stop (am_agg_use_hosts(a, NULL)) first. */
void am_dns_free(am_dns *d);
/* Opens the socket (CAP_NET_RAW), sets up the ring, attaches the filter, binds. AM_DNS_ERR_SYS
 * on failure (errno in am_dns_errno). */
int am_dns_open(am_dns *d);
/* The socket (non-blocking; readable when a block is ready), -1 when not open. */
int am_dns_fileno(const am_dns *d);
int am_dns_errno(const am_dns *d);
/* Every filled ring block into events. AM_OK: the ring has no filled block left; AM_ERR_FULL:
 * the sink is full: take batches, call again (it resumes at the packet it stopped before).
 * *appended (may be NULL): events appended by this call. */
int am_dns_drain(am_dns *d, am_sink *sink, uint32_t *appended);
/* One packet as the ring holds it (from the IPv4 or IPv6 header on), received at ts_ms (wall
 * time, ms): for tests, fuzzing and captures. */
int am_dns_feed_packet(am_dns *d, am_sink *sink, const uint8_t *data, size_t len,
                       int64_t ts_ms, uint32_t *appended);
/* One DNS message alone (no IP, no TCP length prefix), from server (text, may be NULL). */
int am_dns_feed_message(am_dns *d, am_sink *sink, const uint8_t *data, size_t len,
                        int64_t ts_ms, const char *server, uint32_t *appended);
/* The name the cache holds for an address (text as the sources write it), NUL-terminated into
 * out (cap bytes). AM_OK, AM_EMPTY when unknown, AM_ERR_LIMIT when cap is too small. */
int am_dns_host(am_dns *d, const char *addr, char *out, size_t cap);
void am_dns_stats(const am_dns *d, struct am_dns_stats *out);
/* The BPF program the capture attaches (for the test that runs it in the kernel): up to cap
 * instructions of struct sock_filter (8 bytes each) into out; *count gets how many.
 * AM_ERR_LIMIT when cap is too small. */
int am_dns_filter_program(const am_dns *d, uint8_t *out, size_t cap, uint32_t *count);

/* The aggregator gives the `conn` and `net` entries it makes a `host` from d's cache (by
 * `raddr`; an IPv4-mapped IPv6 address also by its IPv4 form), when the event has none. d NULL:
 * no more. The capture must outlive the link. AM_OK or AM_ERR_ARG. */
int am_agg_use_hosts(am_agg *a, am_dns *d);
/* CDEF-END */

/* For aggregate.c: the cache's name for an address given as text (not NUL-terminated), or
 * NULL; *len gets its length. Marks the entry as used (the clock's reference bit). */
const char *dns_host_lookup(am_dns *d, const char *addr, size_t addr_len, size_t *len);

#endif
