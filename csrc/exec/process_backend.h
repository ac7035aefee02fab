// Process instances: a backend whose every instance is a worker process, fed through shared memory.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/datatype.h"
#include "exec/backend.h"
#include "tensor/tensor.h"

namespace modelserve {

// Note [Process instances]
// ~~~~~~~~~~~~~~~~~~~~~~~~
// With `instances.isolation: process` each instance of a Python model is a worker process: the
// command in WorkerOptions::argv (`python -m modelserve.backends._worker`), started with
// posix_spawn (never a fork of this threaded process), its control socket on fd 3 and its stdout
// and stderr on a pipe whose lines go to WorkerOptions::log. The executor sees an ordinary
// Backend; the instance's thread blocks in execute() without the GIL while the worker computes, so
// a model that holds its own interpreter's GIL uses a core of its own.
//
// Data never crosses the socket. The executor gathers a batch into shared memory (input_resource()
// is shm_pool(); a batch of one, which it passes through, is copied in here: one copy either way).
// Output blocks the core allocates too: before the batch when config.yaml gives an output's whole
// shape, else when the worker asks (one more round trip, and for every BYTES output, whose size
// only the worker knows). The worker maps each segment once (Note [Shared memory segments]), sees
// numpy views of inputs and output blocks, and copies the arrays execute() returned into the
// blocks. Outputs are then tensors over those blocks, sliced per request like any batch output;
// the blocks return to the pool when the last response lets go of them. The worker never owns a
// block, so a dead worker leaks none.
//
// Messages (SOCK_SEQPACKET, so one send is one message; little-endian; sizes independent of the
// tensors' sizes; the layouts are those of _worker.py, which keeps the Python half):
//   core -> worker  'I' init (the instance, the JSON of WorkerOptions::init), 'B' batch (segments to map, with
//                   their descriptors as SCM_RIGHTS; segments to unmap; input, preallocated-output
//                   and requested-output descriptors), 'K' blocks asked for, 'Q' quit
//   worker -> core  'R' ready, 'A' blocks wanted, 'D' done (where each output is), 'E' error
//
// Faults stay inside the instance: an exception fails its batch (as a thread instance does); a
// worker that dies (end of file on the socket) fails its batch with INTERNAL naming the exit code
// or signal; a batch past execute_timeout_s kills the worker (SIGKILL) and fails with INTERNAL
// naming the timeout. Either way the worker is reaped before the batch's blocks go back to the
// pool, and recover() restarts it while the instance still counts as busy (Backend::
// needs_recovery), after a back-off that doubles with every crash in the window (0, 0.1, 0.2, ...
// up to 5 s). The crashes of all instances of a version are counted together: max_crashes within
// crash_window_s and the version has failed: no more restarts, every batch fails with UNAVAILABLE
// and the reason, and on_failed(reason) runs once (the repository moves the version to FAILED).
// Note [Spinning for replies]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~
// A message between two processes that sleep in poll() or recv() costs a wake-up of the receiver:
// measured on the two-core VMs here, a blocking round trip is ~60 us even in C, against ~5 us when
// the receiver busy-waits. So each side waits awake for up to spin_us before it sleeps: the core
// for the worker's answer, the worker for the next batch. Spinning is adaptive, to bound the CPU it
// burns: a side spins only while the last message it waited for came within spin_us (a model that
// computes for milliseconds, or a worker idle between sparse requests, makes it sleep at once), and
// a sleeping wait that ended within twice spin_us (it includes the wake-up) turns spinning back on. At most spin_us of CPU
// is spent per message, and none when messages come too late for spinning to catch them.
struct WorkerOptions {
  std::string label;               // "model 'm' version 1": starts every message
  std::vector<std::string> argv;   // the worker's command; its control socket is fd 3
  std::string init;                // the first message's payload
  double execute_timeout_s = 0;    // per batch; 0 = none
  int64_t spin_us = 100;           // Note [Spinning for replies]; 0 = always sleep
  double stop_timeout_s = 10;      // a stopping worker's grace period before SIGKILL
  int64_t max_batch_size = 0;
  struct Output {
    std::string name;
    DataType dtype;
    Shape dims;  // without the batch dimension; -1 = known only after execute
  };
  std::vector<Output> outputs;
  int max_crashes = 5;
  double crash_window_s = 60;
  // A line the worker printed (event false), or what happened to it: a crash, a failed restart.
  std::function<void(int instance, const std::string& line, bool event)> log;
  std::function<void(const std::string& reason)> on_failed;
};

struct WorkerInfo {
  int instance = 0;
  int pid = 0;          // 0 while not running
  uint64_t starts = 0;  // processes started for this instance
  size_t pss_bytes = 0; // proportional set size: shared pages count once over the processes sharing them
};

struct ProcessStats {
  uint64_t batches = 0;
  uint64_t control_messages = 0;
  uint64_t control_bytes = 0;  // both ways, descriptors not counted
  uint64_t starts = 0;
  uint64_t crashes = 0;
  std::string failed;  // why the version failed; empty while it has not
};

// The worker processes of one model version: a BackendFactory for the Executor, shared by its
// instances (the crash window spans them), and what Python asks about them.
class ProcessInstances : public std::enable_shared_from_this<ProcessInstances> {
 public:
  explicit ProcessInstances(WorkerOptions options);
  BackendFactory factory();
  std::vector<WorkerInfo> workers() const;
  ProcessStats stats() const;
  const WorkerOptions& options() const { return options_; }

  // Used by the instances' backends.
  void set_worker(int instance, int pid);  // pid 0: stopped
  void count_message(size_t bytes) {
    control_messages_.fetch_add(1, std::memory_order_relaxed);
    control_bytes_.fetch_add(bytes, std::memory_order_relaxed);
  }
  void count_batch() { batches_.fetch_add(1, std::memory_order_relaxed); }
  // Records a crash; returns how many fall in the window (on_failed has been called once they
  // reach max_crashes).
  int record_crash(const std::string& what);
  std::string failed_reason() const;

 private:
  const WorkerOptions options_;
  mutable std::mutex mutex_;
  std::map<int, WorkerInfo> workers_;                   // guarded by mutex_; by instance
  std::deque<std::chrono::steady_clock::time_point> crashes_;  // guarded by mutex_; in the window
  uint64_t crash_count_ = 0;                            // guarded by mutex_
  uint64_t starts_ = 0;                                 // guarded by mutex_
  std::string failed_;                                  // guarded by mutex_
  std::atomic<uint64_t> batches_{0}, control_messages_{0}, control_bytes_{0};
};

// "exited with code 3", "was killed by signal 9 (SIGKILL)": a waitpid status in words.
std::string describe_exit(int wait_status);
// The proportional set size of a process (from /proc/<pid>/smaps_rollup); 0 when unknown.
size_t process_pss_bytes(int pid);

}  // namespace modelserve
