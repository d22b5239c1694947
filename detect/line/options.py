"""The line's command-line options (``detect.predict --track``): the "counting items" group and
its checks, beside the line they configure. Light to import: the parser is built without
loading a model."""

from __future__ import annotations

import argparse

from detect.common.errors import UsageError
from detect.common.options import Number
from detect.line.counting import DEFECT_SHARE, TRACK_CONF, parse_count_line

__all__ = ["TRACK_CONF", "add_line_options", "check_line_args"]


def add_line_options(parser: argparse.ArgumentParser) -> None:
    """``--track`` and the options of counting items on a line."""
    t = parser.add_argument_group(
        "counting items (--track)",
        "Each detection gets a track id (ByteTrack, class-agnostic) that follows the object from frame to frame; "
        "an item is counted once, when its box centre crosses the counting line. Its class is the score-weighted "
        "vote of all its frames so far (a class votes in a frame where it is seen at its --conf); it is defective "
        "when a defect class was the frame's best class at its --conf in at least --defect-frames frames and in at "
        "least --defect-share of the frames where it was detected. One JSON line per item goes "
        "to events.jsonl as it is counted. Details: docs/counting.md")
    t.add_argument("--track", action="store_true", help="track objects and count items (videos, cameras, streams)")
    t.add_argument("--count-line", metavar="x1,y1,x2,y2|none",
                   help="the counting line, in fractions of the frame (all values 0..1) or pixels; default: across "
                        "the middle, perpendicular to --belt; none: count a track when it ends after --min-frames")
    t.add_argument("--belt", default="left-right", choices=["left-right", "right-left", "top-down", "bottom-up"],
                   help="the way the belt moves (default left-right): the default line and the forward direction")
    t.add_argument("--belt-speed", type=Number(float, 0), metavar="PX",
                   help="pixels the belt moves a frame along --belt (default: measured from the detections)")
    t.add_argument("--defect-frames", type=Number(int, 1), default=2, metavar="N",
                   help="frames a defect class must be seen in, at its --conf, to flag the item (default 2)")
    t.add_argument("--defect-share", type=Number(float, 0, 1), default=DEFECT_SHARE, metavar="F",
                   help="and the share of the item's detected frames it must be seen in (default "
                        f"{DEFECT_SHARE:g}; 0: --defect-frames alone)")
    t.add_argument("--defect-threshold", type=Number(float, 0, 1, lo_open=True), metavar="S",
                   help="flag an item when its defect_score is at least S, instead of the two rules above (S: "
                        "from detect.eval --items --max-false-reject)")
    t.add_argument("--gate-delay", type=Number(float, 0, lo_open=True), metavar="S",
                   help="seconds an item takes from the counting line to the reject gate (distance / belt speed, "
                        "e.g. 1 m at 2.2 m/s: 0.45): each event then says by when to act (act_by, gate_in_ms, "
                        "late), and an item lost just before the line is decided where the belt carries it across")
    t.add_argument("--anomaly-flags", action="store_true",
                   help="with an anomaly bank beside the model: an item over its anomaly threshold is rejected too "
                        "(default: its event carries the score and the verdict alone decides; docs/anomaly.md)")
    t.add_argument("--min-frames", type=Number(int, 1), default=3, metavar="N",
                   help="with --count-line none: frames a track needs to be counted (default 3)")
    t.add_argument("--events", metavar="FILE|-",
                   help="where the event lines go (default: events.jsonl in the output folder); '-': standard "
                        "output as well (then the summary goes to standard error)")
    t.add_argument("--track-buffer", type=Number(int, 1), metavar="FRAMES",
                   help="frames a lost track is kept to be found again (default: one second of video, at least 10)")
    t.add_argument("--track-low", type=Number(float, 0, 1), default=0.1, metavar="S",
                   help="lowest score a detection needs to keep a track alive (ByteTrack's low detections; default 0.1)")
    t.add_argument("--sequence", action="store_true",
                   help="with --track on images: they are consecutive frames of one camera, in name order")


def check_line_args(args: argparse.Namespace) -> None:
    """The counting options only apply with ``--track``; with it, ``args.line`` is the parsed
    ``--count-line`` (a :class:`~detect.line.counting.CountingLine`, or None for ``none``).

    Raises:
        UsageError: a counting option without ``--track``, or a bad ``--count-line``.
    """
    counting = [o for o, v in (("--count-line", args.count_line), ("--events", args.events),
                                ("--sequence", args.sequence), ("--track-buffer", args.track_buffer),
                                ("--belt-speed", args.belt_speed is not None),
                                ("--defect-threshold", args.defect_threshold is not None),
                                ("--gate-delay", args.gate_delay is not None),
                                ("--anomaly-flags", args.anomaly_flags)) if v]
    if counting and not args.track:
        raise UsageError(f"{', '.join(counting)} only apply with --track")
    if args.track:
        args.line = parse_count_line(args.count_line, args.belt)
        if args.gate_delay is not None and args.line is None:
            raise UsageError("--gate-delay counts from the counting line, and --count-line is none; give a counting "
                             "line (or leave --count-line out for the middle of the frame)")
