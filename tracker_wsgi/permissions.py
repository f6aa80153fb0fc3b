"""Whether a user (the Apache daemons' www-data) can read or write a path, told from
ownership and mode bits: check-config and the development server ask it as root, for
whom os.access always answers yes."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

# The user Apache runs the tracker's daemon processes as (Debian's; the snippet sets none).
APACHE_USER = "www-data"

def access_problem(path: str, need: str, user: pwd.struct_passwd) -> str | None:
    """Why `user` cannot `need` ("read" a directory, "write" a directory or file) at
    path, from ownership and mode bits (ACLs are not read), or None if it can."""
    name = user.pw_name
    groups = set(os.getgrouplist(name, user.pw_gid))

    def allows(st: os.stat_result, bits: int) -> bool:  # bits: 4 read, 2 write, 1 search
        if user.pw_uid == 0:
            return True
        shift = 6 if st.st_uid == user.pw_uid else 3 if st.st_gid in groups else 0
        return (st.st_mode >> shift) & bits == bits

    def owner(st: os.stat_result) -> str:
        return f"{_user_name(st.st_uid)}:{_group_name(st.st_gid)} {stat.filemode(st.st_mode)}"

    for above in reversed(Path(path).parents):
        try:
            st = os.stat(above)
        except OSError:
            break
        if not allows(st, 1):
            return f"{name} cannot enter {above} ({owner(st)}): chmod o+x {above}, or give it to {name}'s group"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if need == "read":
            return f"{path} does not exist"
        return f"{path} does not exist: install -d -o {name} -g {_group_name(user.pw_gid)} {path}"
    is_dir = stat.S_ISDIR(st.st_mode)
    if need == "read":
        if not is_dir:
            return f"{path} is not a directory"
        if not allows(st, 4 | 1):
            return f"{path} is not readable by {name} ({owner(st)}): chmod o+rx {path}"
        return None
    if not allows(st, 2 | (1 if is_dir else 0)):
        return f"{path} is not writable by {name} ({owner(st)}): chown {name}: {path}"
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return f"{path} is on a read-only filesystem"
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
