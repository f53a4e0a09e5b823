"""Training: the loss (:mod:`.losses`), the metrics shared with evaluation (:mod:`.metrics`), the
LightningModule (:mod:`.module`), callbacks, checkpoint IO, parity plots and the pipeline that
``train.py`` runs (:mod:`.pipeline`)."""
