/* Sender: the send half of a plain-socket-to-TLS relay (a TCP connection
 * piped into a ztunnel's HBONE tunnel), in C.
 *
 * core.pipe gives the TCP end a sink, `push(data) -> bool`, that on the
 * Python path runs HboneStream.write_nowait → _HboneCore.send_data →
 * H2ConnectionFast.send_data → HboneConnection.flush → TlsTransport.writelines
 * → the C record calls → the TCP transport, and counts what it pushed. A
 * Sender is that sink with the common case in C: one unpadded DATA frame
 * without END_STREAM, framed, accounted in h2's send windows, encrypted on
 * the connection's SSL* and written, on the same Python objects and in the
 * same way as the Python path; anything else calls the Python push.
 *
 * Backpressure (HboneStream.write_held, given a `source`: the TcpEnd that
 * pushes): while the TLS transport is above its high-water mark the frame
 * goes out all the same; after a frame that leaves the transport over its
 * mark or too little send window, the source is held (stream._hold: it
 * stops reading its socket; the stream releases it when the window opens
 * or the transport drains). Without this the next read did not fit, the
 * push refused, the TcpEnd queued, and the pipe's Python copy task sent the
 * queue through h2 until it was empty: under bulk load, most of the time.
 * Now the next read waits in the kernel and the C path takes it when
 * reading resumes.
 *
 * "Too little window" depends on whether the next read is sized to it:
 *   - a read into a TcpPump's buffer (sender_push_room, uvloop) was sized by
 *     sender_window, and so is the next: it always fits, so the source is
 *     held for the window only once none is left (SIZED_HOLD_WINDOW), when
 *     every peer owes an update (one that never updates an exhausted window
 *     deadlocks itself). Held with window left, a tunnel stalled on a peer
 *     that updates late: RFC 9113 leaves the timing to the receiver (Netty's
 *     windowUpdateRatio, Jetty's buffer ratio: e.g. after 75% consumed, or
 *     only when exhausted);
 *   - a read as bytes (asyncio's data_received, a read refused above): not
 *     sized, so less than `hold_window` (HOLD_SEND_WINDOW) left holds it,
 *     but only when an update is owed (_HboneCore.window_update_owed, which
 *     assumes the peer updates once half a window is consumed): exactly
 *     HboneStream._send_now's rule for a source whose reads are not sized
 *     (the Python path's SizedReads sizes them as this file's pump does).
 *
 * The frame is sent here only if all of these hold (else `fallback(data)`):
 *   - data is bytes, 1 byte up to min(SETTINGS_MAX_FRAME_SIZE, send_max);
 *   - HboneStream: no write() in progress, no error; the connection's
 *     can_write set (transport under its high-water mark), or a source
 *     to hold;
 *   - _HboneCore: not dead, the stream OPEN and not ended locally;
 *   - h2: the connection and the stream in states where sending DATA
 *     changes nothing but the windows (h2fast's), both send windows >= len;
 *     nothing queued in h2's output (so nothing is overtaken);
 *   - TLS: the connection not closing (its TlsFields' flag, by pointer),
 *     its TCP transport not closing (asked: uvloop closes it before the
 *     protocol hears of it, e.g. on a failed write).
 * Sending: both send windows reduced, the guard's DATA count increased (the
 * WINDOW_UPDATE credit), the stream's bytes_sent, the records written, the
 * guard told when the TCP transport's buffer is empty (output_drained), the
 * pipe's count increased; the source held (above). A TLS
 * failure aborts the TCP transport, as _TlsProtocol._write_native does.
 *
 *   Sender(stream, fallback, pushed, index, conn, tls, sslsock, raw,
 *          conn_states, stream_states, open, send_max, source, hold_window)
 *   sender(data) -> bool        (True: taken, as core.pipe's push)
 */

#include "_native.h"

#include <stddef.h>
#include <string.h>
#include <structmember.h>

#define FRAME_HEADER SENDER_ROOM

/* The hold window after a sized read (see the header): held for the window
 * only when less than 1 byte, i.e. none, is left. */
#define SIZED_HOLD_WINDOW 1

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *stream;         /* HboneStream */
    PyObject *fallback;       /* core.pipe's push for it: the Python path */
    PyObject *pushed;         /* core.pipe's list of pushed bytes */
    Py_ssize_t index;         /* our slot in it */
    PyObject *sid;            /* stream.stream_id */
    PyObject *conn;           /* HboneConnection */
    PyObject *core;           /* its _HboneCore */
    PyObject *h2;             /* its H2ConnectionFast */
    FlowFields *h2_windows;   /* its windows (flow.c): h2 itself */
    PyObject *guard;          /* h2.guard */
    GuardFields *counters;    /* its counters (flow.c): guard itself */
    TunnelFields *tunnel;     /* the stream's fields (flow.c): stream itself */
    CoreFields *flags;        /* the core's flags (flow.c): core itself */
    PyObject *can_write;      /* conn.can_write (asyncio.Event) */
    PyObject *core_streams;   /* core._streams */
    PyObject *h2_streams;     /* h2.streams */
    PyObject *tls;            /* the connection's _TlsProtocol */
    TlsFields *tls_flags;     /* its fields if C's (flow.c): tls itself, else NULL */
    PyObject *sslsock;        /* its attached _ssl._SSLSocket */
    PyObject *raw;            /* its TCP transport */
    PyObject *conn_states, *stream_states, *open;
    PyObject *source;         /* the TcpEnd to hold under backpressure, or None */
    long long send_max;       /* SEND_FRAME_SIZE */
    long long hold_window;    /* stream.HOLD_SEND_WINDOW: for reads not sized */
    unsigned long long frames;
    unsigned long long in_place;   /* of them, framed in a TcpPump's read buffer */
} Sender;

static PyTypeObject SenderType;

static PyObject *sized_hold_window;    /* SIZED_HOLD_WINDOW as an int, for _hold */

static PyObject *s_value,
    *s_closing, *s_is_closing, *s_write, *s_abort, *s_get_write_buffer_size,
    *s_core, *s_h2, *s_guard,
    *s_can_write, *s_streams, *s_core_streams, *s_stream_id, *s__hold;

static int call_true(PyObject *o, PyObject *method)
{
    PyObject *v = PyObject_CallMethodNoArgs(o, method);
    if (v == NULL)
        return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

#define CHECK(expr) do { int _c = (expr); if (_c <= 0) return _c; } while (0)
#define CHECK_NOT(expr) do { int _c = (expr); if (_c != 0) return _c < 0 ? -1 : 0; } while (0)

/* May `n` bytes go out here (see the header)? 1 yes, 0 no, -1 error;
 * on yes *h2s is the h2 stream (new reference) and *sw its windows (flow.c;
 * a stream whose windows are not C's is the Python path's). */
static int can_send(Sender *s, long long n, PyObject **h2s, FlowFields **sw)
{
    if (s->tunnel->writing || (s->tunnel->error != NULL && s->tunnel->error != Py_None))
        return 0;
    int can_write = attr_true(s->can_write, s_value);
    if (can_write < 0)
        return -1;
    if (!can_write && s->source == Py_None)
        return 0;
    if (s->flags->dead)
        return 0;
    PyObject *cs = PyDict_GetItemWithError(s->core_streams, s->sid);
    if (cs == NULL)
        return PyErr_Occurred() ? -1 : 0;
    CoreStreamFields *csf = core_stream_fields(cs);     /* not C's: the Python path's */
    if (csf == NULL || csf->state == NULL)
        return 0;
    PyObject *state = Py_NewRef(csf->state);
    Py_INCREF(cs);
    int open = PyObject_RichCompareBool(state, s->open, Py_EQ);
    Py_DECREF(state);
    int ended = csf->local_ended;
    Py_DECREF(cs);
    CHECK(open);
    if (ended)
        return 0;
    CHECK(state_in(s->h2, s->conn_states));
    CHECK(output_empty(s->h2_windows));
    if (n > s->h2_windows->max_outbound_frame || n > s->send_max || n > s->h2_windows->outbound)
        return 0;
    CHECK_NOT(s->tls_flags != NULL ? s->tls_flags->closing : attr_true(s->tls, s_closing));
    CHECK_NOT(call_true(s->raw, s_is_closing));
    PyObject *st = PyDict_GetItemWithError(s->h2_streams, s->sid);
    if (st == NULL)
        return PyErr_Occurred() ? -1 : 0;
    int ok = state_in(st, s->stream_states);
    if (ok > 0 && ((*sw = stream_fields(st)) == NULL || n > (*sw)->outbound))
        ok = 0;
    if (ok > 0) {
        Py_INCREF(st);
        *h2s = st;
    }
    return ok;
}

/* Frame, encrypt and write; then what HboneConnection.flush does after.
 * `room` is NULL, or the FRAME_HEADER writable bytes just before p (a
 * TcpPump's read buffer): the header then goes there and header and payload
 * are sealed as they lie, with no copy into the stage. The records are the
 * same either way (SSL_write_ex cuts full records as gather does). */
static int send_frame(Sender *s, SSL *ssl, const char *p, size_t n, char *room)
{
    unsigned char local[FRAME_HEADER];
    unsigned char *header = room != NULL ? (unsigned char *)room : local;
    unsigned long id = PyLong_AsUnsignedLong(s->sid) & 0x7FFFFFFFUL;
    if (PyErr_Occurred())
        return -1;
    header[0] = (unsigned char)(n >> 16);
    header[1] = (unsigned char)(n >> 8);
    header[2] = (unsigned char)n;
    header[3] = 0;                  /* DATA */
    header[4] = 0;                  /* no flags */
    header[5] = (unsigned char)(id >> 24);
    header[6] = (unsigned char)(id >> 16);
    header[7] = (unsigned char)(id >> 8);
    header[8] = (unsigned char)id;
    char stage[RECORD];
    size_t staged = 0;
    clear_errors();
    PyObject *records = NULL;
    if (room != NULL ? seal(ssl, room, FRAME_HEADER + n)
                     : gather(ssl, stage, &staged, (const char *)header, FRAME_HEADER)
                       && gather(ssl, stage, &staged, p, n)
                       && (!staged || seal(ssl, stage, staged)))
        records = drain(ssl);
    PyObject *r;
    if (records == NULL) {
        if (!PyErr_ExceptionMatches(ssl_error))
            return -1;
        PyErr_Clear();
        r = PyObject_CallMethodNoArgs(s->raw, s_abort);
    } else {
        r = PyBytes_GET_SIZE(records) ? PyObject_CallMethodOneArg(s->raw, s_write, records)
                                      : Py_NewRef(Py_None);
        Py_DECREF(records);
    }
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    if (s->counters->outbound_control == 0)
        return 0;                   /* output_drained would change nothing: no call */
    PyObject *size = PyObject_CallMethodNoArgs(s->raw, s_get_write_buffer_size);
    if (size == NULL)
        return -1;
    int queued = PyObject_IsTrue(size);
    Py_DECREF(size);
    if (queued < 0)
        return -1;
    if (!queued)                    /* FloodGuard.output_drained */
        s->counters->outbound_control = 0;
    return 0;
}

/* 1 with IndexError if pushed[index] is not there (Python code may shrink
 * the list), else 0. */
static int index_out(Sender *s)
{
    if (s->index < PyList_GET_SIZE(s->pushed))
        return 0;
    PyErr_SetString(PyExc_IndexError, "Sender index outside its list");
    return 1;
}

/* Send n bytes at p here if the C path may (see the header): 1 sent (and
 * counted), 0 not (nothing changed: the caller takes the Python path), -1
 * error. `room`: as send_frame's; a send from a room is a sized read's, so
 * its source is held for the window only once none is left (the header). */
static int send_here(Sender *s, const char *p, long long n, char *room)
{
    PyObject *h2s = NULL;
    FlowFields *sw = NULL;
    SSL *ssl = ssl_of(s->sslsock);
    if (ssl == NULL)
        return -1;
    int ok = n > 0 ? can_send(s, n, &h2s, &sw) : 0;
    if (ok <= 0)
        return ok;
    /* _HboneCore.send_data → H2ConnectionFast.send_data's fast path. */
    s->h2_windows->outbound -= n;
    sw->outbound -= n;
    long long left = s->h2_windows->outbound < sw->outbound ? s->h2_windows->outbound
                                                            : sw->outbound;
    s->counters->data_frames_sent++;    /* WINDOW_UPDATE credit */
    s->tunnel->bytes_sent += n;
    int failed = send_frame(s, ssl, p, (size_t)n, room) < 0;
    Py_DECREF(h2s);
    if (failed)
        return -1;
    if (s->source != Py_None) {
        /* HboneStream._send_now after the flush: hold the source if the
         * transport is over its mark or the window short; _hold decides
         * again by the same window (given, for a sized read). */
        int can_write = attr_true(s->can_write, s_value);
        if (can_write < 0)
            return -1;
        long long hold_window = room != NULL ? SIZED_HOLD_WINDOW : s->hold_window;
        if (!can_write || left < hold_window) {
            PyObject *r = room != NULL
                ? PyObject_CallMethodObjArgs(s->stream, s__hold, s->source, sized_hold_window, NULL)
                : PyObject_CallMethodOneArg(s->stream, s__hold, s->source);
            if (r == NULL)
                return -1;
            Py_DECREF(r);
        }
    }
    /* core.pipe's push: pushed[index] += len(data), on the list as it is
     * now (the write and _hold ran Python: IndexError, as the Python push's). */
    if (index_out(s))
        return -1;
    PyObject *add = PyLong_FromLongLong(n), *sum;
    if (add == NULL)
        return -1;
    sum = PyNumber_Add(PyList_GET_ITEM(s->pushed, s->index), add);
    Py_DECREF(add);
    if (sum == NULL || PyList_SetItem(s->pushed, s->index, sum) < 0)
        return -1;
    s->frames++;
    return 1;
}

static PyObject *sender_push(Sender *s, PyObject *data)
{
    if (s->conn == NULL) {
        PyErr_SetString(PyExc_ValueError, "Sender not initialised");
        return NULL;
    }
    if (index_out(s))           /* before anything is sent */
        return NULL;
    long long n = PyBytes_CheckExact(data) ? PyBytes_GET_SIZE(data) : 0;
    /* `data` is held by our caller until we return: its bytes stay put. */
    int sent = send_here(s, PyBytes_CheckExact(data) ? PyBytes_AS_STRING(data) : NULL, n, NULL);
    if (sent < 0)
        return NULL;
    if (sent == 0)
        return PyObject_CallOneArg(s->fallback, data);
    Py_RETURN_TRUE;
}

int sender_push_room(PyObject *sender, char *room, Py_ssize_t n)
{
    if (Py_TYPE(sender) != &SenderType)
        return 0;
    Sender *s = (Sender *)sender;
    /* Not initialised or its index gone: the bytes path raises as it does. */
    if (s->conn == NULL || s->index >= PyList_GET_SIZE(s->pushed))
        return 0;
    int sent = send_here(s, room + FRAME_HEADER, n, room);
    if (sent > 0)
        s->in_place++;
    return sent;
}

Py_ssize_t sender_window(PyObject *sender)
{
    if (Py_TYPE(sender) != &SenderType)
        return -1;
    Sender *s = (Sender *)sender;
    if (s->conn == NULL)
        return -1;
    /* Borrowed, and nothing below runs Python: a lookup by an int key. */
    PyObject *st = PyDict_GetItemWithError(s->h2_streams, s->sid);
    if (st == NULL) {
        PyErr_Clear();
        return -1;
    }
    FlowFields *sw = stream_fields(st);
    if (sw == NULL)
        return -1;
    /* The frame limits too (can_send's): a read over a small-framed peer's
     * limit (nghttp2's default 16 KiB) would go the bytes way, whose hold
     * rule assumes updates at half a window. */
    long long n = s->h2_windows->outbound < sw->outbound ? s->h2_windows->outbound
                                                         : sw->outbound;
    if (n <= 0)
        return -1;
    if (n > s->h2_windows->max_outbound_frame)
        n = s->h2_windows->max_outbound_frame;
    if (n > s->send_max)
        n = s->send_max;
    return n > 0 && n <= PY_SSIZE_T_MAX ? (Py_ssize_t)n : -1;
}

static PyObject *sender_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                   PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "Sender takes one argument: the data");
        return NULL;
    }
    return sender_push((Sender *)self, args[0]);
}

static int sender_init(Sender *s, PyObject *args, PyObject *kw)
{
    PyObject *stream, *fallback, *pushed, *conn, *tls, *sslsock, *raw, *cst, *sst, *open;
    PyObject *source = Py_None;
    long long hold_window = 0;
    Py_ssize_t index;
    long long send_max;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "Sender takes no keyword arguments");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OOO!nOOOOO!O!OL|OL:Sender", &stream, &fallback, &PyList_Type,
                          &pushed, &index, &conn, &tls, &sslsock, &raw, &PyTuple_Type, &cst,
                          &PyTuple_Type, &sst, &open, &send_max, &source, &hold_window))
        return -1;
    if (index < 0 || index >= PyList_GET_SIZE(pushed)) {
        PyErr_SetString(PyExc_IndexError, "Sender index outside its list");
        return -1;
    }
    if (ssl_of(sslsock) == NULL)
        return -1;
    /* Not initialised (sender_push refuses) until every check below passed:
     * a failed __init__ must not leave the field pointers of another call. */
    Py_CLEAR(s->conn);
#define KEEP(field, value) do { PyObject *_v = (value); if (_v == NULL) return -1; \
                                Py_XSETREF(s->field, _v); } while (0)
    KEEP(stream, Py_NewRef(stream));
    KEEP(fallback, Py_NewRef(fallback));
    KEEP(pushed, Py_NewRef(pushed));
    KEEP(tls, Py_NewRef(tls));
    s->tls_flags = tls_fields(s->tls);    /* s->tls's own reference keeps it */
    KEEP(sslsock, Py_NewRef(sslsock));
    KEEP(raw, Py_NewRef(raw));
    KEEP(conn_states, Py_NewRef(cst));
    KEEP(stream_states, Py_NewRef(sst));
    KEEP(open, Py_NewRef(open));
    KEEP(source, Py_NewRef(source));
    KEEP(sid, PyObject_GetAttr(stream, s_stream_id));
    KEEP(core, PyObject_GetAttr(conn, s_core));
    KEEP(can_write, PyObject_GetAttr(conn, s_can_write));
    KEEP(core_streams, PyObject_GetAttr(s->core, s_core_streams));
    KEEP(h2, PyObject_GetAttr(s->core, s_h2));
    KEEP(h2_streams, PyObject_GetAttr(s->h2, s_streams));
    KEEP(guard, PyObject_GetAttr(s->h2, s_guard));
    if ((s->h2_windows = connection_fields(s->h2)) == NULL
            || (s->counters = guard_fields(s->guard)) == NULL
            || (s->tunnel = tunnel_fields(s->stream)) == NULL
            || (s->flags = core_fields(s->core)) == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "Sender needs h2fast's connection, the HBONE core and stream in C fields");
        return -1;
    }
    if (!PyDict_Check(s->core_streams) || !PyDict_Check(s->h2_streams)) {
        PyErr_SetString(PyExc_TypeError, "Sender needs the stream tables as dicts");
        return -1;
    }
    s->index = index;
    s->send_max = send_max;
    s->hold_window = hold_window;
    s->vectorcall = sender_vectorcall;
    KEEP(conn, Py_NewRef(conn));
#undef KEEP
    return 0;
}

static int sender_traverse(Sender *s, visitproc visit, void *arg)
{
    Py_VISIT(s->stream); Py_VISIT(s->fallback); Py_VISIT(s->pushed); Py_VISIT(s->sid);
    Py_VISIT(s->conn); Py_VISIT(s->core); Py_VISIT(s->h2); Py_VISIT(s->guard);
    Py_VISIT(s->can_write); Py_VISIT(s->core_streams); Py_VISIT(s->h2_streams);
    Py_VISIT(s->tls); Py_VISIT(s->sslsock); Py_VISIT(s->raw);
    Py_VISIT(s->conn_states); Py_VISIT(s->stream_states); Py_VISIT(s->open);
    Py_VISIT(s->source);
    return 0;
}

static int sender_clear(Sender *s)
{
    Py_CLEAR(s->stream); Py_CLEAR(s->fallback); Py_CLEAR(s->pushed); Py_CLEAR(s->sid);
    Py_CLEAR(s->conn); Py_CLEAR(s->core); Py_CLEAR(s->h2); Py_CLEAR(s->guard);
    Py_CLEAR(s->can_write); Py_CLEAR(s->core_streams); Py_CLEAR(s->h2_streams);
    s->tls_flags = NULL;
    Py_CLEAR(s->tls); Py_CLEAR(s->sslsock); Py_CLEAR(s->raw);
    Py_CLEAR(s->conn_states); Py_CLEAR(s->stream_states); Py_CLEAR(s->open);
    Py_CLEAR(s->source);
    return 0;
}

static void sender_dealloc(Sender *s)
{
    PyObject_GC_UnTrack(s);
    sender_clear(s);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyMemberDef sender_members[] = {
    {"frames", T_ULONGLONG, offsetof(Sender, frames), READONLY, "DATA frames sent in C"},
    {"in_place", T_ULONGLONG, offsetof(Sender, in_place), READONLY,
     "of them, framed and sealed in a TcpPump's read buffer"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject SenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal.core.hbone.native._native.Sender",
    .tp_doc = "core.pipe's push into an HBONE stream, with its common case in C (see send.c)",
    .tp_basicsize = sizeof(Sender),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Sender, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)sender_init,
    .tp_dealloc = (destructor)sender_dealloc,
    .tp_traverse = (traverseproc)sender_traverse,
    .tp_clear = (inquiry)sender_clear,
    .tp_members = sender_members,
};

int send_init(PyObject *module)
{
#define NAME(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1;
    NAME(s_value, "_value")
    NAME(s_closing, "closing")
    NAME(s_is_closing, "is_closing") NAME(s_write, "write") NAME(s_abort, "abort")
    NAME(s_get_write_buffer_size, "get_write_buffer_size")
    NAME(s_core, "core") NAME(s_h2, "_h2")
    NAME(s_guard, "guard") NAME(s_can_write, "can_write") NAME(s_streams, "streams")
    NAME(s_core_streams, "_streams") NAME(s_stream_id, "stream_id")
    NAME(s__hold, "_hold")
#undef NAME
    if ((sized_hold_window = PyLong_FromLong(SIZED_HOLD_WINDOW)) == NULL)
        return -1;
    if (PyModule_AddIntConstant(module, "SIZED_HOLD_WINDOW", SIZED_HOLD_WINDOW) < 0)
        return -1;
    if (PyType_Ready(&SenderType) < 0)
        return -1;
    Py_INCREF(&SenderType);
    if (PyModule_AddObject(module, "Sender", (PyObject *)&SenderType) < 0) {
        Py_DECREF(&SenderType);
        return -1;
    }
    return 0;
}
