// The built-in profile's BPF is compiled at build time; it must be exactly
// what compiling configs/seccomp-default.json gives now.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "isolate/seccomp.h"

using namespace cloister;

TEST(SeccompEmbedded, PrecompiledDefaultMatchesTheProfile) {
  std::ifstream in(std::string(CLOISTER_SOURCE_DIR) + "/configs/seccomp-default.json");
  std::stringstream text;
  text << in.rdbuf();
  auto fresh = seccomp::compile(text.str());
  ASSERT_TRUE(fresh) << fresh.error().what();
  auto built_in = seccomp::load("");
  ASSERT_TRUE(built_in) << built_in.error().what();
  ASSERT_EQ(built_in->insns().size(), fresh->insns().size());
  EXPECT_EQ(std::memcmp(built_in->insns().data(), fresh->insns().data(),
                        fresh->insns().size() * sizeof(sock_filter)),
            0);
  EXPECT_FALSE(built_in->empty());
}
