// sparseflow._C: build information and CPU feature queries. Every op is a torch custom op (csrc/ops.cpp);
// the only tensors that pass through pybind11 are the arguments of the direct bindings of the per-call ops
// (csrc/op_bindings.cpp), which call those same ops through the dispatcher. Importing this module also
// registers the CPU kernels, which are linked into the same shared object.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "bsr/bsr.h"
#include "sparseflow/build_info.h"
#include "sparseflow/cpu_features.h"

namespace py = pybind11;
using sparseflow::CpuIsa;

namespace sparseflow {
void bind_ops(py::module_& m);  // csrc/op_bindings.cpp
}

namespace {

py::dict build_info() {
  py::dict d;
  d["version"] = SPARSEFLOW_VERSION;
  d["torch_version"] = SPARSEFLOW_TORCH_VERSION;
  d["torch_cuda_version"] = SPARSEFLOW_TORCH_CUDA_VERSION;
  d["cuda_enabled"] = bool(SPARSEFLOW_WITH_CUDA);
  d["cuda_archs"] = SPARSEFLOW_CUDA_ARCHS;
  d["nvcc_version"] = SPARSEFLOW_NVCC_VERSION;
  d["cxx_compiler"] = SPARSEFLOW_CXX_COMPILER;
  d["build_type"] = SPARSEFLOW_BUILD_TYPE;
  d["sanitizers"] = SPARSEFLOW_SANITIZERS;
#ifdef _OPENMP
  d["openmp"] = true;  // at::parallel_for splits work across torch's threads
#else
  d["openmp"] = false;
#endif
  return d;
}

py::dict cpu_features() {
  const auto& f = sparseflow::cpu_features();
  py::dict d;
  d["avx2"] = f.avx2;
  d["fma"] = f.fma;
  d["avx512f"] = f.avx512f;
  d["avx512bw"] = f.avx512bw;
  d["avx512vl"] = f.avx512vl;
  d["avx512dq"] = f.avx512dq;
  d["avx512_vnni"] = f.avx512_vnni;
  d["avx512_bf16"] = f.avx512_bf16;
  d["avx512_fp16"] = f.avx512_fp16;
  d["amx_tile"] = f.amx_tile;
  d["amx_int8"] = f.amx_int8;
  d["amx_bf16"] = f.amx_bf16;
  return d;
}

std::string set_cpu_isa(const std::string& name) {
  CpuIsa isa;
  if (!sparseflow::parse_cpu_isa(name, &isa)) {
    throw py::value_error("set_cpu_isa: unknown ISA '" + name +
                          "'; expected one of portable, avx512, avx512_vnni, avx512_bf16, amx");
  }
  return sparseflow::cpu_isa_name(sparseflow::set_cpu_isa(isa));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sparseflow build information and CPU features (ops live in torch.ops.sparseflow)";
  m.def("build_info", &build_info, "How this copy of sparseflow was built.");
  m.def("cpu_features", &cpu_features, "CPU features read with CPUID/XGETBV.");
  m.def("detected_cpu_isa", [] { return std::string(cpu_isa_name(sparseflow::detected_cpu_isa())); },
        "Best ISA level this CPU and OS support.");
  m.def("selected_cpu_isa", [] { return std::string(cpu_isa_name(sparseflow::selected_cpu_isa())); },
        "ISA level the CPU kernels use now (SPARSEFLOW_CPU_ISA or set_cpu_isa lower it).");
  m.def("set_cpu_isa", &set_cpu_isa, py::arg("isa"),
        "Select the CPU ISA level (clamped to what the CPU supports); returns the level in force.");
  sparseflow::bind_ops(m);
  m.def("amx_status", [] { return std::string(sparseflow::bsr::amx_status()); },
        "Whether the AMX bsr_linear kernels run: unavailable, emulated, active or off: self-check failed.");
  m.def("set_amx_emulation", [](bool on) {
        const bool before = sparseflow::amx_emulation();
        sparseflow::set_amx_emulation(on);
        return before;
      }, py::arg("on"),
        "Testing aid: run the AMX tile kernels with emulated tiles on a CPU without AMX (slow); returns the "
        "previous setting.");
  m.def("amx_self_check", [](bool emulated) {
        namespace bsr = sparseflow::bsr;
        const CpuIsa need = emulated ? CpuIsa::kAvx512Vnni : CpuIsa::kAmx;
        if (sparseflow::selected_cpu_isa() < need) {
          throw py::value_error(std::string("amx_self_check: needs the ") + cpu_isa_name(need) +
                                " ISA level; selected is " + cpu_isa_name(sparseflow::selected_cpu_isa()));
        }
        py::dict d;
        d["int8"] = bsr::int8_panel_kernel_mismatches(emulated ? &bsr::linear_int8_amx_emulated : &bsr::linear_int8_amx);
        d["bf16"] = bsr::bf16_panel_kernel_mismatches(emulated ? &bsr::linear_bf16_amx_emulated : &bsr::linear_bf16_amx);
        return d;
      }, py::arg("emulated"),
        "The AMX kernels' self-check against the AVX-512 kernels: per dtype, the number of outputs that differ. "
        "Needs AVX512_VNNI, and AMX unless emulated.");
  m.def("request_amx_permission", &sparseflow::request_amx_permission,
        "Ask Linux for AMX tile data (once per process); returns whether AMX may be used.");
}
