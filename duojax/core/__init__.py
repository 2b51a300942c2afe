"""Pure maths on arrays: the duo, temperatures, solvers, metrics, losses, soups, conformal sets.

Nothing here reads files or knows about training runs: every function takes
logits, labels, weights or parameter trees and returns arrays, so the layers
above (training, evaluation, the CLIs) and users with their own logits call
the same code.

  duo          z = Σ w_i z_i, the duo's modes and confidences, the fused forward
  temperature  temperatures and duo weights fit jointly on validation NLL
               (its inputs checked in temperature_inputs)
  solvers      L-BFGS on device (jaxopt, or optax as the tested alternative)
  metrics      accuracy, NLL, ECE, AUROC, AURC, SAC, OOD scores, ...
  ranking      ranks with ties: AUROC and errors at coverage in one sort
  losses       cross-entropy and the Gatekeeper loss
  soups        uniform and greedy weight averages of fine-tunes
  conformal    split conformal prediction sets (LAC, APS, RAPS) from probabilities
  mahalanobis  the Mahalanobis OOD score of features: class means, one tied covariance
  mixing       Mixup and CutMix of a batch with itself flipped, and their targets
"""
