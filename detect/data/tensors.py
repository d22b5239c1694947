"""Images as the model takes them (torch layer)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["image_tensor"]


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """An ``H x W x 3`` uint8 RGB array as the model's input: ``FloatTensor[3, H, W]`` in ``[0, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
