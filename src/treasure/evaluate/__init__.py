"""Evaluations of trained models: one module per evaluation, plus the sandbox that runs model-written code."""
