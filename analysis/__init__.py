"""Analysis of finished raysweep experiments: pure functions over a pandas DataFrame.

Never imports Ray or torch at module level: it runs on a laptop with only the experiment directory.
"""
