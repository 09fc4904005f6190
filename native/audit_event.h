/* audit_event.h: a completed event's records -> one typed msgpack map (docs/events.md,
 * docs/audit-parsing.md sections 5-7). */
#ifndef AM_AUDIT_EVENT_H
#define AM_AUDIT_EVENT_H

#include <stddef.h>
#include <stdint.h>

#include "audit_record.h"
#include "msgpack.h"

/* Records of an event are stored back to back: a rec_head then its fields text. */
typedef struct rec_head {
    uint32_t type;
    uint32_t len;
} rec_head;

typedef struct am_event_view {
    const char *node;
    size_t node_len;
    uint64_t serial;
    uint64_t ts_ms;
    const uint8_t *recs;
    size_t recs_len;
    int truncated;
} am_event_view;

typedef struct am_encoder {
    am_field *fields;
    size_t fields_cap;
    am_field *sc_fields; /* the SYSCALL record's fields, kept while other records are read */
    size_t sc_cap;
    mp_buf body;  /* the event map's entries */
    mp_buf items; /* argv / paths / recs elements */
    mp_buf event; /* map header + body: what goes into the batch */
    uint8_t *scratch; /* decoded bytes of one value or one reassembled argument */
    size_t scratch_cap;
} am_encoder;

int encoder_init(am_encoder *enc, size_t event_cap, size_t max_value_bytes);
void encoder_release(am_encoder *enc);
size_t encoder_memory(const am_encoder *enc);
/* Encodes into enc->event. *cut is set when the full form did not fit and the minimal form
 * was written instead (or the event was already truncated). */
int event_encode(am_encoder *enc, const am_event_view *ev, int *cut);

/* Loss tracking needs to know daemon events: the type of the event's first record. */
uint32_t event_first_type(const am_event_view *ev);

#endif
