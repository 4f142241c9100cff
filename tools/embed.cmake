# Turns a data file into a C++ source defining cloister::embedded::seccomp_default_profile.
file(READ ${IN} content HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${content}")
file(WRITE ${OUT} "#include <string_view>\nnamespace cloister::embedded {\nstatic const char data[] = {${bytes} 0};\nextern const std::string_view seccomp_default_profile{data, sizeof(data) - 1};\n}\n")
