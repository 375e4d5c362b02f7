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
 *     within SETTINGS_MAX_FRAME_SIZE, whole;
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
 *   feed() -> None | (rest, status, error) | NotImplemented
 *       decrypts what the SSL's read BIO holds. None: every frame was taken
 *       and OpenSSL wants more input (the TLS output, e.g. a key update, is
 *       written too, as _TlsProtocol._flush does). Else `rest` is plaintext
 *       for the Python path (deliver it first); status FULL: more may be
 *       waiting (go on in Python), NEED_INPUT, CLOSED (close_notify) or
 *       FAILED with the ssl.SSLError in `error`. NotImplemented: the
 *       module's read buffer is in use (a nested call): nothing was read.
 */

#include "_native.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>

#define FRAME_HEADER 9
#define TYPE_DATA 0x0

typedef struct {
    PyObject_HEAD
    PyObject *sslsock;        /* the _ssl._SSLSocket (attached) */
    PyObject *conn;           /* HboneConnection */
    PyObject *core;           /* its _HboneCore */
    PyObject *h2;             /* its H2ConnectionFast */
    PyObject *fbuf;           /* h2.incoming_buffer */
    PyObject *conn_wm;        /* h2's connection inbound WindowManager */
    PyObject *guard;          /* h2.guard (FloodGuard) */
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
} Relay;

/* Attribute names, interned once. */
static PyObject *s_core, *s_h2, *s_incoming_buffer, *s_conn_wm, *s_guard, *s_limits,
    *s_max_control, *s_streams, *s_core_streams, *s_dead, *s_draining, *s_goaway,
    *s_state, *s_data, *s_body, *s_headers_buffer, *s_preamble_len,
    *s_outbound_control, *s_max_frame, *s_ecl, *s_stream_wm, *s_sink, *s_chunks,
    *s_native_target, *s_transport, *s_can_write, *s_drain_waiter, *s_is_closing,
    *s_write, *s_cws, *s_maxw, *s_processed, *s_empty, *s_bytes_written,
    *s_bytes_received, *s_acknowledge, *s_flush, *s_h2_chunks, *s_data_to_send,
    *s_get_write_buffer_size;

#define CHECK(expr) do { int _c = (expr); if (_c <= 0) return _c; } while (0)
#define CHECK_NOT(expr) do { int _c = (expr); if (_c != 0) return _c < 0 ? -1 : 0; } while (0)

/* The connection-wide conditions (see the header): 1 yes, 0 no, -1 error. */
static int conn_ready(Relay *r)
{
    long long v;
    CHECK_NOT(attr_true(r->core, s_dead));
    CHECK_NOT(attr_true(r->core, s_draining));
    CHECK_NOT(attr_true(r->core, s_goaway));
    CHECK(state_in(r->h2, r->conn_states));
    CHECK(attr_empty(r->fbuf, s_data));
    CHECK(attr_none(r->fbuf, s_body));
    CHECK(attr_empty(r->fbuf, s_headers_buffer));
    if (get_ll(r->fbuf, s_preamble_len, &v) < 0)
        return -1;
    if (v != 0)
        return 0;
    if (get_ll(r->guard, s_outbound_control, &v) < 0)
        return -1;
    return v <= r->max_control;
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

/* TcpEnd.write_nowait's conditions; *transport gets a new reference. */
static int end_writable(PyObject *end, PyObject **transport)
{
    PyObject *t = PyObject_GetAttr(end, s_transport);
    if (t == NULL)
        return -1;
    int ok = t != Py_None;
    if (ok)
        ok = attr_true(end, s_can_write);
    if (ok > 0)
        ok = attr_none(end, s_drain_waiter);
    if (ok > 0) {
        PyObject *c = PyObject_CallMethodNoArgs(t, s_is_closing);
        int closing = c == NULL ? -1 : PyObject_IsTrue(c);
        Py_XDECREF(c);
        ok = closing < 0 ? -1 : !closing;
    }
    if (ok > 0)
        *transport = t;
    else
        Py_DECREF(t);
    return ok;
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

/* Take the frame: 1, or -1 on error (the Python objects then hold what was
 * done so far, as after an exception on the Python path). */
static int commit(Relay *r, PyObject *sid, const char *payload, long long n, PyObject *h2s,
                  PyObject *hs, PyObject *stream_wm, PyObject *target, PyObject *t,
                  long long conn_cws, long long stream_cws, int *flush)
{
    long long v, cmax, cproc, smax, sproc;
    PyObject *end = PyTuple_GET_ITEM(target, 0);
    /* FloodGuard.on_data_payload (the outbound check passed in conn_ready),
     * then both WindowManager.window_consumed. */
    if (get_ll(r->guard, s_empty, &v) < 0 || (v && set_ll(r->guard, s_empty, 0) < 0)
            || set_ll(r->conn_wm, s_cws, conn_cws - n) < 0
            || set_ll(stream_wm, s_cws, stream_cws - n) < 0)
        return -1;
    /* The sink: TcpEnd.write_nowait and core.pipe's count, then _feed's. */
    PyObject *data = PyBytes_FromStringAndSize(payload, (Py_ssize_t)n);
    if (data == NULL)
        return -1;
    PyObject *res = PyObject_CallMethodOneArg(t, s_write, data);
    Py_DECREF(data);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    if (add_ll(end, s_bytes_written, n) < 0
            || list_add(PyTuple_GET_ITEM(target, 1), PyTuple_GET_ITEM(target, 2), n) < 0
            || add_ll(hs, s_bytes_received, n) < 0)
        return -1;
    /* _HboneCore.acknowledge → h2's acknowledge_received_data: both
     * managers' process_bytes; h2 itself when either would send an update,
     * or when the write (Python: the transport, its protocol) closed the
     * connection or the stream: then acknowledge's own checks (core.dead,
     * stream.open) decide what is counted. */
    int still = attr_true(r->core, s_dead);
    if (still < 0)
        return -1;
    still = still ? 0 : state_in(h2s, r->stream_states);
    if (still < 0)
        return -1;
    if (get_ll(r->conn_wm, s_maxw, &cmax) < 0 || get_ll(r->conn_wm, s_processed, &cproc) < 0
            || get_ll(stream_wm, s_maxw, &smax) < 0 || get_ll(stream_wm, s_processed, &sproc) < 0)
        return -1;
    if (!still || would_update(conn_cws - n, cmax, cproc + n)
            || would_update(stream_cws - n, smax, sproc + n)) {
        PyObject *size = PyLong_FromLongLong(n);
        if (size == NULL)
            return -1;
        res = PyObject_CallMethodObjArgs(r->core, s_acknowledge, sid, size, NULL);
        Py_DECREF(size);
        if (res == NULL)
            return -1;
        Py_DECREF(res);
        *flush = 1;
        return 1;
    }
    if (set_ll(r->conn_wm, s_processed, cproc + n) < 0 || set_ll(stream_wm, s_processed, sproc + n) < 0)
        return -1;
    return 1;
}

/* Take one whole flagless DATA frame if every condition holds: 1 taken,
 * 0 not (nothing changed), -1 error. */
static int take_frame(Relay *r, PyObject *sid, const char *payload, long long n, int *flush)
{
    PyObject *h2s, *cs, *hs, *stream_wm = NULL, *sink = NULL, *target = NULL, *t = NULL;
    long long conn_cws = 0, stream_cws = 0;
    int ok = conn_ready(r);
    if (ok <= 0)
        return ok;
    /* Borrowed from the dicts; nothing below runs Python until the write. */
    if ((h2s = PyDict_GetItemWithError(r->h2_streams, sid)) == NULL
            || (cs = PyDict_GetItemWithError(r->core_streams, sid)) == NULL
            || (hs = PyDict_GetItemWithError(r->streams, sid)) == NULL)
        return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(h2s);
    Py_INCREF(cs);
    Py_INCREF(hs);
    ok = state_in(h2s, r->stream_states);
    if (ok > 0)
        ok = attr_none(h2s, s_ecl);
    if (ok > 0) {
        PyObject *state = PyObject_GetAttr(cs, s_state);
        int closed = state == NULL ? -1 : PyObject_RichCompareBool(state, r->closed, Py_EQ);
        Py_XDECREF(state);
        ok = closed < 0 ? -1 : !closed;
    }
    if (ok > 0)
        ok = attr_empty(hs, s_chunks);
    if (ok > 0 && (sink = PyObject_GetAttr(hs, s_sink)) == NULL)
        ok = -1;
    if (ok > 0 && sink != Py_None)
        ok = _PyObject_LookupAttr(sink, s_native_target, &target);
    else if (ok > 0)
        ok = 0;
    if (ok > 0 && !(PyTuple_Check(target) && PyTuple_GET_SIZE(target) == 3
                    && PyList_Check(PyTuple_GET_ITEM(target, 1))))
        ok = 0;
    if (ok > 0)
        ok = end_writable(PyTuple_GET_ITEM(target, 0), &t);
    if (ok > 0 && (stream_wm = PyObject_GetAttr(h2s, s_stream_wm)) == NULL)
        ok = -1;
    if (ok > 0 && (get_ll(r->conn_wm, s_cws, &conn_cws) < 0
                   || get_ll(stream_wm, s_cws, &stream_cws) < 0))
        ok = -1;
    if (ok > 0 && (conn_cws < n || stream_cws < n))
        ok = 0;                       /* h2 raises FlowControlError: its path */
    if (ok <= 0)
        goto out;

    /* Taken: what _open_stream_data, _feed, the sink and acknowledge do. */
    ok = commit(r, sid, payload, n, h2s, hs, stream_wm, target, t, conn_cws, stream_cws, flush);
out:
    Py_XDECREF(t);
    Py_XDECREF(target);
    Py_XDECREF(sink);
    Py_XDECREF(stream_wm);
    Py_DECREF(h2s);
    Py_DECREF(cs);
    Py_DECREF(hs);
    return ok;
}

/* Take whole frames from buf[*pos:have]: 0 when the rest is a partial frame
 * that may still be taken once whole, 1 at a frame for the Python path,
 * -1 on error. */
static int walk(Relay *r, const unsigned char *buf, size_t have, size_t *pos, int *taken,
                int *flush)
{
    long long max_frame;
    if (get_ll(r->h2, s_max_frame, &max_frame) < 0)
        return -1;
    while (have - *pos >= FRAME_HEADER) {
        const unsigned char *h = buf + *pos;
        size_t n = ((size_t)h[0] << 16) | ((size_t)h[1] << 8) | h[2];
        if (h[3] != TYPE_DATA || h[4] != 0 || n == 0 || (long long)n > max_frame)
            return 1;
        if (have - *pos - FRAME_HEADER < n)
            return n < r->keep_max ? 0 : 1;     /* large: h2 gives it a body buffer */
        uint32_t id = (((uint32_t)h[5] << 24) | ((uint32_t)h[6] << 16) | ((uint32_t)h[7] << 8)
                       | h[8]) & 0x7FFFFFFF;
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
        int e1 = attr_empty(r->h2, s_h2_chunks), e2 = e1 > 0 ? attr_empty(r->h2, s_data_to_send) : e1;
        if (e2 < 0)
            return -1;
        flush = !e2;
    }
    if (flush) {
        PyObject *res = PyObject_CallMethodNoArgs(r->conn, s_flush);
        Py_XDECREF(res);
        return res == NULL ? -1 : 0;
    }
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
    int drained = !queued;
    long long v;
    if (drained && (get_ll(r->guard, s_outbound_control, &v) < 0
                    || (v && set_ll(r->guard, s_outbound_control, 0) < 0)))
        return -1;
    return 0;
}

/* Decrypt into buf, taking what may be taken; buf[*pos:*have] is left for
 * the Python path, *status and *error (a new reference or NULL) as feed()
 * returns them. 0, or -1 with an exception. */
static int run(Relay *r, SSL *ssl, unsigned char *buf, size_t size, size_t *pos_out,
               size_t *have_out, int *status_out, PyObject **error_out)
{
    size_t have = 0, pos = 0;
    int status = ST_FULL, taken = 0, flush = 0;
    PyObject *error = NULL;
    int ready = conn_ready(r);
    if (ready < 0)
        return -1;
    p_ERR_clear_error();
    while (ready && have < size) {
        size_t got = 0;
        int ret = p_SSL_read_ex(ssl, buf + have, size - have, &got);
        if (ret <= 0) {
            int e = p_SSL_get_error(ssl, ret);
            if (e == SSL_ERROR_WANT_READ) {
                status = ST_NEED_INPUT;
            } else if (e == SSL_ERROR_ZERO_RETURN) {
                status = ST_CLOSED;
            } else {
                if ((error = ssl_exception(ssl, ret)) == NULL)
                    return -1;
                status = ST_FAILED;
            }
            break;
        }
        have += got;
        int w = walk(r, buf, have, &pos, &taken, &flush);
        if (w < 0)
            goto fail;
        if (w > 0)
            break;                  /* ST_FULL: Python goes on from buf[pos:] */
        if (pos) {                  /* keep the partial frame at the start */
            memmove(buf, buf + pos, have - pos);
            have -= pos;
            pos = 0;
        }
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
 * taken are written out before feed() returns; the rest is copied out). */
#define FEED_BUFFER (256 * 1024)
static unsigned char feed_buffer[FEED_BUFFER];
static int feed_busy;

/* feed() -> None | (rest, status, error) | NotImplemented (see the header). */
static PyObject *relay_feed(Relay *r, PyObject *unused)
{
    (void)unused;
    if (feed_busy)
        Py_RETURN_NOTIMPLEMENTED;
    SSL *ssl = ssl_of(r->sslsock);
    if (ssl == NULL)
        return NULL;
    size_t pos, have;
    int status;
    PyObject *error;
    feed_busy = 1;
    int rc = run(r, ssl, feed_buffer, FEED_BUFFER, &pos, &have, &status, &error);
    feed_busy = 0;
    if (rc < 0)
        return NULL;
    if (pos == have && status == ST_NEED_INPUT) {
        PyObject *records = drain(ssl), *res = Py_None;
        if (records == NULL)
            return NULL;
        if (PyBytes_GET_SIZE(records))
            res = PyObject_CallMethodOneArg(r->raw, s_write, records);
        else
            Py_INCREF(res);
        Py_DECREF(records);
        if (res == NULL)
            return NULL;
        Py_DECREF(res);
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(y#iN)", (const char *)feed_buffer + pos, (Py_ssize_t)(have - pos),
                         status, error != NULL ? error : Py_NewRef(Py_None));
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
#define KEEP(field, value) do { PyObject *_v = (value); if (_v == NULL) return -1; \
                                Py_XSETREF(r->field, _v); } while (0)
    KEEP(sslsock, Py_NewRef(sslsock));
    KEEP(conn, Py_NewRef(conn));
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
    KEEP(conn_wm, PyObject_GetAttr(r->h2, s_conn_wm));
    KEEP(guard, PyObject_GetAttr(r->h2, s_guard));
#undef KEEP
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
    return 0;
}

static int relay_traverse(Relay *r, visitproc visit, void *arg)
{
    Py_VISIT(r->sslsock); Py_VISIT(r->conn); Py_VISIT(r->core); Py_VISIT(r->h2);
    Py_VISIT(r->fbuf); Py_VISIT(r->conn_wm); Py_VISIT(r->guard); Py_VISIT(r->raw);
    Py_VISIT(r->streams); Py_VISIT(r->core_streams); Py_VISIT(r->h2_streams);
    Py_VISIT(r->conn_states); Py_VISIT(r->stream_states); Py_VISIT(r->closed);
    return 0;
}

static int relay_clear(Relay *r)
{
    Py_CLEAR(r->sslsock); Py_CLEAR(r->conn); Py_CLEAR(r->core); Py_CLEAR(r->h2);
    Py_CLEAR(r->fbuf); Py_CLEAR(r->conn_wm); Py_CLEAR(r->guard); Py_CLEAR(r->raw);
    Py_CLEAR(r->streams); Py_CLEAR(r->core_streams); Py_CLEAR(r->h2_streams);
    Py_CLEAR(r->conn_states); Py_CLEAR(r->stream_states); Py_CLEAR(r->closed);
    return 0;
}

static void relay_dealloc(Relay *r)
{
    PyObject_GC_UnTrack(r);
    relay_clear(r);
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
     "feed() -> None | (rest, status, error) | NotImplemented: decrypt, relay, hand back the rest"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef relay_members[] = {
    {"frames", T_ULONGLONG, offsetof(Relay, frames), READONLY, "DATA frames relayed in C"},
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

int relay_init(PyObject *module)
{
    if (attrs_init() < 0)
        return -1;
#define NAME(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1;
    NAME(s_core, "core") NAME(s_h2, "_h2") NAME(s_incoming_buffer, "incoming_buffer")
    NAME(s_conn_wm, "_inbound_flow_control_window_manager") NAME(s_guard, "guard")
    NAME(s_limits, "limits") NAME(s_max_control, "max_outbound_control_frames")
    NAME(s_streams, "streams") NAME(s_core_streams, "_streams") NAME(s_dead, "dead")
    NAME(s_draining, "draining") NAME(s_goaway, "goaway_received")
    NAME(s_state, "state") NAME(s_data, "_data")
    NAME(s_body, "_body") NAME(s_headers_buffer, "_headers_buffer")
    NAME(s_preamble_len, "_preamble_len") NAME(s_outbound_control, "outbound_control")
    NAME(s_max_frame, "max_inbound_frame_size") NAME(s_ecl, "_expected_content_length")
    NAME(s_stream_wm, "_inbound_window_manager") NAME(s_sink, "_sink")
    NAME(s_chunks, "_chunks") NAME(s_native_target, "native_target")
    NAME(s_transport, "transport") NAME(s_can_write, "_can_write")
    NAME(s_drain_waiter, "_drain_waiter") NAME(s_is_closing, "is_closing")
    NAME(s_write, "write") NAME(s_cws, "current_window_size") NAME(s_maxw, "max_window_size")
    NAME(s_processed, "_bytes_processed") NAME(s_empty, "empty_in_a_row")
    NAME(s_bytes_written, "bytes_written") NAME(s_bytes_received, "bytes_received")
    NAME(s_acknowledge, "acknowledge") NAME(s_flush, "flush") NAME(s_h2_chunks, "_chunks")
    NAME(s_data_to_send, "_data_to_send") NAME(s_get_write_buffer_size, "get_write_buffer_size")
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
