"""The Dockerfile's structure and hardening, checked by parsing it (image builds need Docker, which CI lacks).

The parser covers what this Dockerfile uses: comments, parser directives, line continuations, ARG before
the first FROM, `FROM image AS name`, and the JSON (exec) and shell forms of arguments.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "libc6-dev", "python3-dev", "git", "curl", "wget")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # the raw argument text, continuations joined
    line: int  # first line, 1-based

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form argument, or None for the shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"line {self.line}: {self.keyword} exec form must be a list of strings")
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    index: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def run_text(self) -> str:
        return "\n".join(i.args for i in self.all("RUN"))

    def env(self) -> dict[str, str]:
        result: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.args):
                key, sep, value = token.partition("=")
                if not sep:
                    raise ValueError(f"line {instruction.line}: use ENV KEY=value")
                result[key] = value
        return result


@dataclass
class Dockerfile:
    global_args: list[Instruction]
    stages: list[Stage]

    @property
    def targets(self) -> dict[str, Stage]:
        return {s.name: s for s in self.stages if s.name}

    def lineage(self, stage: Stage) -> list[Stage]:
        """The stage and the stages it is built FROM, nearest first (external images end the chain)."""
        chain = [stage]
        while chain[-1].base in self.targets:
            chain.append(self.targets[chain[-1].base])
        return chain

    def effective(self, stage: Stage, keyword: str) -> Instruction | None:
        """The instruction in force for a target (inherited from parent stages if not set)."""
        for ancestor in self.lineage(stage):
            found = ancestor.last(keyword)
            if found is not None:
                return found
        return None

    def effective_env(self, stage: Stage) -> dict[str, str]:
        env: dict[str, str] = {}
        for ancestor in reversed(self.lineage(stage)):
            env.update(ancestor.env())
        return env


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, joined text) of each instruction; comments and blank lines dropped."""
    result: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comment lines may sit inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        result.append((start, " ".join(p for p in pending if p)))
        pending = []
    if pending:
        raise ValueError(f"line {start}: the file ends inside a continued instruction")
    return result


def parse(text: str) -> Dockerfile:
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    for number, line in logical_lines(text):
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), number)
        if instruction.keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", instruction.args, re.IGNORECASE)
            if match is None:
                raise ValueError(f"line {number}: cannot parse FROM {instruction.args!r}")
            stages.append(Stage(match.group(1), match.group(2), len(stages)))
        elif not stages:
            if instruction.keyword != "ARG":
                raise ValueError(f"line {number}: only ARG may come before the first FROM")
            global_args.append(instruction)
        else:
            stages[-1].instructions.append(instruction)
    if not stages:
        raise ValueError("no FROM instruction")
    return Dockerfile(global_args, stages)


def resolve(value: str, args: list[Instruction]) -> str:
    """Substitute ${NAME} / $NAME with the defaults of global ARGs."""
    defaults = dict(a.args.split("=", 1) for a in args if "=" in a.args)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), value)


# --- the parser itself ---


def test_parser_handles_continuations_comments_and_stages() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=python:3.11-slim\n"
        "FROM ${BASE} AS build\n"
        "RUN echo one \\\n"
        "    # a comment inside the continuation\n"
        "    && echo two\n"
        "\n"
        "FROM build as final\n"
        'ENV A=1 B="two words"\n'
        'CMD ["serve"]\n'
    )
    parsed = parse(text)
    assert [s.name for s in parsed.stages] == ["build", "final"]
    assert resolve(parsed.stages[0].base, parsed.global_args) == "python:3.11-slim"
    assert parsed.stages[0].run_text() == "echo one && echo two"
    assert parsed.stages[0].all("RUN")[0].line == 4
    final = parsed.targets["final"]
    assert [s.name for s in parsed.lineage(final)] == ["final", "build"]
    assert final.env() == {"A": "1", "B": "two words"}
    cmd = final.last("CMD")
    assert cmd is not None and cmd.exec_form() == ["serve"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("RUN true\nFROM x\n", "only ARG"),
        ("ARG X=1\n", "no FROM"),
        ("FROM x\nRUN a \\\n", "ends inside"),
    ],
)
def test_parser_rejects_malformed_files(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(text)


# --- the project's Dockerfile ---


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse(DOCKERFILE.read_text())


def test_targets_and_base_image(dockerfile: Dockerfile) -> None:
    assert {"build", "runtime", "operator"} <= set(dockerfile.targets)
    external = {resolve(s.base, dockerfile.global_args) for s in dockerfile.stages if s.base not in dockerfile.targets}
    assert len(external) == 1, external
    (image,) = external
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", image), f"base image must be a pinned slim tag: {image}"
    assert "@sha256:" not in image
    for name in ("runtime", "operator"):
        assert "build" not in {s.name for s in dockerfile.lineage(dockerfile.targets[name])}, (
            f"{name} must not be built on top of the build stage"
        )


@pytest.mark.parametrize("side", ["runtime", "operator"])
def test_each_side_builds_its_own_wheel_into_a_venv(dockerfile: Dockerfile, side: str) -> None:
    build = dockerfile.targets[f"build-{side}"]
    assert build.base == "build"
    run = build.run_text()
    assert "python -m venv /opt/venv" in run
    assert re.search(rf"AVR_PACKAGES=avr_{side} \S+ wheel --no-deps\b", run), "a wheel of this side only"
    assert re.search(rf"pip install \"\$\(ls /wheels/\*\.whl\)\[{side}\]\"", run), "with this side's extra"
    copied = " ".join(i.args for i in dockerfile.targets["build"].all("COPY"))
    for path in ("pyproject.toml", "setup.py", "README.md", "runtime/", "operator/"):
        assert path in copied, f"the build stage must COPY {path}"
    assert "cluster/" not in copied, "the dev cluster is in no image"


@pytest.mark.parametrize("target", ["runtime", "operator"])
def test_final_stages_are_lean_and_unprivileged(dockerfile: Dockerfile, target: str) -> None:
    stage = dockerfile.targets[target]
    lineage = dockerfile.lineage(stage)
    installs = " ".join(s.run_text() for s in lineage)
    for tool in BUILD_TOOLS:
        assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", installs), f"{target} installs {tool}"
    copies = [i for s in lineage for i in s.all("COPY")]
    assert [i.args for i in copies] == [f"--from=build-{target} /opt/venv /opt/venv"], "only its own side's venv"
    for s in lineage:
        if "apt-get install" in s.run_text():
            assert "rm -rf /var/lib/apt/lists/*" in s.run_text()
            assert "--no-install-recommends" in s.run_text()
    user = dockerfile.effective(stage, "USER")
    assert user is not None and user is stage.last("USER"), "USER must be set in the final stage itself"
    uid = user.args.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"USER must be a numeric non-root id, got {user.args!r}"
    env = dockerfile.effective_env(stage)
    assert env.get("PYTHONSAFEPATH") == "1"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PATH", "").startswith("/opt/venv/bin:")
    assert "pip install" not in installs or "PIP_NO_CACHE_DIR" in env or "--no-cache-dir" in installs


def test_runtime_target(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.targets["runtime"]
    entrypoint, cmd = runtime.last("ENTRYPOINT"), runtime.last("CMD")
    assert entrypoint is not None and entrypoint.exec_form() == ["avr-runtime"]
    assert cmd is not None and cmd.exec_form() == ["serve"]
    assert re.search(r"apt-get install\b.*\blibopus0\b", runtime.run_text())
    exposed = {p for i in runtime.all("EXPOSE") for p in i.args.split()}
    assert {"5001", "3000"} <= exposed
    healthcheck = runtime.last("HEALTHCHECK")
    assert healthcheck is not None
    options, _, command = healthcheck.args.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"], "slim images have no curl: the check is a Python one-liner"
    assert "127.0.0.1" in argv[2] and "/health" in argv[2] and "3000" in argv[2]
    compile(argv[2], "<healthcheck>", "exec")  # the one-liner is valid Python


def test_operator_target(dockerfile: Dockerfile) -> None:
    operator = dockerfile.targets["operator"]
    entrypoint, cmd = operator.last("ENTRYPOINT"), operator.last("CMD")
    assert entrypoint is not None and cmd is not None
    assert (entrypoint.exec_form() or []) + (cmd.exec_form() or []) == ["avr-operator", "run"]
    assert "libopus0" not in " ".join(s.run_text() for s in dockerfile.lineage(operator))


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    patterns.discard("")
    for required in (".git", ".venv", "tests", "bench", "**/__pycache__", ".mypy_cache", ".pytest_cache", "*.egg-info"):
        assert required in patterns, f".dockerignore must exclude {required}"
    copied = {"pyproject.toml", "setup.py", "README.md", "runtime", "operator"}
    assert not copied & patterns, "files the build stage copies must stay in the context"
    assert "cluster" in patterns, "the dev cluster stays out of the build context"
