"""Errors and exit codes, atomic file writes, shared CLI options, logging, the device option
and the box types every stage passes around (torch-free but device.py).
"""
