"""The `streamer` command as a new user meets it: argument errors, flags against config files, --version,
one meaning per flag name, messages in the flags' terms. Real `python -m streamer` subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SETUPS = REPO / "configs" / "setups"


def streamer(*args: str, cwd: Path | None = None, timeout: float = 240, env: dict | None = None,
             python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *python_flags, "-m", "streamer", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("streamer: error: ")
    return lines[0]


@pytest.mark.parametrize("setup", sorted(p.name for p in SETUPS.glob("*.yaml")))
def test_a_preset_flag_wins_over_the_setup_files_preset(tmp_path: Path, setup: str) -> None:
    """Each example setup names a preset; --preset on the command line replaces it (the flags win, as --help
    says). The source and sinks are replaced too, so the run needs no camera, server or download."""
    done = streamer("run", "--config", str(SETUPS / setup), "--preset", "passthrough", "--source",
                    "testsrc:96x64@30", "--sink", "out.mkv", "--duration", "0.5", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.mkv").stat().st_size > 0


def test_a_preset_flag_wins_over_a_files_preset_in_file_too(tmp_path: Path) -> None:
    """A file naming the default preset (like the README's my.yaml): --preset replaces it."""
    from media import make_clip

    clip = make_clip(tmp_path / "in.mp4", seconds=0.3, size=(64, 48))
    config = tmp_path / "my.yaml"
    config.write_text("preset: lcm-dreamshaper\nprompt: a charcoal sketch\n")
    done = streamer("file", str(clip), "out.mp4", "--config", str(config), "--preset", "passthrough", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.mp4").stat().st_size > 0


def test_version() -> None:
    from streamer import __version__

    done = streamer("--version", timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"streamer {__version__}"


@pytest.mark.parametrize(("args", "words"), [
    (["file", "in.mp4", "out.mp4", "--promt", "x"],
     "unrecognized arguments: --promt x; did you mean --prompt? (see `streamer file --help`)"),
    (["run", "--source", "testsrc", "--sinks", "out.mp4"], "did you mean --sink? (see `streamer run --help`)"),
    (["eval", "--clip-sise", "64x64"], "did you mean --clip-size?"),
    (["file", "in.mp4", "out.mp4", "--steps", "two"], "argument --steps: invalid int value: 'two'"),
    (["file"], "the following arguments are required: IN, OUT (see `streamer file --help`)"),
])
def test_argument_errors_are_one_line_against_the_subcommand(args: list[str], words: str) -> None:
    line = one_error_line(streamer(*args, timeout=60))
    assert words in line
    assert "usage:" not in line


@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "9"], "streamer: error: --steps must be a whole number from 1 to 8, got 9"),
    (["--steps", "0"], "streamer: error: --steps must be a whole number from 1 to 8, got 0"),
    (["--strength", "1.5"], "streamer: error: --strength must be a number above 0 and at most 1, got 1.5"),
    (["--guidance", "-1"], "streamer: error: --guidance must be a number from 0 to 50, got -1.0"),
    (["--resolution", "100x100"], "streamer: error: --resolution must be multiples of 8 (e.g. 512x288), got 100x100"),
    (["--device", "gpu"], "streamer: error: unknown device 'gpu'; use cuda, cuda:N, cpu or auto"),
])
def test_bad_settings_are_named_by_their_flag(tmp_path: Path, args: list[str], message: str) -> None:
    assert one_error_line(streamer("file", "in.mp4", "out.mp4", "--preset", "tiny", *args, cwd=tmp_path)) == message


def test_a_config_files_unknown_setting_suggests_the_known_one(tmp_path: Path) -> None:
    config = tmp_path / "my.yaml"
    config.write_text("pipeline:\n  preset: tiny\n  promt: a watercolor\n")
    line = one_error_line(streamer("file", "in.mp4", "out.mp4", "--config", str(config), cwd=tmp_path))
    assert "unknown setting 'promt'; did you mean prompt?" in line
    config.write_text("preset: tiny\nnum_inference_steps: 12\n")
    line = one_error_line(streamer("file", "in.mp4", "out.mp4", "--config", str(config), cwd=tmp_path))
    assert line.endswith("bad setting: num_inference_steps must be a whole number from 1 to 8, got 12")


@pytest.mark.parametrize("command", [["file", "in.mp4", "out.mp4", "--preset", "tiny"], ["bench", "--quick"]])
def test_a_bad_device_is_refused_before_the_model_libraries_load(tmp_path: Path, command: list[str]) -> None:
    """Python's import log shows what was imported before the refusal: nothing of diffusers."""
    done = streamer(*command, "--device", "gpu", cwd=tmp_path, python_flags=("-X", "importtime"))
    assert done.returncode == 2
    assert "streamer: error: unknown device 'gpu'" in done.stderr and "Traceback" not in done.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")]
    assert "torch" in imported  # the device is checked by torch itself...
    assert not [name for name in imported if name.startswith("diffusers")]  # ...before the model is built


def test_help_speaks_in_flag_terms() -> None:
    done = streamer("file", "--help", timeout=60)
    assert done.returncode == 0
    assert "NUM_INFERENCE_STEPS" not in done.stdout and "GUIDANCE_SCALE" not in done.stdout
    assert "--steps N" in done.stdout and "1-8" in done.stdout


def test_one_meaning_per_flag_name() -> None:
    """--resolution is the model's working size (WxH) everywhere, --size the size a command writes; the old
    spellings still parse (hidden) to the new meaning."""
    from streamer.cli import build_parser

    parser = build_parser()

    def parse(*args: str):
        return parser.parse_args(list(args))

    for command in (["file", "a", "b"], ["run"], ["serve"], ["eval"]):
        assert parse(*command, "--resolution", "512x288").resolution == (512, 288)
    assert parse("bench", "--resolution", "512").resolution == (512, 512)
    assert parse("bench", "--arch", "tiny-sdxl").arch == parse("bench", "--size", "tiny-sdxl").arch == "tiny-sdxl"
    assert parse("eval", "--clip-size", "64x48").clip_size == parse("eval", "--size", "64x48").clip_size == (64, 48)
    assert parse("run", "--source-size", "320x240").source_size == (320, 240)
    assert parse("run", "--width", "320").width == 320  # old spelling, hidden
    for command in (["file", "a", "b"], ["run"]):
        assert parse(*command).progress is None  # auto: on when stderr is a terminal
        assert parse(*command, "--progress").progress is True
        assert parse(*command, "--no-progress").progress is False
    help_texts = {name: streamer(name, "--help", timeout=60).stdout for name in ("bench", "eval", "run")}
    assert "--size" not in help_texts["bench"] and "--arch" in help_texts["bench"]
    assert "--size" not in help_texts["eval"] and "--clip-size" in help_texts["eval"]
    assert "--width" not in help_texts["run"] and "--source-size" in help_texts["run"]


def test_run_source_size_reaches_the_source(tmp_path: Path) -> None:
    import av

    done = streamer("run", "--source", "testsrc", "--source-size", "96x64", "--sink", "out.mkv", "--preset",
                    "passthrough", "--duration", "0.5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with av.open(str(tmp_path / "out.mkv")) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (96, 64)


def test_file_progress_follows_the_terminal(tmp_path: Path) -> None:
    """stderr is a pipe here: no progress bar unless asked for."""
    from media import make_clip

    clip = make_clip(tmp_path / "in.mp4", seconds=0.5, size=(64, 48))
    quiet = streamer("file", str(clip), str(tmp_path / "a.mp4"), "--preset", "passthrough", cwd=tmp_path)
    shown = streamer("file", str(clip), str(tmp_path / "b.mp4"), "--preset", "passthrough", "--progress",
                     cwd=tmp_path)
    assert quiet.returncode == shown.returncode == 0, quiet.stderr + shown.stderr
    assert "frame/s" not in quiet.stderr and "frame/s" in shown.stderr


def test_testsrc_writes_the_frame_number_in_digits_under_the_marks() -> None:
    """White 5x7 digits on black under the marks; the marks still read back. Each digit is compared with the
    one drawn for a one-digit frame number: 12345 is written as 1, 2, 3, 4, 5 side by side."""
    import numpy as np

    from streamer.sources.testsrc import TestSource, digits_box, read_marks

    source = TestSource(320, 180, 30)
    source.open()
    top, left, scale = digits_box(320, 180)
    cell_w, cell_h = 6 * scale, 9 * scale  # a glyph, a column of space before it, a row above and below

    def cells(index: int) -> list[np.ndarray]:
        image = source._make_frame(index).image
        assert read_marks(image)[0] == index  # the machine-readable marks are intact
        text = image[top:top + cell_h, left:left + cell_w * len(str(index))]
        assert set(np.unique(text)) <= {0, 255} and (text == 255).any()
        return [text[:, i * cell_w:(i + 1) * cell_w] for i in range(len(str(index)))]

    singles = {d: cells(d)[0] for d in range(10)}
    assert len({c.tobytes() for c in singles.values()}) == 10  # ten different glyphs
    assert all(np.array_equal(c, singles[int(d)]) for c, d in zip(cells(1234567890), "1234567890", strict=True))


def test_an_rtsp_address_that_does_not_answer_says_so(tmp_path: Path) -> None:
    """A port on 127.0.0.1 that takes the connection and closes it without a word (FFmpeg: 'Invalid data
    found when processing input')."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    closed = threading.Event()

    def close_every_connection() -> None:
        while not closed.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connection.close()

    threading.Thread(target=close_every_connection, daemon=True).start()
    try:
        done = streamer("run", "--source", f"rtsp://127.0.0.1:{port}/cam", "--sink", "out.mkv", "--preset",
                        "passthrough", cwd=tmp_path, timeout=120)
    finally:
        closed.set()
        listener.close()
    line = one_error_line(done)
    assert f"127.0.0.1:{port} did not answer as an RTSP server" in line and "Invalid data" not in line


def test_a_virtual_camera_held_by_another_program_is_called_busy_and_the_program_named(tmp_path: Path) -> None:
    """No v4l2loopback here: its sysfs entries are laid out in a folder (a loopback device is a virtual
    device, a camera hangs off USB), the device node is a file, and a real second process holds it open,
    found through the real /proc."""
    from streamer.sinks.virtualcam import busy_device_hint, loopback_devices

    sysfs = tmp_path / "sys"
    for parent, name, label in (("devices/virtual/video4linux", "video7", "streamer"),
                                ("devices/pci0000:00/usb1/1-1/video4linux", "video0", "HD Webcam")):
        (sysfs / parent / name).mkdir(parents=True)
        (sysfs / parent / name / "name").write_text(label + "\n")
        (sysfs / "class" / "video4linux").mkdir(parents=True, exist_ok=True)
        (sysfs / "class" / "video4linux" / name).symlink_to(sysfs / parent / name)
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "video7").write_bytes(b"")
    (dev / "video0").write_bytes(b"")
    classes = sysfs / "class" / "video4linux"
    assert busy_device_hint(None, loopback_devices(classes, dev)) == (
        f"virtual camera: {dev}/video7 (streamer) is in use by another program (not visible to this user; "
        f"`sudo fuser -v {dev}/video7` names it); close that program's virtual camera, or add a device "
        "('sudo modprobe -r v4l2loopback && sudo modprobe v4l2loopback devices=2 exclusive_caps=1') and pass "
        "virtualcam:/dev/videoN")
    holder = subprocess.Popen([sys.executable, "-c", f"f = open({str(dev / 'video7')!r}, 'rb'); print('ready', "
                               "flush=True); import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        comm = Path(f"/proc/{holder.pid}/comm").read_text().strip()
        hint = busy_device_hint(None, loopback_devices(classes, dev))
        assert f"{dev}/video7 (streamer) is in use by {comm} (pid {holder.pid})" in hint
        assert "video0" not in hint  # the webcam is not a virtual camera
        assert busy_device_hint(f"{dev}/video9", loopback_devices(classes, dev)) is None  # asked for another
    finally:
        holder.kill()
        holder.wait(10)


RUN_FLAGS = ["--source", "testsrc:96x64@30", "--sink", "flag.mkv", "--source-size", "96x64", "--fps", "12",
             "--transport", "udp", "--timeout", "2", "--duration", "0.5", "--stats", "flag.json",
             "--no-progress", "--control-port", "0", "--codec", "libx264", "--crf", "30"]


@pytest.mark.parametrize("setup", sorted(p.name for p in SETUPS.glob("*.yaml")))
def test_every_flag_wins_over_each_setup_file_and_the_file_fills_the_rest(setup: str) -> None:
    """One config style: the file's sections read once into pydantic sections, each flag given on top."""
    from streamer.cli import build_parser
    from streamer.config import SetupConfig

    path = SETUPS / setup
    parser = build_parser()
    from_file = SetupConfig.read(path)
    plain = from_file.with_flags(parser.parse_args(["run", "--config", str(path)]))
    assert plain == from_file  # no flags: exactly the file, defaults from the sections' models
    assert plain.source.spec and plain.sinks
    args = parser.parse_args(["run", "--config", str(path), *RUN_FLAGS])
    args.width, args.height = args.source_size
    given = from_file.with_flags(args)
    assert given.source.model_dump() == {"spec": "testsrc:96x64@30", "width": 96, "height": 64, "fps": 12.0,
                                         "realtime": from_file.source.realtime, "loop": from_file.source.loop,
                                         "transport": "udp", "timeout": 2.0}
    assert given.sinks == ["flag.mkv"]
    assert given.run.model_dump() == {"duration": 0.5, "stats": Path("flag.json"), "control_port": 0,
                                      "progress": False, "codec": "libx264", "crf": 30}
    assert given.pipeline == from_file.pipeline


def test_the_sections_hold_the_defaults_and_argparse_none(tmp_path: Path) -> None:
    """A default is written once: in the section's model. argparse says only 'not given' (None/False)."""
    from streamer.cli import build_parser
    from streamer.config import SOURCE_FLAGS, RunSection, SetupConfig, SourceSection

    args = build_parser().parse_args(["run"])
    for dest in [*SOURCE_FLAGS.values(), *RunSection.model_fields]:
        assert getattr(args, dest) in (None, False), dest
    setup = tmp_path / "setup.yaml"
    setup.write_text("source: {spec: testsrc, realtime: true, timeout: 9}\nrun: {progress: true}\nsinks: a.mkv\n")
    resolved = SetupConfig.read(setup).with_flags(build_parser().parse_args(["run", "--no-progress"]))
    assert resolved.source == SourceSection(spec="testsrc", realtime=True, timeout=9)  # store_true off: the file's
    assert resolved.run.progress is False and resolved.sinks == ["a.mkv"]
    assert SetupConfig.read(None).with_flags(args).source.timeout == SourceSection().timeout == 5.0


@pytest.mark.parametrize(("text", "flags", "message"), [
    ("source: {spec: testsrc, fps: -3}\nsinks: [a.mkv]\n", [], "setup.yaml: source.fps must be a number above 0, got -3"),
    ("source: testsrc\nrun: {durration: 3}\n", [], "setup.yaml: unknown setting 'run.durration'; did you mean duration?"),
    ("source: [1]\n", [], "setup.yaml: 'source' must be a spec such as testsrc or a mapping with 'spec'"),
    ("source: testsrc\nsinks: [3]\n", [], "setup.yaml: 'sinks' must be a list of sink specs such as [out.mp4, virtualcam]"),
    ("source: testsrc\nsinks: [a.mkv]\nrun: {duration: 3}\n", ["--duration", "-2"],
     "--duration must be a number above 0, got -2.0"),
    ("source: testsrc\nsinks: [a.mkv]\n", ["--control-port", "70000"],
     "--control-port must be a whole number from 0 to 65535, got 70000"),
])
def test_a_bad_setup_is_one_line_naming_the_file_or_the_flag(tmp_path: Path, text: str, flags: list[str],
                                                              message: str) -> None:
    (tmp_path / "setup.yaml").write_text(text)
    line = one_error_line(streamer("run", "--config", "setup.yaml", "--preset", "passthrough", *flags, cwd=tmp_path))
    assert line.endswith(message), line


def test_serve_reads_a_server_section_and_its_flags_win(tmp_path: Path) -> None:
    """`serve` takes the same setup files: a 'server:' section, flags on top, ServerOptions' own defaults."""
    from streamer.cli import build_parser
    from streamer.config import SetupConfig
    from streamer.server.app import ServerOptions

    setup = tmp_path / "serve.yaml"
    setup.write_text("server: {port: 9001, max_sessions: 2, ice_servers: ['stun:127.0.0.1:3478'], source: testsrc}\n"
                     "pipeline: {preset: passthrough}\n")
    parser = build_parser()
    from_file = SetupConfig.read(setup).with_flags(parser.parse_args(["serve", "--config", str(setup)]),
                                                   ("server",)).server
    options = ServerOptions(**from_file.options())
    assert (options.port, options.max_sessions, options.ice_servers) == (9001, 2, ["stun:127.0.0.1:3478"])
    assert from_file.source == "testsrc"
    assert (options.host, options.max_viewers, options.max_batch) == (ServerOptions.host, ServerOptions.max_viewers,
                                                                     ServerOptions.max_batch)
    flagged = SetupConfig.read(setup).with_flags(parser.parse_args(
        ["serve", "--config", str(setup), "--port", "0", "--max-sessions", "3", "--ice-server", "stun:127.0.0.1:1"]),
        ("server",)).server
    assert (flagged.port, flagged.max_sessions, flagged.ice_servers) == (0, 3, ["stun:127.0.0.1:1"])
    setup.write_text("server: {prot: 9001}\n")
    line = one_error_line(streamer("serve", "--config", str(setup), cwd=tmp_path))
    assert line.endswith("serve.yaml: unknown setting 'server.prot'; did you mean port?"), line
