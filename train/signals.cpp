#include "train/signals.h"

#include <csignal>
#include <cstdlib>
#include <unistd.h>

namespace ssmtrain {

namespace {
volatile std::sig_atomic_t g_stop = 0;

void on_signal(int sig) {
  if (g_stop && sig == SIGINT) _exit(130);
  g_stop = 1;
  const char msg[] = "\nstop requested: finishing the step and saving a checkpoint (Ctrl-C again to abort)\n";
  ssize_t r = write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)r;
}
}  // namespace

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

bool stop_requested() { return g_stop != 0; }
void request_stop() { g_stop = 1; }
void clear_stop_request() { g_stop = 0; }

}  // namespace ssmtrain
