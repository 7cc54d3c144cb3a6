/* Growable byte buffers, and a non-blocking socket's queued output built on them. Shared by both compiled data
 * planes (server/_relay.c, reference/_echo.c); header-only, so each module stays one translation unit and these
 * small functions stay inlinable in its hot path. */
#ifndef AVR_BUFFER_H
#define AVR_BUFFER_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

typedef struct {
    uint8_t *data;
    size_t len, cap;
} Buf;

static int buf_append(Buf *b, const uint8_t *d, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 512;
        while (cap < b->len + n) cap *= 2;
        uint8_t *p = PyMem_Realloc(b->data, cap);
        if (p == NULL) return -1;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, d, n);
    b->len += n;
    return 0;
}

static void buf_consume(Buf *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

static void buf_free(Buf *b) {
    PyMem_Free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* A non-blocking socket's output, in order: what cannot be sent now waits in ``out`` behind what already does. A
 * failed send leaves its errno in ``*err``. Returns 1 when bytes were queued (the caller then watches EPOLLOUT). */
static int out_write(int fd, Buf *out, int *err, const uint8_t *d, size_t n) {
    if (out->len == 0) {
        ssize_t r = send(fd, d, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r == (ssize_t)n) return 0;
        if (r < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                *err = errno;
                return 0;
            }
            r = 0;
        }
        d += r;
        n -= (size_t)r;
    }
    if (buf_append(out, d, n) < 0) {
        *err = ENOMEM;
        return 0;
    }
    return 1;
}

/* Send what waits in ``out`` until it is empty, the socket is full, or a send fails (its errno in ``*err``). */
static void out_flush(int fd, Buf *out, int *err) {
    while (out->len) {
        ssize_t r = send(fd, out->data, out->len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) *err = errno;
            return;
        }
        buf_consume(out, (size_t)r);
    }
}

#endif
