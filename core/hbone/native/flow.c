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
 *
 * The state checks of the C paths (is the stream OPEN?) read the state the
 * same way: connection or stream → state_machine → state, three pointers.
 */

#include "_native.h"

#include <stddef.h>
#include <structmember.h>

static PyMemberDef window_members[] = {
    {"max_window_size", T_LONGLONG, offsetof(WindowFields, max_window), 0, NULL},
    {"current_window_size", T_LONGLONG, offsetof(WindowFields, current), 0, NULL},
    {"_bytes_processed", T_LONGLONG, offsetof(WindowFields, processed), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* A base type of plain counters (no references: no GC). */
#define COUNTERS_TYPE(var, name, doc, fields, members)                        \
    static PyTypeObject var = {                                               \
        PyVarObject_HEAD_INIT(NULL, 0)                                        \
        .tp_name = "shoal.core.hbone.native._native." name,                   \
        .tp_doc = doc,                                                        \
        .tp_basicsize = sizeof(fields),                                       \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,                 \
        .tp_new = PyType_GenericNew,                                          \
        .tp_members = members,                                                \
    }

COUNTERS_TYPE(WindowType, "Window",
              "An h2 WindowManager's counters, in C (base of h2fast._WindowManager)",
              WindowFields, window_members);

static int flow_traverse(FlowFields *f, visitproc visit, void *arg)
{
    Py_VISIT(f->inbound);
    Py_VISIT(f->state_machine);
    Py_VISIT(f->expected_length);
    Py_VISIT(f->chunks);
    Py_VISIT(f->data_to_send);
    return 0;
}

static int flow_clear(FlowFields *f)
{
    Py_CLEAR(f->inbound);
    Py_CLEAR(f->state_machine);
    Py_CLEAR(f->expected_length);
    Py_CLEAR(f->chunks);
    Py_CLEAR(f->data_to_send);
    return 0;
}

static void flow_dealloc(FlowFields *f)
{
    PyObject_GC_UnTrack(f);
    flow_clear(f);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

/* The inbound manager is T_OBJECT_EX: h2 always has one; deleting it makes
 * reads raise AttributeError, as deleting h2's attribute would. */
static PyMemberDef stream_members[] = {
    {"outbound_flow_control_window", T_LONGLONG, offsetof(FlowFields, outbound), 0, NULL},
    {"_inbound_window_manager", T_OBJECT_EX, offsetof(FlowFields, inbound), 0, NULL},
    {"state_machine", T_OBJECT_EX, offsetof(FlowFields, state_machine), 0, NULL},
    {"_expected_content_length", T_OBJECT_EX, offsetof(FlowFields, expected_length), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

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

#define FLOW_TYPE(var, name, doc, members)                                    \
    static PyTypeObject var = {                                               \
        PyVarObject_HEAD_INIT(NULL, 0)                                        \
        .tp_name = "shoal.core.hbone.native._native." name,                   \
        .tp_doc = doc,                                                        \
        .tp_basicsize = sizeof(FlowFields),                                   \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, \
        .tp_new = PyType_GenericNew,                                          \
        .tp_dealloc = (destructor)flow_dealloc,                               \
        .tp_traverse = (traverseproc)flow_traverse,                           \
        .tp_clear = (inquiry)flow_clear,                                      \
        .tp_members = members,                                                \
    }

FLOW_TYPE(StreamWindowsType, "StreamWindows",
          "An h2 stream's windows, in C (base of h2fast._H2Stream)", stream_members);
FLOW_TYPE(ConnectionWindowsType, "ConnectionWindows",
          "An h2 connection's windows, in C (base of h2fast.H2ConnectionFast)",
          connection_members);

static int state_traverse(StateFields *f, visitproc visit, void *arg)
{
    Py_VISIT(f->state);
    return 0;
}

static int state_clear(StateFields *f)
{
    Py_CLEAR(f->state);
    return 0;
}

static void state_dealloc(StateFields *f)
{
    PyObject_GC_UnTrack(f);
    state_clear(f);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyMemberDef state_members[] = {
    {"state", T_OBJECT_EX, offsetof(StateFields, state), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject StateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal.core.hbone.native._native.StateMachine",
    .tp_doc = "An h2 state machine's state, in C (base of h2fast's state machines)",
    .tp_basicsize = sizeof(StateFields),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)state_dealloc,
    .tp_traverse = (traverseproc)state_traverse,
    .tp_clear = (inquiry)state_clear,
    .tp_members = state_members,
};

static PyMemberDef guard_members[] = {
    {"data_frames_sent", T_LONGLONG, offsetof(GuardFields, data_frames_sent), 0, NULL},
    {"empty_in_a_row", T_LONGLONG, offsetof(GuardFields, empty_in_a_row), 0, NULL},
    {"outbound_control", T_LONGLONG, offsetof(GuardFields, outbound_control), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

COUNTERS_TYPE(GuardType, "GuardCounters",
              "A FloodGuard's per-frame counters, in C (base of h2limits.FloodGuard)",
              GuardFields, guard_members);

WindowFields *window_fields(PyObject *o)
{
    return o != NULL && PyObject_TypeCheck(o, &WindowType) ? (WindowFields *)o : NULL;
}

FlowFields *stream_fields(PyObject *o)
{
    return PyObject_TypeCheck(o, &StreamWindowsType) ? (FlowFields *)o : NULL;
}

FlowFields *connection_fields(PyObject *o)
{
    return PyObject_TypeCheck(o, &ConnectionWindowsType) ? (FlowFields *)o : NULL;
}

static PyMemberDef core_members[] = {
    {"dead", T_BOOL, offsetof(CoreFields, dead), 0, NULL},
    {"draining", T_BOOL, offsetof(CoreFields, draining), 0, NULL},
    {"goaway_received", T_BOOL, offsetof(CoreFields, goaway_received), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

COUNTERS_TYPE(CoreType, "CoreFlags",
              "The HBONE core's connection flags, in C (base of protocol._HboneCore)",
              CoreFields, core_members);

/* Objects with references (GC): their traverse, clear and dealloc. */
#define GC_FUNCS(prefix, type, ...)                                           \
    static int prefix##_traverse(type *f, visitproc visit, void *arg)         \
    {                                                                         \
        PyObject *refs[] = {__VA_ARGS__};                                     \
        for (size_t i = 0; i < sizeof refs / sizeof *refs; i++)               \
            Py_VISIT(refs[i]);                                                \
        return 0;                                                             \
    }                                                                         \
    static int prefix##_clear(type *f);                                       \
    static void prefix##_dealloc(type *f)                                     \
    {                                                                         \
        PyObject_GC_UnTrack(f);                                               \
        prefix##_clear(f);                                                    \
        Py_TYPE(f)->tp_free((PyObject *)f);                                   \
    }

#define GC_TYPE(var, name, doc, fields, prefix, members)                      \
    static PyTypeObject var = {                                               \
        PyVarObject_HEAD_INIT(NULL, 0)                                        \
        .tp_name = "shoal.core.hbone.native._native." name,                   \
        .tp_doc = doc,                                                        \
        .tp_basicsize = sizeof(fields),                                       \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, \
        .tp_new = PyType_GenericNew,                                          \
        .tp_dealloc = (destructor)prefix##_dealloc,                           \
        .tp_traverse = (traverseproc)prefix##_traverse,                       \
        .tp_clear = (inquiry)prefix##_clear,                                  \
        .tp_members = members,                                                \
    }

GC_FUNCS(cstream, CoreStreamFields, f->state)
static int cstream_clear(CoreStreamFields *f)
{
    Py_CLEAR(f->state);
    return 0;
}

static PyMemberDef cstream_members[] = {
    {"state", T_OBJECT_EX, offsetof(CoreStreamFields, state), 0, NULL},
    {"local_ended", T_BOOL, offsetof(CoreStreamFields, local_ended), 0, NULL},
    {"remote_ended", T_BOOL, offsetof(CoreStreamFields, remote_ended), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

GC_TYPE(CoreStreamType, "CoreStream",
        "The HBONE core's per-stream record, in C (base of protocol._Stream)",
        CoreStreamFields, cstream, cstream_members);

GC_FUNCS(tunnel, TunnelFields, f->chunks, f->sink, f->error)
static int tunnel_clear(TunnelFields *f)
{
    Py_CLEAR(f->chunks);
    Py_CLEAR(f->sink);
    Py_CLEAR(f->error);
    return 0;
}

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

GC_TYPE(TunnelType, "TunnelFields",
        "An HBONE tunnel's per-frame fields, in C (base of stream.HboneStream)",
        TunnelFields, tunnel, tunnel_members);

CoreFields *core_fields(PyObject *o)
{
    return PyObject_TypeCheck(o, &CoreType) ? (CoreFields *)o : NULL;
}

CoreStreamFields *core_stream_fields(PyObject *o)
{
    return PyObject_TypeCheck(o, &CoreStreamType) ? (CoreStreamFields *)o : NULL;
}

TunnelFields *tunnel_fields(PyObject *o)
{
    return PyObject_TypeCheck(o, &TunnelType) ? (TunnelFields *)o : NULL;
}

PyObject *flow_state(PyObject *o)
{
    if (!PyObject_TypeCheck(o, &StreamWindowsType) && !PyObject_TypeCheck(o, &ConnectionWindowsType))
        return NULL;
    PyObject *sm = ((FlowFields *)o)->state_machine;
    if (sm == NULL || !PyObject_TypeCheck(sm, &StateType))
        return NULL;
    return ((StateFields *)sm)->state;
}

/* len(o) == 0 for the output queue's list and bytearray (any other object:
 * its len(); unset: AttributeError, as h2's attribute would). */
static int is_empty(PyObject *o, const char *name)
{
    if (o == NULL) {
        PyErr_Format(PyExc_AttributeError, "h2 connection has no %s", name);
        return -1;
    }
    if (PyList_CheckExact(o))
        return PyList_GET_SIZE(o) == 0;
    if (PyByteArray_CheckExact(o))
        return PyByteArray_GET_SIZE(o) == 0;
    Py_ssize_t n = PyObject_Length(o);
    return n < 0 ? -1 : n == 0;
}

int output_empty(FlowFields *h2)
{
    int e = is_empty(h2->chunks, "_chunks");
    return e > 0 ? is_empty(h2->data_to_send, "_data_to_send") : e;
}

GuardFields *guard_fields(PyObject *o)
{
    return PyObject_TypeCheck(o, &GuardType) ? (GuardFields *)o : NULL;
}

int flow_init(PyObject *module)
{
    PyTypeObject *types[] = {&WindowType, &StreamWindowsType, &ConnectionWindowsType, &StateType,
                             &GuardType, &CoreType, &CoreStreamType, &TunnelType};
    const char *names[] = {"Window", "StreamWindows", "ConnectionWindows", "StateMachine",
                           "GuardCounters", "CoreFlags", "CoreStream", "TunnelFields"};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        if (PyType_Ready(types[i]) < 0)
            return -1;
        Py_INCREF(types[i]);
        if (PyModule_AddObject(module, names[i], (PyObject *)types[i]) < 0) {
            Py_DECREF(types[i]);
            return -1;
        }
    }
    return 0;
}
