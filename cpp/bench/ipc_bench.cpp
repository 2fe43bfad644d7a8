// IPC benchmarks for shoal's shared-memory ring, side by side with the kernel's
// pipes and Unix sockets, measured in one run on one machine.
//
//   ipc_bench [--quick] [--json PATH]
//
// 1. Round-trip latency between two processes (fork): a pair of SpscRings in a
//    SharedSegment (one ring each way, the blocking push/pop with a Deadline, i.e.
//    spin-then-futex as the rings do), a pair of pipes, and a Unix socketpair
//    (SOCK_STREAM). Small messages; median, p90, p99 and mean per round trip. Two
//    more ring rows for context: a waiter that spins with try_pop for up to 20 µs
//    before the blocking pop (what a longer spin in the engine would give), and a
//    busy-poll pair that never sleeps (the transport's floor). The transports are
//    interleaved in rounds so a burst of machine noise hits all of them.
// 2. Ring throughput, one producer process to one consumer process, for 64 B,
//    4 KiB and 1 MiB frames through an 8 MiB ring, next to single-thread memcpy
//    of the same sizes from the same kind of source (hot in cache for the small
//    frames; 1 MiB blocks streamed from a 256 MiB buffer, larger than the LLC, for
//    the big one). The ring copies every byte twice (push copies in, pop copies
//    out), each on its own core. A second variant has the consumer read each frame
//    in place instead of popping it (one copy in, one read pass): it measures what
//    a zero-copy peek/commit API would give; it uses only the ring's public header
//    (RingHeader, wait_readable, bytes_needed) and the frame layout ring.hpp documents.
//
// Every payload carries a sequence number that the receiver checks; --quick also
// checks every byte of every frame. Exit status 0 means every check passed.
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "shoal/base/deadline.hpp"
#include "shoal/ipc/ring.hpp"
#include "shoal/ipc/segment.hpp"

namespace {

using shoal::Deadline;
using shoal::SharedSegment;
using shoal::SpscRing;
using Clock = std::chrono::steady_clock;

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

// A Deadline that never passes, shared by every blocking call.
const Deadline kNever = Deadline::never();
// Where results nobody reads are stored, so the work producing them stays.
volatile uint64_t g_sink = 0;

uint64_t now_ns() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count());
}

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "ipc_bench: %s\n", what.c_str());
  std::exit(1);
}

void check(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error(what);
}

// Runs fn() in a forked child, which exits with fn's return value (2 if it throws).
template <class F>
pid_t fork_child(F&& fn) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) fail(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    int rc = 2;
    try {
      rc = fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ipc_bench child: %s\n", e.what());
    }
    std::fflush(nullptr);
    ::_exit(rc);
  }
  return pid;
}

void reap(pid_t pid, const char* what) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) fail(std::string("waitpid: ") + std::strerror(errno));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error(std::string(what) + ": child process failed (status " + std::to_string(status) + ")");
}

// Keeps the compiler from dropping a copy whose result is never read.
inline void clobber() { asm volatile("" ::: "memory"); }

void write_all(int fd, const void* p, std::size_t n) {
  auto* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(std::string("write: ") + std::strerror(errno));
    }
    c += w;
    n -= static_cast<std::size_t>(w);
  }
}

void read_all(int fd, void* p, std::size_t n) {
  auto* c = static_cast<char*>(p);
  while (n) {
    const ssize_t r = ::read(fd, c, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(std::string("read: ") + std::strerror(errno));
    }
    if (r == 0) throw std::runtime_error("read: unexpected end of stream");
    c += r;
    n -= static_cast<std::size_t>(r);
  }
}

// --- statistics ---------------------------------------------------------------

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<std::size_t>(rank);
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

double median(std::vector<double> v) { return percentile(std::move(v), 50); }

std::string fmt(double x, int prec = 2) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", prec, x);
  return buf;
}

std::string size_name(std::size_t n) {
  if (n >= MiB && n % MiB == 0) return std::to_string(n / MiB) + " MiB";
  if (n >= KiB && n % KiB == 0) return std::to_string(n / KiB) + " KiB";
  return std::to_string(n) + " B";
}

// --- 1. round-trip latency ----------------------------------------------------

// One message: a sequence number, padded to `msg` bytes. The echo side sends
// back what it got; the timing side checks the number came back.
struct PingPong {
  std::size_t msg;
  int warmup;
  int count;
};

// How a ring ping-pong waits for the peer's frame.
enum class Wait {
  blocking,  // the ring's own push/pop with a Deadline: 64 pause spins, then futex
  spin_20us,  // try_pop for up to 20 µs, then the blocking pop (what a longer spin would give)
  busy,       // try_push/try_pop, never sleeps: the transport's floor, not how the ring is used
};

std::vector<double> ring_round_trips(const PingPong& pp, Wait wait) {
  constexpr std::size_t kCap = 64 * KiB;
  const std::size_t per = SpscRing::bytes_needed(kCap);
  SharedSegment seg = SharedSegment::create(2 * per);
  SpscRing to_child = SpscRing::init(seg.bytes(), kCap);
  SpscRing to_parent = SpscRing::init(seg.bytes() + per, kCap);
  const int total = pp.warmup + pp.count;

  const bool busy = wait == Wait::busy;
  auto send = [busy](SpscRing& ring, const std::byte* p, std::size_t n) {
    const SpscRing::Bytes frame(p, n);
    if (!busy) {
      ring.push(frame, kNever);
      return;
    }
    while (!ring.try_push(frame)) shoal::cpu_relax();
  };
  auto receive = [wait](SpscRing& ring, std::byte* p) {
    std::size_t got = 0;
    auto alloc = [&](std::size_t n) {
      got = n;
      if (n > 256) throw std::runtime_error("ring ping-pong: frame too long");
      return p;
    };
    switch (wait) {
      case Wait::blocking:
        ring.pop(alloc, kNever);
        break;
      case Wait::spin_20us: {
        const uint64_t until = now_ns() + 20000;
        bool done = false;
        for (unsigned i = 1; !(done = ring.try_pop(alloc)); ++i) {
          shoal::cpu_relax();
          if (i % 16 == 0 && now_ns() > until) break;
        }
        if (!done) ring.pop(alloc, kNever);
        break;
      }
      case Wait::busy:
        while (!ring.try_pop(alloc)) shoal::cpu_relax();
        break;
    }
    return got;
  };

  const pid_t pid = fork_child([&] {
    std::array<std::byte, 256> buf{};
    for (int i = 0; i < total; ++i) {
      const std::size_t got = receive(to_child, buf.data());
      if (got != pp.msg) return 3;
      send(to_parent, buf.data(), got);
    }
    return 0;
  });

  std::vector<double> samples;
  samples.reserve(static_cast<std::size_t>(pp.count));
  std::array<std::byte, 256> out{}, in{};
  for (int i = 0; i < total; ++i) {
    const uint64_t seq = static_cast<uint64_t>(i) + 1;
    std::memcpy(out.data(), &seq, sizeof seq);
    const uint64_t t0 = now_ns();
    send(to_child, out.data(), pp.msg);
    const std::size_t got = receive(to_parent, in.data());
    const uint64_t t1 = now_ns();
    uint64_t back = 0;
    std::memcpy(&back, in.data(), sizeof back);
    check(got == pp.msg && back == seq, "ring ping-pong: wrong echo");
    if (i >= pp.warmup) samples.push_back(static_cast<double>(t1 - t0));
  }
  reap(pid, "ring ping-pong");
  return samples;
}

// Ping-pong over a pair of file descriptors per direction (the same fd for a
// socketpair). `parent_fds` = {read, write} in the parent, `child_fds` in the child.
std::vector<double> fd_round_trips(const PingPong& pp, std::array<int, 2> parent_fds, std::array<int, 2> child_fds,
                                   const std::vector<int>& close_in_child, const std::vector<int>& close_in_parent,
                                   const char* what) {
  const int total = pp.warmup + pp.count;
  const pid_t pid = fork_child([&] {
    for (int fd : close_in_child) ::close(fd);
    std::array<std::byte, 256> buf{};
    for (int i = 0; i < total; ++i) {
      read_all(child_fds[0], buf.data(), pp.msg);
      write_all(child_fds[1], buf.data(), pp.msg);
    }
    return 0;
  });
  for (int fd : close_in_parent) ::close(fd);

  std::vector<double> samples;
  samples.reserve(static_cast<std::size_t>(pp.count));
  std::array<std::byte, 256> out{}, in{};
  for (int i = 0; i < total; ++i) {
    const uint64_t seq = static_cast<uint64_t>(i) + 1;
    std::memcpy(out.data(), &seq, sizeof seq);
    const uint64_t t0 = now_ns();
    write_all(parent_fds[1], out.data(), pp.msg);
    read_all(parent_fds[0], in.data(), pp.msg);
    const uint64_t t1 = now_ns();
    uint64_t back = 0;
    std::memcpy(&back, in.data(), sizeof back);
    check(back == seq, std::string(what) + " ping-pong: wrong echo");
    if (i >= pp.warmup) samples.push_back(static_cast<double>(t1 - t0));
  }
  reap(pid, what);
  return samples;
}

std::vector<double> pipe_round_trips(const PingPong& pp) {
  int down[2], up[2];  // parent -> child, child -> parent
  if (::pipe(down) || ::pipe(up)) fail(std::string("pipe: ") + std::strerror(errno));
  auto s = fd_round_trips(pp, {up[0], down[1]}, {down[0], up[1]}, {down[1], up[0]}, {down[0], up[1]}, "pipe");
  ::close(down[1]);
  ::close(up[0]);
  return s;
}

std::vector<double> socket_round_trips(const PingPong& pp) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) fail(std::string("socketpair: ") + std::strerror(errno));
  auto s = fd_round_trips(pp, {sv[0], sv[0]}, {sv[1], sv[1]}, {sv[0]}, {sv[1]}, "socketpair");
  ::close(sv[0]);
  return s;
}

struct LatencyRow {
  std::string name;
  double median_us, p90_us, p99_us, min_us, mean_us, fast_share;
  std::size_t samples;
};

LatencyRow summarize(const std::string& name, const std::vector<double>& ns) {
  double sum = 0;
  std::size_t fast = 0;
  for (double x : ns) {
    sum += x;
    fast += x <= 2000.0;
  }
  return {name,
          median(ns) / 1000.0,
          percentile(ns, 90) / 1000.0,
          percentile(ns, 99) / 1000.0,
          *std::min_element(ns.begin(), ns.end()) / 1000.0,
          sum / static_cast<double>(ns.size()) / 1000.0,
          static_cast<double>(fast) / static_cast<double>(ns.size()),
          ns.size()};
}

// --- 2. throughput ------------------------------------------------------------

// The source pattern: word i of a pool is pattern(i). A frame carries its
// sequence number in its first 8 bytes, then (frame - 8) bytes taken from the
// pool at an 8-aligned offset that both sides can compute from the sequence number.
inline uint64_t pattern(uint64_t i) { return i * 0x9E3779B97F4A7C15ULL + 0x5151; }

struct Source {
  std::size_t frame;
  std::size_t pool_bytes;  // >= frame
  std::size_t offset(uint64_t seq) const {
    const std::size_t step = frame;  // the next frame starts where this one ended
    const std::size_t slots = pool_bytes / step;
    return static_cast<std::size_t>(seq % slots) * step;
  }
};

std::byte* map_pool(std::size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) fail(std::string("mmap: ") + std::strerror(errno));
  return static_cast<std::byte*>(p);
}

void fill_pool(std::byte* pool, std::size_t bytes) {
  auto* w = reinterpret_cast<uint64_t*>(pool);
  for (std::size_t i = 0; i < bytes / 8; ++i) w[i] = pattern(i);
}

// Checks a received frame (payload = everything after the sequence number).
bool frame_ok(const Source& src, uint64_t seq, const std::byte* payload, std::size_t n) {
  const std::size_t first = src.offset(seq) / 8;
  for (std::size_t j = 0; j < n / 8; ++j) {
    uint64_t w;
    std::memcpy(&w, payload + 8 * j, 8);
    if (w != pattern(first + j)) return false;
  }
  return true;
}

// Sums a span of 8-aligned 64-bit words; the compiler vectorizes this loop.
inline uint64_t sum_words(const std::byte* p, std::size_t n) {
  const auto* w = reinterpret_cast<const uint64_t*>(p);
  uint64_t a = 0, b = 0, c = 0, d = 0;
  std::size_t i = 0;
  const std::size_t words = n / 8;
  for (; i + 4 <= words; i += 4) {
    a += w[i];
    b += w[i + 1];
    c += w[i + 2];
    d += w[i + 3];
  }
  for (; i < words; ++i) a += w[i];
  return a + b + c + d;
}

struct ThroughputRun {
  double seconds;
  uint64_t frames;
  std::size_t frame;
};

// The start line both processes cross, in its own cache line after the ring.
struct Control {
  alignas(64) std::atomic<uint32_t> ready;
  alignas(64) std::atomic<uint32_t> go;
};

enum class Receive { pop, peek };

// Producer (child) pushes `frames` frames of `frame` bytes into an 8 MiB ring;
// the consumer (this process) pops them into one frame-sized buffer, or, for
// Receive::peek, reads each in place and then frees it.
ThroughputRun ring_throughput(std::size_t frame, uint64_t frames, std::size_t pool_bytes, Receive how,
                              bool verify_all) {
  constexpr std::size_t kCap = 8 * MiB;
  const std::size_t ring_bytes = SpscRing::bytes_needed(kCap);
  SharedSegment seg = SharedSegment::create(ring_bytes + sizeof(Control));
  SpscRing ring = SpscRing::init(seg.bytes(), kCap);
  auto* ctl = new (seg.bytes() + ring_bytes) Control{};
  // Pre-fault the ring's pages so neither side pays for first touches while timed.
  std::memset(seg.bytes() + (ring_bytes - kCap), 0, kCap);
  const Source src{frame, pool_bytes};

  const pid_t pid = fork_child([&] {
    std::byte* pool = map_pool(pool_bytes);
    fill_pool(pool, pool_bytes);
    ctl->ready.store(1, std::memory_order_release);
    while (!ctl->go.load(std::memory_order_acquire)) shoal::cpu_relax();
    for (uint64_t seq = 0; seq < frames; ++seq) {
      const SpscRing::Bytes parts[2] = {
          SpscRing::Bytes(reinterpret_cast<const std::byte*>(&seq), 8),
          SpscRing::Bytes(pool + src.offset(seq), frame - 8)};
      ring.push_span(parts, &kNever);  // blocks (spin, then futex) while the ring is full
    }
    ::munmap(pool, pool_bytes);
    return 0;
  });

  std::byte* dst = map_pool(frame);
  std::memset(dst, 0, frame);
  while (!ctl->ready.load(std::memory_order_acquire)) ::usleep(100);

  // The in-place reader needs where the data starts: bytes_needed(c) is the
  // header area plus c data bytes, for any power-of-two c >= 64.
  std::byte* data = seg.bytes() + (SpscRing::bytes_needed(64) - 64);
  shoal::RingHeader* hdr = ring.header();
  const uint64_t mask = ring.capacity() - 1;

  uint64_t sink = 0;
  const uint64_t t0 = now_ns();
  ctl->go.store(1, std::memory_order_release);
  for (uint64_t seq = 0; seq < frames; ++seq) {
    const bool full_check = verify_all || seq < 4;
    if (how == Receive::pop) {
      std::size_t got = 0;
      ring.pop([&](std::size_t n) { got = n; return dst; }, kNever);
      uint64_t s;
      std::memcpy(&s, dst, 8);
      check(got == frame && s == seq, "ring throughput: frame out of order or wrong size");
      if (full_check) check(frame_ok(src, seq, dst + 8, frame - 8), "ring throughput: corrupt payload");
      sink += dst[frame - 1] == std::byte{0};
    } else {
      ring.wait_readable(kNever);
      const uint64_t tail = hdr->tail.load(std::memory_order_relaxed);
      uint32_t len32;
      std::memcpy(&len32, data + (tail & mask), 4);  // frame header: length, check word
      const std::size_t len = len32;
      check(len == frame, "ring peek: wrong frame length");
      // The payload may wrap around the end of the data area.
      const std::size_t at = (tail + SpscRing::kFrameHeader) & mask;
      const std::size_t first = std::min<std::size_t>(len, ring.capacity() - at);
      uint64_t s;
      std::memcpy(&s, data + at, 8);  // frames and the data area are 8-aligned: never split
      check(s == seq, "ring peek: frame out of order");
      sink += sum_words(data + at, first) + sum_words(data, len - first);
      if (full_check) {
        std::memcpy(dst, data + at, first);
        std::memcpy(dst + first, data, len - first);
        check(frame_ok(src, seq, dst + 8, frame - 8), "ring peek: corrupt payload");
      }
      hdr->tail.store(tail + SpscRing::kFrameHeader + ((len + 7) & ~std::size_t{7}), std::memory_order_seq_cst);
      hdr->writable.notify_all();
    }
  }
  const uint64_t t1 = now_ns();
  g_sink = sink;
  reap(pid, "ring throughput");
  ::munmap(dst, frame);
  return {static_cast<double>(t1 - t0) / 1e9, frames, frame};
}

// Single-thread memcpy of `frames` blocks of `frame` bytes from the pool into
// one frame-sized buffer (the same source regime as the ring's producer).
ThroughputRun memcpy_throughput(std::size_t frame, uint64_t frames, const std::byte* pool, std::size_t pool_bytes) {
  const Source src{frame, pool_bytes};
  std::byte* dst = map_pool(frame);
  std::memset(dst, 0, frame);
  const uint64_t t0 = now_ns();
  for (uint64_t seq = 0; seq < frames; ++seq) {
    std::memcpy(dst, pool + src.offset(seq), frame);
    clobber();
  }
  const uint64_t t1 = now_ns();
  check(std::memcmp(dst, pool + src.offset(frames - 1), frame) == 0, "memcpy: wrong copy");
  ::munmap(dst, frame);
  return {static_cast<double>(t1 - t0) / 1e9, frames, frame};
}

struct ThroughputRow {
  std::string what;  // "ring (pop)", "ring (in-place read)", "memcpy"
  std::size_t frame;
  std::string source;
  double gbps_median, gbps_min, gbps_max, frames_per_s;
  int repeats;
};

ThroughputRow summarize(const std::string& what, const std::string& source, const std::vector<ThroughputRun>& runs) {
  std::vector<double> gbps, fps;
  for (const auto& r : runs) {
    gbps.push_back(static_cast<double>(r.frames * r.frame) / r.seconds / 1e9);
    fps.push_back(static_cast<double>(r.frames) / r.seconds);
  }
  return {what, runs.front().frame, source, median(gbps), *std::min_element(gbps.begin(), gbps.end()),
          *std::max_element(gbps.begin(), gbps.end()), median(fps), static_cast<int>(runs.size())};
}

// --- output -------------------------------------------------------------------

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown";
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s [--quick] [--json PATH]\n", argv[0]);
      return 0;
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--json PATH]\n", argv[0]);
      return 2;
    }
  }

  try {
    const auto started = Clock::now();
    std::printf("# shoal ipc_bench%s\n\n", quick ? " (--quick: smoke run, numbers are not meaningful)" : "");
    std::printf("cpu: %s, %ld online cores\n\n", cpu_model().c_str(), ::sysconf(_SC_NPROCESSORS_ONLN));

    // 1. Latency, in interleaved rounds.
    const std::size_t kMsg = 32;
    const int rounds = quick ? 1 : 4;
    const PingPong pp{kMsg, quick ? 100 : 1000, quick ? 500 : 5000};
    std::vector<double> ring_ns, spin_ns, busy_ns, pipe_ns, sock_ns;
    for (int r = 0; r < rounds; ++r) {
      auto a = ring_round_trips(pp, Wait::blocking);
      ring_ns.insert(ring_ns.end(), a.begin(), a.end());
      auto e = ring_round_trips(pp, Wait::spin_20us);
      spin_ns.insert(spin_ns.end(), e.begin(), e.end());
      auto d = ring_round_trips(pp, Wait::busy);
      busy_ns.insert(busy_ns.end(), d.begin(), d.end());
      auto b = pipe_round_trips(pp);
      pipe_ns.insert(pipe_ns.end(), b.begin(), b.end());
      auto c = socket_round_trips(pp);
      sock_ns.insert(sock_ns.end(), c.begin(), c.end());
    }
    const std::vector<LatencyRow> lat = {summarize("shoal SpscRing pair (adaptive poll, then futex)", ring_ns),
                                         summarize("pipe pair", pipe_ns),
                                         summarize("socketpair (AF_UNIX, SOCK_STREAM)", sock_ns),
                                         summarize("variant: SpscRing pair, try_pop spin <= 20 µs, then pop", spin_ns),
                                         summarize("reference: SpscRing pair, busy-poll (never sleeps)", busy_ns)};
    const double ring_med = lat[0].median_us;

    std::printf("## Round-trip latency, %zu-byte message, two processes (%zu round trips each, %d interleaved rounds)\n\n",
                kMsg, ring_ns.size(), rounds);
    std::printf("| transport | median µs | p90 µs | p99 µs | min µs | mean µs | <= 2 µs | pipe median / this |\n");
    std::printf("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const auto& row : lat)
      std::printf("| %s | %s | %s | %s | %s | %s | %s %% | %sx |\n", row.name.c_str(), fmt(row.median_us).c_str(),
                  fmt(row.p90_us).c_str(), fmt(row.p99_us).c_str(), fmt(row.min_us).c_str(), fmt(row.mean_us).c_str(),
                  fmt(100 * row.fast_share, 0).c_str(), fmt(lat[1].median_us / row.median_us, 1).c_str());
    const double pipe_ratio = lat[1].median_us / ring_med;
    const double pipe_mean_ratio = lat[1].mean_us / lat[0].mean_us;
    std::printf("\npipe/ring median ratio: %.1fx (target >= 3x: %s); mean ratio %.1fx\n\n", pipe_ratio,
                pipe_ratio >= 3 ? "met" : "MISSED", pipe_mean_ratio);
    std::fflush(stdout);

    // 2. Throughput.
    struct Case {
      std::size_t frame;
      uint64_t frames;
      std::size_t pool;
      const char* source;
    };
    const std::vector<Case> cases =
        quick ? std::vector<Case>{{64, 20000, 64 * KiB, "64 KiB, hot"},
                                  {4 * KiB, 2000, 256 * KiB, "256 KiB, hot"},
                                  {1 * MiB, 32, 16 * MiB, "16 MiB, streamed"}}
              : std::vector<Case>{{64, 2000000, 64 * KiB, "64 KiB, hot"},
                                  {4 * KiB, 300000, 256 * KiB, "256 KiB, hot"},
                                  {1 * MiB, 2048, 256 * MiB, "256 MiB, streamed"}};
    const int repeats = quick ? 1 : 3;
    std::vector<ThroughputRow> rows;
    for (const auto& c : cases) {
      std::byte* pool = map_pool(c.pool);
      fill_pool(pool, c.pool);
      std::vector<ThroughputRun> pop_runs, peek_runs, copy_runs;
      for (int r = 0; r < repeats; ++r) {  // interleaved
        pop_runs.push_back(ring_throughput(c.frame, c.frames, c.pool, Receive::pop, quick));
        peek_runs.push_back(ring_throughput(c.frame, c.frames, c.pool, Receive::peek, quick));
        copy_runs.push_back(memcpy_throughput(c.frame, c.frames, pool, c.pool));
      }
      ::munmap(pool, c.pool);
      rows.push_back(summarize("memcpy, 1 thread", c.source, copy_runs));
      rows.push_back(summarize("ring, push + pop (2 copies)", c.source, pop_runs));
      rows.push_back(summarize("ring, push + in-place read", c.source, peek_runs));
    }
    // For reference: memcpy of a 1 MiB block that stays in cache.
    {
      const std::size_t n = 1 * MiB;
      std::byte* pool = map_pool(n);
      fill_pool(pool, n);
      std::vector<ThroughputRun> runs;
      for (int r = 0; r < repeats; ++r) runs.push_back(memcpy_throughput(n, quick ? 32 : 4096, pool, n));
      ::munmap(pool, n);
      rows.push_back(summarize("memcpy, 1 thread", "1 MiB, hot (L2)", runs));
    }

    std::printf("## Ring throughput, one producer process -> one consumer process, 8 MiB ring (median of %d)\n\n",
                repeats);
    std::printf("| frame | method | source | GB/s median | GB/s min–max | frames/s | vs memcpy |\n");
    std::printf("|---:|---|---|---:|---:|---:|---:|\n");
    double mib_ratio = 0, mib_peek_ratio = 0;
    double memcpy_gbps = 0;
    for (const auto& row : rows) {
      if (row.what.rfind("memcpy", 0) == 0) memcpy_gbps = row.gbps_median;
      const double ratio = row.gbps_median / memcpy_gbps;
      if (row.frame == MiB && row.what.find("pop") != std::string::npos) mib_ratio = ratio;
      if (row.frame == MiB && row.what.find("in-place") != std::string::npos) mib_peek_ratio = ratio;
      char fps[32];
      std::snprintf(fps, sizeof fps, "%.3g", row.frames_per_s);
      std::printf("| %s | %s | %s | %s | %s–%s | %s | %s |\n", size_name(row.frame).c_str(), row.what.c_str(),
                  row.source.c_str(), fmt(row.gbps_median).c_str(), fmt(row.gbps_min).c_str(),
                  fmt(row.gbps_max).c_str(), fps,
                  row.what.rfind("memcpy", 0) == 0 ? "—" : (fmt(100 * ratio, 0) + " %").c_str());
    }
    std::printf("\n1 MiB frames, push + pop: %.0f %% of memcpy (target >= 50 %%: %s); in-place read: %.0f %%\n",
                100 * mib_ratio, mib_ratio >= 0.5 ? "met" : "MISSED", 100 * mib_peek_ratio);
    const double elapsed = std::chrono::duration<double>(Clock::now() - started).count();
    std::printf("\ntotal time: %.1f s; every echo, sequence number%s checked: OK\n", elapsed,
                quick ? " and payload byte" : " and the first payloads");

    if (!json_path.empty()) {
      std::ostringstream j;
      j << "{\n  \"quick\": " << (quick ? "true" : "false") << ",\n  \"cpu\": \"" << json_escape(cpu_model())
        << "\",\n  \"cores\": " << ::sysconf(_SC_NPROCESSORS_ONLN) << ",\n  \"message_bytes\": " << kMsg
        << ",\n  \"latency\": [\n";
      for (std::size_t i = 0; i < lat.size(); ++i) {
        const auto& r = lat[i];
        j << "    {\"transport\": \"" << json_escape(r.name) << "\", \"median_us\": " << r.median_us
          << ", \"p90_us\": " << r.p90_us << ", \"p99_us\": " << r.p99_us << ", \"min_us\": " << r.min_us << ", \"mean_us\": " << r.mean_us
          << ", \"share_le_2us\": " << r.fast_share << ", \"samples\": " << r.samples << "}" << (i + 1 < lat.size() ? "," : "") << "\n";
      }
      j << "  ],\n  \"pipe_over_ring\": " << pipe_ratio << ",\n  \"pipe_over_ring_mean\": " << pipe_mean_ratio << ",\n  \"throughput\": [\n";
      for (std::size_t i = 0; i < rows.size(); ++i) {
        const auto& r = rows[i];
        j << "    {\"method\": \"" << json_escape(r.what) << "\", \"frame_bytes\": " << r.frame << ", \"source\": \""
          << json_escape(r.source) << "\", \"gbps_median\": " << r.gbps_median << ", \"gbps_min\": " << r.gbps_min
          << ", \"gbps_max\": " << r.gbps_max << ", \"frames_per_s\": " << r.frames_per_s
          << ", \"repeats\": " << r.repeats << "}" << (i + 1 < rows.size() ? "," : "") << "\n";
      }
      j << "  ],\n  \"mib_ring_over_memcpy\": " << mib_ratio << ",\n  \"mib_inplace_over_memcpy\": " << mib_peek_ratio
        << ",\n  \"seconds\": " << elapsed << ",\n  \"ok\": true\n}\n";
      std::ofstream f(json_path);
      f << j.str();
      if (!f) fail("cannot write " + json_path);
    }
  } catch (const std::exception& e) {
    fail(e.what());
  }
  return 0;
}
