"""Run diffusers' own AutoencoderKL model tests against hf_vae's KLAEModel.

    python tests/support/run_diffusers_autoencoderkl_suite.py [--diffusers-git-dir DIR] [--rev REV]
        [--construct-from-keywords] [--no-input-range-check] [--keep] [-- PYTEST ARGS]

diffusers' model tests live only in its repository (its sdist carries tests/testing_utils.py alone), so this
script reads them from a git checkout or bare clone of huggingface/diffusers (`--diffusers-git-dir`, or
$DIFFUSERS_GIT_DIR): it extracts tests/models/autoencoders/test_models_autoencoder_kl.py and what it imports
(tests/testing_utils.py, tests/models/testing_utils/, tests/models/autoencoders/testing_utils.py, ...) into a
temporary directory, adds a module whose test classes subclass diffusers' and override `model_class` with
`KLAEModel`, runs pytest on that module alone, and prints the counts and each failure's first error line.

It is not part of the test suite (its name does not start with test_): it needs a diffusers checkout, and the
upstream tests at that revision may expect a diffusers release other than the installed one.
"""

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

#: the files of diffusers' repository that its AutoencoderKL model tests import
UPSTREAM_PATHS = [
    "tests/__init__.py",
    "tests/conftest.py",
    "tests/testing_utils.py",
    "tests/models/__init__.py",
    "tests/models/test_modeling_common.py",
    "tests/models/testing_utils",
    "tests/models/autoencoders/__init__.py",
    "tests/models/autoencoders/testing_utils.py",
    "tests/models/autoencoders/vae.py",
    "tests/models/autoencoders/test_models_autoencoder_kl.py",
]

#: the module that puts KLAEModel in AutoencoderKL's place; its classes are the only ones collected (diffusers'
#: own are reached through the module object, so that pytest does not collect them a second time here)
SUBSTITUTE_MODULE = '''\
"""diffusers' AutoencoderKL model tests with hf_vae's KLAEModel as the model class."""

import os

from hf_vae import KLAEConfig, KLAEModel

from . import test_models_autoencoder_kl as upstream


class KLAEBuiltFromKeywords(KLAEModel):
    """KLAEModel that also takes diffusers' way of construction, `model_class(**init_dict)` (a transformers model
    takes a config), so that the tests behind that first call run too (--construct-from-keywords)."""

    def __init__(self, config=None, **kwargs):
        super().__init__(config if config is not None else KLAEConfig(**kwargs))


MODEL_CLASS = KLAEBuiltFromKeywords if os.environ.get("HF_VAE_CONSTRUCT_FROM_KEYWORDS") == "1" else KLAEModel
if os.environ.get("HF_VAE_NO_INPUT_RANGE_CHECK") == "1":
    # diffusers' tests feed N(0, 1) noise as images; KLAEModel refuses values outside [-1, 1] unless told
    MODEL_CLASS = type(MODEL_CLASS.__name__, (MODEL_CLASS,), {"check_input_range": False,
                                                            "__module__": MODEL_CLASS.__module__})


class KLAEInPlaceOfAutoencoderKL:
    @property
    def model_class(self):
        return MODEL_CLASS


class TestKLAE(KLAEInPlaceOfAutoencoderKL, upstream.TestAutoencoderKL):
    pass


class TestKLAEMemory(KLAEInPlaceOfAutoencoderKL, upstream.TestAutoencoderKLMemory):
    pass


class TestKLAESlicingTiling(KLAEInPlaceOfAutoencoderKL, upstream.TestAutoencoderKLSlicingTiling):
    pass
'''

DEFAULT_GIT_DIRS = [os.environ.get("DIFFUSERS_GIT_DIR"), "/work/.mirror/huggingface+diffusers/repo"]


def find_git_dir(given):
    for candidate in [given, *DEFAULT_GIT_DIRS]:
        if candidate and Path(candidate).exists():
            return Path(candidate)
    sys.exit("No diffusers repository found: pass --diffusers-git-dir (a clone of "
             "https://github.com/huggingface/diffusers, bare or not) or set DIFFUSERS_GIT_DIR.")


def extract(git_dir: Path, rev: str, target: Path) -> str:
    """Write the upstream files at `rev` under `target`; return the revision's diffusers version."""
    git = ["git", "--git-dir", str(git_dir / ".git" if (git_dir / ".git").exists() else git_dir)]
    archive = subprocess.run([*git, "archive", "--format=tar", rev, *UPSTREAM_PATHS], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    init = subprocess.run([*git, "show", f"{rev}:src/diffusers/__init__.py"], capture_output=True, text=True).stdout
    version = next((line.split("=")[1].strip().strip('"') for line in init.splitlines()
                    if line.startswith("__version__")), "unknown")
    (target / "tests/models/autoencoders/test_klae_as_autoencoder_kl.py").write_text(SUBSTITUTE_MODULE)
    return version


def summarise(junit: Path) -> int:
    """Print counts per test class and each failure's first error line; return the number of failures."""
    counts = collections.defaultdict(collections.Counter)
    failures = []
    for case in ElementTree.parse(junit).iter("testcase"):
        cls = case.get("classname", "").rsplit(".", 1)[-1]
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                message = (child.get("message") or child.text or "").strip().splitlines()
                failures.append((f"{cls}::{case.get('name')}", message[0][:240] if message else ""))
            elif child.tag == "skipped":
                outcome = "skipped"
                counts[cls][f"skip: {(child.get('message') or '')[:100]}"] += 0  # reasons listed below
        counts[cls][outcome] += 1
    total = collections.Counter()
    for cls, counter in sorted(counts.items()):
        numbers = {k: v for k, v in counter.items() if not k.startswith("skip: ")}
        total.update(numbers)
        print(f"{cls}: " + ", ".join(f"{v} {k}" for k, v in sorted(numbers.items())))
    print("total: " + ", ".join(f"{v} {k}" for k, v in sorted(total.items())))
    if failures:
        print("\nfailures:")
        for name, message in failures:
            print(f"  {name}\n      {message}")
    return total["failed"] + total["error"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffusers-git-dir", help="a clone of huggingface/diffusers (bare or not)")
    parser.add_argument("--rev", default="HEAD", help="the revision whose tests to run (default HEAD)")
    parser.add_argument("--keep", action="store_true", help="keep the extracted tests (their path is printed)")
    parser.add_argument("--construct-from-keywords", action="store_true",
                        help="test a KLAEModel subclass that also accepts diffusers' `model_class(**init_dict)`, to "
                             "see the failures behind that first difference")
    parser.add_argument("--no-input-range-check", action="store_true",
                        help="set check_input_range = False on the tested class: diffusers' tests feed N(0, 1) noise "
                             "as images, which KLAEModel refuses outside [-1, 1]")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments, after --")
    args = parser.parse_args(argv)

    import diffusers

    git_dir = find_git_dir(args.diffusers_git_dir)
    work = Path(tempfile.mkdtemp(prefix="diffusers_autoencoderkl_suite_"))
    version = extract(git_dir, args.rev, work)
    print(f"diffusers tests at {args.rev} of {git_dir} (version {version}); installed diffusers "
          f"{diffusers.__version__}; extracted to {work}")
    junit = work / "junit.xml"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(work), str(REPOSITORY_ROOT),
                                                       os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"),
               # tiny models: one thread is as fast and cannot stall on a shared machine (tests/conftest.py)
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               HF_VAE_CONSTRUCT_FROM_KEYWORDS="1" if args.construct_from_keywords else "0",
               HF_VAE_NO_INPUT_RANGE_CHECK="1" if args.no_input_range_check else "0")
    command = [sys.executable, "-m", "pytest", "tests/models/autoencoders/test_klae_as_autoencoder_kl.py",
               "-p", "no:cacheprovider", "-q", "-rs", f"--junitxml={junit}", "--rootdir", str(work),
               *args.pytest_args]
    done = subprocess.run(command, cwd=work, env=env)
    print()
    failed = summarise(junit) if junit.exists() else done.returncode
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
