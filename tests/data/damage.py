"""Ways to damage shards, for the tests of what a run does with damaged data."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from moee.data.shards import shard_urls


def keys_by_shard(folder: Path) -> dict[str, list[str]]:
    """{shard file name: its sample keys, in order}."""
    result = {}
    for url in shard_urls(folder):
        with tarfile.open(url) as tar:
            result[Path(url).name] = list(dict.fromkeys(m.name.split(".")[0] for m in tar))
    return result


def truncate_in_second_sample(url: str) -> None:
    """Cut a shard in the middle of its second sample: the first one stays readable."""
    with tarfile.open(url) as tar:
        members = tar.getmembers()
    first_key = members[0].name.split(".")[0]
    second = next(m for m in members if not m.name.startswith(first_key))
    data = Path(url).read_bytes()
    Path(url).write_bytes(data[: second.offset_data + second.size // 2])


def replace_with_garbage(url: str, size: int | None = None) -> None:
    """Overwrite a shard with random bytes (of its own size by default)."""
    Path(url).write_bytes(os.urandom(size or Path(url).stat().st_size))


def damage_video(url: str, key: str) -> None:
    """Replace one sample's mp4 by bytes that are not a video (the shard stays a valid tar)."""
    with tarfile.open(url) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(url, "w") as tar:
        for member, data in members:
            if member.name == f"{key}.mp4":
                data = b"this is not an mp4"
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
