"""Running a detector: the PyTorch, ONNX and OpenVINO runtimes and their loader, the
streaming predictor, sources, outputs and drawing (torch-free but torch_runtime.py and
loader.py's .pt branch). The export moved to :mod:`detect.deploy`, tracking and counting to
:mod:`detect.line`.
"""
