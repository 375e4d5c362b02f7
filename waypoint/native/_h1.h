/* What _h1.c (llhttp, the two heads) shares with plan.c (the plan path's
 * upstream head and ids). Hidden: nothing here leaves the .so. */
#ifndef SHOAL_WAYPOINT_H1_H
#define SHOAL_WAYPOINT_H1_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#pragma GCC visibility push(hidden)

/* Room reserved for llhttp_t (llhttp 9: about 80 bytes on x86-64); init()
 * measures what llhttp_init really clears and refuses a larger struct. */
#define LLH_RESERVED 256
/* Header spans of one head: http1.MAX_HEADER_COUNT (100) plus one, so the
 * header past the limit is seen and refused. */
#define MAX_SPANS 128

typedef struct { const char *at; size_t len; } span_t;

/* One parse: the llhttp_t first, so a callback's parser pointer is this. */
typedef struct {
    _Alignas(16) unsigned char llh[LLH_RESERVED];
    span_t url, status, method, field, value;
    span_t names[MAX_SPANS], values[MAX_SPANS];
    size_t count, head_bytes;
    int open;                   /* 1: a field span is open, 2: a value span */
    int headers_done, message_done, too_big, odd;
    int keep_alive, upgrade, major, minor, status_code;
    /* response framing, after the head */
    struct Response *resp;
} parse_t;

/* 1 when `data` is exactly one whole body-less request head that
 * parse_request takes (its rules: see _h1.c), with *host the last Host
 * value and *clen0 set when a `Content-Length: 0` came; 0 otherwise (the
 * Python parser's), -1 with an exception. Spans point into `data`. */
int one_request(parse_t *c, const char *data, size_t len, span_t *host, int *clen0);
/* parse_request's tuple (method, target, headers, host, version,
 * keep_alive, content_length) for a parse one_request took. */
PyObject *request_tuple(parse_t *c, span_t host, int clen0);

/* 1 once init() bound llhttp and proved its ABI, else 0. */
int llhttp_bound(void);

/* ASCII case-insensitive comparison of a span with a lower-case name. */
int is(span_t s, const char *name);
/* The span without Python's str.strip() whitespace at either end. */
span_t strip(span_t s);
/* The span as a str (latin-1, every byte round-trips). */
PyObject *latin1(span_t s);
/* A tuple of the n new references in items (NULL ones: the call that made
 * them failed), which it steals; NULL with the exception when any is NULL
 * (the others released). Py_BuildValue's work without parsing a format
 * per call (a few percent of a request's instructions, callgrind said). */
PyObject *steal_tuple(PyObject **items, Py_ssize_t n);

/* plan.c: adds seed() and plan_request() to the module; -1 with an exception. */
int plan_init(PyObject *module);

/* tally.c: request metrics per label-set slot (Tally). tally_add counts
 * one request (0, or -1 with an exception); tally_init_module adds the type. */
typedef struct Tally Tally;
extern PyTypeObject TallyType;
int tally_add(Tally *t, Py_ssize_t slot, double dur_ms, double req, double resp);
int tally_init_module(PyObject *module);

/* cexchange.c: adds the CExchange type, given Response.feed's code bits
 * (FALLBACK, HEAD, DONE, CUT); -1 with an exception. */
int cexchange_init(PyObject *module, long fallback, long head, long done, long cut);

/* cend.c: a plan-served request's common end on the Python objects' state.
 * Each returns 1 (done), 0 (not the common case: nothing changed, call
 * Python) or -1 with an exception; cend_init adds configure_end(). */
int cend_finished_ok(PyObject *lb, PyObject *key);
int cend_done(PyObject *session, PyObject *proxy, PyObject *response, PyObject *state, int held,
              int counted);
int cend_init(PyObject *module);
/* cend.c's helpers, shared with cstart.c: `o` is exactly `type` and
 * type.name is still `fn` (1, 0, -1); an attribute that is an exact int
 * (*ok = 0 when it is not; -1 with an exception); set an int attribute;
 * an attribute's truth (0/1, -1 with an exception). */
int cend_registered(PyObject *o, PyTypeObject *type, PyObject *name, PyObject *fn);
long cend_int_attr(PyObject *o, PyObject *name, int *ok);
int cend_set_long(PyObject *o, PyObject *name, long v);
int cend_true_attr(PyObject *o, PyObject *name);

/* cstart.c: a plan-served request's common start (pick, started, an idle
 * pooled connection) on the Python objects' state; adds configure_start()
 * and start_planned(); -1 with an exception. */
int cstart_init(PyObject *module);

#pragma GCC visibility pop

#endif
