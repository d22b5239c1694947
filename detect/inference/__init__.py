"""Running a detector: the PyTorch and ONNX runtimes and their loader, the streaming predictor,
sources, outputs, drawing, tracking and counting, the ONNX export (torch-free but
torch_runtime.py, loader.py's .pt branch and onnx_export.py).
"""
