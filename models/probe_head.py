"""The torch form of a linear probe: backbone features -> logits, so Grad-CAM++ can explain probe rounds.

Kept apart from models.probe so fitting a probe (scikit-learn on embeddings) never pays for importing torch."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class ProbeHead(nn.Module):
    """Backbone features -> logits: L2-normalise, then a Linear layer holding the probe's coefficients."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(F.normalize(features, dim=1))
