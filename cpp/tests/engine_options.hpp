#pragma once
// What every engine test starts from: the protocol-speaking C++ test worker
// (cpp/tests/worker/), through a fork server or spawned, and small rings.
#include <cstdint>
#include <string>
#include <vector>

#include "shoal/engine/engine.hpp"

namespace shoal_test {

inline shoal::EngineOptions options(uint32_t workers, bool fork_server = true) {
  shoal::EngineOptions o;
  o.workers = workers;
  o.fork_server = fork_server;
  o.argv = fork_server ? std::vector<std::string>{SHOAL_TEST_WORKER, "forkserver"}
                       : std::vector<std::string>{SHOAL_TEST_WORKER, "{segment}"};
  o.ring_bytes = 64 * 1024;
  return o;
}

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace shoal_test
