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

// Bytes in shared memory that do not decode as a frame (maps to RuntimeError).
struct CorruptFrameError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An operation on an object that was closed (maps to ValueError, as closed files do).
struct ClosedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void throw_errno(const std::string& what, int err = errno) {
  throw std::system_error(err, std::generic_category(), what);
}

}  // namespace shoal
