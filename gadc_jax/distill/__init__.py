"""OT generative dataset distillation (arXiv 2512.00308), in three stages run in sequence.

1. OTG (image generation): a class-conditional diffusion model samples IPC images per class
   with IGD's guidance terms (influence, deviation) plus an OT term pulling each class's
   generated set towards the real class (the `distill_sample` job).
2. LIA (label assignment, `soft_labels`): soft labels are the mean softmax of a pool of teacher
   classifiers trained on the real data; how many teachers grows with IPC.
3. OTM (student training, `otm`, `students`): students trained from scratch on the distilled
   images with CE to the hard label, MSE to the soft label and a batch Sinkhorn distance
   between the students' and the soft labels' probability vectors (the `train_students` job);
   their top-1 accuracy on the real test split is the measure.

The `distill` job chains the stages over rows of the paper's ablation and real-image baselines.
"""
