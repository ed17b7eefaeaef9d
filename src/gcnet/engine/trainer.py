"""The training loop: data -> model -> losses -> optimiser, with three explicit callbacks
(log, checkpoint, evaluate) and exact resume.

It never loses work: SIGTERM and Ctrl-C (SIGINT) save ``latest.pth`` at the next iteration boundary
and stop (:attr:`Trainer.stop_signal`); a NaN/inf loss stops without saving, and a checkpoint is
never written with non-finite weights or optimiser state, so the last one on disk resumes. Every
evaluation's COCO numbers are logged; ``train.save_best`` keeps ``best.pth``, ``train.patience``
stops a run that no longer improves.

One "iteration" is one optimiser step over ``train.grad_accum`` micro-batches. The lr is a function
of (epoch, iteration), the sampler order a function of (seed, epoch), and RNG states are saved per
rank, so a run killed after a checkpoint and resumed continues with the same losses: exactly on
CPU (tested); on GPUs up to the non-determinism of atomic-add kernels (RoIAlign's backward, some
cuDNN weight gradients), which makes even two uninterrupted GPU runs drift apart slightly.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from gcnet.checkpoint import CheckpointError, load_state_dict_checked, safe_torch_load
from gcnet.config import COCO_STAT_NAMES, Config, config_to_dict
from gcnet.engine.checkpointer import Checkpointer, capture_rng_state, restore_rng_state
from gcnet.engine.distributed import (
    all_gather_object,
    all_reduce_max,
    all_reduce_mean,
    any_process,
    barrier,
    broadcast_object,
    get_rank,
    get_world_size,
    wrap_ddp,
)
from gcnet.engine.logger import TrainLogger
from gcnet.engine.schedule import LRSchedule, build_optimizer, scaled_lr
from gcnet.engine.sync_bn import convert_sync_batchnorm
from gcnet.structures import Batch

EvaluateFn = Callable[[nn.Module, int], Any]
StepCallback = Callable[["Trainer", dict[str, float]], None]
_AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(FloatingPointError):
    """The total loss, the weights or the optimiser state became NaN or inf; the run stops
    without writing a checkpoint, so the last one on disk holds finite numbers."""


class TrainingStopped(RuntimeError):
    """A signal (SIGINT, SIGTERM) stopped the run after it saved ``checkpoint``. ``exit_code`` is
    128 + the signal number (130, 143: the shell's convention), for a scheduler to requeue on."""

    def __init__(self, signum: int, checkpoint: Path, where: str) -> None:
        self.signum, self.checkpoint = signum, checkpoint
        self.exit_code = 128 + signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at {where}; saved {checkpoint}; continue with --resume"
        )


@dataclass
class TrainState:
    """Position in the schedule: ``epoch`` in progress (0-based) and optimiser steps done in it."""

    epoch: int = 0
    iter: int = 0
    global_step: int = 0

    def describe(self) -> str:
        """Where in the schedule, 1-based as the log: ``epoch 2, iteration 3 (global step 7)``."""
        if self.iter == 0:
            return f"the end of epoch {self.epoch} (global step {self.global_step})"
        return f"epoch {self.epoch + 1}, iteration {self.iter} (global step {self.global_step})"


def is_loss_key(key: str) -> bool:
    """The detector contract: loss terms start with ``loss`` or contain ``.loss``."""
    return key.startswith("loss") or ".loss" in key


def sum_losses(losses: Mapping[str, Tensor]) -> Tensor:
    """Total loss = sum of the loss terms (other entries, e.g. accuracies, are only logged)."""
    terms = [v.float().sum() for k, v in losses.items() if is_loss_key(k)]
    if not terms:
        raise ValueError(f"the model returned no loss terms (keys: {sorted(losses)})")
    return torch.stack(terms).sum()


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch with ``seed + rank`` (per-rank streams for sampling/flips)."""
    value = int(seed) + int(rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def _worker_init(worker_id: int) -> None:
    # torch seeds each worker with base_seed + worker_id; derive Python/NumPy from it.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    # Ctrl-C and SIGTERM reach the whole process group: the main process saves and then shuts the
    # workers down; a worker that died of them would break the batch being fetched instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def coco_metrics(stats: Any) -> dict[str, float]:
    """``{"bbox": [12 stats], "segm": [...]}`` (``evaluate_coco``) -> ``{"bbox_AP": ..., "segm_ARl": ...}``;
    anything else (an evaluate_fn that returns nothing) -> {}."""
    if not isinstance(stats, Mapping):
        return {}
    return {
        f"{kind}_{name}": float(value)
        for kind, values in stats.items()
        if isinstance(values, Sequence) and len(values) == len(COCO_STAT_NAMES)
        for name, value in zip(COCO_STAT_NAMES, values)
    }


class _SkipFirst(Sampler[list[int]]):
    """The epoch's batches minus the first ``skip`` (those a resumed run already consumed)."""

    def __init__(self, batch_sampler: Sampler[list[int]], skip: int) -> None:
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.skip, 0)  # type: ignore[arg-type]


class Trainer:
    """Trains ``model`` (``model(images, metas, targets) -> dict of losses``) on ``dataset``.

    ``batch_sampler`` yields this rank's batches of indices and has ``set_epoch``/``len`` (e.g.
    ``gcnet.data.GroupedBatchSampler``). The model is moved to ``device``, its backbone BN
    converted to SyncBN when ``cfg.model.backbone.norm == "syncbn"`` and running distributed,
    then DDP-wrapped. ``step_callback(trainer, record)`` runs after every iteration.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        batch_sampler: Sampler[list[int]],
        cfg: Config,
        work_dir: str | os.PathLike[str],
        *,
        collate_fn: Callable[[Sequence[Any]], Batch],
        device: torch.device | str | None = None,
        evaluate_fn: EvaluateFn | None = None,
        step_callback: StepCallback | None = None,
        num_workers: int = 0,
        progress: bool = True,
    ) -> None:
        tc = cfg.train  # its values were checked when it was made (TrainConfig is frozen)
        self.cfg, self.work_dir = cfg, Path(work_dir)
        self.rank, self.world_size = get_rank(), get_world_size()
        default = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device if device is not None else default)
        model.to(self.device).train()
        if cfg.model.backbone.norm == "syncbn" and self.world_size > 1:
            convert_sync_batchnorm(getattr(model, "backbone", model), self.device)
        self.module = model
        self.dataset, self.batch_sampler, self.collate_fn = dataset, batch_sampler, collate_fn
        self.num_workers, self.progress = num_workers, progress
        self.evaluate_fn, self.step_callback = evaluate_fn, step_callback
        self.num_batches = len(batch_sampler)  # type: ignore[arg-type]
        if self.num_batches < 1:
            raise ValueError("Trainer: the batch sampler yields no batches (empty training set?)")
        self.iters_per_epoch = math.ceil(self.num_batches / tc.grad_accum)
        lr = scaled_lr(tc, cfg.data.images_per_gpu, self.world_size)
        self.optimizer = build_optimizer(model, tc, lr)
        self.schedule = LRSchedule(self.optimizer, tc, lr, self.iters_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=tc.amp == "fp16")
        self.amp_dtype = _AMP_DTYPES[tc.amp]
        self.model = wrap_ddp(model, self.device, tc.find_unused_parameters)
        self.checkpointer = Checkpointer(self.work_dir, is_main=self.rank == 0)
        self.state = TrainState()
        self._signal: int | None = None  # the signal this process received
        self.stop_signal: int | None = None  # set when a signal (on any process) stopped the run
        self.stopped_early = False  # train.patience ran out
        self.best: dict[str, Any] | None = None  # {"metric", "value", "epoch"} of best.pth
        self._evals_since_best = 0
        self._last_saved: tuple[Path, TrainState] | None = None  # the file and where it was written
        self.logger: TrainLogger | None = None

    # -- the loop ------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> Path:
        """Train to ``train.epochs``; returns the final ``epoch_{n}.pth``, or ``latest.pth`` when a
        signal stopped the run (saved at the next iteration boundary; :attr:`stop_signal` says
        which) or ``train.patience`` did (:attr:`stopped_early`)."""
        if resume:
            self.resume()
        total = self.cfg.train.epochs * self.iters_per_epoch
        start = self.state.epoch * self.iters_per_epoch + self.state.iter
        self.logger = TrainLogger(
            self.work_dir, total, start, self.cfg.train.log_interval, enabled=self.rank == 0, progress=self.progress
        )
        if self._patience_spent():
            self.stopped_early = True
            self.logger.write(self._early_stop_text("before this resume"))
            self.logger.close()
            return self.checkpointer.latest
        previous = self._install_signal_handlers()
        try:
            while self.state.epoch < self.cfg.train.epochs:
                if not self._train_epoch():
                    return self.checkpointer.latest
                self.state.epoch += 1
                self.state.iter = 0
                self._on_epoch_end()
                if self._stop_now() or self.stopped_early:
                    return self.checkpointer.latest
        finally:
            self._restore_signal_handlers(previous)
            self.logger.close()
        return self.checkpointer.epoch_path(self.cfg.train.epochs)

    def _train_epoch(self) -> bool:
        """Run the rest of the current epoch; False when stopped early by a signal."""
        st, accum = self.state, self.cfg.train.grad_accum
        set_epoch = getattr(self.batch_sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(st.epoch)
        dataset_epoch = getattr(self.dataset, "set_epoch", None)
        if dataset_epoch is not None:  # augmentation independent of the worker split (resume)
            dataset_epoch(st.epoch, self.cfg.train.seed)
        # A private generator: creating the loader must not draw from the global RNG (resume).
        generator = torch.Generator().manual_seed(
            (self.cfg.train.seed * 1_000_003 + st.epoch * 7919 + self.rank) % 2**63
        )
        loader = DataLoader(
            self.dataset,
            batch_sampler=_SkipFirst(self.batch_sampler, st.iter * accum),
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            worker_init_fn=_worker_init,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )
        batches = iter(loader)
        try:
            return self._run_batches(batches)
        finally:
            # Workers ignore SIGINT/SIGTERM (the main process saves), so at interpreter exit the
            # multiprocessing atexit hook could not stop them while an exception's traceback keeps
            # this iterator alive: stop them here, on every way out of the epoch.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _run_batches(self, batches: Iterator[Batch]) -> bool:
        st, accum = self.state, self.cfg.train.grad_accum
        tick = time.perf_counter()
        while st.iter < self.iters_per_epoch:
            n_micro = min(accum, self.num_batches - st.iter * accum)
            micro = [next(batches) for _ in range(n_micro)]
            data_done = time.perf_counter()
            lr = self.schedule.set(st.epoch, st.iter)
            values = self.run_step(micro)
            st.iter += 1
            st.global_step += 1
            now = time.perf_counter()
            record = {
                "epoch": st.epoch + 1,
                "iter": st.iter,
                "global_step": st.global_step,
                "lr": lr,
                **values,
                "time": now - tick,
                "data_time": data_done - tick,
            }
            if self.device.type == "cuda" and self.logger is not None and self.logger.should_log(st.global_step):
                record["memory"] = self._window_peak_memory_mb()
            tick = now
            if not self._on_iter_end(record):
                return False
        return True

    def run_step(self, batches: list[Batch]) -> dict[str, float]:
        """One optimiser step over the micro-batches; returns the losses averaged over them
        (and over processes) for logging."""
        n = len(batches)
        logged: dict[str, float] = {}
        ddp = self.model is not self.module
        for i, batch in enumerate(batches):
            batch = batch.to(self.device)
            sync = self.model.no_sync() if ddp and i < n - 1 else nullcontext()  # type: ignore[operator]
            with sync:
                with torch.autocast(
                    self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
                ):
                    losses = self.model(batch.images, batch.metas, batch.targets)
                total = sum_losses(losses)
                values = self._reduce_for_log(total, losses)
                if not math.isfinite(values["loss"]):
                    self._raise_non_finite(values, i)
                self.scaler.scale(total / n).backward()
            for key, value in values.items():
                logged[key] = logged.get(key, 0.0) + value / n
        if self.cfg.train.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            logged["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return logged

    def _window_peak_memory_mb(self) -> float:
        """Peak CUDA allocation since the previous log line, MAX over ranks (what the original logs
        as ``memory`` and its zoo's "Mem (GB)" is read from); every rank calls it at the same steps."""
        peak = torch.tensor([torch.cuda.max_memory_allocated(self.device) / 2**20], device=self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return float(all_reduce_max(peak))

    def _reduce_for_log(self, total: Tensor, losses: Mapping[str, Tensor]) -> dict[str, float]:
        keys = sorted(k for k, v in losses.items() if isinstance(v, Tensor) and v.numel() == 1)
        stacked = torch.stack([total.detach().float()] + [losses[k].detach().float().reshape(()) for k in keys])
        reduced = all_reduce_mean(stacked).tolist()  # every rank sees the same numbers
        return {"loss": reduced[0], **dict(zip(keys, reduced[1:]))}

    def _raise_non_finite(self, values: dict[str, float], micro: int) -> None:
        st = self.state
        bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
        raise NonFiniteLossError(
            f"non-finite loss at epoch {st.epoch + 1}, iteration {st.iter + 1} (global step "
            f"{st.global_step + 1}, micro-batch {micro + 1}: {bad}); stopped without saving; {self._last_good()}"
        )

    def _last_good(self) -> str:
        """Where the run can resume from, and what to change (for the non-finite stops)."""
        hint = "lower train.lr or set train.grad_clip"
        if self._last_saved is None:
            return f"no checkpoint was written yet; {hint}"
        path, saved = self._last_saved
        if saved.global_step == self.state.global_step:  # the failing step ran on its very weights
            return (
                f"the last checkpoint, {path} ({saved.describe()}), holds the weights that gave this "
                f"loss, so resuming from it repeats it; start over with a lower train.lr or a train.grad_clip"
            )
        return f"the last good checkpoint is {path} ({saved.describe()}); {hint}"

    def _check_finite(self) -> None:
        """Refuse to save NaN/inf weights, buffers or optimiser state (one device sync in all)."""
        named = [(k, v) for k, v in self.module.state_dict().items() if v.is_floating_point()]
        named += [(f"optimizer state of {k}", v) for k, v in self._optimizer_tensors()]
        if not named or bool(torch.stack([torch.isfinite(v).all() for _, v in named]).all()):
            return
        first = next(k for k, v in named if not bool(torch.isfinite(v).all()))
        raise NonFiniteLossError(
            f"non-finite weights at {self.state.describe()} (first: {first}); not saved; {self._last_good()}"
        )

    def _optimizer_tensors(self) -> Iterator[tuple[str, Tensor]]:
        names = {id(p): n for n, p in self.module.named_parameters()}
        for param, state in self.optimizer.state.items():
            for key, value in state.items():
                if isinstance(value, Tensor) and value.is_floating_point():
                    yield f"{names.get(id(param), '?')} ({key})", value

    # -- callbacks -------------------------------------------------------------------------------

    def _on_iter_end(self, record: dict[str, float]) -> bool:
        """Log, periodic checkpoint, user callback, SIGTERM check; False = stop now."""
        assert self.logger is not None
        self.logger.step(record)
        last = self.state.iter == self.iters_per_epoch  # the epoch-end save follows anyway
        every = self.cfg.train.checkpoint_every_iters
        saved = False
        if every and self.state.global_step % every == 0 and not last:
            self.save()
            saved = True
        if self.step_callback is not None:
            self.step_callback(self, record)
        if not last and self._stop_now():
            if not saved:
                self.save()
            return False
        return True

    def _stop_now(self) -> bool:
        """Whether a signal reached any process (collective); sets :attr:`stop_signal`."""
        if not any_process(self._signal is not None, self.device):
            return False
        self.stop_signal = self._signal if self._signal is not None else signal.SIGTERM
        return True

    def _on_epoch_end(self) -> None:
        epoch, tc = self.state.epoch, self.cfg.train
        keep = epoch % max(tc.checkpoint_interval, 1) == 0 or epoch == tc.epochs
        self.save(epoch_file=epoch if keep else None)
        if self.evaluate_fn is not None and self._evaluates(epoch):
            metrics = self._evaluate(epoch)
            if metrics:
                assert self.logger is not None
                self.logger.metrics(epoch, self.state.global_step, metrics)
                self._track_best(epoch, metrics)

    def _evaluates(self, epoch: int) -> bool:
        tc = self.cfg.train
        return epoch % tc.eval_interval == 0 or epoch == tc.epochs

    def _evaluate(self, epoch: int) -> dict[str, float]:
        """Run ``evaluate_fn`` without touching the training RNG streams (so that a resumed run
        equals an uninterrupted one); its numbers as rank 0 computed them, on every rank."""
        assert self.evaluate_fn is not None
        rng = capture_rng_state()
        self.module.eval()
        try:
            with torch.no_grad():
                stats = self.evaluate_fn(self.module, epoch)
        except Exception as err:
            if self._signal is None:
                raise
            assert self.logger is not None  # the signal interrupted the evaluation (its workers)
            self.logger.write(f"evaluation of epoch {epoch} interrupted ({type(err).__name__}); stopping")
            return {}
        finally:
            self.module.train()
            restore_rng_state(rng)
        return all_gather_object(coco_metrics(stats))[0]

    def _track_best(self, epoch: int, metrics: dict[str, float]) -> None:
        """Keep ``best.pth`` at the best ``train.save_best`` value; count evaluations since it."""
        metric = self.cfg.train.save_best
        if metric is None or metric not in metrics:
            return
        value = metrics[metric]
        if self.best is None or value > self.best["value"]:
            self.best = {"metric": metric, "value": value, "epoch": epoch}
            self._evals_since_best = 0
            self.checkpointer.save_best(self.module, {**self._meta(), "best": dict(self.best)})
            barrier()
        else:
            self._evals_since_best += 1
        if self._patience_spent():
            self.stopped_early = True
            assert self.logger is not None
            self.logger.write(self._early_stop_text(f"at epoch {epoch}"))

    def _patience_spent(self) -> bool:
        patience = self.cfg.train.patience
        return patience is not None and self.best is not None and self._evals_since_best >= patience

    def _early_stop_text(self, when: str) -> str:
        assert self.best is not None
        return (
            f"early stop {when}: no better {self.best['metric']} in {self._evals_since_best} evaluations "
            f"(train.patience); best {self.best['value']:.4f} at epoch {self.best['epoch']}: "
            f"{self.checkpointer.best}"
        )

    # -- checkpoints -----------------------------------------------------------------------------

    def save(self, epoch_file: int | None = None) -> Path:
        """Checkpoint the full training state (collective: every rank must call it); refused, with
        :class:`NonFiniteLossError`, when any weight or optimiser state is NaN or inf."""
        self._check_finite()
        st = self.state
        rng = all_gather_object(capture_rng_state())
        extra = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "rng": rng,
            "epoch": st.epoch,
            "iter": st.iter,
            "global_step": st.global_step,
        }
        path = self.checkpointer.save(self.module, self._meta(), extra, epoch_file)
        self._last_saved = (path, dataclasses.replace(self.state))
        barrier()
        return path

    def _meta(self) -> dict[str, Any]:
        names = getattr(self.module, "class_names", self.cfg.class_names)
        # the whole config travels with the weights: gcnet.build restores it (test pipeline, classes)
        return {
            "epoch": self.state.epoch,
            "iter": self.state.global_step,
            "class_names": list(names),
            "config_name": self.cfg.name,
            "config": config_to_dict(self.cfg),
        }

    def resume(self) -> bool:
        """Restore everything from the newest readable checkpoint (``latest.pth``, else the highest
        ``epoch_N.pth``; unreadable ones are skipped with a warning); False (and a fresh start)
        when the work dir holds none. Raises when it holds some but none reads back. Rank 0 picks
        the file and every rank resumes from that one (collective)."""
        found = self._agreed_checkpoint()
        if found is None:
            if self.rank == 0:
                print(f"resume: no checkpoint in {self.work_dir} yet, starting from scratch")
            return False
        path, ckpt = found
        load_state_dict_checked(self.module, ckpt["state_dict"], str(path))  # mismatches listed, not traced
        self.optimizer.load_state_dict(ckpt["optimizer"])
        configured = self.schedule.base_lr
        self.schedule.load_state_dict(ckpt["scheduler"])
        if not math.isclose(self.schedule.base_lr, configured, rel_tol=1e-9):
            # a changed train.lr is meant (e.g. after a NaN stop): this run's, not the checkpoint's
            if self.rank == 0:
                print(f"resume: base lr {self.schedule.base_lr:g} -> {configured:g} (this run's train.lr)")
            self.schedule.base_lr = configured
        if ckpt.get("grad_scaler"):
            self.scaler.load_state_dict(ckpt["grad_scaler"])
        rng = ckpt["rng"]
        if len(rng) != self.world_size:
            raise ValueError(
                f"resume: {self.checkpointer.latest} was written by {len(rng)} processes, "
                f"this run has {self.world_size}; exact resume needs the same world size"
            )
        restore_rng_state(rng[self.rank])
        self.state = TrainState(int(ckpt["epoch"]), int(ckpt["iter"]), int(ckpt["global_step"]))
        self._last_saved = (path, dataclasses.replace(self.state))
        self._restore_best()
        if self.rank == 0:
            print(f"resume: from {path} ({self.state.describe()})")
        return True

    def _agreed_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        """Rank 0's choice of :meth:`Checkpointer.newest_readable`, read on every rank: ranks that
        listed the work dir themselves could disagree (a save landing in between, a file system
        slow to show it). Rank 0's refusal is every rank's, so no rank waits for the others."""
        found, choice = None, None
        if self.rank == 0:
            try:
                found = self.checkpointer.newest_readable()
                choice = ("file", None if found is None else str(found[0]))
            except CheckpointError as err:
                choice = ("error", str(err))
        kind, value = broadcast_object(choice)
        if kind == "error":
            raise CheckpointError(value)
        if self.rank == 0 or value is None:
            return found
        return Path(value), self.checkpointer.load(value)

    def _restore_best(self) -> None:
        """The best value so far from ``best.pth``'s meta, and the evaluations since it (patience)."""
        metric = self.cfg.train.save_best
        if metric is None or not self.checkpointer.best.is_file():
            return
        best = safe_torch_load(self.checkpointer.best).get("meta", {}).get("best")
        if not isinstance(best, dict) or best.get("metric") != metric:
            return
        self.best = best
        done = self.state.epoch  # epochs finished; each evaluated on the schedule
        self._evals_since_best = sum(1 for e in range(int(best["epoch"]) + 1, done + 1) if self._evaluates(e))

    # -- signals ---------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        """Acted upon at the next iteration boundary; a second Ctrl-C aborts without saving."""
        if signum == signal.SIGINT and self._signal is not None:
            raise KeyboardInterrupt
        self._signal = signum
        if self.rank == 0:  # os.write: no Python-level buffer a signal handler could re-enter
            os.write(
                2,
                f"\n{signal.Signals(signum).name}: saving at the end of this iteration, then stopping"
                f"{' (Ctrl-C again aborts without saving)' if signum == signal.SIGINT else ''}\n".encode(),
            )

    def _install_signal_handlers(self) -> dict[int, Any] | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        return {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def _restore_signal_handlers(self, previous: dict[int, Any] | None) -> None:
        for signum, handler in (previous or {}).items():
            signal.signal(signum, handler)
