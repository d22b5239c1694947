"""The detector: the backbone table, ModelConfig, the Faster R-CNN builder, the RoIAlign with a
fast CPU gradient, checkpoints (torch-free: backbones.py, config.py).
"""
