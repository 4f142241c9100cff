// Command forms. A command is an argv (preferred) or a command string, which
// is split here without a shell: POSIX sh quoting ('...', "...", backslash),
// no expansion of any kind. A string holding a shell operator outside quotes
// (; & | < > ( ) `, $( or a newline) is refused with INVALID naming it, so
// that "git status; id" can never pass as "git status".
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "isolate/error.h"

namespace cloister::policy {

Result<std::vector<std::string>> split_command(std::string_view command);

// The canonical text of an argv, used for exact whitelist matching: the words
// joined by single spaces (as Wippy compares "git status").
std::string join_argv(const std::vector<std::string>& argv);

// Exact whitelist (Wippy `command_whitelist`): argv must equal one of the
// entries, each entry split like a command string. An empty list allows all.
Status check_whitelist(const std::vector<std::string>& whitelist,
                       const std::vector<std::string>& argv);

}  // namespace cloister::policy
