// isolate/devices.h: the device policy's rules, what the v1 controller makes
// of them, and the cgroup2 program built from them, run here by a small
// interpreter of the instructions it uses, so that both backends are
// checked against the v1 controller's semantics without root.
#include <gtest/gtest.h>
#include <linux/bpf.h>

#include <cstdint>
#include <vector>

#include "isolate/devices.h"

namespace cloister::devices {
namespace {

// The program's verdict for one access (type BPF_DEVCG_DEV_*, access
// BPF_DEVCG_ACC_* bits); -1 for an instruction it should never hold.
int run(const std::vector<Insn>& prog, uint32_t type, uint32_t access, uint32_t major,
        uint32_t minor) {
  const uint32_t ctx[3] = {access << 16 | type, major, minor};
  uint64_t r[11] = {};
  for (size_t pc = 0, steps = 0; pc < prog.size() && steps < 10000; ++pc, ++steps) {
    const Insn& i = prog[pc];
    const int dst = i.regs & 0xf, src = i.regs >> 4;
    switch (i.code) {
      case BPF_LDX | BPF_MEM | BPF_W:
        if (src != 1 || i.off % 4 || i.off < 0 || i.off > 8) return -1;
        r[dst] = ctx[i.off / 4];
        break;
      case BPF_ALU | BPF_MOV | BPF_X:
        r[dst] = static_cast<uint32_t>(r[src]);
        break;
      case BPF_ALU | BPF_AND | BPF_K:
        r[dst] = static_cast<uint32_t>(r[dst]) & static_cast<uint32_t>(i.imm);
        break;
      case BPF_ALU | BPF_RSH | BPF_K:
        r[dst] = static_cast<uint32_t>(r[dst]) >> i.imm;
        break;
      case BPF_ALU64 | BPF_MOV | BPF_K:
        r[dst] = static_cast<uint64_t>(static_cast<int64_t>(i.imm));
        break;
      case BPF_JMP | BPF_JNE | BPF_K:
        if (r[dst] != static_cast<uint64_t>(static_cast<int64_t>(i.imm))) pc += i.off;
        break;
      case BPF_JMP | BPF_JEQ | BPF_K:
        if (r[dst] == static_cast<uint64_t>(static_cast<int64_t>(i.imm))) pc += i.off;
        break;
      case BPF_JMP | BPF_EXIT:
        return static_cast<int>(r[0]);
      default:
        return -1;
    }
  }
  return -1;
}

constexpr uint32_t C = BPF_DEVCG_DEV_CHAR, B = BPF_DEVCG_DEV_BLOCK;
constexpr uint32_t R = BPF_DEVCG_ACC_READ, W = BPF_DEVCG_ACC_WRITE, M = BPF_DEVCG_ACC_MKNOD;

TEST(Devices, RulesAreCheckedAndWrittenAsV1TakesThem) {
  EXPECT_TRUE(check(Rule{true, 'c', 1, 3, "rw"}));
  EXPECT_TRUE(check(Rule{false, 'a', -1, -1, "rwm"}));
  EXPECT_FALSE(check(Rule{true, 'x', 1, 3, "rw"}));
  EXPECT_FALSE(check(Rule{true, 'c', 1, 3, ""}));
  EXPECT_FALSE(check(Rule{true, 'c', 1, 3, "rr"}));
  EXPECT_FALSE(check(Rule{true, 'c', 1, 3, "rwmx"}));
  EXPECT_FALSE(check(Rule{true, 'c', -2, 3, "r"}));
  EXPECT_FALSE(check(Rule{true, 'c', 4096, 3, "r"}));
  EXPECT_FALSE(check(Rule{true, 'b', 1, 1 << 20, "r"}));
  EXPECT_FALSE(check(Rule{true, 'a', 1, -1, "rwm"}));
  EXPECT_FALSE(check(Rule{true, 'a', -1, -1, "m"}));
  EXPECT_EQ(v1_line(Rule{true, 'c', 1, 3, "rw"}), "c 1:3 rw");
  EXPECT_EQ(v1_line(Rule{true, 'b', -1, -1, "m"}), "b *:* m");
  EXPECT_EQ(v1_line(Rule{false, 'a', -1, -1, "rwm"}), "a");
  EXPECT_TRUE(check(ExtraNode{"/dev/x", S_IFCHR | 0666, 10, 229}));
  EXPECT_FALSE(check(ExtraNode{"/dev/x", S_IFREG | 0666, 10, 229}));
  EXPECT_FALSE(check(ExtraNode{"/dev/x", S_IFCHR | 04666, 10, 229}));
  EXPECT_FALSE(check(ExtraNode{"/dev/x", S_IFBLK | 0666, 4096, 0}));
}

TEST(Devices, NothingIsAllowedWithoutARule) {
  const auto p = program({});
  EXPECT_EQ(run(p, C, R, 1, 3), 0);
  EXPECT_EQ(run(p, B, M, 8, 0), 0);
}

// The v1 controller's semantics: exceptions to a default, an access asked
// for allowed only when one exception holds all of it, a deny that takes
// access away from the exception naming the same devices.
TEST(Devices, TheProgramDecidesAsTheV1ControllerDoes) {
  const std::vector<Rule> rules = {{false, 'a', -1, -1, "rwm"}, {true, 'c', 1, 3, "rw"},
                                   {true, 'c', 136, -1, "rwm"}, {true, 'c', 10, 229, "rwm"},
                                   {false, 'c', 10, 229, "w"},  {true, 'c', 1, 5, "m"},
                                   {true, 'b', 8, 0, "r"},      {true, 'c', 1, 5, "r"}};
  ASSERT_TRUE(check(rules));
  const auto p = program(rules);
  EXPECT_EQ(run(p, C, R, 1, 3), 1);
  EXPECT_EQ(run(p, C, R | W, 1, 3), 1);
  EXPECT_EQ(run(p, C, M, 1, 3), 0);
  EXPECT_EQ(run(p, C, R | M, 1, 5), 1);  // the two allows, merged
  EXPECT_EQ(run(p, C, W, 1, 5), 0);
  EXPECT_EQ(run(p, C, R | W, 136, 7), 1);
  EXPECT_EQ(run(p, C, R, 10, 229), 1);
  EXPECT_EQ(run(p, C, W, 10, 229), 0);  // taken away by the deny
  EXPECT_EQ(run(p, B, R, 8, 0), 1);
  EXPECT_EQ(run(p, B, W, 8, 0), 0);
  EXPECT_EQ(run(p, B, R, 8, 1), 0);
  EXPECT_EQ(run(p, C, R, 8, 0), 0);  // a block device's numbers, as a character one
}

// What v1 would silently leave in place is refused: a deny narrower than an
// earlier wildcard allow, or broader than a narrower one; the program of a
// refused list denies everything.
TEST(Devices, ADenyTheControllerCannotApplyIsRefused) {
  for (const auto& rules : std::vector<std::vector<Rule>>{
           {{false, 'a', -1, -1, "rwm"}, {true, 'c', 1, -1, "rw"}, {false, 'c', 1, 11, "rwm"}},
           {{false, 'a', -1, -1, "rwm"}, {true, 'b', -1, -1, "r"}, {false, 'b', 7, 0, "r"}},
           {{false, 'a', -1, -1, "rwm"}, {true, 'c', 1, 3, "rwm"}, {false, 'c', -1, -1, "rwm"}},
           {{true, 'a', -1, -1, "rwm"}, {false, 'c', -1, -1, "w"}, {true, 'c', 1, 3, "rw"}}}) {
    auto s = check(rules);
    ASSERT_FALSE(s) << v1_line(rules[2]);
    EXPECT_NE(s.error().message.find("takes access from part of the earlier"), std::string::npos)
        << s.error().message;
    const auto p = program(rules);
    EXPECT_EQ(run(p, C, R, 1, 3), 0);
    EXPECT_EQ(run(p, B, R, 7, 0), 0);
  }
  // Access that does not overlap, or another type: fine.
  EXPECT_TRUE(check(std::vector<Rule>{
      {false, 'a', -1, -1, "rwm"}, {true, 'c', 1, -1, "r"}, {false, 'c', 1, 11, "w"}}));
  EXPECT_TRUE(check(std::vector<Rule>{
      {false, 'a', -1, -1, "rwm"}, {true, 'c', 1, -1, "r"}, {false, 'b', 1, 11, "r"}}));
}

TEST(Devices, ADefaultAllowDeniesItsExceptionsOnAnyOverlap) {
  const auto p =
      program({{true, 'a', -1, -1, "rwm"}, {false, 'b', -1, -1, "rw"}, {false, 'c', 1, 11, "w"}});
  EXPECT_EQ(run(p, C, R, 1, 3), 1);
  EXPECT_EQ(run(p, B, R, 8, 0), 0);
  EXPECT_EQ(run(p, B, M, 8, 0), 1);
  EXPECT_EQ(run(p, C, R, 1, 11), 1);
  EXPECT_EQ(run(p, C, R | W, 1, 11), 0);
  // A later "a" resets all that came before it.
  const auto q = program({{true, 'a', -1, -1, "rwm"},
                          {false, 'b', -1, -1, "rw"},
                          {false, 'a', -1, -1, "rwm"},
                          {true, 'c', 1, 3, "r"}});
  EXPECT_EQ(run(q, B, R, 8, 0), 0);
  EXPECT_EQ(run(q, C, R, 1, 3), 1);
  EXPECT_EQ(run(q, C, R, 1, 5), 0);
}

TEST(Devices, ContainerDefaultsOpenTheStandardNodesAndPtysOnly) {
  const auto p = program(container_defaults(
      {ExtraNode{"/dev/fuse", S_IFCHR | 0666, 10, 229}, ExtraNode{"/dev/p", S_IFIFO | 0600}}));
  for (const auto& n : kStandardNodes) EXPECT_EQ(run(p, C, R | W, n.major, n.minor), 1) << n.name;
  EXPECT_EQ(run(p, C, R | W, 5, 2), 1);
  EXPECT_EQ(run(p, C, R | W, 136, 0), 1);
  EXPECT_EQ(run(p, C, R, 1, 1), 0);   // /dev/mem
  EXPECT_EQ(run(p, C, R, 1, 11), 0);  // /dev/kmsg
  EXPECT_EQ(run(p, B, R, 8, 0), 0);
  // mknod of the config's nodes, which the init makes, and of no other.
  EXPECT_EQ(run(p, C, M, 10, 229), 1);
  EXPECT_EQ(run(p, C, R, 10, 229), 0);
  EXPECT_EQ(run(p, B, M, 8, 0), 0);
  EXPECT_EQ(run(p, C, M, 1, 1), 0);
}

// Once the init has made its nodes: the same policy with no mknod, under
// a default deny (containerd's c *:* m gone) and a default allow.
TEST(Devices, WithoutMknodKeepsEverythingButMknod) {
  const std::vector<Rule> deny = {{false, 'a', -1, -1, "rwm"},
                                  {true, 'c', -1, -1, "m"},
                                  {true, 'b', -1, -1, "m"},
                                  {true, 'c', 1, 3, "rwm"},
                                  {true, 'b', 8, 0, "r"}};
  EXPECT_FALSE(allows_by_default(deny));
  const auto before = program(deny), after = program(without_mknod(deny));
  EXPECT_EQ(run(before, C, M, 10, 229), 1);
  EXPECT_EQ(run(after, C, M, 10, 229), 0);
  EXPECT_EQ(run(after, C, M, 1, 3), 0);
  EXPECT_EQ(run(after, B, M, 8, 0), 0);
  EXPECT_EQ(run(after, C, R | W, 1, 3), 1);
  EXPECT_EQ(run(after, B, R, 8, 0), 1);
  EXPECT_EQ(run(after, C, R, 1, 5), 0);

  const std::vector<Rule> allow = {{true, 'a', -1, -1, "rwm"}, {false, 'c', 1, 11, "w"}};
  EXPECT_TRUE(allows_by_default(allow));
  const auto open = program(without_mknod(allow));
  EXPECT_EQ(run(open, B, R | W, 8, 0), 1);
  EXPECT_EQ(run(open, C, R, 1, 11), 1);
  EXPECT_EQ(run(open, C, W, 1, 11), 0);
  EXPECT_EQ(run(open, C, M, 1, 3), 0);
  EXPECT_EQ(run(open, B, M, 8, 0), 0);
  EXPECT_TRUE(check(without_mknod(allow)));
  EXPECT_TRUE(check(without_mknod(deny)));
}

}  // namespace
}  // namespace cloister::devices
