"""``python -m cehrgpt.train``: tokenizer and GPT-2 training on patient sequences."""

from cehrgpt.train.cli import main
from cehrgpt.train.settings import TrainError, TrainSettings
from cehrgpt.train.trainer import train

__all__ = ["TrainError", "TrainSettings", "main", "train"]
