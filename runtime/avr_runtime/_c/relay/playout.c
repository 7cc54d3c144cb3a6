/* The playout buffer, a port of audio/buffer.py's PlayoutBuffer (keep the two in step): provider audio re-framed
 * into whole frames, each with the time it arrived, at most ``capacity`` of them, and the partial frame behind
 * them. Pure: no sockets, no clock (times are passed in). Part of _relay.c. */

#define FRAME 320 /* 20 ms of PCM16 at 8 kHz */

typedef struct {
    uint8_t *frames; /* a ring of ``allocated`` frames, grown on demand up to ``capacity`` */
    double *arrived;
    int capacity, allocated, head, count;
    int drop_newest;
    uint8_t partial[FRAME];
    int partial_len;
    double partial_since;
} Playout;

static void playout_free(Playout *b) {
    PyMem_Free(b->frames);
    PyMem_Free(b->arrived);
    b->frames = NULL;
    b->arrived = NULL;
}

static int playout_reserve(Playout *b) {
    if (b->count < b->allocated) return 0;
    int cap = b->allocated ? b->allocated * 2 : 8;
    if (cap > b->capacity) cap = b->capacity;
    uint8_t *frames = PyMem_Malloc((size_t)cap * FRAME);
    double *arrived = PyMem_Malloc((size_t)cap * sizeof(double));
    if (frames == NULL || arrived == NULL) {
        PyMem_Free(frames);
        PyMem_Free(arrived);
        return -1;
    }
    for (int i = 0; i < b->count; i++) {
        int j = (b->head + i) % b->allocated;
        memcpy(frames + (size_t)i * FRAME, b->frames + (size_t)j * FRAME, FRAME);
        arrived[i] = b->arrived[j];
    }
    PyMem_Free(b->frames);
    PyMem_Free(b->arrived);
    b->frames = frames;
    b->arrived = arrived;
    b->allocated = cap;
    b->head = 0;
    return 0;
}

static void playout_drop_oldest(Playout *b) {
    b->head = (b->head + 1) % b->allocated;
    b->count--;
}

/* One whole frame in; returns frames dropped by the overflow policy. */
static int playout_append(Playout *b, const uint8_t *frame, double now) {
    int dropped = 0;
    if (b->count >= b->capacity) {
        dropped = 1;
        if (b->drop_newest) return 1;
        playout_drop_oldest(b);
    }
    if (playout_reserve(b) < 0) return dropped + 1;
    int tail = (b->head + b->count) % b->allocated;
    memcpy(b->frames + (size_t)tail * FRAME, frame, FRAME);
    b->arrived[tail] = now;
    b->count++;
    return dropped;
}

static inline int playout_push(Playout *b, const uint8_t *d, size_t n, double now) {
    size_t total = (size_t)b->partial_len + n;
    size_t whole = total - total % FRAME;
    if (whole < total && (whole || b->partial_len == 0)) b->partial_since = now;
    size_t frames = whole / FRAME;
    int dropped = 0;
    if (frames && b->partial_len) { /* the partial frame first, completed from the new audio */
        size_t fill = FRAME - (size_t)b->partial_len;
        memcpy(b->partial + b->partial_len, d, fill);
        dropped += playout_append(b, b->partial, now);
        d += fill;
        n -= fill;
        frames--;
        b->partial_len = 0;
    }
    for (; frames; frames--, d += FRAME, n -= FRAME) dropped += playout_append(b, d, now);
    memcpy(b->partial + b->partial_len, d, n);
    b->partial_len += (int)n;
    return dropped;
}

static int playout_flush_partial(Playout *b, double now) {
    if (!b->partial_len) return 0;
    uint8_t frame[FRAME];
    memset(frame, 0, FRAME);
    memcpy(frame, b->partial, (size_t)b->partial_len);
    b->partial_len = 0;
    return playout_push(b, frame, FRAME, now);
}

/* Barge-in: forget everything queued; returns the number of whole frames discarded. */
static int playout_clear(Playout *b) {
    int n = b->count;
    b->count = 0;
    b->head = 0;
    b->partial_len = 0;
    return n;
}
