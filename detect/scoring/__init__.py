"""Scoring detections: VOC and COCO metrics, evaluation sets and tables, the predictions file,
plots, galleries and reports (torch-free).
"""
