// A worker's end of its pool slot, against a bare PoolLayout (no engine): a
// result too big for the ring is spilled into a segment named after the pool's
// owner, so it outlives the worker that made it, and another program's
// stale-segment cleanup after the worker's exit leaves it for the parent.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>

#include "child_process.hpp"
#include "shoal/ipc/segment.hpp"
#include "shoal/wire/blob.hpp"
#include "shoal/engine/pool_layout.hpp"
#include "shoal/wire/protocol.hpp"
#include "shoal/engine/worker_endpoint.hpp"

using shoal::PoolLayout;
using shoal::WorkerEndpoint;
using shoal::testing::ChildProcess;
using namespace std::chrono_literals;
namespace proto = shoal::proto;

namespace {

bool shm_exists(const std::string& name) { return std::filesystem::exists("/dev/shm/" + name); }

std::string prefix_of(pid_t pid) { return "shoal-" + std::to_string(pid) + "-"; }

}  // namespace

TEST(WorkerEndpoint, ASpilledResultOutlivesItsWorkerAndAStaleSegmentCleanup) {
  PoolLayout layout = PoolLayout::create(1, 64 * 1024);
  const std::string big(1 << 20, 'r');  // far past the ring's inline limit
  ChildProcess worker([&] {
    WorkerEndpoint ep(layout.segment().name(), 0);
    if (ep.spill_owner() != getppid()) return 2;
    ep.send_result(42, proto::Status::ok, 5, big);
    return 0;  // exits (with _exit, as pool workers do) before the parent reads
  });
  ASSERT_TRUE(worker.succeeded(30s));
  shoal::reclaim_stale_segments();  // as another program's `import shoal` would, the worker being gone

  proto::FrameHeader h{};
  std::string wire;
  ASSERT_TRUE(layout.outbox(0).try_pop_split(&h, sizeof h, [&](std::size_t n) {
    wire.resize(n);
    return reinterpret_cast<std::byte*>(wire.data());
  }));
  EXPECT_EQ(h.kind, proto::Kind::result);
  EXPECT_EQ(h.id, 42u);
  ASSERT_TRUE(h.tag & proto::kSpilled);
  EXPECT_TRUE(wire.starts_with(prefix_of(getpid()))) << wire;  // the owner's name, not the worker's
  ASSERT_TRUE(shm_exists(wire)) << wire << " was removed while its result was unread";
  EXPECT_EQ(shoal::take_spilled(wire, true), big);
  EXPECT_FALSE(shm_exists(wire));  // the receiver unlinked it
}

TEST(WorkerEndpoint, SmallResultsTravelInlineAndNothingIsLeftInDevShm) {
  PoolLayout layout = PoolLayout::create(1, 64 * 1024);
  ChildProcess worker([&] {
    WorkerEndpoint ep(layout.segment().name(), 0);
    ep.send_result(1, proto::Status::ok, 0, "small");
    ep.send_result(2, proto::Status::ok, 0, std::string(100'000, 's'));
    return 0;
  });
  ASSERT_TRUE(worker.succeeded(30s));
  for (uint64_t want : {1u, 2u}) {
    proto::FrameHeader h{};
    std::string wire;
    ASSERT_TRUE(layout.outbox(0).try_pop_split(&h, sizeof h, [&](std::size_t n) {
      wire.resize(n);
      return reinterpret_cast<std::byte*>(wire.data());
    }));
    EXPECT_EQ(h.id, want);
    if (want == 1) {
      EXPECT_FALSE(h.tag & proto::kSpilled);
      EXPECT_EQ(wire, "small");
    } else {
      ASSERT_TRUE(h.tag & proto::kSpilled);
      EXPECT_EQ(shoal::take_spilled(wire, true).size(), 100'000u);
    }
  }
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm"))
    EXPECT_FALSE(entry.path().filename().string().starts_with(prefix_of(worker.pid())))
        << entry.path() << " was left by the worker";
}

TEST(Blob, SpillForNamesTheSegmentAfterItsOwnerAndLeavesTheNameToTheReceiver) {
  const pid_t owner = getppid();  // alive, and not this process
  const std::string name = shoal::spill_for(owner, "the payload");
  EXPECT_TRUE(name.starts_with(prefix_of(owner))) << name;
  EXPECT_TRUE(shm_exists(name));
  EXPECT_EQ(std::filesystem::file_size("/dev/shm/" + name) % static_cast<std::uintmax_t>(sysconf(_SC_PAGESIZE)), 0u);
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm"))  // no token made for a pid not ours
    EXPECT_FALSE(entry.path().filename().string().starts_with("shoal-lock-" + std::to_string(owner) + "-"));
  EXPECT_EQ(shoal::take_spilled(name, true), "the payload");
  EXPECT_FALSE(shm_exists(name));
}
