/* WebSocket framing (RFC 6455 5.2) for both compiled data planes: reading a frame header, checking a client's, and
 * the one header writer every frame they send goes through. */
#ifndef AVR_WEBSOCKET_H
#define AVR_WEBSOCKET_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static int valid_opcode(int op) { return op <= 2 || (op >= 8 && op <= 10); }

/* A WebSocket frame's payload length; returns the header's size up to the masking key, 0 while the length is
 * incomplete. At least 2 bytes are available. */
static size_t frame_length(const uint8_t *p, size_t n, uint64_t *len) {
    *len = p[1] & 0x7F;
    if (*len == 126) {
        if (n < 4) return 0;
        *len = (uint64_t)p[2] << 8 | p[3];
        return 4;
    }
    if (*len == 127) {
        if (n < 10) return 0;
        *len = 0;
        for (int i = 0; i < 8; i++) *len = *len << 8 | p[2 + i];
        return 10;
    }
    return 2;
}

/* Whether a client frame's header breaks RFC 6455 or the size limit: RSV bits without an extension, no mask, an
 * unknown opcode, a fragmented or long control frame, a payload above max. Python's parser, given the header
 * alone, refuses it with the right close code. */
static int bad_client_header(uint8_t b0, uint8_t b1, uint64_t len, size_t max) {
    int fin = b0 & 0x80, op = b0 & 0x0F;
    return (b0 & 0x70) || !(b1 & 0x80) || !valid_opcode(op) || (op >= 8 && (!fin || len > 125)) || len > max;
}

/* A whole client frame at the front of the input. */
typedef struct {
    int fin, op;
    uint64_t len;        /* the payload's */
    size_t hdr, size;    /* the header's (up to the masking key, or past it in a whole frame), the frame's */
    const uint8_t *key, *payload;
} ClientFrame;

/* Where every parser of client frames starts (at least 2 bytes available): 1 for a whole frame in ``f``, 0 while
 * it is incomplete, -1 for a header that breaks the rules or the size limit (``f->hdr`` bytes, which the caller
 * hands alone to Python's parser, which refuses them with the right close code). */
static int client_frame(const uint8_t *p, size_t n, size_t max, ClientFrame *f) {
    uint8_t b0 = p[0], b1 = p[1];
    f->fin = b0 & 0x80;
    f->op = b0 & 0x0F;
    f->hdr = frame_length(p, n, &f->len);
    if (f->hdr == 0) return 0;
    if (bad_client_header(b0, b1, f->len, max)) return -1;
    f->hdr += 4; /* the masking key */
    if (n < f->hdr || n - f->hdr < f->len) return 0;
    f->key = p + f->hdr - 4;
    f->payload = p + f->hdr;
    f->size = f->hdr + (size_t)f->len;
    return 1;
}

/* The size of the header of a frame of ``len`` payload bytes: the length in as few bytes as it takes, then the
 * masking key of a client frame. */
static size_t ws_header_size(size_t len, int masked) {
    return (size_t)((len < 126 ? 2 : len < 65536 ? 4 : 10) + (masked ? 4 : 0));
}

/* Write the header of a frame whose payload starts at ``payload``, in the bytes just before it, and return where
 * the frame starts: the payload is built first, at a fixed place, whatever its length turns out to be. ``first``
 * is the FIN bit and opcode; ``key`` is the masking key of a client frame (the payload already masked with it),
 * NULL for a server frame. */
static inline uint8_t *ws_header(uint8_t *payload, uint8_t first, size_t len, const uint8_t *key) {
    uint8_t *h = payload - ws_header_size(len, key != NULL);
    uint8_t mask = key != NULL ? 0x80 : 0;
    h[0] = first;
    if (len < 126) {
        h[1] = (uint8_t)(mask | len);
    } else if (len < 65536) {
        h[1] = (uint8_t)(mask | 126);
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
    } else {
        h[1] = (uint8_t)(mask | 127);
        for (int i = 0; i < 8; i++) h[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    }
    if (key != NULL) memcpy(payload - 4, key, 4);
    return h;
}

#endif
