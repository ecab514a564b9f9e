"""Stage three: finetune and score students on HMDB-51 / UCF-101 against the baselines."""
