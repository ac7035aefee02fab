#include "gen/kv_blocks.h"

#include <cstring>

#include "common/status.h"

namespace modelserve::gen {

uint64_t block_hash(uint64_t parent, const int32_t* tokens, int count) {
  // FNV-1a over the parent hash and the tokens' bytes, then a splitmix64 finaliser.
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < n; ++i) {
      h ^= p[i];
      h *= 1099511628211ull;
    }
  };
  mix(&parent, sizeof(parent));
  mix(tokens, sizeof(int32_t) * static_cast<size_t>(count));
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

KvBlocks::KvBlocks(int num_blocks, int block_size)
    : block_size_(block_size), refs_(static_cast<size_t>(num_blocks), 0), lru_pos_(static_cast<size_t>(num_blocks)),
      in_lru_(static_cast<size_t>(num_blocks), false), hash_of_(static_cast<size_t>(num_blocks)),
      tokens_of_(static_cast<size_t>(num_blocks)) {
  MS_EXPECTS(num_blocks > 0, kInvalidArgument, "the KV cache needs at least one block, got ", num_blocks);
  MS_EXPECTS(block_size > 0, kInvalidArgument, "generation.block_size must be > 0, got ", block_size);
  free_.reserve(static_cast<size_t>(num_blocks));
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);  // block 0 first
}

void KvBlocks::check(int block) const {
  MS_EXPECTS(block >= 0 && block < num_blocks(), kInternal, "KV block ", block, " out of range [0, ", num_blocks(),
             ")");
}

std::optional<int> KvBlocks::allocate() {
  int block;
  if (!free_.empty()) {
    block = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    block = lru_.front();  // evict the least recently used cached prefix
    lru_.pop_front();
    in_lru_[block] = false;
    by_hash_.erase(*hash_of_[block]);
    hash_of_[block].reset();
    tokens_of_[block].clear();
    evictions_ += 1;
  } else {
    return std::nullopt;
  }
  refs_[block] = 1;
  return block;
}

void KvBlocks::retain(int block) {
  check(block);
  if (refs_[block] == 0 && in_lru_[block]) {
    lru_.erase(lru_pos_[block]);
    in_lru_[block] = false;
  }
  refs_[block] += 1;
}

void KvBlocks::release(int block) {
  check(block);
  MS_EXPECTS(refs_[block] > 0, kInternal, "KV block ", block, " released more often than retained");
  if (--refs_[block] > 0) return;
  if (hash_of_[block]) {
    lru_pos_[block] = lru_.insert(lru_.end(), block);
    in_lru_[block] = true;
  } else {
    free_.push_back(block);
  }
}

std::optional<int> KvBlocks::lookup(uint64_t hash, const int32_t* tokens) {
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end() ||
      std::memcmp(tokens_of_[it->second].data(), tokens, sizeof(int32_t) * static_cast<size_t>(block_size_)) != 0) {
    misses_ += 1;
    return std::nullopt;
  }
  hits_ += 1;
  retain(it->second);
  return it->second;
}

void KvBlocks::publish(int block, uint64_t hash, const int32_t* tokens) {
  check(block);
  MS_EXPECTS(refs_[block] > 0, kInternal, "KV block ", block, " published while unreferenced");
  if (hash_of_[block] || by_hash_.count(hash)) return;  // already cached, here or in another block
  by_hash_.emplace(hash, block);
  hash_of_[block] = hash;
  tokens_of_[block].assign(tokens, tokens + block_size_);
}

KvBlockStats KvBlocks::stats() const {
  KvBlockStats s;
  s.num_blocks = num_blocks();
  s.free = static_cast<int64_t>(free_.size());
  s.cached = static_cast<int64_t>(lru_.size());
  s.in_use = s.num_blocks - s.free - s.cached;
  s.prefix_hits = hits_;
  s.prefix_misses = misses_;
  s.evictions = evictions_;
  return s;
}

}  // namespace modelserve::gen
