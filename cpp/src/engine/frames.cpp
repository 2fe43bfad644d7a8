#include "engine/frames.hpp"

#include <cstdint>

#include "shoal/wire/blob.hpp"

namespace shoal {

using proto::Kind;

FrameVerdict judge_outbox_frame(const proto::FrameHeader& h, bool spilled, std::string_view payload, const Slot& s,
                                pid_t pool_pid) {
  FrameVerdict v;
  std::string& fault = v.fault;
  switch (h.kind) {
    case Kind::result:
      if (!proto::is_worker_status(h.tag)) {
        fault = "a result with status " + std::to_string(h.tag);
      } else if (s.in_flight.empty() || s.in_flight.front().id != h.id) {
        // A worker runs its jobs in order: a result is always for the oldest it holds.
        if (s.jobs_forgotten)
          v.ours = false;  // failed over already (a broken pool): drop, never deliver twice
        else
          fault = "a result for job " + std::to_string(h.id) +
                  (s.in_flight.empty() ? std::string(" while it holds no job")
                                       : ", whose oldest job is " + std::to_string(s.in_flight.front().id));
      }
      break;
    case Kind::partial_result:
      if (!proto::is_worker_status(h.tag) || h.arg == 0 || spilled) {
        fault = "a partial result with status " + std::to_string(h.tag) + ", " + std::to_string(h.arg) + " items" +
                (spilled ? ", spilled" : "");
      } else if (s.in_flight.empty() || s.in_flight.front().id != h.id) {
        if (s.jobs_forgotten)
          v.ours = false;
        else
          fault = "a partial result for job " + std::to_string(h.id) + ", which is not the one it runs";
      } else if (!s.in_flight.front().is_map()) {
        fault = "a partial result for job " + std::to_string(h.id) + ", which is no map chunk";
      }
      break;
    case Kind::init_failed:
    case Kind::inbox_corrupt:
      if (h.tag != 0 || h.id != 0 || h.arg != 0 || (spilled && h.kind == Kind::inbox_corrupt))
        fault = "a report (kind " + std::to_string(static_cast<uint32_t>(h.kind)) + ") with stray header fields";
      else if (h.kind == Kind::init_failed && s.completed != 0)
        fault = "a report of a failed initializer after it finished tasks";
      break;
    default:
      fault = "a frame of unknown kind " + std::to_string(static_cast<uint32_t>(h.kind));
  }
  if (fault.empty() && spilled && !is_spill_name(payload, pool_pid))
    fault = "a spilled payload whose " + std::to_string(payload.size()) +
            "-byte name is not one of this pool's (shoal-" + std::to_string(pool_pid) + "-<16 hex digits>)";
  return v;
}

bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 1, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (s.size() - i <= n) return false;
    for (std::size_t k = 1; k <= n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    static constexpr uint32_t kMin[4] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n + 1;
  }
  return true;
}

}  // namespace shoal
