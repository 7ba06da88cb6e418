"""The pinned environments must not drift apart.

``requirements.lock`` (used by ``make env``) and the ``pip:`` section of
``environment.yml`` (conda / Binder) must pin exactly the same packages at exactly
the same versions, and both must satisfy the ranges declared in ``pyproject.toml``.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
ENV = ROOT / "environment.yml"
PYPROJECT = ROOT / "pyproject.toml"

# Packages that must never be pinned in the lock: the project itself and the installer tools.
NOT_PINNED = {"chemomech", "pip", "setuptools", "wheel"}


def _normalise(name: str) -> str:
    """PEP 503 name normalisation: ``Jupyter_Book`` and ``jupyter-book`` are the same package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse_pins(lines: list[str], *, source: str) -> dict[str, str]:
    """Turn ``name==version`` strings into ``{normalised name: version}``; reject anything else."""
    pins: dict[str, str] = {}
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise ValueError(f"{source}: {line!r} is not an exact pin (name==version)")
        name = _normalise(req.name)
        if name in pins:
            raise ValueError(f"{source}: {req.name} is pinned twice")
        pins[name] = specs[0].version
    return pins


def _load_env() -> dict:
    return yaml.safe_load(ENV.read_text())


def _env_pip_section(env: dict) -> list[str]:
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    if len(sections) != 1:
        raise ValueError(f"environment.yml needs exactly one pip: section, found {len(sections)}")
    return [str(item) for item in sections[0]]


def _pin_differences(lock: dict[str, str], env: dict[str, str]) -> list[str]:
    """Describe every package whose pin differs between, or is missing from, the two files."""
    problems = []
    for name in sorted(set(lock) | set(env)):
        in_lock, in_env = lock.get(name), env.get(name)
        if in_lock == in_env:
            continue
        problems.append(
            f"{name}: requirements.lock has {in_lock or 'no pin'}, "
            f"environment.yml has {in_env or 'no pin'}"
        )
    return problems


@pytest.fixture(scope="module")
def lock_pins() -> dict[str, str]:
    return _parse_pins(LOCK.read_text().splitlines(), source="requirements.lock")


@pytest.fixture(scope="module")
def env_pins() -> dict[str, str]:
    pip_items = [item for item in _env_pip_section(_load_env()) if item.strip() != "-e ."]
    return _parse_pins(pip_items, source="environment.yml")


def test_lock_pins_the_core_stack(lock_pins):
    # A truncated or empty lock would make every other check pass vacuously.
    for name in ["numpy", "scipy", "xarray", "py4dstem", "jupyter-book", "pytest", "nbval"]:
        assert name in lock_pins, f"requirements.lock does not pin {name}"
    assert not NOT_PINNED & set(lock_pins), (
        f"requirements.lock must not pin {sorted(NOT_PINNED & set(lock_pins))}"
    )


def test_environment_yml_matches_lock(lock_pins, env_pins):
    problems = _pin_differences(lock_pins, env_pins)
    assert not problems, "pins drifted apart:\n  " + "\n  ".join(problems)


def test_pin_difference_message_names_package_and_versions():
    lock = {"numpy": "1.26.4", "scipy": "1.11.0"}
    env = {"numpy": "1.26.3", "xarray": "2024.1.0"}
    problems = _pin_differences(lock, env)
    assert problems == [
        "numpy: requirements.lock has 1.26.4, environment.yml has 1.26.3",
        "scipy: requirements.lock has 1.11.0, environment.yml has no pin",
        "xarray: requirements.lock has no pin, environment.yml has 2024.1.0",
    ]


def test_parse_pins_rejects_ranges_and_duplicates():
    with pytest.raises(ValueError, match="not an exact pin"):
        _parse_pins(["numpy>=1.24"], source="x")
    with pytest.raises(ValueError, match="pinned twice"):
        _parse_pins(["Jupyter_Book==1.0.4", "jupyter-book==1.0.4"], source="x")


def test_environment_yml_installs_python_311_and_the_package():
    env = _load_env()
    assert env["name"] == "chemomech"
    assert env["channels"] == ["conda-forge"]
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert pythons == ["python=3.11"], f"expected python=3.11 in environment.yml, got {pythons}"
    assert "-e ." in [item.strip() for item in _env_pip_section(env)]


@pytest.mark.parametrize(
    ("name", "allowed"),
    [("jupyter-book", SpecifierSet(">=1.0.4,<2")), ("numpy", SpecifierSet("<2"))],
)
def test_key_pins_are_in_supported_range(lock_pins, env_pins, name, allowed):
    for source, pins in [("requirements.lock", lock_pins), ("environment.yml", env_pins)]:
        assert name in pins, f"{source} does not pin {name}"
        assert Version(pins[name]) in allowed, f"{source} pins {name}=={pins[name]}, need {allowed}"


def test_lock_satisfies_pyproject_ranges(lock_pins):
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    declared = list(project["dependencies"])
    for extra in ("test", "book"):
        declared += project["optional-dependencies"][extra]
    assert len(declared) > 20, "pyproject.toml lost its dependency lists"
    problems = []
    for spec in declared:
        req = Requirement(spec)
        pinned = lock_pins.get(_normalise(req.name))
        if pinned is None:
            problems.append(f"{req.name}: declared in pyproject.toml but not pinned")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req.name}: pinned {pinned}, pyproject.toml wants {req.specifier}")
    assert not problems, "requirements.lock vs pyproject.toml:\n  " + "\n  ".join(problems)
