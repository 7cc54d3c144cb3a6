/* The engine: one epoll descriptor on the event loop for every relayed call, a timer for their pacer slots, and
 * the pass (Engine.run) that reads ready sockets, plays due slots and settles the calls that ended. Part of
 * _relay.c. */

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
        r->pacer.running = 0;
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
        if (!r->pacer.running || r->side[SIDE_AS].fd < 0) continue;
        if (r->pacer.next <= now) relay_tick(r, now);
        if (soonest == 0.0 || r->pacer.next < soonest) soonest = r->pacer.next;
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

/* One of Engine.add's dicts, parsed as keyword arguments are (its keys checked, their types converted): ``what``
 * names it in errors. */
static int parse_dict(PyObject *d, const char *what, const char *format, char **keys, ...) {
    if (!PyDict_Check(d)) {
        PyErr_Format(PyExc_TypeError, "%s must be a dict", what);
        return 0;
    }
    PyObject *none = PyTuple_New(0);
    if (none == NULL) return 0;
    va_list va;
    va_start(va, keys);
    int ok = PyArg_VaParseTupleAndKeywords(none, d, format, keys, va);
    va_end(va);
    Py_DECREF(none);
    return ok;
}

/* Engine.add(caller, provider, playout, pacer): each leg's socket and protocol (and the caller leg's codec and
 * bounds), the playout buffer's settings, and the pacer's settings with the state it carries on from (_relay.pyi
 * documents the keys). */
static PyObject *Engine_add(Engine *e, PyObject *args) {
    static char *caller_keys[] = {"fd", "protocol", "opus", "silent_frames", "silence_packet", "out_cap",
                                  "max_message", NULL};
    static char *provider_keys[] = {"fd", "protocol", NULL};
    static char *playout_keys[] = {"capacity", "drop_newest", NULL};
    static char *pacer_keys[] = {"next_slot",   "earliest",    "period",        "margin",      "max_slew",
                                 "grace_window", "talking",    "grace",         "draining",    "backlog_ticks",
                                 "backlog_min", "backlog_max", "hiccup",        NULL};
    PyObject *caller, *provider, *playout, *pacer;
    if (!PyArg_ParseTuple(args, "OOOO:add", &caller, &provider, &playout, &pacer)) return NULL;
    int as_fd, ws_fd, capacity, drop_newest = 0, talking = 0, grace = 0, draining = 0;
    int backlog_ticks = 0, backlog_min = 0, backlog_max = 0, hiccup = 0, silent_frames = 0;
    PyObject *as_proto, *ws_proto, *opus = Py_None;
    Py_buffer silence = {0};
    Py_ssize_t out_cap = OUT_CAP, max_message = 64 * 1024;
    unsigned long long enc_fn = 0, enc = 0, dec_fn = 0, dec = 0;
    double next, earliest, period, margin, max_slew, grace_window = -1.0; /* < 0: the margin, as Pacer's default */
    if (!parse_dict(provider, "provider", "iO:provider", provider_keys, &ws_fd, &ws_proto) ||
        !parse_dict(playout, "playout", "i|p:playout", playout_keys, &capacity, &drop_newest) ||
        !parse_dict(pacer, "pacer", "ddddd|dpppiiii:pacer", pacer_keys, &next, &earliest, &period, &margin, &max_slew,
                    &grace_window, &talking, &grace, &draining, &backlog_ticks, &backlog_min, &backlog_max, &hiccup) ||
        !parse_dict(caller, "caller", "iO|Oiy*nn:caller", caller_keys, &as_fd, &as_proto, &opus, &silent_frames,
                    &silence, &out_cap, &max_message))
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
    r->playout.capacity = capacity;
    r->playout.drop_newest = drop_newest;
    r->pacer = (Pacer){
        .running = 1,
        .period = period,
        .margin = margin,
        .grace_window = grace_window < 0 ? margin : grace_window,
        .max_slew = max_slew,
        .next = next,
        .earliest = earliest,
        .talking = talking,
        .grace = grace,
        .draining = draining,
        .backlog_ticks = backlog_ticks,
        .backlog_min = backlog_min,
        .backlog_max = backlog_max,
        .hiccup = hiccup,
    };
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
    {"add", (PyCFunction)Engine_add, METH_VARARGS, "add(caller, provider, playout, pacer) -> Relay: relay a call."},
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

