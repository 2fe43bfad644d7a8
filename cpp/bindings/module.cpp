// The one place where the engine meets Python: registers every binding file and
// maps engine errors onto the Python exceptions users expect.
#include <system_error>

#include "common.hpp"
#include "shoal/base/errors.hpp"
#include "shoal/ipc/segment.hpp"

namespace nb = nanobind;

NB_MODULE(_core, m) {
  m.doc() = "shoal's C++ engine";
  // Pools left open at exit are stopped by an atexit hook, but their objects
  // may still be referenced by daemon threads then; that is not a leak.
  nb::set_leak_warnings(false);

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const shoal::NotFoundError& e) {
      PyErr_SetString(PyExc_FileNotFoundError, e.what());
    } catch (const shoal::FrameTooLargeError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const shoal::ClosedError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const shoal::CorruptFrameError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    } catch (const shoal::SpillError& e) {  // /dev/shm had no room for a payload: that payload fails
      PyErr_SetString(PyExc_MemoryError, e.what());
    } catch (const std::system_error& e) {
      PyErr_SetObject(PyExc_OSError, nb::make_tuple(e.code().value(), e.what()).ptr());
    }
  });

  shoal::py::bind_ipc(m);
  shoal::py::bind_sync(m);
  shoal::py::bind_queue(m);
  shoal::py::bind_pool(m);
  shoal::py::bind_mem(m);
  shoal::py::bind_column(m);
  shoal::py::bind_scalar_pickle(m);
  shoal::py::bind_payload(m);
  shoal::py::bind_heap(m);
  shoal::py::bind_obs(m);

  // A previous process killed with SIGKILL cannot unlink its segments; the next
  // shoal start in this user's session does it for them.
  m.attr("reclaimed_at_import") = shoal::reclaim_stale_segments();
}
