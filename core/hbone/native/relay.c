/* Relay: the receive half of a TLS-to-plain-socket relay (a ztunnel's HBONE
 * tunnel piped to a TCP connection), in C.
 *
 * Python's path per DATA frame is about forty calls: _TlsProtocol →
 * HboneConnection → _HboneCore → H2ConnectionFast._open_stream_data → the
 * event → HboneStream._feed → core.pipe's sink → TcpEnd.write_nowait →
 * uvloop, then the acknowledgement through h2's window managers. Relay.feed
 * does the same for the common case with no bytecode: it decrypts, walks the
 * whole frames and, for each one it may take, does exactly what that chain
 * does, on the same Python objects (the h2 window managers' fields, the
 * stream's and the endpoint's byte counters), reading their state afresh
 * for every frame. From the first frame it may not take, it stops and hands
 * the rest of the plaintext back, in order, to the Python path.
 *
 * A frame is taken only if all of these hold, else Python gets it (and
 * everything after it):
 *   - the connection: HboneConnection.core not dead, draining or told
 *     GOAWAY; h2 in an open state; h2's frame buffer empty (no partial frame,
 *     no DATA body being filled, no header block, preface done); the flood
 *     guard under its outbound control-frame limit (h2fast's rules);
 *   - the frame: DATA, no flags (no END_STREAM, no padding), payload > 0,
 *     within SETTINGS_MAX_FRAME_SIZE, whole, or at least keep_max long
 *     (then it is relayed in pieces as it arrives: see "a large DATA frame
 *     in pieces" below);
 *   - h2's stream: OPEN or HALF_CLOSED_LOCAL, no content-length, both
 *     inbound windows large enough;
 *   - shoal's: the core's stream not CLOSED, an HboneStream with a sink
 *     that core.pipe marked as a plain TcpEnd's (`native_target`), nothing
 *     queued in the stream, and the TcpEnd able to write now (its
 *     write_nowait conditions).
 * Taking it: the guard's empty-frame count reset, both windows consumed,
 * transport.write(payload), TcpEnd.bytes_written, the pipe's pushed count and
 * HboneStream.bytes_received increased, and the acknowledgement counted in
 * both window managers; when that acknowledgement would send a WINDOW_UPDATE
 * (h2's thresholds), h2 itself is called for it (_HboneCore.acknowledge)
 * and the connection flushes, as on the Python path.
 *
 *   Relay(sslsock, conn, raw, conn_states, stream_states, closed, keep_max)
 *   feed() -> None | (rest, status, error)
 *       decrypts what the SSL's read BIO holds. None: every frame was taken
 *       and OpenSSL wants more input (the TLS output, e.g. a key update, is
 *       written too, as _TlsProtocol._flush does), or this relay's feed()
 *       is already running further up the stack (it goes on with what came).
 *       Else `rest` is plaintext for the Python path (deliver it first);
 *       status FULL: more may be waiting (go on in Python), NEED_INPUT,
 *       CLOSED (close_notify) or FAILED with the ssl.SSLError in `error`.
 *       While a frame is relayed in pieces, every byte of it goes through
 *       feed(): the Python path must not read from this SSL by itself.
 */

#include "_native.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>

#define FRAME_HEADER 9
#define TYPE_DATA 0x0
#define BIO_CTRL_PENDING 10     /* openssl/bio.h */
/* At most this much of a frame's body is decrypted into one piece (one
 * write to the plain socket): tlsio's READ_BATCH, uvloop's read size. */
#define PIECE_MAX (256 * 1024)

typedef struct {
    PyObject_HEAD
    PyObject *sslsock;        /* the _ssl._SSLSocket (attached) */
    PyObject *conn;           /* HboneConnection */
    PyObject *core;           /* its _HboneCore */
    PyObject *h2;             /* its H2ConnectionFast */
    PyObject *fbuf;           /* h2.incoming_buffer */
    FlowFields *h2_windows;   /* h2's windows (flow.c): h2 itself */
    PyObject *guard;          /* h2.guard (FloodGuard) */
    GuardFields *counters;    /* its counters (flow.c): guard itself */
    CoreFields *flags;        /* the core's flags (flow.c): core itself */
    PyObject *raw;            /* the TCP transport under the TLS */
    PyObject *streams;        /* conn.streams: HboneStream by id */
    PyObject *core_streams;   /* core._streams: _Stream by id */
    PyObject *h2_streams;     /* h2.streams: H2Stream by id */
    PyObject *conn_states;    /* h2 ConnectionStates where DATA may be taken */
    PyObject *stream_states;  /* h2 StreamStates likewise */
    PyObject *closed;         /* the core's CLOSED stream state */
    long long max_control;    /* guard.limits.max_outbound_control_frames */
    size_t keep_max;          /* a partial DATA frame below this waits for its rest */
    unsigned long long frames;   /* frames taken here (tests, benchmarks) */
    unsigned long long parts;    /* of which relayed in pieces */
    uint32_t part_sid;           /* the frame in pieces (if part_left): its stream, */
    long long part_len;          /* its length */
    long long part_left;         /* and its bytes still to come */
    unsigned char prefix[9];     /* the DATA header handed back before the rest */
    int prefixed;                /* (when set) */
    int busy;                    /* in feed(): a nested feed() of this relay does nothing */
    int fresh;                   /* conn_ready held and no Python ran since: the next
                                  * lookup need not ask again */
    unsigned char *carry;        /* a partial frame kept between feeds (< keep_max + header), */
    size_t carry_len;
} Relay;

/* Attribute names, interned once. */
static PyObject *s_core, *s_h2, *s_incoming_buffer, *s_guard, *s_limits,
    *s_max_control, *s_streams, *s_core_streams, 
    *s_data, *s_body, *s_headers_buffer, *s_preamble_len,
    *s_ecl, *s_stream_wm,
    *s_native_target, *s_is_closing, *s_write, *s_cws,
    *s_acknowledge, *s_flush,
    *s_get_write_buffer_size;

#define CHECK(expr) do { int _c = (expr); if (_c <= 0) return _c; } while (0)
#define CHECK_NOT(expr) do { int _c = (expr); if (_c != 0) return _c < 0 ? -1 : 0; } while (0)

/* The connection-wide conditions (see the header): 1 yes, 0 no, -1 error. */
static int conn_ready(Relay *r)
{
    long long v;
    if (r->flags->dead || r->flags->draining || r->flags->goaway_received)
        return 0;
    CHECK(state_in(r->h2, r->conn_states));
    int idle = frame_buffer_idle(r->fbuf);      /* h2fast's: by pointer */
    if (idle != -2) {
        CHECK(idle);
        return r->counters->outbound_control <= r->max_control;
    }
    CHECK(attr_empty(r->fbuf, s_data));
    CHECK(attr_none(r->fbuf, s_body));
    CHECK(attr_empty(r->fbuf, s_headers_buffer));
    if (get_ll(r->fbuf, s_preamble_len, &v) < 0)
        return -1;
    if (v != 0)
        return 0;
    return r->counters->outbound_control <= r->max_control;
}

/* h2's WindowManager._maybe_update_window: would processing bring a
 * WINDOW_UPDATE (or reset the processed count)? */
static int would_update(long long current, long long max_window, long long processed)
{
    if (processed == 0)
        return 0;
    long long quarter = max_window / 4 < 1024 ? max_window / 4 : 1024;
    return (current == 0 && processed > quarter) || processed >= max_window / 2;
}

/* TcpEnd.write_nowait's conditions, on its fields in C (flow.c): an end
 * whose fields are not C's is the Python path's. *transport gets a new
 * reference. */
static int end_writable(PyObject *end, PyObject **transport)
{
    PlainEndFields *f = plain_end_fields(end);
    if (f == NULL || f->transport == NULL || f->transport == Py_None || !f->can_write
            || (f->drain_waiter != NULL && f->drain_waiter != Py_None))
        return 0;
    PyObject *t = Py_NewRef(f->transport);
    PyObject *c = PyObject_CallMethodNoArgs(t, s_is_closing);
    int closing = c == NULL ? -1 : PyObject_IsTrue(c);
    Py_XDECREF(c);
    if (closing != 0) {
        Py_DECREF(t);
        return closing < 0 ? -1 : 0;
    }
    *transport = t;
    return 1;
}

/* pushed[i] += n for the pipe's list of directly delivered bytes. */
static int list_add(PyObject *list, PyObject *index, long long n)
{
    Py_ssize_t i = PyLong_AsSsize_t(index);
    if (i == -1 && PyErr_Occurred())
        return -1;
    if (i < 0 || i >= PyList_GET_SIZE(list)) {
        PyErr_SetString(PyExc_IndexError, "native_target index outside its list");
        return -1;
    }
    PyObject *add = PyLong_FromLongLong(n);
    if (add == NULL)
        return -1;
    PyObject *sum = PyNumber_Add(PyList_GET_ITEM(list, i), add);
    Py_DECREF(add);
    if (sum == NULL)
        return -1;
    return PyList_SetItem(list, i, sum);      /* steals sum */
}

/* What a frame (or a piece of one) is taken with: new references, released
 * by let_go; cw and sw are the counters (flow.c) of conn_wm and stream_wm,
 * h2's inbound WindowManagers, held here in case Python replaces them. */
typedef struct {
    PyObject *h2s, *hs, *conn_wm, *stream_wm, *target, *t;
    WindowFields *cw, *sw;
    TunnelFields *tunnel;     /* hs's fields (flow.c) */
} Take;

static void let_go(Take *k)
{
    Py_CLEAR(k->t);
    Py_CLEAR(k->target);
    Py_CLEAR(k->stream_wm);
    Py_CLEAR(k->conn_wm);
    Py_CLEAR(k->h2s);
    Py_CLEAR(k->hs);
}

/* Every condition of the header for `n` bytes of stream `sid` (the windows
 * only if `window`: a frame relayed in pieces consumed them at its header):
 * 1 with *k filled, 0 not (k empty), -1 error (k empty). */
static int lookup(Relay *r, PyObject *sid, long long n, int window, Take *k)
{
    PyObject *cs, *sink = NULL;
    memset(k, 0, sizeof *k);
    int ok = r->fresh ? 1 : conn_ready(r);
    r->fresh = 0;                   /* what follows may run Python (the write) */
    if (ok <= 0)
        return ok;
    /* Borrowed from the dicts; nothing below runs Python until the write. */
    if ((k->h2s = PyDict_GetItemWithError(r->h2_streams, sid)) == NULL
            || (cs = PyDict_GetItemWithError(r->core_streams, sid)) == NULL
            || (k->hs = PyDict_GetItemWithError(r->streams, sid)) == NULL) {
        k->h2s = k->hs = NULL;
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_INCREF(k->h2s);
    Py_INCREF(cs);
    Py_INCREF(k->hs);
    ok = state_in(k->h2s, r->stream_states);
    FlowFields *sf = ok > 0 ? stream_fields(k->h2s) : NULL;
    if (ok > 0)                     /* no content-length (a field of h2fast's streams) */
        ok = sf != NULL && sf->expected_length != NULL ? sf->expected_length == Py_None
                                                       : attr_none(k->h2s, s_ecl);
    /* shoal's records whose fields are not C's (flow.c): the Python path's. */
    CoreStreamFields *csf = ok > 0 ? core_stream_fields(cs) : NULL;
    if (ok > 0 && (csf == NULL || csf->state == NULL
                   || (k->tunnel = tunnel_fields(k->hs)) == NULL || k->tunnel->chunks == NULL))
        ok = 0;
    if (ok > 0) {
        PyObject *state = Py_NewRef(csf->state);
        int closed = PyObject_RichCompareBool(state, r->closed, Py_EQ);
        Py_DECREF(state);
        ok = closed < 0 ? -1 : !closed;
    }
    Py_DECREF(cs);
    if (ok > 0) {                   /* nothing queued for read() */
        Py_ssize_t queued = PyObject_Length(k->tunnel->chunks);
        ok = queued < 0 ? -1 : queued == 0;
    }
    if (ok > 0 && (sink = k->tunnel->sink) != NULL && sink != Py_None) {
        Py_INCREF(sink);
        ok = _PyObject_LookupAttr(sink, s_native_target, &k->target);
    } else if (ok > 0) {
        sink = NULL;
        ok = 0;
    }
    Py_XDECREF(sink);
    if (ok > 0 && !(PyTuple_Check(k->target) && PyTuple_GET_SIZE(k->target) == 3
                    && PyList_Check(PyTuple_GET_ITEM(k->target, 1))))
        ok = 0;
    if (ok > 0)
        ok = end_writable(PyTuple_GET_ITEM(k->target, 0), &k->t);
    /* Windows whose counters are not C's (never made so by h2fast): Python's. */
    if (ok > 0 && ((k->sw = window_fields(sf == NULL ? NULL : sf->inbound)) == NULL
                   || (k->cw = window_fields(r->h2_windows->inbound)) == NULL))
        ok = 0;
    if (ok > 0) {
        k->stream_wm = Py_NewRef(sf->inbound);
        k->conn_wm = Py_NewRef(r->h2_windows->inbound);
    }
    if (ok > 0 && window && (k->cw->current < n || k->sw->current < n))
        ok = 0;                       /* h2 raises FlowControlError: its path */
    if (ok <= 0)
        let_go(k);
    return ok;
}

/* h2's _open_stream_data for a frame of n bytes: FloodGuard.on_data_payload
 * (the outbound check passed in conn_ready), both windows consumed. */
static void consume(Relay *r, Take *k, long long n)
{
    r->counters->empty_in_a_row = 0;
    k->cw->current -= n;
    k->sw->current -= n;
}

/* The sink for `data` (bytes, len n): TcpEnd.write_nowait and core.pipe's
 * count, then HboneStream._feed's. */
static int deliver(Relay *r, Take *k, PyObject *data, long long n)
{
    (void)r;
    PyObject *res = PyObject_CallMethodOneArg(k->t, s_write, data);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    PyObject *target = k->target;
    /* The end is a TcpEnd with its fields in C (end_writable), held by target. */
    plain_end_fields(PyTuple_GET_ITEM(target, 0))->bytes_written += n;
    if (list_add(PyTuple_GET_ITEM(target, 1), PyTuple_GET_ITEM(target, 2), n) < 0)
        return -1;
    k->tunnel->bytes_received += n;
    return 0;
}

/* _HboneCore.acknowledge(sid, n) → h2's acknowledge_received_data: both
 * managers' process_bytes; h2 itself when either would send an update, or
 * when the write (Python: the transport, its protocol) closed the
 * connection or the stream: then acknowledge's own checks (core.dead,
 * stream.open) decide what is counted. */
static int ack(Relay *r, PyObject *sid, Take *k, long long n, int *flush)
{
    WindowFields *cw = k->cw, *sw = k->sw;
    int still = r->flags->dead ? 0 : state_in(k->h2s, r->stream_states);
    if (still < 0)
        return -1;
    if (!still || would_update(cw->current, cw->max_window, cw->processed + n)
            || would_update(sw->current, sw->max_window, sw->processed + n)) {
        PyObject *size = PyLong_FromLongLong(n);
        if (size == NULL)
            return -1;
        PyObject *res = PyObject_CallMethodObjArgs(r->core, s_acknowledge, sid, size, NULL);
        Py_DECREF(size);
        if (res == NULL)
            return -1;
        Py_DECREF(res);
        *flush = 1;
        return 0;
    }
    cw->processed += n;
    sw->processed += n;
    return 0;
}

/* Take one whole flagless DATA frame if every condition holds: 1 taken,
 * 0 not (nothing changed), -1 error (the Python objects then hold what was
 * done so far, as after an exception on the Python path). */
static int take_frame(Relay *r, PyObject *sid, const char *payload, long long n, int *flush)
{
    Take k;
    int ok = lookup(r, sid, n, 1, &k);
    if (ok <= 0)
        return ok;
    PyObject *data = NULL;
    ok = -1;
    consume(r, &k, n);
    if ((data = PyBytes_FromStringAndSize(payload, (Py_ssize_t)n)) != NULL
            && deliver(r, &k, data, n) == 0 && ack(r, sid, &k, n, flush) == 0)
        ok = 1;
    Py_XDECREF(data);
    let_go(&k);
    return ok;
}

/* -- a large DATA frame in pieces -------------------------------------------
 *
 * A large frame is rarely whole in one read (a 256 KiB frame spans several
 * socket reads), so one whose header may be taken is relayed as its bytes
 * arrive: at the header, the conditions above for the whole frame and its
 * windows consumed (what h2 does once the frame is whole); each piece
 * written as it is decrypted, after the same conditions but the windows;
 * when the last piece is written, the whole frame acknowledged. Once whole,
 * everything is as if the Python path had taken the frame.
 *
 * If a condition fails before a piece (the stream reset, the plain socket
 * closing or paused, the connection draining...), the rest goes to the
 * Python path as what the Python path would see had the peer split the
 * frame there: the bytes written so far are acknowledged, the rest's window
 * given back, and a DATA header for the rest (same stream, no flags) is put
 * before it. */

/* Relay the piece `data` (n bytes) of the frame in pieces: 1 written, 0 a
 * condition failed (nothing done), -1 error. */
static int piece(Relay *r, PyObject *data, long long n, int *flush)
{
    Take k;
    PyObject *sid = PyLong_FromUnsignedLong(r->part_sid);
    if (sid == NULL)
        return -1;
    int ok = lookup(r, sid, n, 0, &k);
    if (ok > 0) {
        ok = deliver(r, &k, data, n) == 0 ? 1 : -1;
        if (ok > 0) {
            r->part_left -= n;
            if (r->part_left == 0) {
                r->frames++;
                if (ack(r, sid, &k, r->part_len, flush) < 0)
                    ok = -1;
            }
        }
        let_go(&k);
    }
    Py_DECREF(sid);
    return ok;
}

/* Start the frame in pieces: its header's conditions for all n bytes, the
 * windows consumed, and the `have` bytes already here written. 1 started,
 * 0 not (nothing changed), -1 error. */
static int start_part(Relay *r, uint32_t id, const char *payload, long long n, long long have,
                      int *flush)
{
    Take k;
    PyObject *sid = PyLong_FromUnsignedLong(id);
    if (sid == NULL)
        return -1;
    int ok = lookup(r, sid, n, 1, &k);
    Py_DECREF(sid);
    if (ok <= 0)
        return ok;
    consume(r, &k, n);
    let_go(&k);
    r->part_sid = id;
    r->part_len = r->part_left = n;
    r->parts++;
    if (!have)
        return 1;
    PyObject *data = PyBytes_FromStringAndSize(payload, (Py_ssize_t)have);
    if (data == NULL)
        return -1;
    ok = piece(r, data, have, flush);
    Py_DECREF(data);
    /* A condition the header passed fails only if the header's own Python
     * calls changed it; then the rest (all of it) is the Python path's. */
    return ok;
}

/* wm.current_window_size += n: on its C fields, or on the attributes of a
 * manager that is not h2fast's. */
static int window_give_back(PyObject *wm, long long n)
{
    WindowFields *w = window_fields(wm);
    if (w != NULL) {
        w->current += n;
        return 0;
    }
    if (wm == NULL) {
        PyErr_SetString(PyExc_AttributeError, "h2 connection without its inbound window");
        return -1;
    }
    return add_ll(wm, s_cws, n);
}

/* Hand the rest of the frame in pieces to the Python path (see above):
 * r->prefix gets the rest's DATA header. 0, or -1 on error. */
static int hand_back(Relay *r, int *flush)
{
    long long left = r->part_left, done = r->part_len - left;
    PyObject *sid = PyLong_FromUnsignedLong(r->part_sid), *h2s;
    if (sid == NULL)
        return -1;
    r->part_left = 0;
    int rc = -1;
    if (window_give_back(r->h2_windows->inbound, left) < 0)
        goto out;
    if ((h2s = PyDict_GetItemWithError(r->h2_streams, sid)) != NULL) {
        Py_INCREF(h2s);
        PyObject *wm = PyObject_GetAttr(h2s, s_stream_wm);
        Py_DECREF(h2s);
        int bad = wm == NULL || window_give_back(wm, left) < 0;
        Py_XDECREF(wm);
        if (bad)
            goto out;
    } else if (PyErr_Occurred()) {
        goto out;
    }
    if (done) {
        PyObject *size = PyLong_FromLongLong(done);
        PyObject *res = size == NULL ? NULL
            : PyObject_CallMethodObjArgs(r->core, s_acknowledge, sid, size, NULL);
        Py_XDECREF(size);
        if (res == NULL)
            goto out;
        Py_DECREF(res);
        *flush = 1;
    }
    unsigned char *h = r->prefix;
    h[0] = (unsigned char)(left >> 16);
    h[1] = (unsigned char)(left >> 8);
    h[2] = (unsigned char)left;
    h[3] = TYPE_DATA;
    h[4] = 0;
    h[5] = (unsigned char)(r->part_sid >> 24);
    h[6] = (unsigned char)(r->part_sid >> 16);
    h[7] = (unsigned char)(r->part_sid >> 8);
    h[8] = (unsigned char)r->part_sid;
    r->prefixed = 1;
    rc = 0;
out:
    Py_DECREF(sid);
    return rc;
}

/* Take whole frames (and pieces) from buf[*pos:have]: 0 when the rest is a
 * partial frame that may still be taken once whole (or all was taken),
 * 1 at a frame for the Python path, -1 on error. */
static int walk(Relay *r, const unsigned char *buf, size_t have, size_t *pos, int *taken,
                int *flush)
{
    long long max_frame;
    if (r->part_left && *pos < have) {
        size_t m = have - *pos < (size_t)r->part_left ? have - *pos : (size_t)r->part_left;
        PyObject *data = PyBytes_FromStringAndSize((const char *)buf + *pos, (Py_ssize_t)m);
        if (data == NULL)
            return -1;
        int ok = piece(r, data, (long long)m, flush);
        Py_DECREF(data);
        if (ok < 0)
            return -1;
        if (ok == 0)
            return hand_back(r, flush) < 0 ? -1 : 1;
        *pos += m;
        *taken = 1;
        if (r->part_left)
            return 0;
    }
    max_frame = r->h2_windows->max_inbound_frame;
    while (have - *pos >= FRAME_HEADER) {
        const unsigned char *h = buf + *pos;
        size_t n = ((size_t)h[0] << 16) | ((size_t)h[1] << 8) | h[2];
        if (h[3] != TYPE_DATA || h[4] != 0 || n == 0 || (long long)n > max_frame)
            return 1;
        uint32_t id = (((uint32_t)h[5] << 24) | ((uint32_t)h[6] << 16) | ((uint32_t)h[7] << 8)
                       | h[8]) & 0x7FFFFFFF;
        size_t got = have - *pos - FRAME_HEADER;
        if (got < n) {
            if (n < r->keep_max)
                return 0;           /* small: wait for the rest, then take it whole */
            int ok = start_part(r, id, (const char *)h + FRAME_HEADER, (long long)n,
                                (long long)got, flush);
            if (ok < 0)
                return -1;
            if (ok == 0 && !r->part_left)
                return 1;           /* not taken: the Python path's */
            *taken = 1;
            if (ok == 0) {          /* started, then its first piece refused */
                *pos += FRAME_HEADER;
                return hand_back(r, flush) < 0 ? -1 : 1;
            }
            *pos = have;
            return 0;
        }
        PyObject *sid = PyLong_FromUnsignedLong(id);
        if (sid == NULL)
            return -1;
        int ok = take_frame(r, sid, (const char *)h + FRAME_HEADER, (long long)n, flush);
        Py_DECREF(sid);
        if (ok <= 0)
            return ok < 0 ? -1 : 1;
        *pos += FRAME_HEADER + n;
        *taken = 1;
        r->frames++;
    }
    return 0;
}

/* After frames were taken: HboneConnection.flush(), in C when nothing is
 * queued (then it only tells the guard that the output drained). */
static int finish(Relay *r, int flush)
{
    if (!flush) {
        int empty = output_empty(r->h2_windows);
        if (empty < 0)
            return -1;
        flush = !empty;
    }
    if (flush) {
        PyObject *res = PyObject_CallMethodNoArgs(r->conn, s_flush);
        Py_XDECREF(res);
        return res == NULL ? -1 : 0;
    }
    if (r->counters->outbound_control == 0)
        return 0;                   /* output_drained would change nothing: no calls */
    PyObject *c = PyObject_CallMethodNoArgs(r->raw, s_is_closing);
    if (c == NULL)
        return -1;
    int closing = PyObject_IsTrue(c);
    Py_DECREF(c);
    if (closing)
        return closing < 0 ? -1 : 0;
    PyObject *size = PyObject_CallMethodNoArgs(r->raw, s_get_write_buffer_size);
    if (size == NULL)
        return -1;
    int queued = PyObject_IsTrue(size);
    Py_DECREF(size);
    if (queued < 0)
        return -1;
    if (!queued)                    /* FloodGuard.output_drained */
        r->counters->outbound_control = 0;
    return 0;
}

/* SSL_read_ex with OpenSSL's error queue emptied first: SSL_get_error reads
 * the thread's queue, and between two reads of one feed Python ran (a frame
 * written to the plain socket, allocation that can run GC), which may have
 * left an error of some other OpenSSL user there; taken for this call's, it
 * would fail this connection (the Python path's _ssl clears before each
 * call too; clear_errors is cheap when the queue is empty). */
static int read_record(SSL *ssl, void *buf, size_t n, size_t *got)
{
    clear_errors();
    return p_SSL_read_ex(ssl, buf, n, got);
}

/* SSL_read_ex's outcome as feed()'s status (*error: a new reference). */
static int read_status(SSL *ssl, int ret, PyObject **error)
{
    int e = p_SSL_get_error(ssl, ret);
    if (e == SSL_ERROR_WANT_READ)
        return ST_NEED_INPUT;
    if (e == SSL_ERROR_ZERO_RETURN)
        return ST_CLOSED;
    if ((*error = ssl_exception(ssl, ret)) == NULL)
        return -1;
    return ST_FAILED;
}

/* In the body of the frame in pieces with nothing buffered: decrypt the
 * next piece straight into the bytes object that is written (no copy
 * through the read buffer). 1 a piece written, or refused and put in
 * buf[0:*have] for hand_back (r->prefixed); 0 no more input (*status,
 * *error set); -1 error. */
static int body_piece(Relay *r, SSL *ssl, unsigned char *buf, size_t *have_out, int *status,
                      PyObject **error, int *flush)
{
    /* Room for what is buffered (ciphertext: at least the plaintext in it),
     * at least a record, at most the frame's rest and PIECE_MAX. */
    long long want = p_BIO_ctrl(p_SSL_get_rbio(ssl), BIO_CTRL_PENDING, 0, NULL);
    if (want < RECORD)
        want = RECORD;
    if (want > PIECE_MAX)
        want = PIECE_MAX;
    if (want > r->part_left)
        want = r->part_left;
    PyObject *data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)want);
    if (data == NULL)
        return -1;
    size_t have = 0;
    int ret = 1, ok = 1;
    while (have < (size_t)want) {
        size_t got = 0;
        ret = read_record(ssl, PyBytes_AS_STRING(data) + have, (size_t)want - have, &got);
        if (ret <= 0)
            break;
        have += got;
    }
    if (ret <= 0 && (*status = read_status(ssl, ret, error)) < 0) {
        Py_DECREF(data);
        return -1;
    }
    if (have) {
        if (have < (size_t)want && _PyBytes_Resize(&data, (Py_ssize_t)have) < 0)
            return -1;
        ok = piece(r, data, (long long)have, flush);
        if (ok == 0) {              /* refused: the Python path's, after its header */
            memcpy(buf, PyBytes_AS_STRING(data), have);
            *have_out = have;
            ok = hand_back(r, flush) < 0 ? -1 : 1;
        }
    }
    Py_DECREF(data);
    if (ok < 0)
        return -1;
    return ret > 0 || r->prefixed ? 1 : 0;
}

/* Decrypt into buf, taking what may be taken; buf[*pos:*have] is left for
 * the Python path (after r->prefix if r->prefixed), *status and *error
 * (a new reference or NULL) as feed() returns them. 0, or -1 with an
 * exception. */
static int run(Relay *r, SSL *ssl, unsigned char *buf, size_t size, size_t *pos_out,
               size_t *have_out, int *status_out, PyObject **error_out)
{
    size_t have = 0, pos = 0;
    int status = ST_FULL, taken = 0, flush = 0;
    PyObject *error = NULL;
    /* A frame in pieces checks its conditions itself (and hands back). */
    int ready = r->part_left ? 1 : conn_ready(r);
    if (ready < 0)
        return -1;
    /* Until the first frame is taken only OpenSSL runs: no Python. */
    r->fresh = ready && !r->part_left;
    if (r->carry != NULL) {         /* the partial frame the last feed kept */
        memcpy(buf, r->carry, r->carry_len);
        have = r->carry_len;
        PyMem_Free(r->carry);       /* held between reads only: idle connections hold none */
        r->carry = NULL;
        r->carry_len = 0;
    }
    int keep = ready && have;       /* buf[pos:have] is a partial frame C may take */
    while (ready && have < size && !r->prefixed) {
        if (r->part_left && pos == have) {
            pos = have = 0;
            int ok = body_piece(r, ssl, buf, &have, &status, &error, &flush);
            if (ok < 0)
                goto fail;
            taken = 1;
            if (ok == 0 || r->prefixed)
                break;
            continue;
        }
        size_t got = 0;
        int ret = read_record(ssl, buf + have, size - have, &got);
        if (ret <= 0) {
            if ((status = read_status(ssl, ret, &error)) < 0)
                return -1;
            break;
        }
        have += got;
        int w = walk(r, buf, have, &pos, &taken, &flush);
        if (w < 0)
            goto fail;
        keep = w == 0;
        if (w > 0)
            break;                  /* ST_FULL: Python goes on from buf[pos:] */
        if (pos) {                  /* keep the partial frame at the start */
            memmove(buf, buf + pos, have - pos);
            have -= pos;
            pos = 0;
        }
        /* All input decrypted: the next SSL_read would only say WANT_READ
         * (a 1 KB request is one record: that second call was half the
         * feed's OpenSSL calls). */
        if (have < size && !r->prefixed && !r->part_left && channel_starved(ssl)
                && !p_SSL_has_pending(ssl)) {
            status = ST_NEED_INPUT;
            break;
        }
    }
    if (r->prefixed) {
        status = ST_FULL;           /* Python goes on with the frame's rest */
    } else if (keep && status == ST_NEED_INPUT && pos < have && !r->part_left) {
        /* A partial frame C may take once whole: kept for the next feed, so
         * that h2's buffer stays empty and the next read is C's too. */
        if ((r->carry = PyMem_Malloc(have - pos)) == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(r->carry, buf + pos, have - pos);
        r->carry_len = have - pos;
        have = pos;
    }
    if (taken && finish(r, flush) < 0)
        goto fail;
    *pos_out = pos;
    *have_out = have;
    *status_out = status;
    *error_out = error;
    return 0;
fail:
    Py_XDECREF(error);
    return -1;
}

/* feed()'s buffer: one per process, as tlsio's READ_BATCH buffer (frames
 * taken are written out before feed() returns; the rest is copied out). A
 * nested call (a feed from inside another's write) gets one of its own. */
#define FEED_BUFFER (256 * 1024)
static unsigned char feed_buffer[FEED_BUFFER];
static int feed_busy;

/* feed() -> None | (rest, status, error) (see the header). */
static PyObject *relay_feed(Relay *r, PyObject *unused)
{
    (void)unused;
    SSL *ssl = ssl_of(r->sslsock);
    if (ssl == NULL)
        return NULL;
    if (r->busy)
        Py_RETURN_NONE;             /* the outer feed() goes on with what came */
    unsigned char *buf = feed_buffer;
    if (feed_busy && (buf = PyMem_RawMalloc(FEED_BUFFER)) == NULL)
        return PyErr_NoMemory();
    int nested = buf != feed_buffer;
    size_t pos, have;
    int status;
    PyObject *error, *res = NULL;
    feed_busy = r->busy = 1;
    r->prefixed = 0;
    int rc = run(r, ssl, buf, FEED_BUFFER, &pos, &have, &status, &error);
    r->busy = r->fresh = 0;
    if (!nested)
        feed_busy = 0;
    if (rc < 0)
        goto out;
    if (pos == have && status == ST_NEED_INPUT && !r->prefixed) {
        PyObject *records = drain(ssl);
        if (records == NULL)
            goto out;
        res = Py_None;
        if (PyBytes_GET_SIZE(records))
            res = PyObject_CallMethodOneArg(r->raw, s_write, records);
        else
            Py_INCREF(res);
        Py_DECREF(records);
        if (res == NULL)
            goto out;
        Py_DECREF(res);
        res = Py_NewRef(Py_None);
        goto out;
    }
    size_t extra = r->prefixed ? FRAME_HEADER : 0;
    PyObject *rest = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(extra + have - pos));
    if (rest == NULL) {
        Py_XDECREF(error);
        goto out;
    }
    memcpy(PyBytes_AS_STRING(rest), r->prefix, extra);
    memcpy(PyBytes_AS_STRING(rest) + extra, buf + pos, have - pos);
    r->prefixed = 0;
    res = Py_BuildValue("(NiN)", rest, status, error != NULL ? error : Py_NewRef(Py_None));
out:
    if (nested)
        PyMem_RawFree(buf);
    return res;
}

static PyObject *getattr_chain(PyObject *o, PyObject *a, PyObject *b)
{
    PyObject *x = PyObject_GetAttr(o, a);
    if (x == NULL || b == NULL)
        return x;
    PyObject *y = PyObject_GetAttr(x, b);
    Py_DECREF(x);
    return y;
}

static int relay_init_obj(Relay *r, PyObject *args, PyObject *kw)
{
    PyObject *sslsock, *conn, *raw, *cstates, *sstates, *closed;
    Py_ssize_t keep;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "Relay takes no keyword arguments");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OOOO!O!On:Relay", &sslsock, &conn, &raw, &PyTuple_Type, &cstates,
                          &PyTuple_Type, &sstates, &closed, &keep))
        return -1;
    if (ssl_of(sslsock) == NULL)
        return -1;
    /* Not initialised (feed refuses) until every check below passed: a
     * failed __init__ must not leave the field pointers of another call. */
    Py_CLEAR(r->conn);
#define KEEP(field, value) do { PyObject *_v = (value); if (_v == NULL) return -1; \
                                Py_XSETREF(r->field, _v); } while (0)
    KEEP(sslsock, Py_NewRef(sslsock));
    KEEP(raw, Py_NewRef(raw));
    KEEP(conn_states, Py_NewRef(cstates));
    KEEP(stream_states, Py_NewRef(sstates));
    KEEP(closed, Py_NewRef(closed));
    KEEP(core, PyObject_GetAttr(conn, s_core));
    KEEP(streams, PyObject_GetAttr(conn, s_streams));
    KEEP(core_streams, PyObject_GetAttr(r->core, s_core_streams));
    KEEP(h2, PyObject_GetAttr(r->core, s_h2));
    KEEP(h2_streams, PyObject_GetAttr(r->h2, s_streams));
    KEEP(fbuf, PyObject_GetAttr(r->h2, s_incoming_buffer));
    KEEP(guard, PyObject_GetAttr(r->h2, s_guard));
    if ((r->h2_windows = connection_fields(r->h2)) == NULL
            || (r->counters = guard_fields(r->guard)) == NULL
            || (r->flags = core_fields(r->core)) == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "Relay needs h2fast's connection and the HBONE core (their fields in C)");
        return -1;
    }
    PyObject *limit = getattr_chain(r->guard, s_limits, s_max_control);
    if (limit == NULL)
        return -1;
    r->max_control = PyLong_AsLongLong(limit);
    Py_DECREF(limit);
    if (r->max_control == -1 && PyErr_Occurred())
        return -1;
    if (!PyDict_Check(r->streams) || !PyDict_Check(r->core_streams) || !PyDict_Check(r->h2_streams)) {
        PyErr_SetString(PyExc_TypeError, "Relay needs the stream tables as dicts");
        return -1;
    }
    r->keep_max = keep > 0 ? (size_t)keep : 0;
    KEEP(conn, Py_NewRef(conn));
#undef KEEP
    return 0;
}

static int relay_traverse(Relay *r, visitproc visit, void *arg)
{
    Py_VISIT(r->sslsock); Py_VISIT(r->conn); Py_VISIT(r->core); Py_VISIT(r->h2);
    Py_VISIT(r->fbuf); Py_VISIT(r->guard); Py_VISIT(r->raw);
    Py_VISIT(r->streams); Py_VISIT(r->core_streams); Py_VISIT(r->h2_streams);
    Py_VISIT(r->conn_states); Py_VISIT(r->stream_states); Py_VISIT(r->closed);
    return 0;
}

static int relay_clear(Relay *r)
{
    Py_CLEAR(r->sslsock); Py_CLEAR(r->conn); Py_CLEAR(r->core); Py_CLEAR(r->h2);
    Py_CLEAR(r->fbuf); Py_CLEAR(r->guard); Py_CLEAR(r->raw);
    Py_CLEAR(r->streams); Py_CLEAR(r->core_streams); Py_CLEAR(r->h2_streams);
    Py_CLEAR(r->conn_states); Py_CLEAR(r->stream_states); Py_CLEAR(r->closed);
    return 0;
}

static void relay_dealloc(Relay *r)
{
    PyObject_GC_UnTrack(r);
    relay_clear(r);
    PyMem_Free(r->carry);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyObject *relay_feed_checked(Relay *r, PyObject *unused)
{
    if (r->conn == NULL) {
        PyErr_SetString(PyExc_ValueError, "Relay not initialised");
        return NULL;
    }
    return relay_feed(r, unused);
}

static PyMethodDef relay_methods[] = {
    {"feed", (PyCFunction)relay_feed_checked, METH_NOARGS,
     "feed() -> None | (rest, status, error): decrypt, relay, hand back the rest"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef relay_members[] = {
    {"frames", T_ULONGLONG, offsetof(Relay, frames), READONLY, "DATA frames relayed in C"},
    {"parts", T_ULONGLONG, offsetof(Relay, parts), READONLY,
     "DATA frames whose relay in pieces started (counted in frames once whole)"},
    {"part_left", T_LONGLONG, offsetof(Relay, part_left), READONLY,
     "bytes of the frame in pieces still to come (0: none in flight)"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal.core.hbone.native._native.Relay",
    .tp_doc = "The receive half of an HBONE-to-plain-socket relay (see relay.c)",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)relay_init_obj,
    .tp_dealloc = (destructor)relay_dealloc,
    .tp_traverse = (traverseproc)relay_traverse,
    .tp_clear = (inquiry)relay_clear,
    .tp_methods = relay_methods,
    .tp_members = relay_members,
};

int relay_exact(PyObject *o)
{
    return Py_IS_TYPE(o, &RelayType);
}

PyObject *relay_feed_of(PyObject *relay)
{
    return relay_feed_checked((Relay *)relay, NULL);
}

int relay_init(PyObject *module)
{
    if (attrs_init() < 0)
        return -1;
#define NAME(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1;
    NAME(s_core, "core") NAME(s_h2, "_h2") NAME(s_incoming_buffer, "incoming_buffer")
    NAME(s_guard, "guard")
    NAME(s_limits, "limits") NAME(s_max_control, "max_outbound_control_frames")
    NAME(s_streams, "streams") NAME(s_core_streams, "_streams")
    NAME(s_data, "_data")
    NAME(s_body, "_body") NAME(s_headers_buffer, "_headers_buffer")
    NAME(s_preamble_len, "_preamble_len")
    NAME(s_ecl, "_expected_content_length")
    NAME(s_stream_wm, "_inbound_window_manager")
    NAME(s_native_target, "native_target")
    NAME(s_is_closing, "is_closing")
    NAME(s_write, "write") NAME(s_cws, "current_window_size")
    NAME(s_acknowledge, "acknowledge") NAME(s_flush, "flush")
    NAME(s_get_write_buffer_size, "get_write_buffer_size")
#undef NAME
    if (PyType_Ready(&RelayType) < 0)
        return -1;
    Py_INCREF(&RelayType);
    if (PyModule_AddObject(module, "Relay", (PyObject *)&RelayType) < 0) {
        Py_DECREF(&RelayType);
        return -1;
    }
    return 0;
}
