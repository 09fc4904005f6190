/* sink.c: where the live sources put their events (see core.h, "event sink"). A sink is the
 * batch FIFO of batch.c with a bound on sealed batches, a scratch encoder for one event, and
 * counters; a source encodes one event into the scratch buffer and commits it. */
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "sink.h"

void am_sink_default_options(struct am_sink_options *out)
{
    if (out == NULL)
        return;
    out->batch_bytes = 245760;
    out->max_batches = 8;
}

am_sink *am_sink_new(const struct am_sink_options *opts)
{
    struct am_sink_options o;
    am_sink_default_options(&o);
    if (opts != NULL)
        o = *opts;
    if (o.batch_bytes < 1024 || o.batch_bytes > (1u << 28) || o.max_batches < 1 ||
        o.max_batches > 1024)
        return NULL;
    am_sink *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->opt = o;
    if (batches_init(&s->batches, o.batch_bytes) != AM_OK ||
        mp_init(&s->event, o.batch_bytes - 5) != AM_OK) {
        am_sink_free(s);
        return NULL;
    }
    return s;
}

void am_sink_free(am_sink *s)
{
    if (s == NULL)
        return;
    batches_release(&s->batches);
    mp_release(&s->event);
    free(s);
}

int am_sink_full(const am_sink *s)
{
    return s == NULL || s->batches.count >= s->opt.max_batches;
}

mp_buf *sink_begin(am_sink *s)
{
    s->event.len = 0;
    return &s->event;
}

int sink_commit(am_sink *s)
{
    if (s->event.len == 0)
        return AM_ERR_ARG;
    if (s->batches.count >= s->opt.max_batches &&
        s->batches.open.data != NULL &&
        s->batches.open.len + s->event.len > s->batches.open.cap) {
        /* Appending would seal a batch beyond max_batches: the event is dropped, counted. */
        s->dropped_full++;
        return AM_ERR_FULL;
    }
    return sink_put(s, s->event.data, s->event.len);
}

int sink_put(am_sink *s, const uint8_t *event, size_t len)
{
    if (len + 5 > s->opt.batch_bytes) {
        s->dropped_encode++;
        return AM_OK;
    }
    int st = batches_append(&s->batches, event, len);
    if (st == AM_OK)
        s->events++;
    else
        s->dropped_full++;
    return st;
}

size_t sink_memory_bound(const struct am_sink_options *o, size_t burst, size_t burst_events)
{
    /* Batches: open, taken, spare and the queue, all at most batch_bytes (sealed ones are
     * shrunk to fit), the burst, the ring's slots, and the scratch event. */
    return sizeof(am_sink) + ((size_t)o->max_batches + 3) * o->batch_bytes + burst +
           2 * (burst_events + o->max_batches + 4) * (sizeof(mp_buf) + sizeof(uint32_t)) +
           o->batch_bytes;
}

void sink_drop(am_sink *s)
{
    s->dropped_encode++;
}

int am_sink_seal(am_sink *s)
{
    if (s == NULL)
        return AM_ERR_ARG;
    return batches_seal(&s->batches);
}

int am_sink_take(am_sink *s, const uint8_t **data, size_t *len, uint32_t *events)
{
    if (s == NULL || data == NULL || len == NULL)
        return AM_ERR_ARG;
    return batches_take(&s->batches, data, len, events);
}

void am_sink_stats(const am_sink *s, struct am_sink_stats *out)
{
    if (out == NULL)
        return;
    memset(out, 0, sizeof *out);
    if (s == NULL)
        return;
    out->events = s->events;
    out->batches = s->batches.sealed_total;
    out->dropped_full = s->dropped_full;
    out->dropped_encode = s->dropped_encode;
    out->pending_batches = s->batches.count;
    out->memory = batches_memory(&s->batches) + s->event.cap + sizeof *s;
}

int am_sink_copy_open(const am_sink *s, uint8_t *out, size_t cap, size_t *len)
{
    if (s == NULL || out == NULL || len == NULL)
        return AM_ERR_ARG;
    const am_batches *b = &s->batches;
    if (b->open.data == NULL || b->open_events == 0)
        return AM_EMPTY;
    if (b->open.len > cap || b->open.len < 5)
        return AM_ERR_LIMIT;
    memcpy(out, b->open.data, b->open.len);
    /* The array32 header the seal would patch: 0xdd, then the count big-endian. */
    uint32_t n = b->open_events;
    out[1] = (uint8_t)(n >> 24);
    out[2] = (uint8_t)(n >> 16);
    out[3] = (uint8_t)(n >> 8);
    out[4] = (uint8_t)n;
    *len = b->open.len;
    return AM_OK;
}
