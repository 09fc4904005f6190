/* sink.h: the inside of an event sink, for the sources that write into one (core.h has its
 * public half). A source writes one event:
 *     mp_buf *e = sink_begin(sink);  mp_map(e, n); ... ;  sink_commit(sink);
 * and when an encode call fails (the event is larger than a batch) it calls sink_drop, which
 * counts the event as dropped; an event is never half-written into a batch. */
#ifndef AM_SINK_H
#define AM_SINK_H

#include <stdint.h>

#include "batch.h"
#include "core.h"
#include "msgpack.h"

struct am_sink {
    struct am_sink_options opt;
    am_batches batches;
    mp_buf event; /* scratch: the event being encoded, at most batch_bytes - 5 */
    uint64_t events;
    uint64_t dropped_full;
    uint64_t dropped_encode;
};

mp_buf *sink_begin(am_sink *s);
/* AM_OK, or AM_ERR_FULL when the sink already holds max_batches sealed batches and the event
 * does not fit the open one (counted in dropped_full). Sources check am_sink_full before they
 * read more input, so that this stays a last resort. */
int sink_commit(am_sink *s);
void sink_drop(am_sink *s);
/* Appends one event encoded elsewhere, even beyond max_batches: for a source one input of
 * which can complete several events at once (the audit parser; it checks am_sink_full before
 * each input and bounds such a burst itself). An event larger than batch_bytes - 5 is dropped
 * and counted in dropped_encode (AM_OK). */
int sink_put(am_sink *s, const uint8_t *event, size_t len);
/* The most a sink with these options holds beyond `burst`, the bytes of events appended past
 * max_batches (the audit parser's memory_bound). */
size_t sink_memory_bound(const struct am_sink_options *o, size_t burst, size_t burst_events);

#endif
