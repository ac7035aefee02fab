#include "exec/process_backend.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>

#include "common/status.h"
#include "memory/shm_resource.h"

extern char** environ;

namespace modelserve {

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    static const std::map<int, const char*> names = {
        {SIGKILL, "SIGKILL"}, {SIGSEGV, "SIGSEGV"}, {SIGABRT, "SIGABRT"}, {SIGTERM, "SIGTERM"},
        {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},   {SIGILL, "SIGILL"},   {SIGINT, "SIGINT"}};
    auto it = names.find(sig);
    return "was killed by signal " + std::to_string(sig) + " (" + (it != names.end() ? it->second : strsignal(sig)) + ")";
  }
  return "stopped with wait status " + std::to_string(status);
}

size_t process_pss_bytes(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string key;
  size_t kb = 0;
  while (in >> key) {
    if (key == "Pss:") {
      in >> kb;
      return kb * 1024;
    }
    in.ignore(1 << 20, '\n');
  }
  return 0;
}

namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr int kWorkerFd = 3;               // the worker's end of the control socket
constexpr size_t kMaxMessage = 1 << 16;    // control messages are small; a larger one is a bug
constexpr size_t kMaxFdsPerMessage = 250;  // under the kernel's SCM_MAX_FD (253)

// --- message encoding: little-endian fixed fields, then dims and names ---------------------------
class Writer {
 public:
  template <typename T>
  Writer& put(T v) {
    buf_.append(reinterpret_cast<const char*>(&v), sizeof(T));
    return *this;
  }
  Writer& put_bytes(const std::string& s) {
    buf_ += s;
    return *this;
  }
  std::string& str() { return buf_; }

 private:
  std::string buf_;
};

class Reader {
 public:
  explicit Reader(const std::string& buf) : buf_(buf) {}
  template <typename T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, buf_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string get_bytes(size_t n) {
    need(n);
    std::string s = buf_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  std::string rest() { return buf_.substr(std::min(pos_, buf_.size())); }

 private:
  void need(size_t n) {
    MS_EXPECTS(pos_ + n <= buf_.size(), kInternal, "malformed message from the worker (", buf_.size(),
               " bytes, field at ", pos_, " needs ", n, ")");
  }
  const std::string& buf_;
  size_t pos_ = 0;
};

// A tensor descriptor: dtype u8, ndim u8, name length u16, segment u32, offset u64, bytes u64,
// dims i64 x ndim, name.
void put_tensor(Writer& w, const std::string& name, const Tensor& t, const ShmLocation& at) {
  w.put<uint8_t>(static_cast<uint8_t>(t.dtype()))
      .put<uint8_t>(static_cast<uint8_t>(t.shape().size()))
      .put<uint16_t>(static_cast<uint16_t>(name.size()))
      .put<uint32_t>(at.segment)
      .put<uint64_t>(at.offset)
      .put<uint64_t>(t.byte_size());
  for (int64_t d : t.shape()) w.put<int64_t>(d);
  w.put_bytes(name);
}

struct WantedOutput {  // one entry of an 'A' or 'D' message
  DataType dtype;
  Shape shape;
  std::string name;
  int32_t slot = 0;  // 'D' only
  uint64_t bytes = 0;
};

WantedOutput get_output(Reader& r, bool with_slot) {
  WantedOutput o;
  const auto dtype = r.get<uint8_t>();
  MS_EXPECTS(dtype < kNumDataTypes, kInternal, "the worker sent datatype code ", int(dtype));
  o.dtype = static_cast<DataType>(dtype);
  const auto ndim = r.get<uint8_t>();
  const auto name_len = r.get<uint16_t>();
  if (with_slot) o.slot = r.get<int32_t>();
  o.bytes = r.get<uint64_t>();
  for (int i = 0; i < ndim; ++i) o.shape.push_back(r.get<int64_t>());
  o.name = r.get_bytes(name_len);
  for (int64_t d : o.shape) MS_EXPECTS(d >= 0, kInternal, "output '", o.name, "' has dimension ", d);
  if (o.dtype != DataType::kBytes) {
    const uint64_t expected = static_cast<uint64_t>(num_elements(o.shape)) * element_size(o.dtype);
    MS_EXPECTS(o.bytes == expected, kInternal, "output '", o.name, "' of shape ", shape_str(o.shape),
               " needs ", expected, " bytes, the worker sent ", o.bytes);
  }
  return o;
}

int dup_above_stdio(int fd) {
  // Keeps the descriptor clear of 0..3, which the child's dup2 targets, so that every dup2 there
  // really duplicates (and so clears close-on-exec).
  int moved = fcntl(fd, F_DUPFD_CLOEXEC, 10);
  close(fd);
  return moved;
}

class ProcessBackend final : public Backend {
 public:
  ProcessBackend(std::shared_ptr<ProcessInstances> owner, int instance)
      : owner_(std::move(owner)), options_(owner_->options()), instance_(instance) {
    start();
  }
  ~ProcessBackend() override { stop(); }

  std::shared_ptr<MemoryResource> input_resource() const override { return shm_pool(); }
  bool needs_recovery() const override { return pid_ <= 0; }

  void recover() override {
    if (pid_ > 0 || !owner_->failed_reason().empty()) return;  // a failed version restarts nothing
    const int recent = recent_crashes_;
    if (recent > 1) {
      const double delay = std::min(5.0, 0.1 * std::pow(2.0, recent - 2));
      std::this_thread::sleep_for(std::chrono::duration<double>(delay));
    }
    try {
      start();
    } catch (const std::exception& e) {
      lose_worker(std::string("restarting the worker failed: ") + e.what());  // the next batch tries again
    }
  }

  TensorList execute(const ExecuteContext& ctx) override {
    if (std::string failed = owner_->failed_reason(); !failed.empty()) MS_FAIL(kUnavailable, failed);
    if (pid_ <= 0) {
      try {
        start();
      } catch (const std::exception& e) {
        lose_worker(std::string("starting the worker failed: ") + e.what());
        throw;
      }
    }
    owner_->count_batch();
    const auto deadline = options_.execute_timeout_s > 0
                              ? SteadyClock::now() + std::chrono::duration_cast<SteadyClock::duration>(
                                                         std::chrono::duration<double>(options_.execute_timeout_s))
                              : SteadyClock::time_point::max();
    try {
      return exchange(ctx, deadline);
    } catch (const WorkerGone& gone) {
      lose_worker(gone.what());
      MS_FAIL(kInternal, gone.what());
    } catch (const std::exception& e) {
      if (owes_answer_ && pid_ > 0) {
        // The worker still owes an answer (a malformed message, shared memory that ran out
        // mid-exchange): the next batch could read it, so this worker is done.
        const int pid = pid_;
        kill(pid_, SIGKILL);
        reap(false);
        lose_worker(std::string(e.what()) + "; the worker process (pid " + std::to_string(pid) + ") was killed");
      }
      throw;
    }
  }

 private:
  struct WorkerGone : std::runtime_error {
    using std::runtime_error::runtime_error;
  };

  // A shared-memory block for `t`: its own when it lies in a segment, else a copy in a new one.
  Tensor in_shared_memory(const Tensor& t, ShmLocation& at) {
    if (auto found = shm_segments().locate(t.data()); found && t.device().host_accessible()) {
      at = *found;
      return t;
    }
    MS_EXPECTS(t.device().host_accessible(), kInternal, "process instances take host memory");
    Tensor copy = Tensor::empty(t.dtype(), t.shape(), shm_pool(), {}, t.byte_size());
    if (t.byte_size() > 0) std::memcpy(copy.data(), t.data(), t.byte_size());
    at = *shm_segments().locate(copy.data());
    return copy;
  }

  // Segments the worker has not mapped yet are announced (with descriptors) in the message that
  // first uses them; they count as mapped once that message is sent (commit()).
  struct Announcements {
    Writer segments;
    std::vector<int> fds;
    std::vector<uint32_t> ids;
    uint16_t count() const { return static_cast<uint16_t>(ids.size()); }
  };

  void announce(const ShmLocation& at, Announcements& a) {
    if (mapped_.count(at.segment) || std::find(a.ids.begin(), a.ids.end(), at.segment) != a.ids.end()) return;
    MS_EXPECTS(a.fds.size() < kMaxFdsPerMessage, kInternal, "a batch uses more than ", kMaxFdsPerMessage,
               " new shared-memory segments");
    a.segments.put<uint32_t>(at.segment).put<uint64_t>(at.segment_bytes);
    a.fds.push_back(at.fd);
    a.ids.push_back(at.segment);
  }

  void commit(const Announcements& a) { mapped_.insert(a.ids.begin(), a.ids.end()); }

  TensorList exchange(const ExecuteContext& ctx, SteadyClock::time_point deadline) {
    // Inputs, then output blocks whose shape config.yaml fixes.
    std::vector<std::pair<const std::string*, Tensor>> inputs;
    std::vector<ShmLocation> input_at(ctx.inputs.size());
    Announcements fresh;
    Writer body;
    for (size_t i = 0; i < ctx.inputs.size(); ++i) {
      inputs.emplace_back(&ctx.inputs[i].name, in_shared_memory(ctx.inputs[i].tensor, input_at[i]));
      announce(input_at[i], fresh);
      put_tensor(body, ctx.inputs[i].name, inputs.back().second, input_at[i]);
    }
    const bool batching = options_.max_batch_size > 0;
    std::vector<NamedTensor> prealloc;
    for (const auto& spec : options_.outputs) {
      if (spec.dtype == DataType::kBytes ||
          std::any_of(spec.dims.begin(), spec.dims.end(), [](int64_t d) { return d < 0; }))
        continue;
      if (!ctx.requested_outputs.empty() &&
          std::find(ctx.requested_outputs.begin(), ctx.requested_outputs.end(), spec.name) ==
              ctx.requested_outputs.end())
        continue;
      Shape shape = spec.dims;
      if (batching) shape.insert(shape.begin(), ctx.batch_size);
      Tensor t = Tensor::empty(spec.dtype, shape, shm_pool());
      ShmLocation at = *shm_segments().locate(t.data());
      announce(at, fresh);
      put_tensor(body, spec.name, t, at);
      prealloc.push_back({spec.name, std::move(t)});
    }
    for (const auto& name : ctx.requested_outputs) {
      body.put<uint16_t>(static_cast<uint16_t>(name.size())).put_bytes(name);
    }
    // Segments trimmed from the pool since the last batch: the worker unmaps them.
    Writer drops;
    uint16_t dropped = 0;
    if (const uint64_t g = shm_segments().generation(); g != seen_generation_) {
      seen_generation_ = g;
      for (auto it = mapped_.begin(); it != mapped_.end();) {
        if (shm_segments().live(*it)) {
          ++it;
        } else {
          drops.put<uint32_t>(*it);
          dropped += 1;
          it = mapped_.erase(it);
        }
      }
    }
    Writer msg;
    msg.put<uint8_t>('B')
        .put<uint8_t>(0)
        .put<uint16_t>(fresh.count())
        .put<uint16_t>(dropped)
        .put<uint16_t>(static_cast<uint16_t>(ctx.inputs.size()))
        .put<uint16_t>(static_cast<uint16_t>(prealloc.size()))
        .put<uint16_t>(static_cast<uint16_t>(ctx.requested_outputs.size()))
        .put<int64_t>(ctx.batch_size)
        .put_bytes(fresh.segments.str())
        .put_bytes(drops.str())
        .put_bytes(body.str());
    send(msg.str(), fresh.fds);
    commit(fresh);
    owes_answer_ = true;

    std::vector<NamedTensor> allocated;
    while (true) {
      std::string reply = receive(deadline);
      Reader r(reply);
      const char kind = static_cast<char>(r.get<uint8_t>());
      if (kind == 'A') {
        r.get<uint8_t>();
        const auto n = r.get<uint16_t>();
        Announcements more;
        Writer blocks;
        allocated.clear();
        for (int i = 0; i < n; ++i) {
          WantedOutput o = get_output(r, false);
          Tensor t = Tensor::empty(o.dtype, o.shape, shm_pool(), {}, o.bytes);
          ShmLocation at = *shm_segments().locate(t.data());
          announce(at, more);
          blocks.put<uint32_t>(at.segment).put<uint64_t>(at.offset);
          allocated.push_back({o.name, std::move(t)});
        }
        Writer k;
        k.put<uint8_t>('K').put<uint8_t>(0).put<uint16_t>(more.count()).put<uint16_t>(n);
        k.put_bytes(more.segments.str()).put_bytes(blocks.str());
        send(k.str(), more.fds);
        commit(more);
      } else if (kind == 'D') {
        r.get<uint8_t>();
        const auto n = r.get<uint16_t>();
        TensorList outputs;
        for (int i = 0; i < n; ++i) {
          WantedOutput o = get_output(r, true);
          const NamedTensor* block = nullptr;
          if (o.slot >= 0 && static_cast<size_t>(o.slot) < prealloc.size()) block = &prealloc[o.slot];
          const int32_t a = -o.slot - 1;
          if (o.slot < 0 && static_cast<size_t>(a) < allocated.size()) block = &allocated[a];
          MS_EXPECTS(block != nullptr, kInternal, "the worker named output block ", o.slot,
                     " for output '", o.name, "', which it was not given");
          MS_EXPECTS(o.bytes <= block->tensor.buffer()->size(), kInternal, "output '", o.name, "' of ",
                     o.bytes, " bytes does not fit its block of ", block->tensor.buffer()->size());
          if (o.dtype == DataType::kBytes) {
            const size_t span = bytes_elements_span(static_cast<const uint8_t*>(block->tensor.data()), o.bytes,
                                                    static_cast<size_t>(num_elements(o.shape)));
            MS_EXPECTS(span == o.bytes, kInternal, "BYTES output '", o.name, "' has ", o.bytes - span,
                       " bytes past its last element");
          }
          outputs.push_back({o.name, Tensor(o.dtype, o.shape, block->tensor.buffer(), 0, o.bytes)});
        }
        owes_answer_ = false;
        return outputs;
      } else if (kind == 'E') {
        r.get<uint8_t>();
        r.get<uint16_t>();
        const auto code = r.get<int32_t>();
        const std::string text = r.rest();
        owes_answer_ = false;  // the worker's answer: the batch failed in execute()
        const bool known = code > static_cast<int>(StatusCode::kOk) &&
                           code <= static_cast<int>(StatusCode::kUnimplemented) &&
                           code != static_cast<int>(StatusCode::kInternal);
        if (known) throw Error(static_cast<StatusCode>(code), text);
        MS_FAIL(kInternal, "execute() raised ", text);
      } else {
        MS_FAIL(kInternal, "unexpected message '", kind, "' from the worker");
      }
    }
  }

  void send(const std::string& data, const std::vector<int>& fds) {
    iovec iov{const_cast<char*>(data.data()), data.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    std::vector<char> control;
    if (!fds.empty()) {
      control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n;
    do {
      n = sendmsg(sock_, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == EPIPE || errno == ECONNRESET) throw WorkerGone(gone_message("while it was sent a batch"));
      MS_FAIL(kInternal, "sending to the worker failed: ", std::strerror(errno));
    }
    owner_->count_message(data.size());
  }

  // The next message; throws WorkerGone at end of file (the worker died) or past the deadline.
  std::string receive(SteadyClock::time_point deadline) {
    while (true) {
      int timeout_ms = -1;
      if (deadline != SteadyClock::time_point::max()) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now());
        if (left.count() <= 0) throw WorkerGone(timeout_message());
        timeout_ms = static_cast<int>(std::min<int64_t>(left.count() + 1, 1 << 30));
      }
      pollfd p{sock_, POLLIN, 0};
      int ready = 0;
      // Note [Spinning for replies]: while the worker has answered within spin_us, wait for its
      // answer awake; sleeping in poll() costs a wake-up that is tens of microseconds on a VM.
      if (spin_ && options_.spin_us > 0) {
        const auto start = SteadyClock::now();
        const auto until = start + std::chrono::microseconds(options_.spin_us);
        do {
          ready = poll(&p, 1, 0);
        } while (ready == 0 && SteadyClock::now() < until);
        spin_ = ready != 0;
      }
      if (ready == 0) {
        const auto start = SteadyClock::now();
        ready = poll(&p, 1, timeout_ms);
        // Twice spin_us: what a sleeping wait measures includes the wake-up spinning would save.
        spin_ = options_.spin_us > 0 && SteadyClock::now() - start < std::chrono::microseconds(2 * options_.spin_us);
      }
      if (ready < 0 && errno == EINTR) continue;
      if (ready == 0) continue;  // the deadline check above ends the wait
      if (recv_buf_.empty()) recv_buf_.resize(kMaxMessage);
      ssize_t n;
      do {
        n = recv(sock_, recv_buf_.data(), recv_buf_.size(), MSG_TRUNC);
      } while (n < 0 && errno == EINTR);
      if (n == 0 || (n < 0 && errno == ECONNRESET)) throw WorkerGone(gone_message("during execute()"));
      if (n < 0) MS_FAIL(kInternal, "reading from the worker failed: ", std::strerror(errno));
      MS_EXPECTS(static_cast<size_t>(n) <= kMaxMessage, kInternal, "the worker sent a message of ", n,
                 " bytes (at most ", kMaxMessage, ")");
      owner_->count_message(static_cast<size_t>(n));
      return std::string(recv_buf_.data(), static_cast<size_t>(n));
    }
  }

  std::string timeout_message() {
    const int pid = pid_;
    kill(pid_, SIGKILL);
    reap(false);
    return "execute() ran past instances.execute_timeout_s (" + format_seconds(options_.execute_timeout_s) +
           " s); the worker process (pid " + std::to_string(pid) + ") was killed";
  }

  std::string gone_message(const char* when) {
    const int pid = pid_;
    const std::string how = reap(false);
    return "the worker process (pid " + std::to_string(pid) + ") " + how + " " + when;
  }

  static std::string format_seconds(double s) {
    std::string text = std::to_string(s);
    text.erase(text.find_last_not_of('0') + 1);
    if (!text.empty() && text.back() == '.') text.pop_back();
    return text;
  }

  // The worker is gone (already reaped): count the crash; recover() restarts it.
  void lose_worker(const std::string& what) {
    if (options_.log) options_.log(instance_, what, true);
    recent_crashes_ = owner_->record_crash(what);
  }

  // Waits for the worker to exit (killing it after `grace_s`); returns how it ended. Afterwards no
  // process holds this instance's blocks.
  std::string reap(bool quit, double grace_s = 2.0) {
    if (pid_ <= 0) return "is not running";
    if (quit) {
      const char q = 'Q';
      (void)::send(sock_, &q, 1, MSG_NOSIGNAL);
    }
    int status = 0;
    const auto give_up = SteadyClock::now() + std::chrono::duration_cast<SteadyClock::duration>(
                                                  std::chrono::duration<double>(grace_s));
    pid_t got = 0;
    while ((got = waitpid(pid_, &status, WNOHANG)) == 0 && SteadyClock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    std::string how;
    if (got == 0) {
      kill(pid_, SIGKILL);
      while ((got = waitpid(pid_, &status, 0)) < 0 && errno == EINTR) {
      }
      how = "did not exit within " + format_seconds(grace_s) + " s and was killed";
    } else {
      how = got < 0 ? std::string("could not be waited for: ") + std::strerror(errno) : describe_exit(status);
    }
    close(sock_);
    sock_ = -1;
    pid_ = -1;
    owes_answer_ = false;
    mapped_.clear();
    stop_log_thread();
    owner_->set_worker(instance_, 0);
    return how;
  }

  void start() {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
      MS_FAIL(kInternal, "socketpair for the worker failed: ", std::strerror(errno));
    }
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) {
      close(pair[0]);
      close(pair[1]);
      MS_FAIL(kInternal, "pipe for the worker's output failed: ", std::strerror(errno));
    }
    const int child_sock = dup_above_stdio(pair[1]);
    const int child_out = dup_above_stdio(out[1]);
    sock_ = pair[0];

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, child_out, 1);
    posix_spawn_file_actions_adddup2(&actions, child_out, 2);
    posix_spawn_file_actions_adddup2(&actions, child_sock, kWorkerFd);
    std::vector<char*> argv;
    for (const auto& a : options_.argv) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    std::vector<std::string> env_strings = {"PYTHONUNBUFFERED=1"};
    std::vector<char*> env;
    for (char** e = environ; *e; ++e) {
      if (std::strncmp(*e, "PYTHONUNBUFFERED=", 17) != 0) env.push_back(*e);
    }
    for (auto& s : env_strings) env.push_back(s.data());
    env.push_back(nullptr);
    pid_t pid = 0;
    const int err = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), env.data());
    posix_spawn_file_actions_destroy(&actions);
    close(child_sock);
    close(child_out);
    if (err != 0) {
      close(sock_);
      close(out[0]);
      sock_ = -1;
      MS_FAIL(kInternal, "starting the worker '", options_.argv.empty() ? "" : options_.argv[0],
              "' failed: ", std::strerror(err));
    }
    pid_ = pid;
    out_ = out[0];
    start_log_thread();
    owner_->set_worker(instance_, pid_);
    try {
      handshake();
    } catch (...) {
      if (pid_ > 0) {
        kill(pid_, SIGKILL);
        reap(false);
      }
      throw;
    }
  }

  // The start message and the worker's answer: ready, or why its load failed.
  void handshake() {
    try {
      Writer init;
      init.put<uint8_t>('I').put<uint8_t>(0).put<uint16_t>(0).put<int32_t>(instance_).put_bytes(options_.init);
      send(init.str(), {});
      const std::string reply = receive(SteadyClock::time_point::max());
      Reader r(reply);
      const char kind = static_cast<char>(r.get<uint8_t>());
      if (kind == 'E') {
        r.get<uint8_t>();
        r.get<uint16_t>();
        r.get<int32_t>();
        const std::string text = r.rest();
        reap(true, 1.0);
        MS_FAIL(kInternal, "creating instance ", instance_, " raised ", text);
      }
      MS_EXPECTS(kind == 'R', kInternal, "the worker answered its start with '", kind, "'");
    } catch (const WorkerGone& gone) {
      MS_FAIL(kInternal, "creating instance ", instance_, " failed: ", gone.what(), " (its output is in the log)");
    }
  }

  void stop() {
    if (pid_ > 0) reap(true, options_.stop_timeout_s);
    stop_log_thread();
  }

  void start_log_thread() {
    log_stop_ = std::make_shared<std::atomic<bool>>(false);
    log_thread_ = std::thread([fd = out_, stop = log_stop_, log = options_.log, instance = instance_] {
      std::string pending;
      char chunk[4096];
      while (true) {
        pollfd p{fd, POLLIN, 0};
        const int ready = poll(&p, 1, 100);
        if (ready == 0) {
          if (stop->load()) break;  // the worker has been reaped and printed nothing more
          continue;
        }
        if (ready < 0 && errno == EINTR) continue;
        const ssize_t n = ready < 0 ? -1 : read(fd, chunk, sizeof(chunk));
        if (n <= 0) break;
        pending.append(chunk, static_cast<size_t>(n));
        size_t nl;
        while ((nl = pending.find('\n')) != std::string::npos) {
          if (log) log(instance, pending.substr(0, nl), false);
          pending.erase(0, nl + 1);
        }
      }
      if (!pending.empty() && log) log(instance, pending, false);
      close(fd);
    });
  }

  void stop_log_thread() {
    if (!log_thread_.joinable()) return;
    log_stop_->store(true);
    log_thread_.join();
    out_ = -1;
  }

  const std::shared_ptr<ProcessInstances> owner_;
  const WorkerOptions& options_;
  const int instance_;
  // All used by the instance's thread only (one batch at a time; Backend's contract).
  int pid_ = -1;
  int sock_ = -1;
  int out_ = -1;
  std::set<uint32_t> mapped_;  // segments the worker has mapped
  uint64_t seen_generation_ = 0;
  int recent_crashes_ = 0;
  bool spin_ = true;  // the last reply came within spin_us (Note [Spinning for replies])
  bool owes_answer_ = false;  // a batch was sent and its 'D' or 'E' has not come yet
  std::vector<char> recv_buf_;
  std::thread log_thread_;
  std::shared_ptr<std::atomic<bool>> log_stop_;
};

}  // namespace

ProcessInstances::ProcessInstances(WorkerOptions options) : options_(std::move(options)) {
  MS_EXPECTS(!options_.argv.empty(), kInvalidArgument, options_.label, ": no worker command");
  MS_EXPECTS(options_.execute_timeout_s >= 0, kInvalidArgument, options_.label,
             ": instances.execute_timeout_s must be > 0, got ", options_.execute_timeout_s);
}

BackendFactory ProcessInstances::factory() {
  auto self = shared_from_this();
  return [self](const InstanceInfo& info) -> std::unique_ptr<Backend> {
    MS_EXPECTS(info.device.kind == DeviceKind::kCpu, kInvalidArgument, self->options_.label,
               ": instances.isolation: process runs on the CPU only, not on ", info.device.str());
    return std::make_unique<ProcessBackend>(self, info.index);
  };
}

void ProcessInstances::set_worker(int instance, int pid) {
  std::lock_guard<std::mutex> lock(mutex_);
  WorkerInfo& w = workers_[instance];
  w.instance = instance;
  w.pid = pid;
  if (pid > 0) {
    w.starts += 1;
    starts_ += 1;
  }
}

std::vector<WorkerInfo> ProcessInstances::workers() const {
  std::vector<WorkerInfo> out;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [index, w] : workers_) out.push_back(w);
  }
  for (auto& w : out) w.pss_bytes = w.pid > 0 ? process_pss_bytes(w.pid) : 0;
  return out;
}

ProcessStats ProcessInstances::stats() const {
  ProcessStats s;
  s.batches = batches_.load(std::memory_order_relaxed);
  s.control_messages = control_messages_.load(std::memory_order_relaxed);
  s.control_bytes = control_bytes_.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(mutex_);
  s.starts = starts_;
  s.crashes = crash_count_;
  s.failed = failed_;
  return s;
}

int ProcessInstances::record_crash(const std::string& what) {
  std::string failed;
  int recent = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto now = SteadyClock::now();
    const auto window = std::chrono::duration_cast<SteadyClock::duration>(
        std::chrono::duration<double>(options_.crash_window_s));
    crash_count_ += 1;
    crashes_.push_back(now);
    while (!crashes_.empty() && now - crashes_.front() > window) crashes_.pop_front();
    recent = static_cast<int>(crashes_.size());
    if (!failed_.empty()) return recent;
    if (recent >= options_.max_crashes) {
      failed_ = options_.label + ": " + std::to_string(recent) + " worker crashes within " +
                std::to_string(static_cast<int64_t>(options_.crash_window_s)) + " s; the last: " + what;
      failed = failed_;
    }
  }
  if (!failed.empty() && options_.on_failed) options_.on_failed(failed);
  return recent;
}

std::string ProcessInstances::failed_reason() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return failed_;
}

}  // namespace modelserve
