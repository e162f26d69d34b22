"""The one error type users see.

A `SabunError` is an expected failure caused by input (a missing file, a corrupt LoRA, a LoRA that
does not fit the model). The CLI prints its message on one line and exits with status 2, without a
traceback. The message names the file and says what to do.
"""

import errno
import os
import re


class SabunError(Exception):
    """A user-facing error: one line naming the file and the fix."""


FIXES = {
    "ENOSPC": "free some space or choose another disk",
    "EDQUOT": "free some space or choose another disk",
    "EROFS": "the file system is read-only: choose a folder you can write to",
    "EACCES": "check the permissions, or choose a folder you can write to",
    "EPERM": "check the permissions, or choose a folder you can write to",
    "ENOENT": "check the path",
    "ENOTDIR": "a part of the path is a file, not a folder: check the path",
    "EISDIR": "a folder is in the way: choose another name",
    "EEXIST": "something is already there: choose another name",
    "ENAMETOOLONG": "choose a shorter name",
}


def os_error_message(e: OSError, path: object = None) -> str:
    """One line for an OS error: the path, what the system said, and what to do."""
    name = errno.errorcode.get(e.errno or 0, "")
    where = e.filename if e.filename is not None else path
    detail = e.strerror or str(e)
    fix = FIXES.get(name, "check the path and try again")
    return f"{where}: {detail}; {fix}" if where is not None else f"{detail}; {fix}"


def write_error(path: object, e: Exception) -> SabunError:
    """A SabunError for a failed write whose exception is not an OSError (safetensors' SafetensorError)."""
    text = str(e)
    code = re.search(r"os error (\d+)", text)
    if code:
        number = int(code.group(1))
        return SabunError(os_error_message(OSError(number, os.strerror(number)), path))
    return SabunError(f"{path}: could not be written ({text}); check the path and the free space")
