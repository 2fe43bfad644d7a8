#include "shoal/proc/native_threads.hpp"

#include <dlfcn.h>
#include <link.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string_view>

namespace shoal {
namespace {

enum class Arg { int32, int64 };

// A library is known by a part of its file name; its function by one of a
// few spellings (numpy's wheels rename OpenBLAS's symbols: scipy_...64_).
struct Known {
  std::string_view name_part;
  std::vector<std::string> symbols;
  Arg arg;
};

const std::vector<Known>& known_pools() {
  static const std::vector<Known> pools = [] {
    std::vector<std::string> openblas;
    for (const char* prefix : {"", "scipy_"})
      for (const char* suffix : {"", "64_", "_64"})
        openblas.push_back(std::string(prefix) + "openblas_set_num_threads" + suffix);
    return std::vector<Known>{
        {"openblas", openblas, Arg::int32},
        {"libmkl_rt", {"MKL_Set_Num_Threads"}, Arg::int32},
        {"libblis", {"bli_thread_set_num_threads"}, Arg::int64},
        {"libflexiblas", {"flexiblas_set_num_threads"}, Arg::int32},
        {"libgomp", {"omp_set_num_threads"}, Arg::int32},
        {"libomp", {"omp_set_num_threads"}, Arg::int32},
        {"libiomp", {"omp_set_num_threads"}, Arg::int32},
    };
  }();
  return pools;
}

int collect_path(dl_phdr_info* info, size_t, void* out) {
  if (info->dlpi_name && info->dlpi_name[0]) static_cast<std::vector<std::string>*>(out)->push_back(info->dlpi_name);
  return 0;
}

}  // namespace

std::vector<std::string> limit_native_threads(int threads) {
  if (threads < 1) throw std::invalid_argument("a thread limit must be at least 1");
  std::vector<std::string> loaded, limited;
  dl_iterate_phdr(&collect_path, &loaded);
  for (const std::string& path : loaded) {
    const std::string_view file = std::string_view(path).substr(path.rfind('/') + 1);
    for (const Known& pool : known_pools()) {
      if (file.find(pool.name_part) == std::string_view::npos) continue;
      // Already loaded: RTLD_NOLOAD only takes a reference on it.
      void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
      if (lib == nullptr) continue;
      for (const std::string& symbol : pool.symbols) {
        void* fn = dlsym(lib, symbol.c_str());
        if (fn == nullptr) continue;
        if (pool.arg == Arg::int64)
          reinterpret_cast<void (*)(int64_t)>(fn)(threads);
        else
          reinterpret_cast<void (*)(int)>(fn)(threads);
        limited.push_back(path);
        break;
      }
      dlclose(lib);
      break;
    }
  }
  return limited;
}

}  // namespace shoal
