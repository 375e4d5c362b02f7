/* CExchange: the response half of a request served from a plan, in C
 * (waypoint/planpath.py, fastpath.FastSession._planned).
 *
 * fastexchange.Exchange handles every upstream read in four Python calls
 * (the connection's data_received, upstream_data, _native_data, the client
 * write) plus its bookkeeping. For a request served from a plan, whose
 * upstream connection is already open, the pooled PlainUpstream's receiver
 * is a CExchange instead: each read is Response.feed (_h1.c) and the client
 * transport's write, in C. Python is called back only for what Exchange
 * does in Python anyway:
 *
 *   head arrived      balancer.finished(key, status < 500, keys), unless
 *                     cend.c did the common case (a status < 500)
 *   response ended    session._c_done(self)      (pool, close, telemetry),
 *                     unless cend.c did the common case (counted, kept)
 *   anything else     session._c_adopt(self, what, *args): a fallback to
 *                     the Python parser, a cut, the upstream or the client
 *                     lost; a fastexchange.Exchange takes over the
 *                     exchange from the state it is in (nothing was written
 *                     for the event being handed over) and handles it.
 *
 *   CExchange(session, upstream_transport, client_transport, response, proxy,
 *             balancer, key, keys, state, tally, slots, t0)
 *
 * `state` is the session's (what it needs to finish or adopt the
 * exchange); this code only keeps it. With a `tally` (tally.c) and the
 * plan's `slots` ((key, status) -> slot, filled by session._c_slot(self)
 * the first time), a response that ends here is counted in the tally (its
 * duration from `t0`, time.monotonic's clock) and `counted` says so: the
 * session then makes no Python telemetry record of it. Client backpressure pauses reading
 * upstream (hold_upstream), as Exchange does.
 */

#include "_h1.h"

#include <time.h>

typedef struct {
    PyObject_HEAD
    PyObject *session, *utransport, *ctransport, *response, *proxy, *lb, *key, *keys, *state;
    PyObject *tally, *slots;
    double t0;
    long status;
    int head, ended, held, counted, ended_in_c;
} CExchange;

static PyObject *s_feed, *s_write, *s_body_bytes, *s_c_slot, *s_draining, *s_status, *s_finished, *s_c_done, *s_c_adopt,
    *s_pause_reading, *s_resume_reading, *w_result, *w_lost, *w_client, *w_error;
static long f_fallback, f_head, f_done, f_cut;

static int ready(CExchange *x)
{
    if (x->session != NULL)
        return 1;
    PyErr_SetString(PyExc_ValueError, "CExchange not initialised");
    return 0;
}

/* Hand the exchange to Python: session._c_adopt(self, what, *more). */
static PyObject *adopt(CExchange *x, PyObject *what, PyObject *a, PyObject *b, PyObject *c)
{
    x->ended = 1;
    PyObject *args[6] = {x->session, (PyObject *)x, what, a, b, c};
    size_t n = c != NULL ? 6 : (b != NULL ? 5 : (a != NULL ? 4 : 3));
    return PyObject_VectorcallMethod(s_c_adopt, args, n, NULL);
}

/* time.monotonic() */
static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The ended response into the tally, when there is one (tally.c). */
static int count(CExchange *x)
{
    if (x->tally == Py_None || x->slots == Py_None)
        return 0;
    PyObject *status = PyLong_FromLong(x->status);
    PyObject *k = status != NULL ? PyTuple_Pack(2, x->key, status) : NULL;
    Py_XDECREF(status);
    if (k == NULL)
        return -1;
    PyObject *slot = PyDict_GetItemWithError(x->slots, k);     /* borrowed */
    Py_DECREF(k);
    if (slot != NULL) {
        Py_INCREF(slot);
    } else {
        if (PyErr_Occurred())
            return -1;
        slot = PyObject_CallMethodOneArg(x->session, s_c_slot, (PyObject *)x);
        if (slot == NULL)
            return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(slot);
    Py_DECREF(slot);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (n < 0)
        return 0;               /* no slot left: the session records it */
    PyObject *bb = PyObject_GetAttr(x->response, s_body_bytes);
    double body = bb != NULL ? PyFloat_AsDouble(bb) : -1.0;
    Py_XDECREF(bb);
    if (body == -1.0 && PyErr_Occurred())
        return -1;
    if (tally_add((Tally *)x->tally, n, (monotonic() - x->t0) * 1000.0, 0.0, body) < 0)
        return -1;
    x->counted = 1;
    return 0;
}

static PyObject *handle(CExchange *x, PyObject *data);

/* As Exchange.upstream_data: a failure while handling a read (a bug) costs
 * this request, cut off (UR), never the connection's callbacks; Python
 * takes over: session._c_adopt(self, "error", exception). Past the end
 * (the pool and the record are Python's, in _c_done) it propagates. */
static PyObject *cx_upstream_data(CExchange *x, PyObject *data)
{
    if (!ready(x))
        return NULL;
    if (x->ended)
        Py_RETURN_NONE;
    PyObject *r = handle(x, data);
    if (r != NULL || x->ended || !PyErr_ExceptionMatches(PyExc_Exception))
        return r;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL)
        PyException_SetTraceback(value, tb);
    r = adopt(x, w_error, value, NULL, NULL);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return r;
}

static PyObject *handle(CExchange *x, PyObject *data)
{
    PyObject *draining = PyObject_GetAttr(x->proxy, s_draining);
    if (draining == NULL)
        return NULL;
    PyObject *args[3] = {x->response, data, draining};
    PyObject *r = PyObject_VectorcallMethod(s_feed, args, 3,
                                            NULL);
    Py_DECREF(draining);
    if (r == NULL)
        return NULL;
    if (!PyTuple_CheckExact(r) || PyTuple_GET_SIZE(r) != 2 ||
        !PyBytes_Check(PyTuple_GET_ITEM(r, 0))) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_TypeError, "Response.feed did not give (bytes, code)");
        return NULL;
    }
    PyObject *out = PyTuple_GET_ITEM(r, 0);
    long code = PyLong_AsLong(PyTuple_GET_ITEM(r, 1));
    if (code == -1 && PyErr_Occurred()) {
        Py_DECREF(r);
        return NULL;
    }
    PyObject *ret = NULL;
    if (code & (f_fallback | f_cut)) {
        /* Exchange._native_result decides, on exactly what feed returned. */
        ret = adopt(x, w_result, data, out, PyTuple_GET_ITEM(r, 1));
        Py_DECREF(r);
        return ret;
    }
    if (code & f_head) {
        x->head = 1;
        PyObject *status = PyObject_GetAttr(x->response, s_status);
        long s = status != NULL ? PyLong_AsLong(status) : -1;
        Py_XDECREF(status);
        if (s == -1 && PyErr_Occurred())
            goto done;
        x->status = s;
        int in_c = s < 500 ? cend_finished_ok(x->lb, x->key) : 0;     /* cend.c */
        if (in_c < 0)
            goto done;
        if (!in_c) {
            PyObject *fargs[4] = {x->lb, x->key, s < 500 ? Py_True : Py_False, x->keys};
            PyObject *f = PyObject_VectorcallMethod(s_finished, fargs, 4, NULL);
            if (f == NULL)
                goto done;
            Py_DECREF(f);
        }
    }
    if (PyBytes_GET_SIZE(out)) {
        PyObject *w = PyObject_CallMethodOneArg(x->ctransport, s_write, out);
        if (w == NULL)
            goto done;
        Py_DECREF(w);
    }
    if (code & f_done) {
        /* Not ended until counted: a failed count is a failure while
         * handling the read (cut, UR), not an exchange that ended and
         * was never given back (its client connection held for good). */
        if (count(x) < 0)
            goto done;
        int in_c = cend_done(x->session, x->proxy, x->response, x->state, x->held, x->counted);
        if (in_c < 0)
            goto done;
        x->ended = 1;
        x->ended_in_c = in_c;
        ret = in_c ? Py_NewRef(Py_None)
                   : PyObject_CallMethodOneArg(x->session, s_c_done, (PyObject *)x);
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    Py_DECREF(r);
    return ret;
}

static PyObject *cx_upstream_lost(CExchange *x, PyObject *exc)
{
    if (!ready(x))
        return NULL;
    if (x->ended)
        Py_RETURN_NONE;
    return adopt(x, w_lost, exc, NULL, NULL);
}

static PyObject *cx_client_lost(CExchange *x, PyObject *unused)
{
    (void)unused;
    if (!ready(x))
        return NULL;
    if (x->ended)
        Py_RETURN_NONE;
    return adopt(x, w_client, NULL, NULL, NULL);
}

static PyObject *cx_hold_upstream(CExchange *x, PyObject *arg)
{
    if (!ready(x))
        return NULL;
    int hold = PyObject_IsTrue(arg);
    if (hold < 0)
        return NULL;
    if (hold == x->held || x->ended)
        Py_RETURN_NONE;
    x->held = hold;
    return PyObject_CallMethodNoArgs(x->utransport, hold ? s_pause_reading : s_resume_reading);
}

static int cx_init(CExchange *x, PyObject *args, PyObject *kw)
{
    PyObject *v[11];
    double t0;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "CExchange takes no keyword arguments");
        return -1;
    }
    /* By hand, not PyArg_ParseTuple: one CExchange per request, and the
     * format parsing cost more than the rest of this function. */
    if (PyTuple_GET_SIZE(args) != 12) {
        PyErr_SetString(PyExc_TypeError, "CExchange takes 12 arguments");
        return -1;
    }
    for (int i = 0; i < 11; i++)
        v[i] = PyTuple_GET_ITEM(args, i);
    t0 = PyFloat_AsDouble(PyTuple_GET_ITEM(args, 11));
    if (t0 == -1.0 && PyErr_Occurred())
        return -1;
    if ((v[9] != Py_None && !PyObject_TypeCheck(v[9], &TallyType)) ||
        (v[10] != Py_None && !PyDict_Check(v[10]))) {
        PyErr_SetString(PyExc_TypeError, "CExchange's tally is a Tally or None, slots a dict");
        return -1;
    }
    Py_XSETREF(x->session, Py_NewRef(v[0]));
    Py_XSETREF(x->utransport, Py_NewRef(v[1]));
    Py_XSETREF(x->ctransport, Py_NewRef(v[2]));
    Py_XSETREF(x->response, Py_NewRef(v[3]));
    Py_XSETREF(x->proxy, Py_NewRef(v[4]));
    Py_XSETREF(x->lb, Py_NewRef(v[5]));
    Py_XSETREF(x->key, Py_NewRef(v[6]));
    Py_XSETREF(x->keys, Py_NewRef(v[7]));
    Py_XSETREF(x->state, Py_NewRef(v[8]));
    Py_XSETREF(x->tally, Py_NewRef(v[9]));
    Py_XSETREF(x->slots, Py_NewRef(v[10]));
    x->t0 = t0;
    x->status = 0;
    x->head = x->ended = x->held = x->counted = x->ended_in_c = 0;
    return 0;
}

static int cx_traverse(CExchange *x, visitproc visit, void *arg)
{
    Py_VISIT(x->session); Py_VISIT(x->utransport); Py_VISIT(x->ctransport);
    Py_VISIT(x->response); Py_VISIT(x->proxy); Py_VISIT(x->lb); Py_VISIT(x->key);
    Py_VISIT(x->keys); Py_VISIT(x->state); Py_VISIT(x->tally); Py_VISIT(x->slots);
    return 0;
}

static int cx_clear(CExchange *x)
{
    Py_CLEAR(x->session); Py_CLEAR(x->utransport); Py_CLEAR(x->ctransport);
    Py_CLEAR(x->response); Py_CLEAR(x->proxy); Py_CLEAR(x->lb); Py_CLEAR(x->key);
    Py_CLEAR(x->keys); Py_CLEAR(x->state); Py_CLEAR(x->tally); Py_CLEAR(x->slots);
    return 0;
}

static void cx_dealloc(CExchange *x)
{
    PyObject_GC_UnTrack(x);
    cx_clear(x);
    Py_TYPE(x)->tp_free((PyObject *)x);
}

static PyObject *cx_get_state(CExchange *x, void *unused)
{
    (void)unused;
    return Py_NewRef(x->state != NULL ? x->state : Py_None);
}

static PyObject *cx_get_head(CExchange *x, void *unused)
{
    (void)unused;
    return PyBool_FromLong(x->head);
}

static PyObject *cx_get_held(CExchange *x, void *unused)
{
    (void)unused;
    return PyBool_FromLong(x->held);
}

static PyObject *cx_get_counted(CExchange *x, void *unused)
{
    (void)unused;
    return PyBool_FromLong(x->counted);
}

static PyObject *cx_get_ended_in_c(CExchange *x, void *unused)
{
    (void)unused;
    return PyBool_FromLong(x->ended_in_c);
}

static PyGetSetDef cx_getset[] = {
    {"ended_in_c", (getter)cx_get_ended_in_c, NULL,
     "the response's end was handled in C (cend.c), without session._c_done", NULL},
    {"counted", (getter)cx_get_counted, NULL, "the response was counted in the tally", NULL},
    {"state", (getter)cx_get_state, NULL, "the session's state of this exchange", NULL},
    {"head", (getter)cx_get_head, NULL, "the response head arrived", NULL},
    {"held", (getter)cx_get_held, NULL, "reading upstream is paused (client backpressure)",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef cx_methods[] = {
    {"upstream_data", (PyCFunction)cx_upstream_data, METH_O,
     "response bytes from upstream (b'': it closed its side)"},
    {"upstream_lost", (PyCFunction)cx_upstream_lost, METH_O, "the upstream connection was lost"},
    {"client_lost", (PyCFunction)cx_client_lost, METH_NOARGS, "the client went away"},
    {"hold_upstream", (PyCFunction)cx_hold_upstream, METH_O,
     "client backpressure: pause (True) or resume reading upstream"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CExchangeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal.waypoint.native._h1.CExchange",
    .tp_doc = "the response half of a request served from a plan (see cexchange.c)",
    .tp_basicsize = sizeof(CExchange),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)cx_init,
    .tp_dealloc = (destructor)cx_dealloc,
    .tp_traverse = (traverseproc)cx_traverse,
    .tp_clear = (inquiry)cx_clear,
    .tp_methods = cx_methods,
    .tp_getset = cx_getset,
};

int cexchange_init(PyObject *module, long fallback, long head, long done, long cut)
{
#define NAME(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1;
    NAME(s_feed, "feed") NAME(s_write, "write") NAME(s_body_bytes, "body_bytes")
    NAME(s_c_slot, "_c_slot") NAME(s_draining, "draining")
    NAME(s_status, "status") NAME(s_finished, "finished") NAME(s_c_done, "_c_done")
    NAME(s_c_adopt, "_c_adopt") NAME(s_pause_reading, "pause_reading")
    NAME(s_resume_reading, "resume_reading") NAME(w_result, "result") NAME(w_lost, "lost")
    NAME(w_client, "client") NAME(w_error, "error")
#undef NAME
    f_fallback = fallback;
    f_head = head;
    f_done = done;
    f_cut = cut;
    if (PyType_Ready(&CExchangeType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "CExchange", (PyObject *)&CExchangeType);
}
