/* audit_record.h: one audit record's header and its key=value fields (docs/audit-parsing.md
 * sections 2 and 5). Pure functions over caller memory: nothing here allocates. */
#ifndef AM_AUDIT_RECORD_H
#define AM_AUDIT_RECORD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum {
    AT_LOGIN = 1006,
    AT_SYSCALL = 1300,
    AT_PATH = 1302,
    AT_SOCKETCALL = 1304,
    AT_CONFIG_CHANGE = 1305,
    AT_SOCKADDR = 1306,
    AT_CWD = 1307,
    AT_EXECVE = 1309,
    AT_EOE = 1320,
    AT_PROCTITLE = 1327,
};

typedef struct am_record_head {
    uint32_t type;
    uint64_t ts_ms;
    uint64_t serial;
    const char *node; /* NULL when the record had no node= prefix */
    size_t node_len;
    const char *fields; /* after "): " up to the first 0x1d */
    size_t fields_len;
} am_record_head;

/* A line of log text (no newline). Returns 0 on success, -1 when it is not a record. */
int record_parse_line(const char *line, size_t len, am_record_head *out);
/* A netlink payload "audit(SEC.MS:SERIAL): fields" of message type `type`. */
int record_parse_payload(uint32_t type, const char *text, size_t len, am_record_head *out);

enum field_kind { FV_PLAIN = 0, FV_DQUOTED = 1, FV_SQUOTED = 2 };

typedef struct am_field {
    const char *key;
    const char *val;
    uint32_t key_len;
    uint32_t val_len;
    uint8_t kind;
} am_field;

/* Splits fields text into at most cap fields; msg='k=v ...' is expanded in place of msg.
 * Returns the number of fields; *free_text is set when a token was not key=value;
 * *overflow when more than cap fields existed. */
size_t fields_split(const char *text, size_t len, am_field *out, size_t cap, int *free_text,
                    int *overflow);

int is_hex_text(const char *s, size_t len);
/* Decodes hex pairs; out must hold len/2 bytes. */
void hex_decode(const char *s, size_t len, uint8_t *out);
/* Parses a decimal (optionally negative when allow_neg) integer covering the whole span. */
int parse_dec_u64(const char *s, size_t len, uint64_t *out);
int parse_dec_i64(const char *s, size_t len, int64_t *out);
int parse_hex_u64(const char *s, size_t len, uint64_t *out);
/* (null), (none), ? */
int is_nil_text(const char *s, size_t len);
/* The span equals a string literal (a macro so the literal's length is known at compile time:
 * this runs for every field of every record). */
#define span_eq(s, len, lit) \
    ((len) == sizeof("" lit) - 1 && memcmp((s), (lit), sizeof(lit) - 1) == 0)

#endif
