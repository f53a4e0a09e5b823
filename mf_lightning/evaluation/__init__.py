"""Using a trained model on data: metrics of any file (``eval.py``), spontaneous polarisation
along distortion paths (:mod:`.paths`) and the matbench_dielectric benchmark (:mod:`.matbench`).
The screening of many structures is :mod:`mf_lightning.predict`."""
