# Per-file ISA flags, never a host-tuned -march: the wheel must run on any x86-64; kernels are chosen at run
# time by CPUID (csrc/include/sparseflow/cpu_features.h). Files carrying these flags stay torch-free so
# AVX-512 code cannot leak into inline functions shared with the rest of the program (ODR).
set(SPARSEFLOW_ISA_AVX512 "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mfma;-mf16c")
set(SPARSEFLOW_ISA_AVX512_VNNI "${SPARSEFLOW_ISA_AVX512};-mavx512vnni")
set(SPARSEFLOW_ISA_AVX512_BF16 "${SPARSEFLOW_ISA_AVX512};-mavx512bf16")
set(SPARSEFLOW_ISA_AMX "${SPARSEFLOW_ISA_AVX512_BF16};-mavx512vnni;-mamx-tile;-mamx-int8;-mamx-bf16")

# sparseflow_isa_sources(<isa> files...): tag sources with the flags of one ISA level.
function(sparseflow_isa_sources isa)
  string(TOUPPER "${isa}" _isa)
  foreach(f IN LISTS ARGN)
    set_source_files_properties(${f} PROPERTIES COMPILE_OPTIONS "${SPARSEFLOW_ISA_${_isa}}")
  endforeach()
endfunction()
