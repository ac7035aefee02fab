#include "python/completion_queue.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#ifdef __linux__
#include <sys/eventfd.h>
#endif

#include "common/status.h"

namespace modelserve::python {

void RequestState::complete(Response&& response) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    response_ = std::move(response);
    done_ = true;
  }
  cv_.notify_all();
  if (queue) queue->push(shared_from_this());
}

bool RequestState::wait(double timeout_s) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (timeout_s < 0) {
    cv_.wait(lock, [&] { return done_; });
    return true;
  }
  return cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return done_; });
}

bool RequestState::done() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return done_;
}

CompletionQueue::CompletionQueue() {
#ifdef __linux__
  read_fd_ = write_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  MS_EXPECTS(read_fd_ >= 0, kInternal, "eventfd failed: ", std::strerror(errno));
#else
  int fds[2];
  MS_EXPECTS(::pipe(fds) == 0, kInternal, "pipe failed: ", std::strerror(errno));
  for (int fd : fds) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  read_fd_ = fds[0];
  write_fd_ = fds[1];
#endif
}

CompletionQueue::~CompletionQueue() {
  ::close(read_fd_);
  if (write_fd_ != read_fd_) ::close(write_fd_);
}

void CompletionQueue::push(std::shared_ptr<RequestState> state) {
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    wake = ready_.empty();
    ready_.push_back(std::move(state));
    if (wake) ++wakeups_;
  }
  if (wake) {
    uint64_t one = 1;
    // EAGAIN means the counter is already non-zero: the loop will wake anyway.
    ssize_t n = ::write(write_fd_, &one, write_fd_ == read_fd_ ? sizeof(one) : 1);
    (void)n;
  }
}

std::vector<std::shared_ptr<RequestState>> CompletionQueue::drain() {
  uint64_t buf[16];
  while (::read(read_fd_, buf, sizeof(buf)) > 0) {
  }
  std::vector<std::shared_ptr<RequestState>> out;
  std::lock_guard<std::mutex> lock(mutex_);
  out.swap(ready_);
  return out;
}

uint64_t CompletionQueue::wakeups() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return wakeups_;
}

}  // namespace modelserve::python
