// Pickles of plain values (shoal/wire/scalar_pickle.hpp) from Python objects:
// _core.pickle_call(args, kwargs) for a submit's arguments and
// _core.pickle_value(value) for any payload (payload.pack()'s first try: a
// worker's result, a map's chunk), used by python/shoal/wire/payload.py,
// runtime/engine.py and worker/loop.py.
//
// Both walk exact types only (no subclass, no __index__, no __reduce__) with
// the GIL held and call no Python code, so nothing they walk can change under
// them; anything else answers None and goes to pickle as before.
#include "common.hpp"
#include "shoal/wire/scalar_pickle.hpp"

namespace shoal::py {
namespace {

using scalar_pickle::Writer;

// How deep tuples and dicts may nest inside the value written (a call's
// arguments are one level down already).
constexpr int kMaxDepth = 2;

// The objects pickle memoizes (str, bytes, non-empty tuples, lists, dicts) in the
// order they were written: the memo's indices. A value with more of them
// than this goes to pickle (the lookup is a scan).
class Memo {
 public:
  static constexpr std::size_t kMax = 64;
  // The object's memo index if it was written before; -1 if not.
  int find(PyObject* obj) const {
    for (std::size_t i = 0; i < size_; ++i)
      if (seen_[i] == obj) return static_cast<int>(i);
    return -1;
  }
  bool add(PyObject* obj) {
    if (size_ == kMax) return false;
    seen_[size_++] = obj;
    return true;
  }

 private:
  PyObject* seen_[kMax];
  std::size_t size_ = 0;
};

bool write_fresh(Writer& w, Memo& memo, PyObject* obj, int depth);

// Writes `obj`; false, with the Writer left unusable, unless `obj` is a plain value.
// What pickle memoizes is memoized here too: once written, later copies are memo gets.
bool write(Writer& w, Memo& memo, PyObject* obj, int depth) {
  const bool memoized = PyUnicode_CheckExact(obj) || PyBytes_CheckExact(obj) || PyDict_CheckExact(obj) ||
                        PyList_CheckExact(obj) || (PyTuple_CheckExact(obj) && PyTuple_GET_SIZE(obj) > 0);
  if (!memoized) return write_fresh(w, memo, obj, depth);
  if (const int index = memo.find(obj); index >= 0) {
    w.memo_get(static_cast<std::uint32_t>(index));
    return true;
  }
  if (PyDict_CheckExact(obj) || PyList_CheckExact(obj))
    return write_fresh(w, memo, obj, depth);  // memoized before their items, as pickle does
  if (!write_fresh(w, memo, obj, depth) || !memo.add(obj)) return false;
  w.memoize();
  return true;
}

// The items of an exact tuple or list, one level further down. No Python code
// runs while they are walked (exact types only), so a list cannot change size
// under the loop.
bool write_items(Writer& w, Memo& memo, PyObject* sequence, int depth) {
  PyObject** items = PySequence_Fast_ITEMS(sequence);
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
  for (Py_ssize_t i = 0; i < n; ++i)
    if (!write(w, memo, items[i], depth - 1)) return false;
  return true;
}

bool write_fresh(Writer& w, Memo& memo, PyObject* obj, int depth) {
  if (obj == Py_None) {
    w.none();
  } else if (obj == Py_True || obj == Py_False) {
    w.boolean(obj == Py_True);
  } else if (PyLong_CheckExact(obj)) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow != 0) return false;  // beyond 64 bits: pickle writes every digit
    w.integer(v);
  } else if (PyFloat_CheckExact(obj)) {
    w.real(PyFloat_AS_DOUBLE(obj));
  } else if (PyUnicode_CheckExact(obj)) {
    Py_ssize_t n = 0;
    const char* utf8 = PyUnicode_AsUTF8AndSize(obj, &n);
    if (utf8 == nullptr) {  // lone surrogates: pickle writes them with "surrogatepass"
      PyErr_Clear();
      return false;
    }
    if (static_cast<std::size_t>(n) > scalar_pickle::kMaxLength) return false;
    w.text({utf8, static_cast<std::size_t>(n)});
  } else if (PyBytes_CheckExact(obj)) {
    const auto n = static_cast<std::size_t>(PyBytes_GET_SIZE(obj));
    if (n > scalar_pickle::kMaxLength) return false;
    w.data({PyBytes_AS_STRING(obj), n});
  } else if (depth > 0 && PyTuple_CheckExact(obj)) {
    const auto n = static_cast<std::size_t>(PyTuple_GET_SIZE(obj));
    w.tuple_begin(n);
    if (!write_items(w, memo, obj, depth)) return false;
    w.tuple_end(n);
  } else if (depth > 0 && PyList_CheckExact(obj)) {
    const auto n = static_cast<std::size_t>(PyList_GET_SIZE(obj));
    if (!memo.add(obj)) return false;
    w.list_begin(n);
    if (!write_items(w, memo, obj, depth)) return false;
    w.list_end(n);
  } else if (depth > 0 && PyDict_CheckExact(obj)) {
    const auto n = static_cast<std::size_t>(PyDict_GET_SIZE(obj));
    if (!memo.add(obj)) return false;
    w.dict_begin(n);
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(obj, &pos, &key, &value))
      if (!write(w, memo, key, 0) || !write(w, memo, value, depth - 1)) return false;
    w.dict_end(n);
  } else {
    return false;
  }
  return true;
}

nb::object finished(Writer& w) {
  const std::string_view pickle = w.finish();
  return nb::bytes(pickle.data(), pickle.size());
}

nb::object pickle_call(nb::handle args, nb::handle kwargs) {
  if (!PyTuple_CheckExact(args.ptr()) || !PyDict_CheckExact(kwargs.ptr())) return nb::none();
  Writer w;
  Memo memo;
  w.tuple_begin(2);
  if (!write(w, memo, args.ptr(), kMaxDepth) || !write(w, memo, kwargs.ptr(), kMaxDepth)) return nb::none();
  w.tuple_end(2);
  return finished(w);
}

nb::object pickle_value(nb::handle value) {
  Writer w;
  Memo memo;
  if (!write(w, memo, value.ptr(), kMaxDepth)) return nb::none();
  return finished(w);
}

}  // namespace

void bind_scalar_pickle(nb::module_& m) {
  m.def("pickle_call", &pickle_call, nb::arg("args").none(), nb::arg("kwargs").none(),
        "pickle.dumps((args, kwargs), 5) as pickle.loads reads it, or None unless both hold only None, bools,\n"
        "ints within 64 bits, floats, str and bytes (in tuples, lists and dicts two levels deep).");
  m.def("pickle_value", &pickle_value, nb::arg("value").none(),
        "pickle.dumps(value, 5) as pickle.loads reads it, or None unless the value is one of pickle_call's.");
}

}  // namespace shoal::py
