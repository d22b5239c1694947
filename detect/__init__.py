"""can-detect: Faster R-CNN detection of defective cans and bottles.

The commands are the front doors (``python -m detect.X``, or ``python -m detect X``; ``python -m
detect`` lists them in pipeline order): ``make_demo_data``, ``check_xml``, ``convert``, ``train``,
``eval``, ``audit``, ``export``, ``benchmark``, ``predict``. Each only parses its options and hands
over to a session of the library (``inference.session``, ``line.session``, ...). Behind them, one
sub-package per stage, each importing only itself and those above it in this list:

* ``common``: errors and exit codes, atomic files, CLI options, logging, the box types
* ``data``: VOC/COCO/YOLO files, dataset layouts, images (EXIF applied), records, the torch Dataset
* ``demo``: the procedural demo dataset and the rendered conveyor video
* ``model``: the backbone table, ``ModelConfig``, the Faster R-CNN builder, checkpoints
* ``scoring``: metrics, evaluation tables, the predictions file, plots and reports
* ``inference``: detectors (PyTorch, ONNX, OpenVINO), the predictor, sources, outputs
* ``deploy``: the ONNX export, int8 quantisation, export variants and their gate
* ``line``: tracking, counting and per-item events on a video or camera
* ``checks``: the annotation checker and the label audit's rules
* ``training``: config and recipes, data preparation, ``train()``, the engine, run folders

Everything but the torch modules works without torch (docs/architecture.md lists them).
"""
