"""The project image: its size by layer (on disk and gzip-compressed, as a registry stores it),
a rebuild after a change under src/, and a step's start-up overhead in a container vs a
subprocess of this environment, side by side in one run.

    python benchmarks/bench_image.py [--image t2iops:dev] [--repeats 5] [--no-compress] [--no-rebuild]

Start-up: each probe is what a pipeline step pays before its work: ``t2iops --help`` (the CLI)
and the imports of a training step (torch, diffusers, the trainer, the KFP executor). Rounds
alternate subprocess / container so machine load hits both alike; medians and per-round ratios.
The rebuild copies the committed project to a temporary folder, appends a comment to a module
under src/ and times scripts/build_image.sh (the dependency layers come from the cache).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP_IMPORTS = ("import torch, diffusers, transformers, kfp.dsl.executor_main; import t2iops.train.trainer; "
                "import t2iops.pipelines.steps")
PROBES = {"cli --help": ["t2iops", "--help"], "train-step imports": ["python", "-c", STEP_IMPORTS]}


def layers(image: str) -> list[dict]:
    history = subprocess.run(["docker", "history", "--no-trunc", "--format", "{{json .}}", image], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    rows = [json.loads(line) for line in history]
    return [r for r in rows if r.get("Size") not in ("0B", "0")]


def compressed_sizes(image: str) -> list[tuple[str, int, int]]:
    """(layer id, bytes, gzip -6 bytes) of every layer in ``docker save``, streamed."""
    out = []
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    with tarfile.open(fileobj=save.stdout, mode="r|") as outer:
        for member in outer:
            if not (member.isfile() and member.name.endswith("layer.tar")):
                continue
            gz = subprocess.Popen(["gzip", "-6", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            counter = subprocess.Popen(["wc", "-c"], stdin=gz.stdout, stdout=subprocess.PIPE, text=True)
            gz.stdout.close()
            shutil.copyfileobj(outer.extractfile(member), gz.stdin, 1 << 20)
            gz.stdin.close()
            gz.wait()
            out.append((member.name.split("/")[0][:12], member.size, int(counter.communicate()[0])))
    save.wait()
    return out


def rebuild_seconds(image: str) -> float:
    with tempfile.TemporaryDirectory(prefix="t2iops-bench-image-") as tmp:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode()
        for rel in filter(None, files.split("\0")):
            if (ROOT / rel).is_file():
                (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, Path(tmp) / rel)
        with open(Path(tmp) / "src" / "t2iops" / "__init__.py", "a") as fh:
            fh.write(f"# rebuild probe {time.time()}\n")
        tag = f"{image.split(':')[0]}:bench-rebuild"
        started = time.perf_counter()
        subprocess.run(["bash", f"{tmp}/scripts/build_image.sh", "--tag", tag], check=True, capture_output=True)
        seconds = time.perf_counter() - started
        subprocess.run(["docker", "image", "rm", tag], capture_output=True)
    return seconds


def time_command(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def startup(image: str, repeats: int) -> None:
    venv_bin = Path(sys.executable).parent
    print(f"\nstep start-up, {repeats} alternated rounds (median s; container/subprocess per round)")
    print(f"| probe | subprocess | container | ratio (median) | ratios |\n| --- | ---: | ---: | ---: | --- |")
    for name, argv in PROBES.items():
        local = [str(venv_bin / argv[0]) if argv[0] in ("t2iops", "python") else argv[0], *argv[1:]]
        contained = ["docker", "run", "--rm", "--network", "none", image, *argv]
        time_command(local), time_command(contained)  # warm the page cache for both
        here, there = [], []
        for _ in range(repeats):
            here.append(time_command(local))
            there.append(time_command(contained))
        ratios = [b / a for a, b in zip(here, there)]
        print(f"| {name} | {statistics.median(here):.2f} | {statistics.median(there):.2f} | "
              f"{statistics.median(ratios):.2f} | {', '.join(f'{r:.2f}' for r in ratios)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="t2iops:dev")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compress", action="store_true", help="skip the gzip sizes (about 2 min for 8 GB)")
    parser.add_argument("--no-rebuild", action="store_true", help="skip the rebuild after a src/ change")
    args = parser.parse_args()
    size = int(subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", args.image], capture_output=True,
                              text=True, check=True).stdout)
    print(f"image {args.image}: {size / 1e9:.2f} GB on disk")
    print("| layer (docker history) | size |\n| --- | ---: |")
    for row in layers(args.image):
        print(f"| {row['CreatedBy'].replace('|', '/')[:90]} | {row['Size']} |")
    if not args.no_compress:
        rows = compressed_sizes(args.image)
        total, packed = sum(r[1] for r in rows), sum(r[2] for r in rows)
        print(f"\nlayers: {len(rows)}, {total / 1e9:.2f} GB as tar, {packed / 1e9:.2f} GB gzip -6 "
              f"(ratio {packed / total:.2f}); largest: " +
              ", ".join(f"{r[0]} {r[1] / 1e9:.2f} -> {r[2] / 1e9:.2f} GB" for r in sorted(rows, key=lambda r: -r[1])[:3]))
    if not args.no_rebuild:
        print(f"\nrebuild after a change under src/: {rebuild_seconds(args.image):.1f} s")
    startup(args.image, args.repeats)


if __name__ == "__main__":
    main()
