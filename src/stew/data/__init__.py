"""Data layer: formats (auto-detected), synthetic data, splits and preprocessing."""

from stew.data.dataset import Dataset, Sequence
from stew.data.io import load_dataset

__all__ = ["Dataset", "Sequence", "load_dataset"]
