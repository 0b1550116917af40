"""raysweep: Ray Tune sweeps of parameter-efficient fine-tuning.

Kept import-light on purpose: every Ray process that unpickles a raysweep function imports this
package, and torch/transformers/peft imports cost seconds per process (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

__version__ = "0.1.0"
