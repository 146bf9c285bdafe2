"""Offline distillation of drafters from their target (`scripts/distill_drafter.py` drives it)."""
