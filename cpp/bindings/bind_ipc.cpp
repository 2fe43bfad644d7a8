// SharedSegment and the SPSC ring, as Python objects.
#include <nanobind/stl/string.h>

#include "common.hpp"
#include "shoal/ipc/ring.hpp"
#include "shoal/ipc/segment.hpp"

namespace shoal::py {
namespace {

// A ring together with the segment that holds it.
struct PyRing {
  SharedSegment segment;
  SpscRing ring;

  static PyRing create(std::size_t capacity) {
    PyRing r;
    r.segment = SharedSegment::create(SpscRing::bytes_needed(capacity));
    r.ring = SpscRing::init(r.segment.data(), capacity);
    return r;
  }
  static PyRing attach(const std::string& name) {
    PyRing r;
    r.segment = SharedSegment::attach(name);
    r.ring = SpscRing::attach(r.segment.data(), r.segment.size());
    return r;
  }
};

nb::bytes pop_into_bytes(SpscRing& ring) {
  nb::bytes out;
  ring.try_pop([&](std::size_t n) {
    out = nb::steal<nb::bytes>(PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n)));
    if (!out.is_valid()) throw nb::python_error();
    return reinterpret_cast<std::byte*>(PyBytes_AS_STRING(out.ptr()));
  });
  return out;
}

}  // namespace

void bind_ipc(nb::module_& m) {
  m.def("release_owner_token", &segment_detail::release_owner_token,
        "Unlink and close this process's shared-memory owner token (what a normal exit does; pool "
        "workers, which end with os._exit, call it themselves).");
  nb::class_<SharedSegment>(m, "SharedSegment",
                            "A POSIX shared-memory segment. Create one with a size, or attach by name.")
      .def_static("create", &SharedSegment::create, nb::arg("size"),
                  "Create a new zero-filled segment of at least `size` bytes (mode 0600, random name).")
      .def_static("attach", &SharedSegment::attach, nb::arg("name"),
                  "Map an existing segment; raises FileNotFoundError if the name does not exist.")
      .def_prop_ro("name", &SharedSegment::name)
      .def_prop_ro("size", &SharedSegment::size)
      .def_prop_ro("owns_name", &SharedSegment::owns_name)
      .def_prop_ro("closed", [](const SharedSegment& s) { return !s.valid(); })
      .def_prop_ro(
          "buf",
          [](SharedSegment& s) {
            if (!s.valid()) throw ClosedError("segment is closed");
            return nb::steal(PyMemoryView_FromMemory(reinterpret_cast<char*>(s.data()),
                                                     static_cast<Py_ssize_t>(s.size()), PyBUF_WRITE));
          },
          nb::keep_alive<0, 1>(), "A writable memoryview of the whole segment.")
      .def("unlink", &SharedSegment::unlink, "Remove the name now; existing mappings stay valid.")
      .def("close", &SharedSegment::close, "Unmap (and unlink, in the creating process).");

  nb::class_<PyRing>(m, "Ring", "A single-producer single-consumer ring of byte frames in shared memory.")
      .def_static("create", &PyRing::create, nb::arg("capacity"))
      .def_static("attach", &PyRing::attach, nb::arg("name"))
      .def_prop_ro("name", [](const PyRing& r) { return r.segment.name(); })
      .def_prop_ro("capacity", [](const PyRing& r) { return r.ring.capacity(); })
      .def_prop_ro("max_frame", [](const PyRing& r) { return r.ring.max_frame(); })
      .def_prop_ro("used_bytes", [](const PyRing& r) { return r.ring.used_bytes(); })
      .def(
          "push",
          [](PyRing& r, nb::bytes frame, std::optional<double> timeout) {
            SpscRing::Bytes view(reinterpret_cast<const std::byte*>(frame.c_str()), frame.size());
            if (r.ring.try_push(view)) return true;
            return wait_interruptibly(timeout, [&](const Deadline& d) { return r.ring.push(view, d); });
          },
          nb::arg("frame"), nb::arg("timeout") = nb::none(),
          "Append a frame; returns False if there was no room by the timeout.")
      .def(
          "pop",
          [](PyRing& r, std::optional<double> timeout) -> std::optional<nb::bytes> {
            if (r.ring.empty() &&
                !wait_interruptibly(timeout, [&](const Deadline& d) { return r.ring.wait_readable(d); }))
              return std::nullopt;
            return pop_into_bytes(r.ring);
          },
          nb::arg("timeout") = nb::none(), "Remove and return the next frame, or None on timeout.")
      .def("close", [](PyRing& r) { r.ring.close(); });
}

}  // namespace shoal::py
