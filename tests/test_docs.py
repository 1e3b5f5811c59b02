"""The pages against the code: every shell block in README.md and docs/*.md parses (``bash -n``),
and every flag a page gives launch.py, train.py or play.py is one of that script's flags, with a
value its parser takes. A renamed flag or a changed type then fails here, not on a user's terminal.

The parsers are the scripts' own (``flags.build_parser`` on their config classes, what
``--help`` prints), read in-process: importing the three scripts loads neither TensorFlow nor Ray.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import launch
import play
import train
from config import Config
from flags import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = {"bash", "sh", "shell", "console"}
PARSERS = {
    "launch.py": build_parser(Config, launch.__doc__, prog="launch.py"),
    "train.py": build_parser(train.TrainConfig, train.__doc__, train.EPILOG, prog="train.py"),
    "play.py": build_parser(play.PlayConfig, play.__doc__, play.EPILOG, prog="play.py"),
}
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
FLAG = re.compile(r"--[a-z][a-z0-9-]*")
CONTROL = {";", "&&", "||", "|", "&", "(", ")"}
# ./dqn launch, python train.py, ray submit cluster.yaml launch.py -- ..., path/to/play.py
DQN_COMMANDS = {"launch": "launch.py", "train": "train.py", "play": "play.py"}


@dataclass
class Block:
    page: str
    line: int
    lang: str
    body: str


def blocks(page: Path) -> list[Block]:
    """Fenced code blocks, list-item indentation removed."""
    found, lines, i = [], page.read_text().splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang, start, body = len(match.group(1)), match.group(2), i + 1, []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        found.append(Block(page.name, start, lang, "\n".join(body) + "\n"))
        i += 1
    return found


def shell_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page) if b.lang in SHELLS]


def commands(text: str) -> list[list[str]]:
    """Shell tokens of each command line (continuations joined, comments dropped; a quote left open
    takes the next line), split at ; && || | &."""
    out: list[list[str]] = []
    pending = ""
    for line in text.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        lexer = shlex.shlex(pending, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split, lexer.commenters = True, "#"
        try:
            tokens = list(lexer)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        pending, current = "", []
        for token in tokens:
            if token in CONTROL:
                out.append(current)
                current = []
            else:
                current.append(token)
        out.append(current)
    return [c for c in out if c]


def script_calls(tokens: list[str]) -> list[tuple[str, list[str]]]:
    """``[(script, its arguments)]`` when one command's ``tokens`` call launch.py, train.py or
    play.py (directly, through ./dqn, python or ray submit), else ``[]``."""
    for i, token in enumerate(tokens):
        script = Path(token).name if Path(token).name in PARSERS else None
        if token.endswith("dqn") and i + 1 < len(tokens) and tokens[i + 1] in DQN_COMMANDS:
            script, i = DQN_COMMANDS[tokens[i + 1]], i + 1
        if script:
            args = tokens[i + 1:]
            return [(script, args[1:] if args[:1] == ["--"] else args)]  # ray submit ... launch.py -- ARGS
    return []


def refusal(script: str, args: list[str]) -> str | None:
    """The script's parser's one-line error for ``args``, or None when it takes them."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            PARSERS[script].parse_args(args)
    except SystemExit as exc:
        return None if exc.code == 0 else err.getvalue().strip()  # --help exits 0
    return None


def help_flags(script: str) -> set[str]:
    """The option names ``SCRIPT --help`` lists."""
    return set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", PARSERS[script].format_help(), re.M))


SCRIPT_NAME = re.compile(r"(?<![\w/.-])(launch|train|play)\.py\b|\./dqn (launch|train|play)\b")
OTHER_SCRIPT = re.compile(r"[\w/]+\.py\b")


def prose_spans(page: Path) -> list[tuple[int, set[str], str]]:
    """``(line, scripts, span)`` for each inline code span outside code blocks, with the scripts
    its flags belong to: those its section heading and its paragraph (table row, list item) name;
    none when neither names one. Where the paragraph names another program (a bench/ script,
    ``ray start``), only the heading's count: its flags may be that program's. A paragraph or row
    that quotes an error message (reliability.md's bad inputs) is left out."""
    out, heading, in_block = [], set(), False
    paragraph: list[tuple[int, str]] = []

    def scripts_in(text: str) -> set[str]:
        return {f"{a or b}.py" for a, b in SCRIPT_NAME.findall(text)}

    def flush() -> None:
        text = " ".join(line for _, line in paragraph)
        named = scripts_in(text)
        others = {m for m in OTHER_SCRIPT.findall(text) if m not in PARSERS}
        others |= set(re.findall(r"`((?:ray|pip|aws|ssh|tensorboard) [^`]*)`", text))
        if re.search(r"`[^`]*error: ", text):  # a quoted error message: its flags may be wrong on purpose
            paragraph.clear()
            return
        context = heading if others else heading | named
        for number, line in paragraph:
            out.extend((number, context, span) for span in re.findall(r"`([^`]+)`", line))
        paragraph.clear()

    for number, line in enumerate(page.read_text().splitlines(), 1):
        if FENCE.match(line) or re.match(r"^\s*```\s*$", line):
            flush()
            in_block = not in_block
            continue
        if in_block:
            continue
        if line.startswith("#"):
            flush()
            heading = scripts_in(line)
        elif not line.strip() or line.startswith("|") or re.match(r"^\s*([-*]|\d+\.) ", line):
            flush()  # a blank line, a table row or a list item starts a new unit
            if line.strip():
                paragraph.append((number, line))
        else:
            paragraph.append((number, line))
    flush()
    return out


@pytest.mark.parametrize("block", shell_blocks(), ids=lambda b: f"{b.page}:{b.line}")
def test_shell_blocks_parse(block: Block) -> None:
    proc = subprocess.run(["bash", "-n"], input=block.body, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{block.page}:{block.line}: {proc.stderr}"


def test_there_are_shell_blocks_and_commands_to_check() -> None:
    """Guards the parsers above: were they to find nothing, the checks below would pass on nothing."""
    found = shell_blocks()
    assert {"README.md", "cluster.md"} <= {b.page for b in found}
    calls = [c for b in found for tokens in commands(b.body) for c in script_calls(tokens)]
    assert {script for script, _ in calls} == set(PARSERS)
    assert ("launch.py", ["--address", "auto", "--explorer-resource", "explorer", "--num-actors", "16",
                          "--samples-per-insert", "1", "--batch-size", "512"]) in calls


def test_the_checks_catch_a_wrong_flag_and_a_wrong_value() -> None:
    assert refusal("launch.py", ["--num-actor", "2"]) is not None  # abbreviations are refused too
    assert "invalid int value: 'auto'" in refusal("launch.py", ["--learner-threads", "auto"])
    assert refusal("launch.py", ["--learner-threads", "0"]) is None
    assert "--num-actors" in help_flags("launch.py") and "--num-actors" not in help_flags("train.py")


def test_commands_in_code_blocks_use_real_flags_and_values() -> None:
    wrong = []
    for block in [b for page in PAGES for b in blocks(page) if b.lang in SHELLS | {""}]:
        for tokens in commands(block.body):
            for script, args in script_calls(tokens):
                missing = [f for f in FLAG.findall(" ".join(a for a in args if a.startswith("--")))
                           if f not in help_flags(script)]
                problem = f"not in its --help: {missing}" if missing else refusal(script, args)
                if problem:
                    wrong.append(f"{block.page}:{block.line}: {script} {' '.join(args)}: {problem}")
    assert not wrong, "\n".join(wrong)


def test_flags_named_in_prose_exist_in_the_script_they_are_named_for() -> None:
    """A code span that is a command (``./dqn launch --resume DIR``) is checked like a code block;
    a span that starts with a flag (``--double-dqn true``) must be a flag, with that value, of a
    script named in its paragraph or section."""
    wrong = []
    for page in PAGES:
        for line, context, span in prose_spans(page):
            try:
                tokens = shlex.split(span)
            except ValueError:
                continue
            calls = script_calls(tokens)
            if not calls and FLAG.fullmatch(tokens[0].split("=")[0] if tokens else "") and context:
                flag = tokens[0].split("=")[0]
                # a bare flag, a flag with a value, or "--a, --b" lists: check the names; check a value when given
                names = FLAG.findall(span) if "," in span else [flag]
                args = tokens if len(tokens) <= 2 and "," not in span and "|" not in span else [flag]
                if not any(all(n in help_flags(s) for n in names) and not _value_refused(s, args)
                           for s in context):
                    wrong.append(f"{page.name}:{line}: `{span}` is not a flag of {' or '.join(sorted(context))}"
                                 f" (or not with that value)")
            for script, args in calls:
                args = [a for a in args if not re.fullmatch(r"[A-Z_]+|\.\.\.|\[.*\]", a)]  # DIR, N, ...
                missing = [f for f in args if FLAG.fullmatch(f.split("=")[0]) and f.split("=")[0] not in
                           help_flags(script)]
                if missing:
                    wrong.append(f"{page.name}:{line}: `{span}`: {missing} not in {script} --help")
    assert not wrong, "\n".join(wrong)


def _value_refused(script: str, args: list[str]) -> bool:
    """A flag with a value the parser refuses (``--learner-threads auto``); a bare switch or a
    placeholder value (``--weights FILE``, ``N``) is not judged."""
    if len(args) < 2 or re.fullmatch(r"[A-Z_]+|[A-Z]+:[A-Z]+|\.\.\.|<.*>", args[1]):
        return False
    return refusal(script, args) is not None


def test_prose_parser_finds_the_flags_of_each_section() -> None:
    """Guards :func:`prose_spans`: README's flags are attributed to the script of their section."""
    spans = prose_spans(ROOT / "README.md")
    by_span = {}
    for _, scripts, span in spans:
        by_span.setdefault(span, []).append(scripts)
    for span in ("--init-weights FILE", "--snapshot-every N"):  # in launch.py's section and train.py's
        assert any("launch.py" in c for c in by_span[span]) and any("train.py" in c for c in by_span[span])
    assert "play.py" in by_span["--epsilon 0.05"][0]


def test_commands_splits_lines_continuations_and_control() -> None:
    text = "a --x \\\n  --y # c --z\nb 'q\nr' && ./dqn play --w f ; python launch.py -- --num-actors 2\n"
    assert commands(text) == [["a", "--x", "--y"], ["b", "q\nr"], ["./dqn", "play", "--w", "f"],
                              ["python", "launch.py", "--", "--num-actors", "2"]]
    assert script_calls(commands(text)[2]) == [("play.py", ["--w", "f"])]
    assert script_calls(commands(text)[3]) == [("launch.py", ["--num-actors", "2"])]
    assert script_calls(commands(text)[0]) == []
