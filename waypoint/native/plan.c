/* The plan path's request half in C (waypoint/planpath.py).
 *
 *   seed(data)        32 bytes from os.urandom: this worker's id generator
 *                     (called in the worker, after the fork)
 *   plan_request(data, plans, sampling_percent) ->
 *       None                           not one whole body-less request head:
 *                                      the bytes go to the Python parser
 *     | (None, parsed)                 a head no plan serves: `parsed` is
 *                                      parse_request's tuple
 *     | (plan, parsed, upstream_head, request_id, traceparent, parent_span)
 *
 * `plans` maps "METHOD TARGET HOST" to a plan made by planpath.py for a
 * request whose decision depends on nothing else. On a hit the upstream
 * head is made here, byte for byte what Forwarder._upstream_headers
 * (drop_length) and serialize_request_head make for a request forwarded
 * unchanged: hop-by-hop headers and those the last Connection header names
 * dropped, Content-Length dropped, Host first when absent, `traceparent` a
 * child of a valid incoming one (telemetry.trace_context) or a new trace
 * sampled at `sampling_percent`, `x-request-id` kept or made (32 hex
 * digits), `x-forwarded-proto: http`; existing headers keep their place.
 *
 * A head is left to the Python path (a miss) when Proxy.begin would do more
 * than this: an Expect header, a gRPC content type (message counters), or
 * several traceparent or x-request-id headers (rare; joined in Python).
 */

#include "_h1.h"

/* -- ids: xoshiro256** (Blackman and Vigna), seeded from os.urandom ---------- */

static uint64_t rs[4];
static int seeded;

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t next64(void)
{
    uint64_t r = rotl(rs[1] * 5, 7) * 9, t = rs[1] << 17;
    rs[2] ^= rs[0];
    rs[3] ^= rs[1];
    rs[1] ^= rs[2];
    rs[0] ^= rs[3];
    rs[2] ^= t;
    rs[3] = rotl(rs[3], 45);
    return r;
}

/* random.random()'s range and resolution: [0, 1) in steps of 2**-53. */
static double next_double(void)
{
    return (double)(next64() >> 11) * 0x1.0p-53;
}

static PyObject *seed(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    int ok = buf.len == (Py_ssize_t)sizeof rs;
    if (ok) {
        memcpy(rs, buf.buf, sizeof rs);
        ok = (rs[0] | rs[1] | rs[2] | rs[3]) != 0;     /* the one state it never leaves */
    }
    PyBuffer_Release(&buf);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "seed takes 32 bytes, not all zero");
        return NULL;
    }
    seeded = 1;
    Py_RETURN_NONE;
}

/* -- the upstream head ------------------------------------------------------------ */

static char *hb;                /* the head being built (one at a time: the GIL is held) */
static size_t hb_len, hb_cap;

static int hput(const char *at, size_t len)
{
    if (hb_len + len > hb_cap) {
        size_t cap = hb_cap ? hb_cap : 4096;
        while (cap < hb_len + len)
            cap *= 2;
        char *n = PyMem_Realloc(hb, cap);
        if (n == NULL)
            return -1;
        hb = n;
        hb_cap = cap;
    }
    memcpy(hb + hb_len, at, len);
    hb_len += len;
    return 0;
}

#define HPUTS(s) hput((s), sizeof(s) - 1)

static int hspan(span_t s)
{
    return hput(s.len ? s.at : "", s.len);
}

/* http1.HOP_BY_HOP */
static const char *const hop_by_hop[] = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", NULL,
};

/* Is `name` one of the comma-separated tokens of `list` (each stripped,
 * compared without ASCII case)? http1.hop_by_hop_names' `named` set. */
static int named_in(span_t name, span_t list)
{
    size_t start = 0;
    for (size_t j = 0; j <= list.len; j++) {
        if (j == list.len || list.at[j] == ',') {
            span_t tok = strip((span_t){list.at + start, j - start});
            if (tok.len && tok.len == name.len) {
                int same = 1;
                for (size_t k = 0; k < tok.len && same; k++) {
                    char a = tok.at[k], b = name.at[k];
                    if (a >= 'A' && a <= 'Z') a += 32;
                    if (b >= 'A' && b <= 'Z') b += 32;
                    same = a == b;
                }
                if (same)
                    return 1;
            }
            start = j + 1;
        }
    }
    return 0;
}

static int all_zero(span_t s)
{
    for (size_t i = 0; i < s.len; i++)
        if (s.at[i] != '0')
            return 0;
    return 1;
}

/* telemetry.valid_traceparent, and its four '-' parts. */
static int valid_traceparent(span_t v, span_t parts[4])
{
    if (v.len != 55)
        return 0;
    size_t n = 0, start = 0;
    for (size_t j = 0; j <= v.len; j++) {
        if (j == v.len || v.at[j] == '-') {
            if (n == 4)
                return 0;
            parts[n++] = (span_t){v.at + start, j - start};
            start = j + 1;
        }
    }
    return n == 4 && parts[1].len == 32 && parts[2].len == 16 && !all_zero(parts[1]) &&
           !all_zero(parts[2]);
}

/* v as 16 lower-case hex digits at p (printf's %016llx: printf cost about a
 * tenth of a plan-served request's instructions, callgrind said); returns
 * the end. */
static char *hex16(char *p, uint64_t v)
{
    for (int i = 15; i >= 0; i--, v >>= 4)
        p[i] = "0123456789abcdef"[v & 15];
    return p + 16;
}

/* The span's bytes at p; returns the end. */
static char *put(char *p, span_t s)
{
    memcpy(p, s.at, s.len);
    return p + s.len;
}

/* What to do with each client header. */
enum { K_KEEP, K_DROP, K_TP, K_XFP, K_SKIP };

typedef struct {
    char tp[64], rid[40];
    size_t tp_len, rid_len;
    span_t parent;
} ids_t;

/* Build the upstream head of `c` into hb; 1 done, 0 a miss, -1 no memory. */
static int build_head(parse_t *c, span_t host, double sampling, ids_t *ids)
{
    unsigned char kind[MAX_SPANS];
    ssize_t conn = -1, tp_hdr = -1, rid_hdr = -1;
    for (size_t i = 0; i < c->count; i++) {
        span_t n = c->names[i];
        for (size_t j = 0; j < n.len; j++)
            if ((unsigned char)n.at[j] >= 0x80)
                return 0;       /* str.lower() beyond ASCII: Python's */
        if (is(n, "connection")) {
            conn = (ssize_t)i;
        } else if (is(n, "expect")) {
            return 0;
        } else if (is(n, "content-type")) {
            span_t v = c->values[i];
            if (v.len >= 16 && is((span_t){v.at, 16}, "application/grpc"))
                return 0;       /* gRPC: Proxy.begin counts its messages */
        } else if (is(n, "traceparent")) {
            if (tp_hdr >= 0)
                return 0;
            tp_hdr = (ssize_t)i;
        } else if (is(n, "x-request-id")) {
            if (rid_hdr >= 0)
                return 0;
            rid_hdr = (ssize_t)i;
        }
    }
    /* The trace context, decided from the incoming header as Proxy.begin
     * does (before any is dropped). */
    span_t parts[4];
    if (tp_hdr >= 0 && valid_traceparent(c->values[tp_hdr], parts)) {
        /* 55 bytes (valid_traceparent): "VV-TRACE-SPAN-FF", the span ours. */
        char *p = put(ids->tp, parts[0]);
        *p++ = '-';
        p = put(p, parts[1]);
        *p++ = '-';
        p = hex16(p, next64());
        *p++ = '-';
        p = put(p, parts[3]);
        ids->tp_len = (size_t)(p - ids->tp);
        ids->parent = parts[2];
    } else {
        const char *flags = next_double() * 100.0 < sampling ? "01" : "00";
        unsigned long long t1 = next64(), t2 = next64(), span = next64();
        char *p = ids->tp;
        memcpy(p, "00-", 3);
        p = hex16(hex16(p + 3, t1), t2);
        *p++ = '-';
        p = hex16(p, span);
        *p++ = '-';
        memcpy(p, flags, 2);
        ids->tp_len = (size_t)(p + 2 - ids->tp);
        ids->parent = (span_t){NULL, 0};
    }
    int has_host = 0, have_tp = 0, have_xfp = 0, have_rid = 0;
    for (size_t i = 0; i < c->count; i++) {
        span_t n = c->names[i];
        int drop = conn >= 0 && named_in(n, c->values[conn]);
        for (const char *const *h = hop_by_hop; !drop && *h; h++)
            drop = is(n, *h);
        if (drop)
            kind[i] = K_DROP;
        else if (is(n, "traceparent"))
            kind[i] = have_tp++ ? K_SKIP : K_TP;
        else if (is(n, "x-forwarded-proto"))
            kind[i] = have_xfp++ ? K_SKIP : K_XFP;
        else if (is(n, "content-length"))
            kind[i] = K_SKIP;
        else {
            kind[i] = K_KEEP;
            if (is(n, "host"))
                has_host = 1;
            else if (is(n, "x-request-id") && c->values[i].len) {
                /* An empty one is kept and a new id added after, as
                 * Forwarder._upstream_headers does (its join is falsy). */
                have_rid = 1;
                span_t v = c->values[i];
                if (v.len > sizeof ids->rid)
                    return 0;       /* kept as it came; only long ones go to Python */
                memcpy(ids->rid, v.at, v.len);
                ids->rid_len = v.len;
            }
        }
    }
    if (!have_rid) {
        /* The second draw first: the ids the snprintf this replaced made
         * (gcc evaluated its arguments right to left), so a seed gives the
         * same ids as before. */
        uint64_t first = next64(), second = next64();
        ids->rid_len = (size_t)(hex16(hex16(ids->rid, second), first) - ids->rid);
    }
    hb_len = 0;
    if (hspan(c->method) < 0 || HPUTS(" ") < 0 || hspan(c->url) < 0 ||
        HPUTS(" HTTP/1.1\r\n") < 0)
        return -1;
    if (!has_host && (HPUTS("host: ") < 0 || hspan(host) < 0 || HPUTS("\r\n") < 0))
        return -1;
    for (size_t i = 0; i < c->count; i++) {
        int r = 0;
        switch (kind[i]) {
        case K_KEEP:
            r = hspan(c->names[i]) < 0 || HPUTS(": ") < 0 || hspan(c->values[i]) < 0 ||
                HPUTS("\r\n") < 0;
            break;
        case K_TP:
            r = HPUTS("traceparent: ") < 0 || hput(ids->tp, ids->tp_len) < 0 ||
                HPUTS("\r\n") < 0;
            break;
        case K_XFP:
            r = HPUTS("x-forwarded-proto: http\r\n") < 0;
            break;
        default:
            break;
        }
        if (r)
            return -1;
    }
    if (!have_tp && (HPUTS("traceparent: ") < 0 || hput(ids->tp, ids->tp_len) < 0 ||
                     HPUTS("\r\n") < 0))
        return -1;
    if (!have_rid && (HPUTS("x-request-id: ") < 0 || hput(ids->rid, ids->rid_len) < 0 ||
                      HPUTS("\r\n") < 0))
        return -1;
    if (!have_xfp && HPUTS("x-forwarded-proto: http\r\n") < 0)
        return -1;
    return HPUTS("\r\n") < 0 ? -1 : 1;
}

/* The plans' key: "METHOD TARGET HOST" (neither method nor target holds a
 * space, so the key names one triple). */
static PyObject *plan_key(parse_t *c, span_t host)
{
    hb_len = 0;
    if (hspan(c->method) < 0 || HPUTS(" ") < 0 || hspan(c->url) < 0 || HPUTS(" ") < 0 ||
        hspan(host) < 0)
        return PyErr_NoMemory();
    return PyUnicode_DecodeLatin1(hb, (Py_ssize_t)hb_len, NULL);
}

static parse_t parse;           /* one request at a time: the GIL is held */

static PyObject *plan_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3 || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "plan_request(data, plans: dict, sampling_percent)");
        return NULL;
    }
    if (!llhttp_bound() || !seeded) {
        PyErr_SetString(PyExc_RuntimeError, "init() and seed() have not succeeded");
        return NULL;
    }
    double sampling = PyFloat_AsDouble(args[2]);
    if (sampling == -1.0 && PyErr_Occurred())
        return NULL;
    Py_buffer buf;
    if (PyObject_GetBuffer(args[0], &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL, *parsed = NULL, *key = NULL, *plan = NULL;
    span_t host;
    int clen0;
    parse_t *c = &parse;
    if (!one_request(c, buf.buf, (size_t)buf.len, &host, &clen0)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    parsed = request_tuple(c, host, clen0);
    if (parsed == NULL)
        goto done;
    if (PyDict_GET_SIZE(args[1]) == 0)
        goto miss;
    key = plan_key(c, host);
    if (key == NULL)
        goto done;
    /* Owned: the answer's tuple is allocated after the lookup, and the
     * collection that may start could run Python (a finaliser, a gc
     * callback) that drops the plan from `plans`. */
    plan = Py_XNewRef(PyDict_GetItemWithError(args[1], key));
    if (plan == NULL) {
        if (PyErr_Occurred())
            goto done;
        goto miss;
    }
    ids_t ids;
    int built = build_head(c, host, sampling, &ids);
    if (built < 0) {
        PyErr_NoMemory();
        goto done;
    }
    if (built == 0)
        goto miss;
    PyObject *hit[6] = {Py_NewRef(plan), Py_NewRef(parsed),
                        PyBytes_FromStringAndSize(hb, (Py_ssize_t)hb_len),
                        latin1((span_t){ids.rid, ids.rid_len}),
                        latin1((span_t){ids.tp, ids.tp_len}), latin1(ids.parent)};
    result = steal_tuple(hit, 6);
    goto done;
miss:
    result = steal_tuple((PyObject *[2]){Py_NewRef(Py_None), Py_NewRef(parsed)}, 2);
done:
    Py_XDECREF(plan);
    Py_XDECREF(parsed);
    Py_XDECREF(key);
    PyBuffer_Release(&buf);
    return result;
}

/* -- HTTP/2 requests (h2fastpath.py) ----------------------------------------------- */

/* A bytes object's span; 0 when `o` is not bytes. */
static int bytes_span(PyObject *o, span_t *s)
{
    if (!PyBytes_CheckExact(o))
        return 0;
    *s = (span_t){PyBytes_AS_STRING(o), (size_t)PyBytes_GET_SIZE(o)};
    return 1;
}

static int has_byte(span_t s, char b)
{
    return s.len && memchr(s.at, b, s.len) != NULL;
}

/* CR, LF or NUL: bytes no head should carry. The Python path copies fields
 * as they are; these go there, so the plan path never writes them. */
static int has_ctl(span_t s)
{
    return has_byte(s, '\r') || has_byte(s, '\n') || has_byte(s, '\0');
}

/* An upper-case ASCII letter: h2 refuses such names (RFC 9113 8.2.1), and
 * h2server._request compares names as they are ("host"), where build_head
 * ignores case: such a name goes to the Python path, not trusted here. */
static int has_upper(span_t s)
{
    for (size_t i = 0; i < s.len; i++)
        if (s.at[i] >= 'A' && s.at[i] <= 'Z')
            return 1;
    return 0;
}

/* Fill `c` from h2's request fields (pseudo-headers first, as h2 validated
 * them) the way h2server._request turns them into a RequestHead; *host is
 * :authority. 1 when a plan may serve it, 0 when the Python path must: a
 * field that is not (bytes, bytes), a pseudo-header other than :method,
 * :path, :scheme and :authority or one twice, :scheme other than "http"
 * (x-forwarded-proto is the scheme; plan heads say http), no :authority
 * (Host then decides: the Python path's), a space in :method or :path
 * (the plan key would be ambiguous), CR, LF or NUL anywhere, an upper-case
 * name, more fields than MAX_SPANS. */
/* The four pseudo-headers and MAX_SPANS fields. */
#define MAX_H2_FIELDS (MAX_SPANS + 4)

static int h2_fields(parse_t *c, PyObject *fields, span_t *host, PyObject **held,
                     size_t *nheld)
{
    span_t method = {NULL, 0}, path = {NULL, 0}, scheme = {NULL, 0}, authority = {NULL, 0};
    int seen = 0;
    Py_ssize_t n = PyList_GET_SIZE(fields);
    c->count = 0;
    if (n > MAX_H2_FIELDS)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* Owned: the spans point into the bytes this tuple holds, and
         * making the key may start a collection that runs Python (a
         * finaliser) which could change the caller's list. Nothing in this
         * loop runs Python. */
        PyObject *f = held[(*nheld)++] = Py_NewRef(PyList_GET_ITEM(fields, i));
        span_t name, value;
        if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) != 2 ||
            !bytes_span(PyTuple_GET_ITEM(f, 0), &name) ||
            !bytes_span(PyTuple_GET_ITEM(f, 1), &value) || has_ctl(name) || has_ctl(value) ||
            has_upper(name))
            return 0;
        if (name.len && name.at[0] == ':') {
            span_t *slot;
            int bit;
            if (c->count)
                return 0;       /* h2 refuses this; never trust it here */
            if (is(name, ":method"))
                slot = &method, bit = 1;
            else if (is(name, ":path"))
                slot = &path, bit = 2;
            else if (is(name, ":scheme"))
                slot = &scheme, bit = 4;
            else if (is(name, ":authority"))
                slot = &authority, bit = 8;
            else
                return 0;
            if (seen & bit)
                return 0;
            seen |= bit;
            *slot = value;
            continue;
        }
        if (c->count == MAX_SPANS)
            return 0;
        c->names[c->count] = name;
        c->values[c->count] = value;
        c->count++;
    }
    if (seen != 15 || scheme.len != 4 || memcmp(scheme.at, "http", 4) != 0 || authority.len == 0 ||
        method.len == 0 || path.len == 0 || has_byte(method, ' ') || has_byte(path, ' '))
        return 0;
    c->method = method;
    c->url = path;
    *host = authority;
    return 1;
}

static PyObject *plan_h2(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3 || !PyList_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "plan_h2(fields: list, plans: dict, sampling_percent)");
        return NULL;
    }
    if (!seeded) {
        PyErr_SetString(PyExc_RuntimeError, "seed() has not succeeded");
        return NULL;
    }
    double sampling = PyFloat_AsDouble(args[2]);
    if (sampling == -1.0 && PyErr_Occurred())
        return NULL;
    if (PyDict_GET_SIZE(args[1]) == 0)
        Py_RETURN_NONE;
    PyObject *held[MAX_H2_FIELDS];
    size_t nheld = 0;
    PyObject *result = NULL, *key = NULL, *plan = NULL;
    parse_t *c = &parse;
    span_t host;
    if (!h2_fields(c, args[0], &host, held, &nheld)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    key = plan_key(c, host);
    if (key == NULL)
        goto done;
    plan = Py_XNewRef(PyDict_GetItemWithError(args[1], key));
    if (plan == NULL) {
        if (!PyErr_Occurred())
            result = Py_NewRef(Py_None);
        goto done;
    }
    ids_t ids;
    int built = build_head(c, host, sampling, &ids);
    if (built < 0) {
        PyErr_NoMemory();
        goto done;
    }
    if (built == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    result = Py_BuildValue("(ONNNN)", plan, PyBytes_FromStringAndSize(hb, (Py_ssize_t)hb_len),
                           latin1((span_t){ids.rid, ids.rid_len}),
                           latin1((span_t){ids.tp, ids.tp_len}), latin1(ids.parent));
done:
    Py_XDECREF(plan);
    Py_XDECREF(key);
    while (nheld)
        Py_DECREF(held[--nheld]);
    return result;
}

static PyMethodDef plan_methods[] = {
    {"seed", seed, METH_O, "seed(32 bytes from os.urandom): the id generator of this process"},
    {"plan_request", (PyCFunction)(void (*)(void))plan_request, METH_FASTCALL,
     "plan_request(data, plans, sampling_percent) -> None | (None, parsed) | "
     "(plan, parsed, upstream_head, request_id, traceparent, parent_span)"},
    {"plan_h2", (PyCFunction)(void (*)(void))plan_h2, METH_FASTCALL,
     "plan_h2(fields, plans, sampling_percent) -> None | "
     "(plan, upstream_head, request_id, traceparent, parent_span)"},
    {NULL, NULL, 0, NULL},
};

int plan_init(PyObject *module)
{
    return PyModule_AddFunctions(module, plan_methods);
}
