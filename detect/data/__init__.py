"""Annotations and images: VOC, COCO and YOLO files, dataset layouts, image decoding with EXIF
orientation, records and the torch Dataset (torch-free but dataset.py and
tensors.py).
"""
