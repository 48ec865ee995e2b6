/*
 * rpcscope._speedups: the access log's common line (a successful call), encoded in C; and,
 * further down, the metrics fold's loop (Folder) and a server call's start and finish on the
 * request path (ServerPath). Each follows the rule below.
 *
 * Why by hand, in C: the log writer runs in the observed service's process, so its CPU is the
 * service's CPU. The pure-Python encoder (exporters/_jsonline.py, CallLineEncoder.line_python)
 * is already a handful of cached fragments spliced by one f-string, and it still cost about
 * half of all of rpcscope's extra instructions per call (bench/instructions.py). No JSON
 * library helps: the cost is not escaping (the fragments are pre-escaped and cached) but the
 * interpreter's work per field. Same pattern as msgpack's and PyYAML's optional C speedups:
 *
 *   - The Python encoder stays the reference. This module handles exactly the common case and
 *     hands anything else (a failed call, an unusual type, a negative or huge number, a
 *     traceparent that is not a valid version-00 header, a cache miss) back to Python, which
 *     also fills the caches this module reads. So output is byte-identical by construction,
 *     and tests/test_speedups.py checks it on generated records.
 *   - It is optional: when it cannot be built (no compiler), or RPCSCOPE_PURE_PYTHON=1, the
 *     Python encoder is used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>
#include <structmember.h>
#include <time.h>

static PyObject *s_code, *s_info, *s_end_wall_ns, *s_duration_ns, *s_msgs_in, *s_msgs_out,
    *s_peer, *s_deadline, *s_trace, *s_metadata, *s_component, *s_last, *s_id_of,
    *s_template, *s_peer_fragment, *s_timestamp_prefix, *s_metadata_piece, *s_call_details,
    *s_line_python, *s_log_deadline, *s_redacted, *s_zero, *s_1e9, *s_details, *s_error,
    *s_ids_token, *s_otel_span, *s_start_ns, *s_slots;

/*
 * Where CallRecord's __slots__ sit in an instance (its member descriptors' offsets): reading
 * them directly skips an attribute lookup per field. All three types below use them, and only
 * on exact CallRecords. Every slot is here (record_slots checks that none is missing), because
 * ServerPath makes records itself and must set them all.
 */
typedef struct {
    Py_ssize_t call_details, code, deadline, details, duration_ns, end_wall_ns, error, ids_token,
        info, metadata, msgs_in, msgs_out, otel_span, peer, start_ns, trace;
} RecordSlots;
#define RECORD_SLOTS 16

typedef struct {
    PyObject_HEAD
    PyObject *py;                /* the Python CallLineEncoder: reference, and cache filler */
    PyObject *statics;           /* its dict: id(info) -> (info, (p1, p2, p3, p4)) */
    PyObject *peers;             /* its dict: component -> {peer: fragment} */
    PyObject *pieces;            /* ours: allowed key -> (value or None if redacted, piece) */
    PyObject *span_ids;          /* collector._core._IdSource of span ids */
    PyObject *trace_ids;         /* ... of trace ids */
    PyObject *parse_traceparent; /* collector._core.parse_traceparent (every other version) */
    PyObject *traceparent_of;    /* collector._core._traceparent_of (raw metadata) */
    PyObject *record_type;       /* collector._core.CallRecord */
    PyObject *allow;             /* MetadataPicker's {key: redact?} */
    PyObject *on_error;          /* on_error("log:deadline"): a record lost its deadline */
    RecordSlots rec;
    long long span_per, span_width, trace_per, trace_width;
    long long second;
    PyObject *second_text;
} LineEncoder;

/* A piece of the line: a str, or ASCII bytes. */
typedef struct {
    PyObject *u;
    const char *a;
    Py_ssize_t n;
} Piece;

#define MAX_PIECES 48
#define MAX_META 8 /* logged metadata pairs handled in C; more: Python */

/* Decimal digits of v >= 0 into buf; returns the length. */
static Py_ssize_t
put_ll(char *buf, long long v)
{
    char tmp[24];
    Py_ssize_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (Py_ssize_t i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    return n;
}

/* v (0 <= v < 10**width) zero-padded to width digits. */
static void
put_padded(char *buf, long long v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        buf[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

/* An exact int in [lo, hi]: 1 (stored), 0 (not the common case). */
static int
exact_int(PyObject *o, long long lo, long long hi, long long *out)
{
    int overflow = 0;
    long long v;
    if (!PyLong_CheckExact(o))
        return 0;
    v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || v < lo || v > hi) {
        PyErr_Clear();
        return 0;
    }
    *out = v;
    return 1;
}

#define exact_nonneg(o, out) exact_int((o), 0, LLONG_MAX, (out))
#define INT53 (1LL << 53) /* ints up to this are exactly doubles */

static int
is_lhex(Py_UCS1 c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int
all_zero(const Py_UCS1 *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] != '0')
            return 0;
    return 1;
}

/*
 * The id of a call number from an _IdSource: its last digest when the number's block is the
 * one cached (the common case: the writer resolves in call order), else Python's id_of, which
 * hashes and replaces the cache. NULL on error.
 */
static PyObject *
id_of(PyObject *source, long long number, long long per, long long width)
{
    long long block = number / per, slot = number % per;
    PyObject *last = PyObject_GetAttr(source, s_last);
    if (last == NULL)
        return NULL;
    if (PyTuple_CheckExact(last) && PyTuple_GET_SIZE(last) == 2) {
        PyObject *cached = PyTuple_GET_ITEM(last, 0), *hex = PyTuple_GET_ITEM(last, 1);
        long long cached_block;
        if (exact_nonneg(cached, &cached_block) && cached_block == block
            && PyUnicode_CheckExact(hex) && PyUnicode_KIND(hex) == PyUnicode_1BYTE_KIND
            && PyUnicode_GET_LENGTH(hex) >= (slot + 1) * width
            && !all_zero(PyUnicode_1BYTE_DATA(hex) + slot * width, (Py_ssize_t)width)) {
            PyObject *text = PyUnicode_Substring(hex, (Py_ssize_t)(slot * width),
                                                 (Py_ssize_t)((slot + 1) * width));
            Py_DECREF(last);
            return text;
        }
    }
    Py_DECREF(last);
    {
        PyObject *n = PyLong_FromLongLong(number), *text;
        if (n == NULL)
            return NULL;
        text = PyObject_CallMethodOneArg(source, s_id_of, n);
        Py_DECREF(n);
        return text;
    }
}

static int
is_plain_pair(PyObject *item)
{
    /* A tuple (or a named tuple: grpc's metadata pairs) of two that iterates as a tuple. */
    return PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 2
           && Py_TYPE(item)->tp_iter == PyTuple_Type.tp_iter;
}

/*
 * The first traceparent value in gRPC metadata given as a tuple or list of pairs with str keys
 * (what grpc hands over): a new reference to it, or to None when absent or not a str. NULL
 * without an error: any other shape, which collector._core._traceparent_of decides.
 */
static PyObject *
traceparent_in(PyObject *metadata)
{
    Py_ssize_t n;
    PyObject **items;
    if (!PyTuple_CheckExact(metadata) && !PyList_CheckExact(metadata))
        return NULL;
    n = PySequence_Fast_GET_SIZE(metadata);
    items = PySequence_Fast_ITEMS(metadata);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key, *value;
        if (!is_plain_pair(items[i]))
            return NULL;
        key = PyTuple_GET_ITEM(items[i], 0);
        if (!PyUnicode_CheckExact(key))
            return NULL;
        if (PyUnicode_GET_LENGTH(key) == 11
            && PyUnicode_CompareWithASCIIString(key, "traceparent") == 0) {
            value = PyTuple_GET_ITEM(items[i], 1);
            return Py_NewRef(PyUnicode_CheckExact(value) ? value : Py_None);
        }
    }
    return Py_NewRef(Py_None);
}

/*
 * The trace fragment's ids for a record's trace: sets *trace_id, *span_id (new references)
 * and *parent_id (new reference or NULL). Returns 1 on success, 0 when the case is not ours
 * (the caller delegates to Python), -1 on error.
 */
static int
resolve(LineEncoder *self, PyObject *trace, PyObject **trace_id, PyObject **span_id,
        PyObject **parent_id)
{
    *trace_id = *span_id = *parent_id = NULL;
    if (!PyTuple_CheckExact(trace))
        return 0;
    if (PyTuple_GET_SIZE(trace) == 4) { /* ids formatted already (an OTel span, a client) */
        PyObject *t = PyTuple_GET_ITEM(trace, 0), *s = PyTuple_GET_ITEM(trace, 1),
                 *p = PyTuple_GET_ITEM(trace, 2);
        if (!PyUnicode_CheckExact(t) || !PyUnicode_CheckExact(s))
            return 0;
        if (p != Py_None && !(PyUnicode_CheckExact(p)))
            return 0;
        *trace_id = Py_NewRef(t);
        *span_id = Py_NewRef(s);
        if (p != Py_None && PyUnicode_GET_LENGTH(p) > 0)
            *parent_id = Py_NewRef(p);
        return 1;
    }
    if (PyTuple_GET_SIZE(trace) == 2) { /* (incoming header or metadata or None, call number) */
        PyObject *incoming = PyTuple_GET_ITEM(trace, 0), *header = NULL;
        long long number;
        if (!exact_nonneg(PyTuple_GET_ITEM(trace, 1), &number))
            return 0;
        *span_id = id_of(self->span_ids, number, self->span_per, self->span_width);
        if (*span_id == NULL)
            return -1;
        if (incoming != Py_None) {
            if (PyUnicode_CheckExact(incoming)) {
                header = Py_NewRef(incoming);
            } else if ((header = traceparent_in(incoming)) != NULL) {
                /* found (or known absent) without Python */
            } else if (PyErr_Occurred()) {
                goto error;
            } else {
                header = PyObject_CallOneArg(self->traceparent_of, incoming);
                if (header == NULL)
                    goto error;
            }
        }
        if (header != NULL && header != Py_None) {
            if (PyUnicode_CheckExact(header) && PyUnicode_GET_LENGTH(header) == 55
                && PyUnicode_KIND(header) == PyUnicode_1BYTE_KIND) {
                /* Version 00, exactly: the common case, parsed here. */
                const Py_UCS1 *h = PyUnicode_1BYTE_DATA(header);
                int ok = h[0] == '0' && h[1] == '0' && h[2] == '-' && h[35] == '-'
                         && h[52] == '-' && is_lhex(h[53]) && is_lhex(h[54]);
                for (int i = 3; ok && i < 35; i++)
                    ok = is_lhex(h[i]);
                for (int i = 36; ok && i < 52; i++)
                    ok = is_lhex(h[i]);
                if (ok) {
                    if (!all_zero(h + 3, 32) && !all_zero(h + 36, 16)) {
                        *trace_id = PyUnicode_Substring(header, 3, 35);
                        *parent_id = PyUnicode_Substring(header, 36, 52);
                        if (*trace_id == NULL || *parent_id == NULL)
                            goto error;
                    }
                    Py_CLEAR(header);
                }
            }
            if (header != NULL) { /* any other form: Python's parser decides */
                PyObject *parsed = PyObject_CallOneArg(self->parse_traceparent, header);
                if (parsed == NULL)
                    goto error;
                if (parsed != Py_None) {
                    if (!PyTuple_CheckExact(parsed) || PyTuple_GET_SIZE(parsed) != 3) {
                        Py_DECREF(parsed);
                        PyErr_SetString(PyExc_TypeError, "parse_traceparent: not a triple");
                        goto error;
                    }
                    *trace_id = Py_NewRef(PyTuple_GET_ITEM(parsed, 0));
                    *parent_id = Py_NewRef(PyTuple_GET_ITEM(parsed, 1));
                }
                Py_DECREF(parsed);
            }
        }
        Py_XDECREF(header);
        header = NULL;
        if (*trace_id == NULL) {
            *trace_id = id_of(self->trace_ids, number, self->trace_per, self->trace_width);
            if (*trace_id == NULL)
                goto error;
        }
        if (!PyUnicode_CheckExact(*trace_id) || (*parent_id != NULL
                                                 && !PyUnicode_CheckExact(*parent_id))) {
            Py_CLEAR(*trace_id);
            Py_CLEAR(*span_id);
            Py_CLEAR(*parent_id);
            return 0;
        }
        return 1;
    error:
        Py_XDECREF(header);
        Py_CLEAR(*trace_id);
        Py_CLEAR(*span_id);
        Py_CLEAR(*parent_id);
        return -1;
    }
    return 0;
}

/* The peer's cached fragment (CallLineEncoder._peers), or CallLineEncoder._peer on a miss. */
static PyObject *
peer_fragment(LineEncoder *self, PyObject *component, PyObject *peer)
{
    PyObject *by_peer = PyDict_GetItemWithError(self->peers, component), *hit = NULL;
    if (by_peer != NULL && PyDict_CheckExact(by_peer))
        hit = PyDict_GetItemWithError(by_peer, peer);
    if (hit != NULL)
        return Py_NewRef(hit);
    if (PyErr_Occurred())
        return NULL;
    return PyObject_CallMethodObjArgs(self->py, s_peer_fragment, component, peer, NULL);
}

/*
 * The logged metadata pieces ("key":"value" JSON) of raw gRPC metadata, straight from it:
 * what MetadataPicker then CallLineEncoder._metadata would give, without building the picked
 * tuple. grpc hands over fresh strings per call, so the tuple cost allocations (and the
 * collections they trigger) and a dict lookup hashing every string; here each allowed key
 * keeps its last value and piece, and a value equal to the last takes its piece. Fills
 * out[0..*n) with new references. 1: done; 0: not ours (a list, a non-str key or value to
 * show, more than MAX_META pairs): Python decides; -1: error.
 */
static int
raw_pieces(LineEncoder *self, PyObject *metadata, PyObject **out, int *n)
{
    Py_ssize_t size;
    *n = 0;
    if (!PyTuple_CheckExact(metadata))
        return 0;
    size = PyTuple_GET_SIZE(metadata);
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *item = PyTuple_GET_ITEM(metadata, i), *key, *value, *redact, *entry, *piece;
        int r;
        if (!is_plain_pair(item) || !PyUnicode_CheckExact(PyTuple_GET_ITEM(item, 0)))
            goto not_ours;
        key = PyTuple_GET_ITEM(item, 0);
        value = PyTuple_GET_ITEM(item, 1);
        redact = PyDict_GetItemWithError(self->allow, key); /* str key: no Python code */
        if (redact == NULL) {
            if (PyErr_Occurred())
                goto error;
            continue;
        }
        if (!PyBool_Check(redact))
            goto not_ours;
        r = redact == Py_True;
        if (!r && !PyUnicode_CheckExact(value))
            goto not_ours; /* shown as repr(value): Python */
        if (*n == MAX_META)
            goto not_ours;
        entry = PyDict_GetItemWithError(self->pieces, key);
        if (entry == NULL && PyErr_Occurred())
            goto error;
        if (entry != NULL && PyTuple_CheckExact(entry) && PyTuple_GET_SIZE(entry) == 2
            && PyUnicode_CheckExact(PyTuple_GET_ITEM(entry, 1))
            && (r ? PyTuple_GET_ITEM(entry, 0) == Py_None
                  : (PyUnicode_CheckExact(PyTuple_GET_ITEM(entry, 0))
                     && PyUnicode_Compare(PyTuple_GET_ITEM(entry, 0), value) == 0))) {
            piece = Py_NewRef(PyTuple_GET_ITEM(entry, 1));
        } else {
            PyObject *fresh;
            piece = PyObject_CallMethodObjArgs(self->py, s_metadata_piece, key,
                                               r ? s_redacted : value, NULL);
            if (piece == NULL)
                goto error;
            if (!PyUnicode_CheckExact(piece)) {
                Py_DECREF(piece);
                goto not_ours;
            }
            fresh = PyTuple_Pack(2, r ? Py_None : value, piece);
            if (fresh == NULL || PyDict_SetItem(self->pieces, key, fresh) < 0) {
                Py_XDECREF(fresh);
                Py_DECREF(piece);
                goto error;
            }
            Py_DECREF(fresh);
        }
        out[(*n)++] = piece;
    }
    return 1;
not_ours:
    while (*n > 0)
        Py_DECREF(out[--(*n)]);
    return 0;
error:
    while (*n > 0)
        Py_DECREF(out[--(*n)]);
    return -1;
}

/*
 * A record's line, after its deadline was resolved: record.metadata is grpc's raw metadata,
 * left as it is; anything not ours goes to CallLineEncoder.line_python.
 */
static PyObject *
encode_impl(LineEncoder *self, PyObject *record)
{
    PyObject *code = NULL, *info = NULL, *pieces = NULL, *component = NULL, *peer = NULL,
             *peer_part = NULL, *deadline = NULL, *trace = NULL, *trace_id = NULL,
             *span_id = NULL, *parent_id = NULL, *metadata = NULL, *obj = NULL, *stamp = NULL,
             *result = NULL;
    char *deadline_text = NULL;
    long long end_wall_ns, duration, msgs_in, msgs_out, second, micros, us;
    char scratch[160];
    char *at = scratch;
    Piece parts[MAX_PIECES];
    int np = 0;
    PyObject *meta[MAX_META];
    int n_meta = 0;

    /* Slots are read in place (see RecordSlots), so only an exact CallRecord is ours. */
#define GET(var, name)                                                               \
    do {                                                                             \
        var = *(PyObject **)((char *)record + self->rec.name);                       \
        if (var == NULL) /* an unset slot: Python raises what it raises */           \
            goto delegate;                                                           \
        Py_INCREF(var);                                                              \
    } while (0)
#define GET_LL(var, name)                                 \
    do {                                                  \
        GET(obj, name);                                   \
        if (!exact_nonneg(obj, &var))                     \
            goto delegate;                                \
        Py_CLEAR(obj);                                    \
    } while (0)
#define STR(o) (parts[np].u = (o), parts[np].a = NULL, parts[np].n = PyUnicode_GET_LENGTH(o), np++)
#define ASCII(s, len) (parts[np].u = NULL, parts[np].a = (s), parts[np].n = (len), np++)
#define LIT(s) ASCII(s, (Py_ssize_t)(sizeof(s) - 1))

    if (Py_TYPE(record) != (PyTypeObject *)self->record_type)
        goto delegate;
    GET(code, code);
    if (!PyUnicode_CheckExact(code) || PyUnicode_CompareWithASCIIString(code, "OK") != 0)
        goto delegate; /* a failed call: Python's general path */
    GET(info, info);
    {
        PyObject *key = PyLong_FromVoidPtr(info), *cached;
        if (key == NULL)
            goto done;
        cached = PyDict_GetItemWithError(self->statics, key);
        Py_DECREF(key);
        if (cached != NULL && PyTuple_CheckExact(cached) && PyTuple_GET_SIZE(cached) == 2
            && PyTuple_GET_ITEM(cached, 0) == info) {
            pieces = Py_NewRef(PyTuple_GET_ITEM(cached, 1));
        } else if (PyErr_Occurred()) {
            goto done;
        } else {
            pieces = PyObject_CallMethodOneArg(self->py, s_template, info);
            if (pieces == NULL)
                goto done;
        }
        if (!PyTuple_CheckExact(pieces) || PyTuple_GET_SIZE(pieces) != 4)
            goto delegate;
        for (int i = 0; i < 4; i++)
            if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(pieces, i)))
                goto delegate;
    }
    GET_LL(end_wall_ns, end_wall_ns);
    GET_LL(duration, duration_ns);
    GET_LL(msgs_in, msgs_in);
    GET_LL(msgs_out, msgs_out);
    if (duration > LLONG_MAX - 500)
        goto delegate;

    second = end_wall_ns / 1000000000LL;
    micros = (end_wall_ns % 1000000000LL) / 1000;
    if (second != self->second || self->second_text == NULL) {
        PyObject *n = PyLong_FromLongLong(second), *text;
        if (n == NULL)
            goto done;
        text = PyObject_CallMethodOneArg(self->py, s_timestamp_prefix, n);
        Py_DECREF(n);
        if (text == NULL)
            goto done;
        if (!PyUnicode_CheckExact(text)) {
            Py_DECREF(text);
            goto delegate;
        }
        Py_XSETREF(self->second_text, text);
        self->second = second;
    }
    /* Our own reference: a Python callback below could re-enter and replace it. */
    stamp = Py_NewRef(self->second_text);

    GET(peer, peer);
    if (peer != Py_None) {
        if (!PyUnicode_CheckExact(peer))
            goto delegate;
        if (PyUnicode_GET_LENGTH(peer) > 0) {
            component = PyObject_GetAttr(info, s_component);
            if (component == NULL)
                goto done;
            peer_part = peer_fragment(self, component, peer);
            if (peer_part == NULL)
                goto done;
            if (!PyUnicode_CheckExact(peer_part))
                goto delegate;
        }
    }

    GET(deadline, deadline);
    if (deadline != Py_None) {
        double d;
        if (!PyFloat_CheckExact(deadline))
            goto delegate;
        d = PyFloat_AS_DOUBLE(deadline);
        if (isfinite(d) && !(d > 1e8)) {
            /* What '%.6f' % d does in Python. */
            deadline_text = PyOS_double_to_string(d, 'f', 6, 0, NULL);
            if (deadline_text == NULL)
                goto done;
        }
    }

    GET(trace, trace);
    if (trace != Py_None) {
        int r = resolve(self, trace, &trace_id, &span_id, &parent_id);
        if (r < 0)
            goto done;
        if (r == 0)
            goto delegate;
    }

    GET(metadata, metadata);
    if (metadata != Py_None) {
        int r = raw_pieces(self, metadata, meta, &n_meta);
        if (r < 0)
            goto done;
        if (r == 0)
            goto delegate;
    }

    /* The line, in the order of CallLineEncoder.encode's f-string. */
    us = (duration + 500) / 1000;
    STR(stamp);
    put_padded(at, micros, 6);
    ASCII(at, 6);
    at += 6;
    STR(PyTuple_GET_ITEM(pieces, 0));
    {
        Py_ssize_t n = put_ll(at, us / 1000);
        ASCII(at, n);
        at += n;
    }
    LIT(".");
    put_padded(at, us % 1000, 3);
    ASCII(at, 3);
    at += 3;
    STR(PyTuple_GET_ITEM(pieces, 1));
    {
        Py_ssize_t n = put_ll(at, duration);
        ASCII(at, n);
        at += n;
    }
    STR(PyTuple_GET_ITEM(pieces, 2));
    {
        Py_ssize_t n = put_ll(at, msgs_in);
        ASCII(at, n);
        at += n;
    }
    STR(PyTuple_GET_ITEM(pieces, 3));
    {
        Py_ssize_t n = put_ll(at, msgs_out);
        ASCII(at, n);
        at += n;
    }
    if (peer_part != NULL)
        STR(peer_part);
    if (deadline_text != NULL) {
        LIT(",\"grpc.request.deadline_seconds\":");
        ASCII(deadline_text, (Py_ssize_t)strlen(deadline_text));
    }
    if (trace_id != NULL) {
        LIT(",\"trace.id\":\"");
        STR(trace_id);
        LIT("\",\"span.id\":\"");
        STR(span_id);
        if (parent_id != NULL) {
            LIT("\",\"parent.id\":\"");
            STR(parent_id);
        }
        LIT("\"");
    }
    for (int i = 0; i < n_meta; i++) {
        if (i == 0)
            LIT(",\"grpc.request.metadata\":{");
        else
            LIT(",");
        STR(meta[i]);
    }
    if (n_meta > 0)
        LIT("}");
    LIT("}");

    {
        Py_ssize_t total = 0, pos = 0;
        Py_UCS4 maxchar = 127;
        for (int i = 0; i < np; i++) {
            total += parts[i].n;
            if (parts[i].u != NULL) {
                Py_UCS4 m = PyUnicode_MAX_CHAR_VALUE(parts[i].u);
                if (m > maxchar)
                    maxchar = m;
            }
        }
        result = PyUnicode_New(total, maxchar);
        if (result == NULL)
            goto done;
        {
            int kind = PyUnicode_KIND(result);
            void *data = PyUnicode_DATA(result);
            for (int i = 0; i < np; i++) {
                if (parts[i].u != NULL) {
                    if (kind == PyUnicode_1BYTE_KIND) {
                        memcpy((Py_UCS1 *)data + pos, PyUnicode_1BYTE_DATA(parts[i].u),
                               (size_t)parts[i].n);
                    } else if (PyUnicode_CopyCharacters(result, pos, parts[i].u, 0,
                                                        parts[i].n) < 0) {
                        Py_CLEAR(result);
                        goto done;
                    }
                } else if (kind == PyUnicode_1BYTE_KIND) {
                    memcpy((Py_UCS1 *)data + pos, parts[i].a, (size_t)parts[i].n);
                } else {
                    for (Py_ssize_t j = 0; j < parts[i].n; j++)
                        PyUnicode_WRITE(kind, data, pos + j, (Py_UCS4)(Py_UCS1)parts[i].a[j]);
                }
                pos += parts[i].n;
            }
        }
    }
    goto done;

delegate:
    PyErr_Clear();
    result = PyObject_CallMethodOneArg(self->py, s_line_python, record);
done:
    Py_XDECREF(code);
    Py_XDECREF(info);
    Py_XDECREF(pieces);
    Py_XDECREF(component);
    Py_XDECREF(peer);
    Py_XDECREF(peer_part);
    Py_XDECREF(deadline);
    Py_XDECREF(trace);
    Py_XDECREF(trace_id);
    Py_XDECREF(span_id);
    Py_XDECREF(parent_id);
    Py_XDECREF(metadata);
    while (n_meta > 0)
        Py_DECREF(meta[--n_meta]);
    Py_XDECREF(obj);
    Py_XDECREF(stamp);
    if (deadline_text != NULL)
        PyMem_Free(deadline_text);
    return result;
#undef GET
#undef GET_LL
#undef STR
#undef ASCII
#undef LIT
}

static int
get_ll_attr(PyObject *o, const char *name, long long *out)
{
    PyObject *v = PyObject_GetAttrString(o, name);
    if (v == NULL)
        return -1;
    if (!exact_nonneg(v, out) || *out <= 0) {
        Py_DECREF(v);
        PyErr_Format(PyExc_TypeError, "%s must be a positive int", name);
        return -1;
    }
    Py_DECREF(v);
    return 0;
}

#define SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))

/*
 * collector._core.resolve_deadline: CallDetails.deadline (absolute) -> remaining time at the
 * start, floored at 0; unreadable -> no deadline, and on_error("log:deadline"). 0 or -1.
 */
static int
resolve_deadline(LineEncoder *self, PyObject *record, PyObject *details)
{
    PyObject *end = SLOT(record, self->rec.end_wall_ns),
             *duration = SLOT(record, self->rec.duration_ns), *absolute = NULL,
             *start = NULL, *remaining = NULL;
    int r;
    Py_CLEAR(SLOT(record, self->rec.call_details)); /* the caller holds details */
    SLOT(record, self->rec.call_details) = Py_NewRef(Py_None);
    if (end == NULL || duration == NULL) {
        PyErr_SetString(PyExc_AttributeError, "record without end_wall_ns / duration_ns");
        goto failed;
    }
    {
        PyObject *diff = PyNumber_Subtract(end, duration);
        if (diff == NULL)
            goto failed;
        start = PyNumber_TrueDivide(diff, s_1e9);
        Py_DECREF(diff);
    }
    if (start == NULL || (absolute = PyObject_GetAttr(details, s_deadline)) == NULL
        || (remaining = PyNumber_Subtract(absolute, start)) == NULL)
        goto failed;
    /* max(remaining, 0.0) */
    if ((r = PyObject_RichCompareBool(s_zero, remaining, Py_GT)) < 0)
        goto failed;
    if (r)
        Py_SETREF(remaining, Py_NewRef(s_zero));
    Py_XSETREF(SLOT(record, self->rec.deadline), remaining);
    Py_DECREF(start);
    Py_DECREF(absolute);
    return 0;
failed:
    Py_XDECREF(start);
    Py_XDECREF(absolute);
    Py_XDECREF(remaining);
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1; /* KeyboardInterrupt and the like are not the record's fault */
    PyErr_Clear();
    {
        PyObject *res = PyObject_CallOneArg(self->on_error, s_log_deadline);
        if (res == NULL)
            return -1;
        Py_DECREF(res);
    }
    return 0;
}

/*
 * line(record): what the log writer does per call record for a line sink, in one step: the
 * deadline from the kept CallDetails, then the line with the allowed metadata taken from the
 * raw pairs (see CallLineEncoder.line_python, the reference).
 */
static PyObject *
LineEncoder_line(LineEncoder *self, PyObject *record)
{
    PyObject *details;
    if (Py_TYPE(record) != (PyTypeObject *)self->record_type)
        return PyObject_CallMethodOneArg(self->py, s_line_python, record);
    details = SLOT(record, self->rec.call_details);
    if (details != NULL && details != Py_None) {
        int r;
        Py_INCREF(details);
        r = resolve_deadline(self, record, details);
        Py_DECREF(details);
        if (r < 0)
            return NULL;
    }
    return encode_impl(self, record);
}

/* The instance offset of a __slots__ member of type, or -1 with an error. */
static Py_ssize_t
slot_offset(PyObject *type, PyObject *name)
{
    PyObject *descr = PyDict_GetItemWithError(((PyTypeObject *)type)->tp_dict, name);
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)
        || ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "%s has no __slots__ member %R",
                         ((PyTypeObject *)type)->tp_name, name);
        return -1;
    }
    return ((PyMemberDescrObject *)descr)->d_member->offset;
}

static int
record_slots(PyObject *type, RecordSlots *slots)
{
    PyObject *names = PyObject_GetAttr(type, s_slots);
    int complete;
    if (names == NULL)
        return -1;
    complete = PyTuple_Check(names) && PyTuple_GET_SIZE(names) == RECORD_SLOTS;
    Py_DECREF(names);
    if (!complete) { /* a slot added in Python but not here: refuse, Python is used */
        PyErr_SetString(PyExc_TypeError, "CallRecord.__slots__ changed: update RecordSlots");
        return -1;
    }
#define OFFSET(name)                                                         \
    if ((slots->name = slot_offset(type, s_##name)) < 0)                     \
        return -1;
    OFFSET(call_details);
    OFFSET(code);
    OFFSET(deadline);
    OFFSET(details);
    OFFSET(duration_ns);
    OFFSET(end_wall_ns);
    OFFSET(error);
    OFFSET(ids_token);
    OFFSET(info);
    OFFSET(metadata);
    OFFSET(msgs_in);
    OFFSET(msgs_out);
    OFFSET(otel_span);
    OFFSET(peer);
    OFFSET(start_ns);
    OFFSET(trace);
#undef OFFSET
    return 0;
}

static int
LineEncoder_init(LineEncoder *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"encoder", "record_type", "statics", "peers", "span_ids",
                             "trace_ids", "parse_traceparent", "traceparent_of", "allow",
                             "on_error", NULL};
    PyObject *py, *record_type, *statics, *peers, *span_ids, *trace_ids, *parse, *tp_of, *allow,
        *on_error, *pieces;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O!O!OOOOO!O", kwlist, &py, &PyType_Type,
                                     &record_type, &PyDict_Type, &statics, &PyDict_Type, &peers,
                                     &span_ids, &trace_ids, &parse, &tp_of, &PyDict_Type, &allow,
                                     &on_error))
        return -1;
    if (record_slots(record_type, &self->rec) < 0)
        return -1;
    if ((pieces = PyDict_New()) == NULL)
        return -1;
    Py_XSETREF(self->pieces, pieces);
    Py_XSETREF(self->allow, Py_NewRef(allow));
    Py_XSETREF(self->on_error, Py_NewRef(on_error));
    Py_XSETREF(self->record_type, Py_NewRef(record_type));
    if (get_ll_attr(span_ids, "_per", &self->span_per) < 0
        || get_ll_attr(span_ids, "_hex_digits", &self->span_width) < 0
        || get_ll_attr(trace_ids, "_per", &self->trace_per) < 0
        || get_ll_attr(trace_ids, "_hex_digits", &self->trace_width) < 0)
        return -1;
    Py_XSETREF(self->py, Py_NewRef(py));
    Py_XSETREF(self->statics, Py_NewRef(statics));
    Py_XSETREF(self->peers, Py_NewRef(peers));
    Py_XSETREF(self->span_ids, Py_NewRef(span_ids));
    Py_XSETREF(self->trace_ids, Py_NewRef(trace_ids));
    Py_XSETREF(self->parse_traceparent, Py_NewRef(parse));
    Py_XSETREF(self->traceparent_of, Py_NewRef(tp_of));
    self->second = -1;
    Py_CLEAR(self->second_text);
    return 0;
}

static int
LineEncoder_traverse(LineEncoder *self, visitproc visit, void *arg)
{
    Py_VISIT(self->py);
    Py_VISIT(self->record_type);
    Py_VISIT(self->allow);
    Py_VISIT(self->pieces);
    Py_VISIT(self->on_error);
    Py_VISIT(self->statics);
    Py_VISIT(self->peers);
    Py_VISIT(self->span_ids);
    Py_VISIT(self->trace_ids);
    Py_VISIT(self->parse_traceparent);
    Py_VISIT(self->traceparent_of);
    return 0;
}

static int
LineEncoder_clear(LineEncoder *self)
{
    Py_CLEAR(self->py);
    Py_CLEAR(self->record_type);
    Py_CLEAR(self->allow);
    Py_CLEAR(self->pieces);
    Py_CLEAR(self->on_error);
    Py_CLEAR(self->statics);
    Py_CLEAR(self->peers);
    Py_CLEAR(self->span_ids);
    Py_CLEAR(self->trace_ids);
    Py_CLEAR(self->parse_traceparent);
    Py_CLEAR(self->traceparent_of);
    Py_CLEAR(self->second_text);
    return 0;
}

static void
LineEncoder_dealloc(LineEncoder *self)
{
    PyObject_GC_UnTrack(self);
    LineEncoder_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef LineEncoder_methods[] = {
    {"line", (PyCFunction)LineEncoder_line, METH_O,
     "line(record) -> str: deadline, then the line with raw metadata (see line_python)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LineEncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rpcscope._speedups.LineEncoder",
    .tp_basicsize = sizeof(LineEncoder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The access log's common line in C; see the module docstring.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)LineEncoder_init,
    .tp_dealloc = (destructor)LineEncoder_dealloc,
    .tp_traverse = (traverseproc)LineEncoder_traverse,
    .tp_clear = (inquiry)LineEncoder_clear,
    .tp_methods = LineEncoder_methods,
};


/* ---------------------------------------------------------------------------------------- */
/*
 * Folder: DeferredMetrics.drain's loop for the common items, in C. Why: the fold runs once
 * per call (about 5.5k instructions per call in Python, callgrind), for every config with
 * metrics. Same rule as the line encoder: the Python loop is the reference, and the first
 * item not of the common shape (any type or value the loop could trip on) stops this one;
 * it is put back and the Python loop takes it and the rest, so an error is counted exactly
 * where Python counts it.
 */
typedef struct {
    PyObject_HEAD
    PyObject *aggregate_type, *record_type, *info_type, *code_index;
    Py_ssize_t off_counts, off_sum, off_exemplars;            /* MethodAggregate */
    RecordSlots rec;                                           /* CallRecord */
    Py_ssize_t off_metrics, off_component;                     /* MethodInfo */
    Py_ssize_t started, received, sent, handled, buckets, unknown_code;
    int exemplars;
    Py_ssize_t n_bounds;
    double *bounds;
} Folder;

static PyObject *s_counts, *s_sum, *s_exemplars, *s_metrics, *s_popleft, *s_appendleft, *s_one;

/* counts[k] += delta, for an exact list whose item k is an exact int (checked by the caller). */
static int
add_count(PyObject *counts, Py_ssize_t k, PyObject *delta)
{
    PyObject *sum = PyNumber_Add(PyList_GET_ITEM(counts, k), delta);
    if (sum == NULL)
        return -1;
    Py_SETREF(PyList_GET_ITEM(counts, k), sum);
    return 0;
}

/*
 * The common case for one finished call, all checks first, then the updates (which cannot
 * fail but for memory). 1: folded; 0: not ours (nothing changed); -1: error.
 */
static int
fold_record(Folder *self, PyObject *item, PyObject *out, PyObject *components)
{
    PyObject *info, *agg, *counts, *code, *index, *msgs_in, *msgs_out, *duration, *sum,
        *exemplars, *trace, *end, *component;
    long long code_i, ns, end_ns = 0;
    double seconds;
    Py_ssize_t lo = 0, hi = self->n_bounds, need;
    int keep;
    info = SLOT(item, self->rec.info);
    if (info == NULL || Py_TYPE(info) != (PyTypeObject *)self->info_type)
        return 0;
    agg = SLOT(info, self->off_metrics);
    component = SLOT(info, self->off_component);
    if (agg == NULL || Py_TYPE(agg) != (PyTypeObject *)self->aggregate_type
        || component == NULL || !PyUnicode_CheckExact(component))
        return 0;
    counts = SLOT(agg, self->off_counts);
    sum = SLOT(agg, self->off_sum);
    exemplars = SLOT(agg, self->off_exemplars);
    need = self->buckets + self->n_bounds + 1;
    if (counts == NULL || !PyList_CheckExact(counts) || PyList_GET_SIZE(counts) < need
        || sum == NULL || !PyFloat_CheckExact(sum) || exemplars == NULL
        || !PyList_CheckExact(exemplars) || PyList_GET_SIZE(exemplars) < self->n_bounds + 1)
        return 0;
    code = SLOT(item, self->rec.code);
    msgs_in = SLOT(item, self->rec.msgs_in);
    msgs_out = SLOT(item, self->rec.msgs_out);
    duration = SLOT(item, self->rec.duration_ns);
    trace = SLOT(item, self->rec.trace);
    end = SLOT(item, self->rec.end_wall_ns);
    if (code == NULL || !PyUnicode_CheckExact(code) || msgs_in == NULL
        || !PyLong_CheckExact(msgs_in) || msgs_out == NULL || !PyLong_CheckExact(msgs_out)
        || duration == NULL || !exact_int(duration, -INT53, INT53, &ns) || trace == NULL
        || end == NULL || !PyLong_CheckExact(end))
        return 0;
    index = PyDict_GetItemWithError(self->code_index, code); /* exact str: no Python code */
    if (index == NULL) {
        if (PyErr_Occurred())
            return -1;
        code_i = self->unknown_code;
    } else if (!exact_nonneg(index, &code_i)) {
        return 0;
    }
    if (self->handled + code_i >= self->buckets)
        return 0;
    seconds = (double)ns / 1e9;
    while (lo < hi) { /* bisect_left */
        Py_ssize_t mid = (lo + hi) / 2;
        if (self->bounds[mid] < seconds)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* The four counts this call adds to are ints (as the Python loop's += needs). */
    if (!PyLong_CheckExact(PyList_GET_ITEM(counts, self->handled + code_i))
        || !PyLong_CheckExact(PyList_GET_ITEM(counts, self->received))
        || !PyLong_CheckExact(PyList_GET_ITEM(counts, self->sent))
        || !PyLong_CheckExact(PyList_GET_ITEM(counts, self->buckets + lo)))
        return 0;
    if (self->exemplars && trace != Py_None) {
        int overflow = 0;
        end_ns = PyLong_AsLongLongAndOverflow(end, &overflow);
        if (overflow || (end_ns == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
    }
    if (out != Py_None) {
        keep = PySet_Contains(components, component);
        if (keep < 0)
            return -1;
    } else {
        keep = 0;
    }
    /* What the Python loop does, in its order. */
    if (add_count(counts, self->handled + (Py_ssize_t)code_i, s_one) < 0
        || add_count(counts, self->received, msgs_in) < 0
        || add_count(counts, self->sent, msgs_out) < 0)
        return -1;
    {
        PyObject *new_sum = PyFloat_FromDouble(PyFloat_AS_DOUBLE(sum) + seconds);
        if (new_sum == NULL)
            return -1;
        Py_SETREF(SLOT(agg, self->off_sum), new_sum);
    }
    if (add_count(counts, self->buckets + lo, s_one) < 0)
        return -1;
    if (self->exemplars && trace != Py_None) {
        PyObject *s = PyFloat_FromDouble(seconds), *t = PyFloat_FromDouble((double)end_ns / 1e9),
                 *ex = (s && t) ? PyTuple_Pack(3, trace, s, t) : NULL;
        Py_XDECREF(s);
        Py_XDECREF(t);
        if (ex == NULL)
            return -1;
        Py_SETREF(PyList_GET_ITEM(exemplars, lo), ex);
    }
    if (keep && PyList_Append(out, item) < 0)
        return -1;
    return 1;
}

/* fold(pending, n, out, components) -> how many of the first n items were folded. */
static PyObject *
Folder_fold(Folder *self, PyObject *args)
{
    PyObject *pending, *out, *components, *popleft, *item = NULL;
    Py_ssize_t n, done = 0;
    if (!PyArg_ParseTuple(args, "OnOO", &pending, &n, &out, &components))
        return NULL;
    if (out != Py_None && !PyList_CheckExact(out)) {
        PyErr_SetString(PyExc_TypeError, "out must be a list or None");
        return NULL;
    }
    if (out != Py_None && !PyAnySet_Check(components))
        return PyLong_FromSsize_t(0);
    popleft = PyObject_GetAttr(pending, s_popleft);
    if (popleft == NULL)
        return NULL;
    while (done < n) {
        int r;
        item = PyObject_CallNoArgs(popleft);
        if (item == NULL)
            goto error;
        if (Py_TYPE(item) == (PyTypeObject *)self->aggregate_type) {
            PyObject *counts = SLOT(item, self->off_counts);
            if (counts == NULL || !PyList_CheckExact(counts)
                || PyList_GET_SIZE(counts) <= self->started
                || !PyLong_CheckExact(PyList_GET_ITEM(counts, self->started)))
                r = 0;
            else
                r = add_count(counts, self->started, s_one) < 0 ? -1 : 1;
        } else if (Py_TYPE(item) == (PyTypeObject *)self->record_type) {
            r = fold_record(self, item, out, components);
        } else {
            r = 0;
        }
        if (r < 0)
            goto error;
        if (r == 0) { /* put it back: the Python loop takes it from here */
            PyObject *res = PyObject_CallMethodOneArg(pending, s_appendleft, item);
            if (res == NULL)
                goto error;
            Py_DECREF(res);
            Py_CLEAR(item);
            break;
        }
        Py_CLEAR(item);
        done++;
    }
    Py_DECREF(popleft);
    return PyLong_FromSsize_t(done);
error:
    Py_XDECREF(item);
    Py_DECREF(popleft);
    return NULL;
}

static int
Folder_init(Folder *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"aggregate_type", "record_type", "info_type", "bounds",
                             "code_index", "exemplars", "layout", NULL};
    PyObject *agg_t, *rec_t, *info_t, *bounds, *code_index;
    int exemplars;
    Py_ssize_t started, received, sent, handled, buckets, unknown;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!O!p(nnnnnn)", kwlist, &PyType_Type,
                                     &agg_t, &PyType_Type, &rec_t, &PyType_Type, &info_t,
                                     &PyList_Type, &bounds, &PyDict_Type, &code_index,
                                     &exemplars, &started, &received, &sent, &handled,
                                     &buckets, &unknown))
        return -1;
#define OFFSET(field, type, name)                                             \
    if ((self->field = slot_offset(type, name)) < 0)                          \
        return -1;
    OFFSET(off_counts, agg_t, s_counts);
    OFFSET(off_sum, agg_t, s_sum);
    OFFSET(off_exemplars, agg_t, s_exemplars);
    OFFSET(off_metrics, info_t, s_metrics);
    OFFSET(off_component, info_t, s_component);
#undef OFFSET
    if (record_slots(rec_t, &self->rec) < 0)
        return -1;
    PyMem_Free(self->bounds);
    self->n_bounds = PyList_GET_SIZE(bounds);
    self->bounds = PyMem_Malloc(sizeof(double) * (size_t)(self->n_bounds + 1));
    if (self->bounds == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < self->n_bounds; i++) {
        PyObject *b = PyList_GET_ITEM(bounds, i);
        long long v;
        if (PyFloat_CheckExact(b)) {
            self->bounds[i] = PyFloat_AS_DOUBLE(b);
        } else if (exact_int(b, -INT53, INT53, &v)) {
            self->bounds[i] = (double)v;
        } else {
            PyErr_SetString(PyExc_TypeError, "bucket bounds must be floats or small ints");
            return -1;
        }
    }
    Py_XSETREF(self->aggregate_type, Py_NewRef(agg_t));
    Py_XSETREF(self->record_type, Py_NewRef(rec_t));
    Py_XSETREF(self->info_type, Py_NewRef(info_t));
    Py_XSETREF(self->code_index, Py_NewRef(code_index));
    self->exemplars = exemplars;
    self->started = started;
    self->received = received;
    self->sent = sent;
    self->handled = handled;
    self->buckets = buckets;
    self->unknown_code = unknown;
    return 0;
}

static int
Folder_traverse(Folder *self, visitproc visit, void *arg)
{
    Py_VISIT(self->aggregate_type);
    Py_VISIT(self->record_type);
    Py_VISIT(self->info_type);
    Py_VISIT(self->code_index);
    return 0;
}

static int
Folder_clear(Folder *self)
{
    Py_CLEAR(self->aggregate_type);
    Py_CLEAR(self->record_type);
    Py_CLEAR(self->info_type);
    Py_CLEAR(self->code_index);
    return 0;
}

static void
Folder_dealloc(Folder *self)
{
    PyObject_GC_UnTrack(self);
    Folder_clear(self);
    PyMem_Free(self->bounds);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Folder_methods[] = {
    {"fold", (PyCFunction)Folder_fold, METH_VARARGS,
     "fold(pending, n, out, components) -> int: how many of the first n items were folded."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FolderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rpcscope._speedups.Folder",
    .tp_basicsize = sizeof(Folder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "DeferredMetrics.drain's loop for the common items; see the comment above.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Folder_init,
    .tp_dealloc = (destructor)Folder_dealloc,
    .tp_traverse = (traverseproc)Folder_traverse,
    .tp_clear = (inquiry)Folder_clear,
    .tp_methods = Folder_methods,
};

/* ---------------------------------------------------------------------------------------- */
/*
 * ServerPath: a server call's start and finish on the request path (Pipeline.start_server,
 * and _server's finisher with Pipeline.finish), in C for the common case. Why: after the log
 * line and the fold moved here, the request path was the larger half of what rpcscope adds to
 * a call: about 16k instructions per sync call (callgrind over a fake context), mostly the
 * interpreter's frames for four Python functions that each do a little. The Python functions
 * stay the reference: start and finish first check everything they read (pure reads of the
 * pipeline, the context and grpc's per-call event and state), and any surprise (no deferred
 * metrics, an OTel span or the once-a-second provider check, a context of another shape, an
 * error or a status other than OK, a replaced queue) hands the whole call to Python, before
 * anything was changed. Only then are the effects applied (a record, one or two appends to
 * the deferred queue, the trace ids' context variable), which cannot fail but for memory; such
 * a failure is counted where Python counts it.
 */
typedef struct {
    PyObject_HEAD
    PyObject *pipeline, *record_type, *info_type, *deque_type, *deferred_type, *tracing_type,
        *append, *current_ids, *next_call_number, *perf_counter_ns, *time_ns, *monotonic,
        *python_start, *python_finish, *ok, *cancelled;
    int aio;
    Py_ssize_t off_deferred, off_keep_metadata, off_sink, off_tracing, off_errors; /* Pipeline */
    Py_ssize_t off_metrics;                                                       /* MethodInfo */
    Py_ssize_t off_pending, off_thread, off_max_pending;                    /* DeferredMetrics */
    Py_ssize_t off_tracer, off_next_check;                                  /* Tracing */
    RecordSlots rec; /* all of them: a record is made here without CallRecord.__init__ */
} ServerPath;

static PyObject *s_pending, *s_thread, *s_max_pending, *s_kick, *s_tracer, *s_next_check,
    *s_rpc_event, *s_invocation_metadata, *s_call, *s_peer_method, *s_time_remaining,
    *s_state, *s_client, *s_append, *s_record, *s_cancelled_method, *s_ok_code,
    *s_start_metrics, *s_start_tracing, *s_finish_deferred, *s_deferred_attr, *s_keep_metadata,
    *s_sink, *s_tracing, *s_errors, *s_zero_int;

#define NOT_OURS 1 /* a check failed: the Python reference takes the whole call */

/* pipeline.errors.record(where), as Python's ``except Exception: errors.record(where)``. */
static void
count_error(ServerPath *self, PyObject *where)
{
    PyObject *errors = SLOT(self->pipeline, self->off_errors), *res;
    PyErr_Clear();
    if (errors == NULL)
        return;
    res = PyObject_CallMethodOneArg(errors, s_record, where);
    if (res == NULL)
        PyErr_Clear(); /* the counter itself must never raise into an RPC */
    Py_XDECREF(res);
}

/* getattr(o, name) with AttributeError (or any error) cleared: NULL means "not ours". */
static PyObject *
read_attr(PyObject *o, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        PyErr_Clear();
    return v;
}

/* The deferred metrics' queue when it is a plain deque (new reference), else NULL. */
static PyObject *
plain_pending(ServerPath *self, PyObject **deferred)
{
    PyObject *pending;
    *deferred = SLOT(self->pipeline, self->off_deferred);
    if (*deferred == NULL || Py_TYPE(*deferred) != (PyTypeObject *)self->deferred_type)
        return NULL;
    pending = SLOT(*deferred, self->off_pending);
    if (pending == NULL || Py_TYPE(pending) != (PyTypeObject *)self->deque_type)
        return NULL;
    return Py_NewRef(pending);
}

/* pending.append(item) through deque.append itself (no attribute lookup): 0 or -1. */
static int
append_to(ServerPath *self, PyObject *pending, PyObject *item)
{
    PyObject *args[2] = {pending, item}, *res = PyObject_Vectorcall(self->append, args, 2, NULL);
    Py_XDECREF(res);
    return res == NULL ? -1 : 0;
}

/*
 * time.perf_counter_ns() / time_ns() / monotonic(), the clocks the Python path reads. On Linux
 * CPython reads them with clock_gettime (CLOCK_MONOTONIC for perf_counter and monotonic,
 * CLOCK_REALTIME for time), so we read the same clocks directly: a record started here and
 * finished in Python (or the reverse) measures on one clock. Elsewhere we call time's.
 */
static PyObject *
clock_ns(PyObject *fallback, int realtime)
{
#if defined(__linux__)
    struct timespec ts;
    if (clock_gettime(realtime ? CLOCK_REALTIME : CLOCK_MONOTONIC, &ts) == 0)
        return PyLong_FromLongLong((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
#else
    (void)realtime;
#endif
    return PyObject_CallNoArgs(fallback);
}

/* time.monotonic() >= limit: 1, 0, or -1 (error). */
static int
monotonic_reached(ServerPath *self, double limit)
{
    PyObject *now;
    int r;
#if defined(__linux__)
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0)
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 >= limit;
#endif
    if ((now = PyObject_CallNoArgs(self->monotonic)) == NULL)
        return -1;
    r = PyFloat_Check(now) ? PyFloat_AS_DOUBLE(now) >= limit : -1;
    Py_DECREF(now);
    return r;
}

/* The common case of Pipeline.start_server: a new record, or NULL (error, or *ours = 0). */
static PyObject *
start_fast(ServerPath *self, PyObject *info, PyObject *context, PyObject *metadata,
           int own_task, int *ours)
{
    PyObject *deferred, *pending = NULL, *sink, *tracing, *metrics = NULL, *start_ns = NULL,
        *md = NULL, *peer = NULL, *deadline = NULL, *details = NULL, *record = NULL;
    int need_log, keep_md;
    *ours = 0;
    if (Py_TYPE(info) != (PyTypeObject *)self->info_type
        || (pending = plain_pending(self, &deferred)) == NULL)
        return NULL;
    sink = SLOT(self->pipeline, self->off_sink);
    tracing = SLOT(self->pipeline, self->off_tracing);
    /* held: the reads below call Python code (grpc's), during which other threads run */
    metrics = Py_XNewRef(SLOT(info, self->off_metrics));
    need_log = sink != NULL && sink != Py_None;
    keep_md = SLOT(self->pipeline, self->off_keep_metadata) == Py_True;
    if (tracing == NULL || metrics == NULL)
        goto not_ours;
    if (tracing != Py_None) {
        /* Ids mode only, and not the second a provider is looked for. */
        PyObject *next;
        if (Py_TYPE(tracing) != (PyTypeObject *)self->tracing_type
            || SLOT(tracing, self->off_tracer) != Py_None
            || (next = SLOT(tracing, self->off_next_check)) == NULL || !PyFloat_CheckExact(next))
            goto not_ours;
        switch (monotonic_reached(self, PyFloat_AS_DOUBLE(next))) {
        case 0:
            break;
        case 1:
            goto not_ours;
        default:
            PyErr_Clear();
            goto not_ours;
        }
    }
    if ((start_ns = clock_ns(self->perf_counter_ns, 0)) == NULL)
        goto error;
    if (metadata == Py_None) {
        /* Sync: grpc's per-call event, as Pipeline.start_server reads it. */
        PyObject *event = read_attr(context, s_rpc_event);
        if (event == NULL || event == Py_None) {
            Py_XDECREF(event);
            goto not_ours;
        }
        md = read_attr(event, s_invocation_metadata);
        if (md != NULL && need_log) {
            PyObject *call = read_attr(event, s_call), *raw = NULL;
            if (call != NULL)
                raw = PyObject_CallMethodNoArgs(call, s_peer_method);
            if (raw != NULL && PyBytes_CheckExact(raw))
                peer = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw),
                                            "replace");
            if (peer != NULL)
                details = read_attr(event, s_call_details);
            PyErr_Clear();
            Py_XDECREF(call);
            Py_XDECREF(raw);
        }
        Py_DECREF(event);
        if (md == NULL || (need_log && details == NULL))
            goto not_ours;
    } else {
        md = Py_NewRef(metadata);
        if (need_log) {
            if ((peer = PyObject_CallMethodNoArgs(context, s_peer_method)) == NULL
                || (deadline = PyObject_CallMethodNoArgs(context, s_time_remaining)) == NULL) {
                PyErr_Clear();
                goto not_ours;
            }
        }
    }
    /* Checked: from here on, the effects (CallRecord.__init__'s defaults, then the start). */
    record = ((PyTypeObject *)self->record_type)->tp_alloc((PyTypeObject *)self->record_type, 0);
    if (record == NULL)
        goto error;
#define SET(slot, value) (SLOT(record, self->rec.slot) = Py_NewRef(value))
    SET(info, info);
    SET(start_ns, start_ns);
    SET(code, s_ok_code);
    SET(details, Py_None);
    SET(error, Py_None);
    SET(duration_ns, s_zero_int);
    SET(end_wall_ns, s_zero_int);
    SET(msgs_in, s_zero_int);
    SET(msgs_out, s_zero_int);
    SET(peer, peer != NULL ? peer : Py_None);
    SET(deadline, deadline != NULL ? deadline : Py_None);
    SET(call_details, details != NULL ? details : Py_None);
    SET(metadata, Py_None);
    SET(trace, Py_None);
    SET(ids_token, Py_None);
    SET(otel_span, Py_None);
    if (metrics != Py_None) {
        /* "started", counted in the next batch (Pipeline._started) */
        if (append_to(self, pending, metrics) < 0)
            count_error(self, s_start_metrics);
    }
    if (tracing != Py_None) {
        PyObject *number = PyObject_CallNoArgs(self->next_call_number), *trace = NULL, *token;
        int has_md = number != NULL ? PyObject_IsTrue(md) : 0;
        if (number != NULL && has_md >= 0)
            trace = PyTuple_Pack(2, has_md ? md : Py_None, number);
        if (trace != NULL && (token = PyContextVar_Set(self->current_ids, trace)) != NULL) {
            Py_SETREF(SLOT(record, self->rec.trace), Py_NewRef(trace));
            if (own_task)
                Py_DECREF(token);
            else
                Py_SETREF(SLOT(record, self->rec.ids_token), token);
        } else {
            count_error(self, s_start_tracing);
        }
        Py_XDECREF(number);
        Py_XDECREF(trace);
    }
    if (keep_md)
        Py_SETREF(SLOT(record, self->rec.metadata), Py_NewRef(md));
#undef SET
    *ours = 1;
    goto done;
not_ours:
    *ours = 0;
    goto done;
error:
    *ours = 1;
    Py_CLEAR(record);
done:
    Py_XDECREF(pending);
    Py_XDECREF(metrics);
    Py_XDECREF(start_ns);
    Py_XDECREF(md);
    Py_XDECREF(peer);
    Py_XDECREF(deadline);
    Py_XDECREF(details);
    return record;
}

/* start(info, context, metadata=None, own_task=False): Pipeline.start_server's signature. */
static PyObject *
ServerPath_start(ServerPath *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames == NULL && nargs >= 2 && nargs <= 4) {
        int ours, own_task = nargs > 3 ? PyObject_IsTrue(args[3]) : 0;
        PyObject *record;
        if (own_task < 0)
            return NULL;
        record = start_fast(self, args[0], args[1], nargs > 2 ? args[2] : Py_None, own_task,
                            &ours);
        if (ours || record != NULL)
            return record;
        PyErr_Clear();
    }
    return PyObject_Vectorcall(self->python_start, args, nargs, kwnames);
}

/* Whether the call ended OK (0), or not / unreadable (NOT_OURS): _finisher's status checks. */
static int
ended_ok(ServerPath *self, PyObject *context)
{
    PyObject *code, *flag;
    int bad;
    if (self->aio) {
        if ((code = PyObject_CallMethodNoArgs(context, s_code)) == NULL) {
            PyErr_Clear();
            return NOT_OURS;
        }
        bad = code != Py_None && code != self->ok;
        Py_DECREF(code);
        if (bad)
            return NOT_OURS;
        if ((flag = PyObject_CallMethodNoArgs(context, s_cancelled_method)) == NULL) {
            PyErr_Clear();
            return NOT_OURS;
        }
        bad = flag != Py_False;
        Py_DECREF(flag);
        return bad ? NOT_OURS : 0;
    }
    {
        /* Sync: grpc's per-call state, read directly as _finisher does. */
        PyObject *state = read_attr(context, s_state), *client;
        if (state == NULL || state == Py_None) {
            Py_XDECREF(state);
            return NOT_OURS;
        }
        code = read_attr(state, s_code);
        client = read_attr(state, s_client);
        Py_DECREF(state);
        bad = code == NULL || (code != Py_None && code != self->ok) || client == NULL
              || (client != Py_None
                  && (!PyUnicode_CheckExact(client)
                      || PyUnicode_Compare(client, self->cancelled) == 0));
        PyErr_Clear();
        Py_XDECREF(code);
        Py_XDECREF(client);
        return bad ? NOT_OURS : 0;
    }
}

/*
 * Pipeline.finish's ``thread is None or len(pending) > max_pending``: 1, 0, or -1 (error).
 * A max_pending that is not an int C can compare says 1: kick() checks both conditions again
 * itself, so an extra kick changes nothing.
 */
static int
needs_kick(ServerPath *self, PyObject *deferred, PyObject *pending)
{
    PyObject *thread = SLOT(deferred, self->off_thread),
             *limit = SLOT(deferred, self->off_max_pending);
    Py_ssize_t max;
    if (thread == NULL || limit == NULL) {
        PyErr_SetString(PyExc_AttributeError, "DeferredMetrics.thread/max_pending unset");
        return -1;
    }
    if (thread == Py_None || !PyLong_CheckExact(limit))
        return 1;
    max = PyLong_AsSsize_t(limit);
    if (max == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 1;
    }
    return PyObject_Length(pending) > max; /* an exact deque: cannot fail */
}

/* finish(record, context, error, unary_out=False): the server finisher's signature. */
static PyObject *
ServerPath_finish(ServerPath *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *record, *deferred, *pending = NULL, *start, *end = NULL, *wall = NULL,
        *duration = NULL, *token, *res;
    int unary_out;
    if (kwnames != NULL || nargs < 3 || nargs > 4)
        goto python;
    record = args[0];
    /* The status first: it may call Python code (grpc's), during which other threads run;
     * then the reads that call nothing. */
    if (Py_TYPE(record) != (PyTypeObject *)self->record_type || args[2] != Py_None
        || ended_ok(self, args[1]) != 0 || SLOT(record, self->rec.otel_span) != Py_None
        || (start = SLOT(record, self->rec.start_ns)) == NULL || !PyLong_CheckExact(start)
        || (pending = plain_pending(self, &deferred)) == NULL)
        goto python;
    unary_out = nargs > 3 ? PyObject_IsTrue(args[3]) : 0;
    if (unary_out < 0 || (end = clock_ns(self->perf_counter_ns, 0)) == NULL
        || (wall = clock_ns(self->time_ns, 1)) == NULL
        || (duration = PyNumber_Subtract(end, start)) == NULL) {
        PyErr_Clear();
        goto python;
    }
    /* Checked: the effects, in Pipeline.finish's order. */
    if (unary_out)
        Py_SETREF(SLOT(record, self->rec.msgs_out), Py_NewRef(s_one));
    Py_SETREF(SLOT(record, self->rec.duration_ns), duration);
    Py_SETREF(SLOT(record, self->rec.end_wall_ns), wall);
    token = SLOT(record, self->rec.ids_token);
    if (token != NULL && token != Py_None) {
        SLOT(record, self->rec.ids_token) = Py_NewRef(Py_None);
        /* Reset from another context (a generator finished on another thread or task)
         * fails; the variable dies with that context anyway. */
        if (PyContextVar_Reset(self->current_ids, token) < 0)
            PyErr_Clear();
        Py_DECREF(token);
    }
    /* Metrics and (via the batch) the access log: one append. */
    if (append_to(self, pending, record) < 0) {
        count_error(self, s_finish_deferred);
    } else {
        int kick = needs_kick(self, deferred, pending);
        if (kick != 0) {
            /* first call: start the thread; starved thread: fold here */
            res = kick > 0 ? PyObject_CallMethodNoArgs(deferred, s_kick) : NULL;
            if (res == NULL)
                count_error(self, s_finish_deferred);
            Py_XDECREF(res);
        }
    }
    Py_DECREF(pending);
    Py_DECREF(end);
    Py_RETURN_NONE;
python:
    Py_XDECREF(pending);
    Py_XDECREF(end);
    Py_XDECREF(wall);
    return PyObject_Vectorcall(self->python_finish, args, nargs, kwnames);
}

static int
ServerPath_init(ServerPath *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"pipeline", "record_type", "info_type", "deque_type",
                             "deferred_type", "tracing_type", "current_ids", "next_call_number",
                             "python_start", "python_finish", "aio", "ok", "cancelled", NULL};
    PyObject *pipeline, *rec_t, *info_t, *deque_t, *deferred_t, *tracing_t, *ids, *next,
        *py_start, *py_finish, *ok, *cancelled, *append, *time_mod, *perf, *wall, *mono;
    int aio;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O!O!O!O!O!OOOpOU", kwlist, &pipeline,
                                     &PyType_Type, &rec_t, &PyType_Type, &info_t, &PyType_Type,
                                     &deque_t, &PyType_Type, &deferred_t, &PyType_Type,
                                     &tracing_t, &PyContextVar_Type, &ids, &next, &py_start,
                                     &py_finish, &aio, &ok, &cancelled))
        return -1;
    if (record_slots(rec_t, &self->rec) < 0)
        return -1;
#define OFFSET(field, type, name)                                             \
    if ((self->field = slot_offset(type, name)) < 0)                          \
        return -1;
    OFFSET(off_deferred, (PyObject *)Py_TYPE(pipeline), s_deferred_attr);
    OFFSET(off_keep_metadata, (PyObject *)Py_TYPE(pipeline), s_keep_metadata);
    OFFSET(off_sink, (PyObject *)Py_TYPE(pipeline), s_sink);
    OFFSET(off_tracing, (PyObject *)Py_TYPE(pipeline), s_tracing);
    OFFSET(off_errors, (PyObject *)Py_TYPE(pipeline), s_errors);
    OFFSET(off_metrics, info_t, s_metrics);
    OFFSET(off_pending, deferred_t, s_pending);
    OFFSET(off_thread, deferred_t, s_thread);
    OFFSET(off_max_pending, deferred_t, s_max_pending);
    OFFSET(off_tracer, tracing_t, s_tracer);
    OFFSET(off_next_check, tracing_t, s_next_check);
#undef OFFSET
    if ((append = PyObject_GetAttr(deque_t, s_append)) == NULL)
        return -1;
    Py_XSETREF(self->append, append);
    /* time's clocks, for platforms where clock_ns cannot read them directly */
    if ((time_mod = PyImport_ImportModule("time")) == NULL)
        return -1;
    perf = PyObject_GetAttrString(time_mod, "perf_counter_ns");
    wall = PyObject_GetAttrString(time_mod, "time_ns");
    mono = PyObject_GetAttrString(time_mod, "monotonic");
    Py_DECREF(time_mod);
    if (perf == NULL || wall == NULL || mono == NULL) {
        Py_XDECREF(perf);
        Py_XDECREF(wall);
        Py_XDECREF(mono);
        return -1;
    }
    Py_XSETREF(self->pipeline, Py_NewRef(pipeline));
    Py_XSETREF(self->record_type, Py_NewRef(rec_t));
    Py_XSETREF(self->info_type, Py_NewRef(info_t));
    Py_XSETREF(self->deque_type, Py_NewRef(deque_t));
    Py_XSETREF(self->deferred_type, Py_NewRef(deferred_t));
    Py_XSETREF(self->tracing_type, Py_NewRef(tracing_t));
    Py_XSETREF(self->current_ids, Py_NewRef(ids));
    Py_XSETREF(self->next_call_number, Py_NewRef(next));
    Py_XSETREF(self->perf_counter_ns, perf);
    Py_XSETREF(self->time_ns, wall);
    Py_XSETREF(self->monotonic, mono);
    Py_XSETREF(self->python_start, Py_NewRef(py_start));
    Py_XSETREF(self->python_finish, Py_NewRef(py_finish));
    Py_XSETREF(self->ok, Py_NewRef(ok));
    Py_XSETREF(self->cancelled, Py_NewRef(cancelled));
    self->aio = aio;
    return 0;
}

#define SERVER_PATH_FIELDS(X)                                                            \
    X(pipeline) X(record_type) X(info_type) X(deque_type) X(deferred_type) X(tracing_type) \
    X(append) X(current_ids)                                                             \
    X(next_call_number) X(perf_counter_ns) X(time_ns) X(monotonic) X(python_start)       \
    X(python_finish) X(ok) X(cancelled)

static int
ServerPath_traverse(ServerPath *self, visitproc visit, void *arg)
{
#define VISIT(f) Py_VISIT(self->f);
    SERVER_PATH_FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int
ServerPath_clear(ServerPath *self)
{
#define CLEAR(f) Py_CLEAR(self->f);
    SERVER_PATH_FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void
ServerPath_dealloc(ServerPath *self)
{
    PyObject_GC_UnTrack(self);
    ServerPath_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef ServerPath_methods[] = {
    {"start", (PyCFunction)(void (*)(void))ServerPath_start, METH_FASTCALL | METH_KEYWORDS,
     "start(info, context, metadata=None, own_task=False) -> CallRecord (Pipeline.start_server)"},
    {"finish", (PyCFunction)(void (*)(void))ServerPath_finish, METH_FASTCALL | METH_KEYWORDS,
     "finish(record, context, error, unary_out=False) (the server finisher)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ServerPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rpcscope._speedups.ServerPath",
    .tp_basicsize = sizeof(ServerPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A server call's start and finish for the common case; see the comment above.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ServerPath_init,
    .tp_dealloc = (destructor)ServerPath_dealloc,
    .tp_traverse = (traverseproc)ServerPath_traverse,
    .tp_clear = (inquiry)ServerPath_clear,
    .tp_methods = ServerPath_methods,
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "rpcscope._speedups",
    .m_doc = "Optional C speedups for rpcscope's log writer; see _speedups.c.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m;
#define INTERN(var, text)                                 \
    if ((var = PyUnicode_InternFromString(text)) == NULL) \
        return NULL;
    INTERN(s_code, "code");
    INTERN(s_info, "info");
    INTERN(s_end_wall_ns, "end_wall_ns");
    INTERN(s_duration_ns, "duration_ns");
    INTERN(s_msgs_in, "msgs_in");
    INTERN(s_msgs_out, "msgs_out");
    INTERN(s_peer, "peer");
    INTERN(s_deadline, "deadline");
    INTERN(s_trace, "trace");
    INTERN(s_metadata, "metadata");
    INTERN(s_component, "component");
    INTERN(s_last, "_last");
    INTERN(s_id_of, "id_of");
    INTERN(s_template, "_template");
    INTERN(s_peer_fragment, "_peer");
    INTERN(s_timestamp_prefix, "_timestamp_prefix");
    INTERN(s_call_details, "call_details");
    INTERN(s_line_python, "line_python");
    INTERN(s_metadata_piece, "_metadata_piece");
    INTERN(s_log_deadline, "log:deadline");
    INTERN(s_redacted, "[REDACTED]");
    if ((s_zero = PyFloat_FromDouble(0.0)) == NULL || (s_1e9 = PyFloat_FromDouble(1e9)) == NULL)
        return NULL;
    INTERN(s_counts, "counts");
    INTERN(s_sum, "sum");
    INTERN(s_exemplars, "exemplars");
    INTERN(s_metrics, "metrics");
    INTERN(s_popleft, "popleft");
    INTERN(s_appendleft, "appendleft");
    INTERN(s_pending, "pending");
    INTERN(s_thread, "thread");
    INTERN(s_max_pending, "max_pending");
    INTERN(s_kick, "kick");
    INTERN(s_tracer, "tracer");
    INTERN(s_next_check, "next_check");
    INTERN(s_rpc_event, "_rpc_event");
    INTERN(s_invocation_metadata, "invocation_metadata");
    INTERN(s_call, "call");
    INTERN(s_peer_method, "peer");
    INTERN(s_time_remaining, "time_remaining");
    INTERN(s_state, "_state");
    INTERN(s_client, "client");
    INTERN(s_append, "append");
    INTERN(s_record, "record");
    INTERN(s_cancelled_method, "cancelled");
    INTERN(s_ok_code, "OK");
    INTERN(s_start_metrics, "start:metrics");
    INTERN(s_start_tracing, "start:tracing");
    INTERN(s_finish_deferred, "finish:deferred");
    INTERN(s_deferred_attr, "_deferred");
    INTERN(s_keep_metadata, "_keep_metadata");
    INTERN(s_sink, "sink");
    INTERN(s_tracing, "tracing");
    INTERN(s_errors, "errors");
    INTERN(s_details, "details");
    INTERN(s_error, "error");
    INTERN(s_ids_token, "ids_token");
    INTERN(s_otel_span, "otel_span");
    INTERN(s_start_ns, "start_ns");
    INTERN(s_slots, "__slots__");
#undef INTERN
    if ((s_one = PyLong_FromLong(1)) == NULL || (s_zero_int = PyLong_FromLong(0)) == NULL)
        return NULL;
    if (PyType_Ready(&LineEncoderType) < 0 || PyType_Ready(&FolderType) < 0
        || PyType_Ready(&ServerPathType) < 0)
        return NULL;
    m = PyModule_Create(&speedups_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "LineEncoder", (PyObject *)&LineEncoderType) < 0
        || PyModule_AddObjectRef(m, "Folder", (PyObject *)&FolderType) < 0
        || PyModule_AddObjectRef(m, "ServerPath", (PyObject *)&ServerPathType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
