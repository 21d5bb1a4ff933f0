// Which GPUs this build's CUDA kernels run on, and a clear error for the others. Host code only (the
// torch-facing CUDA wrappers); asks the CUDA runtime directly (ATen/cuda/CUDAContext.h needs cuSPARSE
// headers that minimal toolkits lack).
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <string>
#include <string_view>

#include "sparseflow/build_info.h"

namespace sparseflow {

// Compute capability as major * 10 + minor.
inline int device_sm(int device) {
  int major = 0, minor = 0;
  TORCH_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
                  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess,
              "sparseflow: cannot read the compute capability of cuda:", device);
  return major * 10 + minor;
}

// True when one of the built archs (SPARSEFLOW_CUDA_ARCHS, e.g. "80;90a") has SASS that runs on `sm`:
// plain "XY" runs on every X.Z with Z >= Y; arch-specific "XYa" only on X.Y. (No PTX is embedded.)
inline bool built_for_sm(int sm) {
  std::string_view archs = SPARSEFLOW_CUDA_ARCHS;
  while (!archs.empty()) {
    const size_t end = archs.find(';');
    std::string_view arch = archs.substr(0, end);
    archs = end == std::string_view::npos ? std::string_view{} : archs.substr(end + 1);
    const bool specific = !arch.empty() && arch.back() == 'a';
    if (specific) arch.remove_suffix(1);
    int built = 0;
    for (char c : arch) built = built * 10 + (c - '0');
    if (specific ? built == sm : (built / 10 == sm / 10 && built % 10 <= sm % 10)) return true;
  }
  return false;
}

inline std::string built_archs_text() {
  std::string s;
  std::string_view archs = SPARSEFLOW_CUDA_ARCHS;
  for (char c : archs) {
    if (c == ';') {
      s += ", ";
    } else {
      if (s.empty() || s.back() == ' ') s += "sm";
      s += c;
    }
  }
  return s;
}

// Raises when this build has no kernel for the GPU `device`, naming both (e.g. "built for sm80, sm90a;
// this is sm_100").
inline int check_device_arch(const char* op, int device) {
  const int sm = device_sm(device);
  TORCH_CHECK(built_for_sm(sm), op, ": the CUDA kernels of this build are built for ", built_archs_text(),
              "; cuda:", device, " is sm_", sm, ". Rebuild with SPARSEFLOW_CUDA_ARCHS including it.");
  return sm;
}

}  // namespace sparseflow
