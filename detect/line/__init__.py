"""The line: detections over a video or camera become items. Tracking (ByteTrack-style
association, one id per item), counting at a line across the belt, and the per-item events
a reject gate or a person acts on (torch-free).
"""
