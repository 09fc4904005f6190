/* batch.h: encoded events -> batches of at most batch_bytes, each one msgpack array whose
 * array32 header is patched when the batch is sealed; sealed batches wait in a FIFO until
 * taken. */
#ifndef AM_BATCH_H
#define AM_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "msgpack.h"

typedef struct am_batches {
    size_t batch_bytes;
    mp_buf open;          /* data == NULL when no batch is open */
    uint32_t open_events;
    mp_buf *sealed;       /* FIFO ring */
    uint32_t *sealed_events;
    size_t ring_cap, head, count;
    mp_buf taken;         /* handed out by batches_take; recycled at the next call */
    mp_buf spare;         /* one buffer kept for reuse */
    uint64_t sealed_total;
} am_batches;

int batches_init(am_batches *b, size_t batch_bytes);
void batches_release(am_batches *b);
/* Appends one encoded event (at most batch_bytes - 5 bytes). */
int batches_append(am_batches *b, const uint8_t *event, size_t len);
int batches_seal(am_batches *b);
int batches_take(am_batches *b, const uint8_t **data, size_t *len, uint32_t *events);
/* Bytes of buffers held. */
size_t batches_memory(const am_batches *b);

#endif
