// Convolutions for XLA:CPU as image patches times the kernel through Intel oneMKL, as XLA FFI
// handlers (yolov4_jax/cpu_gemm.py). oneMKL is opened at run time (yolov4_cpu_gemm_open), so
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

enum { kRowMajor = 101, kNoTrans = 111 };
using GemmBf16 = void (*)(int, int, int, int, int, int, float, const uint16_t*, int,
                          const uint16_t*, int, float, float*, int);
using GemmF32 = void (*)(int, int, int, int, int, int, float, const float*, int, const float*,
                         int, float, float*, int);
GemmBf16 gemm_bf16 = nullptr;
GemmF32 gemm_f32 = nullptr;

// Patch rows built per oneMKL call: about this many bytes of patches, so they stay in cache.
constexpr int64_t kChunkBytes = 1 << 22;

void Gemm(const uint16_t* a, const uint16_t* b, float* c, int m, int n, int k) {
  gemm_bf16(kRowMajor, kNoTrans, kNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
}
void Gemm(const float* a, const float* b, float* c, int m, int n, int k) {
  gemm_f32(kRowMajor, kNoTrans, kNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
}

// x [N, H, W, C] (NHWC), w [size * size * C, O] (an HWIO kernel reshaped), out [N, H', W', O].
template <typename T>
ffi::Error Conv(const T* x, const T* w, float* out, ffi::Span<const int64_t> x_dims,
                ffi::Span<const int64_t> w_dims, ffi::Span<const int64_t> out_dims,
                int64_t size, int64_t stride, int64_t padding) {
  if (gemm_bf16 == nullptr || gemm_f32 == nullptr)
    return ffi::Error(ffi::ErrorCode::kFailedPrecondition, "oneMKL is not open");
  if (x_dims.size() != 4 || w_dims.size() != 2 || out_dims.size() != 4)
    return ffi::Error::InvalidArgument("expected x [N, H, W, C], w [K, O], out [N, H', W', O]");
  const int64_t n = x_dims[0], h = x_dims[1], wd = x_dims[2], c = x_dims[3];
  const int64_t k = size * size * c, filters = w_dims[1];
  const int64_t rows = (h + 2 * padding - size) / stride + 1;
  const int64_t cols = (wd + 2 * padding - size) / stride + 1;
  if (size < 1 || stride < 1 || padding < 0 || w_dims[0] != k || out_dims[0] != n ||
      out_dims[1] != rows || out_dims[2] != cols || out_dims[3] != filters)
    return ffi::Error::InvalidArgument("convolution shapes do not agree");
  if (n * rows * cols > INT32_MAX || k > INT32_MAX || filters > INT32_MAX)
    return ffi::Error::InvalidArgument("a dimension exceeds oneMKL's 32-bit integers");
  if (size == 1 && stride == 1 && padding == 0) {  // the input is the patch matrix
    Gemm(x, w, out, n * h * wd, filters, k);
    return ffi::Error::Success();
  }
  const int64_t pixels = n * rows * cols;
  const int64_t chunk = std::max<int64_t>(16, kChunkBytes / (k * sizeof(T)));
  std::vector<T> patches(std::min(chunk, pixels) * k);
  for (int64_t start = 0; start < pixels; start += chunk) {
    const int64_t count = std::min(chunk, pixels - start);
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < count; ++p) {
      const int64_t pixel = start + p;
      const int64_t b = pixel / (rows * cols), i = pixel / cols % rows, j = pixel % cols;
      T* dst = patches.data() + p * k;
      for (int64_t dy = 0; dy < size; ++dy) {
        const int64_t y = i * stride + dy - padding;
        for (int64_t dx = 0; dx < size; ++dx, dst += c) {
          const int64_t xx = j * stride + dx - padding;
          if (y < 0 || y >= h || xx < 0 || xx >= wd) {
            std::memset(dst, 0, c * sizeof(T));
          } else {
            std::memcpy(dst, x + ((b * h + y) * wd + xx) * c, c * sizeof(T));
          }
        }
      }
    }
    Gemm(patches.data(), w, out + start * filters, count, filters, k);
  }
  return ffi::Error::Success();
}

ffi::Error ConvBf16(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w,
                    ffi::ResultBuffer<ffi::F32> out, int64_t size, int64_t stride,
                    int64_t padding) {
  return Conv(reinterpret_cast<const uint16_t*>(x.typed_data()),
              reinterpret_cast<const uint16_t*>(w.typed_data()), out->typed_data(),
              x.dimensions(), w.dimensions(), out->dimensions(), size, stride, padding);
}

ffi::Error ConvF32(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> out, int64_t size, int64_t stride,
                   int64_t padding) {
  return Conv(x.typed_data(), w.typed_data(), out->typed_data(), x.dimensions(),
              w.dimensions(), out->dimensions(), size, stride, padding);
}

}  // namespace

#define YOLOV4_BIND(T)                   \
  ffi::Ffi::Bind()                       \
      .Arg<ffi::Buffer<ffi::T>>()        \
      .Arg<ffi::Buffer<ffi::T>>()        \
      .Ret<ffi::Buffer<ffi::F32>>()      \
      .Attr<int64_t>("size")             \
      .Attr<int64_t>("stride")           \
      .Attr<int64_t>("padding")

XLA_FFI_DEFINE_HANDLER_SYMBOL(YoloConvBf16, ConvBf16, YOLOV4_BIND(BF16));
XLA_FFI_DEFINE_HANDLER_SYMBOL(YoloConvF32, ConvF32, YOLOV4_BIND(F32));

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
