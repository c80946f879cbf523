// The x86 instruction sets qlayers' CPU loops choose at run time, each asked of the CPU once.
// GCC and Clang's __builtin_cpu_supports; on other compilers and architectures every answer is
// false and the portable loops run. Not for files built with -mavx2 (the *_avx2.cpp sources): an
// inline function compiled there may carry AVX2 instructions into the portable build.
#pragma once

namespace qlayers {
namespace cpu {
namespace features {

#if defined(__x86_64__) && defined(__GNUC__)
inline bool avx2() {
  static const bool supported = __builtin_cpu_supports("avx2");
  return supported;
}
inline bool fma() {
  static const bool supported = __builtin_cpu_supports("fma");
  return supported;
}
inline bool f16c() {
  static const bool supported = __builtin_cpu_supports("f16c");
  return supported;
}
#else
inline bool avx2() { return false; }
inline bool fma() { return false; }
inline bool f16c() { return false; }
#endif

}  // namespace features
}  // namespace cpu
}  // namespace qlayers
