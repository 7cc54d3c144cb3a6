/* The reference echo STS provider's data plane in C: audio messages go back without waking Python.
 *
 * Why: bench/runtime_load.py runs this provider on the load generator's core, so what it costs per message is
 * taken from the load side that times the worker. On the asyncio Protocol server each echoed message runs Python
 * (a read callback, the frame parser, a bytes object, a transport write), and at hundreds of sessions that took
 * much of the load core (figures: bench/README.md). Here one readable descriptor stands for every session's
 * socket, and an audio message is unmasked into its reply frame and written in C.
 *
 * What is done here, and nothing more: a whole, unfragmented text message from the client that begins with
 * {"type":"audio" is sent back as one unmasked frame, which is what reference/echo.py's EchoSession does with it.
 * Every other byte (init, DTMF, anything else, pings, close, fragments, frames that break RFC 6455) goes as it came
 * to the session's Python protocol (its data_received), which stays in charge of them; its writes go through
 * Conn.write, behind what the engine already queued.
 *
 */
#include "buffer.h"
#include "reader.h"
#include "websocket.h"

#include <sys/epoll.h>
#include <unistd.h>

#define READ_CHUNK (64 * 1024)
#define OUT_CAP (1024 * 1024) /* a client that does not read: stop reading from it while this much waits unsent */
#define MAX_EVENTS 256
#define MAX_ROUNDS 8 /* epoll_wait calls per run while every event slot comes back full */

static const char AUDIO_PREFIX[] = "{\"type\":\"audio\"";
#define PREFIX_LEN (sizeof(AUDIO_PREFIX) - 1)

struct Echo;

typedef struct Conn {
    PyObject_HEAD
    PyObject *weakreflist;
    struct Echo *echo;
    Py_ssize_t index; /* in echo->conns, -1 once it left */
    int fd;           /* -1 once closed */
    uint32_t events;  /* the epoll mask registered */
    PyObject *protocol;
    Buf in, out;
    int err;        /* errno of a failed read or write, reported at the end of the pass */
    int lost;       /* connection_lost is due (peer EOF or error) */
    int closing;    /* Python closed it: the descriptor closes once what is queued is written */
    int in_message; /* a fragmented message is under way: Python gets every frame until it ends */
} Conn;

typedef struct Echo {
    PyObject_HEAD
    int sockfd; /* the sessions' sockets: the event loop watches this epoll descriptor */
    Conn **conns;
    Py_ssize_t n, cap;
    size_t max_message;
    uint8_t *scratch;
    unsigned long long echoed;
} Echo;

static PyTypeObject EchoType;
static PyTypeObject ConnType;

/* ---------------------------------------------------------------- socket I/O */

static void conn_set_events(Conn *c) {
    if (c->fd < 0) return;
    uint32_t events = (c->closing || c->out.len > OUT_CAP ? 0 : EPOLLIN) | (c->out.len ? EPOLLOUT : 0);
    if (events == c->events) return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(c->echo->sockfd, EPOLL_CTL_MOD, c->fd, &ev) == 0) c->events = events;
}

static void conn_close_fd(Conn *c) {
    if (c->fd < 0) return;
    epoll_ctl(c->echo->sockfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    buf_free(&c->out);
}

static void conn_write(Conn *c, const uint8_t *d, size_t n) {
    if (c->fd >= 0 && !c->err && out_write(c->fd, &c->out, &c->err, d, n)) conn_set_events(c);
}

static void conn_flush(Conn *c) {
    if (c->fd >= 0) out_flush(c->fd, &c->out, &c->err);
    conn_set_events(c);
}

/* ---------------------------------------------------------------- frames */

static int conn_gone(Conn *c) { return c->fd < 0 || c->lost || c->closing; }

static void give_python(Conn *c, const uint8_t *d, size_t n) { give_python_to(c->protocol, d, n); }

/* The reply to an audio message: the same text, unmasked, in one server frame. */
static void echo_audio(Conn *c, const uint8_t *key, const uint8_t *payload, size_t len) {
    uint8_t stack[4096];
    size_t hdr = ws_header_size(len, 0);
    uint8_t *frame = hdr + len <= sizeof stack ? stack : PyMem_Malloc(hdr + len);
    if (frame == NULL) {
        c->err = ENOMEM;
        return;
    }
    ws_header(frame + hdr, 0x81, len, NULL);
    for (size_t i = 0; i < len; i++) frame[hdr + i] = payload[i] ^ key[i & 3];
    conn_write(c, frame, hdr + len);
    if (frame != stack) PyMem_Free(frame);
    c->echo->echoed++;
}

static int is_audio(const uint8_t *key, const uint8_t *payload, uint64_t len) {
    if (len < PREFIX_LEN) return 0;
    for (size_t i = 0; i < PREFIX_LEN; i++)
        if ((payload[i] ^ key[i & 3]) != (uint8_t)AUDIO_PREFIX[i]) return 0;
    return 1;
}

/* Client frames: returns how many bytes were used (the rest is an incomplete frame). A parse_fn for read_frames. */
static size_t parse(void *owner, const uint8_t *p, size_t n) {
    Conn *c = owner;
    size_t pos = 0;
    while (n - pos >= 2 && !conn_gone(c)) {
        ClientFrame f;
        int whole = client_frame(p + pos, n - pos, c->echo->max_message, &f);
        if (whole == 0) break;
        if (whole < 0) { /* the header alone, for Python to refuse */
            give_python(c, p + pos, f.hdr);
            pos += f.hdr;
            continue;
        }
        if (f.op == 1 && f.fin && !c->in_message && is_audio(f.key, f.payload, f.len)) {
            echo_audio(c, f.key, f.payload, (size_t)f.len);
        } else { /* a fragmented message is followed to its end: all its frames are Python's */
            if (f.op == 1 || f.op == 2) c->in_message = !f.fin;
            else if (f.op == 0 && f.fin) c->in_message = 0;
            give_python(c, p + pos, f.size);
        }
        pos += f.size;
    }
    return conn_gone(c) ? n : pos;
}

static int conn_stop_reading(void *owner) {
    Conn *c = owner;
    return c->fd < 0 || c->closing || c->out.len > OUT_CAP;
}

static void conn_read(Conn *c) {
    int end = read_frames(c->fd, c->echo->scratch, READ_CHUNK, &c->in, parse, conn_stop_reading, c, c->protocol);
    if (end) {
        c->lost = 1;
        if (end > 0) c->err = end;
    }
}

/* ---------------------------------------------------------------- Echo */

static void echo_remove(Echo *e, Conn *c) {
    if (c->index < 0) return;
    Py_ssize_t i = c->index;
    e->conns[i] = e->conns[e->n - 1];
    e->conns[i]->index = i;
    e->n--;
    c->index = -1;
    Py_CLEAR(c->protocol); /* closed and reported: the session's protocol and transport are free to go */
    Py_DECREF(c);
}

/* End of a pass: connection_lost for a session whose peer went, the descriptor of one Python closed once its
 * output is written (or cannot be). */
static void conn_settle(Conn *c) {
    if (c->fd >= 0 && c->closing && (c->out.len == 0 || c->err || c->lost)) {
        conn_close_fd(c);
    } else if (c->fd >= 0 && (c->lost || c->err)) {
        int err = c->err;
        conn_close_fd(c);
        report_lost(c->protocol, err);
    }
    if (c->fd < 0) echo_remove(c->echo, c);
}

static PyObject *Echo_run(Echo *e, PyObject *Py_UNUSED(ignored)) {
    struct epoll_event evs[MAX_EVENTS];
    for (int round = 0; round < MAX_ROUNDS; round++) {
        int n = epoll_wait(e->sockfd, evs, MAX_EVENTS, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        Conn *touched[MAX_EVENTS]; /* each stays alive until it is settled */
        for (int i = 0; i < n; i++) {
            Conn *c = evs[i].data.ptr;
            touched[i] = (Conn *)Py_NewRef(c);
            if (c->fd < 0) continue; /* closed by an earlier callback in this pass */
            if (evs[i].events & EPOLLOUT) conn_flush(c);
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) conn_read(c);
            if (evs[i].events & (EPOLLHUP | EPOLLERR) && c->fd >= 0) c->lost = 1; /* read what was left, if any */
        }
        for (int i = 0; i < n; i++) {
            conn_settle(touched[i]);
            Py_DECREF(touched[i]);
        }
        if (n < MAX_EVENTS) break;
    }
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Echo_add(Echo *e, PyObject *args) {
    int fd;
    PyObject *protocol;
    if (!PyArg_ParseTuple(args, "iO", &fd, &protocol)) return NULL;
    if (e->scratch == NULL) {
        PyErr_SetString(PyExc_ValueError, "the echo engine is closed");
        return NULL;
    }
    Conn *c = PyObject_GC_New(Conn, &ConnType);
    if (c == NULL) return NULL;
    memset((char *)c + sizeof(PyObject), 0, sizeof(Conn) - sizeof(PyObject));
    PyObject_GC_Track(c);
    c->echo = (Echo *)Py_NewRef(e);
    c->index = -1;
    c->fd = -1;
    c->protocol = Py_NewRef(protocol);
    if (e->n == e->cap) {
        Py_ssize_t cap = e->cap ? e->cap * 2 : 64;
        Conn **p = PyMem_Realloc(e->conns, (size_t)cap * sizeof(Conn *));
        if (p == NULL) {
            Py_DECREF(c);
            return PyErr_NoMemory();
        }
        e->conns = p;
        e->cap = cap;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(e->sockfd, EPOLL_CTL_ADD, fd, &ev) < 0) { /* the descriptor stays the caller's */
        Py_DECREF(c);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    c->fd = fd;
    c->events = EPOLLIN;
    c->index = e->n;
    e->conns[e->n++] = (Conn *)Py_NewRef(c);
    return (PyObject *)c;
}

static PyObject *Echo_take(Echo *e, PyObject *Py_UNUSED(ignored)) {
    unsigned long long echoed = e->echoed;
    e->echoed = 0;
    return PyLong_FromUnsignedLongLong(echoed);
}

static PyObject *Echo_fileno(Echo *e, PyObject *Py_UNUSED(ignored)) { return PyLong_FromLong(e->sockfd); }

static PyObject *Echo_len(Echo *e, PyObject *Py_UNUSED(ignored)) { return PyLong_FromSsize_t(e->n); }

static PyObject *Echo_close(Echo *e, PyObject *Py_UNUSED(ignored)) {
    while (e->n) {
        Conn *c = (Conn *)Py_NewRef(e->conns[e->n - 1]);
        conn_close_fd(c);
        echo_remove(e, c);
        Py_DECREF(c);
    }
    Py_RETURN_NONE;
}

static int Echo_init(Echo *e, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"max_message", NULL};
    Py_ssize_t max_message;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n", kwlist, &max_message)) return -1;
    if (max_message < 1) {
        PyErr_SetString(PyExc_ValueError, "max_message must be positive");
        return -1;
    }
    if (e->scratch != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Echo is initialised once");
        return -1;
    }
    e->max_message = (size_t)max_message;
    e->scratch = PyMem_Malloc(READ_CHUNK);
    if (e->scratch == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    e->sockfd = epoll_create1(EPOLL_CLOEXEC);
    if (e->sockfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *Echo_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds)) {
    Echo *e = (Echo *)type->tp_alloc(type, 0);
    if (e != NULL) e->sockfd = -1;
    return (PyObject *)e;
}

static int Echo_traverse(Echo *e, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < e->n; i++) Py_VISIT(e->conns[i]);
    return 0;
}

static int Echo_tp_clear(Echo *e) {
    Py_XDECREF(Echo_close(e, NULL));
    return 0;
}

static void Echo_dealloc(Echo *e) {
    PyObject_GC_UnTrack(e);
    Py_XDECREF(Echo_close(e, NULL));
    if (e->sockfd >= 0) close(e->sockfd);
    PyMem_Free(e->conns);
    PyMem_Free(e->scratch);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyMethodDef Echo_methods[] = {
    {"run", (PyCFunction)Echo_run, METH_NOARGS, "Handle the ready sockets (the descriptor's reader)."},
    {"fileno", (PyCFunction)Echo_fileno, METH_NOARGS, "The epoll descriptor to register as a reader."},
    {"add", (PyCFunction)Echo_add, METH_VARARGS, "add(fd, protocol) -> Conn: a session's socket, after the handshake."},
    {"take", (PyCFunction)Echo_take, METH_NOARGS, "Audio messages echoed since the last call."},
    {"active", (PyCFunction)Echo_len, METH_NOARGS, "How many sessions are here."},
    {"close", (PyCFunction)Echo_close, METH_NOARGS, "Close every session's socket."},
    {NULL}};

static PyTypeObject EchoType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "avr_runtime.reference._echo.Echo",
    .tp_basicsize = sizeof(Echo),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Echo_traverse,
    .tp_clear = (inquiry)Echo_tp_clear,
    .tp_doc = "Every STS session of a reference provider past its handshake, behind one descriptor.",
    .tp_new = Echo_new,
    .tp_init = (initproc)Echo_init,
    .tp_dealloc = (destructor)Echo_dealloc,
    .tp_methods = Echo_methods,
};

/* ---------------------------------------------------------------- Conn (one session) */

static PyObject *Conn_write(Conn *c, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    if (!c->closing) conn_write(c, b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    Py_RETURN_NONE;
}

static PyObject *Conn_close(Conn *c, PyObject *Py_UNUSED(ignored)) {
    if (c->fd < 0 || c->closing) Py_RETURN_FALSE;
    c->closing = 1;
    conn_flush(c);
    if (c->out.len == 0 || c->err) { /* else its descriptor closes once the rest is written */
        conn_close_fd(c);
        echo_remove(c->echo, c);
    }
    Py_RETURN_TRUE;
}

static PyObject *Conn_is_open(Conn *c, PyObject *Py_UNUSED(ignored)) {
    return PyBool_FromLong(c->fd >= 0 && !c->closing && !c->lost && !c->err);
}

static PyObject *Conn_buffered(Conn *c, PyObject *Py_UNUSED(ignored)) { return PyLong_FromSize_t(c->out.len); }

/* tp_clear leaves the engine: the socket is closed through it when the connection is freed, and the engine's
 * own tp_clear breaks the cycle between the two. */
static int Conn_traverse(Conn *c, visitproc visit, void *arg) {
    Py_VISIT((PyObject *)c->echo);
    Py_VISIT(c->protocol);
    return 0;
}

static int Conn_tp_clear(Conn *c) {
    Py_CLEAR(c->protocol);
    return 0;
}

static void Conn_dealloc(Conn *c) {
    PyObject_GC_UnTrack(c);
    if (c->weakreflist != NULL) PyObject_ClearWeakRefs((PyObject *)c);
    if (c->echo != NULL && c->fd >= 0) conn_close_fd(c);
    buf_free(&c->in);
    buf_free(&c->out);
    Py_CLEAR(c->protocol);
    Py_XDECREF(c->echo);
    PyObject_GC_Del(c);
}

static PyMethodDef Conn_methods[] = {
    {"write", (PyCFunction)Conn_write, METH_O, "Bytes after what is already queued."},
    {"close", (PyCFunction)Conn_close, METH_NOARGS, "Close after what is queued; True if it was open."},
    {"is_open", (PyCFunction)Conn_is_open, METH_NOARGS, "Neither closed nor lost."},
    {"buffered", (PyCFunction)Conn_buffered, METH_NOARGS, "Bytes not yet written."},
    {NULL}};

static PyTypeObject ConnType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "avr_runtime.reference._echo.Conn",
    .tp_basicsize = sizeof(Conn),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One STS session's socket in the echo engine.",
    .tp_dealloc = (destructor)Conn_dealloc,
    .tp_traverse = (traverseproc)Conn_traverse,
    .tp_clear = (inquiry)Conn_tp_clear,
    .tp_weaklistoffset = offsetof(Conn, weakreflist),
    .tp_methods = Conn_methods,
};

static struct PyModuleDef echo_module = {
    PyModuleDef_HEAD_INIT, "avr_runtime.reference._echo", "The echo STS provider's data plane in C (sts_server.py).",
    -1, NULL,
};

PyMODINIT_FUNC PyInit__echo(void) {
    if (PyType_Ready(&EchoType) < 0 || PyType_Ready(&ConnType) < 0) return NULL;
    PyObject *m = PyModule_Create(&echo_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Echo", (PyObject *)&EchoType) < 0 ||
        PyModule_AddObjectRef(m, "Conn", (PyObject *)&ConnType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
