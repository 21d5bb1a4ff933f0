// sm80 2:4 linear: CUTLASS 2.x sparse GEMM (mma.sp m16n8k32) with a fused epilogue. Torch-free; included
// by one .cu file per input dtype (nm_linear_<dtype>_sm80.cu) so the instantiations build in parallel.
//
// The problem is transposed: D[out, tokens] = W[out, in] * x^T, so the sparse weight is operand A, x is
// operand B as column-major [in, tokens] (x's own row-major storage), and D is written column-major,
// which is y[tokens, out] row-major: no transpose pass, no workspace.
#pragma once

#include <cuda_runtime.h>

#include <atomic>

#include "cutlass/cutlass.h"
#include "cutlass/gemm/device/gemm_sparse_with_visitor.h"  // before the visitors: they use its declarations
#include "cutlass/epilogue/threadblock/fusion/visitors.hpp"
#include "cutlass/numeric_conversion.h"
#include "nm_cutlass.h"
#include "nm_linear_configs.h"

namespace sparseflow::nm::cutlass2x {

CUTLASS_DEVICE float activate(float v, int activation) {
  switch (activation) {
    case int(Activation::kRelu): return v < 0.f ? 0.f : v;  // keeps NaN, like torch.relu
    case int(Activation::kGelu): return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));  // exact (erf) GELU
    case int(Activation::kSilu): return v / (1.f + expf(-v));
    default: return v;
  }
}

// The whole epilogue as one visitor node: y = act(acc + bias[row]), stored with y's strides.
// CUTLASS's own store visitor writes 16-byte vectors along N, which would need y column-major; here N (the
// token) is y's strided dimension, so each element is stored on its own. Rows >= `rows` (the zero rows
// that pad the packed weight to 32) are neither read from bias nor stored.
template <class ThreadMap, class ElementOut, class ElementBias>
struct LinearEpilogue {
  struct Arguments {
    ElementOut* y = nullptr;
    int64_t ld_y = 0;  // elements between tokens
    void const* bias = nullptr;  // ElementBias, or float when bias_fp32
    bool bias_fp32 = false;
    int rows = 0;  // out_features
    int cols = 0;  // tokens
    int activation = 0;
  };
  using Params = Arguments;
  struct SharedStorage {};

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) {
    return args;
  }

  CUTLASS_HOST_DEVICE LinearEpilogue() {}
  CUTLASS_HOST_DEVICE LinearEpilogue(Params const& params, SharedStorage const&) : params_ptr(&params) {}

  Params const* params_ptr = nullptr;

  template <class GTensor, class RTensor, class CTensor, class ColTensor>
  struct Callbacks : cutlass::epilogue::threadblock::EmptyCallbacks {
    CUTLASS_DEVICE Callbacks(GTensor&& g, RTensor&& r, CTensor&& c, ColTensor&& bias, Params const* params)
        : gY(cute::forward<GTensor>(g)), rY(cute::forward<RTensor>(r)), cY(cute::forward<CTensor>(c)),
          rBias(cute::forward<ColTensor>(bias)), params(params) {}

    GTensor gY;  // (VECTOR, FRAGMENT_COLUMN, FRAGMENT_ROW, STEP) in global memory
    RTensor rY;  // (VECTOR, FRAGMENT_COLUMN, FRAGMENT_ROW) of the current step, in registers
    CTensor cY;  // coordinates of gY
    ColTensor rBias;  // (FRAGMENT_ROW, STEP)
    Params const* params;

    template <class ElementAccumulator, int FragmentSize>
    CUTLASS_DEVICE auto visit(int iter_idx, int row_idx, int column_idx, int frg_idx,
                              cutlass::Array<ElementAccumulator, FragmentSize> const& frg_acc) {
      const float bias = rBias(row_idx, iter_idx);
      cutlass::NumericConverter<ElementOut, float> convert;
      cutlass::Array<ElementOut, FragmentSize> out;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < FragmentSize; ++i) {
        out[i] = convert(activate(float(frg_acc[i]) + bias, params->activation));
      }
      cute::recast<cutlass::Array<ElementOut, FragmentSize>>(cute::coalesce(rY))(frg_idx) = out;
      return out;
    }

    CUTLASS_DEVICE void end_step(int step_idx) {
      auto dst = gY(cute::_, cute::_, cute::_, step_idx);
      auto crd = cY(cute::_, cute::_, cute::_, step_idx);
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < cute::size(rY); ++i) {
        auto c = crd(i);
        if (cute::get<0>(c) < params->rows && cute::get<1>(c) < params->cols) dst(i) = rY(i);
      }
    }
  };

  template <class ProblemShape>
  CUTLASS_DEVICE auto get_callbacks(cutlass::gemm::GemmCoord tile_offset, int thread_idx,
                                    ProblemShape problem_shape) {
    using namespace cute;
    Params const& p = *params_ptr;
    Tensor mY = make_tensor(make_gmem_ptr(p.y), problem_shape, make_stride(_1{}, p.ld_y, int64_t(0)));
    Tensor cMN = make_identity_tensor(problem_shape);
    Tensor gY = group_modes<3, 6>(ThreadMap::partition(mY, thread_idx, tile_offset));
    Tensor cY = group_modes<3, 6>(ThreadMap::partition(cMN, thread_idx, tile_offset));
    Tensor rY = make_tensor<ElementOut>(take<0, 3>(shape(gY)));

    // The bias of this thread's rows, read once (it does not change along tokens).
    Tensor cCol = group_modes<1, 4>(ThreadMap::partition(cMN, thread_idx, tile_offset)(_0{}, _0{}, _, _, _, _));
    Tensor rBias = make_tensor<float>(shape(cCol));
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size(cCol); ++i) {
      const int row = get<0>(cCol(i));
      float b = 0.f;
      if (p.bias != nullptr && row < p.rows) {
        b = p.bias_fp32 ? static_cast<float const*>(p.bias)[row] : float(static_cast<ElementBias const*>(p.bias)[row]);
      }
      rBias(i) = b;
    }
    return Callbacks<decltype(gY), decltype(rY), decltype(cY), decltype(rBias)>(
        cute::move(gY), cute::move(rY), cute::move(cY), cute::move(rBias), params_ptr);
  }
};

template <class Element, class ElementOut, int kConfig>
struct Sm80Linear {
  static constexpr TileConfig kTile = kSm80Tiles[kConfig];
  using ThreadblockShape = cutlass::gemm::GemmShape<kTile.tb_m, kTile.tb_n, kTile.tb_k>;
  using WarpShape = cutlass::gemm::GemmShape<kTile.warp_m, kTile.warp_n, kTile.warp_k>;
  using InstructionShape = cutlass::gemm::GemmShape<16, 8, 32>;
  static constexpr int kAlignOut = 128 / cutlass::sizeof_bits<ElementOut>::value;
  using ThreadMap = cutlass::epilogue::threadblock::OutputTileThreadLayout<ThreadblockShape, WarpShape,
                                                                            ElementOut, kAlignOut, 1>;
  using Epilogue = LinearEpilogue<ThreadMap, ElementOut, Element>;
  using Swizzle = cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>;
  // ElementC only sizes the epilogue's internal fragments (our visitor stores D itself).
  using Gemm = cutlass::gemm::device::SparseGemmWithVisitor<
      Element, cutlass::layout::RowMajor, Element, cutlass::layout::ColumnMajor, ElementOut,
      cutlass::layout::RowMajor, float, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, ThreadblockShape,
      WarpShape, InstructionShape, Epilogue, Swizzle, kTile.stages, 8, 8, cutlass::arch::OpMultiplyAdd, 1>;
  using Kernel = typename Gemm::GemmKernel;
  static_assert(Kernel::kSparse == 2 && Kernel::kElementsPerElementE == 8, "16-bit 2:4 metadata layout");
  static_assert(ThreadblockShape::kK == kColAlign, "packed weights are padded to the threadblock K");

  static const char* run(const LinearParams& p, cudaStream_t stream) {
    using ElementE = typename Kernel::ElementE;
    using LayoutE = typename Kernel::LayoutE;
    const cutlass::gemm::GemmCoord problem(int(p.rows_p), int(p.tokens), int(p.in_features));
    typename Kernel::Mma::IteratorA::TensorRef ref_a(
        static_cast<Element*>(const_cast<void*>(p.values)), cutlass::layout::RowMajor(p.in_features / 2));
    typename Kernel::Mma::IteratorB::TensorRef ref_b(static_cast<Element*>(const_cast<void*>(p.x)),
                                                     cutlass::layout::ColumnMajor(p.x_stride));
    typename Kernel::Mma::IteratorE::TensorRef ref_e(
        static_cast<ElementE*>(const_cast<void*>(p.meta)),
        LayoutE::packed({int(p.rows_p), int(p.in_features / kColsPerWord)}));
    typename Epilogue::Arguments epilogue{static_cast<ElementOut*>(p.y),
                                          p.out_features,
                                          p.bias,
                                          p.bias_fp32,
                                          int(p.out_features),
                                          int(p.tokens),
                                          int(p.activation)};
    Swizzle swizzle;
    const cutlass::gemm::GemmCoord tiles = swizzle.get_tiled_shape(
        problem, {ThreadblockShape::kM, ThreadblockShape::kN, ThreadblockShape::kK}, 1);
    const typename Kernel::Params params(problem, tiles, ref_a, ref_b, ref_e, epilogue);

    constexpr int kSmem = int(sizeof(typename Kernel::SharedStorage));
    if constexpr (kSmem >= (48 << 10)) {
      // Once per device (an attribute of the function in each context); not a stream operation, so
      // harmless under graph capture.
      static std::atomic<uint64_t> done_mask{0};
      int device = 0;
      if (cudaGetDevice(&device) != cudaSuccess) return "cudaGetDevice failed";
      const uint64_t bit = uint64_t{1} << (device & 63);
      if (!(done_mask.load() & bit)) {
        if (cudaFuncSetAttribute(cutlass::Kernel<Kernel>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem) !=
            cudaSuccess) {
          return "cudaFuncSetAttribute(MaxDynamicSharedMemorySize) failed: not enough shared memory per block";
        }
        done_mask.fetch_or(bit);
      }
    }
    cutlass::Kernel<Kernel><<<swizzle.get_grid_shape(tiles), Kernel::kThreadCount, kSmem, stream>>>(params);
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
  }
};

// Dispatch over the tile table for one input/output dtype pair.
template <class Element, class ElementOut>
const char* run_linear(const LinearParams& p, cudaStream_t stream) {
  static_assert(kNumSm80Tiles == 2, "add the new configuration to this switch");
  switch (choose_linear_config(p.tokens, p.out_features)) {
    case 0: return Sm80Linear<Element, ElementOut, 0>::run(p, stream);
    case 1: return Sm80Linear<Element, ElementOut, 1>::run(p, stream);
    default: return "sparseflow: no sm80 2:4 kernel configuration for this problem";
  }
}

}  // namespace sparseflow::nm::cutlass2x
