"""What an experiment directory holds: file and folder names (layout) and metric names."""
