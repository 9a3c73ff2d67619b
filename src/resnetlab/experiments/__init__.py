"""Experiments that reproduce a figure of a paper with one command, on top of the training engine.

    from resnetlab.experiments.degradation import run_degradation

(This package imports nothing itself: `resnetlab --help` reads `experiments.defaults` without torch.)
"""
