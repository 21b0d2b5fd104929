"""The real install: a wheel of the project, installed into a fresh virtualenv outside the checkout, serving.

The editable install the other tests use reads the folders of the checkout; only a wheel shows what `pip install`
ships. The first run takes a while (the new virtualenv gets every dependency, from pip's cache when it has them),
so the wheel, the virtualenv and the server are built once for the module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.launcher import (
    HOST,
    Isolation,
    ServerProcess,
    free_port,
    run_cli,
    server_env,
    wait_ready,
)

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parent.parent
# The repository's folders that install as tidings.*; none may appear at the top of a wheel or of site-packages.
FOLDERS = ("server", "handlers", "documents", "templates", "static")
DIST_INFO = re.compile(r"tidings-[^/]+\.dist-info")
JWT_SECRET = "wheel-test-secret-" + "w" * 40
PIP_TIMEOUT = 900  # a cold pip cache downloads every dependency
# What a build must not see: other builds' output (a stale build/lib would land in the wheel), environments, caches.
NOT_SOURCE = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "test-output")


def run(argv: Sequence[str | Path], cwd: Path) -> str:
    """Run a build or install step to its end; fail with its output."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(  # noqa: S603 - our own command line
        [str(arg) for arg in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False
    )
    assert result.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def package_files(folder: str) -> list[str]:
    """The files of a data folder of the checkout, as paths inside the installed package."""
    base = ROOT / folder
    return sorted(
        f"tidings/{folder}/{path.relative_to(base).as_posix()}"
        for path in base.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel` of a copy of the sources, so the build neither reads nor writes build/ in the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", work / "dist", source], cwd=work)
    [built] = (work / "dist").glob("tidings-*.whl")
    return built


@dataclass(frozen=True)
class Venv:
    root: Path
    site: Path
    before: frozenset[str]  # site-packages before the wheel went in

    @property
    def bin(self) -> Path:
        return self.root / "bin"


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Venv:
    root = tmp_path_factory.mktemp("venv")
    assert not root.is_relative_to(ROOT), "the virtualenv must be outside the checkout"
    run([sys.executable, "-m", "venv", root], cwd=root)
    python = root / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root).strip())
    before = frozenset(os.listdir(site))
    run([python, "-m", "pip", "install", wheel], cwd=root)
    return Venv(root, site, before)


@pytest.fixture(scope="module")
def isolation() -> Iterator[Isolation]:
    isolation = Isolation.new("test", "wheel")
    yield isolation
    isolation.drop()


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory of the installed programs: nothing of the checkout is importable from there."""
    directory = tmp_path_factory.mktemp("outside")
    assert not directory.is_relative_to(ROOT)
    return directory


@pytest.fixture(scope="module")
def served(
    venv: Venv, isolation: Isolation, outside: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The installed `tidings serve`, on the test services."""
    env = server_env(isolation, jwt_secret=JWT_SECRET)
    server = ServerProcess("wheel", env, tmp_path_factory.mktemp("logs"), executable=venv.bin / "tidings", cwd=outside)
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def get(session: aiohttp.ClientSession, url: str, content_type: str) -> str:
    async with session.get(url, allow_redirects=False) as response:
        body = await response.text()
        assert response.status == 200, f"GET {url}: {response.status}\n{body}"
        assert content_type in response.content_type, f"GET {url}: {response.content_type}"
        return body


def test_the_wheel_holds_the_tidings_package_and_nothing_else(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [entry_points] = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    top = {name.split("/", 1)[0] for name in names}
    assert "tidings" in top
    assert [name for name in top if name != "tidings" and not DIST_INFO.fullmatch(name)] == []
    assert len(top) == 2, top
    modules = ("server/app.py", "server/cli.py", "handlers/routes.py", "handlers/admin/app.py", "documents/user.py")
    assert [module for module in modules if f"tidings/{module}" not in names] == []
    for package in ("server", "handlers", "documents"):
        assert f"tidings/{package}/py.typed" in names
    expected = package_files("templates") + package_files("static")
    assert [name for name in expected if name not in names] == []
    assert {"tidings/templates/login.html", "tidings/static/live.js", "tidings/static/index.html"} <= set(expected)
    assert not [name for name in names if name.startswith(("tidings/tests/", "tidings/bench/"))]
    assert re.search(r"^tidings = tidings\.server\.cli:main$", scripts, re.MULTILINE), scripts


def test_the_install_adds_tidings_and_none_of_the_checkout_folders(venv: Venv, outside: Path) -> None:
    after = set(os.listdir(venv.site))
    added = after - venv.before
    assert "tidings" in added
    [dist_info] = [name for name in added if DIST_INFO.fullmatch(name)]
    assert not set(FOLDERS) & after, sorted(set(FOLDERS) & after)
    assert (venv.site / "tidings" / "server" / "app.py").is_file()
    assert (venv.site / "tidings" / "templates" / "login.html").is_file()
    assert (venv.site / "tidings" / "static" / "live.js").is_file()
    # Every file the wheel installed is under tidings/, its dist-info, or the console script.
    record = (venv.site / dist_info / "RECORD").read_text().splitlines()
    paths = [line.rsplit(",", 2)[0] for line in record if line]
    strays = [p for p in paths if p.split("/", 1)[0] not in ("tidings", dist_info) and p != "../../../bin/tidings"]
    assert strays == []
    # No path hook leads back to the checkout (as an editable install's .pth file would).
    for pth in venv.site.glob("*.pth"):
        assert str(ROOT) not in pth.read_text(), pth
    where = run([venv.bin / "python", "-c", "import tidings.server.app as app; print(app.__file__)"], cwd=outside)
    assert Path(where.strip()).is_relative_to(venv.site / "tidings"), where


async def test_the_installed_server_serves_pages_static_files_panel_and_docs(
    served: ServerProcess, session: aiohttp.ClientSession
) -> None:
    url = served.url
    health = json.loads(await get(session, f"{url}/health/ready", "application/json"))
    assert health["status"] == "ok", health

    page = await get(session, f"{url}/", "text/html")
    assert "<title>tidings · live notifications</title>" in page
    assert '<form id="login-form">' in page
    assert '<script src="/static/live.js" defer></script>' in page
    for name in ("live.js", "live.css", "admin.js"):
        content_type = "javascript" if name.endswith(".js") else "text/css"  # text/ or application/: Python's choice
        served_file = await get(session, f"{url}/static/{name}", content_type)
        assert served_file == (ROOT / "static" / name).read_text(encoding="utf-8"), name

    login = await get(session, f"{url}/admin/login", "text/html")
    assert "<h1>Admin log in</h1>" in login  # rendered from the installed templates/
    assert '<form method="post" action="/admin/login"' in login
    assert re.search(r'name="csrf_token" value="[^"]+"', login)

    docs = await get(session, f"{url}/api/docs", "text/html")
    assert "swagger-ui-bundle.js" in docs
    assert "/api/docs/openapi.json" in docs
    spec = json.loads(await get(session, f"{url}/api/docs/openapi.json", "application/json"))
    assert "/api/v1/ws" in spec["paths"]
    assert "/api/v1/auth/login" in spec["paths"]


async def test_the_installed_cli_creates_an_admin(
    served: ServerProcess, venv: Venv, outside: Path, session: aiohttp.ClientSession
) -> None:
    argv = ("create-admin", "--email", "root@wheel.example.com", "--username", "root")
    result = await run_cli(
        served.env, *argv, stdin=b"wheel admin password\n", executable=venv.bin / "tidings", cwd=outside
    )
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == "created admin root@wheel.example.com"
    body = {"email": "root@wheel.example.com", "password": "wheel admin password"}
    async with session.post(f"{served.url}/api/v1/auth/login", json=body) as response:
        assert response.status == 200, await response.text()
        token = (await response.json())["access_token"]
    async with session.get(f"{served.url}/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["is_admin"] is True


def test_gunicorn_serves_the_installed_app_as_the_docker_image_does(
    venv: Venv, isolation: Isolation, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The image's command: `gunicorn -c gunicorn.conf.py` in a folder that holds that file and nothing else."""
    workdir = tmp_path_factory.mktemp("app")
    shutil.copy(ROOT / "gunicorn.conf.py", workdir)
    port = free_port()
    # Two workers, as in production: the config refuses that without a shared secret and Redis.
    env = server_env(
        isolation,
        jwt_secret=JWT_SECRET,
        log_level="INFO",  # gunicorn's start-up messages, to see their format
        TIDINGS_HOST=HOST,
        TIDINGS_PORT=str(port),
        WEB_CONCURRENCY="2",
    )
    argv = [str(venv.bin / "gunicorn"), "-c", "gunicorn.conf.py"]
    server = ServerProcess("gunicorn", env, tmp_path_factory.mktemp("logs"), argv=argv, port=port, cwd=workdir)
    server.start()
    try:
        wait_ready(server)
    finally:
        server.stop()
    lines = [line for line in server.log.read_text().splitlines() if line.strip()]
    assert lines, "gunicorn logged nothing"
    # Its own messages go through the app's JSON formatter, which the config names by its installed path.
    records = [json.loads(line) for line in lines]
    assert any(record["logger"] == "gunicorn.error" for record in records), lines
