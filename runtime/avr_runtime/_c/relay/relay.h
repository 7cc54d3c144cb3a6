/* The data plane's own types: a call's two sockets (Side), the call (Relay: its sides, playout buffer, pacer and
 * caller leg) and the engine behind one epoll descriptor that carries every relayed call. Part of _relay.c, after
 * playout.c and pacer.c. */
#ifndef AVR_RELAY_H
#define AVR_RELAY_H

#include <time.h>

#define AS_MAX_AUDIO 1920   /* protocol/audiosocket.py MAX_AUDIO_PAYLOAD */
#define AS_MAX_OTHER 256    /* the largest valid non-audio AudioSocket payload (an error frame) */
#define OUT_CAP (64 * 1024) /* droppable audio is refused above this much unsent output (uvloop's high-water) */
#define READ_CHUNK (256 * 1024)
#define MAX_EVENTS 256
#define OPUS_MAX_PACKET (1275 * 3) /* audio/opus.py MAX_PACKET */
#define OPUS_MAX_SAMPLES 960       /* 120 ms at 8 kHz, the longest Opus packet: AS_MAX_AUDIO bytes of PCM */
#define SILENCE_SETTLE_FRAMES 5    /* server/stream.py */

static double monotonic(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

struct Engine;
struct Relay;

enum { SIDE_AS = 0, SIDE_WS = 1 };
enum { CALLER_AUDIOSOCKET = 0, CALLER_OPUS_STREAM = 1 };

typedef int32_t (*opus_encode_fn)(void *st, const int16_t *pcm, int frame_size, uint8_t *data, int32_t max_bytes);
typedef int (*opus_decode_fn)(void *st, const uint8_t *data, int32_t len, int16_t *pcm, int frame_size, int fec);

typedef struct {
    struct Relay *owner;
    int which;
    int fd;          /* -1 once closed */
    size_t cap;      /* droppable audio is refused while more than this waits unsent */
    uint32_t events; /* the epoll mask registered */
    PyObject *protocol;
    Buf in, out;
    int err;        /* errno of a failed write, reported at the end of the pass */
    int lost;       /* connection_lost is due (peer EOF or error) */
    int in_message; /* WS: a fragmented message is under way, so Python gets every frame until it ends */
    int paused;     /* Python stopped reading (a protocol error): input is read and dropped until the close */
} Side;

typedef struct Relay {
    PyObject_HEAD
    PyObject *weakreflist;
    struct Engine *engine;
    Py_ssize_t index; /* in engine->relays, -1 when not registered */
    Side side[2];
    Playout playout;
    Pacer pacer;
    /* the caller's leg */
    int caller;
    size_t caller_max;    /* stream leg: the largest message (server/stream.py MAX_MESSAGE) */
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
    int epfd;     /* what the event loop watches: the timer, and the sockets' epoll unless they are polled */
    int sockfd;   /* the relayed sockets */
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

static void engine_arm(Engine *e, double when);
static void engine_remove(Engine *e, Relay *r);
static void relay_release(Relay *r);

#endif
