// The process-shared message queue (filled in by the queue work).
#include "common.hpp"

namespace shoal::py {
void bind_queue(nb::module_&) {}
}  // namespace shoal::py
