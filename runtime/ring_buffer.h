// RingBuffer: the bounded output buffer of one session stream, addressed by
// absolute byte offsets. Offsets count every byte the stream ever produced;
// the buffer holds [start(), end()) and evicts from the front when an append
// would exceed its capacity, so that a reader can always tell what it missed:
// bytes before start() were evicted, never silently lost.
//
// Memory grows with what is held (doubling up to the capacity), so an idle
// or short session costs little, and never exceeds the capacity.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cloister {

class RingBuffer {
 public:
  explicit RingBuffer(size_t capacity) : capacity_(capacity) {}

  size_t capacity() const { return capacity_; }
  uint64_t start() const { return end_ - size_; }  // first offset still held
  uint64_t end() const { return end_; }            // offset of the next byte
  size_t size() const { return size_; }
  size_t allocated() const { return buf_.size(); }

  // Appends, evicting the oldest bytes as needed. Returns how many bytes
  // were evicted (an append larger than the capacity keeps its tail).
  uint64_t append(std::string_view data);

  // Up to max bytes starting at offset, which must be in [start(), end()].
  std::string read(uint64_t offset, size_t max) const;
  // As read(), without a copy: the bytes up to max or to the buffer's wrap,
  // whichever comes first; valid until the next append() or release().
  std::string_view peek(uint64_t offset, size_t max) const;

  // Frees the memory (the offsets stay).
  void release();

 private:
  void grow(size_t need);
  size_t capacity_;
  std::vector<char> buf_;
  size_t head_ = 0;  // index of start() in buf_
  size_t size_ = 0;
  uint64_t end_ = 0;
};

}  // namespace cloister
