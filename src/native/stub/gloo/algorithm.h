// The torch wheel compiles Gloo into libtorch_cpu.so but ships none of its headers, and
// c10d/ProcessGroupGloo.hpp includes five of them. These stand-ins declare only what that
// header names, so it parses; nothing here is defined or instantiated by selfsup.
#pragma once
