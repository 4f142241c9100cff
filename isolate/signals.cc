#include "isolate/signals.h"

#include <signal.h>
#include <string.h>

#include <cctype>
#include <string>

namespace cloister::signals {
namespace {

bool digits(std::string_view s) {
  if (s.empty() || s.size() > 4) return false;
  for (unsigned char c : s)
    if (!std::isdigit(c)) return false;
  return true;
}

}  // namespace

Result<int> parse(std::string_view text) {
  const std::string shown(text);
  if (text.empty()) return fail(invalid("empty signal"));
  if (digits(text)) {
    int v = std::stoi(shown);
    if (v < 1 || v >= NSIG) return fail(invalid("signal " + shown + " is out of range"));
    return v;
  }
  std::string up;
  for (unsigned char c : text) up += static_cast<char>(std::toupper(c));
  if (up.starts_with("SIG")) up.erase(0, 3);
  for (int s = 1; s < NSIG; ++s)
    if (const char* abbrev = ::sigabbrev_np(s); abbrev && up == abbrev) return s;
  // RTMIN, RTMIN+N, RTMAX, RTMAX-N, as kill(1) names them.
  for (bool min : {true, false}) {
    const std::string base = min ? "RTMIN" : "RTMAX";
    if (!up.starts_with(base)) continue;
    std::string_view rest = std::string_view(up).substr(base.size());
    int s = min ? SIGRTMIN : SIGRTMAX;
    if (!rest.empty()) {
      if (rest[0] != (min ? '+' : '-') || !digits(rest.substr(1))) break;
      const int n = std::stoi(std::string(rest.substr(1)));
      s = min ? s + n : s - n;
    }
    if (s >= SIGRTMIN && s <= SIGRTMAX) return s;
  }
  return fail(invalid("unknown signal '" + shown + "'"));
}

}  // namespace cloister::signals
