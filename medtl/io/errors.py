"""The one error type every reader in :mod:`medtl.io` raises for a file it cannot turn into an image,
and the warning type for a file it reads but changes on the way (alpha dropped, few bits used)."""

from __future__ import annotations

import os
import warnings

_DEFAULT_FIX = "check or re-export the file, or leave it out of the manifest"


def one_line(text: object, limit: int = 300) -> str:
    """Collapse whitespace (pydicom's messages span several lines) and cap the length."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class ImageReadError(ValueError):
    """A file could not be read as a single 2-D image.

    ``str(err)`` is one line, ``"<path>: <reason>; <fix>"``, so a list of bad files reads well
    in a log or in ``medtl inspect`` output.

    Attributes:
        path: The file at fault, as given.
        reason: What is wrong with it.
        fix: What to do about it.

    Example:
        >>> err = ImageReadError("a.dcm", "no pixel data (Modality SR)", "leave it out")
        >>> str(err)
        'a.dcm: no pixel data (Modality SR); leave it out'
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, fix: str = _DEFAULT_FIX) -> None:
        self.path = os.fspath(path)
        self.reason = one_line(reason)
        self.fix = one_line(fix)
        super().__init__(f"{self.path}: {self.reason}; {self.fix}")

    def __reduce__(self) -> tuple[type[ImageReadError], tuple[str, str, str]]:
        # Decoding runs in worker processes; the default pickling would call __init__ with the
        # formatted message only and lose .path / .reason.
        return (type(self), (self.path, self.reason, self.fix))


class ImageReadWarning(UserWarning):
    """A file was read, but the image may not be what its author meant; the message says why.

    ``str(warning)`` is one line, ``"<path>: <what happened>; <what to do>"``, like
    :class:`ImageReadError`, so ``medtl inspect`` can list it per file.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     img = read_image("overlay.png")  # an RGBA PNG with transparent pixels
        >>> caught[0].category.__name__
        'ImageReadWarning'
    """


def warn_image(path: str | os.PathLike[str], what: str, fix: str) -> None:
    """Issue an :class:`ImageReadWarning` in the one-line ``path: what; fix`` form."""
    warnings.warn(f"{os.fspath(path)}: {one_line(what)}; {one_line(fix)}", ImageReadWarning, stacklevel=3)
