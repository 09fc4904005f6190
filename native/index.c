/* index.c: the keyed index (index.h, docs/index.md). */
#include "index.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

enum { MAX_BOUND = 1u << 24, FIRST_ALLOC = 16 };

/* ---- SipHash (Aumasson and Bernstein, "SipHash: a fast short-input PRF", 2012) ---- */

static uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

struct sip {
    uint64_t v0, v1, v2, v3;
};

static void sip_round(struct sip *s)
{
    s->v0 += s->v1;
    s->v1 = rotl(s->v1, 13);
    s->v1 ^= s->v0;
    s->v0 = rotl(s->v0, 32);
    s->v2 += s->v3;
    s->v3 = rotl(s->v3, 16);
    s->v3 ^= s->v2;
    s->v0 += s->v3;
    s->v3 = rotl(s->v3, 21);
    s->v3 ^= s->v0;
    s->v2 += s->v1;
    s->v1 = rotl(s->v1, 17);
    s->v1 ^= s->v2;
    s->v2 = rotl(s->v2, 32);
}

static void sip_compress(struct sip *s, uint64_t m, int c)
{
    s->v3 ^= m;
    for (int i = 0; i < c; i++)
        sip_round(s);
    s->v0 ^= m;
}

/* Little-endian, whatever the CPU: the paper defines the words so. */
static uint64_t load_le(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

uint64_t am_siphash(uint64_t k0, uint64_t k1, const void *data, size_t len, int c, int d)
{
    /* The initial state is the key xored with "somepseudorandomlygeneratedbytes". */
    struct sip s = {k0 ^ 0x736f6d6570736575ull, k1 ^ 0x646f72616e646f6dull,
                    k0 ^ 0x6c7967656e657261ull, k1 ^ 0x7465646279746573ull};
    const uint8_t *p = data;
    size_t whole = len - len % 8;
    for (size_t off = 0; off < whole; off += 8)
        sip_compress(&s, load_le(p + off, 8), c);
    /* The last word: the 0..7 remaining bytes, and the length (mod 256) in its top byte. */
    sip_compress(&s, load_le(p + whole, len % 8) | (uint64_t)(len & 0xff) << 56, c);
    s.v2 ^= 0xff;
    for (int i = 0; i < d; i++)
        sip_round(&s);
    return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

/* ---- the seed ---- */

static uint64_t mix64(uint64_t z)
{
    /* The splitmix64 finalizer: every input bit reaches every output bit. */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int from_getrandom(uint64_t seed[2])
{
#ifdef SYS_getrandom
    uint8_t bytes[16];
    /* GRND_NONBLOCK (1): never wait at boot for the pool; GRND_INSECURE (4, Linux 5.6) then
     * gives bytes that are random but not yet vouched for, which is what a hash seed needs. */
    static const unsigned flags[2] = {1u, 4u};
    for (int i = 0; i < 2; i++) {
        long n;
        do
            n = syscall(SYS_getrandom, bytes, sizeof bytes, flags[i]);
        while (n < 0 && errno == EINTR);
        if (n == (long)sizeof bytes) {
            memcpy(seed, bytes, sizeof bytes);
            return 1;
        }
        if (n >= 0 || errno != EAGAIN)
            break; /* ENOSYS, EINVAL (no GRND_INSECURE), a short read: the fallback */
    }
#else
    (void)seed;
#endif
    return 0;
}

/* Where getrandom gives nothing: the clocks (nanoseconds since boot and since the epoch), the
 * pid, and the addresses of the index and of this frame (randomised by ASLR where the kernel
 * has it). Weaker than getrandom, but no two processes or indexes share it and nothing in
 * the source fixes it. */
static void from_clock_and_addresses(am_index *x, uint64_t seed[2])
{
    struct timespec mono = {0, 0}, real = {0, 0};
    clock_gettime(CLOCK_MONOTONIC, &mono);
    clock_gettime(CLOCK_REALTIME, &real);
    int here = 0;
    uint64_t a = (uint64_t)mono.tv_sec * 1000000000u + (uint64_t)mono.tv_nsec;
    uint64_t b = (uint64_t)real.tv_sec * 1000000000u + (uint64_t)real.tv_nsec;
    seed[0] = mix64(a ^ (uint64_t)(uintptr_t)x ^ ((uint64_t)getpid() << 40));
    seed[1] = mix64(b ^ (uint64_t)(uintptr_t)&here ^ seed[0]);
}

int am_index_reseed(am_index *x, int use_getrandom)
{
    int got = use_getrandom && from_getrandom(x->seed);
    if (!got)
        from_clock_and_addresses(x, x->seed);
    x->st.seeded = (uint64_t)got;
    return got;
}

/* ---- the index ---- */

static uint32_t hash_of(const am_index *x, const void *key, size_t len)
{
    return (uint32_t)am_siphash(x->seed[0], x->seed[1], key, len, 1, 3);
}

static uint32_t slots_for(uint32_t alloc)
{
    uint32_t n = 4;
    while (n < 2 * alloc)
        n *= 2;
    return n;
}

int am_index_init(am_index *x, size_t entry_size, uint32_t bound, am_index_same_fn same,
                  am_index_moved_fn moved, void *ctx)
{
    if (x == NULL)
        return AM_ERR_ARG;
    memset(x, 0, sizeof *x);
    if (entry_size == 0 || entry_size > (1u << 20) || bound == 0 || bound > MAX_BOUND ||
        same == NULL)
        return AM_ERR_ARG;
    x->entry_size = entry_size;
    x->bound = bound;
    x->same = same;
    x->moved = moved;
    x->ctx = ctx;
    am_index_reseed(x, 1);
    return AM_OK;
}

void am_index_release(am_index *x)
{
    if (x == NULL)
        return;
    free(x->entries);
    free(x->hashes);
    free(x->slots);
    x->entries = NULL;
    x->hashes = NULL;
    x->slots = NULL;
    x->count = x->alloc = x->mask = 0;
}

void am_index_clear(am_index *x)
{
    x->count = 0;
    if (x->slots != NULL)
        memset(x->slots, 0, ((size_t)x->mask + 1) * sizeof *x->slots);
}

/* Puts position pos (hash h) into the first empty slot of its run. */
static void place(am_index *x, uint32_t h, uint32_t pos)
{
    uint32_t s = h & x->mask;
    while (x->slots[s] != 0)
        s = (s + 1) & x->mask;
    x->slots[s] = pos + 1;
}

/* The arrays resized to alloc entries (more than now, at most the bound). */
static int resize(am_index *x, uint32_t alloc)
{
    uint8_t *entries = realloc(x->entries, (size_t)alloc * x->entry_size);
    if (entries == NULL)
        return AM_ERR_NOMEM;
    x->entries = entries;
    uint32_t *hashes = realloc(x->hashes, (size_t)alloc * sizeof *hashes);
    if (hashes == NULL)
        return AM_ERR_NOMEM;
    x->hashes = hashes;
    uint32_t nslots = slots_for(alloc);
    if (x->slots == NULL || nslots != x->mask + 1) {
        uint32_t *slots = calloc(nslots, sizeof *slots);
        if (slots == NULL)
            return AM_ERR_NOMEM;
        free(x->slots);
        x->slots = slots;
        x->mask = nslots - 1;
        for (uint32_t i = 0; i < x->count; i++)
            place(x, x->hashes[i], i);
    }
    x->alloc = alloc;
    return AM_OK;
}

/* Room for one more entry: the arrays double, up to the bound. */
static int grow(am_index *x)
{
    if (x->count < x->alloc)
        return AM_OK;
    if (x->count >= x->bound)
        return AM_ERR_LIMIT;
    uint32_t alloc = x->alloc ? x->alloc * 2 : FIRST_ALLOC;
    return resize(x, alloc < x->bound ? alloc : x->bound);
}

int am_index_reserve(am_index *x, uint32_t n)
{
    if (n > x->bound)
        n = x->bound;
    if (n <= x->alloc)
        return AM_OK;
    /* A count that creeps up a few at a time (a table reserved at every snapshot) still
     * grows by doubling, not by a few entries and a copy each time. */
    uint32_t doubled = x->alloc > x->bound / 2 ? x->bound : x->alloc * 2;
    return resize(x, n > doubled ? n : doubled);
}

/* The slot holding the key, or the empty slot that ends its run. */
static uint32_t probe(am_index *x, uint32_t h, const void *key, size_t len)
{
    uint64_t steps = 1;
    uint32_t s = h & x->mask;
    for (;; s = (s + 1) & x->mask, steps++) {
        uint32_t v = x->slots[s];
        if (v == 0 || (x->hashes[v - 1] == h && x->same(am_index_at(x, v - 1), key, len, x->ctx)))
            break;
    }
    x->st.probes += steps;
    if (steps > x->st.longest)
        x->st.longest = steps;
    return s;
}

uint32_t am_index_hash(const am_index *x, const void *key, size_t len)
{
    return hash_of(x, key, len);
}

uint32_t am_index_find_hashed(am_index *x, const void *key, size_t len, uint32_t h)
{
    x->st.finds++;
    if (x->count == 0)
        return AM_INDEX_NONE;
    uint32_t v = x->slots[probe(x, h, key, len)];
    return v ? v - 1 : AM_INDEX_NONE;
}

uint32_t am_index_find(am_index *x, const void *key, size_t len)
{
    return am_index_find_hashed(x, key, len, hash_of(x, key, len));
}

int am_index_add(am_index *x, const void *key, size_t len, uint32_t *pos)
{
    return am_index_add_hashed(x, key, len, hash_of(x, key, len), pos);
}

int am_index_share_seed(am_index *x, const am_index *from)
{
    if (x == NULL || from == NULL || x->count > 0)
        return AM_ERR_ARG;
    x->seed[0] = from->seed[0];
    x->seed[1] = from->seed[1];
    x->st.seeded = from->st.seeded;
    return AM_OK;
}

int am_index_add_hashed(am_index *x, const void *key, size_t len, uint32_t h, uint32_t *pos)
{
    x->st.finds++;
    if (x->count > 0) {
        uint32_t v = x->slots[probe(x, h, key, len)];
        if (v != 0) {
            *pos = v - 1;
            return AM_INDEX_FOUND;
        }
    }
    int st = grow(x);
    if (st != AM_OK) {
        if (st == AM_ERR_LIMIT)
            x->st.full++;
        return st;
    }
    uint32_t i = x->count++;
    memset(am_index_at(x, i), 0, x->entry_size);
    x->hashes[i] = h;
    place(x, h, i);
    x->st.added++;
    *pos = i;
    return AM_INDEX_ADDED;
}

/* The slot that names position pos. */
static uint32_t slot_of(am_index *x, uint32_t pos)
{
    uint64_t steps = 1;
    uint32_t s = x->hashes[pos] & x->mask;
    for (; x->slots[s] != pos + 1; s = (s + 1) & x->mask)
        steps++;
    x->st.probes += steps;
    return s;
}

void am_index_remove_at(am_index *x, uint32_t pos)
{
    if (pos >= x->count)
        return; /* no entry there: nothing to remove */
    /* The slot side: backward shift (no tombstones, so runs do not lengthen with churn).
     * Each later member of the run moves into the hole unless its home lies cyclically in
     * (hole, j]: moving it there would put it before its home, where no lookup looks. */
    uint32_t hole = slot_of(x, pos);
    for (uint32_t j = (hole + 1) & x->mask; x->slots[j] != 0; j = (j + 1) & x->mask) {
        x->st.probes++;
        uint32_t home = x->hashes[x->slots[j] - 1] & x->mask;
        int stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            x->slots[hole] = x->slots[j];
            hole = j;
        }
    }
    x->slots[hole] = 0;
    x->st.removed++;
    /* The dense side: the last entry fills the gap. */
    uint32_t last = --x->count;
    if (pos == last)
        return;
    x->slots[slot_of(x, last)] = pos + 1;
    memcpy(am_index_at(x, pos), am_index_at(x, last), x->entry_size);
    x->hashes[pos] = x->hashes[last];
    if (x->moved != NULL)
        x->moved(am_index_at(x, pos), pos, x->ctx);
}

size_t am_index_memory(const am_index *x)
{
    size_t bytes = (size_t)x->alloc * (x->entry_size + sizeof *x->hashes);
    if (x->slots != NULL)
        bytes += ((size_t)x->mask + 1) * sizeof *x->slots;
    return bytes;
}

size_t am_index_memory_bound(size_t entry_size, uint32_t bound)
{
    return (size_t)bound * (entry_size + sizeof(uint32_t)) +
           (size_t)slots_for(bound) * sizeof(uint32_t);
}

void am_index_stats(const am_index *x, struct am_index_stats *out)
{
    *out = x->st;
    out->entries = x->count;
    out->bound = x->bound;
}
