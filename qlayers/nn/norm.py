"""QBatchNorm: quaternion batch normalisation."""

from typing import Optional

import torch
from torch import Tensor, nn


class QBatchNorm(nn.Module):
    """Quaternion batch normalisation over ``(B, C)``, ``(B, C, L)`` or ``(B, C, H, W)`` input.

    ``C = num_features`` real channels in ``[r | i | j | k]`` blocks hold ``C/4`` quaternion
    features. ``mode="whiten"`` (default, Gaudet & Maida 2018) centres each quaternion feature and
    whitens it by its 4×4 covariance ``V``: ``x̂ = L⁻¹ (x - μ)`` with ``L Lᵀ = V + eps·I``
    (Cholesky), so ``x̂`` has identity covariance; then ``y = Γ x̂ + β`` with a learnable 4×4 ``Γ``
    per feature (``weight``, identity at start) and ``β`` (``bias``, ``(C,)``, zero). The cheaper
    ``mode="variance"`` divides by the quaternions' mean squared modulus instead and learns one
    scale per feature.

    Running statistics (``running_mean``; ``running_cov`` or ``running_var``) are updated with
    ``momentum`` in training, without autograd history, and used in eval mode, as in
    ``torch.nn.BatchNorm``; the covariance kept is the unbiased one.
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
        momentum: float = 0.1,
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
        self.num_features, self.eps, self.momentum, self.mode = num_features, eps, momentum, mode
        self.affine, self.track_running_stats = affine, track_running_stats
        quaternions = num_features // 4
        factory = {"device": device, "dtype": dtype}
        eye = torch.eye(4, **factory).expand(quaternions, 4, 4)
        if affine:
            self.weight = nn.Parameter(eye.clone() if mode == "whiten" else torch.ones(quaternions, **factory))
            self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            if mode == "whiten":
                self.register_buffer("running_cov", eye.clone())
            else:
                self.register_buffer("running_var", torch.ones(quaternions, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() not in (2, 3, 4) or input.shape[1] != self.num_features:
            raise ValueError(
                f"QBatchNorm: expected input of shape (B, {self.num_features}), (B, {self.num_features}, L) or "
                f"(B, {self.num_features}, H, W), got {tuple(input.shape)}"
            )
        quaternions = self.num_features // 4
        channels_last = input.movedim(1, -1)
        x = channels_last.reshape(-1, 4, quaternions).transpose(1, 2)  # (N, Q, 4)
        samples = x.shape[0]
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            if samples < 2:
                raise ValueError(
                    "QBatchNorm: expected more than one value per feature in training, "
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
            mean = self.running_mean.view(4, quaternions).t()
            centered = x - mean
            spread = self.running_cov if self.mode == "whiten" else self.running_var

        if self.mode == "whiten":
            eye = torch.eye(4, device=x.device, dtype=x.dtype)
            lower = torch.linalg.cholesky(spread + self.eps * eye)  # (Q, 4, 4)
            normalised = torch.linalg.solve_triangular(lower, centered.permute(1, 2, 0), upper=False).permute(2, 0, 1)
            if self.weight is not None:
                normalised = torch.einsum("qab,nqb->nqa", self.weight, normalised)
        else:
            normalised = centered / torch.sqrt(spread + self.eps).unsqueeze(-1)
            if self.weight is not None:
                normalised = normalised * self.weight.unsqueeze(-1)
        if self.bias is not None:
            normalised = normalised + self.bias.view(4, quaternions).t()
        return normalised.transpose(1, 2).reshape(channels_last.shape).movedim(-1, 1)

    @torch.no_grad()
    def _update_running(self, mean, spread, samples):
        self.num_batches_tracked += 1
        unbiased = spread * samples / (samples - 1)
        self.running_mean.lerp_(mean.t().reshape(-1).detach(), self.momentum)
        (self.running_cov if self.mode == "whiten" else self.running_var).lerp_(unbiased.detach(), self.momentum)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, mode={self.mode!r}"
        )
