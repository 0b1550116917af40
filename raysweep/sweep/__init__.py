"""The Tune side: driver (Tuner), schedulers and search, resources, param space, progress, warm-up."""
