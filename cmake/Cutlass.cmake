# CUTLASS 4.2 C++ headers from the committed PyPI wheel (third_party/cutlass), unpacked at configure time
# (< 1 s, no network: the GPU machines have none).
set(_cutlass_wheel "${CMAKE_CURRENT_SOURCE_DIR}/third_party/cutlass/nvidia_cutlass-4.2.0.0-py3-none-any.whl")
set(_cutlass_dir "${CMAKE_CURRENT_BINARY_DIR}/cutlass-4.2.0")
if(NOT EXISTS "${_cutlass_dir}/cutlass_library/source/include/cutlass/cutlass.h")
  file(ARCHIVE_EXTRACT INPUT "${_cutlass_wheel}" DESTINATION "${_cutlass_dir}"
       PATTERNS "cutlass_library/source/include/*" "cutlass_library/source/tools/util/include/*")
endif()
set(CUTLASS_INCLUDE_DIRS
    "${_cutlass_dir}/cutlass_library/source/include"
    "${_cutlass_dir}/cutlass_library/source/tools/util/include")
message(STATUS "sparseflow: CUTLASS headers in ${_cutlass_dir}")
