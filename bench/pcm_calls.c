/* The PCM load generator of bench/runtime_load.py, in C: N paced AudioSocket calls, every echo matched and timed.
 *
 * Why C: at 500 calls the Python generator (runtime_load.PcmCall) used about 45 % of the load core, a third of it
 * in Python, and it shares that core with the echo provider. Past about 70 % busy, that core returns echoes late,
 * and the bench charged the delay to the worker as latency. The behaviour is PcmCall's, so the two can be compared
 * (runtime_load.py --generator python): the same frames (a 3-byte header, then sequence number and send time in
 * the first 12 bytes of the payload, little-endian, then a quiet filler), the same probe before streaming, senders
 * due in the same millisecond sent together, a stalled sender restarting its grid, the same measurement window.
 *
 * Usage: pcm_calls HOST PORT CALLS FRAMES WARMUP_NS SECONDS_NS SERVER_SPEAKS_FIRST OUT [FRAMES_OUT]
 * stdout: "window START END" once the calls are connected and streaming is about to start (monotonic ns), then
 * "done FAILED LOST MEASURED SILENCE GAPS LATE RTTS LAGS". OUT gets the RTTs then the send lags, as int64 ns.
 * FRAMES_OUT, if given, gets one record per echoed frame sent in the window, in arrival order: send time (ns since
 * the window's start), RTT (ns) and call index, as three int64 (bench/episodes.py reads it).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define PERIOD_NS 20000000LL
#define PAYLOAD 320
#define FRAME_LEN (3 + PAYLOAD)
#define STAMP_LEN 12
#define PROBE_SEQ 0xFFFFFFFFu
#define LATE_ABOVE_NS 25000000LL
#define LATE_BELOW_NS 15000000LL
#define LOSS_GRACE_NS 200000000LL
#define SETTLE_NS 300000000LL
#define TAIL_NS 300000000LL
#define PROBE_TIMEOUT_NS 15000000000LL
#define START_DELAY_NS 50000000LL
#define FAR (1LL << 62)
#define INBUF 8192
#define TIMER_KEY UINT32_MAX

typedef struct {
    int fd;
    int probe_sent, probed, hung_up, eof, errors;
    uint32_t seq;
    int64_t due;
    int64_t first_measured, last_measured; /* sequence numbers; 0 / -1 when none */
    uint8_t *received;                     /* [frames + 1] */
    int64_t silence;
    int64_t last_arrival; /* the previous arrival inside the window, 0 before the first */
    int64_t gaps, late;
    size_t len;
    uint8_t in[INBUF];
} Call;

static Call *calls;
static long ncalls, frames;
static int speaks_first, epfd, sockep;
static int64_t real_offset; /* CLOCK_REALTIME - CLOCK_MONOTONIC, for the kernel's receive timestamps */
static int64_t win_start = FAR, win_end = FAR, loss_end = FAR;
static int64_t *rtts, *lags;
static size_t nrtt, nlag;
static uint8_t filler[PAYLOAD - STAMP_LEN];

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void put_le(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* One frame, whole or not at all: a socket that cannot take 323 bytes has a peer that stopped reading. */
static void send_frame(Call *c, uint32_t seq, int64_t stamp) {
    uint8_t f[FRAME_LEN] = {0x10, PAYLOAD >> 8, PAYLOAD & 0xFF};
    put_le(f + 3, seq, 4);
    put_le(f + 7, (uint64_t)stamp, 8);
    memcpy(f + 3 + STAMP_LEN, filler, sizeof filler);
    if (send(c->fd, f, sizeof f, MSG_NOSIGNAL) != (ssize_t)sizeof f) c->errors++;
}

static void send_probe(Call *c) {
    if (c->probe_sent || c->fd < 0) return;
    c->probe_sent = 1;
    send_frame(c, PROBE_SEQ, now_ns());
}

static FILE *frames_out;

static void on_audio(Call *c, const uint8_t *p, int64_t now) {
    int in_window = win_start <= now && now <= win_end;
    if (in_window) {
        if (c->last_arrival) {
            int64_t gap = now - c->last_arrival;
            c->gaps++;
            if (gap > LATE_ABOVE_NS || gap < LATE_BELOW_NS) c->late++;
        }
        c->last_arrival = now;
    }
    uint32_t seq = (uint32_t)get_le(p, 4);
    int64_t sent = (int64_t)get_le(p + 4, 8);
    if (seq == 0) { /* the worker's own silence */
        if (in_window) c->silence++;
        send_probe(c);
        return;
    }
    if (seq == PROBE_SEQ) {
        c->probed = 1;
        return;
    }
    if (seq <= (uint32_t)frames) c->received[seq] = 1;
    if (win_start <= sent && sent <= win_end && nrtt < (size_t)(ncalls * frames)) rtts[nrtt++] = now - sent;
    if (frames_out != NULL && win_start <= sent && sent <= win_end) {
        int64_t record[3] = {sent - win_start, now - sent, c - calls};
        fwrite(record, sizeof record, 1, frames_out);
    }
}

static void close_call(Call *c) {
    if (c->fd < 0) return;
    epoll_ctl(sockep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

/* The sockets are read every millisecond, not when data arrives: a sleeping generator woken by every echo made
 * the servers under test pay for waking its core (a cross-core interrupt, charged to the sender on this VM). Each
 * read is timed by the kernel's receive timestamp (SO_TIMESTAMPNS), so polling does not delay what is measured. */
static void on_readable(Call *c) {
    for (;;) {
        char control[CMSG_SPACE(sizeof(struct timespec))];
        struct iovec iov = {.iov_base = c->in + c->len, .iov_len = INBUF - c->len};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
        ssize_t got = recvmsg(c->fd, &msg, 0);
        if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
            if (!c->hung_up) c->eof = 1;
            close_call(c);
            return;
        }
        if (got < 0) return;
        c->len += (size_t)got;
        int64_t now = now_ns();
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
                struct timespec ts;
                memcpy(&ts, CMSG_DATA(cm), sizeof ts);
                int64_t at = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec - real_offset;
                if (at <= now && at > now - 1000000000LL) now = at;
            }
        }
        size_t pos = 0;
        while (c->len - pos >= 3) {
            size_t n = ((size_t)c->in[pos + 1] << 8) | c->in[pos + 2];
            if (3 + n > INBUF) { /* larger than any frame the server sends */
                c->errors++;
                close_call(c);
                return;
            }
            if (pos + 3 + n > c->len) break;
            uint8_t kind = c->in[pos];
            if (kind == 0x10 && n >= STAMP_LEN)
                on_audio(c, c->in + pos + 3, now);
            else if (kind == 0xFF)
                c->errors++;
            pos += 3 + n;
        }
        memmove(c->in, c->in + pos, c->len - pos);
        c->len -= pos;
    }
}

static int64_t next_due(int64_t due, int64_t now) { return (now - due > PERIOD_NS ? now : due) + PERIOD_NS; }

static void tick(Call *c) {
    int64_t now = now_ns();
    c->seq++;
    send_frame(c, c->seq, now);
    if (now >= win_start) {
        if (!c->first_measured) c->first_measured = c->seq;
        if (now <= loss_end) c->last_measured = c->seq;
        if (now <= win_end && nlag < (size_t)(ncalls * frames)) lags[nlag++] = now - c->due;
    }
    c->due = c->seq < (uint32_t)frames ? next_due(c->due, now) : FAR;
}

static int64_t real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Sleep until the timer fires, then read every socket with data. */
static void poll_sockets(int tfd) {
    struct epoll_event evs[256];
    if (epoll_wait(epfd, evs, 1, 100) > 0) {
        uint64_t expirations;
        if (read(tfd, &expirations, sizeof expirations) < 0) { /* rearmed by the caller */
        }
    }
    real_offset = real_ns() - now_ns();
    int n;
    do {
        n = epoll_wait(sockep, evs, 256, 0);
        for (int i = 0; i < n; i++)
            if (calls[evs[i].data.u32].fd >= 0) on_readable(&calls[evs[i].data.u32]);
    } while (n == 256);
}

static void arm(int tfd, int64_t at) {
    static int64_t armed;
    at = (at + 999999) / 1000000 * 1000000; /* the end of the due millisecond, as PcmCall's Ticker: never early */
    if (at == armed) return;
    armed = at;
    struct itimerspec spec = {0};
    spec.it_value.tv_sec = at / 1000000000LL;
    spec.it_value.tv_nsec = at % 1000000000LL;
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &spec, NULL);
}

int main(int argc, char **argv) {
    if (argc != 9 && argc != 10) {
        fprintf(stderr, "usage: %s HOST PORT CALLS FRAMES WARMUP_NS SECONDS_NS SERVER_SPEAKS_FIRST OUT [FRAMES_OUT]\n",
                argv[0]);
        return 2;
    }
    if (argc == 10 && (frames_out = fopen(argv[9], "wb")) == NULL) {
        perror(argv[9]);
        return 2;
    }
    ncalls = atol(argv[3]);
    frames = atol(argv[4]);
    int64_t warmup = atoll(argv[5]), seconds = atoll(argv[6]);
    speaks_first = atoi(argv[7]);
    if (ncalls < 1 || frames < 1) return 2;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) return 2;
    uint32_t rng = 7;
    for (size_t i = 0; i < sizeof filler; i += 2) { /* quiet noise, about 37 RMS */
        rng = rng * 1103515245u + 12345u;
        put_le(filler + i, (uint16_t)(int16_t)((int)(rng >> 16) % 128 - 64), 2);
    }
    calls = calloc((size_t)ncalls, sizeof *calls);
    rtts = malloc(sizeof *rtts * (size_t)(ncalls * frames));
    lags = malloc(sizeof *lags * (size_t)(ncalls * frames));
    epfd = epoll_create1(0);
    sockep = epoll_create1(0);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    if (!calls || !rtts || !lags || epfd < 0 || sockep < 0 || tfd < 0) return 1;
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = TIMER_KEY};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);

    /* connect, introduce each call with its UUID frame, probe its provider path */
    for (long i = 0; i < ncalls; i++) {
        Call *c = &calls[i];
        c->last_measured = -1;
        c->received = calloc((size_t)frames + 1, 1);
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        if (!c->received || c->fd < 0) return 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(c->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            close(c->fd);
            c->fd = -1;
            continue;
        }
        fcntl(c->fd, F_SETFL, O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(sockep, EPOLL_CTL_ADD, c->fd, &ev);
        uint8_t hello[19] = {0x01, 0, 16};
        for (int k = 3; k < 19; k++) {
            rng = rng * 1103515245u + 12345u;
            hello[k] = (uint8_t)(rng >> 16);
        }
        hello[9] = (hello[9] & 0x0F) | 0x40; /* a version 4 UUID */
        hello[11] = (hello[11] & 0x3F) | 0x80;
        if (send(c->fd, hello, sizeof hello, MSG_NOSIGNAL) != sizeof hello) c->errors++;
        if (!speaks_first) send_probe(c);
    }
    int64_t deadline = now_ns() + PROBE_TIMEOUT_NS;
    for (;;) {
        long waiting = 0;
        for (long i = 0; i < ncalls; i++) waiting += calls[i].fd >= 0 && !calls[i].probed;
        if (!waiting || now_ns() > deadline) break;
        arm(tfd, now_ns() + 1000000);
        poll_sockets(tfd);
    }
    int64_t settled = now_ns() + SETTLE_NS;
    while (now_ns() < settled) {
        arm(tfd, now_ns() + 1000000);
        poll_sockets(tfd);
    }

    /* stream: calls spread over one period, so they do not tick in phase */
    int64_t t0 = now_ns() + START_DELAY_NS;
    win_start = t0 + warmup;
    win_end = win_start + seconds;
    loss_end = win_end - LOSS_GRACE_NS;
    printf("window %lld %lld\n", (long long)win_start, (long long)win_end);
    fflush(stdout);
    for (long i = 0; i < ncalls; i++) calls[i].due = t0 + i * PERIOD_NS / ncalls;
    int64_t stop = t0 + frames * PERIOD_NS + PERIOD_NS + TAIL_NS;
    for (;;) {
        int64_t now = now_ns(), soonest = FAR;
        for (long i = 0; i < ncalls; i++) {
            Call *c = &calls[i];
            if (c->fd < 0 || c->due == FAR) continue;
            if (c->due <= now) tick(c);
            if (c->due < soonest) soonest = c->due;
        }
        if (now >= stop) break;
        int64_t wake = now + 1000000; /* read the sockets every millisecond, sending or not */
        if (soonest < wake) wake = soonest;
        arm(tfd, wake);
        poll_sockets(tfd);
    }

    /* hang up, then count */
    for (long i = 0; i < ncalls; i++) {
        Call *c = &calls[i];
        if (c->fd < 0) continue;
        c->hung_up = 1;
        static const uint8_t hangup[3] = {0, 0, 0};
        if (send(c->fd, hangup, sizeof hangup, MSG_NOSIGNAL) < 0) { /* closed already: counted by eof */
        }
        close_call(c);
    }
    long failed = 0;
    int64_t lost = 0, measured = 0, silence = 0, gaps = 0, late = 0;
    for (long i = 0; i < ncalls; i++) {
        Call *c = &calls[i];
        failed += c->errors > 0 || !c->probed || c->eof;
        if (c->first_measured && c->last_measured >= c->first_measured) {
            measured += c->last_measured - c->first_measured + 1;
            for (int64_t s = c->first_measured; s <= c->last_measured; s++) lost += !c->received[s];
        }
        silence += c->silence;
        gaps += c->gaps;
        late += c->late;
    }
    if (frames_out != NULL && fclose(frames_out) != 0) return 1;
    FILE *out = fopen(argv[8], "wb");
    if (out == NULL || fwrite(rtts, sizeof *rtts, nrtt, out) != nrtt || fwrite(lags, sizeof *lags, nlag, out) != nlag ||
        fclose(out) != 0)
        return 1;
    printf("done %ld %lld %lld %lld %lld %lld %zu %zu\n", failed, (long long)lost, (long long)measured,
           (long long)silence, (long long)gaps, (long long)late, nrtt, nlag);
    return 0;
}
