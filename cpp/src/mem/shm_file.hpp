#pragma once
// Shared-memory segments the arena names itself: `shoal-<owner pid>-<hex>`, the
// scheme SharedSegment uses, but with the arena owner's pid whichever process
// creates them, so reclaim_stale_segments() keeps them exactly as long as the
// owner's token is held (the owner, or a forked copy of it, lives; see
// src/ipc/segment.cpp). Private to cpp/src/mem.
#include <sys/types.h>

#include <cstddef>
#include <string>
#include <string_view>

#include "shoal/ipc/segment.hpp"

namespace shoal::arena_detail {

// A fresh random name for a segment of the arena owned by `owner`.
std::string segment_name(pid_t owner);

// Whether `name` has the form of a segment name of the arena owned by `owner`:
// `shoal-<owner pid>-<16 lowercase hex digits>`. A name read from shared memory
// of any other form is never opened or unlinked.
bool is_segment_name(std::string_view name, pid_t owner);

// Creates the segment `name` (mode 0600, O_EXCL) of `bytes` bytes, backs all of
// it with memory now (so a full /dev/shm fails here with ENOSPC, never later
// with SIGBUS) and maps it. The returned mapping does not own the name: the
// caller records it and unlinks it. On failure nothing is left behind and a
// std::system_error carries the errno.
SharedSegment create_named_segment(const std::string& name, std::size_t bytes);

// Removes a segment name; a name that is already gone is fine.
void unlink_name(const char* name);

// True unless `pid` certainly no longer exists.
bool process_alive(pid_t pid);

// Whether this process can hand memfds to others through /proc/<pid>/fd
// (memfd_create works, /proc reopens one, others may inspect this process).
// Defined in arena_segments.cpp.
bool memfds_shareable();

}  // namespace shoal::arena_detail
