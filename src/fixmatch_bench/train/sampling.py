"""Endless streams of batch indices, drawn on the data's device.

The official code repeats then shuffles (buffer 8192) each stream. Here each
stream walks through consecutive random permutations of its pool (a global
shuffle, a documented deviation, docs/protocol.md §1.6); a batch
may straddle two permutations, so with fewer images than the batch (40 labels,
B = 64) a batch holds repeats, as in the official code. The permutation and
position are part of the training state, so a resumed run draws the same batches.
"""

from __future__ import annotations

import torch
from torch import Tensor


class IndexStream:
    """Batches of ``batch`` positions into a pool of ``pool_size`` items."""

    def __init__(self, pool_size: int, batch: int, generator: torch.Generator):
        if pool_size < 1:
            raise ValueError(f"cannot sample from an empty pool (batch {batch})")
        self.pool_size = pool_size
        self.batch = batch
        self.generator = generator
        self.order = torch.empty(0, dtype=torch.long, device=generator.device)
        self.position = 0

    def next(self) -> Tensor:
        """The next ``batch`` positions (a long tensor on the generator's device)."""
        pieces, needed = [], self.batch
        while needed:
            if self.position == len(self.order):
                self.order = torch.randperm(self.pool_size, generator=self.generator, device=self.generator.device)
                self.position = 0
            piece = self.order[self.position:self.position + needed]
            self.position += len(piece)
            needed -= len(piece)
            pieces.append(piece)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def state_dict(self) -> dict:
        return {"order": self.order.cpu(), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.order = state["order"].to(self.generator.device)
        self.position = int(state["position"])
