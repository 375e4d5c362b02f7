/* TlsPump: an HBONE connection's TLS reading side in C (core/hbone/tlsio.py).
 *
 * After the handshake, each read of the TCP socket under an HBONE
 * connection runs three Python frames of _TlsProtocol around C calls:
 * get_buffer (the Channel's buffer), buffer_updated (Channel.received, then
 * _read_app, then Channel.release) and _read_app (relay.c's Relay.feed).
 * _TlsProtocol installs a TlsPump as its TCP transport's protocol once the
 * Channel exists; its get_buffer and buffer_updated do exactly what those
 * frames do, reading the protocol's fields afresh on every call:
 *
 *   get_buffer(hint):  chan = proto._chan
 *                      chan.get_buffer() if chan is not None else proto.get_buffer(hint)
 *   buffer_updated(n): chan = proto._chan
 *                      if chan is None: proto.buffer_updated(n)
 *                      elif proto._linger is None:
 *                          chan.received(n); <_read_app>; chan.release()
 *   <_read_app>:       relay = proto._relay
 *                      if relay is not None and proto._app_transport is not None
 *                              and not proto.closing:
 *                          rest = relay.feed()
 *                          if rest is None: done
 *                          if rest is not NotImplemented: proto._relayed_rest(*rest); done
 *                      proto._read_batched()
 *
 * The protocol's fields are read by pointer when they are C's (its base
 * TlsFields, flow.c; by name otherwise, as under a Python stand-in), and the
 * Channel's and Relay's methods are their C functions when the objects are
 * exactly those types (by name otherwise): per read, no attribute lookup
 * and no method call by name on the native path.
 *
 * Every other callback (data_received on a loop that does not lend buffers,
 * EOF, connection lost, pause and resume of writing) is the protocol's own.
 *
 *   TlsPump(proto)
 */

#include "_native.h"

typedef struct {
    PyObject_HEAD
    PyObject *proto;     /* the _TlsProtocol */
    TlsFields *fields;   /* proto's fields if it has them in C (flow.c), else NULL */
} TlsPump;

static PyObject *s_chan, *s_linger, *s_relay, *s_app_transport, *s_closing, *s_get_buffer,
    *s_buffer_updated, *s_received, *s_release, *s_feed, *s_relayed_rest, *s_read_batched,
    *s_data_received, *s_eof_received, *s_connection_lost, *s_pause_writing,
    *s_resume_writing;

#define PROTO(p) do { if ((p)->proto == NULL) { \
    PyErr_SetString(PyExc_ValueError, "TlsPump not initialised"); return NULL; } } while (0)

/* proto.<field> (a new reference): by pointer when the protocol's fields
 * are C's, else by name. */
static PyObject *field(TlsPump *p, PyObject **slot, PyObject *name)
{
    if (p->fields == NULL)
        return PyObject_GetAttr(p->proto, name);
    return Py_NewRef(*slot != NULL ? *slot : Py_None);
}
#define FIELD(p, member, name) \
    field((p), (p)->fields != NULL ? &(p)->fields->member : NULL, (name))

/* The Channel's and the Relay's methods: their C functions when the object
 * is exactly the module's type (not a subclass, not a test double), else
 * the call by name. */
static PyObject *chan_get_buffer(PyObject *chan)
{
    return channel_exact(chan) ? channel_get_buffer_of(chan)
                               : PyObject_CallMethodNoArgs(chan, s_get_buffer);
}

static PyObject *chan_received(PyObject *chan, PyObject *nbytes)
{
    return channel_exact(chan) ? channel_received_of(chan, nbytes)
                               : PyObject_CallMethodOneArg(chan, s_received, nbytes);
}

static PyObject *chan_release(PyObject *chan)
{
    return channel_exact(chan) ? channel_release_of(chan)
                               : PyObject_CallMethodNoArgs(chan, s_release);
}

static PyObject *pump_get_buffer(TlsPump *p, PyObject *hint)
{
    PROTO(p);
    PyObject *chan = FIELD(p, chan, s_chan);
    if (chan == NULL)
        return NULL;
    PyObject *r = chan != Py_None ? chan_get_buffer(chan)
                                  : PyObject_CallMethodOneArg(p->proto, s_get_buffer, hint);
    Py_DECREF(chan);
    return r;
}

/* 1 if proto may hand reads to its relay (an app transport, not closing),
 * 0 if not, -1 with an exception. */
static int relay_open(TlsPump *p)
{
    TlsFields *f = p->fields;
    if (f != NULL)
        return f->app_transport != NULL && f->app_transport != Py_None && !f->closing;
    PyObject *t = PyObject_GetAttr(p->proto, s_app_transport);
    if (t == NULL)
        return -1;
    int go = t != Py_None;
    Py_DECREF(t);
    if (!go)
        return 0;
    int closing = attr_true(p->proto, s_closing);
    return closing < 0 ? -1 : !closing;
}

/* _TlsProtocol._read_app: 0, or -1 with an exception. */
static int read_app(TlsPump *p)
{
    PyObject *proto = p->proto, *r;
    PyObject *relay = FIELD(p, relay, s_relay);
    if (relay == NULL)
        return -1;
    int go = relay != Py_None ? relay_open(p) : 0;
    if (go < 0) {
        Py_DECREF(relay);
        return -1;
    }
    if (go) {
        PyObject *rest = relay_exact(relay) ? relay_feed_of(relay)
                                            : PyObject_CallMethodNoArgs(relay, s_feed);
        Py_DECREF(relay);
        if (rest == NULL)
            return -1;
        if (rest == Py_None) {
            Py_DECREF(rest);
            return 0;
        }
        if (rest != Py_NotImplemented) {
            PyObject *m = PyObject_GetAttr(proto, s_relayed_rest);
            r = m == NULL ? NULL : PyObject_Call(m, rest, NULL);
            Py_XDECREF(m);
            Py_DECREF(rest);
            Py_XDECREF(r);
            return r == NULL ? -1 : 0;
        }
        Py_DECREF(rest);
    } else {
        Py_DECREF(relay);
    }
    r = PyObject_CallMethodNoArgs(proto, s_read_batched);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static PyObject *pump_buffer_updated(TlsPump *p, PyObject *nbytes)
{
    PROTO(p);
    PyObject *chan = FIELD(p, chan, s_chan);
    if (chan == NULL)
        return NULL;
    if (chan == Py_None) {
        Py_DECREF(chan);
        return PyObject_CallMethodOneArg(p->proto, s_buffer_updated, nbytes);
    }
    TlsFields *f = p->fields;
    int lingering = f != NULL ? f->linger == NULL || f->linger == Py_None
                              : attr_none(p->proto, s_linger);
    PyObject *r = NULL;
    if (lingering < 0)
        goto out;
    if (!lingering) {             /* closing after an error: dropped */
        r = Py_NewRef(Py_None);
        goto out;
    }
    r = chan_received(chan, nbytes);
    if (r == NULL)
        goto out;
    Py_DECREF(r);
    r = NULL;
    if (read_app(p) < 0)          /* runs Python: chan is our own reference */
        goto out;
    r = chan_release(chan);
out:
    Py_DECREF(chan);
    return r;
}

#define DELEGATE0(fn, name) \
    static PyObject *fn(TlsPump *p, PyObject *unused) \
    { (void)unused; PROTO(p); return PyObject_CallMethodNoArgs(p->proto, name); }
#define DELEGATE1(fn, name) \
    static PyObject *fn(TlsPump *p, PyObject *arg) \
    { PROTO(p); return PyObject_CallMethodOneArg(p->proto, name, arg); }
DELEGATE1(pump_data_received, s_data_received)
DELEGATE0(pump_eof_received, s_eof_received)
DELEGATE1(pump_connection_lost, s_connection_lost)
DELEGATE0(pump_pause_writing, s_pause_writing)
DELEGATE0(pump_resume_writing, s_resume_writing)

static int pump_init(TlsPump *p, PyObject *args, PyObject *kw)
{
    PyObject *proto;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "TlsPump takes no keyword arguments");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "O:TlsPump", &proto))
        return -1;
    Py_XSETREF(p->proto, Py_NewRef(proto));
    p->fields = tls_fields(proto);    /* p->proto's own reference keeps it */
    return 0;
}

static int pump_traverse(TlsPump *p, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(p));
    Py_VISIT(p->proto);
    return 0;
}

static int pump_clear(TlsPump *p)
{
    p->fields = NULL;
    Py_CLEAR(p->proto);
    return 0;
}

static void pump_dealloc(TlsPump *p)
{
    PyTypeObject *type = Py_TYPE(p);
    PyObject_GC_UnTrack(p);
    pump_clear(p);
    type->tp_free((PyObject *)p);
    Py_DECREF(type);              /* a heap type's instances hold it */
}

static PyObject *pump_get_proto(TlsPump *p, void *unused)
{
    (void)unused;
    return Py_NewRef(p->proto != NULL ? p->proto : Py_None);
}

static PyGetSetDef pump_getset[] = {
    {"proto", (getter)pump_get_proto, NULL, "the _TlsProtocol", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef pump_methods[] = {
    {"get_buffer", (PyCFunction)pump_get_buffer, METH_O, "_TlsProtocol.get_buffer, in C"},
    {"buffer_updated", (PyCFunction)pump_buffer_updated, METH_O,
     "_TlsProtocol.buffer_updated and _read_app, in C"},
    {"data_received", (PyCFunction)pump_data_received, METH_O, "the protocol's"},
    {"eof_received", (PyCFunction)pump_eof_received, METH_NOARGS, "the protocol's"},
    {"connection_lost", (PyCFunction)pump_connection_lost, METH_O, "the protocol's"},
    {"pause_writing", (PyCFunction)pump_pause_writing, METH_NOARGS, "the protocol's"},
    {"resume_writing", (PyCFunction)pump_resume_writing, METH_NOARGS, "the protocol's"},
    {NULL, NULL, 0, NULL},
};

/* A heap type whose base is asyncio.BufferedProtocol: every loop then lends
 * it buffers (asyncio's transports check isinstance, uvloop's get_buffer). */
static PyType_Slot pump_slots[] = {
    {Py_tp_doc, "an HBONE connection's TLS protocol, its reading in C (see tlspump.c)"},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, pump_init},
    {Py_tp_dealloc, pump_dealloc},
    {Py_tp_traverse, pump_traverse},
    {Py_tp_clear, pump_clear},
    {Py_tp_methods, pump_methods},
    {Py_tp_getset, pump_getset},
    {0, NULL},
};

static PyType_Spec pump_spec = {
    .name = "shoal.core.hbone.native._native.TlsPump",
    .basicsize = sizeof(TlsPump),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = pump_slots,
};

int tlspump_init(PyObject *module)
{
#define NAME(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1;
    NAME(s_chan, "_chan") NAME(s_linger, "_linger") NAME(s_relay, "_relay")
    NAME(s_app_transport, "_app_transport") NAME(s_closing, "closing")
    NAME(s_get_buffer, "get_buffer") NAME(s_buffer_updated, "buffer_updated")
    NAME(s_received, "received") NAME(s_release, "release") NAME(s_feed, "feed")
    NAME(s_relayed_rest, "_relayed_rest") NAME(s_read_batched, "_read_batched")
    NAME(s_data_received, "data_received") NAME(s_eof_received, "eof_received")
    NAME(s_connection_lost, "connection_lost") NAME(s_pause_writing, "pause_writing")
    NAME(s_resume_writing, "resume_writing")
#undef NAME
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL)
        return -1;
    PyObject *base = PyObject_GetAttrString(asyncio, "BufferedProtocol");
    Py_DECREF(asyncio);
    if (base == NULL)
        return -1;
    PyObject *type = PyType_FromSpecWithBases(&pump_spec, base);
    Py_DECREF(base);
    if (type == NULL)
        return -1;
    if (PyModule_AddObject(module, "TlsPump", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}
