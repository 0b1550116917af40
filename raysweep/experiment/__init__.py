"""What an experiment directory holds: file and folder names (layout), metric names, how a trial ended (outcome)."""
