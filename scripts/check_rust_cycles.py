#!/usr/bin/env python3
"""Fails when the files of a Rust crate import each other in a circle.

    python3 scripts/check_rust_cycles.py              # every crate under native/
    python3 scripts/check_rust_cycles.py CRATE_DIR..  # these crates
    python3 scripts/check_rust_cycles.py --self-test  # shows that it can fail
    python3 scripts/check_rust_cycles.py --edges      # also prints the graph

Every target of a crate (src/lib.rs, src/main.rs, src/bin/*.rs, tests/*.rs,
examples/*.rs, benches/*.rs, build.rs) is followed from its root through its
`mod name;` declarations, which gives each .rs file its module path. The
nodes of the graph are those files; a module written inline (`mod tests {
... }`) belongs to the file it is written in. Exit status: 0 without a
circle, 1 with one (each circle is printed with the lines that make it),
2 when a `mod name;` names no file.

What is an edge A -> B (file A depends on file B):
- A names a path that resolves into B's module: a `use` of an item of B
  (groups, globs and `pub use` re-exports included), or a path in code that
  starts with `crate::`, `super::`, `self::`, a child module's name, or a
  module name A imported (`use crate::x;` then `x::f()`). A path counts
  for the deepest module it reaches: `crate::a::b::f` is an edge to the
  file of `a::b`.
- A child's `super::` is an edge to its parent, like any other path.
- A parent's `mod child;` is NOT an edge: declaring the tree is not
  depending on it. A parent that uses its child (`pub use child::X`,
  `child::f()`) does depend on it; if that child also uses the parent, the
  two form a circle. So a mod.rs is either its folder's front door
  (re-exports, children use each other and never it) or its foundation
  (items the children build on, no use of them), not both.
- `use crate::x;` of a module alone is no edge; the paths through it are.
- Test code counts (inline `#[cfg(test)]` modules, test-only files): it is
  compiled by `cargo test` and its imports knot files just the same.
- Paths into other crates (std, snakepit_core from snakepit_native, ...)
  are ignored: cargo already refuses circles between crates. So are
  `$crate` paths inside macros, `#[path]`-less `include!`d files and
  comments, strings and character literals.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

REPO = Path(__file__).resolve().parent.parent

# -- lexing ---------------------------------------------------------------

_TOKEN = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<line_comment>//[^\n]*)
    | (?P<str>b?"(?:\\.|[^"\\])*")
    | (?P<char>b?'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]{1,6}\}|.)|[^'\\\n])')
    | (?P<lifetime>'[A-Za-z_][A-Za-z0-9_]*)
    | (?P<ident>(?:r\#)?[A-Za-z_][A-Za-z0-9_]*)
    | (?P<number>[0-9][0-9A-Za-z_]*(?:\.[0-9][0-9A-Za-z_]*)?)
    | (?P<sep>::)
    | (?P<punct>.)
    """,
    re.X | re.S,
)
_RAW_STRING = re.compile(r'b?r(#*)"')


@dataclass
class Token:
    kind: str  # ident, sep, punct, lit
    text: str
    line: int


def tokenize(source: str) -> list[Token]:
    """Identifiers, `::` and punctuation; literals become one `lit` token
    (keeping a string's text, for `#[path = "..."]`); comments vanish."""
    tokens: list[Token] = []
    pos, line = 0, 1
    while pos < len(source):
        if source.startswith("/*", pos):
            depth, end = 0, pos
            while end < len(source):
                if source.startswith("/*", end):
                    depth, end = depth + 1, end + 2
                elif source.startswith("*/", end):
                    depth, end = depth - 1, end + 2
                    if depth == 0:
                        break
                else:
                    end += 1
            line += source.count("\n", pos, end)
            pos = end
            continue
        raw = _RAW_STRING.match(source, pos)
        if raw and (pos == 0 or not (source[pos - 1].isalnum() or source[pos - 1] == "_")):
            close = '"' + raw.group(1)
            end = source.find(close, raw.end())
            end = len(source) if end < 0 else end + len(close)
            tokens.append(Token("lit", source[raw.end() : end - len(close)], line))
            line += source.count("\n", pos, end)
            pos = end
            continue
        match = _TOKEN.match(source, pos)
        assert match is not None  # `punct` takes any character
        kind, text = match.lastgroup or "punct", match.group()
        if kind in ("str", "char", "number"):
            body = text[text.index('"') + 1 : -1] if kind == "str" else text
            tokens.append(Token("lit", body, line))
        elif kind in ("ident", "sep", "punct"):
            tokens.append(Token(kind, text.removeprefix("r#"), line))
        line += text.count("\n")
        pos = match.end()
    return tokens


# -- parsing one file -----------------------------------------------------

ModPath = tuple[str, ...]


@dataclass
class UseLeaf:
    scope: ModPath  # relative to the file's module
    path: list[str]
    alias: str | None  # the name it brings in (None for a glob)
    glob: bool
    line: int


@dataclass
class CodePath:
    scope: ModPath
    path: list[str]
    line: int
    # Followed by `(` or `!`: its last segment is a function or macro, even
    # where a module has the same name.
    called: bool


@dataclass
class ModDecl:
    scope: ModPath
    name: str
    inline: bool
    path_attr: str | None
    line: int


@dataclass
class Parsed:
    mods: list[ModDecl] = field(default_factory=list)
    uses: list[UseLeaf] = field(default_factory=list)
    paths: list[CodePath] = field(default_factory=list)


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.t = tokens
        self.i = 0
        self.out = Parsed()
        # Inline modules open at this point: (name, brace depth inside it).
        self.inline: list[tuple[str, int]] = []
        self.depth = 0

    def scope(self) -> ModPath:
        return tuple(name for name, _ in self.inline)

    def peek(self, ahead: int = 0) -> Token | None:
        j = self.i + ahead
        return self.t[j] if j < len(self.t) else None

    def is_(self, ahead: int, kind: str, text: str | None = None) -> bool:
        tok = self.peek(ahead)
        return tok is not None and tok.kind == kind and (text is None or tok.text == text)

    def run(self) -> Parsed:
        path_attr: str | None = None
        while self.i < len(self.t):
            tok = self.t[self.i]
            if tok.kind == "punct" and tok.text == "#" and self.is_(1, "punct", "[") and self.is_(2, "ident", "path"):
                if self.is_(3, "punct", "=") and self.is_(4, "lit"):
                    path_attr = self.t[self.i + 4].text
                self.i += 1
                continue
            if tok.kind == "punct" and tok.text == "{":
                self.depth += 1
            elif tok.kind == "punct" and tok.text == "}":
                if self.inline and self.inline[-1][1] == self.depth:
                    self.inline.pop()
                self.depth -= 1
            elif tok.kind == "ident" and tok.text == "mod" and self.is_(1, "ident"):
                name = self.t[self.i + 1].text
                if self.is_(2, "punct", ";") or self.is_(2, "punct", "{"):
                    inline = self.is_(2, "punct", "{")
                    self.out.mods.append(ModDecl(self.scope(), name, inline, path_attr, tok.line))
                    path_attr = None
                    self.i += 2
                    if inline:
                        self.depth += 1
                        self.inline.append((name, self.depth))
                    self.i += 1
                    continue
            elif tok.kind == "ident" and tok.text == "use" and not self.after_sep():
                self.i += 1
                self.use_tree([], tok.line)
                continue
            elif tok.kind == "ident" and self.is_(1, "sep") and self.starts_path():
                self.code_path(tok.line)
                continue
            self.i += 1
        return self.out

    def after_sep(self) -> bool:
        return self.i > 0 and self.t[self.i - 1].kind == "sep"

    def starts_path(self) -> bool:
        """Not the middle of a path, nor a `$crate` path."""
        return self.i == 0 or self.t[self.i - 1].text not in ("::", "$")

    def code_path(self, line: int) -> None:
        path = [self.t[self.i].text]
        self.i += 1
        while self.is_(0, "sep") and self.is_(1, "ident"):
            path.append(self.t[self.i + 1].text)
            self.i += 2
        # One segment before `::<` (`x.decode::<T>()`, `Vec::<u8>::new`):
        # a generic item, not a module path.
        if len(path) > 1:
            called = self.is_(0, "punct", "(") or self.is_(0, "punct", "!")
            self.out.paths.append(CodePath(self.scope(), path, line, called))

    def use_tree(self, prefix: list[str], line: int) -> None:
        """One use tree; leaves the position after it (and after a `;`)."""
        top = not prefix
        if self.is_(0, "sep"):  # `use ::x`: another crate
            prefix = ["::"]
            self.i += 1
        segments = list(prefix)
        while self.i < len(self.t):
            tok = self.t[self.i]
            if tok.kind == "punct" and tok.text == "{":
                self.i += 1
                while not self.is_(0, "punct", "}") and self.i < len(self.t):
                    self.use_tree(segments, line)
                    if self.is_(0, "punct", ","):
                        self.i += 1
                self.i += 1
                break
            if tok.kind == "punct" and tok.text == "*":
                self.out.uses.append(UseLeaf(self.scope(), segments, None, True, tok.line))
                self.i += 1
                break
            if tok.kind == "ident":
                segments = segments + [tok.text]
                self.i += 1
                if self.is_(0, "sep"):
                    self.i += 1
                    continue
                alias: str | None = tok.text
                if self.is_(0, "ident", "as") and self.is_(1, "ident"):
                    alias = self.t[self.i + 1].text
                    self.i += 2
                if segments[-1] == "self":
                    segments = segments[:-1]
                    if alias == "self":
                        alias = segments[-1] if segments else None
                self.out.uses.append(UseLeaf(self.scope(), segments, alias, False, tok.line))
                break
            self.i += 1  # anything else ends a malformed tree
            break
        if top and self.is_(0, "punct", ";"):
            self.i += 1


def parse(source: str) -> Parsed:
    return _Parser(tokenize(source)).run()


# -- the module tree and the graph ----------------------------------------


@dataclass
class Edge:
    line: int
    text: str


@dataclass
class Crate:
    root: Path
    files: set[Path] = field(default_factory=set)
    # file -> file -> first reference making the edge
    edges: dict[Path, dict[Path, Edge]] = field(default_factory=lambda: defaultdict(dict))
    errors: list[str] = field(default_factory=list)


def target_roots(crate: Path) -> list[Path]:
    roots = [crate / "src" / "lib.rs", crate / "src" / "main.rs", crate / "build.rs"]
    for folder in ("src/bin", "tests", "examples", "benches"):
        roots += sorted((crate / folder).glob("*.rs"))
        roots += sorted((crate / folder).glob("*/main.rs"))
    return [r for r in roots if r.is_file()]


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


class _Target:
    """The module tree of one target, and the edges of its files."""

    def __init__(self, root: Path, crate: Crate) -> None:
        self.crate = crate
        self.root = root
        self.modules: dict[ModPath, Path] = {}  # inline ones map to their file
        self.file_module: dict[Path, ModPath] = {}
        self.parsed: dict[Path, Parsed] = {}
        self.load(root, ())

    def load(self, file: Path, modpath: ModPath) -> None:
        if file in self.file_module:
            return
        self.modules[modpath] = file
        self.file_module[file] = modpath
        self.crate.files.add(file)
        parsed = self.parsed[file] = parse(file.read_text(encoding="utf-8"))
        owns_dir = file == self.root or file.name == "mod.rs"
        base = file.parent if owns_dir else file.parent / file.stem
        for decl in parsed.mods:
            child = modpath + decl.scope + (decl.name,)
            if decl.inline:
                self.modules[child] = file
                continue
            if decl.path_attr is not None:
                candidates = [file.parent / decl.path_attr]
            else:
                folder = base.joinpath(*decl.scope)
                candidates = [folder / f"{decl.name}.rs", folder / decl.name / "mod.rs"]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                self.crate.errors.append(f"{rel(file)}:{decl.line}: `mod {decl.name};` names no file")
                continue
            self.load(found, child)

    def resolve(self, path: list[str], scope: ModPath, aliases: dict[str, ModPath]) -> tuple[ModPath, bool] | None:
        """The deepest module `path` reaches from `scope`, and whether the
        whole path names that module; None for another crate's path."""
        first, rest = path[0], path[1:]
        if first == "crate":
            base: ModPath = ()
        elif first == "self":
            base = scope
        elif first == "super":
            base = scope
            while path and path[0] == "super":
                if not base:
                    return None
                base, path = base[:-1], path[1:]
            rest = path
        elif scope + (first,) in self.modules:
            base = scope + (first,)
        elif first in aliases:
            base = aliases[first]
        else:
            return None
        module = base
        for i, segment in enumerate(rest):
            if module + (segment,) not in self.modules:
                return module, False
            module = module + (segment,)
            if i == len(rest) - 1:
                return module, True
        return module, True

    def add_edges(self) -> None:
        for file, parsed in self.parsed.items():
            modpath = self.file_module[file]
            aliases: dict[ModPath, dict[str, ModPath]] = defaultdict(dict)
            # `use` is order-free in Rust: find the imported modules first.
            for leaf in parsed.uses:
                scope = modpath + leaf.scope
                if leaf.glob or not leaf.path or leaf.alias is None:
                    continue
                found = self.resolve(leaf.path, scope, {})
                if found and found[1]:
                    aliases[scope][leaf.alias] = found[0]
            for leaf in parsed.uses:
                scope = modpath + leaf.scope
                if not leaf.path:
                    continue
                found = self.resolve(leaf.path, scope, aliases[scope])
                if found and (leaf.glob or not found[1]):
                    text = "use " + "::".join(leaf.path) + ("::*" if leaf.glob else "")
                    self.edge(file, found[0], leaf.line, text)
            for code in parsed.paths:
                scope = modpath + code.scope
                found = self.resolve(code.path, scope, aliases[scope])
                if found:
                    module, whole = found
                    if whole and code.called and module:
                        module = module[:-1]
                    self.edge(file, module, code.line, "::".join(code.path))

    def edge(self, file: Path, module: ModPath, line: int, text: str) -> None:
        target = self.modules[module]
        if target != file and target not in self.crate.edges[file]:
            self.crate.edges[file][target] = Edge(line, text)


def load_crate(crate_dir: Path) -> Crate:
    crate = Crate(crate_dir)
    for root in target_roots(crate_dir):
        target = _Target(root, crate)
        target.add_edges()
    return crate


def circles(edges: dict[Path, dict[Path, Edge]], limit: int = 50) -> list[list[Path]]:
    """Elementary circles of the graph (each once, from its least file), at
    most `limit`."""
    found: list[list[Path]] = []
    nodes = sorted(set(edges) | {t for ts in edges.values() for t in ts})
    order = {n: i for i, n in enumerate(nodes)}
    for start in nodes:
        # Circles through `start` among files not before it.
        stack: list[tuple[Path, list[Path]]] = [(start, [start])]
        while stack and len(found) < limit:
            node, trail = stack.pop()
            for nxt in sorted(edges.get(node, {}), reverse=True):
                if nxt == start:
                    found.append(trail)
                elif order[nxt] > order[start] and nxt not in trail:
                    stack.append((nxt, trail + [nxt]))
    return found


def check(crate_dirs: list[Path], out: TextIO = sys.stdout, show_edges: bool = False) -> int:
    status = 0
    for crate_dir in crate_dirs:
        crate = load_crate(crate_dir)
        if show_edges:
            for a in sorted(crate.edges):
                for b, edge in sorted(crate.edges[a].items()):
                    print(f"{rel(a)} -> {rel(b)}  ({rel(a)}:{edge.line}: {edge.text})", file=out)
        for error in crate.errors:
            print(f"error: {error}", file=out)
            status = max(status, 2)
        unread = sorted(p for p in crate_dir.rglob("*.rs") if "target" not in p.parts and p not in crate.files)
        for path in unread:
            print(f"note: {rel(path)} is in no target's module tree (not checked)", file=out)
        found = circles(crate.edges)
        for circle in found:
            names = " -> ".join(rel(p) for p in circle + [circle[0]])
            print(f"circle: {names}", file=out)
            for a, b in zip(circle, circle[1:] + [circle[0]]):
                edge = crate.edges[a][b]
                print(f"    {rel(a)}:{edge.line}: {edge.text}", file=out)
        if found:
            status = max(status, 1)
        count = sum(len(t) for t in crate.edges.values())
        verdict = f"{len(found)} circle(s)" if found else "no circle"
        print(f"{rel(crate_dir)}: {len(crate.files)} files, {count} edges, {verdict}", file=out)
    return status


# -- self-test --------------------------------------------------------------

_CASES: dict[str, tuple[dict[str, str], list[set[str]]]] = {
    # Two siblings through `crate::` one way and `super::` the other.
    "siblings": (
        {
            "src/lib.rs": "mod a;\nmod b;\n",
            "src/a.rs": "use crate::b::Thing;\npub fn g() {}\n",
            "src/b.rs": "pub struct Thing;\nfn f() { super::a::g() }\n",
        },
        [{"src/a.rs", "src/b.rs"}],
    ),
    # A parent that re-exports its child, which uses the parent.
    "front door and foundation": (
        {
            "src/lib.rs": "mod p;\n",
            "src/p/mod.rs": "mod c;\npub use c::Thing;\npub struct Base;\n",
            "src/p/c.rs": "use super::Base;\npub struct Thing(Base);\n",
        },
        [{"src/p/mod.rs", "src/p/c.rs"}],
    ),
    # A foundation mod.rs: children use it and each other one way; a test
    # module uses `super::`; mentions in comments, strings, raw strings and
    # after lifetimes and character literals are not paths.
    "clean": (
        {
            "src/lib.rs": "mod p;\nmod q;\n// crate::q::x\n",
            "src/p/mod.rs": "mod c;\nmod d;\npub struct Base<'a>(&'a str);\n"
            "/* crate::p::c /* nested */ crate::p::d */\n",
            "src/p/c.rs": "use super::{d::Helper, Base};\nfn f(_: Base) -> char { 'c' }\n"
            'const S: &str = "super::d::x";\nconst R: &str = r#"crate::p::d"#;\n'
            "#[cfg(test)]\nmod tests {\n    use super::*;\n    use crate::p::Base;\n}\n",
            "src/p/d.rs": "pub struct Helper;\nfn g<'a>(x: &'a u8) -> char { let _ = x; '}' }\n",
            "src/q.rs": 'use crate::p;\nfn h() { let _ = p::Base(""); }\n',
        },
        [],
    ),
    # A method's turbofish is no path; a function named like a module is
    # the function (in the parent's file).
    "names that are not modules": (
        {
            "src/lib.rs": "mod a;\nmod encode;\npub fn encode(_: u8) {}\nfn g(x: u8) -> u8 { x.a::<u8>() }\n",
            "src/a.rs": "pub fn helper() { crate::encode(1) }\n",
            "src/encode.rs": "use crate::a::helper;\n",
        },
        [],
    ),
    # A module imported by name counts where its paths lead, not at mod.rs.
    "through an imported module": (
        {
            "src/lib.rs": "mod m;\nmod z;\n",
            "src/m/mod.rs": "pub mod inner;\nfn k() { crate::z::g() }\n",
            "src/m/inner.rs": "pub fn f() { crate::z::g() }\n",
            "src/z.rs": "use crate::m::{self};\npub fn g() {}\nfn h() { m::inner::f() }\n",
        },
        [{"src/m/inner.rs", "src/z.rs"}],
    ),
}


def self_test() -> int:
    failures = []
    for name, (files, expected) in _CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            crate_dir = Path(tmp)
            (crate_dir / "Cargo.toml").write_text('[package]\nname = "t"\n')
            for path, text in files.items():
                (crate_dir / path).parent.mkdir(parents=True, exist_ok=True)
                (crate_dir / path).write_text(text)
            crate = load_crate(crate_dir)
            got = [{str(p.relative_to(crate_dir)) for p in c} for c in circles(crate.edges)]
            report = io.StringIO()
            status = check([crate_dir], out=report)
            want_status = 1 if expected else 0
            if sorted(map(sorted, got)) != sorted(map(sorted, expected)) or status != want_status or crate.errors:
                failures.append(f"{name}: circles {got}, status {status}, expected {expected}\n{report.getvalue()}")
    for failure in failures:
        print(f"self-test failed: {failure}")
    if not failures:
        print(f"self-test: {len(_CASES)} cases, the checker finds the circles planted and no others")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crates", nargs="*", type=Path, help="crate folders (default: native/*)")
    parser.add_argument("--self-test", action="store_true", help="check the checker on planted circles")
    parser.add_argument("--edges", action="store_true", help="also print every edge and the line making it")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    crates = args.crates or sorted(p.parent for p in (REPO / "native").glob("*/Cargo.toml"))
    return check([c.resolve() for c in crates], show_edges=args.edges)


if __name__ == "__main__":
    sys.exit(main())
