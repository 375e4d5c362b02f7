/* Channel: after the handshake, an HBONE connection's SSL on a buffer BIO of
 * its own instead of the two ssl.MemoryBIOs (core/hbone/tlsio.py).
 *
 * Why: OpenSSL's mem BIO zero-fills every byte it is given before copying it
 * in (BUF_MEM_grow_clean), and the ciphertext is copied once more into and
 * out of it: 2 memsets and 3 memcpys per byte through an HBONE pair, 5 of
 * its ~17 instructions per byte (callgrind, docs/bench/profiles/). Here:
 *
 * - receive: the transport's recv_into writes into the buffer the BIO reads
 *   from (`get_buffer()`/`received(n)`, asyncio.BufferedProtocol);
 * - send: seal() (_native.c, also send.c's path) reserves room in one bytes
 *   object and the BIO writes each record straight into it; drain() hands
 *   that object to the socket write, shrunk to what was written.
 *
 * The handshake still runs on the memory BIOs (Python's ssl owns it);
 * Channel() moves what they still hold and swaps the BIOs (SSL_set_bio).
 * The buffers belong to the BIO (freed by its destroy): the SSL and the
 * Channel object each hold a reference, so whichever goes last frees them.
 *
 * The BIO callbacks also run inside Python's own SSLObject calls (unwrap()
 * for close_notify), which release the GIL around OpenSSL: they never call
 * the Python API, only copy into memory that already exists. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <string.h>

#include "_native.h"

/* OpenSSL constants (openssl/bio.h): stable ABI values since 1.1. */
#define BIO_CTRL_PENDING 10
#define BIO_CTRL_FLUSH 11
#define BIO_CTRL_WPENDING 13
#define BIO_TYPE_SOURCE_SINK 0x0400
#define BIO_FLAGS_READ 0x01
#define BIO_FLAGS_RWS 0x07
#define BIO_FLAGS_SHOULD_RETRY 0x08

/* A TLS 1.3 record adds a 5-byte header, the inner content type and a 16-byte
 * AEAD tag (RFC 8446 §5.2): what seal() reserves per record. */
#define RECORD_OVERHEAD 22
/* The socket read gets this much room (uvloop's own read size): fewer,
 * larger reads. Allocated per read and freed once decrypted (`release`), so
 * an idle connection holds none; the allocator keeps such blocks in its heap
 * (core/hbone/alloc.py), so that costs no page faults. */
#define CHANNEL_READ 262144
/* Growing `out` (records sealed outside seal(): alerts, key updates) starts here. */
#define OUT_START 4096

static void (*p_SSL_set_bio)(SSL *, BIO *, BIO *);
static int (*p_BIO_get_new_index)(void);
static void *(*p_BIO_meth_new)(int, const char *);
static int (*p_BIO_meth_set_write_ex)(void *, int (*)(BIO *, const char *, size_t, size_t *));
static int (*p_BIO_meth_set_read_ex)(void *, int (*)(BIO *, char *, size_t, size_t *));
static int (*p_BIO_meth_set_ctrl)(void *, long (*)(BIO *, int, long, void *));
static int (*p_BIO_meth_set_destroy)(void *, int (*)(BIO *));
static BIO *(*p_BIO_new)(const void *);
static void (*p_BIO_set_data)(BIO *, void *);
static void *(*p_BIO_get_data)(BIO *);
static void (*p_BIO_set_init)(BIO *, int);
static void (*p_BIO_set_flags)(BIO *, int);
static void (*p_BIO_clear_flags)(BIO *, int);
static int (*p_BIO_up_ref)(BIO *);
static int (*p_BIO_free)(BIO *);
static int (*p_BIO_method_type)(const BIO *);

typedef struct {
    char *in;                  /* received ciphertext: [in_start, in_end) unread */
    size_t in_start, in_end, in_cap;
    int eof;                   /* the peer closed: a read past `in` is EOF */
    PyObject *sink;            /* bytes being filled with records, or NULL */
    size_t sink_len;
    size_t last;               /* the size of the last drain: the next sink's */
    char *out;                 /* records written without room in the sink; */
    size_t out_len, out_cap;   /*   they follow the sink's in drain() */
} ChanBuf;

static void *chan_method;
static int chan_type;

static int grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 1;
    size_t size = *cap ? *cap : OUT_START;
    while (size < need)
        size *= 2;
    char *p = realloc(*buf, size);
    if (p == NULL)
        return 0;
    *buf = p;
    *cap = size;
    return 1;
}

static int chan_read(BIO *b, char *dst, size_t n, size_t *got)
{
    ChanBuf *c = p_BIO_get_data(b);
    p_BIO_clear_flags(b, BIO_FLAGS_RWS | BIO_FLAGS_SHOULD_RETRY);
    size_t have = c->in_end - c->in_start;
    *got = 0;
    if (have == 0) {
        if (!c->eof)           /* no EOF yet: "try again", as a memory BIO says */
            p_BIO_set_flags(b, BIO_FLAGS_READ | BIO_FLAGS_SHOULD_RETRY);
        return 0;
    }
    if (n > have)
        n = have;
    memcpy(dst, c->in + c->in_start, n);
    c->in_start += n;
    *got = n;
    return 1;
}

static int chan_write(BIO *b, const char *src, size_t n, size_t *done)
{
    ChanBuf *c = p_BIO_get_data(b);
    p_BIO_clear_flags(b, BIO_FLAGS_RWS | BIO_FLAGS_SHOULD_RETRY);
    /* Into the sink while it has room and nothing newer waits in `out`. */
    if (c->sink != NULL && c->out_len == 0
            && c->sink_len + n <= (size_t)PyBytes_GET_SIZE(c->sink)) {
        memcpy(PyBytes_AS_STRING(c->sink) + c->sink_len, src, n);
        c->sink_len += n;
    } else {
        if (!grow(&c->out, &c->out_cap, c->out_len + n))
            return 0;
        memcpy(c->out + c->out_len, src, n);
        c->out_len += n;
    }
    *done = n;
    return 1;
}

static long chan_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    ChanBuf *c = p_BIO_get_data(b);
    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_PENDING:
        return (long)(c->in_end - c->in_start);
    case BIO_CTRL_WPENDING:
        return (long)(c->sink_len + c->out_len);
    case BIO_CTRL_FLUSH:
        return 1;
    default:
        return 0;
    }
}

static int chan_destroy(BIO *b)
{
    ChanBuf *c = p_BIO_get_data(b);
    if (c != NULL) {
        free(c->in);
        free(c->out);
        Py_XDECREF(c->sink);   /* SSL_free and our dealloc both run under the GIL */
        free(c);
        p_BIO_set_data(b, NULL);
    }
    return 1;
}

/* The Channel buffer behind `ssl`'s write BIO, or NULL for another BIO. */
static ChanBuf *chan_of(SSL *ssl)
{
    BIO *b = p_SSL_get_wbio(ssl);
    if (chan_method == NULL || b == NULL || p_BIO_method_type(b) != chan_type)
        return NULL;
    return p_BIO_get_data(b);
}

int channel_starved(SSL *ssl)
{
    BIO *b = p_SSL_get_rbio(ssl);
    if (chan_method == NULL || b == NULL || p_BIO_method_type(b) != chan_type)
        return 0;
    ChanBuf *c = p_BIO_get_data(b);
    return c != NULL && c->in_end == c->in_start && !c->eof;
}

/* Room in the sink for `more` bytes after what it and `out` hold (`out`
 * moves in first, keeping the order). Under the GIL. 0 with MemoryError. */
static int sink_reserve(ChanBuf *c, size_t more)
{
    size_t need = c->sink_len + c->out_len + more;
    Py_ssize_t size = c->sink ? PyBytes_GET_SIZE(c->sink) : 0;
    if (need > (size_t)size) {
        size_t want = need;
        if (c->sink == NULL && c->last > want)
            want = c->last;
        else if (c->sink != NULL && (size_t)size * 2 > want)
            want = (size_t)size * 2;
        PyObject *bigger = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)want);
        if (bigger == NULL)
            return 0;
        if (c->sink != NULL) {
            memcpy(PyBytes_AS_STRING(bigger), PyBytes_AS_STRING(c->sink), c->sink_len);
            Py_DECREF(c->sink);
        }
        c->sink = bigger;
    }
    memcpy(PyBytes_AS_STRING(c->sink) + c->sink_len, c->out, c->out_len);
    c->sink_len += c->out_len;
    c->out_len = 0;
    return 1;
}

int channel_reserve(SSL *ssl, size_t n)
{
    ChanBuf *c = chan_of(ssl);
    return c == NULL || sink_reserve(c, n + (n / RECORD + 1) * RECORD_OVERHEAD);
}

/* Everything sealed so far, in order, as one bytes object (b"" if none). */
static PyObject *take_output(ChanBuf *c)
{
    if (c->sink == NULL) {
        PyObject *res = PyBytes_FromStringAndSize(c->out, (Py_ssize_t)c->out_len);
        if (res != NULL)
            c->out_len = 0;
        return res;
    }
    if (c->out_len && !sink_reserve(c, 0))
        return NULL;
    PyObject *res = c->sink;
    c->sink = NULL;
    c->last = c->sink_len;
    if ((size_t)PyBytes_GET_SIZE(res) != c->sink_len
            && _PyBytes_Resize(&res, (Py_ssize_t)c->sink_len) < 0) {
        c->sink_len = 0;
        return NULL;
    }
    c->sink_len = 0;
    return res;
}

PyObject *channel_drain(SSL *ssl)
{
    ChanBuf *c = chan_of(ssl);
    if (c == NULL)
        Py_RETURN_NONE;
    return take_output(c);
}

/* -- the Python type ---------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    BIO *bio;          /* one reference of ours; the SSL holds its own */
} Channel;

typedef struct {
    PyObject_HEAD
    BIO *bio;
} MemoryBioHead;       /* CPython 3.11's _ssl.MemoryBIO head (see _native.c) */

static ChanBuf *channel_buf(Channel *self)
{
    return p_BIO_get_data(self->bio);
}

static int make_chan_method(void)
{
    if (chan_method != NULL)
        return 1;
    chan_type = p_BIO_get_new_index() | BIO_TYPE_SOURCE_SINK;
    void *m = p_BIO_meth_new(chan_type, "shoal channel");
    if (m == NULL || !p_BIO_meth_set_write_ex(m, chan_write)
            || !p_BIO_meth_set_read_ex(m, chan_read) || !p_BIO_meth_set_ctrl(m, chan_ctrl)
            || !p_BIO_meth_set_destroy(m, chan_destroy)) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused a BIO method");
        return 0;
    }
    chan_method = m;
    return 1;
}

/* Append everything `from` holds to *buf. */
static int move_pending(BIO *from, char **buf, size_t *len, size_t *cap)
{
    long pending = p_BIO_ctrl(from, BIO_CTRL_PENDING, 0, NULL);
    if (pending <= 0)
        return 1;
    if (!grow(buf, cap, *len + (size_t)pending))
        return 0;
    int got = p_BIO_read(from, *buf + *len, (int)pending);
    if (got > 0)
        *len += (size_t)got;
    return 1;
}

static PyObject *channel_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *obj, *inbio, *outbio;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "Channel() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOO:Channel", &obj, &inbio, &outbio))
        return NULL;
    SSL *ssl = ssl_of(obj);
    if (ssl == NULL)
        return NULL;
    if (Py_TYPE(inbio) != Py_TYPE(outbio) || strcmp(Py_TYPE(inbio)->tp_name, "_ssl.MemoryBIO")
            || p_SSL_get_rbio(ssl) != ((MemoryBioHead *)inbio)->bio
            || p_SSL_get_wbio(ssl) != ((MemoryBioHead *)outbio)->bio) {
        PyErr_SetString(PyExc_TypeError, "Channel() needs the SSL's own two memory BIOs");
        return NULL;
    }
    if (!make_chan_method())
        return NULL;
    ChanBuf *c = calloc(1, sizeof(ChanBuf));
    BIO *bio = c != NULL ? p_BIO_new(chan_method) : NULL;
    if (bio == NULL) {
        free(c);
        return PyErr_NoMemory();
    }
    p_BIO_set_data(bio, c);
    p_BIO_set_init(bio, 1);
    Channel *self = (Channel *)type->tp_alloc(type, 0);
    if (self == NULL
            || !move_pending(((MemoryBioHead *)inbio)->bio, &c->in, &c->in_end, &c->in_cap)
            || !move_pending(((MemoryBioHead *)outbio)->bio, &c->out, &c->out_len, &c->out_cap)) {
        p_BIO_free(bio);
        Py_XDECREF(self);
        return self == NULL ? NULL : PyErr_NoMemory();
    }
    self->bio = bio;
    p_BIO_up_ref(bio);                   /* SSL_set_bio takes one (it adds one for wbio) */
    p_SSL_set_bio(ssl, bio, bio);        /* drops the SSL's references to the memory BIOs */
    return (PyObject *)self;
}

static void channel_dealloc(Channel *self)
{
    if (self->bio != NULL)
        p_BIO_free(self->bio);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* get_buffer() -> memoryview: where the next socket read should put its
 * bytes (CHANNEL_READ of room after anything still unread). Valid until the
 * next call on this Channel: `received(n)` must follow before any other. */
static PyObject *channel_get_buffer(Channel *self, PyObject *unused)
{
    ChanBuf *c = channel_buf(self);
    (void)unused;
    if (c->in_start == c->in_end) {
        c->in_start = c->in_end = 0;
    } else if (c->in_start) {            /* a partial record: to the front */
        memmove(c->in, c->in + c->in_start, c->in_end - c->in_start);
        c->in_end -= c->in_start;
        c->in_start = 0;
    }
    if (!grow(&c->in, &c->in_cap, c->in_end + CHANNEL_READ))
        return PyErr_NoMemory();
    return PyMemoryView_FromMemory(c->in + c->in_end, (Py_ssize_t)(c->in_cap - c->in_end),
                                   PyBUF_WRITE);
}

static PyObject *channel_received(Channel *self, PyObject *arg)
{
    ChanBuf *c = channel_buf(self);
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0 && PyErr_Occurred())
        return NULL;
    if (n < 0 || (size_t)n > c->in_cap - c->in_end) {
        PyErr_SetString(PyExc_ValueError, "received(n): n outside the buffer get_buffer() gave");
        return NULL;
    }
    c->in_end += (size_t)n;
    Py_RETURN_NONE;
}

/* feed(data): received ciphertext that arrived in an object of its own. */
static PyObject *channel_feed(Channel *self, PyObject *arg)
{
    ChanBuf *c = channel_buf(self);
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (c->in_start == c->in_end)
        c->in_start = c->in_end = 0;
    int ok = grow(&c->in, &c->in_cap, c->in_end + (size_t)view.len);
    if (ok) {
        memcpy(c->in + c->in_end, view.buf, (size_t)view.len);
        c->in_end += (size_t)view.len;
    }
    PyBuffer_Release(&view);
    if (!ok)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* release(): free the read buffer once everything in it was decrypted. */
static PyObject *channel_release(Channel *self, PyObject *unused)
{
    ChanBuf *c = channel_buf(self);
    (void)unused;
    if (c->in_start == c->in_end) {
        free(c->in);
        c->in = NULL;
        c->in_cap = c->in_start = c->in_end = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *channel_write_eof(Channel *self, PyObject *unused)
{
    (void)unused;
    channel_buf(self)->eof = 1;
    Py_RETURN_NONE;
}

static PyObject *channel_output(Channel *self, PyObject *unused)
{
    (void)unused;
    return take_output(channel_buf(self));
}

static PyObject *channel_pending(Channel *self, void *closure)
{
    ChanBuf *c = channel_buf(self);
    (void)closure;
    return PyLong_FromSize_t(c->in_end - c->in_start);
}

static PyMethodDef channel_methods[] = {
    {"get_buffer", (PyCFunction)channel_get_buffer, METH_NOARGS,
     "get_buffer() -> memoryview: room for the next socket read (valid until the next call)"},
    {"received", (PyCFunction)channel_received, METH_O,
     "received(n): n bytes were read into the last get_buffer()"},
    {"feed", (PyCFunction)channel_feed, METH_O, "feed(data): append received ciphertext"},
    {"release", (PyCFunction)channel_release, METH_NOARGS,
     "release(): free the read buffer if nothing in it is unread"},
    {"write_eof", (PyCFunction)channel_write_eof, METH_NOARGS,
     "write_eof(): the peer closed; reads past the buffered bytes see EOF"},
    {"output", (PyCFunction)channel_output, METH_NOARGS,
     "output() -> bytes: records sealed and not yet taken (alerts, key updates), in order"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef channel_getset[] = {
    {"pending", (getter)channel_pending, NULL, "received bytes not yet decrypted", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ChannelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shoal.core.hbone.native._native.Channel",
    .tp_basicsize = sizeof(Channel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Channel(sslsock, inbio, outbio): the connection's SSL on a buffer BIO of its own",
    .tp_new = channel_new,
    .tp_dealloc = (destructor)channel_dealloc,
    .tp_methods = channel_methods,
    .tp_getset = channel_getset,
};

int channel_exact(PyObject *o)
{
    return Py_IS_TYPE(o, &ChannelType);
}

PyObject *channel_get_buffer_of(PyObject *chan)
{
    return channel_get_buffer((Channel *)chan, NULL);
}

PyObject *channel_received_of(PyObject *chan, PyObject *nbytes)
{
    return channel_received((Channel *)chan, nbytes);
}

PyObject *channel_release_of(PyObject *chan)
{
    return channel_release((Channel *)chan, NULL);
}

/* body(n) -> bytearray: uninitialised. bytearray(n) zero-fills, a pass over
 * every received byte just before read_into() overwrites it; h2fast only
 * hands the body on once all n bytes were written. */
static PyObject *native_body(PyObject *mod, PyObject *arg)
{
    (void)mod;
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "body(n): n < 0");
        return NULL;
    }
    return PyByteArray_FromStringAndSize(NULL, n);
}

static PyMethodDef functions[] = {
    {"body", native_body, METH_O,
     "body(n) -> bytearray: n bytes, not zero-filled, for a DATA body to be written whole"},
    {NULL, NULL, 0, NULL},
};

int channel_resolve(void *h)
{
#define SYM(name) \
    if ((*(void **)&p_##name = dlsym(h, #name)) == NULL) { \
        PyErr_SetString(PyExc_ImportError, "OpenSSL symbol missing: " #name); \
        return 0; \
    }
    SYM(SSL_set_bio) SYM(BIO_get_new_index) SYM(BIO_meth_new) SYM(BIO_meth_set_write_ex)
    SYM(BIO_meth_set_read_ex) SYM(BIO_meth_set_ctrl) SYM(BIO_meth_set_destroy) SYM(BIO_new)
    SYM(BIO_set_data) SYM(BIO_get_data) SYM(BIO_set_init) SYM(BIO_set_flags)
    SYM(BIO_clear_flags) SYM(BIO_up_ref) SYM(BIO_free) SYM(BIO_method_type)
#undef SYM
    return 1;
}

int channel_init(PyObject *module)
{
    if (PyType_Ready(&ChannelType) < 0 || PyModule_AddFunctions(module, functions) < 0)
        return -1;
    Py_INCREF(&ChannelType);
    if (PyModule_AddObject(module, "Channel", (PyObject *)&ChannelType) < 0) {
        Py_DECREF(&ChannelType);
        return -1;
    }
    return 0;
}
