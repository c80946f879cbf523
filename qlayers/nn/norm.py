"""QBatchNorm: quaternion batch normalisation."""

import contextlib
from typing import Optional

import torch
from torch import Tensor, nn

from qlayers import functional

_LOW_PRECISION = (torch.float16, torch.bfloat16)

# Relative jitter, in units of the compute dtype's epsilon, for a covariance whose Cholesky
# factorisation fails with the absolute eps alone (a singular one from 2 to 4 samples, or one so
# large that eps vanishes next to it): enough to cover the rounding of a 4x4 covariance.
_JITTER_ULPS = 32


def _autocast_off(device_type: str):
    """A context where autocast does not cast: statistics in bfloat16 would be too coarse."""
    if device_type in functional._AUTOCAST_DEVICE_TYPES:  # looked up once: traceable by old Dynamo too
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _cholesky_never_raises(cov: Tensor, eps: float) -> Tensor:
    """Lower Cholesky factors of ``cov + eps·I`` for a batch of 4×4 covariances, without raising.

    Where that matrix is not positive definite in floating point, the factor of
    ``cov + (eps + δ·s)·I`` is taken instead (``s`` the mean variance of that covariance,
    ``δ = 32·finfo.eps``); where that fails too, the factor of its diagonal (a per-component
    scaling). The choice is made per feature with ``torch.where`` on ``cholesky_ex``'s status, so
    nothing branches on data and the gradient flows only through the matrix chosen.
    """
    eye = torch.eye(4, dtype=cov.dtype, device=cov.device)
    variances = cov.diagonal(dim1=-2, dim2=-1)
    scale = variances.mean(-1)[..., None, None]
    jitter = (eps + _JITTER_ULPS * torch.finfo(cov.dtype).eps * scale) * eye
    candidates = [cov + eps * eye, cov + jitter, torch.diag_embed(variances) + jitter]
    chosen = candidates[-1]
    for candidate in reversed(candidates[:-1]):
        factorised = torch.linalg.cholesky_ex(candidate.detach()).info == 0
        chosen = torch.where(factorised[..., None, None], candidate, chosen)
    return torch.linalg.cholesky_ex(chosen).L


class QBatchNorm(nn.Module):
    """Quaternion batch normalisation over ``(B, C)``, ``(B, C, L)`` or ``(B, C, H, W)`` input.

    ``C = num_features`` real channels in ``[r | i | j | k]`` blocks hold ``C/4`` quaternion
    features. ``mode="whiten"`` (default, Gaudet & Maida 2018) centres each quaternion feature and
    whitens it by its 4×4 covariance ``V``: ``x̂ = L⁻¹ (x - μ)`` with ``L Lᵀ = V + eps·I``
    (Cholesky), so ``x̂`` has identity covariance (up to ``eps``); then ``y = Γ x̂ + β`` with a learnable 4×4 ``Γ``
    per feature (``weight``, identity at start) and ``β`` (``bias``, ``(C,)``, zero). The cheaper
    ``mode="variance"`` divides by the quaternions' mean squared modulus plus ``eps`` instead and
    learns one scale per feature.

    The factorisation never raises: where ``V + eps·I`` is not positive definite in floating point (a
    batch of 2 to 4 samples per feature makes ``V`` singular; a very large ``V`` swamps ``eps``),
    a jitter of ``32·finfo(dtype).eps`` times the mean variance is added to the diagonal, and if
    that fails too the feature is only scaled per component; outputs and gradients stay finite for
    any training batch of 2 or more values per feature. Training needs more than one value
    per feature (batch × spatial size), as in ``torch.nn.BatchNorm``; a ``ValueError`` says so.

    Statistics and whitening are computed in float32, or float64 for float64 input, with autocast
    off; the output has the input's dtype, as ``torch.nn.BatchNorm`` gives under autocast. Input
    must have the parameters' dtype, or be float16/bfloat16 with float32 parameters (what an
    autocast layer before this one produces).

    Running statistics (``running_mean``; ``running_cov`` or ``running_var``) are updated in
    training, without autograd history, and used in eval mode, as in ``torch.nn.BatchNorm``: by
    ``momentum``, or with ``momentum=None`` as a cumulative average (factor
    ``1 / num_batches_tracked``). The covariance kept is the unbiased one.
    """

    weight: Optional[nn.Parameter]
    bias: Optional[nn.Parameter]
    running_mean: Tensor
    running_cov: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        mode: str = "whiten",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if not isinstance(num_features, int) or num_features <= 0 or num_features % 4 != 0:
            raise ValueError(f"QBatchNorm: num_features must be a positive multiple of 4, got {num_features!r}")
        if mode not in ("whiten", "variance"):
            raise ValueError(f"QBatchNorm: mode must be 'whiten' or 'variance', got {mode!r}")
        if momentum is not None and not isinstance(momentum, (int, float)):
            raise TypeError(f"QBatchNorm: momentum must be a float or None, got {type(momentum).__name__}")
        self.num_features, self.eps, self.momentum, self.mode = num_features, eps, momentum, mode
        self.affine, self.track_running_stats = affine, track_running_stats
        quaternions = num_features // 4
        factory = {"device": device, "dtype": dtype}
        # A 4x4 matrix per quaternion feature (whitening), or one scale.
        spread_shape = (quaternions, 4, 4) if mode == "whiten" else (quaternions,)
        if affine:
            self.weight = nn.Parameter(torch.empty(spread_shape, **factory))
            self.bias = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.empty(num_features, **factory))
            self.register_buffer(
                "running_cov" if mode == "whiten" else "running_var", torch.empty(spread_shape, **factory)
            )
            self.register_buffer("num_batches_tracked", torch.empty((), dtype=torch.long, device=device))
        self.reset_parameters()

    @torch.no_grad()
    def _fill_identity(self, spread: Tensor) -> None:
        """The identity: a 4x4 one per feature (whiten), or ones (variance)."""
        if self.mode == "whiten":
            spread.copy_(torch.eye(4, dtype=spread.dtype, device=spread.device).expand_as(spread))
        else:
            spread.fill_(1)

    def reset_running_stats(self) -> None:
        """Zero mean, identity covariance (or unit variance), no batch tracked, as ``torch.nn.BatchNorm``."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self._fill_identity(self.running_cov if self.mode == "whiten" else self.running_var)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """The running statistics reset, ``weight`` the identity and ``bias`` zero, as ``torch.nn.BatchNorm``."""
        self.reset_running_stats()
        if self.weight is not None and self.bias is not None:
            self._fill_identity(self.weight)
            nn.init.zeros_(self.bias)

    def _check_input(self, input: Tensor) -> None:
        if not isinstance(input, Tensor):
            raise TypeError(f"QBatchNorm: expected input to be a Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3, 4) or input.shape[1] != self.num_features:
            raise ValueError(
                f"QBatchNorm: expected input of shape (B, {self.num_features}), (B, {self.num_features}, L) or "
                f"(B, {self.num_features}, H, W), got {tuple(input.shape)}"
            )
        if not input.is_floating_point():
            raise TypeError(f"QBatchNorm: expected a floating-point input, got {input.dtype}")
        state = self.weight if self.weight is not None else getattr(self, "running_mean", None)
        if state is None or input.dtype == state.dtype:
            return
        # torch.nn.BatchNorm's one mixed case: low-precision activations, float32 parameters.
        if not (input.dtype in _LOW_PRECISION and state.dtype == torch.float32):
            raise TypeError(
                f"QBatchNorm: expected input of dtype {state.dtype} like the parameters (or float16/bfloat16 "
                f"with float32 parameters), got {input.dtype}"
            )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        quaternions = self.num_features // 4
        compute_dtype = torch.promote_types(input.dtype, torch.float32)
        with _autocast_off(input.device.type):
            channels_last = input.movedim(1, -1)
            x = channels_last.reshape(-1, 4, quaternions).transpose(1, 2).to(compute_dtype)  # (N, Q, 4)
            samples = x.shape[0]
            use_batch = self.training or not self.track_running_stats
            if use_batch:
                if samples < 2:
                    raise ValueError(
                        "QBatchNorm: expected more than 1 value per feature in training (batch × spatial size), "
                        f"got input of shape {tuple(input.shape)}"
                    )
                mean = x.mean(0)
                centered = x - mean
                if self.mode == "whiten":
                    spread = torch.einsum("nqa,nqb->qab", centered, centered) / samples
                else:
                    spread = centered.pow(2).sum(-1).mean(0)
                if self.training and self.track_running_stats:
                    self._update_running(mean, spread, samples)
            else:
                mean = self.running_mean.to(compute_dtype).view(4, quaternions).t()
                centered = x - mean
                running = self.running_cov if self.mode == "whiten" else self.running_var
                spread = running.to(compute_dtype)

            if self.mode == "whiten":
                lower = _cholesky_never_raises(spread, self.eps)  # (Q, 4, 4)
                normalised = torch.linalg.solve_triangular(lower, centered.permute(1, 2, 0), upper=False)
                normalised = normalised.permute(2, 0, 1)
                if self.weight is not None:
                    normalised = torch.einsum("qab,nqb->nqa", self.weight.to(compute_dtype), normalised)
            else:
                normalised = centered / torch.sqrt(spread + self.eps).unsqueeze(-1)
                if self.weight is not None:
                    normalised = normalised * self.weight.to(compute_dtype).unsqueeze(-1)
            if self.bias is not None:
                normalised = normalised + self.bias.to(compute_dtype).view(4, quaternions).t()
            output = normalised.transpose(1, 2).reshape(channels_last.shape).movedim(-1, 1)
        return output.to(input.dtype)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, spread: Tensor, samples: int) -> None:
        self.num_batches_tracked.add_(1)
        running_spread = self.running_cov if self.mode == "whiten" else self.running_var
        unbiased = spread * (samples / (samples - 1))
        for running, batch in ((self.running_mean, mean.t().reshape(-1)), (running_spread, unbiased)):
            if self.momentum is None:
                # Cumulative moving average, as torch.nn.BatchNorm: a tensor factor, so no host sync.
                factor = 1.0 / self.num_batches_tracked.to(torch.promote_types(running.dtype, torch.float32))
                running.lerp_(batch.detach().to(running.dtype), factor)
            else:
                running.lerp_(batch.detach().to(running.dtype), self.momentum)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, mode={self.mode!r}"
        )
