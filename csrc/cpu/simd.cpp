#include "cpu/simd.h"

namespace snnops {

static bool cpu_has_avx2() {
#if SNN_HAVE_AVX2
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool use_avx2() {
  static const bool has = cpu_has_avx2();
  if (!has) return false;
  // Read on every call (a getenv per op launch is noise) so that tests can
  // switch between the two code paths inside one process.
  const char* force = std::getenv("SNNOPS_CPU_ISA");
  return !(force != nullptr && std::strcmp(force, "generic") == 0);
}

static bool cpu_has_avx512() {
#if SNN_HAVE_AVX2
  __builtin_cpu_init();
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

bool use_avx512() {
  static const bool has = cpu_has_avx512();
  if (!has) return false;
  const char* force = std::getenv("SNNOPS_CPU_ISA");
  return !(force != nullptr && (std::strcmp(force, "generic") == 0 || std::strcmp(force, "avx2") == 0));
}

}  // namespace snnops

extern "C" const char* snnops_cpu_isa() {
  return snnops::use_avx512() ? "avx512" : snnops::use_avx2() ? "avx2" : "generic";
}
