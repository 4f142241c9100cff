// The protocol's messages (runtime/messages.h): what one side writes, the
// other parses back to the same message; a bad field is INVALID by name.
#include "runtime/messages.h"

#include <gtest/gtest.h>
#include <signal.h>

namespace cloister::protocol {
namespace {

TEST(Messages, LaunchRoundTrips) {
  Launch m;
  m.kind = Launch::Kind::Exec;
  m.session = SessionRef(std::string("web"));
  m.argv = {"sh", "-c", "ls"};
  m.env = {{"A", "1"}, {"B", "2"}};
  m.work_dir = "/tmp";
  m.stdin_open = true;
  m.timeout_ms = 1500;
  m.max_output = 10;
  m.name = "web-ls";
  m.pty = PtySize{30, 100};
  const json j = to_json(m);
  EXPECT_EQ(j["op"], "exec");
  auto back = parse<Launch>(j);
  ASSERT_TRUE(back) << back.error().what();
  EXPECT_EQ(back->kind, Launch::Kind::Exec);
  EXPECT_EQ(std::get<std::string>(*back->session), "web");
  EXPECT_EQ(back->argv, m.argv);
  EXPECT_EQ(back->env, m.env);
  EXPECT_EQ(back->work_dir, "/tmp");
  EXPECT_TRUE(back->stdin_open);
  EXPECT_EQ(back->timeout_ms, 1500u);
  EXPECT_EQ(back->max_output, 10u);
  EXPECT_EQ(back->name, "web-ls");
  ASSERT_TRUE(back->pty);
  EXPECT_EQ(back->pty->rows, 30);
  EXPECT_EQ(back->pty->cols, 100);
}

TEST(Messages, BadFieldsAreNamed) {
  auto bad = [](const char* text, const char* field) {
    auto m = parse<Launch>(json::parse(text));
    ASSERT_FALSE(m) << text;
    EXPECT_EQ(m.error().kind, ErrorKind::Invalid);
    EXPECT_NE(m.error().message.find(field), std::string::npos) << m.error().what();
  };
  bad(R"({"op":"start"})", "'executor'");
  bad(R"({"op":"start","executor":"x","argv":"ls"})", "'argv'");
  bad(R"({"op":"start","executor":"x","timeout_ms":-1})", "'timeout_ms'");
  bad(R"({"op":"start","executor":"x","stdio":"files"})", "'stdio'");
  bad(R"({"op":"start","executor":"x","env":{"A":1}})", "env 'A'");
  bad(R"({"op":"run","executor":"x","pty":{"rows":1,"cols":1}})", "'pty'");
  bad(R"({"op":"start","executor":"x","grep":"a"})", "'grep'");
  bad(R"({"op":"exec"})", "'session'");
  auto sig = parse<Signal>(json::parse(R"({"session":1})"));
  ASSERT_FALSE(sig);
  EXPECT_NE(sig.error().message.find("'signal'"), std::string::npos);
  EXPECT_FALSE(parse<Signal>(json::parse(R"({"session":1,"signal":0})")));
  EXPECT_FALSE(parse<Signal>(json::parse(R"({"session":1,"signal":"NOPE"})")));
  EXPECT_FALSE(parse<Resize>(json::parse(R"({"session":1,"rows":0,"cols":80})")));
  EXPECT_FALSE(parse<Resize>(json::parse(R"({"session":1,"rows":70000,"cols":80})")));
  EXPECT_FALSE(parse<Attach>(json::parse(R"({"session":1,"follow":"yes"})")));
  EXPECT_FALSE(parse<Cp>(json::parse(R"({"session":1,"direction":"in","path":"rel"})")));
  EXPECT_FALSE(parse<Wait>(json::parse(R"({"session":-1})")));
  EXPECT_FALSE(parse<Hello>(json::parse(R"({})")));
  EXPECT_FALSE(parse<Detach>(json::parse(R"({"session":""})")));
  EXPECT_FALSE(parse<Stats>(json::parse(R"({"session":true})")));
  auto top = parse<Top>(json::parse(R"({"session":"web"})"));
  ASSERT_TRUE(top);
  EXPECT_EQ(top->session, SessionRef{std::string("web")});
  EXPECT_EQ(to_json(Inspect{SessionRef{uint64_t{7}}}),
            json::parse(R"({"op":"inspect","session":7})"));
}

TEST(Messages, SignalNamesBecomeNumbers) {
  auto m = parse<Signal>(json::parse(R"({"session":"web","signal":"sigterm"})"));
  ASSERT_TRUE(m) << m.error().what();
  EXPECT_EQ(m->signal, SIGTERM);
  EXPECT_EQ(to_json(*m)["signal"], SIGTERM);
  EXPECT_EQ(to_json(*m)["session"], "web");
}

TEST(Messages, EventsRoundTrip) {
  ExitStatus st;
  st.exit_code = 3;
  st.timed_out = true;
  auto exit = parse_event(to_json(ExitEvent{7, st, std::nullopt}));
  ASSERT_TRUE(exit && *exit);
  const auto& x = std::get<ExitEvent>(**exit);
  EXPECT_EQ(x.session, 7u);
  ASSERT_TRUE(x.status);
  EXPECT_EQ(x.status->exit_code, 3);
  EXPECT_TRUE(x.status->timed_out);
  auto eof = parse_event(to_json(EofEvent{7, StreamId::Stderr, 5000, 4000}));
  ASSERT_TRUE(eof && *eof);
  EXPECT_EQ(std::get<EofEvent>(**eof).stream, StreamId::Stderr);
  EXPECT_EQ(std::get<EofEvent>(**eof).offset, 5000u);
  EXPECT_EQ(std::get<EofEvent>(**eof).discarded, 4000u);
  auto ev = parse_event(to_json(EvictedEvent{2, StreamId::Stdout, 10, 20}));
  ASSERT_TRUE(ev && *ev);
  EXPECT_EQ(session_of(**ev), 2u);
  auto sh = parse_event(to_json(ShutdownEvent{}));
  ASSERT_TRUE(sh && *sh);
  EXPECT_EQ(session_of(**sh), 0u);
  // A kind from a newer service is skipped, a known kind with a bad field is not.
  auto future = parse_event(json::parse(R"({"event":"volume","action":"made"})"));
  ASSERT_TRUE(future);
  EXPECT_FALSE(*future);
  auto img = parse_event(to_json(ImageEvent{"pulled", "docker.io/library/a:1", "sha256:ab", "t"}));
  ASSERT_TRUE(img && *img);
  EXPECT_EQ(std::get<ImageEvent>(**img).image, "docker.io/library/a:1");
  EXPECT_EQ(session_of(**img), 0u);
  EXPECT_FALSE(parse_event(json::parse(R"({"event":"image","action":"pulled"})")))
      << "an image event names its image";
  EXPECT_FALSE(parse_event(
      json::parse(R"({"event":"evicted","session":1,"stream":"stdout","from":9,"to":3})")));
  EXPECT_FALSE(parse_event(json::parse(R"({"event":"eof","session":1,"stream":"stdin"})")));
}

}  // namespace
}  // namespace cloister::protocol
