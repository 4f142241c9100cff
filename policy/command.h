// Command forms and command matching.
//
// A command is an argv (preferred) or a command string. A string is split
// here without a shell: POSIX sh quoting ('...', "...", backslash) and
// nothing else - no expansion of any kind. Everything a shell would read
// differently from a plain word list is refused with INVALID naming it, so
// that "git status; id" can never pass as "git status":
//   operators      ; & && | || < > >> ( ) ` $( and a newline
//   expansions     $NAME ${...} $'...' $"..." (sh would substitute them)
//   comments       a word starting with an unquoted #
//   assignments    NAME=value as the first word (sh would set a variable)
//   control bytes  NUL, CR and the other C0 bytes but tab, and DEL
// Glob characters (* ? [) and ~ are passed literally: a program receives
// exactly the words the string spells.
//
// Matching (the executor's command rules and the callers' exec.run):
//   - a whitelist entry (Wippy command_whitelist) is a command string; it
//     matches when its split words equal the argv exactly;
//   - an allowlist pattern (Luminarys shell.allowlist) is words where a word
//     `*` matches exactly one argument, `**` (last word only) any remaining
//     arguments including none, and a `*` inside a word matches any run of
//     characters but '/'. A last word ending in `**` ("./**") matches any
//     argument with that prefix whose rest has no ".." component, followed by
//     any arguments. Quoted text in a pattern is literal ('*' is a star).
//   - in a shell executor (shell: true) the command string runs as
//     /bin/sh -c STRING and rules match the whole string: a whitelist entry
//     must equal it (outer blanks ignored); in a pattern, blanks match runs of
//     blanks, `*` matches one word free of shell syntax, and `**` matches the
//     rest of the string whatever it holds (an opt-in to anything after it).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "isolate/error.h"

namespace cloister::policy {

Result<std::vector<std::string>> split_command(std::string_view command);

// The first shell operator or expansion in a command string (outside
// quotes), as split_command would name it, or "" when there is none.
std::string find_shell_syntax(std::string_view command);

// The canonical text of an argv for messages and audit: words joined by
// single spaces (as Wippy compares "git status").
std::string join_argv(const std::vector<std::string>& argv);

// argv as a JSON array of strings: unambiguous in logs, whatever the bytes.
std::string argv_json(const std::vector<std::string>& argv);

// What a rule is matched against: the argv, or in a shell executor the
// whole command string (then argv is {"/bin/sh", "-c", text}).
struct CommandText {
  std::vector<std::string> argv;
  std::string shell_string;  // set only in shell form
  bool shell = false;
};

// An allowlist pattern, parsed once (at config load).
class Pattern {
 public:
  // INVALID with the reason when the text is not a pattern (empty, `**` not
  // last, unterminated quote, ...).
  static Result<Pattern> parse(std::string_view text);

  bool matches(const std::vector<std::string>& argv) const;
  bool matches_shell(std::string_view command) const;
  bool matches(const CommandText& c) const {
    return c.shell ? matches_shell(c.shell_string) : matches(c.argv);
  }
  const std::string& text() const { return text_; }

  // One word: literal pieces and wildcards.
  struct Piece {
    enum Kind { Literal, Star, DoubleStar } kind;
    std::string text;
  };
  using Word = std::vector<Piece>;

 private:
  std::string text_;
  std::vector<Word> words_;
};

// Exact whitelist (Wippy `command_whitelist`): argv must equal one of the
// entries, each entry split like a command string. An empty list allows all.
// PERMISSION_DENIED when nothing matches.
Status check_whitelist(const std::vector<std::string>& whitelist, const CommandText& command);
Status check_whitelist(const std::vector<std::string>& whitelist,
                       const std::vector<std::string>& argv);

// Allowlist: one pattern must match; an empty list allows all.
// PERMISSION_DENIED when nothing matches.
Status check_allowlist(const std::vector<Pattern>& allowlist, const CommandText& command);

}  // namespace cloister::policy
