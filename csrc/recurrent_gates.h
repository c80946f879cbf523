// Argument checks of the fused gate ops (recurrent_gates_forward / _backward), shared by the CPU and
// CUDA kernels (and the emulation): the engine calls them with right arguments, but they are
// public operators, so a wrong call must raise, never write out of bounds. Also the cell names that
// every recurrent op takes (recurrent_scan and its backward too).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "hamilton_shapes.h"
#include "recurrent_cells.h"

namespace qlayers {

// The cells by the name the operators take (their `str cell` argument): the one table that parses
// it. Python passes these names (qlayers/ops/recurrent.py's CELLS).
struct CellName {
  const char* name;
  CellKind kind;
};
inline constexpr CellName kCellNames[] = {
    {"rnn_tanh", kRnnTanh},
    {"rnn_relu", kRnnRelu},
    {"rnn_identity", kRnnIdentity},  // no activation on the state
    {"lstm", kLstm},
    {"ligru_relu", kLiGru},
    {"ligru_leaky_relu", kLiGruLeakyRelu},
    {"ligru_tanh", kLiGruTanh},
};

// The cell named `cell`; any other name raises a ValueError that lists the accepted ones.
inline CellKind parse_cell(const char* op, std::string_view cell) {
  for (const CellName& known : kCellNames) {
    if (cell == known.name) return known.kind;
  }
  std::string accepted;
  for (const CellName& known : kCellNames) {
    accepted += accepted.empty() ? "'" : ", '";
    accepted += known.name;
    accepted += "'";
  }
  TORCH_CHECK_VALUE(false, op, ": cell must be one of (", accepted, "), got '", std::string(cell), "'");
}

inline void check_cell_layout(const char* op, CellKind kind, at::IntArrayRef slots) {
  const int gates = cell_gates(kind);
  bool permutation = static_cast<int64_t>(slots.size()) == gates;
  for (int64_t g = 0; permutation && g < gates; ++g) {
    int64_t seen = 0;
    for (int64_t slot : slots) seen += slot == g;
    permutation = seen == 1;
  }
  TORCH_CHECK_VALUE(permutation, op, ": expected gate slots a permutation of 0..", gates - 1, " for this cell, got ",
                    slots);
}

// Every tensor here is (rows, width) with contiguous rows, of one dtype and device; an undefined one
// is skipped. `states` are (rows, H) with H a multiple of 4; `gate_rows` are (rows, gates * H).
inline void check_gate_tensors(const char* op, CellKind kind, std::initializer_list<const at::Tensor*> states,
                               std::initializer_list<const at::Tensor*> gate_rows) {
  const at::Tensor& first = **states.begin();
  check_floating(op, first);
  TORCH_CHECK_VALUE(first.dim() == 2 && first.size(1) % 4 == 0, op,
                    ": expected states of shape (rows, H), H a multiple of 4, got ", first.sizes());
  const int64_t rows = first.size(0), hidden = first.size(1);
  const int64_t width = cell_gates(kind) * hidden;
  auto check = [&](const at::Tensor& t, int64_t columns) {
    TORCH_CHECK_TYPE(t.scalar_type() == first.scalar_type(), op, ": expected one dtype, got ", first.scalar_type(),
                     " and ", t.scalar_type());
    TORCH_CHECK_VALUE(t.device() == first.device(), op, ": expected one device, got ", first.device(), " and ",
                      t.device());
    TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == rows && t.size(1) == columns, op, ": expected shape (", rows, ", ",
                      columns, "), got ", t.sizes());
    TORCH_CHECK_VALUE(t.is_contiguous(), op, ": expected contiguous tensors");
  };
  for (const at::Tensor* t : states) {
    if (t->defined()) check(*t, hidden);
  }
  for (const at::Tensor* t : gate_rows) {
    if (t->defined()) check(*t, width);
  }
}

inline void require(const char* op, bool present, const char* what) {
  TORCH_CHECK_VALUE(present, op, ": this cell needs ", what);
}

inline void check_gates_forward(const at::Tensor& projected, const at::Tensor& recurrent, const at::Tensor& hidden,
                                const at::Tensor& cell, const at::Tensor& output, const at::Tensor& cells_out,
                                const at::Tensor& mask, CellKind kind, at::IntArrayRef slots) {
  constexpr const char* op = "recurrent_gates_forward";
  check_cell_layout(op, kind, slots);
  check_gate_tensors(op, kind, {&hidden, &cell, &output, &cells_out, &mask}, {&projected, &recurrent});
  require(op, !cell_has_cell_state(kind) || cell.defined(), "a cell state");
  // hidden and cell are updated in place, each element by the thread that reads it.
  check_no_aliasing(op, {{"projected", projected, false},
                         {"recurrent", recurrent, false},
                         {"hidden", hidden, true},
                         {"cell_state", cell, true},
                         {"output", output, true},
                         {"cells_out", cells_out, true},
                         {"mask", mask, false}});
}

inline void check_gates_backward(const at::Tensor& pre, const at::Tensor& grad_output, const at::Tensor& grad_hidden,
                                 const at::Tensor& grad_cell, const at::Tensor& hidden_prev,
                                 const at::Tensor& cell_prev, const at::Tensor& cell, const at::Tensor& mask,
                                 CellKind kind, at::IntArrayRef slots) {
  constexpr const char* op = "recurrent_gates_backward";
  check_cell_layout(op, kind, slots);
  check_gate_tensors(op, kind, {&grad_hidden, &grad_output, &grad_cell, &hidden_prev, &cell_prev, &cell, &mask},
                     {&pre});
  if (cell_has_cell_state(kind)) {
    require(op, grad_cell.defined() && cell_prev.defined() && cell.defined(), "grad_cell, cell_prev and cell");
  }
  if (cell_is_light_gru(kind)) require(op, hidden_prev.defined(), "hidden_prev");
  // pre takes its own gradients, and grad_hidden / grad_cell are carried in place.
  check_no_aliasing(op, {{"pre", pre, true},
                         {"grad_output", grad_output, false},
                         {"grad_hidden", grad_hidden, true},
                         {"grad_cell", grad_cell, true},
                         {"hidden_prev", hidden_prev, false},
                         {"cell_prev", cell_prev, false},
                         {"cell_state", cell, false},
                         {"mask", mask, false}});
}

inline at::Tensor defined_or_empty(const c10::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

// A gate op's arguments as its kernels take them: the cell parsed, each optional tensor defined or
// empty, all checked. The CPU, CUDA and emulated entry points share it.
struct GatesForwardArgs {
  CellKind kind;
  at::Tensor cell, cells_out, mask;
};

inline GatesForwardArgs checked_gates_forward(const at::Tensor& projected, const at::Tensor& recurrent,
                                              const at::Tensor& hidden, const c10::optional<at::Tensor>& cell,
                                              const at::Tensor& output, const c10::optional<at::Tensor>& cells_out,
                                              std::string_view cell_name, at::IntArrayRef slots,
                                              const c10::optional<at::Tensor>& mask) {
  const GatesForwardArgs a{parse_cell("recurrent_gates_forward", cell_name), defined_or_empty(cell),
                           defined_or_empty(cells_out), defined_or_empty(mask)};
  check_gates_forward(projected, recurrent, hidden, a.cell, output, a.cells_out, a.mask, a.kind, slots);
  return a;
}

struct GatesBackwardArgs {
  CellKind kind;
  at::Tensor grad_output, grad_cell, hidden_prev, cell_prev, cell, mask;
};

inline GatesBackwardArgs checked_gates_backward(const at::Tensor& pre, const c10::optional<at::Tensor>& grad_output,
                                                const at::Tensor& grad_hidden,
                                                const c10::optional<at::Tensor>& grad_cell,
                                                const c10::optional<at::Tensor>& hidden_prev,
                                                const c10::optional<at::Tensor>& cell_prev,
                                                const c10::optional<at::Tensor>& cell, std::string_view cell_name,
                                                at::IntArrayRef slots, const c10::optional<at::Tensor>& mask) {
  const GatesBackwardArgs a{parse_cell("recurrent_gates_backward", cell_name),
                            defined_or_empty(grad_output),
                            defined_or_empty(grad_cell),
                            defined_or_empty(hidden_prev),
                            defined_or_empty(cell_prev),
                            defined_or_empty(cell),
                            defined_or_empty(mask)};
  check_gates_backward(pre, a.grad_output, grad_hidden, a.grad_cell, a.hidden_prev, a.cell_prev, a.cell, a.mask,
                       a.kind, slots);
  return a;
}

}  // namespace qlayers
