/* msgpack.h: the msgpack writer every encoder in the core uses. A mp_buf writes into memory
 * it owns, never beyond cap; each mp_* call writes its whole item or nothing (AM_ERR_FULL). */
#ifndef AM_MSGPACK_H
#define AM_MSGPACK_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct mp_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
} mp_buf;

/* Allocates cap bytes; returns AM_OK or AM_ERR_NOMEM. */
int mp_init(mp_buf *b, size_t cap);
void mp_release(mp_buf *b);

int mp_nil(mp_buf *b);
int mp_bool(mp_buf *b, int value);
int mp_int(mp_buf *b, int64_t value);
int mp_uint(mp_buf *b, uint64_t value);
int mp_float(mp_buf *b, double value);
int mp_str(mp_buf *b, const char *data, size_t len);
/* A C string key or value. Inline so that the length of a literal (most keys) is known when
 * compiled, not counted by strlen at every event, and a short one (a fixstr: under 32 bytes,
 * every key) is its header byte and a copy of known length, not a call. */
static inline int mp_cstr(mp_buf *b, const char *s)
{
    size_t len = strlen(s);
    if (len < 32 && len < b->cap - b->len) {
        b->data[b->len] = (uint8_t)(0xa0u | len);
        memcpy(b->data + b->len + 1, s, len);
        b->len += 1 + len;
        return 0; /* AM_OK */
    }
    return mp_str(b, s, len);
}
int mp_bin(mp_buf *b, const uint8_t *data, size_t len);
/* A str if data is valid UTF-8, else a bin: msgpack str must be UTF-8 for decoders. */
int mp_text(mp_buf *b, const char *data, size_t len);
/* The same, where the caller already knows utf8_valid(data, len): text written at every event
 * but checked once (a socket owner's comm and exe). */
int mp_text_known(mp_buf *b, const char *data, size_t len, int utf8);
int mp_array(mp_buf *b, uint32_t count);
int mp_map(mp_buf *b, uint32_t count);
/* The 5-byte array32 / map32 header, whatever the count: for counts patched in later. */
int mp_array32(mp_buf *b, uint32_t count);
int mp_map32(mp_buf *b, uint32_t count);
void mp_patch_u32(mp_buf *b, size_t header_offset, uint32_t count);
/* Raw bytes already encoded. */
int mp_raw(mp_buf *b, const uint8_t *data, size_t len);

int utf8_valid(const uint8_t *s, size_t len);

#endif
