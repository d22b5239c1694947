"""The bundled demo data: a procedural renderer of cans and bottles (intact and defective) on
a belt, written as a Pascal VOC devkit, and a rendered conveyor video with its truth
(torch-free; OpenCV draws).

By what each module draws, from the whole down:

* :mod:`~detect.demo.dataset`: ``make_demo_dataset`` (the devkit on disk, its ``.complete``
  marker and splits) and ``render_demo_image``;
* :mod:`~detect.demo.conveyor`: the conveyor video and its ground truth;
* :mod:`~detect.demo.scene`: one image, objects placed back to front over a background;
* :mod:`~detect.demo.background`: backgrounds and clutter;
* :mod:`~detect.demo.cans`, :mod:`~detect.demo.bottles`: the objects and their defects;
* :mod:`~detect.demo.paint`: the shared drawing helpers, palettes and sprites.
"""
