"""Training objectives: masked losses over padded sequences, correlation losses, the DCCA alignment loss,
EmoBed's crossmodal triplet loss and its L2 penalty."""

from stew.objectives.correlation import ccc_loss, pcc_loss
from stew.objectives.dcca import DCCALoss, dcca_correlation, dcca_loss
from stew.objectives.masked import flatten_valid, masked_bce, masked_ce, masked_mae, masked_mse
from stew.objectives.penalty import l2_penalty
from stew.objectives.triplet import crossmodal_triplet_loss, labels_to_classes, quantile_edges

__all__ = [
    "DCCALoss",
    "ccc_loss",
    "crossmodal_triplet_loss",
    "dcca_correlation",
    "dcca_loss",
    "flatten_valid",
    "l2_penalty",
    "labels_to_classes",
    "masked_bce",
    "masked_ce",
    "masked_mae",
    "masked_mse",
    "pcc_loss",
    "quantile_edges",
]
