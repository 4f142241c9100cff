#include "policy/command.h"

#include <algorithm>
#include <cctype>
#include <cstdio>

namespace cloister::policy {
namespace {

bool is_name_start(char c) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_';
}

// Characters after '$' that make sh expand something: $NAME, $1, $@, $*,
// $#, $?, $$, $!, $- and ${...}.
bool expands(char c) {
  return is_name_start(c) || (c >= '0' && c <= '9') || c == '{' || c == '@' || c == '*' ||
         c == '#' || c == '?' || c == '$' || c == '!' || c == '-';
}

std::string expansion_name(std::string_view s, size_t dollar) {
  size_t j = dollar + 1;
  if (j < s.size() && is_name_start(s[j])) {
    while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
    return std::string(s.substr(dollar, j - dollar));
  }
  if (j < s.size() && s[j] == '{') return "${";
  return std::string(s.substr(dollar, 2));
}

std::string hex_byte(unsigned char c) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02x", c);
  return buf;
}

// Scans a command string the way sh would tokenize it. Fills `words` when
// given; returns the first thing sh would read as more than words.
Status scan(std::string_view s, std::vector<std::string>* words) {
  std::string cur;
  bool in_word = false;
  bool quoted = false;  // the current word has quoted parts
  size_t nwords = 0;
  auto op = [](std::string_view name) {
    return fail(invalid("shell operator '" + std::string(name) +
                        "' in command string (commands run without a shell)"));
  };
  auto expansion = [](std::string_view name) {
    return fail(invalid("shell expansion '" + std::string(name) +
                        "' in command string (nothing is expanded; quote it with '...')"));
  };
  auto control = [](unsigned char c) {
    return fail(invalid("control byte " + hex_byte(c) + " in command string"));
  };
  auto end_word = [&] {
    if (in_word) {
      ++nwords;
      if (words) words->push_back(std::move(cur));
    }
    cur.clear();
    in_word = false;
    quoted = false;
  };
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const unsigned char u = static_cast<unsigned char>(c);
    const char next = i + 1 < s.size() ? s[i + 1] : '\0';
    switch (c) {
      case ' ':
      case '\t':
        end_word();
        continue;
      case '\n':
        return op("newline");
      case ';':
        return op(next == ';' ? ";;" : ";");
      case '&':
        return op(next == '&' ? "&&" : "&");
      case '|':
        return op(next == '|' ? "||" : "|");
      case '<':
        return op(next == '<' ? "<<" : "<");
      case '>':
        return op(next == '>' ? ">>" : ">");
      case '(':
      case ')':
        return op(std::string(1, c));
      case '`':
        return op("`");
      case '$':
        if (next == '(') return op("$(");
        if (next == '\'') return expansion("$'...'");
        if (next == '"') return expansion("$\"...\"");
        if (expands(next)) return expansion(expansion_name(s, i));
        break;
      case '#':
        if (!in_word) return op("#");  // sh reads the rest of the line as a comment
        break;
      case '=':
        // NAME=value as the first word is an assignment to sh, not a command.
        if (nwords == 0 && !quoted && !cur.empty() && is_name_start(cur[0]) &&
            std::all_of(cur.begin(), cur.end(), [](char ch) {
              return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_';
            }))
          return fail(invalid("variable assignment '" + cur +
                              "=' in command string (set variables through env)"));
        break;
      default:
        if (u == 0) return fail(invalid("NUL byte in command string"));
        if (u < 0x20 || u == 0x7f) return control(u);
        break;
    }
    in_word = true;
    if (c == '\\' || c == '\'' || c == '"') quoted = true;
    if (c == '\\') {
      if (i + 1 >= s.size()) return fail(invalid("command string ends with a backslash"));
      if (next == '\n') return op("newline");
      const unsigned char n = static_cast<unsigned char>(next);
      if (n == 0) return fail(invalid("NUL byte in command string"));
      if ((n < 0x20 && n != '\t') || n == 0x7f) return control(n);
      cur += s[++i];
    } else if (c == '\'') {
      size_t end = s.find('\'', i + 1);
      if (end == std::string_view::npos) return fail(invalid("unterminated ' in command string"));
      auto quoted = s.substr(i + 1, end - i - 1);
      if (quoted.find('\0') != std::string_view::npos)
        return fail(invalid("NUL byte in command string"));
      cur.append(quoted);
      i = end;
    } else if (c == '"') {
      size_t j = i + 1;
      for (;; ++j) {
        if (j >= s.size()) return fail(invalid("unterminated \" in command string"));
        const char d = s[j];
        const char dn = j + 1 < s.size() ? s[j + 1] : '\0';
        if (d == '"') break;
        if (d == '\0') return fail(invalid("NUL byte in command string"));
        if (d == '`') return op("`");
        if (d == '$' && dn == '(') return op("$(");
        if (d == '$' && expands(dn)) return expansion(expansion_name(s, j));
        if (d == '\\' && (dn == '"' || dn == '\\' || dn == '$' || dn == '`')) {
          cur += s[++j];
          continue;
        }
        if (d == '\\' && dn == '\n') {  // line continuation inside quotes
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
  end_word();
  return {};
}

bool is_blank(char c) {
  return c == ' ' || c == '\t';
}

// Characters a shell gives meaning to: a `*` of a shell-form pattern never
// matches them, so "git *" cannot match "git status;id".
bool is_shell_special(char c) {
  static constexpr std::string_view kSpecial = ";&|<>()$`\\'\"\n\r{}*?[]~#=!";
  return kSpecial.find(c) != std::string_view::npos || static_cast<unsigned char>(c) < 0x20;
}

bool has_dotdot_component(std::string_view s) {
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find('/', start);
    if (end == std::string_view::npos) end = s.size();
    if (s.substr(start, end - start) == "..") return true;
    start = end + 1;
  }
  return false;
}

using Piece = Pattern::Piece;
using Word = Pattern::Word;

// Glob of one word's pieces (no DoubleStar) against text, where a Star
// matches any run of characters for which `ok` holds. With `prefix`, the
// pieces need only match a prefix of the text. Dynamic programming over
// (piece, position): linear in the text per piece, so a hostile argument of
// 128 KiB against "*a*a*a*b" costs no more than a scan per star.
template <class Ok>
bool glob(const Word& w, std::string_view s, Ok ok, bool prefix = false) {
  const size_t n = s.size();
  std::vector<char> next(n + 1, 0), cur(n + 1, 0);
  for (size_t j = 0; j <= n; ++j) next[j] = prefix || j == n;  // after the last piece
  for (size_t i = w.size(); i-- > 0;) {
    const Piece& p = w[i];
    if (p.kind == Piece::Literal) {
      for (size_t j = 0; j <= n; ++j)
        cur[j] = s.substr(j).starts_with(p.text) && next[j + p.text.size()];
    } else {
      cur[n] = next[n];
      for (size_t j = n; j-- > 0;) cur[j] = next[j] || (ok(s[j]) && cur[j + 1]);
    }
    std::swap(cur, next);
  }
  return next[0];
}

bool ends_with_doublestar(const Word& w) {
  return !w.empty() && w.back().kind == Piece::DoubleStar;
}

// A last word "prefix**": the argument starts with a match of the prefix.
template <class Ok>
bool prefix_match(const Word& w, std::string_view arg, Ok ok) {
  return glob(Word(w.begin(), w.end() - 1), arg, ok, true);
}

bool match_argv(const std::vector<Word>& words, size_t wi, const std::vector<std::string>& argv,
                size_t ai) {
  if (wi == words.size()) return ai == argv.size();
  const Word& w = words[wi];
  auto no_slash = [](char c) { return c != '/'; };
  if (ends_with_doublestar(w)) {  // the last word, by Pattern::parse
    if (w.size() == 1) return true;
    return ai < argv.size() && !has_dotdot_component(argv[ai]) &&
           prefix_match(w, argv[ai], no_slash);
  }
  if (ai == argv.size()) return false;
  if (w.size() == 1 && w[0].kind == Piece::Star) return match_argv(words, wi + 1, argv, ai + 1);
  return glob(w, argv[ai], no_slash) && match_argv(words, wi + 1, argv, ai + 1);
}

std::string_view trim_blanks(std::string_view s) {
  while (!s.empty() && is_blank(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_blank(s.back())) s.remove_suffix(1);
  return s;
}

}  // namespace

Result<std::vector<std::string>> split_command(std::string_view command) {
  std::vector<std::string> words;
  if (auto s = scan(command, &words); !s) return fail(s.error());
  return words;
}

std::string find_shell_syntax(std::string_view command) {
  auto s = scan(command, nullptr);
  if (s) return "";
  const std::string& m = s.error().message;
  auto a = m.find('\'');
  auto b = a == std::string::npos ? a : m.find("' in command string", a + 1);
  if (b == std::string::npos) return m;
  return m.substr(a + 1, b - a - 1);
}

std::string join_argv(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) {
    if (!out.empty()) out += ' ';
    out += a;
  }
  return out;
}

std::string argv_json(const std::vector<std::string>& argv) {
  std::string out = "[";
  for (size_t i = 0; i < argv.size(); ++i) {
    if (i) out += ',';
    out += '"';
    for (unsigned char c : argv[i]) {
      if (c == '"' || c == '\\') {
        out += '\\';
        out += static_cast<char>(c);
      } else if (c < 0x20 || c == 0x7f) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", c);
        out += buf;
      } else {
        out += static_cast<char>(c);
      }
    }
    out += '"';
  }
  return out + "]";
}

Result<Pattern> Pattern::parse(std::string_view text) {
  Pattern p;
  p.text_ = std::string(text);
  Word cur;
  bool in_word = false;
  auto lit = [&](char c) {
    if (cur.empty() || cur.back().kind != Piece::Literal) cur.push_back({Piece::Literal, ""});
    cur.back().text += c;
  };
  auto bad = [&](std::string why) {
    return fail(invalid("pattern \"" + std::string(text) + "\": " + why));
  };
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (static_cast<unsigned char>(c) < 0x20 && c != '\t') return bad("control byte in pattern");
    if (is_blank(c)) {
      if (in_word) p.words_.push_back(std::move(cur)), cur.clear(), in_word = false;
      continue;
    }
    in_word = true;
    if (c == '*') {
      size_t n = 1;
      while (i + n < text.size() && text[i + n] == '*') ++n;
      if (n > 2) return bad("'***' is not a wildcard (use * or **)");
      cur.push_back({n == 2 ? Piece::DoubleStar : Piece::Star, ""});
      i += n - 1;
    } else if (c == '\\') {
      if (i + 1 >= text.size()) return bad("ends with a backslash");
      lit(text[++i]);
    } else if (c == '\'' || c == '"') {
      size_t end = text.find(c, i + 1);
      if (end == std::string_view::npos) return bad(std::string("unterminated ") + c);
      if (end == i + 1 && cur.empty()) cur.push_back({Piece::Literal, ""});  // '' = empty word
      for (size_t j = i + 1; j < end; ++j) lit(text[j]);
      i = end;
    } else {
      lit(c);
    }
  }
  if (in_word) p.words_.push_back(std::move(cur));
  if (p.words_.empty()) return bad("empty pattern");
  for (size_t w = 0; w < p.words_.size(); ++w) {
    const Word& word = p.words_[w];
    for (size_t k = 0; k < word.size(); ++k) {
      if (word[k].kind != Piece::DoubleStar) continue;
      if (w + 1 != p.words_.size() || k + 1 != word.size())
        return bad("'**' matches all remaining arguments, so it must end the pattern");
      if (k > 0 && word[k - 1].kind == Piece::Star) return bad("'*' right before '**'");
    }
  }
  return p;
}

bool Pattern::matches(const std::vector<std::string>& argv) const {
  return match_argv(words_, 0, argv, 0);
}

bool Pattern::matches_shell(std::string_view command) const {
  std::string_view s = trim_blanks(command);
  auto safe = [](char c) { return !is_blank(c) && !is_shell_special(c); };
  auto safe_word = [&](char c) { return safe(c) && c != '/'; };
  size_t pos = 0;
  for (size_t wi = 0; wi < words_.size(); ++wi) {
    const Word& w = words_[wi];
    const bool lone_doublestar = w.size() == 1 && w[0].kind == Piece::DoubleStar;
    if (lone_doublestar && pos == s.size()) return true;
    if (wi > 0) {
      if (pos == s.size() || !is_blank(s[pos])) return false;
      while (pos < s.size() && is_blank(s[pos])) ++pos;
    }
    if (lone_doublestar) return true;  // the rest, whatever it holds
    if (ends_with_doublestar(w)) {
      // "prefix**": the next word starts with the prefix, the rest is free.
      size_t end = pos;
      while (end < s.size() && !is_blank(s[end])) ++end;
      return prefix_match(w, s.substr(pos, end - pos), safe_word);
    }
    size_t end = pos;
    while (end < s.size() && !is_blank(s[end])) ++end;
    std::string_view token = s.substr(pos, end - pos);
    bool ok = w.size() == 1 && w[0].kind == Piece::Star
                  ? !token.empty() && std::all_of(token.begin(), token.end(), safe)
                  : glob(w, token, safe_word);
    if (!ok) return false;
    pos = end;
  }
  return pos == s.size();
}

Status check_whitelist(const std::vector<std::string>& whitelist, const CommandText& command) {
  if (whitelist.empty()) return {};
  for (const auto& entry : whitelist) {
    if (command.shell) {
      if (trim_blanks(entry) == trim_blanks(command.shell_string)) return {};
      continue;
    }
    auto words = split_command(entry);
    if (words && *words == command.argv) return {};
  }
  const std::string shown = command.shell ? command.shell_string : join_argv(command.argv);
  return fail(make_error(ErrorKind::PermissionDenied,
                         "command '" + shown + "' is not in the executor's command_whitelist"));
}

Status check_whitelist(const std::vector<std::string>& whitelist,
                       const std::vector<std::string>& argv) {
  return check_whitelist(whitelist, CommandText{argv, "", false});
}

Status check_allowlist(const std::vector<Pattern>& allowlist, const CommandText& command) {
  if (allowlist.empty()) return {};
  for (const auto& p : allowlist)
    if (p.matches(command)) return {};
  const std::string shown = command.shell ? command.shell_string : join_argv(command.argv);
  return fail(make_error(ErrorKind::PermissionDenied,
                         "command '" + shown + "' matches no pattern of the executor's allowlist"));
}

}  // namespace cloister::policy
