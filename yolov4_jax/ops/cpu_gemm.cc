// Convolutions for XLA:CPU as image patches times the kernel through Intel oneMKL, as XLA FFI
// handlers (yolov4_jax/ops/cpu_gemm.py). oneMKL is opened at run time (yolov4_cpu_gemm_open), so
// this library links against nothing but libdl.
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };
using GemmBf16 = void (*)(int, int, int, int, int, int, float, const uint16_t*, int,
                          const uint16_t*, int, float, float*, int);
using GemmF32 = void (*)(int, int, int, int, int, int, float, const float*, int, const float*,
                         int, float, float*, int);
GemmBf16 gemm_bf16 = nullptr;
GemmF32 gemm_f32 = nullptr;

// Patch rows built per oneMKL call: about this many bytes of patches, so they stay in cache.
constexpr int64_t kChunkBytes = 1 << 22;

// c = op(a) b (+ c when accumulate), row-major; op(a) is [m, k], transposed when trans_a.
void Gemm(bool trans_a, const uint16_t* a, const uint16_t* b, float* c, int m, int n, int k,
          bool accumulate) {
  gemm_bf16(kRowMajor, trans_a ? kTrans : kNoTrans, kNoTrans, m, n, k, 1.0f, a,
            trans_a ? m : k, b, n, accumulate ? 1.0f : 0.0f, c, n);
}
void Gemm(bool trans_a, const float* a, const float* b, float* c, int m, int n, int k,
          bool accumulate) {
  gemm_f32(kRowMajor, trans_a ? kTrans : kNoTrans, kNoTrans, m, n, k, 1.0f, a,
           trans_a ? m : k, b, n, accumulate ? 1.0f : 0.0f, c, n);
}

// A convolution's geometry: x [N, H, W, C] (NHWC), a [kh, kw, C, O] kernel as [kh*kw*C, O],
// per-side zero padding (negative crops), output [N, rows, cols, O].
struct Geometry {
  int64_t n, h, w, c, kh, kw, stride, top, left, rows, cols;
  int64_t k() const { return kh * kw * c; }
  int64_t pixels() const { return n * rows * cols; }
  bool plain() const { return kh == 1 && kw == 1 && stride == 1 && top == 0 && left == 0; }
};

ffi::Error MakeGeometry(ffi::Span<const int64_t> x, int64_t kh, int64_t kw, int64_t stride,
                        int64_t top, int64_t bottom, int64_t left, int64_t right,
                        ffi::Span<const int64_t> out, Geometry* g) {
  if (gemm_bf16 == nullptr || gemm_f32 == nullptr)
    return ffi::Error(ffi::ErrorCode::kFailedPrecondition, "oneMKL is not open");
  if (x.size() != 4 || out.size() != 4)
    return ffi::Error::InvalidArgument("expected 4-D (NHWC) input and output");
  *g = {x[0], x[1], x[2], x[3], kh, kw, stride, top, left, 0, 0};
  if (kh < 1 || kw < 1 || stride < 1 || x[1] + top + bottom < kh || x[2] + left + right < kw)
    return ffi::Error::InvalidArgument("bad kernel size, stride or padding");
  g->rows = (x[1] + top + bottom - kh) / stride + 1;
  g->cols = (x[2] + left + right - kw) / stride + 1;
  if (out[0] != g->n || out[1] != g->rows || out[2] != g->cols)
    return ffi::Error::InvalidArgument("the output's shape does not fit the convolution");
  if (g->pixels() > INT32_MAX || g->k() > INT32_MAX || out[3] > INT32_MAX)
    return ffi::Error::InvalidArgument("a dimension exceeds oneMKL's 32-bit integers");
  return ffi::Error::Success();
}

// Rows [start, start + count) of the patch matrix [pixels, kh*kw*C], ordered (row, column,
// channel) within a row as the kernel's reshape.
template <typename T>
void Patches(const T* x, const Geometry& g, int64_t start, int64_t count, T* patches) {
  const int64_t k = g.k();
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < count; ++p) {
    const int64_t pixel = start + p;
    const int64_t b = pixel / (g.rows * g.cols), i = pixel / g.cols % g.rows;
    const int64_t j = pixel % g.cols;
    T* dst = patches + p * k;
    for (int64_t dy = 0; dy < g.kh; ++dy) {
      const int64_t y = i * g.stride + dy - g.top;
      for (int64_t dx = 0; dx < g.kw; ++dx, dst += g.c) {
        const int64_t xx = j * g.stride + dx - g.left;
        if (y < 0 || y >= g.h || xx < 0 || xx >= g.w) {
          std::memset(dst, 0, g.c * sizeof(T));
        } else {
          std::memcpy(dst, x + ((b * g.h + y) * g.w + xx) * g.c, g.c * sizeof(T));
        }
      }
    }
  }
}

int64_t ChunkRows(const Geometry& g, size_t element) {
  return std::max<int64_t>(16, kChunkBytes / (g.k() * element));
}

// A per-thread patch buffer kept between calls: a fresh one of a few MB costs a page fault
// per 4 KiB on every call.
template <typename T>
T* PatchBuffer(int64_t n) {
  thread_local std::vector<T> buffer;
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(n);
  return buffer.data();
}

// Calls visit(rows, first pixel, count) over the patch matrix [pixels, K], a few MB of rows
// at a time; a plain (1x1, stride 1, unpadded) layer's input is its patch matrix, visited
// whole.
template <typename T, typename Visit>
void ForEachChunk(const T* x, const Geometry& g, Visit visit) {
  if (g.plain()) {
    visit(x, 0, g.pixels());
    return;
  }
  const int64_t chunk = ChunkRows(g, sizeof(T));
  T* patches = PatchBuffer<T>(std::min(chunk, g.pixels()) * g.k());
  for (int64_t start = 0; start < g.pixels(); start += chunk) {
    const int64_t count = std::min(chunk, g.pixels() - start);
    Patches(x, g, start, count, patches);
    visit(patches, start, count);
  }
}

// out [pixels, O] = patches(x) [pixels, K] w [K, O].
template <typename T>
void Conv(const T* x, const T* w, float* out, const Geometry& g, int64_t filters) {
  ForEachChunk(x, g, [&](const T* rows, int64_t start, int64_t count) {
    Gemm(false, rows, w, out + start * filters, count, filters, g.k(), false);
  });
}

// out [K, O] = patches(x)^T [K, pixels] grad [pixels, O]: the filter gradient, summed over
// the chunks.
template <typename T>
void FilterGrad(const T* x, const T* grad, float* out, const Geometry& g, int64_t filters) {
  ForEachChunk(x, g, [&](const T* rows, int64_t start, int64_t count) {
    Gemm(true, rows, grad + start * filters, out, g.k(), filters, count, start > 0);
  });
}

// A [kh * kw * C, O] matrix: the kernel, or the filter gradient.
ffi::Error CheckMatrix(ffi::Span<const int64_t> dims, const Geometry& g, int64_t filters,
                       const char* what) {
  if (dims.size() == 2 && dims[0] == g.k() && dims[1] == filters) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(std::string(what) + " is not [kh * kw * C, O]");
}

template <ffi::DataType D>
using In = ffi::Buffer<D>;
using Out = ffi::ResultBuffer<ffi::F32>;

template <ffi::DataType D>
ffi::Error ConvImpl(In<D> x, In<D> w, Out out, int64_t kh, int64_t kw, int64_t stride,
                    int64_t top, int64_t bottom, int64_t left, int64_t right) {
  Geometry g;
  auto dims = out->dimensions();
  if (auto e = MakeGeometry(x.dimensions(), kh, kw, stride, top, bottom, left, right, dims, &g);
      e.failure())
    return e;
  if (auto e = CheckMatrix(w.dimensions(), g, dims[3], "the kernel"); e.failure()) return e;
  Conv(x.typed_data(), w.typed_data(), out->typed_data(), g, dims[3]);
  return ffi::Error::Success();
}

// grad [N, rows, cols, O], the output gradient; out [kh * kw * C, O].
template <ffi::DataType D>
ffi::Error FilterGradImpl(In<D> x, In<D> grad, Out out, int64_t kh, int64_t kw, int64_t stride,
                          int64_t top, int64_t bottom, int64_t left, int64_t right) {
  Geometry g;
  auto dims = grad.dimensions();
  if (auto e = MakeGeometry(x.dimensions(), kh, kw, stride, top, bottom, left, right, dims, &g);
      e.failure())
    return e;
  if (auto e = CheckMatrix(out->dimensions(), g, dims[3], "the result"); e.failure()) return e;
  FilterGrad(x.typed_data(), grad.typed_data(), out->typed_data(), g, dims[3]);
  return ffi::Error::Success();
}

}  // namespace

#define YOLOV4_BIND(T)                  \
  ffi::Ffi::Bind()                      \
      .Arg<ffi::Buffer<ffi::T>>()       \
      .Arg<ffi::Buffer<ffi::T>>()       \
      .Ret<ffi::Buffer<ffi::F32>>()     \
      .Attr<int64_t>("kh")              \
      .Attr<int64_t>("kw")              \
      .Attr<int64_t>("stride")          \
      .Attr<int64_t>("top")             \
      .Attr<int64_t>("bottom")          \
      .Attr<int64_t>("left")            \
      .Attr<int64_t>("right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(YoloConvBf16, ConvImpl<ffi::BF16>, YOLOV4_BIND(BF16));
XLA_FFI_DEFINE_HANDLER_SYMBOL(YoloConvF32, ConvImpl<ffi::F32>, YOLOV4_BIND(F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(YoloFilterGradBf16, FilterGradImpl<ffi::BF16>, YOLOV4_BIND(BF16));
XLA_FFI_DEFINE_HANDLER_SYMBOL(YoloFilterGradF32, FilterGradImpl<ffi::F32>, YOLOV4_BIND(F32));

// Opens oneMKL's single dynamic library (libmkl_rt) at `path`; 0 on success, else -1 with
// the loader's message in `error` (`error_size` bytes).
extern "C" int yolov4_cpu_gemm_open(const char* path, char* error, int error_size) {
  void* lib = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
  std::string message;
  if (lib == nullptr) {
    message = dlerror();
  } else {
    gemm_bf16 = reinterpret_cast<GemmBf16>(dlsym(lib, "cblas_gemm_bf16bf16f32"));
    gemm_f32 = reinterpret_cast<GemmF32>(dlsym(lib, "cblas_sgemm"));
    if (gemm_bf16 == nullptr || gemm_f32 == nullptr)
      message = "it has no cblas_gemm_bf16bf16f32 or cblas_sgemm";
  }
  if (message.empty()) return 0;
  std::snprintf(error, error_size, "%s", message.c_str());
  return -1;
}
