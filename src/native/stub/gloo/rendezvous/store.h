// The torch wheel compiles Gloo into libtorch_cpu.so but ships none of its headers, and
// c10d/ProcessGroupGloo.hpp includes five of them. These stand-ins declare only what that
// header names, so it parses; nothing here is defined or instantiated by selfsup.
#pragma once
#include <chrono>
#include <string>
#include <vector>
namespace gloo { namespace rendezvous {
class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::vector<char>& data) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual void wait(const std::vector<std::string>& keys) = 0;
  virtual void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) = 0;
};
}}
