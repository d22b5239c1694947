"""Deploying a detector: the ONNX export (float32), int8 quantisation, the OpenVINO and
variant comparison, and the timing and accuracy measures the export gate uses (torch:
onnx_export.py and variants.py' checkpoint branch; the rest torch-free).
"""
