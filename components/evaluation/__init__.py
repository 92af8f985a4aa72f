"""Scoring predictions: metrics, patient bootstrap intervals, thresholds, calibration, ensembles, reports."""
