// The process-shared message queue as a Python object (_core.SharedQueue).
// python/shoal/queues.py wraps it with pickling and the multiprocessing.Queue API.
//
// GIL discipline: each operation first tries once with the GIL held (an
// uncontended put or get costs no GIL round trip); only when it must wait for
// room, a message or a busy lock does it release the GIL, through
// wait_interruptibly so Ctrl-C still works. A get always copies the message out
// with the GIL held, straight into a new bytearray (one copy), because only
// then may it create Python objects. No thread ever waits for the GIL while
// holding the queue's lock, so the two locks cannot deadlock.
#include <nanobind/stl/string.h>

#include <chrono>
#include <optional>
#include <span>
#include <thread>
#include <vector>

#include "common.hpp"
#include "shoal/base/errors.hpp"
#include "shoal/ipc/queue.hpp"

namespace shoal::py {
namespace {

using namespace std::chrono_literals;

// A put of more bytes than this copies with the GIL released, so a big message
// does not stall the process's other threads for the length of a memcpy.
constexpr std::size_t kGilHeldCopyLimit = 256 * 1024;
// How long a get waits for a contended lock while holding the GIL before it
// lets other threads run and checks for Ctrl-C.
constexpr auto kGilHeldLockWait = 2ms;

// Holds the buffers of a put's parts (bytes, bytearray, memoryview, ...) for
// the length of the call, so the GIL may be released while copying from them.
class HeldBuffers {
 public:
  // `parts` is one bytes-like object or a list/tuple of them.
  explicit HeldBuffers(nb::handle parts) {
    if (PyObject_CheckBuffer(parts.ptr())) {
      hold(parts);
    } else {
      nb::object seq = nb::steal(PySequence_Fast(parts.ptr(), "parts must be a bytes-like object or a sequence of them"));
      if (!seq.is_valid()) throw nb::python_error();
      const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
      views_.reserve(static_cast<std::size_t>(n));
      for (Py_ssize_t i = 0; i < n; ++i) hold(nb::handle(PySequence_Fast_GET_ITEM(seq.ptr(), i)));
    }
    spans_.reserve(views_.size());
    for (const Py_buffer& v : views_) {
      spans_.emplace_back(static_cast<const std::byte*>(v.buf), static_cast<std::size_t>(v.len));
      total_ += static_cast<std::size_t>(v.len);
    }
  }
  ~HeldBuffers() {
    for (Py_buffer& v : views_) PyBuffer_Release(&v);
  }
  HeldBuffers(const HeldBuffers&) = delete;
  HeldBuffers& operator=(const HeldBuffers&) = delete;

  std::span<const SharedQueue::Bytes> spans() const { return spans_; }
  std::size_t total() const { return total_; }

 private:
  void hold(nb::handle obj) {
    Py_buffer view;
    // PyBUF_SIMPLE insists on one contiguous run of bytes.
    if (PyObject_GetBuffer(obj.ptr(), &view, PyBUF_SIMPLE) != 0) throw nb::python_error();
    views_.push_back(view);
  }

  std::vector<Py_buffer> views_;
  std::vector<SharedQueue::Bytes> spans_;
  std::size_t total_ = 0;
};

// Seconds left until `d`, as wait_interruptibly takes them (nullopt = forever).
std::optional<double> seconds_left(const Deadline& d) {
  auto left = d.remaining();
  if (!left) return std::nullopt;
  return std::chrono::duration<double>(*left).count();
}

bool put(SharedQueue& q, nb::handle parts, bool block, std::optional<double> timeout) {
  HeldBuffers buffers(parts);
  const auto spans = buffers.spans();
  QueueAttempt first = QueueAttempt::lock_busy;
  if (buffers.total() <= kGilHeldCopyLimit) first = q.try_put_parts(spans, Deadline::after(0ns));
  if (first == QueueAttempt::done) return true;
  if (!block) {
    if (first == QueueAttempt::would_block) return false;
    // Only the lock was busy (or the copy is big): wait for the lock, not for room.
    QueueAttempt again = QueueAttempt::lock_busy;
    wait_interruptibly(std::nullopt, [&](const Deadline& d) {
      again = q.try_put_parts(spans, d);
      return again != QueueAttempt::lock_busy;
    });
    return again == QueueAttempt::done;
  }
  return wait_interruptibly(timeout, [&](const Deadline& d) { return q.put_parts(spans, d); });
}

// Returns the next message as a bytearray, or None if there was none in time.
nb::object get(SharedQueue& q, bool block, std::optional<double> timeout) {
  nb::object out;
  auto alloc_bytearray = [&](std::size_t n) {
    out = nb::steal(PyByteArray_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n)));
    if (!out.is_valid()) throw nb::python_error();
    return reinterpret_cast<std::byte*>(PyByteArray_AS_STRING(out.ptr()));
  };
  const Deadline deadline = block ? Deadline::from_timeout(timeout) : Deadline::after(0ns);
  for (;;) {
    switch (q.try_get(alloc_bytearray, Deadline::after(kGilHeldLockWait))) {
      case QueueAttempt::done:
        return out;
      case QueueAttempt::would_block:
        if (!block || deadline.expired()) return nb::none();
        if (!wait_interruptibly(seconds_left(deadline), [&](const Deadline& d) { return q.wait_not_empty(d); }))
          return nb::none();
        break;
      case QueueAttempt::lock_busy:
        // Someone holds the lock unusually long: let this process's other threads run.
        {
          nb::gil_scoped_release unlocked;
          std::this_thread::yield();
        }
        if (PyErr_CheckSignals() != 0) throw nb::python_error();
        if (block && deadline.expired()) return nb::none();
        break;
    }
  }
}

}  // namespace

void bind_queue(nb::module_& m) {
  nb::class_<SharedQueue>(m, "SharedQueue",
                          "A bounded multi-producer multi-consumer queue of byte messages in shared memory.\n\n"
                          "Low level: shoal.Queue adds pickling and the multiprocessing.Queue API.")
      .def_static(
          "create",
          [](std::size_t capacity_bytes, std::size_t maxsize) { return SharedQueue::create(capacity_bytes, maxsize); },
          nb::arg("capacity_bytes") = SharedQueue::kDefaultCapacity, nb::arg("maxsize") = 0,
          "Create a queue holding messages of up to `capacity_bytes` bytes, at most `maxsize` of them "
          "(0: limited by bytes only). This process owns the name and unlinks it when the object goes.")
      .def_static("attach", &SharedQueue::attach, nb::arg("name"),
                  "Attach to an existing queue; raises FileNotFoundError if the name does not exist.")
      .def_prop_ro("name", &SharedQueue::name)
      .def_prop_ro("owns_name", &SharedQueue::owns_name)
      .def_prop_ro("capacity_bytes", &SharedQueue::capacity, "The largest message, in bytes.")
      .def_prop_ro("maxsize", &SharedQueue::maxsize, "The most messages at once; 0 means no count limit.")
      .def_prop_ro("closed", &SharedQueue::is_closed)
      .def_prop_ro("used_bytes", &SharedQueue::used_bytes)
      .def("qsize", &SharedQueue::size, "Messages queued now (a snapshot).")
      .def("empty", &SharedQueue::empty)
      .def("full", &SharedQueue::full)
      .def("put", &put, nb::arg("parts"), nb::arg("block") = true, nb::arg("timeout") = nb::none(),
           "Append one message made of `parts` (a bytes-like object or a list of them). Returns False if "
           "there was no room (at once when block is False, else by the timeout). Raises ValueError if the "
           "message exceeds capacity_bytes or the queue is closed.")
      .def("get", &get, nb::arg("block") = true, nb::arg("timeout") = nb::none(),
           "Remove and return the oldest message as a bytearray, or None if there was none (at once when "
           "block is False, else by the timeout). Raises ValueError once the queue is closed and drained.")
      .def("close", &SharedQueue::close,
           "Close the queue for every process: puts raise, gets drain what is left and then raise.");
}

}  // namespace shoal::py
