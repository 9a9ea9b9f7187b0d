"""The DeiT-style spectrogram transformer trunk shared by PaSST and AST.

Both families are DeiT (Touvron et al., "Training data-efficient image transformers & distillation through
attention", ICML 2021) distilled ViTs run on 1-channel spectrograms: overlapping 16x16 patches from one
strided convolution, a class and a distillation token, pre-norm blocks, a final LayerNorm, and a
``LayerNorm + Linear`` head on the mean of the two token outputs. They differ in their positional
embeddings and frontends, which the family files add. Blocks are timm's ViT ``Block`` (fused
scaled-dot-product attention; parameter names equal to the released checkpoints').
"""
from __future__ import annotations

from functools import partial

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from ._base import Teacher, TeacherInputError

__all__ = ["PatchEmbed", "SpectrogramTransformer", "patch_grid"]


def patch_grid(size: int, patch: int, stride: int) -> int:
    """Patches a strided convolution yields along one axis of ``size`` bins."""
    return (size - patch) // stride + 1


class PatchEmbed(nn.Module):
    """Spectrogram ``[B, 1, F, T]`` -> patch grid ``[B, D, F', T']`` by one strided convolution."""

    def __init__(self, embed_dim: int, patch_size: int = 16, stride: tuple[int, int] = (10, 10)) -> None:
        super().__init__()
        self.patch_size, self.stride = patch_size, tuple(stride)
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=self.stride)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if spec.dim() != 4 or spec.shape[1] != 1:
            raise TeacherInputError(f"expected a spectrogram batch [B, 1, F, T], got shape {tuple(spec.shape)}")
        if spec.shape[-2] < self.patch_size or spec.shape[-1] < self.patch_size:
            raise TeacherInputError(
                f"spectrogram {tuple(spec.shape[-2:])} is smaller than one {self.patch_size}x{self.patch_size} patch"
            )
        return self.proj(spec)


class SpectrogramTransformer(Teacher):
    """Patch embedding, cls/dist tokens, transformer blocks, final norm and the token-averaging head.

    ``head_dist`` (the DeiT distillation head) exists only where released checkpoints carry it; like the
    reference implementations, the logits never use it, so it is frozen (``requires_grad=False``) to keep
    fine-tuning and DDP free of unused trainable parameters.
    """

    classifier_names = ("head",)

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        stride: tuple[int, int] = (10, 10),
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        head_dist: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes, self.embed_dim = num_classes, embed_dim
        self.patch_embed = PatchEmbed(embed_dim, patch_size, stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth decay rule
        self.blocks = nn.Sequential(
            *[
                Block(
                    embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=drop_rate,
                    drop_path=rate, norm_layer=norm_layer,
                )
                for rate in rates
            ]
        )
        self.norm = norm_layer(embed_dim)
        self.head = self._make_head(num_classes)
        if head_dist:
            self.head_dist = nn.Linear(embed_dim, num_classes)
            self.head_dist.requires_grad_(False)

    def _make_head(self, num_classes: int) -> nn.Sequential:
        """The released heads' layout: LayerNorm (default eps) then Linear (keys ``.0`` and ``.1``)."""
        return nn.Sequential(nn.LayerNorm(self.embed_dim), nn.Linear(self.embed_dim, num_classes))

    def init_weights(self) -> None:
        """DeiT initialisation: truncated normal (std .02) for tokens, embeddings and linear layers."""
        for p in (self.cls_token, self.dist_token, *self.positional_parameters()):
            trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def positional_parameters(self) -> list[nn.Parameter]:
        """The family's positional-embedding parameters (initialised like the tokens)."""
        return []

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, 2 + N, D]`` token sequence (cls, dist, patches) -> normalised outputs of the last block."""
        return self.norm(self.blocks(self.pos_drop(tokens)))

    def clip_logits(self, encoded: torch.Tensor) -> torch.Tensor:
        """Logits from the mean of the cls and dist token outputs, as both reference implementations do."""
        return self.head((encoded[:, 0] + encoded[:, 1]) / 2)
