#include "runtime/ring_buffer.h"

#include <algorithm>
#include <cstring>

namespace cloister {

void RingBuffer::grow(size_t need) {
  if (buf_.size() >= need) return;
  size_t n = std::max<size_t>(buf_.size() * 2, 4096);
  while (n < need) n *= 2;
  n = std::min(n, capacity_);
  std::vector<char> next(n);
  // Linearise: the held bytes go to the front of the new buffer.
  for (size_t i = 0; i < size_; ++i) next[i] = buf_[(head_ + i) % buf_.size()];
  buf_ = std::move(next);
  head_ = 0;
}

uint64_t RingBuffer::append(std::string_view data) {
  uint64_t evicted = 0;
  end_ += data.size();
  if (capacity_ == 0) {
    evicted = data.size() + size_;
    size_ = 0;
    return evicted;
  }
  if (data.size() >= capacity_) {
    evicted = size_ + (data.size() - capacity_);
    data = data.substr(data.size() - capacity_);
    grow(capacity_);
    std::memcpy(buf_.data(), data.data(), capacity_);
    head_ = 0;
    size_ = capacity_;
    return evicted;
  }
  if (size_ + data.size() > capacity_) {
    size_t drop = size_ + data.size() - capacity_;
    head_ = (head_ + drop) % std::max<size_t>(buf_.size(), 1);
    size_ -= drop;
    evicted = drop;
  }
  grow(size_ + data.size());
  size_t tail = (head_ + size_) % buf_.size();
  size_t first = std::min(data.size(), buf_.size() - tail);
  std::memcpy(buf_.data() + tail, data.data(), first);
  std::memcpy(buf_.data(), data.data() + first, data.size() - first);
  size_ += data.size();
  return evicted;
}

std::string RingBuffer::read(uint64_t offset, size_t max) const {
  if (offset < start() || offset >= end_) return {};
  size_t skip = static_cast<size_t>(offset - start());
  size_t n = std::min(max, size_ - skip);
  std::string out(n, '\0');
  size_t at = (head_ + skip) % buf_.size();
  size_t first = std::min(n, buf_.size() - at);
  std::memcpy(out.data(), buf_.data() + at, first);
  std::memcpy(out.data() + first, buf_.data(), n - first);
  return out;
}

std::string_view RingBuffer::peek(uint64_t offset, size_t max) const {
  if (offset < start() || offset >= end_) return {};
  const size_t skip = static_cast<size_t>(offset - start());
  const size_t at = (head_ + skip) % buf_.size();
  return std::string_view(buf_.data() + at, std::min({max, size_ - skip, buf_.size() - at}));
}

void RingBuffer::release() {
  std::vector<char>().swap(buf_);
  head_ = 0;
  size_ = 0;
}

}  // namespace cloister
