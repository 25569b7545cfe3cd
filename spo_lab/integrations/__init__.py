"""spo_lab inside other training frameworks. Each module imports its framework itself; nothing else in spo_lab
imports them, so the default environment needs none of them.

- :mod:`spo_lab.integrations.trl` -- ``SPOConfig`` and ``SPOTrainer``: SPO on top of Hugging Face TRL's
  ``GRPOTrainer`` (the ``trl`` extra, ``pip install -e ".[trl]"``).
"""
