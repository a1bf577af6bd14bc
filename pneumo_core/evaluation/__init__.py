"""Measuring a model: metrics with confidence intervals, figures, candidate-vs-active comparison, track record.
"""
