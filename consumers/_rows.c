/* Rows of text put together from a template and columns, in C (consumers/scoring.py PredictionEncoder).
 *
 * A prediction's JSON is the same text for every row of a batch but for a few values (its ride, its source
 * event, its numbers), each already JSON text: row i is parts[0] + columns[0][i] + parts[1] + ... +
 * parts[k]. In Python that is one `%` format per row (~0.3 µs, with its argument tuple), more than
 * msgspec's whole encode of the row; here it is one allocation and k + 1 copies.
 *
 * This module knows nothing of JSON: the caller hands it parts and values that are JSON text already
 * (str values are copied as their UTF-8), a column of numbers or times as the inside of its JSON array.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

/* The UTF-8 of a str or the bytes of a bytes object, without a copy; NULL with TypeError otherwise. */
static const char *
text_of(PyObject *item, Py_ssize_t *size)
{
    if (PyBytes_Check(item)) {
        *size = PyBytes_GET_SIZE(item);
        return PyBytes_AS_STRING(item);
    }
    if (PyUnicode_Check(item)) {
        return PyUnicode_AsUTF8AndSize(item, size);
    }
    PyErr_Format(PyExc_TypeError, "expected str or bytes, got %.100s", Py_TYPE(item)->tp_name);
    return NULL;
}

/* One column: a list of str or bytes, or one bytes object of comma-separated items (the inside of a JSON
 * array whose items hold no comma: numbers, times), split here rather than into n bytes objects. */
typedef struct {
    PyObject *list;        /* the list, or NULL for joined items */
    const char *joined;    /* the joined items' text */
    Py_ssize_t *starts;    /* item i is joined[starts[i] : starts[i + 1] - 1] (n + 1 entries) */
} Column;

static Py_ssize_t
column_rows(PyObject *column, Column *out, Py_ssize_t c)
{
    out->list = NULL;
    out->joined = NULL;
    out->starts = NULL;
    if (PyList_Check(column)) {
        out->list = column;
        return PyList_GET_SIZE(column);
    }
    if (!PyBytes_Check(column)) {
        PyErr_Format(PyExc_TypeError, "columns[%zd]: expected a list or bytes, got %.100s", c,
                     Py_TYPE(column)->tp_name);
        return -1;
    }
    const char *text = PyBytes_AS_STRING(column);
    const Py_ssize_t size = PyBytes_GET_SIZE(column);
    Py_ssize_t n = 1;
    for (const char *at = text; (at = memchr(at, ',', (size_t)(text + size - at))) != NULL; at++) {
        n++;
    }
    out->starts = PyMem_Malloc((size_t)(n + 1) * sizeof(Py_ssize_t));
    if (out->starts == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t row = 0;
    out->starts[0] = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        if (text[i] == ',') {
            out->starts[++row] = i + 1;
        }
    }
    out->starts[n] = size + 1;
    out->joined = text;
    return n;
}

/* Row i's text of a column; NULL with an exception for an item that is neither str nor bytes. */
static const char *
item_of(const Column *column, Py_ssize_t i, Py_ssize_t *size)
{
    if (column->list == NULL) {
        *size = column->starts[i + 1] - 1 - column->starts[i];
        return column->joined + column->starts[i];
    }
    return text_of(PyList_GET_ITEM(column->list, i), size);
}

static PyObject *
interleave(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *parts, *columns;
    if (!PyArg_ParseTuple(args, "O!O!:interleave", &PyTuple_Type, &parts, &PyTuple_Type, &columns)) {
        return NULL;
    }
    const Py_ssize_t k = PyTuple_GET_SIZE(columns);
    if (PyTuple_GET_SIZE(parts) != k + 1) {
        PyErr_Format(PyExc_ValueError, "%zd columns need %zd parts, got %zd", k, k + 1,
                     PyTuple_GET_SIZE(parts));
        return NULL;
    }
    Py_ssize_t fixed = 0;
    for (Py_ssize_t p = 0; p <= k; p++) {
        PyObject *part = PyTuple_GET_ITEM(parts, p);
        if (!PyBytes_Check(part)) {
            PyErr_Format(PyExc_TypeError, "parts[%zd]: expected bytes, got %.100s", p, Py_TYPE(part)->tp_name);
            return NULL;
        }
        fixed += PyBytes_GET_SIZE(part);
    }
    PyObject *rows = NULL;
    Column *view = PyMem_Calloc((size_t)(k > 0 ? k : 1), sizeof(Column));
    if (view == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t n = 0;
    for (Py_ssize_t c = 0; c < k; c++) {
        const Py_ssize_t length = column_rows(PyTuple_GET_ITEM(columns, c), &view[c], c);
        if (length < 0) {
            goto done;
        }
        if (c == 0) {
            n = length;
        }
        else if (length != n) {
            PyErr_Format(PyExc_ValueError, "columns[%zd]: %zd rows, columns[0] has %zd", c, length, n);
            goto done;
        }
    }
    rows = PyList_New(n);
    if (rows == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t size = fixed;
        for (Py_ssize_t c = 0; c < k; c++) {
            Py_ssize_t length;
            if (item_of(&view[c], i, &length) == NULL) {
                Py_CLEAR(rows);
                goto done;
            }
            size += length;
        }
        PyObject *row = PyBytes_FromStringAndSize(NULL, size);
        if (row == NULL) {
            Py_CLEAR(rows);
            goto done;
        }
        char *at = PyBytes_AS_STRING(row);
        for (Py_ssize_t c = 0; c <= k; c++) {
            PyObject *part = PyTuple_GET_ITEM(parts, c);
            memcpy(at, PyBytes_AS_STRING(part), (size_t)PyBytes_GET_SIZE(part));
            at += PyBytes_GET_SIZE(part);
            if (c < k) {
                Py_ssize_t length;
                /* (read above: a str's UTF-8 is cached by then, so this cannot fail) */
                const char *text = item_of(&view[c], i, &length);
                memcpy(at, text, (size_t)length);
                at += length;
            }
        }
        PyList_SET_ITEM(rows, i, row);
    }
done:
    for (Py_ssize_t c = 0; c < k; c++) {
        PyMem_Free(view[c].starts);
    }
    PyMem_Free(view);
    return rows;
}

static PyMethodDef methods[] = {
    {"interleave", interleave, METH_VARARGS,
     "interleave(parts, columns)\n--\n\n"
     "Row i of the result is parts[0] + columns[0][i] + parts[1] + ... + parts[k], as bytes: parts a tuple of\n"
     "k + 1 bytes, columns a tuple of k columns of equal length, each a list of str (copied as UTF-8) or bytes,\n"
     "or one bytes object of comma-separated items (b'1.5,2.0' is the column [b'1.5', b'2.0'])."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "consumers._rows",
    .m_doc = "Rows of text from a template and columns (consumers/scoring.py PredictionEncoder).",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__rows(void)
{
    return PyModule_Create(&module);
}
