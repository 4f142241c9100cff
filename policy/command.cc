#include "policy/command.h"

namespace cloister::policy {

Result<std::vector<std::string>> split_command(std::string_view s) {
  std::vector<std::string> words;
  std::string cur;
  bool in_word = false;
  auto operator_error = [](std::string_view op) {
    return fail(invalid("shell operator '" + std::string(op) +
                        "' in command string (commands run without a shell)"));
  };
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '\0') return fail(invalid("NUL byte in command string"));
    if (c == ' ' || c == '\t') {
      if (in_word) words.push_back(std::move(cur)), cur.clear(), in_word = false;
      continue;
    }
    switch (c) {
      case '\n':
        return operator_error("newline");
      case ';':
        return operator_error(";");
      case '&':
        return operator_error(i + 1 < s.size() && s[i + 1] == '&' ? "&&" : "&");
      case '|':
        return operator_error(i + 1 < s.size() && s[i + 1] == '|' ? "||" : "|");
      case '<':
        return operator_error("<");
      case '>':
        return operator_error(i + 1 < s.size() && s[i + 1] == '>' ? ">>" : ">");
      case '(':
      case ')':
        return operator_error(std::string(1, c));
      case '`':
        return operator_error("`");
      case '$':
        if (i + 1 < s.size() && s[i + 1] == '(') return operator_error("$(");
        break;
      default:
        break;
    }
    in_word = true;
    if (c == '\\') {
      if (i + 1 >= s.size()) return fail(invalid("command string ends with a backslash"));
      if (s[i + 1] == '\n') return operator_error("newline");
      cur += s[++i];
    } else if (c == '\'') {
      size_t end = s.find('\'', i + 1);
      if (end == std::string_view::npos) return fail(invalid("unterminated ' in command string"));
      cur.append(s.substr(i + 1, end - i - 1));
      i = end;
    } else if (c == '"') {
      size_t j = i + 1;
      for (;; ++j) {
        if (j >= s.size()) return fail(invalid("unterminated \" in command string"));
        char d = s[j];
        if (d == '"') break;
        if (d == '`') return operator_error("`");
        if (d == '$' && j + 1 < s.size() && s[j + 1] == '(') return operator_error("$(");
        if (d == '\\' && j + 1 < s.size() &&
            (s[j + 1] == '"' || s[j + 1] == '\\' || s[j + 1] == '$' || s[j + 1] == '`')) {
          cur += s[++j];
          continue;
        }
        if (d == '\\' && j + 1 < s.size() && s[j + 1] == '\n') {
          ++j;
          continue;
        }
        cur += d;
      }
      i = j;
    } else {
      cur += c;
    }
  }
  if (in_word) words.push_back(std::move(cur));
  return words;
}

std::string join_argv(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) {
    if (!out.empty()) out += ' ';
    out += a;
  }
  return out;
}

Status check_whitelist(const std::vector<std::string>& whitelist,
                       const std::vector<std::string>& argv) {
  if (whitelist.empty()) return {};
  for (const auto& entry : whitelist) {
    auto words = split_command(entry);
    if (words && *words == argv) return {};
  }
  return fail(
      make_error(ErrorKind::PermissionDenied,
                 "command '" + join_argv(argv) + "' is not in the executor's command_whitelist"));
}

}  // namespace cloister::policy
