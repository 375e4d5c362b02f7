/* shoal.core.hbone.native._native: the TLS record calls of HBONE's data path in C.
 *
 * HBONE's TLS runs on Python's ssl.SSLObject with memory BIOs
 * (core/hbone/tlsio.py). Each record call through `ssl` costs a Python
 * method call, an argument parse and, at the end of every read batch, an
 * SSLWantReadError exception (object, formatted message). This module calls
 * OpenSSL on the very SSL* that the SSLObject owns, so the handshake,
 * certificates, ALPN and close_notify stay Python's, and only the bulk
 * calls come here:
 *
 *   attach(sslsock, inbio, outbio) -> bool   layout check, once per connection
 *   write(sslsock, chunks) -> bytes          encrypt chunks, return the records
 *   read_into(sslsock, buffer, offset) -> (n, status, error)
 *                                            decrypt until buffer full / no input
 *   Channel(sslsock, inbio, outbio)          after the handshake, the SSL on a
 *                                            buffer BIO of its own (channel.c)
 *   body(n) -> bytearray                     not zero-filled (channel.c)
 *
 * The SSL* is reached through CPython 3.11's `_ssl._SSLSocket` struct
 * (Modules/_ssl.c: PyObject_HEAD, PyObject *Socket, SSL *ssl, ...). attach()
 * proves that layout before anything trusts it: the type's name and size,
 * SSL_get_app_data(ssl) == the object (newPySSLSocket sets it), and the
 * SSL's read/write BIOs == the two ssl.MemoryBIO objects' BIO*. OpenSSL's
 * functions are looked up with dlsym in the libssl/libcrypto that _ssl itself
 * was linked with, so the SSL* is never handed to a different OpenSSL copy.
 * If any check fails the caller keeps the pure-Python path (tlsio.py).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <string.h>

#include "_native.h"

#if PY_VERSION_HEX < 0x030B0000 || PY_VERSION_HEX >= 0x030C0000
#error "the _ssl struct layout below is CPython 3.11's; other versions use the Python path"
#endif


/* OpenSSL constants (openssl/ssl.h, bio.h): stable ABI values since 1.1. */
#define BIO_CTRL_PENDING 10
#define ERR_REASON_MASK 0x7FFFFF
#define SSL_R_UNEXPECTED_EOF_WHILE_READING 294



/* What CPython 3.11's Modules/_ssl.c declares; only the head is read. */
typedef struct {
    PyObject_HEAD
    PyObject *Socket;
    SSL *ssl;
} SslSocketHead;

typedef struct {
    PyObject_HEAD
    BIO *bio;
} MemoryBioHead;

static int (*p_SSL_write_ex)(SSL *, const void *, size_t, size_t *);
int (*p_SSL_read_ex)(SSL *, void *, size_t, size_t *);
int (*p_SSL_get_error)(const SSL *, int);
int (*p_SSL_has_pending)(const SSL *);
static void *(*p_SSL_get_ex_data)(const SSL *, int);
BIO *(*p_SSL_get_rbio)(const SSL *);
BIO *(*p_SSL_get_wbio)(const SSL *);
long (*p_BIO_ctrl)(BIO *, int, long, void *);
int (*p_BIO_read)(BIO *, void *, int);
static unsigned long (*p_ERR_get_error)(void);
static unsigned long (*p_ERR_peek_error)(void);
void (*p_ERR_clear_error)(void);
static const char *(*p_ERR_reason_error_string)(unsigned long);

static PyTypeObject *sslsocket_type;     /* set by the first attach() that passes */
PyObject *ssl_error;
static PyObject *ssl_eof_error;

/* The SSL* of `obj`, or NULL with TypeError if `obj` is not an attached
 * _ssl._SSLSocket whose SSL still points back at it. */
SSL *ssl_of(PyObject *obj)
{
    if (sslsocket_type == NULL || Py_TYPE(obj) != sslsocket_type) {
        PyErr_SetString(PyExc_TypeError, "not an attached _ssl._SSLSocket");
        return NULL;
    }
    SSL *ssl = ((SslSocketHead *)obj)->ssl;
    if (ssl == NULL || p_SSL_get_ex_data(ssl, 0) != (void *)obj) {
        PyErr_SetString(PyExc_TypeError, "_ssl._SSLSocket without its SSL");
        return NULL;
    }
    return ssl;
}

/* Before a record call, as _ssl does: SSL_get_error reads the queue, so an
 * error left from elsewhere must not be taken for this call's. Only when
 * there is one: OpenSSL 3's ERR_clear_error resets all 16 slots of the
 * thread's queue every time (about 800 instructions, a round trip makes
 * four such calls), ERR_peek_error only looks at its ends. */
void clear_errors(void)
{
    if (p_ERR_peek_error() != 0)
        p_ERR_clear_error();
}

/* The ssl.SSLError (SSLEOFError for a truncated stream, as _ssl maps it)
 * for a failed call, with OpenSSL's reason; clears OpenSSL's error queue. */
PyObject *ssl_exception(SSL *ssl, int ret)
{
    int e = p_SSL_get_error(ssl, ret);
    unsigned long code = p_ERR_get_error();
    p_ERR_clear_error();
    int eof = (e == SSL_ERROR_SYSCALL && code == 0)
              || (code & ERR_REASON_MASK) == SSL_R_UNEXPECTED_EOF_WHILE_READING;
    const char *reason = code ? p_ERR_reason_error_string(code) : NULL;
    if (reason == NULL)
        reason = eof ? "EOF occurred in violation of protocol" : "TLS failure";
    return PyObject_CallFunction(eof ? ssl_eof_error : ssl_error, "(is)", eof ? 8 : e, reason);
}

static PyObject *raise_ssl(SSL *ssl, int ret)
{
    PyObject *exc = ssl_exception(ssl, ret);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

int seal(SSL *ssl, const char *p, size_t n)
{
    size_t done = 0;
    if (n == 0)
        return 1;
    if (!channel_reserve(ssl, n))        /* a Channel: room for the records */
        return 0;
    int r = p_SSL_write_ex(ssl, p, n, &done);
    if (r <= 0 || done != n) {
        raise_ssl(ssl, r);
        return 0;
    }
    return 1;
}

/* Encrypt n bytes at p as part of a stream of chunks: small pieces are
 * gathered in stage (RECORD bytes, *staged used) into full records, whole
 * records go straight from p. The caller seals what is left staged. */
int gather(SSL *ssl, char *stage, size_t *staged, const char *p, size_t n)
{
    int ok = 1;
    if (*staged) {
        size_t take = n < RECORD - *staged ? n : RECORD - *staged;
        memcpy(stage + *staged, p, take);
        *staged += take;
        p += take;
        n -= take;
        if (*staged == RECORD) {
            ok = seal(ssl, stage, *staged);
            *staged = 0;
        }
    }
    if (ok && n >= RECORD) {
        size_t bulk = n - n % RECORD;     /* whole records straight from the chunk */
        ok = seal(ssl, p, bulk);
        p += bulk;
        n -= bulk;
    }
    if (ok && n) {
        memcpy(stage + *staged, p, n);
        *staged += n;
    }
    return ok;
}

/* Everything queued in the write BIO, as one bytes object. */
PyObject *drain(SSL *ssl)
{
    PyObject *chan = channel_drain(ssl);
    if (chan != Py_None)
        return chan;                     /* the Channel's records, or NULL */
    Py_DECREF(chan);
    BIO *out = p_SSL_get_wbio(ssl);
    long pending = p_BIO_ctrl(out, BIO_CTRL_PENDING, 0, NULL);
    if (pending <= 0)
        return PyBytes_FromStringAndSize(NULL, 0);
    PyObject *res = PyBytes_FromStringAndSize(NULL, pending);
    if (res == NULL)
        return NULL;
    char *dst = PyBytes_AS_STRING(res);
    long got = 0;
    while (got < pending) {
        int chunk = pending - got > 0x40000000 ? 0x40000000 : (int)(pending - got);
        int r = p_BIO_read(out, dst + got, chunk);
        if (r <= 0)
            break;
        got += r;
    }
    if (got != pending && _PyBytes_Resize(&res, got) < 0)
        return NULL;
    return res;
}

static PyObject *native_attach(PyObject *mod, PyObject *args)
{
    PyObject *obj, *inbio, *outbio;
    if (!PyArg_ParseTuple(args, "OOO:attach", &obj, &inbio, &outbio))
        return NULL;
    PyTypeObject *t = Py_TYPE(obj);
    if (sslsocket_type == NULL) {
        /* First use: the type must be _ssl's and at least our head's size. */
        if (strcmp(t->tp_name, "_ssl._SSLSocket") != 0
                || t->tp_basicsize < (Py_ssize_t)sizeof(SslSocketHead)
                || strcmp(Py_TYPE(inbio)->tp_name, "_ssl.MemoryBIO") != 0
                || Py_TYPE(outbio) != Py_TYPE(inbio))
            Py_RETURN_FALSE;
    } else if (t != sslsocket_type) {
        Py_RETURN_FALSE;
    }
    SSL *ssl = ((SslSocketHead *)obj)->ssl;
    if (ssl == NULL || p_SSL_get_ex_data(ssl, 0) != (void *)obj
            || p_SSL_get_rbio(ssl) != ((MemoryBioHead *)inbio)->bio
            || p_SSL_get_wbio(ssl) != ((MemoryBioHead *)outbio)->bio)
        Py_RETURN_FALSE;
    if (sslsocket_type == NULL) {
        Py_INCREF(t);
        sslsocket_type = t;
    }
    Py_RETURN_TRUE;
}

/* write(sslsock, chunks) -> bytes: encrypt the chunks in order, gathering
 * small ones into full records, and return all records queued so far. */
static PyObject *native_write(PyObject *mod, PyObject *args)
{
    PyObject *obj, *chunks;
    if (!PyArg_ParseTuple(args, "OO:write", &obj, &chunks))
        return NULL;
    SSL *ssl = ssl_of(obj);
    if (ssl == NULL)
        return NULL;
    PyObject *seq = PySequence_Fast(chunks, "chunks must be a sequence");
    if (seq == NULL)
        return NULL;
    char stage[RECORD];
    size_t staged = 0;
    int ok = 1;
    clear_errors();
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; ok && i < count; i++) {
        Py_buffer view;
        if (PyObject_GetBuffer(items[i], &view, PyBUF_SIMPLE) < 0) {
            ok = 0;
            break;
        }
        ok = gather(ssl, stage, &staged, view.buf, (size_t)view.len);
        PyBuffer_Release(&view);
    }
    Py_DECREF(seq);
    if (ok && staged)
        ok = seal(ssl, stage, staged);
    if (!ok)
        return NULL;
    return drain(ssl);
}

/* read_into(sslsock, buffer, offset) -> (n, status, error): decrypt into
 * buffer[offset:] until it is full (ST_FULL), OpenSSL needs more input
 * (ST_NEED_INPUT) or the peer sent close_notify (ST_CLOSED). A TLS failure
 * is returned (ST_FAILED, the ssl.SSLError), not raised, with the count of
 * the bytes decrypted before it: the caller delivers those first. */
static PyObject *native_read_into(PyObject *mod, PyObject *args)
{
    PyObject *obj;
    Py_buffer view;
    Py_ssize_t offset;
    if (!PyArg_ParseTuple(args, "Ow*n:read_into", &obj, &view, &offset))
        return NULL;
    SSL *ssl = ssl_of(obj);
    if (ssl == NULL || offset < 0 || offset > view.len) {
        if (ssl != NULL)
            PyErr_SetString(PyExc_ValueError, "offset outside the buffer");
        PyBuffer_Release(&view);
        return NULL;
    }
    char *base = view.buf;
    size_t room = (size_t)(view.len - offset), filled = 0;
    int status = ST_FULL;
    clear_errors();
    while (filled < room) {
        size_t got = 0;
        int r = p_SSL_read_ex(ssl, base + offset + filled, room - filled, &got);
        if (r > 0) {
            filled += got;
            continue;
        }
        int e = p_SSL_get_error(ssl, r);
        if (e == SSL_ERROR_WANT_READ) {
            status = ST_NEED_INPUT;
            break;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            status = ST_CLOSED;
            break;
        }
        PyBuffer_Release(&view);
        PyObject *exc = ssl_exception(ssl, r);
        if (exc == NULL)
            return NULL;
        return Py_BuildValue("(niN)", (Py_ssize_t)filled, ST_FAILED, exc);
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(niO)", (Py_ssize_t)filled, status, Py_None);
}

static int resolve(void)
{
    PyObject *m = PyImport_ImportModule("_ssl");
    if (m == NULL)
        return 0;
    PyObject *file = PyObject_GetAttrString(m, "__file__");
    Py_DECREF(m);
    if (file == NULL)
        return 0;
    const char *path = PyUnicode_AsUTF8(file);
    void *h = path ? dlopen(path, RTLD_NOW | RTLD_NOLOAD) : NULL;
    Py_DECREF(file);
    if (h == NULL) {
        PyErr_SetString(PyExc_ImportError, "_ssl is not a loaded shared object");
        return 0;
    }
#define SYM(name) \
    if ((*(void **)&p_##name = dlsym(h, #name)) == NULL) { \
        PyErr_SetString(PyExc_ImportError, "OpenSSL symbol missing: " #name); \
        return 0; \
    }
    SYM(SSL_write_ex) SYM(SSL_read_ex) SYM(SSL_get_error) SYM(SSL_has_pending) SYM(SSL_get_ex_data)
    SYM(SSL_get_rbio) SYM(SSL_get_wbio) SYM(BIO_ctrl) SYM(BIO_read)
    SYM(ERR_get_error) SYM(ERR_peek_error) SYM(ERR_clear_error) SYM(ERR_reason_error_string)
#undef SYM
    return channel_resolve(h);
}

static PyMethodDef methods[] = {
    {"attach", native_attach, METH_VARARGS,
     "attach(sslsock, inbio, outbio) -> bool: may this connection use the native calls"},
    {"write", native_write, METH_VARARGS,
     "write(sslsock, chunks) -> bytes: encrypt chunks, return the pending TLS records"},
    {"read_into", native_read_into, METH_VARARGS,
     "read_into(sslsock, buffer, offset) -> (n, status, error): decrypt into buffer[offset:]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_native", "HBONE's TLS record calls in C", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    if (!resolve())
        return NULL;
    PyObject *ssl = PyImport_ImportModule("ssl");
    if (ssl == NULL)
        return NULL;
    ssl_error = PyObject_GetAttrString(ssl, "SSLError");
    ssl_eof_error = PyObject_GetAttrString(ssl, "SSLEOFError");
    Py_DECREF(ssl);
    if (ssl_error == NULL || ssl_eof_error == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "NEED_INPUT", ST_NEED_INPUT) < 0
            || PyModule_AddIntConstant(m, "FULL", ST_FULL) < 0
            || PyModule_AddIntConstant(m, "CLOSED", ST_CLOSED) < 0
            || PyModule_AddIntConstant(m, "FAILED", ST_FAILED) < 0
            || PyModule_AddIntConstant(m, "RECORD", RECORD) < 0
            || flow_init(m) < 0 || relay_init(m) < 0 || send_init(m) < 0 || plain_init(m) < 0 || tlspump_init(m) < 0
            || channel_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
