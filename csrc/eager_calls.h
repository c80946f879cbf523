// The functions of the Python module qlayers._C: the layer operators' eager calls (eager_calls.cpp).
#pragma once

#include <Python.h>

namespace qlayers {
namespace eager {

// The module's method table, ended by a null entry.
PyMethodDef* module_methods();

}  // namespace eager
}  // namespace qlayers
