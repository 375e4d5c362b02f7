/* The common start of a request served from a plan, in C
 * (fastpath.FastSession._planned).
 *
 * Before its CExchange exists, a plan-served request used to run in Python
 * Balancer.pick (available, _host per key, the clock), Balancer.started
 * (_host) and fastexchange.take_clean (H1Pool.take_idle, the clock,
 * TcpEnd.at_eof, PlainUpstream.idle_clean): about a dozen calls that, for
 * a warm worker, always give the same kind of answer. start_planned does
 * that common case on the Python objects' own state, so nothing observable
 * differs; anything else returns None with nothing changed, and the caller
 * makes the Python calls:
 *
 *   start_planned(balancer, keys, by_key, pool) -> (key, conn) | None
 *
 * Taken when all of these hold (decided before a single field is changed):
 * - balancer and pool are exactly the registered Balancer and H1Pool
 *   (configure_start) and pick, started and take_idle are the functions
 *   they had then, as are the upstream type's idle_clean and at_eof (the
 *   properties take_clean and take_idle read): a replaced one is called,
 *   not bypassed;
 * - keys is a non-empty tuple; with more than one key the mode is
 *   ROUND_ROBIN (LEAST_REQUEST draws from the rng: Python's) and every key
 *   has its _Host already (Balancer.available makes them on the first
 *   request, so only the first one of a backend goes to Python);
 * - the endpoint picked has its _Host, and the pool's idle deque for it
 *   ends with a connection that take_clean would return at once: idle for
 *   less than IDLE_TIMEOUT, its stream exactly the registered PlainUpstream
 *   with no queued bytes, no EOF, and a transport that is not closing.
 * Then, as pick, started and take_idle do: the balancer's _rr moves on
 * (several candidates), the endpoint's active + 1, the connection popped
 * from the deque's right end and marked reused.
 *
 * One difference a test could see: with a single key, pick calls the
 * balancer's clock and this does not (the answer cannot depend on it).
 */

#include "_h1.h"

static PyTypeObject *balancer_type, *pool_type, *upstream_type;
static PyObject *pick_fn, *started_fn, *take_idle_fn, *idle_clean_prop, *at_eof_prop;
static double idle_timeout = -1.0;
static PyObject *s_pick, *s_started, *s_take_idle, *s_mode, *s_round_robin, *s_hosts, *s_rr,
    *s_active, *s_ejected_until, *s_clock, *s_idle, *s_key, *s_idle_since, *s_stream,
    *s_chunks, *s_eof, *s_transport, *s_is_closing, *s_pop, *s_reused, *s_idle_clean, *s_at_eof;

/* configure_start(balancer_type, pool_type, upstream_type, idle_timeout) */
static PyObject *configure_start(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *b, *p, *u;
    double t;
    if (!PyArg_ParseTuple(args, "O!O!O!d:configure_start", &PyType_Type, &b, &PyType_Type, &p,
                          &PyType_Type, &u, &t))
        return NULL;
    PyObject *pick = PyObject_GetAttr(b, s_pick), *started = PyObject_GetAttr(b, s_started),
             *take = PyObject_GetAttr(p, s_take_idle), *clean = PyObject_GetAttr(u, s_idle_clean),
             *at_eof = PyObject_GetAttr(u, s_at_eof);
    if (pick == NULL || started == NULL || take == NULL || clean == NULL || at_eof == NULL) {
        Py_XDECREF(pick); Py_XDECREF(started); Py_XDECREF(take); Py_XDECREF(clean);
        Py_XDECREF(at_eof);
        return NULL;
    }
    Py_XSETREF(idle_clean_prop, clean);
    Py_XSETREF(at_eof_prop, at_eof);
    Py_XSETREF(pick_fn, pick);
    Py_XSETREF(started_fn, started);
    Py_XSETREF(take_idle_fn, take);
    Py_XSETREF(balancer_type, (PyTypeObject *)Py_NewRef(b));
    Py_XSETREF(pool_type, (PyTypeObject *)Py_NewRef(p));
    Py_XSETREF(upstream_type, (PyTypeObject *)Py_NewRef(u));
    idle_timeout = t;
    Py_RETURN_NONE;
}

/* The _Host of every key (new references, into hosts_out: the caller
 * releases them either way), or 0 when one is missing or the table is not
 * a dict; -1 with an exception. */
static int hosts_of(PyObject *lb, PyObject *keys, PyObject **hosts_out)
{
    PyObject *hosts = PyObject_GetAttr(lb, s_hosts);
    if (hosts == NULL)
        return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(keys), i;
    int r = PyDict_CheckExact(hosts);
    for (i = 0; r == 1 && i < n; i++) {
        PyObject *h = PyDict_GetItemWithError(hosts, PyTuple_GET_ITEM(keys, i));   /* borrowed */
        if (h == NULL)
            r = PyErr_Occurred() ? -1 : 0;
        else
            hosts_out[i] = Py_NewRef(h);
    }
    Py_DECREF(hosts);
    return r;
}

/* Balancer.pick's round robin over the candidates not ejected (all of
 * them when every one is): the index into keys, and *rr the new _rr (-1:
 * unchanged); -2 when it is not the case handled here, -1 with an exception. */
static Py_ssize_t pick_index(PyObject *lb, PyObject **hosts, Py_ssize_t n, long *rr)
{
    *rr = -1;
    if (n == 1)
        return 0;
    PyObject *mode = PyObject_GetAttr(lb, s_mode);
    if (mode == NULL)
        return -1;
    int robin = PyUnicode_CheckExact(mode) && PyUnicode_Compare(mode, s_round_robin) == 0;
    Py_DECREF(mode);
    if (PyErr_Occurred())
        return -1;
    if (!robin)
        return -2;
    int ok = 1;
    long cur = cend_int_attr(lb, s_rr, &ok);
    if (cur == -1 && PyErr_Occurred())
        return -1;
    if (!ok || cur < 0)
        return -2;
    PyObject *now = PyObject_CallMethodNoArgs(lb, s_clock);
    if (now == NULL)
        return -1;
    /* cands: indexes into keys, in their order. */
    Py_ssize_t *cands = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)n), m = 0, r = -1;
    if (cands == NULL) {
        Py_DECREF(now);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *until = PyObject_GetAttr(hosts[i], s_ejected_until);
        if (until == NULL)
            goto out;
        int le = PyObject_RichCompareBool(until, now, Py_LE);
        Py_DECREF(until);
        if (le < 0)
            goto out;
        if (le)
            cands[m++] = i;
    }
    if (m == 0) {                       /* panic mode: all of them */
        for (Py_ssize_t i = 0; i < n; i++)
            cands[i] = i;
        m = n;
    }
    if (m == 1) {
        r = cands[0];
    } else {
        *rr = (long)((cur + 1) % m);
        r = cands[*rr];
    }
out:
    PyMem_Free(cands);
    Py_DECREF(now);
    return r;
}

/* PlainUpstream.idle_clean (which implies not TcpEnd.at_eof) for a stream
 * of exactly the registered type whose two properties are still the ones
 * restated here: 1, 0, -1 with an exception. */
static int idle_clean(PyObject *stream)
{
    /* _PyType_Lookup: the MRO through the type cache, no new reference,
     * no exception (PyObject_GetAttr on the type cost ~200 instructions
     * each here, callgrind said). */
    if (upstream_type == NULL || Py_TYPE(stream) != upstream_type ||
        _PyType_Lookup(upstream_type, s_idle_clean) != idle_clean_prop ||
        _PyType_Lookup(upstream_type, s_at_eof) != at_eof_prop)
        return 0;
    int r = cend_true_attr(stream, s_chunks);
    if (r == 0)
        r = cend_true_attr(stream, s_eof);
    if (r != 0)
        return r < 0 ? -1 : 0;
    PyObject *t = PyObject_GetAttr(stream, s_transport);
    if (t == NULL)
        return -1;
    if (t == Py_None) {
        Py_DECREF(t);
        return 0;
    }
    PyObject *closing = PyObject_CallMethodNoArgs(t, s_is_closing);
    Py_DECREF(t);
    if (closing == NULL)
        return -1;
    r = PyObject_IsTrue(closing);
    Py_DECREF(closing);
    return r < 0 ? -1 : !r;
}

/* Idle for less than IDLE_TIMEOUT by the pool's clock: 1, 0, -1 with an exception. */
static int fresh(PyObject *pool, PyObject *conn)
{
    PyObject *now = PyObject_CallMethodNoArgs(pool, s_clock);
    if (now == NULL)
        return -1;
    PyObject *since = PyObject_GetAttr(conn, s_idle_since);
    PyObject *age = since != NULL ? PyNumber_Subtract(now, since) : NULL;
    Py_DECREF(now);
    Py_XDECREF(since);
    if (age == NULL)
        return -1;
    double a = PyFloat_AsDouble(age);
    Py_DECREF(age);
    if (a == -1.0 && PyErr_Occurred())
        return -1;
    return a < idle_timeout;
}

/* The connection take_clean would return at once for the endpoint `ep`:
 * the last of the pool's idle deque for it (*q, a new reference), as a
 * new reference; NULL with *r = 0 when it is not the common case, -1 with
 * an exception. */
static PyObject *clean_idle(PyObject *pool, PyObject *ep, PyObject **q, int *r)
{
    *q = NULL;
    *r = -1;
    PyObject *idle = PyObject_GetAttr(pool, s_idle);
    PyObject *key = idle != NULL ? PyObject_GetAttr(ep, s_key) : NULL;
    PyObject *d = NULL, *conn = NULL, *stream = NULL;
    if (key == NULL)
        goto out;
    if (!PyDict_CheckExact(idle)) {
        *r = 0;
        goto out;
    }
    d = PyDict_GetItemWithError(idle, key);       /* borrowed: held at once */
    if (d == NULL) {
        *r = PyErr_Occurred() ? -1 : 0;
        goto out;
    }
    Py_INCREF(d);
    Py_ssize_t n = PySequence_Size(d);
    if (n <= 0) {
        *r = n < 0 ? -1 : 0;
        goto out;
    }
    if ((conn = PySequence_GetItem(d, n - 1)) == NULL)
        goto out;
    *r = fresh(pool, conn);
    if (*r != 1)
        goto out;
    if ((stream = PyObject_GetAttr(conn, s_stream)) == NULL) {
        *r = -1;
        goto out;
    }
    *r = idle_clean(stream);
out:
    Py_XDECREF(stream); Py_XDECREF(key); Py_XDECREF(idle);
    if (*r != 1) {
        Py_XDECREF(conn);
        Py_XDECREF(d);
        return NULL;
    }
    *q = d;
    return conn;
}

/* Is conn still the last of q? 1, 0, -1 with an exception. The pool's
 * clock and the transport's is_closing ran Python since clean_idle looked. */
static int still_last(PyObject *q, PyObject *conn)
{
    Py_ssize_t n = PySequence_Size(q);
    if (n <= 0)
        return n < 0 ? -1 : 0;
    PyObject *last = PySequence_GetItem(q, n - 1);
    if (last == NULL)
        return -1;
    int same = last == conn;
    Py_DECREF(last);
    return same;
}

/* The decided start: _rr, active + 1, the connection popped and reused;
 * 0 with nothing changed when active is not C's or the deque moved on. */
static int commit(PyObject *lb, long rr, PyObject *host, PyObject *q, PyObject *conn)
{
    int ok = 1;
    long active = cend_int_attr(host, s_active, &ok);
    if (active == -1 && PyErr_Occurred())
        return -1;
    if (!ok)
        return 0;
    /* Checked last: from here to the pop nothing runs Python (an exact
     * deque, ints and slots set). */
    int last = still_last(q, conn);
    if (last <= 0)
        return last;
    if (rr >= 0 && cend_set_long(lb, s_rr, rr) < 0)
        return -1;
    if (cend_set_long(host, s_active, active + 1) < 0)
        return -1;
    PyObject *popped = PyObject_CallMethodNoArgs(q, s_pop);
    if (popped == NULL)
        return -1;
    int same = popped == conn;
    Py_DECREF(popped);
    if (!same) {        /* still_last saw it last: only a deque that is not one gets here */
        PyErr_SetString(PyExc_RuntimeError, "start_planned: the idle deque changed");
        return -1;
    }
    return PyObject_SetAttr(conn, s_reused, Py_True) < 0 ? -1 : 1;
}

static PyObject *start_planned(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *lb, *keys, *by_key, *pool;
    if (!PyArg_ParseTuple(args, "OOOO:start_planned", &lb, &keys, &by_key, &pool))
        return NULL;
    if (idle_timeout < 0 || !PyTuple_CheckExact(keys) || PyTuple_GET_SIZE(keys) == 0 ||
        !PyDict_CheckExact(by_key))
        Py_RETURN_NONE;
    int r;
    if ((r = cend_registered(lb, balancer_type, s_pick, pick_fn)) <= 0 ||
        (r = cend_registered(lb, balancer_type, s_started, started_fn)) <= 0 ||
        (r = cend_registered(pool, pool_type, s_take_idle, take_idle_fn)) <= 0) {
        if (r < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(keys);
    PyObject **hosts = PyMem_Calloc((size_t)n, sizeof(PyObject *));
    if (hosts == NULL)
        return PyErr_NoMemory();
    PyObject *ret = NULL, *q = NULL, *conn = NULL;
    r = hosts_of(lb, keys, hosts);
    if (r <= 0)
        goto out;
    long rr;
    Py_ssize_t i = pick_index(lb, hosts, n, &rr);
    if (i < 0) {
        r = i == -1 ? -1 : 0;
        goto out;
    }
    PyObject *key = PyTuple_GET_ITEM(keys, i);
    PyObject *ep = PyDict_GetItemWithError(by_key, key);       /* borrowed */
    if (ep == NULL) {
        r = PyErr_Occurred() ? -1 : 0;
        goto out;
    }
    Py_INCREF(ep);
    conn = clean_idle(pool, ep, &q, &r);
    Py_DECREF(ep);
    if (conn == NULL)
        goto out;
    r = commit(lb, rr, hosts[i], q, conn);
    if (r == 1)
        ret = PyTuple_Pack(2, key, conn);
out:
    for (Py_ssize_t j = 0; j < n; j++)
        Py_XDECREF(hosts[j]);
    PyMem_Free(hosts);
    Py_XDECREF(q);
    Py_XDECREF(conn);
    if (r < 0)
        return NULL;
    return ret != NULL || r == 1 ? ret : Py_NewRef(Py_None);
}

static PyMethodDef cstart_methods[] = {
    {"configure_start", configure_start, METH_VARARGS,
     "configure_start(balancer_type, pool_type, upstream_type, idle_timeout): the types "
     "whose state start_planned may update itself (cstart.c)"},
    {"start_planned", start_planned, METH_VARARGS,
     "start_planned(balancer, keys, by_key, pool): Balancer.pick + started and take_clean's "
     "common case as (key, conn), or None with nothing changed (cstart.c)"},
    {NULL, NULL, 0, NULL},
};

int cstart_init(PyObject *module)
{
#define NAME(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1;
    NAME(s_pick, "pick") NAME(s_started, "started") NAME(s_take_idle, "take_idle")
    NAME(s_mode, "mode") NAME(s_round_robin, "ROUND_ROBIN") NAME(s_hosts, "_hosts")
    NAME(s_rr, "_rr") NAME(s_active, "active") NAME(s_ejected_until, "ejected_until")
    NAME(s_clock, "clock") NAME(s_idle, "_idle") NAME(s_key, "key")
    NAME(s_idle_since, "idle_since") NAME(s_stream, "stream") NAME(s_chunks, "_chunks")
    NAME(s_eof, "_eof") NAME(s_transport, "transport") NAME(s_is_closing, "is_closing")
    NAME(s_pop, "pop") NAME(s_reused, "reused") NAME(s_idle_clean, "idle_clean")
    NAME(s_at_eof, "at_eof")
#undef NAME
    return PyModule_AddFunctions(module, cstart_methods);
}
