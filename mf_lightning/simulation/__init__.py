"""Running a model on structures: the ASE calculator (:mod:`.calculator`), finite-field MD
(:mod:`.md`), the TorchSim interface (:mod:`.torchsim`) and labelling structures with a model
(:mod:`.distill`)."""
