/*
 * pftrace-hook, compiled: what Postfix's debugger_command runs on every traced
 * process start (tracerctl(8), "Commands" and "Hook latency").
 *
 * pftrace-hook [--socket PATH] [--timeout S] [--ack-timeout S] [--tracer T]
 *              [--syslog PATH] NAME PID
 *
 * It asks the resident tracerd to attach a tracer to PID and exits 0 only once
 * tracerd confirms that the tracer is attached.  It is the same program as
 * tracerd/hook.py (pip's entry point and the fallback make writes when there is
 * no C compiler), written in C because Postfix waits for it on every process
 * start and a Python interpreter's start-up alone is several times this whole
 * program's run.  The two are held together by tests/test_hook.py, which runs
 * every hook behaviour against both, and tests/test_hook_compiled.py.
 *
 * Behaviour (tracerctl(8), "Commands"): a missing daemon fails at once; tracerd must
 * accept the connection and acknowledge (or refuse) the request within
 * --ack-timeout (else $TRACERD_ACK_TIMEOUT, else 1.5 s); an acknowledged request
 * gets the rest of --timeout (default 15 s, counted from the start).  A tracerd
 * restarting under socket activation leaves SOCKET.restarting beside its socket;
 * while that file is less than 10 s old the hook waits for the acknowledgement,
 * in the socket's backlog, up to --timeout.  Exit 0: attached; 1: not attached,
 * with one line "pftrace-hook: warning: NAME[PID]: not traced: REASON" on stderr
 * and at mail.warning to syslog; 2: usage.  --help and --version print on stdout
 * and exit 0.
 *
 * Security: the hook trusts nothing it is given.  tracerd checks the caller
 * (SO_PEERCRED), the name, and that PID is an ancestor of the hook.  Nothing from
 * the socket is trusted beyond being one JSON object line of at most MAX_REPLY
 * bytes; the parser below is bounded in depth and length, and what it reads is
 * printed only with control characters and invalid UTF-8 escaped, so a reply
 * cannot make the warning more than one line.  No shell, no environment beyond
 * TRACERD_SOCKET, TRACERD_ACK_TIMEOUT and XDG_RUNTIME_DIR (the socket rule), no
 * dynamic memory beyond the reply buffer.  SIGPIPE cannot kill it (MSG_NOSIGNAL).
 *
 * Diagnostics: every failure is the one warning line above, on stderr and to
 * syslog; the reasons are worded as tracerd/hook.py and tracerd/client.py word
 * them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef VERSION
#error "build with -DVERSION='\"X.Y.Z\"' (the Makefile passes pyproject.toml's version)"
#endif

#define SYSTEM_SOCKET "/run/tracerd/tracerd.sock"
#define ROOT_HINT "the hook must run as root"
#define DEFAULT_TIMEOUT 15.0
#define DEFAULT_ACK_TIMEOUT 1.5
#define RESTART_GRACE 10.0
#define SYSLOG_PATH "/dev/log"
#define LOG_MAIL_WARNING (2 * 8 + 4)
#define MAX_REPLY (1 << 20)
#define MAX_DEPTH 64
#define REASON_MAX 2048

#define USAGE                                                                                  \
    "usage: pftrace-hook [--socket PATH] [--timeout SECONDS] [--ack-timeout SECONDS]"          \
    " [--tracer NAME] [--syslog PATH] NAME PID"

static const char HELP[] =
    USAGE "\n"
    "\n"
    "Ask tracerd to trace process PID of Postfix service NAME (Postfix's\n"
    "debugger_command: pftrace-hook $process_name $process_id).  Exit 0 once the\n"
    "tracer is attached, 1 (with one warning line here and to syslog) when it is\n"
    "not: the process then runs on untraced.\n"
    "\n"
    "positional arguments:\n"
    "  NAME                   the service name ($process_name)\n"
    "  PID                    the process to trace ($process_id)\n"
    "\n"
    "options:\n"
    "  -h, --help             show this help and exit\n"
    "  --version              show the version and exit\n"
    "  --socket PATH          tracerd's socket (default $TRACERD_SOCKET, else " SYSTEM_SOCKET " as root)\n"
    "  --timeout SECONDS      give up on the attach after SECONDS in all (default 15)\n"
    "  --ack-timeout SECONDS  give up when tracerd does not acknowledge within SECONDS\n"
    "                         (default $TRACERD_ACK_TIMEOUT, else 1.5)\n"
    "  --tracer NAME          the tracer to attach (default: tracerd's rules)\n"
    "  --syslog PATH          the syslog socket for the warning line (default " SYSLOG_PATH ")\n";

/* -- small text helpers ---------------------------------------------------- */

/* A growable byte buffer; out of memory is a failure the caller reports. */
struct buf {
    char *data;
    size_t len, cap;
    int failed;
};

static void buf_add(struct buf *b, const char *data, size_t len)
{
    if (b->failed)
        return;
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len + 1)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            b->failed = 1;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_fmt(struct buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        buf_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* The length of the valid UTF-8 sequence at s (at most n bytes), its code point
 * in *cp; 0 when the byte at s starts no valid sequence (overlong forms and
 * encoded surrogates included, as Python's strict decoder has it). */
static size_t utf8_seq(const unsigned char *s, size_t n, unsigned *cp)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2, min = 0x80, c &= 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3, min = 0x800, c &= 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4, min = 0x10000, c &= 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return len;
}

/* text for a one-line message: valid UTF-8 as it is; control characters and
 * bytes that are not UTF-8 as \xNN, so that nothing makes a second line. */
static void buf_shown(struct buf *b, const char *text, size_t n)
{
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < n;) {
        unsigned cp;
        size_t len = utf8_seq(s + i, n - i, &cp);
        if (len == 0 || cp < 0x20 || cp == 0x7f) {
            buf_fmt(b, "\\x%02x", s[i]);
            i++;
        } else if ((cp >= 0x80 && cp < 0xa0) || cp == 0x2028 || cp == 0x2029) {
            buf_fmt(b, "\\u%04x", cp);  /* C1 controls, line and paragraph separators */
            i += len;
        } else {
            buf_add(b, text + i, len);
            i += len;
        }
    }
}

/* text as a JSON string, ASCII only (json.dumps's escaping of Python's view of
 * argv: a byte that is not UTF-8 is the lone surrogate U+DC80+byte, as
 * surrogateescape decodes it). */
static void buf_json(struct buf *b, const char *text)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t n = strlen(text);
    buf_str(b, "\"");
    for (size_t i = 0; i < n;) {
        unsigned cp;
        size_t len = utf8_seq(s + i, n - i, &cp);
        if (len == 0) {
            cp = 0xdc00 + s[i];
            len = 1;
        }
        i += len;
        switch (cp) {
        case '"': buf_str(b, "\\\""); continue;
        case '\\': buf_str(b, "\\\\"); continue;
        case '\n': buf_str(b, "\\n"); continue;
        case '\r': buf_str(b, "\\r"); continue;
        case '\t': buf_str(b, "\\t"); continue;
        case '\b': buf_str(b, "\\b"); continue;
        case '\f': buf_str(b, "\\f"); continue;
        default: break;
        }
        if (cp >= 0x20 && cp < 0x7f) {
            char c = (char)cp;
            buf_add(b, &c, 1);
        } else if (cp < 0x10000) {
            buf_fmt(b, "\\u%04x", cp);
        } else {
            cp -= 0x10000;
            buf_fmt(b, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
        }
    }
    buf_str(b, "\"");
}

/* -- time ----------------------------------------------------------------- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* milliseconds left to deadline for poll(2), at least 1 while any is left; -1 when none */
static int ms_left(double deadline)
{
    double left = deadline - now();
    if (left <= 0)
        return -1;
    double ms = left * 1000.0;
    if (ms > 3600000.0)
        return 3600000;
    int whole = (int)ms;
    return whole < ms ? whole + 1 : whole;
}

/* -- options ---------------------------------------------------------------- */

struct opts {
    const char *socket, *tracer, *syslog, *name;
    double timeout, ack_timeout;
    long long pid;
};

static struct buf usage_error;  /* the reason of a usage error (exit 2) */

/* A number of seconds, 0 < SECONDS <= 3600, from option or variable `where`. */
static int seconds(const char *where, const char *value, double *out)
{
    char *end;
    errno = 0;
    double number = strtod(value, &end);
    int whole = end != value && errno == 0 && !strpbrk(value, "xXpP");  /* float(): no hex */
    while (whole && (*end == ' ' || *end == '\t' || *end == '\n'))
        end++;
    if (!whole || *end || !(number > 0 && number <= 3600)) {
        buf_fmt(&usage_error, "%s wants a number of seconds, 0 < SECONDS <= 3600, not ", where);
        buf_json(&usage_error, value);
        return -1;
    }
    *out = number;
    return 0;
}

static const char *getenv_set(const char *name)
{
    const char *value = getenv(name);
    return value && *value ? value : NULL;
}

/* The socket tracerd listens on when nothing says (tracerd.client's rule). */
static const char *default_socket(void)
{
    static char path[4200];
    if (geteuid() == 0)
        return SYSTEM_SOCKET;
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (xdg && xdg[0] == '/') {
        size_t n = strlen(xdg);
        while (n > 0 && xdg[n - 1] == '/')
            n--;
        snprintf(path, sizeof path, "%.*s/tracerd/tracerd.sock", (int)(n < 4000 ? n : 4000), xdg);
        return path;
    }
    snprintf(path, sizeof path, "/tmp/tracerd-%u/tracerd.sock", (unsigned)getuid());
    return path;
}

enum parsed { PARSED, ANSWERED, BAD };

static enum parsed parse_args(int argc, char **argv, struct opts *o)
{
    const char *positional[2] = {NULL, NULL};
    int npos = 0, ack_given = 0;
    const char *timeout = NULL, *ack = getenv_set("TRACERD_ACK_TIMEOUT");
    o->socket = getenv_set("TRACERD_SOCKET");
    if (!o->socket)
        o->socket = default_socket();
    o->syslog = SYSLOG_PATH;
    o->tracer = NULL;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            fputs(HELP, stdout);
            fputs("\n", stdout);
            return ANSWERED;
        }
        if (!strcmp(arg, "--version")) {
            fputs("pftrace-hook " VERSION "\n", stdout);
            return ANSWERED;
        }
        if (!strncmp(arg, "--", 2) && arg[2]) {
            const char *key = arg + 2, *eq = strchr(key, '=');
            size_t klen = eq ? (size_t)(eq - key) : strlen(key);
            const char *value;
            if (eq)
                value = eq + 1;
            else
                value = i + 1 < argc ? argv[++i] : "";
#define IS(k) (klen == sizeof(k) - 1 && !strncmp(key, k, klen))
            if (!(IS("socket") || IS("timeout") || IS("ack-timeout") || IS("tracer") || IS("syslog"))) {
                buf_str(&usage_error, "unknown option --");
                buf_shown(&usage_error, key, klen);
                return BAD;
            }
            if (!*value) {
                buf_str(&usage_error, "--");
                buf_shown(&usage_error, key, klen);
                buf_str(&usage_error, " needs a value");
                return BAD;
            }
            if (IS("socket"))
                o->socket = value;
            else if (IS("timeout"))
                timeout = value;
            else if (IS("ack-timeout"))
                ack = value, ack_given = 1;
            else if (IS("tracer"))
                o->tracer = value;
            else
                o->syslog = value;
#undef IS
        } else if (npos < 2) {
            positional[npos++] = arg;
        } else {
            npos++;
        }
    }
    if (npos != 2) {
        buf_str(&usage_error, "expected NAME and PID");
        return BAD;
    }
    o->timeout = DEFAULT_TIMEOUT;
    o->ack_timeout = DEFAULT_ACK_TIMEOUT;
    if (timeout && seconds("--timeout", timeout, &o->timeout))
        return BAD;
    if (ack && seconds(ack_given ? "--ack-timeout" : "TRACERD_ACK_TIMEOUT", ack, &o->ack_timeout))
        return BAD;
    o->name = positional[0];
    const char *p = positional[1];
    char *end;
    errno = 0;
    while (*p == ' ' || *p == '\t')
        p++;
    o->pid = strtoll(p, &end, 10);
    while (end != p && (*end == ' ' || *end == '\t' || *end == '\n'))
        end++;
    if (end == p || *end || errno || !(*p == '-' || *p == '+' || (*p >= '0' && *p <= '9'))) {
        buf_str(&usage_error, "PID must be a number, not ");
        buf_json(&usage_error, positional[1]);
        return BAD;
    }
    return PARSED;
}

/* -- JSON replies ------------------------------------------------------------ */

/* What the hook reads of a reply: four members of one JSON object. */
enum jtype { J_ABSENT, J_NULL, J_TRUE, J_FALSE, J_NUMBER, J_STRING, J_OTHER };
struct member {
    enum jtype type;
    struct buf text;  /* a string's UTF-8 value, or the value's JSON text */
};
struct reply {
    struct member ok, ack, error, message;
};

struct scan {
    const char *s;
    size_t n, i;
};

static void skip_ws(struct scan *sc)
{
    while (sc->i < sc->n && (sc->s[sc->i] == ' ' || sc->s[sc->i] == '\t' || sc->s[sc->i] == '\n' ||
                             sc->s[sc->i] == '\r'))
        sc->i++;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int hex4(struct scan *sc, unsigned *out)
{
    if (sc->n - sc->i < 4)
        return -1;
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(sc->s[sc->i + (size_t)k]);
        if (h < 0)
            return -1;
        v = v * 16 + (unsigned)h;
    }
    sc->i += 4;
    *out = v;
    return 0;
}

static void put_utf8(struct buf *b, unsigned cp)
{
    char u[4];
    if (cp >= 0xd800 && cp <= 0xdfff)
        cp = 0xfffd;  /* a lone surrogate: Python would keep it; printed, it is a replacement */
    if (cp < 0x80) {
        u[0] = (char)cp;
        buf_add(b, u, 1);
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | (cp >> 6)), u[1] = (char)(0x80 | (cp & 0x3f));
        buf_add(b, u, 2);
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | (cp >> 12)), u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f));
        buf_add(b, u, 3);
    } else {
        u[0] = (char)(0xf0 | (cp >> 18)), u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), u[3] = (char)(0x80 | (cp & 0x3f));
        buf_add(b, u, 4);
    }
}

/* A JSON string at sc->i (the opening quote); its value into out when out is not NULL. */
static int scan_string(struct scan *sc, struct buf *out)
{
    sc->i++;
    while (sc->i < sc->n) {
        unsigned char c = (unsigned char)sc->s[sc->i];
        if (c == '"') {
            sc->i++;
            return 0;
        }
        if (c < 0x20)
            return -1;  /* strict: no raw control characters */
        if (c != '\\') {
            unsigned cp;
            size_t len = utf8_seq((const unsigned char *)sc->s + sc->i, sc->n - sc->i, &cp);
            if (len == 0)
                return -1;  /* not UTF-8: the line fails to decode */
            if (out)
                buf_add(out, sc->s + sc->i, len);
            sc->i += len;
            continue;
        }
        if (++sc->i >= sc->n)
            return -1;
        char e = sc->s[sc->i++];
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            static const char meaning[] = "\"\\/\b\f\n\r\t";
            if (out)
                buf_add(out, &meaning[simple - "\"\\/bfnrt"], 1);
            continue;
        }
        if (e != 'u')
            return -1;
        unsigned cp;
        if (hex4(sc, &cp))
            return -1;
        if (cp >= 0xd800 && cp <= 0xdbff && sc->n - sc->i >= 6 && sc->s[sc->i] == '\\' &&
            sc->s[sc->i + 1] == 'u') {
            struct scan low = *sc;
            unsigned lo;
            low.i += 2;
            if (!hex4(&low, &lo) && lo >= 0xdc00 && lo <= 0xdfff) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                sc->i = low.i;
            }
        }
        if (out)
            put_utf8(out, cp);
    }
    return -1;
}

static int scan_value(struct scan *sc, int depth, struct member *m);

static int scan_number(struct scan *sc)
{
    size_t start = sc->i;
    if (sc->i < sc->n && sc->s[sc->i] == '-')
        sc->i++;
    if (sc->i < sc->n && sc->s[sc->i] == '0') {
        sc->i++;
    } else if (sc->i < sc->n && sc->s[sc->i] >= '1' && sc->s[sc->i] <= '9') {
        while (sc->i < sc->n && sc->s[sc->i] >= '0' && sc->s[sc->i] <= '9')
            sc->i++;
    } else {
        return -1;
    }
    if (sc->i < sc->n && sc->s[sc->i] == '.') {
        size_t digits = ++sc->i;
        while (sc->i < sc->n && sc->s[sc->i] >= '0' && sc->s[sc->i] <= '9')
            sc->i++;
        if (sc->i == digits)
            return -1;
    }
    if (sc->i < sc->n && (sc->s[sc->i] == 'e' || sc->s[sc->i] == 'E')) {
        sc->i++;
        if (sc->i < sc->n && (sc->s[sc->i] == '+' || sc->s[sc->i] == '-'))
            sc->i++;
        size_t digits = sc->i;
        while (sc->i < sc->n && sc->s[sc->i] >= '0' && sc->s[sc->i] <= '9')
            sc->i++;
        if (sc->i == digits)
            return -1;
    }
    return sc->i > start ? 0 : -1;
}

static int literal(struct scan *sc, const char *word)
{
    size_t len = strlen(word);
    if (sc->n - sc->i < len || strncmp(sc->s + sc->i, word, len))
        return -1;
    sc->i += len;
    return 0;
}

/* A JSON object or array at sc->i (its opening bracket), members into r when r is not NULL. */
static int scan_container(struct scan *sc, int depth, struct reply *r)
{
    char close = sc->s[sc->i] == '{' ? '}' : ']';
    if (depth > MAX_DEPTH)
        return -1;
    sc->i++;
    skip_ws(sc);
    if (sc->i < sc->n && sc->s[sc->i] == close) {
        sc->i++;
        return 0;
    }
    for (;;) {
        struct member *target = NULL;
        if (close == '}') {
            struct buf key = {0};
            if (sc->i >= sc->n || sc->s[sc->i] != '"' || scan_string(sc, r ? &key : NULL)) {
                free(key.data);
                return -1;
            }
            if (r && key.data) {
                if (!strcmp(key.data, "ok") && key.len == 2)
                    target = &r->ok;
                else if (!strcmp(key.data, "ack") && key.len == 3)
                    target = &r->ack;
                else if (!strcmp(key.data, "error") && key.len == 5)
                    target = &r->error;
                else if (!strcmp(key.data, "message") && key.len == 7)
                    target = &r->message;
            }
            free(key.data);
            skip_ws(sc);
            if (sc->i >= sc->n || sc->s[sc->i] != ':')
                return -1;
            sc->i++;
            skip_ws(sc);
        }
        if (target)
            target->text.len = 0, target->type = J_ABSENT;  /* a repeated key: the last one counts */
        if (scan_value(sc, depth + 1, target))
            return -1;
        skip_ws(sc);
        if (sc->i < sc->n && sc->s[sc->i] == ',') {
            sc->i++;
            skip_ws(sc);
            continue;
        }
        if (sc->i < sc->n && sc->s[sc->i] == close) {
            sc->i++;
            return 0;
        }
        return -1;
    }
}

static int scan_value(struct scan *sc, int depth, struct member *m)
{
    size_t start = sc->i;
    enum jtype type;
    if (sc->i >= sc->n)
        return -1;
    switch (sc->s[sc->i]) {
    case '"':
        if (scan_string(sc, m ? &m->text : NULL))
            return -1;
        if (m) {
            m->type = J_STRING;
            buf_add(&m->text, "", 0);  /* the terminator, also after a repeated key's reset */
            if (m->text.failed)
                return -1;  /* out of memory: the line is not read */
        }
        return 0;
    case '{':
    case '[':
        if (scan_container(sc, depth, NULL))
            return -1;
        type = J_OTHER;
        break;
    case 't':
        if (literal(sc, "true"))
            return -1;
        type = J_TRUE;
        break;
    case 'f':
        if (literal(sc, "false"))
            return -1;
        type = J_FALSE;
        break;
    case 'n':
        if (literal(sc, "null"))
            return -1;
        type = J_NULL;
        break;
    default:
        if (scan_number(sc))
            return -1;
        type = J_NUMBER;
        break;
    }
    if (m) {
        m->type = type;
        buf_add(&m->text, sc->s + start, sc->i - start);
        if (m->text.failed)
            return -1;
    }
    return 0;
}

/* One JSON object from a line, or -1 when the line holds anything else. */
static int decode_object(const char *line, size_t n, struct reply *r)
{
    struct scan sc = {line, n, 0};
    memset(r, 0, sizeof *r);
    skip_ws(&sc);
    if (sc.i >= sc.n || sc.s[sc.i] != '{' || scan_container(&sc, 0, r))
        return -1;
    skip_ws(&sc);
    return sc.i == sc.n ? 0 : -1;
}

static void free_reply(struct reply *r)
{
    free(r->ok.text.data);
    free(r->ack.text.data);
    free(r->error.text.data);
    free(r->message.text.data);
}

/* -- the socket -------------------------------------------------------------- */

struct failure {
    struct buf reason;
    int timed_out;  /* a deadline passed: the caller words it */
};

static int fail(struct failure *f, const char *fmt, ...)
{
    char tmp[REASON_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    f->reason.len = 0;
    buf_str(&f->reason, tmp);
    f->timed_out = 0;
    return -1;
}

static int timed_out(struct failure *f)
{
    f->timed_out = 1;
    return -1;
}

/* A connected socket by `deadline` (tracerd.client.connect's reasons), or -1. */
static int connect_to(const char *path, double deadline, struct failure *f)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path)
        return fail(f, "cannot connect to %s: AF_UNIX path too long", path);
    memcpy(addr.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return fail(f, "cannot connect to %s: %s", path, strerror(errno));
    int rc;
    do
        rc = connect(fd, (struct sockaddr *)&addr, sizeof addr);
    while (rc < 0 && errno == EINTR);
    if (rc < 0 && errno == EINPROGRESS) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int ms = ms_left(deadline), err = 0;
        socklen_t len = sizeof err;
        do
            rc = ms < 0 ? 0 : poll(&p, 1, ms);
        while (rc < 0 && errno == EINTR && (ms = ms_left(deadline)) >= 0);
        if (rc <= 0) {
            close(fd);
            return timed_out(f);
        }
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        errno = err;
        rc = err ? -1 : 0;
    }
    if (rc == 0)
        return fd;
    int err = errno;
    close(fd);
    switch (err) {
    case ENOENT:
        return fail(f, "tracerd is not running (no socket %s)", path);
    case ECONNREFUSED:
        return fail(f, "tracerd is not running (nobody listens on %s)", path);
    case EACCES:
    case EPERM:
        return fail(f, "permission denied on %s (" ROOT_HINT ")", path);
    case EAGAIN:
        return fail(f, "tracerd accepts no connections (its queue on %s is full: is it hung?)", path);
    default:
        return fail(f, "cannot connect to %s: %s", path, strerror(err));
    }
}

/* Wait until fd is ready for `events` (or a signal came: the caller tries again) by `deadline`;
 * -1, with the reason in f, when the deadline passed or poll failed. */
static int await_fd(int fd, short events, double deadline, struct failure *f)
{
    struct pollfd p = {.fd = fd, .events = events};
    int ms = ms_left(deadline);
    if (ms < 0)
        return timed_out(f);
    if (poll(&p, 1, ms) < 0 && errno != EINTR)
        return fail(f, "talking to tracerd: %s", strerror(errno));
    return 0;
}

static int send_all(int fd, const char *data, size_t len, double deadline, struct failure *f)
{
    while (len > 0) {
        ssize_t sent = send(fd, data, len, MSG_NOSIGNAL);
        if (sent > 0) {
            data += sent, len -= (size_t)sent;
            continue;
        }
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent < 0 && errno != EAGAIN)
            return fail(f, "talking to tracerd: %s", strerror(errno));
        if (await_fd(fd, POLLOUT, deadline, f))
            return -1;
    }
    return 0;
}

/* One JSON object line from tracerd by `deadline` into r; what came after it stays in pending. */
static int read_line(int fd, struct buf *pending, double deadline, struct reply *r, struct failure *f)
{
    char *nl;
    while (!pending->data || !(nl = memchr(pending->data, '\n', pending->len))) {
        char chunk[65536];
        ssize_t got = recv(fd, chunk, sizeof chunk, 0);
        if (got > 0) {
            buf_add(pending, chunk, (size_t)got);
            if (pending->failed)
                return fail(f, "talking to tracerd: %s", strerror(ENOMEM));
            if (pending->len > MAX_REPLY)
                return fail(f, "tracerd's answer is too long");
            continue;
        }
        if (got == 0)
            return fail(f, "tracerd closed the connection without an answer");
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return fail(f, "talking to tracerd: %s", strerror(errno));
        if (await_fd(fd, POLLIN, deadline, f))
            return -1;
    }
    size_t line = (size_t)(nl - pending->data);
    free_reply(r);
    int bad = decode_object(pending->data, line, r);
    memmove(pending->data, nl + 1, pending->len - line - 1);
    pending->len -= line + 1;
    if (bad)
        return fail(f, "tracerd sent a malformed answer");
    return 0;
}

/* Whether tracerd said, less than RESTART_GRACE ago, that it is restarting
 * (SOCKET.restarting, root's or the hook's own uid's). */
static int restarting(const char *socket_path)
{
    char path[4200];
    struct stat st;
    struct timespec wall;
    if ((size_t)snprintf(path, sizeof path, "%s.restarting", socket_path) >= sizeof path)
        return 0;
    if (stat(path, &st) || (st.st_uid != 0 && st.st_uid != geteuid()))
        return 0;
    clock_gettime(CLOCK_REALTIME, &wall);
    double age = (double)(wall.tv_sec - st.st_mtim.tv_sec) + (double)(wall.tv_nsec - st.st_mtim.tv_nsec) / 1e9;
    return age >= 0 && age < RESTART_GRACE;
}

static int is(const struct member *m, enum jtype type) { return m->type == type; }

/* Whether a container's JSON text is [] or {} (whitespace inside allowed): false, as Python has it. */
static int empty_container(const struct buf *text)
{
    for (size_t i = 1; i + 1 < text->len; i++)
        if (!strchr(" \t\n\r", text->data[i]))
            return 0;
    return 1;
}

/* Send the hook request and wait, bounded, for tracerd's verdict: 0 when the
 * tracer is attached, else -1 with the reason in f. */
static int request_attach(const struct opts *o, struct failure *f)
{
    double started = now();
    double deadline = started + o->timeout;
    double ack_deadline = started + o->ack_timeout < deadline ? started + o->ack_timeout : deadline;
    char unacknowledged[160];
    snprintf(unacknowledged, sizeof unacknowledged,
             "tracerd did not acknowledge within %g s (is it hung? see --ack-timeout)", ack_deadline - started);
    struct buf request = {0}, pending = {0};
    struct reply r = {0};
    int rc = -1;
    buf_str(&request, "{\"op\": \"hook\", \"name\": ");
    buf_json(&request, o->name);
    buf_fmt(&request, ", \"pid\": %lld, \"ack\": true", o->pid);
    if (o->tracer) {
        buf_str(&request, ", \"tracer\": ");
        buf_json(&request, o->tracer);
    }
    buf_str(&request, "}\n");
    if (request.failed) {
        fail(f, "talking to tracerd: %s", strerror(ENOMEM));
        goto out;
    }
    int fd = connect_to(o->socket, ack_deadline, f);
    if (fd < 0) {
        if (f->timed_out)
            fail(f, "%s", unacknowledged);
        goto out;
    }
    if (send_all(fd, request.data, request.len, ack_deadline, f)) {
        if (f->timed_out)
            fail(f, "%s", unacknowledged);
        goto closed;
    }
    if (read_line(fd, &pending, ack_deadline, &r, f)) {
        if (!f->timed_out)
            goto closed;
        if (!restarting(o->socket)) {
            fail(f, "%s", unacknowledged);
            goto closed;
        }
        if (read_line(fd, &pending, deadline, &r, f)) {  /* in the backlog of a restarting tracerd */
            if (f->timed_out)
                fail(f, "tracerd was restarting and did not acknowledge within %g s", o->timeout);
            goto closed;
        }
    }
    static const char old[] = "unknown field \"ack\"";
    if (is(&r.error, J_STRING) && r.error.text.len == 11 && !memcmp(r.error.text.data, "bad_request", 11) &&
        is(&r.message, J_STRING) && memmem(r.message.text.data, r.message.text.len, old, sizeof old - 1)) {
        fail(f, "tracerd is older than this pftrace-hook (no acknowledgements): restart tracerd");
        goto closed;
    }
    if (is(&r.ack, J_TRUE) && is(&r.ok, J_ABSENT) && read_line(fd, &pending, deadline, &r, f)) {
        if (f->timed_out)
            fail(f,
                 "tracerd acknowledged, but no attach confirmed within %g s"
                 " (see --timeout and tracerd's attach_timeout)",
                 o->timeout);
        goto closed;
    }
    if (is(&r.ok, J_TRUE)) {
        rc = 0;
        goto closed;
    }
    /* str(answer.get("message") or answer.get("error") or "refused") */
    const struct member *why = NULL;
    const struct member *choices[] = {&r.message, &r.error};
    for (int k = 0; k < 2 && !why; k++) {
        const struct member *m = choices[k];
        int falsy = m->type == J_ABSENT || m->type == J_NULL || m->type == J_FALSE ||
                    (m->type == J_STRING && m->text.len == 0) ||
                    (m->type == J_NUMBER && strtod(m->text.data, NULL) == 0) ||
                    (m->type == J_OTHER && empty_container(&m->text));
        if (!falsy)
            why = m;
    }
    f->reason.len = 0;
    if (!why)
        buf_str(&f->reason, "refused");
    else if (why->type == J_TRUE)
        buf_str(&f->reason, "True");
    else
        buf_add(&f->reason, why->text.data, why->text.len);
closed:
    close(fd);
out:
    free(request.data);
    free(pending.data);
    free_reply(&r);
    return rc;
}

/* mail.warning to the local syslog socket; never blocks, never fails. */
static void warn_syslog(const char *path, const char *message, size_t len)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    char line[8192 + 1];  /* at most 8192 bytes go, as the Python form sends */
    char stamp[32] = "";
    time_t t = time(NULL);
    struct tm tm;
    if (strlen(path) >= sizeof addr.sun_path)
        return;
    memcpy(addr.sun_path, path, strlen(path) + 1);
    if (localtime_r(&t, &tm))
        strftime(stamp, sizeof stamp, "%b %d %H:%M:%S", &tm);
    int n = snprintf(line, sizeof line, "<%d>%s pftrace-hook[%d]: %.*s", LOG_MAIL_WARNING, stamp, (int)getpid(),
                     (int)(len < sizeof line ? len : sizeof line), message);
    if (n < 0)
        return;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return;  /* no syslog: stderr still carries the reason */
    sendto(fd, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1, MSG_NOSIGNAL, (struct sockaddr *)&addr,
           sizeof addr);
    close(fd);
}

int main(int argc, char **argv)
{
    struct opts o;
    struct failure f = {0};
    int code = 0;
    /* a reader of stdout or stderr that went away must not kill the hook before its syslog line */
    signal(SIGPIPE, SIG_IGN);
    switch (parse_args(argc, argv, &o)) {
    case ANSWERED:
        return fflush(stdout) == 0 ? 0 : 1;
    case BAD:
        fprintf(stderr, "pftrace-hook: %s\n%s\n", usage_error.data ? usage_error.data : "usage", USAGE);
        return 2;
    case PARSED:
        break;
    }
    if (request_attach(&o, &f)) {
        /* "warning:" as Postfix's own lines have it: triage and bugreport grep for it */
        struct buf line = {0};
        buf_str(&line, "warning: ");
        buf_shown(&line, o.name, strlen(o.name));
        buf_fmt(&line, "[%lld]: not traced: ", o.pid);
        buf_shown(&line, f.reason.data ? f.reason.data : "", f.reason.len);
        if (line.failed)
            return 1;
        warn_syslog(o.syslog, line.data, line.len);
        fprintf(stderr, "pftrace-hook: %s\n", line.data);
        code = 1;
    }
    if (fflush(stderr) != 0)
        code = 1;
    return code;
}
