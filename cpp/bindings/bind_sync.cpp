// Process-shared synchronization primitives (filled in by the sync work).
#include "common.hpp"

namespace shoal::py {
void bind_sync(nb::module_&) {}
}  // namespace shoal::py
