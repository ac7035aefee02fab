#include "gen/scheduler.h"

#include <algorithm>

#include "common/status.h"

namespace modelserve::gen {

namespace {
int blocks_for(int tokens, int block_size) { return (tokens + block_size - 1) / block_size; }
}  // namespace

GenScheduler::GenScheduler(GenConfig config) : config_(config), blocks_(config.num_blocks, config.block_size) {
  MS_EXPECTS(config_.max_num_seqs > 0, kInvalidArgument, "generation.max_num_seqs must be > 0, got ",
             config_.max_num_seqs);
  MS_EXPECTS(config_.max_num_batched_tokens > 0, kInvalidArgument,
             "generation.max_num_batched_tokens must be > 0, got ", config_.max_num_batched_tokens);
  MS_EXPECTS(config_.max_model_len > 0, kInvalidArgument, "generation.max_model_len must be > 0, got ",
             config_.max_model_len);
  MS_EXPECTS(blocks_for(config_.max_model_len, config_.block_size) <= config_.num_blocks, kInvalidArgument,
             "the KV cache of ", config_.num_blocks, " blocks of ", config_.block_size,
             " tokens cannot hold one sequence of generation.max_model_len ", config_.max_model_len, " (needs ",
             blocks_for(config_.max_model_len, config_.block_size), " blocks)");
}

void GenScheduler::add(uint64_t id, std::vector<int32_t> prompt, uint32_t priority,
                       std::chrono::steady_clock::time_point deadline) {
  MS_EXPECTS(!prompt.empty(), kInvalidArgument, "a generation request needs at least one prompt token");
  MS_EXPECTS(static_cast<int>(prompt.size()) < config_.max_model_len, kInvalidArgument, "the prompt has ",
             prompt.size(), " tokens; generation.max_model_len is ", config_.max_model_len,
             " (prompt and output together)");
  auto s = std::make_shared<Seq>();
  s->id = id;
  s->tokens = std::move(prompt);
  s->prompt_len = static_cast<int>(s->tokens.size());
  s->priority = priority;
  s->deadline = deadline;
  std::lock_guard<std::mutex> lock(mutex_);
  MS_EXPECTS(!seqs_.count(id), kInvalidArgument, "generation request id ", id, " is already in use");
  s->arrival = arrivals_++;
  seqs_.emplace(id, s);
  auto at = std::upper_bound(waiting_.begin(), waiting_.end(), s, [](const SeqPtr& a, const SeqPtr& b) {
    return a->priority != b->priority ? a->priority < b->priority : a->arrival < b->arrival;
  });
  waiting_.insert(at, s);
}

bool GenScheduler::abort(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return false;
  SeqPtr s = it->second;
  if (std::find(in_step_.begin(), in_step_.end(), s) != in_step_.end()) {
    s->aborted = true;  // its step is running; complete() removes it
    return true;
  }
  release_blocks(*s);
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), s), waiting_.end());
  running_.erase(std::remove(running_.begin(), running_.end(), s), running_.end());
  seqs_.erase(it);
  return true;
}

bool GenScheduler::has_work() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return !waiting_.empty() || !running_.empty();
}

void GenScheduler::release_blocks(Seq& s) {
  for (int32_t b : s.blocks) blocks_.release(b);
  s.blocks.clear();
  s.hashes.clear();
  s.num_computed = 0;
}

bool GenScheduler::grow(Seq& s, int tokens) {
  const int need = blocks_for(tokens, config_.block_size);
  while (static_cast<int>(s.blocks.size()) < need) {
    auto b = blocks_.allocate();
    if (!b) return false;
    s.blocks.push_back(*b);
  }
  return true;
}

void GenScheduler::preempt(const SeqPtr& s) {
  release_blocks(*s);
  running_.erase(std::remove(running_.begin(), running_.end(), s), running_.end());
  auto at = std::upper_bound(waiting_.begin(), waiting_.end(), s, [](const SeqPtr& a, const SeqPtr& b) {
    return a->priority != b->priority ? a->priority < b->priority : a->arrival < b->arrival;
  });
  waiting_.insert(at, s);
  counters_.preemptions += 1;
}

void GenScheduler::match_prefix(Seq& s) {
  // Full blocks only, and never the block holding the last token: it must be computed.
  const int bs = config_.block_size;
  const int matchable = (static_cast<int>(s.tokens.size()) - 1) / bs;
  uint64_t parent = 0;
  for (int i = 0; i < matchable; ++i) {
    const int32_t* tokens = s.tokens.data() + static_cast<size_t>(i) * bs;
    const uint64_t h = block_hash(parent, tokens, bs);
    auto b = blocks_.lookup(h, tokens);
    if (!b) break;
    s.blocks.push_back(*b);
    s.hashes.push_back(h);
    parent = h;
  }
  s.num_computed = static_cast<int>(s.blocks.size()) * bs;
  counters_.prefix_cached_tokens += static_cast<uint64_t>(s.num_computed);
}

void GenScheduler::publish_full_blocks(Seq& s) {
  const int bs = config_.block_size;
  while (static_cast<int>(s.hashes.size()) < s.num_computed / bs) {
    const size_t i = s.hashes.size();
    const int32_t* tokens = s.tokens.data() + i * static_cast<size_t>(bs);
    const uint64_t h = block_hash(i == 0 ? 0 : s.hashes.back(), tokens, bs);
    blocks_.publish(s.blocks[i], h, tokens);
    s.hashes.push_back(h);
  }
}

Step GenScheduler::schedule() {
  std::lock_guard<std::mutex> lock(mutex_);
  MS_EXPECTS(in_step_.empty(), kInternal, "schedule() called before the last step completed");
  Step step;
  const auto now = std::chrono::steady_clock::now();
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if ((*it)->deadline <= now) {
      step.expired.push_back((*it)->id);
      release_blocks(**it);
      seqs_.erase((*it)->id);
      it = waiting_.erase(it);
    } else {
      ++it;
    }
  }
  int budget = config_.max_num_batched_tokens;
  std::vector<std::pair<SeqPtr, int>> chosen;  // sequence, tokens this step

  // Running sequences first, oldest admission first; preemption takes the newest.
  for (size_t i = 0; i < running_.size() && budget > 0 && static_cast<int>(chosen.size()) < config_.max_num_seqs;) {
    SeqPtr s = running_[i];
    const int remaining = static_cast<int>(s->tokens.size()) - s->num_computed;
    const int count = std::min(remaining, budget);
    bool fits = grow(*s, s->num_computed + count);
    while (!fits) {
      SeqPtr victim = running_.back();
      preempt(victim);
      step.preempted.push_back(victim->id);
      if (victim == s) break;
      fits = grow(*s, s->num_computed + count);
    }
    if (!fits) continue;  // s itself went back to wait; running_[i] is the next one now
    chosen.emplace_back(s, count);
    budget -= count;
    ++i;
  }
  // Then waiting sequences, in order, while they fit.
  while (!waiting_.empty() && budget > 0 && static_cast<int>(chosen.size()) < config_.max_num_seqs) {
    SeqPtr s = waiting_.front();
    if (std::find(step.preempted.begin(), step.preempted.end(), s->id) != step.preempted.end()) break;
    if (config_.prefix_caching && s->blocks.empty()) match_prefix(*s);
    const int remaining = static_cast<int>(s->tokens.size()) - s->num_computed;
    const int count = std::min(remaining, budget);
    if (!grow(*s, s->num_computed + count)) {
      counters_.prefix_cached_tokens -= static_cast<uint64_t>(s->hashes.size()) * config_.block_size;
      release_blocks(*s);  // it tries again, prefix lookup included, at a later iteration
      break;
    }
    waiting_.pop_front();
    s->admitted = admissions_++;
    running_.push_back(s);
    chosen.emplace_back(s, count);
    budget -= count;
  }

  for (auto& [s, count] : chosen) {
    StepSeq e;
    e.id = s->id;
    e.start = s->num_computed;
    e.count = count;
    e.sample = s->num_computed + count == static_cast<int>(s->tokens.size());
    e.blocks = s->blocks;
    for (int p = e.start; p < e.start + count; ++p) {
      step.tokens.push_back(s->tokens[static_cast<size_t>(p)]);
      step.positions.push_back(p);
      step.slots.push_back(static_cast<int64_t>(s->blocks[static_cast<size_t>(p / config_.block_size)]) *
                               config_.block_size +
                           p % config_.block_size);
    }
    const bool decoding = count == 1 && e.start >= s->prompt_len;  // a token it generated itself
    (decoding ? counters_.decode_tokens : counters_.prefill_tokens) += static_cast<uint64_t>(count);
    step.seqs.push_back(std::move(e));
    in_step_.push_back(s);
    step_counts_.push_back(count);
  }
  counters_.iterations += chosen.empty() ? 0 : 1;
  return step;
}

void GenScheduler::complete(const std::vector<int32_t>& sampled, const std::vector<uint64_t>& finished) {
  std::lock_guard<std::mutex> lock(mutex_);
  size_t next = 0;
  for (size_t i = 0; i < in_step_.size(); ++i) {
    Seq& s = *in_step_[i];
    s.num_computed += step_counts_[i];
    if (s.num_computed == static_cast<int>(s.tokens.size())) {
      MS_EXPECTS(next < sampled.size(), kInternal, "complete(): ", sampled.size(),
                 " sampled tokens for a step that samples more sequences");
      s.tokens.push_back(sampled[next++]);
    }
    if (config_.prefix_caching) publish_full_blocks(s);
  }
  MS_EXPECTS(next == sampled.size(), kInternal, "complete(): ", sampled.size(), " sampled tokens for a step that ",
             "samples ", next, " sequences");
  std::vector<SeqPtr> done;
  for (auto& s : in_step_) {
    if (s->aborted) done.push_back(s);
  }
  for (uint64_t id : finished) {
    auto it = seqs_.find(id);
    if (it != seqs_.end()) done.push_back(it->second);
  }
  for (auto& s : done) {
    if (!seqs_.count(s->id)) continue;  // listed twice
    release_blocks(*s);
    waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), s), waiting_.end());
    running_.erase(std::remove(running_.begin(), running_.end(), s), running_.end());
    seqs_.erase(s->id);
  }
  in_step_.clear();
  step_counts_.clear();
}

GenStats GenScheduler::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  GenStats s = counters_;
  s.waiting = static_cast<int64_t>(waiting_.size());
  s.running = static_cast<int64_t>(running_.size());
  for (const auto& r : running_) s.tokens_stored += r->num_computed;
  s.blocks = blocks_.stats();
  return s;
}

}  // namespace modelserve::gen
