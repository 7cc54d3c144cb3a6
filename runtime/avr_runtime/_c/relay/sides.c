/* A relayed call's two sockets: buffered non-blocking writes, the frames the engine sends (paced audio to the
 * caller, caller audio to the provider), and the parsers that take the fast path's frames out of what is read and
 * hand every other byte to the Python protocol that owned the socket. Part of _relay.c. */

static const char AUDIO_PREFIX[] = "{\"type\":\"audio\",\"audio\":\"";
static const char AUDIO_SUFFIX[] = "\"}";
#define PREFIX_LEN (sizeof(AUDIO_PREFIX) - 1)
#define SUFFIX_LEN (sizeof(AUDIO_SUFFIX) - 1)

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

/* ---------------------------------------------------------------- paced audio to the caller */

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
    uint8_t *h = ws_header(packet, 0x82, (size_t)len, NULL);
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

/* Carry out what a pacer step decided: the frame to the caller, the counters, the timer. */
static inline void relay_apply(Relay *r, const PacerStep *st) {
    Engine *e = r->engine;
    e->late += (unsigned long long)st->late;
    e->dropped_latency += (unsigned long long)st->dropped_latency;
    e->dropped_overflow += (unsigned long long)st->dropped_overflow;
    if (st->play) pacer_send(r, st->frame, st->waited);
    if (st->arm) engine_arm(e, r->pacer.next);
}

static void relay_tick(Relay *r, double now) {
    PacerStep st = {0};
    pacer_tick(&r->pacer, &r->playout, now, &st);
    relay_apply(r, &st);
}

static void relay_push(Relay *r, const uint8_t *pcm, size_t n, double now) {
    if (r->first_audio == 0.0 && n) r->first_audio = now;
    PacerStep st = {0};
    pacer_push(&r->pacer, &r->playout, pcm, n, now, &st);
    relay_apply(r, &st);
}

/* ---------------------------------------------------------------- caller audio to the provider */

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
    uint8_t *h = ws_header(p, 0x81, len, key); /* 7 bits of length up to 72 bytes of audio, else 16 */
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
        ClientFrame f;
        int whole = client_frame(p + pos, n - pos, r->caller_max, &f);
        if (whole == 0) break;
        if (whole < 0) { /* the header alone, for Python to refuse */
            give_python(s, p + pos, f.hdr);
            pos += f.hdr;
            continue;
        }
        if (f.op == 2 && f.fin && !s->in_message && f.len > 0 && f.len <= OPUS_MAX_PACKET) {
            uint8_t packet[OPUS_MAX_PACKET];
            int16_t pcm[OPUS_MAX_SAMPLES];
            for (size_t i = 0; i < f.len; i++) packet[i] = f.payload[i] ^ f.key[i & 3];
            int got = r->opus_decode(r->decoder, packet, (int32_t)f.len, pcm, OPUS_MAX_SAMPLES, 0);
            if (got > 0) {
                forward_audio(r, (const uint8_t *)pcm, (size_t)got * 2);
                pos += f.size;
                continue;
            }
        }
        give_python_frame(s, p + pos, f.size, f.op, f.fin);
        pos += f.size;
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

