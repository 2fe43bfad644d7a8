// Number columns (shoal/wire/number_column.hpp) to and from Python lists:
// _core.encode_numbers(list) and _core.decode_numbers(buffer), used by
// python/shoal/_oob.py for map chunks and their results.
//
// Both run with the GIL held and call no Python code while they walk a list
// (exact ints and floats only: no __index__, no __float__), so the list
// cannot change under them.
#include <cstdint>
#include <span>

#include "common.hpp"
#include "shoal/wire/number_column.hpp"

namespace shoal::py {
namespace {

// The list as a column, or None when its items are not all exact ints that
// fit in 64 bits, or all exact floats (bool and other int subclasses keep
// their type only through pickle).
nb::object encode_numbers(nb::handle obj) {
  PyObject* list = obj.ptr();
  if (!PyList_CheckExact(list) || PyList_GET_SIZE(list) == 0) return nb::none();
  const auto count = static_cast<std::size_t>(PyList_GET_SIZE(list));
  PyObject* first = PyList_GET_ITEM(list, 0);
  column::Kind kind;
  if (PyLong_CheckExact(first)) {
    kind = column::Kind::int64;
  } else if (PyFloat_CheckExact(first)) {
    kind = column::Kind::float64;
  } else {
    return nb::none();
  }
  nb::object out = nb::steal(PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(column::encoded_size(count))));
  if (!out.is_valid()) throw nb::python_error();
  auto* bytes = reinterpret_cast<std::byte*>(PyBytes_AS_STRING(out.ptr()));
  column::write_header(bytes, kind, count);
  std::byte* values = bytes + column::kHeaderSize;
  if (kind == column::Kind::int64) {
    for (std::size_t i = 0; i < count; ++i) {
      PyObject* item = PyList_GET_ITEM(list, static_cast<Py_ssize_t>(i));
      if (!PyLong_CheckExact(item)) return nb::none();
      int overflow = 0;
      const long long v = PyLong_AsLongLongAndOverflow(item, &overflow);
      if (overflow != 0) return nb::none();  // beyond 64 bits: pickle keeps every digit
      column::write_value(values, i, static_cast<std::int64_t>(v));
    }
  } else {
    for (std::size_t i = 0; i < count; ++i) {
      PyObject* item = PyList_GET_ITEM(list, static_cast<Py_ssize_t>(i));
      if (!PyFloat_CheckExact(item)) return nb::none();
      column::write_value(values, i, PyFloat_AS_DOUBLE(item));
    }
  }
  return out;
}

// A new list from a column; ValueError if `data` is not one.
nb::list decode_numbers(nb::handle data) {
  Py_buffer buffer;
  if (PyObject_GetBuffer(data.ptr(), &buffer, PyBUF_SIMPLE) != 0) throw nb::python_error();
  struct Release {
    Py_buffer* b;
    ~Release() { PyBuffer_Release(b); }
  } release{&buffer};
  const auto view = column::read({static_cast<const std::byte*>(buffer.buf), static_cast<std::size_t>(buffer.len)});
  if (!view) throw nb::value_error("not a well-formed number column");
  nb::object list = nb::steal(PyList_New(static_cast<Py_ssize_t>(view->count)));
  if (!list.is_valid()) throw nb::python_error();
  for (std::size_t i = 0; i < view->count; ++i) {
    PyObject* item = view->kind == column::Kind::int64 ? PyLong_FromLongLong(view->int_at(i))
                                                       : PyFloat_FromDouble(view->float_at(i));
    if (item == nullptr) throw nb::python_error();  // the list frees the items set so far
    PyList_SET_ITEM(list.ptr(), static_cast<Py_ssize_t>(i), item);
  }
  return nb::borrow<nb::list>(list);
}

}  // namespace

void bind_column(nb::module_& m) {
  m.attr("NUMBER_COLUMN_MAGIC") = nb::bytes(column::kMagic.data(), column::kMagic.size());
  m.def("encode_numbers", &encode_numbers, nb::arg("items"),
        "The list as a number column (bytes), or None unless every item is an exact int\n"
        "within 64 bits, or every item an exact float.");
  m.def("decode_numbers", &decode_numbers, nb::arg("data"),
        "A new list of the numbers in a column made by encode_numbers; ValueError if `data` is not one.");
}

}  // namespace shoal::py
