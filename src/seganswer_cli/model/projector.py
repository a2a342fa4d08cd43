"""The projector: an MLP from the MLLM's last-layer hidden size to SAM 2.1's prompt dimension."""

from __future__ import annotations

import torch
from torch import nn


class SegProjector(nn.Module):
    """``hidden -> hidden -> prompt_dim`` with a ReLU between (the text-to-prompt MLP of LISA-style
    models); maps each ``<|seg|>`` hidden state to one sparse prompt embedding of SAM 2.1."""

    def __init__(self, hidden_size: int, prompt_dim: int = 256):
        super().__init__()
        self.hidden_size = hidden_size
        self.prompt_dim = prompt_dim
        self.fc1 = nn.Linear(hidden_size, hidden_size)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden_size, prompt_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: (..., hidden_size) -> (..., prompt_dim)
        return self.fc2(self.act(self.fc1(hidden)))
