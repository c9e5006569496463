"""Properties of the experiment config readers: ``key=value`` overrides (ditsam.config.parse_override,
ConfigBase.with_overrides) and experiment YAML files with their ``base`` chain (ditsam.engine.config
.load_experiment). Any text gives a valid config or a ConfigError naming the file, the override or the
key, never another exception. Found bugs are kept as plain regression tests at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from ditsam.config import ConfigError, load_yaml, parse_override
from ditsam.engine.config import ExperimentConfig, load_experiment, read_experiment
from strategies import (
    DEEP_NESTING,
    HUGE_DIGITS,
    assert_raises_naming,
    broken_bytes,
    example_dir,
    json_values,
    mutated,
    odd_text,
    paths,
    valid_or_documented,
)

BASE = read_experiment("refshapes/ldit")
#: Dotted keys of every field of an experiment, and a few that are not.
KEYS = sorted(
    {".".join(map(str, path)) for path in paths(ExperimentConfig().to_dict()) if path}
    | {"model..depth", "train.lr.x", "", "nope", "model.text.nope"}
)
#: YAML that PyYAML's safe loader turns into errors of its own (or values of odd types).
HOSTILE_YAML = [
    "!!float abc",
    "a: !!int abc",
    "!!bool maybe",
    "a: !!timestamp 2020-13-45",
    "[" * DEEP_NESTING,
    "a: &x [*x]",
    "{1: 2}",
    "yes: 1",
    "? [1]\n: 2",
    "a: !!python/object/apply:os.system [ls]",
    "\x00",
    "model: !!set {a}",
    "train: {lr: " + "9" * HUGE_DIGITS + "}",
    "train:\n  lr: 1" + "0" * 400,
    "model: {patch_size: 0}",
    "model: {static_tokens: 1, injection_options: 5}",
    "base: 5",
    "base: missing.yaml",
    "base: [a]",
    "model: {text: {max_tokens: .nan}}",
    "train: {betas: [0.9]}",
    "model: {no: 1}",
    "!!binary x",
]


def _default_overrides(section: dict, prefix: str = "") -> list[str]:
    """``key=value`` texts setting every field of ``section`` to its default, the value written as YAML."""
    texts = []
    for key, value in section.items():
        if isinstance(value, dict):
            texts += _default_overrides(value, f"{prefix}{key}.")
        else:
            texts.append(f"{prefix}{key}={yaml.safe_dump(value, default_flow_style=True).split(chr(10))[0]}")
    return texts


#: Overrides that must apply: each field set to its default.
DEFAULT_OVERRIDES = _default_overrides(ExperimentConfig().to_dict())
yaml_values = st.one_of(
    st.sampled_from(["4", "true", "[1, 2]", "{a: 1}", "", "-1", ".inf", "null", "0x1F", "1e999"]),
    st.sampled_from(HOSTILE_YAML),
    odd_text,
)


def _valid_or_config_error(call: Any, *places: Any) -> Any:
    return valid_or_documented(call, ConfigError, *places)


def _round_trips(config: ExperimentConfig) -> None:
    """A config that loaded is valid: rebuilding it from its own dict gives the same config."""
    assert repr(ExperimentConfig.from_dict(config.to_dict())) == repr(config)


@given(key=st.sampled_from(KEYS) | odd_text, value=yaml_values, separator=st.sampled_from(["=", " = ", "", "=="]))
def test_any_override_parses_and_applies_or_names_itself(key: str, value: str, separator: str) -> None:
    _check_override(f"{key}{separator}{value}")


@given(text=st.sampled_from(DEFAULT_OVERRIDES))
def test_every_field_set_to_its_default_applies(text: str) -> None:
    assert _check_override(text) == ExperimentConfig()


def _check_override(text: str) -> ExperimentConfig | None:
    """The config ``text`` makes of the defaults, or None when it is refused with a ConfigError naming the
    override or its key (dotted, or the field's own name in a check across fields)."""
    parsed = _valid_or_config_error(lambda: parse_override(text), text)
    if parsed is None:
        return None
    key = parsed[0]
    config = _valid_or_config_error(
        lambda: ExperimentConfig().with_overrides(dict([parsed])), key or "''", key.rsplit(".", 1)[-1] or "''"
    )
    event(f"override {'applied' if config is not None else 'refused'}")
    if config is not None:
        _round_trips(config)
    return config


@st.composite
def experiment_files(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    """An experiment YAML file (the packaged refshapes/ldit, mutated, dumped, maybe corrupted) and maybe a
    base file it names (mutated too)."""
    top = draw(mutated(BASE, leaves=json_values))
    base = None
    if isinstance(top, dict) and draw(st.booleans()):
        base = draw(mutated({"train": dict(BASE["train"])}, leaves=json_values, max_mutations=1))
        top = {**top, "base": "base.yaml"}
    text = yaml.safe_dump(top, allow_unicode=draw(st.booleans())).encode("utf-8", "surrogatepass")
    kind = draw(st.sampled_from(("plain", "plain", "broken", "hostile")))
    if kind == "hostile":
        text = draw(st.sampled_from(HOSTILE_YAML)).encode()
    elif kind == "broken":
        text = draw(broken_bytes(text))
    return text, None if base is None else yaml.safe_dump(base).encode()


@given(files=experiment_files(), overrides=st.lists(st.tuples(st.sampled_from(KEYS), yaml_values), max_size=2))
def test_any_experiment_file_loads_or_names_the_file_or_key(
    files: tuple[bytes, bytes | None], overrides: list[tuple[str, str]]
) -> None:
    text, base = files
    with example_dir() as folder:
        path = folder / "experiment.yaml"
        path.write_bytes(text)
        if base is not None:
            (folder / "base.yaml").write_bytes(base)
        parsed = [
            _valid_or_config_error(lambda: parse_override(f"{key}={value}"), f"{key}={value}")
            for key, value in overrides
        ]
        # A key is named dotted from the top, or by its own name in a check across fields.
        keys = [
            name
            for data in (text, base or b"")
            for p in paths(load_yaml(data, where="the test") if _yaml_ok(data) else None)
            if p
            for name in (".".join(map(str, p)), str(p[-1]))
        ]
        config = _valid_or_config_error(
            lambda: load_experiment(str(path), dict(p for p in parsed if p)),
            path,
            folder / "base.yaml",
            *keys,
            *(name for key, _ in overrides for name in (key, key.rsplit(".", 1)[-1])),
        )
        event(f"experiment {'loaded' if config is not None else 'refused'}")
        if config is not None:
            _round_trips(config)


def _yaml_ok(text: bytes) -> bool:
    """Whether the test itself can parse ``text`` to list its keys (a failure is the reader's to report)."""
    try:
        load_yaml(text, where="the test")
    except Exception:  # any PyYAML failure: the keys are then not needed to name the place
        return False
    return True


# ---------------------------------------------------------------------------------------------------
# Regressions: the examples the properties found
# ---------------------------------------------------------------------------------------------------
def test_overrides_yaml_cannot_read_are_config_errors_naming_them() -> None:
    """PyYAML's errors (and the ValueError / KeyError / RecursionError of its constructors) escaped:
    a traceback instead of one line."""
    for text in (
        "train.lr=[",
        "train.lr=!!float abc",
        "train.flag=!!bool maybe",
        "train.lr=" + "[" * DEEP_NESTING,
        "train.lr=\x08",
        "a=!!python/object/apply:os.system [ls]",
        "a==",
    ):
        assert_raises_naming(
            ConfigError, lambda: parse_override(text), f"override {text[:30]!r}"[:-1], "not valid YAML"
        )


def _experiment(folder: Path, text: str | bytes, **files: str) -> Path:
    path = folder / "experiment.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    for name, content in files.items():
        (folder / name).write_text(content)
    return path


def test_experiment_files_yaml_cannot_read_name_the_file(tmp_path: Path) -> None:
    """Not UTF-8 was a bare UnicodeDecodeError, a non-text base a TypeError, a missing base a
    FileNotFoundError naming only the base."""
    cases = [
        (b"\x98 name: x", "cannot read config"),
        ("train: {lr: !!int abc}", "not valid YAML (ValueError"),
        ("base: [a]", "base ['a'] is not a config file"),
        ("base: nope.yaml", "base 'nope.yaml' is not a config file"),
    ]
    for index, (text, message) in enumerate(cases):
        (tmp_path / str(index)).mkdir()
        path = _experiment(tmp_path / str(index), text)
        assert_raises_naming(ConfigError, lambda: load_experiment(str(path)), str(path), message)


def test_config_values_and_keys_checks_did_not_cover_are_config_errors(tmp_path: Path) -> None:
    """An integer key (or true / false, read as booleans) was a TypeError building the message, a 400-digit lr
    an OverflowError, patch_size 0 a ZeroDivisionError, a flat injection key beside a non-mapping
    injection_options a TypeError."""
    cases = [
        ("model: {1: 2}", "unknown config key(s) model.1"),
        ("train: {no: 1}", "unknown config key(s) train.no"),
        ("train: {false: 1}", "unknown config key(s) train.False"),
        ("train: {lr: 1" + "0" * 400 + "}", "train.lr: 1000"),
        ("model: {patch_size: 0}", "model: patch_size 0"),
        ("model: {static_tokens: 1, injection_options: 5}", "model.injection_options: expected a mapping"),
    ]
    for index, (text, message) in enumerate(cases):
        (tmp_path / str(index)).mkdir()
        path = _experiment(tmp_path / str(index), text)
        assert_raises_naming(ConfigError, lambda: load_experiment(str(path)), message)
