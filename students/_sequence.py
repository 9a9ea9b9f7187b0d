"""Sequence models stacked on a frame-wise CNN before the frame-wise head (EfficientSED).

Morocutti, Schmid, Koutini, Widmer, "Exploring Performance-Complexity Trade-Offs in Sound Event Detection",
EUSIPCO 2025 (github.com/theMoro/EfficientSED, models/sequence_models): a bidirectional GRU, transformer blocks
with rotary position embeddings, head gating and RMSNorm (RoFormer style), and a temporal convolutional network
(dilated causal convolutions with weight normalisation). All map ``[B, T, D_in]`` to ``[B, T, D_out]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["BiGRU", "RotaryAttention", "TemporalConvNet", "TransformerStack", "build_sequence_model"]


class BiGRU(nn.Module):
    """Bidirectional multi-layer GRU; output width ``2 * hidden``."""

    def __init__(self, dim_in: int, hidden: int, num_layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.rnn = nn.GRU(dim_in, hidden, num_layers=num_layers, batch_first=True, bidirectional=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.out_dim = 2 * hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def rotate_pairs(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al., RoFormer): rotate consecutive feature pairs by position angles."""
    dim = x.shape[-1]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim))
    angles = positions.float()[:, None] * inv_freq[None, :]  # [T, dim/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


class RotaryAttention(nn.Module):
    """Pre-norm multi-head self-attention with rotary positions and per-head sigmoid gates."""

    def __init__(self, dim: int, heads: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.norm = nn.RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        x = self.norm(x)
        q, k, v = self.to_qkv(x).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        positions = torch.arange(t, device=x.device)
        q, k = rotate_pairs(q, positions), rotate_pairs(k, positions)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = out * torch.sigmoid(self.to_gates(x)).transpose(1, 2).unsqueeze(-1)
        return self.to_out(out.transpose(1, 2).reshape(b, t, -1))

    def count_macs(self, inputs: tuple, output: torch.Tensor) -> int:
        """``Q K^T`` and ``A V``: ``2 * heads * T^2 * head_dim`` per example (projections are Linear layers)."""
        b, t, _ = inputs[0].shape
        return 2 * b * self.heads * t * t * self.head_dim


class TransformerStack(nn.Module):
    """``depth`` x (attention + GELU feed-forward, both pre-norm residual), then RMSNorm."""

    def __init__(self, dim: int, depth: int = 2, heads: int = 8, ff_mult: int = 4, dropout: float = 0.2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([
                RotaryAttention(dim, heads, dropout),
                nn.Sequential(nn.RMSNorm(dim), nn.Linear(dim, dim * ff_mult), nn.GELU(), nn.Dropout(dropout),
                              nn.Linear(dim * ff_mult, dim), nn.Dropout(dropout)),
            ])
            for _ in range(depth)
        )
        self.norm = nn.RMSNorm(dim)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, feed_forward in self.layers:
            x = x + attention(x)
            x = x + feed_forward(x)
        return self.norm(x)


class TemporalBlock(nn.Module):
    """Two dilated causal weight-normalised convs with ReLU and dropout, plus a residual."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.trim = (kernel_size - 1) * dilation
        self.conv1 = weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=self.trim, dilation=dilation))
        self.conv2 = weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=self.trim, dilation=dilation))
        self.dropout = nn.Dropout(dropout)

    def causal(self, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = conv(x)
        return out[..., : -self.trim] if self.trim else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(torch.relu(self.causal(self.conv1, x)))
        out = self.dropout(torch.relu(self.causal(self.conv2, out)))
        return torch.relu(out + x)


class TemporalConvNet(nn.Module):
    """``layers`` stacks of ``blocks`` temporal blocks with dilations 1, 2, 4, ... (Bai et al., 2018)."""

    def __init__(self, dim: int, layers: int = 2, blocks: int = 5, kernel_size: int = 3, dropout: float = 0.2) -> None:
        super().__init__()
        self.network = nn.Sequential(*(
            TemporalBlock(dim, kernel_size, 2 ** i, dropout) for _ in range(layers) for i in range(blocks)
        ))
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.transpose(1, 2)).transpose(1, 2)


SEQUENCE_MODELS = ("none", "gru", "transformer", "tcn")


def build_sequence_model(kind: str, dim_in: int, dim: int = 256, layers: int = 2) -> tuple[nn.Module, int]:
    """The sequence model ``kind`` and its output width.

    GRU reads the CNN embedding directly (EfficientSED found a projection before it hurts); transformer and TCN
    get a linear projection to ``dim`` first.
    """
    if kind == "none":
        return nn.Identity(), dim_in
    if kind == "gru":
        gru = BiGRU(dim_in, dim, layers)
        return gru, gru.out_dim
    projection = nn.Linear(dim_in, dim) if dim_in != dim else nn.Identity()
    if kind == "transformer":
        return nn.Sequential(projection, TransformerStack(dim, layers, heads=8 if dim >= 128 else 4)), dim
    if kind == "tcn":
        return nn.Sequential(projection, TemporalConvNet(dim, layers)), dim
    raise ValueError(f"unknown sequence model {kind!r}; choose one of {', '.join(SEQUENCE_MODELS)}")
