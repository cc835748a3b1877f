"""The `hos-keras` command: report, profile, prune and export saved models.

    hos-keras report  MODEL.keras [--criterion k34] [-c 3.7] [--macs-reduction 0.5]
    hos-keras profile MODEL.keras [--layers]
    hos-keras prune   MODEL.keras --out SLIM.keras [--criterion k34]
                      [--allocation shapiro] [-c 3.7] [--macs-reduction 0.5]
                      [--plan PLAN.json] [--uniform] [--spec PRUNING.json]
    hos-keras export  SLIM.keras --tflite OUT.tflite [--saved-model DIR]

Models are loaded with `safe_mode=True`: a file whose config would run arbitrary
code (a Lambda layer, for instance) is refused. Bad input ends the command with a
one-line message on stderr and exit status 1 (2 for malformed arguments).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import zipfile
from collections.abc import Sequence

import keras
import numpy as np

import hos_keras
from hos_keras import allocation as allocation_lib
from hos_keras import criteria, export, files
from hos_keras.decompose import decompose
from hos_keras.errors import HOSKerasError, directory_problem
from hos_keras.hub_models import uniform_plan
from hos_keras.plan_record import PruningPlan
from hos_keras.profile import profile
from hos_keras.report import table
from hos_keras.specs import PruningSpec
from hos_keras.surgery import slim_model
from hos_keras.text import plural

__all__ = ["main"]

_STATISTIC_ALLOCATIONS = ("shapiro", "jarque_bera", "k34")


class CommandError(HOSKerasError):
    """Bad input to the command line tool; its message is printed as is."""


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _load(path: str) -> keras.Model:
    if not os.path.exists(path):
        raise CommandError(f"{path}: no such file.")
    if path.endswith((".h5", ".hdf5")):
        name = os.path.basename(path)
        stem = name.rsplit(".", 1)[0]
        raise CommandError(
            f"{path}: a legacy HDF5 model; hos-keras reads the .keras format. "
            "Convert it once, in Python, if you trust the file: "
            f"keras.models.load_model({name!r}).save({stem + '.keras'!r})."
        )
    if os.path.isdir(path) or not path.endswith(".keras"):
        raise CommandError(
            f"{path}: expected a .keras file (saved with model.save('name.keras'))."
        )
    if not zipfile.is_zipfile(path):
        raise CommandError(
            f"{path}: not a .keras archive (not a zip file); it may be truncated "
            "or corrupt."
        )
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # every failure becomes one line
        if "arbitrary code" in str(error) or "safe_mode" in str(error):
            raise CommandError(
                f"{path}: refused in safe mode: loading it would run Python code "
                "stored in the file (e.g. a Lambda layer). hos-keras never does; "
                "if you trust the file, load it in Python with safe_mode=False."
            ) from error
        raise CommandError(
            f"{path}: cannot be loaded as a Keras model "
            f"({type(error).__name__}: {_one_line(error)})"
        ) from error


def _check_output(path: str, suffix: str, flag: str) -> None:
    if not path.endswith(suffix):
        raise CommandError(f"{flag} {path}: the file name must end with {suffix}.")
    _, problem = directory_problem(path)
    if problem:
        raise CommandError(f"{flag} {path}: {problem}.")


def _renamed_flags(args) -> None:
    """Moves the deprecated --target and --latency-target to --macs-reduction and
    --latency-reduction, with a warning on stderr."""
    for old, new in (
        ("target", "macs_reduction"),
        ("latency_target", "latency_reduction"),
    ):
        value = getattr(args, old, None)
        if value is None:
            continue
        old_flag, new_flag = "--" + old.replace("_", "-"), "--" + new.replace("_", "-")
        if getattr(args, new) is not None:
            raise CommandError(
                f"{old_flag} is the old name of {new_flag}; give {new_flag} only."
            )
        print(
            f"hos-keras {args.command}: warning: {old_flag} is deprecated and will "
            f"be removed; use {new_flag} {value:g}.",
            file=sys.stderr,
        )
        setattr(args, new, value)


def _flags_spec(args, strict: bool = True) -> PruningSpec:
    """The `PruningSpec` the planning flags ask for.

    With `strict`, a flag that does not apply to the allocation is an error;
    otherwise it is left out (the report uses -c for its own table).
    """
    name = args.allocation
    macs, latency = args.macs_reduction, getattr(args, "latency_reduction", None)
    if macs is not None and latency is not None:
        raise CommandError(
            "--macs-reduction and --latency-reduction exclude each other: ask for a "
            "share of MACs or a share of latency."
        )
    base = "shapiro" if name == "target" else name
    flags = {
        "coefficient": ("-c/--coefficient", _STATISTIC_ALLOCATIONS),
        "fraction": ("--fraction", ("global",)),
        "ratio": ("--ratio", ("fixed",)),
    }
    options = {}
    for key, (flag, applies) in flags.items():
        value = getattr(args, key)
        if value is None:
            continue
        if base not in applies:
            if strict:
                raise CommandError(
                    f"{flag} applies to --allocation {' or '.join(applies)}, not "
                    f"{name}."
                )
            continue
        if macs is not None or latency is not None or name == "target":
            if strict:
                which = (
                    "--latency-reduction"
                    if latency is not None
                    else ("--macs-reduction")
                )
                raise CommandError(
                    f"{flag} and {which} exclude each other: the target search "
                    f"chooses the {key}."
                )
            continue
        options[key] = value
    needed = {
        "global": ("fraction", "--fraction 0.3"),
        "fixed": ("ratio", "--ratio 0.5"),
    }
    if (
        strict
        and name in needed
        and macs is None
        and latency is None
        and getattr(args, needed[name][0]) is None
    ):
        raise CommandError(
            f"--allocation {name} needs {needed[name][1].split()[0]} (e.g. "
            f"{needed[name][1]}) or --macs-reduction; it has no default worth "
            "guessing."
        )
    if name == "target" and macs is None and latency is None:
        raise CommandError(
            "--allocation target needs --macs-reduction or --latency-reduction."
        )
    return PruningSpec(
        criterion=args.criterion,
        allocation=name,
        allocation_options=options,
        macs_reduction=macs,
        latency_reduction=latency,
        runtime=getattr(args, "runtime", "tflite"),
        min_channels=args.min_channels,
        round_to=args.round_to,
        scope=args.scope,
        skip=args.skip,
        uniform=args.uniform,
        calibration_steps=args.calibration_steps,
    )


def _spec(args, strict: bool = True) -> PruningSpec:
    """The spec of --spec, or of the planning flags; not both."""
    flags = _flags_spec(args, strict)
    if args.spec is None:
        return flags
    given = [
        f.name
        for f in dataclasses.fields(PruningSpec)
        if getattr(flags, f.name) != getattr(PruningSpec(), f.name)
    ]
    if given:
        raise CommandError(
            f"--spec {args.spec} holds every planning parameter; drop the flags "
            f"that set {given} or set them in the file."
        )
    try:
        with open(args.spec, encoding="utf-8") as stream:
            return PruningSpec.from_dict(json.load(stream))
    except OSError as error:
        raise CommandError(f"--spec {args.spec}: {error.strerror}.") from error
    except json.JSONDecodeError as error:
        raise CommandError(
            f"--spec {args.spec}: not JSON ({error}); write it with "
            "json.dump(spec.to_dict(), file)."
        ) from error


def _calibration(args):
    """The calibration set of --data, `(x, y)`, or `None`."""
    if args.data is None:
        return None
    try:
        with np.load(args.data) as arrays:
            missing = {"x", "y"} - set(arrays.files)
            if missing:
                raise CommandError(
                    f"--data {args.data}: no array named {sorted(missing)} (it has "
                    f"{arrays.files}); save it with np.savez(path, x=x, y=y)."
                )
            data = (arrays["x"], arrays["y"])
    except (OSError, ValueError) as error:
        raise CommandError(
            f"--data {args.data}: cannot read it as an .npz file ({error})."
        ) from error
    return data


def _plan(model, spec: PruningSpec, args) -> PruningPlan:
    """The plan of `spec` with the calibration set of --data."""
    data = _calibration(args)
    if spec.needs_data and data is None:
        raise CommandError(
            f"--criterion {spec.criterion} with --allocation {spec.allocation} "
            "reads calibration data (data=None): pass --data CALIBRATION.npz (an "
            ".npz with arrays x and y)."
        )
    if data is not None and not spec.needs_data:
        raise CommandError(
            f"--data is calibration data for the data-driven criteria (dfs, sfs, "
            f"taylor, fisher, activation_*) and --allocation itpruner; --criterion "
            f"{spec.criterion} with --allocation {spec.allocation} reads weights "
            "only. Drop --data or pick one of them."
        )
    return spec.plan(model, data)


def _round_to(text: str):
    if text == "auto":
        return "auto"
    return _positive_int(text)


def _cmd_report(args) -> None:
    model = _load(args.model)
    cost = profile(model)
    print(f"{model.name}: {cost['params']:,} parameters, {cost['macs']:,} MACs")
    coefficient = args.coefficient if args.coefficient is not None else 3.7
    spec = _spec(args, strict=False)
    plans = {
        name: _plan(
            model,
            spec.replace(
                allocation=name,
                allocation_options={"coefficient": coefficient},
                macs_reduction=None,
                latency_reduction=None,
                uniform=False,
            ),
            args,
        )
        for name in _STATISTIC_ALLOCATIONS
    }
    chosen = _plan(model, spec, args)
    rows = []
    for name, group in plans["shapiro"].groups.items():
        jb, k34 = plans["jarque_bera"][name], plans["k34"][name]
        rows.append(
            (
                name,
                group.channels,
                group.statistic,
                group.ratio,
                jb.statistic,
                jb.ratio,
                k34.statistic,
                k34.ratio,
                chosen[name].ratio,
                len(chosen[name].keep),
            )
        )
    print()
    print(
        f"Layer statistics (criterion {spec.criterion}), eq. 9 ratios at "
        f"c = {coefficient:g}, and the plan of --allocation {chosen.allocation}:"
    )
    headers = (
        "group",
        "channels",
        "W",
        "r_W",
        "-log10 JB",
        "r_JB",
        "-log10|k34|",
        "r_k34",
        "planned",
        "kept",
    )
    for line in table(headers, rows):
        print(line)
    print()
    totals = [
        (name, f"-{p.macs_reduction:.1%}", f"-{p.params_reduction:.1%}")
        for name, p in (*plans.items(), (f"planned ({chosen.allocation})", chosen))
    ]
    for line in table(("allocation", "MACs", "params"), totals):
        print(line)
    if chosen.details.get("coefficient") is not None and spec.macs_reduction:
        print(f"target search: coefficient {chosen.details['coefficient']:.4g}")
    if chosen.frozen:
        print()
        print(f"not pruned ({plural(len(chosen.frozen), 'channel group')}):")
        for name, reason in chosen.frozen.items():
            print(f"  {name}: {reason}")


def _cmd_profile(args) -> None:
    model = _load(args.model)
    cost = profile(model)
    if args.layers:
        rows = [
            (name, entry["type"], entry["params"], entry["macs"])
            for name, entry in cost["layers"].items()
        ]
        for line in table(("layer", "type", "params", "MACs"), rows):
            print(line)
        print()
    print(f"model:  {model.name}")
    print(f"params: {cost['params']:,}")
    print(f"MACs:   {cost['macs']:,} per sample")


def _cmd_prune(args) -> None:
    _check_output(args.out, ".keras", "--out")
    if args.plan:
        _check_output(args.plan, ".json", "--plan")
    model = _load(args.model)
    if args.from_plan:
        try:
            with open(args.from_plan, encoding="utf-8") as stream:
                plan = PruningPlan.from_json(stream.read())
        except OSError as error:
            raise CommandError(
                f"--from-plan {args.from_plan}: {error.strerror}."
            ) from error
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
            raise CommandError(
                f"--from-plan {args.from_plan}: not a pruning plan; expected the "
                "JSON file that hos-keras prune --plan (or PruningPlan.to_json()) "
                f"writes ({type(error).__name__}: {_one_line(error)[:120]})."
            ) from error
        if args.uniform:
            plan = uniform_plan(model, plan)
    else:
        plan = _plan(model, _spec(args), args)
    slim = slim_model(model, plan)
    plan.summary()
    latency = plan.details.get("latency")
    if latency and "measured_speedup" in latency:
        print(
            f"latency on {latency['runtime']}: {latency['measured_original_ms']:.3f} "
            f"-> {latency['measured_slim_ms']:.3f} ms, measured "
            f"{latency['measured_speedup']:.2f}x (predicted "
            f"{latency['predicted_speedup']:.2f}x)"
        )
    files.save_model(slim, args.out)
    print(f"slim model written to {args.out} ({os.path.getsize(args.out):,} bytes)")
    if args.plan:
        files.write_text(args.plan, plan.to_json(indent=1))
        print(f"plan written to {args.plan}")


def _cmd_decompose(args) -> None:
    _check_output(args.out, ".keras", "--out")
    model = _load(args.model)
    small, report = decompose(
        model,
        method=args.method,
        factor=args.factor,
        layers=args.layers,
        return_report=True,
    )
    rows = [
        (
            name,
            "x".join(str(r) for r in entry["ranks"]),
            f"{entry['kernel_error']:.4f}",
            f"{entry['output_error']:.4f}",
            entry["macs"]["original"],
            entry["macs"]["decomposed"],
        )
        for name, entry in report.layers.items()
    ]
    ranks = "R3xR4" if args.method == "tucker2" else "groupsxrank"
    headers = ("layer", ranks, "kernel err", "output err", "MACs", "MACs after")
    for line in table(headers, rows):
        print(line)
    print(
        f"{args.method}, factor {args.factor:g}: params {report.params['original']:,}"
        f" -> {report.params['decomposed']:,}, MACs {report.macs['original']:,} -> "
        f"{report.macs['decomposed']:,}"
    )
    files.save_model(small, args.out)
    print(f"decomposed model written to {args.out}")


def _cmd_export(args) -> None:
    if not args.tflite and not args.saved_model:
        raise CommandError(
            "Nothing to export: pass --tflite OUT.tflite and/or --saved-model DIR."
        )
    if args.tflite:
        _check_output(args.tflite, ".tflite", "--tflite")
    model = _load(args.model)
    if args.saved_model:
        model.export(args.saved_model, format="tf_saved_model", verbose=False)
        print(f"SavedModel written to {args.saved_model}")
    if args.tflite:
        flat = export.to_tflite(model)
        files.write_bytes(args.tflite, flat)
        gap = _tflite_gap(flat, model)
        print(
            f"TFLite model written to {args.tflite} ({len(flat):,} bytes); "
            f"max |TFLite - Keras| on a random input: {gap:.2e}"
        )


def _tflite_gap(flat: bytes, model: keras.Model) -> float:
    """Largest difference between the TFLite and Keras outputs on random input."""
    interpreter = export.interpreter(flat)
    detail = interpreter.get_input_details()[0]
    shape = [1 if d < 1 else int(d) for d in detail["shape"]]
    x = np.random.default_rng(0).normal(size=shape).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    reference = keras.ops.convert_to_numpy(keras.tree.flatten(model(x))[0])
    return float(np.max(np.abs(out - reference)))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `hos-keras` (also used for its help text)."""
    parser = argparse.ArgumentParser(
        prog="hos-keras",
        description="Structured pruning of Keras models with higher-order "
        "statistics (Chatzikonstantinou et al., CVPRW 2020).",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {hos_keras.__version__}"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's startup messages (hidden by default)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def planning(sub) -> None:
        sub.add_argument("model", metavar="MODEL.keras", help="a saved .keras model")
        sub.add_argument(
            "--criterion",
            default="k34",
            choices=criteria.criterion_names(),
            help="filter criterion (default: k34); dfs, sfs, taylor, fisher and "
            "activation_* read --data",
        )
        sub.add_argument(
            "--data",
            metavar="CALIBRATION.npz",
            help="calibration set for the data-driven criteria: an .npz with "
            "arrays x (inputs) and y (labels)",
        )
        sub.add_argument(
            "--calibration-steps",
            type=_positive_int,
            default=16,
            help="batches of 64 of --data to read (default: 16)",
        )
        sub.add_argument(
            "--allocation",
            default="shapiro",
            choices=allocation_lib.allocation_names(),
            help="per-layer ratio allocation (default: shapiro)",
        )
        sub.add_argument(
            "-c",
            "--coefficient",
            type=float,
            help="eq. 9 coefficient c of shapiro/jarque_bera/k34 (default: 3.7)",
        )
        sub.add_argument(
            "--macs-reduction",
            type=_fraction,
            help="fraction of MACs to remove; searches the allocation's knob",
        )
        sub.add_argument(
            "--target",
            type=_fraction,
            help="deprecated name of --macs-reduction",
        )
        sub.add_argument(
            "--spec",
            metavar="PRUNING.json",
            help="every planning parameter from a file holding "
            "hos_keras.PruningSpec(...).to_dict() (instead of the planning flags)",
        )
        sub.add_argument(
            "--fraction", type=_fraction, help="share of filters removed (global)"
        )
        sub.add_argument("--ratio", type=_fraction, help="uniform ratio (fixed)")
        sub.add_argument(
            "--min-channels",
            type=_positive_int,
            default=1,
            help="fewest channels a layer keeps (default: 1)",
        )
        sub.add_argument(
            "--round-to",
            type=_round_to,
            default=1,
            help="round kept channels up to a multiple of this, or 'auto' for the "
            "channel tile measured on --runtime (default: 1)",
        )
        sub.add_argument(
            "--scope",
            default="all",
            choices=["all", "inner", "conv"],
            help="groups that may be pruned: all, inner (no channel crossing a "
            "residual merge; the paper's scope) or conv (default: all)",
        )
        sub.add_argument(
            "--skip",
            nargs="+",
            default=[],
            metavar="PATTERN",
            help="layer names or shell patterns never pruned (default: none)",
        )
        sub.add_argument(
            "--uniform",
            action="store_true",
            help="keep the same number of heads and MLP units in every transformer "
            "block (the mean of the plan's); a keras-hub decoder LLM such as "
            "GemmaCausalLM then keeps its class and generate()",
        )

    report = commands.add_parser(
        "report", help="per-layer statistics and planned ratios"
    )
    planning(report)
    report.set_defaults(func=_cmd_report)

    prof = commands.add_parser("profile", help="parameters and MACs")
    prof.add_argument("model", metavar="MODEL.keras", help="a saved .keras model")
    prof.add_argument("--layers", action="store_true", help="one row per layer")
    prof.set_defaults(func=_cmd_profile)

    prune = commands.add_parser("prune", help="plan, slim and save a smaller model")
    planning(prune)
    prune.add_argument(
        "--out", required=True, metavar="SLIM.keras", help="where to save the result"
    )
    prune.add_argument("--plan", metavar="PLAN.json", help="also write the plan here")
    prune.add_argument(
        "--latency-reduction",
        type=_fraction,
        help="fraction of the latency on --runtime to remove (0.5: 2x faster); "
        "searches the allocation's knob against a measured latency model",
    )
    prune.add_argument(
        "--latency-target",
        type=_fraction,
        help="deprecated name of --latency-reduction",
    )
    prune.add_argument(
        "--runtime",
        choices=["tflite", "tf"],
        default="tflite",
        help="runtime of --latency-reduction and --round-to auto: the TFLite "
        "interpreter (batch 1, 2 threads) or TensorFlow (batch 1) (default: tflite)",
    )
    prune.add_argument(
        "--from-plan",
        metavar="PLAN.json",
        help="apply this saved plan (e.g. from HOSPruneCallback) instead of planning",
    )
    prune.set_defaults(func=_cmd_prune)

    dec = commands.add_parser(
        "decompose", help="factorize convs into smaller ones (Tucker-2 or FGA)"
    )
    dec.add_argument("model", metavar="MODEL.keras", help="a saved .keras model")
    dec.add_argument(
        "--out", required=True, metavar="OUT.keras", help="where to save the result"
    )
    dec.add_argument(
        "--method",
        choices=["tucker2", "fga"],
        default="tucker2",
        help="Tucker-2 by HOOI or filter group approximation (default: tucker2)",
    )
    dec.add_argument(
        "--factor",
        type=float,
        default=1.71,
        help="compression factor X of each layer (default: 1.71, the reference's)",
    )
    dec.add_argument(
        "--layers",
        nargs="+",
        metavar="NAME",
        help="the convs to decompose (default: every kxk conv with >= 8 channels)",
    )
    dec.set_defaults(func=_cmd_decompose)

    export = commands.add_parser("export", help="convert for deployment")
    export.add_argument("model", metavar="SLIM.keras", help="a saved .keras model")
    export.add_argument("--tflite", metavar="OUT.tflite", help="TFLite flatbuffer")
    export.add_argument("--saved-model", metavar="DIR", help="TF SavedModel directory")
    export.set_defaults(func=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `hos-keras` with `argv` (default: the process arguments).

    Returns:
        The exit status: 0 on success, 1 on bad input (a one-line message on
        stderr). Malformed arguments exit with status 2 through argparse.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # --verbose acts at import time (hos_keras._startup), before or after the
    # command alike.
    args = build_parser().parse_args([a for a in argv if a != "--verbose"])
    try:
        _renamed_flags(args)
        args.func(args)
    # NotImplementedError: a layer whose get_config Keras cannot give (e.g. one
    # loaded with a DTypePolicy object among its recorded arguments).
    except (
        HOSKerasError,
        ValueError,
        TypeError,
        OSError,
        NotImplementedError,
    ) as error:
        message = (
            _one_line(error)
            if isinstance(error, CommandError)
            else f"{type(error).__name__}: {_one_line(error)}"
        )
        print(f"hos-keras {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
