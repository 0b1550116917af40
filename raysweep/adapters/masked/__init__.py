"""Importance-masked sparse LoRA: pruning scores, exact-count masks, a mask store."""
