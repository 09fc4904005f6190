/* sock_owner.h: socket inode -> owning process (pid, comm, exe), a bounded cache filled by one
 * walk of /proc/PID/fd per snapshot. Private to the socket table (sock_diag.c). */
#ifndef AM_SOCK_OWNER_H
#define AM_SOCK_OWNER_H

#include <stddef.h>
#include <stdint.h>

#include "index.h"

enum owner_state {
    OWNER_PENDING = 1, /* seen in a snapshot, not yet looked for */
    OWNER_FOUND = 2,   /* a walk found it in a process */
    OWNER_NONE = 3     /* a walk found it in no process: not looked for again */
};

enum owner_text { OWNER_COMM_UTF8 = 1, OWNER_EXE_UTF8 = 2 };

/* A process's exe path, shared by the owners of its sockets (one copy per process and walk,
 * not one per socket): freed when the last owner lets go. */
struct owner_exe {
    uint32_t refs;
    uint16_t len;
    char text[];
};

struct owner {
    uint32_t inode;
    int32_t pid;
    uint32_t gen;      /* the last snapshot (generation) that holds the inode */
    uint8_t state;
    uint8_t text_utf8; /* OWNER_COMM_UTF8 | OWNER_EXE_UTF8: checked once, written per event */
    uint8_t comm_len;
    char comm[16];
    struct owner_exe *exe; /* NULL when unknown */
};

struct owner_map {
    am_index x;        /* struct owner by inode */
    uint32_t gen;
    uint32_t pending;
};

struct owner_walk {
    uint64_t found;
    uint64_t unknown;
    uint64_t vanished;
};

/* AM_OK, or AM_ERR_ARG for a cap out of the index's range. */
int owners_init(struct owner_map *m, uint32_t cap);
void owners_release(struct owner_map *m);
struct owner *owners_find(struct owner_map *m, uint32_t inode);
/* The inode's entry, looked for at *pos first (where a socket saw it last: no hash while no
 * removal moved it), else found by its hash, and *pos updated; NULL when it has none. */
struct owner *owners_at(struct owner_map *m, uint32_t *pos, uint32_t inode);
uint32_t owners_count(const struct owner_map *m);
/* The inode's entry, created PENDING when new; marks it held by generation m->gen and sets
 * *pos to its position. NULL when the cache is full (or no memory). */
struct owner *owners_touch(struct owner_map *m, uint32_t inode, uint32_t *pos);
/* Drops every entry not held by generation m->gen. */
void owners_prune(struct owner_map *m);
/* One walk of /proc/PID/fd resolving every PENDING entry (found -> FOUND, else NONE). */
void owners_walk(struct owner_map *m, struct owner_walk *w);
size_t owners_memory(const struct owner_map *m);

#endif
