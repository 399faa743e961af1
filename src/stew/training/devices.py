"""Where a run trains: ``accelerator``, ``devices`` and ``precision`` of its TrainConfig resolved against this
machine (docs/devices.md). A request the machine cannot serve is a one-line DataError before anything is
read or written; metrics.json records what was used."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import lightning as L
import torch

from stew.config import TrainConfig
from stew.errors import DataError


@dataclass(frozen=True)
class Device:
    accelerator: str  # "cpu" or "gpu" (a CUDA GPU)
    devices: int
    precision: str  # "32", "bf16-mixed" or "16-mixed"
    name: str  # the GPU's name, or "cpu"

    @property
    def gpu(self) -> bool:
        return self.accelerator == "gpu"

    def trainer_args(self) -> dict:
        """Lightning Trainer's arguments for this device."""
        return {
            # "cuda", not Lightning's "gpu", which would also take Apple's MPS: MPS has no float64, which
            # DCCA's factorisations need (stew.objectives.dcca), so stew's "gpu" means CUDA.
            "accelerator": "cuda" if self.gpu else "cpu", "devices": self.devices,
            "precision": "32-true" if self.precision == "32" else self.precision,
            # CPU runs are bit-identical per seed without torch's deterministic mode, which slows CPU GRUs
            # ~40x (tests/test_training.py::test_deterministic_for_a_seed). On a GPU, cuDNN's RNN and cuBLAS
            # pick non-deterministic kernels unless told not to: "warn" asks for the deterministic ones
            # (and sets CUBLAS_WORKSPACE_CONFIG) and warns, instead of failing, where an op has none.
            "deterministic": "warn" if self.gpu else False,
        }

    def to_json(self) -> dict:
        return asdict(self)


CPU = Device("cpu", 1, "32", "cpu")  # what a closed-form method (linear) uses, whatever was asked


def used_by(trainer: L.Trainer) -> Device:
    """The device a Lightning Trainer ran on, as metrics.json records it."""
    gpu = trainer.strategy.root_device.type == "cuda"
    precision = str(trainer.precision).removesuffix("-true")
    name = torch.cuda.get_device_name(trainer.strategy.root_device) if gpu else "cpu"
    return Device("gpu" if gpu else "cpu", trainer.num_devices, precision, name)


def resolve_device(cfg: TrainConfig) -> Device:
    """The device ``cfg`` asks for on this machine; a DataError names what it cannot do."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.accelerator == "gpu" and not gpus:
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a build without CUDA")
        raise DataError(f"--accelerator gpu: torch sees no CUDA GPU on this machine ({build}); "
                        "use --accelerator cpu or auto")
    gpu = cfg.accelerator == "gpu" or (cfg.accelerator == "auto" and gpus > 0)
    if cfg.devices > 1:
        if not gpu:
            where = "a CPU run is one device (give its cores with --threads); "
        elif cfg.devices > gpus:
            where = f"this machine has {gpus} CUDA GPU{'s' if gpus != 1 else ''}; "
        else:
            where = ""
        raise DataError(f"--devices {cfg.devices}: {where}stew trains a run on one device (its per-epoch validation "
                        "and evaluation are single-device): spread runs over GPUs with --engine ray")
    if cfg.precision == "16-mixed" and not gpu:
        raise DataError("--precision 16-mixed needs a GPU (float16 autocast); on the CPU use bf16-mixed or 32")
    if cfg.precision == "bf16-mixed" and gpu and not torch.cuda.is_bf16_supported():
        raise DataError(f"--precision bf16-mixed: this GPU ({torch.cuda.get_device_name(0)}) has no bfloat16; "
                        "use 16-mixed or 32")
    if not gpu:
        return Device("cpu", 1, cfg.precision, "cpu")
    return Device("gpu", 1, cfg.precision, torch.cuda.get_device_name(0))
