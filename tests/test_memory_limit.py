"""The memory check before a conversion reads the container's (or the systemd service's) cgroup limit, not only
the host's memory, on fake /proc and /sys trees laid out as the kernel lays them out."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_store.convert import preflight
from model_store.convert.cgroup_memory import V1_UNLIMITED, CgroupMemory, tightest_limit
from model_store.errors import InsufficientMemoryError
from tests.support.saying import raises_saying, said

GIB = 1024**3


def system(root: Path, proc_self_cgroup: str, groups: dict[str, dict[str, str]]) -> Path:
    """A fake system root: ``/proc/self/cgroup`` and, under ``/sys/fs/cgroup``, the given groups' files."""
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(proc_self_cgroup)
    for group, files in groups.items():
        directory = root / "sys/fs/cgroup" / group
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (directory / name).write_text(text)
    return root


def v2(limit: str, current: int, inactive_file: int = 0) -> dict[str, str]:
    return {
        "memory.max": f"{limit}\n",
        "memory.current": f"{current}\n",
        "memory.stat": f"anon {current - inactive_file}\nfile {inactive_file}\ninactive_file {inactive_file}\n",
    }


def test_a_containers_cgroup_v2_limit_less_its_working_set(tmp_path: Path) -> None:
    """A container with its own cgroup namespace (Docker's default on cgroup v2) sees its group as the root."""
    root = system(tmp_path, "0::/\n", {"": v2(str(16 * GIB), 10 * GIB, inactive_file=2 * GIB)})
    found = tightest_limit(root)
    assert found == CgroupMemory(limit_bytes=16 * GIB, used_bytes=8 * GIB), "the droppable page cache is free"
    assert found.available_bytes == 8 * GIB


def test_the_tightest_of_nested_v2_groups_binds(tmp_path: Path) -> None:
    """A service's own group without a limit, inside a slice limited to 6 GiB, inside one limited to 32 GiB."""
    groups = {
        "": {"cgroup.controllers": "memory\n"},  # the root group has no memory.max
        "big.slice": v2(str(32 * GIB), 4 * GIB),
        "big.slice/small.slice": v2(str(6 * GIB), 3 * GIB),
        "big.slice/small.slice/phi3bot.service": v2("max", 3 * GIB),
    }
    root = system(tmp_path, "0::/big.slice/small.slice/phi3bot.service\n", groups)
    assert tightest_limit(root) == CgroupMemory(limit_bytes=6 * GIB, used_bytes=3 * GIB)


def test_no_limit_is_no_limit(tmp_path: Path) -> None:
    root = system(tmp_path / "v2", "0::/user.slice\n", {"user.slice": v2("max", GIB)})
    assert tightest_limit(root) is None
    files = {"memory.limit_in_bytes": f"{V1_UNLIMITED * 2 - 4096}\n", "memory.usage_in_bytes": f"{GIB}\n"}
    root = system(tmp_path / "v1", "4:memory:/\n0::/\n", {"memory": files})
    assert tightest_limit(root) is None
    assert tightest_limit(tmp_path / "nothing-there") is None, "no /proc/self/cgroup: no limit known"


def test_cgroup_v1_inside_a_container_and_on_a_hybrid_host(tmp_path: Path) -> None:
    """cgroup v1 names the host's path (/docker/<id>) while the container's mount shows its own group at the top;
    the v2 line of a hybrid host is passed over, since the memory controller is bound to v1."""
    files = {
        "memory.limit_in_bytes": f"{12 * GIB}\n",
        "memory.usage_in_bytes": f"{5 * GIB}\n",
        "memory.stat": f"cache {2 * GIB}\ntotal_inactive_file {GIB}\n",
    }
    cgroups = "12:pids:/docker/0123abcd\n4:memory:/docker/0123abcd\n1:name=systemd:/docker/0123abcd\n0::/\n"
    root = system(tmp_path, cgroups, {"memory": files, "": v2(str(GIB), GIB)})
    assert tightest_limit(root) == CgroupMemory(limit_bytes=12 * GIB, used_bytes=4 * GIB)


class Host:
    available = 64 * GIB


def test_the_preflight_refuses_what_the_container_limit_cannot_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 GiB free on the host, a 16 GiB container of which the serving bot holds 9.5: a 13 GiB conversion would
    be killed by the limit, so it is refused before it starts, saying which limit to raise."""
    monkeypatch.setattr("psutil.virtual_memory", lambda: Host())
    root = system(tmp_path / "system", "0::/\n", {"": v2(str(16 * GIB), int(9.5 * GIB))})
    needs = preflight.Requirements(disk_bytes=0, memory_bytes=13 * GIB)
    with pytest.raises(InsufficientMemoryError) as refused:
        preflight.check(needs, tmp_path, system_root=root)
    message = said(refused.value)
    assert "memory limit of this container" in message and "16.0 GiB" in message and "leaves 6.5 GiB" in message
    assert "PHI3BOT_CONVERT_MEMORY_LIMIT" in message
    preflight.check(preflight.Requirements(disk_bytes=0, memory_bytes=6 * GIB), tmp_path, system_root=root)


def test_the_preflight_takes_the_hosts_memory_when_it_is_the_smaller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class SmallHost:
        available = 4 * GIB

    monkeypatch.setattr("psutil.virtual_memory", lambda: SmallHost())
    root = system(tmp_path / "system", "0::/\n", {"": v2(str(16 * GIB), GIB)})
    with raises_saying(InsufficientMemoryError, r"needs about 6\.0 GiB, and 4\.0 GiB is available"):
        preflight.check(preflight.Requirements(disk_bytes=0, memory_bytes=6 * GIB), tmp_path, system_root=root)
    preflight.check(preflight.Requirements(disk_bytes=0, memory_bytes=3 * GIB), tmp_path, system_root=root)
