"""The paper's math with no scheduler state: the DDIM update on any (a, b) noise path (:mod:`.update`),
bounding x̂0 (:mod:`.thresholding`), noise drawn as diffusers draws it (:mod:`.noise`), the functional
step over coefficient tables (:mod:`.functional`) and the private fused engine behind ``step``."""
