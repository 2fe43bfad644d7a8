// A worker's end of its pool slot, against a bare PoolLayout (no engine): a
// result too big for the ring is spilled into a segment named after the pool's
// owner, so it outlives the worker that made it, and another program's
// stale-segment cleanup after the worker's exit leaves it for the parent.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
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

// ---- the layout version --------------------------------------------------------------

namespace {

// The error attach() gives for `name`, or "" if it attaches.
template <class Attach>
std::string attach_error(Attach attach, uint32_t* found = nullptr) {
  try {
    attach();
  } catch (const shoal::LayoutVersionError& e) {
    if (found) *found = e.found;
    EXPECT_EQ(e.expected, shoal::PoolHeader::kVersion);
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a LayoutVersionError: " << e.what();
    return e.what();
  }
  return "";
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

// The two words every layout keeps where they are: a tool of another build
// reads them before anything else.
TEST(PoolLayoutVersion, MagicAndVersionLieAtTheirFixedOffsets) {
  PoolLayout layout = PoolLayout::create(2, 64 * 1024);
  uint64_t magic;
  uint32_t version;
  std::memcpy(&magic, layout.segment().bytes() + shoal::PoolHeader::kMagicOffset, sizeof magic);
  std::memcpy(&version, layout.segment().bytes() + shoal::PoolHeader::kVersionOffset, sizeof version);
  EXPECT_EQ(magic, shoal::PoolHeader::kMagic);
  EXPECT_EQ(version, shoal::PoolHeader::kVersion);
  EXPECT_EQ(PoolLayout::attach(layout.segment().name()).slots(), 2u);
}

// A pool of another layout version (made by another version of shoal) is
// refused with an error that names both versions: by PoolLayout::attach, by a
// worker's endpoint, and by a worker process attaching it.
TEST(PoolLayoutVersion, AttachingAPoolOfAnotherVersionFailsClearly) {
  PoolLayout layout = PoolLayout::create(1, 64 * 1024);
  const std::string name = layout.segment().name();
  const uint32_t other = shoal::PoolHeader::kVersion + 1;
  layout.header().version = other;

  uint32_t found = 0;
  const std::string error = attach_error([&] { PoolLayout::attach(name); }, &found);
  EXPECT_EQ(found, other);
  EXPECT_TRUE(has(error, "layout version " + std::to_string(other))) << error;
  EXPECT_TRUE(has(error, "reads layout version " + std::to_string(shoal::PoolHeader::kVersion))) << error;
  EXPECT_TRUE(has(error, "another version of shoal")) << error;
  EXPECT_TRUE(has(error, name)) << error;

  EXPECT_EQ(attach_error([&] { WorkerEndpoint(name, 0); }), error);
  // In a worker process, as the pool's workers attach.
  ChildProcess worker([&] {
    try {
      WorkerEndpoint ep(name, 0);
    } catch (const shoal::LayoutVersionError& e) {
      return e.found == other ? 0 : 3;
    } catch (...) {
      return 4;
    }
    return 2;
  });
  EXPECT_TRUE(worker.succeeded());

  // The engine's own check of its header says the same in its words.
  const auto fault = layout.header_fault();
  ASSERT_TRUE(fault.has_value());
  EXPECT_TRUE(has(*fault, "layout version is " + std::to_string(other))) << *fault;
  layout.header().version = shoal::PoolHeader::kVersion;
  EXPECT_FALSE(layout.header_fault().has_value());
  EXPECT_EQ(PoolLayout::attach(name).slots(), 1u);
}

// The version is judged from the first 16 bytes alone: whatever another
// layout keeps after them (here bytes that would be a corrupt header in this
// one) is never read, and the error is about the version.
TEST(PoolLayoutVersion, NothingAfterTheVersionWordIsReadForAnotherVersion) {
  shoal::SharedSegment seg = shoal::SharedSegment::create(4096);
  const uint64_t magic = shoal::PoolHeader::kMagic;
  const uint32_t version = shoal::PoolHeader::kVersion + 7;
  std::memset(seg.data(), 0xff, seg.size());
  std::memcpy(seg.bytes() + shoal::PoolHeader::kMagicOffset, &magic, sizeof magic);
  std::memcpy(seg.bytes() + shoal::PoolHeader::kVersionOffset, &version, sizeof version);
  uint32_t found = 0;
  const std::string error = attach_error([&] { PoolLayout::attach(seg.name()); }, &found);
  EXPECT_EQ(found, version);
  EXPECT_TRUE(has(error, "layout version " + std::to_string(version))) << error;
}
