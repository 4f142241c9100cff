#include "oci/reference.h"

#include "oci/digest.h"

namespace cloister::oci {
namespace {

constexpr size_t kMaxReference = 512;

bool lower_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

// A path component: [a-z0-9]+ separated by '.', '_', '__' or runs of '-'.
bool valid_component(std::string_view c) {
  if (c.empty() || !lower_alnum(c.front()) || !lower_alnum(c.back())) return false;
  for (size_t i = 0; i < c.size(); ++i) {
    char ch = c[i];
    if (lower_alnum(ch)) continue;
    if (ch == '.' || ch == '_' || ch == '-') {
      if (ch == '.' && !lower_alnum(c[i + 1])) return false;
      if (ch == '_' && !(lower_alnum(c[i + 1]) || (c[i + 1] == '_' && lower_alnum(c[i + 2]))))
        return false;
      if (ch == '_' && c[i + 1] == '_') ++i;
      continue;
    }
    return false;
  }
  return true;
}

bool valid_tag(std::string_view t) {
  if (t.empty() || t.size() > 128) return false;
  for (size_t i = 0; i < t.size(); ++i) {
    char c = t[i];
    bool word =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!word && (i == 0 || (c != '.' && c != '-'))) return false;
  }
  return true;
}

bool valid_host(std::string_view h) {
  if (h.empty()) return false;
  for (char c : h)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '-' || c == ':' || c == '[' || c == ']'))
      return false;
  auto colon = h.rfind(':');
  if (colon != std::string_view::npos && h.find(']') == std::string_view::npos) {
    auto port = h.substr(colon + 1);
    if (port.empty() || port.size() > 5) return false;
    for (char c : port)
      if (c < '0' || c > '9') return false;
  }
  return true;
}

}  // namespace

std::string Reference::str() const {
  std::string s = name();
  if (!tag.empty()) s += ":" + tag;
  if (!digest.empty()) s += "@" + digest;
  return s;
}

bool Reference::loopback() const {
  std::string_view host = registry;
  if (host.starts_with("[::1]")) return true;
  host = host.substr(0, host.find(':'));
  return host == "localhost" || host.starts_with("127.");
}

Result<Reference> parse_reference(std::string_view text) {
  const std::string shown = "image reference '" + std::string(text.substr(0, 100)) + "'";
  if (text.empty() || text.size() > kMaxReference)
    return fail(invalid(shown + ": empty or too long"));
  Reference r;
  std::string_view rest = text;
  if (auto at = rest.find('@'); at != std::string_view::npos) {
    auto d = parse_digest(rest.substr(at + 1));
    if (!d) return fail(d.error().wrap(shown));
    r.digest = d->str();
    rest = rest.substr(0, at);
  }
  // The tag: after the last ':' that follows the last '/'.
  auto slash = rest.rfind('/');
  auto colon = rest.rfind(':');
  if (colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash)) {
    r.tag = std::string(rest.substr(colon + 1));
    if (!valid_tag(r.tag)) return fail(invalid(shown + ": bad tag '" + r.tag + "'"));
    rest = rest.substr(0, colon);
  }
  auto first_slash = rest.find('/');
  if (first_slash != std::string_view::npos) {
    auto first = rest.substr(0, first_slash);
    if (first.find('.') != std::string_view::npos || first.find(':') != std::string_view::npos ||
        first == "localhost") {
      if (!valid_host(first)) return fail(invalid(shown + ": bad registry host"));
      r.registry = std::string(first);
      rest = rest.substr(first_slash + 1);
    }
  }
  if (r.registry.empty() || r.registry == "index.docker.io" || r.registry == "registry-1.docker.io")
    r.registry = "docker.io";
  if (rest.empty()) return fail(invalid(shown + ": no repository"));
  size_t i = 0;
  while (i <= rest.size()) {
    auto j = rest.find('/', i);
    if (j == std::string_view::npos) j = rest.size();
    if (!valid_component(rest.substr(i, j - i)))
      return fail(invalid(shown + ": bad repository component '" +
                          std::string(rest.substr(i, j - i)) +
                          "' (lowercase letters, digits, "
                          "'.', '_', '-')"));
    i = j + 1;
  }
  r.repository = std::string(rest);
  if (r.registry == "docker.io" && r.repository.find('/') == std::string::npos)
    r.repository = "library/" + r.repository;
  if (r.tag.empty() && r.digest.empty()) r.tag = "latest";
  return r;
}

}  // namespace cloister::oci
