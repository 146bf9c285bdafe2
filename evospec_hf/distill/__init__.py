"""Offline distillation of drafters from their target (`evospec-hf distill` drives it)."""
