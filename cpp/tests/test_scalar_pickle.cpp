// The scalar pickle writer: the opcodes it writes for each value, as
// CPython's pickle.py defines them (protocol 5, little-endian lengths and
// ints, big-endian floats), memo gets, and its move from the stack buffer to the heap.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>

#include "shoal/wire/scalar_pickle.hpp"

namespace shoal::scalar_pickle {
namespace {

using namespace std::string_literals;

// The pickle of one value written by `write`, without PROTO and STOP.
template <class Write>
std::string body(Write write) {
  Writer w;
  write(w);
  const std::string all(w.finish());
  EXPECT_EQ(all.substr(0, 2), "\x80\x05"s);
  EXPECT_EQ(all.back(), '.');
  return all.substr(2, all.size() - 3);
}

std::string integer(std::int64_t v) {
  return body([&](Writer& w) { w.integer(v); });
}

TEST(ScalarPickle, SmallIntsUseTheShortestBinaryOpcode) {
  EXPECT_EQ(integer(0), "K\x00"s);
  EXPECT_EQ(integer(255), "K\xff"s);
  EXPECT_EQ(integer(256), "M\x00\x01"s);
  EXPECT_EQ(integer(65535), "M\xff\xff"s);
  EXPECT_EQ(integer(65536), "J\x00\x00\x01\x00"s);
  EXPECT_EQ(integer(-1), "J\xff\xff\xff\xff"s);
  EXPECT_EQ(integer(INT32_MIN), "J\x00\x00\x00\x80"s);
  EXPECT_EQ(integer(INT32_MAX), "J\xff\xff\xff\x7f"s);
}

TEST(ScalarPickle, WiderIntsAreLong1WithTheFewestBytesThatKeepTheSign) {
  // As pickle.encode_long: 2**31 needs a fifth byte for its sign bit.
  EXPECT_EQ(integer(std::int64_t{1} << 31), "\x8a\x05\x00\x00\x00\x80\x00"s);
  EXPECT_EQ(integer(-(std::int64_t{1} << 31) - 1), "\x8a\x05\xff\xff\xff\x7f\xff"s);
  EXPECT_EQ(integer(std::int64_t{1} << 32), "\x8a\x05\x00\x00\x00\x00\x01"s);
  EXPECT_EQ(integer(std::numeric_limits<std::int64_t>::max()), "\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f"s);
  EXPECT_EQ(integer(std::numeric_limits<std::int64_t>::min()), "\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80"s);
}

TEST(ScalarPickle, FloatsAreBigEndianDoubles) {
  EXPECT_EQ(body([](Writer& w) { w.real(1.0); }), "G\x3f\xf0\x00\x00\x00\x00\x00\x00"s);
  EXPECT_EQ(body([](Writer& w) { w.real(-0.0); }), "G\x80\x00\x00\x00\x00\x00\x00\x00"s);
}

TEST(ScalarPickle, StringsAndBytesCarryTheirLength) {
  EXPECT_EQ(body([](Writer& w) { w.text("ab"); }), "\x8c\x02" "ab"s);
  EXPECT_EQ(body([](Writer& w) { w.data(""); }), "C\x00"s);
  const std::string long_text(300, 'x');
  EXPECT_EQ(body([&](Writer& w) { w.text(long_text); }), "X\x2c\x01\x00\x00"s + long_text);
  EXPECT_EQ(body([&](Writer& w) { w.data(long_text); }), "B\x2c\x01\x00\x00"s + long_text);
}

TEST(ScalarPickle, ConstantsTuplesAndDicts) {
  EXPECT_EQ(body([](Writer& w) { w.none(); }), "N");
  EXPECT_EQ(body([](Writer& w) { w.boolean(true); }), "\x88");
  EXPECT_EQ(body([](Writer& w) { w.boolean(false); }), "\x89");
  EXPECT_EQ(body([](Writer& w) {
              w.tuple_begin(0);
              w.tuple_end(0);
            }),
            ")");
  EXPECT_EQ(body([](Writer& w) {
              w.tuple_begin(2);
              w.none();
              w.none();
              w.tuple_end(2);
            }),
            "NN\x86"s);
  EXPECT_EQ(body([](Writer& w) {
              w.tuple_begin(4);
              for (int i = 0; i < 4; ++i) w.none();
              w.tuple_end(4);
            }),
            "(NNNNt");
  EXPECT_EQ(body([](Writer& w) {
              w.dict_begin(0);
              w.dict_end(0);
            }),
            "}\x94"s);
  EXPECT_EQ(body([](Writer& w) {
              w.dict_begin(1);
              w.text("k");
              w.integer(1);
              w.dict_end(1);
            }),
            "}\x94(\x8c\x01kK\x01u"s);
}

TEST(ScalarPickle, ListsAreMemoizedBeforeTheirItemsAsPickleDoes) {
  EXPECT_EQ(body([](Writer& w) {
              w.list_begin(0);
              w.list_end(0);
            }),
            "]\x94"s);
  EXPECT_EQ(body([](Writer& w) {
              w.list_begin(2);
              w.none();
              w.boolean(true);
              w.list_end(2);
            }),
            "]\x94(N\x88" "e"s);
}

TEST(ScalarPickle, MemoGetsUseTheShortOpcodeUpTo255) {
  EXPECT_EQ(body([](Writer& w) {
              w.text("s");
              w.memoize();
              w.memo_get(0);
            }),
            "\x8c\x01s\x94h\x00"s);
  EXPECT_EQ(body([](Writer& w) { w.memo_get(255); }), "h\xff"s);
  EXPECT_EQ(body([](Writer& w) { w.memo_get(256); }), "j\x00\x01\x00\x00"s);
}

TEST(ScalarPickle, APickleLongerThanTheStackBufferMovesToTheHeapWhole) {
  const std::string first(Writer::kInline - 10, 'a');
  const std::string second(Writer::kInline, 'b');
  Writer w;
  w.tuple_begin(2);
  w.data(first);
  w.data(second);
  w.tuple_end(2);
  const std::string all(w.finish());
  EXPECT_EQ(all, "\x80\x05"s + "C" + char(first.size()) + first + "C" + char(second.size()) + second + "\x86.");
}

}  // namespace
}  // namespace shoal::scalar_pickle
