"""Training: one KTO or DPO LoRA adapter per run, in a child process, saved as a verified folder.

Importing this package is light (no torch): the heavy work happens in `train`, in the child.
"""

from retrain.training.adapter_folder import verify_adapter
from retrain.training.config import TrainConfig
from retrain.training.errors import AdapterIntegrityError, DatasetError, TrainConfigError
from retrain.training.runner import TrainingResult, run_training

__all__ = [
    "AdapterIntegrityError", "DatasetError", "TrainConfig", "TrainConfigError", "TrainingResult", "run_training",
    "verify_adapter",
]
