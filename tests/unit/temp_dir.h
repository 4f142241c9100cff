// A directory under /tmp for one test, removed with everything in it.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <string>

namespace cloister::testing {

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/cloister-test-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() { std::system(("rm -rf '" + path + "'").c_str()); }
  std::string operator/(const std::string& rel) const { return path + "/" + rel; }
};

}  // namespace cloister::testing
