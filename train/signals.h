// Graceful stop: SIGINT / SIGTERM set a flag that the trainer checks after each step; it
// then saves a checkpoint and exits 0. A second SIGINT exits at once.
#pragma once

namespace ssmtrain {

void install_stop_handlers();
bool stop_requested();
void request_stop();  // for tests
void clear_stop_request();  // for tests

}  // namespace ssmtrain
