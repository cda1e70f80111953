// The Python module object of snnops._C. Importing it runs the TORCH_LIBRARY_IMPL
// registrations of the kernels in csrc/cpu; it also reports which CPU code path runs.
#include <Python.h>

#include <cstddef>

extern "C" const char* snnops_cpu_isa();
extern "C" size_t snnops_cpu_cache_release();
extern "C" void snnops_cpu_cache_stats(size_t out[5]);
extern "C" void snnops_cpu_cache_global(int on);
extern "C" int snnops_cpu_cache_is_global();

static PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(snnops_cpu_isa());
}

static PyObject* cpu_cache_release(PyObject*, PyObject*) {
  return PyLong_FromSize_t(snnops_cpu_cache_release());
}

static PyObject* cpu_cache_stats(PyObject*, PyObject*) {
  size_t s[5];
  snnops_cpu_cache_stats(s);
  return Py_BuildValue("{s:n,s:n,s:n,s:n,s:n}", "allocated_bytes", (Py_ssize_t)s[0], "cached_bytes",
                       (Py_ssize_t)s[1], "hits", (Py_ssize_t)s[2], "misses", (Py_ssize_t)s[3],
                       "cap_bytes", (Py_ssize_t)s[4]);
}

static PyObject* cpu_cache_global(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  snnops_cpu_cache_global(on);
  Py_RETURN_NONE;
}

static PyObject* cpu_cache_is_global(PyObject*, PyObject*) {
  return PyBool_FromLong(snnops_cpu_cache_is_global());
}

static PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS,
     "The instruction set the CPU kernels use: 'avx512', 'avx2' or 'generic'."},
    {"cpu_cache_release", cpu_cache_release, METH_NOARGS,
     "Free the cached CPU blocks of snnops outputs; returns the bytes freed."},
    {"cpu_cache_stats", cpu_cache_stats, METH_NOARGS,
     "Bytes of snnops outputs alive and cached, cache hits and misses, and the cap."},
    {"cpu_cache_global", cpu_cache_global, METH_O,
     "True: every CPU tensor allocates through the block cache; False: torch's default allocator."},
    {"cpu_cache_is_global", cpu_cache_is_global, METH_NOARGS,
     "Whether every CPU tensor allocates through the block cache."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
