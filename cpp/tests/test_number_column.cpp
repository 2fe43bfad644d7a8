// The number column's wire format: what write_header and write_value produce,
// read() gives back, and anything else is refused.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "shoal/wire/number_column.hpp"

namespace shoal::column {
namespace {

std::vector<std::byte> ints(const std::vector<std::int64_t>& values) {
  std::vector<std::byte> out(encoded_size(values.size()));
  write_header(out.data(), Kind::int64, values.size());
  for (std::size_t i = 0; i < values.size(); ++i) write_value(out.data() + kHeaderSize, i, values[i]);
  return out;
}

TEST(NumberColumn, IntsRoundTripThroughTheWireFormat) {
  const std::vector<std::int64_t> values{0, -1, 1, std::numeric_limits<std::int64_t>::min(),
                                         std::numeric_limits<std::int64_t>::max()};
  const auto bytes = ints(values);
  ASSERT_EQ(bytes.size(), 24u + 8u * values.size());
  const auto view = read(bytes);
  ASSERT_TRUE(view.has_value());
  EXPECT_EQ(view->kind, Kind::int64);
  ASSERT_EQ(view->count, values.size());
  for (std::size_t i = 0; i < values.size(); ++i) EXPECT_EQ(view->int_at(i), values[i]);
}

TEST(NumberColumn, FloatsKeepEveryBit) {
  const std::vector<double> values{-0.0, std::numeric_limits<double>::quiet_NaN(), 1e-310, -INFINITY, 0.1};
  std::vector<std::byte> bytes(encoded_size(values.size()));
  write_header(bytes.data(), Kind::float64, values.size());
  for (std::size_t i = 0; i < values.size(); ++i) write_value(bytes.data() + kHeaderSize, i, values[i]);
  const auto view = read(bytes);
  ASSERT_TRUE(view.has_value());
  EXPECT_EQ(view->kind, Kind::float64);
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double got = view->float_at(i);
    EXPECT_EQ(std::memcmp(&got, &values[i], sizeof got), 0) << "value " << i;
  }
}

TEST(NumberColumn, ReadsValuesAtAnyAlignment) {
  const auto column = ints({7, -7, 1 << 30});
  std::vector<std::byte> shifted(3);
  shifted.insert(shifted.end(), column.begin(), column.end());
  const auto view = read(std::span(shifted).subspan(3));
  ASSERT_TRUE(view.has_value());
  EXPECT_EQ(view->int_at(2), 1 << 30);
}

TEST(NumberColumn, RefusesWhatIsNotExactlyOneColumn) {
  auto bytes = ints({1, 2, 3});
  EXPECT_FALSE(read(std::span(bytes).first(bytes.size() - 1)).has_value()) << "truncated";
  auto longer = bytes;
  longer.push_back(std::byte{0});
  EXPECT_FALSE(read(longer).has_value()) << "trailing bytes";
  EXPECT_FALSE(read(std::span(bytes).first(16)).has_value()) << "no room for a header";
  auto unknown = bytes;
  unknown[8] = std::byte{9};
  EXPECT_FALSE(read(unknown).has_value()) << "unknown kind";
  auto huge = bytes;
  const std::uint64_t count = ~std::uint64_t{0} / 4;  // count * 8 wraps around
  std::memcpy(huge.data() + 16, &count, sizeof count);
  EXPECT_FALSE(read(huge).has_value()) << "a count that overflows the size";
  auto pickle = bytes;
  pickle[0] = std::byte{0x80};
  EXPECT_FALSE(looks_like_column(pickle));
  EXPECT_FALSE(read(pickle).has_value());
}

TEST(NumberColumn, AnEmptyColumnIsJustAHeader) {
  const auto bytes = ints({});
  const auto view = read(bytes);
  ASSERT_TRUE(view.has_value());
  EXPECT_EQ(view->count, 0u);
}

}  // namespace
}  // namespace shoal::column
