// The recurrent engine: one layer and direction of QRNN, QLSTM or QLiGRU over a whole sequence,
// with its time loop in C++.
//
//   qlayers::recurrent_scan           forward: per step one recurrent product (h_{t-1} @ W) and one
//                                     fused gate kernel
//   qlayers::_recurrent_scan_backward  the reverse loop: per step one gate kernel and one product
//                                     (dL/dpre @ W^T)
//
// The input projection is not here: the caller runs it for all steps as one QLinear product and
// passes `projected`. The recurrent weight is prepared once per sequence (StepProduct). Backward
// keeps no W and no pre-activations: it has `projected`, the outputs and (LSTM) the cell states,
// and gets every step's pre-activations from one product over the whole sequence; the buffer they
// sit in then receives their gradients in place and is returned as the gradient of `projected`.
// The recurrent weight's gradient is one product over all steps, folded onto the four components.
// Both whole-sequence products go through the linear layer's formulations and its choice.
// Autograd and the fake kernels are registered in Python (qlayers/ops/recurrent.py), which
// also gives double backward its differentiable path.
//
// PackedSequence: `batch_sizes` gives each step's active rows (sorted sequences: the first rows).
// Inactive rows keep their state, output zeros and get zero gradients. The reverse direction runs
// the same padded tensors from the last step, so a sequence starts where it has its last element.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "../hamilton_shapes.h"
#include "../recurrent_cells.h"
#include "../recurrent_gates.h"
#include "below_autograd.h"
#include "cpu_gemm.h"
#include "linear_choice.h"
#include "linear_formulations.h"
#include "onednn_linear.h"
#include "qlayers_ops.h"

namespace qlayers {
namespace recurrent {
namespace {

constexpr const char* kOp = "recurrent_scan";

// One sequence's shape and step order.
struct Scan {
  CellKind kind;
  c10::string_view cell;  // its name, as the gate ops take it
  int64_t steps, batch, hidden;
  std::vector<int64_t> slots;
  std::optional<std::vector<int64_t>> batch_sizes;
  bool reverse;

  bool has_cell() const { return cell_has_cell_state(kind); }
  int64_t rows(int64_t t) const { return batch_sizes ? (*batch_sizes)[t] : batch; }
  // The time index of step s, in the order the direction runs.
  int64_t time(int64_t s) const { return reverse ? steps - 1 - s : s; }
  // The time of the step before time t in run order, or -1 at the first step.
  int64_t previous(int64_t t) const { return reverse ? (t + 1 < steps ? t + 1 : -1) : t - 1; }
  // How many of time t's rows continue from the previous step; the others start from h0 / c0
  // (rows of a packed sequence that the reverse direction starts at t).
  int64_t continuing(int64_t t) const {
    const int64_t before = previous(t);
    return before < 0 ? 0 : std::min(rows(t), rows(before));
  }
};

Scan check_scan(const at::Tensor& projected, const std::array<at::Tensor, 4>& weight, const at::Tensor& h0,
                const at::Tensor& c0, c10::string_view cell, at::IntArrayRef slots,
                const c10::optional<at::IntArrayRef>& batch_sizes, bool reverse) {
  const CellKind kind = parse_cell(kOp, cell);
  check_cell_layout(kOp, kind, slots);
  check_floating(kOp, projected);
  const int gates = cell_gates(kind);
  TORCH_CHECK_VALUE(h0.dim() == 2 && h0.size(1) > 0 && h0.size(1) % 4 == 0, kOp,
                    ": expected h0 of shape (batch, H), H a positive multiple of 4, got ", h0.sizes());
  const int64_t batch = h0.size(0), hidden = h0.size(1);
  TORCH_CHECK_VALUE(projected.dim() == 3 && projected.size(1) == batch && projected.size(2) == gates * hidden, kOp,
                    ": expected projected of shape (steps, ", batch, ", ", gates * hidden, "), got ",
                    projected.sizes());
  TORCH_CHECK_VALUE(projected.size(0) > 0, kOp, ": expected a sequence length larger than 0, got ",
                    projected.sizes());
  std::vector<const at::Tensor*> same = {&h0, &weight[0], &weight[1], &weight[2], &weight[3]};
  if (cell_has_cell_state(kind)) {
    TORCH_CHECK_VALUE(c0.defined() && c0.sizes() == h0.sizes(), kOp, ": expected c0 of shape ", h0.sizes(),
                      c0.defined() ? std::string(", got ") + c10::str(c0.sizes()) : std::string(", got none"));
    same.push_back(&c0);
  }
  for (const at::Tensor* t : same) {
    TORCH_CHECK_TYPE(t->scalar_type() == projected.scalar_type(), kOp, ": expected one dtype, got ",
                     projected.scalar_type(), " and ", t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == projected.device(), kOp, ": expected one device, got ", projected.device(),
                      " and ", t->device());
  }
  for (const at::Tensor& component : weight) {
    TORCH_CHECK_VALUE(component.dim() == 2 && component.size(0) == hidden / 4 &&
                          component.size(1) == gates * hidden / 4,
                      kOp, ": expected weight components of shape (", hidden / 4, ", ", gates * hidden / 4,
                      "), got ", component.sizes());
  }
  Scan scan{kind, cell, projected.size(0), batch, hidden, slots.vec(), std::nullopt, reverse};
  if (batch_sizes) {
    TORCH_CHECK_VALUE(static_cast<int64_t>(batch_sizes->size()) == scan.steps, kOp, ": expected ", scan.steps,
                      " batch sizes, one per step, got ", batch_sizes->size());
    bool sorted = batch_sizes->front() == batch;
    for (size_t t = 0; t < batch_sizes->size(); ++t) {
      sorted = sorted && (*batch_sizes)[t] >= 1 && (t == 0 || (*batch_sizes)[t] <= (*batch_sizes)[t - 1]);
    }
    TORCH_CHECK_VALUE(sorted, kOp, ": expected batch sizes non-increasing from the batch (", batch,
                      ") down to at least 1, got ", *batch_sizes);
    scan.batch_sizes = batch_sizes->vec();
  }
  return scan;
}

// A state's rows at time t: the previous step's (from `kept`, over the time axis) where they
// continue, the initial state's where they start. A view unless both are needed.
at::Tensor previous_rows(const Scan& scan, const at::Tensor& kept, const at::Tensor& initial, int64_t t) {
  const int64_t rows = scan.rows(t), continuing = scan.continuing(t);
  if (continuing == 0) return initial.narrow(0, 0, rows);
  const at::Tensor from_kept = kept[scan.previous(t)].narrow(0, 0, continuing);
  if (continuing == rows) return from_kept;
  return at::cat({from_kept, initial.narrow(0, continuing, rows - continuing)});
}

// The state each step starts from, for all steps at once (T, B, H): the previous step's output,
// or h0 where a row starts (the first step in run order, and rows a packed sequence starts later).
// Rows a step does not run hold some finite state; their gradients are zero.
at::Tensor previous_states(const Scan& scan, const at::Tensor& output, const at::Tensor& h0) {
  at::Tensor previous = at::empty_like(output);
  if (scan.steps > 1) {
    const int64_t later = scan.reverse ? 0 : 1;  // the steps that have a previous one
    previous.narrow(0, later, scan.steps - 1).copy_(output.narrow(0, 1 - later, scan.steps - 1));
  }
  previous[scan.time(0)].copy_(h0);
  for (int64_t s = 1; s < scan.steps; ++s) {
    const int64_t t = scan.time(s), continuing = scan.continuing(t), rows = scan.rows(t);
    if (continuing < rows) previous[t].narrow(0, continuing, rows - continuing).copy_(h0.narrow(0, continuing, rows - continuing));
  }
  return previous;
}

// The recurrent product of one step, rows @ W (or @ W^T for backward), with the weight prepared
// once per sequence. This GEMM is the loop's cost. Per step, by what was fastest at the benchmark's
// size (16 rows, hidden 512: benchmarks/results):
// - CPU float32, large weights, where oneDNN's GEMM is this CPU's fast one (cpu_gemm.h): oneDNN's
//   linear with W reordered once (82 us on the AMD machine, where oneDNN ran at twice mm's speed);
// - CPU float32/float64 otherwise, large enough: the eight-product form, half the multiplications
//   (its weight sums made once, temporaries reused; 118 us for the 8 GEMMs where MKL's mm took 270 on
//   the AMD machine; on the Intel one, where mm is as fast as oneDNN, it beat oneDNN's prepacked
//   linear: the QLSTM's no_grad forward 50-51 ms against 65-66, benchmarks/recurrent.py);
// - elsewhere W itself and one mm: on the GPU a step stays at two kernels.
class StepProduct {
 public:
  StepProduct(const linear::Components& w, bool adjoint, int64_t batch) {
    const int64_t n = w[0].size(0), m = w[0].size(1);
    const at::ScalarType dtype = w[0].scalar_type();
    const bool cpu = w[0].device().is_cpu(), large = n >= kMinQuaternions;
    if (large && cpu_gemm::takes_onednn(w[0].device().type(), dtype)) {
      // oneDNN's linear multiplies by its weight transposed: (out, in) is W backward, W^T forward,
      // built as it is (W^T is the Hamilton matrix of r^T, -i^T, -j^T, -k^T) rather than copied.
      onednn_.emplace(adjoint ? ops::hamilton_expand(w[0], w[1], w[2], w[3])
                              : ops::hamilton_expand(w[0].t(), w[1].t().neg(), w[2].t().neg(), w[3].t().neg()),
                      batch);
    } else if (cpu && large && (dtype == at::kFloat || dtype == at::kDouble)) {
      sums_ = adjoint ? linear::eight::adjoint_sums(w, /*reused=*/true) : linear::eight::product_sums(w);
      space_ = linear::eight::workspace(batch, adjoint ? m : n, adjoint ? n : m, w[0].options());
    } else {
      const at::Tensor weight = ops::hamilton_expand(w[0], w[1], w[2], w[3]);
      weight_ = adjoint ? weight.t() : weight;
    }
  }

  // rows @ W (or W^T): into `out` (a view with unit column stride), or as a new tensor where the
  // product makes its own (oneDNN), rather than pay for a copy.
  at::Tensor apply(const at::Tensor& rows, at::Tensor out) const {
    if (onednn_) return (*onednn_)(rows);
    if (sums_.defined()) {
      linear::eight::product_into(rows, sums_, out, space_);
    } else {
      at::mm_out(out, rows, weight_);
    }
    return out;
  }

  // into += rows @ W (or W^T). The matrix form does it in its GEMM (addmm), so a step stays one
  // product. oneDNN's linear makes a new tensor and the eight-product form ends in a block mix that
  // overwrites its output, so neither can add: theirs goes to `scratch` (as `out` above; unused where
  // accumulates()) and is added.
  bool accumulates() const { return weight_.defined(); }
  void accumulate(const at::Tensor& rows, at::Tensor into, const at::Tensor& scratch) const {
    if (accumulates()) {
      into.addmm_(rows, weight_);
    } else {
      into.add_(apply(rows, scratch));
    }
  }

 private:
  // Below 64 quaternions (hidden 256) a step's product is small enough that a call's overhead counts.
  static constexpr int64_t kMinQuaternions = 64;
  std::optional<onednn::Linear> onednn_;
  at::Tensor weight_, sums_;
  linear::eight::Workspace space_;
};

// The dropout mask, (B, H) as the states, contiguous; undefined for none.
at::Tensor checked_mask(const c10::optional<at::Tensor>& mask, const Scan& scan) {
  if (!mask.has_value() || !mask->defined()) return at::Tensor();
  TORCH_CHECK_VALUE(mask->dim() == 2 && mask->size(0) == scan.batch && mask->size(1) == scan.hidden, kOp,
                    ": expected a mask of shape (", scan.batch, ", ", scan.hidden, "), got ", mask->sizes());
  return mask->contiguous();
}

// The first `rows` rows of a tensor (a packed sequence's active rows), or nothing for an undefined one.
c10::optional<at::Tensor> first_rows(const at::Tensor& t, int64_t rows) {
  return t.defined() ? c10::optional<at::Tensor>(t.narrow(0, 0, rows)) : c10::nullopt;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrent_scan(
    const at::Tensor& projected_in, const at::Tensor& r, const at::Tensor& i, const at::Tensor& j, const at::Tensor& k,
    const at::Tensor& h0, const c10::optional<at::Tensor>& c0_in, c10::string_view cell_name, at::IntArrayRef slots,
    c10::optional<at::IntArrayRef> batch_sizes, bool reverse, bool keep, bool gate_major,
    const c10::optional<at::Tensor>& mask_in) {
  const at::Tensor c0 = defined_or_empty(c0_in);
  const Scan scan = check_scan(projected_in, {r, i, j, k}, h0, c0, cell_name, slots, batch_sizes, reverse);
  const at::Tensor mask = checked_mask(mask_in, scan);
  const at::Tensor projected = projected_in.contiguous();
  const StepProduct step_product({r, i, j, k}, /*adjoint=*/false, scan.batch);
  const auto options = projected.options();
  const std::vector<int64_t> states{scan.steps, scan.batch, scan.hidden};
  // Padding rows of a packed sequence's output are zeros, as torch's pad_packed_sequence gives.
  at::Tensor output = scan.batch_sizes ? at::zeros(states, options) : at::empty(states, options);
  at::Tensor hidden = h0.contiguous().clone();
  at::Tensor cell = scan.has_cell() ? c0.contiguous().clone() : at::empty({0}, options);
  const bool keep_cells = keep && scan.has_cell();
  at::Tensor cells = keep_cells ? (scan.batch_sizes ? at::zeros(states, options) : at::empty(states, options))
                                : at::empty({0}, options);
  at::Tensor recurrent = at::empty({scan.batch, projected.size(2)}, options);
  for (int64_t s = 0; s < scan.steps; ++s) {
    const int64_t t = scan.time(s), rows = scan.rows(t);
    const at::Tensor hidden_rows = hidden.narrow(0, 0, rows);
    const at::Tensor recurrent_rows = step_product.apply(hidden_rows, recurrent.narrow(0, 0, rows));
    ops::recurrent_gates_forward(projected[t].narrow(0, 0, rows), recurrent_rows, hidden_rows,
                                 scan.has_cell() ? c10::optional<at::Tensor>(cell.narrow(0, 0, rows)) : c10::nullopt,
                                 output[t].narrow(0, 0, rows),
                                 keep_cells ? c10::optional<at::Tensor>(cells[t].narrow(0, 0, rows)) : c10::nullopt,
                                 scan.cell, slots, gate_major, first_rows(mask, rows));
  }
  return {output, hidden, cell, cells};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
recurrent_scan_backward(const c10::optional<at::Tensor>& grad_output_in, const c10::optional<at::Tensor>& grad_h_n,
                        const c10::optional<at::Tensor>& grad_c_n, const at::Tensor& projected, const at::Tensor& r,
                        const at::Tensor& i, const at::Tensor& j, const at::Tensor& k, const at::Tensor& h0_in,
                        const c10::optional<at::Tensor>& c0_in, const at::Tensor& output_in,
                        const at::Tensor& cells_in, c10::string_view cell_name, at::IntArrayRef slots,
                        c10::optional<at::IntArrayRef> batch_sizes, bool reverse, std::array<bool, 4> output_mask,
                        bool gate_major, const c10::optional<at::Tensor>& mask_in) {
  const at::Tensor c0_given = defined_or_empty(c0_in);
  const Scan scan = check_scan(projected, {r, i, j, k}, h0_in, c0_given, cell_name, slots, batch_sizes, reverse);
  const CellKind kind = scan.kind;
  const at::Tensor mask = checked_mask(mask_in, scan);
  const std::vector<int64_t> states{scan.steps, scan.batch, scan.hidden};
  TORCH_CHECK_VALUE(output_in.sizes() == at::IntArrayRef(states), kOp, ": expected output of shape ",
                    at::IntArrayRef(states), ", got ", output_in.sizes());
  TORCH_CHECK_VALUE(!scan.has_cell() || cells_in.sizes() == at::IntArrayRef(states), kOp,
                    ": expected the kept cell states of shape ", at::IntArrayRef(states), ", got ", cells_in.sizes());
  // The gate kernels take contiguous rows, and the first step reads h0 and c0 as the previous states
  // (a learned initial state expanded over the batch is not contiguous).
  const at::Tensor output = output_in.contiguous(), h0 = h0_in.contiguous();
  const at::Tensor cells = scan.has_cell() ? cells_in.contiguous() : at::Tensor();
  const at::Tensor c0 = c0_given.defined() ? c0_given.contiguous() : c0_given;
  const auto options = projected.options();
  const linear::Components weight{r, i, j, k};
  const int64_t all_rows = scan.steps * scan.batch, n = r.size(0), m = r.size(1);
  auto choose = [&](linear::Phase phase) {
    return linear::choose(linear::Algorithm::kAuto, phase, all_rows, n, m, r.scalar_type(), r.device().type());
  };

  // Every step's pre-activations from one product; the buffer then takes their gradients.
  const at::Tensor previous = previous_states(scan, output, h0).view({all_rows, scan.hidden});
  at::Tensor pre = linear::product(choose(linear::Phase::kForward), previous, weight, at::Tensor())
                       .view({scan.steps, scan.batch, projected.size(2)})
                       .add_(projected);

  const at::Tensor grad_output =
      grad_output_in.has_value() && grad_output_in->defined() ? grad_output_in->contiguous() : at::Tensor();
  at::Tensor grad_hidden = grad_h_n.has_value() && grad_h_n->defined() ? grad_h_n->contiguous().clone()
                                                                       : at::zeros({scan.batch, scan.hidden}, options);
  at::Tensor grad_cell;
  if (scan.has_cell()) {
    grad_cell = grad_c_n.has_value() && grad_c_n->defined() ? grad_c_n->contiguous().clone()
                                                            : at::zeros({scan.batch, scan.hidden}, options);
  }
  const StepProduct step_product(weight, /*adjoint=*/true, scan.batch);
  // The light GRU adds the product to its direct part of dL/dh_{t-1}; the forms that cannot
  // accumulate write their product here first.
  at::Tensor through_weight = cell_is_light_gru(kind) && !step_product.accumulates()
                                  ? at::empty({scan.batch, scan.hidden}, options)
                                  : at::Tensor();
  for (int64_t s = scan.steps - 1; s >= 0; --s) {
    const int64_t t = scan.time(s), rows = scan.rows(t);
    at::Tensor pre_rows = pre[t].narrow(0, 0, rows), grad_hidden_rows = grad_hidden.narrow(0, 0, rows);
    ops::recurrent_gates_backward(
        pre_rows, grad_output.defined() ? first_rows(grad_output[t], rows) : c10::nullopt, grad_hidden_rows,
        first_rows(grad_cell, rows),
        cell_is_light_gru(kind) ? c10::optional<at::Tensor>(previous_rows(scan, output, h0, t)) : c10::nullopt,
        scan.has_cell() ? c10::optional<at::Tensor>(previous_rows(scan, cells, c0, t)) : c10::nullopt,
        scan.has_cell() ? first_rows(cells[t], rows) : c10::nullopt, scan.cell, slots, gate_major,
        first_rows(mask, rows));
    // dL/dh_{t-1} through the recurrent weight (plus the light GRU's direct part, already there).
    if (cell_is_light_gru(kind)) {
      step_product.accumulate(pre_rows, grad_hidden_rows,
                              through_weight.defined() ? through_weight.narrow(0, 0, rows) : through_weight);
    } else if (const at::Tensor product = step_product.apply(pre_rows, grad_hidden_rows);
               !product.is_same(grad_hidden_rows)) {
      if (rows == scan.batch) {
        grad_hidden = product;  // the whole carry: take the new tensor as it is
      } else {
        grad_hidden_rows.copy_(product);
      }
    }
  }
  if (scan.batch_sizes) {  // padding positions have no pre-activation: no gradient
    for (int64_t t = 0; t < scan.steps; ++t) {
      if (scan.rows(t) < scan.batch) pre[t].narrow(0, scan.rows(t), scan.batch - scan.rows(t)).zero_();
    }
  }

  // A gradient not asked for comes back empty, each its own: no two outputs share memory.
  auto empty = [&] { return at::empty({0}, options); };
  std::array<at::Tensor, 4> grad_weight;
  if (output_mask[1]) {
    grad_weight = linear::gradients(choose(linear::Phase::kGradComponents), previous,
                                    pre.view({all_rows, projected.size(2)}));
    linear::unshare(grad_weight);  // the components formulation's small ones are views of one tensor
  } else {
    grad_weight = {empty(), empty(), empty(), empty()};
  }
  return {output_mask[0] ? pre : empty(),
          grad_weight[0],
          grad_weight[1],
          grad_weight[2],
          grad_weight[3],
          output_mask[2] ? grad_hidden : empty(),
          output_mask[3] && scan.has_cell() ? grad_cell : empty()};
}

}  // namespace

TORCH_LIBRARY_IMPL(qlayers, CompositeExplicitAutograd, m) {
  m.impl("recurrent_scan", &recurrent_scan);
  m.impl("_recurrent_scan_backward", &recurrent_scan_backward);
}

// The backward has no derivative: its Python caller takes differentiable ops for double backward.
TORCH_LIBRARY_IMPL(qlayers, Autograd, m) { m.impl("_recurrent_scan_backward", below_autograd()); }

}  // namespace recurrent
}  // namespace qlayers
