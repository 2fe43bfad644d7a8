#pragma once
// Error types the engine throws; the bindings map each to the Python exception
// a user would expect (FileNotFoundError, ValueError, MemoryError, ...).
#include <cerrno>
#include <stdexcept>
#include <string>
#include <system_error>

namespace shoal {

// A named shared-memory object does not exist (maps to FileNotFoundError).
struct NotFoundError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A frame or message that can never fit (maps to ValueError).
struct FrameTooLargeError : std::length_error {
  using std::length_error::length_error;
};

// Bytes in shared memory that are not what they must be: a frame that does not
// decode, or metadata another process wrote over (a shared-memory arena's
// control block, slot table, block headers; a lock's words). Maps to RuntimeError.
struct CorruptFrameError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A payload too big for its ring could not be spilled into a segment of its own:
// /dev/shm (or memory, or descriptors) ran out. `error_code()` is the errno.
// Only that payload fails (maps to MemoryError).
struct SpillError : std::runtime_error {
  SpillError(const std::string& what, int err) : std::runtime_error(what), err_(err) {}
  int error_code() const { return err_; }

 private:
  int err_;
};

// An operation on an object that was closed (maps to ValueError, as closed files do).
struct ClosedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void throw_errno(const std::string& what, int err = errno) {
  throw std::system_error(err, std::generic_category(), what);
}

}  // namespace shoal
