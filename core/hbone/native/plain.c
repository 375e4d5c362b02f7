/* TcpPump: a piped TcpEnd's reading side in C (core/pipe.py).
 *
 * While core.pipe has given a TcpEnd a sink, every read of its socket runs
 * TcpEnd.data_received: a Python frame that hands the bytes to the sink (for
 * a ztunnel, send.c's Sender, which frames and seals them in C) and then one
 * more for the `_taken` hook (CountingEnd's byte count, the connection's
 * metrics). TcpEnd.set_sink installs a TcpPump as its transport's protocol
 * instead (transport.set_protocol) and puts itself back when the sink goes:
 * data_received is then one C call that does exactly what the Python one
 * does, on the same objects:
 *
 *     if not end._chunks and sink(data): taken(len(data)) / end.<counter> += len(data)
 *     else: end._queue(data)        (queue for read(), pause reading at the mark)
 *
 * `sink` is the TcpEnd's `_sink` (set_sink keeps the pump only while that is
 * the sink it was made with), `chunks` its `_chunks` deque (made once, never
 * replaced). `taken` is the end's `_taken` when a subclass overrides it,
 * else None; `counter` the attribute TcpEnd._taken adds to (its class's
 * `taken_counter`), or None. Every other protocol callback (EOF, connection
 * lost, pause and resume of writing) is the TcpEnd's own, called as is.
 *
 * On uvloop the pump is also a buffered protocol (get_buffer /
 * buffer_updated; asyncio's own loop keeps calling data_received): the
 * socket is read into one buffer per process with SENDER_ROOM bytes free in
 * front, and a read that send.c's Sender may send at once is framed there,
 * its DATA header written into that room, and sealed where it lies: no bytes
 * object per read (uvloop's copy out of its own buffer) and no copy of the
 * frame's first record into the Sender's stage. Any other read becomes bytes
 * and goes the data_received way above.
 *
 * Each such read is sized to what may be sent: get_buffer lends at most the
 * send window the Sender's stream and connection have left, and one frame
 * (sender_window), so a read always fits and the Sender holds the TcpEnd
 * for the window only once none is left (send.c's SIZED_HOLD_WINDOW): no
 * read is refused for the window and queued for the pipe's copy task, and
 * no TcpEnd is held while window is left that a late-updating peer waits to
 * see used.
 *
 *   TcpPump(end, sink, chunks, taken, counter)
 */

#include "_native.h"

#include <stddef.h>

typedef struct {
    PyObject_HEAD
    PyObject *end;       /* the TcpEnd */
    PyObject *sink;      /* its _sink */
    PyObject *chunks;    /* its _chunks (collections.deque) */
    PyObject *taken;     /* its overriding _taken, or None */
    PyObject *counter;   /* the attribute TcpEnd._taken counts in, or None */
} TcpPump;

/* What one read may take: a whole read must fit one DATA frame
 * (settings.SEND_FRAME_SIZE, the Sender's send_max) or the Sender refuses it;
 * uvloop's own reads are 256,000 bytes. */
#define PUMP_READ (256 * 1024)

/* The read buffer, lent to one read at a time: uvloop's alloc callback
 * (get_buffer), the recv and its read callback (buffer_updated) run back to
 * back for one socket, and buffer_updated is done with it when it returns
 * (sealed, or copied into bytes). A process holds one, not one per
 * connection. Each get_buffer gives a new memoryview of the PUMP_READ
 * bytes after the room, so no caller's release() can spoil another's. */
static char read_buf[SENDER_ROOM + PUMP_READ];

static PyObject *s_queue, *s_eof_received, *s_connection_lost, *s_pause_writing,
    *s_resume_writing;

/* 1 if __init__ ran (and tp_clear did not undo it), else 0 with ValueError:
 * every callback checks before it touches a field. */
static int ready(TcpPump *p)
{
    if (p->end != NULL)
        return 1;
    PyErr_SetString(PyExc_ValueError, "TcpPump not initialised");
    return 0;
}

/* The sink took n bytes: TcpEnd._taken(n), or its counter += n. */
static PyObject *taken(TcpPump *p, Py_ssize_t n)
{
    if (p->taken != Py_None) {
        PyObject *size = PyLong_FromSsize_t(n);
        if (size == NULL)
            return NULL;
        PyObject *r = PyObject_CallOneArg(p->taken, size);
        Py_DECREF(size);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    } else if (p->counter != Py_None && add_ll(p->end, p->counter, n) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *pump_data_received(TcpPump *p, PyObject *data)
{
    if (!ready(p))
        return NULL;
    Py_ssize_t queued = PyObject_Length(p->chunks);
    if (queued < 0)
        return NULL;
    if (queued == 0) {
        PyObject *r = PyObject_CallOneArg(p->sink, data);
        if (r == NULL)
            return NULL;
        int took = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (took < 0)
            return NULL;
        if (took) {
            Py_ssize_t n = PyObject_Length(data);
            if (n < 0)
                return NULL;
            return taken(p, n);
        }
    }
    return PyObject_CallMethodOneArg(p->end, s_queue, data);
}

static PyObject *pump_get_buffer(TcpPump *p, PyObject *sizehint)
{
    (void)sizehint;             /* uvloop's suggestion; what one read may take is ours */
    if (!ready(p))
        return NULL;
    /* What the sink may send now in one frame, if it is a Sender that
     * knows (else a whole PUMP_READ, as the bytes path takes any size):
     * buffer_updated runs right after this read, with no Python in
     * between, so it fits. */
    Py_ssize_t size = sender_window(p->sink);
    if (size <= 0 || size > PUMP_READ)
        size = PUMP_READ;
    return PyMemoryView_FromMemory(read_buf + SENDER_ROOM, size, PyBUF_WRITE);
}

static PyObject *pump_buffer_updated(TcpPump *p, PyObject *arg)
{
    if (!ready(p))
        return NULL;
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0 || n > PUMP_READ) {
        PyErr_SetString(PyExc_ValueError, "TcpPump.buffer_updated: more than its buffer");
        return NULL;
    }
    Py_ssize_t queued = PyObject_Length(p->chunks);
    if (queued < 0)
        return NULL;
    if (queued == 0) {
        int sent = sender_push_room(p->sink, read_buf, n);
        if (sent < 0)
            return NULL;
        if (sent)
            return taken(p, n);
    }
    PyObject *data = PyBytes_FromStringAndSize(read_buf + SENDER_ROOM, n);
    if (data == NULL)
        return NULL;
    PyObject *r = pump_data_received(p, data);
    Py_DECREF(data);
    return r;
}

static PyObject *pump_eof_received(TcpPump *p, PyObject *unused)
{
    (void)unused;
    if (!ready(p))
        return NULL;
    return PyObject_CallMethodNoArgs(p->end, s_eof_received);
}

static PyObject *pump_connection_lost(TcpPump *p, PyObject *exc)
{
    if (!ready(p))
        return NULL;
    return PyObject_CallMethodOneArg(p->end, s_connection_lost, exc);
}

static PyObject *pump_pause_writing(TcpPump *p, PyObject *unused)
{
    (void)unused;
    if (!ready(p))
        return NULL;
    return PyObject_CallMethodNoArgs(p->end, s_pause_writing);
}

static PyObject *pump_resume_writing(TcpPump *p, PyObject *unused)
{
    (void)unused;
    if (!ready(p))
        return NULL;
    return PyObject_CallMethodNoArgs(p->end, s_resume_writing);
}

static int pump_init(TcpPump *p, PyObject *args, PyObject *kw)
{
    PyObject *end, *sink, *chunks, *taken, *counter;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "TcpPump takes no keyword arguments");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OOOOO:TcpPump", &end, &sink, &chunks, &taken, &counter))
        return -1;
    if (!PyCallable_Check(sink) || (taken != Py_None && !PyCallable_Check(taken))) {
        PyErr_SetString(PyExc_TypeError, "TcpPump needs a callable sink and taken (or None)");
        return -1;
    }
    if (counter != Py_None && !PyUnicode_Check(counter)) {
        PyErr_SetString(PyExc_TypeError, "TcpPump's counter is an attribute name or None");
        return -1;
    }
    Py_XSETREF(p->end, Py_NewRef(end));
    Py_XSETREF(p->sink, Py_NewRef(sink));
    Py_XSETREF(p->chunks, Py_NewRef(chunks));
    Py_XSETREF(p->taken, Py_NewRef(taken));
    Py_XSETREF(p->counter, Py_NewRef(counter));
    return 0;
}

static int pump_traverse(TcpPump *p, visitproc visit, void *arg)
{
    Py_VISIT(p->end); Py_VISIT(p->sink); Py_VISIT(p->chunks); Py_VISIT(p->taken);
    Py_VISIT(p->counter);
    return 0;
}

static int pump_clear(TcpPump *p)
{
    Py_CLEAR(p->end); Py_CLEAR(p->sink); Py_CLEAR(p->chunks); Py_CLEAR(p->taken);
    Py_CLEAR(p->counter);
    return 0;
}

static void pump_dealloc(TcpPump *p)
{
    PyObject_GC_UnTrack(p);
    pump_clear(p);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyObject *pump_get_end(TcpPump *p, void *unused)
{
    (void)unused;
    return Py_NewRef(p->end != NULL ? p->end : Py_None);
}

static PyObject *pump_get_sink(TcpPump *p, void *unused)
{
    (void)unused;
    return Py_NewRef(p->sink != NULL ? p->sink : Py_None);
}

static PyGetSetDef pump_getset[] = {
    {"end", (getter)pump_get_end, NULL, "the TcpEnd", NULL},
    {"sink", (getter)pump_get_sink, NULL, "the sink it was made with", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef pump_methods[] = {
    {"data_received", (PyCFunction)pump_data_received, METH_O,
     "TcpEnd.data_received while piped, in C"},
    {"get_buffer", (PyCFunction)pump_get_buffer, METH_O,
     "the process's read buffer (see plain.c)"},
    {"buffer_updated", (PyCFunction)pump_buffer_updated, METH_O,
     "data_received for the bytes read into it, a Sender's sent from where they lie"},
    {"eof_received", (PyCFunction)pump_eof_received, METH_NOARGS, "the TcpEnd's"},
    {"connection_lost", (PyCFunction)pump_connection_lost, METH_O, "the TcpEnd's"},
    {"pause_writing", (PyCFunction)pump_pause_writing, METH_NOARGS, "the TcpEnd's"},
    {"resume_writing", (PyCFunction)pump_resume_writing, METH_NOARGS, "the TcpEnd's"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TcpPumpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal.core.hbone.native._native.TcpPump",
    .tp_doc = "a piped TcpEnd's protocol, data_received in C (see plain.c)",
    .tp_basicsize = sizeof(TcpPump),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)pump_init,
    .tp_dealloc = (destructor)pump_dealloc,
    .tp_traverse = (traverseproc)pump_traverse,
    .tp_clear = (inquiry)pump_clear,
    .tp_methods = pump_methods,
    .tp_getset = pump_getset,
};

int plain_init(PyObject *module)
{
#define NAME(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1;
    NAME(s_queue, "_queue") NAME(s_eof_received, "eof_received")
    NAME(s_connection_lost, "connection_lost") NAME(s_pause_writing, "pause_writing")
    NAME(s_resume_writing, "resume_writing")
#undef NAME
    if (PyType_Ready(&TcpPumpType) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "PUMP_READ", PUMP_READ) < 0)
        return -1;
    Py_INCREF(&TcpPumpType);
    if (PyModule_AddObject(module, "TcpPump", (PyObject *)&TcpPumpType) < 0) {
        Py_DECREF(&TcpPumpType);
        return -1;
    }
    return 0;
}
