"""Models and data: sources, parsing, the per-process base-model cache, the builtin tiny model and task."""
