"""Data: the quantities and their units (:mod:`.quantities`), key names, reading labelled and
unlabelled structures, graphs and their cache, splits, the label audit and one Lightning
DataModule per source (:mod:`.datamodules`)."""
