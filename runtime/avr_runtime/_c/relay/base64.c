/* Base64 (RFC 4648, the standard alphabet) for STS audio messages, both ways. Part of _relay.c. */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static int8_t B64_INV[256];

/* Filled once, when the module is imported. */
static void b64_init(void) {
    memset(B64_INV, -1, sizeof B64_INV);
    for (int i = 0; i < 64; i++) B64_INV[(uint8_t)B64[i]] = (int8_t)i;
}

static size_t b64_encode(const uint8_t *in, size_t n, uint8_t *out) {
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = (uint8_t)B64[v >> 18];
        out[o++] = (uint8_t)B64[(v >> 12) & 63];
        out[o++] = (uint8_t)B64[(v >> 6) & 63];
        out[o++] = (uint8_t)B64[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = (uint8_t)B64[v >> 18];
        out[o++] = (uint8_t)B64[(v >> 12) & 63];
        out[o++] = i + 1 < n ? (uint8_t)B64[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    return o;
}

/* Strict: length a multiple of 4, the standard alphabet, padding only at the end. Anything else returns -1 and
 * the message goes to Python, whose decoder (binascii strict mode) accepts at least all of this. */
static Py_ssize_t b64_decode(const uint8_t *in, size_t n, uint8_t *out) {
    if (n % 4) return -1;
    size_t pad = 0;
    if (n && in[n - 1] == '=') pad++;
    if (n > 1 && in[n - 2] == '=') pad++;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int last = i + 4 == n;
        int a = B64_INV[in[i]], b = B64_INV[in[i + 1]];
        int c = last && pad == 2 ? 0 : B64_INV[in[i + 2]];
        int d = last && pad >= 1 ? 0 : B64_INV[in[i + 3]];
        if ((a | b | c | d) < 0) return -1;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        out[o++] = (uint8_t)(v >> 16);
        if (!(last && pad == 2)) out[o++] = (uint8_t)(v >> 8);
        if (!(last && pad >= 1)) out[o++] = (uint8_t)v;
    }
    return (Py_ssize_t)o;
}
