"""The exploding/vanishing gradient study (issue #5): ``python -m experiments.gradients <experiment> [--quick]``.

Experiments: ``spectrum`` (gradient norms against distance for λ₁ from 0.5 to 1.5, per initializer and
nonlinearity, with fitted rates against the Pascanu bound), ``cliff`` (the single-unit loss wall and
gradient descent with and without clipping), ``pathological`` (adding and temporal-order problems of
Pascanu et al.: success rate against length for SGD, clipping and IRNN, run as a resumable sweep of
independent trials) and ``flow`` (per-step gradient norms in the IMDB sentiment model). Each writes
CSV/JSON, PNG plots and a markdown report to ``results/gradients/<experiment>/`` (``.../quick/...``
with ``--quick``).
"""
