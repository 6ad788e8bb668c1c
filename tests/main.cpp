// The doctest entry point shared by every test binary (one binary per folder under tests/).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
