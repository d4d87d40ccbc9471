"""Training while serving (issue 11, item 6): the FP8 engine and a QLoRA fine-tune of the 70B shape on one GPU.

The learning loop's ``finetune.gpu_sharing = "shared"`` mode runs the trainer in its own process on the serving GPU
while the engine keeps answering, the engine keeping ``engine.reserve_training_gib`` out of its KV cache for it
(bot/learning/service.py pauses the engine only in "pause" mode). This benchmark measures what that costs both:

1. The engine: the 70B shape with random weights, FP8 (drawn and quantised layer by layer: bench/gpu_70b.py's
   ``fp8_weights_by_layer``), a ``LocalEngine`` with ``reserve_training_gib`` (``--reserve-training-gib``) and the
   bot's defaults otherwise (interleaved prefill, prefix reuse, the adapter pool), fed ``GenerationRequest``s
   through ``Engine.generate`` by bench/gpu_70b.py's ``EngineBench`` (512-token prompts, replies forced to
   ``--new`` tokens).
2. Idle: single-stream decode tok/s (the better of two) and ``--concurrency`` conversations arriving together.
3. The trainer: ``bench/finetune_gpu.py`` in a child process (NF4 base, LoRA r=16 on every linear layer and the
   head, ``--seq-len`` tokens a step, the product's training code: ``inference.finetune``), stepping until told to
   stop (``STOP_FILE``). Its first step is a warm-up; the next ``--alone-steps`` run beside the idle engine: the
   training step alone.
4. Beside: the same serving figures while the trainer steps, then rounds of conversations until at least
   ``--beside-steps`` training steps ran entirely inside the serving window: the training step beside the engine.

Writes ``train-while-serving.json`` in ``--out``: ``idle`` and ``beside`` figures, their ratios (target: serving
keeps >= 60% of its idle aggregate), the training step alone and beside, requests failed and refused for
maintenance (``EnginePaused``; target 0), memory (the engine's KV cache, free GPU memory seen while both ran, the
trainer's peak), the trainer's own figures under ``trainer``, and the command. The trainer's output goes to
``train-while-serving-trainer.log`` beside it.

Without MPS the two CUDA processes time-slice the GPU. ``--mps`` measures the same under NVIDIA MPS (docs/learning.md,
"Sharing one GPU: MPS"): this process starts an MPS control daemon for the run (pipe and log folders in a temporary
folder), runs the measurement in a child process started after it with those folders in its environment (so the
engine and the trainer are both its clients), and quits the daemon at the end, also when the run fails or is
stopped (SIGTERM, Ctrl-C). ``--mps-trainer-sm-percent`` and ``--mps-trainer-priority`` give the trainer the limits
of ``finetune.trainer_mps_sm_percent`` / ``trainer_mps_priority`` (through the product's
``bot.learning.launch.mps_client_env``). The results go to ``train-while-serving-mps.json`` (``--out-name``), with
the MPS setup under ``setup.mps`` and what the daemon saw (its clients, their priority, its log's errors) under
``mps``; the daemon's ``control.log`` and ``server.log`` are kept beside it (``train-while-serving-mps-server.log``).
If ``nvidia-cuda-mps-control`` is missing or the daemon does not start, the results say so under ``errors.mps`` and
the command exits with status 3.

  python3 bench/train_while_serving.py --out $OUT        # one H200 (bitsandbytes' wheel carried: docs/learning.md)
  python3 bench/train_while_serving.py --mps --mps-trainer-priority below_normal --out $OUT   # the same under MPS
  .venv/bin/python bench/train_while_serving.py --shape tiny --device cpu --new 8 --concurrency 2 --seq-len 64 \\
      --out /tmp/tws-smoke                               # CPU smoke run: the same code, the trainer without NF4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import gpu_70b as g  # noqa: E402
from bot.learning.launch import (  # noqa: E402
    MPS_CLIENT_LIMITS,
    MPS_CONTROL_PID_FILE,
    MPS_PIPE_DIRECTORY,
    mps_client_env,
)

TARGET_RATIO = 0.6  # serving keeps at least this share of its idle aggregate (issue 11)
RESULTS_NAME = "train-while-serving.json"
MPS_RESULTS_NAME = "train-while-serving-mps.json"
MPS_CONTROL = "nvidia-cuda-mps-control"
MPS_LOG_DIRECTORY = "CUDA_MPS_LOG_DIRECTORY"
MPS_UNAVAILABLE_EXIT = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(g.SHAPES), default="70b")
    ap.add_argument("--layers", type=int, default=None, help="override the shape's layer count")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run (with --shape tiny)")
    ap.add_argument("--new", type=int, default=256, help="tokens of each reply (forced)")
    ap.add_argument("--concurrency", type=int, default=16, help="conversations arriving together")
    ap.add_argument(
        "--reserve-training-gib",
        type=float,
        default=50.0,
        help="engine.reserve_training_gib: GPU memory the engine keeps out of its KV cache for the trainer "
        "(a QLoRA step of the 70B at 2,048 tokens peaks at 44.9 GiB allocated; its process needs a little more)",
    )
    ap.add_argument("--seq-len", type=int, default=2048, help="tokens of each training step")
    ap.add_argument("--alone-steps", type=int, default=2, help="timed training steps beside the idle engine")
    ap.add_argument(
        "--beside-steps", type=int, default=2, help="training steps that must run inside the serving window"
    )
    ap.add_argument("--max-beside-s", type=float, default=150.0, help="serving rounds stop after this anyway")
    ap.add_argument(
        "--trainer-start-s", type=float, default=300.0, help="the trainer's build and first steps"
    )
    ap.add_argument(
        "--train-quant",
        choices=("nf4", "none"),
        default=None,
        help="the trainer's base: nf4 (QLoRA; default on a GPU) or none (plain linears: the CPU smoke run)",
    )
    ap.add_argument(
        "--whole-prompt",
        action="store_true",
        help="engine.interleave_prefill off (the whole prompt prefilled at admission); default: on, the bot's default",
    )
    ap.add_argument(
        "--mps",
        action="store_true",
        help="run under an NVIDIA MPS control daemon started for this run (the engine and the trainer its clients)",
    )
    ap.add_argument(
        "--mps-trainer-sm-percent",
        type=sm_percent,
        default=None,
        help="with --mps: the trainer's share of the SMs, 1..100 (finetune.trainer_mps_sm_percent)",
    )
    ap.add_argument(
        "--mps-trainer-priority",
        choices=("normal", "below_normal"),
        default=None,
        help="with --mps: the trainer's MPS client priority (finetune.trainer_mps_priority)",
    )
    ap.add_argument("--mps-child", action="store_true", help=argparse.SUPPRESS)  # the run inside the daemon
    ap.add_argument(
        "--out-name",
        default=None,
        help=f"results file in --out (default {RESULTS_NAME}; with --mps, {MPS_RESULTS_NAME})",
    )
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default=os.environ.get("RESULTS_DIR", "bench/results"))
    args = ap.parse_args(argv)
    if not args.mps and (args.mps_trainer_sm_percent is not None or args.mps_trainer_priority is not None):
        ap.error("--mps-trainer-sm-percent and --mps-trainer-priority take effect only with --mps")
    args.out_name = args.out_name or (MPS_RESULTS_NAME if args.mps else RESULTS_NAME)
    if Path(args.out_name).name != args.out_name or not args.out_name.endswith(".json"):
        ap.error(f"--out-name is a file name ending in .json, not {args.out_name!r}")
    from bot.settings import EngineSettings

    defaults = EngineSettings()
    # what EngineBench and gpu_70b.materialise read: the FP8 engine with the bot's adapter pool
    args.fp8, args.fp8_from_model = True, False
    args.interleave = not args.whole_prompt
    args.capacity = args.concurrency
    args.lora_slots, args.lora_rank = defaults.lora_slots, defaults.lora_max_rank
    args.train_quant = args.train_quant or ("nf4" if args.device == "cuda" else "none")
    return args


def sm_percent(text: str) -> int:
    """An SM share, 1..100, as CUDA_MPS_ACTIVE_THREAD_PERCENTAGE takes it."""
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"an SM share is 1..100, not {value}")
    return value


def trainer_log_name(args: argparse.Namespace) -> str:
    """train-while-serving-trainer.log beside train-while-serving.json, and so on for another results name."""
    return args.out_name.removesuffix(".json") + "-trainer.log"


def trainer_mps_env(args: argparse.Namespace) -> dict[str, str]:
    """The trainer's MPS limits, as the learning loop gives them (finetune.gpu_sharing="shared")."""
    if not args.mps:
        return {}
    from bot.settings import FinetuneSettings

    finetune = FinetuneSettings(
        gpu_sharing="shared",
        trainer_mps_sm_percent=args.mps_trainer_sm_percent,
        trainer_mps_priority=args.mps_trainer_priority,
    )
    return mps_client_env(finetune)


# ---------------------------------------------------------------- serving figures


@dataclass
class Tally:
    """Requests that failed over the run, and those refused because the engine was paused for maintenance."""

    failed: int = 0
    refused_for_maintenance: int = 0

    def add(self, exc: BaseException, tag: str) -> None:
        from bot.errors import EnginePaused

        print(f"{tag}: request failed: {exc!r}", flush=True)
        self.failed += 1
        if isinstance(exc, EnginePaused):
            self.refused_for_maintenance += 1


async def single_stream(bench: g.EngineBench, new: int, tally: Tally, tag: str) -> float:
    """Decode tok/s of one conversation (512-token prompt), the better of two; a failed one counts in ``tally``."""
    best = 0.0
    for _ in range(2):
        try:
            best = max(best, await bench.single_stream(new))
        except Exception as exc:
            tally.add(exc, tag)
    return round(best, 2)


async def conversations(bench: g.EngineBench, n: int, new: int, seed: int, tally: Tally, tag: str) -> dict:
    """n conversations (n channels, 512-token prompts) call generate at once; figures over those that streamed."""
    requests = [bench.request(512, new, seed + i) for i in range(n)]
    t0 = time.perf_counter()
    results = await asyncio.gather(*(bench.stream(r) for r in requests), return_exceptions=True)
    streams = [r for r in results if not isinstance(r, BaseException)]
    for r in results:
        if isinstance(r, BaseException):
            tally.add(r, tag)
    if not streams:
        return {"aggregate_tok_s": 0.0, "failed": n}
    wall = max(times[-1] for times in streams) - t0
    ttfts = sorted(times[0] - t0 for times in streams)
    spans = [(times[0], times[-1]) for times in streams]
    gaps = sorted(b - a for times in streams for a, b in itertools.pairwise(times))
    k = len(ttfts)
    return {
        "aggregate_tok_s": round(len(streams) * new / wall, 2),
        "p50_ttft_s": round(statistics.median(ttfts), 3),
        "p95_ttft_s": round(ttfts[min(k - 1, round(0.95 * (k - 1)))], 3),
        "max_ttft_s": round(ttfts[-1], 3),
        "max_stream_gap_s": round(gaps[-1], 3) if gaps else None,
        "wall_s": round(wall, 2),
        "max_running": max(sum(1 for a, b in spans if a <= start <= b) for start, _ in spans),
        "failed": n - len(streams),
    }


def gpu_free_gib(on_cuda: bool) -> float | None:
    """Free memory of the whole GPU (what the other process holds counts as used)."""
    return round(torch.cuda.mem_get_info()[0] / g.GIB, 2) if on_cuda else None


# ---------------------------------------------------------------- the trainer beside it


def trainer_env(args: argparse.Namespace, results_dir: Path, stop_file: Path) -> dict[str, str]:
    """bench/finetune_gpu.py's settings; with --mps, the trainer's MPS limits as the learning loop gives them (the
    ones this process may have been started with are the engine's, not passed on)."""
    env = {k: v for k, v in os.environ.items() if not (args.mps and k in MPS_CLIENT_LIMITS)}
    env.update(
        RESULTS_DIR=str(results_dir),
        STEPS="100000",  # until the stop file
        STOP_FILE=str(stop_file),
        SEQ_LEN=str(args.seq_len),
        DEVICE="cuda:0" if args.device == "cuda" else args.device,
        QUANT=args.train_quant,
        PYTHONUNBUFFERED="1",
    )
    if args.shape == "tiny":
        env["SHAPE"] = "tiny"
    env.update(trainer_mps_env(args))
    return env


class Trainer:
    """bench/finetune_gpu.py in a child process, stepping until ``stop``; its figures are read from its JSON."""

    def __init__(self, args: argparse.Namespace, log_path: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hanbot-tws-trainer-"))
        self.stop_file = self.dir / "stop"
        env = trainer_env(args, self.dir, self.stop_file)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "finetune_gpu.py")],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )

    def figures(self) -> dict[str, Any]:
        """Its results file as written so far (rewritten after each figure: a half-written one reads as before)."""
        try:
            return json.loads((self.dir / "finetune-gpu.json").read_text())
        except (OSError, ValueError):
            return {}

    def steps(self) -> list[tuple[int, float, float]]:
        """(step, start, end) in epoch seconds, of every finished step."""
        f = self.figures()
        out: list[tuple[int, float, float]] = []
        for i in itertools.count():
            at = f.get(f"step{i}_at")
            if at is None:
                return out
            out.append((i, at[0], at[1]))
        return out  # pragma: no cover (count() never ends)

    def failed(self) -> str | None:
        code = self.process.poll()
        if code is None or (code == 0 and self.stop_file.exists()):
            return None
        f = self.figures()
        return f"trainer exited with {code}: {f.get('error') or self.tail()}"

    def tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-1500:]

    async def wait_steps(self, count: int, timeout_s: float) -> None:
        """Until ``count`` steps have finished; raises if the trainer dies or takes longer than ``timeout_s``."""
        deadline = time.time() + timeout_s
        while len(self.steps()) < count:
            if (why := self.failed()) is not None:
                raise RuntimeError(why)
            if time.time() > deadline:
                raise TimeoutError(
                    f"the trainer finished {len(self.steps())} of {count} steps in {timeout_s} s"
                )
            await asyncio.sleep(0.2)

    def steps_within(self, start: float, end: float) -> list[float]:
        """Durations of the steps that ran entirely inside [start, end]."""
        return [b - a for i, a, b in self.steps() if i >= 1 and a >= start and b <= end]

    def stop(self, timeout_s: float = 120.0) -> int | None:
        self.stop_file.touch()
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self._log.close()


def mean(values: list[float]) -> float | None:
    return round(statistics.mean(values), 3) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


# ---------------------------------------------------------------- the run


async def idle_phase(
    bench: g.EngineBench, args: argparse.Namespace, results: g.Results, tally: Tally
) -> None:
    results.log("idle.single_stream_tok_s", await single_stream(bench, args.new, tally, "idle"))
    n = args.concurrency
    results.log(f"idle.concurrency.{n}", await conversations(bench, n, args.new, 100, tally, "idle"))


async def beside_phase(
    bench: g.EngineBench, args: argparse.Namespace, results: g.Results, tally: Tally, trainer: Trainer
) -> tuple[float, float]:
    """Serving while the trainer steps: one single-stream figure, then rounds of conversations until enough
    training steps ran inside the window (or ``--max-beside-s``). Returns the window (epoch seconds)."""
    on_cuda = args.device == "cuda"
    n = args.concurrency
    start = time.time()
    results.log("beside.single_stream_tok_s", await single_stream(bench, args.new, tally, "beside"))
    rounds: list[dict] = []
    free: list[float] = []
    while True:
        rounds.append(await conversations(bench, n, args.new, 1000 * (len(rounds) + 2), tally, "beside"))
        if (f := gpu_free_gib(on_cuda)) is not None:
            free.append(f)
        inside = trainer.steps_within(start, time.time())
        print(f"beside: round {len(rounds)}, {len(inside)} training steps inside", flush=True)
        if len(inside) >= args.beside_steps or time.time() - start > args.max_beside_s:
            break
        if (why := trainer.failed()) is not None:
            results.log("errors.trainer", why)
            break
    end = time.time()
    results.log(f"beside.concurrency.{n}", rounds[0])
    results.log(
        f"beside.concurrency_rounds.{n}",
        {
            "rounds": len(rounds),
            "aggregate_tok_s": [r["aggregate_tok_s"] for r in rounds],
            "mean_aggregate_tok_s": mean([r["aggregate_tok_s"] for r in rounds]),
            "p95_ttft_s": [r.get("p95_ttft_s") for r in rounds],
        },
    )
    if free:
        results.log("memory.gpu_free_min_while_both_GiB", min(free))
    results.log("beside.window_s", round(end - start, 2))
    return start, end


def summarise(
    args: argparse.Namespace, results: g.Results, tally: Tally, trainer: Trainer, window: Any
) -> None:
    """Training step alone and beside, the ratios, the targets."""
    n = args.concurrency
    start, end = window
    alone = [b - a for i, a, b in trainer.steps() if i >= 1 and b <= start]
    beside = trainer.steps_within(start, end)
    results.log("train.step_s_alone", mean(alone))
    results.log("train.step_s_beside", mean(beside))
    results.log("train.steps_alone", [round(x, 3) for x in alone])
    results.log("train.steps_beside", [round(x, 3) for x in beside])
    results.log("train.step_ratio_beside_to_alone", ratio(mean(beside), mean(alone)))
    results.log("train.seq_len", args.seq_len)
    idle_agg = results.get(f"idle.concurrency.{n}.aggregate_tok_s")
    beside_agg = results.get(f"beside.concurrency_rounds.{n}.mean_aggregate_tok_s")
    results.log(
        "ratio.single_stream",
        ratio(results.get("beside.single_stream_tok_s"), results.get("idle.single_stream_tok_s")),
    )
    results.log(f"ratio.concurrency.{n}", ratio(beside_agg, idle_agg))
    results.log("failed_requests", tally.failed)
    results.log("refused_for_maintenance", tally.refused_for_maintenance)
    kept = results.get(f"ratio.concurrency.{n}")
    results.log(
        "targets",
        {
            f"serving keeps >= {TARGET_RATIO:.0%} of its idle aggregate ({n} conversations)": (
                f"{'met' if kept is not None and kept >= TARGET_RATIO else 'missed'}: {kept} "
                f"({beside_agg} tok/s beside the trainer, {idle_agg} idle)"
            ),
            "no request refused for maintenance": (
                f"{'met' if tally.refused_for_maintenance == 0 else 'missed'}: "
                f"{tally.refused_for_maintenance} refused, {tally.failed} failed in all"
            ),
        },
    )


def record_setup(args: argparse.Namespace, on_cuda: bool) -> g.Results:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = g.Results(out / args.out_name)
    results.log(
        "setup.gpus",
        f"1 x {torch.cuda.get_device_name(0)}" if on_cuda else f"none (CPU smoke run, shape {args.shape})",
    )
    results.log(
        "setup.engine",
        f'LocalEngine via Engine.generate, EngineSettings(decoder="static", max_batch_size={args.capacity}, '
        f"fp8_weights=True, reserve_training_gib={args.reserve_training_gib}, interleave_prefill={args.interleave}, "
        f"lora_slots={args.lora_slots}); inference.fast.StaticSlotDecoder over FP8 weights drawn and quantised "
        "layer by layer (bench/gpu_70b.py fp8_weights_by_layer); 512-token prompts, replies forced to "
        f"{args.new} tokens",
    )
    results.log(
        "setup.trainer",
        f"bench/finetune_gpu.py in its own process on the same GPU (QUANT={args.train_quant}, SEQ_LEN={args.seq_len}, "
        "LoRA r=16 on every linear layer and the head, gradient checkpointing, AdamW; the product's "
        "inference.finetune code), as finetune.gpu_sharing='shared' runs the trainer: the engine is not paused",
    )
    results.log("setup.shape", {"name": args.shape, **g.SHAPES[args.shape], "layers_override": args.layers})
    if args.mps:
        results.log(
            "setup.mps",
            {
                "daemon": f"{MPS_CONTROL} -d started for this run before any CUDA context; quit at its end",
                "pipe_directory": os.environ.get(MPS_PIPE_DIRECTORY),
                "log_directory": os.environ.get(MPS_LOG_DIRECTORY),
                "engine_env": {k: os.environ[k] for k in MPS_CLIENT_LIMITS if k in os.environ},
                "trainer_env": trainer_mps_env(args),
                "trainer_sm_percent": args.mps_trainer_sm_percent,
                "trainer_priority": args.mps_trainer_priority,
            },
        )
    else:
        results.log("setup.mps", None)
    results.log(
        "setup.versions",
        {"torch": torch.__version__, "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")},
    )
    this_run = "python3 bench/train_while_serving.py " + " ".join(sys.argv[1:])
    script = os.environ.get("BENCH_COMMAND")
    results.log("command", f"{script}   (this run: {this_run})" if script else this_run)
    return results


# ---------------------------------------------------------------- MPS: a control daemon for this run


class MpsUnavailable(RuntimeError):
    """No MPS for this run: the control program is missing, or its daemon did not start."""


@dataclass
class MpsControl:
    """An MPS control daemon of this run, its pipe and log folders under ``root`` (so it neither meets nor disturbs
    a daemon the machine may already run at /tmp/nvidia-mps)."""

    root: Path
    program: str | None = None  # nvidia-cuda-mps-control; default: the one on PATH
    pid: int | None = None
    started: bool = False
    answered: bool = False  # it answered get_server_list: the run went on under it
    seen: dict[str, list[str]] = field(default_factory=dict)  # what the daemon answered while the run went

    @property
    def pipe(self) -> Path:
        return self.root / "pipe"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    def env(self) -> dict[str, str]:
        """What a client needs to find this daemon (the daemon itself is started with the same)."""
        return {MPS_PIPE_DIRECTORY: str(self.pipe), MPS_LOG_DIRECTORY: str(self.logs)}

    def start(self) -> None:
        """``nvidia-cuda-mps-control -d``, then its pid file and an answer to ``get_server_list``; raises
        MpsUnavailable saying what went wrong."""
        program = self.program or shutil.which(MPS_CONTROL)
        if program is None:
            raise MpsUnavailable(
                f"{MPS_CONTROL} is not on PATH: MPS comes with the NVIDIA driver's utilities (e.g. Ubuntu's "
                "nvidia-compute-utils-<version> package); install them, or run without --mps (the time-sliced figures)"
            )
        self.program = program
        self.pipe.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(
                [program, "-d"], env={**os.environ, **self.env()}, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise MpsUnavailable(f"{program} -d failed: {exc!r}") from exc
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip()[-500:]
            raise MpsUnavailable(
                f"{program} -d exited with status {done.returncode}: {said} {self.log_tail()}"
            )
        self.started = True
        # its pid file (NVIDIA's guide: in the pipe folder, written as it starts) lets stop() see it gone; a driver
        # that writes none still gets its run (2 s later), the daemon known by its answers only
        self.pid = self._wait_pid(2.0)
        if self.ask("get_server_list") is None:
            raise MpsUnavailable(
                f"the MPS control daemon started by {program} -d (pid {self.pid}, {MPS_CONTROL_PID_FILE} "
                f"{'found' if self.pid else 'not found'} in {self.pipe}) did not answer. {self.log_tail()}"
            )
        self.answered = True

    def _wait_pid(self, timeout_s: float) -> int | None:
        from bot.learning.launch import mps_daemon  # the product's own check: pid file, process alive

        deadline = time.monotonic() + timeout_s
        while True:
            if (pid := mps_daemon(self.env()).pid) is not None or time.monotonic() > deadline:
                return pid
            time.sleep(0.1)

    def ask(self, command: str, timeout_s: float = 10.0) -> str | None:
        """One command to the daemon (``echo COMMAND | nvidia-cuda-mps-control``): its answer, or None."""
        if self.program is None:
            return None
        try:
            done = subprocess.run(
                [self.program],
                input=command + "\n",
                env={**os.environ, **self.env()},
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    def watch(self, stop: threading.Event, every_s: float = 5.0) -> None:
        """Until ``stop``: the daemon's clients (``ps``) and servers, each distinct line kept (the proof that the
        engine and the trainer both ran as its clients)."""
        while True:
            for command in ("ps", "get_server_list"):
                kept = self.seen.setdefault(command, [])
                for line in (self.ask(command) or "").splitlines():
                    if line.strip() and line not in kept and len(kept) < 40:
                        kept.append(line)
            if stop.wait(every_s):
                return

    def stop(self) -> str | None:
        """``quit``, then the daemon gone (SIGTERM to it after 5 s: a stopped step has 15 s before SIGKILL); what
        went wrong, or None."""
        if not self.started:
            return None
        answered = self.ask("quit", timeout_s=5.0)
        deadline = time.monotonic() + 5.0
        while self.pid is not None and _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.started = False
        if self.pid is not None and _alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)  # the daemon this run started, by its pid
            return f"the MPS control daemon (pid {self.pid}) did not quit in 5 s: sent SIGTERM"
        return None if answered is not None else "quit got no answer (the daemon had gone already?)"

    def log_tail(self) -> str:
        try:
            text = (self.logs / "control.log").read_text(errors="replace").strip()
        except OSError:
            return f"(no control.log in {self.logs})"
        return f"control.log: ...{text[-600:]}" if text else "(control.log empty)"

    def keep_logs(self, out: Path, stem: str) -> None:
        """The daemon's own logs beside the results (``<stem>-control.log``, ``<stem>-server.log``)."""
        for name in ("control.log", "server.log"):
            with contextlib.suppress(OSError):
                shutil.copyfile(self.logs / name, out / f"{stem}-{name}")

    def server_log(self) -> list[str]:
        """The server log's lines about clients, priorities and errors (the last 40)."""
        try:
            lines = (self.logs / "server.log").read_text(errors="replace").splitlines()
        except OSError:
            return []
        keep = ("client", "priority", "error", "fault", "fail", "percentage")
        return [line[:240] for line in lines if any(k in line.lower() for k in keep)][-40:]


def _alive(pid: int) -> bool:
    """The process runs (a zombie, exited but not yet reaped by its new parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # so the daemon is quit on the way out (timeout sends SIGTERM)


def run_under_mps(
    args: argparse.Namespace,
    argv: Sequence[str],
    *,
    program: str | None = None,
    child: Sequence[str] | None = None,
) -> int:
    """Start this run's MPS daemon, measure in a child process that is its client from its first CUDA call, quit the
    daemon, add what it saw to the results; the exit status (MPS_UNAVAILABLE_EXIT: no daemon).

    A child, not this process: the engine's CUDA context lives until its process exits, and the daemon should be
    quit after its last client is gone. ``program`` and ``child`` are for the CPU tests (a stand-in daemon)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / args.out_name
    daemon = MpsControl(Path(tempfile.mkdtemp(prefix="hanbot-tws-mps-")), program)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    code: int | None = None
    try:
        try:
            daemon.start()
        except MpsUnavailable as exc:
            results = g.Results(path)
            results.log("errors.mps", str(exc))
            results.log("setup.mps", {"requested": True, "daemon": "not started"})
            print(f"error: --mps, but no MPS daemon for this run: {exc}", file=sys.stderr, flush=True)
            return MPS_UNAVAILABLE_EXIT
        print(f"MPS control daemon pid {daemon.pid}, pipe directory {daemon.pipe}", flush=True)
        command = list(child) if child is not None else [sys.executable, __file__, *argv, "--mps-child"]
        code = run_child(command, daemon)
    finally:
        quit_error = daemon.stop()
        signal.signal(signal.SIGTERM, previous)
        if daemon.answered:
            record_mps(path, daemon, code, quit_error)
        daemon.keep_logs(out, args.out_name.removesuffix(".json"))
        shutil.rmtree(daemon.root, ignore_errors=True)
    return code or (1 if quit_error else 0)


def run_child(command: list[str], daemon: MpsControl) -> int:
    """The measurement as the daemon's client, watched; stopped (SIGTERM, then SIGKILL) if this process is."""
    stop = threading.Event()
    watcher = threading.Thread(target=daemon.watch, args=(stop,), daemon=True)
    process = subprocess.Popen(command, env={**os.environ, **daemon.env()}, cwd=REPO)
    watcher.start()
    try:
        return process.wait()
    finally:
        if process.poll() is None:  # this process was stopped: so is the measurement, quickly (timeout -k 15)
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        stop.set()
        watcher.join(timeout=15)


def record_mps(path: Path, daemon: MpsControl, code: int | None, quit_error: str | None) -> None:
    """What the daemon saw, added to the measurement's results (or to a file of its own if it wrote none)."""
    results = g.Results(path)
    try:
        results.data = json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    results.log(
        "mps",
        {
            "daemon_pid": daemon.pid,
            "clients_seen": daemon.seen.get("ps", []),
            "servers_seen": daemon.seen.get("get_server_list", []),
            "server_log": daemon.server_log(),
            "measurement_exit_code": code,
            "quit": quit_error or "ok",
        },
    )
    if quit_error:
        results.log("errors.mps_quit", quit_error)


def main() -> None:
    args = parse_args()
    if args.mps and not args.mps_child:
        sys.exit(run_under_mps(args, sys.argv[1:]))
    measure(args)


def measure(args: argparse.Namespace) -> None:
    """The measurement (under MPS: in the child process, a client of the daemon)."""
    on_cuda = args.device == "cuda"
    results = record_setup(args, on_cuda)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="hanbot-fast-cache-")
    model, make_inner = g.materialise(args, results)
    bench, start_s = g.start_engine(model, args, cache_dir, make_inner)
    results.log("engine_start_s", round(start_s, 2))
    inner = bench.inner
    results.log("decoder_class", type(inner).__name__)
    results.log("memory.kv_cache_tokens", getattr(inner, "kv_tokens", None))
    results.log("memory.gpu_free_with_engine_GiB", gpu_free_gib(on_cuda))
    tally = Tally()
    log_path = Path(args.out) / trainer_log_name(args)

    async def run_all() -> None:
        trainer: Trainer | None = None
        try:
            await idle_phase(bench, args, results, tally)
            trainer = Trainer(args, log_path)
            t = time.time()
            await trainer.wait_steps(1 + args.alone_steps, args.trainer_start_s)
            results.log("train.start_to_alone_steps_done_s", round(time.time() - t, 2))
            window = await beside_phase(bench, args, results, tally, trainer)
            summarise(args, results, tally, trainer, window)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            results.log("errors.run", repr(exc)[:1500])
        finally:
            if trainer is not None:
                code = trainer.stop()
                results.log("trainer", {**trainer.figures(), "exit_code": code})
            if on_cuda:
                results.log(
                    "memory.engine_peak_allocated_GiB", round(torch.cuda.max_memory_allocated() / g.GIB, 2)
                )
            await bench.engine.aclose()

    asyncio.run(run_all())
    print(json.dumps({k: results.get(k) for k in ("idle", "beside", "ratio", "train", "targets")}, indent=1))
    print(f"wrote {results.path}", flush=True)


if __name__ == "__main__":
    main()
