/* The skeleton both compiled engines hang their parsers on: read a socket, parse what came after what was kept
 * from before, and hand the bytes the engine does not handle to the Python protocol that owned the socket. */
#ifndef AVR_READER_H
#define AVR_READER_H

#include "buffer.h"

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
