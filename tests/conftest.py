import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker, set before torch is imported: two workers of two threads each on two cores make
    # OpenMP's spinning threads wait on each other, some tests 60 times slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep tests out of the user's ~/.cache (tokenizers trained by tests go to a temp dir)."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    # A checkout next to the shared data folder finds tiny Shakespeare without setting anything.
    shared = REPO.parent / "shared" / "data"
    if "TUILM_DATA_DIR" not in os.environ and (shared / "tiny_shakespeare.txt").is_file():
        os.environ["TUILM_DATA_DIR"] = str(shared)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def shakespeare_path():
    """The real tiny Shakespeare file (CI points TUILM_DATA_DIR at it)."""
    folder = os.environ.get("TUILM_DATA_DIR")
    path = Path(folder) / "tiny_shakespeare.txt" if folder else None
    if path is None or not path.is_file():
        pytest.skip("tiny_shakespeare.txt not available (set TUILM_DATA_DIR)")
    return path


SMALL_TEXT = "\n\n".join(
    f"SPEAKER {i}:\n" + " ".join(f"word{(i * 7 + j) % 23}" for j in range(5 + (i * 5) % 17)) for i in range(60)
)


def write_corpus(folder: Path, name: str = "small.txt") -> Path:
    """SMALL_TEXT as folder/name, the corpus of most tiny runs."""
    path = folder / name
    path.write_text(SMALL_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    """A few dozen documents of varied length, separated by blank lines."""
    return write_corpus(tmp_path)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One tiny run trained for 10 steps, shared by every test that only reads a finished run's files."""
    from tests.helpers import tiny_trainer

    folder = tmp_path_factory.mktemp("trained")
    corpus = write_corpus(folder, "corpus.txt")
    trainer, _ = tiny_trainer(corpus, folder / "run", "max_steps=10", "sample_tokens=0")
    trainer.run()
    return folder / "run"


@pytest.fixture(scope="session")
def metrics_run(tmp_path_factory) -> Path:
    """A finished tiny run with its metrics.jsonl, as `tuilm train` writes it (shared: tests only read it)."""
    from tests.helpers import tiny_trainer
    from tuilm.run_setup import attach_files

    folder = tmp_path_factory.mktemp("metrics")
    corpus = write_corpus(folder, "corpus.txt")
    trainer, _ = tiny_trainer(corpus, folder / "run", "max_steps=6", "sample_tokens=0")
    metrics = attach_files(trainer)
    trainer.run()
    metrics.close()
    trainer.run_lock.release()
    return folder / "run"
