/* batch.c: the batch writer and the FIFO of sealed batches (see batch.h). */
#include "batch.h"

#include <stdlib.h>
#include <string.h>

#include "core.h"

enum { BATCH_HEADER = 5 };

int batches_init(am_batches *b, size_t batch_bytes)
{
    memset(b, 0, sizeof *b);
    if (batch_bytes < 1024)
        return AM_ERR_ARG;
    b->batch_bytes = batch_bytes;
    b->ring_cap = 4;
    b->sealed = calloc(b->ring_cap, sizeof *b->sealed);
    b->sealed_events = calloc(b->ring_cap, sizeof *b->sealed_events);
    if (b->sealed == NULL || b->sealed_events == NULL) {
        batches_release(b);
        return AM_ERR_NOMEM;
    }
    return AM_OK;
}

void batches_release(am_batches *b)
{
    mp_release(&b->open);
    mp_release(&b->taken);
    mp_release(&b->spare);
    for (size_t i = 0; b->sealed && i < b->count; i++)
        mp_release(&b->sealed[(b->head + i) % b->ring_cap]);
    free(b->sealed);
    free(b->sealed_events);
    b->sealed = NULL;
    b->sealed_events = NULL;
    b->count = 0;
}

/* A used buffer goes back to the spare slot, or is freed when the slot is taken. */
static void recycle(am_batches *b, mp_buf *buf)
{
    if (buf->data == NULL)
        return;
    if (b->spare.data == NULL && buf->cap == b->batch_bytes) {
        b->spare = *buf;
        b->spare.len = 0;
    } else {
        mp_release(buf);
    }
    buf->data = NULL;
    buf->len = buf->cap = 0;
}

static int open_batch(am_batches *b)
{
    if (b->spare.data != NULL) {
        b->open = b->spare;
        b->spare.data = NULL;
        b->spare.len = b->spare.cap = 0;
    } else if (mp_init(&b->open, b->batch_bytes) != AM_OK) {
        return AM_ERR_NOMEM;
    }
    b->open.len = 0;
    b->open_events = 0;
    return mp_array32(&b->open, 0);
}

static int grow_ring(am_batches *b)
{
    size_t cap = b->ring_cap * 2;
    mp_buf *ring = calloc(cap, sizeof *ring);
    uint32_t *events = calloc(cap, sizeof *events);
    if (ring == NULL || events == NULL) {
        free(ring);
        free(events);
        return AM_ERR_NOMEM;
    }
    for (size_t i = 0; i < b->count; i++) {
        ring[i] = b->sealed[(b->head + i) % b->ring_cap];
        events[i] = b->sealed_events[(b->head + i) % b->ring_cap];
    }
    free(b->sealed);
    free(b->sealed_events);
    b->sealed = ring;
    b->sealed_events = events;
    b->ring_cap = cap;
    b->head = 0;
    return AM_OK;
}

int batches_seal(am_batches *b)
{
    if (b->open.data == NULL || b->open_events == 0)
        return AM_OK;
    if (b->count == b->ring_cap && grow_ring(b) != AM_OK)
        return AM_ERR_NOMEM;
    mp_patch_u32(&b->open, 0, b->open_events);
    /* A sealed batch waits at its own size, not at batch_bytes. */
    if (b->open.len < b->open.cap) {
        uint8_t *fit = realloc(b->open.data, b->open.len);
        if (fit != NULL) {
            b->open.data = fit;
            b->open.cap = b->open.len;
        }
    }
    size_t tail = (b->head + b->count) % b->ring_cap;
    b->sealed[tail] = b->open;
    b->sealed_events[tail] = b->open_events;
    b->count++;
    b->sealed_total++;
    b->open.data = NULL;
    b->open.len = b->open.cap = 0;
    b->open_events = 0;
    return AM_OK;
}

int batches_append(am_batches *b, const uint8_t *event, size_t len)
{
    if (len + BATCH_HEADER > b->batch_bytes)
        return AM_ERR_LIMIT;
    if (b->open.data != NULL && b->open.len + len > b->open.cap) {
        int st = batches_seal(b);
        if (st != AM_OK)
            return st;
    }
    if (b->open.data == NULL) {
        int st = open_batch(b);
        if (st != AM_OK)
            return st;
    }
    int st = mp_raw(&b->open, event, len);
    if (st == AM_OK)
        b->open_events++;
    return st;
}

int batches_take(am_batches *b, const uint8_t **data, size_t *len, uint32_t *events)
{
    recycle(b, &b->taken);
    if (b->count == 0)
        return AM_EMPTY;
    b->taken = b->sealed[b->head];
    uint32_t n = b->sealed_events[b->head];
    b->sealed[b->head].data = NULL;
    b->head = (b->head + 1) % b->ring_cap;
    b->count--;
    *data = b->taken.data;
    *len = b->taken.len;
    if (events != NULL)
        *events = n;
    return AM_OK;
}

size_t batches_memory(const am_batches *b)
{
    size_t total = b->open.cap + b->taken.cap + b->spare.cap;
    total += b->ring_cap * (sizeof *b->sealed + sizeof *b->sealed_events);
    for (size_t i = 0; i < b->count; i++)
        total += b->sealed[(b->head + i) % b->ring_cap].cap;
    return total;
}
