// The ssmtrain executable: runs the CLI and turns exceptions into exit codes
// (2 for the user's mistakes, 1 for failures during a run), without stack traces.
#include <csignal>
#include <exception>
#include <iostream>

#include "core/error.h"
#include "train/cli.h"
#include "train/dist.h"

int main(int argc, char** argv) {
  // A closed stdout (`ssmtrain train ... | head`) must not kill a run: writes to it fail
  // instead, the log goes on in train.log and checkpoints are still saved (RunLog::info).
  std::signal(SIGPIPE, SIG_IGN);
  try {
    int rc = ssmtrain::run_cli(argc, argv);
    // On errors MPI is left unfinalised on purpose: mpirun then stops the other ranks
    // instead of letting them wait in a collective.
    ssmtrain::Dist::shutdown();
    return rc;
  } catch (const ssmtrain::UserError& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "failure: " << e.what() << std::endl;
    return 1;
  }
}
