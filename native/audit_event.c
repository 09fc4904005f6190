/* audit_event.c: interpret a completed event's records and encode it as one typed msgpack map
 * (docs/events.md). Runs once per event; nothing here keeps state between events. */
#include "audit_event.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"
#include "ip_text.h"

enum { UNSET_ID = 4294967295u, MAX_KEYS = 64, SC_FIELDS = 256 };

/* ---- an encoding context: sticky error, key count, no duplicate keys ---- */

typedef struct enc_ctx {
    mp_buf *b;
    int err;
    uint32_t nkeys;
    /* One bit per (length, first byte, last byte) class of the keys written: a key whose
     * class has no bit set cannot be one of them, and is written without comparing. */
    uint64_t key_classes;
    const char *keys[MAX_KEYS];
    uint8_t key_len[MAX_KEYS];
} enc_ctx;

static void ctx_init(enc_ctx *c, mp_buf *b)
{
    c->b = b;
    c->err = AM_OK;
    c->nkeys = 0;
    c->key_classes = 0;
}

static void ctx_status(enc_ctx *c, int st)
{
    if (st != AM_OK && c->err == AM_OK)
        c->err = st;
}

/* Writes the key unless it was written already; returns 1 when the value must follow. */
static int put_key(enc_ctx *c, const char *key)
{
    if (c->err != AM_OK)
        return 0;
    size_t n = strlen(key);
    /* A key written twice would make a map a reader cannot trust. An event has some 20 keys,
     * each compared with those before it: the class bit settles nearly every key at once,
     * and the first byte nearly every comparison left before memcmp does. */
    uint64_t class = n == 0 ? 1 : UINT64_C(1) << ((n * 7 + (unsigned char)key[0] * 3 +
                                                   (unsigned char)key[n - 1]) & 63);
    if (c->key_classes & class)
        for (uint32_t i = 0; i < c->nkeys; i++)
            if (c->key_len[i] == n && c->keys[i][0] == key[0] && memcmp(c->keys[i], key, n) == 0)
                return 0;
    if (c->nkeys >= MAX_KEYS || n > 255) {
        c->err = AM_ERR_LIMIT;
        return 0;
    }
    ctx_status(c, mp_str(c->b, key, n));
    if (c->err != AM_OK)
        return 0;
    c->keys[c->nkeys] = key;
    c->key_len[c->nkeys++] = (uint8_t)n;
    c->key_classes |= class;
    return 1;
}

static void kv_text(enc_ctx *c, const char *key, const char *s, size_t n)
{
    if (put_key(c, key))
        ctx_status(c, mp_text(c->b, s, n));
}

static void kv_cstr(enc_ctx *c, const char *key, const char *s)
{
    kv_text(c, key, s, strlen(s));
}

static void kv_uint(enc_ctx *c, const char *key, uint64_t v)
{
    if (put_key(c, key))
        ctx_status(c, mp_uint(c->b, v));
}

static void kv_int(enc_ctx *c, const char *key, int64_t v)
{
    if (put_key(c, key))
        ctx_status(c, mp_int(c->b, v));
}

static void kv_bool(enc_ctx *c, const char *key, int v)
{
    if (put_key(c, key))
        ctx_status(c, mp_bool(c->b, v));
}

/* ---- records of an event ---- */

typedef struct rec_ref {
    uint32_t type;
    const char *text;
    size_t len;
} rec_ref;

/* Walks the packed records; returns 0 at the end. */
static int next_rec(const am_event_view *ev, size_t *off, rec_ref *out)
{
    if (*off + sizeof(rec_head) > ev->recs_len)
        return 0;
    rec_head h;
    memcpy(&h, ev->recs + *off, sizeof h);
    *off += sizeof h;
    if (h.len > ev->recs_len - *off)
        return 0;
    out->type = h.type;
    out->text = (const char *)ev->recs + *off;
    out->len = h.len;
    *off += h.len;
    return 1;
}

uint32_t event_first_type(const am_event_view *ev)
{
    size_t off = 0;
    rec_ref r;
    return next_rec(ev, &off, &r) ? r.type : 0;
}

static int is_aux_type(uint32_t t)
{
    return t == AT_SYSCALL || t == AT_PROCTITLE || t == AT_CWD || t == AT_PATH ||
           t == AT_SOCKADDR || t == AT_EXECVE;
}

/* ---- values ---- */

typedef struct lit {
    const char *s;
    size_t n;
} lit;
#define LIT(x) {x, sizeof(x) - 1}

static const lit hexable_keys[] = {
    LIT("name"), LIT("path"), LIT("cwd"), LIT("exe"), LIT("comm"), LIT("acct"), LIT("cmd"),
    LIT("proctitle"), LIT("key"), LIT("data"), LIT("dir"), LIT("file"), LIT("hostname"),
    LIT("vm"), LIT("watch"), LIT("root_dir"), LIT("old-chardev"), LIT("new-chardev"), {NULL, 0},
};

static const lit id_keys[] = {
    LIT("auid"), LIT("uid"), LIT("gid"), LIT("euid"), LIT("egid"), LIT("suid"), LIT("fsuid"),
    LIT("sgid"), LIT("fsgid"), LIT("ses"), LIT("ouid"), LIT("ogid"), LIT("old-auid"),
    LIT("old-ses"), LIT("id"), LIT("oauid"), LIT("sauid"), {NULL, 0},
};

static int key_in(const am_field *f, const lit *list)
{
    for (size_t i = 0; list[i].s != NULL; i++)
        if (f->key_len == list[i].n && memcmp(f->key, list[i].s, list[i].n) == 0)
            return 1;
    return 0;
}

#define key_is(f, lit) span_eq((f)->key, (f)->key_len, lit)

/* The value of f as bytes: hex-decoded into dst when hexable and valid hex. Returns -1 for
 * a nil value, -2 when dst is too small. */
static long field_bytes(const am_field *f, int hexable, uint8_t *dst, size_t cap,
                        const char **out)
{
    if (f->kind == FV_PLAIN && is_nil_text(f->val, f->val_len))
        return -1;
    if (f->kind == FV_PLAIN && hexable && is_hex_text(f->val, f->val_len)) {
        if (f->val_len / 2 > cap)
            return -2;
        hex_decode(f->val, f->val_len, dst);
        *out = (const char *)dst;
        return (long)(f->val_len / 2);
    }
    *out = f->val;
    return (long)f->val_len;
}

static void put_field_text(enc_ctx *c, am_encoder *enc, const am_field *f, int hexable)
{
    const char *s;
    long n = field_bytes(f, hexable, enc->scratch, enc->scratch_cap, &s);
    if (n == -1)
        ctx_status(c, mp_nil(c->b));
    else if (n == -2)
        ctx_status(c, AM_ERR_LIMIT);
    else
        ctx_status(c, mp_text(c->b, s, (size_t)n));
}

static void kv_field_text(enc_ctx *c, am_encoder *enc, const char *key, const am_field *f,
                          int hexable)
{
    if (put_key(c, key))
        put_field_text(c, enc, f, hexable);
}

/* An id: unset (4294967295) is nil; a value that is not a number leaves the key out. */
static void kv_id(enc_ctx *c, const char *key, const am_field *f)
{
    uint64_t v;
    if (parse_dec_u64(f->val, f->val_len, &v) == 0) {
        if (v == UNSET_ID) {
            if (put_key(c, key))
                ctx_status(c, mp_nil(c->b));
        } else {
            kv_uint(c, key, v);
        }
    } else if (f->kind == FV_PLAIN && is_nil_text(f->val, f->val_len)) {
        if (put_key(c, key))
            ctx_status(c, mp_nil(c->b));
    }
}

static void kv_dec(enc_ctx *c, const char *key, const am_field *f)
{
    uint64_t v;
    if (parse_dec_u64(f->val, f->val_len, &v) == 0)
        kv_uint(c, key, v);
}

static void kv_res(enc_ctx *c, const char *key, const am_field *f)
{
    if (f->kind == FV_PLAIN && is_nil_text(f->val, f->val_len)) {
        if (put_key(c, key))
            ctx_status(c, mp_nil(c->b));
    } else if (span_eq(f->val, f->val_len, "success") || span_eq(f->val, f->val_len, "1"))
        kv_cstr(c, key, "success");
    else if (span_eq(f->val, f->val_len, "failed") || span_eq(f->val, f->val_len, "0"))
        kv_cstr(c, key, "failed");
    else
        kv_text(c, key, f->val, f->val_len);
}

/* ---- what a pre-pass learns about the event ---- */

typedef struct event_shape {
    int has_syscall;
    size_t sc_n;
    uint32_t arch;
    int arch_ok;
    uint64_t syscall_nr;
    int syscall_ok;
    const char *syscall_name;
    rec_ref first;
    int has_first;
    rec_ref principal; /* first record that is not SYSCALL/PROCTITLE/CWD/PATH/SOCKADDR/EXECVE */
    int has_principal;
    int has_execve;
    rec_ref cwd, sockaddr, proctitle, socketcall;
    int has_cwd, has_sockaddr, has_proctitle, has_socketcall;
    int sc_overflow;
} event_shape;

static void shape_event(am_encoder *enc, const am_event_view *ev, event_shape *s)
{
    memset(s, 0, sizeof *s);
    size_t off = 0;
    rec_ref r;
    while (next_rec(ev, &off, &r)) {
        if (!s->has_first) {
            s->first = r;
            s->has_first = 1;
        }
        switch (r.type) {
        case AT_SYSCALL:
            if (!s->has_syscall) {
                int free_text, overflow;
                s->has_syscall = 1;
                s->sc_n = fields_split(r.text, r.len, enc->sc_fields, enc->sc_cap, &free_text,
                                       &overflow);
                s->sc_overflow = overflow;
            }
            break;
        case AT_EXECVE:
            s->has_execve = 1;
            break;
        case AT_CWD:
            if (!s->has_cwd) {
                s->cwd = r;
                s->has_cwd = 1;
            }
            break;
        case AT_SOCKADDR:
            if (!s->has_sockaddr) {
                s->sockaddr = r;
                s->has_sockaddr = 1;
            }
            break;
        case AT_PROCTITLE:
            if (!s->has_proctitle) {
                s->proctitle = r;
                s->has_proctitle = 1;
            }
            break;
        case AT_SOCKETCALL:
            if (!s->has_socketcall) {
                s->socketcall = r;
                s->has_socketcall = 1;
            }
            break;
        default:
            break;
        }
        /* A field takes at least 3 bytes ("k= "): only a long record can exceed the cap. */
        if (r.type != AT_SYSCALL && r.len / 3 + 1 > enc->fields_cap) {
            int free_text, overflow;
            fields_split(r.text, r.len, enc->fields, enc->fields_cap, &free_text, &overflow);
            s->sc_overflow |= overflow;
        }
        if (!is_aux_type(r.type) && !s->has_principal) {
            s->principal = r;
            s->has_principal = 1;
        }
    }
    for (size_t i = 0; i < s->sc_n; i++) {
        const am_field *f = &enc->sc_fields[i];
        uint64_t v;
        if (key_is(f, "arch") && !s->arch_ok && parse_hex_u64(f->val, f->val_len, &v) == 0 &&
            v <= UINT32_MAX) {
            s->arch = (uint32_t)v;
            s->arch_ok = 1;
        } else if (key_is(f, "syscall") && !s->syscall_ok &&
                   parse_dec_u64(f->val, f->val_len, &v) == 0) {
            s->syscall_nr = v;
            s->syscall_ok = 1;
        }
    }
    if (s->arch_ok && s->syscall_ok && s->syscall_nr <= UINT32_MAX)
        s->syscall_name = am_syscall_name(s->arch, (uint32_t)s->syscall_nr);
}

static int name_is(const char *name, const char *lit)
{
    return name != NULL && strcmp(name, lit) == 0;
}

enum ev_kind { EV_EXEC, EV_NET, EV_AUTH, EV_ACCOUNT, EV_AUDITCFG, EV_AUDIT };

static const char *const kind_names[] = {"exec", "net", "auth", "account", "auditcfg", "audit"};

static const char *const auth_types[] = {
    "USER_AUTH", "USER_ACCT", "USER_LOGIN", "USER_LOGOUT", "USER_START", "USER_END",
    "USER_ERR", "USER_CMD", "USER_ROLE_CHANGE", "CRED_ACQ", "CRED_DISP", "CRED_REFR", "LOGIN",
    NULL,
};
static const char *const account_types[] = {
    "ADD_USER", "DEL_USER", "ADD_GROUP", "DEL_GROUP", "USER_MGMT", "GRP_MGMT",
    "USER_CHAUTHTOK", "GRP_CHAUTHTOK", "CHUSER_ID", "CHGRP_ID", "ACCT_LOCK", "ACCT_UNLOCK",
    "ROLE_ASSIGN", "ROLE_REMOVE", NULL,
};
static const char *const auditcfg_types[] = {
    "CONFIG_CHANGE", "DAEMON_START", "DAEMON_END", "DAEMON_ABORT", "DAEMON_CONFIG",
    "DAEMON_ROTATE", "DAEMON_RESUME", "DAEMON_ACCEPT", "DAEMON_CLOSE", "DAEMON_ERR",
    "USYS_CONFIG", NULL,
};

static int name_in(const char *name, const char *const *list)
{
    if (name == NULL)
        return 0;
    for (size_t i = 0; list[i] != NULL; i++)
        if (strcmp(name, list[i]) == 0)
            return 1;
    return 0;
}

/* The socketcall(2) call number for i386: the SYSCALL record's a0 (hex); the SOCKETCALL
 * record holds the arguments of the inner call. */
static uint64_t socketcall_call(am_encoder *enc, const event_shape *s)
{
    for (size_t i = 0; i < s->sc_n; i++) {
        uint64_t v;
        if (key_is(&enc->sc_fields[i], "a0") &&
            parse_hex_u64(enc->sc_fields[i].val, enc->sc_fields[i].val_len, &v) == 0)
            return v;
    }
    return 0;
}

/* "out", "in", "bind" for a net event, NULL otherwise. */
static const char *net_direction(am_encoder *enc, const event_shape *s)
{
    const char *n = s->syscall_name;
    if (name_is(n, "connect"))
        return "out";
    if (name_is(n, "accept") || name_is(n, "accept4"))
        return "in";
    if (name_is(n, "bind"))
        return "bind";
    if (name_is(n, "socketcall")) {
        switch (socketcall_call(enc, s)) {
        case 2:
            return "bind";
        case 3:
            return "out";
        case 5:
        case 18:
            return "in";
        default:
            return NULL;
        }
    }
    return NULL;
}

static enum ev_kind classify(am_encoder *enc, const event_shape *s, const char **dir)
{
    *dir = NULL;
    if (s->has_execve || name_is(s->syscall_name, "execve") ||
        name_is(s->syscall_name, "execveat"))
        return EV_EXEC;
    *dir = net_direction(enc, s);
    if (*dir != NULL)
        return EV_NET;
    if (s->has_principal) {
        const char *name = am_record_type_name(s->principal.type);
        if (name_in(name, auth_types) || (name && strncmp(name, "ANOM_LOGIN_", 11) == 0))
            return EV_AUTH;
        if (name_in(name, account_types))
            return EV_ACCOUNT;
        if (name_in(name, auditcfg_types))
            return EV_AUDITCFG;
    }
    return EV_AUDIT;
}

/* ---- common and process keys ---- */

static void put_type_name(enc_ctx *c, uint32_t type)
{
    const char *name = am_record_type_name(type);
    if (name != NULL) {
        ctx_status(c, mp_cstr(c->b, name));
    } else {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "UNKNOWN[%u]", type);
        ctx_status(c, mp_str(c->b, buf, (size_t)n));
    }
}

static void put_common(enc_ctx *c, const am_event_view *ev, const event_shape *s,
                       enum ev_kind kind, int with_node)
{
    kv_cstr(c, "t", kind_names[kind]);
    kv_uint(c, "ts", ev->ts_ms);
    kv_uint(c, "sn", ev->serial);
    if (put_key(c, "rt"))
        put_type_name(c, s->has_syscall ? AT_SYSCALL : s->first.type);
    if (with_node && ev->node != NULL)
        kv_text(c, "node", ev->node, ev->node_len);
}

static void put_process(enc_ctx *c, am_encoder *enc, const event_shape *s)
{
    for (size_t i = 0; i < s->sc_n && c->err == AM_OK; i++) {
        const am_field *f = &enc->sc_fields[i];
        if (key_is(f, "arch")) {
            const char *name = s->arch_ok ? am_arch_name(s->arch) : NULL;
            if (name != NULL)
                kv_cstr(c, "arch", name);
            else
                kv_field_text(c, enc, "arch", f, 0);
        } else if (key_is(f, "syscall")) {
            if (s->syscall_name != NULL)
                kv_cstr(c, "sc", s->syscall_name);
            else if (s->syscall_ok)
                kv_uint(c, "sc", s->syscall_nr);
        } else if (key_is(f, "success")) {
            kv_bool(c, "ok", span_eq(f->val, f->val_len, "yes"));
        } else if (key_is(f, "exit")) {
            int64_t v;
            if (parse_dec_i64(f->val, f->val_len, &v) == 0)
                kv_int(c, "rc", v);
        } else if (key_is(f, "pid") || key_is(f, "ppid")) {
            kv_dec(c, key_is(f, "pid") ? "pid" : "ppid", f);
        } else if (key_is(f, "uid")) {
            kv_id(c, "uid", f);
        } else if (key_is(f, "gid")) {
            kv_id(c, "gid", f);
        } else if (key_is(f, "euid")) {
            kv_id(c, "euid", f);
        } else if (key_is(f, "egid")) {
            kv_id(c, "egid", f);
        } else if (key_is(f, "auid")) {
            kv_id(c, "auid", f);
        } else if (key_is(f, "ses")) {
            kv_id(c, "ses", f);
        } else if (key_is(f, "comm")) {
            kv_field_text(c, enc, "comm", f, 1);
        } else if (key_is(f, "exe")) {
            kv_field_text(c, enc, "exe", f, 1);
        } else if (key_is(f, "tty")) {
            kv_field_text(c, enc, "tty", f, 0);
        } else if (key_is(f, "key")) {
            kv_field_text(c, enc, "key", f, 1);
        }
    }
}

static void put_cwd(enc_ctx *c, am_encoder *enc, const event_shape *s)
{
    int free_text, overflow;
    size_t n = fields_split(s->cwd.text, s->cwd.len, enc->fields, enc->fields_cap, &free_text,
                            &overflow);
    for (size_t i = 0; i < n; i++)
        if (key_is(&enc->fields[i], "cwd"))
            kv_field_text(c, enc, "cwd", &enc->fields[i], 1);
}

/* ---- exec ---- */

typedef struct argv_state {
    uint64_t next;      /* the index the next whole argument must have */
    int64_t chunk_arg;  /* the argument being reassembled from aN[k], -1 when none */
    size_t chunk_len;   /* its bytes so far, in enc->scratch */
    uint64_t chunk_text; /* the length of its chunks as logged (hex digits or bytes) */
    uint64_t chunk_want; /* ... as aN_len says it is, when chunk_want_ok */
    int chunk_want_ok;
    uint32_t count;
    int broken;         /* out of order, or bigger than the scratch: argv stops here */
    int full;           /* an argument did not fit the event: the minimal form is due */
    uint64_t argc;
    int argc_ok;
} argv_state;

/* The argv as the process's command line: each argument and its NUL, the first TITLE_BYTES
 * (what the kernel's PROCTITLE holds, before it cuts the trailing NULs). */
static void title_add_arg(am_encoder *enc, const void *arg, size_t n)
{
    size_t room = TITLE_BYTES - enc->argv_title_len;
    size_t k = n < room ? n : room;
    if (k)
        memcpy(enc->argv_title + enc->argv_title_len, arg, k);
    enc->argv_title_len += k;
    if (enc->argv_title_len < TITLE_BYTES)
        enc->argv_title[enc->argv_title_len++] = 0;
}

static void argv_finish_chunk(argv_state *a, am_encoder *enc)
{
    if (a->chunk_arg < 0)
        return;
    /* Only a whole argument is kept: when its chunks stop short of aN_len (their records
     * were beyond max_event_bytes, or a chunk broke off), a piece of it would read as the
     * argument itself. argv ends before it, and the event is marked trunc. The kernel's
     * aN_len is the length as logged: twice the bytes when the argument is hex-encoded. */
    if (a->chunk_want_ok ? a->chunk_want != a->chunk_text : a->broken)
        a->broken = 1;
    else if (mp_text(&enc->items, (const char *)enc->scratch, a->chunk_len) == AM_OK) {
        a->count++;
        title_add_arg(enc, enc->scratch, a->chunk_len);
    } else {
        a->full = 1;
    }
    a->chunk_arg = -1;
    a->chunk_len = 0;
    a->chunk_text = 0;
    a->chunk_want_ok = 0;
}

/* key is "a<digits>" optionally followed by "_len" or "[<digits>]": returns 0 for whole,
 * 1 for _len, 2 for a chunk, -1 for anything else. */
static int argv_key(const am_field *f, uint64_t *index)
{
    const char *k = f->key;
    size_t n = f->key_len, i = 1;
    if (n < 2 || k[0] != 'a' || k[1] < '0' || k[1] > '9')
        return -1;
    while (i < n && k[i] >= '0' && k[i] <= '9')
        i++;
    if (parse_dec_u64(k + 1, i - 1, index) != 0)
        return -1;
    if (i == n)
        return 0;
    if (span_eq(k + i, n - i, "_len"))
        return 1;
    if (k[i] == '[' && k[n - 1] == ']' && n - i > 2) {
        uint64_t chunk;
        if (parse_dec_u64(k + i + 1, n - i - 2, &chunk) == 0)
            return 2;
    }
    return -1;
}

static void argv_field(argv_state *a, am_encoder *enc, const am_field *f)
{
    if (key_is(f, "argc")) {
        if (!a->argc_ok && parse_dec_u64(f->val, f->val_len, &a->argc) == 0)
            a->argc_ok = 1;
        return;
    }
    uint64_t index;
    int form = argv_key(f, &index);
    if (form < 0 || a->broken || a->full)
        return;
    if (form == 2) {
        if ((int64_t)index != a->chunk_arg) {
            a->broken = 1;
            return;
        }
        const char *s;
        size_t room = enc->scratch_cap - a->chunk_len;
        long n = field_bytes(f, 1, enc->scratch + a->chunk_len, room, &s);
        if (n == -1) {
            /* An unquoted "(null)" chunk is literal text, like a whole argument. */
            s = f->val;
            n = (long)f->val_len;
        }
        if (n < 0 || (size_t)n > room) {
            a->broken = 1;
            return;
        }
        if (s != (const char *)enc->scratch + a->chunk_len)
            memmove(enc->scratch + a->chunk_len, s, (size_t)n);
        a->chunk_len += (size_t)n;
        a->chunk_text += f->val_len;
        return;
    }
    argv_finish_chunk(a, enc);
    if (index != a->next) {
        a->broken = 1;
        return;
    }
    a->next++;
    if (form == 1) {
        a->chunk_arg = (int64_t)index;
        a->chunk_len = 0;
        a->chunk_text = 0;
        a->chunk_want_ok = parse_dec_u64(f->val, f->val_len, &a->chunk_want) == 0;
        return;
    }
    const char *s;
    long n = field_bytes(f, 1, enc->scratch, enc->scratch_cap, &s);
    if (n == -1) {
        /* An unquoted "(null)" argument is a literal string, not a nil. */
        s = f->val;
        n = (long)f->val_len;
    }
    if (n < 0)
        a->broken = 1;
    else if (mp_text(&enc->items, s, (size_t)n) != AM_OK) {
        a->full = 1;
    } else {
        a->count++;
        title_add_arg(enc, s, (size_t)n);
    }
}

static void put_items(enc_ctx *c, const char *key, uint32_t count, const mp_buf *items)
{
    if (put_key(c, key)) {
        ctx_status(c, mp_array(c->b, count));
        ctx_status(c, mp_raw(c->b, items->data, items->len));
    }
}

/* ---- titles without PROCTITLE (title_cache, audit_event.h) ---- */

/* The process an event's SYSCALL record names: pid, exe (decoded), and whether it succeeded. */
typedef struct proc_ident {
    uint32_t pid;
    int ok;
    size_t exe_len;
    uint8_t exe[TITLE_EXE_MAX];
} proc_ident;

static int event_process(am_encoder *enc, const event_shape *s, proc_ident *id)
{
    int have_pid = 0, have_exe = 0;
    id->ok = 0;
    for (size_t i = 0; i < s->sc_n; i++) {
        const am_field *f = &enc->sc_fields[i];
        if (key_is(f, "pid") && !have_pid) {
            uint64_t v;
            if (parse_dec_u64(f->val, f->val_len, &v) == 0 && v > 0 && v <= UINT32_MAX) {
                id->pid = (uint32_t)v;
                have_pid = 1;
            }
        } else if (key_is(f, "exe") && !have_exe) {
            const char *v;
            long n = field_bytes(f, 1, id->exe, sizeof id->exe, &v);
            if (n >= 0 && (size_t)n <= sizeof id->exe) {
                if (v != (const char *)id->exe)
                    memcpy(id->exe, v, (size_t)n);
                id->exe_len = (size_t)n;
                have_exe = 1;
            }
        } else if (key_is(f, "success")) {
            id->ok = span_eq(f->val, f->val_len, "yes");
        }
    }
    return have_pid && have_exe;
}

static uint64_t exe_hash(const uint8_t *b, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* The kernel's PROCTITLE ends at its last printable byte (audit_proctitle_rtrim: NULs, and a
 * newline or other control byte that the 128-byte cut left last, go), by the kernel's isprint:
 * ASCII 0x20-0x7e and Latin-1 0xa0-0xff. */
static int kernel_isprint(uint8_t c)
{
    return (c >= 0x20 && c <= 0x7e) || c >= 0xa0;
}

static size_t rtrim_unprintable(const uint8_t *b, size_t n)
{
    while (n > 0 && !kernel_isprint(b[n - 1]))
        n--;
    return n;
}

static void title_store(title_cache *tc, const proc_ident *id, uint64_t ts_ms, const uint8_t *t,
                        size_t n)
{
    title_entry *e = &tc->slots[id->pid % TITLE_SLOTS];
    e->pid = id->pid;
    e->exe_len = (uint32_t)id->exe_len;
    e->exe_hash = exe_hash(id->exe, id->exe_len);
    e->ts_ms = ts_ms;
    e->len = (uint32_t)n;
    if (n != NO_TITLE)
        memcpy(e->title, t, n);
}

/* /proc/PID/cmdline of the process that is pid now, kept only when /proc/PID/exe (read after
 * it, through the same directory, which stays that process's even if the pid is reused) is the
 * event's exe. Returns the title's length, or -1. */
static long title_from_proc(const proc_ident *id, uint8_t *out)
{
    char path[32];
    snprintf(path, sizeof path, "/proc/%u", id->pid);
    int dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        return -1;
    long got = -1;
    int fd = openat(dir, "cmdline", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, out, TITLE_BYTES);
        close(fd);
        char exe[TITLE_EXE_MAX];
        ssize_t m = n > 0 ? readlinkat(dir, "exe", exe, sizeof exe) : -1;
        if (m >= 0 && (size_t)m == id->exe_len && memcmp(exe, id->exe, id->exe_len) == 0)
            got = (long)rtrim_unprintable(out, (size_t)n);
    }
    close(dir);
    return got > 0 ? got : -1;
}

/* An exec event with EXECVE that succeeded: its argv is its process's command line now. */
static void title_learn(am_encoder *enc, const am_event_view *ev, const event_shape *s,
                        int argv_whole)
{
    if (!argv_whole && enc->argv_title_len < TITLE_BYTES)
        return; /* the argv stops short: only its first TITLE_BYTES would do */
    proc_ident id;
    if (!event_process(enc, s, &id) || !id.ok)
        return;
    title_store(ev->titles, &id, ev->ts_ms, enc->argv_title,
                rtrim_unprintable(enc->argv_title, enc->argv_title_len));
    ev->titles->learnt++;
}

/* The title of the process of an event without EXECVE, into out; its length or -1. */
static long title_find(am_encoder *enc, const am_event_view *ev, const event_shape *s,
                       uint8_t *out)
{
    title_cache *tc = ev->titles;
    proc_ident id;
    if (!event_process(enc, s, &id)) {
        tc->missing++;
        return -1;
    }
    const title_entry *e = &tc->slots[id.pid % TITLE_SLOTS];
    int fresh = e->pid != 0 && ev->ts_ms + TITLE_FRESH_MS >= e->ts_ms &&
                ev->ts_ms <= e->ts_ms + TITLE_FRESH_MS;
    if (fresh && e->pid == id.pid && e->exe_len == id.exe_len &&
        e->exe_hash == exe_hash(id.exe, id.exe_len)) {
        if (e->len == NO_TITLE) {
            tc->missing++;
            return -1;
        }
        memcpy(out, e->title, e->len);
        tc->cached++;
        return (long)e->len;
    }
    long n = tc->read_proc ? title_from_proc(&id, out) : -1;
    if (n < 0) {
        /* Kept as known to have none: a shell's child fails an exec for each directory of
         * PATH it tries, and /proc is read for the first only. A fresh title stays. */
        if (tc->read_proc && !(fresh && e->len != NO_TITLE))
            title_store(tc, &id, ev->ts_ms, NULL, NO_TITLE);
        tc->missing++;
        return -1;
    }
    title_store(tc, &id, ev->ts_ms, out, (size_t)n);
    tc->proc++;
    return n;
}

/* A title (NUL-separated) as the `title` array: empty parts inside it are kept. */
static void put_title(enc_ctx *c, am_encoder *enc, const char *v, size_t len)
{
    enc->items.len = 0;
    uint32_t parts = 0;
    size_t start = 0;
    for (size_t k = 0; k <= len; k++) {
        if (k == len || v[k] == '\0') {
            if (k > start || k < len) {
                ctx_status(c, mp_text(&enc->items, v + start, k - start));
                parts++;
            }
            start = k + 1;
        }
    }
    put_items(c, "title", parts, &enc->items);
}

static int put_exec(enc_ctx *c, am_encoder *enc, const am_event_view *ev, const event_shape *s)
{
    int incomplete = 0;
    size_t off = 0;
    rec_ref r;
    if (s->has_execve) {
        argv_state a = {.chunk_arg = -1};
        enc->items.len = 0;
        enc->argv_title_len = 0;
        while (next_rec(ev, &off, &r)) {
            if (r.type != AT_EXECVE)
                continue;
            int free_text, overflow;
            size_t n = fields_split(r.text, r.len, enc->fields, enc->fields_cap, &free_text,
                                    &overflow);
            for (size_t i = 0; i < n; i++)
                argv_field(&a, enc, &enc->fields[i]);
            if (overflow)
                a.broken = 1;
        }
        argv_finish_chunk(&a, enc);
        if (a.full)
            ctx_status(c, AM_ERR_FULL);
        if (a.argc_ok)
            kv_uint(c, "argc", a.argc);
        put_items(c, "argv", a.count, &enc->items);
        if (a.broken || (a.argc_ok && a.count < a.argc))
            incomplete = 1;
        if (ev->titles != NULL && !a.full)
            title_learn(enc, ev, s, a.argc_ok && a.count == a.argc && !a.broken);
    }
    /* PATH records */
    uint32_t paths = 0;
    enc->items.len = 0;
    off = 0;
    while (next_rec(ev, &off, &r)) {
        if (r.type != AT_PATH)
            continue;
        int free_text, overflow;
        size_t n = fields_split(r.text, r.len, enc->fields, enc->fields_cap, &free_text,
                                &overflow);
        const am_field *name = NULL, *nt = NULL, *ino = NULL, *mode = NULL;
        uint64_t ino_v = 0, mode_v = 0;
        for (size_t i = 0; i < n; i++) {
            const am_field *f = &enc->fields[i];
            if (key_is(f, "name") && name == NULL)
                name = f;
            else if (key_is(f, "nametype") && nt == NULL)
                nt = f;
            else if (key_is(f, "inode") && ino == NULL &&
                     parse_dec_u64(f->val, f->val_len, &ino_v) == 0)
                ino = f;
            else if (key_is(f, "mode") && mode == NULL && f->val_len > 0 && f->val_len <= 22) {
                uint64_t v = 0;
                size_t k = 0;
                while (k < f->val_len && f->val[k] >= '0' && f->val[k] <= '7' &&
                       v <= (UINT64_MAX >> 3))
                    v = v * 8 + (uint64_t)(f->val[k++] - '0');
                if (k == f->val_len) {
                    mode_v = v;
                    mode = f;
                }
            }
        }
        enc_ctx pc;
        ctx_init(&pc, &enc->items);
        ctx_status(&pc, mp_map(&enc->items, (uint32_t)((name != NULL) + (nt != NULL) +
                                                       (ino != NULL) + (mode != NULL))));
        if (name != NULL)
            kv_field_text(&pc, enc, "n", name, 1);
        if (nt != NULL)
            kv_text(&pc, "nt", nt->val, nt->val_len);
        if (ino != NULL)
            kv_uint(&pc, "ino", ino_v);
        if (mode != NULL)
            kv_uint(&pc, "mode", mode_v);
        ctx_status(c, pc.err);
        paths++;
    }
    if (paths > 0)
        put_items(c, "paths", paths, &enc->items);
    if (!s->has_execve && s->has_proctitle) {
        int free_text, overflow;
        size_t n = fields_split(s->proctitle.text, s->proctitle.len, enc->fields,
                                enc->fields_cap, &free_text, &overflow);
        for (size_t i = 0; i < n; i++) {
            const am_field *f = &enc->fields[i];
            if (!key_is(f, "proctitle"))
                continue;
            const char *v;
            long len = field_bytes(f, 1, enc->scratch, enc->scratch_cap, &v);
            if (len < 0)
                break;
            put_title(c, enc, v, (size_t)len);
            break;
        }
    } else if (!s->has_execve && ev->titles != NULL) {
        uint8_t title[TITLE_BYTES];
        long len = title_find(enc, ev, s, title);
        if (len >= 0)
            put_title(c, enc, (const char *)title, (size_t)len);
    }
    return incomplete;
}

/* ---- net ---- */

static int known_family(unsigned f)
{
    return f == 1 || f == 2 || f == 10 || f == 16;
}

static void put_sockaddr(enc_ctx *c, am_encoder *enc, const event_shape *s, const char *dir)
{
    int free_text, overflow;
    size_t n = fields_split(s->sockaddr.text, s->sockaddr.len, enc->fields, enc->fields_cap,
                            &free_text, &overflow);
    const am_field *f = NULL;
    for (size_t i = 0; i < n && f == NULL; i++)
        if (key_is(&enc->fields[i], "saddr"))
            f = &enc->fields[i];
    if (f == NULL || !is_hex_text(f->val, f->val_len) || f->val_len / 2 > enc->scratch_cap)
        return;
    size_t len = f->val_len / 2;
    uint8_t *b = enc->scratch;
    hex_decode(f->val, f->val_len, b);
    if (len < 2)
        return;
    unsigned le = (unsigned)(b[0] | b[1] << 8), be = (unsigned)(b[0] << 8 | b[1]);
    int big_endian = !known_family(le) && known_family(be);
    unsigned family = big_endian ? be : le;
    int remote = strcmp(dir, "bind") != 0;
    const char *addr_key = remote ? "raddr" : "laddr";
    const char *port_key = remote ? "rport" : "lport";
    char text[IP_TEXT_MAX];
    switch (family) {
    case 2:
        kv_cstr(c, "fam", "inet");
        if (len >= 8) {
            if (am_ip_text(4, b + 4, text, sizeof text) > 0)
                kv_cstr(c, addr_key, text);
            kv_uint(c, port_key, (uint64_t)(b[2] << 8 | b[3]));
        }
        break;
    case 10:
        kv_cstr(c, "fam", "inet6");
        if (len >= 24) {
            if (am_ip_text(6, b + 8, text, sizeof text) > 0)
                kv_cstr(c, addr_key, text);
            kv_uint(c, port_key, (uint64_t)(b[2] << 8 | b[3]));
        }
        break;
    case 1: {
        kv_cstr(c, "fam", "unix");
        const uint8_t *p = b + 2;
        size_t plen = len - 2;
        if (plen > 0 && p[0] == '\0') {
            /* Abstract: "@" then the name, trailing NUL padding dropped. */
            size_t end = plen;
            while (end > 1 && p[end - 1] == '\0')
                end--;
            if (put_key(c, "path")) {
                /* "@" + name: build in place after the decoded bytes. */
                if (len + end <= enc->scratch_cap) {
                    uint8_t *dst = b + len;
                    dst[0] = '@';
                    memcpy(dst + 1, p + 1, end - 1);
                    ctx_status(c, mp_text(c->b, (const char *)dst, end));
                } else {
                    ctx_status(c, AM_ERR_LIMIT);
                }
            }
        } else {
            const uint8_t *nul = memchr(p, 0, plen);
            kv_text(c, "path", (const char *)p, nul ? (size_t)(nul - p) : plen);
        }
        break;
    }
    case 16:
        kv_cstr(c, "fam", "netlink");
        if (len >= 12) {
            uint32_t pid, groups;
            if (big_endian) {
                pid = (uint32_t)b[4] << 24 | (uint32_t)b[5] << 16 | (uint32_t)b[6] << 8 | b[7];
                groups = (uint32_t)b[8] << 24 | (uint32_t)b[9] << 16 | (uint32_t)b[10] << 8 |
                         b[11];
            } else {
                pid = (uint32_t)b[7] << 24 | (uint32_t)b[6] << 16 | (uint32_t)b[5] << 8 | b[4];
                groups = (uint32_t)b[11] << 24 | (uint32_t)b[10] << 16 |
                         (uint32_t)b[9] << 8 | b[8];
            }
            kv_uint(c, "nlpid", pid);
            kv_uint(c, "nlgroups", groups);
        }
        break;
    default:
        kv_uint(c, "fam", family);
        break;
    }
}

/* ---- auth, account, auditcfg: the principal record's fields ---- */

static void put_principal(enc_ctx *c, am_encoder *enc, const event_shape *s)
{
    int free_text, overflow;
    size_t n = fields_split(s->principal.text, s->principal.len, enc->fields, enc->fields_cap,
                            &free_text, &overflow);
    for (size_t i = 0; i < n && c->err == AM_OK; i++) {
        const am_field *f = &enc->fields[i];
        if (key_is(f, "op"))
            kv_field_text(c, enc, "op", f, 0);
        else if (key_is(f, "acct"))
            kv_field_text(c, enc, "acct", f, 1);
        else if (key_is(f, "id"))
            kv_id(c, "id", f);
        else if (key_is(f, "exe"))
            kv_field_text(c, enc, "exe", f, 1);
        else if (key_is(f, "hostname"))
            kv_field_text(c, enc, "host", f, 1);
        else if (key_is(f, "addr"))
            kv_field_text(c, enc, "addr", f, 0);
        else if (key_is(f, "terminal"))
            kv_field_text(c, enc, "term", f, 0);
        else if (key_is(f, "res") || key_is(f, "result"))
            kv_res(c, "res", f);
        else if (key_is(f, "grantors"))
            kv_field_text(c, enc, "grantors", f, 0);
        else if (key_is(f, "pid"))
            kv_dec(c, "pid", f);
        else if (key_is(f, "uid"))
            kv_id(c, "uid", f);
        else if (key_is(f, "auid"))
            kv_id(c, "auid", f);
        else if (key_is(f, "ses"))
            kv_id(c, "ses", f);
        else if (key_is(f, "old-auid"))
            kv_id(c, "old_auid", f);
        else if (key_is(f, "old-ses"))
            kv_id(c, "old_ses", f);
        else if (key_is(f, "key"))
            kv_field_text(c, enc, "key", f, 1);
        else if (key_is(f, "list"))
            kv_dec(c, "list", f);
    }
}

/* ---- audit: every record with its fields ---- */

static int is_duplicate_key(const am_field *fields, size_t i)
{
    for (size_t k = 0; k < i; k++)
        if (fields[k].key_len == fields[i].key_len &&
            memcmp(fields[k].key, fields[i].key, fields[i].key_len) == 0)
            return 1;
    return 0;
}

static void put_generic_value(mp_buf *b, enc_ctx *c, am_encoder *enc, const am_field *f)
{
    if (key_in(f, id_keys)) {
        uint64_t v;
        if (parse_dec_u64(f->val, f->val_len, &v) == 0 && v == UNSET_ID) {
            ctx_status(c, mp_nil(b));
            return;
        }
    }
    const char *s;
    long n = field_bytes(f, key_in(f, hexable_keys), enc->scratch, enc->scratch_cap, &s);
    if (n == -1)
        ctx_status(c, mp_nil(b));
    else if (n == -2)
        ctx_status(c, AM_ERR_LIMIT);
    else
        ctx_status(c, mp_text(b, s, (size_t)n));
}

static void put_records(enc_ctx *c, am_encoder *enc, const am_event_view *ev)
{
    mp_buf *b = &enc->items;
    b->len = 0;
    uint32_t count = 0;
    size_t off = 0;
    rec_ref r;
    while (next_rec(ev, &off, &r) && c->err == AM_OK) {
        int free_text, overflow;
        size_t n = fields_split(r.text, r.len, enc->fields, enc->fields_cap, &free_text,
                                &overflow);
        ctx_status(c, mp_map(b, free_text ? 3 : 2));
        ctx_status(c, mp_cstr(b, "type"));
        enc_ctx tc;
        ctx_init(&tc, b);
        put_type_name(&tc, r.type);
        ctx_status(c, tc.err);
        ctx_status(c, mp_cstr(b, "f"));
        uint32_t unique = 0;
        for (size_t i = 0; i < n; i++)
            unique += !is_duplicate_key(enc->fields, i);
        ctx_status(c, mp_map(b, unique));
        for (size_t i = 0; i < n && c->err == AM_OK; i++) {
            if (is_duplicate_key(enc->fields, i))
                continue;
            ctx_status(c, mp_text(b, enc->fields[i].key, enc->fields[i].key_len));
            put_generic_value(b, c, enc, &enc->fields[i]);
        }
        if (free_text) {
            ctx_status(c, mp_cstr(b, "text"));
            ctx_status(c, mp_text(b, r.text, r.len));
        }
        count++;
    }
    put_items(c, "recs", count, b);
}

/* ---- the event ---- */

static int finish(am_encoder *enc, const enc_ctx *c)
{
    if (c->err != AM_OK)
        return c->err;
    enc->event.len = 0;
    int st = mp_map(&enc->event, c->nkeys);
    if (st == AM_OK)
        st = mp_raw(&enc->event, enc->body.data, enc->body.len);
    return st;
}

static int encode_full(am_encoder *enc, const am_event_view *ev, const event_shape *s,
                       enum ev_kind kind, const char *dir, int *cut_out)
{
    enc_ctx c;
    enc->body.len = 0;
    ctx_init(&c, &enc->body);
    put_common(&c, ev, s, kind, 1);
    int cut = ev->truncated || s->sc_overflow;
    if (kind == EV_AUTH || kind == EV_ACCOUNT || kind == EV_AUDITCFG)
        put_principal(&c, enc, s);
    put_process(&c, enc, s);
    if (s->has_cwd)
        put_cwd(&c, enc, s);
    switch (kind) {
    case EV_EXEC:
        cut |= put_exec(&c, enc, ev, s);
        break;
    case EV_NET:
        kv_cstr(&c, "dir", dir);
        if (s->has_sockaddr)
            put_sockaddr(&c, enc, s, dir);
        break;
    case EV_AUDIT:
        put_records(&c, enc, ev);
        break;
    default:
        break;
    }
    if (cut)
        kv_bool(&c, "trunc", 1);
    *cut_out = cut;
    return finish(enc, &c);
}

static int argc_of(am_encoder *enc, const am_event_view *ev, uint64_t *argc)
{
    size_t off = 0;
    rec_ref r;
    while (next_rec(ev, &off, &r)) {
        if (r.type != AT_EXECVE)
            continue;
        int free_text, overflow;
        size_t n = fields_split(r.text, r.len, enc->fields, enc->fields_cap, &free_text,
                                &overflow);
        for (size_t i = 0; i < n; i++)
            if (key_is(&enc->fields[i], "argc") &&
                parse_dec_u64(enc->fields[i].val, enc->fields[i].val_len, argc) == 0)
                return 1;
    }
    return 0;
}

/* The minimal form: common keys, process keys, argc; then, if even that is too big, only
 * t, ts, sn, rt and trunc. */
static int encode_minimal(am_encoder *enc, const am_event_view *ev, const event_shape *s,
                          enum ev_kind kind, int with_process)
{
    enc_ctx c;
    enc->body.len = 0;
    ctx_init(&c, &enc->body);
    put_common(&c, ev, s, kind, with_process);
    if (with_process) {
        put_process(&c, enc, s);
        uint64_t argc;
        if (kind == EV_EXEC && argc_of(enc, ev, &argc))
            kv_uint(&c, "argc", argc);
    }
    kv_bool(&c, "trunc", 1);
    return finish(enc, &c);
}

int event_encode(am_encoder *enc, const am_event_view *ev, int *cut)
{
    event_shape s;
    const char *dir;
    shape_event(enc, ev, &s);
    enum ev_kind kind = classify(enc, &s, &dir);
    int st = encode_full(enc, ev, &s, kind, dir, cut);
    if (st == AM_OK)
        return AM_OK;
    if (st == AM_ERR_NOMEM || st == AM_ERR_ARG)
        return st;
    *cut = 1;
    st = encode_minimal(enc, ev, &s, kind, 1);
    if (st == AM_OK)
        return AM_OK;
    return encode_minimal(enc, ev, &s, kind, 0);
}

int encoder_init(am_encoder *enc, size_t event_cap, size_t max_value_bytes)
{
    memset(enc, 0, sizeof *enc);
    enc->fields_cap = 4096;
    enc->sc_cap = SC_FIELDS;
    enc->scratch_cap = max_value_bytes;
    enc->fields = calloc(enc->fields_cap, sizeof *enc->fields);
    enc->sc_fields = calloc(enc->sc_cap, sizeof *enc->sc_fields);
    enc->scratch = malloc(enc->scratch_cap ? enc->scratch_cap : 1);
    if (enc->fields == NULL || enc->sc_fields == NULL || enc->scratch == NULL ||
        mp_init(&enc->body, event_cap) != AM_OK || mp_init(&enc->items, event_cap) != AM_OK ||
        mp_init(&enc->event, event_cap) != AM_OK) {
        encoder_release(enc);
        return AM_ERR_NOMEM;
    }
    return AM_OK;
}

void encoder_release(am_encoder *enc)
{
    free(enc->fields);
    free(enc->sc_fields);
    free(enc->scratch);
    mp_release(&enc->body);
    mp_release(&enc->items);
    mp_release(&enc->event);
    memset(enc, 0, sizeof *enc);
}

size_t encoder_memory(const am_encoder *enc)
{
    return enc->fields_cap * sizeof *enc->fields + enc->sc_cap * sizeof *enc->sc_fields +
           enc->scratch_cap + enc->body.cap + enc->items.cap + enc->event.cap;
}
