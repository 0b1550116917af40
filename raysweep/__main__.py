"""Command line: the argument parser and the dispatch to raysweep/cli/commands.py.

Exit codes (cli/console.py): 0 success, 1 some trial failed, 2 bad input (nothing launched), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from raysweep.cli import commands, report_cmd
from raysweep.cli.console import EXIT_BAD_INPUT, BadInput, err_console


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raysweep", description="Ray Tune sweeps of adapter fine-tuning.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a sweep")
    run.add_argument("grid", help="grid YAML file")
    run.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. train.max_steps=50")
    run.add_argument("--address", default=None, help="existing Ray cluster ('auto' or host:port); default: start a local one")
    run.add_argument("--storage", default=None, help="experiment storage root (default: grid 'storage' or ~/ray_results)")
    run.add_argument("--name", default=None, help="experiment name (default: grid 'name', made unique)")
    run.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard (local Ray only)")
    run.add_argument("--verbose", action="store_true", help="show Ray and worker logs")
    run.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files in each "
                     "trial directory (`tensorboard --logdir <experiment>`; needs tensorboardX)")

    plan = sub.add_parser("plan", help="expand and validate a grid; print the trials, resources and (once "
                          "calibrated) estimated wall time and device-hours")
    plan.add_argument("grid")
    plan.add_argument("overrides", nargs="*")
    plan.add_argument("--calibrate", action="store_true", help="run a few steps of one trial per distinct "
                      "model/adapter shape here (no Ray; ~5 s each) and cache them, for the time estimate")

    resume = sub.add_parser("resume", help="continue an interrupted sweep (finished trials are kept)")
    resume.add_argument("experiment", help="experiment directory, e.g. ~/ray_results/quickstart")
    resume.add_argument("--address", default=None)
    resume.add_argument("--retry-errored", action="store_true", help="also retry trials that failed (from "
                        "their latest checkpoint)")
    resume.add_argument("--no-dashboard", action="store_true")
    resume.add_argument("--verbose", action="store_true")
    resume.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files")

    masks = sub.add_parser("masks", help="precompute the pruning masks of a grid's masked trials (optional: "
                           "trials compute missing ones on demand)")
    masks.add_argument("grid")
    masks.add_argument("overrides", nargs="*")
    masks.add_argument("--storage", default=None, help="storage root the sweep will use (default: grid 'storage' "
                       "or ~/ray_results); masks go to <storage>/masks/")

    bounds = sub.add_parser("bounds", help="PAC-Bayes bounds of sublora trials (recomputed from checkpoints)")
    bounds.add_argument("path", help="an experiment directory, a trial directory or a checkpoint directory")
    bounds.add_argument("--levels", type=int, default=None, help="quantization levels of α (default: the trial's, 11)")
    bounds.add_argument("--quantizer", choices=["uniform", "kmeans", "symmetric"], default=None,
                        help="quantizer of α (default: the trial's bound_quantizer); symmetric: the SubLoRA "
                        "reference's bins over [−max|α|, max|α|]")
    bounds.add_argument("--sample", type=int, default=None, help="units evaluated for the empirical risk")
    bounds.add_argument("--delta", type=float, default=None, help="confidence δ (default: the trial's, 0.05)")

    exp = sub.add_parser("export", help="export a trial's adapter (peft format) or merged model, checked against "
                         "the trial's eval loss")
    exp.add_argument("path", help="a checkpoint or trial directory, or an experiment directory with --best")
    exp.add_argument("--out", required=True, help="where to write (a new or empty directory)")
    exp.add_argument("--best", action="store_true", help="PATH is an experiment: export its best finished trial "
                     "(by the experiment's search.metric and search.mode)")
    exp.add_argument("--metric", default=None, help="with --best: rank the trials by this metric instead")
    exp.add_argument("--mode", choices=["min", "max"], default=None, help="with --best: direction of --metric")
    exp.add_argument("--merged", action="store_true", help="merge the adapter into the base model "
                     "(merge_and_unload) and save the whole model with its tokenizer")
    exp.add_argument("--weights", choices=["best", "final"], default="best", help="best: the trial's best eval "
                     "loss (best_adapter/, default); final: the checkpoint's last step (adapter/)")
    exp.add_argument("--tolerance", type=float, default=None, help="relative eval-loss difference allowed "
                     "(default 1e-3; 5e-3 for bfloat16/float16 models)")
    exp.add_argument("--no-check", action="store_true", help="do not evaluate the export")

    ev = sub.add_parser("eval", help="task metrics (lm-eval tasks, generation) of finished trials, written beside "
                        "their results (analyze shows them with the baseline's delta)")
    ev.add_argument("path", help="an experiment directory (every trial, or --best), a trial or a checkpoint directory")
    ev.add_argument("--best", action="store_true", help="PATH is an experiment: evaluate its best finished trial "
                    "(by the experiment's search.metric and search.mode)")
    ev.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help="lm-eval task names or task YAML "
                    "paths (default: the grid's evaluate.lm_eval.tasks)")
    ev.add_argument("--generation", action="store_true", help="also score greedy answers on the chat validation "
                    "split (gen/exact_match, gen/f1)")
    ev.add_argument("--limit", type=int, default=None, help="examples per task (and generated answers)")
    ev.add_argument("--weights", choices=["best", "final"], default="final", help="final: the checkpoint's last "
                    "step (adapter/, default; the weights the trial's own metrics are of); best: best_adapter/")
    ev.add_argument("--no-baseline", action="store_true", help="do not evaluate the untuned base")

    analyze = sub.add_parser("analyze", help="summarise a finished (or partial) experiment")
    analyze.add_argument("experiment")
    analyze.add_argument("--out", default=None, help="where tables go (default: the experiment directory)")
    analyze.add_argument("--regression", type=float, default=0.0, metavar="X", help="with task metrics: the "
                         "report lists configurations whose mean is more than X below the untuned base on any of "
                         "them (default 0: any below it; e.g. 0.05 for a 5-point regression)")
    analyze.add_argument("--objectives", nargs="+", default=None, metavar="METRIC[:min|max]",
                         help="Pareto objectives (default per family: adapter/effective_params:min eval/loss:min; "
                         "masked: mask/achieved_sparsity:max eval/loss:min; sublora: bound/kl_nats:min "
                         "bound/doc_bpd_empirical:min; analysis/families.py)")
    report = sub.add_parser("report", help="write the experiment's interactive HTML report; --watch: serve it "
                            "on 127.0.0.1 and rewrite it while the sweep runs")
    report.add_argument("experiment", help="experiment directory, e.g. ~/ray_results/quickstart")
    report.add_argument("--watch", action="store_true", help="serve the report on 127.0.0.1 and rewrite it "
                        "whenever the results change; the page reloads itself (Ctrl-C to stop)")
    report.add_argument("--port", type=int, default=None, help="with --watch: the port (default 8365; 0: any free one)")
    report.add_argument("--interval", type=float, default=None, help="with --watch: seconds between checks for "
                        "new results, and the page's reload interval (default 10)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may also follow the options (`run grid.yaml --address auto train.lr=1e-3`): argparse stops
    # filling a positional list at the first option, so the rest arrive here
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handler = {"run": commands.cmd_run, "plan": commands.cmd_plan, "resume": commands.cmd_resume,
               "analyze": commands.cmd_analyze, "masks": commands.cmd_masks, "bounds": commands.cmd_bounds,
               "export": commands.cmd_export, "eval": commands.cmd_eval,
               "report": report_cmd.cmd_report}[args.command]
    try:
        return handler(args)
    except BadInput as exc:
        err_console.print("[bold red]error[/bold red] ", end="")
        err_console.print(str(exc), markup=False, highlight=False)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
