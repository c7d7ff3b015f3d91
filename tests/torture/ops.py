"""The operations of the torture suite: each changes the source trees on disk and tells the model.

Every choice comes from one seeded `random.Random`, over sorted candidates, so a seed replays the
same sequence of decisions (the daemon's timing still differs from run to run). Each operation
returns a one-line description for the round's report.

Boundaries, each for a reason a reader of the report needs:
* files below `outbox/` are removed by the daemon after sync, at any moment: operations on them
  never create a path (no O_CREAT, no rename over them) and a missing file is recorded as
  "vanished" for the check to prove it had been synced (issue 7, item 2); directories below
  `outbox/` are not moved or removed (a directory rename racing the daemon's unlink would make
  the expected outcome undecidable);
* a hard-linked file is only ever replaced (write elsewhere, rename over it), never written in
  place: a write through one name gives no event for the other names, for any watcher;
* symlink targets live in `pinned/` and never change, for the same reason.
"""
from __future__ import annotations

import os
import random
import shutil
from typing import Callable

from tests.torture.model import OUTBOX, PINNED, Node, SourceModel, extension, is_within, render_css

EXTENSIONS = ("txt", "txt", "png", "png", "css", "bin")
#: Name parts that URLs and stylesheets must survive (issue 7, item 16): `;` and `'` break CSS and
#: HTML attributes unless encoded, multibyte names are cut by bytes. Never `#`, `?` or `%`: in a
#: stylesheet those start a fragment, a query or an escape, so the reference would mean another file.
AWKWARD = ("with space", "semi;colon", "quote'd", "\u00fcn\u00efc\u00f8d\u00e9-\u4e2d\u6587", "plus+sign")
SIZES = (0, 1, 100, 3000, 20000)


class Operations:
    """A seeded generator of changes to the trees of `model`."""

    WEIGHTS: dict[str, int] = {
        "create": 14, "modify": 14, "truncate": 4, "delete": 6, "rename_file": 8, "move_out": 3,
        "move_in": 3, "rename_dir": 3, "move_dir_out": 2, "move_dir_in": 2, "mkdir_p": 4,
        "rmtree": 2, "file_to_dir": 2, "dir_to_file": 2, "hardlink": 3, "symlink_inside": 3,
        "symlink_outside": 2, "symlink_dangling": 1, "fifo": 1, "fifo_swap": 1,
        "create_missing_ref": 3,
    }

    def __init__(self, model: SourceModel, staging: str, outside_file: str,
                 rng: random.Random) -> None:
        self.model = model
        self.staging = staging
        self.outside_file = outside_file
        self.rng = rng
        self.counter = 0
        #: png paths that a stylesheet refers to and that do not exist yet.
        self.missing_refs: list[str] = []
        #: Surprises met while operating (a file gone that only the daemon could have removed).
        self.anomalies: list[str] = []

    # --- choosing --------------------------------------------------------------------------------

    def step(self, names: tuple[str, ...] | None = None) -> str:
        names = names or tuple(self.WEIGHTS)
        weights = [self.WEIGHTS[n] for n in names]
        for _attempt in range(30):
            name = self.rng.choices(names, weights)[0]
            operation: Callable[[], str | None] = getattr(self, f"op_{name}")
            description = operation()
            if description:
                return description
        return "no applicable operation"

    def _name(self, prefix: str, ext: str | None = None) -> str:
        self.counter += 1
        stem = f"{prefix}{self.counter}"
        if ext and self.rng.random() < 0.12:
            stem += "-" + self.rng.choice(AWKWARD)
        return stem + (f".{ext}" if ext else "")

    def _in_outbox(self, path: str) -> bool:
        source = self.model.source_of(path)
        return source == "beta" and is_within(os.path.join(self.model.roots["beta"], OUTBOX), path)

    def _pinned(self, path: str) -> bool:
        source = self.model.source_of(path)
        return source is not None and is_within(os.path.join(self.model.roots[source], PINNED), path)

    def _nodes(self, kinds: tuple[str, ...] = ("file",), outbox: bool = True) -> list[str]:
        return [p for p, n in sorted(self.model.nodes.items())
                if n.kind in kinds and not self._pinned(p) and (outbox or not self._in_outbox(p))]

    def _target_dirs(self, outbox: bool = True) -> list[str]:
        dirs = sorted(self.model.roots.values()) + sorted(
            d for d in self.model.dirs if not self._pinned(d))
        return [d for d in dirs if outbox or not self._in_outbox(d)]

    def _movable_dirs(self) -> list[str]:
        return [d for d in sorted(self.model.dirs)
                if not self._pinned(d) and not self._in_outbox(d)]

    def _choice(self, items: list[str]) -> str | None:
        return self.rng.choice(items) if items else None

    def _content(self, path: str) -> bytes:
        if extension(path) == "css":
            return self._css(path)
        return self.rng.randbytes(self.rng.choice(SIZES))

    def _css(self, path: str) -> bytes:
        directory = os.path.dirname(path)
        pngs = [p for p in self._nodes() if extension(p) == "png"
                and self.model.source_of(p) == "alpha"]
        refs = []
        for _ in range(self.rng.randint(1, 3)):
            if pngs and self.rng.random() < 0.75:
                target = self.rng.choice(pngs)
            else:
                target = os.path.join(directory, self._name("m", "png"))
                self.missing_refs.append(target)
            refs.append(os.path.relpath(target, directory))
        return render_css(refs, self._name("v"))

    def _gone(self, operation: str, path: str, contents: set[bytes]) -> str:
        """`path` was missing: fine after sync below outbox/ (checked later), a violation elsewhere."""
        if self.model.deleted_after_sync(path):
            self.model.vanish(path, contents)
            return f"{operation} {path}: already removed by the daemon after sync"
        self.model.remove(path)
        self.anomalies.append(f"{path} disappeared from the source although no rule deletes it")
        return f"{operation} {path}: MISSING"

    def _write_new(self, path: str, content: bytes) -> None:
        with open(path, "xb") as handle:
            handle.write(content)
        self.model.put(path, Node("file", content))

    def _replace(self, path: str, content: bytes) -> None:
        """Write `content` elsewhere and rename it over `path` (breaks hard links)."""
        temporary = os.path.join(self.staging, self._name("tmp"))
        with open(temporary, "wb") as handle:
            handle.write(content)
        os.replace(temporary, path)
        self.model.put(path, Node("file", content))

    def _write_in_place(self, path: str, content: bytes, append: bool) -> str | None:
        """Write an existing file without ever creating it; None if it was gone."""
        old = self.model.nodes[path].content
        flags = os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return None
        try:
            os.write(fd, content)
            unlinked = os.fstat(fd).st_nlink == 0
        finally:
            os.close(fd)
        new = old + content if append else content
        if unlinked:
            # Removed while we wrote: the daemon deleted either version.
            self.model.vanish(path, {old, new})
            return "written while the daemon removed it"
        self.model.put(path, Node("file", new))
        return "ok"

    # --- operations -------------------------------------------------------------------------------

    def op_create(self) -> str | None:
        directory = self._choice(self._target_dirs())
        assert directory is not None
        path = os.path.join(directory, self._name("n", self.rng.choice(EXTENSIONS)))
        content = self._content(path)
        self._write_new(path, content)
        return f"create {path} ({len(content)} bytes)"

    def op_create_missing_ref(self) -> str | None:
        existing = set(self._target_dirs())
        candidates = [p for p in self.missing_refs
                      if os.path.dirname(p) in existing and p not in self.model.nodes]
        path = self._choice(candidates)
        if path is None:
            return None
        self.missing_refs.remove(path)
        self._write_new(path, self._content(path))
        return f"create referenced {path}"

    def op_modify(self) -> str | None:
        files = self._nodes()
        pngs = [p for p in files if extension(p) == "png"]
        path = self._choice(pngs if pngs and self.rng.random() < 0.4 else files)
        if path is None:
            return None
        content = self._css(path) if extension(path) == "css" else self.rng.randbytes(
            self.rng.choice(SIZES[1:]))
        if self._in_outbox(path):
            append = extension(path) != "css"
            outcome = self._write_in_place(path, content, append)
            if outcome is None:
                return self._gone("modify", path, {self.model.nodes[path].content})
            return f"modify in place {path}: {outcome}"
        if os.stat(path).st_nlink > 1 or extension(path) == "css" or self.rng.random() < 0.5:
            self._replace(path, content if extension(path) == "css"
                          else self.model.nodes[path].content + content)
            return f"modify by replacing {path}"
        if self._write_in_place(path, content, append=True) is None:
            return self._gone("append to", path, {self.model.nodes[path].content})
        return f"append to {path}"

    def op_truncate(self) -> str | None:
        path = self._choice([p for p in self._nodes() if extension(p) != "css"
                             and self.model.nodes[p].content])
        if path is None:
            return None
        old = self.model.nodes[path].content
        size = self.rng.randint(0, len(old) - 1)
        if not self._in_outbox(path) and os.stat(path).st_nlink > 1:
            self._replace(path, old[:size])
            return f"truncate by replacing {path} to {size}"
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            return self._gone("truncate", path, {old})
        try:
            os.ftruncate(fd, size)
            unlinked = os.fstat(fd).st_nlink == 0
        finally:
            os.close(fd)
        if unlinked:
            self.model.vanish(path, {old, old[:size]})
        else:
            self.model.put(path, Node("file", old[:size]))
        return f"truncate {path} to {size}"

    def op_delete(self) -> str | None:
        path = self._choice(self._nodes(("file", "link", "fifo")))
        if path is None:
            return None
        content = self.model.published_content(path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return self._gone("delete", path, {content} if content is not None else set())
        self.model.remove(path)
        return f"delete {path}"

    def _move_node(self, path: str, new: str, operation: str) -> str:
        content = self.model.published_content(path)
        try:
            os.rename(path, new)
        except FileNotFoundError:
            return self._gone(operation, path, {content} if content is not None else set())
        node = self.model.remove(path)
        assert node is not None
        if self.model.source_of(new) is not None:
            self.model.put(new, node)
        return f"{operation} {path} -> {new}"

    def op_rename_file(self) -> str | None:
        path = self._choice(self._nodes(("file", "link", "fifo")))
        if path is None:
            return None
        linked = self.model.nodes[path].kind == "file" and os.path.lexists(path) and \
            os.lstat(path).st_nlink > 1
        directory = self._choice(self._target_dirs(outbox=not linked))
        assert directory is not None
        new = os.path.join(directory, self._name("n", extension(path) or None))
        return self._move_node(path, new, "rename")

    def op_move_out(self) -> str | None:
        path = self._choice(self._nodes(("file", "link", "fifo")))
        if path is None:
            return None
        return self._move_node(path, os.path.join(self.staging, self._name("out")), "move out")

    def op_move_in(self) -> str | None:
        directory = self._choice(self._target_dirs())
        assert directory is not None
        name = self._name("n", self.rng.choice(EXTENSIONS))
        staged = os.path.join(self.staging, name)
        path = os.path.join(directory, name)
        content = self._content(path)
        with open(staged, "wb") as handle:
            handle.write(content)
        os.rename(staged, path)
        self.model.put(path, Node("file", content))
        return f"move in {path}"

    def _has_hard_links(self, directory: str) -> bool:
        return any(self.model.nodes[p].kind == "file" and os.lstat(p).st_nlink > 1
                   for p in self.model.below(directory))

    def op_rename_dir(self) -> str | None:
        directory = self._choice(self._movable_dirs())
        if directory is None:
            return None
        parents = [d for d in self._target_dirs(outbox=not self._has_hard_links(directory))
                   if not is_within(directory, d)]
        parent = self._choice(parents)
        assert parent is not None
        new = os.path.join(parent, self._name("d"))
        os.rename(directory, new)
        self.model.move_dir(directory, new)
        return f"rename directory {directory} -> {new}"

    def op_move_dir_out(self) -> str | None:
        directory = self._choice(self._movable_dirs())
        if directory is None:
            return None
        os.rename(directory, os.path.join(self.staging, self._name("outdir")))
        self.model.remove_dir(directory)
        return f"move directory out {directory}"

    def op_move_dir_in(self) -> str | None:
        parent = self._choice(self._target_dirs())
        assert parent is not None
        name = self._name("d")
        staged, final = os.path.join(self.staging, name), os.path.join(parent, name)
        sub = self._name("d")
        os.makedirs(os.path.join(staged, sub))
        files: list[tuple[str, bytes]] = []
        for relative in [self._name("n", self.rng.choice(EXTENSIONS)) for _ in range(self.rng.randint(1, 3))] \
                + [os.path.join(sub, self._name("n", "txt"))]:
            content = self._content(os.path.join(final, relative))
            with open(os.path.join(staged, relative), "wb") as handle:
                handle.write(content)
            files.append((os.path.join(final, relative), content))
        os.rename(staged, final)
        self.model.dirs.update({final, os.path.join(final, sub)})
        for path, content in files:
            self.model.put(path, Node("file", content))
        return f"move directory in {final} ({len(files)} files)"

    def op_mkdir_p(self) -> str | None:
        parent = self._choice(self._target_dirs())
        assert parent is not None
        levels = [self._name("d") for _ in range(self.rng.randint(1, 3))]
        deepest = os.path.join(parent, *levels)
        os.makedirs(deepest)
        written = 0
        for depth in range(len(levels), 0, -1):  # deepest first, right after mkdir -p
            directory = os.path.join(parent, *levels[:depth])
            self.model.dirs.add(directory)
            path = os.path.join(directory, self._name("n", self.rng.choice(EXTENSIONS)))
            self._write_new(path, self._content(path))
            written += 1
        return f"mkdir -p {deepest} and write {written} files"

    def op_rmtree(self) -> str | None:
        directory = self._choice(self._movable_dirs())
        if directory is None:
            return None
        shutil.rmtree(directory)
        self.model.remove_dir(directory)
        return f"rm -r {directory}"

    def op_file_to_dir(self) -> str | None:
        path = self._choice(self._nodes(outbox=False))
        if path is None:
            return None
        os.unlink(path)
        self.model.remove(path)
        os.mkdir(path)
        self.model.dirs.add(path)
        inner = os.path.join(path, self._name("n", "txt"))
        self._write_new(inner, self._content(inner))
        return f"replace file {path} by a directory"

    def op_dir_to_file(self) -> str | None:
        directory = self._choice(self._movable_dirs())
        if directory is None:
            return None
        shutil.rmtree(directory)
        self.model.remove_dir(directory)
        self._write_new(directory, self._content(directory))
        return f"replace directory {directory} by a file"

    def op_hardlink(self) -> str | None:
        path = self._choice(self._nodes(outbox=False))
        directory = self._choice(self._target_dirs(outbox=False))
        if path is None or directory is None:
            return None
        new = os.path.join(directory, self._name("n", extension(path) or None))
        os.link(path, new)
        self.model.put(new, self.model.nodes[path])
        return f"hard link {new} -> {path}"

    def _pinned_target(self, source: str) -> str:
        target = os.path.join(self.model.roots[source], PINNED,
                              self._name("t", self.rng.choice(("txt", "png"))))
        self._write_new(target, self._content(target))
        return target

    def _symlink(self, target: str, source: str) -> str:
        directory = self._choice([d for d in self._target_dirs()
                                  if self.model.source_of(d) == source
                                  or d == self.model.roots[source]])
        assert directory is not None
        link = os.path.join(directory, self._name("l", extension(target) or None))
        os.symlink(target, link)
        self.model.put(link, Node("link", target=target))
        return link

    def op_symlink_inside(self) -> str | None:
        source = self.rng.choice(sorted(self.model.roots))
        target = self._pinned_target(source)
        return f"symlink {self._symlink(target, source)} -> {target} (inside)"

    def op_symlink_outside(self) -> str | None:
        source = self.rng.choice(sorted(self.model.roots))
        if self.rng.random() < 0.5:
            other = next(s for s in sorted(self.model.roots) if s != source)
            target = self._pinned_target(other)
        else:
            target = self.outside_file
        return f"symlink {self._symlink(target, source)} -> {target} (outside its tree)"

    def op_symlink_dangling(self) -> str | None:
        source = self.rng.choice(sorted(self.model.roots))
        target = os.path.join(self.model.roots[source], self._name("nowhere", "txt"))
        return f"symlink {self._symlink(target, source)} -> {target} (dangling)"

    def op_fifo(self) -> str | None:
        directory = self._choice(self._target_dirs())
        assert directory is not None
        path = os.path.join(directory, self._name("fifo", self.rng.choice(EXTENSIONS)))
        os.mkfifo(path)
        self.model.put(path, Node("fifo"))
        return f"mkfifo {path}"

    def op_fifo_swap(self) -> str | None:
        path = self._choice(self._nodes(outbox=False))
        if path is None:
            return None
        staged = os.path.join(self.staging, self._name("fifo"))
        os.mkfifo(staged)
        os.rename(staged, path)
        self.model.put(path, Node("fifo"))
        return f"replace file {path} by a FIFO"
