// A program built against the installed shoal package (find_package(shoal),
// shoal::shoal) that uses a few public headers across two processes:
// a forked child attaches the parent's arena by name, writes into a block the
// parent allocated, sends a frame through an SPSC ring in a shared segment and
// releases a process-shared semaphore; the parent waits on the semaphore, pops
// the frame and reads the block. Prints "shoal consumer: ok" when all of it
// held together.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <new>
#include <span>
#include <string>
#include <vector>

#include <shoal/base/deadline.hpp>
#include <shoal/ipc/ring.hpp>
#include <shoal/ipc/segment.hpp>
#include <shoal/ipc/semaphore.hpp>
#include <shoal/mem/arena.hpp>

namespace {

constexpr std::size_t kRingCapacity = 4096;
constexpr std::size_t kRingOffset = 64;  // the semaphore sits before the ring
static_assert(sizeof(shoal::Semaphore) <= kRingOffset);

int fail(const char* what) {
  std::fprintf(stderr, "shoal consumer: %s\n", what);
  return 1;
}

}  // namespace

int main() {
  using namespace std::chrono_literals;

  shoal::SharedSegment segment =
      shoal::SharedSegment::create(kRingOffset + shoal::SpscRing::bytes_needed(kRingCapacity));
  auto* done = new (segment.data()) shoal::Semaphore(0);
  shoal::SpscRing ring = shoal::SpscRing::init(segment.bytes() + kRingOffset, kRingCapacity);

  auto arena = shoal::SharedArena::create(std::size_t{16} << 20);
  const shoal::Block block = arena->alloc(64, /*zero=*/true);
  const std::string arena_name = arena->name();

  const pid_t child = fork();
  if (child < 0) return fail("fork failed");
  if (child == 0) {
    int rc = 0;
    try {
      auto mine = shoal::SharedArena::attach(arena_name);
      mine->retain(block);
      std::memcpy(mine->data(block), "written by the child", 21);
      mine->release(block);
      const std::string text = "hello from " + std::to_string(getpid());
      if (!ring.push(std::as_bytes(std::span(text)), shoal::Deadline::after(10s))) rc = 2;
      done->release();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
      rc = 3;
    }
    _exit(rc);
  }

  const bool released = done->acquire(shoal::Deadline::after(20s));
  std::vector<std::byte> frame;
  const bool popped = released && ring.pop_vector(frame, shoal::Deadline::after(1s));
  int status = 0;
  waitpid(child, &status, 0);
  if (!released) return fail("the child never released the semaphore");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return fail("the child failed");
  if (!popped) return fail("no frame in the ring");

  const std::string text(reinterpret_cast<const char*>(frame.data()), frame.size());
  const std::string expected = "hello from " + std::to_string(child);
  if (text != expected) return fail("the frame is not the child's");
  const char* written = reinterpret_cast<const char*>(arena->data(block));
  if (std::strcmp(written, "written by the child") != 0) return fail("the block is not what the child wrote");
  if (arena->refcount(block) != 1) return fail("the block's refcount is not back to 1");
  arena->release(block);
  if (arena->used_bytes() != 0 || !arena->check().empty()) return fail("the arena is not empty and sound");

  std::printf("ring: %s\nblock: %s\nshoal consumer: ok\n", text.c_str(), written);
  return 0;
}
