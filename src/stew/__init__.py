"""stew: train with every modality, deploy with one."""

__version__ = "0.1.0"
