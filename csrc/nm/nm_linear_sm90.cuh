// sm90a 2:4 linear: CUTLASS 3.x sparse GEMM (TMA + wgmma.sp, warp-specialized) built with the collective
// builders (cf. CUTLASS example 62), with an epilogue visitor tree: D = act(acc + bias) stored by TMA into y.
// Torch-free; included by one .cu file per input dtype (nm_linear_<dtype>_sm90.cu, built for sm_90a only).
//
// As on sm80 the problem is transposed: D[out, tokens] = W x^T with W the sparse operand A (K-major, the
// metadata in CUTLASS's sm90 layout, target 90 of nm_cutlass.h), x operand B (K-major: its own storage) and
// D column-major, which is y[tokens, out] row-major.
#pragma once

#include <cuda_runtime.h>

#include <atomic>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/callbacks.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/kernel_hardware_info.h"
#include "nm_cutlass.h"
#include "nm_linear_configs.h"

namespace sparseflow::nm::cutlass2x::sm90 {

CUTLASS_DEVICE float activate(float v, int activation) {
  switch (activation) {
    case int(Activation::kRelu): return v < 0.f ? 0.f : v;  // keeps NaN, like torch.relu
    case int(Activation::kGelu): return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));  // exact (erf) GELU
    case int(Activation::kSilu): return v / (1.f + expf(-v));
    default: return v;
  }
}

// act(acc + bias_x + bias_f32): one of the two bias vectors is null (its broadcast reads 0), so a bias in
// x's dtype and a float32 one share one kernel; the activation is a runtime argument (one kernel, not four).
struct BiasActivationArguments {
  int activation = 0;
};

template <class T>
struct BiasActivation {
  using Arguments = BiasActivationArguments;  // one type for every T: Sm90Compute names it via T = float
  template <int N>
  CUTLASS_DEVICE cutlass::Array<float, N> operator()(cutlass::Array<float, N> const& acc,
                                                     cutlass::Array<float, N> const& bias_x,
                                                     cutlass::Array<float, N> const& bias_f32,
                                                     Arguments const& args) const {
    cutlass::Array<float, N> out;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) out[i] = activate(acc[i] + bias_x[i] + bias_f32[i], args.activation);
    return out;
  }
};

template <class Element, class ElementOut, int kConfig>
struct Sm90Linear {
  static constexpr Sm90Tile kTile = kSm90Tiles[kConfig];
  static_assert(kTile.k == kColAlign, "the target-90 metadata layout is built for a K tile of 128");
  using TileShape = cute::Shape<cute::Int<kTile.m>, cute::Int<kTile.n>, cute::Int<kTile.k>>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using MainloopSchedule = cute::conditional_t<kTile.cooperative, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                                               cutlass::gemm::KernelTmaWarpSpecialized>;
  using EpilogueSchedule = cute::conditional_t<kTile.cooperative, cutlass::epilogue::TmaWarpSpecializedCooperative,
                                               cutlass::epilogue::TmaWarpSpecialized>;
  static constexpr int kAlignIn = 128 / cutlass::sizeof_bits<Element>::value;
  static constexpr int kAlignOut = 128 / cutlass::sizeof_bits<ElementOut>::value;
  using ColStride = cute::Stride<cute::_1, cute::_0, int64_t>;

  using BiasX = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, Element, float, ColStride, 1, true>;
  using BiasF32 = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float, ColStride, 1, true>;
  using Compute = cutlass::epilogue::fusion::Sm90Compute<BiasActivation, ElementOut, float,
                                                         cutlass::FloatRoundStyle::round_to_nearest>;
  using Fusion = cutlass::epilogue::fusion::Sm90EVT<Compute, cutlass::epilogue::fusion::Sm90AccFetch, BiasX, BiasF32>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, cutlass::layout::ColumnMajor, kAlignOut,
      ElementOut, cutlass::layout::ColumnMajor, kAlignOut, EpilogueSchedule, Fusion>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, Element, cutlass::layout::RowMajor, kAlignIn,
      Element, cutlass::layout::ColumnMajor, kAlignIn, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      MainloopSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using SparseConfig = typename CollectiveMainloop::SparseConfig;
  static_assert(typename SparseConfig::TensorEAtomM{} == kRowAlign && typename SparseConfig::TensorEAtomK{} == kColAlign,
                "metadata atoms differ from the target-90 layout in nm_cutlass.h");

  static const char* run(const LinearParams& p, cudaStream_t stream) {
    using namespace cute;
    const auto problem = make_shape(int(p.out_features), int(p.tokens), int(p.in_features), 1);
    // The target-90 packing writes exactly these layouts (rows padded beyond M are never read).
    const auto layout_a = SparseConfig::fill_layoutA(problem);
    const auto layout_e = SparseConfig::fill_layoutE(problem);
    using StrideB = typename Kernel::StrideB;
    using StrideD = typename Kernel::StrideD;
    const StrideB stride_b{int64_t(p.x_stride), _1{}, int64_t(0)};
    const StrideD stride_d{_1{}, int64_t(p.out_features), int64_t(0)};

    typename Gemm::Arguments args{};
    args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
    args.problem_shape = problem;
    args.mainloop = {static_cast<Element const*>(p.values), layout_a, static_cast<Element const*>(p.x), stride_b,
                     static_cast<typename CollectiveMainloop::ElementE const*>(p.meta), layout_e};
    const bool bias_f32 = p.bias != nullptr && p.bias_fp32;
    const bool bias_x = p.bias != nullptr && !p.bias_fp32;
    // Tree arguments: children in order (accumulator, bias in x's dtype, float32 bias), then the node.
    args.epilogue.thread = {
        {},
        {bias_x ? static_cast<Element const*>(p.bias) : nullptr, Element(0), ColStride{}},
        {bias_f32 ? static_cast<float const*>(p.bias) : nullptr, 0.f, ColStride{}},
        {int(p.activation)}};
    args.epilogue.ptr_C = nullptr;
    args.epilogue.dC = stride_d;
    args.epilogue.ptr_D = static_cast<ElementOut*>(p.y);
    args.epilogue.dD = stride_d;
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return "cudaGetDevice failed";
    args.hw_info.device_id = device;
    args.hw_info.sm_count = sm_count(device);

    if (Gemm::can_implement(args) != cutlass::Status::kSuccess) {
      return "the CUTLASS sm90 2:4 kernel cannot implement this problem (alignment)";
    }
    if (Gemm::get_workspace_size(args) != 0) return "the CUTLASS sm90 2:4 kernel asks for a workspace";
    if (const char* error = set_smem_attribute(device)) return error;
    typename Kernel::Params params = Kernel::to_underlying_arguments(args, nullptr);
    if (Gemm::run(params, stream) != cutlass::Status::kSuccess) {
      const cudaError_t err = cudaGetLastError();
      return err == cudaSuccess ? "CUTLASS sm90 kernel launch failed" : cudaGetErrorString(err);
    }
    return nullptr;
  }

  // Once per device: attributes of a function in each context (not stream work, so graph-capture safe).
  static const char* set_smem_attribute(int device) {
    constexpr int kSmem = Kernel::SharedStorageSize;
    if constexpr (kSmem >= (48 << 10)) {
      static std::atomic<uint64_t> done_mask{0};
      const uint64_t bit = uint64_t{1} << (device & 63);
      if (!(done_mask.load() & bit)) {
        if (cudaFuncSetAttribute(cutlass::device_kernel<Kernel>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 kSmem) != cudaSuccess) {
          return "cudaFuncSetAttribute(MaxDynamicSharedMemorySize) failed for the sm90 2:4 kernel";
        }
        done_mask.fetch_or(bit);
      }
    }
    return nullptr;
  }

  static int sm_count(int device) {
    static std::atomic<int> counts[64] = {};
    int c = counts[device & 63].load();
    if (c == 0) {
      cudaDeviceGetAttribute(&c, cudaDevAttrMultiProcessorCount, device);
      counts[device & 63].store(c);
    }
    return c;
  }
};

template <class Element, class ElementOut>
const char* run_linear(const LinearParams& p, cudaStream_t stream) {
  static_assert(kNumSm90Tiles == 2, "add the new configuration to this switch");
  switch (choose_sm90_config(p.tokens, p.out_features)) {
    case 0: return Sm90Linear<Element, ElementOut, 0>::run(p, stream);
    case 1: return Sm90Linear<Element, ElementOut, 1>::run(p, stream);
    default: return "sparseflow: no sm90 2:4 kernel configuration for this problem";
  }
}

}  // namespace sparseflow::nm::cutlass2x::sm90
