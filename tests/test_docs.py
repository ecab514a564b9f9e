"""What README.md and docs/*.md show is real: every `make` target is one of the Makefile's, every `distinit`
command and option is one of the CLI's, every relative link and #anchor resolves, every repository path and
`distinit.*` module they name exists, and the README fits a newcomer's five minutes (at most 250 lines).

Commands are read from fenced code blocks (but not ```text ones: a program's output) and inline code spans; paths from inline spans and code blocks (a
word whose first folder is one of the checkout's source folders, or a top-level file such as `Makefile`). Each
check is also run on a small bad page, so a check that could never fail would show here."""

from __future__ import annotations

import re
import shlex
import unicodedata
from pathlib import Path

import click
import pytest

from distinit.pipeline.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250
# A word naming a file of the checkout starts with one of these folders, or is one of the top-level files.
SOURCE_FOLDERS = (".ci", "bench", "configs", "distill", "docs", "evaluate", "extract", "pipeline", "tests")
TOP_LEVEL_FILES = ("Makefile", "pyproject.toml", "requirements.txt", "requirements-pose.txt",
                   "requirements-detectron2.txt", "environment.yml", "hubconf.py", "LICENSE", "README.md")
PATH_WORD = re.compile(r"^(?:%s)/[\w.*/-]*$" % "|".join(re.escape(folder) for folder in SOURCE_FOLDERS))
MODULE_WORD = re.compile(r"^distinit(?:\.[A-Za-z_]\w*)+$")
GENERIC_MODULES = ("pipeline", "extract", "distill", "evaluate")  # installed only as distinit.<name>
FENCE = re.compile(r"^\s*(```|~~~)(.*)$")
SPAN = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


# ---------------------------------------------------------------------------------------------- reading a page
def parse_page(text: str) -> tuple[list[str], list[str], str]:
    """(code lines from fenced blocks, continuations joined; inline code spans; prose without any code)."""
    code_lines, prose, in_fence, output_block, pending = [], [], False, False, ""
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence:
            in_fence = not in_fence
            output_block = in_fence and fence.group(2).strip() == "text"  # what a program prints, not commands
            continue
        if output_block:
            continue
        if in_fence:
            pending += line
            if line.rstrip().endswith("\\"):
                pending = pending.rstrip()[:-1] + " "
                continue
            code_lines.append(pending)
            pending = ""
        else:
            prose.append(line)
    prose_text = re.sub(r"<!--.*?-->", "", "\n".join(prose), flags=re.S)
    spans = [span.strip().replace("\\|", "|") for _, span in SPAN.findall(prose_text)]
    return code_lines, [re.sub(r"\s+", " ", span) for span in spans], SPAN.sub("", prose_text)


def command_words(snippet: str) -> list[list[str]]:
    """Each command of a snippet as words: `a && b; c` is three; a `$ ` prompt, `# comments` and <placeholders> go."""
    snippet = re.sub(r"<[^<>]*>", "X", snippet.strip().removeprefix("$ "))
    commands = []
    for piece in re.split(r"\s(?:&&|\|\||;)\s|;\s", snippet):
        try:
            words = shlex.split(piece, comments=True)
        except ValueError:  # an unbalanced quote in prose-like text
            words = piece.split()
        if words:
            commands.append(words)
    return commands


# ------------------------------------------------------------------------------------------------- make targets
def makefile_targets(makefile: Path = ROOT / "Makefile") -> set[str]:
    """The targets the Makefile's rule lines (and its .PHONY list) define."""
    targets, continued = set(), False
    for line in makefile.read_text().splitlines():
        starts_rule = not continued and line[:1] not in ("\t", " ", "#", "")
        continued = line.rstrip().endswith("\\")
        rule = re.match(r"^([^:=#]+?)\s*::?(?!=)(.*)$", line) if starts_rule else None
        if not rule:
            continue
        names = rule.group(1).split() + (rule.group(2).split("##")[0].split() if rule.group(1) == ".PHONY" else [])
        targets.update(name for name in names if "$" not in name and "%" not in name)
    return targets


def make_problems(snippets: list[str], targets: set[str]) -> list[str]:
    problems = []
    for snippet in snippets:
        for words in command_words(snippet):
            if words[0] != "make":
                continue
            for word in words[1:]:
                if word.startswith("-") or re.match(r"^[A-Za-z_]\w*=", word) or word in ("...", "X"):
                    continue
                if word not in targets:
                    problems.append(f"`{snippet}`: make has no target {word!r}")
    return problems


# ------------------------------------------------------------------------------------------- distinit commands
def option_names(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for parameter in command.params:
        if isinstance(parameter, click.Option):
            names.update(parameter.opts + parameter.secondary_opts)
    return names


def distinit_words(words: list[str]) -> list[str] | None:
    """The words after the program when `words` runs distinit (`distinit`, `.venv/bin/distinit`, `-m distinit.pipeline`)."""
    if words[0] == "distinit" or words[0].endswith("/distinit"):
        return words[1:]
    if "-m" in words[:-1] and words[words.index("-m") + 1] == "distinit.pipeline":
        return words[words.index("-m") + 2:]
    return None


def distinit_problems(snippets: list[str], group: click.Group = cli_main) -> list[str]:
    problems = []
    for snippet in snippets:
        for words in command_words(snippet):
            if "-m" in words[:-1] and words[words.index("-m") + 1].split(".")[0] in GENERIC_MODULES:
                problems.append(f"`{snippet}`: the stages install as distinit.<stage>; write -m distinit.pipeline")
                continue
            rest = distinit_words(words)
            if rest is None:
                continue
            command, context = group, ["distinit"]
            while rest and rest[0].startswith("-") and isinstance(command, click.Group):
                if rest[0] not in option_names(command) and not re.fullmatch(r"-v+", rest[0]):
                    problems.append(f"`{snippet}`: distinit has no option {rest[0]}")
                rest = rest[1:]
            while isinstance(command, click.Group) and rest and rest[0] not in ("...", "X"):
                if rest[0] not in command.commands:
                    problems.append(f"`{snippet}`: {' '.join(context)} has no command {rest[0]!r}")
                    break
                command, context, rest = command.commands[rest[0]], context + [rest[0]], rest[1:]
            else:
                known = option_names(command)
                for word in rest:
                    option = word.strip("[]()|,").split("=")[0]
                    if re.match(r"^--?[A-Za-z]", option) and option not in known:
                        problems.append(f"`{snippet}`: {' '.join(context)} has no option {option}")
    return problems


# ---------------------------------------------------------------------------------------------- links, anchors
def slug(heading: str) -> str:
    """GitHub's heading anchor: the rendered text lower-cased, punctuation dropped, spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    kept = (char for char in text if char in " -" or unicodedata.category(char)[0] in "LMN"
            or unicodedata.category(char) == "Pc")
    return "".join(kept).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    in_fence = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            seen[base if base not in seen else f"{base}-{seen[base]}"] = 0
            seen[base] = seen.get(base, 0) + 1
    return set(seen)


def link_problems(prose: str, page: Path, text: str) -> list[str]:
    """Relative links of `page` (whose markdown is `text`) that name no file, or no heading of it."""
    problems = []
    for target in LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if file_part and not linked.exists():
            problems.append(f"{page.name}: link {target} names no file")
        elif anchor and (linked.is_dir() or anchor not in anchors(linked.read_text() if file_part else text)):
            problems.append(f"{page.name}: link {target}: {linked.name} has no heading #{anchor}")
    return problems


# ----------------------------------------------------------------------------------------- paths and modules
def path_problems(snippets: list[str], root: Path = ROOT) -> list[str]:
    problems = []
    for snippet in snippets:
        for word in re.split(r"[\s=]+", snippet):
            word = word.strip("()[]{},;:'\"").removesuffix("'s")
            if not (PATH_WORD.match(word) or word in TOP_LEVEL_FILES) or re.search(r"<|\{|\.\.\.|…|KEY", word):
                continue
            found = any(root.glob(word)) if "*" in word else (root / word).exists()
            if not found:
                problems.append(f"`{snippet}`: {word} is not in the checkout")
    return problems


def module_problems(snippets: list[str], root: Path = ROOT) -> list[str]:
    """`distinit.pipeline.video` and `distinit.distill.trunks.build_trunk` name a module (and a name defined in it)."""
    problems = []
    for snippet in snippets:
        if not MODULE_WORD.match(snippet):
            continue
        parts, path = snippet.split(".")[1:], root
        while parts and ((path / parts[0]).is_dir() or (path / f"{parts[0]}.py").is_file()):
            path, parts = path / parts[0], parts[1:]
        source = path / "__init__.py" if path.is_dir() else path
        names_defined = not parts or (len(parts) == 1 and source.is_file() and re.search(
            rf"^(?:\s*(?:def|class)\s+{parts[0]}\b|{parts[0]}\s*[:=])|^from .* import[^\n]*\b{parts[0]}\b",
            source.read_text(), re.M))
        if path == root or not names_defined:
            problems.append(f"`{snippet}`: no such module or name in the checkout")
    return problems


# ------------------------------------------------------------------------------------------------------- tests
def page_problems(page: Path, text: str) -> list[str]:
    code_lines, spans, prose = parse_page(text)
    snippets = code_lines + spans
    problems = (make_problems(snippets, makefile_targets()) + distinit_problems(snippets)
                + link_problems(prose, page, text) + path_problems(snippets) + module_problems(spans))
    return list(dict.fromkeys(problems))  # a link repeated on a page is one problem


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_every_command_link_and_path_a_page_shows_exists(page):
    assert page_problems(page, page.read_text()) == []


def readme_length_problems(text: str) -> list[str]:
    lines = len(text.splitlines())
    return [f"README.md has {lines} lines, more than {README_MAX_LINES}; move detail into docs/"] \
        if lines > README_MAX_LINES else []


def test_the_readme_fits_five_minutes():
    assert readme_length_problems((ROOT / "README.md").read_text()) == []
    assert readme_length_problems("line\n" * (README_MAX_LINES + 1)) != []
    assert readme_length_problems("line\n" * README_MAX_LINES) == []


def test_the_readme_keeps_the_two_commands_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    code_lines, _, prose = parse_page(readme)
    assert [line.split("#")[0].strip() for line in code_lines[:3] if line.split("#")[0].strip()] == \
        ["make demo", "make test"]
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in LINK.findall(prose)}
    assert {page.resolve() for page in PAGES[1:]} <= linked, "a docs page the README does not link"


def test_the_checks_catch_a_bad_page():
    bad = ROOT / "docs" / "bad-page.md"  # never written: its links resolve from docs/
    text = "\n".join([
        "# A heading", "",
        "```bash",
        "make distil DATA=kinetics ROOT=/data/k400       # a misspelt target",
        "make extract DATA=kinetics \\",
        "    AFTER=<job id>                                # a placeholder is no target",
        "distinit extract --data demo --frame-rate 2       # no such option",
        "distinit extrac --data demo                       # no such command",
        "torchrun --nproc_per_node 8 -m pipeline distill   # the pre-namespace module name",
        "```", "",
        "See [stages](stages.md#no-such-heading), [gone](no-such-page.md), [here](#a-heading), [not](#b) and",
        "[the pipeline](stages.md#the-command-line); `pipeline/no_such_module.py`, `configs/distill.yaml`,",
        "`configs/*.yaml`, `bench/results/no_such.json` and `distinit.pipeline.no_such_module`.",
    ])
    problems = page_problems(bad, text)
    expected = ["no target 'distil'", "no option --frame-rate", "no command 'extrac'", "-m distinit.pipeline",
                "link stages.md#no-such-heading", "link no-such-page.md", "link #b", "pipeline/no_such_module.py",
                "bench/results/no_such.json", "distinit.pipeline.no_such_module"]
    for fragment in expected:
        assert sum(fragment in problem for problem in problems) == 1, (fragment, problems)
    assert len(problems) == len(expected), problems


def test_the_parsers_read_what_they_must():
    assert {"demo", "test", "extract", "distill", "eval-hmdb", "submit-extract", "setup", "FORCE"} <= makefile_targets()
    assert "SHELL" not in makefile_targets()
    assert slug("The demo's table (issue 19's protocol)") == "the-demos-table-issue-19s-protocol"
    assert slug("Stage one: teacher targets (`make extract`)") == "stage-one-teacher-targets-make-extract"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}
    assert module_problems(["distinit.pipeline.video", "distinit.pipeline.video.read_clip"]) == []
    assert distinit_problems(["distinit -v teachers --fetch --inits inflated:resnet18"]) == []
