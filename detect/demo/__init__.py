"""The bundled demo data: a procedural renderer of cans and bottles (intact and defective) on
a belt, written as a Pascal VOC devkit, and a rendered conveyor video with its truth
(torch-free; OpenCV draws).
"""
