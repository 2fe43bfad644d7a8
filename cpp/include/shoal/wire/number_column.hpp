#pragma once
// A list of plain numbers on the wire: a 24-byte header and the values as
// 8-byte words, one after another.
//
// Maps send chunks of items and get back lists of results, and very often
// every one of them is an int or every one a float. Pickle writes such a list
// item by item through its generic machinery (a big int goes through a
// byte-array conversion); as a column, encoding is a copy of each value and
// decoding an allocation per object, both at C speed. Lists of anything else
// are pickled as before: the encoder says so and the caller falls back.
//
//   magic "shoalNC1" | u8 kind | 7 zero bytes | u64 count | count x 8-byte value
//
// Values are in this machine's byte order (little-endian, asserted below):
// columns travel between processes of one machine, never across machines.
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>

namespace shoal::column {

static_assert(std::endian::native == std::endian::little, "columns are little-endian words");

inline constexpr std::string_view kMagic{"shoalNC1"};
inline constexpr std::size_t kHeaderSize = 24;
inline constexpr std::size_t kWordSize = 8;

enum class Kind : std::uint8_t { int64 = 1, float64 = 2 };

inline constexpr std::size_t encoded_size(std::size_t count) { return kHeaderSize + count * kWordSize; }

// Writes the header into the first kHeaderSize bytes of `out`; the values follow.
inline void write_header(std::byte* out, Kind kind, std::uint64_t count) {
  std::byte header[kHeaderSize]{};
  std::memcpy(header, kMagic.data(), kMagic.size());
  header[8] = static_cast<std::byte>(kind);
  std::memcpy(header + 16, &count, sizeof count);
  std::memcpy(out, header, kHeaderSize);
}

inline void write_value(std::byte* values, std::size_t index, std::int64_t v) {
  std::memcpy(values + index * kWordSize, &v, kWordSize);
}
inline void write_value(std::byte* values, std::size_t index, double v) {
  std::memcpy(values + index * kWordSize, &v, kWordSize);
}

// A decoded header and where its values are. Values are read with memcpy:
// a column inside another buffer need not be 8-byte aligned.
struct View {
  Kind kind;
  std::uint64_t count;
  const std::byte* values;

  std::int64_t int_at(std::size_t index) const {
    std::int64_t v;
    std::memcpy(&v, values + index * kWordSize, kWordSize);
    return v;
  }
  double float_at(std::size_t index) const {
    double v;
    std::memcpy(&v, values + index * kWordSize, kWordSize);
    return v;
  }
};

// Whether `bytes` starts like a column (it may still be malformed).
inline bool looks_like_column(std::span<const std::byte> bytes) {
  return bytes.size() >= kMagic.size() && std::memcmp(bytes.data(), kMagic.data(), kMagic.size()) == 0;
}

// The column in `bytes`, or nullopt if it is not exactly one well-formed column
// (wrong magic, unknown kind, a length that does not match the count).
inline std::optional<View> read(std::span<const std::byte> bytes) {
  if (bytes.size() < kHeaderSize || !looks_like_column(bytes)) return std::nullopt;
  const auto kind = static_cast<Kind>(bytes[8]);
  if (kind != Kind::int64 && kind != Kind::float64) return std::nullopt;
  std::uint64_t count;
  std::memcpy(&count, bytes.data() + 16, sizeof count);
  if (count > (bytes.size() - kHeaderSize) / kWordSize || encoded_size(count) != bytes.size()) return std::nullopt;
  return View{kind, count, bytes.data() + kHeaderSize};
}

}  // namespace shoal::column
