"""Using trained models: metrics of any labelled file (``eval.py``, :mod:`.evaluate`), dielectric
properties (:mod:`.dielectric`), screening of many structures (:mod:`.screening`), P_s along
distortion paths (:mod:`.paths`), matbench_dielectric (:mod:`.matbench`), trivial baselines
(:mod:`.baselines`), IR/Raman spectra and eps(omega) (:mod:`.spectra`), hysteresis loops
(:mod:`.hysteresis`), ablation tables (:mod:`.table`), and at the harmonic level (``mf-phonons``,
:mod:`.phonons`): piezoelectric tensors (:mod:`.piezo`), mode-resolved IR and Raman (:mod:`.modes`)
and phonopy BORN files (:mod:`.born`), all from exact derivatives of F (:mod:`.response_tensors`)."""
