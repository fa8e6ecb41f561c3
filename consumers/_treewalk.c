/* The served boosters' tree walk (consumers/compiled.py `_raw_predict`), in C instead of numba: importing
 * numba costs ~141 MB of RSS (LLVM), half the scoring service's budget.
 *
 * It is scikit-learn's predictor transcribed (sklearn/ensemble/_hist_gradient_boosting/_predictor.pyx): the
 * same comparisons and the same float64 sum in the same order (baseline, then tree 1, 2, ...), so its
 * numbers are scikit-learn's bit for bit. That is why setup.py builds it with -ffp-contract=off and never
 * with -ffast-math.
 *
 * The arrays' own indices (children, features, category rows) are trusted: flatten_trees builds them, and
 * checking every node on every call would cost a one-ride predict more than the walk (so X must have the
 * booster's columns: CompiledBooster.predict checks its width). What is cheap to check (dtypes,
 * dimensions, lengths, roots) is, so a wrong argument raises ValueError instead of reading past a buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Whether a buffer's struct format is the one-letter code `codes` names, in native byte order: numpy
 * writes "d", "i", "?"; "<d" or "=d" are the same layout on a little-endian machine, ">d" is not. */
static int
format_is(const Py_buffer *view, const char *codes)
{
    const char *format = view->format ? view->format : "B";
    if (*format == '@' || *format == '=') {
        format++;
    }
#if PY_LITTLE_ENDIAN
    else if (*format == '<') {
        format++;
    }
#endif
    return format[0] != '\0' && format[1] == '\0' && strchr(codes, format[0]) != NULL;
}

/* A view of `obj` with `ndim` dimensions of `itemsize`-byte items whose format is one of `codes`, or -1
 * with ValueError naming the argument. `flags`: PyBUF_C_CONTIGUOUS, or PyBUF_STRIDES for any layout. */
static int
get_array(PyObject *obj, Py_buffer *view, const char *name, const char *codes, Py_ssize_t itemsize,
          int ndim, const char *dtype, int flags)
{
    if (PyObject_GetBuffer(obj, view, flags | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: expected a %s%s %s array, got %.100s", name,
                     flags & PyBUF_WRITABLE ? "writable " : "",
                     (flags & PyBUF_C_CONTIGUOUS) == PyBUF_C_CONTIGUOUS ? "C-contiguous" : "strided", dtype,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (view->itemsize != itemsize || !format_is(view, codes) || view->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: expected a %d-D %s array, got %d-D of format '%s'", name, ndim,
                     dtype, view->ndim, view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static Py_ssize_t
length(const Py_buffer *view)
{
    return view->len / view->itemsize;
}

/* Tree by tree over all rows, not row by row over all trees: one tree's nodes (a few KB) stay in the L1
 * cache for the whole batch; each row's sum still runs baseline, tree 1, tree 2, ... */
static void
walk_trees(const char *X, Py_ssize_t row_stride, Py_ssize_t column_stride, Py_ssize_t n_rows,
           const int32_t *feature, const double *threshold, const int32_t *right,
           const unsigned char *missing_left, const int32_t *category_row, const double *value,
           const int32_t *roots, Py_ssize_t n_trees, const uint32_t *categories, double baseline, double *out)
{
    for (Py_ssize_t i = 0; i < n_rows; i++) {
        out[i] = baseline;
    }
    for (Py_ssize_t t = 0; t < n_trees; t++) {
        const int32_t root = roots[t];
        for (Py_ssize_t i = 0; i < n_rows; i++) {
            const char *row = X + i * row_stride;
            int32_t node = root;
            int32_t column = feature[node];
            while (column >= 0) {
                const double x = *(const double *)(row + column * column_stride);
                int go_left;
                if (isnan(x)) {
                    go_left = missing_left[node] != 0;
                }
                else if (category_row[node] >= 0) {
                    if (x < 0) {
                        go_left = missing_left[node] != 0;
                    }
                    else {
                        /* scikit-learn's own cast to its binned dtype (the same C expression). */
                        const uint8_t category = (uint8_t)x;
                        const uint32_t *bits = categories + (Py_ssize_t)category_row[node] * 8;
                        const uint32_t word = bits[category >> 5];
                        go_left = ((word >> (category & 31)) & 1) != 0;
                    }
                }
                else {
                    go_left = x <= threshold[node];
                }
                /* Depth-first numbering (checked by flatten_trees): the left child is the next node. */
                node = go_left ? node + 1 : right[node];
                column = feature[node];
            }
            out[i] += value[node];
        }
    }
}

enum { X_, FEATURE, THRESHOLD, RIGHT, MISSING_LEFT, CATEGORY_ROW, VALUE, ROOTS, CATEGORIES, OUT, N_ARRAYS };

static PyObject *
walk(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *objects[N_ARRAYS];
    double baseline;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOdO:walk", &objects[X_], &objects[FEATURE], &objects[THRESHOLD],
                          &objects[RIGHT], &objects[MISSING_LEFT], &objects[CATEGORY_ROW], &objects[VALUE],
                          &objects[ROOTS], &objects[CATEGORIES], &baseline, &objects[OUT])) {
        return NULL;
    }
    static const struct {
        const char *name, *codes, *dtype;
        Py_ssize_t itemsize;
        int ndim, flags;
    } spec[N_ARRAYS] = {
        /* Rows in any layout, as numba took them: CompiledBooster.predict's column reordering
         * (rows[:, order]) makes a Fortran-ordered copy, and copying it again costs more than reading it
         * strided. */
        [X_] = {"X", "d", "float64", 8, 2, PyBUF_STRIDES},
        [FEATURE] = {"feature", "il", "int32", 4, 1, PyBUF_C_CONTIGUOUS},
        [THRESHOLD] = {"threshold", "d", "float64", 8, 1, PyBUF_C_CONTIGUOUS},
        [RIGHT] = {"right", "il", "int32", 4, 1, PyBUF_C_CONTIGUOUS},
        [MISSING_LEFT] = {"missing_left", "?", "bool", 1, 1, PyBUF_C_CONTIGUOUS},
        [CATEGORY_ROW] = {"category_row", "il", "int32", 4, 1, PyBUF_C_CONTIGUOUS},
        [VALUE] = {"value", "d", "float64", 8, 1, PyBUF_C_CONTIGUOUS},
        [ROOTS] = {"roots", "il", "int32", 4, 1, PyBUF_C_CONTIGUOUS},
        [CATEGORIES] = {"categories", "IL", "uint32", 4, 2, PyBUF_C_CONTIGUOUS},
        [OUT] = {"out", "d", "float64", 8, 1, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE},
    };
    Py_buffer views[N_ARRAYS];
    int acquired = 0;
    PyObject *result = NULL;
    for (; acquired < N_ARRAYS; acquired++) {
        if (get_array(objects[acquired], &views[acquired], spec[acquired].name, spec[acquired].codes,
                      spec[acquired].itemsize, spec[acquired].ndim, spec[acquired].dtype,
                      spec[acquired].flags) < 0) {
            goto done;
        }
    }
    const Py_ssize_t n_rows = views[X_].shape[0];
    const Py_ssize_t n_nodes = length(&views[FEATURE]);
    if (length(&views[OUT]) != n_rows) {
        PyErr_Format(PyExc_ValueError, "out: %zd items for %zd rows", length(&views[OUT]), n_rows);
        goto done;
    }
    for (int i = THRESHOLD; i <= VALUE; i++) {
        if (length(&views[i]) != n_nodes) {
            PyErr_Format(PyExc_ValueError, "%s: %zd items, feature has %zd", spec[i].name,
                         length(&views[i]), n_nodes);
            goto done;
        }
    }
    if (views[CATEGORIES].shape[1] != 8) {
        PyErr_Format(PyExc_ValueError, "categories: rows of %zd words, expected 8 (256 bits)",
                     views[CATEGORIES].shape[1]);
        goto done;
    }
    const Py_ssize_t n_trees = length(&views[ROOTS]);
    const int32_t *roots = views[ROOTS].buf;
    for (Py_ssize_t t = 0; t < n_trees; t++) {
        if (roots[t] < 0 || roots[t] >= n_nodes) {
            PyErr_Format(PyExc_ValueError, "roots: tree %zd starts at node %d of %zd", t, (int)roots[t],
                         n_nodes);
            goto done;
        }
    }
    /* The walk touches no Python object: the batch job's two predict threads run it side by side. */
    Py_BEGIN_ALLOW_THREADS
    walk_trees(views[X_].buf, views[X_].strides[0], views[X_].strides[1], n_rows, views[FEATURE].buf,
               views[THRESHOLD].buf, views[RIGHT].buf, views[MISSING_LEFT].buf, views[CATEGORY_ROW].buf,
               views[VALUE].buf, roots, n_trees, views[CATEGORIES].buf, baseline, views[OUT].buf);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    while (acquired > 0) {
        PyBuffer_Release(&views[--acquired]);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS,
     "walk(X, feature, threshold, right, missing_left, category_row, value, roots, categories, baseline, "
     "out)\n--\n\n"
     "Add each row's leaf values of every tree to baseline, into out (consumers/compiled.py TreeArrays)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "consumers._treewalk",
    .m_doc = "The compiled tree walk consumers/compiled.py predicts with.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__treewalk(void)
{
    return PyModule_Create(&module);
}
