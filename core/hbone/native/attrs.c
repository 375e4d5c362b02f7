/* Reading and writing the fields of Python objects from C: what the C data
 * paths (relay.c, send.c) use to keep h2's and shoal's objects exactly as the
 * Python path keeps them. Each returns -1 with a Python exception on error. */

#include "_native.h"

static PyObject *name_state_machine, *name_state;

int get_ll(PyObject *o, PyObject *name, long long *out)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

int set_ll(PyObject *o, PyObject *name, long long value)
{
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL)
        return -1;
    int r = PyObject_SetAttr(o, name, v);
    Py_DECREF(v);
    return r;
}

int add_ll(PyObject *o, PyObject *name, long long n)
{
    long long v;
    return get_ll(o, name, &v) < 0 ? -1 : set_ll(o, name, v + n);
}

/* 1 if o.name is truthy, 0 if not, -1 on error. */
int attr_true(PyObject *o, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* 1 if o.name is None, 0 if not, -1 on error. */
int attr_none(PyObject *o, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    int r = v == Py_None;
    Py_DECREF(v);
    return r;
}

/* 1 if len(o.name) == 0. */
int attr_empty(PyObject *o, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    Py_ssize_t n = PyObject_Length(v);
    Py_DECREF(v);
    return n < 0 ? -1 : n == 0;
}

/* 1 if o.state_machine.state is one of `states` (identity: enum members). */
int state_in(PyObject *o, PyObject *states)
{
    PyObject *state = flow_state(o);      /* h2fast's objects: by pointer */
    if (state != NULL) {
        int found = 0;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(states); i++)
            found |= PyTuple_GET_ITEM(states, i) == state;
        return found;
    }
    PyObject *sm = PyObject_GetAttr(o, name_state_machine);
    if (sm == NULL)
        return -1;
    PyObject *st = PyObject_GetAttr(sm, name_state);
    Py_DECREF(sm);
    if (st == NULL)
        return -1;
    int found = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(states); i++)
        found |= PyTuple_GET_ITEM(states, i) == st;
    Py_DECREF(st);
    return found;
}

int attrs_init(void)
{
    name_state_machine = PyUnicode_InternFromString("state_machine");
    name_state = PyUnicode_InternFromString("state");
    return name_state_machine != NULL && name_state != NULL ? 0 : -1;
}
