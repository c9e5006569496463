"""The model as the checkpoint room sees it: what loading, saving and the model card need of a
:class:`~ditsam.model.dit.DITSam`. Typed against :class:`LoadableModel` the room imports nothing of ``dit``,
so ``DITSam.from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` can call it without an import circle."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import torch

from ditsam.model.config import DITSamConfig


class LoadableModel(Protocol):
    """A DITSam: its config, its text encoder and tokenizer, and the ``nn.Module`` methods loading uses."""

    config: DITSamConfig
    text_encoder: torch.nn.Module
    tokenizer: Any

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...

    def eval(self) -> Any: ...
