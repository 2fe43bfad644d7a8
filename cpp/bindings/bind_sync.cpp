// Process-shared synchronization primitives as Python base classes. python/shoal/sync.py
// subclasses them (adding pickling, reprs and the Python-only parts), so the hot
// methods (acquire, release, __enter__, __exit__) stay C calls with no Python frame.
//
// GIL discipline: the engine's logic runs with the GIL held (it never blocks
// there); whenever it must block it goes through `block_for_python`, which waits
// in slices without the GIL and raises KeyboardInterrupt between slices.
#include <nanobind/stl/string.h>

#include <new>
#include <string>
#include <system_error>

#include "common.hpp"
#include "shoal/ipc/barrier.hpp"
#include "shoal/ipc/condition.hpp"
#include "shoal/ipc/event.hpp"
#include "shoal/ipc/lock.hpp"
#include "shoal/ipc/semaphore.hpp"
#include "shoal/ipc/shared_object.hpp"

namespace shoal::py {
namespace {

// Python exception types created at import (module attributes keep them alive).
PyObject* owner_died_warning = nullptr;    // shoal.OwnerDiedWarning
PyObject* lock_not_owned_error = nullptr;  // shoal.LockNotOwnedError
PyObject* broken_barrier_error = nullptr;  // threading.BrokenBarrierError

bool block_for_python(const Deadline& deadline, const Attempt& attempt) {
  std::optional<double> timeout;
  if (auto left = deadline.remaining()) timeout = std::chrono::duration<double>(*left).count();
  return wait_interruptibly(timeout, attempt);
}
const Blocker kPythonBlocker = block_for_python;

// Sets the Python error for the C++ exception being handled (the engine's error
// types as module.cpp and this file's translator map them).
void set_python_error_from_current_exception() {
  try {
    throw;
  } catch (nb::python_error& e) {
    e.restore();
  } catch (const NotOwnerError& e) {
    PyErr_SetString(lock_not_owned_error, e.what());
  } catch (const SemaphoreOverflowError& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::system_error& e) {
    PyErr_SetObject(PyExc_OSError, nb::make_tuple(e.code().value(), e.what()).ptr());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  } catch (...) {
    PyErr_SetString(PyExc_RuntimeError, "unknown C++ exception");
  }
}

// The (block=True, timeout=None) arguments of multiprocessing's acquire(), parsed
// from a vectorcall. Returns false with a Python error set on bad arguments.
struct AcquireArgs {
  bool block = true;
  std::optional<double> timeout;

  bool parse(PyObject* const* args, Py_ssize_t nargsf, PyObject* kwnames) {
    const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject* slots[2] = {nullptr, nullptr};  // block, timeout
    if (nargs > 2) {
      PyErr_Format(PyExc_TypeError, "acquire() takes at most 2 arguments (%zd given)", nargs);
      return false;
    }
    for (Py_ssize_t i = 0; i < nargs; ++i) slots[i] = args[i];
    const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; ++i) {
      PyObject* key = PyTuple_GET_ITEM(kwnames, i);
      const int which = PyUnicode_CompareWithASCIIString(key, "block") == 0     ? 0
                        : PyUnicode_CompareWithASCIIString(key, "timeout") == 0 ? 1
                                                                                : -1;
      if (which < 0 || slots[which]) {
        PyErr_Format(PyExc_TypeError, "acquire() got %s keyword argument '%U'",
                     which < 0 ? "an unexpected" : "multiple values for", key);
        return false;
      }
      slots[which] = args[nargs + i];
    }
    if (slots[0]) {
      const int t = PyObject_IsTrue(slots[0]);
      if (t < 0) return false;
      block = t != 0;
    }
    if (slots[1] && slots[1] != Py_None) {
      const double seconds = PyFloat_AsDouble(slots[1]);
      if (seconds == -1.0 && PyErr_Occurred()) return false;
      timeout = seconds;
    }
    return true;
  }
};

// Installs `def` as a method of `cls` that receives the C++ object. Used for the
// few hot methods, where nanobind's general dispatch (keyword and default-argument
// handling) would cost more than the lock operation itself.
template <class T, PyObject* (*Body)(T&, PyObject* const*, Py_ssize_t, PyObject*)>
PyObject* fast_method(PyObject* self, PyObject* const* args, Py_ssize_t nargsf, PyObject* kwnames) {
  if (!nb::inst_ready(self)) {
    PyErr_SetString(PyExc_TypeError, "object is not initialized (did a subclass skip __init__?)");
    return nullptr;
  }
  try {
    return Body(*nb::inst_ptr<T>(self), args, nargsf, kwnames);
  } catch (...) {
    set_python_error_from_current_exception();
    return nullptr;
  }
}

void add_fast_method(nb::handle cls, PyMethodDef* def) {
  nb::object descr = nb::steal(PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(cls.ptr()), def));
  if (!descr.is_valid()) throw nb::python_error();
  nb::setattr(cls, def->ml_name, descr);
}

bool no_arguments(const char* name, Py_ssize_t nargsf, PyObject* kwnames) {
  if (PyVectorcall_NARGS(nargsf) == 0 && (!kwnames || PyTuple_GET_SIZE(kwnames) == 0)) return true;
  PyErr_Format(PyExc_TypeError, "%s() takes no arguments", name);
  return false;
}

struct PyLock {
  SharedObject<ProcessLock> lock;
  bool previous_owner_died = false;  // set by the most recent acquire that recovered the lock

  // Records how the lock was taken; on recovery from a dead holder, warns. Returns
  // false if the warning was turned into an exception (now pending in Python).
  bool note(LockResult result) {
    previous_owner_died = result == LockResult::previous_owner_died;
    if (!previous_owner_died) return true;
    const std::string message = std::string(lock->recursive() ? "RLock" : "Lock") + " '" + lock.name() +
                                "': its previous holder died while holding it; the state it protects may be "
                                "inconsistent";
    return PyErr_WarnEx(owner_died_warning, message.c_str(), 1) == 0;
  }

  bool acquire(bool block, std::optional<double> timeout) {
    LockResult result = lock->try_acquire();  // with the GIL: the uncontended path costs no release
    if (result == LockResult::timed_out) {
      if (!block) return false;
      result = lock->acquire(Deadline::from_timeout(timeout), kPythonBlocker);
      if (result == LockResult::timed_out) return false;
    }
    if (!note(result)) {
      // The caller sees an exception, so it must not be left holding the lock.
      lock->release();
      throw nb::python_error();
    }
    return true;
  }
  void release() { lock->release(); }
};

void init_lock(PyLock* self, bool recursive, std::optional<std::string> attach) {
  if (!attach) {
    new (self) PyLock{SharedObject<ProcessLock>::create(recursive)};
    return;
  }
  auto lock = SharedObject<ProcessLock>::attach(*attach);
  if (lock->recursive() != recursive)
    throw std::invalid_argument("shared-memory segment '" + *attach + "' holds " +
                                (lock->recursive() ? "an RLock, not a Lock" : "a Lock, not an RLock"));
  new (self) PyLock{std::move(lock)};
}

struct PySemaphore {
  SharedObject<Semaphore> sem;

  bool acquire(bool block, std::optional<double> timeout) {
    if (sem->try_acquire()) return true;
    if (!block) return false;
    return wait_interruptibly(timeout, [&](const Deadline& d) { return sem->acquire(d); });
  }
  void release() { sem->release(); }
};

void init_semaphore(PySemaphore* self, long long value, bool bounded, std::optional<std::string> attach) {
  if (attach) {
    new (self) PySemaphore{SharedObject<Semaphore>::attach(*attach)};
    return;
  }
  if (value < 0) throw std::invalid_argument("semaphore initial value must be >= 0");
  if (value > Semaphore::kMaxValue)
    throw std::invalid_argument("semaphore initial value must be <= " + std::to_string(Semaphore::kMaxValue));
  const auto v = static_cast<uint32_t>(value);
  new (self) PySemaphore{SharedObject<Semaphore>::create(v, bounded ? v : Semaphore::kMaxValue)};
}

// The hot methods of Lock/RLock and Semaphore/BoundedSemaphore, as raw vectorcalls.
template <class T>
PyObject* fast_acquire(T& self, PyObject* const* args, Py_ssize_t nargsf, PyObject* kwnames) {
  AcquireArgs a;
  if (!a.parse(args, nargsf, kwnames)) return nullptr;
  return PyBool_FromLong(self.acquire(a.block, a.timeout));
}
template <class T>
PyObject* fast_enter(T& self, PyObject* const*, Py_ssize_t nargsf, PyObject* kwnames) {
  if (!no_arguments("__enter__", nargsf, kwnames)) return nullptr;
  self.acquire(true, std::nullopt);
  Py_RETURN_TRUE;
}
template <class T>
PyObject* fast_release(T& self, PyObject* const*, Py_ssize_t nargsf, PyObject* kwnames) {
  if (!no_arguments("release", nargsf, kwnames)) return nullptr;
  self.release();
  Py_RETURN_NONE;
}
template <class T>
PyObject* fast_exit(T& self, PyObject* const*, Py_ssize_t, PyObject*) {
  self.release();  // whatever the exception arguments; exceptions are not swallowed
  Py_RETURN_NONE;
}

template <class T>
PyCFunction as_cfunction(PyObject* (*f)(PyObject*, PyObject* const*, Py_ssize_t, PyObject*)) {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(f));
}

// One table per class; PyDescr_NewMethod keeps pointers into it, hence static storage.
template <class T>
PyMethodDef acquire_methods[] = {
    {"acquire", as_cfunction<T>(fast_method<T, fast_acquire<T>>), METH_FASTCALL | METH_KEYWORDS,
     "acquire($self, /, block=True, timeout=None)\n--\n\n"
     "Acquire; with block=False, or a timeout that passes first, return False instead."},
    {"release", as_cfunction<T>(fast_method<T, fast_release<T>>), METH_FASTCALL | METH_KEYWORDS,
     "release($self, /)\n--\n\nRelease."},
    {"__enter__", as_cfunction<T>(fast_method<T, fast_enter<T>>), METH_FASTCALL | METH_KEYWORDS,
     "__enter__($self, /)\n--\n\nAcquire, waiting as long as it takes; return True."},
    {"__exit__", as_cfunction<T>(fast_method<T, fast_exit<T>>), METH_FASTCALL | METH_KEYWORDS,
     "__exit__($self, /, *exc_info)\n--\n\nRelease."},
};

// CPython specializes a call to a method descriptor only when the instance's type
// is exactly the descriptor's class, so each Python subclass gets its own copies
// (sync.py installs them from __init_subclass__), except of methods it overrides.
template <class T>
void add_acquire_methods(nb::handle cls) {
  if (!PyType_Check(cls.ptr()) || !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(cls.ptr()),
                                                     reinterpret_cast<PyTypeObject*>(nb::type<T>().ptr())))
    throw nb::type_error("expected a subclass");
  PyObject* own = reinterpret_cast<PyTypeObject*>(cls.ptr())->tp_dict;
  for (PyMethodDef& def : acquire_methods<T>) {
    if (cls.is(nb::type<T>()) || !PyDict_GetItemString(own, def.ml_name)) add_fast_method(cls, &def);
  }
}

struct PyEvent {
  SharedObject<Event> event;
};

struct PyCondition {
  SharedObject<Condition> cond;
  PyLock* lock;  // kept alive by the Python object (keep_alive and the `_lock` attribute)
};

struct PyBarrier {
  SharedObject<Barrier> barrier;
};

void register_exceptions(nb::module_& m) {
  owner_died_warning = PyErr_NewExceptionWithDoc(
      "shoal.OwnerDiedWarning",
      "A lock was acquired after its previous holder died while holding it (the data it protects may be "
      "half-updated).",
      PyExc_RuntimeWarning, nullptr);
  if (!owner_died_warning) throw nb::python_error();
  m.attr("OwnerDiedWarning") = nb::steal(owner_died_warning);

  // Both a RuntimeError (as threading raises) and a ValueError (as multiprocessing.Lock raises).
  nb::object bases = nb::make_tuple(nb::handle(PyExc_RuntimeError), nb::handle(PyExc_ValueError));
  lock_not_owned_error = PyErr_NewExceptionWithDoc(
      "shoal.LockNotOwnedError",
      "Releasing, waiting on or notifying through a lock the calling thread does not hold. A subclass of "
      "both RuntimeError (like threading) and ValueError (like multiprocessing.Lock).",
      bases.ptr(), nullptr);
  if (!lock_not_owned_error) throw nb::python_error();
  m.attr("LockNotOwnedError") = nb::steal(lock_not_owned_error);

  nb::object broken = nb::module_::import_("threading").attr("BrokenBarrierError");
  broken_barrier_error = broken.ptr();
  m.attr("BrokenBarrierError") = broken;

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const NotOwnerError& e) {
      PyErr_SetString(lock_not_owned_error, e.what());
    } catch (const BrokenBarrierError&) {
      PyErr_SetNone(broken_barrier_error);
    }
  });
}

}  // namespace

void bind_sync(nb::module_& m) {
  register_exceptions(m);

  auto lock_class = nb::class_<PyLock>(m, "_Lock", "A robust process-shared lock in shared memory (base of shoal.Lock/RLock).")
      .def("__init__", &init_lock, nb::arg("recursive"), nb::arg("attach") = nb::none(),
           "Create a lock, or attach to the one in the shared-memory segment named `attach`.")
      .def("_is_owned", [](const PyLock& l) { return l.lock->held_by_me(); },
           "True if the calling thread holds the lock.")
      .def_prop_ro("name", [](const PyLock& l) { return l.lock.name(); },
                   "Name of the shared-memory segment that holds the lock.")
      .def_prop_ro("previous_owner_died", [](const PyLock& l) { return l.previous_owner_died; },
                   "True if the most recent acquire through this object recovered the lock from a holder "
                   "that died while holding it.")
      .def_prop_ro("_locked", [](const PyLock& l) { return l.lock->locked(); })
      .def_prop_ro("_depth", [](const PyLock& l) { return l.lock->held_by_me() ? l.lock->depth() : 0u; });

  add_acquire_methods<PyLock>(lock_class);
  lock_class.def_static("_add_fast_methods", &add_acquire_methods<PyLock>, nb::arg("cls"));

  auto semaphore_class = nb::class_<PySemaphore>(m, "_Semaphore", "A process-shared counting semaphore (base of shoal.Semaphore).")
      .def("__init__", &init_semaphore, nb::arg("value"), nb::arg("bounded"), nb::arg("attach") = nb::none())
      .def("get_value", [](const PySemaphore& s) { return s.sem->value(); })
      .def_prop_ro("name", [](const PySemaphore& s) { return s.sem.name(); })
      .def_prop_ro("_bound", [](const PySemaphore& s) { return s.sem->bound(); });
  add_acquire_methods<PySemaphore>(semaphore_class);
  semaphore_class.def_static("_add_fast_methods", &add_acquire_methods<PySemaphore>, nb::arg("cls"));

  nb::class_<PyEvent>(m, "_Event", "A process-shared event flag (base of shoal.Event).")
      .def(
          "__init__",
          [](PyEvent* self, std::optional<std::string> attach) {
            new (self) PyEvent{attach ? SharedObject<Event>::attach(*attach) : SharedObject<Event>::create()};
          },
          nb::arg("attach") = nb::none())
      .def("is_set", [](const PyEvent& e) { return e.event->is_set(); })
      .def("set", [](PyEvent& e) { e.event->set(); }, "Set the flag and wake every waiter.")
      .def("clear", [](PyEvent& e) { e.event->clear(); })
      .def(
          "wait",
          [](PyEvent& e, std::optional<double> timeout) {
            return e.event->is_set() || e.event->wait(Deadline::from_timeout(timeout), kPythonBlocker);
          },
          nb::arg("timeout") = nb::none(),
          nb::sig("def wait(self, timeout: float | None = None) -> bool"),
          "Block until the flag is set; False if the timeout passed first.")
      .def_prop_ro("name", [](const PyEvent& e) { return e.event.name(); });

  nb::class_<PyCondition>(m, "_Condition", "A process-shared condition variable (base of shoal.Condition).")
      .def(
          "__init__",
          [](PyCondition* self, PyLock* lock, std::optional<std::string> attach) {
            new (self) PyCondition{
                attach ? SharedObject<Condition>::attach(*attach) : SharedObject<Condition>::create(), lock};
          },
          nb::arg("lock"), nb::arg("attach") = nb::none(), nb::keep_alive<1, 2>())
      .def(
          "wait",
          [](PyCondition& c, std::optional<double> timeout) {
            auto result = c.cond->wait(*c.lock->lock, Deadline::from_timeout(timeout), kPythonBlocker);
            // The lock is held again whatever note() says; a raised warning propagates with it held.
            if (!c.lock->note(result.relocked)) throw nb::python_error();
            return result.notified;
          },
          nb::arg("timeout") = nb::none(),
          nb::sig("def wait(self, timeout: float | None = None) -> bool"),
          "Release the lock, wait for a notify (or the timeout), take the lock back; False on timeout.")
      .def(
          "notify",
          [](PyCondition& c, long long n) {
            c.cond->notify(*c.lock->lock, n <= 0 ? 0u : n >= UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(n));
          },
          nb::arg("n") = 1, "Wake up to `n` waiters (the calling thread must hold the lock).")
      .def("notify_all", [](PyCondition& c) { c.cond->notify_all(*c.lock->lock); })
      .def_prop_ro("name", [](const PyCondition& c) { return c.cond.name(); });

  nb::class_<PyBarrier>(m, "_Barrier", "A process-shared reusable barrier (base of shoal.Barrier).")
      .def(
          "__init__",
          [](PyBarrier* self, long long parties, std::optional<std::string> attach) {
            if (attach) {
              new (self) PyBarrier{SharedObject<Barrier>::attach(*attach)};
              return;
            }
            if (parties < 1 || parties > UINT32_MAX) throw std::invalid_argument("parties must be >= 1");
            new (self) PyBarrier{SharedObject<Barrier>::create(static_cast<uint32_t>(parties))};
          },
          nb::arg("parties"), nb::arg("attach") = nb::none())
      .def(
          "_wait",
          [](PyBarrier& b, std::optional<double> timeout, nb::object action) {
            std::function<void()> run;
            if (!action.is_none()) run = [&] { action(); };  // runs with the GIL, which the engine holds here
            return b.barrier->wait(Deadline::from_timeout(timeout), run, kPythonBlocker);
          },
          nb::arg("timeout").none(), nb::arg("action").none())
      .def("reset", [](PyBarrier& b) { b.barrier->reset(kPythonBlocker); },
           "Return the barrier to its empty state; current waiters get BrokenBarrierError.")
      .def("abort", [](PyBarrier& b) { b.barrier->abort(kPythonBlocker); },
           "Break the barrier: current and future waiters get BrokenBarrierError.")
      .def_prop_ro("parties", [](const PyBarrier& b) { return b.barrier->parties(); })
      .def_prop_ro("n_waiting", [](const PyBarrier& b) { return b.barrier->n_waiting(); })
      .def_prop_ro("broken", [](const PyBarrier& b) { return b.barrier->broken(); })
      .def_prop_ro("name", [](const PyBarrier& b) { return b.barrier.name(); });
}

}  // namespace shoal::py
