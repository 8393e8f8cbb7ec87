"""`streamer batch INPUTS... --out DIR`: stylize many files, each whole and as `streamer file` would,
on local workers or Ray actors."""

from __future__ import annotations

import argparse
import sys

from streamer.commands.file import add_encoding_args, check_encoding_args, file_pipeline_config
from streamer.config import add_pipeline_args
from streamer.engine.outputs import add_overwrite_argument
from streamer.engine.stop_signals import EXIT_STATUS_HELP, StopOnSignals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from streamer.scale.plan import OUTPUT_EXTENSIONS, SUMMARY_NAME

    parser.description = (
        "Stylize many video files with the same settings; each file comes out exactly as `streamer file` "
        "makes it (every frame, timestamps, audio). Outputs go to DIR under the input's name (files found in a "
        "folder keep their place under it) and get their name only when complete; a file whose output exists "
        "is skipped, so a batch stopped and started again goes on where it was. Workers: one per GPU here (or "
        "one on a CPU), or Ray actors with --ray. A summary (per file: frames, seconds, worker, retries) is "
        f"kept in DIR/{SUMMARY_NAME}.")
    parser.epilog = (EXIT_STATUS_HELP.replace("when the job completed", "when every file is done")
                     + " A file that could not be read makes it 2, one that failed otherwise 1; the other "
                       "files are done all the same.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="a video file, a folder (searched recursively), a glob pattern ('clips/*.mov', "
                             "quoted) or a list file (.txt: one of those per line)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR", help="folder for the outputs (created if missing)")
    out.add_argument("--ext", choices=OUTPUT_EXTENSIONS, default="mp4",
                     help="the outputs' extension, which picks the container (default mp4)")
    add_overwrite_argument(out)
    for action in out._group_actions:
        if action.dest == "overwrite":
            action.help = ("do every file again, replacing outputs that exist (otherwise those are skipped); "
                           "an old file stays until its new one is complete")
    add_encoding_args(out)
    scale = parser.add_argument_group("workers")
    scale.add_argument("--ray", default=None, metavar="ADDRESS",
                       help="run on Ray: 'local' starts a cluster on this machine, 'auto' or HOST:PORT joins "
                            "a running one (ray start --head); needs pip install \"streamer[ray]\"")
    scale.add_argument("--workers", type=int, default=None, metavar="N",
                       help="how many workers, each with its own copy of the model (default: one per GPU, "
                            "or per --worker-resource unit, one on a CPU)")
    scale.add_argument("--worker-cpus", type=float, default=1.0, metavar="X",
                       help="with --ray: CPUs each worker reserves (default 1; fractions allowed)")
    scale.add_argument("--worker-resource", default=None, metavar="NAME",
                       help="with --ray: each worker takes one unit of this custom Ray resource instead of a GPU")
    scale.add_argument("--retries", type=int, default=2, metavar="N",
                       help="times a file goes to another worker after its worker died (default 2)")
    add_pipeline_args(parser)


def run(args: argparse.Namespace) -> int:
    import threading
    from pathlib import Path

    from streamer.scale.batch import FileSettings, LocalPool, expected_frames, local_devices, run_batch
    from streamer.scale.plan import SUMMARY_NAME, Summary, plan, remove_folders
    from streamer.sources.base import SourceError

    if args.retries < 0:
        raise ValueError(f"--retries must be 0 or more, got {args.retries}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    if args.worker_cpus <= 0:
        raise ValueError(f"--worker-cpus must be more than 0, got {args.worker_cpus}")
    if args.ray is None and args.worker_resource:
        raise ValueError("--worker-resource needs --ray (workers here are threads of this process)")
    if args.ray is not None:
        from streamer.scale.ray_pool import import_ray

        import_ray()  # not installed: one line, before anything else happens
    codec = check_encoding_args(args, f"out.{args.ext}")
    config = file_pipeline_config(args)
    files, created = plan(args.inputs, args.out, ext=args.ext, overwrite=args.overwrite)
    if args.ray is not None and any(item.status == "pending" for item in files):
        from streamer.scale.ray_pool import check_address

        try:  # no cluster there: refused at once, nothing left behind (with nothing to do, none is needed)
            check_address(args.ray)
        except ValueError:
            remove_folders(created)
            raise
    settings = FileSettings(config, batch=args.batch, size=args.size, codec=codec, crf=args.crf,
                            encoder_preset=args.encoder_preset)
    for item in files:
        if item.status == "pending":
            try:
                item.expected_frames = expected_frames(item.input)
            except SourceError as exc:  # not a video: reported with the others, the batch goes on
                item.status, item.error, item.user_error = "failed", str(exc), True
                print(f"streamer: error: {exc}", file=sys.stderr)
    summary = Summary(Path(args.out).absolute() / SUMMARY_NAME, settings={
        "ext": args.ext, "size": args.size, "codec": codec, "crf": args.crf, "encoder_preset": args.encoder_preset,
        "batch": args.batch, "pipeline": config.model_dump(mode="json")})
    stopping = threading.Event()
    with StopOnSignals(stopping.set, "finishing the files in flight, closing them") as signals:
        if any(item.status == "pending" for item in files):
            if args.ray is not None:
                from streamer.scale.ray_pool import RayPool

                pool = RayPool(settings, address=args.ray, workers=args.workers, worker_cpus=args.worker_cpus,
                               worker_resource=args.worker_resource, retries=args.retries, verbose=args.verbose)
            else:
                pool = LocalPool(settings, local_devices(config, args.workers))
            summary.workers = list(pool.names)
            try:
                run_batch(pool, files, summary, retries=args.retries, stopping=stopping,
                          progress=sys.stderr.isatty() if args.progress is None else args.progress)
            finally:
                pool.close()
        data = summary.write(files, finished=not stopping.is_set())
    print(f"batch: {data['done']} done, {data['skipped']} skipped (already done), {data['failed']} failed, "
          f"{data['stopped']} stopped, {data['not_started']} not started; {data['frames']} frames in "
          f"{data['seconds']:.1f} s ({data['frames_per_second']:.1f} frames/s); summary in {summary.path}",
          file=sys.stderr)
    if any(item.status in ("stopped", "not started") for item in files):
        return signals.exit_status() or 1
    failed = [item for item in files if item.status == "failed"]
    return (2 if any(item.user_error for item in failed) else 1) if failed else 0
