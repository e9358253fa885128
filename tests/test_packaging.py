"""What the package ships besides code: the stable-ABI extension, the type information
(py.typed, the _core stubs) and, when .ci/run points RSWAITRESS_WHEEL at the wheel it
built, the wheel's name and contents. The type checks run mypy (skipped where it is not
installed): the typed example passes --strict, a copy with deliberate errors fails with
each error reported, and mypy.stubtest finds _core.pyi true to the compiled module.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

import rswaitress
from rswaitress import _core
from rswaitress.adjustments import SETTINGS_BY_NAME
from rswaitress.types import ServerOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TYPED_APP = os.path.join(ROOT, "examples", "typed_app.py")
PACKAGE_DIR = os.path.dirname(rswaitress.__file__)


def test_type_information_is_installed():
    assert os.path.isfile(os.path.join(PACKAGE_DIR, "py.typed"))
    assert os.path.isfile(os.path.join(PACKAGE_DIR, "_core.pyi"))


FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


@pytest.mark.skipif(sys.platform == "win32", reason="extension file names carry no ABI tag")
@pytest.mark.skipif(FREE_THREADED, reason="free-threaded CPython cannot load abi3 extensions")
def test_extension_is_built_for_the_stable_abi():
    assert os.path.basename(_core.__file__).startswith("_core.abi3.")


@pytest.mark.skipif(sys.platform == "win32", reason="extension file names carry no ABI tag")
@pytest.mark.skipif(not FREE_THREADED, reason="needs a free-threaded CPython (3.13t, 3.14t)")
def test_free_threaded_build_is_version_specific_and_gil_free():
    # e.g. _core.cpython-313t-x86_64-linux-gnu.so: built for this interpreter's ABI.
    assert _core.__file__.endswith(sysconfig.get_config_var("EXT_SUFFIX"))
    assert sys._is_gil_enabled() is False


def test_server_options_name_every_adjustment():
    keys = ServerOptions.__required_keys__ | ServerOptions.__optional_keys__
    assert keys == set(SETTINGS_BY_NAME)
    assert not ServerOptions.__required_keys__


# --- the built wheel ------------------------------------------------------------------


@pytest.fixture
def wheel():
    path = os.environ.get("RSWAITRESS_WHEEL")
    if not path:
        pytest.skip("RSWAITRESS_WHEEL (a built wheel) is not set")
    return path


def test_wheel_is_one_abi3_wheel_for_cpython_3_9_and_later(wheel):
    name = os.path.basename(wheel)
    assert re.fullmatch(r"rswaitress-[^-]+-cp39-abi3-[A-Za-z0-9_.]+\.whl", name), name


def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(f"{dist_info}/METADATA").decode()
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    for module in ("__init__.py", "__main__.py", "activation.py", "adjustments.py",
                   "proxy_headers.py", "runner.py", "server.py", "types.py",
                   "py.typed", "_core.pyi"):
        assert f"rswaitress/{module}" in names, sorted(names)
    extensions = [n for n in names if re.fullmatch(r"rswaitress/_core\..*(so|pyd)", n)]
    assert len(extensions) == 1, sorted(names)
    if not extensions[0].endswith(".pyd"):
        assert extensions[0].startswith("rswaitress/_core.abi3."), extensions
    assert "Requires-Python: >=3.9" in metadata
    assert re.search(r"^rswaitress-serve\s*=\s*rswaitress\.runner:run$", entry_points, re.M)
    assert re.search(r"^main\s*=\s*rswaitress:serve_paste$", entry_points, re.M)


# --- type checking --------------------------------------------------------------------


def _mypy_available():
    return importlib.util.find_spec("mypy") is not None


needs_mypy = pytest.mark.skipif(not _mypy_available(), reason="mypy is not installed")


@pytest.fixture(scope="module")
def mypy(tmp_path_factory):
    """``mypy(*args, cwd=...)`` -> CompletedProcess of ``python -m mypy`` (one cache
    for the module's runs, outside the tree)."""
    cache = str(tmp_path_factory.mktemp("mypy-cache"))

    def run(*args, cwd):
        return subprocess.run(
            [sys.executable, "-m", "mypy", "--cache-dir", cache, "--no-error-summary",
             "--hide-error-context", "--no-color-output", *args],
            cwd=str(cwd), capture_output=True, text=True, timeout=600,
        )

    return run


@needs_mypy
def test_typed_example_passes_mypy_strict(mypy, tmp_path):
    shutil.copy(TYPED_APP, tmp_path / "typed_app.py")
    done = mypy("--strict", "typed_app.py", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


_MISTAKES = '''
import socket
from rswaitress import create_server, serve, serve_paste
from rswaitress.types import ServerOptions
from typed_app import app

serve(app, port=[8080])                          # line 7: a list is no port
serve(app, prot=8080)                            # line 8: no such adjustment
create_server(app, threads=4.5)                  # line 9: a float is no thread count
create_server(app, unix_socket_perms=0o600)      # line 10: Waitress wants octal text
create_server(app, sockets=[socket.socket()], listen=7)  # line 11: listen is text
serve_paste(app, {}, expose_tracebacks=[True])   # line 12
server = create_server(app)
port: int = server.effective_port                # line 14: it is text, as in Waitress
server.adj.threads.upper()                       # line 15: threads is an int by now
server.run(True)                                 # line 16
options: ServerOptions = {"host": 0}             # line 17
serve(lambda environ: [b""])                     # line 18: not a WSGI application
'''


@needs_mypy
def test_mistakes_fail_mypy_strict(mypy, tmp_path):
    shutil.copy(TYPED_APP, tmp_path / "typed_app.py")
    (tmp_path / "mistakes.py").write_text(_MISTAKES)
    done = mypy("--strict", "mistakes.py", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = sorted({int(m) for m in re.findall(r"^mistakes\.py:(\d+): error", done.stdout, re.M)})
    assert lines == [7, 8, 9, 10, 11, 12, 14, 15, 16, 17, 18], done.stdout


@needs_mypy
def test_deliberate_error_in_a_copy_of_the_example_fails(mypy, tmp_path):
    source = open(TYPED_APP).read()
    assert '"port": "8080",' in source
    (tmp_path / "typed_app.py").write_text(source.replace('"port": "8080",', '"port": 8080.0,'))
    done = mypy("--strict", "typed_app.py", cwd=tmp_path)
    assert done.returncode == 1
    assert 'typed_app.py:' in done.stdout and '"port"' in done.stdout, done.stdout


@needs_mypy
def test_core_stubs_match_the_extension(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "rswaitress._core"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_mypy
@pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, "python", "rswaitress", "server.py")),
                    reason="no package sources beside the tests")
def test_package_sources_type_check(mypy):
    """The annotations agree with the code they annotate."""
    done = mypy("-p", "rswaitress", cwd=os.path.join(ROOT, "python"))
    assert done.returncode == 0, done.stdout + done.stderr
