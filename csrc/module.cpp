// The Python module object of snnops._C. Importing it runs the TORCH_LIBRARY_IMPL
// registrations of the kernels in csrc/cpu; it also reports which CPU code path runs.
#include <Python.h>

extern "C" const char* snnops_cpu_isa();

static PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(snnops_cpu_isa());
}

static PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS,
     "The instruction set the CPU kernels use: 'avx2' or 'generic'."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
