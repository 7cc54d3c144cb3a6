/* The call data plane in C: a steady-state AudioSocket (slin) + STS WebSocket call, moved off the event loop's
 * per-socket machinery.
 *
 * Why: each PCM frame costs four socket operations. With uvloop, each one also pays a Python dispatch (read
 * callback, bytes object, protocol call, transport write), which costs more than the kernel's own work for a frame
 * this small (figures: bench/README.md). Here one readable epoll descriptor (registered with the event loop)
 * stands for every relayed call: a single Python call handles all their ready sockets and due pacer slots.
 *
 * What is done here, and nothing more: the exact fast path (an AudioSocket 0x10 frame of even length becomes an
 * STS audio message; an unfragmented STS audio text message becomes playout audio), the playout buffer and the
 * pacer (a port of audio/buffer.py's PlayoutBuffer and audio/pacer.py's Pacer: keep the two in step), and
 * buffered non-blocking writes. Every other byte is handed, as raw protocol bytes, to the Python protocol object
 * that owned the socket before (its data_received), which stays the one place where protocol rules, DTMF,
 * hang-ups, provider events, pings and close handshakes are handled. Python writes go through Relay.write.
 *
 * The caller's side is an AudioSocket connection, or the WebSocket stream leg of an Opus client (server/stream.py):
 * then a binary frame from the client is decoded to 8 kHz PCM and forwarded the same way, and each pacer slot is
 * encoded to one Opus packet in a binary frame. libopus is not linked here: Python hands over the addresses of
 * opus_encode/opus_decode and of the call's own encoder and decoder (audio/opus.py, via opuslib), so the codec
 * state carries on across the handover and the module builds without libopus headers.
 *
 * Polling (poll_interval > 0, FAST_PATH_POLL_MS): the sockets sit in an epoll of their own that the event loop does
 * not watch, and are read when the timer fires, every poll interval. Being woken by each peer's send costs a
 * cross-core wake-up per message, paid by the sender too; one poll per interval finds many sockets ready at once
 * and wakes nobody, for up to one interval more latency each way.
 */
#include "common.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define FRAME 320              /* 20 ms of PCM16 at 8 kHz */
#define AS_MAX_AUDIO 1920      /* protocol/audiosocket.py MAX_AUDIO_PAYLOAD */
#define AS_MAX_OTHER 256       /* the largest valid non-audio AudioSocket payload (an error frame) */
#define OUT_CAP (64 * 1024)    /* droppable audio is refused above this much unsent output (uvloop's high-water) */
#define READ_CHUNK (256 * 1024)
#define LATE_AFTER 0.005
#define TRIM_AFTER_TICKS 50
#define STEADY_SPREAD 2
#define DRAIN_AFTER_TICKS 3
#define HICCUP_TICKS 3
#define DRAIN_MAX_FRAMES 10
#define MAX_EVENTS 256
#define OPUS_MAX_PACKET (1275 * 3) /* audio/opus.py MAX_PACKET */
#define OPUS_MAX_SAMPLES 960       /* 120 ms at 8 kHz, the longest Opus packet: AS_MAX_AUDIO bytes of PCM */
#define SILENCE_SETTLE_FRAMES 5    /* server/stream.py */

static const char AUDIO_PREFIX[] = "{\"type\":\"audio\",\"audio\":\"";
static const char AUDIO_SUFFIX[] = "\"}";
#define PREFIX_LEN (sizeof(AUDIO_PREFIX) - 1)
#define SUFFIX_LEN (sizeof(AUDIO_SUFFIX) - 1)

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static int8_t B64_INV[256];

static double monotonic(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------- types */

struct Engine;
struct Relay;

enum { SIDE_AS = 0, SIDE_WS = 1 };
enum { CALLER_AUDIOSOCKET = 0, CALLER_OPUS_STREAM = 1 };

typedef int32_t (*opus_encode_fn)(void *st, const int16_t *pcm, int frame_size, uint8_t *data, int32_t max_bytes);
typedef int (*opus_decode_fn)(void *st, const uint8_t *data, int32_t len, int16_t *pcm, int frame_size, int fec);

typedef struct {
    struct Relay *owner;
    int which;
    int fd;           /* -1 once closed */
    size_t cap;       /* droppable audio is refused while more than this waits unsent */
    uint32_t events;  /* the epoll mask registered */
    PyObject *protocol;
    Buf in, out;
    int err;          /* errno of a failed write, reported at the end of the pass */
    int lost;         /* connection_lost is due (peer EOF or error) */
    int in_message;   /* WS: a fragmented message is under way, so Python gets every frame until it ends */
    int paused;       /* Python stopped reading (a protocol error): input is read and dropped until the close */
} Side;

typedef struct Relay {
    PyObject_HEAD
    PyObject *weakreflist;
    struct Engine *engine;
    Py_ssize_t index;  /* in engine->relays, -1 when not registered */
    Side side[2];
    /* playout buffer */
    uint8_t *frames;
    double *arrived;
    int capacity, allocated, head, count;
    int drop_newest;
    uint8_t partial[FRAME];
    int partial_len;
    double partial_since;
    /* pacer */
    int pacing;
    double period, margin, grace_window, max_slew;
    double next, earliest;
    int talking, grace, draining;
    int backlog_ticks, backlog_min, backlog_max;
    int hiccup; /* slots after a late slot of ours or a silence frame for late audio: drain at once */
    /* the caller's leg */
    int caller;
    size_t caller_max; /* stream leg: the largest message (server/stream.py MAX_MESSAGE) */
    PyObject *opus_owner; /* what keeps the encoder and decoder alive while the relay uses them */
    opus_encode_fn opus_encode;
    opus_decode_fn opus_decode;
    void *encoder, *decoder;
    int silent_frames, silence_len;
    uint8_t silence_packet[OPUS_MAX_PACKET];
    /* state */
    int ws_close_sent;
    unsigned long long frames_in;
    double first_audio; /* when the provider's first audio arrived here (monotonic), 0 before */
} Relay;

typedef struct Engine {
    PyObject_HEAD
    int epfd;  /* what the event loop watches: the timer, and the sockets' epoll unless they are polled */
    int sockfd; /* the relayed sockets */
    int tfd;
    double armed; /* the deadline the timer is armed for, 0 when disarmed */
    double poll;  /* > 0: sockets are read on a timer of this period instead of waking the worker on every event */
    Relay **relays;
    Py_ssize_t n, cap;
    size_t max_message;
    uint8_t *scratch;
    uint8_t keys[4096];
    size_t keypos;
    /* counters, taken (and reset) by Engine.take for the Prometheus metrics */
    unsigned long long out_audio, out_silence, late, dropped_latency, dropped_overflow, dropped_backpressure;
    double *bounds;
    unsigned long long *hist;
    Py_ssize_t nbounds;
    double hist_sum;
    int in_run;
} Engine;

static PyTypeObject EngineType;
static PyTypeObject RelayType;

/* ---------------------------------------------------------------- metrics */

static void observe(Engine *e, double v) {
    Py_ssize_t i = 0;
    while (i < e->nbounds && e->bounds[i] < v) i++;  /* bisect_left, as metrics.LoopHistogram */
    e->hist[i]++;
    e->hist_sum += v;
}

/* ---------------------------------------------------------------- socket I/O */

static void side_set_events(Side *s, uint32_t events) {
    if (s->fd < 0 || s->events == events) return;
    struct epoll_event ev = {.events = events, .data.ptr = s};
    if (epoll_ctl(s->owner->engine->sockfd, EPOLL_CTL_MOD, s->fd, &ev) == 0) s->events = events;
}

static void side_close_fd(Side *s) {
    if (s->fd < 0) return;
    epoll_ctl(s->owner->engine->sockfd, EPOLL_CTL_DEL, s->fd, NULL);
    close(s->fd);
    s->fd = -1;
    buf_free(&s->out);
}

/* Write bytes in order. Droppable audio is refused (returns 1, to be counted) while more than OUT_CAP is waiting:
 * a peer that does not read must not make the worker buffer without bound. Returns 0 otherwise, also when the side
 * is closed or failed (its end is reported as the connection's). */
static int side_write(Side *s, const uint8_t *d, size_t n, int droppable) {
    if (s->fd < 0 || s->err) return 0;
    if (droppable && s->out.len && s->out.len + n > s->cap) return 1;
    if (out_write(s->fd, &s->out, &s->err, d, n)) side_set_events(s, EPOLLIN | EPOLLOUT);
    return 0;
}

static void side_flush(Side *s) {
    if (s->fd < 0) return;
    out_flush(s->fd, &s->out, &s->err);
    if (s->out.len == 0) side_set_events(s, EPOLLIN);
}

/* ---------------------------------------------------------------- playout buffer (audio/buffer.py) */

static int playout_reserve(Relay *r) {
    if (r->count < r->allocated) return 0;
    int cap = r->allocated ? r->allocated * 2 : 8;
    if (cap > r->capacity) cap = r->capacity;
    uint8_t *frames = PyMem_Malloc((size_t)cap * FRAME);
    double *arrived = PyMem_Malloc((size_t)cap * sizeof(double));
    if (frames == NULL || arrived == NULL) {
        PyMem_Free(frames);
        PyMem_Free(arrived);
        return -1;
    }
    for (int i = 0; i < r->count; i++) {
        int j = (r->head + i) % r->allocated;
        memcpy(frames + (size_t)i * FRAME, r->frames + (size_t)j * FRAME, FRAME);
        arrived[i] = r->arrived[j];
    }
    PyMem_Free(r->frames);
    PyMem_Free(r->arrived);
    r->frames = frames;
    r->arrived = arrived;
    r->allocated = cap;
    r->head = 0;
    return 0;
}

static void playout_drop_oldest(Relay *r) {
    r->head = (r->head + 1) % r->allocated;
    r->count--;
}

/* One whole frame in; returns frames dropped by the overflow policy. */
static int playout_append(Relay *r, const uint8_t *frame, double now) {
    int dropped = 0;
    if (r->count >= r->capacity) {
        dropped = 1;
        if (r->drop_newest) return 1;
        playout_drop_oldest(r);
    }
    if (playout_reserve(r) < 0) return dropped + 1;
    int tail = (r->head + r->count) % r->allocated;
    memcpy(r->frames + (size_t)tail * FRAME, frame, FRAME);
    r->arrived[tail] = now;
    r->count++;
    return dropped;
}

static int playout_push(Relay *r, const uint8_t *d, size_t n, double now) {
    size_t total = (size_t)r->partial_len + n;
    size_t whole = total - total % FRAME;
    if (whole < total && (whole || r->partial_len == 0)) r->partial_since = now;
    size_t frames = whole / FRAME;
    int dropped = 0;
    if (frames && r->partial_len) { /* the partial frame first, completed from the new audio */
        size_t fill = FRAME - (size_t)r->partial_len;
        memcpy(r->partial + r->partial_len, d, fill);
        dropped += playout_append(r, r->partial, now);
        d += fill;
        n -= fill;
        frames--;
        r->partial_len = 0;
    }
    for (; frames; frames--, d += FRAME, n -= FRAME) dropped += playout_append(r, d, now);
    memcpy(r->partial + r->partial_len, d, n);
    r->partial_len += (int)n;
    return dropped;
}

static int playout_flush_partial(Relay *r, double now) {
    if (!r->partial_len) return 0;
    uint8_t frame[FRAME];
    memset(frame, 0, FRAME);
    memcpy(frame, r->partial, (size_t)r->partial_len);
    r->partial_len = 0;
    return playout_push(r, frame, FRAME, now);
}

/* ---------------------------------------------------------------- pacer (audio/pacer.py) */

static void engine_arm(Engine *e, double when);

static const uint8_t ZERO_FRAME[FRAME];

/* One Opus packet in a server (unmasked) binary frame. Digital silence is encoded until the encoder has settled on
 * it, then the same packet is repeated (server/stream.py StreamCodec._encode_opus: keep the two in step). */
static void send_opus(Relay *r, const uint8_t *pcm) {
    uint8_t frame[4 + OPUS_MAX_PACKET];
    uint8_t *packet = frame + 4;
    int32_t len;
    if (pcm != ZERO_FRAME && memcmp(pcm, ZERO_FRAME, FRAME) != 0) {
        r->silent_frames = 0;
        r->silence_len = 0;
    } else if (!r->silence_len) {
        r->silent_frames++;
    }
    if (r->silence_len) {
        len = r->silence_len;
        memcpy(packet, r->silence_packet, (size_t)len);
    } else {
        int16_t samples[FRAME / 2];
        memcpy(samples, pcm, FRAME);
        len = r->opus_encode(r->encoder, samples, FRAME / 2, packet, OPUS_MAX_PACKET);
        if (len <= 0) return; /* libopus fails a whole 20 ms frame only on a broken state: nothing to send */
        if (r->silent_frames >= SILENCE_SETTLE_FRAMES) {
            memcpy(r->silence_packet, packet, (size_t)len);
            r->silence_len = len;
        }
    }
    uint8_t *h = len < 126 ? frame + 2 : frame;
    h[0] = 0x82;
    if (len < 126) {
        h[1] = (uint8_t)len;
    } else {
        h[1] = 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
    }
    if (side_write(&r->side[SIDE_AS], h, (size_t)(packet + len - h), 1)) r->engine->dropped_backpressure++;
}

static void send_audiosocket(Relay *r, const uint8_t *pcm) {
    uint8_t frame[3 + FRAME] = {0x10, FRAME >> 8, FRAME & 0xFF};
    memcpy(frame + 3, pcm, FRAME);
    if (side_write(&r->side[SIDE_AS], frame, sizeof frame, 1)) r->engine->dropped_backpressure++;
}

/* One slot's frame to the caller: ``pcm``, or silence when it is NULL. */
static void pacer_send(Relay *r, const uint8_t *pcm, double waited) {
    Engine *e = r->engine;
    if (pcm == NULL) {
        e->out_silence++;
        pcm = ZERO_FRAME;
    } else {
        e->out_audio++;
        observe(e, waited);
    }
    if (r->caller == CALLER_OPUS_STREAM) send_opus(r, pcm);
    else send_audiosocket(r, pcm);
}

static void pacer_watch_backlog(Relay *r, int backlog) {
    int hiccup = r->hiccup > 0;
    if (hiccup) r->hiccup--;
    if (backlog == 0) {
        r->backlog_ticks = 0;
        r->draining = 0;
        return;
    }
    if (r->backlog_ticks == 0) {
        r->backlog_min = r->backlog_max = backlog;
        if (hiccup) r->backlog_ticks = DRAIN_AFTER_TICKS - 1; /* a hiccup's backlog needs no proof it is steady */
    } else {
        if (backlog < r->backlog_min) r->backlog_min = backlog;
        if (backlog > r->backlog_max) r->backlog_max = backlog;
    }
    r->backlog_ticks++;
    if (r->backlog_max - r->backlog_min > STEADY_SPREAD) {
        r->backlog_ticks = 0;
        r->draining = 0;
        r->hiccup = 0;
    } else if (r->backlog_max <= DRAIN_MAX_FRAMES) {
        r->draining = r->backlog_ticks >= DRAIN_AFTER_TICKS;
    } else if (r->backlog_ticks >= TRIM_AFTER_TICKS) {
        for (int i = 0; i < r->backlog_min && r->count; i++) playout_drop_oldest(r);
        r->engine->dropped_latency += (unsigned long long)r->backlog_min;
        r->backlog_ticks = 0;
    }
}

static void pacer_emit(Relay *r, double anchor, double now) {
    if (r->count == 0) {
        pacer_send(r, NULL, 0.0);
        r->talking = 0;
        r->hiccup = 0;
    } else {
        int slot = r->head;
        double waited = now - r->arrived[slot];
        playout_drop_oldest(r);  /* the frame's bytes stay valid until the next append */
        pacer_send(r, r->frames + (size_t)slot * FRAME, waited);
        r->talking = 1;
        pacer_watch_backlog(r, r->count);
    }
    r->earliest = now + r->period - r->max_slew;
    double step = r->draining ? r->period - r->max_slew : r->period;
    r->next = anchor + step > r->earliest ? anchor + step : r->earliest;
}

static void pacer_tick(Relay *r, double now) {
    double slot = r->next;
    if (r->grace) { /* grace expired with nothing whole to play */
        r->grace = 0;
        if (r->partial_len) { /* a reply's last, short frame: padded and played now, not a slot later */
            r->engine->dropped_overflow += (unsigned long long)playout_flush_partial(r, r->partial_since);
            pacer_emit(r, now, now);
            return;
        }
        pacer_send(r, NULL, 0.0);
        r->talking = 0;
        r->hiccup = HICCUP_TICKS;
        r->earliest = now + r->period - r->max_slew;
        double next = slot - r->grace_window + r->period;
        r->next = next > r->earliest ? next : r->earliest;
        return;
    }
    if (r->count == 0 && r->partial_len && now - r->partial_since >= r->period)
        r->engine->dropped_overflow += (unsigned long long)playout_flush_partial(r, r->partial_since);
    double lateness = now - slot;
    if (lateness > LATE_AFTER) {
        r->engine->late++;
        r->hiccup = HICCUP_TICKS;
    }
    if (r->count == 0 && r->talking && r->grace_window > 0) {
        r->grace = 1;
        r->next = (lateness > LATE_AFTER ? now : slot) + r->grace_window; /* our own stall is not the provider's */
        return;
    }
    pacer_emit(r, lateness > r->period ? now : slot, now);
}

static void pacer_audio_arrived(Relay *r, int was_empty, double now) {
    if (!r->pacing || !was_empty) return;
    if (r->grace) {
        if (r->count == 0) return; /* only part of a frame: wait for the rest until the grace ends */
        r->grace = 0;
        pacer_emit(r, now, now);
        engine_arm(r->engine, r->next);
        return;
    }
    double wait = r->next - now;
    if (wait > r->margin) {
        double slew = wait - r->margin < r->max_slew ? wait - r->margin : r->max_slew;
        double next = r->next - slew;
        r->next = next > r->earliest ? next : r->earliest;
        engine_arm(r->engine, r->next);
    }
}

static void relay_push(Relay *r, const uint8_t *pcm, size_t n, double now) {
    if (r->first_audio == 0.0 && n) r->first_audio = now;
    int was_empty = r->count == 0;
    int dropped = playout_push(r, pcm, n, now);
    r->engine->dropped_overflow += (unsigned long long)dropped;
    pacer_audio_arrived(r, was_empty, now);
}

/* ---------------------------------------------------------------- STS audio messages */

static size_t b64_encode(const uint8_t *in, size_t n, uint8_t *out) {
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = (uint8_t)B64[v >> 18];
        out[o++] = (uint8_t)B64[(v >> 12) & 63];
        out[o++] = (uint8_t)B64[(v >> 6) & 63];
        out[o++] = (uint8_t)B64[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = (uint8_t)B64[v >> 18];
        out[o++] = (uint8_t)B64[(v >> 12) & 63];
        out[o++] = i + 1 < n ? (uint8_t)B64[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    return o;
}

/* Strict: length a multiple of 4, the standard alphabet, padding only at the end. Anything else returns -1 and
 * the message goes to Python, whose decoder (binascii strict mode) accepts at least all of this. */
static Py_ssize_t b64_decode(const uint8_t *in, size_t n, uint8_t *out) {
    if (n % 4) return -1;
    size_t pad = 0;
    if (n && in[n - 1] == '=') pad++;
    if (n > 1 && in[n - 2] == '=') pad++;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int last = i + 4 == n;
        int a = B64_INV[in[i]], b = B64_INV[in[i + 1]];
        int c = last && pad == 2 ? 0 : B64_INV[in[i + 2]];
        int d = last && pad >= 1 ? 0 : B64_INV[in[i + 3]];
        if ((a | b | c | d) < 0) return -1;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        out[o++] = (uint8_t)(v >> 16);
        if (!(last && pad == 2)) out[o++] = (uint8_t)(v >> 8);
        if (!(last && pad >= 1)) out[o++] = (uint8_t)v;
    }
    return (Py_ssize_t)o;
}

static void mask_key(Engine *e, uint8_t key[4]) {
    if (e->keypos + 4 > sizeof e->keys) {
        size_t got = 0;
        while (got < sizeof e->keys) {
            ssize_t r = getrandom(e->keys + got, sizeof e->keys - got, 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                break; /* keep the old pool rather than fail a send */
            }
            got += (size_t)r;
        }
        e->keypos = 0;
    }
    memcpy(key, e->keys + e->keypos, 4);
    e->keypos += 4;
}

/* Caller audio to the provider: {"type":"audio","audio":"<base64>"} in one masked text frame. */
static void forward_audio(Relay *r, const uint8_t *pcm, size_t n) {
    Side *ws = &r->side[SIDE_WS];
    r->frames_in++;
    if (ws->fd < 0 || r->ws_close_sent) return; /* the connection's end decides the call's reason */
    uint8_t frame[8 + PREFIX_LEN + (AS_MAX_AUDIO / 3 + 1) * 4 + SUFFIX_LEN];
    uint8_t *p = frame + 8;
    memcpy(p, AUDIO_PREFIX, PREFIX_LEN);
    size_t len = PREFIX_LEN + b64_encode(pcm, n, p + PREFIX_LEN);
    memcpy(p + len, AUDIO_SUFFIX, SUFFIX_LEN);
    len += SUFFIX_LEN;
    uint8_t key[4];
    mask_key(r->engine, key);
    for (size_t i = 0; i < len; i++) p[i] ^= key[i & 3];
    /* the length in as few bytes as it takes (RFC 6455 5.2): 7 bits up to 72 bytes of audio, else 16 */
    uint8_t *h = len < 126 ? frame + 2 : frame;
    h[0] = 0x81;
    if (len < 126) {
        h[1] = (uint8_t)(0x80 | len);
    } else {
        h[1] = 0x80 | 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
    }
    memcpy(frame + 4, key, 4);
    if (side_write(ws, h, (size_t)(p + len - h), 1)) r->engine->dropped_backpressure++;
}

/* ---------------------------------------------------------------- handing bytes to Python */

static int give_python(Side *s, const uint8_t *d, size_t n) { return give_python_to(s->protocol, d, n); }

static int side_gone(Side *s) { return s->fd < 0 || s->lost || s->paused; }

/* AudioSocket bytes: returns how many were used (the rest is an incomplete frame). */
static size_t parse_as(Relay *r, const uint8_t *p, size_t n) {
    Side *s = &r->side[SIDE_AS];
    size_t pos = 0;
    while (n - pos >= 3 && !side_gone(s)) {
        uint8_t kind = p[pos];
        size_t len = (size_t)p[pos + 1] << 8 | p[pos + 2];
        int audio_ok = kind == 0x10 && len > 0 && len <= AS_MAX_AUDIO;
        if (audio_ok && len % 2 == 0) {
            if (n - pos < 3 + len) break;
            forward_audio(r, p + pos + 3, len);
            pos += 3 + len;
            continue;
        }
        /* everything else is Python's: the whole frame when it can be valid, else the header alone (refused there) */
        size_t stop = audio_ok || (kind != 0x10 && len <= AS_MAX_OTHER) ? pos + 3 + len : pos + 3;
        if (stop > n) break;
        give_python(s, p + pos, stop - pos);
        pos = stop;
    }
    return side_gone(s) ? n : pos;
}

/* A whole frame for Python's parser. A fragmented message is followed to its end: all its frames are Python's. */
static void give_python_frame(Side *s, const uint8_t *frame, size_t size, int op, int fin) {
    if (op == 1 || op == 2) s->in_message = !fin;
    else if (op == 0 && fin) s->in_message = 0;
    give_python(s, frame, size);
}

/* Client WebSocket frames of the Opus stream leg: returns how many bytes were used. A whole binary message that
 * decodes is forwarded as caller audio; everything else (control, text, fragments, what does not decode, what
 * breaks the protocol) goes to Python's parser as it came. */
static size_t parse_stream(Relay *r, const uint8_t *p, size_t n) {
    Side *s = &r->side[SIDE_AS];
    size_t pos = 0;
    while (n - pos >= 2 && !side_gone(s)) {
        uint8_t b0 = p[pos], b1 = p[pos + 1];
        int fin = b0 & 0x80, op = b0 & 0x0F;
        uint64_t len;
        size_t hdr = frame_length(p + pos, n - pos, &len);
        if (hdr == 0) break;
        if (bad_client_header(b0, b1, len, r->caller_max)) { /* the header alone, for Python to refuse */
            give_python(s, p + pos, hdr);
            pos += hdr;
            continue;
        }
        hdr += 4; /* the masking key */
        if (n - pos < hdr || n - pos - hdr < len) break;
        const uint8_t *key = p + pos + hdr - 4, *payload = p + pos + hdr;
        size_t size = hdr + (size_t)len;
        if (op == 2 && fin && !s->in_message && len > 0 && len <= OPUS_MAX_PACKET) {
            uint8_t packet[OPUS_MAX_PACKET];
            int16_t pcm[OPUS_MAX_SAMPLES];
            for (size_t i = 0; i < len; i++) packet[i] = payload[i] ^ key[i & 3];
            int got = r->opus_decode(r->decoder, packet, (int32_t)len, pcm, OPUS_MAX_SAMPLES, 0);
            if (got > 0) {
                forward_audio(r, (const uint8_t *)pcm, (size_t)got * 2);
                pos += size;
                continue;
            }
        }
        give_python_frame(s, p + pos, size, op, fin);
        pos += size;
    }
    return side_gone(s) ? n : pos;
}

/* Server WebSocket frames: returns how many bytes were used. */
static size_t parse_ws(Relay *r, const uint8_t *p, size_t n) {
    Side *s = &r->side[SIDE_WS];
    Engine *e = r->engine;
    size_t pos = 0;
    while (n - pos >= 2 && !side_gone(s)) {
        uint8_t b0 = p[pos], b1 = p[pos + 1];
        int fin = b0 & 0x80, op = b0 & 0x0F;
        uint64_t len;
        size_t hdr = frame_length(p + pos, n - pos, &len);
        if (hdr == 0) break;
        int bad = (b0 & 0x70) || (b1 & 0x80) || !valid_opcode(op) || (op >= 8 && (!fin || len > 125)) ||
                  len > e->max_message;
        if (bad) { /* the header alone: Python's parser refuses it with the right close code */
            give_python(s, p + pos, hdr);
            pos += hdr;
            continue;
        }
        if (n - pos - hdr < len) break;
        const uint8_t *payload = p + pos + hdr;
        size_t size = hdr + (size_t)len;
        if (op == 1 && fin && !s->in_message && len >= PREFIX_LEN + SUFFIX_LEN &&
            memcmp(payload, AUDIO_PREFIX, PREFIX_LEN) == 0 &&
            memcmp(payload + len - SUFFIX_LEN, AUDIO_SUFFIX, SUFFIX_LEN) == 0) {
            size_t b64len = (size_t)len - PREFIX_LEN - SUFFIX_LEN;
            uint8_t stack[4096];
            uint8_t *pcm = b64len / 4 * 3 <= sizeof stack ? stack : PyMem_Malloc(b64len / 4 * 3 + 3);
            if (pcm != NULL) {
                Py_ssize_t got = b64_decode(payload + PREFIX_LEN, b64len, pcm);
                if (got >= 0) relay_push(r, pcm, (size_t)got, monotonic());
                if (pcm != stack) PyMem_Free(pcm);
                if (got >= 0) {
                    pos += size;
                    continue;
                }
            }
        }
        give_python_frame(s, p + pos, size, op, fin);
        pos += size;
    }
    return side_gone(s) ? n : pos;
}

/* ---------------------------------------------------------------- reading */

static size_t parse_side(void *owner, const uint8_t *p, size_t n) {
    Side *s = owner;
    Relay *r = s->owner;
    if (s->which == SIDE_WS) return parse_ws(r, p, n);
    return r->caller == CALLER_OPUS_STREAM ? parse_stream(r, p, n) : parse_as(r, p, n);
}

static int side_stop_reading(void *owner) { return ((Side *)owner)->fd < 0; }

static void side_read(Side *s) {
    /* a frame cut short by the peer's end: Python's parser sees the bytes and reports it at connection_lost */
    int end = read_frames(s->fd, s->owner->engine->scratch, READ_CHUNK, &s->in, parse_side, side_stop_reading, s,
                          s->protocol);
    if (end) {
        s->lost = 1;
        if (end > 0) s->err = end;
    }
}

/* ---------------------------------------------------------------- engine */

static void engine_arm(Engine *e, double when) {
    /* fire at the end of the slot's millisecond, so slots due in the same millisecond share one wake-up */
    double at = ceil(when * 1000.0) / 1000.0;
    if (e->armed != 0.0 && e->armed <= at) return;
    struct itimerspec spec = {0};
    spec.it_value.tv_sec = (time_t)at;
    spec.it_value.tv_nsec = (long)((at - (double)(time_t)at) * 1e9);
    if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0) spec.it_value.tv_nsec = 1;
    if (timerfd_settime(e->tfd, TFD_TIMER_ABSTIME, &spec, NULL) == 0) e->armed = at;
}

static void relay_release(Relay *r);

/* Both sides are closed and reported: the relay leaves the engine and lets go of the Python objects it called,
 * so the call's protocols, transports and this relay are freed by reference counting when the call ends. */
static void engine_remove(Engine *e, Relay *r) {
    if (r->index < 0) return;
    Py_ssize_t i = r->index;
    e->relays[i] = e->relays[e->n - 1];
    e->relays[i]->index = i;
    e->n--;
    r->index = -1;
    relay_release(r);
    Py_DECREF(r);
}

/* connection_lost for sides that ended in this pass; a relay with both sides closed leaves the engine. */
static void relay_settle(Relay *r) {
    for (int w = 0; w < 2; w++) {
        Side *s = &r->side[w];
        if (s->fd >= 0 && (s->lost || s->err)) {
            int err = s->err;
            side_close_fd(s);
            s->lost = 0;
            s->err = 0;
            report_lost(s->protocol, err);
        }
    }
    if (r->side[0].fd < 0 && r->side[1].fd < 0) {
        r->pacing = 0;
        engine_remove(r->engine, r);
    }
}

static PyObject *Engine_run(Engine *e, PyObject *Py_UNUSED(ignored)) {
    struct epoll_event evs[MAX_EVENTS];
    uint64_t expirations;
    if (read(e->tfd, &expirations, sizeof expirations) == sizeof expirations) e->armed = 0.0; /* rearmed below */
    int n = epoll_wait(e->sockfd, evs, MAX_EVENTS, 0);
    if (n < 0 && errno != EINTR) return PyErr_SetFromErrno(PyExc_OSError);
    e->in_run = 1;
    /* every relay touched in this pass stays alive until it is settled */
    Relay *touched[MAX_EVENTS];
    int ntouched = 0;
    for (int i = 0; i < n; i++) {
        Side *s = evs[i].data.ptr;
        Relay *r = s->owner;
        Py_INCREF(r);
        touched[ntouched++] = r;
        if (s->fd < 0) continue; /* closed by an earlier callback in this pass */
        if (evs[i].events & EPOLLOUT) side_flush(s);
        if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) side_read(s);
    }
    /* due pacer slots: a scan in C (one comparison per call per wake-up) is cheaper than a timer per call */
    double now = monotonic();
    double soonest = 0.0;
    for (Py_ssize_t i = 0; i < e->n; i++) {
        Relay *r = e->relays[i];
        if (!r->pacing || r->side[SIDE_AS].fd < 0) continue;
        if (r->next <= now) pacer_tick(r, now);
        if (soonest == 0.0 || r->next < soonest) soonest = r->next;
    }
    for (int i = 0; i < ntouched; i++) {
        relay_settle(touched[i]);
        Py_DECREF(touched[i]);
    }
    /* failed writes from the pacer scan, and relays whose sockets Python closed during the pass */
    for (Py_ssize_t i = 0; i < e->n;) {
        Relay *r = e->relays[i];
        Side *a = &r->side[0], *b = &r->side[1];
        if (a->err || b->err || a->lost || b->lost || (a->fd < 0 && b->fd < 0)) {
            Py_INCREF(r);
            relay_settle(r);
            int removed = r->index < 0;
            Py_DECREF(r);
            if (removed) continue;
        }
        i++;
    }
    e->in_run = 0;
    if (e->poll > 0.0 && e->n > 0) { /* the next poll, and the sockets that filled since this one */
        double tick = (floor(now / e->poll) + 1.0) * e->poll;
        if (soonest == 0.0 || tick < soonest) soonest = tick;
        if (n == MAX_EVENTS) soonest = now;
    }
    if (soonest != 0.0) engine_arm(e, soonest);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Engine_fileno(Engine *e, PyObject *Py_UNUSED(ignored)) { return PyLong_FromLong(e->epfd); }

static PyObject *Engine_take(Engine *e, PyObject *Py_UNUSED(ignored)) {
    PyObject *hist = PyList_New(e->nbounds + 1);
    if (hist == NULL) return NULL;
    for (Py_ssize_t i = 0; i <= e->nbounds; i++) {
        PyList_SET_ITEM(hist, i, PyLong_FromUnsignedLongLong(e->hist[i]));
        e->hist[i] = 0;
    }
    PyObject *res = Py_BuildValue("{sKsKsKsKsKsKsNsd}", "out_audio", e->out_audio, "out_silence", e->out_silence,
                                  "late", e->late, "dropped_latency", e->dropped_latency, "dropped_overflow",
                                  e->dropped_overflow, "dropped_backpressure", e->dropped_backpressure, "latency",
                                  hist, "latency_sum", e->hist_sum);
    e->out_audio = e->out_silence = e->late = 0;
    e->dropped_latency = e->dropped_overflow = e->dropped_backpressure = 0;
    e->hist_sum = 0.0;
    return res;
}

static PyObject *Engine_len(Engine *e, PyObject *Py_UNUSED(ignored)) { return PyLong_FromSsize_t(e->n); }

static int side_init(Engine *e, Relay *r, int which, int fd, PyObject *protocol, Py_buffer *pending) {
    Side *s = &r->side[which];
    s->owner = r;
    s->which = which;
    s->fd = -1;
    s->cap = OUT_CAP;
    s->protocol = Py_NewRef(protocol);
    if (pending->len && buf_append(&s->in, pending->buf, (size_t)pending->len) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
    if (epoll_ctl(e->sockfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    s->fd = fd;
    s->events = EPOLLIN;
    return 0;
}

static PyObject *Engine_add(Engine *e, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"as_fd",   "ws_fd",         "as_protocol", "ws_protocol", "next_slot",   "earliest",
                             "capacity", "drop_newest",  "period",      "margin",      "max_slew",    "talking",
                             "grace",    "draining",     "backlog_ticks", "backlog_min", "backlog_max", "hiccup", "grace_window",
                             "opus",     "silent_frames", "silence_packet", "out_cap",   "max_message", NULL};
    int as_fd, ws_fd, capacity, drop_newest, talking = 0, grace = 0, draining = 0;
    int backlog_ticks = 0, backlog_min = 0, backlog_max = 0, hiccup = 0, silent_frames = 0;
    PyObject *as_proto, *ws_proto, *opus = Py_None;
    Py_buffer silence = {0};
    Py_ssize_t out_cap = OUT_CAP, max_message = 64 * 1024;
    unsigned long long enc_fn = 0, enc = 0, dec_fn = 0, dec = 0;
    double next, earliest, period, margin, max_slew, grace_window = -1.0; /* < 0: the margin, as Pacer's default */
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiOOddipddd|pppiiiid$Oiy*nn", kwlist, &as_fd, &ws_fd, &as_proto,
                                     &ws_proto, &next, &earliest, &capacity, &drop_newest, &period, &margin, &max_slew,
                                     &talking, &grace, &draining, &backlog_ticks, &backlog_min, &backlog_max,
                                     &hiccup, &grace_window, &opus, &silent_frames, &silence, &out_cap, &max_message))
        return NULL;
    PyObject *owner = NULL;
    int bad_opus = opus != Py_None &&
                   !PyArg_ParseTuple(opus, "OKKKK;opus must be (owner, encode, encoder, decode, decoder)", &owner,
                                     &enc_fn, &enc, &dec_fn, &dec);
    size_t silence_len = silence.obj != NULL ? (size_t)silence.len : 0;
    uint8_t silence_packet[OPUS_MAX_PACKET];
    if (silence_len <= sizeof silence_packet && silence_len) memcpy(silence_packet, silence.buf, silence_len);
    if (silence.obj != NULL) PyBuffer_Release(&silence);
    if (bad_opus) return NULL;
    if (capacity < 1 || out_cap < 1 || max_message < 1) {
        PyErr_SetString(PyExc_ValueError, "capacity, out_cap and max_message must be positive");
        return NULL;
    }
    if (opus != Py_None && !(enc_fn && enc && dec_fn && dec)) {
        PyErr_SetString(PyExc_ValueError, "opus addresses must not be null");
        return NULL;
    }
    if (silence_len > sizeof silence_packet) {
        PyErr_SetString(PyExc_ValueError, "silence_packet is longer than an Opus packet");
        return NULL;
    }
    Relay *r = PyObject_GC_New(Relay, &RelayType);
    if (r == NULL) return NULL;
    memset((char *)r + sizeof(PyObject), 0, sizeof(Relay) - sizeof(PyObject));
    PyObject_GC_Track(r); /* every reference it holds is NULL or set below, so it can be traversed from here on */
    r->engine = (Engine *)Py_NewRef(e);
    r->index = -1;
    r->side[0].fd = r->side[1].fd = -1;
    r->capacity = capacity;
    r->drop_newest = drop_newest;
    r->period = period;
    r->margin = margin;
    r->grace_window = grace_window < 0 ? margin : grace_window;
    r->max_slew = max_slew;
    r->next = next;
    r->earliest = earliest;
    r->talking = talking;
    r->grace = grace;
    r->draining = draining;
    r->backlog_ticks = backlog_ticks;
    r->backlog_min = backlog_min;
    r->backlog_max = backlog_max;
    r->hiccup = hiccup;
    r->pacing = 1;
    if (opus != Py_None) {
        r->caller = CALLER_OPUS_STREAM;
        r->opus_owner = Py_NewRef(owner);
        r->opus_encode = (opus_encode_fn)(uintptr_t)enc_fn;
        r->encoder = (void *)(uintptr_t)enc;
        r->opus_decode = (opus_decode_fn)(uintptr_t)dec_fn;
        r->decoder = (void *)(uintptr_t)dec;
        r->silent_frames = silent_frames;
        r->silence_len = (int)silence_len;
        memcpy(r->silence_packet, silence_packet, silence_len);
    }
    r->caller_max = (size_t)max_message;
    Py_buffer none = {0};
    if (side_init(e, r, SIDE_AS, as_fd, as_proto, &none) < 0 || side_init(e, r, SIDE_WS, ws_fd, ws_proto, &none) < 0) {
        for (int w = 0; w < 2; w++) { /* the descriptors stay the caller's: relay.py closes them */
            if (r->side[w].fd >= 0) epoll_ctl(e->sockfd, EPOLL_CTL_DEL, r->side[w].fd, NULL);
            r->side[w].fd = -1;
        }
        Py_DECREF(r);
        return NULL;
    }
    r->side[SIDE_AS].cap = (size_t)out_cap;
    if (e->n == e->cap) {
        Py_ssize_t cap = e->cap ? e->cap * 2 : 64;
        Relay **p = PyMem_Realloc(e->relays, (size_t)cap * sizeof(Relay *));
        if (p == NULL) {
            Py_DECREF(r);
            return PyErr_NoMemory();
        }
        e->relays = p;
        e->cap = cap;
    }
    r->index = e->n;
    e->relays[e->n++] = (Relay *)Py_NewRef(r);
    engine_arm(e, e->poll > 0.0 ? fmin(next, monotonic() + e->poll) : next); /* polled: read from the next poll */
    return (PyObject *)r;
}

static PyObject *Engine_close(Engine *e, PyObject *Py_UNUSED(ignored)) {
    while (e->n) {
        Relay *r = e->relays[e->n - 1];
        Py_INCREF(r);
        side_close_fd(&r->side[0]);
        side_close_fd(&r->side[1]);
        engine_remove(e, r);
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static int Engine_init(Engine *e, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"latency_buckets", "max_message", "poll_interval", NULL};
    PyObject *buckets;
    Py_ssize_t max_message;
    double poll = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "On|d", kwlist, &buckets, &max_message, &poll)) return -1;
    if (!(poll >= 0.0 && poll <= 1.0)) {
        PyErr_SetString(PyExc_ValueError, "poll_interval must be between 0 and 1 second");
        return -1;
    }
    e->poll = poll;
    PyObject *seq = PySequence_Fast(buckets, "latency_buckets must be a sequence of floats");
    if (seq == NULL) return -1;
    Py_ssize_t nb = PySequence_Fast_GET_SIZE(seq);
    e->bounds = PyMem_Calloc((size_t)nb + 1, sizeof(double));
    e->hist = PyMem_Calloc((size_t)nb + 1, sizeof(unsigned long long));
    if (e->bounds == NULL || e->hist == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < nb; i++) {
        e->bounds[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    e->nbounds = nb;
    e->max_message = (size_t)max_message;
    e->keypos = sizeof e->keys;
    e->scratch = PyMem_Malloc(READ_CHUNK);
    if (e->scratch == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    e->sockfd = epoll_create1(EPOLL_CLOEXEC);
    e->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (e->epfd < 0 || e->sockfd < 0 || e->tfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    /* polled sockets wake nobody: the peers' sends between two polls cost them no cross-core wake-up of the worker */
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->tfd, &ev) < 0 ||
        (poll == 0.0 && epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->sockfd, &ev) < 0)) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *Engine_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds)) {
    Engine *e = (Engine *)type->tp_alloc(type, 0);
    if (e != NULL) e->epfd = e->sockfd = e->tfd = -1;
    return (PyObject *)e;
}

static int Engine_traverse(Engine *e, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < e->n; i++) Py_VISIT(e->relays[i]);
    return 0;
}

/* An engine nobody can reach any more (no event loop watches it): its calls are over. */
static int Engine_tp_clear(Engine *e) {
    Py_XDECREF(Engine_close(e, NULL));
    return 0;
}

static void Engine_dealloc(Engine *e) {
    PyObject_GC_UnTrack(e);
    Py_XDECREF(Engine_close(e, NULL));
    if (e->epfd >= 0) close(e->epfd);
    if (e->sockfd >= 0) close(e->sockfd);
    if (e->tfd >= 0) close(e->tfd);
    PyMem_Free(e->relays);
    PyMem_Free(e->scratch);
    PyMem_Free(e->bounds);
    PyMem_Free(e->hist);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyMethodDef Engine_methods[] = {
    {"run", (PyCFunction)Engine_run, METH_NOARGS, "Handle ready sockets and due pacer slots (the fd's reader)."},
    {"fileno", (PyCFunction)Engine_fileno, METH_NOARGS, "The epoll descriptor to register as a reader."},
    {"take", (PyCFunction)Engine_take, METH_NOARGS, "Counters since the last call, then reset."},
    {"add", (PyCFunction)(void (*)(void))Engine_add, METH_VARARGS | METH_KEYWORDS, "Relay a call; returns a Relay."},
    {"close", (PyCFunction)Engine_close, METH_NOARGS, "Close every relayed socket."},
    {"active", (PyCFunction)Engine_len, METH_NOARGS, "How many calls are relayed."},
    {NULL}};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "avr_runtime.server._relay.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Engine_traverse,
    .tp_clear = (inquiry)Engine_tp_clear,
    .tp_doc = "Every relayed call of a worker, behind one epoll descriptor.",
    .tp_new = Engine_new,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

/* ---------------------------------------------------------------- Relay (one call) */

static int side_arg(PyObject *arg) {
    long w = PyLong_AsLong(arg);
    if (w == -1 && PyErr_Occurred()) return -1;
    if (w != SIDE_AS && w != SIDE_WS) {
        PyErr_SetString(PyExc_ValueError, "side must be 0 (AudioSocket) or 1 (WebSocket)");
        return -1;
    }
    return (int)w;
}

static PyObject *Relay_write(Relay *r, PyObject *args) {
    int w;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "iy*", &w, &data)) return NULL;
    if (w != SIDE_AS && w != SIDE_WS) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "side must be 0 (AudioSocket) or 1 (WebSocket)");
        return NULL;
    }
    Side *s = &r->side[w];
    if (w == SIDE_WS && data.len && ((uint8_t *)data.buf)[0] == 0x88) r->ws_close_sent = 1; /* no audio after close */
    if (data.len) side_write(s, data.buf, (size_t)data.len, 0);
    PyBuffer_Release(&data);
    if (s->err && !r->engine->in_run) { /* reported as the connection's loss on the next pass */
        s->lost = 1;
        engine_arm(r->engine, monotonic());
    }
    Py_RETURN_NONE;
}

/* Close one side now (pending output is tried once). True if it was open: the caller reports connection_lost. */
static PyObject *Relay_close(Relay *r, PyObject *arg) {
    int w = side_arg(arg);
    if (w < 0) return NULL;
    Side *s = &r->side[w];
    if (s->fd < 0) Py_RETURN_FALSE;
    side_flush(s);
    side_close_fd(s);
    s->lost = 0;
    s->err = 0;
    if (r->side[0].fd < 0 && r->side[1].fd < 0) {
        r->pacing = 0;
        if (!r->engine->in_run) engine_remove(r->engine, r);
        else engine_arm(r->engine, monotonic()); /* removed when the engine settles it */
    }
    Py_RETURN_TRUE;
}

static PyObject *Relay_is_open(Relay *r, PyObject *arg) {
    int w = side_arg(arg);
    if (w < 0) return NULL;
    return PyBool_FromLong(r->side[w].fd >= 0);
}

static PyObject *Relay_pause(Relay *r, PyObject *arg) {
    int w = side_arg(arg);
    if (w < 0) return NULL;
    r->side[w].paused = 1;
    Py_RETURN_NONE;
}

static PyObject *Relay_resume(Relay *r, PyObject *arg) {
    int w = side_arg(arg);
    if (w < 0) return NULL;
    r->side[w].paused = 0;
    Py_RETURN_NONE;
}

static PyObject *Relay_buffered(Relay *r, PyObject *arg) {
    int w = side_arg(arg);
    if (w < 0) return NULL;
    return PyLong_FromSize_t(r->side[w].out.len);
}

static PyObject *Relay_push(Relay *r, PyObject *arg) {
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) return NULL;
    relay_push(r, data.buf, (size_t)data.len, monotonic());
    PyBuffer_Release(&data);
    Py_RETURN_NONE;
}

/* The playout buffer's content at the handover: whole frames with their arrival times, then the partial frame. */
static PyObject *Relay_restore(Relay *r, PyObject *args) {
    PyObject *frames;
    Py_buffer partial;
    double partial_since;
    if (!PyArg_ParseTuple(args, "Oy*d", &frames, &partial, &partial_since)) return NULL;
    PyObject *seq = PySequence_Fast(frames, "frames must be a sequence of (bytes, float)");
    if (seq == NULL || partial.len >= FRAME) {
        if (seq != NULL) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "the partial frame must be shorter than a frame");
        }
        PyBuffer_Release(&partial);
        return NULL;
    }
    int dropped = 0;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        const char *data;
        Py_ssize_t len;
        double arrived;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "y#d", &data, &len, &arrived)) break;
        if (len != FRAME) {
            PyErr_SetString(PyExc_ValueError, "every frame must be 320 bytes");
            break;
        }
        dropped += playout_append(r, (const uint8_t *)data, arrived);
    }
    Py_DECREF(seq);
    if (!PyErr_Occurred()) {
        memcpy(r->partial, partial.buf, (size_t)partial.len);
        r->partial_len = (int)partial.len;
        r->partial_since = partial_since;
    }
    PyBuffer_Release(&partial);
    if (PyErr_Occurred()) return NULL;
    return PyLong_FromLong(dropped);
}

static PyObject *Relay_clear(Relay *r, PyObject *Py_UNUSED(ignored)) {
    int n = r->count;
    r->count = 0;
    r->head = 0;
    r->partial_len = 0;
    return PyLong_FromLong(n);
}

static PyObject *Relay_stop(Relay *r, PyObject *Py_UNUSED(ignored)) {
    r->pacing = 0;
    Py_RETURN_NONE;
}

static PyObject *Relay_get_frames_in(Relay *r, void *Py_UNUSED(closure)) {
    return PyLong_FromUnsignedLongLong(r->frames_in);
}

static PyObject *Relay_get_queued(Relay *r, void *Py_UNUSED(closure)) { return PyLong_FromLong(r->count); }

static PyObject *Relay_get_pacing(Relay *r, void *Py_UNUSED(closure)) { return PyBool_FromLong(r->pacing); }

static PyObject *Relay_get_first_audio(Relay *r, void *Py_UNUSED(closure)) { return PyFloat_FromDouble(r->first_audio); }

static void relay_release(Relay *r) {
    Py_CLEAR(r->side[0].protocol);
    Py_CLEAR(r->side[1].protocol);
    Py_CLEAR(r->opus_owner); /* the codec's state: used only while the caller's side is open */
}

/* tp_clear leaves the engine: the relay's sockets are closed through it when it is freed, and the engine's own
 * tp_clear breaks the cycle between the two. */
static int Relay_traverse(Relay *r, visitproc visit, void *arg) {
    Py_VISIT((PyObject *)r->engine);
    Py_VISIT(r->side[0].protocol);
    Py_VISIT(r->side[1].protocol);
    Py_VISIT(r->opus_owner);
    return 0;
}

static int Relay_tp_clear(Relay *r) {
    relay_release(r);
    return 0;
}

static void Relay_dealloc(Relay *r) {
    PyObject_GC_UnTrack(r);
    if (r->weakreflist != NULL) PyObject_ClearWeakRefs((PyObject *)r);
    for (int w = 0; w < 2; w++) {
        if (r->engine != NULL && r->side[w].fd >= 0) side_close_fd(&r->side[w]);
        buf_free(&r->side[w].in);
        buf_free(&r->side[w].out);
    }
    relay_release(r);
    PyMem_Free(r->frames);
    PyMem_Free(r->arrived);
    Py_XDECREF(r->engine);
    PyObject_GC_Del(r);
}

static PyMethodDef Relay_methods[] = {
    {"write", (PyCFunction)Relay_write, METH_VARARGS, "write(side, data): bytes after what is already queued."},
    {"close", (PyCFunction)Relay_close, METH_O, "close(side) -> True if the side was open."},
    {"is_open", (PyCFunction)Relay_is_open, METH_O, "is_open(side)"},
    {"pause", (PyCFunction)Relay_pause, METH_O, "pause(side): drop that side's input from now on (after an error)."},
    {"resume", (PyCFunction)Relay_resume, METH_O, "resume(side): parse that side's input again."},
    {"buffered", (PyCFunction)Relay_buffered, METH_O, "buffered(side): bytes not yet written."},
    {"push", (PyCFunction)Relay_push, METH_O, "Provider audio (PCM16 8 kHz) into the playout buffer."},
    {"restore", (PyCFunction)Relay_restore, METH_VARARGS, "restore(frames, partial, partial_since): queued audio."},
    {"clear", (PyCFunction)Relay_clear, METH_NOARGS, "Barge-in: forget queued audio; returns frames discarded."},
    {"stop", (PyCFunction)Relay_stop, METH_NOARGS, "Stop the pacer."},
    {NULL}};

static PyGetSetDef Relay_getset[] = {
    {"frames_in", (getter)Relay_get_frames_in, NULL, "Caller audio frames forwarded to the provider.", NULL},
    {"queued", (getter)Relay_get_queued, NULL, "Frames in the playout buffer.", NULL},
    {"pacing", (getter)Relay_get_pacing, NULL, "Whether the pacer runs.", NULL},
    {"first_audio", (getter)Relay_get_first_audio, NULL, "When provider audio first arrived (monotonic; 0: not yet).",
     NULL},
    {NULL}};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "avr_runtime.server._relay.Relay",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One relayed call: its two sockets, playout buffer and pacer.",
    .tp_dealloc = (destructor)Relay_dealloc,
    .tp_traverse = (traverseproc)Relay_traverse,
    .tp_clear = (inquiry)Relay_tp_clear,
    .tp_weaklistoffset = offsetof(Relay, weakreflist),
    .tp_methods = Relay_methods,
    .tp_getset = Relay_getset,
};

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT, "avr_runtime.server._relay", "The call data plane in C (see relay.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__relay(void) {
    memset(B64_INV, -1, sizeof B64_INV);
    for (int i = 0; i < 64; i++) B64_INV[(uint8_t)B64[i]] = (int8_t)i;
    if (PyType_Ready(&EngineType) < 0 || PyType_Ready(&RelayType) < 0) return NULL;
    PyObject *m = PyModule_Create(&relay_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Engine", (PyObject *)&EngineType) < 0 ||
        PyModule_AddObjectRef(m, "Relay", (PyObject *)&RelayType) < 0 || PyModule_AddIntConstant(m, "AS", SIDE_AS) < 0 ||
        PyModule_AddIntConstant(m, "WS", SIDE_WS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
