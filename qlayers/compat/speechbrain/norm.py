"""SpeechBrain's ``QBatchNorm``: quaternion batch normalisation by the mean squared modulus."""

from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from qlayers.compat.speechbrain import _weights
from qlayers.ops._shared import _transforms_active


def _per_quaternion(x: Tensor) -> Tensor:
    """The sum of a tensor's four component blocks along its last dim: ``(..., C) -> (..., C/4)``."""
    r, i, j, k = x.chunk(4, dim=-1)
    return r + i + j + k


def _modulus_squared(centred: Tensor) -> Tensor:
    """``|x|^2`` of each quaternion, summed in SpeechBrain's order (r, i, j, k)."""
    r, i, j, k = centred.chunk(4, dim=-1)
    return r * r + i * i + j * j + k * k


def _tile(per_quaternion: Tensor) -> Tensor:
    return per_quaternion.repeat(*([1] * (per_quaternion.dim() - 1)), 4)


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts against one of ``target`` to ``target`` (shapes are host data)."""
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _cumulative_factors(count: Tensor) -> Tuple[Tensor, Tensor]:
    """SpeechBrain's ``momentum=None`` factors ``1 - 1/n`` and ``1/n`` of the counter ``n``, as 0-dim
    tensors on its device: what Python computes in float64 from ``n.item()``, without reading it.
    MPS has no float64: there float32, where ``(n - 1)/n`` and ``1/n`` round as Python's float64
    values do to float32 (checked for every n below 2**24)."""
    if count.device.type == "mps":
        n = count.to(torch.float32)
        return (n - 1) / n, 1 / n
    factor = 1 / count.to(torch.float64)
    return 1 - factor, factor


def _average(running: Tensor, batch: Tensor, keep: Union[float, Tensor], factor: Union[float, Tensor]) -> Tensor:
    """SpeechBrain's ``keep * running + factor * batch``. Python floats as its scalars; tensor factors
    rounded as a Python scalar operand is, to the op's compute dtype (float32, or float64 for
    float64 buffers), and the products rounded to the buffer's dtype, as they are there."""
    if not isinstance(keep, Tensor) or not isinstance(factor, Tensor):
        return keep * running + factor * batch
    compute = torch.float64 if running.dtype == torch.float64 else torch.float32
    keep, factor = keep.to(compute), factor.to(compute)
    return (keep * running.to(compute)).to(running.dtype) + (factor * batch.to(compute)).to(running.dtype)


class _TrainingNorm(torch.autograd.Function):
    """SpeechBrain's training-mode normalisation along the last dim, keeping for backward only its
    output (``x_hat = (y - beta) / gamma``; the next layer usually keeps ``y`` anyway) and the
    per-quaternion scale, where autograd of the plain ops keeps three input-sized tensors.

    Returns ``(y, mean, variance)``; the statistics feed the running averages and have no gradient.
    """

    @staticmethod
    def forward(ctx, input: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
        mean = input.mean(dim=0)
        centred = input - mean
        variance = _modulus_squared(centred).mean(dim=0)
        scale = torch.rsqrt(variance + eps)
        output = _tile(gamma) * (centred * _tile(scale)) + beta
        ctx.save_for_backward(output, gamma, beta, scale)
        ctx.mark_non_differentiable(mean, variance)
        return output, mean, variance

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor, _grad_mean, _grad_variance):
        output, gamma, beta, scale = ctx.saved_tensors
        gamma_tiled = _tile(gamma)
        # A zero gamma's quaternion has lost its x_hat (its output is beta): 0 there, which is exact for
        # the input's gradient (gamma scales that quaternion's share to 0) but not for gamma's, so the
        # layer takes this function with a zero gamma only when gamma's gradient is not asked for.
        normalised = (output - beta) / _tile(torch.where(gamma != 0, gamma, torch.ones_like(gamma)))
        grad_input = grad_gamma = grad_beta = None
        if ctx.needs_input_grad[0]:
            grad_normalised = grad_output * gamma_tiled
            # Through the scale: each quaternion's share of d(variance), averaged over dim 0.
            projection = _per_quaternion(grad_normalised * normalised).mean(dim=0)
            grad_centred = _tile(scale) * (grad_normalised - normalised * _tile(projection))
            grad_input = grad_centred - grad_centred.mean(dim=0)
        summed = list(range(grad_output.dim() - 1))
        if ctx.needs_input_grad[1]:
            grad_gamma = _per_quaternion((grad_output * normalised).sum(dim=summed))
        if ctx.needs_input_grad[2]:
            grad_beta = grad_output.sum(dim=summed)
        return grad_input, grad_gamma, grad_beta, None


class QBatchNorm(nn.Module):
    """``speechbrain.nnet.quaternion_networks.q_normalization.QBatchNorm``.

    Same signature, defaults and state_dict keys (``gamma`` ``(input_size/4,)``, ``beta``
    ``(input_size,)``, ``running_mean``, ``running_var``, ``num_batches_tracked``). ``input_size``
    counts real features, in ``[r | i | j | k]`` blocks along ``dim``.

    It computes what SpeechBrain's computes, which differs from ``torch.nn.BatchNorm`` and from
    :class:`qlayers.nn.QBatchNorm`:

    - statistics are taken over dim 0 only: on ``(batch, time, features)`` input each time step
      has its own mean and variance (and the running statistics take that shape);
    - the variance of a quaternion feature is the batch mean of ``|x - mean|^2`` over its four
      components (biased), shared by the four components;
    - the first training batch's statistics replace the running statistics; later ones are
      averaged in by ``momentum`` (or cumulatively with ``momentum=None``);
    - ``eps`` (1e-4 by default) is added to that variance.

    Running statistics are stored without autograd history (SpeechBrain's keep the graph of the
    batch that set them; the values are the same), and in the buffers' dtype (under autocast,
    SpeechBrain's first batch turns them into float16/bfloat16). With ``track_running_stats=False``,
    SpeechBrain's eval mode fails (it reads a running variance it does not have); this layer then
    normalises by the batch's statistics, as ``torch.nn.BatchNorm`` does. A ``torch.jit.trace`` in
    training mode records the normalisation by the batch's statistics and no running-statistics
    update, as SpeechBrain's trace records none (its updates are attribute assignments).

    Host reads in a training step: the running statistics' update reads nothing back from the
    device (the counter is used as a tensor); choosing the lean backward reads whether gamma has a
    zero, once per forward, where gamma's gradient is asked for (none with a frozen gamma).
    """

    __prepare_scriptable__ = _weights.refuse_torchscript

    running_mean: Optional[Tensor]
    running_var: Optional[Tensor]
    num_batches_tracked: Optional[Tensor]

    def __init__(
        self,
        input_size: int,
        dim: int = -1,
        gamma_init: float = 1.0,
        beta_param: bool = True,
        momentum: Optional[float] = 0.1,
        eps: float = 1e-4,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(input_size, int) or input_size <= 0 or input_size % 4 != 0:
            raise ValueError(f"QBatchNorm: input_size must be a positive multiple of 4, got {input_size!r}")
        self.num_features = input_size // 4
        self.gamma_init, self.beta_param, self.momentum, self.dim, self.eps = gamma_init, beta_param, momentum, dim, eps
        self.track_running_stats = track_running_stats
        self.gamma = nn.Parameter(torch.full([self.num_features], float(gamma_init)))
        self.beta = nn.Parameter(torch.zeros(input_size), requires_grad=beta_param)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(input_size))
            self.register_buffer("running_var", torch.ones(self.num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def _tiled(self, per_quaternion: Tensor, input: Tensor) -> Tensor:
        """A per-quaternion tensor repeated 4 times along ``dim``, one copy per component block."""
        return per_quaternion.repeat([4 if d == self.dim % input.dim() else 1 for d in range(input.dim())])

    def _lean(self, input: Tensor) -> bool:
        """Whether the lean function serves: quaternions along the last dim, plain autograd (not a
        torch.func transform or forward-mode AD), and, where gamma's gradient is asked for, a gamma
        without zeros (its backward recovers the normalised input from the output, dividing by
        gamma). Not in a trace, which would record the Function as a Python call that torch.jit.save
        refuses.

        That last check reads gamma on the host: a device-to-host sync each training step while
        gamma trains. No sync-free test can take its place at the same memory: where gamma is 0 the
        output keeps nothing of the normalised input, which gamma's gradient needs, and which
        quaternions those are is known only on the device."""
        return (
            not torch.jit.is_tracing()
            and self.dim % input.dim() == input.dim() - 1
            and input.dim() >= 2
            and not _transforms_active()
            and (not (torch.is_grad_enabled() and self.gamma.requires_grad) or bool((self.gamma != 0).all()))
        )

    def forward(self, input: Tensor) -> Tensor:
        if self.training or self.running_var is None:
            # Not in a trace, whose graph would replay the counter's in-place step and none of the
            # statistics' reassignments (SpeechBrain's trace records no update either).
            update = self.training and self.running_var is not None and not torch.jit.is_tracing()
            if self._lean(input):
                output, mean, variance = _TrainingNorm.apply(input, self.gamma, self.beta, self.eps)
                if update:
                    self._update_running(mean, variance)
                return output
            mean = input.mean(dim=0)
            centred = input - mean
            variance = _modulus_squared(centred.movedim(self.dim, -1)).movedim(-1, self.dim).mean(dim=0)
            normalised = centred * self._tiled(torch.rsqrt(variance + self.eps), input)
            if update:
                self._update_running(mean.detach(), variance.detach())
        else:
            assert self.running_mean is not None
            normalised = (input - self.running_mean) * self._tiled(torch.rsqrt(self.running_var + self.eps), input)
        return self._tiled(self.gamma, input) * normalised + self.beta

    def _update_running(self, mean: Tensor, variance: Tensor) -> None:
        """SpeechBrain's update: the first batch's statistics replace the running ones, later ones
        are averaged in. Chosen with ``torch.where`` on the counter and, for ``momentum=None``, its
        factor computed from the counter on the device: no host read of the counter, which would be a
        device-to-host sync every training step."""
        assert self.num_batches_tracked is not None and self.running_mean is not None and self.running_var is not None
        self.num_batches_tracked.add_(1)
        # Kept in the buffers' dtype: under autocast the batch statistics come in float16/bfloat16.
        mean, variance = mean.to(self.running_mean.dtype), variance.to(self.running_var.dtype)
        pairs = ((self.running_mean, mean), (self.running_var, variance))
        if not all(_broadcasts_to(running.shape, batch.shape) for running, batch in pairs):
            # SpeechBrain's average of these shapes fails (or takes another shape) while its first
            # batch replaces them: only the counter tells which. A host read, in this case only: a
            # running statistic whose shape the batch's does not cover (a batch of another length).
            if int(self.num_batches_tracked) == 1:
                self.running_mean, self.running_var = mean, variance
                return
            first = None
        else:
            first = self.num_batches_tracked == 1
        keep: Union[float, Tensor]
        factor: Union[float, Tensor]
        if self.momentum is None:
            keep, factor = _cumulative_factors(self.num_batches_tracked)
        else:
            keep, factor = 1 - self.momentum, self.momentum
        averaged = [_average(running, batch, keep, factor) for running, batch in pairs]
        if first is not None:
            averaged = [torch.where(first, batch, blend) for (_, batch), blend in zip(pairs, averaged)]
        self.running_mean, self.running_var = averaged

    def extra_repr(self) -> str:
        return f"{4 * self.num_features}, dim={self.dim}, eps={self.eps}, momentum={self.momentum}"
