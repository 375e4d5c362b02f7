/* HTTP/2 flow-control windows, flood-guard counters and the HBONE core's
 * per-frame fields stored in C structs.
 *
 * The C data paths (relay.c, send.c) read and change, per DATA frame, h2's
 * windows (the connection's and the stream's send windows, both inbound
 * WindowManagers) and shoal's FloodGuard counters. As Python attributes each
 * of those is a dict lookup after a type lookup (PyObject_GetAttr, about a
 * dozen per frame and side: docs/bench/profiles/README.md). Here they are
 * fields of C structs, the bases of h2fast's subclasses of h2's objects
 * (_WindowManager, _H2Stream, H2ConnectionFast) and of h2limits.FloodGuard:
 * Python reads and writes them as before, through member descriptors, and the
 * C paths through a pointer. One storage, so there is nothing to sync: after
 * a C step the objects hold exactly what the Python path would have made.
 *
 *   Window             max_window_size, current_window_size, _bytes_processed
 *   StreamWindows      outbound_flow_control_window, _inbound_window_manager,
 *                      state_machine, _expected_content_length
 *   ConnectionWindows  outbound_flow_control_window,
 *                      _inbound_flow_control_window_manager, state_machine,
 *                      _chunks, _data_to_send (the output queue),
 *                      max_inbound_frame_size, max_outbound_frame_size
 *   StateMachine       state (h2's connection and stream state machines)
 *   GuardCounters      data_frames_sent, empty_in_a_row, outbound_control
 *   CoreFlags          dead, draining, goaway_received (protocol._HboneCore)
 *   CoreStream         state, local_ended, remote_ended (protocol._Stream)
 *   TunnelFields       bytes_sent, bytes_received, _chunks, _sink, _error,
 *                      _writing (stream.HboneStream)
 *   PlainEndFields     transport, _drain_waiter, bytes_written, _can_write
 *                      (core.pipe.TcpEnd: the plain socket a relay writes to)
 *   TlsFields          _chan, _linger, _relay, _app_transport, closing
 *                      (tlsio._TlsProtocol: what TlsPump reads per TLS read)
 *   FrameBufferFields  _data, _body, _headers_buffer, _preamble_len
 *                      (h2fast._FrameBuffer: idle before each relay feed)
 *
 * The state checks of the C paths (is the stream OPEN?) read the state the
 * same way: connection or stream → state_machine → state, three pointers.
 * The types holding references are GC types whose traverse, clear and
 * dealloc follow their member tables (the T_OBJECT and T_OBJECT_EX fields).
 */

#include "_native.h"

#include <stddef.h>
#include <string.h>
#include <structmember.h>

/* The C type of `o` among this file's: the first static type in its bases
 * (Python's subclasses are heap types). */
static PyTypeObject *fields_type(PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);
    while (t != NULL && (t->tp_flags & Py_TPFLAGS_HEAPTYPE))
        t = t->tp_base;
    return t;
}

/* Each reference field of o (its C type's T_OBJECT / T_OBJECT_EX members). */
#define EACH_REF(o, slot)                                                     \
    for (PyMemberDef *_m = fields_type(o)->tp_members; _m->name != NULL; _m++) \
        if (_m->type == T_OBJECT || _m->type == T_OBJECT_EX)                  \
            for (PyObject **slot = (PyObject **)((char *)(o) + _m->offset); slot; slot = NULL)

static int fields_traverse(PyObject *o, visitproc visit, void *arg)
{
    EACH_REF(o, ref)
        Py_VISIT(*ref);
    return 0;
}

static int fields_clear(PyObject *o)
{
    EACH_REF(o, ref)
        Py_CLEAR(*ref);
    return 0;
}

static void fields_dealloc(PyObject *o)
{
    PyObject_GC_UnTrack(o);
    fields_clear(o);
    Py_TYPE(o)->tp_free(o);
}

/* A base type of fields: GC if it holds references. */
#define FIELDS_TYPE(var, name, doc, fields, members, flags, ...)              \
    static PyTypeObject var = {                                               \
        PyVarObject_HEAD_INIT(NULL, 0)                                        \
        .tp_name = "shoal.core.hbone.native._native." name,                   \
        .tp_doc = doc,                                                        \
        .tp_basicsize = sizeof(fields),                                       \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | (flags),       \
        .tp_new = PyType_GenericNew,                                          \
        .tp_members = members,                                                \
        __VA_ARGS__                                                           \
    }
#define COUNTERS_TYPE(var, name, doc, fields, members)                        \
    FIELDS_TYPE(var, name, doc, fields, members, 0)
#define REFS_TYPE(var, name, doc, fields, members)                            \
    FIELDS_TYPE(var, name, doc, fields, members, Py_TPFLAGS_HAVE_GC,          \
                .tp_dealloc = fields_dealloc, .tp_traverse = fields_traverse,  \
                .tp_clear = fields_clear)

static PyMemberDef window_members[] = {
    {"max_window_size", T_LONGLONG, offsetof(WindowFields, max_window), 0, NULL},
    {"current_window_size", T_LONGLONG, offsetof(WindowFields, current), 0, NULL},
    {"_bytes_processed", T_LONGLONG, offsetof(WindowFields, processed), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};
COUNTERS_TYPE(WindowType, "Window",
              "An h2 WindowManager's counters, in C (base of h2fast._WindowManager)",
              WindowFields, window_members);

/* The inbound manager and the state machine are T_OBJECT_EX: h2 always has
 * them; deleting one makes reads raise AttributeError, as with h2's own. */
static PyMemberDef stream_members[] = {
    {"outbound_flow_control_window", T_LONGLONG, offsetof(FlowFields, outbound), 0, NULL},
    {"_inbound_window_manager", T_OBJECT_EX, offsetof(FlowFields, inbound), 0, NULL},
    {"state_machine", T_OBJECT_EX, offsetof(FlowFields, state_machine), 0, NULL},
    {"_expected_content_length", T_OBJECT_EX, offsetof(FlowFields, expected_length), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};
REFS_TYPE(StreamWindowsType, "StreamWindows",
          "An h2 stream's windows and state, in C (base of h2fast._H2Stream)",
          FlowFields, stream_members);

static PyMemberDef connection_members[] = {
    {"outbound_flow_control_window", T_LONGLONG, offsetof(FlowFields, outbound), 0, NULL},
    {"_inbound_flow_control_window_manager", T_OBJECT_EX, offsetof(FlowFields, inbound), 0, NULL},
    {"state_machine", T_OBJECT_EX, offsetof(FlowFields, state_machine), 0, NULL},
    {"_chunks", T_OBJECT_EX, offsetof(FlowFields, chunks), 0, NULL},
    {"_data_to_send", T_OBJECT_EX, offsetof(FlowFields, data_to_send), 0, NULL},
    {"max_inbound_frame_size", T_LONGLONG, offsetof(FlowFields, max_inbound_frame), 0, NULL},
    {"max_outbound_frame_size", T_LONGLONG, offsetof(FlowFields, max_outbound_frame), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};
REFS_TYPE(ConnectionWindowsType, "ConnectionWindows",
          "An h2 connection's windows, state, output, in C (base of h2fast.H2ConnectionFast)",
          FlowFields, connection_members);

static PyMemberDef state_members[] = {
    {"state", T_OBJECT_EX, offsetof(StateFields, state), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};
REFS_TYPE(StateType, "StateMachine",
          "An h2 state machine's state, in C (base of h2fast's state machines)",
          StateFields, state_members);

static PyMemberDef guard_members[] = {
    {"data_frames_sent", T_LONGLONG, offsetof(GuardFields, data_frames_sent), 0, NULL},
    {"empty_in_a_row", T_LONGLONG, offsetof(GuardFields, empty_in_a_row), 0, NULL},
    {"outbound_control", T_LONGLONG, offsetof(GuardFields, outbound_control), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};
COUNTERS_TYPE(GuardType, "GuardCounters",
              "A FloodGuard's per-frame counters, in C (base of h2limits.FloodGuard)",
              GuardFields, guard_members);

static PyMemberDef core_members[] = {
    {"dead", T_BOOL, offsetof(CoreFields, dead), 0, NULL},
    {"draining", T_BOOL, offsetof(CoreFields, draining), 0, NULL},
    {"goaway_received", T_BOOL, offsetof(CoreFields, goaway_received), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};
COUNTERS_TYPE(CoreType, "CoreFlags",
              "The HBONE core's connection flags, in C (base of protocol._HboneCore)",
              CoreFields, core_members);

static PyMemberDef cstream_members[] = {
    {"state", T_OBJECT_EX, offsetof(CoreStreamFields, state), 0, NULL},
    {"local_ended", T_BOOL, offsetof(CoreStreamFields, local_ended), 0, NULL},
    {"remote_ended", T_BOOL, offsetof(CoreStreamFields, remote_ended), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};
REFS_TYPE(CoreStreamType, "CoreStream",
          "The HBONE core's per-stream record, in C (base of protocol._Stream)",
          CoreStreamFields, cstream_members);

/* _sink and _error are T_OBJECT: unset reads as None, as they start. */
static PyMemberDef tunnel_members[] = {
    {"bytes_sent", T_LONGLONG, offsetof(TunnelFields, bytes_sent), 0, NULL},
    {"bytes_received", T_LONGLONG, offsetof(TunnelFields, bytes_received), 0, NULL},
    {"_chunks", T_OBJECT_EX, offsetof(TunnelFields, chunks), 0, NULL},
    {"_sink", T_OBJECT, offsetof(TunnelFields, sink), 0, NULL},
    {"_error", T_OBJECT, offsetof(TunnelFields, error), 0, NULL},
    {"_writing", T_BOOL, offsetof(TunnelFields, writing), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};
REFS_TYPE(TunnelType, "TunnelFields",
          "An HBONE tunnel's per-frame fields, in C (base of stream.HboneStream)",
          TunnelFields, tunnel_members);

/* transport and _drain_waiter are T_OBJECT: unset reads as None, as they start. */
static PyMemberDef plain_end_members[] = {
    {"transport", T_OBJECT, offsetof(PlainEndFields, transport), 0, NULL},
    {"_drain_waiter", T_OBJECT, offsetof(PlainEndFields, drain_waiter), 0, NULL},
    {"bytes_written", T_LONGLONG, offsetof(PlainEndFields, bytes_written), 0, NULL},
    {"_can_write", T_BOOL, offsetof(PlainEndFields, can_write), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};
REFS_TYPE(PlainEndType, "PlainEndFields",
          "A plain TCP end's per-write fields, in C (base of core.pipe.TcpEnd)",
          PlainEndFields, plain_end_members);

/* T_OBJECT: unset reads as None. closing is T_BOOL, as _TlsProtocol only
 * ever sets a bool. */
static PyMemberDef tls_members[] = {
    {"_chan", T_OBJECT, offsetof(TlsFields, chan), 0, NULL},
    {"_linger", T_OBJECT, offsetof(TlsFields, linger), 0, NULL},
    {"_relay", T_OBJECT, offsetof(TlsFields, relay), 0, NULL},
    {"_app_transport", T_OBJECT, offsetof(TlsFields, app_transport), 0, NULL},
    {"closing", T_BOOL, offsetof(TlsFields, closing), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};
REFS_TYPE(TlsType, "TlsFields",
          "A TLS connection's per-read fields, in C (base of tlsio._TlsProtocol)",
          TlsFields, tls_members);

static PyMemberDef frame_buffer_members[] = {
    {"_data", T_OBJECT_EX, offsetof(FrameBufferFields, data), 0, NULL},
    {"_body", T_OBJECT, offsetof(FrameBufferFields, body), 0, NULL},
    {"_headers_buffer", T_OBJECT_EX, offsetof(FrameBufferFields, headers_buffer), 0, NULL},
    {"_preamble_len", T_LONGLONG, offsetof(FrameBufferFields, preamble_len), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};
REFS_TYPE(FrameBufferType, "FrameBufferFields",
          "h2's frame buffer's state, in C (base of h2fast._FrameBuffer)",
          FrameBufferFields, frame_buffer_members);

#define FIELDS_OF(fn, type, var)                                              \
    type *fn(PyObject *o)                                                     \
    {                                                                         \
        return o != NULL && PyObject_TypeCheck(o, &var) ? (type *)o : NULL;   \
    }
FIELDS_OF(window_fields, WindowFields, WindowType)
FIELDS_OF(stream_fields, FlowFields, StreamWindowsType)
FIELDS_OF(connection_fields, FlowFields, ConnectionWindowsType)
FIELDS_OF(guard_fields, GuardFields, GuardType)
FIELDS_OF(core_fields, CoreFields, CoreType)
FIELDS_OF(core_stream_fields, CoreStreamFields, CoreStreamType)
FIELDS_OF(tunnel_fields, TunnelFields, TunnelType)
FIELDS_OF(plain_end_fields, PlainEndFields, PlainEndType)
FIELDS_OF(tls_fields, TlsFields, TlsType)

PyObject *flow_state(PyObject *o)
{
    FlowFields *f = stream_fields(o);
    if (f == NULL && (f = connection_fields(o)) == NULL)
        return NULL;
    PyObject *sm = f->state_machine;
    if (sm == NULL || !PyObject_TypeCheck(sm, &StateType))
        return NULL;
    return ((StateFields *)sm)->state;
}

/* len(o) == 0 for the output queue's list and bytearray (any other object:
 * its len(); unset: AttributeError, as h2's attribute would). */
static int is_empty(PyObject *o, const char *name)
{
    if (o == NULL) {
        PyErr_Format(PyExc_AttributeError, "h2 object has no %s", name);
        return -1;
    }
    if (PyList_CheckExact(o))
        return PyList_GET_SIZE(o) == 0;
    if (PyByteArray_CheckExact(o))
        return PyByteArray_GET_SIZE(o) == 0;
    Py_ssize_t n = PyObject_Length(o);
    return n < 0 ? -1 : n == 0;
}

int frame_buffer_idle(PyObject *o)
{
    if (o == NULL || !PyObject_TypeCheck(o, &FrameBufferType))
        return -2;
    FrameBufferFields *f = (FrameBufferFields *)o;
    int e = is_empty(f->data, "_data");
    if (e <= 0)
        return e;
    if (f->body != NULL && f->body != Py_None)
        return 0;
    e = is_empty(f->headers_buffer, "_headers_buffer");
    return e <= 0 ? e : f->preamble_len == 0;
}

int output_empty(FlowFields *h2)
{
    int e = is_empty(h2->chunks, "_chunks");
    return e > 0 ? is_empty(h2->data_to_send, "_data_to_send") : e;
}

int flow_init(PyObject *module)
{
    PyTypeObject *types[] = {&WindowType, &StreamWindowsType, &ConnectionWindowsType, &StateType,
                             &GuardType, &CoreType, &CoreStreamType, &TunnelType,
                             &PlainEndType, &TlsType, &FrameBufferType};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        if (PyType_Ready(types[i]) < 0)
            return -1;
        Py_INCREF(types[i]);
        if (PyModule_AddObject(module, strrchr(types[i]->tp_name, '.') + 1,
                               (PyObject *)types[i]) < 0) {
            Py_DECREF(types[i]);
            return -1;
        }
    }
    return 0;
}
