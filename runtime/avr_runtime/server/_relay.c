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
 * pacer (ports of audio/buffer.py's PlayoutBuffer and audio/pacer.py's Pacer: keep them in step), and buffered
 * non-blocking writes. Every other byte is handed, as raw protocol bytes, to the Python protocol object that owned
 * the socket before (its data_received), which stays the one place where protocol rules, DTMF, hang-ups, provider
 * events, pings and close handshakes are handled. Python writes go through Relay.write.
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
 *
 * The module is one translation unit made of its parts, each by concern, in the order they build on each other (as
 * redis builds ae.c from ae_epoll.c and its siblings): the shared byte buffers, WebSocket framing and read loop
 * (avr_runtime/_c/, shared with the echo engine), then this module's own, under avr_runtime/_c/relay/. One unit
 * keeps the hot path's small functions inlinable across the parts and every helper static.
 */
#include "buffer.h"
#include "reader.h"
#include "websocket.h"

#include <math.h>
#include <stdarg.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "relay/base64.c"   /* base64 of STS audio messages */
#include "relay/playout.c"  /* the playout buffer: provider audio re-framed, pure */
#include "relay/pacer.c"    /* the pacer's decisions, pure */
#include "relay/relay.h"    /* Side, Relay, Engine */
#include "relay/sides.c"    /* a call's sockets: writes, the frames sent, the parsers */
#include "relay/engine.c"   /* the engine: its pass over ready sockets and due slots, Engine */
#include "relay/bindings.c" /* Relay, the pacer's test object, the module */
