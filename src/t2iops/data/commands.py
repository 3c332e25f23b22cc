"""``t2iops data synth | validate | annotate``."""
from __future__ import annotations

import argparse
import json
import sys

FORMAT_HELP = """Dataset format: a folder or s3:// prefix with metadata.jsonl (or metadata.parquet / *.parquet
shards) whose rows name an image, a conditioning image and a caption (columns set by
data.image_column, data.conditioning_image_column, data.caption_column, data.id_column), a
datasets save_to_disk folder, or a Hugging Face dataset written hf://owner/name (e.g.
hf://fusing/fill50k; without hf:// a root is always a local path)."""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    data = subparsers.add_parser(
        "data",
        help="create, annotate and validate datasets",
        description="Create, annotate and validate datasets.\n\n" + FORMAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = data.add_subparsers(dest="data_command", metavar="<action>")
    sub.required = True

    synth = sub.add_parser(
        "synth",
        parents=[common],
        help="write the synthetic circles dataset (fill50k style)",
        description="Write a deterministic fill50k-style dataset: a filled circle of one colour on another, "
        "its white outline on black as the condition, a caption like 'cyan circle with brown background'. "
        "Size from data.synth.count / resolution / seed (defaults 1000, 64, 0). Same seed, same bytes.",
    )
    synth.add_argument("--out", required=True, help="output folder or s3:// prefix (published atomically)")
    synth.set_defaults(func=_synth, stage="synth")

    validate = sub.add_parser(
        "validate",
        parents=[common],
        help="check every row, quarantine bad ones, publish the good ids",
        description="Check every row (files exist and decode, sizes, captions, paths stay inside the root, "
        "duplicate ids, decompression bombs from the header). Writes OUT/report.json, OUT/quarantine.jsonl, "
        "OUT/rows.jsonl (good rows: id + split) and the resolved config; exits 1 when the share of bad rows "
        "exceeds data.max_bad_fraction (default 0): then nothing is left at OUT and the report and quarantine "
        "go to OUT.failed. An empty split is a warning naming the setting that sizes it.\n\n" + FORMAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    validate.add_argument("--root", default=None, help="dataset to check (default: data.root)")
    validate.add_argument("--out", required=True, help="output folder or s3:// prefix for the verdict")
    validate.set_defaults(func=_validate, stage="validate")

    from .annotate import ANNOTATORS  # light: torch/kornia load only when annotating

    annotate = sub.add_parser(
        "annotate",
        parents=[common],
        help="build conditioning images (e.g. canny edges) from plain images + captions",
        description="Turn a folder of images plus captions into a dataset in our format: the originals under "
        "images/, one condition PNG per image under conditioning_images/, metadata.jsonl. Captions come "
        "from --captions (JSONL or CSV with a file column such as file_name and a caption column such as "
        "text) or a metadata.jsonl / metadata.csv beside the images.",
    )
    annotate.add_argument("--kind", default="canny", help=f"annotator ({', '.join(sorted(ANNOTATORS))}; default canny)")
    annotate.add_argument("--images", required=True, help="folder or s3:// prefix of images (searched recursively)")
    annotate.add_argument("--out", required=True, help="output dataset folder or s3:// prefix")
    annotate.add_argument("--captions", default=None, help="JSONL or CSV file (or s3:// URI) mapping image files to captions")
    annotate.add_argument("--file-column", default=None, help="column of --captions naming the image (default: first of file_name, image, file, path)")
    annotate.add_argument("--low-threshold", type=float, default=0.1, help="canny: low hysteresis threshold (default 0.1)")
    annotate.add_argument("--high-threshold", type=float, default=0.2, help="canny: high hysteresis threshold (default 0.2)")
    annotate.set_defaults(func=_annotate)


def _synth(args: argparse.Namespace, cfg) -> int:
    from .synth import synthesize

    summary = synthesize(args.out, cfg)
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def _validate(args: argparse.Namespace, cfg) -> int:
    from .validate import validate

    report = validate(args.root or cfg.data.root, args.out, cfg)
    sys.stdout.write(json.dumps({k: report[k] for k in ("status", "rows", "good", "bad", "errors", "splits")}) + "\n")
    return 0


def _annotate(args: argparse.Namespace, cfg) -> int:
    from .annotate import annotate

    options = {}
    if args.kind == "canny":
        options = {"low_threshold": args.low_threshold, "high_threshold": args.high_threshold}
    summary = annotate(args.images, args.out, cfg, kind=args.kind, captions=args.captions,
                       file_column=args.file_column, **options)
    summary.pop("skipped", None)
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0
