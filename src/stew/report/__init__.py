"""``stew report``: one self-contained HTML file from a ``stew reproduce`` output folder.

The file holds the protocol's header (data, seeds, run count, wall time, departures from the paper),
the paper-style tables (numbers from :mod:`stew.experiments.results`: mean ± std over seeds on the headline
split, test where the data has test labels, validation beside it; best per column and p against the
baseline on the headline; the paper's values beside our number on the paper's split) and several kinds
of plot, embedded as base64 PNG so the file opens anywhere without a network:

- prediction vs gold traces on sequences of the headline split (regression only);
- ablation bars (mean ± std per row, the baseline as a reference line) for tables with a baseline;
  like the tables, on the headline split (test where the data labels it, else validation);
- a 2-D projection of weaker and stronger latents before and after CM-StEW's transfer (EmoBed's
  Figure 3), with the linear CKA between paired weak/strong latents before and after;
- training curves (validation score and training loss per epoch);
- heat maps of the missing-modality tables (modality subset x model, colour = mean score), each with
  its numbers as a table beneath;
- for ConflictNET runs, the true-vs-predicted analysis plot per group with its category counts, and a
  LIME explanation of the full ConflictNET group's highest-predicted clip, cached in the run folder
  (RUN/explain-report/) so regenerating the report is fast (docs/methods/conflictnet.md).

Everything is read from the run store and the run folders; a partially finished store gives "-"
cells and notes where a plot has nothing to draw.

Modules, lowest first: ``projections`` (CKA, PCA, t-SNE), ``runs`` (the store and run folders),
``tables`` (HTML tables), ``figures`` (the plot sections), ``lime`` (the cached explanation),
``conflict`` (the ConflictNET section), ``document`` (the whole page; :func:`write_report`).
"""

from stew.report.document import write_report

__all__ = ["write_report"]
