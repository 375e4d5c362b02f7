/*
 * shoal-cni: the CNI plugin binary the container runtime runs, chained last.
 *
 * A thin forwarder, as Istio's istio-cni plugin is: the runtime's request
 * (CNI_* environment and the stdin config, prevResult included) goes to the
 * node agent over its unix socket, and the agent's answer (result or error
 * object, exit status) comes back verbatim. Every decision about a pod is
 * the agent's (cni/agent.py, cni/plugin.py). The plugin decides alone in
 * exactly two cases, both needed for safety when the agent cannot answer:
 *
 *  1. Excluded namespaces (kube-system always, plus the config's
 *     `exclude_namespaces`, where the installer puts shoal's own namespace)
 *     are passed through without contacting the agent: a broken mesh never
 *     stops the cluster's own pods.
 *  2. Agent unreachable (socket missing, refused, timed out, garbage): the
 *     plugin reads the agent's enrollment snapshot (`<run dir>/enrollment`,
 *     written by the agent whenever its view changes). A pod that is not
 *     enrolled passes through untouched (and is journalled under
 *     `<run dir>/pending/` so the agent learns about it when it is back);
 *     an enrolled pod, or any pod when no snapshot exists, fails with CNI
 *     error 11 so the runtime retries: never a silent pass uncaptured.
 *
 * DEL always exits 0 (SPEC.md: DEL is best effort and must succeed).
 *
 * Wire protocol (docs/cni.md, cni/protocol.py), one exchange per connection:
 *   request:  "SHOAL/1 " <JSON object of the CNI_* variables> "\n" <stdin bytes>
 *             then the plugin shuts its write side (EOF ends the request)
 *   reply:    "SHOAL/1 " <exit status> "\n" <bytes to print on stdout>
 *             then the agent closes
 *
 * Built static by setup.py (no libc needed on the node); the supported CNI
 * versions come from cni/spec.py as -D definitions so there is one list.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef SHOAL_CNI_SUPPORTED_VERSIONS
#error "build with -DSHOAL_CNI_SUPPORTED_VERSIONS='\"0.3.0\",...' (setup.py derives it from cni/spec.py)"
#endif
#ifndef SHOAL_CNI_LATEST_VERSION
#error "build with -DSHOAL_CNI_LATEST_VERSION='\"1.1.0\"'"
#endif

/* Names shared with the agent (cni/protocol.py; a unit test compares them). */
#define DEFAULT_RUN_DIR "/var/run/shoal-cni"
#define SOCKET_NAME "pluginevent.sock"
#define SNAPSHOT_NAME "enrollment"
#define SNAPSHOT_HEADER "shoal-enrollment 1"
#define PENDING_DIR "pending"
#define WIRE_MAGIC "SHOAL/1 "
/* Never captured, whatever the config says (Istio excludes it as well). */
#define ALWAYS_EXCLUDED "kube-system"

/* Bound on the stdin config, as cni/spec.py MAX_CONFIG_BYTES: libcni configs
 * are a few KiB; a runaway writer must not make the plugin buffer forever. */
#define MAX_CONFIG_BYTES (1 << 20)
/* The agent's reply echoes prevResult (at most the config) plus a header. */
#define MAX_REPLY_BYTES (MAX_CONFIG_BYTES + 4096)
/* How long ADD/DEL/CHECK/GC wait for the agent: it installs nft rules and
 * waits up to 5 s for ztunnel's ack (ZDS, as Istio), so 10 s bounds a healthy
 * ADD while failing well inside the kubelet's 4 min CNI budget. */
#define AGENT_TIMEOUT_MS 10000
/* STATUS is a liveness probe of the agent; it must answer fast. */
#define STATUS_TIMEOUT_MS 2000
/* Nesting bound for the JSON scanner; real configs nest 5-6 deep. */
#define JSON_MAX_DEPTH 64
/* Namespaces in `exclude_namespaces`; Istio's installer writes 2 or 3. */
#define MAX_EXCLUDED 64
/* Kubernetes names: namespace <= 63 (DNS label), pod <= 253 (subdomain). */
#define NAME_MAX_LEN 253
/* A snapshot line: "pod <ns> <name> ambient" fits easily. */
#define SNAPSHOT_LINE_MAX 1024

enum command { C_ADD, C_DEL, C_CHECK, C_STATUS, C_GC, C_VERSION, C_UNKNOWN };

static enum command g_cmd = C_UNKNOWN;
static char g_version[32] = SHOAL_CNI_LATEST_VERSION;
static const char *const SUPPORTED[] = {SHOAL_CNI_SUPPORTED_VERSIONS};

/* ------------------------------------------------------------------ buffers */

struct buf {
    char *p;
    size_t n, cap;
};

static void fail(int code, const char *msg, const char *details) __attribute__((noreturn));

static void buf_add(struct buf *b, const void *d, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) fail(999, "out of memory", "");
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void buf_str(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

/* A JSON string literal for `s` (control characters escaped as \u00XX). */
static void buf_json_str(struct buf *b, const char *s) {
    buf_add(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\') {
            char e[2] = {'\\', (char)*c};
            buf_add(b, e, 2);
        } else if (*c < 0x20) {
            char e[7];
            snprintf(e, sizeof e, "\\u%04x", *c);
            buf_add(b, e, 6);
        } else {
            buf_add(b, c, 1);
        }
    }
    buf_add(b, "\"", 1);
}

static void write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

/* ------------------------------------------------------------------ output */

/* Print the CNI error object on stdout (libcni's skel does; raw_exec.go reads
 * stdout first) and exit 1; a DEL still exits 0. */
static void fail(int code, const char *msg, const char *details) {
    struct buf b = {0};
    char num[16];
    buf_str(&b, "{\"cniVersion\":");
    buf_json_str(&b, g_version);
    snprintf(num, sizeof num, "%d", code);
    buf_str(&b, ",\"code\":");
    buf_str(&b, num);
    buf_str(&b, ",\"msg\":");
    buf_json_str(&b, msg);
    if (details && *details) {
        buf_str(&b, ",\"details\":");
        buf_json_str(&b, details);
    }
    buf_str(&b, "}\n");
    if (g_cmd == C_DEL) {
        write_all(2, b.p, b.n);
        exit(0);
    }
    write_all(1, b.p, b.n);
    exit(1);
}

/* ------------------------------------------------------------------ JSON scan
 * Only what the plugin needs: validate the config, find four top-level keys
 * and the raw bytes of prevResult (echoed byte for byte). */

static const char *ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* p at '"'; returns the byte after the closing quote, or NULL. */
static const char *scan_string(const char *p, const char *e) {
    for (p++; p < e;) {
        unsigned char c = (unsigned char)*p++;
        if (c == '"') return p;
        if (c < 0x20) return NULL;
        if (c != '\\') continue;
        if (p >= e) return NULL;
        c = (unsigned char)*p++;
        if (c == 'u') {
            for (int i = 0; i < 4; i++, p++)
                if (p >= e || hexval(*p) < 0) return NULL;
        } else if (!c || !strchr("\"\\/bfnrt", c)) {
            return NULL;
        }
    }
    return NULL;
}

static const char *scan_digits(const char *p, const char *e) {
    const char *s = p;
    while (p < e && *p >= '0' && *p <= '9') p++;
    return p == s ? NULL : p;
}

static const char *scan_number(const char *p, const char *e) {
    if (p < e && *p == '-') p++;
    if (p < e && *p == '0') p++;
    else if (!(p = scan_digits(p, e))) return NULL;
    if (p < e && *p == '.' && !(p = scan_digits(p + 1, e))) return NULL;
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (!(p = scan_digits(p, e))) return NULL;
    }
    return p;
}

static const char *scan_value(const char *p, const char *e, int depth);

/* p at '{' or '['; returns the byte after the closing bracket, or NULL. */
static const char *scan_container(const char *p, const char *e, int depth) {
    char close = *p == '{' ? '}' : ']';
    int object = *p == '{';
    p = ws(p + 1, e);
    if (p < e && *p == close) return p + 1;
    for (;;) {
        if (object) {
            if (p >= e || *p != '"' || !(p = scan_string(p, e))) return NULL;
            p = ws(p, e);
            if (p >= e || *p != ':') return NULL;
            p++;
        }
        if (!(p = scan_value(p, e, depth + 1))) return NULL;
        p = ws(p, e);
        if (p < e && *p == ',') {
            p = ws(p + 1, e);
            continue;
        }
        return p < e && *p == close ? p + 1 : NULL;
    }
}

static const char *scan_literal(const char *p, const char *e, const char *lit) {
    size_t n = strlen(lit);
    return (size_t)(e - p) >= n && !memcmp(p, lit, n) ? p + n : NULL;
}

static const char *scan_value(const char *p, const char *e, int depth) {
    if (depth > JSON_MAX_DEPTH) return NULL;
    p = ws(p, e);
    if (p >= e) return NULL;
    switch (*p) {
    case '"': return scan_string(p, e);
    case '{': case '[': return scan_container(p, e, depth);
    case 't': return scan_literal(p, e, "true");
    case 'f': return scan_literal(p, e, "false");
    case 'n': return scan_literal(p, e, "null");
    default: return (*p == '-' || (*p >= '0' && *p <= '9')) ? scan_number(p, e) : NULL;
    }
}

static void put_utf8(char *out, size_t *n, unsigned cp) {
    if (cp < 0x80) {
        out[(*n)++] = (char)cp;
    } else if (cp < 0x800) {
        out[(*n)++] = (char)(0xC0 | cp >> 6);
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out[(*n)++] = (char)(0xE0 | cp >> 12);
        out[(*n)++] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        out[(*n)++] = (char)(0xF0 | cp >> 18);
        out[(*n)++] = (char)(0x80 | (cp >> 12 & 0x3F));
        out[(*n)++] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    }
}

static unsigned hex4(const char *p) {
    return (unsigned)(hexval(p[0]) << 12 | hexval(p[1]) << 8 | hexval(p[2]) << 4 | hexval(p[3]));
}

/* Decode an already-scanned string literal [p, end) into out (NUL-terminated).
 * Returns 0, or -1 when it does not fit or holds a NUL or a lone surrogate. */
static int decode_string(const char *p, const char *end, char *out, size_t cap) {
    size_t n = 0;
    for (p++, end--; p < end;) {
        if (n + 5 > cap) return -1;
        char c = *p++;
        if (c != '\\') {
            out[n++] = c;
            continue;
        }
        c = *p++;
        switch (c) {
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u': {
            unsigned cp = hex4(p);
            p += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return -1;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u') return -1;
                unsigned lo = hex4(p + 2);
                if (lo < 0xDC00 || lo > 0xDFFF) return -1;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            }
            if (!cp) return -1;
            put_utf8(out, &n, cp);
            break;
        }
        default: out[n++] = c; /* \" \\ \/ */
        }
    }
    out[n] = 0;
    return 0;
}

struct config {
    char run_dir[PATH_MAX];
    char excluded[MAX_EXCLUDED][NAME_MAX_LEN + 1];
    int n_excluded;
    const char *prev; /* raw bytes of prevResult, NULL when absent */
    size_t prev_n;
};

/* Validate the stdin config and pick our keys. Returns NULL or what is wrong. */
static const char *parse_config(const char *p, size_t len, struct config *c) {
    const char *e = p + len, *v, *end;
    char key[64];
    p = ws(p, e);
    if (p >= e || *p != '{') return "network config is not a JSON object";
    const char *vend = scan_value(p, e, 0);
    if (!vend || ws(vend, e) != e) return "network config is not valid JSON";
    p = ws(p + 1, e);
    while (p < e && *p == '"') {
        const char *kend = scan_string(p, e);
        int known = !decode_string(p, kend, key, sizeof key);
        v = ws(ws(kend, e) + 1, e); /* past ':' */
        end = scan_value(v, e, 1);
        if (known && !strcmp(key, "cniVersion")) {
            if (*v != '"' || decode_string(v, end, g_version, sizeof g_version))
                return "cniVersion must be a short string";
        } else if (known && !strcmp(key, "cni_agent_run_dir")) {
            if (*v != '"' || decode_string(v, end, c->run_dir, sizeof c->run_dir) || !c->run_dir[0])
                return "cni_agent_run_dir must be a non-empty path";
        } else if (known && !strcmp(key, "exclude_namespaces")) {
            if (*v != '[') return "exclude_namespaces must be a list of strings";
            c->n_excluded = 0;
            for (const char *q = ws(v + 1, e); *q != ']';) {
                const char *qe = *q == '"' ? scan_string(q, e) : NULL;
                if (!qe || c->n_excluded == MAX_EXCLUDED ||
                    decode_string(q, qe, c->excluded[c->n_excluded++], NAME_MAX_LEN + 1))
                    return "exclude_namespaces must be a list of at most 64 namespace names";
                q = ws(qe, e);
                if (*q == ',') q = ws(q + 1, e);
            }
        } else if (known && !strcmp(key, "prevResult")) {
            if (*v == '{') {
                c->prev = v;
                c->prev_n = (size_t)(end - v);
            } else if (*v == 'n') {
                c->prev = NULL;
            } else {
                return "prevResult must be an object";
            }
        }
        p = ws(end, e);
        if (*p == ',') p = ws(p + 1, e);
    }
    return NULL;
}

/* ------------------------------------------------------------------ pod identity */

struct pod {
    char ns[NAME_MAX_LEN + 1];
    char name[NAME_MAX_LEN + 1];
};

/* K8S_POD_NAMESPACE / K8S_POD_NAME from CNI_ARGS ("K=V;K2=V2"), with the
 * agent's fallbacks: namespace "default", name the first 12 of the id. */
static void parse_pod(const char *args, const char *cid, struct pod *pod) {
    snprintf(pod->ns, sizeof pod->ns, "default");
    snprintf(pod->name, sizeof pod->name, "%.12s", cid ? cid : "");
    for (const char *p = args ? args : ""; *p;) {
        const char *semi = strchr(p, ';');
        size_t n = semi ? (size_t)(semi - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        if (n && (!eq || eq == p)) fail(4, "invalid CNI_ARGS", "a pair is not KEY=VALUE");
        if (eq) {
            size_t kn = (size_t)(eq - p), vn = n - kn - 1;
            char *dst = kn == 17 && !memcmp(p, "K8S_POD_NAMESPACE", 17) ? pod->ns
                      : kn == 12 && !memcmp(p, "K8S_POD_NAME", 12)       ? pod->name : NULL;
            if (dst && vn && vn <= NAME_MAX_LEN) {
                memcpy(dst, eq + 1, vn);
                dst[vn] = 0;
            }
        }
        p += n + (semi != NULL);
    }
}

static int excluded(const struct config *c, const char *ns) {
    if (!strcmp(ns, ALWAYS_EXCLUDED)) return 1;
    for (int i = 0; i < c->n_excluded; i++)
        if (!strcmp(ns, c->excluded[i])) return 1;
    return 0;
}

/* ------------------------------------------------------------------ agent call */

static long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

/* Wait for fd to be ready; 0 on ready, -1 on timeout/error (why set). */
static int wait_fd(int fd, short ev, long deadline, char *why, size_t whyn) {
    for (;;) {
        long left = deadline - now_ms();
        if (left <= 0) {
            snprintf(why, whyn, "no answer within %d ms", AGENT_TIMEOUT_MS);
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = ev};
        int r = poll(&p, 1, (int)left);
        if (r > 0) return 0;
        if (r < 0 && errno != EINTR) {
            snprintf(why, whyn, "poll: %s", strerror(errno));
            return -1;
        }
    }
}

/* One request/reply with the agent. Returns the exit status it gives, or -1
 * when it is unreachable or answered garbage (why says which). */
static int call_agent(const char *sock_path, const struct buf *req, int timeout_ms,
                      struct buf *out, char *why, size_t whyn) {
    long deadline = now_ms() + timeout_ms;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(sock_path) >= sizeof sa.sun_path) {
        snprintf(why, whyn, "%s: socket path too long", sock_path);
        return -1;
    }
    strcpy(sa.sun_path, sock_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(why, whyn, "socket: %s", strerror(errno));
        return -1;
    }
    /* A blocking connect waits while the listen backlog is full; Linux bounds
     * it by SO_SNDTIMEO. Then non-blocking I/O under one deadline. */
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        snprintf(why, whyn, "%s: %s", sock_path, strerror(errno));
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    for (size_t off = 0; off < req->n;) {
        ssize_t w = send(fd, req->p + off, req->n - off, MSG_NOSIGNAL);
        if (w > 0) {
            off += (size_t)w;
        } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
            snprintf(why, whyn, "%s: send: %s", sock_path, strerror(errno));
            close(fd);
            return -1;
        } else if (wait_fd(fd, POLLOUT, deadline, why, whyn)) {
            close(fd);
            return -1;
        }
    }
    shutdown(fd, SHUT_WR);
    char chunk[65536];
    for (;;) {
        ssize_t r = recv(fd, chunk, sizeof chunk, 0);
        if (r == 0) break;
        if (r > 0) {
            if (out->n + (size_t)r > MAX_REPLY_BYTES) {
                snprintf(why, whyn, "reply exceeds %d bytes", MAX_REPLY_BYTES);
                close(fd);
                return -1;
            }
            buf_add(out, chunk, (size_t)r);
        } else if (errno != EAGAIN && errno != EINTR) {
            snprintf(why, whyn, "%s: recv: %s", sock_path, strerror(errno));
            close(fd);
            return -1;
        } else if (wait_fd(fd, POLLIN, deadline, why, whyn)) {
            close(fd);
            return -1;
        }
    }
    close(fd);
    size_t m = strlen(WIRE_MAGIC);
    char *nl = out->n > m ? memchr(out->p, '\n', out->n) : NULL;
    if (!nl || memcmp(out->p, WIRE_MAGIC, m)) {
        snprintf(why, whyn, "%s: the agent's reply has no '" WIRE_MAGIC "<status>' line", sock_path);
        return -1;
    }
    int status = 0;
    const char *d = out->p + m;
    for (; d < nl && *d >= '0' && *d <= '9' && status < 256; d++) status = status * 10 + (*d - '0');
    if (d != nl || d == out->p + m || status > 255) {
        snprintf(why, whyn, "%s: bad exit status in the agent's reply", sock_path);
        return -1;
    }
    size_t hdr = (size_t)(nl + 1 - out->p);
    memmove(out->p, nl + 1, out->n - hdr);
    out->n -= hdr;
    return status;
}

/* ------------------------------------------------------------------ agent down */

/* 1 enrolled, 0 not enrolled, -1 unknown (no readable snapshot). The rule is
 * Istio's: a pod label (ambient / none) wins over its namespace's label. */
static int snapshot_enrolled(const char *run_dir, const struct pod *pod, char *why, size_t whyn) {
    char path[PATH_MAX + 64], line[SNAPSHOT_LINE_MAX], a[NAME_MAX_LEN + 1], b[NAME_MAX_LEN + 1], m[16];
    snprintf(path, sizeof path, "%s/%s", run_dir, SNAPSHOT_NAME);
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(why, whyn, "no enrollment snapshot at %s (%s)", path, strerror(errno));
        return -1;
    }
    int ns_ambient = 0, pod_mode = -1;
    if (!fgets(line, sizeof line, f) || strncmp(line, SNAPSHOT_HEADER "\n", sizeof SNAPSHOT_HEADER)) {
        fclose(f);
        snprintf(why, whyn, "%s is not a '" SNAPSHOT_HEADER "' snapshot", path);
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "ns %253s", a) == 1 && !strcmp(a, pod->ns)) ns_ambient = 1;
        else if (sscanf(line, "pod %253s %253s %15s", a, b, m) == 3 && !strcmp(a, pod->ns) &&
                 !strcmp(b, pod->name)) pod_mode = !strcmp(m, "ambient");
    }
    fclose(f);
    return pod_mode >= 0 ? pod_mode : ns_ambient;
}

/* Container ids are [A-Za-z0-9_.-] (SPEC.md); anything else is not journalled. */
static int safe_id(const char *cid) {
    if (!cid || !*cid || *cid == '.' || strlen(cid) > NAME_MAX_LEN) return 0;
    for (const char *c = cid; *c; c++)
        if (!(((*c | 32) >= 'a' && (*c | 32) <= 'z') || (*c >= '0' && *c <= '9') || strchr("_.-", *c)))
            return 0;
    return 1;
}

/* Leave the ADD the agent missed where it finds it once back (atomic rename). */
static void journal_add(const char *run_dir, const char *cid, const struct buf *req) {
    char dir[PATH_MAX + 64], tmp[PATH_MAX + 384], dst[PATH_MAX + 384];
    if (!safe_id(cid)) return;
    snprintf(dir, sizeof dir, "%s/%s", run_dir, PENDING_DIR);
    mkdir(dir, 0700);
    snprintf(tmp, sizeof tmp, "%s/.%s.%d", dir, cid, (int)getpid());
    snprintf(dst, sizeof dst, "%s/%s", dir, cid);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return;
    write_all(fd, req->p, req->n);
    if (close(fd) || rename(tmp, dst)) unlink(tmp);
}

static void journal_del(const char *run_dir, const char *cid) {
    char dst[PATH_MAX + 384];
    if (!safe_id(cid)) return;
    snprintf(dst, sizeof dst, "%s/%s/%s", run_dir, PENDING_DIR, cid);
    unlink(dst);
}

/* ------------------------------------------------------------------ main */

static int supported(const char *v) {
    for (size_t i = 0; i < sizeof SUPPORTED / sizeof *SUPPORTED; i++)
        if (!strcmp(v, SUPPORTED[i])) return 1;
    return 0;
}

static void print_version_info(void) {
    struct buf b = {0};
    buf_str(&b, "{\"cniVersion\":\"" SHOAL_CNI_LATEST_VERSION "\",\"supportedVersions\":[");
    for (size_t i = 0; i < sizeof SUPPORTED / sizeof *SUPPORTED; i++) {
        if (i) buf_str(&b, ",");
        buf_json_str(&b, SUPPORTED[i]);
    }
    buf_str(&b, "]}\n");
    write_all(1, b.p, b.n);
}

/* ADD passing a pod through: prevResult byte for byte, or an empty result
 * when the plugin is first in a chain. */
static void pass_through(const struct config *c) __attribute__((noreturn));
static void pass_through(const struct config *c) {
    if (!supported(g_version)) fail(1, "incompatible CNI versions", g_version);
    if (c->prev) {
        write_all(1, c->prev, c->prev_n);
        write_all(1, "\n", 1);
    } else {
        struct buf b = {0};
        buf_str(&b, "{\"cniVersion\":");
        buf_json_str(&b, g_version);
        buf_str(&b, ",\"interfaces\":[],\"ips\":[],\"routes\":[],\"dns\":{}}\n");
        write_all(1, b.p, b.n);
    }
    exit(0);
}

static enum command parse_command(const char *s) {
    static const char *const names[] = {"ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"};
    for (int i = 0; i < C_UNKNOWN; i++)
        if (s && !strcmp(s, names[i])) return (enum command)i;
    return C_UNKNOWN;
}

static void read_stdin(struct buf *in) {
    char chunk[65536];
    for (;;) {
        ssize_t r = read(0, chunk, sizeof chunk);
        if (r == 0) return;
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) fail(5, "cannot read the network config", strerror(errno));
        if (in->n + (size_t)r > MAX_CONFIG_BYTES) fail(6, "network config too large", "over 1 MiB");
        buf_add(in, chunk, (size_t)r);
    }
}

extern char **environ;

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const char *cmd = getenv("CNI_COMMAND");
    g_cmd = parse_command(cmd);
    if (g_cmd == C_UNKNOWN)
        fail(4, "unknown CNI_COMMAND", cmd ? cmd : "(unset)");

    struct buf in = {0};
    read_stdin(&in);
    static struct config cfg;
    snprintf(cfg.run_dir, sizeof cfg.run_dir, "%s", DEFAULT_RUN_DIR);
    /* VERSION: libcni sends only {"cniVersion"}; its answer does not depend on it. */
    const char *bad = in.n || g_cmd != C_VERSION ? parse_config(in.p ? in.p : "", in.n, &cfg) : NULL;
    if (bad && g_cmd != C_VERSION) {
        /* Codes as cni/spec.py: 6 when it is not a JSON object, 7 when a key is wrong. */
        if (!strncmp(bad, "network config", 14)) fail(6, "cannot decode network config", bad);
        fail(7, "invalid network config", bad);
    }

    const char *cid = getenv("CNI_CONTAINERID");
    if (g_cmd == C_ADD || g_cmd == C_CHECK || g_cmd == C_DEL) {
        const char *need[] = {"CNI_CONTAINERID", g_cmd == C_DEL ? NULL : "CNI_NETNS", "CNI_IFNAME"};
        for (int i = 0; i < 3; i++)
            if (need[i] && !(getenv(need[i]) && *getenv(need[i])))
                fail(4, "required env variables missing", need[i]);
    }
    struct pod pod;
    parse_pod(getenv("CNI_ARGS"), cid, &pod);
    if ((g_cmd == C_ADD || g_cmd == C_CHECK || g_cmd == C_DEL) && excluded(&cfg, pod.ns)) {
        if (g_cmd == C_ADD) pass_through(&cfg);
        return 0;
    }

    struct buf req = {0};
    buf_str(&req, WIRE_MAGIC "{");
    int first = 1;
    for (char **e = environ; *e; e++) {
        char *eq = strchr(*e, '=');
        if (strncmp(*e, "CNI_", 4) || !eq) continue;
        *eq = 0;
        if (!first) buf_str(&req, ",");
        buf_json_str(&req, *e);
        buf_str(&req, ":");
        buf_json_str(&req, eq + 1);
        *eq = '=';
        first = 0;
    }
    buf_str(&req, "}\n");
    if (in.n) buf_add(&req, in.p, in.n);

    char sock[PATH_MAX + 64], why[PATH_MAX + 256] = "";
    snprintf(sock, sizeof sock, "%s/%s", cfg.run_dir, SOCKET_NAME);
    struct buf out = {0};
    int status = call_agent(sock, &req, g_cmd == C_STATUS ? STATUS_TIMEOUT_MS : AGENT_TIMEOUT_MS,
                            &out, why, sizeof why);
    if (status >= 0) {
        write_all(1, out.p, out.n);
        return g_cmd == C_DEL ? 0 : status;
    }

    char details[2048 + 2 * NAME_MAX_LEN + 128];
    switch (g_cmd) {
    case C_ADD:
    case C_CHECK: {
        char swhy[PATH_MAX + 128] = "";
        int e = snapshot_enrolled(cfg.run_dir, &pod, swhy, sizeof swhy);
        if (e == 0) {
            if (g_cmd == C_CHECK) return 0;
            journal_add(cfg.run_dir, cid, &req);
            pass_through(&cfg);
        }
        snprintf(details, sizeof details, "pod %s/%s: %.1024s%s%.1024s; is the shoal node agent running on this node?",
                 pod.ns, pod.name, why, e < 0 ? "; " : "", e < 0 ? swhy : "");
        fail(11, e > 0 ? "node agent unreachable; pod in the ambient mesh not started"
                       : "node agent unreachable and pod enrollment unknown; pod not started",
             details);
    }
    case C_DEL:
        journal_del(cfg.run_dir, cid);
        return 0;
    case C_STATUS:
        fail(50, "node agent not available", why);
    case C_GC:
        return 0; /* advisory: the agent also reconciles vanished pods itself */
    default:
        print_version_info();
        return 0;
    }
}
