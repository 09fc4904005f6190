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
#include "msgpack.h"

static int same_inode(const void *entry, const void *key, size_t len, const void *ctx)
{
    (void)ctx;
    const struct owner *o = entry;
    return len == sizeof o->inode && memcmp(&o->inode, key, len) == 0;
}

int owners_init(struct owner_map *m, uint32_t cap)
{
    memset(m, 0, sizeof *m);
    return am_index_init(&m->x, sizeof(struct owner), cap, same_inode, NULL, NULL);
}

static struct owner *owner_at(const struct owner_map *m, uint32_t i)
{
    return am_index_at(&m->x, i);
}

static void exe_release(struct owner_exe *exe)
{
    if (exe != NULL && --exe->refs == 0)
        free(exe);
}

void owners_release(struct owner_map *m)
{
    for (uint32_t i = 0; i < am_index_count(&m->x); i++)
        exe_release(owner_at(m, i)->exe);
    am_index_release(&m->x);
    memset(m, 0, sizeof *m);
}

uint32_t owners_count(const struct owner_map *m)
{
    return am_index_count(&m->x);
}

struct owner *owners_find(struct owner_map *m, uint32_t inode)
{
    uint32_t pos = am_index_find(&m->x, &inode, sizeof inode);
    return pos == AM_INDEX_NONE ? NULL : owner_at(m, pos);
}

struct owner *owners_at(struct owner_map *m, uint32_t *pos, uint32_t inode)
{
    if (*pos < am_index_count(&m->x)) {
        struct owner *o = owner_at(m, *pos);
        if (o->inode == inode)
            return o;
    }
    uint32_t found = am_index_find(&m->x, &inode, sizeof inode);
    if (found == AM_INDEX_NONE)
        return NULL;
    *pos = found;
    return owner_at(m, found);
}

struct owner *owners_touch(struct owner_map *m, uint32_t inode, uint32_t *pos)
{
    int st = am_index_add(&m->x, &inode, sizeof inode, pos);
    if (st < 0)
        return NULL;
    struct owner *o = owner_at(m, *pos);
    if (st == AM_INDEX_ADDED) {
        o->inode = inode;
        o->state = OWNER_PENDING;
        m->pending++;
    }
    o->gen = m->gen;
    return o;
}

void owners_prune(struct owner_map *m)
{
    for (uint32_t i = 0; i < am_index_count(&m->x);) {
        struct owner *o = owner_at(m, i);
        if (o->gen == m->gen) {
            i++;
            continue;
        }
        if (o->state == OWNER_PENDING && m->pending > 0)
            m->pending--;
        exe_release(o->exe);
        am_index_remove_at(&m->x, i); /* the last entry moves to i: look at i again */
    }
}

size_t owners_memory(const struct owner_map *m)
{
    /* Each owner's share of its exe, so that a copy shared by many sockets counts once. */
    size_t bytes = am_index_memory(&m->x);
    for (uint32_t i = 0; i < am_index_count(&m->x); i++) {
        const struct owner_exe *exe = owner_at(m, i)->exe;
        if (exe != NULL)
            bytes += (sizeof *exe + exe->len + exe->refs - 1) / exe->refs;
    }
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
    uint8_t text_utf8; /* enum owner_text */
    struct owner_exe *shared; /* exe as the owners hold it: made by the first, then shared */
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
    /* One process's sockets share its text: checked here once, not at each event. */
    p->text_utf8 = 0;
    if (utf8_valid((const uint8_t *)p->comm, p->comm_len))
        p->text_utf8 |= OWNER_COMM_UTF8;
    if (p->has_exe && utf8_valid((const uint8_t *)p->exe, p->exe_len))
        p->text_utf8 |= OWNER_EXE_UTF8;
}

static void fill_owner(struct owner *o, int pid, struct proc_info *p)
{
    o->pid = pid;
    o->state = OWNER_FOUND;
    memcpy(o->comm, p->comm, p->comm_len);
    o->comm_len = (uint8_t)p->comm_len;
    o->text_utf8 = p->text_utf8 & OWNER_COMM_UTF8;
    struct owner_exe *old = o->exe; /* released last: it may be the one shared */
    o->exe = NULL;
    if (p->shared == NULL && p->has_exe && p->exe_len > 0 && p->exe_len <= UINT16_MAX) {
        p->shared = malloc(sizeof *p->shared + p->exe_len);
        if (p->shared != NULL) {
            p->shared->refs = 0;
            p->shared->len = (uint16_t)p->exe_len;
            memcpy(p->shared->text, p->exe, p->exe_len);
        }
    }
    if (p->shared != NULL) {
        o->exe = p->shared;
        o->exe->refs++;
        o->text_utf8 |= p->text_utf8 & OWNER_EXE_UTF8;
    }
    exe_release(old);
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
    info->shared = NULL;
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
    for (uint32_t i = 0; i < am_index_count(&m->x); i++) {
        struct owner *o = owner_at(m, i);
        if (o->state == OWNER_PENDING) {
            o->state = OWNER_NONE;
            w->unknown++;
        }
    }
    m->pending = 0;
}
