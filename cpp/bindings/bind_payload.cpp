// Packed payloads (shoal/wire/packed_payload.hpp) for python/shoal/wire/payload.py:
// the format's constants, its encoder and decoder, and the release of a
// payload's references, so that the format is written down once, in C++.
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string_view>

#include "common.hpp"
#include "shoal/mem/arena.hpp"
#include "shoal/wire/packed_payload.hpp"

namespace shoal::py {
namespace {

// A read-only view of any bytes-like object, for the length of one call.
class BufferView {
 public:
  explicit BufferView(nb::handle obj) {
    if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_SIMPLE) != 0) throw nb::python_error();
  }
  ~BufferView() { PyBuffer_Release(&view_); }
  BufferView(const BufferView&) = delete;
  BufferView& operator=(const BufferView&) = delete;
  std::string_view bytes() const { return {static_cast<const char*>(view_.buf), static_cast<std::size_t>(view_.len)}; }

 private:
  Py_buffer view_{};
};

nb::bytes encode_packed(const std::vector<std::string>& names, nb::list entries, nb::handle pickled) {
  std::vector<packed::Entry> es;
  es.reserve(entries.size());
  for (nb::handle item : entries) {
    auto t = nb::cast<nb::tuple>(item);
    if (t.size() != 5) throw nb::value_error("an entry is (arena index, kind, Block, view offset, view length)");
    packed::Entry e;
    e.arena = nb::cast<uint16_t>(t[0]);
    e.kind = static_cast<packed::EntryKind>(nb::cast<uint8_t>(t[1]));
    e.block = nb::cast<Block>(t[2]);
    e.view_offset = nb::cast<uint64_t>(t[3]);
    e.view_length = nb::cast<uint64_t>(t[4]);
    es.push_back(e);
  }
  BufferView p(pickled);
  const std::string out = packed::encode(names, es, p.bytes());
  return nb::bytes(out.data(), out.size());
}

nb::tuple decode_packed(nb::handle payload) {
  BufferView p(payload);
  packed::Contents c = packed::decode(p.bytes());
  nb::list entries;
  for (const auto& e : c.entries)
    entries.append(nb::make_tuple(e.arena, static_cast<uint8_t>(e.kind), e.block, e.view_offset, e.view_length));
  return nb::make_tuple(nb::cast(c.names), entries, c.pickle_offset);
}

void release_packed(nb::handle payload, std::shared_ptr<SharedArena> arena) {
  std::vector<packed::Reference> refs;
  {
    BufferView p(payload);
    refs = packed::references(p.bytes());
  }
  if (refs.empty()) return;
  nb::gil_scoped_release unlocked;  // the arena's lock may be contended
  packed::release(refs, arena);
}

}  // namespace

void bind_payload(nb::module_& m) {
  m.attr("PACKED_MAGIC") = nb::bytes(packed::kMagic.data(), packed::kMagic.size());
  m.attr("PACKED_BUFFER") = static_cast<uint8_t>(packed::EntryKind::buffer);
  m.attr("PACKED_HELD") = static_cast<uint8_t>(packed::EntryKind::held);
  m.def("encode_packed", &encode_packed, nb::arg("names"), nb::arg("entries"), nb::arg("pickled"),
        "A packed payload: the arena names, entries (arena index, kind, Block, view offset, view length), then "
        "the pickle.");
  m.def("decode_packed", &decode_packed, nb::arg("payload"),
        "(names, entries, pickle offset) of a packed payload; ValueError if it is not one or is cut short.");
  m.def("release_packed", &release_packed, nb::arg("payload"), nb::arg("arena").none() = nb::none(),
        "Drops the arena references a packed payload holds (as the payload's, not this process's); `arena` is "
        "used for its own name, others are attached by name. Nothing for any other payload.");
}

}  // namespace shoal::py
