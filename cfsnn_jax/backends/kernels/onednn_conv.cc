// oneDNN 2-D convolutions as XLA FFI handlers (CPU): forward, input gradient, weight gradient.
//
// Contract (cfsnn_jax/onednn_conv.py builds, loads and calls this file):
//   CfsnnConvFwd(x[N,H,W,C], w[KH,KW,C,O]) -> y[N,OH,OW,O]
//   CfsnnConvBwdData(dy[N,OH,OW,O], w[KH,KW,C,O]) -> dx[N,H,W,C]
//   CfsnnConvBwdWeights(x[N,H,W,C], dy[N,OH,OW,O]) -> dw[KH,KW,C,O]
// All operands row-major (NHWC activations, HWIO weights: what XLA:CPU keeps them in), one
// dtype per call (f32 or bf16), attributes sh, sw (strides) and pt, pb, pl, pr (padding top,
// bottom, left, right); no dilation, no groups. Primitives are created once per (kind, dtype,
// geometry) and cached; each call brings its own scratchpad, so concurrent calls from XLA's
// threads are safe. oneDNN picks its weight layout; weights are reordered to / from HWIO
// around each call (a few hundred microseconds). Errors come back as FFI errors, never aborts.
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;

namespace {

enum Kind { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Geometry {
  int64_t n, h, w, c, o, kh, kw, oh, ow, sh, sw, pt, pb, pl, pr;
  memory::data_type dtype;

  std::array<int64_t, 16> Key() const {
    return {n, h, w, c, o, kh, kw, oh, ow, sh, sw, pt, pb, pl, pr, static_cast<int64_t>(dtype)};
  }
  memory::desc Src() const { return {{n, c, h, w}, dtype, Tag::nhwc}; }
  memory::desc Dst() const { return {{n, o, oh, ow}, dtype, Tag::nhwc}; }
  memory::desc Weights(Tag tag) const { return {{o, c, kh, kw}, dtype, tag}; }
  memory::dims Strides() const { return {sh, sw}; }
  memory::dims PadL() const { return {pt, pl}; }
  memory::dims PadR() const { return {pb, pr}; }
};

struct Primitive {
  dnnl::primitive prim;
  memory::desc weights;  // the primitive's own weights layout
  memory::desc scratchpad;
  bool reorder = false;  // weights differ from HWIO
  dnnl::reorder to_prim, from_prim;
};

std::shared_ptr<Primitive> Make(Kind kind, const Geometry& g) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto fwd_pd = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      g.Src(), g.Weights(Tag::any), g.Dst(), g.Strides(), g.PadL(), g.PadR(), attr);
  auto p = std::make_shared<Primitive>();
  if (kind == kFwd) {
    p->prim = dnnl::convolution_forward(fwd_pd);
    p->weights = fwd_pd.weights_desc();
    p->scratchpad = fwd_pd.scratchpad_desc();
  } else if (kind == kBwdData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, g.Src(), g.Weights(Tag::any), g.Dst(),
        g.Strides(), g.PadL(), g.PadR(), fwd_pd, attr);
    p->prim = dnnl::convolution_backward_data(pd);
    p->weights = pd.weights_desc();
    p->scratchpad = pd.scratchpad_desc();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, g.Src(), g.Weights(Tag::any), g.Dst(),
        g.Strides(), g.PadL(), g.PadR(), fwd_pd, attr);
    p->prim = dnnl::convolution_backward_weights(pd);
    p->weights = pd.diff_weights_desc();
    p->scratchpad = pd.scratchpad_desc();
  }
  const memory::desc hwio = g.Weights(Tag::hwio);
  p->reorder = p->weights != hwio;
  if (p->reorder) {
    memory user(hwio, Engine(), DNNL_MEMORY_NONE), prim(p->weights, Engine(), DNNL_MEMORY_NONE);
    p->to_prim = dnnl::reorder(user, prim);
    p->from_prim = dnnl::reorder(prim, user);
  }
  return p;
}

std::shared_ptr<Primitive> Cached(Kind kind, const Geometry& g) {
  static std::mutex mu;
  static std::map<std::pair<int, std::array<int64_t, 16>>, std::shared_ptr<Primitive>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[{kind, g.Key()}];
  if (!slot) slot = Make(kind, g);
  return slot;
}

// a, b: the two inputs in the order of the handler's contract; out: its result.
void Run(Kind kind, const Geometry& g, void* a, void* b, void* out) {
  auto p = Cached(kind, g);
  dnnl::stream stream(Engine());
  std::unique_ptr<char[]> scratch(new char[p->scratchpad.get_size() + 64]);
  memory scratchpad(p->scratchpad, Engine(), scratch.get());
  const memory::desc hwio = g.Weights(Tag::hwio);
  std::unique_ptr<char[]> wbuf(p->reorder ? new char[p->weights.get_size() + 64] : nullptr);
  if (kind == kBwdWeights) {
    memory src(g.Src(), Engine(), a), diff_dst(g.Dst(), Engine(), b), user(hwio, Engine(), out);
    memory diff_w = p->reorder ? memory(p->weights, Engine(), wbuf.get()) : user;
    p->prim.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                             {DNNL_ARG_DIFF_WEIGHTS, diff_w}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    if (p->reorder) p->from_prim.execute(stream, diff_w, user);
  } else {
    memory user(hwio, Engine(), b);
    memory weights = p->reorder ? memory(p->weights, Engine(), wbuf.get()) : user;
    if (p->reorder) p->to_prim.execute(stream, user, weights);
    if (kind == kFwd) {
      memory src(g.Src(), Engine(), a), dst(g.Dst(), Engine(), out);
      p->prim.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights},
                               {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else {
      memory diff_dst(g.Dst(), Engine(), a), diff_src(g.Src(), Engine(), out);
      p->prim.execute(stream, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, weights},
                               {DNNL_ARG_DIFF_SRC, diff_src}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    }
  }
  stream.wait();
}

bool DnnlType(ffi::DataType t, memory::data_type* out) {
  if (t == ffi::DataType::F32) { *out = memory::data_type::f32; return true; }
  if (t == ffi::DataType::BF16) { *out = memory::data_type::bf16; return true; }
  return false;
}

// x: [N,H,W,C], w: [KH,KW,C,O], y: [N,OH,OW,O] (whichever of them is the result).
ffi::Error Call(Kind kind, ffi::AnyBuffer x_like, ffi::AnyBuffer w_like, ffi::AnyBuffer y_like,
                void* a, void* b, void* out, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                int64_t pl, int64_t pr) {
  auto x = x_like.dimensions(), w = w_like.dimensions(), y = y_like.dimensions();
  if (x.size() != 4 || w.size() != 4 || y.size() != 4)
    return ffi::Error::InvalidArgument("cfsnn oneDNN conv: operands must be 4-D NHWC / HWIO");
  if (x_like.element_type() != w_like.element_type() ||
      x_like.element_type() != y_like.element_type())
    return ffi::Error::InvalidArgument("cfsnn oneDNN conv: operands of different dtypes");
  Geometry g{x[0], x[1], x[2], x[3], w[3], w[0], w[1], y[1], y[2], sh, sw, pt, pb, pl, pr,
             memory::data_type::f32};
  if (!DnnlType(x_like.element_type(), &g.dtype))
    return ffi::Error::InvalidArgument("cfsnn oneDNN conv: dtype must be f32 or bf16");
  try {
    Run(kind, g, a, b, out);
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("cfsnn oneDNN conv: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("cfsnn oneDNN conv: out of memory");
  }
  return ffi::Error::Success();
}

ffi::Error Fwd(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y, int64_t sh,
               int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Call(kFwd, x, w, *y, x.untyped_data(), w.untyped_data(), y->untyped_data(), sh, sw, pt,
              pb, pl, pr);
}

ffi::Error BwdData(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                   int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Call(kBwdData, *dx, w, dy, dy.untyped_data(), w.untyped_data(), dx->untyped_data(), sh,
              sw, pt, pb, pl, pr);
}

ffi::Error BwdWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                      int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Call(kBwdWeights, x, *dw, dy, x.untyped_data(), dy.untyped_data(), dw->untyped_data(),
              sh, sw, pt, pb, pl, pr);
}

}  // namespace

#define CFSNN_CONV_BINDING                                                               \
  ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()     \
      .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb")   \
      .Attr<int64_t>("pl").Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(CfsnnConvFwd, Fwd, CFSNN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CfsnnConvBwdData, BwdData, CFSNN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CfsnnConvBwdWeights, BwdWeights, CFSNN_CONV_BINDING);
