"""bench/train_while_serving.py --mps on the CPU, without a GPU or MPS: its options, the trainer's MPS limits (the
product's), the clear failure when there is no MPS daemon, and the daemon's life around the measurement with a
stand-in ``nvidia-cuda-mps-control`` (started before the measurement, which sees its pipe folder; quit after it, also
when it fails)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import train_while_serving as tws
from bot.learning.launch import MPS_CLIENT_PRIORITY, MPS_PIPE_DIRECTORY, MPS_SM_PERCENT

REPO = Path(__file__).resolve().parents[2]
TINY = ["--shape", "tiny", "--device", "cpu"]


def test_mps_options_and_results_names() -> None:
    plain = tws.parse_args([*TINY])
    assert (plain.mps, plain.out_name) == (False, "train-while-serving.json")
    assert tws.trainer_log_name(plain) == "train-while-serving-trainer.log"
    assert tws.trainer_mps_env(plain) == {}
    mps = tws.parse_args([*TINY, "--mps", "--mps-trainer-sm-percent", "30"])
    assert (mps.mps, mps.out_name, mps.mps_trainer_priority) == (True, "train-while-serving-mps.json", None)
    assert tws.trainer_log_name(mps) == "train-while-serving-mps-trainer.log"
    assert tws.trainer_mps_env(mps) == {MPS_SM_PERCENT: "30"}
    both = tws.parse_args(
        [*TINY, "--mps", "--mps-trainer-sm-percent", "100", "--mps-trainer-priority", "below_normal"]
    )
    assert tws.trainer_mps_env(both) == {MPS_SM_PERCENT: "100", MPS_CLIENT_PRIORITY: "1"}
    named = tws.parse_args([*TINY, "--mps", "--out-name", "tws-mps-sm50.json"])
    assert named.out_name == "tws-mps-sm50.json" and tws.trainer_log_name(named) == "tws-mps-sm50-trainer.log"
    for bad in (
        ["--mps-trainer-sm-percent", "30"],  # limits without --mps would measure nothing different
        ["--mps-trainer-priority", "normal"],
        ["--mps", "--mps-trainer-sm-percent", "0"],
        ["--mps", "--mps-trainer-sm-percent", "101"],
        ["--mps", "--mps-trainer-priority", "high"],
        ["--out-name", "../elsewhere.json"],
        ["--out-name", "results.txt"],
    ):
        with pytest.raises(SystemExit):
            tws.parse_args([*TINY, *bad])


def test_the_bench_trainer_gets_the_limits_and_not_the_engines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MPS_SM_PERCENT, "90")  # this process's (the engine's) own limit
    monkeypatch.setenv(MPS_PIPE_DIRECTORY, str(tmp_path / "pipe"))
    args = tws.parse_args([*TINY, "--mps", "--mps-trainer-priority", "below_normal"])
    env = tws.trainer_env(args, tmp_path, tmp_path / "stop")
    assert env[MPS_CLIENT_PRIORITY] == "1" and MPS_SM_PERCENT not in env
    assert env[MPS_PIPE_DIRECTORY] == str(tmp_path / "pipe") and env["QUANT"] == "none"
    plain = tws.trainer_env(tws.parse_args(TINY), tmp_path, tmp_path / "stop")
    assert plain[MPS_SM_PERCENT] == "90", "without --mps the environment passes as it always did"


def test_no_mps_control_program_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    args = tws.parse_args([*TINY, "--mps", "--out", str(tmp_path)])
    assert tws.run_under_mps(args, []) == tws.MPS_UNAVAILABLE_EXIT
    result = json.loads((tmp_path / "train-while-serving-mps.json").read_text())
    assert "nvidia-cuda-mps-control is not on PATH" in result["errors"]["mps"]
    assert result["setup"]["mps"]["daemon"] == "not started"


def test_a_daemon_that_does_not_start_is_a_clear_error(tmp_path: Path) -> None:
    failing = executable(
        tmp_path / "mps-control", "import sys; print('no GPU here', file=sys.stderr); sys.exit(1)"
    )
    args = tws.parse_args([*TINY, "--mps", "--out", str(tmp_path)])
    assert tws.run_under_mps(args, [], program=str(failing), child=["false"]) == tws.MPS_UNAVAILABLE_EXIT
    error = json.loads((tmp_path / "train-while-serving-mps.json").read_text())["errors"]["mps"]
    assert "-d exited with status 1: no GPU here" in error


def test_the_command_line_exits_non_zero_without_mps(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path / "empty"), "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        str(REPO / "bench" / "train_while_serving.py"),
        *TINY,
        "--mps",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert done.returncode == tws.MPS_UNAVAILABLE_EXIT, done.stderr[-2000:]
    assert "no MPS daemon for this run: nvidia-cuda-mps-control is not on PATH" in done.stderr
    assert "errors" in json.loads((tmp_path / "train-while-serving-mps.json").read_text())


# A stand-in for nvidia-cuda-mps-control: -d leaves a "daemon" (a sleeping process in its own session) and its pid
# file in the pipe folder (none with STAND_IN_NO_PID_FILE, as a driver might), and writes a server log; commands come
# on stdin, as the real one takes them.
STAND_IN = """
import os, signal, subprocess, sys, time
from pathlib import Path
pipe = Path(os.environ["CUDA_MPS_PIPE_DIRECTORY"])
pid_file = pipe / "nvidia-cuda-mps-control.pid"
own_pid_file = Path(os.environ.get("STAND_IN_PID_COPY") or pipe / "stand-in.pid")
if sys.argv[1:] == ["-d"]:
    logs = Path(os.environ["CUDA_MPS_LOG_DIRECTORY"])
    daemon = subprocess.Popen([sys.executable, __file__, "--serve"], start_new_session=True,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    own_pid_file.write_text(str(daemon.pid))
    if not os.environ.get("STAND_IN_NO_PID_FILE"):
        pid_file.write_text(str(daemon.pid))
    (logs / "control.log").write_text("started")
    (logs / "server.log").write_text("New client 42 connected\\nPriority level of client {42} is: 1\\nidle\\n")
elif sys.argv[1:] == ["--serve"]:
    time.sleep(60)  # never outlives a test by much
else:
    command = sys.stdin.read().strip()
    if command == "quit":
        os.kill(int(own_pid_file.read_text()), signal.SIGTERM)
        pid_file.unlink(missing_ok=True)
    elif command == "ps":
        print("PID ID SERVER DEVICE NAMESPACE COMMAND")
        print("42 1 41 GPU-0 4026531836 python3")
    elif command == "get_server_list":
        print("41")
"""

# a stand-in measurement: what it was given, into the results file the real one writes
MEASUREMENT = """
import json, os, sys, time
out = sys.argv[1]
time.sleep(0.3)  # the watcher asks the daemon at once, then every few seconds
json.dump({"idle": {"single_stream_tok_s": 1.0}, "pipe": os.environ.get("CUDA_MPS_PIPE_DIRECTORY")}, open(out, "w"))
sys.exit(int(sys.argv[2]))
"""


def executable(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.parametrize("exit_code", [0, 5])
def test_the_daemon_starts_before_the_measurement_and_quits_after_it(tmp_path: Path, exit_code: int) -> None:
    program = executable(tmp_path / "mps-control", STAND_IN)
    args = tws.parse_args([*TINY, "--mps", "--out", str(tmp_path)])
    results = tmp_path / "train-while-serving-mps.json"
    child = [sys.executable, "-c", MEASUREMENT, str(results), str(exit_code)]

    assert tws.run_under_mps(args, [], program=str(program), child=child) == exit_code

    result = json.loads(results.read_text())
    assert result["idle"] == {"single_stream_tok_s": 1.0}, "the measurement's figures are kept"
    pipe = Path(result["pipe"])
    assert pipe.name == "pipe" and pipe.parent.name.startswith("hanbot-tws-mps-"), (
        "a client of this run's daemon"
    )
    mps = result["mps"]
    assert mps["quit"] == "ok" and mps["measurement_exit_code"] == exit_code
    assert mps["clients_seen"] == [
        "PID ID SERVER DEVICE NAMESPACE COMMAND",
        "42 1 41 GPU-0 4026531836 python3",
    ]
    assert mps["servers_seen"] == ["41"]
    assert mps["server_log"] == ["New client 42 connected", "Priority level of client {42} is: 1"]
    assert not tws._alive(mps["daemon_pid"]), "the daemon was quit"
    assert not pipe.parent.exists(), "its temporary folder removed, its logs kept beside the results"
    assert (tmp_path / "train-while-serving-mps-server.log").read_text().startswith("New client 42 connected")
    assert (tmp_path / "train-while-serving-mps-control.log").read_text() == "started"


def test_a_run_stopped_by_sigterm_quits_its_daemon(tmp_path: Path) -> None:
    """As `timeout` stops a step of bench/device/round4_h200.sh: the measurement is stopped, the daemon quit."""
    program = executable(tmp_path / "mps-control", STAND_IN)
    started = tmp_path / "measurement-started"
    measurement = f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); time.sleep(60)"
    runner = (
        "import sys; from bench import train_while_serving as tws; "
        f"args = tws.parse_args(['--shape', 'tiny', '--device', 'cpu', '--mps', '--out', {str(tmp_path)!r}]); "
        f"child = [sys.executable, '-c', {measurement!r}]; "
        f"sys.exit(tws.run_under_mps(args, [], program={str(program)!r}, child=child))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-c", runner], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), process.stderr.read() if process.stderr else ""
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    mps = json.loads((tmp_path / "train-while-serving-mps.json").read_text())["mps"]
    assert mps["quit"] == "ok" and mps["measurement_exit_code"] is None
    assert not tws._alive(mps["daemon_pid"])


def test_a_daemon_without_a_pid_file_still_gets_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver that writes no pid file: the daemon is known by its answers, and still quit at the end."""
    program = executable(tmp_path / "mps-control", STAND_IN)
    monkeypatch.setenv("STAND_IN_NO_PID_FILE", "1")
    monkeypatch.setenv("STAND_IN_PID_COPY", str(tmp_path / "stand-in.pid"))
    args = tws.parse_args([*TINY, "--mps", "--out", str(tmp_path)])
    results = tmp_path / "train-while-serving-mps.json"
    child = [sys.executable, "-c", MEASUREMENT, str(results), "0"]
    assert tws.run_under_mps(args, [], program=str(program), child=child) == 0
    mps = json.loads(results.read_text())["mps"]
    assert (mps["daemon_pid"], mps["quit"], mps["servers_seen"]) == (None, "ok", ["41"])
    assert not tws._alive(int((tmp_path / "stand-in.pid").read_text()))
