#include "oci/registry.h"

#include <curl/curl.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "isolate/fd.h"
#include "oci/reference.h"

namespace cloister::oci {
namespace {

using json = nlohmann::json;

// --- libcurl, loaded on first use. ---
struct CurlApi {
  CURLcode (*global_init)(long);
  CURL* (*easy_init)();
  CURLcode (*easy_setopt)(CURL*, CURLoption, ...);
  CURLcode (*easy_perform)(CURL*);
  CURLcode (*easy_getinfo)(CURL*, CURLINFO, ...);
  void (*easy_cleanup)(CURL*);
  curl_slist* (*slist_append)(curl_slist*, const char*);
  void (*slist_free_all)(curl_slist*);
  const char* (*easy_strerror)(CURLcode);
};

Result<const CurlApi*> curl_api() {
  static CurlApi api;
  static std::string error;
  static std::once_flag once;
  std::call_once(once, [] {
    void* h = ::dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      error = std::string("cannot load libcurl.so.4 (install libcurl4): ") + ::dlerror();
      return;
    }
    auto sym = [&](const char* n) { return ::dlsym(h, n); };
    api.global_init = reinterpret_cast<decltype(api.global_init)>(sym("curl_global_init"));
    api.easy_init = reinterpret_cast<decltype(api.easy_init)>(sym("curl_easy_init"));
    api.easy_setopt = reinterpret_cast<decltype(api.easy_setopt)>(sym("curl_easy_setopt"));
    api.easy_perform = reinterpret_cast<decltype(api.easy_perform)>(sym("curl_easy_perform"));
    api.easy_getinfo = reinterpret_cast<decltype(api.easy_getinfo)>(sym("curl_easy_getinfo"));
    api.easy_cleanup = reinterpret_cast<decltype(api.easy_cleanup)>(sym("curl_easy_cleanup"));
    api.slist_append = reinterpret_cast<decltype(api.slist_append)>(sym("curl_slist_append"));
    api.slist_free_all = reinterpret_cast<decltype(api.slist_free_all)>(sym("curl_slist_free_all"));
    api.easy_strerror = reinterpret_cast<decltype(api.easy_strerror)>(sym("curl_easy_strerror"));
    if (!api.global_init || !api.easy_init || !api.easy_setopt || !api.easy_perform ||
        !api.easy_getinfo || !api.easy_cleanup || !api.slist_append || !api.slist_free_all ||
        !api.easy_strerror) {
      error = "libcurl.so.4 lacks a needed symbol";
      return;
    }
    api.global_init(CURL_GLOBAL_DEFAULT);
  });
  if (!error.empty()) return fail(internal(error));
  return &api;
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64(std::string_view in) {
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v =
        (uint32_t(uint8_t(in[i])) << 16) | (uint32_t(uint8_t(in[i + 1])) << 8) | uint8_t(in[i + 2]);
    for (int k = 18; k >= 0; k -= 6) out += kB64[(v >> k) & 63];
  }
  if (i < in.size()) {
    uint32_t v = uint32_t(uint8_t(in[i])) << 16;
    if (i + 1 < in.size()) v |= uint32_t(uint8_t(in[i + 1])) << 8;
    out += kB64[(v >> 18) & 63];
    out += kB64[(v >> 12) & 63];
    out += i + 1 < in.size() ? kB64[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::optional<std::string> unbase64(std::string_view in) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=' || c == '\n' || c == '\r') continue;
    const char* p = std::strchr(kB64, c);
    if (!p || !c) return std::nullopt;
    acc = (acc << 6) | uint32_t(p - kB64);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  return out;
}

std::string url_escape(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == ':' || c == '/')
      out += static_cast<char>(c);
    else
      out += '%', out += kHex[c >> 4], out += kHex[c & 15];
  }
  return out;
}

// --- One HTTP exchange. ---
// Receives 2xx body bytes with the status (200 or 206); false aborts.
using Sink = std::function<bool(long status, const char*, size_t)>;
struct Response {
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names, last response only
};

struct Transfer {
  // Body bytes go to sink when set (and status is 2xx), else to body.
  Sink sink;
  size_t max_body = kMaxConfigBytes;
  Response* resp;
  CURL* curl;
  const CurlApi* api;
  bool too_big = false;
};

size_t on_header(char* data, size_t size, size_t n, void* p) {
  auto* t = static_cast<Transfer*>(p);
  std::string_view line(data, size * n);
  if (line.starts_with("HTTP/")) t->resp->headers.clear();  // a new response (redirect)
  auto colon = line.find(':');
  if (colon != std::string_view::npos) {
    std::string name = lower(std::string(line.substr(0, colon)));
    std::string_view v = line.substr(colon + 1);
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == '\r' || v.back() == '\n' || v.back() == ' '))
      v.remove_suffix(1);
    t->resp->headers[name] = std::string(v);
  }
  return size * n;
}

size_t on_body(char* data, size_t size, size_t n, void* p) {
  auto* t = static_cast<Transfer*>(p);
  long status = 0;
  t->api->easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &status);
  if (t->sink && (status == 200 || status == 206))
    return t->sink(status, data, size * n) ? size * n : 0;
  if (t->resp->body.size() + size * n > t->max_body) {
    t->too_big = true;
    return 0;
  }
  t->resp->body.append(data, size * n);
  return size * n;
}

Result<Response> http_get(const std::string& url, const std::vector<std::string>& headers,
                          Sink sink = nullptr, size_t max_body = kMaxConfigBytes,
                          bool allow_http = false) {
  auto api = curl_api();
  if (!api) return fail(api.error());
  const CurlApi& c = **api;
  CURL* curl = c.easy_init();
  if (!curl) return fail(internal("curl_easy_init failed"));
  Response resp;
  Transfer t{std::move(sink), max_body, &resp, curl, &c};
  curl_slist* hl = nullptr;
  for (const auto& h : headers) hl = c.slist_append(hl, h.c_str());
  c.easy_setopt(curl, CURLOPT_URL, url.c_str());
  c.easy_setopt(curl, CURLOPT_HTTPHEADER, hl);
  c.easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
  c.easy_setopt(curl, CURLOPT_MAXREDIRS, 10L);
  // Authorization is never sent to a host a redirect leads to.
  c.easy_setopt(curl, CURLOPT_UNRESTRICTED_AUTH, 0L);
  c.easy_setopt(curl, CURLOPT_PROTOCOLS_STR, allow_http ? "http,https" : "https");
  c.easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, allow_http ? "http,https" : "https");
  c.easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  c.easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 30L);
  c.easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);  // stalled for 60 s: give up (and retry)
  c.easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, 60L);
  c.easy_setopt(curl, CURLOPT_USERAGENT, "cloister/0.1");
  c.easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
  c.easy_setopt(curl, CURLOPT_HEADERDATA, &t);
  // Blob bodies in large pieces: fewer reads, pipe writes and wake-ups of
  // the thread that inflates them (curl caps this at 512 KiB).
  if (t.sink) c.easy_setopt(curl, CURLOPT_BUFFERSIZE, 512L * 1024);
  c.easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  c.easy_setopt(curl, CURLOPT_WRITEDATA, &t);
  CURLcode rc = c.easy_perform(curl);
  c.easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp.status);
  c.easy_cleanup(curl);
  c.slist_free_all(hl);
  if (t.too_big) return fail(make_error(ErrorKind::Limit, "GET " + url + ": response too large"));
  if (rc != CURLE_OK)
    return fail(
        make_error(rc == CURLE_OPERATION_TIMEDOUT ? ErrorKind::Timeout : ErrorKind::Internal,
                   "GET " + url + ": " + c.easy_strerror(rc)));
  return resp;
}

// --- Credentials. ---
struct Credentials {
  std::string user, secret;
  bool empty() const { return user.empty() && secret.empty(); }
};

Result<Credentials> credential_helper(const std::string& helper, const std::string& server) {
  if (helper.find('/') != std::string::npos || helper.empty())
    return fail(invalid("credential helper name '" + helper + "'"));
  auto in = make_pipe();
  auto out = make_pipe();
  if (!in || !out) return fail(internal("pipe"));
  pid_t pid = ::fork();
  if (pid < 0) return fail(sys_error("fork"));
  if (pid == 0) {
    ::dup2(in->read.get(), 0);
    ::dup2(out->write.get(), 1);
    const std::string prog = "docker-credential-" + helper;
    ::execlp(prog.c_str(), prog.c_str(), "get", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  in->read.reset();
  out->write.reset();
  (void)write_all(in->write.get(), server);
  in->write.reset();
  auto text = read_fd(out->read.get());
  int st = 0;
  ::waitpid(pid, &st, 0);
  if (!text || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
    return fail(make_error(ErrorKind::PermissionDenied,
                           "docker-credential-" + helper + " get " + server + " failed"));
  auto j = json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return fail(invalid("credential helper: bad JSON"));
  return Credentials{j.value("Username", ""), j.value("Secret", "")};
}

Result<Credentials> find_credentials(const std::string& registry, const std::string& auth_file) {
  std::vector<std::string> files;
  if (!auth_file.empty()) {
    files.push_back(auth_file);
  } else {
    if (const char* f = std::getenv("REGISTRY_AUTH_FILE")) files.push_back(f);
    if (const char* x = std::getenv("XDG_RUNTIME_DIR"))
      files.push_back(std::string(x) + "/containers/auth.json");
    const char* home = std::getenv("HOME");
    if (home) files.push_back(std::string(home) + "/.config/containers/auth.json");
    if (const char* d = std::getenv("DOCKER_CONFIG"))
      files.push_back(std::string(d) + "/config.json");
    else if (home)
      files.push_back(std::string(home) + "/.docker/config.json");
  }
  std::vector<std::string> keys = {registry, "https://" + registry, "http://" + registry};
  if (registry == "docker.io")
    keys.insert(keys.end(),
                {"https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"});
  for (const auto& f : files) {
    auto text = read_file(f);
    if (!text) continue;
    auto j = json::parse(*text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) continue;
    if (j.contains("credHelpers") && j["credHelpers"].is_object())
      for (const auto& k : keys)
        if (j["credHelpers"].contains(k) && j["credHelpers"][k].is_string())
          return credential_helper(j["credHelpers"][k].get<std::string>(), registry);
    if (j.contains("auths") && j["auths"].is_object())
      for (const auto& k : keys) {
        if (!j["auths"].contains(k)) continue;
        const json& a = j["auths"][k];
        if (a.contains("auth") && a["auth"].is_string()) {
          auto dec = unbase64(a["auth"].get<std::string>());
          if (!dec) continue;
          auto colon = dec->find(':');
          if (colon == std::string::npos) continue;
          return Credentials{dec->substr(0, colon), dec->substr(colon + 1)};
        }
      }
    if (j.contains("credsStore") && j["credsStore"].is_string()) {
      auto c = credential_helper(j["credsStore"].get<std::string>(), registry);
      if (c) return c;
    }
  }
  return Credentials{};
}

// `Bearer realm="...",service="..."` -> {scheme, params}.
std::pair<std::string, std::map<std::string, std::string>> parse_challenge(std::string_view h) {
  std::map<std::string, std::string> params;
  auto sp = h.find(' ');
  std::string scheme = lower(std::string(h.substr(0, sp)));
  if (sp == std::string_view::npos) return {scheme, params};
  std::string_view rest = h.substr(sp + 1);
  while (!rest.empty()) {
    while (!rest.empty() && (rest.front() == ' ' || rest.front() == ',')) rest.remove_prefix(1);
    auto eq = rest.find('=');
    if (eq == std::string_view::npos) break;
    std::string key = lower(std::string(rest.substr(0, eq)));
    rest.remove_prefix(eq + 1);
    std::string value;
    if (!rest.empty() && rest.front() == '"') {
      rest.remove_prefix(1);
      while (!rest.empty() && rest.front() != '"') {
        if (rest.front() == '\\' && rest.size() > 1) rest.remove_prefix(1);
        value += rest.front();
        rest.remove_prefix(1);
      }
      if (!rest.empty()) rest.remove_prefix(1);
    } else {
      auto end = rest.find(',');
      value = std::string(rest.substr(0, end));
      rest.remove_prefix(end == std::string_view::npos ? rest.size() : end);
    }
    params[key] = value;
  }
  return {scheme, params};
}

// --- A registry endpoint and its authorization. ---
class Endpoint {
 public:
  Endpoint(std::string host, std::string repository, bool insecure, std::string cred_key,
           const RegistryOptions& opt)
      : host_(std::move(host)),
        repo_(std::move(repository)),
        insecure_(insecure),
        cred_key_(std::move(cred_key)),
        opt_(opt) {}

  std::string base() const { return (insecure_ ? "http://" : "https://") + host_; }
  const std::string& host() const { return host_; }

  // GET with authorization; a 401 runs the challenge once and retries.
  Result<Response> get(const std::string& path, std::vector<std::string> headers,
                       Sink sink = nullptr, size_t max_body = kMaxConfigBytes) {
    for (int round = 0; round < 2; ++round) {
      std::vector<std::string> h = headers;
      {
        std::lock_guard g(mu_);
        if (!authorization_.empty()) h.push_back("Authorization: " + authorization_);
      }
      auto r = http_get(base() + path, h, sink, max_body, insecure_);
      if (!r) return r;
      if (r->status != 401 || round == 1) return r;
      auto www = r->headers.find("www-authenticate");
      if (www == r->headers.end())
        return fail(make_error(ErrorKind::PermissionDenied, host_ + ": 401 without a challenge"));
      if (auto s = authenticate(www->second); !s) return fail(s.error());
    }
    return fail(internal("unreachable"));
  }

 private:
  Status authenticate(const std::string& challenge) {
    // Layer threads may meet a 401 together (an expired token): one at a time.
    std::lock_guard auth_guard(auth_mu_);
    auto [scheme, params] = parse_challenge(challenge);
    if (!creds_loaded_) {
      auto c = find_credentials(cred_key_, opt_.auth_file);
      if (!c) return fail(c.error());
      creds_ = *c;
      creds_loaded_ = true;
    }
    if (scheme == "basic") {
      if (creds_.empty())
        return fail(make_error(ErrorKind::PermissionDenied,
                               host_ + " wants basic auth and no credentials are configured"));
      std::lock_guard g(mu_);
      authorization_ = "Basic " + base64(creds_.user + ":" + creds_.secret);
      return {};
    }
    if (scheme != "bearer") return fail(invalid(host_ + ": unsupported auth scheme " + scheme));
    auto realm = params["realm"];
    if (realm.empty()) return fail(invalid(host_ + ": bearer challenge without a realm"));
    std::string url = realm + (realm.find('?') == std::string::npos ? "?" : "&");
    if (!params["service"].empty()) url += "service=" + url_escape(params["service"]) + "&";
    url += "scope=" + url_escape("repository:" + repo_ + ":pull");
    std::vector<std::string> h;
    if (!creds_.empty())
      h.push_back("Authorization: Basic " + base64(creds_.user + ":" + creds_.secret));
    // The token realm may be plain HTTP only when the registry itself is.
    auto r = http_get(url, h, nullptr, 1 << 20, insecure_);
    if (!r) return fail(r.error().wrap("token"));
    if (r->status != 200)
      return fail(make_error(ErrorKind::PermissionDenied,
                             "token from " + realm + ": HTTP " + std::to_string(r->status)));
    auto j = json::parse(r->body, nullptr, false);
    std::string token;
    if (j.is_object()) token = j.value("token", j.value("access_token", ""));
    if (token.empty()) return fail(invalid("token from " + realm + ": no token in the answer"));
    std::lock_guard g(mu_);
    authorization_ = "Bearer " + token;
    return {};
  }

  std::string host_, repo_;
  bool insecure_;
  std::string cred_key_;
  const RegistryOptions& opt_;
  std::mutex mu_, auth_mu_;
  std::string authorization_;
  bool creds_loaded_ = false;
  Credentials creds_;
};

std::string status_error(const Response& r) {
  std::string s = "HTTP " + std::to_string(r.status);
  auto j = json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("errors") && j["errors"].is_array() && !j["errors"].empty() &&
      j["errors"][0].is_object())
    s += " " + j["errors"][0].value("code", "") + ": " + j["errors"][0].value("message", "");
  return s;
}

constexpr const char* kAccept =
    "Accept: application/vnd.oci.image.index.v1+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json";

// A layer blob streamed through a pipe from a transfer thread that retries
// and resumes.
class BlobStream : public ByteStream {
 public:
  BlobStream(Endpoint& ep, std::string path, uint64_t size, int retries)
      : ep_(ep), path_(std::move(path)), size_(size), retries_(retries) {}
  ~BlobStream() override {
    read_.reset();  // a writer blocked on the pipe gets EPIPE and stops
    if (thread_.joinable()) thread_.join();
  }
  Status start() {
    auto p = make_pipe();
    if (!p) return fail(p.error());
    read_ = std::move(p->read);
    write_ = std::move(p->write);
    // A larger pipe lets the transfer run ahead of the reader (best effort:
    // an unprivileged caller may be capped by fs.pipe-max-size).
    ::fcntl(write_.get(), F_SETPIPE_SZ, 1 << 20);
    thread_ = std::thread([this] { run(); });
    return {};
  }
  Result<size_t> read(char* buf, size_t len) override {
    for (;;) {
      ssize_t n = ::read(read_.get(), buf, len);
      if (n > 0) return static_cast<size_t>(n);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return fail(sys_error("read blob pipe"));
      if (thread_.joinable()) thread_.join();
      if (error_) return fail(*error_);
      return 0;
    }
  }

 private:
  void run() {
    uint64_t delivered = 0;
    std::optional<Error> last;
    for (int attempt = 0; attempt <= retries_; ++attempt) {
      if (attempt > 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(100 << std::min(attempt, 6)));
      std::vector<std::string> h;
      const uint64_t resume_at = delivered;
      if (resume_at > 0) h.push_back("Range: bytes=" + std::to_string(resume_at) + "-");
      bool started = false, pipe_closed = false;
      uint64_t skip = 0;
      auto sink = [&](long status, const char* d, size_t n) -> bool {
        if (!started) {
          started = true;
          // A server that ignores Range answers 200 with the whole blob:
          // skip what was already delivered. A 206 continues where we were.
          skip = status == 200 ? resume_at : 0;
        }
        if (skip) {
          size_t k = static_cast<size_t>(std::min<uint64_t>(skip, n));
          d += k, n -= k, skip -= k;
        }
        while (n) {
          ssize_t w = write_nosigpipe(write_.get(), d, n);
          if (w < 0) {
            if (errno == EINTR) continue;
            pipe_closed = true;
            return false;
          }
          d += w, n -= static_cast<size_t>(w), delivered += static_cast<uint64_t>(w);
        }
        // More than the descriptor says: stop; the reader's size check fails.
        return delivered <= size_;
      };
      auto r = ep_.get(path_, h, sink, 1 << 16);
      if (pipe_closed || delivered > size_) {
        last.reset();  // the reader is gone, or will report the size itself
        break;
      }
      if (r && (r->status == 200 || r->status == 206)) {
        if (delivered >= size_) {
          last.reset();
          break;
        }
        last = make_error(ErrorKind::Internal, "GET " + path_ + ": connection ended after " +
                                                   std::to_string(delivered) + " of " +
                                                   std::to_string(size_) + " bytes");
        continue;
      }
      if (r) {
        last = make_error(r->status == 404 ? ErrorKind::NotFound : ErrorKind::Internal,
                          "GET " + path_ + ": " + status_error(*r));
        if (r->status >= 400 && r->status < 500 && r->status != 408 && r->status != 429) break;
        continue;
      }
      last = r.error();
    }
    error_ = last;
    write_.reset();
  }

  Endpoint& ep_;
  std::string path_;
  uint64_t size_;
  int retries_;
  Fd read_, write_;
  std::thread thread_;
  std::optional<Error> error_;
};

class RegistrySource : public BlobSource {
 public:
  RegistrySource(std::vector<std::unique_ptr<Endpoint>> eps, std::string repo, int retries)
      : eps_(std::move(eps)), repo_(std::move(repo)), retries_(retries) {}

  // The top manifest by tag or digest: learns its digest and media type.
  Result<Descriptor> resolve(const std::string& ref, const std::optional<Digest>& pinned) {
    std::optional<Error> last;
    for (auto& ep : eps_) {
      auto r = ep->get("/v2/" + repo_ + "/manifests/" + ref, {kAccept}, nullptr, kMaxManifestBytes);
      if (!r) {
        last = r.error();
        continue;
      }
      if (r->status != 200) {
        last = make_error(r->status == 404                       ? ErrorKind::NotFound
                          : r->status == 401 || r->status == 403 ? ErrorKind::PermissionDenied
                                                                 : ErrorKind::Internal,
                          ep->host() + ": manifest " + repo_ + ":" + ref + ": " + status_error(*r));
        continue;
      }
      auto checked = check_document(*r, Descriptor{});
      if (!checked) return fail(checked.error());
      Descriptor d;
      d.digest = sha256_of(r->body);
      d.size = r->body.size();
      d.media_type = *checked;
      if (pinned && d.digest != *pinned)
        return fail(
            invalid("manifest digest " + d.digest.str() + " is not the pinned " + pinned->str()));
      cache_[d.digest.str()] = r->body;
      active_ = ep.get();
      return d;
    }
    return fail(last ? *last : internal("no registry endpoint"));
  }

  Result<std::string> fetch(const Descriptor& d) override {
    if (auto it = cache_.find(d.digest.str()); it != cache_.end()) return it->second;
    const bool manifest = is_index_type(d.media_type) || is_manifest_type(d.media_type);
    const std::string path =
        "/v2/" + repo_ + (manifest ? "/manifests/" : "/blobs/") + d.digest.str();
    if (d.size > kMaxConfigBytes) return fail(make_error(ErrorKind::Limit, "document too large"));
    auto r = active_->get(path, {manifest ? kAccept : "Accept: */*"}, nullptr, kMaxConfigBytes);
    if (!r) return fail(r.error());
    if (r->status != 200) return fail(internal("GET " + path + ": " + status_error(*r)));
    if (manifest) {
      auto t = check_document(*r, d);
      if (!t) return fail(t.error());
    }
    if (r->body.size() != d.size)
      return fail(invalid(path + ": size " + std::to_string(r->body.size()) + ", expected " +
                          std::to_string(d.size)));
    if (sha256_of(r->body) != d.digest) return fail(invalid(path + ": digest mismatch"));
    return r->body;
  }

  Result<std::unique_ptr<ByteStream>> open_blob(const Descriptor& d) override {
    auto s = std::make_unique<BlobStream>(*active_, "/v2/" + repo_ + "/blobs/" + d.digest.str(),
                                          d.size, retries_);
    if (auto st = s->start(); !st) return fail(st.error());
    return std::unique_ptr<ByteStream>(std::move(s));
  }

 private:
  // The Content-Type must be a manifest type and match the document's own
  // mediaType (and the descriptor's, when known).
  Result<std::string> check_document(const Response& r, const Descriptor& d) {
    std::string ct;
    if (auto it = r.headers.find("content-type"); it != r.headers.end())
      ct = it->second.substr(0, it->second.find(';'));
    auto mt = document_media_type(r.body);
    if (!mt) return fail(mt.error());
    if (!mt->empty() && !ct.empty() && *mt != ct)
      return fail(invalid("manifest mediaType " + *mt + " does not match Content-Type " + ct));
    std::string type = mt->empty() ? ct : *mt;
    if (!is_index_type(type) && !is_manifest_type(type))
      return fail(invalid("unsupported manifest type '" + type + "'"));
    if (!d.media_type.empty() && d.media_type != type)
      return fail(invalid("manifest type " + type + " where the index says " + d.media_type));
    return type;
  }

  std::vector<std::unique_ptr<Endpoint>> eps_;
  std::string repo_;
  int retries_;
  Endpoint* active_ = nullptr;
  std::map<std::string, std::string> cache_;
};

}  // namespace

Result<ImageRecord> pull_image(const Store& store, const std::string& reference,
                               const RegistryOptions& opt, const ImportOptions& options) {
  auto ref = parse_reference(reference);
  if (!ref) return fail(ref.error());
  auto insecure = [&](const std::string& host, bool loopback) {
    if (loopback && opt.loopback_insecure) return true;
    return std::find(opt.insecure.begin(), opt.insecure.end(), host) != opt.insecure.end();
  };
  std::vector<std::unique_ptr<Endpoint>> eps;
  if (auto m = opt.mirrors.find(ref->registry); m != opt.mirrors.end())
    for (const auto& host : m->second) {
      Reference mr = *ref;
      mr.registry = host;
      eps.push_back(std::make_unique<Endpoint>(host, ref->repository, insecure(host, mr.loopback()),
                                               host, opt));
    }
  const std::string host = ref->registry == "docker.io" ? "registry-1.docker.io" : ref->registry;
  eps.push_back(std::make_unique<Endpoint>(
      host, ref->repository, insecure(ref->registry, ref->loopback()), ref->registry, opt));
  RegistrySource source(std::move(eps), ref->repository, opt.retries);
  std::optional<Digest> pinned;
  if (!ref->digest.empty()) pinned = *parse_digest(ref->digest);
  auto top = source.resolve(ref->manifest_ref(), pinned);
  if (!top) return fail(top.error().wrap("pull " + ref->str()));
  auto rec = import_image(store, source, *top, ref->str(), options);
  if (!rec) return fail(rec.error().wrap("pull " + ref->str()));
  return rec;
}

}  // namespace cloister::oci
