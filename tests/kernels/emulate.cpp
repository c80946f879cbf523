// The CUDA kernels' per-thread functions (csrc/kernels/*.h) run serially on the CPU
// over a CUDA grid, for tests/test_kernels_emulated.py: a test-only extension, never shipped.
//
// Each op plans its launch as the CUDA launcher does (same prepare_* and plan_*), may override the
// pack width and the grid, checks the launch as CUDA would refuse it, then runs every (block,
// thread) of the grid through the grid-stride loop. The outputs sit inside NaN guard zones that must
// come back untouched (the gate ops, which update tensors in place, update guarded copies). Each op
// returns its outputs, the pack width and the most grid-stride iterations any thread ran.
#include <torch/extension.h>

#include <cmath>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/hamilton_kernels.h"
#include "kernels/recurrent_kernels.h"
#include "recurrent_gates.h"

namespace qlayers {
namespace kernels {
namespace {

// Elements of NaN before and after each output (a multiple of 16 bytes for every dtype).
constexpr int64_t kGuard = 64;

// An output of `sizes` inside a NaN-filled buffer with guard zones; every element starts as NaN, so
// an element the kernel never writes shows.
at::Tensor guarded_empty(at::IntArrayRef sizes, const at::TensorOptions& options, std::vector<at::Tensor>& buffers) {
  int64_t numel = 1;
  for (int64_t size : sizes) numel *= size;
  at::Tensor buffer = at::full({numel + 2 * kGuard}, std::numeric_limits<double>::quiet_NaN(), options);
  buffers.push_back(buffer);
  return buffer.narrow(0, kGuard, numel).view(sizes);
}

// A tensor the op updates in place, as a guarded copy of its values; undefined stays undefined.
at::Tensor guarded_copy(const at::Tensor& t, std::vector<at::Tensor>& buffers) {
  return t.defined() ? guarded_empty(t.sizes(), t.options(), buffers).copy_(t) : t;
}

// A tensor the op only writes, as a guarded all-NaN one of its sizes; undefined stays undefined.
at::Tensor guarded_like(const at::Tensor& t, std::vector<at::Tensor>& buffers) {
  return t.defined() ? guarded_empty(t.sizes(), t.options(), buffers) : t;
}

void check_guards(const std::vector<at::Tensor>& buffers) {
  for (const at::Tensor& buffer : buffers) {
    const int64_t numel = buffer.numel() - 2 * kGuard;
    for (const at::Tensor& guard : {buffer.narrow(0, 0, kGuard), buffer.narrow(0, kGuard + numel, kGuard)}) {
      TORCH_CHECK(guard.isnan().all().item<bool>(), "emulated kernel wrote outside its output");
    }
  }
}

// The limits a CUDA launch is refused at (cudaErrorInvalidConfiguration and kin).
template <typename Params>
void check_launch(int64_t blocks, int64_t threads) {
  TORCH_CHECK(blocks >= 1 && threads >= 1, "launch: empty grid (", blocks, " blocks of ", threads, " threads)");
  TORCH_CHECK(threads <= 1024, "launch: blockDim.x ", threads, " over 1024");
  TORCH_CHECK(blocks <= (int64_t{1} << 31) - 1, "launch: gridDim.x ", blocks, " over 2^31 - 1");
  static_assert(sizeof(Params) <= 4096, "kernel parameters over CUDA's 4 KB");
  TORCH_CHECK(sizeof(Params) <= 4096, "launch: kernel parameters over 4 KB");
}

// Serially, each thread of the grid from block `first_block` on, through the kernels' own
// grid-stride loop. Returns the most iterations any thread ran.
template <typename Params, typename Body>
int64_t run_grid(const Params& p, int64_t blocks, int64_t threads, int64_t first_block, Body body) {
  check_launch<Params>(blocks, threads);
  const auto grid_blocks = static_cast<unsigned>(blocks), block_threads = static_cast<unsigned>(threads);
  const int64_t stride = grid_stride(grid_blocks, block_threads);
  int64_t most = 0;
  for (int64_t block = first_block; block < blocks; ++block) {
    for (int64_t thread = 0; thread < threads; ++thread) {
      const int64_t first = first_pack(static_cast<unsigned>(block), block_threads, static_cast<unsigned>(thread));
      most = std::max(most, run_thread(first, stride, p.packs, [&](int64_t pack) { body(p, pack); }));
    }
  }
  return most;
}

// Applies the test's overrides: width 0 keeps the plan's, blocks or threads -1 keep the plan's grid.
template <typename Params>
void override_plan(Launch<Params>& plan, int64_t width, int64_t blocks, int64_t threads) {
  if (width > 0) {
    plan.width = static_cast<int>(width);
    plan.params.packs = plan.total / width;
  }
  if (blocks >= 0) plan.blocks = blocks;
  if (threads >= 0) plan.threads = threads;
}

// Runs the packed or the one-element instantiation of a per-thread function.
template <typename scalar_t, typename Params, typename Packed, typename Single>
int64_t run_plan(const Launch<Params>& plan, int64_t first_block, Packed packed, Single single) {
  try {
    if (plan.width == pack_width<scalar_t>()) {
      return run_grid(plan.params, plan.blocks, plan.threads, first_block, packed);
    }
    TORCH_CHECK(plan.width == 1, "width ", plan.width, ": the kernels have 1 and ", pack_width<scalar_t>());
    return run_grid(plan.params, plan.blocks, plan.threads, first_block, single);
  } catch (const std::logic_error& error) {
    TORCH_CHECK(false, "emulated kernel: ", error.what());
  }
}

// The plans' device-fill cap: a small one, so that default grids also loop.
constexpr int64_t kResident = 4;

#define QLAYERS_PACK_FN(fn, scalar_t, Width) \
  [](const auto& p, int64_t pack) { fn<scalar_t, Width>(p, pack); }

std::tuple<at::Tensor, int64_t, int64_t> expand(const at::Tensor& r, const at::Tensor& i, const at::Tensor& j,
                                                const at::Tensor& k, int64_t width, int64_t blocks,
                                                int64_t threads, int64_t first_block) {
  ExpandCall call = prepare_expand(r, i, j, k);
  std::vector<at::Tensor> buffers;
  call.out = guarded_empty(call.out.sizes(), call.out.options(), buffers);
  int64_t used = 0, iterations = 0;
  if (call.out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "emulated_expand", [&] {
      auto plan = plan_expand<scalar_t>(call, kResident);
      override_plan(plan, width, blocks, threads);
      used = plan.width;
      iterations = run_plan<scalar_t>(plan, first_block, QLAYERS_PACK_FN(expand_pack, scalar_t, pack_width<scalar_t>()),
                                      QLAYERS_PACK_FN(expand_pack, scalar_t, 1));
    });
  }
  check_guards(buffers);
  return {call.out, used, iterations};
}

std::tuple<std::vector<at::Tensor>, int64_t, int64_t> reduce(const at::Tensor& grad, int64_t width, int64_t blocks,
                                                             int64_t threads, int64_t first_block) {
  ReduceCall call = prepare_reduce(grad);
  std::vector<at::Tensor> buffers;
  for (auto& out : call.outs) out = guarded_empty(out.sizes(), out.options(), buffers);
  int64_t used = 0, iterations = 0;
  if (call.outs[0].numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "emulated_reduce", [&] {
      auto plan = plan_reduce<scalar_t>(call, kResident);
      override_plan(plan, width, blocks, threads);
      used = plan.width;
      iterations = run_plan<scalar_t>(plan, first_block, QLAYERS_PACK_FN(reduce_pack, scalar_t, pack_width<scalar_t>()),
                                      QLAYERS_PACK_FN(reduce_pack, scalar_t, 1));
    });
  }
  check_guards(buffers);
  return {std::vector<at::Tensor>(call.outs.begin(), call.outs.end()), used, iterations};
}

template <typename Call>
std::tuple<at::Tensor, int64_t, int64_t> rows_op(Call call, const at::Tensor& in, bool spread, int64_t width,
                                                 int64_t blocks, int64_t threads, int64_t first_block) {
  std::vector<at::Tensor> buffers;
  call.out = guarded_empty(call.out.sizes(), call.out.options(), buffers);
  int64_t used = 0, iterations = 0;
  if (call.out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "emulated_rows", [&] {
      auto plan = plan_rows<scalar_t>(in, call.out, call.rows, call.k, call.transpose, kResident);
      override_plan(plan, width, blocks, threads);
      used = plan.width;
      if (spread) {
        iterations = run_plan<scalar_t>(plan, first_block, QLAYERS_PACK_FN(spread_pack, scalar_t, pack_width<scalar_t>()),
                                        QLAYERS_PACK_FN(spread_pack, scalar_t, 1));
      } else {
        iterations = run_plan<scalar_t>(plan, first_block, QLAYERS_PACK_FN(combine_pack, scalar_t, pack_width<scalar_t>()),
                                        QLAYERS_PACK_FN(combine_pack, scalar_t, 1));
      }
    });
  }
  check_guards(buffers);
  return {call.out, used, iterations};
}

std::tuple<at::Tensor, int64_t, int64_t> combine(const at::Tensor& products, bool transpose, int64_t width,
                                                 int64_t blocks, int64_t threads, int64_t first_block) {
  CombineCall call = prepare_combine(products, transpose);
  return rows_op(call, call.products, false, width, blocks, threads, first_block);
}

std::tuple<at::Tensor, int64_t, int64_t> spread(const at::Tensor& grad, bool transpose, int64_t width,
                                                int64_t blocks, int64_t threads, int64_t first_block) {
  SpreadCall call = prepare_spread(grad, transpose);
  return rows_op(call, call.grad, true, width, blocks, threads, first_block);
}

// block_mix into a guarded (B_out, rows, cols) output, or its interleaved (rows, B_out, cols) layout.
std::tuple<at::Tensor, int64_t, int64_t> block_mix(const at::Tensor& blocks, std::vector<double> coefficients,
                                                   bool interleave, int64_t width, int64_t blocks_override,
                                                   int64_t threads, int64_t first_block) {
  const int64_t blocks_out = check_block_mix(blocks, coefficients);
  const int64_t rows = blocks.size(1), cols = blocks.size(2);
  std::vector<at::Tensor> buffers;
  at::Tensor result = interleave ? guarded_empty({rows, blocks_out, cols}, blocks.options(), buffers)
                                 : guarded_empty({blocks_out, rows, cols}, blocks.options(), buffers);
  const at::Tensor out = interleave ? result.transpose(0, 1) : result;
  const at::Tensor input = blocks.stride(2) == 1 ? blocks : blocks.contiguous();  // as the launcher does
  int64_t used = 0, iterations = 0;
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks.scalar_type(), "emulated_block_mix", [&] {
      auto plan = plan_block_mix<scalar_t>(input, coefficients, out, kResident);
      override_plan(plan, width, blocks_override, threads);
      used = plan.width;
      iterations = run_plan<scalar_t>(plan, first_block,
                                      QLAYERS_PACK_FN(block_mix_pack, scalar_t, pack_width<scalar_t>()),
                                      QLAYERS_PACK_FN(block_mix_pack, scalar_t, 1));
    });
  }
  check_guards(buffers);
  return {result, used, iterations};
}

// The test's overrides of a plan (see override_plan and run_grid).
struct Overrides {
  int64_t width, blocks, threads, first_block;
};

// Runs a gate op's plan, overridden: returns the width it ran and the most iterations of a thread.
template <typename scalar_t, typename Params, typename Packed, typename Single>
std::tuple<int64_t, int64_t> run_overridden(Launch<Params> plan, const Overrides& o, Packed packed, Single single) {
  override_plan(plan, o.width, o.blocks, o.threads);
  return {plan.width, run_plan<scalar_t>(plan, o.first_block, packed, single)};
}

// recurrent_gates_forward, checked as the CUDA op is, on guarded tensors: hidden and cell (read and
// updated in place) copied in, output and cells_out all NaN. Returns (hidden, cell, output,
// cells_out, width, iterations); cell and cells_out None where not given.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, int64_t, int64_t> gates_forward(
    const at::Tensor& projected, const at::Tensor& recurrent, const at::Tensor& hidden,
    const std::optional<at::Tensor>& cell, const at::Tensor& output, const std::optional<at::Tensor>& cells_out,
    const std::string& cell_name, std::vector<int64_t> slots, bool gate_major, const std::optional<at::Tensor>& mask,
    int64_t width, int64_t blocks, int64_t threads, int64_t first_block) {
  const auto a = checked_gates_forward(projected, recurrent, hidden, cell, output, cells_out, cell_name, slots, mask);
  std::vector<at::Tensor> buffers;
  const at::Tensor h = guarded_copy(hidden, buffers), c = guarded_copy(a.cell, buffers);
  const at::Tensor out = guarded_like(output, buffers), kept = guarded_like(a.cells_out, buffers);
  std::tuple<int64_t, int64_t> ran{0, 0};
  if (h.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "emulated_gates_forward", [&] {
      auto plan =
          plan_gates_forward<scalar_t>(projected, recurrent, h, c, out, kept, a.mask, a.kind, slots,
                                       kResident, gate_major);
      ran = run_overridden<scalar_t>(plan, {width, blocks, threads, first_block},
                                     QLAYERS_PACK_FN(gates_forward_pack, scalar_t, pack_width<scalar_t>()),
                                     QLAYERS_PACK_FN(gates_forward_pack, scalar_t, 1));
    });
  }
  check_guards(buffers);
  return {h, c, out, kept, std::get<0>(ran), std::get<1>(ran)};
}

// recurrent_gates_backward, likewise: pre, grad_hidden and grad_cell (read and updated in place)
// copied into guarded buffers; the read-only inputs read in place, in whatever alignment they have.
// Returns (pre, grad_hidden, grad_cell, width, iterations); grad_cell None where not given.
std::tuple<at::Tensor, at::Tensor, at::Tensor, int64_t, int64_t> gates_backward(
    const at::Tensor& pre, const std::optional<at::Tensor>& grad_output, const at::Tensor& grad_hidden,
    const std::optional<at::Tensor>& grad_cell, const std::optional<at::Tensor>& hidden_prev,
    const std::optional<at::Tensor>& cell_prev, const std::optional<at::Tensor>& cell, const std::string& cell_name,
    std::vector<int64_t> slots, bool gate_major, const std::optional<at::Tensor>& mask, int64_t width, int64_t blocks,
    int64_t threads, int64_t first_block) {
  const auto a = checked_gates_backward(pre, grad_output, grad_hidden, grad_cell, hidden_prev, cell_prev, cell,
                                        cell_name, slots, mask);
  std::vector<at::Tensor> buffers;
  const at::Tensor p = guarded_copy(pre, buffers), gh = guarded_copy(grad_hidden, buffers);
  const at::Tensor gc = guarded_copy(a.grad_cell, buffers);
  std::tuple<int64_t, int64_t> ran{0, 0};
  if (gh.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gh.scalar_type(), "emulated_gates_backward", [&] {
      auto plan = plan_gates_backward<scalar_t>(p, a.grad_output, gh, gc, a.hidden_prev, a.cell_prev, a.cell, a.mask,
                                                a.kind, slots, kResident, gate_major);
      ran = run_overridden<scalar_t>(plan, {width, blocks, threads, first_block},
                                     QLAYERS_PACK_FN(gates_backward_pack, scalar_t, pack_width<scalar_t>()),
                                     QLAYERS_PACK_FN(gates_backward_pack, scalar_t, 1));
    });
  }
  check_guards(buffers);
  return {p, gh, gc, std::get<0>(ran), std::get<1>(ran)};
}

}  // namespace
}  // namespace kernels
}  // namespace qlayers

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace pybind11::literals;
  namespace k = qlayers::kernels;
  m.def("expand", &k::expand, "r"_a, "i"_a, "j"_a, "k"_a, "width"_a = 0, "blocks"_a = -1, "threads"_a = -1, "first_block"_a = 0);
  m.def("reduce", &k::reduce, "grad"_a, "width"_a = 0, "blocks"_a = -1, "threads"_a = -1, "first_block"_a = 0);
  m.def("combine", &k::combine, "products"_a, "transpose"_a, "width"_a = 0, "blocks"_a = -1, "threads"_a = -1, "first_block"_a = 0);
  m.def("spread", &k::spread, "grad"_a, "transpose"_a, "width"_a = 0, "blocks"_a = -1, "threads"_a = -1, "first_block"_a = 0);
  m.def("block_mix", &k::block_mix, "blocks"_a, "coefficients"_a, "interleave"_a, "width"_a = 0, "blocks_override"_a = -1,
        "threads"_a = -1, "first_block"_a = 0);
  m.def("gates_forward", &k::gates_forward, "projected"_a, "recurrent"_a, "hidden"_a, "cell_state"_a, "output"_a,
        "cells_out"_a, "cell"_a, "slots"_a, "gate_major"_a = false, "mask"_a = pybind11::none(), "width"_a = 0, "blocks"_a = -1, "threads"_a = -1, "first_block"_a = 0);
  m.def("gates_backward", &k::gates_backward, "pre"_a, "grad_output"_a, "grad_hidden"_a, "grad_cell"_a,
        "hidden_prev"_a, "cell_prev"_a, "cell_state"_a, "cell"_a, "slots"_a, "gate_major"_a = false,
        "mask"_a = pybind11::none(), "width"_a = 0, "blocks"_a = -1, "threads"_a = -1, "first_block"_a = 0);
  m.attr("THREADS") = k::kThreads;
  m.attr("PACK_BYTES") = k::kPackBytes;
}
