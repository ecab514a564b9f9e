"""What turns a video into a normalised clip, the same for distillation (stage two) and finetuning (stage three):
the clip's shape (`spec`), which samples an epoch draws (`sampler`), its crop and flip (`views`) and the
normalisation its network expects (`normalisation`). Only stage two's own additions (teacher windows and targets,
view boxes) stay in distill/."""
