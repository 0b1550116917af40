"""SubLoRA: LoRA weights in a random subspace, θ = θ₀ + P·α, with PAC-Bayes bounds."""
