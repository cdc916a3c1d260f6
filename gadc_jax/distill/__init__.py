"""Generative dataset distillation with optimal transport (arXiv 2512.00308), in three stages:

1. OTG sampling (`ot_guidance`, `igd`, `sampler`; the distill_sample job): a class-conditional
   diffusion model samples IPC images per class, one after another, guided inside a window of
   steps by IGD's influence and deviation terms and by the gradient of the entropic OT cost
   between the class's generated set and real samples of the class.
2. LIA relabelling: soft labels from a pool of teachers whose size follows the IPC.
3. OTM student training: cross-entropy, MSE to the soft labels and a batch Sinkhorn distance
   between student and soft-label probability vectors.
"""
