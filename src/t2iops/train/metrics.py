"""Where training metrics go: TensorBoard, DVCLive and a progress bar. Rank 0 logs; the other
ranks get a logger that does nothing.

Files land under ``O/logs/`` (``tensorboard/`` and ``dvclive/``, whose ``plots/metrics/*.tsv``
``dvc plots`` draws). When ``O`` is an s3:// prefix they are written to a local folder and
uploaded with every checkpoint and at the end.
"""
from __future__ import annotations

import logging
import math
import resource
import shutil
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any, Optional

import torch

from .. import storage

log = logging.getLogger("t2iops.train")

LOGS = "logs"


def peak_memory(device: torch.device) -> dict:
    """Peak memory so far: CUDA allocator peak on GPUs, the process' peak RSS on CPUs."""
    if device.type == "cuda":
        return {"bytes": int(torch.cuda.max_memory_allocated(device)), "kind": "cuda_max_allocated"}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"bytes": int(rss_kb * (1 if sys.platform == "darwin" else 1024)), "kind": "cpu_peak_rss"}


class RunLogger:
    def __init__(self, out: str, enabled: bool, total_steps: int, start_step: int, resumed: bool,
                 storage_cfg: Any = None):
        self.enabled = enabled
        self.out = str(out)
        self.storage_cfg = storage_cfg
        self.tb = self.live = self.bar = None
        if not enabled:
            return
        if storage.is_s3(self.out):
            # written here, uploaded by sync(); removed by close(), or at exit if the run failed
            self.local = Path(tempfile.mkdtemp(prefix="t2iops-logs-"))
            self._remove_local = weakref.finalize(self, shutil.rmtree, str(self.local), True)
        else:
            self.local = Path(self.out) / LOGS
        self.local.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.local / "tensorboard"), purge_step=start_step if resumed else None)
        except ImportError:  # tensorboard is in the ml extra; training works without it
            log.warning("tensorboard is not installed; no TensorBoard logs")
        try:
            from dvclive import Live

            self.live = Live(str(self.local / "dvclive"), resume=resumed, save_dvc_exp=False, dvcyaml=False)
        except ImportError:
            log.warning("dvclive is not installed; no DVCLive logs")
        from ..progress import progress

        self.bar = progress(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                continue
            if self.tb is not None:
                self.tb.add_scalar(f"{prefix}/{name}", value, step)
            if self.live is not None:
                self.live.step = step
                self.live.log_metric(f"{prefix}/{name}", value)

    def progress(self, steps: int, postfix: dict[str, str]) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            self.bar.set_postfix(postfix, refresh=False)

    def image(self, step: int, name: str, image) -> None:
        if not self.enabled:
            return
        if self.tb is not None:
            import numpy as np

            self.tb.add_image(name, np.asarray(image), step, dataformats="HWC")
        if self.live is not None:
            self.live.log_image(f"{name.replace('/', '_')}_step{step:06d}.png", image)

    def sync(self) -> None:
        """Flush, and upload the logs when the output is on S3."""
        if not self.enabled:
            return
        if self.tb is not None:
            self.tb.flush()
        if self.live is not None:
            self.live.make_summary()
        if storage.is_s3(self.out):
            storage.upload_dir(self.local, storage.join(self.out, LOGS), self.storage_cfg)

    def close(self) -> None:
        """Close the writers (they flush and write their summaries), then upload the logs once
        when the output is on S3 and remove the local copy."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.live is not None:
            self.live.end()
        if storage.is_s3(self.out):
            storage.upload_dir(self.local, storage.join(self.out, LOGS), self.storage_cfg)
            self._remove_local()
        self.enabled = False  # a second close() is a no-op


def format_postfix(loss: Optional[float], lr: float, samples_per_s: float) -> dict[str, str]:
    return {"loss": "nan" if loss is None else f"{loss:.4f}", "lr": f"{lr:.2e}", "samples/s": f"{samples_per_s:.1f}"}


def bucket_line(row: dict, batch_size: int, grad_accum: int, max_steps: int) -> str:
    """A bucket's plan for the run in plain words (``row``: one of
    :meth:`t2iops.train.data.EpochBatches.report`'s, counted to the run's last step)."""
    head = f"bucket {row['bucket']}: {row['samples']} samples"
    if not row["samples"]:
        return f"bucket {row['bucket']}: no samples"
    if not row["micro_batches_per_epoch"]:
        return f"{head}, fewer than one batch of {batch_size}: never trained on"
    steps = row["micro_batches"] / grad_accum
    share = f"{steps:.0f}" if steps == int(steps) else f"{steps:.1f}"
    return (f"{head}, {row['micro_batches_per_epoch']} micro-batches per epoch "
            f"({row['left_out_per_epoch']} left out of each epoch), {share} of {max_steps} optimizer steps")
