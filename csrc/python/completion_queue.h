// Completions from core threads to Python: a per-request state for blocking waits, and a queue
// an asyncio loop drains in batches. No Python objects here (core threads use both).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "sched/request.h"

namespace modelserve {

class Model;

namespace python {

class CompletionQueue;

// The result slot of one submitted request, shared by the completion and the Python handle.
class RequestState : public std::enable_shared_from_this<RequestState> {
 public:
  uint64_t id = 0;
  int64_t tag = 0;
  std::weak_ptr<Model> model;            // for cancel()
  std::shared_ptr<CompletionQueue> queue;  // notified on completion, if set

  void complete(Response&& response);
  // Blocks until completed or `timeout_s` passed (< 0: no limit); true once completed.
  bool wait(double timeout_s);
  bool done() const;
  const Response& response() const { return response_; }  // only once done()
  Response& response() { return response_; }

 private:
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;  // guarded by mutex_; response_ is written before it is set
  Response response_;
};

// Note [Batched wake-ups]
// ~~~~~~~~~~~~~~~~~~~~~~~
// Finished requests are appended to a list; only the push that finds the list empty writes to
// the eventfd (a pipe where there is no eventfd), so the event loop wakes once for however many
// requests finish before it runs, then takes them all with drain(). drain() resets the fd before
// taking the list: a push that lands after the reset either finds the list non-empty (and is
// taken by this drain) or empty (and writes again, so the next wake-up takes it).
class CompletionQueue {
 public:
  CompletionQueue();
  ~CompletionQueue();
  CompletionQueue(const CompletionQueue&) = delete;
  CompletionQueue& operator=(const CompletionQueue&) = delete;

  int fileno() const { return read_fd_; }
  void push(std::shared_ptr<RequestState> state);
  std::vector<std::shared_ptr<RequestState>> drain();
  uint64_t wakeups() const;  // writes to the fd so far (tests check the batching)

 private:
  int read_fd_ = -1;
  int write_fd_ = -1;
  mutable std::mutex mutex_;
  std::vector<std::shared_ptr<RequestState>> ready_;  // guarded by mutex_
  uint64_t wakeups_ = 0;                              // guarded by mutex_
};

}  // namespace python
}  // namespace modelserve
