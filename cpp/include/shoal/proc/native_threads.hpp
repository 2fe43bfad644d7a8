#pragma once
// The thread pools of native libraries already loaded in this process
// (OpenBLAS, MKL, BLIS, FlexiBLAS, OpenMP runtimes): a worker forked from a
// process that had imported numpy inherits its BLAS at one thread per core of
// the machine, too late for OMP_NUM_THREADS and the like. This finds them
// among the loaded objects (dl_iterate_phdr) and calls each one's own
// set-threads function, as threadpoolctl does, without loading anything.
#include <string>
#include <vector>

namespace shoal {

// Limits every known native thread pool loaded in this process to `threads`
// (at least 1) for the calling thread and the threads it starts from now on
// (OpenMP's limit is per thread). Returns the paths of the libraries limited.
std::vector<std::string> limit_native_threads(int threads);

}  // namespace shoal
