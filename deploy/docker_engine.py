"""The Docker side of ``make docker-test``: the engine, the Compose client and the images.

``Engine`` starts ``dockerd`` only if no engine answers (and stops exactly that process);
``build_base`` runs ``deploy/base.sh``; ``build_image`` builds ``deploy/Dockerfile`` with host
networking, serving a local torch wheel folder over 127.0.0.1 if one is given.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
FLWR_VERSION = "1.42.0"
TORCH = "torch==2.13.0"
#: where the torch wheel folder is served during builds; the URL is a build argument, so a fixed
#: port keeps the install layer cached across builds (a busy port falls back to a free one)
WHEEL_PORT = 38765


class DockerError(RuntimeError):
    """A step of the Docker test failed; the message names the step and where to look."""


def docker(*args: str, check: bool = True, timeout: float | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``docker ARGS``; raise :class:`DockerError` with its stderr if it fails and ``check``."""
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                         env=env)
    if check and res.returncode != 0:
        raise DockerError(f"docker {' '.join(args[:3])} failed: {res.stderr.strip()[-800:]}")
    return res


def engine_answers() -> bool:
    """Whether a Docker engine answers ``docker info`` (False if there is no docker client)."""
    if shutil.which("docker") is None:
        return False
    try:
        return docker("info", check=False, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def why_no_engine() -> str | None:
    """``None`` if an engine answers or this process can start one; else a one-line reason."""
    if shutil.which("docker") is None:
        return "no docker client on this machine (apt-get install docker.io)"
    if engine_answers():
        return None
    if shutil.which("dockerd") is None:
        return "no Docker engine answers and dockerd is not installed (apt-get install docker.io)"
    if os.geteuid() != 0:
        return "no Docker engine answers and only root may start dockerd"
    return None


class Engine:
    """Use the running Docker engine, or start ``dockerd`` and stop that process (by PID) on exit.

    Parameters
    ----------
    log_path : Path
        Where the output of a ``dockerd`` started here goes.
    timeout_s : float
        How long to wait for a started ``dockerd`` to answer.

    """

    def __init__(self, log_path: Path, timeout_s: float = 60.0) -> None:
        self.log_path, self.timeout_s = Path(log_path), timeout_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Engine:
        if engine_answers():
            return self
        if reason := why_no_engine():
            raise DockerError(reason)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        print(f"[docker-test] started dockerd (PID {self.proc.pid}; log {self.log_path})",
              flush=True)
        deadline = time.monotonic() + self.timeout_s
        while not engine_answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise DockerError(f"dockerd did not come up; see {self.log_path}")
            time.sleep(0.5)
        return self

    def version(self) -> str:
        """The engine's server version."""
        return docker("version", "--format", "{{.Server.Version}}").stdout.strip()

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.terminate()  # dockerd stops its containers and containerd on SIGTERM
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        print(f"[docker-test] stopped dockerd (PID {self.proc.pid})", flush=True)
        self.proc = None


def compose_command() -> list[str]:
    """``docker compose`` (v2 plugin) if present, else ``docker-compose`` (1.29).

    ``FLOREC_COMPOSE="docker-compose"`` (or ``"docker compose"``) picks one explicitly.
    """
    if forced := os.environ.get("FLOREC_COMPOSE"):
        return forced.split()
    if docker("compose", "version", check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise DockerError("no Compose client: install the Compose plugin (`docker compose`) or "
                      "docker-compose")


def host_ca_file() -> Path | None:
    """The CA certificates this host added locally (a TLS-intercepting proxy's), as one file."""
    certs = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if not certs:
        return None
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"florec-extra-ca-{os.getuid()}.pem"
    out.write_text("".join(c.read_text() for c in certs))
    return out


def default_torch_wheels() -> Path | None:
    """The host's ``PIP_FIND_LINKS`` folder if it holds a torch wheel (else ``None``)."""
    folder = os.environ.get("PIP_FIND_LINKS", "")
    path = Path(folder) if folder and "://" not in folder else None
    return path if path and any(path.glob("torch-*.whl")) else None


def images_of(base: str) -> dict[str, str]:
    """Images of the compose services: Flower's (``flwr``) or those of ``deploy/base.sh``."""
    prefix = "flwr" if base == "flwr" else base
    return {role: f"{prefix}/{role}:{FLWR_VERSION}"
            for role in ("superlink", "supernode", "superexec")}


def build_base(ca: Path | None, prefix: str = "florec") -> str:
    """Make the Debian-based Flower images with ``deploy/base.sh``; returns their prefix."""
    cmd = ["bash", str(DEPLOY / "base.sh"), "-p", prefix, *(["-c", str(ca)] if ca else [])]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise DockerError(f"deploy/base.sh failed: {(res.stderr or res.stdout).strip()[-800:]}")
    return prefix


@functools.cache
def _quiet_handler(directory: str) -> type:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=directory, **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def build_image(tag: str, base: str, ca: Path | None = None, torch_wheels: Path | None = None,
                no_cache: bool = False) -> float:
    """``docker build`` of ``deploy/Dockerfile`` with host networking; returns its seconds.

    Parameters
    ----------
    tag : str
        Name of the image to build.
    base : str
        ``flwr`` for Flower's official base image, else the prefix given to ``deploy/base.sh``.
    ca : Path, optional
        Extra CA certificates pip trusts during the build (build argument ``EXTRA_CA_CERTS``).
    torch_wheels : Path, optional
        A folder holding a CPU torch wheel, served on 127.0.0.1 while the build runs.
    no_cache : bool
        Build every layer anew.

    """
    args = ["build", "--network", "host", "-f", str(DEPLOY / "Dockerfile"), "-t", tag,
            "--build-arg", f"BASE_IMAGE={images_of(base)['superexec']}"]
    if no_cache:
        args.append("--no-cache")
    if ca:
        args += ["--build-arg", f"EXTRA_CA_CERTS={Path(ca).read_text()}"]
    server = None
    if torch_wheels:
        handler = _quiet_handler(str(torch_wheels))
        try:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEEL_PORT), handler)
        except OSError:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        args += ["--build-arg", f"TORCH_FIND_LINKS=http://127.0.0.1:{server.server_port}/",
                 "--build-arg", "TORCH_INDEX=https://pypi.org/simple",
                 "--build-arg", f"TORCH={TORCH}+cpu"]
    start = time.monotonic()
    try:
        res = subprocess.run(["docker", *args, str(ROOT)], capture_output=True, text=True)
    finally:
        if server is not None:
            server.shutdown()
    if res.returncode != 0:
        raise DockerError(f"docker build of {tag} failed: {(res.stdout + res.stderr)[-1500:]}")
    return time.monotonic() - start


_IMAGE_AUDIT = r"""
echo "uid $(id -u)"
for d in /data /app/results /app/cache; do [ -z "$(ls -A "$d")" ] || echo "not empty: $d"; done
find / -xdev -type f \( -name shard.json -o -name '*.inter' -o -name u.data -o -name 'ratings.*' \
  -o -name '*.secret' \) 2>/dev/null | sed 's/^/data or secret: /'
find / -xdev -type f \( -name '*.key' -o -name '*.pem' \) -exec grep -l "PRIVATE KEY" {} + \
  2>/dev/null | sed 's/^/private key: /'
"""


def audit_image(tag: str) -> dict[str, object]:
    """Check that an image runs as UID 49999 and holds no dataset, shard, secret or private key.

    Raises
    ------
    DockerError
        Naming what was found.

    """
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", tag, "-c",
                 _IMAGE_AUDIT).stdout.splitlines()
    found = [line for line in out if not line.startswith("uid ")]
    if out[:1] != ["uid 49999"] or found:
        raise DockerError(f"image {tag}: {out[:1]} {found[:5]} (it must run as UID 49999 and "
                          "hold no data, shard, secret or private key)")
    return {"uid": 49999, "data_or_keys_found": []}


def image_size(tag: str) -> int:
    """Size of an image in bytes (all its layers, as ``docker images`` shows it)."""
    return int(docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
