#pragma once
// Pickles of plain values, written opcode by opcode: None, bools, ints within
// 64 bits, floats, str, bytes, and tuples, lists and dicts of them, in protocol 5.
//
// Every submit pickles its call's arguments, ((x,), {}), and every worker its
// task's result, and for such small values pickle.dumps() costs more than
// what it writes: a Pickler, a 4 KiB output buffer (a malloc that also makes
// glibc consolidate the small chunks other threads freed), a memo. A Writer
// keeps up to kInline bytes on the stack and writes what pickle.loads() reads
// back as the same values. The bytes are not dumps()'s own (no FRAME), but
// the memo is kept as pickle keeps it: a str, bytes, tuple or dict seen twice
// in one pickle loads as one object seen twice (f(s, s) gets `a is b`).
//
// No Python here: the bindings walk the objects (bind_scalar_pickle.cpp).
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace shoal::scalar_pickle {

static_assert(std::endian::native == std::endian::little, "pickle's binary ints are little-endian");

// The opcodes written here, as pickle.py names them.
namespace op {
inline constexpr char PROTO = '\x80';
inline constexpr char STOP = '.';
inline constexpr char NONE = 'N';
inline constexpr char NEWTRUE = '\x88';
inline constexpr char NEWFALSE = '\x89';
inline constexpr char BININT1 = 'K';
inline constexpr char BININT2 = 'M';
inline constexpr char BININT = 'J';
inline constexpr char LONG1 = '\x8a';
inline constexpr char BINFLOAT = 'G';
inline constexpr char SHORT_BINUNICODE = '\x8c';
inline constexpr char BINUNICODE = 'X';
inline constexpr char SHORT_BINBYTES = 'C';
inline constexpr char BINBYTES = 'B';
inline constexpr char MARK = '(';
inline constexpr char EMPTY_TUPLE = ')';
inline constexpr char TUPLE = 't';
inline constexpr char TUPLE1 = '\x85';
inline constexpr char TUPLE2 = '\x86';
inline constexpr char TUPLE3 = '\x87';
inline constexpr char EMPTY_DICT = '}';
inline constexpr char SETITEMS = 'u';
inline constexpr char EMPTY_LIST = ']';
inline constexpr char APPENDS = 'e';
inline constexpr char MEMOIZE = '\x94';
inline constexpr char BINGET = 'h';
inline constexpr char LONG_BINGET = 'j';
}  // namespace op

// The longest str or bytes written here. Longer ones are left to pickle,
// which writes a big value into its output with one copy, where a Writer
// would make two (into its buffer, then into the bytes object).
inline constexpr std::size_t kMaxLength = 64 * 1024;

class Writer {
 public:
  static constexpr std::size_t kInline = 240;

  Writer() {
    put(op::PROTO);
    put('\x05');
  }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  void none() { put(op::NONE); }
  void boolean(bool v) { put(v ? op::NEWTRUE : op::NEWFALSE); }

  void integer(std::int64_t v) {
    if (v >= 0 && v <= 0xff) {
      put(op::BININT1);
      put(static_cast<char>(v));
    } else if (v >= 0 && v <= 0xffff) {
      put(op::BININT2);
      put_le(static_cast<std::uint16_t>(v));
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      put(op::BININT);
      put_le(static_cast<std::uint32_t>(static_cast<std::int32_t>(v)));
    } else {
      // LONG1: the fewest little-endian two's-complement bytes that keep the sign.
      std::uint8_t n = 8;
      while (n > 1) {
        const std::int64_t shifted = v >> (8 * (n - 1) - 1);  // the top byte and the next one's sign bit
        if (shifted != 0 && shifted != -1) break;
        --n;
      }
      put(op::LONG1);
      put(static_cast<char>(n));
      const auto u = static_cast<std::uint64_t>(v);
      for (std::uint8_t i = 0; i < n; ++i) put(static_cast<char>((u >> (8 * i)) & 0xff));
    }
  }

  void real(double v) {  // BINFLOAT is the only big-endian field in a pickle
    put(op::BINFLOAT);
    const std::uint64_t bits = __builtin_bswap64(std::bit_cast<std::uint64_t>(v));
    append(reinterpret_cast<const char*>(&bits), sizeof bits);
  }

  // `utf8` is the str's UTF-8; both no longer than kMaxLength (a 4-byte length at most).
  void text(std::string_view utf8) { sized(op::SHORT_BINUNICODE, op::BINUNICODE, utf8); }
  void data(std::string_view bytes) { sized(op::SHORT_BINBYTES, op::BINBYTES, bytes); }

  // A tuple: tuple_begin(n), its n items, tuple_end(n).
  void tuple_begin(std::size_t n) {
    if (n > 3) put(op::MARK);
  }
  void tuple_end(std::size_t n) {
    static constexpr char kSmall[] = {op::EMPTY_TUPLE, op::TUPLE1, op::TUPLE2, op::TUPLE3};
    put(n <= 3 ? kSmall[n] : op::TUPLE);
  }

  // A list: list_begin(n), its n items, list_end(n); a dict: dict_begin(n),
  // then key, value for each of its n items, dict_end(n). Both are memoized
  // before their items, as pickle does: count them in the memo then.
  void list_begin(std::size_t n) { filled_begin(op::EMPTY_LIST, n); }
  void list_end(std::size_t n) { filled_end(op::APPENDS, n); }
  void dict_begin(std::size_t n) { filled_begin(op::EMPTY_DICT, n); }
  void dict_end(std::size_t n) { filled_end(op::SETITEMS, n); }

  // Stores the str, bytes or tuple just written in the memo, at the next index (0, 1, ...).
  void memoize() { put(op::MEMOIZE); }
  // The object the memo holds at `index`, again.
  void memo_get(std::uint32_t index) {
    if (index <= 0xff) {
      put(op::BINGET);
      put(static_cast<char>(index));
    } else {
      put(op::LONG_BINGET);
      put_le(index);
    }
  }

  // The whole pickle, STOP included; valid until the Writer is written to or gone.
  std::string_view finish() {
    put(op::STOP);
    return heap_.empty() ? std::string_view(inline_, size_) : std::string_view(heap_);
  }

 private:
  // An empty container, memoized, then (with items) the mark its filling opcode pops to.
  void filled_begin(char empty, std::size_t n) {
    put(empty);
    put(op::MEMOIZE);
    if (n) put(op::MARK);
  }
  void filled_end(char fill, std::size_t n) {
    if (n) put(fill);
  }

  void sized(char short_op, char long_op, std::string_view bytes) {
    if (bytes.size() < 256) {
      put(short_op);
      put(static_cast<char>(bytes.size()));
    } else {
      put(long_op);
      put_le(static_cast<std::uint32_t>(bytes.size()));
    }
    append(bytes.data(), bytes.size());
  }

  template <class U>
  void put_le(U v) {
    append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void put(char c) { append(&c, 1); }

  void append(const char* p, std::size_t n) {
    if (heap_.empty() && size_ + n <= kInline) {
      std::memcpy(inline_ + size_, p, n);
      size_ += n;
      return;
    }
    if (heap_.empty()) heap_.assign(inline_, size_);  // outgrew the stack buffer: move to the heap once
    heap_.append(p, n);
  }

  char inline_[kInline];
  std::size_t size_ = 0;
  std::string heap_;
};

}  // namespace shoal::scalar_pickle
