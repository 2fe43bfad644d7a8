// The shared-memory arena as Python objects: _core.Arena, _core.Block (the
// descriptor) and _core.BlockView (a buffer over a block that holds one
// reference on it). python/shoal/shared.py and python/shoal/_oob.py build on them.
//
// GIL discipline: allocation (which may create and back a segment) and copies
// into blocks run with the GIL released; reference operations are short and
// keep it. No code here waits for the GIL while holding the arena's lock, so
// releasing a block from a destructor (GIL held) cannot deadlock.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <optional>

#include "common.hpp"
#include "shoal/base/errors.hpp"
#include "shoal/mem/arena.hpp"

namespace shoal::py {
namespace {

// A copy longer than this runs with the GIL released.
constexpr std::size_t kGilHeldCopyLimit = 64 * 1024;

// A window on a block, exported through the buffer protocol. It holds one
// reference on the block from construction until close(), detach() or
// destruction, and keeps this process's mapping of it until destruction, so
// memory it exposed can never be unmapped under a reader: besides its pin (the
// arena's bookkeeping) it owns the mapping itself (SharedArena::hold_mapping),
// so even an unbalanced release elsewhere in the process cannot unmap it. A copy-on-write view
// exposes a private mapping of the window instead (SharedArena::map_private):
// writable, and what is written stays in this process; the mapping lives
// exactly as long as the view (it is unmapped before the reference is dropped).
struct BlockView {
  std::shared_ptr<SharedArena> arena;
  Block block{};
  std::shared_ptr<std::byte> mapping;  // keeps the block's shared mapping here (null once detached)
  PrivateMapping cow;         // a copy-on-write view's mapping (invalid otherwise)
  std::byte* data = nullptr;  // the first byte of the window; null once detached
  std::size_t length = 0;
  std::size_t offset = 0;     // of the window, within the block
  bool readonly = true;
  bool copy_on_write = false;
  bool holds_ref = false;     // one shared reference on the block
  bool pinned = false;        // this process's mapping bookkeeping
  pid_t pid = getpid();       // a forked copy must not drop the parent's reference
  Py_ssize_t exports = 0;

  // The caller has given this view one reference and one pin on `block`.
  BlockView(std::shared_ptr<SharedArena> a, const Block& b, std::size_t off, std::size_t len, bool ro, bool private_copy)
      : arena(std::move(a)), block(b), length(len), offset(off), readonly(ro && !private_copy),
        copy_on_write(private_copy), holds_ref(true), pinned(true) {
    try {
      mapping = arena->hold_mapping(block);
      data = mapping.get() + offset;
      if (copy_on_write && length > 0) {  // an empty window has nothing to write
        cow = arena->map_private(block, offset, length);
        data = cow.data();
      }
    } catch (...) {
      drop();
      throw;
    }
  }
  BlockView(const BlockView&) = delete;
  BlockView& operator=(const BlockView&) = delete;
  ~BlockView() {
    cow.reset();
    drop();
  }

  void drop() noexcept {
    if (pid == getpid()) {
      try {
        if (holds_ref)
          arena->release(block);  // also unpins
        else if (pinned)
          arena->disown(block);
      } catch (...) {
        // A destructor must not throw; a failed release leaks the block, no more.
      }
    }
    holds_ref = pinned = false;
  }

  // Drops the reference now; the mapping stays until the view dies, read-only.
  void close(bool force) {
    if (!holds_ref) return;
    if (exports > 0 && !force)
      throw nb::buffer_error(
          "cannot close a shared-memory block view while other objects (memoryviews, arrays) use its buffer");
    if (pid == getpid()) {
      arena->adopt(block);  // an extra pin, so release() leaves the mapping in place
      arena->release(block);
    }
    holds_ref = false;
    readonly = true;
  }

  // Hands the reference to the caller (into a payload, typically); the view is unusable after.
  Block detach() {
    if (!holds_ref) throw ClosedError("the shared-memory block view is closed");
    if (exports > 0)
      throw nb::buffer_error("cannot detach a shared-memory block view while other objects use its buffer");
    cow.reset();
    if (pid == getpid()) arena->disown(block);
    holds_ref = pinned = false;
    data = nullptr;
    mapping.reset();
    return block;
  }
};

BlockView* view_of(PyObject* self) { return nb::inst_ptr<BlockView>(self); }

int view_getbuffer(PyObject* self, Py_buffer* buffer, int flags) {
  BlockView* v = view_of(self);
  if (!v->data) {
    buffer->obj = nullptr;
    PyErr_SetString(PyExc_ValueError, "the shared-memory block view was detached");
    return -1;
  }
  if (PyBuffer_FillInfo(buffer, self, v->data, static_cast<Py_ssize_t>(v->length), v->readonly ? 1 : 0, flags) != 0)
    return -1;
  ++v->exports;
  return 0;
}

void view_releasebuffer(PyObject* self, Py_buffer*) { --view_of(self)->exports; }

PyType_Slot view_slots[] = {
    {Py_bf_getbuffer, reinterpret_cast<void*>(view_getbuffer)},
    {Py_bf_releasebuffer, reinterpret_cast<void*>(view_releasebuffer)},
    {0, nullptr},
};

nb::object make_view(std::shared_ptr<SharedArena> arena, const Block& block, std::size_t offset,
                     std::optional<std::size_t> length, bool readonly, bool copy_on_write = false) {
  std::size_t len = length ? *length : (offset <= block.size ? block.size - offset : 0);
  if (offset > block.size || len > block.size - offset) {
    arena->release(block);
    throw nb::value_error("the view's window does not lie inside the block");
  }
  auto* view = new BlockView(std::move(arena), block, offset, len, readonly, copy_on_write);
  return nb::cast(view, nb::rv_policy::take_ownership);
}

// The picklable form of a view: it names the block, it carries no reference.
// A copy-on-write view has none: what it shows may differ from the block.
nb::tuple descriptor(const BlockView& v) {
  if (v.copy_on_write)
    throw nb::value_error(
        "a copy-on-write shared-memory block view is this process's own copy: it cannot be sent by reference "
        "(send its data by value, or use a SharedArray to share memory)");
  return nb::make_tuple(v.arena->name(), v.block.segment, v.block.flags, v.block.offset, v.block.size,
                        v.block.generation, v.offset, v.length, v.readonly);
}

// Takes a reference through a descriptor (unpickling): the block must still live.
nb::object attach_view(nb::tuple d, std::optional<bool> readonly) {
  if (nb::len(d) != 9) throw nb::value_error("not a shared-memory block descriptor");
  auto arena = SharedArena::attach(nb::cast<std::string>(d[0]));
  Block b{nb::cast<uint32_t>(d[1]), nb::cast<uint32_t>(d[2]), nb::cast<uint64_t>(d[3]), nb::cast<uint64_t>(d[4]),
          nb::cast<uint64_t>(d[5])};
  if (!arena->try_retain(b))
    throw nb::value_error(
        ("the shared-memory block sent from another process was freed before it arrived (arena '" + arena->name() +
         "'): keep the sending process's object alive until the receiver has it")
            .c_str());
  return make_view(std::move(arena), b, nb::cast<std::size_t>(d[6]), nb::cast<std::size_t>(d[7]),
                   readonly ? *readonly : nb::cast<bool>(d[8]));
}

// Python spells a backing as a string: "memfd", "shm", or None (automatic).
SegmentBacking backing_from(const std::optional<std::string>& name) {
  if (!name) return SegmentBacking::automatic;
  if (*name == "memfd") return SegmentBacking::memfd;
  if (*name == "shm" || *name == "dev_shm") return SegmentBacking::dev_shm;
  throw nb::value_error(("backing must be 'memfd', 'shm' or None, not '" + *name + "'").c_str());
}

const char* backing_name(SegmentBacking b) { return b == SegmentBacking::memfd ? "memfd" : "shm"; }

std::string block_repr(const Block& b) {
  return "Block(segment=" + std::to_string(b.segment) + ", flags=" + std::to_string(b.flags) +
         ", offset=" + std::to_string(b.offset) + ", size=" + std::to_string(b.size) +
         ", generation=" + std::to_string(b.generation) + ")";
}

}  // namespace

void bind_mem(nb::module_& m) {
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const ArenaLimitError& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });

  nb::class_<Block>(m, "Block",
                    "The descriptor of a block in a shared-memory arena: plain data that names the block "
                    "in every process. It holds no reference.")
      .def(nb::init<>())
      .def(
          "__init__",
          [](Block* self, uint32_t segment, uint32_t flags, uint64_t offset, uint64_t size, uint64_t generation) {
            new (self) Block{segment, flags, offset, size, generation};
          },
          nb::arg("segment"), nb::arg("flags"), nb::arg("offset"), nb::arg("size"), nb::arg("generation"))
      .def_ro("segment", &Block::segment)
      .def_ro("flags", &Block::flags)
      .def_ro("offset", &Block::offset)
      .def_ro("size", &Block::size)
      .def_ro("generation", &Block::generation)
      .def_prop_ro("dedicated", &Block::dedicated)
      .def("__eq__", [](const Block& a, const Block& b) { return a == b; })
      .def("__hash__", [](const Block& b) {
        return nb::hash(nb::make_tuple(b.segment, b.flags, b.offset, b.size, b.generation));
      })
      .def("__repr__", &block_repr)
      .def("__getstate__",
           [](const Block& b) { return nb::make_tuple(b.segment, b.flags, b.offset, b.size, b.generation); })
      .def("__setstate__", [](Block& self, const nb::tuple& t) {
        new (&self) Block{nb::cast<uint32_t>(t[0]), nb::cast<uint32_t>(t[1]), nb::cast<uint64_t>(t[2]),
                          nb::cast<uint64_t>(t[3]), nb::cast<uint64_t>(t[4])};
      });

  nb::class_<BlockView>(m, "BlockView", nb::type_slots(view_slots), nb::is_weak_referenceable(),
                        "A buffer over (part of) a shared-memory block, writable or read-only, zero-copy.\n\n"
                        "It holds one reference on the block while it lives (released when it is garbage-"
                        "collected, or by close()). Pickling it sends its descriptor: the receiver, in any "
                        "process, attaches the arena and takes its own reference, so the sender must keep "
                        "its view alive until then.")
      .def_prop_ro("readonly", [](const BlockView& v) { return v.readonly; })
      .def_prop_ro("copy_on_write", [](const BlockView& v) { return v.copy_on_write; },
                   "Whether the view is a private copy-on-write mapping of the block: writable, and what is "
                   "written stays in this view (the block and every other view of it keep the original).")
      .def_prop_ro("closed", [](const BlockView& v) { return !v.holds_ref; })
      .def_prop_ro("nbytes", [](const BlockView& v) { return v.length; })
      .def_prop_ro("offset", [](const BlockView& v) { return v.offset; }, "Where the window starts in the block.")
      .def_prop_ro("address", [](const BlockView& v) { return reinterpret_cast<uintptr_t>(v.data); },
                   "The window's address in this process (0 once detached).")
      .def_prop_ro("block", [](const BlockView& v) { return v.block; })
      .def_prop_ro("arena", [](const BlockView& v) { return v.arena; })
      .def_prop_ro("exports", [](const BlockView& v) { return v.exports; })
      .def("__len__", [](const BlockView& v) { return v.length; })
      .def("close", &BlockView::close, nb::arg("force") = false,
           "Drop the view's reference now (the block is freed if it was the last). The memory stays "
           "mapped, read-only, until the view is garbage-collected. Raises BufferError while other "
           "objects hold its buffer, unless force.")
      .def("detach", &BlockView::detach,
           "Hand the view's reference to the caller as a Block (to travel in a payload); the view "
           "becomes unusable.")
      .def("descriptor", &descriptor, "The picklable form: (arena name, block fields..., offset, length, readonly).")
      .def("__reduce__",
           [](const BlockView& v) -> nb::object {
             if (!v.holds_ref) throw ClosedError("cannot pickle a closed shared-memory block view");
             if (v.copy_on_write)  // by value: its bytes may be this process's own by now
               return nb::make_tuple(nb::module_::import_("builtins").attr("bytearray"),
                                     nb::make_tuple(nb::bytes(reinterpret_cast<const char*>(v.data), v.length)));
             // A Python function, so that pickle can name it.
             return nb::make_tuple(nb::module_::import_("shoal.shm.arena").attr("attach_view"),
                                   nb::make_tuple(descriptor(v)));
           })
      .def("__repr__", [](const BlockView& v) {
        return std::string("<shoal._core.BlockView ") +
               (v.readonly ? "read-only " : v.copy_on_write ? "copy-on-write " : "writable ") +
               std::to_string(v.length) + " bytes of " + block_repr(v.block) + " in '" + v.arena->name() + "'" +
               (v.holds_ref ? "" : " (closed)") + ">";
      });

  m.def("_attach_block_view", &attach_view, nb::arg("descriptor"), nb::arg("readonly") = nb::none(),
        "Unpickling helper: a view over the block a descriptor names, holding a new reference. Raises "
        "ValueError if the block was freed meanwhile.");

  m.def(
      "same_bytes",
      [](nb::handle a, nb::handle b) {
        Py_buffer x, y;
        if (PyObject_GetBuffer(a.ptr(), &x, PyBUF_ANY_CONTIGUOUS) != 0) throw nb::python_error();
        std::unique_ptr<Py_buffer, void (*)(Py_buffer*)> hold_x(&x, PyBuffer_Release);
        if (PyObject_GetBuffer(b.ptr(), &y, PyBUF_ANY_CONTIGUOUS) != 0) throw nb::python_error();
        std::unique_ptr<Py_buffer, void (*)(Py_buffer*)> hold_y(&y, PyBuffer_Release);
        if (x.len != y.len) return false;
        const auto n = static_cast<std::size_t>(x.len);
        if (n > kGilHeldCopyLimit) {
          nb::gil_scoped_release unlocked;  // the buffers stay exported meanwhile
          return std::memcmp(x.buf, y.buf, n) == 0;
        }
        return n == 0 || std::memcmp(x.buf, y.buf, n) == 0;
      },
      nb::arg("a"), nb::arg("b"),
      "Whether two contiguous buffers hold the same bytes (memcmp, without the GIL for big ones): "
      "a map checks that an array it copied once has not changed since.");

  nb::class_<SharedArena>(m, "Arena",
                          "A shared-memory arena of reference-counted blocks (see cpp/include/shoal/mem/arena.hpp).")
      .def_static(
          "create",
          [](std::optional<std::size_t> limit, std::size_t segment_bytes, std::optional<std::string> backing) {
            return SharedArena::create(limit.value_or(0), segment_bytes, backing_from(backing));
          },
          nb::arg("limit") = nb::none(), nb::arg("segment_bytes") = SharedArena::kDefaultSegmentBytes,
          nb::arg("backing") = nb::none(),
          "Create an arena owned by this process. `limit` bounds the bytes in live blocks (default: "
          "default_limit(), half of the memory available for memfd segments, half of /dev/shm's free "
          "space for 'shm'). `backing`: 'memfd' (segments this process holds, which other processes of "
          "the user open through /proc/<pid>/fd; not counted against /dev/shm), 'shm' (files in "
          "/dev/shm), or None: default_backing().")
      .def_static("attach", &SharedArena::attach, nb::arg("name"),
                  "The arena called `name` (this process's handle if it has one).")
      .def_static(
          "default_limit",
          [](std::optional<std::string> backing) { return SharedArena::default_limit(backing_from(backing)); },
          nb::arg("backing") = nb::none(), "The limit create() gives an arena with that backing by default.")
      .def_static(
          "default_backing", [] { return backing_name(SharedArena::default_backing()); },
          "'memfd' where memfds can be shared through /proc here, else 'shm' (and 'shm' when the "
          "environment variable SHOAL_ARENA_BACKING is 'shm').")
      .def_static("cache_idle_mappings", &SharedArena::cache_idle_mappings, nb::arg("enabled"),
                  "Keep huge blocks' segments mapped in this process after their last reference here goes, "
                  "while the blocks live (pool workers turn this on).")
      .def_static("trim_idle_mappings", &SharedArena::trim_idle_mappings,
                  "Unmap cached mappings of freed blocks in every arena; returns how many stay cached.")
      .def("idle_mappings", &SharedArena::idle_mappings, "Cached mappings of this arena no reference here uses.")
      .def_prop_ro("name", &SharedArena::name)
      .def_prop_ro("limit", &SharedArena::limit_bytes)
      .def_prop_ro("segment_bytes", &SharedArena::segment_bytes)
      .def_prop_ro("owns_name", &SharedArena::owns_name)
      .def_prop_ro("backing", [](const SharedArena& a) { return backing_name(a.backing()); },
                   "Where the arena's segments live: 'memfd' or 'shm' (/dev/shm).")
      .def_prop_ro("closed", &SharedArena::closed)
      .def("used_bytes", &SharedArena::used_bytes, "Bytes in live blocks, all processes together.")
      .def("mapped_bytes", &SharedArena::mapped_bytes)
      .def("segment_count", &SharedArena::segment_count)
      .def("recoveries", &SharedArena::recoveries)
      .def(
          "alloc",
          [](const std::shared_ptr<SharedArena>& a, std::size_t size, bool zero) {
            Block b;
            {
              nb::gil_scoped_release unlocked;
              b = a->alloc(size, zero);
            }
            return make_view(a, b, 0, std::nullopt, false);
          },
          nb::arg("size"), nb::arg("zero") = false,
          "Allocate a block; returns a writable BlockView holding its one reference. Raises MemoryError "
          "past the limit.")
      .def(
          "store",
          [](const std::shared_ptr<SharedArena>& a, nb::handle data) {
            Py_buffer src;
            if (PyObject_GetBuffer(data.ptr(), &src, PyBUF_ANY_CONTIGUOUS) != 0) throw nb::python_error();
            std::unique_ptr<Py_buffer, void (*)(Py_buffer*)> hold(&src, PyBuffer_Release);
            const auto n = static_cast<std::size_t>(src.len);
            Block b;
            if (n > kGilHeldCopyLimit) {
              nb::gil_scoped_release unlocked;
              b = a->alloc(n);
              std::memcpy(a->data(b), src.buf, n);
            } else {
              b = a->alloc(n);
              std::memcpy(a->data(b), src.buf, n);
            }
            return make_view(a, b, 0, std::nullopt, true);
          },
          nb::arg("data"),
          "Copy a contiguous buffer into a new block; returns a read-only BlockView holding its reference.")
      .def(
          "view",
          [](const std::shared_ptr<SharedArena>& a, const Block& b, bool adopt, bool readonly, std::size_t offset,
             std::optional<std::size_t> length, bool copy_on_write) {
            if (adopt)
              a->adopt(b);
            else
              a->retain(b);
            return make_view(a, b, offset, length, readonly, copy_on_write);
          },
          nb::arg("block"), nb::kw_only(), nb::arg("adopt") = false, nb::arg("readonly") = true,
          nb::arg("offset") = 0, nb::arg("length") = nb::none(), nb::arg("copy_on_write") = false,
          "A BlockView over `block`. adopt=True: the view takes over a reference the caller was handed; "
          "else it takes a new one (the caller must hold one already). copy_on_write=True: the view is a "
          "private copy-on-write mapping of the window, writable whatever `readonly` says, whose writes "
          "stay in this view (no copy is made until a page is written).")
      .def("retain", &SharedArena::retain, nb::arg("block"))
      .def("try_retain", &SharedArena::try_retain, nb::arg("block"))
      .def("release", &SharedArena::release, nb::arg("block"),
           "Drop a reference this process holds (one it allocated, retained or adopted).")
      .def("release_disowned", &SharedArena::release_disowned, nb::arg("block"),
           "Drop a reference that was disowned (handed to a payload) and not adopted here, leaving "
           "this process's own views and mappings of the block alone (release() would take one of "
           "their pins: a huge block could be unmapped under them).")
      .def("adopt", &SharedArena::adopt, nb::arg("block"))
      .def("disown", &SharedArena::disown, nb::arg("block"))
      .def("refcount", &SharedArena::refcount, nb::arg("block"))
      .def(
          "contains",
          [](const SharedArena& a, uintptr_t address, std::size_t length) {
            return a.contains(reinterpret_cast<const void*>(address), length);
          },
          nb::arg("address"), nb::arg("length") = 1,
          "Whether [address, address+length) lies in one of the arena's segments in this process.")
      .def("check", &SharedArena::check, "The allocator's broken invariants, or '' when all hold.")
      .def("close", &SharedArena::close,
           "In the owner: unlink every name now and refuse new allocations; live blocks stay usable.")
      .def("__repr__", [](const SharedArena& a) {
        return "<shoal._core.Arena '" + a.name() + "' " + backing_name(a.backing()) +
               " used=" + std::to_string(a.used_bytes()) +
               " limit=" + std::to_string(a.limit_bytes()) + (a.closed() ? " closed" : "") + ">";
      });
}

}  // namespace shoal::py
