"""Source readers: find the (label, photo) pairs of a data set, by paths only.

Scanning lists files and pairs them by name; it opens no image (the Ray Data stage does
that, in parallel). What can be judged from names alone is judged here and becomes a
reject with its path and reason: a photo without a label and the reverse, a file that is
not an image of the layout, two samples with the same id.

The layouts themselves (cityscapes, gta5, paired, labels-only, ade20k, coco-stuff, ...) are
formats in pipeline.data.formats, one file each, described in docs/data-formats.md; this
module is what they share: `scan_source` runs a format's scan over its splits with a
`Scanner`, which lists folders, pairs files by name and collects candidates and rejects.
`root` is a local folder or an s3:// prefix. Names starting with "." (.DS_Store, our own
temporary files) are skipped everywhere.

Local folders are walked by the scanner itself, not by pyarrow's recursive listing, so that
what a file system can hold but a data set should not is a reject with its reason rather
than a crash or silence: a name that is not valid UTF-8 (shown escaped), a symlink to
nothing, a folder symlink that leads back to a folder above it (followed no further: one
reject), and a folder where a label or photo file should be.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import asdict, dataclass, field

import pyarrow.fs as pafs

from pipeline.errors import UserError, first_line
from pipeline.fs import filesystem_for, location_of

PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg")
LABEL_EXTENSIONS = (".png",)


class SourceError(UserError, ValueError):
    """The source as a whole cannot be read (missing folder, unknown layout): one line."""


@dataclass(frozen=True, order=True)
class Candidate:
    """One sample to decode: paths are inside the source filesystem."""

    split: str
    sample_id: str
    label: str
    photo: str | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, order=True)
class Reject:
    """An input left out of the store, with the user-facing path and the reason."""

    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass
class SourceScan:
    """What a scan found: candidates sorted by (split, sample id), rejects, a fingerprint."""

    candidates: list[Candidate]
    rejects: list[Reject]
    fingerprint: str
    num_files: int
    splits: list[str]
    filesystem: pafs.FileSystem = field(repr=False)
    root: str = ""


def display_path(root_uri: str, fs_path: str) -> str:
    """The path a user recognises: s3://bucket/key, abfs://container/key or the absolute local path."""
    return location_of(root_uri, fs_path)


def scan_source(uri: str, fmt: str, label_type: str, splits: list[str] | None) -> SourceScan:
    """List and pair the files of `uri` in layout `fmt`; raise SourceError if it is unusable."""
    from pipeline.data.formats import get_format

    layout = get_format(fmt)
    if label_type not in layout.label_types:
        raise SourceError(f"label type '{label_type}' does not fit format '{fmt}' "
                          f"(one of: {', '.join(layout.label_types)})")
    try:
        fs, root = filesystem_for(uri)
        info = fs.get_file_info(root)
    except (OSError, ValueError) as exc:
        raise SourceError(f"source {uri}: cannot be reached ({first_line(exc)})") from None
    if info.type != pafs.FileType.Directory:
        raise SourceError(f"source {uri}: no such folder")
    scanner = Scanner(fs, root, uri)
    names = layout.find_splits(scanner, splits) if layout.find_splits else list(splits or layout.splits)
    for split in names:
        layout.scan_split(scanner, split, label_type)
    return scanner.finish(names)


class Scanner:
    """Lists a source's folders and collects what a format's scan finds: candidates, rejects."""

    def __init__(self, fs: pafs.FileSystem, root: str, uri: str):
        self.fs, self.root, self.uri = fs, root, uri
        self.candidates: list[Candidate] = []
        self.rejects: list[Reject] = []
        self.fingerprinted: dict[str, pafs.FileInfo] = {}
        self.odd_entries: dict[str, str] = {}  # local entries rejected without a FileInfo: reason

    # ---- listing ----

    def is_dir(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.Directory

    def list_files(self, folder: str) -> dict[str, pafs.FileInfo]:
        """Files under `folder` (recursively), keyed by path relative to it; dotfiles skipped."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            paths = self._walk_local(os.fsencode(folder), ancestors=set())
            infos = self.fs.get_file_info(paths) if paths else []
        else:
            infos = [i for i in self.fs.get_file_info(pafs.FileSelector(folder, recursive=True))
                     if i.type == pafs.FileType.File]
        files = {}
        for info in infos:
            relative = posixpath.relpath(info.path, folder)
            if not any(part.startswith(".") for part in relative.split("/")):
                files[relative] = info
        return files

    def _walk_local(self, folder: bytes, ancestors: set[tuple[int, int]]) -> list[str]:
        """Paths of the regular files under a local folder; odd entries become rejects."""
        status = os.stat(folder)
        here = ancestors | {(status.st_dev, status.st_ino)}
        found = []
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.startswith(b"."):
                    continue
                shown = entry.path.decode("utf-8", "backslashreplace")
                try:
                    path = entry.path.decode("utf-8")
                except UnicodeDecodeError:
                    self.reject_local(entry.path, "file name is not valid UTF-8 (shown with \\x escapes); rename it")
                    continue
                try:
                    target = os.stat(entry.path)  # follows symlinks
                except OSError:
                    if entry.is_symlink():
                        self.reject_local(entry.path, f"dangling symlink to {os.readlink(shown)}")
                    else:
                        self.reject_local(entry.path, "cannot be read")
                    continue
                if entry.is_dir():
                    if (target.st_dev, target.st_ino) in here:
                        self.reject_local(entry.path, f"symlink loop: leads back to {os.path.realpath(shown)}, "
                                                      "not followed")
                    else:
                        found += self._walk_local(entry.path, here)
                elif entry.is_file():
                    found.append(path)
        return found

    def reject_local(self, path: bytes, reason: str) -> None:
        """A local entry that has no usable FileInfo (odd name, broken link): rejected by its path."""
        shown = path.decode("utf-8", "backslashreplace")
        self.odd_entries[shown] = reason
        self.rejects.append(Reject(shown, reason))

    def missing(self, kind: str, what: str, expected: str) -> str:
        """Why a `kind` file's partner `what` is missing: absent, or a folder in its place."""
        if self.fs.get_file_info(expected).type == pafs.FileType.Directory:
            return f"{kind}'s {what} {display_path(self.uri, expected)} is a folder, not a file"
        return f"{kind} has no {what} (expected {display_path(self.uri, expected)})"

    def reject(self, info: pafs.FileInfo, reason: str) -> None:
        self.fingerprinted[info.path] = info
        self.rejects.append(Reject(display_path(self.uri, info.path), reason))

    def add(self, split: str, sample_id: str, label: pafs.FileInfo, photo: pafs.FileInfo | None) -> None:
        self.fingerprinted[label.path] = label
        if photo is not None:
            self.fingerprinted[photo.path] = photo
        self.candidates.append(Candidate(split, sample_id, label.path, photo.path if photo else None))

    def path(self, *parts: str) -> str:
        """A path under the source's root."""
        return posixpath.join(self.root, *parts)

    def shown(self, path: str) -> str:
        return display_path(self.uri, path)

    def require_dir(self, folder: str, split: str) -> None:
        """SourceError unless `folder` (a split's label or photo folder) is there."""
        if not self.is_dir(folder):
            raise SourceError(
                f"source {self.uri}: split '{split}' not found (no folder {self.shown(folder)}); "
                "choose splits with --splits"
            )

    # ---- labels and photos paired by their relative path less the extension ----

    def scan_paired_split(self, split: str, label_dir: str, photo_dir: str | None,
                          photo_extensions: tuple[str, ...] = PHOTO_EXTENSIONS) -> None:
        """Pair `label_dir/<stem>.png` with `photo_dir/<stem>.<photo extension>` (or labels alone)."""
        labels = self._by_stem(label_dir, LABEL_EXTENSIONS, "label")
        if photo_dir is None:
            for stem in sorted(labels):
                self.add(split, stem, labels[stem], None)
            return
        if not self.is_dir(photo_dir):
            raise SourceError(f"source {self.uri}: no images/ folder beside {display_path(self.uri, label_dir)}")
        photos = self._by_stem(photo_dir, photo_extensions, "photo")
        for stem in sorted(photos.keys() | labels.keys()):
            photo, label = photos.get(stem), labels.get(stem)
            if label is None:
                self.reject(photo, self.missing("photo", "label", f"{label_dir}/{stem}.png"))
            elif photo is None:
                self.reject(label, f"label has no photo (expected {display_path(self.uri, photo_dir)}/{stem}.*)")
            else:
                self.add(split, stem, label, photo)

    def _by_stem(self, folder: str, extensions: tuple[str, ...], kind: str) -> dict[str, pafs.FileInfo]:
        found: dict[str, pafs.FileInfo] = {}
        for relative, info in sorted(self.list_files(folder).items()):
            stem, extension = posixpath.splitext(relative)
            if extension.lower() not in extensions:
                self.reject(info, f"not a {kind} image file (expected {' or '.join(extensions)})")
            elif stem in found:  # images/a.png and images/a.jpg
                self.reject(info, f"duplicate sample id '{stem}' (also {display_path(self.uri, found[stem].path)})")
            else:
                found[stem] = info
        return found

    # ---- result ----

    def finish(self, splits: list[str]) -> SourceScan:
        # Sample ids name rows across the whole store: the first (by split, then path) wins.
        kept: dict[str, Candidate] = {}
        for candidate in sorted(self.candidates, key=lambda c: (splits.index(c.split), c.label)):
            if candidate.sample_id in kept:
                first = kept[candidate.sample_id]
                for path in filter(None, (candidate.label, candidate.photo)):
                    self.rejects.append(
                        Reject(
                            display_path(self.uri, path),
                            f"duplicate sample id '{candidate.sample_id}' "
                            f"(kept {display_path(self.uri, first.label)} in split '{first.split}')",
                        )
                    )
            else:
                kept[candidate.sample_id] = candidate
        candidates = sorted(kept.values())
        return SourceScan(
            candidates=candidates,
            rejects=sorted(self.rejects),
            fingerprint=self._fingerprint(),
            num_files=len(self.fingerprinted) + len(self.odd_entries),
            splits=splits,
            filesystem=self.fs,
            root=self.root,
        )

    def _fingerprint(self) -> str:
        """sha256 over (relative path, size, mtime) of every file the scan looked at.

        Sizes and modification times, not contents: reading every byte on the driver would
        cost as much as the job. Unchanged files give the same fingerprint, hence the same
        data folder, which is what lets a rerun finish an interrupted write.
        """
        digest = hashlib.sha256()
        for path in sorted(self.fingerprinted):
            info = self.fingerprinted[path]
            relative = posixpath.relpath(path, self.root)
            mtime = info.mtime_ns if info.mtime_ns is not None else 0
            digest.update(f"{relative}\t{info.size}\t{mtime}\n".encode())
        for shown, reason in sorted(self.odd_entries.items()):
            digest.update(f"{shown}\t{reason}\n".encode())
        return "sha256:" + digest.hexdigest()

