/* The Relay type (one call, as Python sees it after the handover), the pacer's test object and the module. Part of
 * _relay.c. */

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
        r->pacer.running = 0;
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
        dropped += playout_append(&r->playout, (const uint8_t *)data, arrived);
    }
    Py_DECREF(seq);
    if (!PyErr_Occurred()) {
        memcpy(r->playout.partial, partial.buf, (size_t)partial.len);
        r->playout.partial_len = (int)partial.len;
        r->playout.partial_since = partial_since;
    }
    PyBuffer_Release(&partial);
    if (PyErr_Occurred()) return NULL;
    return PyLong_FromLong(dropped);
}

static PyObject *Relay_clear(Relay *r, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(playout_clear(&r->playout));
}

static PyObject *Relay_stop(Relay *r, PyObject *Py_UNUSED(ignored)) {
    r->pacer.running = 0;
    Py_RETURN_NONE;
}

static PyObject *Relay_get_frames_in(Relay *r, void *Py_UNUSED(closure)) {
    return PyLong_FromUnsignedLongLong(r->frames_in);
}

static PyObject *Relay_get_queued(Relay *r, void *Py_UNUSED(closure)) { return PyLong_FromLong(r->playout.count); }

static PyObject *Relay_get_pacing(Relay *r, void *Py_UNUSED(closure)) { return PyBool_FromLong(r->pacer.running); }

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
    playout_free(&r->playout);
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

/* ---------------------------------------------------------------- Pacer: the pacer's core on a clock of the caller's */

/* The pacer's pure core and a playout buffer of its own, stepped by hand with the time given: what the tests
 * replay the pacer's specification through (tests/vectors/pacer/), beside audio/pacer.py on the same virtual
 * clock. The engine's relays run this same core. */
typedef struct {
    PyObject_HEAD
    Pacer pacer;
    Playout playout;
    unsigned long long late, dropped_latency, dropped_overflow;
} PacerObject;

static int PacerObject_init(PacerObject *o, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"capacity", "period", "margin", "grace", "max_slew", "start", "drop_newest", NULL};
    int capacity, drop_newest = 0;
    double period, margin, grace, max_slew, start;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iddddd|p", kwlist, &capacity, &period, &margin, &grace, &max_slew,
                                     &start, &drop_newest))
        return -1;
    if (capacity < 1) {
        PyErr_SetString(PyExc_ValueError, "capacity must be positive");
        return -1;
    }
    playout_free(&o->playout);
    o->playout = (Playout){.capacity = capacity, .drop_newest = drop_newest};
    /* as Pacer.start: the first slot now, no send before it to keep a distance from */
    o->pacer = (Pacer){.running = 1, .period = period, .margin = margin, .grace_window = grace < 0 ? margin : grace,
                       .max_slew = max_slew, .next = start};
    o->late = o->dropped_latency = o->dropped_overflow = 0;
    return 0;
}

/* What a step played, as Pacer's send gets it: (frame, seconds it waited) or (None, None) for silence; None when
 * the step played nothing. */
static PyObject *pacer_object_result(PacerObject *o, const PacerStep *st) {
    o->late += (unsigned long long)st->late;
    o->dropped_latency += (unsigned long long)st->dropped_latency;
    o->dropped_overflow += (unsigned long long)st->dropped_overflow;
    if (!st->play) Py_RETURN_NONE;
    if (st->frame == NULL) return Py_BuildValue("(OO)", Py_None, Py_None);
    return Py_BuildValue("(y#d)", (const char *)st->frame, (Py_ssize_t)FRAME, st->waited);
}

static PyObject *PacerObject_tick(PacerObject *o, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    PacerStep st = {0};
    pacer_tick(&o->pacer, &o->playout, now, &st);
    return pacer_object_result(o, &st);
}

static PyObject *PacerObject_push(PacerObject *o, PyObject *args) {
    Py_buffer pcm;
    double now;
    if (!PyArg_ParseTuple(args, "y*d", &pcm, &now)) return NULL;
    PacerStep st = {0};
    pacer_push(&o->pacer, &o->playout, pcm.buf, (size_t)pcm.len, now, &st);
    PyBuffer_Release(&pcm);
    return pacer_object_result(o, &st);
}

static PyObject *PacerObject_get_next(PacerObject *o, void *Py_UNUSED(closure)) {
    return PyFloat_FromDouble(o->pacer.next);
}

static PyObject *PacerObject_get_queued(PacerObject *o, void *Py_UNUSED(closure)) {
    return PyLong_FromLong(o->playout.count);
}

static PyObject *PacerObject_get_counts(PacerObject *o, void *Py_UNUSED(closure)) {
    return Py_BuildValue("{sKsKsK}", "late", o->late, "dropped_latency", o->dropped_latency, "dropped_overflow",
                         o->dropped_overflow);
}

static void PacerObject_dealloc(PacerObject *o) {
    playout_free(&o->playout);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static PyMethodDef PacerObject_methods[] = {
    {"tick", (PyCFunction)PacerObject_tick, METH_O, "tick(now): the slot at `next` is due; what it played."},
    {"push", (PyCFunction)PacerObject_push, METH_VARARGS, "push(pcm, now): provider audio arrived; what it played."},
    {NULL}};

static PyGetSetDef PacerObject_getset[] = {
    {"next", (getter)PacerObject_get_next, NULL, "When the next slot is due.", NULL},
    {"queued", (getter)PacerObject_get_queued, NULL, "Whole frames in the playout buffer.", NULL},
    {"counts", (getter)PacerObject_get_counts, NULL, "Late slots and dropped frames so far.", NULL},
    {NULL}};

static PyTypeObject PacerObjectType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "avr_runtime.server._relay.Pacer",
    .tp_basicsize = sizeof(PacerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The relay's pacer and playout buffer, stepped by hand on a clock of the caller's (for tests).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)PacerObject_init,
    .tp_dealloc = (destructor)PacerObject_dealloc,
    .tp_methods = PacerObject_methods,
    .tp_getset = PacerObject_getset,
};

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT, "avr_runtime.server._relay", "The call data plane in C (see relay.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__relay(void) {
    b64_init();
    if (PyType_Ready(&EngineType) < 0 || PyType_Ready(&RelayType) < 0 || PyType_Ready(&PacerObjectType) < 0) return NULL;
    PyObject *m = PyModule_Create(&relay_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Engine", (PyObject *)&EngineType) < 0 ||
        PyModule_AddObjectRef(m, "Relay", (PyObject *)&RelayType) < 0 ||
        PyModule_AddObjectRef(m, "Pacer", (PyObject *)&PacerObjectType) < 0 || PyModule_AddIntConstant(m, "AS", SIDE_AS) < 0 ||
        PyModule_AddIntConstant(m, "WS", SIDE_WS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
