"""LightningModules around the models, and the callbacks the CLI adds to every run."""

from fmmformer_pl.tasks.callbacks import (
    BlendWeightMonitor,
    MajorityBaseline,
    PlainProgressBar,
    TrainingMonitor,
)
from fmmformer_pl.tasks.classification import ClassificationTask, RetrievalTask
from fmmformer_pl.tasks.language_model import LanguageModelTask
from fmmformer_pl.tasks.optim import OptimConfig

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
