// SharedQueue across real processes, including processes killed mid-operation.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "shoal/base/errors.hpp"
#include "shoal/ipc/queue.hpp"
#include "shoal/ipc/segment.hpp"

using namespace std::chrono_literals;
using shoal::ClosedError;
using shoal::Deadline;
using shoal::FrameTooLargeError;
using shoal::QueueAttempt;
using shoal::SharedQueue;
using shoal::SharedSegment;
using shoal::testing::ChildProcess;

namespace {

using Bytes = std::vector<std::byte>;

std::span<const std::byte> as_span(const Bytes& b) { return {b.data(), b.size()}; }
std::span<const std::byte> as_span(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }
std::string as_string(const Bytes& b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

// A message that proves where it came from and that it arrived whole:
// [producer u32][body length u32][sequence u64][body][checksum of all before it, u64].
// Cheap to make and check, so that producers spend their time inside put.
struct Tag {
  uint32_t producer;
  uint64_t seq;
};
constexpr std::size_t kTagOverhead = 4 + 4 + 8 + 8;

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t checksum(const std::byte* p, std::size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL ^ n;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 0x100000001b3ULL;
    h ^= h >> 29;
  }
  for (; i < n; ++i) h = (h ^ static_cast<uint8_t>(p[i])) * 0x100000001b3ULL;
  return h;
}

Bytes make_message(uint32_t producer, uint64_t seq, std::size_t max_body) {
  uint64_t rng = (uint64_t{producer} << 40) ^ seq;
  const auto body = static_cast<uint32_t>(splitmix64(rng) % (max_body + 1));
  Bytes m(kTagOverhead + body);
  std::memcpy(m.data(), &producer, 4);
  std::memcpy(m.data() + 4, &body, 4);
  std::memcpy(m.data() + 8, &seq, 8);
  for (uint32_t k = 0; k < body; k += 8) {
    const uint64_t w = splitmix64(rng);
    std::memcpy(m.data() + 16 + k, &w, std::min<std::size_t>(8, body - k));
  }
  const uint64_t sum = checksum(m.data(), 16 + body);
  std::memcpy(m.data() + 16 + body, &sum, 8);
  return m;
}

// The tag of an intact message; nullopt for anything torn or corrupted.
std::optional<Tag> check_message(const Bytes& m) {
  if (m.size() < kTagOverhead) return std::nullopt;
  Tag t{};
  uint32_t body = 0;
  uint64_t sum = 0;
  std::memcpy(&t.producer, m.data(), 4);
  std::memcpy(&body, m.data() + 4, 4);
  std::memcpy(&t.seq, m.data() + 8, 8);
  if (m.size() != kTagOverhead + body) return std::nullopt;
  std::memcpy(&sum, m.data() + 16 + body, 8);
  if (sum != checksum(m.data(), 16 + body)) return std::nullopt;
  return t;
}

// What consumers received, in shared memory so that consumer processes can
// report it and a killed consumer's reports survive it: a count per
// (producer, sequence) and a count of damaged messages.
class Tally {
 public:
  Tally(uint32_t producers, uint64_t max_seq)
      : producers_(producers),
        max_seq_(max_seq),
        seg_(SharedSegment::create(sizeof(std::atomic<uint32_t>) * (producers * max_seq + 1))) {}

  // Records a message taken from the queue; returns false if it was damaged.
  bool record(const Bytes& m) {
    auto t = check_message(m);
    if (!t || t->producer >= producers_ || t->seq >= max_seq_) {
      damaged().fetch_add(1);
      return false;
    }
    slot(t->producer, t->seq).fetch_add(1);
    return true;
  }
  uint32_t seen(uint32_t producer, uint64_t seq) { return slot(producer, seq).load(); }
  uint32_t damaged_count() { return damaged().load(); }
  // How many leading sequence numbers of `producer` arrived exactly once.
  uint64_t prefix(uint32_t producer) {
    uint64_t n = 0;
    while (n < max_seq_ && seen(producer, n) == 1) ++n;
    return n;
  }
  // How many of `producer`'s messages arrived at all, duplicates counted.
  uint64_t total(uint32_t producer) {
    uint64_t n = 0;
    for (uint64_t s = 0; s < max_seq_; ++s) n += seen(producer, s);
    return n;
  }

 private:
  std::atomic<uint32_t>* cells() { return static_cast<std::atomic<uint32_t>*>(seg_.data()); }
  std::atomic<uint32_t>& slot(uint32_t p, uint64_t s) { return cells()[p * max_seq_ + s]; }
  std::atomic<uint32_t>& damaged() { return cells()[producers_ * max_seq_]; }

  uint32_t producers_;
  uint64_t max_seq_;
  SharedSegment seg_;
};

// A consumer process body: takes messages into `tally` until the queue is
// closed and drained. Exit code 0 on a clean finish.
int consume_until_closed(const std::string& queue_name, Tally& tally) {
  auto q = SharedQueue::attach(queue_name);
  Bytes out;
  try {
    for (;;) {
      if (!q.get_vector(out, Deadline::after(20s))) return 3;  // the queue went quiet without closing
      tally.record(out);
    }
  } catch (const ClosedError&) {
    return 0;
  }
}

// A producer process body: puts messages 0..count-1 tagged with `producer`.
int produce(const std::string& queue_name, uint32_t producer, uint64_t count, std::size_t max_body) {
  auto q = SharedQueue::attach(queue_name);
  for (uint64_t seq = 0; seq < count; ++seq) {
    if (!q.put(as_span(make_message(producer, seq, max_body)), Deadline::after(20s))) return 3;
  }
  return 0;
}

// Polls `cond` until it holds (true) or `timeout` passes (false).
template <class Cond>
bool wait_for(Cond&& cond, std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(50us);
  }
  return true;
}

// True once process `pid` is seen asleep (state S in /proc: blocked in a
// wait) at two looks 1 ms apart; false if not within 30 s.
bool asleep_soon(pid_t pid) {
  const std::string path = "/proc/" + std::to_string(pid) + "/stat";
  auto state = [&] {
    char line[512] = {};
    FILE* f = ::fopen(path.c_str(), "r");
    if (f == nullptr) return '?';
    const bool read = ::fgets(line, sizeof line, f) != nullptr;
    ::fclose(f);
    const char* end = read ? std::strrchr(line, ')') : nullptr;  // the name may hold spaces
    return end != nullptr && end[1] == ' ' ? end[2] : '?';
  };
  int looks = 0;
  return wait_for([&] {
    looks = state() == 'S' ? looks + 1 : 0;
    if (looks < 2) std::this_thread::sleep_for(1ms);
    return looks >= 2;
  }, 30s);
}

bool killed_by(int status, int sig) { return status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == sig; }

}  // namespace

TEST(SharedQueue, SingleProcessWrapAroundPartsAndBookkeeping) {
  auto q = SharedQueue::create(200);
  EXPECT_EQ(q.capacity(), 200u);
  EXPECT_TRUE(q.empty());
  Bytes out;
  for (uint64_t i = 0; i < 5000; ++i) {  // frames of varying size walk around the 216-byte area
    auto m = make_message(0, i, 100);
    ASSERT_EQ(q.try_put(as_span(m)), QueueAttempt::done) << i;
    EXPECT_EQ(q.size(), 1u);
    ASSERT_TRUE(q.get_vector(out, Deadline::never()));
    ASSERT_EQ(out, m) << i;
  }
  EXPECT_EQ(q.used_bytes(), 0u);
  const std::string a = "hello, ", b = "", c = "world";
  std::span<const std::byte> parts[] = {as_span(a), as_span(b), as_span(c)};
  ASSERT_EQ(q.try_put_parts(parts), QueueAttempt::done);
  ASSERT_TRUE(q.get_vector(out, Deadline::never()));
  EXPECT_EQ(as_string(out), "hello, world");
  ASSERT_EQ(q.try_put(as_span(std::string())), QueueAttempt::done);  // an empty message is a message
  EXPECT_EQ(q.size(), 1u);
  ASSERT_TRUE(q.get_vector(out, Deadline::never()));
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(q.try_get([&](std::size_t n) { out.resize(n); return out.data(); }), QueueAttempt::would_block);
}

TEST(SharedQueue, FifoOrderFromOneProducerProcess) {
  auto q = SharedQueue::create(4096);  // small, so the producer often waits for room
  constexpr uint64_t kCount = 20000;
  ChildProcess producer([&] { return produce(q.name(), 0, kCount, 300); });
  Bytes out;
  for (uint64_t i = 0; i < kCount; ++i) {
    ASSERT_TRUE(q.get_vector(out, Deadline::after(20s))) << "timed out at message " << i;
    ASSERT_EQ(out, make_message(0, i, 300)) << "message " << i;
  }
  EXPECT_TRUE(producer.succeeded(10s));
  EXPECT_TRUE(q.empty());
}

TEST(SharedQueue, ManyProducersAndConsumersLoseAndDuplicateNothing) {
  constexpr uint32_t kProducers = 3, kConsumers = 3;
  constexpr uint64_t kEach = 4000;
  auto q = SharedQueue::create(2048);
  Tally tally(kProducers, kEach);
  std::vector<std::unique_ptr<ChildProcess>> consumers, producers;
  for (uint32_t c = 0; c < kConsumers; ++c)
    consumers.push_back(std::make_unique<ChildProcess>([&] { return consume_until_closed(q.name(), tally); }));
  for (uint32_t p = 0; p < kProducers; ++p)
    producers.push_back(std::make_unique<ChildProcess>([&, p] { return produce(q.name(), p, kEach, 120); }));
  for (auto& p : producers) EXPECT_TRUE(p->succeeded(30s));
  q.close();  // consumers drain what is left, then see ClosedError and exit
  for (auto& c : consumers) EXPECT_TRUE(c->succeeded(30s));

  EXPECT_EQ(tally.damaged_count(), 0u);
  for (uint32_t p = 0; p < kProducers; ++p) {
    EXPECT_EQ(tally.prefix(p), kEach) << "producer " << p;
    EXPECT_EQ(tally.total(p), kEach) << "producer " << p;
  }
}

TEST(SharedQueue, ProducersKilledMidStreamLeaveIntactPrefixesAndSurvivorsFinish) {
  constexpr uint32_t kSurvivors = 2, kVictims = 8, kProducers = kSurvivors + kVictims;
  constexpr uint64_t kSurvivorCount = 3000, kMaxSeq = 1 << 16;
  // Roomy, and big victim messages: a victim spends much of its life copying
  // inside put, rather than waiting for room, so kills land mid-copy often.
  auto q = SharedQueue::create(256 * 1024);
  Tally tally(kProducers, kMaxSeq);
  std::vector<std::unique_ptr<ChildProcess>> consumers, survivors;
  for (int c = 0; c < 2; ++c)
    consumers.push_back(std::make_unique<ChildProcess>([&] { return consume_until_closed(q.name(), tally); }));
  for (uint32_t s = 0; s < kSurvivors; ++s)
    survivors.push_back(std::make_unique<ChildProcess>([&, s] { return produce(q.name(), s, kSurvivorCount, 200); }));

  // One victim at a time puts as fast as it can and is killed mid-stream: once
  // some of its messages have arrived, after a further random delay.
  std::mt19937 rng(std::random_device{}());
  for (uint32_t v = kSurvivors; v < kProducers; ++v) {
    ChildProcess victim([&] { return produce(q.name(), v, kMaxSeq, 16 * 1024); });
    ASSERT_TRUE(wait_for([&] { return tally.total(v) >= 20; }, 20s));
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
    victim.kill_now(SIGKILL);
    ASSERT_TRUE(killed_by(victim.wait(10s), SIGKILL)) << "victim " << v << " finished before it was killed";
  }
  for (auto& s : survivors) EXPECT_TRUE(s->succeeded(30s)) << "a survivor was wedged by a dead producer";
  q.close();
  for (auto& c : consumers) EXPECT_TRUE(c->succeeded(30s)) << "a consumer met a torn message or was wedged";

  EXPECT_EQ(tally.damaged_count(), 0u) << "a message arrived torn";
  for (uint32_t s = 0; s < kSurvivors; ++s) {
    EXPECT_EQ(tally.prefix(s), kSurvivorCount) << "survivor " << s;
    EXPECT_EQ(tally.total(s), kSurvivorCount) << "survivor " << s;
  }
  for (uint32_t v = kSurvivors; v < kProducers; ++v) {
    // Everything a victim committed arrived once, in a prefix of its sequence, and nothing else.
    EXPECT_EQ(tally.total(v), tally.prefix(v)) << "victim " << v << " has gaps or duplicates";
  }
}

TEST(SharedQueue, ProducerThatDiesHoldingTheLockMidCopyLeavesTheQueueUsable) {
  auto q = SharedQueue::create(1 << 16);
  const auto first = make_message(0, 0, 100);
  ASSERT_EQ(q.try_put(as_span(first)), QueueAttempt::done);

  // The child puts a message whose second half is unreadable memory: it dies
  // (SIGSEGV) inside the copy, holding the lock, with a half-written frame.
  ChildProcess dies_mid_put([&] {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGSEGV, &dfl, nullptr);
    const long page = sysconf(_SC_PAGESIZE);
    void* mem = mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return 4;
    std::memset(mem, 0x5a, page);
    mprotect(static_cast<char*>(mem) + page, page, PROT_NONE);
    auto child_q = SharedQueue::attach(q.name());
    child_q.try_put(std::span(static_cast<const std::byte*>(mem), page + 64));
    return 5;  // not reached
  });
  const int status = dies_mid_put.wait(10s);
  // Killed by SIGSEGV (or, under a sanitizer, exited from its fault handler).
  ASSERT_NE(status, -1);
  ASSERT_TRUE(WIFSIGNALED(status) || WEXITSTATUS(status) != 5) << "the put did not fault";

  EXPECT_EQ(q.size(), 1u) << "the half-written message must stay unpublished";
  Bytes out;
  ASSERT_TRUE(q.get_vector(out, Deadline::after(5s))) << "the lock died with its holder and was never recovered";
  EXPECT_EQ(out, first);
  for (uint64_t i = 1; i < 100; ++i) {  // the space the dead producer scribbled on is reused cleanly
    auto m = make_message(0, i, 1000);
    ASSERT_TRUE(q.put(as_span(m), Deadline::after(5s)));
    ASSERT_TRUE(q.get_vector(out, Deadline::after(5s)));
    ASSERT_EQ(out, m);
  }
}

TEST(SharedQueue, ConsumerThatDiesHoldingTheLockMidGetLosesNothing) {
  auto q = SharedQueue::create(4096);
  const auto m = make_message(0, 7, 100);
  ASSERT_EQ(q.try_put(as_span(m)), QueueAttempt::done);
  ChildProcess dies_mid_get([&] {
    auto child_q = SharedQueue::attach(q.name());
    // Called with the lock held, after the message was found: die right there.
    child_q.try_get([](std::size_t) -> std::byte* {
      raise(SIGKILL);
      return nullptr;
    });
    return 5;
  });
  ASSERT_TRUE(killed_by(dies_mid_get.wait(10s), SIGKILL));
  EXPECT_EQ(q.size(), 1u);
  Bytes out;
  ASSERT_TRUE(q.get_vector(out, Deadline::after(5s)));
  EXPECT_EQ(out, m);
}

TEST(SharedQueue, ConsumerKilledMidStreamDoesNotWedgeTheQueue) {
  constexpr uint64_t kCount = 20000;
  auto q = SharedQueue::create(1024);
  Tally tally(1, kCount);
  // The consumer takes and records messages until killed.
  ChildProcess consumer([&] { return consume_until_closed(q.name(), tally); });
  ChildProcess producer([&] { return produce(q.name(), 0, kCount, 100); });
  // Kill the consumer mid-stream, at whatever point of a get it happens to be.
  ASSERT_TRUE(wait_for([&] { return tally.total(0) >= 200; }, 20s));
  std::this_thread::sleep_for(std::chrono::microseconds(std::random_device{}() % 2000));
  consumer.kill_now(SIGKILL);
  ASSERT_TRUE(killed_by(consumer.wait(10s), SIGKILL));
  ASSERT_LT(tally.total(0), kCount) << "the consumer finished before it was killed";

  // The parent takes over as consumer; the producer must be able to finish.
  Bytes out;
  uint64_t last = 0;
  bool any = false;
  while (q.get_vector(out, Deadline::after(1s))) {
    auto tag = check_message(out);
    ASSERT_TRUE(tag.has_value()) << "torn message after a consumer died";
    ASSERT_TRUE(!any || tag->seq > last) << "order broken";
    last = tag->seq;
    any = true;
    tally.record(out);
    if (tag->seq == kCount - 1) break;
  }
  EXPECT_TRUE(producer.succeeded(20s));
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(tally.damaged_count(), 0u);
  uint64_t missing = 0;
  for (uint64_t s = 0; s < kCount; ++s) {
    EXPECT_LE(tally.seen(0, s), 1u) << "message " << s << " delivered twice";
    missing += tally.seen(0, s) == 0;
  }
  // The killed consumer can have taken one message without recording it.
  EXPECT_LE(missing, 1u);
}

TEST(SharedQueue, MessageLargerThanCapacityIsRefusedAtOnceNamingBothSizes) {
  auto q = SharedQueue::create(1000, 1);
  Bytes big(1001), exact(1000);
  ASSERT_EQ(q.try_put(as_span(exact)), QueueAttempt::done);  // the largest message fits an empty queue
  // Refused even though the queue is full and the deadline is "never": no hang.
  try {
    q.put(as_span(big), Deadline::never());
    FAIL() << "expected FrameTooLargeError";
  } catch (const FrameTooLargeError& e) {
    EXPECT_NE(std::string(e.what()).find("1001"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("1000"), std::string::npos) << e.what();
  }
  Bytes out;
  ASSERT_TRUE(q.get_vector(out, Deadline::never()));
  EXPECT_EQ(out.size(), 1000u);
}

TEST(SharedQueue, FullQueuePutTimesOutUntilRoomIsMade) {
  auto by_count = SharedQueue::create(4096, 2);
  ASSERT_EQ(by_count.try_put(as_span(std::string("a"))), QueueAttempt::done);
  ASSERT_EQ(by_count.try_put(as_span(std::string("b"))), QueueAttempt::done);
  EXPECT_TRUE(by_count.full());
  EXPECT_EQ(by_count.try_put(as_span(std::string("c"))), QueueAttempt::would_block);
  const Deadline deadline = Deadline::after(60ms);
  EXPECT_FALSE(by_count.put(as_span(std::string("c")), deadline));
  EXPECT_TRUE(deadline.expired());  // it waited out its deadline, not less
  Bytes out;
  ASSERT_TRUE(by_count.get_vector(out, Deadline::never()));
  EXPECT_EQ(as_string(out), "a");
  EXPECT_TRUE(by_count.put(as_span(std::string("c")), Deadline::after(1s)));

  auto by_bytes = SharedQueue::create(100);
  ASSERT_EQ(by_bytes.try_put(as_span(Bytes(60))), QueueAttempt::done);
  EXPECT_FALSE(by_bytes.put(as_span(Bytes(60)), Deadline::after(30ms)));
  ASSERT_EQ(by_bytes.try_put(as_span(Bytes(24))), QueueAttempt::done);  // smaller ones still fit
}

TEST(SharedQueue, EmptyQueueGetTimesOut) {
  auto q = SharedQueue::create(256);
  Bytes out;
  const Deadline deadline = Deadline::after(60ms);
  EXPECT_FALSE(q.get_vector(out, deadline));
  EXPECT_TRUE(deadline.expired());  // it waited out its deadline, not less
}

TEST(SharedQueue, SleepersInOtherProcessesAreWoken) {
  auto q = SharedQueue::create(256, 1);
  ChildProcess consumer([&] {
    auto cq = SharedQueue::attach(q.name());
    Bytes out;
    return cq.get_vector(out, Deadline::after(10s)) && as_string(out) == "wake" ? 0 : 1;
  });
  ASSERT_TRUE(asleep_soon(consumer.pid()));  // waiting for a message
  ASSERT_EQ(q.try_put(as_span(std::string("wake"))), QueueAttempt::done);
  ASSERT_TRUE(consumer.succeeded(5s));

  ASSERT_EQ(q.try_put(as_span(std::string("fill"))), QueueAttempt::done);  // maxsize 1: now full
  ChildProcess producer([&] {
    auto pq = SharedQueue::attach(q.name());
    return pq.put(as_span(std::string("next")), Deadline::after(10s)) ? 0 : 1;
  });
  ASSERT_TRUE(asleep_soon(producer.pid()));  // waiting for room
  Bytes out;
  ASSERT_TRUE(q.get_vector(out, Deadline::never()));
  ASSERT_TRUE(producer.succeeded(5s));
  ASSERT_TRUE(q.get_vector(out, Deadline::after(1s)));
  EXPECT_EQ(as_string(out), "next");
}

TEST(SharedQueue, CloseRefusesPutsDrainsGetsAndWakesSleepers) {
  auto q = SharedQueue::create(256);
  ChildProcess sleeper([&] {
    auto cq = SharedQueue::attach(q.name());
    Bytes out;
    try {
      cq.get_vector(out, Deadline::after(10s));
      return 1;  // woken without a message, yet no error
    } catch (const ClosedError&) {
      return 0;
    }
  });
  ASSERT_TRUE(asleep_soon(sleeper.pid()));  // waiting for a message
  q.close();
  EXPECT_TRUE(sleeper.succeeded(5s));
  EXPECT_TRUE(q.is_closed());
  EXPECT_THROW(q.try_put(as_span(std::string("x"))), ClosedError);

  auto q2 = SharedQueue::create(256);
  ASSERT_EQ(q2.try_put(as_span(std::string("one"))), QueueAttempt::done);
  ASSERT_EQ(q2.try_put(as_span(std::string("two"))), QueueAttempt::done);
  q2.close();
  q2.close();  // idempotent
  EXPECT_THROW(q2.put(as_span(std::string("three")), Deadline::never()), ClosedError);
  Bytes out;
  ASSERT_TRUE(q2.get_vector(out, Deadline::never()));
  EXPECT_EQ(as_string(out), "one");
  ASSERT_TRUE(q2.get_vector(out, Deadline::never()));
  EXPECT_EQ(as_string(out), "two");
  EXPECT_THROW(q2.get_vector(out, Deadline::never()), ClosedError);
}

TEST(SharedQueue, AttachChecksTheNameAndTheContents) {
  EXPECT_THROW(SharedQueue::attach("shoal-1-no-such-queue"), shoal::NotFoundError);
  auto not_a_queue = SharedSegment::create(4096);
  EXPECT_THROW(SharedQueue::attach(not_a_queue.name()), shoal::CorruptFrameError);
  EXPECT_THROW(SharedQueue::create(0), std::invalid_argument);

  std::string name;
  {
    auto q = SharedQueue::create(128, 3);
    name = q.name();
    auto other = SharedQueue::attach(name);
    EXPECT_EQ(other.capacity(), 128u);
    EXPECT_EQ(other.maxsize(), 3u);
    EXPECT_FALSE(other.owns_name());
    EXPECT_TRUE(q.owns_name());
  }
  EXPECT_THROW(SharedQueue::attach(name), shoal::NotFoundError) << "the creator must unlink the name";
}
