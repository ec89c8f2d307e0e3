"""Command line of the headless runner.

    python -m diffusers_stages run WORKFLOW.json|.png [--set NODE.INPUT=VALUE ...] [--repeat N] [--batch NAME]
    python -m diffusers_stages convert WORKFLOW.json          # print the API prompt
    python -m diffusers_stages demo                           # tiny offline models + the shipped workflows

(From the repo root without installing: ``python stages.py ...``.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback

from ..engine.errors import InputError, StageError
from .execute import WorkflowError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
WORKFLOWS = os.path.join(REPO, "workflows")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="print the Python traceback of an error, too")
    parser.add_argument("--models", help="models folder with diffusers/, checkpoints/, … (default: ./models)")
    parser.add_argument("--input", help="folder Load Image reads from (default: ./input)")
    parser.add_argument("--output", help="folder Save Image writes to (default: ./output)")
    parser.add_argument("--object-info", action="append", default=[],
                        help="an /object_info JSON dump, to convert UI workflows that use other node types")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusers_stages", description="Run ComfyUI workflows headlessly.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a workflow (UI or API JSON, or a PNG with an embedded workflow)")
    run.add_argument("workflow")
    run.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override an input (NODE: id or title; VALUE: JSON or text; @FILE: one value per line, "
                          "one run per line)")
    run.add_argument("--repeat", type=int, default=1, help="run N times, seeds moved on as the workflow's "
                                                          "control_after_generate says")
    run.add_argument("--batch", help="batch folder name under the output folder (default: the workflow's name); "
                                     "running the same batch again resumes it")
    run.add_argument("--server", action="append", default=[], metavar="URL",
                     help="run the batch on this ComfyUI server (repeat for several: each run goes to a free one; a "
                          "server that stops answering has its runs done by the others)")
    run.add_argument("--random-seed", type=int, help="seed for 'randomize' seed control (reproducible batches)")
    _common(run)
    convert = sub.add_parser("convert", help="print the API-format prompt of a UI workflow")
    convert.add_argument("workflow")
    _common(convert)
    demo = sub.add_parser("demo", help="build tiny random-weight models (offline) and run the shipped SD1.5 "
                                       "workflows on them")
    demo.add_argument("--dir", default="demo", help="folder for the demo models, input and output (default: ./demo)")
    demo.add_argument("--debug", action="store_true", help="print the Python traceback of an error, too")
    return parser


def _runner(args):
    from .api import Runner

    return Runner(args.models, args.input, args.output, tuple(args.object_info))


def demo(folder: str) -> list[str]:
    import glob

    from ..tiny.demo import demo_plan, prepare_demo
    from .api import Runner

    models, inputs, output = prepare_demo(folder)
    runner = Runner(models, inputs, output)
    print("NOTE: the demo models have random weights: the workflows run end to end, and the images are noise.")
    written = []
    # 256 px: the tiny U-Nets' attention at 512 px and more costs minutes on a CPU for nothing but noise
    for path in sorted(glob.glob(os.path.join(WORKFLOWS, "*.json"))):
        sets, repeat = demo_plan(path)
        written += runner.run(path, sets=sets, repeat=repeat, batch=os.path.splitext(os.path.basename(path))[0])
    return written


def _message(error: Exception) -> str:
    if isinstance(error, WorkflowError | StageError):
        return str(error)
    if isinstance(error, InputError):
        return f"{error.input_name}: {error.problem} Fix: {error.fix}"
    detail = " ".join(str(error).split())[:300]
    return (f"unexpected {type(error).__name__}{': ' + detail if detail else ''}. Run again with --debug for the "
            "traceback, and please report it with the workflow.")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # read when diffusers/transformers first log
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            files = _runner(args).run(args.workflow, args.set, args.repeat, args.batch, args.random_seed,
                                      servers=args.server)
        elif args.command == "convert":
            runner = _runner(args)
            print(json.dumps(runner.load(args.workflow).prompt, indent=1))
            return 0
        else:
            files = demo(args.dir)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # every refusal and failure ends here: one short message, exit code 2
        if args.debug:
            traceback.print_exc()
        print(f"error: {_message(error)}", file=sys.stderr)
        return 2
    print(f"{len(files)} image(s) written:")
    for path in files:
        print(f"  {os.path.relpath(path)}")
    return 0
