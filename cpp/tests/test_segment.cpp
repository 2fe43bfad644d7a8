#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "child_process.hpp"
#include "shoal/base/errors.hpp"
#include "shoal/ipc/segment.hpp"

using shoal::SharedSegment;
using shoal::testing::ChildProcess;

namespace {
bool shm_exists(const std::string& name) { return std::filesystem::exists("/dev/shm/" + name); }
}  // namespace

TEST(SharedSegment, CreateNamesMode0600AndUnlinksOnDestruction) {
  std::string name;
  {
    auto seg = SharedSegment::create(1000);
    name = seg.name();
    EXPECT_TRUE(name.starts_with("shoal-" + std::to_string(getpid()) + "-"));
    EXPECT_GE(seg.size(), 1000u);
    struct stat st {};
    ASSERT_EQ(stat(("/dev/shm/" + name).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    EXPECT_TRUE(seg.owns_name());
  }
  EXPECT_FALSE(shm_exists(name));
}

TEST(SharedSegment, AttachSeesWritesFromAnotherProcess) {
  auto seg = SharedSegment::create(4096);
  const std::string name = seg.name();
  ChildProcess child([&] {
    auto mine = SharedSegment::attach(name);
    if (mine.owns_name()) return 2;
    std::strcpy(static_cast<char*>(mine.data()), "hello from child");
    return 0;
  });
  ASSERT_TRUE(child.succeeded());
  EXPECT_STREQ(static_cast<const char*>(seg.data()), "hello from child");
}

TEST(SharedSegment, AttachMissingNameThrowsNotFoundNamingIt) {
  try {
    SharedSegment::attach("shoal-1-doesnotexist");
    FAIL() << "expected NotFoundError";
  } catch (const shoal::NotFoundError& e) {
    EXPECT_NE(std::string(e.what()).find("shoal-1-doesnotexist"), std::string::npos);
  }
}

TEST(SharedSegment, ForkedCopyDoesNotUnlinkTheParentsName) {
  auto seg = SharedSegment::create(4096);
  ChildProcess child([&] {
    seg.close();  // the child's copy: must not remove the parent's name
    return 0;
  });
  ASSERT_TRUE(child.succeeded());
  EXPECT_TRUE(shm_exists(seg.name()));
}

TEST(SharedSegment, ReclaimRemovesSegmentsOfKilledProcesses) {
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  ChildProcess child([&] {
    auto seg = SharedSegment::create(4096);
    std::string name = seg.name();
    (void)!write(pipefd[1], name.c_str(), name.size() + 1);
    pause();  // killed with SIGKILL below: the destructor never runs
    return 0;
  });
  char buf[128] = {};
  ASSERT_GT(read(pipefd[0], buf, sizeof buf), 0);
  close(pipefd[0]);
  close(pipefd[1]);
  std::string name = buf;
  ASSERT_TRUE(shm_exists(name));
  child.kill_now();
  child.wait();
  auto live = SharedSegment::create(64);  // a live owner's segment must survive
  EXPECT_GE(shoal::reclaim_stale_segments(), 1u);
  EXPECT_FALSE(shm_exists(name));
  EXPECT_TRUE(shm_exists(live.name()));
}
