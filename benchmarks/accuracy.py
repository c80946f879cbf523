"""float32 error of qlayers' linear layer against the plain path's, both measured against float64.

    python benchmarks/accuracy.py [--batches 1 8 64 512 4096] [--features 512 1024 2048 4096]
                                  [--algorithm auto] [--seed 0]

For each (batch, features) cell of compare.py's grid: ``QLinear(features, features)`` in float32
with the given algorithm, and the plain-autograd layer (``memory_efficient=False``: W built by
``torch.cat``, one matmul), each run forward and backward with a dense upstream gradient; the
float64 plain layer on the same values is the reference. A tensor's error is its relative
Frobenius-norm error; a cell's ratio is qlayers' error over the plain path's, for the output and
for each gradient (input, four components, bias), and the table gives the largest. Nothing is
timed: a seed gives the same figures on the same machine and GEMM library.
"""

import argparse
from typing import Dict, List

import measure
import torch

import qlayers

FEATURES = (512, 1024, 2048, 4096)
BATCHES = (1, 8, 64, 512, 4096)
TENSORS = ("output", "input", "r", "i", "j", "k", "bias")


def outputs_and_gradients(layer: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> List[torch.Tensor]:
    """The output, then the gradients of the input, the four components and the bias."""
    x = x.clone().requires_grad_()
    out = layer(x)
    out.backward(grad)
    parameters = (layer.r_weight, layer.i_weight, layer.j_weight, layer.k_weight, layer.bias)
    return [out.detach(), x.grad, *(p.grad for p in parameters)]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


def error_ratios(batch: int, features: int, algorithm: str = "auto", seed: int = 0) -> Dict[str, float]:
    """Per tensor of TENSORS: qlayers' float32 error over the plain path's, both against float64."""
    torch.manual_seed(seed)
    reference = qlayers.QLinear(features, features, memory_efficient=False, dtype=torch.float64)
    with torch.no_grad():
        reference.bias.normal_()
    x = torch.randn(batch, features, dtype=torch.float64)
    grad = torch.randn(batch, features, dtype=torch.float64)
    want = outputs_and_gradients(reference, x, grad)
    errors = {}
    for name, options in (("qlayers", {"algorithm": algorithm}), ("plain", {"memory_efficient": False})):
        layer = qlayers.QLinear(features, features, dtype=torch.float32, **options)
        layer.load_state_dict(reference.state_dict())
        got = outputs_and_gradients(layer, x.float(), grad.float())
        errors[name] = [relative_error(g, w) for g, w in zip(got, want)]
    return {t: q / p for t, q, p in zip(TENSORS, errors["qlayers"], errors["plain"])}


def formulations(algorithm, batch, features):
    """The formulation each phase takes, as one name where the phases agree, else "forward / input
    grad / components' grads": a divergence between phases must show in the table."""
    chosen = [
        qlayers.functional.choose_algorithm(algorithm, rows=batch, n=features // 4, phase=phase)
        for phase in qlayers.functional.choice.PHASES
    ]
    return chosen[0] if len(set(chosen)) == 1 else " / ".join(chosen)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--features", type=int, nargs="+", default=list(FEATURES))
    parser.add_argument("--algorithm", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {measure.machine(torch.device('cpu'))}")
    print(f"\nfloat32 error over the plain path's, against float64 (algorithm {args.algorithm!r}, seed {args.seed}):\n")
    print("| batch | features | formulation | largest ratio | on | output | input grad | components' grads (max) |")
    print("|---:|---:|---|---:|---|---:|---:|---:|")
    for features in args.features:
        for batch in args.batches:
            ratios = error_ratios(batch, features, args.algorithm, args.seed)
            worst = max(ratios, key=ratios.get)
            formulation = formulations(args.algorithm, batch, features)
            components = max(ratios[c] for c in "rijk")
            print(
                f"| {batch} | {features} | {formulation} | {ratios[worst]:.2f} | {worst} | {ratios['output']:.2f} "
                f"| {ratios['input']:.2f} | {components:.2f} |"
            )


if __name__ == "__main__":
    main()
