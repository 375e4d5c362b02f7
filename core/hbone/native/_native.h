/* What _native.c (the TLS record calls) shares with relay.c (the relay's
 * receive half): the OpenSSL entry points it resolved, the SSL* check and
 * the status values both report. Hidden: nothing here leaves the .so. */
#ifndef SHOAL_HBONE_NATIVE_H
#define SHOAL_HBONE_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#pragma GCC visibility push(hidden)

typedef struct ssl_st SSL;
typedef struct bio_st BIO;

/* OpenSSL constants (openssl/ssl.h): stable ABI values since 1.1. */
#define SSL_ERROR_SSL 1
#define SSL_ERROR_WANT_READ 2
#define SSL_ERROR_SYSCALL 5
#define SSL_ERROR_ZERO_RETURN 6

/* read_into's and Relay.feed's status values (exported as NEED_INPUT, FULL,
 * CLOSED, FAILED). */
#define ST_NEED_INPUT 0    /* OpenSSL wants more ciphertext */
#define ST_FULL 1          /* the buffer is full / handed over; more may be waiting */
#define ST_CLOSED 2        /* close_notify received */
#define ST_FAILED 3        /* TLS failure: the error is returned with the count */

/* One TLS record carries at most 16 KiB of plaintext (RFC 8446 §5.1). Small
 * chunks are gathered to this size so a frame header and its payload share a
 * record (a record per 9-byte header costs a seal and 22 bytes of overhead). */
#define RECORD 16384

extern PyObject *ssl_error;     /* ssl.SSLError */
extern int (*p_SSL_read_ex)(SSL *, void *, size_t, size_t *);
extern int (*p_SSL_get_error)(const SSL *, int);
extern void (*p_ERR_clear_error)(void);

/* OpenSSL's error queue emptied before a record call (cheap when empty). */
void clear_errors(void);
/* The SSL* of an attached _ssl._SSLSocket, or NULL with TypeError. */
SSL *ssl_of(PyObject *obj);
/* The ssl.SSLError for a failed call (a new reference), or NULL. */
PyObject *ssl_exception(SSL *ssl, int ret);

/* Encrypt p[:n] as one or more records (1, or 0 with the SSLError raised). */
int seal(SSL *ssl, const char *p, size_t n);
/* Encrypt a piece of a chunk stream, gathering small pieces (see _native.c). */
int gather(SSL *ssl, char *stage, size_t *staged, const char *p, size_t n);
/* Every record queued in the write BIO, as bytes. */
PyObject *drain(SSL *ssl);
extern BIO *(*p_SSL_get_rbio)(const SSL *);
extern BIO *(*p_SSL_get_wbio)(const SSL *);
extern long (*p_BIO_ctrl)(BIO *, int, long, void *);
extern int (*p_BIO_read)(BIO *, void *, int);

/* channel.c: the SSL's own buffer BIO after the handshake (Channel).
 * channel_reserve: before sealing n bytes, room for their records (1, or 0
 * with MemoryError); a no-op without a Channel. channel_drain: the records
 * queued (new reference, NULL on error), or Py_None (a new reference) if
 * `ssl` has no Channel. */
int channel_reserve(SSL *ssl, size_t n);
/* 1 if `ssl` reads from a Channel that holds no input and has not seen EOF
 * (an SSL_read could then only say WANT_READ, unless OpenSSL itself still
 * buffers something: SSL_has_pending), else 0 (any other BIO too). */
int channel_starved(SSL *ssl);
extern int (*p_SSL_has_pending)(const SSL *);
PyObject *channel_drain(SSL *ssl);
int channel_resolve(void *libssl);   /* its OpenSSL symbols: 1, or 0 with ImportError */
int channel_init(PyObject *module);  /* adds Channel and body(); -1 with an exception */

/* attrs.c: o.name as a C value, and back. */
int get_ll(PyObject *o, PyObject *name, long long *out);
int set_ll(PyObject *o, PyObject *name, long long value);
int add_ll(PyObject *o, PyObject *name, long long n);
int attr_true(PyObject *o, PyObject *name);     /* 1 truthy, 0 not */
int attr_none(PyObject *o, PyObject *name);     /* 1 None, 0 not */
int attr_empty(PyObject *o, PyObject *name);    /* 1 len() == 0, 0 not */
int state_in(PyObject *o, PyObject *states);    /* o.state_machine.state in the tuple */
int attrs_init(void);

/* flow.c: h2's windows and the FloodGuard's counters as C fields (the
 * bases of h2fast's and h2limits' classes). The *_fields functions give the
 * struct of an object of that kind, or NULL if its counters are Python's. */
typedef struct {
    PyObject_HEAD
    long long max_window;     /* WindowManager.max_window_size */
    long long current;        /* .current_window_size */
    long long processed;      /* ._bytes_processed */
} WindowFields;
typedef struct {
    PyObject_HEAD
    long long outbound;       /* outbound_flow_control_window */
    PyObject *inbound;        /* the inbound WindowManager */
    PyObject *state_machine;  /* h2's state machine (its state in a StateFields) */
    /* A stream's only: */
    PyObject *expected_length;     /* _expected_content_length (int or None) */
    /* A connection's only: */
    PyObject *chunks;              /* H2ConnectionFast._chunks (list) */
    PyObject *data_to_send;        /* h2's _data_to_send (bytearray) */
    long long max_inbound_frame;   /* max_inbound_frame_size */
    long long max_outbound_frame;  /* max_outbound_frame_size */
} FlowFields;
typedef struct {
    PyObject_HEAD
    PyObject *state;          /* h2's state machine's state (an enum member) */
} StateFields;
typedef struct {
    PyObject_HEAD
    long long data_frames_sent, empty_in_a_row, outbound_control;
} GuardFields;
/* shoal's per-frame fields (flow.c): the HBONE core's connection flags
 * (protocol._HboneCore), its per-stream record (protocol._Stream) and the
 * tunnel (stream.HboneStream). The chars are Python bools (T_BOOL). */
typedef struct {
    PyObject_HEAD
    char dead, draining, goaway_received;
} CoreFields;
typedef struct {
    PyObject_HEAD
    PyObject *state;          /* PENDING, OPEN or CLOSED */
    char local_ended, remote_ended;
} CoreStreamFields;
typedef struct {
    PyObject_HEAD
    long long bytes_sent, bytes_received;
    PyObject *chunks;         /* _chunks: the deque read() takes from */
    PyObject *sink;           /* _sink: core.pipe's, or NULL/None */
    PyObject *error;          /* _error: NULL/None or the HboneError */
    char writing;             /* _writing */
} TunnelFields;
/* core.pipe.TcpEnd's fields that the relay reads and counts per DATA frame
 * it writes to the plain socket (TcpEnd.write_nowait's conditions). */
typedef struct {
    PyObject_HEAD
    PyObject *transport;      /* transport: NULL/None until connection_made */
    PyObject *drain_waiter;   /* _drain_waiter: NULL/None, or the Future write() waits on */
    long long bytes_written;  /* bytes_written */
    char can_write;           /* _can_write */
} PlainEndFields;
/* tlsio._TlsProtocol's fields that TlsPump reads on every TLS read
 * (tlspump.c). The references are T_OBJECT: unset reads as None. */
typedef struct {
    PyObject_HEAD
    PyObject *chan;           /* _chan: the _native.Channel, after the handshake */
    PyObject *linger;         /* _linger: the TimerHandle while lingering */
    PyObject *relay;          /* _relay: the app's C receive path (a Relay) */
    PyObject *app_transport;  /* _app_transport: the TlsTransport, after the handshake */
    char closing;             /* closing */
} TlsFields;
TlsFields *tls_fields(PyObject *o);
/* h2's frame buffer's fields that the relay checks before every feed
 * (h2fast._FrameBuffer): T_OBJECT_EX but _body (T_OBJECT: unset reads as None). */
typedef struct {
    PyObject_HEAD
    PyObject *data;           /* _data: the bytearray of unparsed bytes */
    PyObject *body;           /* _body: the DATA body being filled, or None */
    PyObject *headers_buffer; /* _headers_buffer: a header block's frames so far */
    long long preamble_len;   /* _preamble_len: the client preface still expected */
} FrameBufferFields;
/* 1 if the frame buffer `o` holds nothing (no bytes, no body, no header
 * block, no preface to come), 0 if it does, -1 with an exception; -2 (no
 * exception) if its fields are not C's. */
int frame_buffer_idle(PyObject *o);
CoreFields *core_fields(PyObject *o);
PlainEndFields *plain_end_fields(PyObject *o);
CoreStreamFields *core_stream_fields(PyObject *o);
TunnelFields *tunnel_fields(PyObject *o);
WindowFields *window_fields(PyObject *o);   /* all of these: NULL-safe */
FlowFields *stream_fields(PyObject *o);
FlowFields *connection_fields(PyObject *o);
GuardFields *guard_fields(PyObject *o);
/* o.state_machine.state (borrowed; may be NULL if deleted) of an h2 stream or
 * connection whose state lives in C; NULL (no exception) if it does not. */
PyObject *flow_state(PyObject *o);
/* 1 if h2's queued output (its _chunks and _data_to_send) is empty, 0 if
 * not, -1 error. */
int output_empty(FlowFields *h2);
int flow_init(PyObject *module);

/* channel.c and relay.c: their methods for TlsPump, called on an object of
 * exactly their type (channel_exact, relay_exact) without a lookup by name. */
int channel_exact(PyObject *o);
PyObject *channel_get_buffer_of(PyObject *chan);
PyObject *channel_received_of(PyObject *chan, PyObject *nbytes);
PyObject *channel_release_of(PyObject *chan);
int relay_exact(PyObject *o);
PyObject *relay_feed_of(PyObject *relay);

/* relay.c: adds the Relay type to the module; -1 with an exception. */
int relay_init(PyObject *module);

/* send.c: adds the Sender type to the module; -1 with an exception. */
int send_init(PyObject *module);
/* If `sender` is a Sender whose C path may send the n bytes at
 * room + SENDER_ROOM now, frame them as one DATA frame with its header
 * written into room[0:SENDER_ROOM], seal header and payload where they lie
 * and send: 1. 0 if not (nothing changed: give the bytes to the Sender, whose
 * Python path takes them), -1 with an exception. */
#define SENDER_ROOM 9     /* an HTTP/2 frame header */
int sender_push_room(PyObject *sender, char *room, Py_ssize_t n);
/* What `sender` may send now as one DATA frame: the least of its stream's
 * and its connection's send window, the peer's SETTINGS_MAX_FRAME_SIZE and
 * its send_max, if it is a Sender whose stream's windows are C's and that
 * is more than 0; else -1 (unknown, or no window left: a read then is not
 * sized by it). No exception. A TcpPump sizes its reads by it (plain.c), so
 * a read always fits what sender_push_room may send. */
Py_ssize_t sender_window(PyObject *sender);

/* plain.c: adds the TcpPump type to the module; -1 with an exception. */
int plain_init(PyObject *module);

/* tlspump.c: adds the TlsPump type to the module; -1 with an exception. */
int tlspump_init(PyObject *module);

#pragma GCC visibility pop

#endif
