/* The common end of a request served from a plan, in C (cexchange.c).
 *
 * A CExchange used to call Python twice for an ordinary response: at the
 * head, Balancer.finished(key, True, keys) (lb.py), and at the end,
 * FastSession._c_done (fastpath.py: H1Pool.release, free, resume, _pump).
 * For the common case both are done here, on the Python objects' own
 * state (the balancer's _Host, the pool's idle deque, the session's
 * fields), so nothing observable differs; anything else is left to the
 * Python calls, decided before a single field is changed:
 *
 *   cend_finished_ok   a status < 500 with the endpoint's _Host known:
 *                      active - 1 (not below 0), failures = 0. A failure
 *                      (5xx) always goes to Balancer.finished, which
 *                      counts it and ejects (outlier detection).
 *   cend_done          counted in the tally, reusable, no Connection:
 *                      close either way, upstream reading not paused, the
 *                      pool's idle deque for the endpoint below its limit,
 *                      nothing queued behind the request on the client
 *                      connection (no pipelined event, no EOF, reading not
 *                      held): the connection back on the idle deque
 *                      (requests + 1, idle_since = pool.clock()), the
 *                      session free for the next request (exchange None,
 *                      busy False, served_fast + 1, last_active =
 *                      loop.time()), which _pump would then find idle.
 *
 * Only the exact types fastpath registers with configure_end (Balancer,
 * H1Pool, FastSession), with the methods they had then, are handled here:
 * a subclass, another pool or a method replaced since goes to Python.
 */

#include "_h1.h"

static PyTypeObject *balancer_type, *pool_type, *session_type;
/* Balancer.finished, H1Pool.release, FastSession._c_done as registered:
 * one replaced on its class (instrumentation, a test's spy or fault) is
 * called instead of being bypassed. */
static PyObject *finished_fn, *release_fn, *c_done_fn;
static Py_ssize_t max_idle = -1;
static PyObject *s_hosts, *s_active, *s_failures, *s_idle, *s_endpoint, *s_key, *s_clock,
    *s_receiver, *s_stream, *s_requests, *s_idle_since, *s_append, *s_reusable, *s_close_after,
    *s_mode, *s_session, *s_events, *s_eof, *s_held, *s_exchange, *s_busy, *s_served_fast,
    *s_last_active, *s_loop, *s_time, *s_pool, *s_finished, *s_release, *s_c_done;

static int ready_names(void)
{
    if (s_time != NULL)
        return 0;
#define NAME(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1;
    NAME(s_hosts, "_hosts") NAME(s_active, "active") NAME(s_failures, "failures")
    NAME(s_idle, "_idle") NAME(s_endpoint, "endpoint") NAME(s_key, "key")
    NAME(s_clock, "clock") NAME(s_receiver, "receiver") NAME(s_stream, "stream")
    NAME(s_requests, "requests") NAME(s_idle_since, "idle_since") NAME(s_append, "append")
    NAME(s_reusable, "reusable") NAME(s_close_after, "close_after") NAME(s_mode, "mode")
    NAME(s_session, "session") NAME(s_events, "events") NAME(s_eof, "eof")
    NAME(s_held, "_held") NAME(s_exchange, "exchange") NAME(s_busy, "busy")
    NAME(s_served_fast, "served_fast") NAME(s_last_active, "last_active") NAME(s_loop, "loop")
    NAME(s_pool, "pool") NAME(s_finished, "finished")
    NAME(s_release, "release") NAME(s_c_done, "_c_done") NAME(s_time, "time")
#undef NAME
    return 0;
}

/* configure_end(balancer_type, pool_type, session_type, max_idle_per_endpoint) */
static PyObject *configure_end(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *b, *p, *f;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O!O!O!n:configure_end", &PyType_Type, &b, &PyType_Type, &p,
                          &PyType_Type, &f, &n))
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "max_idle_per_endpoint must be >= 0");
        return NULL;
    }
    if (ready_names() < 0)
        return NULL;
    PyObject *fin = PyObject_GetAttr(b, s_finished), *rel = PyObject_GetAttr(p, s_release),
             *done = PyObject_GetAttr(f, s_c_done);
    if (fin == NULL || rel == NULL || done == NULL) {
        Py_XDECREF(fin); Py_XDECREF(rel); Py_XDECREF(done);
        return NULL;
    }
    Py_XSETREF(finished_fn, fin);
    Py_XSETREF(release_fn, rel);
    Py_XSETREF(c_done_fn, done);
    Py_XSETREF(balancer_type, (PyTypeObject *)Py_NewRef(b));
    Py_XSETREF(pool_type, (PyTypeObject *)Py_NewRef(p));
    Py_XSETREF(session_type, (PyTypeObject *)Py_NewRef(f));
    max_idle = n;
    Py_RETURN_NONE;
}

/* `o` is exactly of `type` and type.name is still `fn`: 1, 0, -1 with an exception. */
int cend_registered(PyObject *o, PyTypeObject *type, PyObject *name, PyObject *fn)
{
    if (type == NULL || Py_TYPE(o) != type)
        return 0;
    PyObject *now = PyObject_GetAttr((PyObject *)type, name);
    if (now == NULL)
        return -1;
    int r = now == fn;
    Py_DECREF(now);
    return r;
}

/* An int attribute as a C long; -1 with an exception, or *ok = 0 when it
 * is not an exact int below LONG_MAX. Python's ints do not wrap: a count C
 * cannot hold, or add one to (every caller may), is the Python path's. */
long cend_int_attr(PyObject *o, PyObject *name, int *ok)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    long r = -1;
    int exact = PyLong_CheckExact(v), overflow = 0;
    if (exact)
        r = PyLong_AsLongAndOverflow(v, &overflow);
    Py_DECREF(v);
    if (r == -1 && PyErr_Occurred())
        return -1;
    if (!exact || overflow || r == LONG_MAX) {
        *ok = 0;
        return -1;
    }
    return r;
}

/* The truth of an attribute: 0/1, -1 with an exception. */
int cend_true_attr(PyObject *o, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

int cend_set_long(PyObject *o, PyObject *name, long v)
{
    PyObject *n = PyLong_FromLong(v);
    if (n == NULL)
        return -1;
    int r = PyObject_SetAttr(o, name, n);
    Py_DECREF(n);
    return r;
}

int cend_finished_ok(PyObject *lb, PyObject *key)
{
    int mine = cend_registered(lb, balancer_type, s_finished, finished_fn);
    if (mine <= 0)
        return mine;
    PyObject *hosts = PyObject_GetAttr(lb, s_hosts);
    if (hosts == NULL)
        return -1;
    int r = 0;
    if (PyDict_CheckExact(hosts)) {
        PyObject *h = PyDict_GetItemWithError(hosts, key);       /* borrowed */
        if (h == NULL) {
            r = PyErr_Occurred() ? -1 : 0;      /* unknown: Balancer._host makes it */
        } else {
            Py_INCREF(h);
            int ok = 1;
            long active = cend_int_attr(h, s_active, &ok);
            if (active == -1 && PyErr_Occurred())
                r = -1;
            else if (ok)
                r = cend_set_long(h, s_active, active > 0 ? active - 1 : 0) < 0 ||
                    cend_set_long(h, s_failures, 0) < 0 ? -1 : 1;
            Py_DECREF(h);
        }
    }
    Py_DECREF(hosts);
    return r;
}

/* The idle deque `conn` goes back on, borrowed from pool._idle, when the
 * pool is an H1Pool and the deque has room; NULL (no exception) otherwise. */
static PyObject *idle_room(PyObject *pool, PyObject *conn, PyObject **idle_dict)
{
    *idle_dict = NULL;
    if (cend_registered(pool, pool_type, s_release, release_fn) <= 0)
        return NULL;
    PyObject *idle = PyObject_GetAttr(pool, s_idle);
    if (idle == NULL)
        return NULL;
    PyObject *ep = PyObject_GetAttr(conn, s_endpoint);
    PyObject *key = ep != NULL ? PyObject_GetAttr(ep, s_key) : NULL;
    Py_XDECREF(ep);
    PyObject *q = NULL;
    if (key != NULL && PyDict_CheckExact(idle)) {
        q = PyDict_GetItemWithError(idle, key);
        /* Missing: setdefault would make it (rare: take_idle leaves it). */
        if (q != NULL && PySequence_Size(q) >= max_idle)
            q = NULL;
    }
    Py_XDECREF(key);
    if (q == NULL) {
        Py_DECREF(idle);
        return NULL;
    }
    *idle_dict = idle;          /* keeps q alive */
    return q;
}

/* The session may serve its next request with nothing to do first (what
 * _pump would find): 1, 0, or -1 with an exception. */
static int session_idle(PyObject *session)
{
    int ok = 1;
    long mode = cend_int_attr(session, s_mode, &ok);
    if (mode == -1 && PyErr_Occurred())
        return -1;
    if (!ok || mode != 0)
        return 0;
    int held = cend_true_attr(session, s_held);
    if (held != 0)
        return held < 0 ? -1 : 0;
    PyObject *s = PyObject_GetAttr(session, s_session);
    if (s == NULL)
        return -1;
    int r = cend_true_attr(s, s_eof);
    if (r == 0) {
        PyObject *events = PyObject_GetAttr(s, s_events);
        Py_ssize_t n = events != NULL ? PySequence_Size(events) : -1;
        Py_XDECREF(events);
        r = n < 0 ? -1 : n == 0;
    } else if (r > 0) {
        r = 0;
    }
    Py_DECREF(s);
    return r;
}

int cend_done(PyObject *session, PyObject *proxy, PyObject *response, PyObject *state, int held,
              int counted)
{
    if (!counted || held || max_idle < 0 || !PyTuple_CheckExact(state) ||
        PyTuple_GET_SIZE(state) < 9)
        return 0;
    PyObject *parsed = PyTuple_GET_ITEM(state, 1), *conn = PyTuple_GET_ITEM(state, 8);
    if (!PyTuple_CheckExact(parsed) || PyTuple_GET_SIZE(parsed) < 6)
        return 0;
    int keep = PyObject_IsTrue(PyTuple_GET_ITEM(parsed, 5));
    if (keep <= 0)
        return keep;
    int reusable = cend_true_attr(response, s_reusable);
    if (reusable <= 0)
        return reusable;
    int close_after = cend_true_attr(response, s_close_after);
    if (close_after != 0)
        return close_after < 0 ? -1 : 0;
    int mine = cend_registered(session, session_type, s_c_done, c_done_fn);
    if (mine <= 0)
        return mine;
    int idle_now = session_idle(session);
    if (idle_now <= 0)
        return idle_now;
    /* The two counts added to below, read while nothing is changed: one C
     * does not take (cend_int_attr) is _c_done's with everything as it was. */
    int ok = 1;
    long n = cend_int_attr(conn, s_requests, &ok);
    long served = ok ? cend_int_attr(session, s_served_fast, &ok) : 0;
    if ((n == -1 || served == -1) && PyErr_Occurred())
        return -1;
    if (!ok)
        return 0;
    PyObject *pool = PyObject_GetAttr(proxy, s_pool);
    if (pool == NULL)
        return -1;
    PyObject *idle_dict;
    PyObject *q = idle_room(pool, conn, &idle_dict);
    if (q == NULL) {
        Py_DECREF(pool);
        return PyErr_Occurred() ? -1 : 0;
    }
    /* Decided: from here on it is H1Pool.release and FastSession._c_done's
     * common case, in their order. */
    int r = -1;
    PyObject *stream = PyObject_GetAttr(conn, s_stream), *now = NULL, *s = NULL, *loop = NULL,
             *t = NULL;
    if (stream == NULL || PyObject_SetAttr(stream, s_receiver, Py_None) < 0)
        goto out;
    if (cend_set_long(conn, s_requests, n + 1) < 0 ||
        (now = PyObject_CallMethodNoArgs(pool, s_clock)) == NULL ||
        PyObject_SetAttr(conn, s_idle_since, now) < 0)
        goto out;
    PyObject *a = PyObject_CallMethodOneArg(q, s_append, conn);
    if (a == NULL)
        goto out;
    Py_DECREF(a);
    if (PyObject_SetAttr(session, s_exchange, Py_None) < 0 ||
        (s = PyObject_GetAttr(session, s_session)) == NULL ||
        PyObject_SetAttr(s, s_busy, Py_False) < 0 ||
        cend_set_long(session, s_served_fast, served + 1) < 0 ||
        (loop = PyObject_GetAttr(session, s_loop)) == NULL ||
        (t = PyObject_CallMethodNoArgs(loop, s_time)) == NULL ||
        PyObject_SetAttr(session, s_last_active, t) < 0)
        goto out;
    r = 1;
out:
    Py_XDECREF(stream); Py_XDECREF(now); Py_XDECREF(s); Py_XDECREF(loop); Py_XDECREF(t);
    Py_DECREF(idle_dict);
    Py_DECREF(pool);
    return r;
}

static PyMethodDef cend_methods[] = {
    {"configure_end", configure_end, METH_VARARGS,
     "configure_end(balancer_type, pool_type, session_type, max_idle_per_endpoint): the types "
     "whose state "
     "a CExchange may update itself at a request's end (cend.c)"},
    {NULL, NULL, 0, NULL},
};

int cend_init(PyObject *module)
{
    if (ready_names() < 0)
        return -1;
    return PyModule_AddFunctions(module, cend_methods);
}
