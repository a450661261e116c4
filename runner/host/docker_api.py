"""The one door to the Docker engine (docker SDK). Everything else calls these few methods."""

from __future__ import annotations

import io
import logging
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from runner.core.errors import RunnerError

log = logging.getLogger(__name__)


class DockerUnavailable(RunnerError):
    exit_code = 4


class DockerError(RunnerError):
    pass


class Docker:
    def __init__(self, timeout: int = 600):
        try:
            import docker

            self.client = docker.from_env(timeout=timeout)
            self.client.ping()
        except Exception as e:  # the SDK raises several types; all mean "no engine"
            raise DockerUnavailable(
                f"no Docker engine is reachable ({str(e).splitlines()[0][:200]}); start dockerd "
                "(scripts/provision-docker.sh does it on Debian) or set DOCKER_HOST"
            ) from None
        self.api = self.client.api

    def image_id(self, ref: str) -> str | None:
        import docker

        try:
            return self.client.images.get(ref).id
        except docker.errors.ImageNotFound:
            return None

    def image_tags(self, ref: str) -> list[str]:
        """Every `repo:tag` of the image `ref` names (an image id or any of its tags)."""
        return list(self.client.images.get(ref).tags)

    def image_size(self, ref: str) -> int:
        """Bytes of the image's layers, about what a `docker save` of it writes."""
        return int(self.client.images.get(ref).attrs.get("Size") or 0)

    def image_attrs(self, ref: str) -> dict[str, Any]:
        """The engine's record of an image (`docker image inspect`): Id, RepoTags, RepoDigests,
        Created, Os, Architecture, Config (with its Labels), RootFS (the layer digests)."""
        return dict(self.client.images.get(ref).attrs)

    def read_files(self, image: str, paths: list[str]) -> dict[str, bytes]:
        """Files of an image, copied out of a container that is created and never started: nothing
        of the image runs. A path the image lacks is left out; a symbolic link is followed once."""
        import docker

        container = self.client.containers.create(image, command=["/nonexistent"], network_disabled=True)
        try:
            found = {}
            for asked in paths:
                path = asked
                for _ in range(2):
                    try:
                        chunks, _stat = container.get_archive(path)
                    except docker.errors.NotFound:
                        break
                    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
                        member = tar.next()
                        if member is not None and member.issym():
                            path = posixpath.normpath(
                                posixpath.join(posixpath.dirname(path), member.linkname)
                            )
                            continue
                        if member is not None and member.isfile():
                            found[asked] = tar.extractfile(member).read()  # type: ignore[union-attr]
                    break
            return found
        finally:
            container.remove(force=True)

    def output(self, image: str, command: list[str], **kwargs: Any) -> tuple[int, str, str]:
        """Run to completion; returns (exit code, stdout, stderr) apart."""
        container = self.client.containers.run(image, command, detach=True, **kwargs)
        try:
            code = container.wait()["StatusCode"]
            out = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
            return code, out, container.logs(stdout=False, stderr=True).decode("utf-8", "replace")
        finally:
            container.remove(force=True)

    def build(
        self, context: Path, tag: str, labels: dict[str, str], log: Callable[[str], None] = lambda s: None
    ) -> str:
        """Build with the network off for every RUN step; returns the image id."""
        image_id = None
        for chunk in self.api.build(
            path=str(context), tag=tag, labels=labels, network_mode="none", rm=True, forcerm=True, decode=True
        ):
            if "stream" in chunk:
                for line in chunk["stream"].splitlines():
                    if line.strip():
                        log(line)
            if "error" in chunk:
                raise DockerError(f"docker build of {tag} failed: {chunk['error'].strip()}")
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
        return image_id or self.image_id(tag) or ""

    def tag(self, image_id: str, ref: str) -> None:
        repo, _, tag = ref.rpartition(":")
        self.client.images.get(image_id).tag(repo, tag)

    def history(self, ref: str) -> list[dict[str, Any]]:
        return self.client.images.get(ref).history()

    def save_stream(self, refs: list[str]) -> Iterator[bytes]:
        """`docker save` of every ref into one tar, as chunks (nothing is written here)."""
        # GET /images/get?names=a&names=b : one tar holding every named image with its tags.
        res = self.api._get(self.api._url("/images/get"), params={"names": refs}, stream=True)
        self.api._raise_for_status(res)
        yield from res.iter_content(chunk_size=1 << 20)

    def load(self, tar: BinaryIO) -> list[str]:
        """`docker load` from an open file (a `docker save` tar); returns the loaded image ids."""
        return [img.id for img in self.client.images.load(tar)]

    def remove_image(self, ref: str) -> None:
        import docker

        try:
            self.client.images.remove(ref, force=True)
        except docker.errors.ImageNotFound:
            pass

    def start(self, config: dict[str, Any]):
        """Start a container from a rendered config (runner.host.render.container); returns it."""
        import docker

        kwargs = dict(config)
        kwargs["ulimits"] = [
            docker.types.Ulimit(**{k.lower(): v for k, v in u.items()}) for u in config["ulimits"]
        ]
        kwargs["device_requests"] = [
            docker.types.DeviceRequest(
                driver=r["Driver"],
                count=r.get("Count", 0),
                device_ids=r.get("DeviceIDs"),
                capabilities=r["Capabilities"],
            )
            for r in config["device_requests"]
        ]
        container = self.client.containers.create(**kwargs)
        try:
            container.start()
        except docker.errors.APIError as e:
            container.remove(force=True)
            if "rlimit" not in str(e) or not kwargs["ulimits"]:
                raise DockerError(f"container {config['name']} did not start: {e.explanation or e}") from None
            # Raising memlock needs CAP_SYS_RESOURCE, which some hosts (nested containers) withhold.
            # The job still runs; NCCL over InfiniBand would be the one to suffer, so say so.
            log.warning(
                "this engine may not raise memlock/stack limits (%s); starting without them", e.explanation
            )
            kwargs["ulimits"] = []
            container = self.client.containers.create(**kwargs)
            container.start()
        return container

    def container(self, ref: str):
        import docker

        try:
            return self.client.containers.get(ref)
        except docker.errors.NotFound:
            return None

    def gpu_names(self) -> list[str]:
        """Names of the GPUs the engine can hand to containers (none without the NVIDIA runtime)."""
        info = self.client.info()
        if "nvidia" not in (info.get("Runtimes") or {}):
            return []
        from runner.host.execute.gpus import host_gpu_names

        return host_gpu_names()

    def gpu_count(self) -> int:
        return len(self.gpu_names())

    def run(self, image: str, command: list[str], **kwargs: Any) -> tuple[int, str]:
        """Run to completion; returns (exit code, combined log)."""
        container = self.client.containers.run(image, command, detach=True, **kwargs)
        try:
            code = container.wait()["StatusCode"]
            return code, container.logs().decode("utf-8", "replace")
        finally:
            container.remove(force=True)
