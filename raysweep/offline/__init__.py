"""Work outside a sweep: time estimate, export, masks precomputation, bounds from checkpoints."""
