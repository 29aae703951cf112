"""The built-in training loop: DDP via torchrun, bf16 autocast on GPU, seeded, resumable."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from . import _api, models, storage
from . import data as data_mod
from .config import TrainerConfig
from .export import ParityError, export_onnx, parity
from .report.channel import ProgressChannel
from .report.cost import CostUnavailable, latency_in_turns, measure

CHECKPOINT_VERSION = 1


class Stopped(Exception):
    """Told to stop (pruned): exit 3 with the metrics so far."""

    def __init__(self, reason: str, metrics: dict[str, float]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.metrics = metrics


class Terminated(Exception):
    """SIGTERM: the checkpoint is saved, exit 143 so the Job retries and resumes."""


#: set by the SIGTERM handler (cli.py); checked after every step
TERMINATE = _api._state.terminated


@dataclass
class DistInfo:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: TrainerConfig) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("hyperparameter device=cuda but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(world, rank, local_rank, device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False


def make_optimizer(cfg: TrainerConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def fingerprint(cfg: TrainerConfig) -> str:
    """What must match for a checkpoint to be resumed (epochs may grow)."""
    hp = {k: v for k, v in cfg.hparams.items() if k not in ("epochs",)}
    return json.dumps(
        {"recipe": cfg.recipe, "dataset": cfg.dataset_uri, "hp": hp}, sort_keys=True, default=str
    )


def log(msg: str) -> None:
    print(f"kubeforge-trainer: {msg}", file=sys.stderr, flush=True)


class Trainer:
    """One training run of a built-in recipe; ``fit()`` returns the final metrics."""

    def __init__(
        self, cfg: TrainerConfig, channel: ProgressChannel | None, dinfo: DistInfo
    ) -> None:
        self.cfg = cfg
        self.channel = channel
        self.d = dinfo
        seed_everything(cfg.seed)
        task = "regression" if cfg.recipe == "mlp-regressor" else "classification"
        self.ds = data_mod.load(cfg.dataset_uri, target=cfg.target, task=task)
        self.split = data_mod.split(self.ds, cfg.val_fraction, cfg.seed)
        self.regression = self.ds.task == "regression"
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model: nn.Module = models.build(cfg, self.ds, self.split).to(self.d.device)
        self.opt = make_optimizer(cfg, self.model.parameters())
        dev = self.d.device
        self.x_train = torch.as_tensor(self.split.x_train, device=dev)
        self.y_train = torch.as_tensor(self.split.y_train, device=dev)
        self.x_val = torch.as_tensor(self.split.x_val, device=dev)
        self.y_val = torch.as_tensor(self.split.y_val, device=dev)
        self.ckpt_uri = storage.join(cfg.output_uri, "checkpoint.pt")
        self.start_epoch = 1
        self.start_step = 0
        self.global_step = 0
        self.partial_loss = 0.0
        self.partial_count = 0
        self.history: list[dict[str, float]] = []
        self.resumed_from: int | None = None
        self._rng_state: torch.Tensor | None = None
        self.ddp: nn.Module = self.model
        self.step_delay = float(os.environ.get("KUBEFORGE_TEST_STEP_DELAY", "0") or 0)

    # ----------------------------------------------------------- loss and evaluation
    def loss_fn(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.regression:
            std = self.model.y_std  # type: ignore[union-attr]
            return torch.mean(((out.float() - y) / std) ** 2)
        return nn.functional.cross_entropy(out.float(), y)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.d.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        outs = []
        for i in range(0, len(self.x_val), 8192):
            with self.autocast():
                outs.append(self.model(self.x_val[i : i + 8192]).float())
        out = torch.cat(outs)
        self.model.train()
        metrics = {"val_loss": float(self.loss_fn(out, self.y_val))}
        if self.regression:
            err = out - self.y_val
            mse = float(torch.mean(err**2))
            var = float(torch.var(self.y_val, unbiased=False))
            metrics.update(
                val_mse=mse,
                val_mae=float(torch.mean(err.abs())),
                val_r2=1.0 - mse / var if var > 0 else 0.0,
            )
        else:
            metrics["val_accuracy"] = float((out.argmax(dim=1) == self.y_val).float().mean())
        return metrics

    # ----------------------------------------------------------- checkpoints
    def state(
        self, epoch_done: int, step_in_epoch: int, loss_sum: float, count: int
    ) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "fingerprint": fingerprint(self.cfg),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "epoch": epoch_done,  # completed epochs
            "step_in_epoch": step_in_epoch,  # batches done in epoch_done + 1
            "global_step": self.global_step,
            "partial_loss": loss_sum,
            "partial_count": count,
            "history": self.history,
            "rng": torch.get_rng_state(),
            "world": self.d.world,
            "time": time.time(),
        }

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        if not self.d.is_main:
            return
        buf = io.BytesIO()
        torch.save(state, buf)
        storage.write_bytes(self.ckpt_uri, buf.getvalue())

    def try_resume(self) -> None:
        state: dict[str, Any] | None = None
        if self.cfg.resume and self.d.is_main:
            raw = storage.read_bytes(self.ckpt_uri)
            if raw is not None:
                try:
                    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=False)
                except Exception as exc:
                    log(f"ignoring unreadable checkpoint {self.ckpt_uri}: {exc}")
                    state = None
                if state is not None and state.get("fingerprint") != fingerprint(self.cfg):
                    log(f"ignoring checkpoint {self.ckpt_uri}: made with other settings")
                    state = None
        if self.d.world > 1:
            box = [state]
            dist.broadcast_object_list(box, src=0)
            state = box[0]
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.start_epoch = int(state["epoch"]) + 1
        self.start_step = int(state.get("step_in_epoch", 0))
        self.global_step = int(state.get("global_step", 0))
        self.partial_loss = float(state.get("partial_loss", 0.0))
        self.partial_count = int(state.get("partial_count", 0))
        self.history = list(state.get("history", []))
        if self.start_step and state.get("world") == self.d.world:
            self._rng_state = state.get("rng")
        self.resumed_from = int(state["epoch"])
        log(
            f"resumed from checkpoint {self.ckpt_uri} at epoch {state['epoch']}"
            f" step {self.start_step}"
        )

    # ----------------------------------------------------------- the loop
    def _stop_flag(self, local: bool) -> bool:
        if self.d.world == 1:
            return local
        t = torch.tensor([1.0 if local else 0.0], device=self.d.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _stop_request(self) -> str | None:
        reason = self.channel.stop_requested() if (self.channel and self.d.is_main) else None
        if self.d.world > 1:
            box = [reason]
            dist.broadcast_object_list(box, src=0)
            reason = box[0]
        return reason

    def train_epoch(
        self, epoch: int, start_step: int = 0, loss_sum: float = 0.0, count: int = 0
    ) -> tuple[float, int]:
        """One epoch; returns (sum of per-sample losses, samples) over this rank."""
        cfg, d = self.cfg, self.d
        n = len(self.x_train)
        sampler = DistributedSampler(
            range(n),
            num_replicas=d.world,
            rank=d.rank,  # type: ignore[arg-type]
            shuffle=True,
            seed=cfg.seed,
            drop_last=False,
        )
        sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(sampler)), device=d.device)
        b = max(1, cfg.batch_size // d.world)  # batch_size is the global batch
        steps = math.ceil(len(order) / b)
        if self._rng_state is not None and start_step:
            torch.set_rng_state(self._rng_state)
            self._rng_state = None
        else:
            torch.manual_seed(cfg.seed * 1_000_003 + epoch * d.world + d.rank)
        acc = torch.zeros((), device=d.device)
        self.ddp.train()
        for step in range(start_step, steps):
            idx = order[step * b : (step + 1) * b]
            xb, yb = self.x_train[idx], self.y_train[idx]
            with self.autocast():
                out = self.ddp(xb)
            loss = self.loss_fn(out, yb)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            acc += loss.detach() * len(idx)
            count += len(idx)
            self.global_step += 1
            if self.step_delay:
                time.sleep(self.step_delay)
            if self._stop_flag(TERMINATE.is_set()):
                total = loss_sum + float(acc)
                if step + 1 < steps:
                    self.save_checkpoint(self.state(epoch - 1, step + 1, total, count))
                else:
                    self.save_checkpoint(self.state(epoch, 0, 0.0, 0))
                    # epoch finished but not evaluated: recompute its record on resume
                log(f"SIGTERM: checkpoint saved at epoch {epoch} step {step + 1}/{steps}")
                raise Terminated()
        return loss_sum + float(acc), count

    def fit(self) -> dict[str, float]:
        cfg, d = self.cfg, self.d
        self.try_resume()
        if d.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(
                self.model, device_ids=[d.device.index] if d.device.type == "cuda" else None
            )
        metrics: dict[str, float] = dict(self.history[-1]) if self.history else {}
        start_step, loss0, count0 = self.start_step, self.partial_loss, self.partial_count
        for epoch in range(self.start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            loss_sum, count = self.train_epoch(epoch, start_step, loss0, count0)
            start_step, loss0, count0 = 0, 0.0, 0
            if d.world > 1:
                t = torch.tensor([loss_sum, float(count)], device=d.device, dtype=torch.float64)
                dist.all_reduce(t)
                loss_sum, count = float(t[0]), int(t[1])
            metrics = {"epoch": epoch, "train_loss": loss_sum / max(count, 1), **self.evaluate()}
            metrics["epoch_time_s"] = time.perf_counter() - t0
            self.history.append({k: v for k, v in metrics.items() if k != "epoch_time_s"})
            if d.is_main:
                log(" ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()))
                if self.channel is not None:
                    self.channel.report(self.global_step, metrics, epoch=epoch)
            reason = self._stop_request()
            if reason is not None:
                raise Stopped(reason, metrics)
            if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0 and epoch < cfg.epochs:
                self.save_checkpoint(self.state(epoch, 0, 0.0, 0))
        if self.start_epoch > cfg.epochs and not metrics:
            metrics = {"epoch": cfg.epochs, **self.evaluate()}
        self.save_checkpoint(self.state(cfg.epochs, 0, 0.0, 0))
        metrics.pop("epoch_time_s", None)
        return metrics

    def export(self, metrics: dict[str, float]) -> dict[str, Any]:
        """Rank 0: model.onnx + parity check; returns the artefacts."""
        onnx_bytes = export_onnx(
            self.model,
            self.split.x_val,
            opset=self.cfg.onnx_opset,
            dynamic_batch=self.cfg.onnx_dynamic_batch,
        )
        diff = parity(self.model, onnx_bytes, self.split.x_val)
        metrics["onnx_max_abs_diff"] = diff
        if not math.isfinite(diff) or diff > self.cfg.onnx_tolerance:
            raise ParityError(
                f"ONNX parity check failed: max abs diff {diff:.3g} > tolerance "
                f"{self.cfg.onnx_tolerance:g} (hyperparameter onnx_tolerance)"
            )
        model_uri = storage.join(self.cfg.output_uri, "model.onnx")
        storage.write_bytes(model_uri, onnx_bytes)
        metrics.update(self.serving_cost(onnx_bytes))
        artifacts: dict[str, Any] = {
            "model": model_uri,
            "checkpoint": self.ckpt_uri,
            "sha256": storage.sha256(onnx_bytes),
            "bytes": len(onnx_bytes),
        }
        if self.cfg.quantize_mode:
            artifacts.update(self.export_int8(onnx_bytes, metrics))
        return artifacts

    def export_int8(self, float_bytes: bytes, metrics: dict[str, float]) -> dict[str, Any]:
        """model.int8.onnx beside model.onnx; its validation metrics, their delta to the float
        model's, and its serving cost (``int8_onnx_*``) go into ``metrics``."""
        from . import quantize

        mode = str(self.cfg.quantize_mode)
        rows = None
        if mode == "static-int8":
            order = np.random.default_rng(self.cfg.seed).permutation(len(self.split.x_train))
            rows = self.split.x_train[order[: self.cfg.calibration_samples]]
        int8_bytes = quantize.quantize(float_bytes, mode, rows)
        metrics.update(
            quantize.compare(
                float_bytes, int8_bytes, self.split.x_val, self.split.y_val, self.regression
            )
        )
        metrics.update(self.serving_cost(int8_bytes, prefix="int8_onnx_"))
        metrics.update(self.latency_pair(float_bytes, int8_bytes))
        uri = storage.join(self.cfg.output_uri, quantize.QUANTIZED_FILE)
        storage.write_bytes(uri, int8_bytes)
        log(f"wrote {uri} ({mode}, {len(int8_bytes)} bytes, float {len(float_bytes)})")
        return {
            "modelInt8": uri,
            "sha256Int8": storage.sha256(int8_bytes),
            "bytesInt8": len(int8_bytes),
        }

    def latency_pair(self, float_bytes: bytes, int8_bytes: bytes) -> dict[str, float]:
        """onnx_latency_ms and int8_onnx_latency_ms measured again with the two models taking
        turns, so their ratio (what a study weighs when it chooses int8) is not the node's drift
        between two measurements."""
        try:
            float_ms, int8_ms = latency_in_turns([float_bytes, int8_bytes], self.split.x_val[:1])
        except CostUnavailable as exc:
            log(f"float and int8 latency not measured in turns: {exc}")
            return {}
        return {"onnx_latency_ms": float_ms, "int8_onnx_latency_ms": int8_ms}

    def serving_cost(self, onnx_bytes: bytes, prefix: str = "onnx_") -> dict[str, float]:
        """Latency (batch 1, on this pod's CPU quota), bytes and parameters of an exported model."""
        try:
            return measure(onnx_bytes, self.split.x_val[:1], prefix=prefix)
        except CostUnavailable as exc:
            log(f"no serving cost reported: {exc}")
            return {}


def _fmt(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:.6g}"
