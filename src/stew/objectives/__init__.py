"""Training objectives: masked losses over padded sequences, correlation losses and the DCCA alignment loss."""

from stew.objectives.correlation import ccc_loss, pcc_loss
from stew.objectives.dcca import DCCALoss, dcca_correlation, dcca_loss
from stew.objectives.masked import flatten_valid, masked_bce, masked_ce, masked_mae, masked_mse

__all__ = [
    "DCCALoss",
    "ccc_loss",
    "dcca_correlation",
    "dcca_loss",
    "flatten_valid",
    "masked_bce",
    "masked_ce",
    "masked_mae",
    "masked_mse",
    "pcc_loss",
]
