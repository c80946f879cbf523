"""The Python side of the ``torch.ops.qlayers`` operators, one module per op family.

Each module holds its family's fake kernels (what torch.compile, torch.export and meta tensors see),
its Python autograd and vmap registrations, and the autograd Functions with a jvp that torch.func
transforms and forward-mode AD take (torch has no jvp registration for an op). Their argument
checks are one module, :mod:`~qlayers.ops.checks`. The schemas are csrc/qlayers.cpp's; the layers'
reverse-mode autograd is C++ (csrc/layers/).

- :mod:`~qlayers.ops.hamilton`: hamilton_expand/reduce/combine/spread and block_mix;
- :mod:`~qlayers.ops.linear`: quaternion_linear and its backward;
- :mod:`~qlayers.ops.conv`: quaternion_conv and its backward;
- :mod:`~qlayers.ops.recurrent`: recurrent_scan and its backward.
"""

from qlayers.ops import conv, hamilton, linear, recurrent  # noqa: F401  (registers)
