"""CLI defaults against library defaults: every option that mirrors a library argument has
the library's default (after the command's own reading of the option's text), so the two
cannot drift apart. The tables below name each pair; a new option that mirrors a library
argument belongs in them."""

import dataclasses
import importlib
import inspect

import pytest
import typer

from app.cli import app
from app.cli_interventions import _positions as patch_positions

MISSING = object()


def _target(path: str):
    """``module:Name`` or ``module:Class.method``."""
    module, _, name = path.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def library_default(path: str, param: str):
    """The default of ``param`` of a function, or of a field of a dataclass."""
    obj = _target(path)
    if dataclasses.is_dataclass(obj) and isinstance(obj, type):
        field = {f.name: f for f in dataclasses.fields(obj)}[param]
        assert field.default is not dataclasses.MISSING, f"{path}.{param} has no default"
        return field.default
    p = inspect.signature(obj).parameters[param]
    assert p.default is not inspect.Parameter.empty, f"{path}({param}) has no default"
    return p.default


def _commands() -> dict:
    out = {}

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            out[" ".join(path)] = cmd

    walk(typer.main.get_command(app), [])
    return out


COMMANDS = _commands()


def cli_option(command: str, flag: str):
    cmd = COMMANDS[command]
    found = [p for p in cmd.params if flag in p.opts or flag in getattr(p, "secondary_opts", ())]
    assert len(found) == 1, f"`gatescope {command}` has no option {flag}"
    return found[0]


def _coefs(text: str) -> tuple[float, ...]:
    return tuple(float(c) for c in text.split(","))


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(","))


def _steer_positions(text):
    # steer generate: prompt / generated pass through, the rest as patch reads them
    return text if text in ("prompt", "generated") else patch_positions(text)


#: (command, option) -> (library function or dataclass, parameter, how the command reads the
#: option's value before passing it on).
MIRRORS = {
    ("trace", "--batch-size"): ("probe.model:Model.batches", "batch_size", None),
    ("gates", "--batch-size"): ("probe.gates:gate_stats", "batch_size", None),
    ("patch", "--mode"): ("interventions.patching:activation_patching", "mode", None),
    ("patch", "--max-memory"): ("interventions.patching:activation_patching", "max_memory", None),
    ("patch", "--positions"): (
        "interventions.patching:activation_patching",
        "positions",
        patch_positions,
    ),
    ("steer generate", "--max-new-tokens"): (
        "interventions.steering:generate",
        "max_new_tokens",
        None,
    ),
    ("steer generate", "--positions"): (
        "interventions.steering:generate",
        "positions",
        _steer_positions,
    ),
    ("steer eval", "--coefs"): ("interventions.steering:evaluate_steering", "coefs", _coefs),
    ("steer eval", "--random"): ("interventions.steering:evaluate_steering", "n_random", None),
    ("attribute", "--method"): ("circuits.attribution:attribute", "method", None),
    ("attribute", "--positions"): ("circuits.attribution:attribute", "positions", None),
    ("circuit", "--method"): ("circuits.graph:build_graph", "method", None),
    ("agreement", "--sites"): ("circuits.agreement:agreement", "kinds", _kinds),
    ("sae harvest", "--shard-tokens"): ("probe.store:harvest", "shard_tokens", None),
    ("sae harvest", "--batch-size"): ("probe.store:harvest", "batch_size", None),
    ("sae train", "--arch"): ("probe.sae.train:SAETrainSpec", "arch", None),
    ("sae train", "--width"): ("probe.sae.train:SAETrainSpec", "width", None),
    ("sae train", "--k"): ("probe.sae.train:SAETrainSpec", "k", None),
    ("sae train", "--tokens"): ("probe.sae.train:SAETrainSpec", "tokens", None),
    ("sae train", "--batch-size"): ("probe.sae.train:SAETrainSpec", "batch_size", None),
    ("sae train", "--lr"): ("probe.sae.train:SAETrainSpec", "lr", None),
    ("sae train", "--beta"): ("probe.sae.train:SAETrainSpec", "beta", None),
    ("sae train", "--variance"): ("probe.sae.train:SAETrainSpec", "learn_variance", None),
    ("sae train", "--vsae-reading"): ("probe.sae.train:SAETrainSpec", "vsae_reading", None),
    ("sae train", "--checkpoint-every"): (
        "probe.sae.train:SAETrainSpec",
        "checkpoint_every",
        None,
    ),
    ("sae train", "--checkpoint-minutes"): (
        "probe.sae.train:SAETrainSpec",
        "checkpoint_minutes",
        None,
    ),
    ("sae train", "--seed"): ("probe.sae.train:SAETrainSpec", "seed", None),
    ("sae train", "--device"): ("probe.sae.train:SAETrainSpec", "device", lambda d: d or "cpu"),
    ("sae train", "--text-mode"): ("probe.sae.data:read_texts", "pack", lambda m: m == "packed"),
    ("sae eval", "--batch-size"): ("probe.sae.evaluate:evaluate_sae", "batch_size", None),
    ("sae eval", "--text-mode"): ("probe.sae.evaluate:evaluate_sae", "text_mode", None),
    ("sae features", "--window"): ("probe.sae.features:top_contexts", "window", None),
    ("concept cav", "--pooling"): ("probe.concepts:pooled_activations", "pooling", None),
    ("concept tcav", "--pooling"): ("probe.concepts:tcav", "pooling", None),
    ("concept probe", "--pooling"): ("probe.concepts:probe_layers", "pooling", None),
    ("reference train", "--arch"): ("probe.reference.train:TrainConfig", "arch", None),
    ("reference train", "--steps"): ("probe.reference.train:TrainConfig", "steps", None),
    ("reference train", "--seed"): ("probe.reference.train:TrainConfig", "seed", None),
    ("reference train", "--lr"): ("probe.reference.train:TrainConfig", "lr", None),
    ("reference train", "--warmup"): ("probe.reference.train:TrainConfig", "warmup", None),
    ("reference train", "--induction-tail"): (
        "probe.reference.train:TrainConfig",
        "induction_tail",
        None,
    ),
    ("reference train", "--corpus"): ("probe.reference.train:TrainConfig", "corpus_version", None),
    ("reference train", "--stop-after"): ("probe.reference.train:TrainConfig", "stop_after", None),
    ("reference train", "--checkpoint-seconds"): (
        "probe.reference.train:TrainConfig",
        "checkpoint_seconds",
        None,
    ),
    ("reference eval", "--limit"): ("probe.reference.evaluate:evaluate_reference", "limit", None),
    ("reference eval", "--twin"): ("probe.reference.evaluate:evaluate_reference", "twin", None),
    ("reference tasks", "--seed"): ("probe.reference.task_data:write_task_data", "seed", None),
}

#: Options passed to more than one library function whose defaults differ: the command
#: passes them only when given (None), and its help states each default. (command, option)
#: -> [(function, parameter)]; every default must appear in the help text.
DEFERRED = {
    ("sae features", "--top"): [
        ("probe.sae.features:top_contexts", "top"),
        ("probe.sae.features:latent_dashboard", "top"),
    ],
}

#: Known drifts the code cannot fix here yet: (command, option) -> why. The test of each is
#: a strict expected failure, so it reports the day the two agree (then drop the entry).
KNOWN_DRIFT: dict[tuple[str, str], str] = {}  # (command, option) -> why it differs

#: The commands whose options the tables must cover.
MAIN_COMMANDS = {
    "trace",
    "gates",
    "patch",
    "steer generate",
    "steer eval",
    "attribute",
    "circuit",
    "agreement",
    "sae harvest",
    "sae train",
    "sae eval",
    "sae features",
    "concept cav",
    "concept tcav",
    "concept probe",
    "reference train",
    "reference eval",
    "reference tasks",
}

#: The shared model options (app.cli_common.model_options) -> probe.load_model.
MODEL_OPTIONS = {
    "--device": "device",
    "--dtype": "dtype",
    "--device-map": "device_map",
    "--backend": "backend",
    "--remote": "remote",
    "--trust-remote-code": "trust_remote_code",
}


def _cases():
    for key, (target, param, read) in MIRRORS.items():
        marks = ()
        if key in KNOWN_DRIFT:
            marks = pytest.mark.xfail(strict=True, reason=KNOWN_DRIFT[key])
        yield pytest.param(*key, target, param, read, id=" ".join(key), marks=marks)


@pytest.mark.parametrize(("command", "flag", "target", "param", "read"), list(_cases()))
def test_a_cli_default_is_its_library_default(command, flag, target, param, read):
    cli = cli_option(command, flag).default
    got = read(cli) if read else cli
    want = library_default(target, param)
    assert got == want, (
        f"`gatescope {command} {flag}` defaults to {cli!r}, {target}({param}) to {want!r}"
    )


@pytest.mark.parametrize(("command", "flag"), list(DEFERRED), ids=[" ".join(k) for k in DEFERRED])
def test_an_option_left_to_the_library_states_its_defaults(command, flag):
    option = cli_option(command, flag)
    assert option.default is None, f"`{command} {flag}` should pass nothing when not given"
    for target, param in DEFERRED[(command, flag)]:
        assert str(library_default(target, param)) in option.help, (command, flag, target)


def test_circuit_help_states_the_graph_default():
    from circuits.methods import CIRCUIT_DEFAULT

    assert f"default: {CIRCUIT_DEFAULT.label}" in cli_option("circuit", "--method").help


@pytest.mark.parametrize("command", sorted(c for c in COMMANDS if c != "app"))
def test_model_options_default_as_load_model(command):
    flags = {o for p in COMMANDS[command].params for o in p.opts}
    if "--backend" not in flags:
        pytest.skip(f"{command} loads no model")
    for flag, param in MODEL_OPTIONS.items():
        got = cli_option(command, flag).default
        assert got == library_default("probe.load:load_model", param), (command, flag)


def test_model_options_dataclass_defaults_as_load_model():
    from app.cli_common import ModelOptions

    for f in dataclasses.fields(ModelOptions):
        assert f.default == library_default("probe.load:load_model", f.name), f.name


def test_the_tables_name_real_options_and_cover_the_main_commands():
    assert set(COMMANDS) >= MAIN_COMMANDS
    covered = {c for c, _ in [*MIRRORS, *DEFERRED]}
    assert covered == MAIN_COMMANDS, sorted(covered ^ MAIN_COMMANDS)
    assert set(KNOWN_DRIFT) <= set(MIRRORS)
    for command, flag in [*MIRRORS, *DEFERRED]:
        cli_option(command, flag)
