/* The pacer, a port of audio/pacer.py's Pacer (its docstring gives the rules; keep the two in step), as a pure
 * decision core: each step takes "now" and one event (a slot is due, audio arrived) and says what to play and when
 * the next slot is, so the same event scripts can be replayed through it and through the Python pacer on a virtual
 * clock (tests/unit/test_pacer_spec.py). Sending, counting and arming the timer are the caller's. Part of
 * _relay.c. */

#define LATE_AFTER 0.005
#define TRIM_AFTER_TICKS 50
#define STEADY_SPREAD 2
#define DRAIN_AFTER_TICKS 3
#define HICCUP_TICKS 3
#define DRAIN_MAX_FRAMES 10

typedef struct {
    int running;
    double period, margin, grace_window, max_slew;
    double next, earliest;
    int talking, grace, draining;
    int backlog_ticks, backlog_min, backlog_max;
    int hiccup; /* slots after a late slot of ours or a silence frame for late audio: drain at once */
} Pacer;

/* What one step decided. */
typedef struct {
    int play;             /* a frame is due now: ``frame``, or silence when that is NULL */
    const uint8_t *frame; /* valid until the playout buffer's next append */
    double waited;        /* how long ``frame`` waited in the buffer */
    int late;             /* this slot came more than LATE_AFTER after its time */
    int arm;              /* the next slot moved: the timer is due at ``next`` */
    int dropped_latency;  /* frames of a steady backlog cut */
    int dropped_overflow; /* frames the playout buffer's overflow policy discarded */
} PacerStep;

static void pacer_watch_backlog(Pacer *p, Playout *b, PacerStep *out) {
    int backlog = b->count;
    int hiccup = p->hiccup > 0;
    if (hiccup) p->hiccup--;
    if (backlog == 0) {
        p->backlog_ticks = 0;
        p->draining = 0;
        return;
    }
    if (p->backlog_ticks == 0) {
        p->backlog_min = p->backlog_max = backlog;
        if (hiccup) p->backlog_ticks = DRAIN_AFTER_TICKS - 1; /* a hiccup's backlog needs no proof it is steady */
    } else {
        if (backlog < p->backlog_min) p->backlog_min = backlog;
        if (backlog > p->backlog_max) p->backlog_max = backlog;
    }
    p->backlog_ticks++;
    if (p->backlog_max - p->backlog_min > STEADY_SPREAD) {
        p->backlog_ticks = 0;
        p->draining = 0;
        p->hiccup = 0;
    } else if (p->backlog_max <= DRAIN_MAX_FRAMES) {
        p->draining = p->backlog_ticks >= DRAIN_AFTER_TICKS;
    } else if (p->backlog_ticks >= TRIM_AFTER_TICKS) {
        for (int i = 0; i < p->backlog_min && b->count; i++) playout_drop_oldest(b);
        out->dropped_latency += p->backlog_min;
        p->backlog_ticks = 0;
    }
}

/* Play the next frame (silence when there is none); the following slot is one period after ``anchor``. */
static void pacer_emit(Pacer *p, Playout *b, double anchor, double now, PacerStep *out) {
    out->play = 1;
    if (b->count == 0) {
        out->frame = NULL;
        p->talking = 0;
        p->hiccup = 0;
    } else {
        int slot = b->head;
        out->waited = now - b->arrived[slot];
        playout_drop_oldest(b); /* the frame's bytes stay valid until the next append */
        out->frame = b->frames + (size_t)slot * FRAME;
        p->talking = 1;
        pacer_watch_backlog(p, b, out);
    }
    p->earliest = now + p->period - p->max_slew;
    double step = p->draining ? p->period - p->max_slew : p->period;
    p->next = anchor + step > p->earliest ? anchor + step : p->earliest;
}

/* The slot at ``next`` is due (now >= next). */
static void pacer_tick(Pacer *p, Playout *b, double now, PacerStep *out) {
    double slot = p->next;
    if (p->grace) { /* grace expired with nothing whole to play */
        p->grace = 0;
        if (b->partial_len) { /* a reply's last, short frame: padded and played now, not a slot later */
            out->dropped_overflow += playout_flush_partial(b, b->partial_since);
            pacer_emit(p, b, now, now, out);
            return;
        }
        out->play = 1;
        out->frame = NULL;
        p->talking = 0;
        p->hiccup = HICCUP_TICKS;
        p->earliest = now + p->period - p->max_slew;
        double next = slot - p->grace_window + p->period;
        p->next = next > p->earliest ? next : p->earliest;
        return;
    }
    if (b->count == 0 && b->partial_len && now - b->partial_since >= p->period)
        out->dropped_overflow += playout_flush_partial(b, b->partial_since);
    double lateness = now - slot;
    if (lateness > LATE_AFTER) {
        out->late = 1;
        p->hiccup = HICCUP_TICKS;
    }
    if (b->count == 0 && p->talking && p->grace_window > 0) {
        p->grace = 1;
        p->next = (lateness > LATE_AFTER ? now : slot) + p->grace_window; /* our own stall is not the provider's */
        return;
    }
    pacer_emit(p, b, lateness > p->period ? now : slot, now, out);
}

static void pacer_audio_arrived(Pacer *p, Playout *b, int was_empty, double now, PacerStep *out) {
    if (!p->running || !was_empty) return;
    if (p->grace) {
        if (b->count == 0) return; /* only part of a frame: wait for the rest until the grace ends */
        p->grace = 0;
        pacer_emit(p, b, now, now, out);
        out->arm = 1;
        return;
    }
    double wait = p->next - now;
    if (wait > p->margin) {
        double slew = wait - p->margin < p->max_slew ? wait - p->margin : p->max_slew;
        double next = p->next - slew;
        p->next = next > p->earliest ? next : p->earliest;
        out->arm = 1;
    }
}

/* Provider audio into the playout buffer, then what its arrival changes. */
static void pacer_push(Pacer *p, Playout *b, const uint8_t *pcm, size_t n, double now, PacerStep *out) {
    int was_empty = b->count == 0;
    out->dropped_overflow += playout_push(b, pcm, n, now);
    pacer_audio_arrived(p, b, was_empty, now, out);
}
