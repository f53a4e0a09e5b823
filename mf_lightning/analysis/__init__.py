"""Using trained models: metrics of any labelled file (``eval.py``, :mod:`.evaluate`), dielectric
properties (:mod:`.dielectric`), screening of many structures (:mod:`.screening`), P_s along
distortion paths (:mod:`.paths`), matbench_dielectric (:mod:`.matbench`), trivial baselines
(:mod:`.baselines`), IR/Raman spectra and eps(omega) (:mod:`.spectra`), hysteresis loops
(:mod:`.hysteresis`) and ablation tables (:mod:`.table`)."""
