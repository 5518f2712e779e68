/* One pass over SMTP message text (RFC 5321 4.1.1.4, 4.5.2, 2.3.8).
 *
 * The native half of mmgate/smtp/framing.py: the framer hands the bytes
 * that follow a 354 to a TextReader, which in a single pass finds the end
 * of data (CRLF.CRLF only), removes dot-stuffing, finds bare CR and LF and
 * handles them by the policy, checks text-line lengths and the size limit,
 * and writes the text out, either with CRLF line endings or in smtpd's
 * form (LF line endings, the last one dropped).  The pure-Python framer is
 * the reference: tests/test_text_native.py checks the two give the same
 * text, flags and sizes for any bytes cut anywhere.
 *
 * Why by hand: the same work in Python takes six C-level passes over the
 * text (find, replace, three counts, and the LF form's replace), each at
 * about 1.5 GB/s here; this pass moves whole lines with memchr and memcpy
 * (benchmarks/smtpd_path.py gives the figures).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <structmember.h>
#include <string.h>

enum state {
    S_BOL,     /* at a line start that follows CRLF (or the text's start) */
    S_DOT,     /* CRLF "." seen: a stuffing dot, or the end's */
    S_DOT_CR,  /* CRLF "." CR seen: the end, if LF follows */
    S_MID,     /* within a line (or after a bare CR or LF) */
    S_CR,      /* a CR within a line: CRLF, or a bare CR */
};

enum policy { P_NORMALISE = 0, P_STRICT = 1, P_LENIENT = 2 };
enum error { E_NONE = 0, E_TOO_BIG = 1, E_LONG_LINE = 2, E_BARE = 3 };

typedef struct {
    PyObject_HEAD
    PyObject *out;          /* the text not yet taken (a bytes object) */
    Py_ssize_t out_len;     /* octets of it written */
    Py_ssize_t line;        /* octets of the current line before its LF */
    Py_ssize_t raw;         /* octets of text received, as sent */
    Py_ssize_t size;        /* octets of text produced, in CRLF form */
    Py_ssize_t text_line;   /* longest line allowed, LF excluded */
    Py_ssize_t limit;       /* most raw octets allowed; 0: no limit */
    int state;
    int policy;
    int lenient_long;
    int lf;                 /* write smtpd's form */
    int held;               /* smtpd's form: a line ending not yet written */
    char bare;              /* read as bools (T_BOOL) */
    char long_line;
    int error;
} TextReader;

static int
reserve(TextReader *self, Py_ssize_t more)
{
    Py_ssize_t need = self->out_len + more;
    if (self->out == NULL) {
        Py_ssize_t cap = need < 512 ? 512 : need;
        self->out = PyBytes_FromStringAndSize(NULL, cap);
        return self->out == NULL ? -1 : 0;
    }
    Py_ssize_t cap = PyBytes_GET_SIZE(self->out);
    if (need <= cap)
        return 0;
    if (cap > PY_SSIZE_T_MAX / 2)
        cap = need;
    else if (need < cap * 2)
        need = cap * 2;
    return _PyBytes_Resize(&self->out, need);
}

static void
drop_text(TextReader *self)
{
    Py_CLEAR(self->out);
    self->out_len = 0;
    self->held = 0;
}

static void
refuse(TextReader *self, int error)
{
    if (self->error == E_NONE) {
        self->error = error;
        drop_text(self);
    }
}

/* Octets confirmed as text: count them against the size limit. */
static inline void
count_raw(TextReader *self, Py_ssize_t n)
{
    self->raw += n;
    if (self->limit && self->raw > self->limit)
        refuse(self, E_TOO_BIG);
}

/* Octets of the current line before its LF: check the text-line limit. */
static inline void
count_line(TextReader *self, Py_ssize_t n)
{
    self->line += n;
    if (self->line > self->text_line && !self->long_line) {
        self->long_line = 1;
        if (!self->lenient_long)
            refuse(self, E_LONG_LINE);
    }
}

/* Writes run only while the message is not refused; reserve() made room. */
static inline char *
outp(TextReader *self)
{
    return PyBytes_AS_STRING(self->out) + self->out_len;
}

static inline void
flush_held(TextReader *self)
{
    if (self->held) {
        *outp(self) = '\n';
        self->out_len++;
        self->held = 0;
    }
}

/* A line ending: CRLF, or a bare CR or LF under the normalising policy. */
static inline void
put_ending(TextReader *self)
{
    self->size += 2;
    if (self->lf) {
        flush_held(self);
        self->held = 1;
    }
    else {
        char *o = outp(self);
        o[0] = '\r';
        o[1] = '\n';
        self->out_len += 2;
    }
}

static inline void
put(TextReader *self, const char *p, Py_ssize_t n)
{
    if (n <= 0)
        return;
    flush_held(self);
    memcpy(outp(self), p, n);
    self->out_len += n;
    self->size += n;
}

/* A bare CR or LF: refused, normalised or kept, by the policy. */
static inline void
put_bare(TextReader *self, char c)
{
    self->bare = 1;
    if (self->policy == P_STRICT)
        refuse(self, E_BARE);
    else if (self->error != E_NONE)
        return;
    else if (self->policy == P_NORMALISE)
        put_ending(self);
    else
        put(self, &c, 1);
}

/* Reads data[start:]; the offset just past CRLF.CRLF, or -1 if the text
 * goes on (all of the bytes were taken). */
static Py_ssize_t
scan(TextReader *self, const char *data, Py_ssize_t len, Py_ssize_t start)
{
    const char *p = data + start, *end = data + len;
    while (p < end) {
        /* room for what is left: a bare CR or LF that becomes CRLF takes
         * one octet more than it came with, a held line ending one */
        if (self->error == E_NONE && reserve(self, (end - p) + 2) < 0)
            return -2;
        switch (self->state) {
        case S_BOL:
            if (*p == '.') {
                self->state = S_DOT;
                p++;
                continue;
            }
            self->state = S_MID;
            continue;
        case S_DOT:
            if (*p == '\r') {
                self->state = S_DOT_CR;
                p++;
                continue;
            }
            /* a stuffing dot (RFC 5321 4.5.2): counted, not written */
            count_raw(self, 1);
            count_line(self, 1);
            self->state = S_MID;
            continue;
        case S_DOT_CR:
            if (*p == '\n')
                return p + 1 - data; /* CRLF.CRLF: the end */
            /* a stuffing dot, then a bare CR */
            count_raw(self, 2);
            count_line(self, 2);
            if (self->error == E_NONE)
                put_bare(self, '\r');
            self->state = S_MID;
            continue;
        case S_CR:
            if (*p == '\n') {
                count_raw(self, 1);
                if (self->error == E_NONE)
                    put_ending(self);
                self->line = 0;
                self->state = S_BOL;
                p++;
                continue;
            }
            if (self->error == E_NONE)
                put_bare(self, '\r');
            self->state = S_MID;
            continue;
        case S_MID:
        default: {
            /* the run of plain octets up to the next CR or LF, in bulk */
            const char *nl = memchr(p, '\n', end - p);
            const char *stop = nl ? nl : end;
            const char *cr = memchr(p, '\r', stop - p);
            const char *run_end = cr ? cr : stop;
            Py_ssize_t n = run_end - p;
            if (n) {
                count_raw(self, n);
                count_line(self, n);
                if (self->error == E_NONE)
                    put(self, p, n);
                p = run_end;
            }
            if (p == end)
                return -1;
            count_raw(self, 1);
            if (*p == '\r') {
                count_line(self, 1);
                self->state = S_CR;
            }
            else { /* a bare LF */
                if (self->error == E_NONE)
                    put_bare(self, '\n');
                self->line = 0;
            }
            p++;
            continue;
        }
        }
    }
    return -1;
}

static int
TextReader_init(TextReader *self, PyObject *args, PyObject *kwds)
{
    drop_text(self);
    self->state = S_BOL;
    self->text_line = 1000;
    return 0;
}

static void
TextReader_dealloc(TextReader *self)
{
    Py_CLEAR(self->out);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(start_doc,
"start(text_line, message_size, policy, lenient_long, lf)\n--\n\n"
"Begin a message: lines of at most text_line octets before their LF,\n"
"at most message_size octets as sent (0: no limit), bare line endings\n"
"by policy (0 normalise, 1 strict, 2 lenient), long lines refused\n"
"unless lenient_long, and the text in smtpd's form when lf.");

static PyObject *
TextReader_start(TextReader *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "start() takes 5 arguments");
        return NULL;
    }
    Py_ssize_t text_line = PyLong_AsSsize_t(args[0]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    long policy = PyLong_AsLong(args[2]);
    int lenient_long = PyObject_IsTrue(args[3]);
    int lf = PyObject_IsTrue(args[4]);
    if (PyErr_Occurred() || lenient_long < 0 || lf < 0)
        return NULL;
    if (policy < P_NORMALISE || policy > P_LENIENT) {
        PyErr_SetString(PyExc_ValueError, "policy is 0, 1 or 2");
        return NULL;
    }
    drop_text(self);
    self->line = self->raw = self->size = 0;
    self->text_line = text_line;
    self->limit = limit;
    self->state = S_BOL;
    self->policy = (int)policy;
    self->lenient_long = lenient_long;
    self->lf = lf;
    self->bare = self->long_line = 0;
    self->error = E_NONE;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(feed_doc,
"feed(data, start=0)\n--\n\n"
"Read data[start:] as message text: -1 if the text goes on (every octet\n"
"was taken), else the offset in data just past CRLF.CRLF.");

static PyObject *
TextReader_feed(TextReader *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "feed() takes 1 or 2 arguments");
        return NULL;
    }
    Py_ssize_t start = 0;
    if (nargs == 2) {
        start = PyLong_AsSsize_t(args[1]);
        if (start == -1 && PyErr_Occurred())
            return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (start < 0 || start > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "start is outside the data");
        return NULL;
    }
    Py_ssize_t found = scan(self, view.buf, view.len, start);
    PyBuffer_Release(&view);
    if (found == -2)
        return NULL;
    return PyLong_FromSsize_t(found);
}

PyDoc_STRVAR(take_doc,
"take()\n--\n\n"
"The text written so far, handed over (smtpd's form keeps back a line\n"
"ending it has not yet seen followed by text).");

static PyObject *
TextReader_take(TextReader *self, PyObject *Py_UNUSED(ignored))
{
    if (self->out == NULL || self->out_len == 0) {
        Py_CLEAR(self->out);
        self->out_len = 0;
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    PyObject *text = self->out;
    self->out = NULL;
    if (PyBytes_GET_SIZE(text) != self->out_len
        && _PyBytes_Resize(&text, self->out_len) < 0)
        return NULL;
    self->out_len = 0;
    return text;
}

static PyMethodDef TextReader_methods[] = {
    {"start", (PyCFunction)(void (*)(void))TextReader_start, METH_FASTCALL, start_doc},
    {"feed", (PyCFunction)(void (*)(void))TextReader_feed, METH_FASTCALL, feed_doc},
    {"take", (PyCFunction)TextReader_take, METH_NOARGS, take_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef TextReader_members[] = {
    {"pending", T_PYSSIZET, offsetof(TextReader, out_len), READONLY,
     "octets written and not taken"},
    {"raw", T_PYSSIZET, offsetof(TextReader, raw), READONLY, "octets of text received, as sent"},
    {"size", T_PYSSIZET, offsetof(TextReader, size), READONLY,
     "octets of text produced, in CRLF form"},
    {"bare", T_BOOL, offsetof(TextReader, bare), READONLY, "a bare CR or LF was seen"},
    {"long", T_BOOL, offsetof(TextReader, long_line), READONLY, "a text line was over the limit"},
    {"error", T_INT, offsetof(TextReader, error), READONLY,
     "0, or why the text is refused: 1 too big, 2 a long line, 3 a bare line ending"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject TextReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mmgate.smtp._text.TextReader",
    .tp_doc = PyDoc_STR("One message's text, read in one pass as it arrives."),
    .tp_basicsize = sizeof(TextReader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)TextReader_init,
    .tp_dealloc = (destructor)TextReader_dealloc,
    .tp_methods = TextReader_methods,
    .tp_members = TextReader_members,
};

static struct PyModuleDef text_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mmgate.smtp._text",
    .m_doc = "One pass over SMTP message text; see mmgate/smtp/framing.py.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__text(void)
{
    if (PyType_Ready(&TextReaderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&text_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&TextReaderType);
    if (PyModule_AddObject(m, "TextReader", (PyObject *)&TextReaderType) < 0) {
        Py_DECREF(&TextReaderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
