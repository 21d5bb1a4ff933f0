# A light imported target for libtorch, asked from the interpreter that builds us.
# find_package(Torch) with the CUDA torch demands a full CUDA toolkit, adds 11 archs and fails to link
# nvrtc on these machines; we need only headers, c10/torch_cpu (+ c10_cuda/torch_cuda) and the C++ ABI flag.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "import torch, os, sys
from torch.utils import cpp_extension as ce
print(';'.join(ce.include_paths()))
print(os.path.join(os.path.dirname(torch.__file__), 'lib'))
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(torch.__version__)
print(torch.version.cuda or 'cpu')"
  OUTPUT_VARIABLE _torch_info
  RESULT_VARIABLE _torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "sparseflow: cannot import torch from ${Python_EXECUTABLE}. "
                      "Build with `pip install --no-build-isolation .` in a venv that has torch.")
endif()
string(REPLACE "\n" ";" _torch_info "${_torch_info}")
list(LENGTH _torch_info _n)
math(EXPR _i_lib "${_n} - 4")
math(EXPR _i_abi "${_n} - 3")
math(EXPR _i_ver "${_n} - 2")
math(EXPR _i_cuda "${_n} - 1")
list(GET _torch_info ${_i_lib} TORCH_LIB_DIR)
list(GET _torch_info ${_i_abi} TORCH_CXX11_ABI)
list(GET _torch_info ${_i_ver} TORCH_VERSION)
list(GET _torch_info ${_i_cuda} TORCH_CUDA_VERSION)
list(SUBLIST _torch_info 0 ${_i_lib} TORCH_INCLUDE_DIRS)
if(TORCH_CUDA_VERSION STREQUAL "cpu")
  set(TORCH_CUDA_VERSION "")
endif()
message(STATUS "sparseflow: torch ${TORCH_VERSION} (cuda '${TORCH_CUDA_VERSION}') at ${TORCH_LIB_DIR}")

function(_sf_torch_lib var name)
  find_library(${var} ${name} PATHS "${TORCH_LIB_DIR}" NO_DEFAULT_PATH REQUIRED)
endfunction()
_sf_torch_lib(TORCH_C10_LIB c10)
_sf_torch_lib(TORCH_CPU_LIB torch_cpu)
_sf_torch_lib(TORCH_PYTHON_LIB torch_python)

add_library(torch_light INTERFACE)
target_include_directories(torch_light SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
target_link_libraries(torch_light INTERFACE ${TORCH_C10_LIB} ${TORCH_CPU_LIB})
target_compile_definitions(torch_light INTERFACE _GLIBCXX_USE_CXX11_ABI=${TORCH_CXX11_ABI})

if(TORCH_CUDA_VERSION)
  find_library(TORCH_C10_CUDA_LIB c10_cuda PATHS "${TORCH_LIB_DIR}" NO_DEFAULT_PATH)
  find_library(TORCH_CUDA_LIB torch_cuda PATHS "${TORCH_LIB_DIR}" NO_DEFAULT_PATH)
endif()
