/* fuzz_index.c: the keyed index (native/index.c) through its test entry point (core_index.h),
 * checked against a reference table kept here: an array searched from end to end.
 *
 * Byte 0: the bound (1 + its low 6 bits) and, with bit 6, the fallback seed instead of
 * getrandom's. Then operations, each an opcode byte and its operands:
 *   op & 7 = 0, 1: put    key, value byte    2: get key    3, 4: delete key
 *            5: prune below the value byte   6: clear      7: a key over 64 bytes (refused)
 *   a key is (op >> 3) bytes (0..31) taken from the input, each masked to 0..3 so that keys
 *   come back often.
 * Oracles: every status and value agrees with the reference; after each operation the entry
 * count and the counters agree and the index's invariants hold (am_index_test_check); the full
 * status comes exactly when a new key meets the bound. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core_index.h"
#include "fuzz_check.h"

enum { MAX_BOUND = 64, MAX_KEY = 31 };

struct ref_entry {
    uint8_t key[MAX_KEY];
    size_t len;
    uint64_t value;
};

struct ref {
    struct ref_entry e[MAX_BOUND];
    uint32_t n;
};

static int ref_find(const struct ref *r, const uint8_t *key, size_t len)
{
    for (uint32_t i = 0; i < r->n; i++)
        if (r->e[i].len == len && memcmp(r->e[i].key, key, len) == 0)
            return (int)i;
    return -1;
}

static void ref_remove(struct ref *r, uint32_t i)
{
    r->e[i] = r->e[--r->n];
}

/* Every key of the reference is found with its value. */
static void check_all(am_index_test *t, const struct ref *r)
{
    for (uint32_t i = 0; i < r->n; i++) {
        uint64_t v = 0;
        CHECK(am_index_test_get(t, r->e[i].key, r->e[i].len, &v) == AM_OK);
        CHECK(v == r->e[i].value);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint32_t bound = 1u + (data[0] & 63);
    am_index_test *t = am_index_test_new(bound, (data[0] & 0x40) ? 0 : 1);
    CHECK(t != NULL);
    CHECK(am_index_test_new(0, 1) == NULL);
    struct ref r;
    memset(&r, 0, sizeof r);
    uint64_t refused = 0;
    size_t at = 1;
    while (at < size) {
        uint8_t op = data[at++];
        size_t len = (size_t)(op >> 3);
        if (len > size - at)
            len = size - at;
        uint8_t key[MAX_KEY];
        for (size_t i = 0; i < len; i++)
            key[i] = data[at + i] & 3;
        at += len;
        uint8_t arg = at < size ? data[at] : 0;
        int found = ref_find(&r, key, len);
        uint64_t v = 0;
        switch (op & 7) {
        case 0:
        case 1: {
            at++;
            int st = am_index_test_put(t, key, len, arg);
            if (found >= 0) {
                CHECK(st == AM_EMPTY);
                r.e[found].value = arg;
            } else if (r.n == bound) {
                CHECK(st == AM_ERR_LIMIT);
                refused++;
            } else {
                CHECK(st == AM_OK);
                memcpy(r.e[r.n].key, key, len);
                r.e[r.n].len = len;
                r.e[r.n].value = arg;
                r.n++;
            }
            break;
        }
        case 2:
            if (found >= 0) {
                CHECK(am_index_test_get(t, key, len, &v) == AM_OK && v == r.e[found].value);
            } else {
                CHECK(am_index_test_get(t, key, len, &v) == AM_EMPTY);
            }
            break;
        case 3:
        case 4:
            CHECK(am_index_test_delete(t, key, len) == (found >= 0 ? AM_OK : AM_EMPTY));
            if (found >= 0)
                ref_remove(&r, (uint32_t)found);
            break;
        case 5: {
            at++;
            uint32_t gone = 0;
            for (uint32_t i = 0; i < r.n;) {
                if (r.e[i].value < arg) {
                    ref_remove(&r, i);
                    gone++;
                } else {
                    i++;
                }
            }
            CHECK(am_index_test_prune(t, arg) == gone);
            break;
        }
        case 6:
            am_index_test_clear(t);
            r.n = 0;
            break;
        default: {
            uint8_t long_key[65];
            memset(long_key, 1, sizeof long_key);
            CHECK(am_index_test_put(t, long_key, sizeof long_key, 1) == AM_ERR_ARG);
            break;
        }
        }
        struct am_index_stats st;
        am_index_test_stats(t, &st);
        CHECK(st.entries == r.n && st.bound == bound && st.full == refused);
        CHECK(st.seeded == ((data[0] & 0x40) ? 0u : 1u));
        CHECK(am_index_test_check(t) == AM_OK);
    }
    check_all(t, &r);
    am_index_test_free(t);
    return 0;
}
