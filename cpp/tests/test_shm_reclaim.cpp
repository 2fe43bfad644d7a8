// Stale shared-memory cleanup (reclaim_stale_segments): it removes only names of
// our exact format whose owner is provably gone, and never a live owner's
// segment, even when the owner's pid looks dead from here (another PID
// namespace sharing /dev/shm shows every pid of ours as nonexistent).
//
// "Looks dead" is simulated with pids above PID_MAX_LIMIT (2^22), which no
// process can ever have: kill(pid, 0) says ESRCH for them, as it does here for
// the pids of a program in another PID namespace.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "shoal/ipc/segment.hpp"

using shoal::SharedSegment;
using shoal::testing::ChildProcess;
using namespace std::chrono_literals;

namespace {

const std::string kShm = "/dev/shm/";

// A pid no process can have (PID_MAX_LIMIT is 2^22), distinct per test process
// and per `k` so that concurrent test runs never share names.
pid_t dead_pid(int k) { return static_cast<pid_t>(1'000'000'000 + getpid() * 16 + k); }

bool exists_nofollow(const std::string& name) {
  struct stat st {};
  return lstat((kShm + name).c_str(), &st) == 0;
}

std::vector<std::string> names_with_prefix(const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm")) {
    std::string name = entry.path().filename().string();
    if (name.starts_with(prefix)) out.push_back(name);
  }
  return out;
}

std::string token_prefix(pid_t pid) { return "shoal-lock-" + std::to_string(pid) + "-"; }

// Unlinks every name it was given (never following symlinks) when it goes.
struct Cleanup {
  std::vector<std::string> names;
  std::vector<std::filesystem::path> paths;
  ~Cleanup() {
    for (const auto& n : names) ::unlink((kShm + n).c_str());
    for (const auto& n : names) ::rmdir((kShm + n).c_str());
    std::error_code ec;
    for (const auto& p : paths) std::filesystem::remove_all(p, ec);
  }
  const std::string& add(const std::string& name) { return names.emplace_back(name); }
};

// A regular file in /dev/shm with exactly this size and mode.
void plant_file(const std::string& name, off_t size, mode_t mode) {
  int fd = ::open((kShm + name).c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, mode);
  ASSERT_GE(fd, 0) << name << ": " << std::strerror(errno);
  ASSERT_EQ(fchmod(fd, mode), 0);
  ASSERT_EQ(ftruncate(fd, size), 0);
  ::close(fd);
}

std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A pipe with a timeout on reads, for telling a child when to go on.
struct Pipe {
  int fd[2] = {-1, -1};
  Pipe() {
    if (pipe2(fd, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  }
  ~Pipe() {
    for (int f : fd)
      if (f >= 0) ::close(f);
  }
  void send(const std::string& s) { (void)!::write(fd[1], s.c_str(), s.size() + 1); }
  // Reads one NUL-terminated message; empty on timeout or EOF.
  std::string receive(std::chrono::milliseconds timeout = 30s) {
    std::string out;
    auto until = std::chrono::steady_clock::now() + timeout;
    while (true) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      if (left.count() <= 0) return {};
      pollfd p{fd[0], POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) return {};
      char c;
      if (::read(fd[0], &c, 1) != 1) return {};
      if (c == '\0') return out;
      out.push_back(c);
    }
  }
};

// Renames /dev/shm/<from> to /dev/shm/<to>.
void rename_shm(const std::string& from, const std::string& to) {
  ASSERT_EQ(::rename((kShm + from).c_str(), (kShm + to).c_str()), 0) << from << ": " << std::strerror(errno);
}

// Reclaims until `name` is gone or `timeout` passes; true if it went.
bool reclaimed_within(const std::string& name, std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (true) {
    shoal::reclaim_stale_segments();
    if (!exists_nofollow(name)) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(5ms);
  }
}

}  // namespace

// The owner is alive but its pid looks dead: its segment and its token are
// renamed to a pid that cannot exist. The owner still holds the lock on its
// token, so cleanup keeps both; once the owner exits, cleanup removes both.
TEST(StaleSegments, ALiveOwnerWhosePidLooksDeadKeepsItsSegment) {
  Pipe names, go;
  ChildProcess child([&] {
    auto seg = SharedSegment::create(4096);
    names.send(seg.name());
    go.receive(60s);  // until the test is done looking (or a minute)
    return 0;
  });
  const std::string original = names.receive();
  ASSERT_FALSE(original.empty());
  const std::string hex = original.substr(original.rfind('-') + 1);
  const pid_t fake = dead_pid(0);
  ASSERT_EQ(kill(fake, 0), -1);
  ASSERT_EQ(errno, ESRCH);

  Cleanup cleanup;
  const std::string seg_name = cleanup.add("shoal-" + std::to_string(fake) + "-" + hex);
  rename_shm(original, seg_name);
  std::vector<std::string> tokens;
  for (const auto& t : names_with_prefix(token_prefix(child.pid()))) {
    tokens.push_back(cleanup.add(token_prefix(fake) + t.substr(t.rfind('-') + 1)));
    rename_shm(t, tokens.back());
  }

  shoal::reclaim_stale_segments();
  EXPECT_TRUE(exists_nofollow(seg_name)) << "a live owner's segment was removed";
  for (const auto& t : tokens) EXPECT_TRUE(exists_nofollow(t)) << "a live owner's token was removed";

  go.send("exit");
  ASSERT_TRUE(child.succeeded(30s));
  EXPECT_TRUE(reclaimed_within(seg_name, 10s)) << "the segment outlived its owner";
  for (const auto& t : tokens) EXPECT_FALSE(exists_nofollow(t)) << "the dead owner's token was left behind";
}

// Names that are not exactly ours, or files that are not what we create, stay
// whatever the pid in them says; a symlink is never followed (its target is
// untouched) nor removed. The one genuine stale segment among them goes.
TEST(StaleSegments, PlantedFilesAndSymlinksAreNeverTouched) {
  const std::string pid = std::to_string(dead_pid(1));
  const std::string seg = "shoal-" + pid + "-";
  Cleanup cleanup;
  auto dir = std::filesystem::temp_directory_path() / ("shoal-reclaim-test-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  cleanup.paths.push_back(dir);
  std::ofstream(dir / "target") << "precious";
  std::ofstream(dir / "token-target") << "also precious";

  std::vector<std::string> keep;
  auto planted = [&](const std::string& name) { keep.push_back(cleanup.add(name)); };
  planted(seg + "fake");
  plant_file(keep.back(), 4096, 0600);
  planted(seg + "0123456789abcdef");  // a symlink with a perfect name
  ASSERT_EQ(symlink((dir / "target").c_str(), (kShm + keep.back()).c_str()), 0);
  planted(token_prefix(dead_pid(1)) + "0123456789abcdef");
  ASSERT_EQ(symlink((dir / "token-target").c_str(), (kShm + keep.back()).c_str()), 0);
  planted(seg + "fedcba9876543210");  // a FIFO: opening it must not block either
  ASSERT_EQ(mkfifo((kShm + keep.back()).c_str(), 0600), 0);
  planted(seg + "00000000000000aa");  // not mode 0600
  plant_file(keep.back(), 4096, 0644);
  planted(seg + "00000000000000bb");  // not a whole number of pages
  plant_file(keep.back(), 100, 0600);
  planted(seg + "0123456789ABCDEF");  // upper-case hex: not a name we make
  plant_file(keep.back(), 4096, 0600);
  planted(seg + "0123456789abcdef0");  // 17 digits
  plant_file(keep.back(), 4096, 0600);
  planted(seg + "0123456789abcde.x");
  plant_file(keep.back(), 4096, 0600);
  planted("shoal-0" + pid + "-0123456789abcdef");  // a leading zero
  plant_file(keep.back(), 4096, 0600);
  planted("shoal-+" + pid + "-0123456789abcdef");
  plant_file(keep.back(), 4096, 0600);
  planted(seg + "00000000000000cc");  // a directory
  ASSERT_EQ(mkdir((kShm + keep.back()).c_str(), 0700), 0);
  planted(seg + "00000000000000dd");  // a second link to another file
  plant_file(keep.back(), 4096, 0600);
  planted("shoal-reclaim-test-link-" + std::to_string(getpid()));
  ASSERT_EQ(link((kShm + seg + "00000000000000dd").c_str(), (kShm + keep.back()).c_str()), 0);

  const std::string stale = cleanup.add(seg + "00000000000000ee");  // the real thing
  plant_file(stale, 4096, 0600);

  EXPECT_GE(shoal::reclaim_stale_segments(), 1u);
  EXPECT_FALSE(exists_nofollow(stale)) << "a stale segment of ours was kept";
  for (const auto& name : keep) EXPECT_TRUE(exists_nofollow(name)) << name << " was removed";
  EXPECT_EQ(read_all(dir / "target"), "precious");
  EXPECT_EQ(read_all(dir / "token-target"), "also precious");
  EXPECT_TRUE(std::filesystem::is_symlink(kShm + seg + "0123456789abcdef"));
}

// SIGKILL leaves both the segment and the owner's token behind; the next
// cleanup removes both.
TEST(StaleSegments, AKilledOwnersSegmentAndTokenAreBothReclaimed) {
  Pipe names;
  ChildProcess child([&] {
    auto seg = SharedSegment::create(4096);
    names.send(seg.name());
    pause();
    return 0;
  });
  const std::string name = names.receive();
  ASSERT_FALSE(name.empty());
  Cleanup cleanup;
  cleanup.add(name);
  const auto tokens = names_with_prefix(token_prefix(child.pid()));
  for (const auto& t : tokens) cleanup.add(t);
  child.kill_now();
  ASSERT_NE(child.wait(30s), -1);
  EXPECT_TRUE(reclaimed_within(name, 10s));
  EXPECT_TRUE(names_with_prefix(token_prefix(child.pid())).empty());
}

// A forked copy of the owner shares the open file description that holds the
// lock, so it keeps the owner's segments (which it may still be using) alive
// after the owner itself was killed; they go once the copy is gone too.
TEST(StaleSegments, AForkedCopyOfTheOwnerKeepsItsSegmentsAlive) {
  Pipe names, go, copy_gone;
  ChildProcess owner([&] {
    auto seg = SharedSegment::create(4096);
    pid_t copy = fork();
    if (copy == 0) {
      ::close(copy_gone.fd[0]);
      go.receive(60s);
      _exit(0);  // closes its end of copy_gone too
    }
    ::close(copy_gone.fd[1]);
    names.send(seg.name());
    pause();
    return 0;
  });
  ::close(copy_gone.fd[1]);
  copy_gone.fd[1] = -1;
  const std::string name = names.receive();
  ASSERT_FALSE(name.empty());
  Cleanup cleanup;
  cleanup.add(name);
  for (const auto& t : names_with_prefix(token_prefix(owner.pid()))) cleanup.add(t);
  owner.kill_now();
  ASSERT_NE(owner.wait(30s), -1);

  shoal::reclaim_stale_segments();
  EXPECT_TRUE(exists_nofollow(name)) << "removed while a forked copy of its owner lives";

  go.send("exit");
  EXPECT_TRUE(copy_gone.receive(30s).empty());  // EOF: the copy exited
  EXPECT_TRUE(reclaimed_within(name, 10s));
}

// A token held by this very process, for a pid that cannot exist.
TEST(StaleSegments, AHeldTokenKeepsItsPidsSegmentsAndALetGoOneTakesThemAlong) {
  const pid_t fake = dead_pid(2);
  Cleanup cleanup;
  std::string token;
  int fd = shoal::segment_detail::create_owner_token(fake, &token);
  ASSERT_GE(fd, 0);
  cleanup.add(token);
  EXPECT_TRUE(token.starts_with(token_prefix(fake)));
  struct stat st {};
  ASSERT_EQ(lstat((kShm + token).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_size, 64);
  const std::string seg = cleanup.add(shoal::segment_detail::random_segment_name(fake));
  plant_file(seg, 8192, 0600);

  shoal::reclaim_stale_segments();
  EXPECT_TRUE(exists_nofollow(seg));
  EXPECT_TRUE(exists_nofollow(token));
  ::close(fd);
  EXPECT_GE(shoal::reclaim_stale_segments(), 1u);
  EXPECT_FALSE(exists_nofollow(seg));
  EXPECT_FALSE(exists_nofollow(token));
}

// An empty token is one whose creator had not written it yet: held, it still
// proves its holder alive; let go, it goes like any other.
TEST(StaleSegments, AnEmptyTokenCountsByItsLock) {
  const std::string pid = std::to_string(dead_pid(3));
  Cleanup cleanup;
  const std::string token = cleanup.add("shoal-lock-" + pid + "-00000000000000aa");
  const std::string seg = cleanup.add("shoal-" + pid + "-00000000000000aa");
  plant_file(token, 0, 0600);
  plant_file(seg, 4096, 0600);
  int fd = ::open((kShm + token).c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(flock(fd, LOCK_SH), 0);
  shoal::reclaim_stale_segments();
  EXPECT_TRUE(exists_nofollow(seg));
  EXPECT_TRUE(exists_nofollow(token));
  ::close(fd);
  shoal::reclaim_stale_segments();
  EXPECT_FALSE(exists_nofollow(seg));
  EXPECT_FALSE(exists_nofollow(token));
}

// A file with a token's name but not a token's contents is not ours: it stays,
// and proves nothing about the segments of its pid.
TEST(StaleSegments, AForeignFileWithATokensNameIsLeftAlone) {
  const std::string pid = std::to_string(dead_pid(4));
  Cleanup cleanup;
  const std::string token = cleanup.add("shoal-lock-" + pid + "-00000000000000bb");
  const std::string seg = cleanup.add("shoal-" + pid + "-00000000000000bb");
  {
    int fd = ::open((kShm + token).c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    const std::string junk(64, 'x');
    ASSERT_EQ(::write(fd, junk.data(), junk.size()), 64);
    ::close(fd);
  }
  plant_file(seg, 4096, 0600);
  shoal::reclaim_stale_segments();
  EXPECT_TRUE(exists_nofollow(token));
  EXPECT_FALSE(exists_nofollow(seg));
}

// A process holds one token however many segments it makes, and unlinks it
// when it exits normally.
TEST(StaleSegments, OneTokenPerProcessGoneAtExit) {
  Pipe names, go;
  ChildProcess child([&]() -> int {
    std::vector<SharedSegment> segs;
    for (int i = 0; i < 20; ++i) segs.push_back(SharedSegment::create(4096));
    names.send(std::to_string(names_with_prefix(token_prefix(getpid())).size()));
    go.receive(60s);
    segs.clear();
    std::exit(0);  // runs the exit handlers, unlike ChildProcess's _exit
  });
  EXPECT_EQ(names.receive(), "1");
  go.send("exit");
  ASSERT_TRUE(child.succeeded(30s));
  EXPECT_TRUE(names_with_prefix(token_prefix(child.pid())).empty());
  EXPECT_TRUE(names_with_prefix("shoal-" + std::to_string(child.pid()) + "-").empty());
}
