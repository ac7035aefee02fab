// KvBlocks: fixed-size KV-cache blocks with reference counts and a prefix cache.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <unordered_map>
#include <vector>

namespace modelserve::gen {

struct KvBlockStats {
  int64_t num_blocks = 0;
  int64_t in_use = 0;      // referenced by at least one sequence
  int64_t cached = 0;      // unreferenced, holding a cached prefix (evictable)
  int64_t free = 0;        // unreferenced, empty
  uint64_t prefix_hits = 0;    // blocks found in the prefix cache
  uint64_t prefix_misses = 0;  // lookups that found none
  uint64_t evictions = 0;      // cached blocks reused for other data
};

// The hash of a full block: its tokens and the hash of everything before it, so equal hashes mean
// equal prefixes (up to 64-bit collisions; the cache also compares the tokens, see lookup()).
uint64_t block_hash(uint64_t parent, const int32_t* tokens, int count);

// Note [KV blocks]
// ~~~~~~~~~~~~~~~~
// The KV cache is num_blocks blocks of block_size token slots each; a sequence owns a block table
// (block ids in position order) and token p of it lives in slot blocks[p / block_size] *
// block_size + p % block_size. Memory is committed one block at a time as a sequence grows, so no
// sequence reserves room for the longest answer it might give.
//
// A block is in one of three states. In use: reference count > 0 (several sequences share a block
// of a common prefix). Cached: count 0 but its tokens are a published prefix block, kept for reuse
// and evicted least recently used when a fresh block is needed. Free: count 0 and empty.
// allocate() takes a free block, else evicts the least recently released cached one (its hash
// leaves the cache); it returns nothing only when every block is in use.
//
// Prefix caching: once all block_size tokens of a sequence's block are computed, the scheduler
// publishes it under block_hash(previous block's hash, its tokens). A later sequence whose prompt
// starts with the same tokens looks each full block up and shares it (a retain) instead of
// computing it again. A published block is never written again: a sequence writes only its
// unpublished last block. Two sequences may publish the same prefix; the first one wins and the
// other's block stays private.
//
// Not thread-safe: the generation scheduler owns one and calls it under its own mutex.
class KvBlocks {
 public:
  KvBlocks(int num_blocks, int block_size);

  int block_size() const { return block_size_; }
  int num_blocks() const { return static_cast<int>(refs_.size()); }
  // Blocks allocate() can hand out now (free + cached).
  int available() const { return static_cast<int>(free_.size() + lru_.size()); }

  std::optional<int> allocate();  // reference count 1
  void retain(int block);
  void release(int block);        // count 0: cached when published, else free
  // A cached or in-use block holding exactly `tokens` after the prefix of `hash`'s parent, retained.
  std::optional<int> lookup(uint64_t hash, const int32_t* tokens);
  // `block` (in use, full) now holds `tokens`, final; it becomes reusable under `hash`.
  void publish(int block, uint64_t hash, const int32_t* tokens);
  KvBlockStats stats() const;

 private:
  void check(int block) const;

  const int block_size_;
  std::vector<int32_t> refs_;
  std::vector<int> free_;                           // stack of free block ids
  std::list<int> lru_;                              // cached blocks, least recently released first
  std::vector<std::list<int>::iterator> lru_pos_;   // per block; valid while it is in lru_
  std::vector<bool> in_lru_;
  std::unordered_map<uint64_t, int> by_hash_;       // published prefix -> block
  std::vector<std::optional<uint64_t>> hash_of_;    // per block: its published hash
  std::vector<std::vector<int32_t>> tokens_of_;     // per published block: its tokens (collision check)
  uint64_t hits_ = 0, misses_ = 0, evictions_ = 0;
};

}  // namespace modelserve::gen
