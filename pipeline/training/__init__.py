"""The training machinery both trainers use (distill's and evaluate's finetuning): processes and collectives
(`distributed`), seeding (`seeding`), the learning-rate schedule (`schedule`), mixed precision and cuDNN kernels
(`device_step`) and the stop on a non-finite loss (`loss_tracking`). The models, losses and data are each stage's."""
