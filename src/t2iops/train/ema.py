"""Exponential moving average of the adapter's weights (fp32, on every rank)."""
from __future__ import annotations

import torch


class EMA:
    """``shadow = d * shadow + (1 - d) * weights`` after every applied optimizer step, with the
    usual warm-up ``d = min(decay, (1 + n) / (10 + n))`` so that early, mostly random weights
    are forgotten quickly (n counts the updates)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in module.named_parameters()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        d = self.current_decay()
        for name, p in module.named_parameters():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - d)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)

    def weights(self, full_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``full_state`` (parameters + buffers) with the parameters replaced by their EMA."""
        return {k: (self.shadow[k].cpu().clone() if k in self.shadow else v) for k, v in full_state.items()}
