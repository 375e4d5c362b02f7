/* shoal.waypoint.native._h1: the HTTP/1.1 fast path's two heads in C.
 *
 * The callback fast path (waypoint/fastpath.py, fastexchange.py) parsed every
 * request and response through httptools' Python callbacks (one call per
 * header, an event object per step) and framed the response in Python.
 * Here the same llhttp does the parsing, with C callbacks, in one call:
 *
 *   configure(max_header_bytes, max_header_count, max_request_line)
 *                            http1.py's limits (one definition, given at load)
 *   parse_request(data) -> (method, target, headers, host, version,
 *                           keep_alive, content_length) | None
 *       `data` is exactly one whole request head without a body; None for
 *       anything else (a partial or pipelined read, a body, an upgrade, a
 *       Transfer-Encoding, a limit, a parse error): the caller gives the
 *       same bytes to the Python parser (http1.H1Server), which answers.
 *   Response(client_http11, client_keep_alive)
 *       .feed(data, draining) -> (client_bytes, code)
 *       parses one upstream response and frames it for the client as
 *       h1framing.ResponseFramer does (hop-by-hop headers dropped, chunked
 *       for an unsized body, Connection close/keep-alive). Until the head
 *       is complete nothing is written and the bytes are kept: anything
 *       this code does not frame itself (a 1xx, 101, 204, 304, a status
 *       without reason phrase, a limit, a malformed head, EOF before the
 *       head) returns FALLBACK and `.raw` holds every byte so far for the
 *       Python parser (http1.H1ResponseParser), so the outcome is its.
 *
 * llhttp is not linked in: httptools' extension module carries it (its
 * llhttp_* symbols are exported), so it is opened with RTLD_NOLOAD after
 * httptools.parser.parser was imported and called through dlsym. Only
 * functions and the settings table are shared; the llhttp_t is an opaque
 * region this module reserves, and init() proves at import that llhttp 9's
 * settings layout and the parser size hold (load.py falls back otherwise).
 */

#include "_h1.h"

#include <dlfcn.h>

/* Slots reserved for llhttp_settings_t (llhttp 9 has 25 callbacks); the
 * extra ones stay NULL should a later version append callbacks. */
#define SETTINGS_SLOTS 64
/* Most response head bytes kept while the head is incomplete. Each read
 * parses them all again (run()), so a head dribbled in small reads costs
 * the square of this: past it the incremental Python parser takes over.
 * 16 KiB holds typical heads whole; larger split ones are rare. */
#define MAX_RAW_HEAD (16 * 1024)
/* llhttp 9's settings table, by index (llhttp.h, struct llhttp_settings_s). */
enum { CB_URL = 2, CB_STATUS = 3, CB_METHOD = 4,
       CB_HEADER_FIELD = 6, CB_HEADER_VALUE = 7, CB_HEADERS_COMPLETE = 10,
       CB_BODY = 11, CB_MESSAGE_COMPLETE = 12, CB_HEADER_VALUE_COMPLETE = 19 };
/* llhttp_errno_t / llhttp_type_t values (stable across llhttp 6-9). */
enum { HPE_OK = 0, HPE_PAUSED = 21, HPE_PAUSED_UPGRADE = 22 };
enum { HTTP_REQUEST = 1, HTTP_RESPONSE = 2 };

/* Response.feed codes: bits. */
#define R_FALLBACK 1      /* nothing written: give .raw to the Python parser */
#define R_HEAD 2          /* the response head arrived (.status) */
#define R_DONE 4          /* the response ended */
#define R_CUT 8           /* the body cannot complete: cut the client off */

typedef struct llhttp_s llhttp_t;
typedef int (*cb_t)(llhttp_t *);
typedef int (*data_cb_t)(llhttp_t *, const char *, size_t);

static void (*p_init)(llhttp_t *, int, const void *);
static int (*p_execute)(llhttp_t *, const char *, size_t);
static int (*p_should_keep_alive)(const llhttp_t *);
static uint8_t (*p_major)(llhttp_t *);
static uint8_t (*p_minor)(llhttp_t *);
static uint8_t (*p_upgrade)(llhttp_t *);
static int (*p_status_code)(llhttp_t *);
static const char *(*p_error_pos)(const llhttp_t *);

static size_t max_header_bytes = 60 * 1024, max_header_count = 100, max_request_line = 16 * 1024;

static void extend(span_t *s, const char *at, size_t len)
{
    if (s->at == NULL) {
        s->at = at;
        s->len = len;
    } else {
        s->len = (size_t)(at + len - s->at);    /* one contiguous buffer */
    }
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    extend(&((parse_t *)p)->url, at, len);
    return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t len)
{
    extend(&((parse_t *)p)->status, at, len);
    return 0;
}

static int on_method(llhttp_t *p, const char *at, size_t len)
{
    extend(&((parse_t *)p)->method, at, len);
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    parse_t *c = (parse_t *)p;
    if (c->open != 1) {
        c->field.at = NULL;
        c->field.len = 0;
        c->value.at = NULL;
        c->value.len = 0;
        c->open = 1;
    }
    if (c->headers_done)        /* trailers may span reads: only their size counts */
        c->field.len += len;
    else
        extend(&c->field, at, len);
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    parse_t *c = (parse_t *)p;
    c->open = 2;
    if (c->headers_done)
        c->value.len += len;
    else
        extend(&c->value, at, len);
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    parse_t *c = (parse_t *)p;
    c->open = 0;
    c->head_bytes += c->field.len + c->value.len + 4;
    if (c->head_bytes > max_header_bytes || c->count >= max_header_count) {
        c->too_big = 1;
        return -1;
    }
    if (c->value.at == NULL && !c->headers_done) {
        /* An empty value: httptools reports no header for it, which the
         * Python path then handles its own way; leave it to that path. */
        c->odd = 1;
        return -1;
    }
    if (!c->headers_done) {     /* trailers are counted as http1.py does, not kept */
        c->names[c->count] = c->field;
        c->values[c->count] = c->value;
    }
    c->count++;
    return 0;
}

static int response_head(parse_t *c);
static int response_body(parse_t *c, const char *at, size_t len);

static int on_headers_complete(llhttp_t *p)
{
    parse_t *c = (parse_t *)p;
    c->headers_done = 1;
    c->keep_alive = p_should_keep_alive(p);
    c->upgrade = p_upgrade(p);
    c->major = p_major(p);
    c->minor = p_minor(p);
    c->status_code = p_status_code(p);
    if (c->resp != NULL)
        return response_head(c);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    parse_t *c = (parse_t *)p;
    if (c->resp != NULL)
        return response_body(c, at, len);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    ((parse_t *)p)->message_done = 1;
    return HPE_PAUSED;          /* one message per call: the rest is not ours */
}

static void *settings[SETTINGS_SLOTS];

static void reset(parse_t *c, int type, struct Response *resp)
{
    memset((char *)c + LLH_RESERVED, 0, sizeof(*c) - LLH_RESERVED);
    c->resp = resp;
    p_init((llhttp_t *)c, type, settings);
}

/* ASCII case-insensitive comparison of a span with a lower-case name. */
int is(span_t s, const char *name)
{
    size_t n = strlen(name);
    if (s.len != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s.at[i];
        if (ch >= 'A' && ch <= 'Z')
            ch += 32;
        if (ch != name[i])
            return 0;
    }
    return 1;
}

/* Python's str.isspace() on a latin-1 character (what str.strip() drops). */
static int py_space(unsigned char ch)
{
    return ch == ' ' || (ch >= '\t' && ch <= '\r') || (ch >= 0x1c && ch <= 0x1f) ||
           ch == 0x85 || ch == 0xa0;
}

span_t strip(span_t s)
{
    while (s.len && py_space((unsigned char)s.at[0])) {
        s.at++;
        s.len--;
    }
    while (s.len && py_space((unsigned char)s.at[s.len - 1]))
        s.len--;
    return s;
}

/* http1.py's Content-Length test, `v.strip().isdigit()`, for ASCII: any
 * number of digits (llhttp takes leading zeros and lengths up to 2**64). */
static int all_digits(span_t s)
{
    s = strip(s);
    if (s.len == 0)
        return 0;
    for (size_t i = 0; i < s.len; i++)
        if (s.at[i] < '0' || s.at[i] > '9')
            return 0;
    return 1;
}

/* Its value when it has at most 18 digits (no overflow): 1 and *out set;
 * 0 otherwise (a request then goes to the Python path, which decides). */
static int digits(span_t s, unsigned long long *out)
{
    if (!all_digits(s))
        return 0;
    s = strip(s);
    if (s.len > 18)
        return 0;
    unsigned long long v = 0;
    for (size_t i = 0; i < s.len; i++)
        v = v * 10 + (unsigned)(s.at[i] - '0');
    *out = v;
    return 1;
}

PyObject *latin1(span_t s)
{
    return PyUnicode_DecodeLatin1(s.len ? s.at : "", (Py_ssize_t)s.len, NULL);
}

/* parse_request's versions, made once (PyInit__h1). */
static PyObject *s_http11, *s_http10;

PyObject *steal_tuple(PyObject **items, Py_ssize_t n)
{
    PyObject *t = PyTuple_New(n);
    for (Py_ssize_t i = 0; i < n; i++)
        if (items[i] == NULL)
            Py_CLEAR(t);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (t != NULL)
            PyTuple_SET_ITEM(t, i, items[i]);
        else
            Py_XDECREF(items[i]);
    }
    return t;
}

/* -- requests ------------------------------------------------------------- */

int one_request(parse_t *c, const char *data, size_t len, span_t *host, int *clen0)
{
    reset(c, HTTP_REQUEST, NULL);
    *clen0 = 0;
    host->at = NULL;
    host->len = 0;
    int err = len ? p_execute((llhttp_t *)c, data, len) : HPE_OK;
    /* Exactly one whole message, nothing after it. */
    if (err != HPE_PAUSED || !c->message_done || p_error_pos((llhttp_t *)c) != data + len)
        return 0;
    if (c->url.len > max_request_line || c->upgrade || is(c->method, "connect") ||
        c->major != 1 || c->minor > 1)
        return 0;
    for (size_t i = 0; i < c->count; i++) {
        span_t n = c->names[i];
        if (is(n, "transfer-encoding"))
            return 0;           /* a body, or a smuggling attempt: Python's call */
        if (is(n, "content-length")) {
            unsigned long long v;
            if (*clen0 || !digits(c->values[i], &v) || v != 0)
                return 0;
            *clen0 = 1;
        } else if (is(n, "host")) {
            *host = c->values[i];
        }
    }
    return 1;
}

PyObject *request_tuple(parse_t *c, span_t host, int clen0)
{
    PyObject *clen = clen0 ? PyLong_FromLong(0) : Py_NewRef(Py_None);
    if (clen == NULL)
        return NULL;
    PyObject *headers = PyList_New((Py_ssize_t)c->count);
    if (headers == NULL) {
        Py_DECREF(clen);
        return NULL;
    }
    for (size_t i = 0; i < c->count; i++) {
        PyObject *k = latin1(c->names[i]), *v = k ? latin1(c->values[i]) : NULL;
        PyObject *t = v ? PyTuple_Pack(2, k, v) : NULL;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (t == NULL) {
            Py_DECREF(headers);
            Py_DECREF(clen);
            return NULL;
        }
        PyList_SET_ITEM(headers, (Py_ssize_t)i, t);
    }
    PyObject *items[7] = {latin1(c->method), latin1(c->url), headers, latin1(host),
                          Py_NewRef(c->minor ? s_http11 : s_http10),
                          Py_NewRef(c->keep_alive ? Py_True : Py_False), clen};
    return steal_tuple(items, 7);
}

int llhttp_bound(void)
{
    return p_init != NULL;
}

static PyObject *parse_request(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    parse_t *c = PyMem_Malloc(sizeof(parse_t));
    if (c == NULL) {
        PyBuffer_Release(&buf);
        return PyErr_NoMemory();
    }
    span_t host;
    int clen0;
    PyObject *result = one_request(c, buf.buf, (size_t)buf.len, &host, &clen0)
        ? request_tuple(c, host, clen0) : Py_NewRef(Py_None);
    PyMem_Free(c);
    PyBuffer_Release(&buf);
    return result;
}

/* -- responses ------------------------------------------------------------ */

typedef struct Response {
    PyObject_HEAD
    parse_t *c;
    char *raw;                  /* bytes before the head completed (FALLBACK) */
    size_t raw_len, raw_cap;
    char *out;                  /* this feed's client bytes */
    size_t out_len, out_cap;
    int http11, keep_alive;     /* the client's request */
    int draining;
    int status, chunked, close_after, done, clean, fallback, failed, have_clen, resp_chunked;
    int held;                   /* the head waits for body bytes or the end */
    unsigned long long body_bytes;
} Response;

static int put(Response *r, const char *at, size_t len)
{
    if (r->out_len + len > r->out_cap) {
        size_t cap = r->out_cap ? r->out_cap : 4096;
        while (cap < r->out_len + len)
            cap *= 2;
        char *n = PyMem_Realloc(r->out, cap);
        if (n == NULL)
            return -1;
        r->out = n;
        r->out_cap = cap;
    }
    memcpy(r->out + r->out_len, at, len);
    r->out_len += len;
    return 0;
}

#define PUTS(r, s) put((r), (s), sizeof(s) - 1)

/* The client's response head (h1framing.ResponseFramer.start), or FALLBACK. */
static int response_head(parse_t *c)
{
    Response *r = c->resp;
    int s = c->status_code;
    if (s < 200 || s == 204 || s == 304 || c->status.len == 0) {
        r->fallback = 1;        /* 1xx, 101, bodiless codes, no reason: Python's */
        return -1;
    }
    /* Content-Length and chunked as http1.H1ResponseParser reads them. */
    int have = 0, chunked = 0;
    ssize_t conn = -1;
    for (size_t i = 0; i < c->count; i++) {
        span_t n = c->names[i];
        if (is(n, "content-length")) {
            have = all_digits(c->values[i]);
            if (!have) {
                span_t t = strip(c->values[i]);
                for (size_t j = 0; j < t.len; j++)
                    if ((unsigned char)t.at[j] >= 0x80) {
                        r->fallback = 1;    /* str.isdigit() may differ: Python's */
                        return -1;
                    }
            }
        } else if (is(n, "transfer-encoding")) {
            span_t t = c->values[i];
            for (size_t j = 0; j + 7 <= t.len; j++)
                if (is((span_t){t.at + j, 7}, "chunked"))
                    chunked = 1;
        } else if (is(n, "connection")) {
            conn = (ssize_t)i;          /* the last one names the extra hop-by-hop headers */
        }
    }
    r->have_clen = have;
    r->resp_chunked = chunked;
    r->status = s;
    if (!have && r->http11)
        r->chunked = 1;
    else if (!have)
        r->close_after = 1;
    if (r->draining)
        r->close_after = 1;
    /* llhttp reads exactly three digits; printf only for anything else
     * (it cost more than the rest of the head). */
    char line[32];
    int n;
    if (s >= 100 && s <= 999) {
        memcpy(line, "HTTP/1.1 ", 9);
        line[9] = (char)('0' + s / 100);
        line[10] = (char)('0' + s / 10 % 10);
        line[11] = (char)('0' + s % 10);
        line[12] = ' ';
        n = 13;
    } else {
        n = snprintf(line, sizeof line, "HTTP/1.1 %d ", s);
    }
    if (put(r, line, (size_t)n) < 0 || put(r, c->status.at, c->status.len) < 0 ||
        PUTS(r, "\r\n") < 0)
        return -1;
    for (size_t i = 0; i < c->count; i++) {
        span_t name = c->names[i];
        if (is(name, "connection") || is(name, "keep-alive") || is(name, "proxy-connection") ||
            is(name, "te") || is(name, "trailer") || is(name, "transfer-encoding") ||
            is(name, "upgrade"))
            continue;
        if (conn >= 0) {        /* a name the last Connection header lists */
            span_t list = c->values[conn];
            int named = 0;
            size_t start = 0;
            for (size_t j = 0; j <= list.len && !named; j++) {
                if (j == list.len || list.at[j] == ',') {
                    span_t tok = strip((span_t){list.at + start, j - start});
                    if (tok.len && tok.len == name.len) {
                        named = 1;
                        for (size_t k = 0; k < tok.len && named; k++) {
                            char a = tok.at[k], b = name.at[k];
                            if (a >= 'A' && a <= 'Z') a += 32;
                            if (b >= 'A' && b <= 'Z') b += 32;
                            named = a == b;
                        }
                    }
                    start = j + 1;
                }
            }
            if (named)
                continue;
        }
        if (put(r, name.at, name.len) < 0 || PUTS(r, ": ") < 0 ||
            put(r, c->values[i].at, c->values[i].len) < 0 || PUTS(r, "\r\n") < 0)
            return -1;
    }
    if (r->chunked && PUTS(r, "transfer-encoding: chunked\r\n") < 0)
        return -1;
    if (!r->keep_alive || r->close_after) {
        if (PUTS(r, "connection: close\r\n") < 0)
            return -1;
    } else if (!r->http11 && PUTS(r, "connection: keep-alive\r\n") < 0) {
        return -1;
    }
    r->held = 1;
    return PUTS(r, "\r\n");
}

/* The response ended: the last chunk of a chunked one (ResponseFramer.end). */
static int finish(Response *r)
{
    r->done = 1;
    return r->chunked ? PUTS(r, "0\r\n\r\n") : 0;
}

static int response_body(parse_t *c, const char *at, size_t len)
{
    Response *r = c->resp;
    r->body_bytes += len;
    if (!r->chunked || len == 0)
        return put(r, at, len);
    char size[24];
    int n = snprintf(size, sizeof size, "%zx\r\n", len);
    if (put(r, size, (size_t)n) < 0 || put(r, at, len) < 0 || PUTS(r, "\r\n") < 0)
        return -1;
    return 0;
}

static PyObject *Response_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    int http11, keep_alive;
    static char *names[] = {"client_http11", "client_keep_alive", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "pp", names, &http11, &keep_alive))
        return NULL;
    if (p_init == NULL) {       /* no llhttp bound: a call would jump to NULL */
        PyErr_SetString(PyExc_RuntimeError, "init() has not succeeded");
        return NULL;
    }
    Response *r = (Response *)type->tp_alloc(type, 0);
    if (r == NULL)
        return NULL;
    r->c = PyMem_Malloc(sizeof(parse_t));
    if (r->c == NULL) {
        Py_DECREF(r);
        return PyErr_NoMemory();
    }
    r->http11 = http11;
    r->keep_alive = keep_alive;
    r->clean = 1;
    reset(r->c, HTTP_RESPONSE, r);
    return (PyObject *)r;
}

static void Response_dealloc(Response *r)
{
    PyMem_Free(r->c);
    PyMem_Free(r->raw);
    PyMem_Free(r->out);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyObject *result(Response *r, int code)
{
    /* ResponseFramer holds the head back until the first body bytes or
     * the end, so a small response leaves in one write. */
    PyObject *items[2];
    if (r->held && r->body_bytes == 0 && !r->done && !r->failed) {
        items[0] = PyBytes_FromStringAndSize("", 0);
    } else {
        r->held = 0;
        items[0] = PyBytes_FromStringAndSize(r->out_len ? r->out : "", (Py_ssize_t)r->out_len);
        r->out_len = 0;
    }
    items[1] = PyLong_FromLong(code);
    return steal_tuple(items, 2);
}

/* Parse `data` and return what changed (R_* bits). */
static int run(Response *r, const char *data, size_t len)
{
    parse_t *c = r->c;
    if (!c->headers_done) {
        /* Before the head: keep every byte and parse them all again from
         * the start, so each span lies in one buffer (a head split over
         * reads is rare; MAX_RAW_HEAD bounds the rework). This read is
         * kept whatever its size: a FALLBACK hands .raw over whole, and
         * a fast upstream's first read (head and body) may be larger. */
        if (len == 0) {
            r->fallback = 1;    /* EOF before the head: Python's error */
            return R_FALLBACK;
        }
        if (r->raw_len + len > r->raw_cap) {
            size_t cap = r->raw_cap ? r->raw_cap : 4096;
            while (cap < r->raw_len + len)
                cap *= 2;
            char *n = PyMem_Realloc(r->raw, cap);
            if (n == NULL)
                return -1;
            r->raw = n;
            r->raw_cap = cap;
        }
        memcpy(r->raw + r->raw_len, data, len);
        r->raw_len += len;
        reset(c, HTTP_RESPONSE, r);
        r->out_len = 0;
        data = r->raw;
        len = r->raw_len;
    } else if (len == 0) {
        /* EOF: ends a close-delimited body, cuts any other. */
        if (!r->have_clen && !r->resp_chunked)
            return finish(r) < 0 ? -1 : R_DONE;
        r->out_len = 0;         /* a held head never goes out before a cut */
        return r->failed = 1, R_CUT;
    }
    int had_head = c->headers_done;
    unsigned long long body_before = r->body_bytes;
    int err = p_execute((llhttp_t *)c, data, len);
    if (r->fallback) {
        r->out_len = 0;
        return R_FALLBACK;
    }
    if (err == HPE_PAUSED && c->message_done) {
        if (finish(r) < 0)
            return -1;
        /* Bytes after the response: not reusable, unless they are empty
         * lines, which llhttp (and so the Python parser) skips. */
        for (const char *q = p_error_pos((llhttp_t *)c); q < data + len; q++)
            if (*q != '\r' && *q != '\n')
                r->clean = 0;
        return (had_head ? 0 : R_HEAD) | R_DONE;
    }
    if (err != HPE_OK) {
        if (!had_head) {
            /* Python's parser fails this read before it reports the head
             * (its events come after the whole read): its answer, a 502
             * or a retry, not a cut. */
            r->fallback = 1;
            r->out_len = 0;
            return R_FALLBACK;
        }
        r->failed = 1;
        r->out_len = 0;         /* as the Python path: nothing of this read */
        r->body_bytes = body_before;
        return (had_head ? 0 : R_HEAD) | R_CUT;
    }
    if (!c->headers_done) {
        r->out_len = 0;
        if (r->raw_len > MAX_RAW_HEAD)
            return r->fallback = 1, R_FALLBACK;
        return 0;               /* the head is not complete yet */
    }
    return had_head ? 0 : R_HEAD;
}

static PyObject *Response_feed(Response *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "feed(data, draining)");
        return NULL;
    }
    if (r->done || r->failed || r->fallback) {
        PyErr_SetString(PyExc_RuntimeError, "feed after the response ended");
        return NULL;
    }
    int draining = PyObject_IsTrue(args[1]);
    if (draining < 0)
        return NULL;
    Py_buffer buf;
    if (PyObject_GetBuffer(args[0], &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    r->draining = draining;
    int code = run(r, buf.buf, (size_t)buf.len);
    PyBuffer_Release(&buf);
    if (r->c->headers_done && !r->fallback && r->raw != NULL) {
        PyMem_Free(r->raw);     /* only a FALLBACK before the head needs it */
        r->raw = NULL;
        r->raw_len = r->raw_cap = 0;
    }
    if (code < 0)
        return PyErr_NoMemory();
    return result(r, code);
}

static PyObject *Response_raw(Response *r, void *closure)
{
    (void)closure;
    return PyBytes_FromStringAndSize(r->raw_len ? r->raw : "", (Py_ssize_t)r->raw_len);
}

#define INT_GETTER(field) \
    static PyObject *Response_##field(Response *r, void *closure) \
    { (void)closure; return PyLong_FromLong(r->field); }
INT_GETTER(status)

static PyObject *Response_body_bytes(Response *r, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(r->body_bytes);
}

static PyObject *Response_close_after(Response *r, void *closure)
{
    (void)closure;
    return PyBool_FromLong(r->close_after);
}

static PyObject *Response_reusable(Response *r, void *closure)
{
    (void)closure;      /* H1Response.finish's rule; 204 never gets here */
    return PyBool_FromLong(r->done && r->c->keep_alive && r->clean);
}

static PyGetSetDef Response_getset[] = {
    {"raw", (getter)Response_raw, NULL, "bytes so far, for the Python parser (FALLBACK)", NULL},
    {"status", (getter)Response_status, NULL, "the response status (0 before the head)", NULL},
    {"body_bytes", (getter)Response_body_bytes, NULL, "body bytes received", NULL},
    {"close_after", (getter)Response_close_after, NULL,
     "the client connection closes after this response", NULL},
    {"reusable", (getter)Response_reusable, NULL,
     "the upstream connection may go back to the pool", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Response_methods[] = {
    {"feed", (PyCFunction)(void (*)(void))Response_feed, METH_FASTCALL,
     "feed(data, draining) -> (client_bytes, code): b'' is EOF"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ResponseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal.waypoint.native._h1.Response",
    .tp_basicsize = sizeof(Response),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One upstream response parsed and framed for an HTTP/1.x client.",
    .tp_new = Response_new,
    .tp_dealloc = (destructor)Response_dealloc,
    .tp_methods = Response_methods,
    .tp_getset = Response_getset,
};

/* -- loading ---------------------------------------------------------------- */

/* Prove the ABI on known input: the parser's size, and that each callback
 * slot receives what llhttp 9 puts there. */
static const char *self_test(void)
{
    unsigned char probe[LLH_RESERVED * 2];
    memset(probe, 0xA5, sizeof probe);
    p_init((llhttp_t *)probe, HTTP_REQUEST, settings);
    size_t last = 0;
    for (size_t i = 0; i < sizeof probe; i++)
        if (probe[i] != 0xA5)
            last = i + 1;
    if (last == 0 || last > LLH_RESERVED)
        return "llhttp_t is larger than this module reserves";
    static const char req[] = "GET /a?b HTTP/1.1\r\nHost: h\r\nX-Y: z\r\n\r\n";
    PyObject *t = PyBytes_FromStringAndSize(req, sizeof req - 1);
    PyObject *r = t ? parse_request(NULL, t) : NULL;
    Py_XDECREF(t);
    if (r == NULL) {
        PyErr_Clear();
        return "request self-test failed";
    }
    int ok = PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 7 &&
             PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(r, 0), "GET") == 0 &&
             PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(r, 1), "/a?b") == 0 &&
             PyList_GET_SIZE(PyTuple_GET_ITEM(r, 2)) == 2 &&
             PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(r, 3), "h") == 0;
    Py_DECREF(r);
    if (!ok)
        return "llhttp's callbacks are not where llhttp 9 puts them";
    PyObject *args = Py_BuildValue("(ii)", 1, 1);
    Response *resp = args ? (Response *)Response_new(&ResponseType, args, NULL) : NULL;
    Py_XDECREF(args);
    if (resp == NULL) {
        PyErr_Clear();
        return "response self-test failed";
    }
    static const char res[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    int code = run(resp, res, sizeof res - 1);
    static const char want[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    ok = code == (R_HEAD | R_DONE) && resp->out_len == sizeof want - 1 &&
         memcmp(resp->out, want, resp->out_len) == 0 && resp->body_bytes == 2;
    Py_DECREF(resp);
    return ok ? NULL : "llhttp's response callbacks are not where llhttp 9 puts them";
}

static PyObject *init(PyObject *self, PyObject *arg)
{
    (void)self;
    const char *path = PyUnicode_AsUTF8(arg);
    if (path == NULL)
        return NULL;
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (h == NULL) {
        PyErr_Format(PyExc_ImportError, "httptools' parser is not loaded: %s", dlerror());
        return NULL;
    }
#define SYM(var, name) \
    if ((*(void **)&var = dlsym(h, name)) == NULL) { \
        p_init = NULL;          /* the others may be missing: nothing is usable */ \
        PyErr_Format(PyExc_ImportError, "llhttp symbol %s missing", name); \
        return NULL; \
    }
    SYM(p_init, "llhttp_init")
    SYM(p_execute, "llhttp_execute")
    SYM(p_should_keep_alive, "llhttp_should_keep_alive")
    SYM(p_major, "llhttp_get_http_major")
    SYM(p_minor, "llhttp_get_http_minor")
    SYM(p_upgrade, "llhttp_get_upgrade")
    SYM(p_status_code, "llhttp_get_status_code")
    SYM(p_error_pos, "llhttp_get_error_pos")
    /* Present only from llhttp 9.x on (the settings layout assumed here). */
    void *v9;
    SYM(v9, "llhttp__on_protocol")
    SYM(v9, "llhttp_set_lenient_header_value_relaxed")
#undef SYM
    settings[CB_URL] = (void *)on_url;
    settings[CB_STATUS] = (void *)on_status;
    settings[CB_METHOD] = (void *)on_method;
    settings[CB_HEADER_FIELD] = (void *)on_header_field;
    settings[CB_HEADER_VALUE] = (void *)on_header_value;
    settings[CB_HEADER_VALUE_COMPLETE] = (void *)on_header_value_complete;
    settings[CB_HEADERS_COMPLETE] = (void *)on_headers_complete;
    settings[CB_BODY] = (void *)on_body;
    settings[CB_MESSAGE_COMPLETE] = (void *)on_message_complete;
    const char *why = self_test();
    if (why != NULL) {
        p_init = NULL;
        PyErr_SetString(PyExc_ImportError, why);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *configure(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t hb, hc, rl;
    if (!PyArg_ParseTuple(args, "nnn", &hb, &hc, &rl))
        return NULL;
    if (hc >= MAX_SPANS || hb <= 0 || hc <= 0 || rl <= 0) {
        PyErr_SetString(PyExc_ValueError, "limits out of this module's range");
        return NULL;
    }
    max_header_bytes = (size_t)hb;
    max_header_count = (size_t)hc;
    max_request_line = (size_t)rl;
    Py_RETURN_NONE;
}

static PyObject *parse_request_checked(PyObject *self, PyObject *arg)
{
    if (p_init == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "init() has not succeeded");
        return NULL;
    }
    return parse_request(self, arg);
}

static PyMethodDef methods[] = {
    {"init", init, METH_O, "init(path of httptools' parser .so): bind llhttp, prove the ABI"},
    {"configure", configure, METH_VARARGS,
     "configure(max_header_bytes, max_header_count, max_request_line)"},
    {"parse_request", parse_request_checked, METH_O,
     "parse_request(data) -> tuple | None: one whole body-less request head"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_h1", "The HTTP/1.1 fast path's heads in C (llhttp).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__h1(void)
{
    if (PyType_Ready(&ResponseType) < 0 || (s_http11 = PyUnicode_InternFromString("1.1")) == NULL ||
        (s_http10 = PyUnicode_InternFromString("1.0")) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Response", (PyObject *)&ResponseType) < 0 ||
        plan_init(m) < 0 || tally_init_module(m) < 0 || cend_init(m) < 0 || cstart_init(m) < 0 ||
        cexchange_init(m, R_FALLBACK, R_HEAD, R_DONE, R_CUT) < 0 ||
        PyModule_AddIntConstant(m, "FALLBACK", R_FALLBACK) < 0 ||
        PyModule_AddIntConstant(m, "HEAD", R_HEAD) < 0 ||
        PyModule_AddIntConstant(m, "DONE", R_DONE) < 0 ||
        PyModule_AddIntConstant(m, "CUT", R_CUT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
