"""Load the model a training round wrote, whichever kind it is (fine-tuned classifier or backbone + probe head)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from models.backbones import EmbeddingNet, load_checkpoint
from models.probe import ProbeHead
from store.errors import CxrAlError


def load_round_model(path: str | Path) -> tuple[nn.Module, dict]:
    """(model mapping (B,1,S,S) images to class logits, in eval mode on the CPU; checkpoint metadata)."""
    backbone, meta = load_checkpoint(path)
    if "head" not in meta or "classes" not in meta:
        raise CxrAlError(f"{path} holds no classifier head: run a training round first")
    if meta.get("head_kind") == "probe":
        weight = meta["head"]["linear.weight"]
        head = ProbeHead(np.zeros(tuple(weight.shape)), np.zeros(weight.shape[0]))
        head.load_state_dict(meta["head"])
        # the probe saw the embedding its round's vectors were made with (checkpoints before the key: "last")
        return nn.Sequential(EmbeddingNet(backbone, meta.get("embedding", "last")), head).eval(), meta
    from models.finetune import load_classifier

    return load_classifier(path)
