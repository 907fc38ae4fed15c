"""LightningModules around the models, and the callbacks the CLI adds to every run."""

import torch

from fmmformer_pl.attention.config import AttentionConfig, BlendWeight
from fmmformer_pl.models.config import DecoderConfig, EncoderConfig
from fmmformer_pl.tasks.callbacks import (
    BlendWeightMonitor,
    MajorityBaseline,
    PlainProgressBar,
    TrainingMonitor,
)
from fmmformer_pl.tasks.classification import ClassificationTask, RetrievalTask
from fmmformer_pl.tasks.language_model import LanguageModelTask
from fmmformer_pl.tasks.optim import OptimConfig

# A task built from Python keeps these dataclasses in its hyper-parameters, hence in its
# checkpoints; registering them lets torch.load's default weights_only=True read our own files.
torch.serialization.add_safe_globals(
    [AttentionConfig, BlendWeight, EncoderConfig, DecoderConfig, OptimConfig]
)

__all__ = [
    "BlendWeightMonitor",
    "ClassificationTask",
    "LanguageModelTask",
    "MajorityBaseline",
    "OptimConfig",
    "PlainProgressBar",
    "RetrievalTask",
    "TrainingMonitor",
]
