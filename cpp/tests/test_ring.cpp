#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "shoal/ipc/errors.hpp"
#include "shoal/ipc/ring.hpp"
#include "shoal/ipc/segment.hpp"

using namespace std::chrono_literals;
using shoal::Deadline;
using shoal::SharedSegment;
using shoal::SpscRing;
using shoal::testing::ChildProcess;

namespace {

struct RingInSegment {
  SharedSegment seg;
  SpscRing ring;
  explicit RingInSegment(std::size_t cap)
      : seg(SharedSegment::create(SpscRing::bytes_needed(cap))), ring(SpscRing::init(seg.data(), cap)) {}
};

// Frame i carries a deterministic pattern derived from i, of a random length.
std::vector<std::byte> make_frame(uint64_t i, std::size_t max_len) {
  std::mt19937_64 rng(i);
  std::size_t len = rng() % (max_len + 1);
  std::vector<std::byte> f(len);
  for (std::size_t k = 0; k < len; ++k) f[k] = static_cast<std::byte>((i * 131 + k * 7) & 0xff);
  return f;
}

}  // namespace

TEST(SpscRing, SingleProcessOrderAndWrapAround) {
  RingInSegment r(256);
  std::vector<std::byte> out;
  for (uint64_t i = 0; i < 20000; ++i) {
    auto f = make_frame(i, 100);
    ASSERT_TRUE(r.ring.try_push(std::span<const std::byte>(f)));
    ASSERT_TRUE(r.ring.pop_vector(out, Deadline::never()));
    ASSERT_EQ(out, f) << "frame " << i;
  }
  EXPECT_TRUE(r.ring.empty());
}

TEST(SpscRing, TwoProcessesMillionsOfRandomFramesArriveIntactAndInOrder) {
  RingInSegment r(1 << 14);
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  constexpr uint64_t kFrames = 200'000;  // instrumented builds run ~10x slower
#else
  constexpr uint64_t kFrames = 2'000'000;
#endif
  ChildProcess producer([&] {
    auto seg = SharedSegment::attach(r.seg.name());
    auto ring = SpscRing::attach(seg.data());
    for (uint64_t i = 0; i < kFrames; ++i) {
      auto f = make_frame(i, 300);
      if (!ring.push(std::span<const std::byte>(f), Deadline::after(30s))) return 3;
    }
    return 0;
  });
  std::vector<std::byte> out;
  for (uint64_t i = 0; i < kFrames; ++i) {
    ASSERT_TRUE(r.ring.pop_vector(out, Deadline::after(30s))) << "timed out at frame " << i;
    ASSERT_EQ(out, make_frame(i, 300)) << "frame " << i;
  }
  EXPECT_TRUE(producer.succeeded());
}

TEST(SpscRing, MultiPartFrameIsOneFrame) {
  RingInSegment r(128);
  const char a[] = "abc", b[] = "defgh";
  ASSERT_TRUE(r.ring.try_push({std::as_bytes(std::span(a, 3)), std::as_bytes(std::span(b, 5))}));
  std::vector<std::byte> out;
  ASSERT_TRUE(r.ring.pop_vector(out, Deadline::never()));
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(out.data()), out.size()), "abcdefgh");
}

TEST(SpscRing, FrameLargerThanCapacityIsRefusedNotHung) {
  RingInSegment r(1024);
  std::vector<std::byte> big(r.ring.max_frame() + 1);
  EXPECT_THROW(r.ring.push(std::span<const std::byte>(big), Deadline::never()), shoal::FrameTooLargeError);
  std::vector<std::byte> fits(r.ring.max_frame());
  EXPECT_TRUE(r.ring.try_push(std::span<const std::byte>(fits)));
}

TEST(SpscRing, FullRingTimesOutThenAcceptsAfterPop) {
  RingInSegment r(128);
  std::vector<std::byte> f(56);  // 64 bytes per frame with its header
  ASSERT_TRUE(r.ring.try_push(std::span<const std::byte>(f)));
  ASSERT_TRUE(r.ring.try_push(std::span<const std::byte>(f)));
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(r.ring.push(std::span<const std::byte>(f), Deadline::after(50ms)));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 45ms);
  std::vector<std::byte> out;
  ASSERT_TRUE(r.ring.pop_vector(out, Deadline::never()));
  EXPECT_TRUE(r.ring.try_push(std::span<const std::byte>(f)));
}

TEST(SpscRing, SleepingConsumerInAnotherProcessIsWokenByPush) {
  RingInSegment r(4096);
  ChildProcess consumer([&] {
    auto seg = SharedSegment::attach(r.seg.name());
    auto ring = SpscRing::attach(seg.data());
    std::vector<std::byte> out;
    return ring.pop_vector(out, Deadline::after(10s)) && out.size() == 5 ? 0 : 1;
  });
  std::this_thread::sleep_for(100ms);  // let the consumer go to sleep on the futex
  const char msg[] = "wake!";
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(r.ring.try_push(std::as_bytes(std::span(msg, 5))));
  ASSERT_TRUE(consumer.succeeded(5s));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
}

TEST(SpscRing, CloseWakesConsumerAndDrainsFirst) {
  RingInSegment r(256);
  const char msg[] = "last";
  ASSERT_TRUE(r.ring.try_push(std::as_bytes(std::span(msg, 4))));
  r.ring.close();
  std::vector<std::byte> out;
  EXPECT_TRUE(r.ring.pop_vector(out, Deadline::never()));
  EXPECT_THROW(r.ring.pop_vector(out, Deadline::never()), shoal::ClosedError);
  EXPECT_THROW(r.ring.try_push(std::as_bytes(std::span(msg, 4))), shoal::ClosedError);
}

TEST(SpscRing, RandomBytesInTheRingRaiseCorruptFrameNeverCrash) {
  std::mt19937_64 rng(42);
  int corrupt = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    RingInSegment r(256);
    auto* hdr = r.ring.header();
    auto* data = reinterpret_cast<unsigned char*>(hdr) + (SpscRing::bytes_needed(256) - 256);
    for (int k = 0; k < 256; ++k) data[k] = static_cast<unsigned char>(rng());
    hdr->head.store(rng() % 512);  // sometimes inconsistent with tail on purpose
    std::vector<std::byte> out;
    try {
      while (r.ring.try_pop([&](std::size_t n) { out.resize(n); return out.data(); })) {
      }
    } catch (const shoal::CorruptFrameError&) {
      ++corrupt;
    }
  }
  EXPECT_GT(corrupt, 1900);
}
