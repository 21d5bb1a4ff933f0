// CPU wrappers of bsr_pack / bsr_linear: checks, allocation, ISA and kernel choice, threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <new>
#include <numeric>
#include <type_traits>
#include <vector>

#include "bsr_common.h"
#include "sparseflow/cpu_features.h"
#include "sparseflow/float_args.h"

namespace sparseflow::bsr {
namespace {

// int8 batches up to this many tokens run the decode kernels (lanes = output channels, activations of 4
// tokens per gathered dword); larger ones the panel kernel (lanes = tokens). Measured crossover on
// AVX512_VNNI (`python -m sparseflow.bench cpu-linear`); for 16x1 at 4096^2 the decode is 1.1-1.4x faster
// than the panel kernel at M = 8 (50-90 %).
constexpr int64_t kInt8DecodeMaxTokens = 8;
// Tokens per task along M: the activation panels a thread re-reads for each of its block-rows stay in L2
// (16 tokens x K=4096 fp32 = 256 KiB per panel).
constexpr int64_t kFloatTokensPerTask = 32;
constexpr int64_t kInt8PanelsPerTask = 2;
// Quantizing and laying out int8 activations for the panel kernel: tokens per quantize task and input
// channels per panel-building task (a multiple of 16).
constexpr int64_t kQuantizeTokensPerTask = 4;
constexpr int64_t kPanelBuildColumns = 512;
// int8 and bf16 16x1 batches of at least this many tokens use the AMX kernels where they run: one tile product
// serves 16 tokens. NOT MEASURED (no AMX machine yet): the M >= 16, to be set by `sparseflow.bench cpu-linear`.
constexpr int64_t kAmxMinTokens = 16;
constexpr int64_t kAmxBf16PanelsPerTask = 4;
// Work of a block-row's epilogue in units of one block, for balancing threads.
constexpr int64_t kRowCost = 8;

// Activation scratch (quantized tokens, panels) kept per calling thread between calls: fresh multi-MB
// buffers would cost page faults on every call. Requests above kScratchKeepBytes get a temporary buffer.
constexpr size_t kScratchKeepBytes = size_t(64) << 20;
enum ScratchSlot { kSlotXq = 0, kSlotPanels, kSlotScale, kSlotZp, kSlots };

class Scratch {
 public:
  template <typename T>
  T* get(ScratchSlot slot, int64_t count) {
    const size_t bytes = std::max<size_t>(64, size_t(count) * sizeof(T));
    Buffer& b = buffers_[slot];
    if (bytes > kScratchKeepBytes) {
      temporaries_.push_back(at::empty({int64_t(bytes)}, at::TensorOptions().dtype(at::kByte)));
      return reinterpret_cast<T*>(temporaries_.back().data_ptr<uint8_t>());
    }
    if (bytes > b.size) {
      b.ptr.reset(static_cast<uint8_t*>(::operator new(bytes, std::align_val_t(64))));
      b.size = bytes;
    }
    return reinterpret_cast<T*>(b.ptr.get());
  }
  void release_temporaries() { temporaries_.clear(); }

 private:
  struct Free {
    void operator()(uint8_t* p) const { ::operator delete(p, std::align_val_t(64)); }
  };
  struct Buffer {
    std::unique_ptr<uint8_t, Free> ptr;
    size_t size = 0;
  };
  Buffer buffers_[kSlots];
  std::vector<at::Tensor> temporaries_;
};

Scratch& thread_scratch() {
  thread_local Scratch scratch;
  return scratch;
}

// Splits block-rows into `parts` contiguous ranges of about equal work (blocks + kRowCost per row).
std::vector<int64_t> split_rows(const int32_t* rowptr, int64_t block_rows, int64_t parts) {
  std::vector<int64_t> bounds(parts + 1, block_rows);
  bounds[0] = 0;
  const int64_t total = rowptr[block_rows] + kRowCost * block_rows;
  int64_t r = 0;
  for (int64_t p = 1; p < parts; ++p) {
    const int64_t target = total * p / parts;
    while (r < block_rows && rowptr[r] + kRowCost * r < target) ++r;
    bounds[p] = r;
  }
  return bounds;
}

void atomic_max(std::atomic<uint32_t>& a, uint32_t v) {
  uint32_t seen = a.load();
  while (v > seen && !a.compare_exchange_weak(seen, v)) {
  }
}

// Below this many block x token products a call runs on the calling thread, where waking the pool costs
// more: ~1.7 us with 2 threads, which ~4000 products repay at up to 8 tokens (~1 ns each; 3072x768 int8 4x1
// 95 %, one token: 43 -> 28 us), and ~32000 at more tokens (the panel kernels take ~0.2 ns each).
constexpr int64_t kMinParallelWorkFewTokens = 1 << 12;
constexpr int64_t kMinParallelWork = 1 << 15;

// Runs fn(row_begin, row_end, part_of_M) over rows x M-parts in parallel; returns the largest out-of-range index
// the kernels met (bsr.h).
template <typename Fn>
uint32_t run_tasks(const Weight& w, int64_t M, int64_t m_parts, Fn&& fn) {
  const int64_t min_work = M <= kInt8DecodeMaxTokens ? kMinParallelWorkFewTokens : kMinParallelWork;
  const bool small = int64_t(w.rowptr[w.block_rows]) * M < min_work;
  const int64_t parts = small ? 1 : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), w.block_rows));
  const std::vector<int64_t> bounds = split_rows(w.rowptr, w.block_rows, parts);
  std::atomic<uint32_t> max_index{0};
  at::parallel_for(0, parts * m_parts, small ? parts * m_parts : 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t part = t / m_parts, mp = t % m_parts;
      if (bounds[part] < bounds[part + 1]) atomic_max(max_index, fn(bounds[part], bounds[part + 1], mp));
    }
  });
  return max_index.load();
}

// ------------------------------------------------------------------------------------------------ pack

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bsr_pack_cpu(
    const at::Tensor& crow_in, const at::Tensor& col_in, const at::Tensor& values_in, int64_t out_features,
    int64_t in_features, c10::string_view kernel) {
  PackRequest req = check_pack_args(crow_in, col_in, values_in, out_features, in_features, std::string(kernel));
  const at::Tensor crow = crow_in.contiguous(), col = col_in.contiguous(), values = values_in.contiguous();
  CanonicalBsr& w = req.w;
  w.crow = crow.data_ptr<int32_t>();
  w.col = col.data_ptr<int32_t>();
  w.values = values.data_ptr();
  fail_canonical(validate_canonical(w), crow, col, w);

  const Layout layout = req.layout;
  const int64_t block_rows = ceil_div(out_features, native_block(layout).rows);
  // Block counts per block-row, plain and (4x1) with tiles of span 16, which are used when they cost at most 1/4
  // more blocks (bsr.h).
  const bool try_span = has_tile_span(layout);
  at::Tensor counts = at::empty({try_span ? 2 : 1, block_rows}, crow.options());
  int32_t* cp = counts.data_ptr<int32_t>();
  int32_t* span_cp = try_span ? cp + block_rows : nullptr;
  at::parallel_for(0, block_rows, 16, [&](int64_t b, int64_t e) {
    pack_count(w, layout, b, e, cp + b, span_cp == nullptr ? nullptr : span_cp + b);
  });
  int64_t total = std::accumulate(cp, cp + block_rows, int64_t(0));
  int span = 0;
  if (try_span) {
    const int64_t span_total = std::accumulate(span_cp, span_cp + block_rows, int64_t(0));
    if (4 * span_total <= 5 * total) {
      span = kTileSpan;
      total = span_total;
      cp = span_cp;
    }
  }
  TORCH_CHECK_VALUE(total <= INT32_MAX, kPackOp, ": more than 2^31 packed blocks");
  const NativeBlock nb = native_block(layout);
  at::Tensor rowptr = at::empty({block_rows + 1}, crow.options());
  int32_t* rp = rowptr.data_ptr<int32_t>();
  rp[0] = 0;
  for (int64_t r = 0; r < block_rows; ++r) rp[r + 1] = rp[r] + cp[r];
  const bool is_int8 = is_int8_layout(layout);
  at::Tensor indices = at::empty({total}, crow.options().dtype(at::kShort));
  at::Tensor packed = is_tiled_layout(layout) ? at::empty({total / 4, nb.rows, 4}, values.options())
                                              : at::empty({total, int64_t(nb.rows) * nb.cols}, values.options());
  at::Tensor compensation = at::zeros({is_int8 ? out_features : 0}, crow.options());
  auto* idx = reinterpret_cast<uint16_t*>(indices.data_ptr<int16_t>());
  int32_t* comp = is_int8 ? compensation.data_ptr<int32_t>() : nullptr;
  at::parallel_for(0, block_rows, 16, [&](int64_t b, int64_t e) {
    pack_fill(w, layout, span, b, e, rp, idx, packed.data_ptr(), comp);
  });
  at::Tensor meta = at::zeros({kMetaSize}, crow.options().dtype(at::kLong));
  int64_t* mp = meta.data_ptr<int64_t>();
  mp[kMetaVersion] = kFormatVersion;
  mp[kMetaLayout] = static_cast<int64_t>(layout);
  mp[kMetaDtype] = static_cast<int64_t>(w.dtype);
  mp[kMetaOut] = out_features;
  mp[kMetaIn] = in_features;
  mp[kMetaNnz] = total;
  mp[kMetaTileSpan] = span;
  return {meta, rowptr, indices, packed, compensation};
}

// ------------------------------------------------------------------------------------------------ linear

// The block-row pointers are read on every call (O(out_features / block rows)); the indices are checked
// inside the kernels, which clamp them and report the largest one.
void check_rowptr(const Weight& w, int64_t nnz) {
  const int group = native_block(w.layout).group;
  TORCH_CHECK_INDEX(w.rowptr[0] == 0, kLinearOp, ": rowptr[0] must be 0, got ", w.rowptr[0],
                    " (corrupted packed weight?)");
  // One branch-free pass (vectorised): a 64-bit division per block-row took ~9 ns a row, 6 us of a
  // 58 us one-token call on 3072x768 (one thread).
  TORCH_INTERNAL_ASSERT((group & (group - 1)) == 0, "tile groups are powers of two");
  const int64_t misfit = group - 1;
  int64_t bad = 0;
  for (int64_t r = 0; r < w.block_rows; ++r) {
    const int64_t count = int64_t(w.rowptr[r + 1]) - w.rowptr[r];
    bad |= (count & misfit) | (count >> 63);
  }
  for (int64_t r = 0; bad != 0 && r < w.block_rows; ++r) {  // find the row to report
    const int64_t count = int64_t(w.rowptr[r + 1]) - w.rowptr[r];
    TORCH_CHECK_INDEX(count >= 0 && (count & misfit) == 0, kLinearOp, ": rowptr is corrupted at block-row ", r,
                      ": ", w.rowptr[r], " -> ", w.rowptr[r + 1], " (must grow by a multiple of ", group, ")");
  }
  TORCH_CHECK_INDEX(w.rowptr[w.block_rows] == nnz, kLinearOp, ": rowptr[-1] = ", w.rowptr[w.block_rows],
                    " but the weight has ", nnz, " blocks (corrupted packed weight?)");
  TORCH_CHECK_INDEX(nnz == 0 || w.K > 0, kLinearOp, ": in_features=0 but the weight stores ", nnz,
                    " blocks (corrupted packed weight?)");
}

void check_max_index(const Weight& w, uint32_t max_index) {
  TORCH_CHECK_INDEX(max_index != kTileSpanBroken, kLinearOp, ": meta says every tile lies within ", kTileSpan,
                    " input channels, but a tile's indices span further (corrupted packed weight?)");
  TORCH_CHECK_INDEX(w.rowptr[w.block_rows] == 0 || max_index < w.K, kLinearOp, ": a packed index is ", max_index,
                    ", out of range for in_features=", w.K, " (corrupted packed weight?)");
}

// The AMX kernels run once this process has seen them agree with the AVX-512 ones on their self-check problems
// (bsr.h): they have not yet run on a real AMX CPU, and a mistake there must cost speed, not correct results.
bool amx_checked() {
  static const bool passed = [] {
    const int64_t int8 = int8_panel_kernel_mismatches(&linear_int8_amx);
    const int64_t bf16 = bf16_panel_kernel_mismatches(&linear_bf16_amx);
    if (int8 != 0 || bf16 != 0) {
      TORCH_WARN("sparseflow: the AMX kernels' self-check found outputs that differ from the AVX-512 kernels' (int8: ",
                 int8, ", bf16: ", bf16, "); AMX stays off in this process (please report this CPU)");
    }
    return int8 == 0 && bf16 == 0;
  }();
  return passed;
}

// The AMX kernels (hardware or, for tests, emulated) a call may use, or null. Read once per call, so the choice
// and the run agree even if another thread switches the emulation meanwhile; on an AMX CPU the first read runs
// the self-check, so only a call that could use AMX reads them.
struct AmxKernels {
  Int8PanelKernel int8 = nullptr;
  Bf16PanelKernel bf16 = nullptr;
};

AmxKernels amx_kernels(CpuIsa isa) {
  if (amx_emulation() && isa >= CpuIsa::kAvx512Vnni) return {&linear_int8_amx_emulated, &linear_bf16_amx_emulated};
  if (isa >= CpuIsa::kAmx && amx_checked()) return {&linear_int8_amx, &linear_bf16_amx};
  return {};
}

// The kernel bsr_linear runs for a weight and token count at an ISA level. run_float / run_int8 follow it and
// cpu_kernel_name reports it (sparseflow.info, the bench), so the report is the dispatch itself.
enum class CpuPath {
  kFloatPortable, kF16x1Avx512, kF1x16Avx512, kF4x1Avx512, kF4x1Decode, kF4x1DecodeSpan16, kBf16x16Avx512Bf16, kBf16Amx,
  kBf4x1Avx512Bf16, kBf4x1DecodeAvx512Bf16, kBf4x1DecodeSpan16Avx512Bf16,
  kInt8Portable, kInt8Decode16x1, kInt8Decode4x1, kInt8Decode4x1Span16, kInt8PanelsVnni, kInt8Amx,
};

// *amx: the AMX kernels where the weight and M could use them (else left null), for the run to call.
CpuPath choose_cpu_path(const Weight& w, int64_t M, CpuIsa isa, AmxKernels* amx) {
  const bool bf16_16x1 = w.layout == Layout::kF16x1 && w.dtype == DType::kBF16;
  if (M >= kAmxMinTokens && (w.layout == Layout::kInt8_16x1 || bf16_16x1)) *amx = amx_kernels(isa);
  if (w.dtype == DType::kS8) {
    if (isa < CpuIsa::kAvx512Vnni) return CpuPath::kInt8Portable;
    if (M <= kInt8DecodeMaxTokens) {
      if (w.layout == Layout::kInt8_16x1) return CpuPath::kInt8Decode16x1;
      return span16_decode(w, M) ? CpuPath::kInt8Decode4x1Span16 : CpuPath::kInt8Decode4x1;
    }
    return amx->int8 != nullptr ? CpuPath::kInt8Amx : CpuPath::kInt8PanelsVnni;
  }
  if (w.layout == Layout::kFloat4x1) {
    if (isa < CpuIsa::kAvx512) return CpuPath::kFloatPortable;
    const bool span16 = w.tile_span == kTileSpan;
    if (w.dtype == DType::kBF16 && isa >= CpuIsa::kAvx512Bf16) {
      if (M > kFloat4x1DecodeMaxTokens) return CpuPath::kBf4x1Avx512Bf16;
      return span16 ? CpuPath::kBf4x1DecodeSpan16Avx512Bf16 : CpuPath::kBf4x1DecodeAvx512Bf16;
    }
    if (M <= kFloat4x1DecodeMaxTokens) return span16 ? CpuPath::kF4x1DecodeSpan16 : CpuPath::kF4x1Decode;
    return CpuPath::kF4x1Avx512;
  }
  if (amx->bf16 != nullptr) return CpuPath::kBf16Amx;
  if (bf16_16x1 && isa >= CpuIsa::kAvx512Bf16) return CpuPath::kBf16x16Avx512Bf16;
  if (isa >= CpuIsa::kAvx512) return w.layout == Layout::kF16x1 ? CpuPath::kF16x1Avx512 : CpuPath::kF1x16Avx512;
  return CpuPath::kFloatPortable;
}

// The float 4x1 decodes read x as rows of K + kTileSpan values, zeros past K, for the span-16 windows (x itself has
// no such slack): bf16 rows as they are for the AVX512_BF16 kernel (T = uint16_t), fp32 rows for the AVX-512F one
// (T = float; bf16 x widened).
template <typename T>
T* padded_rows(const at::Tensor& x2, int64_t K) {
  const int64_t M = x2.size(0), ld = K + kTileSpan;
  T* rows = thread_scratch().get<T>(kSlotPanels, M * ld);
  const bool x_bf16 = x2.scalar_type() == at::kBFloat16;
  for (int64_t m = 0; m < M; ++m) {
    T* row = rows + m * ld;
    if (x_bf16 && std::is_same_v<T, float>) {
      const at::BFloat16* x = x2.data_ptr<at::BFloat16>() + m * x2.stride(0);
      for (int64_t k = 0; k < K; ++k) row[k] = static_cast<float>(x[k]);
    } else if (K > 0) {  // the same element type (x may be null)
      std::memcpy(row, static_cast<const char*>(x2.data_ptr()) + m * x2.stride(0) * sizeof(T), K * sizeof(T));
    }
    std::memset(row + K, 0, kTileSpan * sizeof(T));
  }
  return rows;
}

uint32_t run_float(const Weight& w, const Epilogue& ep, const at::Tensor& x2, CpuPath path, const AmxKernels& amx) {
  const int64_t M = x2.size(0), K = w.K;
  FloatArgs a;
  a.w = w;
  a.ep = ep;
  a.M = M;
  const bool x_bf16 = x2.scalar_type() == at::kBFloat16;
  const Bf16PanelKernel bf16_amx = path == CpuPath::kBf16Amx ? amx.bf16 : nullptr;
  if (path == CpuPath::kBf16Amx || path == CpuPath::kBf16x16Avx512Bf16) {
    const int64_t panels = ceil_div(M, kF32PanelTokens);
    const auto* x = reinterpret_cast<const uint16_t*>(x2.data_ptr<at::BFloat16>());
    const uint16_t* xt = x;  // one token: its panel [K][1] is the row itself
    if (M > 1) {
      uint16_t* buf = thread_scratch().get<uint16_t>(kSlotPanels, M * K);
      at::parallel_for(0, panels, 1, [&](int64_t b, int64_t e) {
        transpose_panels_bf16_avx512(x, x2.stride(0), M, K, buf, b, e);
      });
      xt = buf;
    }
    // The AMX kernel shares each weight operand between up to 4 panels.
    const int64_t per_task = bf16_amx != nullptr ? kAmxBf16PanelsPerTask : kFloatTokensPerTask / kF32PanelTokens;
    return run_tasks(w, M, ceil_div(panels, per_task), [&](int64_t b, int64_t e, int64_t mp) {
      const int64_t p0 = mp * per_task, p1 = std::min(panels, (mp + 1) * per_task);
      return bf16_amx != nullptr ? bf16_amx(a, xt, b, e, p0, p1) : linear_bf16_16x1_avx512bf16(a, xt, b, e, p0, p1);
    });
  }
  if (path == CpuPath::kBf4x1DecodeAvx512Bf16 || path == CpuPath::kBf4x1DecodeSpan16Avx512Bf16) {
    a.ldx = K + kTileSpan;
    const uint16_t* rows = padded_rows<uint16_t>(x2, K);
    return run_tasks(w, M, 1, [&](int64_t b, int64_t e, int64_t) {
      return linear_bf16_4x1_decode_avx512bf16(a, rows, b, e, 0, M);
    });
  }
  if (path == CpuPath::kF4x1Decode || path == CpuPath::kF4x1DecodeSpan16) {
    a.ldx = K + kTileSpan;
    a.xt = padded_rows<float>(x2, K);
    return run_tasks(w, M, 1, [&](int64_t b, int64_t e, int64_t) { return linear_f4x1_decode_avx512(a, b, e, 0, M); });
  }
  if (path == CpuPath::kF16x1Avx512 || path == CpuPath::kF4x1Avx512 || path == CpuPath::kBf4x1Avx512Bf16) {
    const int64_t panels = ceil_div(M, kF32PanelTokens);
    // The 4x1 kernels load whole aligned panel lines (float4x1_panel_line; the last panel's padded with zeros).
    const bool float4x1_lines = path != CpuPath::kF16x1Avx512;
    if (M == 1 && !x_bf16 && !float4x1_lines) {
      a.xt = x2.data_ptr<float>();  // one token: its panel [K][1] is the row itself
    } else {
      float* xt = thread_scratch().get<float>(kSlotPanels, (float4x1_lines ? panels * kF32PanelTokens : M) * K);
      at::parallel_for(0, panels, 1, [&](int64_t b, int64_t e) {
        transpose_panels_f32_avx512(x2.data_ptr(), x_bf16, x2.stride(0), M, K, float4x1_lines, xt, b, e);
      });
      a.xt = xt;
    }
    const int64_t per_task = kFloatTokensPerTask / kF32PanelTokens;
    const int64_t m_parts = ceil_div(panels, per_task);
    const auto kernel = path == CpuPath::kBf4x1Avx512Bf16 ? &linear_bf16_4x1_avx512bf16
                        : path == CpuPath::kF4x1Avx512    ? &linear_f4x1_avx512
                                                          : &linear_f16x1_avx512;
    return run_tasks(w, M, m_parts, [&](int64_t b, int64_t e, int64_t mp) {
      return kernel(a, b, e, mp * per_task, std::min(panels, (mp + 1) * per_task));
    });
  }
  if (path == CpuPath::kF1x16Avx512) {
    const int64_t panels = ceil_div(M, kF32PanelTokens);
    float* xt = thread_scratch().get<float>(kSlotPanels, M * ceil_div(K, 16) * 16);
    at::parallel_for(0, panels, 1, [&](int64_t b, int64_t e) {
      kblock_panels_f32_avx512(x2.data_ptr(), x_bf16, x2.stride(0), M, K, xt, b, e);
    });
    a.xt = xt;
    const int64_t per_task = kFloatTokensPerTask / kF32PanelTokens;
    return run_tasks(w, M, ceil_div(panels, per_task), [&](int64_t b, int64_t e, int64_t mp) {
      return linear_f1x16_avx512(a, b, e, mp * per_task, std::min(panels, (mp + 1) * per_task));
    });
  }
  const at::Tensor xf = x_bf16 ? x2.to(at::kFloat) : x2;
  a.x = xf.data_ptr<float>();
  a.ldx = xf.stride(0);
  return run_tasks(w, M, ceil_div(M, kFloatTokensPerTask), [&](int64_t b, int64_t e, int64_t mp) {
    return linear_float_portable(a, b, e, mp * kFloatTokensPerTask, std::min(M, (mp + 1) * kFloatTokensPerTask));
  });
}

uint32_t run_int8(const Weight& w, const Epilogue& ep, const at::Tensor& x2, CpuIsa isa, CpuPath path,
                  const AmxKernels& amx) {
  const int64_t M = x2.size(0), K = w.K;
  Scratch& scratch = thread_scratch();
  QuantArgs q;
  q.x = x2.data_ptr();
  q.x_bf16 = x2.scalar_type() == at::kBFloat16;
  q.ldx = x2.stride(0);
  q.K = K;
  const bool decode = path == CpuPath::kInt8Decode16x1 || path == CpuPath::kInt8Decode4x1 ||
                      path == CpuPath::kInt8Decode4x1Span16;
  // The span-16 decode reads 16-byte windows of x (kTileSpan bytes of slack past the last row). For 2 tokens and
  // more it reads rows 64 bytes more than a multiple of 64 apart: rows a multiple of 4 KiB apart share L1 sets.
  const bool windows = path == CpuPath::kInt8Decode4x1Span16;
  q.ldxq = windows && M > 1 ? ceil_div(K, 64) * 64 + 64 : K;
  q.xq = scratch.get<uint8_t>(kSlotXq, M * q.ldxq + kTileSpan);
  q.scale = scratch.get<float>(kSlotScale, M);
  q.zp = scratch.get<int32_t>(kSlotZp, M);
  auto quantize = [&](int64_t b, int64_t e) {
    if (isa >= CpuIsa::kAvx512) {
      quantize_rows_avx512(q, b, e);
    } else {
      quantize_rows_portable(q, b, e);
    }
  };
  Int8Args a;
  a.w = w;
  a.ep = ep;
  a.M = M;
  a.xq = q.xq;
  a.ldxq = q.ldxq;
  a.x_scale = q.scale;
  a.x_zp = q.zp;
  if (decode) {
    quantize(0, M);  // a few tokens: not worth waking the pool
    // The decode kernels read a single token, and the span-16 4x1 kernel its few tokens, straight from xq.
    const bool reads_xq = M == 1 || windows;
    if (!reads_xq) {
      const int64_t groups = ceil_div(M, kVnniGroupTokens);
      uint8_t* xp = scratch.get<uint8_t>(kSlotPanels, groups * K * kVnniGroupTokens);
      build_groups_u8_avx512(q.xq, M, K, xp, 0, groups);
      a.xp = xp;
    }
    return run_tasks(w, M, 1, [&](int64_t b, int64_t e, int64_t) { return linear_int8_vnni_decode(a, b, e, 0, M); });
  }
  if (path == CpuPath::kInt8PanelsVnni || path == CpuPath::kInt8Amx) {
    const int64_t panels = ceil_div(M, kVnniPanelTokens);
    uint8_t* xp = scratch.get<uint8_t>(kSlotPanels, panels * K * kVnniPanelTokens);
    // Tokens, then (panel, column chunk) pairs, across threads: per panel, the other thread sat idle for the
    // ~60 us of a 32-token 768x3072 call spent reading x and laying out its single panel.
    at::parallel_for(0, M, kQuantizeTokensPerTask, quantize);
    const int64_t chunks = ceil_div(K, kPanelBuildColumns);
    at::parallel_for(0, panels * chunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t k0 = t % chunks * kPanelBuildColumns;
        build_panel_u8_avx512(q.xq, M, K, xp, t / chunks, k0, std::min(K, k0 + kPanelBuildColumns));
      }
    });
    a.xp = xp;
    const Int8PanelKernel kernel = path == CpuPath::kInt8Amx ? amx.int8 : &linear_int8_vnni;
    const int64_t m_parts = ceil_div(panels, kInt8PanelsPerTask);
    return run_tasks(w, M, m_parts, [&](int64_t b, int64_t e, int64_t mp) {
      return kernel(a, b, e, mp * kInt8PanelsPerTask, std::min(panels, (mp + 1) * kInt8PanelsPerTask));
    });
  }
  at::parallel_for(0, M, 16, quantize);
  const int64_t m_parts = ceil_div(M, kFloatTokensPerTask);
  return run_tasks(w, M, m_parts, [&](int64_t b, int64_t e, int64_t mp) {
    return linear_int8_portable(a, b, e, mp * kFloatTokensPerTask, std::min(M, (mp + 1) * kFloatTokensPerTask));
  });
}

at::Tensor bsr_linear_cpu(const at::Tensor& x, const at::Tensor& meta, const at::Tensor& rowptr_in,
                          const at::Tensor& indices_in, const at::Tensor& values_in,
                          const at::Tensor& compensation_in, int64_t out_features, int64_t in_features,
                          const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& weight_scale,
                          c10::string_view activation, std::optional<at::ScalarType> out_dtype) {
  const LinearRequest req = check_linear_args(x, meta, rowptr_in, indices_in, values_in, compensation_in,
                                              out_features, in_features, bias, weight_scale,
                                              std::string(activation), out_dtype);
  // Borrowed when already contiguous (as bsr_pack returns them): no dispatcher call per tensor and call.
  const c10::MaybeOwned<at::Tensor> rowptr = rowptr_in.expect_contiguous(), indices = indices_in.expect_contiguous();
  const c10::MaybeOwned<at::Tensor> values = values_in.expect_contiguous();
  const c10::MaybeOwned<at::Tensor> compensation = compensation_in.expect_contiguous();
  Weight w = req.w;
  w.rowptr = rowptr->data_ptr<int32_t>();
  w.indices = reinterpret_cast<const uint16_t*>(indices->data_ptr<int16_t>());
  w.values = values->data_ptr();
  w.compensation = compensation->data_ptr<int32_t>();
  check_rowptr(w, indices->numel());
  c10::MaybeOwned<at::Tensor> scale;
  if (weight_scale.has_value()) {
    scale = weight_scale->expect_contiguous();
    w.scale = scale->data_ptr<float>();
  }

  // x as [M, in_features] rows with unit column stride; a 2-D x that already is one is used as it is.
  const bool rows_ready = x.dim() == 2 && (in_features <= 1 || x.stride(1) == 1) &&
                          (x.size(0) <= 1 || x.stride(0) >= in_features);
  const int64_t rows = c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1);
  at::Tensor x2 = rows_ready ? x : x.reshape({rows, in_features});
  if (x2.stride(-1) != 1 || (x2.size(0) > 1 && x2.stride(0) < in_features)) x2 = x2.contiguous();
  const int64_t M = x2.size(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  at::Tensor y = at::empty(out_shape, x.options().dtype(scalar_type(req.out)));  // rows of out_features
  if (M == 0 || out_features == 0) {  // no kernel runs to check the indices on the way
    const uint16_t* idx = w.indices;
    check_max_index(w, indices->numel() == 0 ? 0 : *std::max_element(idx, idx + indices->numel()));
    return y;
  }

  c10::MaybeOwned<at::Tensor> bias_f;
  Epilogue ep;
  if (bias.has_value()) {
    bias_f = contiguous_float(*bias);
    ep.bias = bias_f->data_ptr<float>();
  }
  ep.act = req.act;
  ep.out = req.out;
  ep.y = y.data_ptr();
  ep.ldy = out_features;
  const CpuIsa isa = selected_cpu_isa();
  AmxKernels amx;
  const CpuPath path = choose_cpu_path(w, M, isa, &amx);
  const uint32_t max_index =
      w.dtype == DType::kS8 ? run_int8(w, ep, x2, isa, path, amx) : run_float(w, ep, x2, path, amx);
  thread_scratch().release_temporaries();
  check_max_index(w, max_index);
  return y;
}

const char* cpu_path_name(CpuPath path, Layout layout) {
  switch (path) {
    case CpuPath::kFloatPortable: return "portable";
    case CpuPath::kF16x1Avx512: return "avx512:16x1";
    case CpuPath::kF1x16Avx512: return "avx512:1x16";
    case CpuPath::kF4x1Avx512: return "avx512:4x1";
    case CpuPath::kF4x1Decode: return "avx512:decode_4x1";
    case CpuPath::kF4x1DecodeSpan16: return "avx512:decode_4x1_span16";
    case CpuPath::kBf4x1Avx512Bf16: return "avx512_bf16:4x1";
    case CpuPath::kBf4x1DecodeAvx512Bf16: return "avx512_bf16:decode_4x1";
    case CpuPath::kBf4x1DecodeSpan16Avx512Bf16: return "avx512_bf16:decode_4x1_span16";
    case CpuPath::kBf16x16Avx512Bf16: return "avx512_bf16:16x1";
    case CpuPath::kBf16Amx: return amx_emulation() ? "amx(emulated):bf16_16x1" : "amx:bf16_16x1";
    case CpuPath::kInt8Portable: return "portable";
    case CpuPath::kInt8Decode16x1: return "avx512_vnni:decode_16x1";
    case CpuPath::kInt8Decode4x1: return "avx512_vnni:decode_4x1";
    case CpuPath::kInt8Decode4x1Span16: return "avx512_vnni:decode_4x1_span16";
    case CpuPath::kInt8PanelsVnni:
      return layout == Layout::kInt8_16x1 ? "avx512_vnni:panels_16x1" : "avx512_vnni:panels_4x1";
    case CpuPath::kInt8Amx: return amx_emulation() ? "amx(emulated):int8_16x1" : "amx:int8_16x1";
  }
  return "?";
}

}  // namespace

std::string cpu_kernel_name(const at::Tensor& meta, int64_t tokens) {
  constexpr const char* op = "sparseflow.bsr_linear_cpu_kernel";
  TORCH_CHECK_VALUE(tokens >= 0, op, ": tokens must be >= 0, got ", tokens);
  int64_t nnz = 0;
  const Weight w = read_cpu_meta(op, meta, &nnz);
  const CpuIsa isa = selected_cpu_isa();
  AmxKernels amx;
  return cpu_path_name(choose_cpu_path(w, tokens, isa, &amx), w.layout);
}

const char* amx_status() {
  const CpuIsa isa = selected_cpu_isa();
  if (amx_emulation() && isa >= CpuIsa::kAvx512Vnni) return "emulated";
  if (isa < CpuIsa::kAmx) return "unavailable";
  return amx_checked() ? "active" : "off: self-check failed";
}

TORCH_LIBRARY_IMPL(sparseflow, CPU, m) {
  m.impl("bsr_pack", &bsr_pack_cpu);
  m.impl("bsr_linear", &bsr_linear_cpu);
}

}  // namespace sparseflow::bsr
