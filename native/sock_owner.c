/* sock_owner.c: socket inode -> owning process. The cache holds the inodes of the current
 * snapshot (and of the connections not yet reported closed); one walk of /proc/PID/fd per
 * snapshot resolves the new ones, reading each process's exe and comm once per walk. A process
 * that exits while it is walked is an expected outcome, counted in vanished. */
#include "sock_owner.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"

static uint32_t inode_hash(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

int owners_init(struct owner_map *m, uint32_t cap)
{
    memset(m, 0, sizeof *m);
    m->cap = cap;
    return AM_OK;
}

static void owner_clear(struct owner *o)
{
    free(o->exe);
    o->exe = NULL;
}

void owners_release(struct owner_map *m)
{
    for (uint32_t i = 0; i < m->n; i++)
        owner_clear(&m->e[i]);
    free(m->e);
    free(m->slot);
    memset(m, 0, sizeof *m);
}

static void reindex(struct owner_map *m)
{
    memset(m->slot, 0, ((size_t)m->mask + 1) * sizeof *m->slot);
    for (uint32_t i = 0; i < m->n; i++) {
        uint32_t s = inode_hash(m->e[i].inode) & m->mask;
        while (m->slot[s] != 0)
            s = (s + 1) & m->mask;
        m->slot[s] = i + 1;
    }
}

/* Room for one more entry: the dense array and the index grow by doubling, up to cap. */
static int grow(struct owner_map *m)
{
    if (m->n < m->alloc)
        return AM_OK;
    if (m->n >= m->cap)
        return AM_ERR_LIMIT;
    uint32_t alloc = m->alloc ? m->alloc * 2 : 64;
    if (alloc > m->cap)
        alloc = m->cap;
    struct owner *e = realloc(m->e, (size_t)alloc * sizeof *e);
    if (e == NULL)
        return AM_ERR_NOMEM;
    m->e = e;
    uint32_t slots = 1;
    while (slots < alloc * 2u)
        slots <<= 1;
    if (slots - 1 != m->mask || m->slot == NULL) {
        uint32_t *slot = malloc((size_t)slots * sizeof *slot);
        if (slot == NULL)
            return AM_ERR_NOMEM;
        free(m->slot);
        m->slot = slot;
        m->mask = slots - 1;
        reindex(m);
    }
    m->alloc = alloc;
    return AM_OK;
}

struct owner *owners_find(const struct owner_map *m, uint32_t inode)
{
    if (m->slot == NULL)
        return NULL;
    for (uint32_t s = inode_hash(inode) & m->mask;; s = (s + 1) & m->mask) {
        uint32_t v = m->slot[s];
        if (v == 0)
            return NULL;
        if (m->e[v - 1].inode == inode)
            return &m->e[v - 1];
    }
}

struct owner *owners_touch(struct owner_map *m, uint32_t inode)
{
    struct owner *o = owners_find(m, inode);
    if (o == NULL) {
        if (grow(m) != AM_OK)
            return NULL;
        o = &m->e[m->n];
        memset(o, 0, sizeof *o);
        o->inode = inode;
        o->state = OWNER_PENDING;
        uint32_t s = inode_hash(inode) & m->mask;
        while (m->slot[s] != 0)
            s = (s + 1) & m->mask;
        m->slot[s] = ++m->n;
        m->pending++;
    }
    o->gen = m->gen;
    return o;
}

void owners_prune(struct owner_map *m)
{
    uint32_t kept = 0;
    for (uint32_t i = 0; i < m->n; i++) {
        if (m->e[i].gen == m->gen) {
            m->e[kept++] = m->e[i];
        } else {
            if (m->e[i].state == OWNER_PENDING && m->pending > 0)
                m->pending--;
            owner_clear(&m->e[i]);
        }
    }
    if (kept != m->n) {
        m->n = kept;
        if (m->slot != NULL)
            reindex(m);
    }
}

size_t owners_memory(const struct owner_map *m)
{
    size_t bytes = (size_t)m->alloc * sizeof *m->e;
    if (m->slot != NULL)
        bytes += ((size_t)m->mask + 1) * sizeof *m->slot;
    for (uint32_t i = 0; i < m->n; i++)
        bytes += m->e[i].exe_len;
    return bytes;
}

/* "socket:[12345]" -> 12345; 0 for any other link. */
static uint32_t socket_inode(const char *link, ssize_t len)
{
    static const char prefix[] = "socket:[";
    const ssize_t plen = (ssize_t)sizeof prefix - 1;
    if (len <= plen + 1 || memcmp(link, prefix, (size_t)plen) != 0 || link[len - 1] != ']')
        return 0;
    uint64_t v = 0;
    for (ssize_t i = plen; i < len - 1; i++) {
        if (link[i] < '0' || link[i] > '9')
            return 0;
        v = v * 10 + (uint64_t)(link[i] - '0');
        if (v > UINT32_MAX)
            return 0;
    }
    return (uint32_t)v;
}

struct proc_info {
    int loaded;
    int ok;
    char comm[16];
    size_t comm_len;
    char exe[4096];
    size_t exe_len;
    int has_exe;
};

static void load_proc_info(int pid_dir, struct proc_info *p)
{
    p->loaded = 1;
    ssize_t n = readlinkat(pid_dir, "exe", p->exe, sizeof p->exe);
    /* A kernel thread has no exe; a link as long as the buffer may be cut: leave it out. */
    if (n > 0 && (size_t)n < sizeof p->exe) {
        p->exe_len = (size_t)n;
        p->has_exe = 1;
    }
    int fd = openat(pid_dir, "comm", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char buf[64];
        ssize_t r = read(fd, buf, sizeof buf);
        close(fd);
        if (r > 0) {
            size_t len = (size_t)r;
            if (buf[len - 1] == '\n')
                len--;
            if (len > sizeof p->comm)
                len = sizeof p->comm;
            memcpy(p->comm, buf, len);
            p->comm_len = len;
        }
    }
}

static void fill_owner(struct owner *o, int pid, const struct proc_info *p)
{
    o->pid = pid;
    o->state = OWNER_FOUND;
    memcpy(o->comm, p->comm, p->comm_len);
    o->comm_len = (uint8_t)p->comm_len;
    free(o->exe);
    o->exe = NULL;
    o->exe_len = 0;
    if (p->has_exe && p->exe_len > 0 && p->exe_len <= UINT16_MAX) {
        o->exe = malloc(p->exe_len);
        if (o->exe != NULL) {
            memcpy(o->exe, p->exe, p->exe_len);
            o->exe_len = (uint16_t)p->exe_len;
        }
    }
}

static int parse_pid(const char *name)
{
    long v = 0;
    if (*name == '\0')
        return 0;
    for (const char *c = name; *c; c++) {
        if (*c < '0' || *c > '9')
            return 0;
        v = v * 10 + (*c - '0');
        if (v > 0x3fffffff)
            return 0;
    }
    return (int)v;
}

/* The sockets among one process's fds; stops early once nothing is pending. */
static void walk_pid(struct owner_map *m, int proc_dir, int pid, const char *name,
                     struct owner_walk *w, struct proc_info *info)
{
    int pid_dir = openat(proc_dir, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (pid_dir < 0) {
        w->vanished++;
        return;
    }
    int fd_dir = openat(pid_dir, "fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd_dir < 0) {
        /* ENOENT: exited; EACCES cannot happen to root; a zombie has an empty fd dir. */
        if (errno == ENOENT || errno == ESRCH)
            w->vanished++;
        close(pid_dir);
        return;
    }
    DIR *d = fdopendir(fd_dir);
    if (d == NULL) {
        close(fd_dir);
        close(pid_dir);
        return;
    }
    info->loaded = 0;
    info->has_exe = 0;
    info->comm_len = 0;
    info->exe_len = 0;
    struct dirent *de;
    char link[64];
    errno = 0;
    while (m->pending > 0 && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        ssize_t n = readlinkat(fd_dir, de->d_name, link, sizeof link);
        if (n < 0) {
            if (errno == ENOENT)
                w->vanished++; /* the fd was closed between readdir and readlink */
            continue;
        }
        uint32_t inode = socket_inode(link, n);
        if (inode == 0)
            continue;
        struct owner *o = owners_find(m, inode);
        if (o == NULL || o->state != OWNER_PENDING)
            continue;
        if (!info->loaded)
            load_proc_info(pid_dir, info);
        fill_owner(o, pid, info);
        m->pending--;
        w->found++;
    }
    closedir(d);
    close(pid_dir);
}

void owners_walk(struct owner_map *m, struct owner_walk *w)
{
    if (m->pending == 0)
        return;
    int proc_dir = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (proc_dir < 0)
        return;
    DIR *d = fdopendir(proc_dir);
    if (d == NULL) {
        close(proc_dir);
        return;
    }
    /* 4 KB of exe path per process would not fit many stacks of small boards twice. */
    struct proc_info *info = malloc(sizeof *info);
    if (info != NULL) {
        struct dirent *de;
        while (m->pending > 0 && (de = readdir(d)) != NULL) {
            int pid = parse_pid(de->d_name);
            if (pid > 0)
                walk_pid(m, proc_dir, pid, de->d_name, w, info);
        }
        free(info);
    }
    closedir(d);
    /* Whatever is left belongs to no process we could see: not looked for again while it
     * stays in the snapshots. */
    for (uint32_t i = 0; i < m->n; i++) {
        if (m->e[i].state == OWNER_PENDING) {
            m->e[i].state = OWNER_NONE;
            w->unknown++;
        }
    }
    m->pending = 0;
}
