"""One trial: the training loop, its session seam, engines (DDP/DeepSpeed), checkpoints."""
