/* What the two compiled data planes share (server/_relay.c for the worker, reference/_echo.c for the reference
 * provider): growable byte buffers, a socket's queued output, handing bytes to a Python protocol, and reading a
 * WebSocket frame header.
 * Header-only, so each extension module stays one translation unit. */
#ifndef AVR_COMMON_H
#define AVR_COMMON_H

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

/* protocol.data_received(bytes): how the bytes the engine does not handle reach the Python protocol object. */
static int give_python_to(PyObject *protocol, const uint8_t *d, size_t n) {
    if (protocol == NULL) return 0; /* released by the collector (tp_clear): nobody is listening any more */
    PyObject *data = PyBytes_FromStringAndSize((const char *)d, (Py_ssize_t)n);
    if (data == NULL) return -1;
    PyObject *res = PyObject_CallMethod(protocol, "data_received", "O", data);
    Py_DECREF(data);
    if (res == NULL) {
        PyErr_WriteUnraisable(protocol);
        return -1;
    }
    Py_DECREF(res);
    return 0;
}

/* protocol.connection_lost(None), or with a ConnectionError for an errno. */
static void report_lost(PyObject *protocol, int err) {
    if (protocol == NULL) return;
    PyObject *exc = err ? PyObject_CallFunction(PyExc_ConnectionError, "is", err, strerror(err)) : Py_NewRef(Py_None);
    if (exc == NULL) {
        PyErr_Clear();
        exc = Py_NewRef(Py_None);
    }
    PyObject *res = PyObject_CallMethod(protocol, "connection_lost", "O", exc);
    Py_DECREF(exc);
    if (res == NULL) PyErr_WriteUnraisable(protocol);
    Py_XDECREF(res);
}

static int valid_opcode(int op) { return op <= 2 || (op >= 8 && op <= 10); }

/* A WebSocket frame's payload length (RFC 6455 5.2); returns the header's size up to the masking key, 0 while the
 * length is incomplete. At least 2 bytes are available. */
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

typedef size_t (*parse_fn)(void *owner, const uint8_t *p, size_t n);
typedef int (*stop_fn)(void *owner);

/* Read a socket until it would block or stop(owner) says so, `chunk` bytes at a time into `scratch`, each read
 * parsed after what `in` kept from the reads before: parse() returns how many bytes it used, and the rest (an
 * incomplete frame) waits in `in`. Returns 0 while the connection is open; at its end, an errno or -1 for the
 * peer's close, after handing an incomplete last frame to `protocol` (whose parser reports it). */
static int read_frames(int fd, uint8_t *scratch, size_t chunk, Buf *in, parse_fn parse, stop_fn stop, void *owner,
                       PyObject *protocol) {
    while (!stop(owner)) {
        ssize_t got = recv(fd, scratch, chunk, MSG_DONTWAIT);
        if (got < 0) {
            if (errno == EINTR) continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : errno;
        }
        if (got == 0) {
            if (in->len) give_python_to(protocol, in->data, in->len);
            in->len = 0;
            return -1;
        }
        const uint8_t *p = scratch;
        size_t n = (size_t)got;
        if (in->len) {
            if (buf_append(in, p, n) < 0) return ENOMEM;
            p = in->data;
            n = in->len;
        }
        size_t used = parse(owner, p, n);
        if (p == in->data) {
            buf_consume(in, used);
        } else if (used < n && buf_append(in, p + used, n - used) < 0) {
            return ENOMEM;
        }
        if ((size_t)got < chunk) return 0;
    }
    return 0;
}

#endif
