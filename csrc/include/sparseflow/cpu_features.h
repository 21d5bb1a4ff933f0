// CPU feature detection and the run-time ISA choice. Torch-free: used by the pybind11 module, the
// op wrappers and the microkernels alike.
#pragma once

#include <string>

namespace sparseflow {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool avx512_vnni = false;
  bool avx512_bf16 = false;
  bool avx512_fp16 = false;
  bool amx_tile = false;
  bool amx_int8 = false;
  bool amx_bf16 = false;
  bool os_saves_zmm = false;  // XCR0 says the OS saves AVX-512 state
};

// Read once with CPUID/XGETBV.
const CpuFeatures& cpu_features();

// ISA levels, each implying the ones before it. Kernels pick the highest level they implement that is
// <= selected_cpu_isa().
enum class CpuIsa : int {
  kPortable = 0,    // plain C++, any x86-64 (and any other architecture)
  kAvx512 = 1,      // AVX-512 F/BW/VL/DQ
  kAvx512Vnni = 2,  // + VPDPBUSD
  kAvx512Bf16 = 3,  // + VDPBF16PS
  kAmx = 4,         // + AMX tile/int8/bf16 (with the kernel's permission to use tile data)
};

const char* cpu_isa_name(CpuIsa isa);
// Parses "portable", "avx512", "avx512_vnni", "avx512_bf16", "amx"; returns false on anything else.
bool parse_cpu_isa(const std::string& name, CpuIsa* out);

// The best level this CPU and OS support (AMX only once the permission request succeeded).
CpuIsa detected_cpu_isa();

// The level kernels use: detected_cpu_isa(), lowered by the SPARSEFLOW_CPU_ISA environment variable
// (read at first use) or by set_cpu_isa(). Requests above the detected level are clamped.
CpuIsa selected_cpu_isa();

// Sets the level (clamped to detected_cpu_isa()); returns the level now in force.
CpuIsa set_cpu_isa(CpuIsa isa);

// Linux refuses AMX tile data (SIGILL) until the process asks with arch_prctl(ARCH_REQ_XCOMP_PERM).
// Asked once; returns whether AMX may be used.
bool request_amx_permission();

// Testing aid: run the AMX tile kernels with the tiles emulated in software (csrc/bsr/bsr_amx_tiles.h) where
// selected_cpu_isa() >= kAvx512Vnni, so that CPUs without AMX test them. Off by default; slow.
void set_amx_emulation(bool on);
bool amx_emulation();

}  // namespace sparseflow
