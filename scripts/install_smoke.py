"""An installed qlayers works: run from outside the source tree, in a venv that has only torch.

    python scripts/install_smoke.py        (CI's scripts/check-install.sh runs it from another folder)

QLinear, QConv2d and QLSTM, forward and backward in float64, each against the same layer on plain
autograd (memory_efficient=False, which builds the real Hamilton matrix): outputs and every
parameter's gradient must agree. Prints where qlayers was imported from and its build record.
"""

import json
import os
import sys

import torch

import qlayers

here = os.path.dirname(os.path.abspath(__file__))
source = os.path.dirname(here)
imported = os.path.dirname(os.path.dirname(os.path.abspath(qlayers.__file__)))
if os.path.samefile(imported, source):
    sys.exit(f"qlayers was imported from its source tree ({source}), not from an installed package")
print(f"qlayers from {os.path.dirname(qlayers.__file__)}, built for {json.loads(qlayers._C.build_info)}")

torch.manual_seed(0)
cases = {
    "QLinear": (lambda **kw: qlayers.QLinear(16, 8, **kw), torch.randn(5, 16)),
    "QConv2d": (lambda **kw: qlayers.QConv2d(8, 12, 3, padding=1, **kw), torch.randn(2, 8, 6, 7)),
    "QLSTM": (lambda **kw: qlayers.QLSTM(8, 12, num_layers=2, **kw), torch.randn(6, 3, 8)),
}
for name, (make, x) in cases.items():
    fast, plain = make().double(), make(memory_efficient=False).double()
    plain.load_state_dict(fast.state_dict())
    results = []
    for layer in (fast, plain):
        inputs = x.double().requires_grad_()
        out = layer(inputs)
        out = out[0] if isinstance(out, tuple) else out
        out.pow(2).sum().backward()
        results.append([out, inputs.grad] + [p.grad for p in layer.parameters()])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    print(f"{name}: forward and backward agree with plain autograd ({len(results[0])} tensors)")
print("install smoke test passed")
