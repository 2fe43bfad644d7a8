// CPython's object heap in a pool worker: freed 1 MiB arenas are kept in a
// RegionCache (shoal/mem/region_cache.hpp) while the worker is busy, and given
// back to the system when it waits for work (worker_recv trims each wait slice).
//
// The cache wraps whatever arena allocator the interpreter had: cached arenas
// came from it and are freed through it, so arenas allocated before the cache
// was installed are handled alike.
#include "common.hpp"
#include "mem/region_cache.hpp"

namespace shoal::py {
namespace {

struct HeapCache {
  PyObjectArenaAllocator previous{};
  RegionCache arenas;
  explicit HeapCache(std::size_t max_arenas) : arenas(max_arenas) {}
};

// Installed at most once per process and never freed: the interpreter may
// call into it until the process exits.
HeapCache* g_heap = nullptr;

void* cached_arena_alloc(void* context, std::size_t size) {
  auto* heap = static_cast<HeapCache*>(context);
  if (void* arena = heap->arenas.take(size)) return arena;
  return heap->previous.alloc(heap->previous.ctx, size);
}

void cached_arena_free(void* context, void* arena, std::size_t size) {
  auto* heap = static_cast<HeapCache*>(context);
  if (!heap->arenas.keep(arena, size)) heap->previous.free(heap->previous.ctx, arena, size);
}

void free_through_previous(void* context, void* arena, std::size_t size) {
  auto* heap = static_cast<HeapCache*>(context);
  heap->previous.free(heap->previous.ctx, arena, size);
}

}  // namespace

std::size_t trim_heap_cache() { return g_heap == nullptr ? 0 : g_heap->arenas.trim(free_through_previous, g_heap); }

void bind_heap(nb::module_& m) {
  m.def(
      "cache_heap_arenas",
      [](std::size_t max_arenas) {
        if (g_heap != nullptr) return false;
        auto* heap = new HeapCache(max_arenas);
        PyObject_GetArenaAllocator(&heap->previous);
        PyObjectArenaAllocator cached{heap, cached_arena_alloc, cached_arena_free};
        PyObject_SetArenaAllocator(&cached);
        g_heap = heap;
        return true;
      },
      nb::arg("max_arenas"),
      "Keeps up to `max_arenas` freed arenas of Python's object allocator for reuse\n"
      "(pool workers; see trim_heap_cache). Installs once per process; False if already installed.");
  m.def("trim_heap_cache", &trim_heap_cache, "Gives every cached arena back to the system; returns how many.");
  m.def(
      "heap_cache_bytes", [] { return g_heap == nullptr ? std::size_t{0} : g_heap->arenas.bytes(); },
      "Bytes of freed arenas the heap cache holds now.");
}

}  // namespace shoal::py
