// GenScheduler: continuous batching for autoregressive generation, one iteration at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "gen/kv_blocks.h"

namespace modelserve::gen {

struct GenConfig {
  int block_size = 16;
  int num_blocks = 0;
  int max_num_seqs = 64;              // sequences in one iteration
  int max_num_batched_tokens = 2048;  // tokens computed in one iteration (prefill chunks + decodes)
  int max_model_len = 1024;           // prompt + generated tokens of one sequence
  bool prefix_caching = true;
};

// One sequence's part of an iteration: compute tokens [start, start + count) of it, attending to
// positions [0, start + count) through `blocks`.
struct StepSeq {
  uint64_t id = 0;
  int start = 0;
  int count = 0;
  bool sample = false;  // the chunk ends at the sequence's last token: its logits give the next one
  std::vector<int32_t> blocks;
};

struct Step {
  std::vector<StepSeq> seqs;
  std::vector<int32_t> tokens, positions;  // concatenated over seqs, in order
  std::vector<int64_t> slots;              // KV slot of each computed token
  std::vector<uint64_t> expired;           // waiting sequences whose deadline passed (removed)
  std::vector<uint64_t> preempted;         // running sequences sent back to wait (to recompute)
};

struct GenStats {
  int64_t waiting = 0, running = 0;
  uint64_t iterations = 0, preemptions = 0;
  uint64_t prefill_tokens = 0;       // prompt (and recomputed) tokens computed
  uint64_t decode_tokens = 0;        // tokens computed one at a time
  uint64_t prefix_cached_tokens = 0; // prompt tokens not computed thanks to the prefix cache
  int64_t tokens_stored = 0;         // tokens of running sequences (with their KV in blocks)
  KvBlockStats blocks;
};

// Note [Generation scheduling]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// Every iteration (schedule(), then the model runs the step, then complete()) forms one batch
// under max_num_seqs and max_num_batched_tokens:
//   1. Waiting sequences past their deadline leave (Step::expired).
//   2. Running sequences, in the order they were admitted, each get their next chunk: one token
//      when decoding, else as much of the rest of the prompt as the token budget allows (chunked
//      prefill). A chunk that needs a block when none is left preempts the most recently admitted
//      running sequence (possibly itself): its blocks are released and it waits again, at the
//      front, to recompute its tokens (prompt and what it generated) later. Nothing fails for
//      lack of KV memory, and the oldest sequences keep making progress.
//   3. Waiting sequences join, by priority level, then arrival, while seats, budget and blocks
//      last; the first that does not fit stops admission (no overtaking, so none starves). A
//      sequence joining looks its prompt's full blocks up in the prefix cache first (Note [KV
//      blocks]) and computes only what it does not find; at least its last prompt token is always
//      computed, for the logits.
// complete() appends the sampled tokens, publishes blocks that became full, and removes finished
// and aborted sequences, releasing their blocks at once. A sequence aborted while its step runs
// is removed when that step completes.
//
// Thread safety: every member is guarded by mutex_; add() and abort() may come from any thread
// while one thread runs the loop.
class GenScheduler {
 public:
  explicit GenScheduler(GenConfig config);

  void add(uint64_t id, std::vector<int32_t> prompt, uint32_t priority = 0,
           std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max());
  bool abort(uint64_t id);  // false when the id is unknown (finished already)
  bool has_work() const;
  Step schedule();
  // `sampled`: the next token of every sequence of the last step with sample == true, in step
  // order; `finished`: sequences that are done (the caller decides: stop token, max_tokens, ...).
  void complete(const std::vector<int32_t>& sampled, const std::vector<uint64_t>& finished);
  GenStats stats() const;
  const GenConfig& config() const { return config_; }

 private:
  struct Seq {
    uint64_t id;
    std::vector<int32_t> tokens;  // prompt, then generated
    int prompt_len = 0;
    int num_computed = 0;         // tokens whose KV is in blocks
    std::vector<int32_t> blocks;
    std::vector<uint64_t> hashes; // of the published (full) blocks, in order
    uint32_t priority = 0;
    uint64_t arrival = 0;
    uint64_t admitted = 0;        // admission order while running
    std::chrono::steady_clock::time_point deadline;
    bool aborted = false;
  };
  using SeqPtr = std::shared_ptr<Seq>;

  void release_blocks(Seq& s);
  bool grow(Seq& s, int tokens);  // blocks for the first `tokens` positions; false when none left
  void preempt(const SeqPtr& s);
  void match_prefix(Seq& s);
  void publish_full_blocks(Seq& s);

  const GenConfig config_;
  mutable std::mutex mutex_;
  KvBlocks blocks_;
  std::map<uint64_t, SeqPtr> seqs_;  // every live sequence, by id
  std::deque<SeqPtr> waiting_;       // priority, then arrival order (preempted ones at the front)
  std::vector<SeqPtr> running_;      // admission order
  std::vector<SeqPtr> in_step_;      // the last schedule()'s sequences, until complete()
  std::vector<int> step_counts_;     // and the tokens each computes in it
  uint64_t arrivals_ = 0, admissions_ = 0;
  GenStats counters_;
};

}  // namespace modelserve::gen
