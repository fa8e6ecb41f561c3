/* Two passes over a micro-batch in C, for the columnar decoder (shared/columnar.py).
 *
 * numeric_columns: a batch's attributes as float64 columns.
 *
 * The column rules and the feature adapters read a few numeric attributes of every event of a batch. One
 * `np.fromiter(map(attrgetter(name), events))` per attribute is a C loop already, but each pays an iterator
 * chain and a float object per value, and a time's `datetime.timestamp()` builds a timedelta: together ~1 µs
 * an event for a ride_started batch. Here each value is read once and written as a double.
 *
 * Values: an int or float (or anything with __float__) as `float(value)`; a datetime as `value.timestamp()`,
 * computed here for one in UTC before 2255 (the rest ask the datetime). `datetime.timestamp()` of an aware datetime is
 * (its UTC microseconds since the epoch) / 10**6, Python's correctly rounded integer division; below 2**53
 * microseconds the integer is exact as a double and IEEE division is correctly rounded too, so the two are
 * the same double (tests/unit/test_batch_passes.py holds them equal over generated times).
 *
 * doubtful_rows: the payloads msgspec and pydantic might read differently, which the decoder hands to
 * pydantic: one with a backslash (a JSON escape), or with a time of more than 6 fractional digits (the
 * bytes regex \d:\d\d\.\d{7}: msgspec rounds the 7th digit, pydantic truncates it). The regex over the
 * joined batch cost ~0.15 µs an event, most of it stopping at every "." of every number.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <structmember.h>

#include <string.h>

/* Days from 1970-01-01 to year-month-day of the proleptic Gregorian calendar (H. Hinnant's days_from_civil). */
static long long
days_from_civil(long long y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const long long era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

/* Up to 2**53 every integer is exact as a double (past it, years after 2255, the datetime is asked). */
#define EXACT_MICROS (1LL << 53)

/* `value` as the double its column holds; -1 with an exception set when it has none. */
static int
as_double(PyObject *value, double *out)
{
    if (PyFloat_CheckExact(value)) {
        *out = PyFloat_AS_DOUBLE(value);
        return 0;
    }
    if (PyDateTime_Check(value)) {
        PyObject *tz = PyDateTime_DATE_GET_TZINFO(value);
        if (tz == PyDateTime_TimeZone_UTC) {
            const long long seconds =
                days_from_civil(PyDateTime_GET_YEAR(value), PyDateTime_GET_MONTH(value),
                                PyDateTime_GET_DAY(value)) * 86400LL +
                PyDateTime_DATE_GET_HOUR(value) * 3600LL + PyDateTime_DATE_GET_MINUTE(value) * 60LL +
                PyDateTime_DATE_GET_SECOND(value);
            const long long micros = seconds * 1000000LL + PyDateTime_DATE_GET_MICROSECOND(value);
            if (micros <= EXACT_MICROS && micros >= -EXACT_MICROS) {
                *out = (double)micros / 1e6;
                return 0;
            }
        }
        PyObject *stamp = PyObject_CallMethod(value, "timestamp", NULL);
        if (stamp == NULL) {
            return -1;
        }
        *out = PyFloat_AsDouble(stamp);
        Py_DECREF(stamp);
        return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
    }
    *out = PyFloat_AsDouble(value);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* The slot `name` of instances of `type` when the generic attribute lookup would read it from there (a
 * member descriptor of an object type, which wins over any instance dict), else NULL: ask getattr. */
static PyMemberDef *
slot_member(PyTypeObject *type, PyObject *name)
{
    if (type->tp_getattro != PyObject_GenericGetAttr || !PyUnicode_Check(name)) {
        return NULL;
    }
    PyObject *descr = _PyType_Lookup(type, name); /* borrowed */
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        return NULL;
    }
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    return member->type == T_OBJECT_EX || member->type == T_OBJECT ? member : NULL;
}

/* numeric_columns(objects, names) -> bytearray: len(names) rows of len(objects) doubles, row j holding
 * every object's attribute names[j]. */
static PyObject *
numeric_columns(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "numeric_columns(objects, names) takes 2 arguments");
        return NULL;
    }
    PyObject *objects = PySequence_Fast(args[0], "objects: expected a sequence");
    if (objects == NULL) {
        return NULL;
    }
    if (!PyTuple_Check(args[1])) {
        Py_DECREF(objects);
        PyErr_SetString(PyExc_TypeError, "names: expected a tuple of str");
        return NULL;
    }
    PyObject *names = args[1];
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(objects);
    const Py_ssize_t k = PyTuple_GET_SIZE(names);
    PyObject *out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)sizeof(double) * n * k);
    if (out == NULL) {
        Py_DECREF(objects);
        return NULL;
    }
    double *cells = (double *)PyByteArray_AS_STRING(out);
    PyObject **items = PySequence_Fast_ITEMS(objects);
    /* The member descriptors of the last type seen (a batch's objects are mostly of one: msgspec Structs,
     * whose fields are slots): read straight from the slot, not through a lookup per attribute. */
    PyMemberDef **members = PyMem_Calloc((size_t)(k ? k : 1), sizeof(PyMemberDef *));
    if (members == NULL) {
        Py_DECREF(objects);
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    PyTypeObject *members_of = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyTypeObject *type = Py_TYPE(items[i]);
        if (type != members_of) {
            members_of = type;
            for (Py_ssize_t j = 0; j < k; j++) {
                members[j] = slot_member(type, PyTuple_GET_ITEM(names, j));
            }
        }
        for (Py_ssize_t j = 0; j < k; j++) {
            PyObject *value = members[j] != NULL
                                  ? PyMember_GetOne((const char *)items[i], members[j])
                                  : PyObject_GetAttr(items[i], PyTuple_GET_ITEM(names, j));
            if (value == NULL) {
                goto fail;
            }
            const int failed = as_double(value, &cells[j * n + i]);
            Py_DECREF(value);
            if (failed) {
                goto fail;
            }
        }
    }
    PyMem_Free(members);
    Py_DECREF(objects);
    return out;
fail:
    PyMem_Free(members);
    Py_DECREF(objects);
    Py_DECREF(out);
    return NULL;
}

static int
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Whether text holds a backslash, or a digit, ':', two digits, '.' and seven digits. */
static int
is_doubtful(const char *text, Py_ssize_t size)
{
    if (memchr(text, '\\', (size_t)size) != NULL) {
        return 1;
    }
    const char *end = text + size;
    const char *at = text;
    while (end - at >= 8) {  /* a '.' followed by seven more bytes can start no later than end - 8 */
        const char *dot = memchr(at, '.', (size_t)(end - at - 7));
        if (dot == NULL) {
            return 0;
        }
        if (dot - text >= 4 && is_digit(dot[-1]) && is_digit(dot[-2]) && dot[-3] == ':' &&
            is_digit(dot[-4])) {
            int digits = 0;
            while (digits < 7 && is_digit(dot[1 + digits])) {
                digits++;
            }
            if (digits == 7) {
                return 1;
            }
        }
        at = dot + 1;
    }
    return 0;
}

/* doubtful_rows(payloads) -> list of the rows (ints) of the bytes payloads that are doubtful. */
static PyObject *
doubtful_rows(PyObject *module, PyObject *payloads_arg)
{
    PyObject *payloads = PySequence_Fast(payloads_arg, "payloads: expected a sequence");
    if (payloads == NULL) {
        return NULL;
    }
    PyObject *rows = PyList_New(0);
    if (rows == NULL) {
        Py_DECREF(payloads);
        return NULL;
    }
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(payloads);
    PyObject **items = PySequence_Fast_ITEMS(payloads);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_Check(items[i])) {
            PyErr_Format(PyExc_TypeError, "payloads[%zd]: expected bytes, got %.100s", i,
                         Py_TYPE(items[i])->tp_name);
            goto fail;
        }
        if (is_doubtful(PyBytes_AS_STRING(items[i]), PyBytes_GET_SIZE(items[i]))) {
            PyObject *row = PyLong_FromSsize_t(i);
            if (row == NULL || PyList_Append(rows, row) < 0) {
                Py_XDECREF(row);
                goto fail;
            }
            Py_DECREF(row);
        }
    }
    Py_DECREF(payloads);
    return rows;
fail:
    Py_DECREF(payloads);
    Py_DECREF(rows);
    return NULL;
}

static PyMethodDef methods[] = {
    {"doubtful_rows", doubtful_rows, METH_O,
     "doubtful_rows(payloads) -> rows whose text holds a backslash or a time with a 7th fractional digit"},
    {"numeric_columns", (PyCFunction)(void (*)(void))numeric_columns, METH_FASTCALL,
     "numeric_columns(objects, names) -> bytearray of len(names) x len(objects) float64 values"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_batch", NULL, 0, methods};

PyMODINIT_FUNC
PyInit__batch(void)
{
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
