#include "sparseflow/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <mutex>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define SPARSEFLOW_X86 1
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace sparseflow {
namespace {

#ifdef SPARSEFLOW_X86
unsigned long long read_xcr0() {
  unsigned int eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#ifdef SPARSEFLOW_X86
  unsigned int eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
  const bool osxsave = ecx & (1u << 27);
  f.fma = ecx & (1u << 12);
  if (!osxsave) return f;
  const unsigned long long xcr0 = read_xcr0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;
  f.os_saves_zmm = (xcr0 & 0xE6) == 0xE6;
  const bool os_tiles = (xcr0 & (3ull << 17)) == (3ull << 17);
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return f;
  f.avx2 = os_ymm && (ebx & (1u << 5));
  if (f.os_saves_zmm) {
    f.avx512f = ebx & (1u << 16);
    f.avx512dq = ebx & (1u << 17);
    f.avx512bw = ebx & (1u << 30);
    f.avx512vl = ebx & (1u << 31);
    f.avx512_vnni = ecx & (1u << 11);
    f.avx512_fp16 = edx & (1u << 23);
  }
  if (os_tiles) {
    f.amx_bf16 = edx & (1u << 22);
    f.amx_tile = edx & (1u << 24);
    f.amx_int8 = edx & (1u << 25);
  }
  unsigned int eax1, ebx1, ecx1, edx1;
  if (f.os_saves_zmm && __get_cpuid_count(7, 1, &eax1, &ebx1, &ecx1, &edx1)) {
    f.avx512_bf16 = eax1 & (1u << 5);
  }
#endif
  return f;
}

std::once_flag g_select_once;
std::atomic<int> g_selected{0};

void init_selection() {
  CpuIsa isa = detected_cpu_isa();
  if (const char* env = std::getenv("SPARSEFLOW_CPU_ISA")) {
    CpuIsa wanted;
    if (parse_cpu_isa(env, &wanted) && wanted < isa) isa = wanted;
  }
  g_selected.store(static_cast<int>(isa));
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kPortable: return "portable";
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx512Vnni: return "avx512_vnni";
    case CpuIsa::kAvx512Bf16: return "avx512_bf16";
    case CpuIsa::kAmx: return "amx";
  }
  return "unknown";
}

bool parse_cpu_isa(const std::string& name, CpuIsa* out) {
  for (int i = 0; i <= static_cast<int>(CpuIsa::kAmx); ++i) {
    if (name == cpu_isa_name(static_cast<CpuIsa>(i))) {
      *out = static_cast<CpuIsa>(i);
      return true;
    }
  }
  return false;
}

bool request_amx_permission() {
  static const bool granted = [] {
    const CpuFeatures& f = cpu_features();
    if (!(f.amx_tile && f.amx_int8 && f.amx_bf16)) return false;
#if defined(__linux__) && defined(SPARSEFLOW_X86)
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  return granted;
}

namespace {
std::atomic<bool> g_amx_emulation{false};
}

void set_amx_emulation(bool on) { g_amx_emulation.store(on); }
bool amx_emulation() { return g_amx_emulation.load(std::memory_order_relaxed); }

CpuIsa detected_cpu_isa() {
  const CpuFeatures& f = cpu_features();
  if (!(f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.fma)) return CpuIsa::kPortable;
  if (!f.avx512_vnni) return CpuIsa::kAvx512;
  if (!f.avx512_bf16) return CpuIsa::kAvx512Vnni;
  if (!request_amx_permission()) return CpuIsa::kAvx512Bf16;
  return CpuIsa::kAmx;
}

CpuIsa selected_cpu_isa() {
  std::call_once(g_select_once, init_selection);
  return static_cast<CpuIsa>(g_selected.load(std::memory_order_relaxed));
}

CpuIsa set_cpu_isa(CpuIsa isa) {
  std::call_once(g_select_once, init_selection);
  const CpuIsa best = detected_cpu_isa();
  if (isa > best) isa = best;
  g_selected.store(static_cast<int>(isa));
  return isa;
}

}  // namespace sparseflow
