/* Tally: request metrics counted in C, folded into prometheus by Python
 * (waypoint/telemetry.py).
 *
 * Telemetry._aggregate keeps, per label set, a request count, the duration,
 * request-size and response-size histograms (bucket counts found with
 * bisect_left on the histograms' upper bounds) and their sums, and
 * flush_metrics moves them into prometheus_client once a second. A request
 * that ends in a CExchange (cexchange.c) is counted here instead, in a
 * slot Telemetry gave its label set, without a Python call; flush_metrics
 * takes the slots' counts first (take()) and adds them to the same
 * aggregates, so the metrics and their labels are the ones the Python
 * record would have made.
 *
 *   Tally(duration_bounds, size_bounds)    the histograms' upper bounds (+Inf last)
 *   .add(slot, duration_ms, request_bytes, response_bytes)
 *   .take() -> [(slot, count, duration_counts, duration_sum, request_counts,
 *                request_sum, response_counts, response_sum)]   (and zeroes them)
 */

#include "_h1.h"

#include <math.h>

/* Histogram buckets per metric: Istio's duration histogram has 20 (with
 * +Inf), the size ones 10; more than this is refused at construction. */
#define MAX_BUCKETS 32
/* Slots (label sets) per worker: Telemetry's MAX_CACHED_LABEL_SETS. */
#define MAX_SLOTS 4096

typedef struct {
    unsigned long long count;
    unsigned long long dur[MAX_BUCKETS], req[MAX_BUCKETS], resp[MAX_BUCKETS];
    double dur_sum, req_sum, resp_sum;
} slot_t;

typedef struct Tally {
    PyObject_HEAD
    double dbounds[MAX_BUCKETS], sbounds[MAX_BUCKETS];
    int nd, ns;
    slot_t *slots;
    Py_ssize_t nslots;          /* allocated */
} Tally;

/* bisect.bisect_left(bounds, v) */
static int bucket(const double *bounds, int n, double v)
{
    int i = 0;
    while (i < n && bounds[i] < v)
        i++;
    return i;
}

int tally_add(Tally *t, Py_ssize_t slot, double dur_ms, double req, double resp)
{
    if (slot < 0 || slot >= MAX_SLOTS) {
        PyErr_SetString(PyExc_ValueError, "tally slot out of range");
        return -1;
    }
    if (slot >= t->nslots) {
        Py_ssize_t n = t->nslots ? t->nslots : 16;
        while (n <= slot)
            n *= 2;
        slot_t *s = PyMem_Realloc(t->slots, (size_t)n * sizeof(slot_t));
        if (s == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memset(s + t->nslots, 0, (size_t)(n - t->nslots) * sizeof(slot_t));
        t->slots = s;
        t->nslots = n;
    }
    slot_t *s = &t->slots[slot];
    s->count++;
    s->dur[bucket(t->dbounds, t->nd, dur_ms)]++;
    s->dur_sum += dur_ms;
    s->req[bucket(t->sbounds, t->ns, req)]++;
    s->req_sum += req;
    s->resp[bucket(t->sbounds, t->ns, resp)]++;
    s->resp_sum += resp;
    return 0;
}

static int bounds(PyObject *seq, double *out, int *n)
{
    PyObject *f = PySequence_Fast(seq, "bounds must be a sequence of floats");
    if (f == NULL)
        return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(f);
    if (len < 1 || len > MAX_BUCKETS) {
        Py_DECREF(f);
        PyErr_SetString(PyExc_ValueError, "between 1 and 32 histogram bounds");
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        out[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(f, i));
        if (out[i] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(f);
            return -1;
        }
    }
    Py_DECREF(f);
    /* bucket() gives len(bounds) for a value above every bound, one past
     * the counts; +Inf last (prometheus' rule) is what keeps it in range,
     * and bisect_left's answer is only the linear scan's on sorted bounds. */
    int sorted = 1;
    for (Py_ssize_t i = 1; i < len; i++)
        sorted &= out[i - 1] <= out[i];
    if (!sorted || !(isinf(out[len - 1]) && out[len - 1] > 0)) {
        PyErr_SetString(PyExc_ValueError, "histogram bounds must be sorted, +Inf last");
        return -1;
    }
    *n = (int)len;
    return 0;
}

static int tally_init(Tally *t, PyObject *args, PyObject *kw)
{
    PyObject *d, *s;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "Tally takes no keyword arguments");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OO:Tally", &d, &s))
        return -1;
    double db[MAX_BUCKETS], sb[MAX_BUCKETS];
    int nd, ns;
    if (bounds(d, db, &nd) < 0 || bounds(s, sb, &ns) < 0)
        return -1;              /* a refused __init__ leaves the tally as it was */
    memcpy(t->dbounds, db, sizeof db);
    memcpy(t->sbounds, sb, sizeof sb);
    t->nd = nd;
    t->ns = ns;
    PyMem_Free(t->slots);
    t->slots = NULL;
    t->nslots = 0;
    return 0;
}

static void tally_dealloc(Tally *t)
{
    PyMem_Free(t->slots);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyObject *tally_add_py(Tally *t, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "add(slot, duration_ms, request_bytes, response_bytes)");
        return NULL;
    }
    Py_ssize_t slot = PyLong_AsSsize_t(args[0]);
    double v[3];
    for (int i = 0; i < 3; i++) {
        v[i] = PyFloat_AsDouble(args[i + 1]);
        if (v[i] == -1.0 && PyErr_Occurred())
            return NULL;
    }
    if ((slot == -1 && PyErr_Occurred()) || tally_add(t, slot, v[0], v[1], v[2]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *counts(const unsigned long long *c, int n)
{
    PyObject *l = PyList_New(n);
    if (l == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(c[i]);
        if (v == NULL) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, i, v);
    }
    return l;
}

static PyObject *tally_take(Tally *t, PyObject *unused)
{
    (void)unused;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < t->nslots; i++) {
        slot_t *s = &t->slots[i];
        if (s->count == 0)
            continue;
        PyObject *e = Py_BuildValue("(nKNdNdNd)", i, s->count, counts(s->dur, t->nd),
                                    s->dur_sum, counts(s->req, t->ns), s->req_sum,
                                    counts(s->resp, t->ns), s->resp_sum);
        if (e == NULL || PyList_Append(out, e) < 0) {
            Py_XDECREF(e);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(e);
        memset(s, 0, sizeof *s);
    }
    return out;
}

static PyMethodDef tally_methods[] = {
    {"add", (PyCFunction)(void (*)(void))tally_add_py, METH_FASTCALL,
     "add(slot, duration_ms, request_bytes, response_bytes): one request"},
    {"take", (PyCFunction)tally_take, METH_NOARGS,
     "take() -> [(slot, count, duration_counts, duration_sum, request_counts, request_sum, "
     "response_counts, response_sum)] for the slots counted since, zeroed"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject TallyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal.waypoint.native._h1.Tally",
    .tp_doc = "request metrics counted in C per label-set slot (see tally.c)",
    .tp_basicsize = sizeof(Tally),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)tally_init,
    .tp_dealloc = (destructor)tally_dealloc,
    .tp_methods = tally_methods,
};

int tally_init_module(PyObject *module)
{
    if (PyType_Ready(&TallyType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "Tally", (PyObject *)&TallyType);
}
