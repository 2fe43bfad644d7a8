#pragma once
// A synchronization object's state, constructed in a shared-memory segment of its
// own so that any process can attach to it by the segment's name. The creator
// owns the name (it is unlinked when the creator's SharedObject goes away);
// processes that attached keep a working mapping until they drop theirs.
//
// `State` names itself with `static constexpr uint64_t kMagic` and
// `static constexpr const char* kTypeName`; attach() checks both so that the name
// of, say, a Semaphore cannot be attached as a Lock.
#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "shoal/ipc/segment.hpp"

namespace shoal {

template <class State>
class SharedObject {
 public:
  template <class... Args>
  static SharedObject create(Args&&... args) {
    SharedSegment segment = SharedSegment::create(sizeof(Stored));
    // The name has not been handed to anyone yet, so nobody can observe the
    // object half-built.
    auto* stored = new (segment.data()) Stored(std::forward<Args>(args)...);
    return SharedObject(std::move(segment), stored);
  }

  // Throws NotFoundError for an unknown name, std::invalid_argument when the
  // segment holds something else.
  static SharedObject attach(const std::string& name) {
    SharedSegment segment = SharedSegment::attach(name);
    auto* stored = static_cast<Stored*>(segment.data());
    if (segment.size() < sizeof(Stored) || stored->magic != State::kMagic)
      throw std::invalid_argument("shared-memory segment '" + segment.name() + "' does not hold a shoal " +
                                  State::kTypeName);
    return SharedObject(std::move(segment), stored);
  }

  SharedObject() = default;
  SharedObject(SharedObject&& other) noexcept
      : segment_(std::move(other.segment_)), stored_(std::exchange(other.stored_, nullptr)) {}
  SharedObject& operator=(SharedObject&& other) noexcept {
    segment_ = std::move(other.segment_);
    stored_ = std::exchange(other.stored_, nullptr);
    return *this;
  }
  // The state is never destroyed: other processes may still be using it.
  ~SharedObject() = default;

  State& operator*() const { return stored_->state; }
  State* operator->() const { return &stored_->state; }
  State* get() const { return &stored_->state; }

  const std::string& name() const { return segment_.name(); }
  bool owns_name() const { return segment_.owns_name(); }
  const SharedSegment& segment() const { return segment_; }

 private:
  struct Stored {
    template <class... Args>
    explicit Stored(Args&&... args) : state(std::forward<Args>(args)...) {}
    uint64_t magic = State::kMagic;
    State state;
  };

  SharedObject(SharedSegment segment, Stored* stored) : segment_(std::move(segment)), stored_(stored) {}

  SharedSegment segment_;
  Stored* stored_ = nullptr;
};

}  // namespace shoal
