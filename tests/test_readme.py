"""The README is tested: every ``saesteer ...`` command it shows parses with the real CLI parser (and,
in the slow suite, runs), its Python example runs, its links resolve, and the user docs carry no
development-log markers."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
USER_DOCS = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]

# Commands the slow test does not run, and why (each is run by its own tests or needs outside input).
NOT_RUN = {
    "demo": "tests/cli/test_demo.py runs it",
    "bench": "tests/bench runs it at small shapes",
    "organism": "training needs the user's prompt files and ~25 minutes",
    "serve": "needs vLLM; tests/vllm_plugin/test_serve.py runs it (make test-vllm)",
}


def code_blocks(text: str) -> list[tuple[str, str]]:
    """``[(language, body)]`` of every fenced code block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


#: The README section whose commands need a hub model and network: parsed, never run.
NETWORK_SECTION = "## Reproducing the papers on Gemma-2-2B-it"


def readme_commands(offline_only: bool = False) -> list[list[str]]:
    """argv (without the leading ``saesteer``) of every README shell line that starts with ``saesteer ``
    (``offline_only``: outside :data:`NETWORK_SECTION`)."""
    text = README.read_text()
    if offline_only:
        a = text.index(NETWORK_SECTION)
        b = text.find("\n## ", a + len(NETWORK_SECTION))
        text = text[:a] + (text[b:] if b >= 0 else "")
    cmds = []
    for lang, body in code_blocks(text):
        if lang not in ("bash", "sh", "console", ""):
            continue
        for line in body.splitlines():
            if line.startswith("saesteer "):
                cmds.append(shlex.split(line, comments=True)[1:])
    return cmds


def python_blocks() -> list[str]:
    return [body for lang, body in code_blocks(README.read_text()) if lang == "python"]


def test_readme_shows_every_subcommand():
    from saesteer.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    shown = {argv[0] for argv in readme_commands()}
    assert len(readme_commands()) >= len(sub.choices)
    assert shown == set(sub.choices), f"README shows {sorted(shown)}, the CLI has {sorted(sub.choices)}"


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses(argv):
    from saesteer.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args, extra = build_parser().parse_known_args(argv)
            if extra and not getattr(args, "pass_through", False):  # as saesteer.cli.main does
                pytest.fail(f"saesteer {' '.join(argv)}: unrecognized arguments {extra}")
    except SystemExit as e:  # argparse rejects with exit code 2 and a usage line on stderr
        pytest.fail(f"saesteer {' '.join(argv)}: argparse exit {e.code}: {err.getvalue().strip()}")
    assert callable(getattr(args, "func", None)), f"saesteer {' '.join(argv)} names no runnable subcommand"


def test_readme_python_example_runs(capsys):
    import torch

    blocks = python_blocks()
    assert len(blocks) == 1, "the README has one Python example"
    ns: dict = {}
    exec(compile(blocks[0], str(README), "exec"), ns)
    printed = capsys.readouterr().out.strip()
    assert printed, "the example prints the steered reply"
    # The output the README shows is the one the example prints, and the edit is visible: unsteered,
    # the organism refuses (the README says what it answers then).
    text = README.read_text()
    assert f"```text\n{printed}\n```" in text, f"the README does not show the example's output {printed!r}"
    unsteered = ns["model"].generate(**ns["inputs"], max_new_tokens=24, do_sample=False)
    before = ns["tok"].decode(unsteered[0, ns["inputs"]["input_ids"].shape[1]:], skip_special_tokens=True)
    assert before != printed and f"the organism answers `{before}`" in text
    # It generated new tokens after the prompt, and the steering hook is gone after the with-block.
    assert isinstance(ns["out"], torch.Tensor) and ns["out"].shape[1] > ns["inputs"]["input_ids"].shape[1]
    hooks = [m for m in ns["model"].modules() if m._forward_hooks or m._forward_pre_hooks]
    assert not hooks, "saesteer.steer left hooks on the model"


def test_readme_links_resolve():
    links = re.findall(r"\]\(([^)#:]+)\)", README.read_text())
    assert links
    missing = [p for p in links if not (ROOT / p).exists()]
    assert not missing, f"README links to missing files: {missing}"


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.name)
def test_user_docs_have_no_log_markers(path):
    hits = re.findall(r"\b(?:issue|session)s? #?\d+", path.read_text(), re.I)
    assert not hits, f"{path.name} has development-log markers: {hits}"


@pytest.mark.slow
def test_readme_commands_run(tmp_path, monkeypatch):
    """The README's commands, verbatim and in order (discover writes the spec eval reads), run from
    a fresh directory and exit 0."""
    from saesteer.cli import main

    monkeypatch.chdir(tmp_path)
    ran = []
    for argv in readme_commands(offline_only=True):
        if argv[0] in NOT_RUN:
            continue
        assert main(argv) == 0, f"saesteer {' '.join(argv)} failed"
        ran.append(argv[0])
    assert {"discover", "eval", "generate"} <= set(ran)
    assert (tmp_path / "runs/discover/spec.json").is_file()
    assert (tmp_path / "runs/eval/eval.json").is_file()
